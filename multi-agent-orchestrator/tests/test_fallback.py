"""Control flow against third-party backends (llama.cpp's chat without logprobs, vLLM's refusal of n > 1 and its
standard cached-token count): a fake stream stands in for them."""

import asyncio
import io
import json
import math

import httpx
import openai
from mimo_core.client import Completion, TextTokenLogprob, Usage
from mimo_core.record import TaskRecord
from mimo_core.settings import load_settings
from mimo_core.stage import StageContext
from multi_agent_orchestrator import orchestrate as module
from multi_agent_orchestrator import stage
from multi_agent_orchestrator.options import Options
from multi_agent_orchestrator.stream import Chunk


def test_without_logprobs_the_vote_is_unweighted_and_says_so(monkeypatch):
    answers = iter(["The answer is 7.", "The answer is 7.", "The answer is 9."])

    async def no_logprobs(ctx, params, on_token):
        text = next(answers)
        on_token(Chunk(0, text))
        return Completion([text], ["stop"], params["model"], Usage(1, 10, 5), 0.01, logprobs=None)

    monkeypatch.setattr(module, "stream_chat", no_logprobs)
    settings = load_settings(overrides={"model": "m", "base_url": "http://127.0.0.1:9"}, env={}, dotenv_path=None)
    record = TaskRecord.from_dict({"id": 1, "domain": "math", "task": "3 + 4?"})
    options = Options(agents=3, branches=2, early_stop=True)
    consensus = asyncio.run(module.orchestrate(record, StageContext(settings, lambda: None), options))
    assert consensus.answer == "7" and consensus.weighting == "unweighted" and consensus.measure == "none"
    assert abs(consensus.confidence - 2 / 3) < 1e-6
    assert any("no logprobs" in note for note in consensus.notes)
    assert all(a.forked_from is None for a in consensus.agents)  # no entropy, no fork


def test_a_stream_the_server_cut_off_is_a_failed_agent_not_an_empty_vote(monkeypatch):
    # llama-cpp-python ends a running stream when another request arrives: no text, no finish reason.
    replies = iter([("", None), ("The answer is 7.", "stop"), ("The answer is 7.", "stop")])

    async def interrupting(ctx, params, on_token):
        text, finish = next(replies)
        if text:
            on_token(Chunk(0, text))
        return Completion([text], [finish], params["model"], Usage(1, 10, 5), 0.01, logprobs=None)

    monkeypatch.setattr(module, "stream_chat", interrupting)
    settings = load_settings(overrides={"model": "m", "base_url": "http://127.0.0.1:9"}, env={}, dotenv_path=None)
    record = TaskRecord.from_dict({"id": 1, "domain": "math", "task": "3 + 4?"})
    consensus = asyncio.run(module.orchestrate(record, StageContext(settings, lambda: None),
                                               Options(agents=3, branches=0, early_stop=False)))
    cut = consensus.agents[0]
    assert cut.status == "failed" and "unfinished" in cut.error and cut.answer is None
    assert consensus.answer == "7" and consensus.confidence == 1.0  # the cut-off agent casts no vote


def _replies(monkeypatch, texts):
    replies = iter(texts)

    async def answer(ctx, params, on_token):
        text = next(replies)
        on_token(Chunk(0, text))
        return Completion([text], ["stop"], params["model"], Usage(1, 10, 5), 0.01, logprobs=None)

    monkeypatch.setattr(module, "stream_chat", answer)


def _vote(options):
    settings = load_settings(overrides={"model": "m", "base_url": "http://127.0.0.1:9"}, env={}, dotenv_path=None)
    record = TaskRecord.from_dict({"id": 1, "domain": "math", "task": "3 + 4?"})
    return asyncio.run(module.orchestrate(record, StageContext(settings, lambda: None), options))


def test_a_first_wave_that_agrees_leaves_the_other_agents_unstarted(monkeypatch):
    _replies(monkeypatch, ["The answer is 7."] * 5)
    consensus = _vote(Options(agents=5, first_wave=3, branches=0))
    assert len(consensus.agents) == 3 and consensus.answer == "7"
    assert consensus.stop_reason == "the first 3 agents agree: the other 2 were not started"


def test_a_first_wave_that_disagrees_starts_the_others(monkeypatch):
    _replies(monkeypatch, ["The answer is 7.", "The answer is 9.", "The answer is 7."] + ["The answer is 7."] * 2)
    consensus = _vote(Options(agents=5, first_wave=3, branches=0))
    assert len(consensus.agents) == 5 and consensus.answer == "7"
    assert consensus.votes == {"7": 4.0, "9": 1.0}


def test_without_early_stop_every_agent_runs(monkeypatch):
    _replies(monkeypatch, ["The answer is 7."] * 5)
    assert len(_vote(Options(agents=5, first_wave=3, branches=0, early_stop=False)).agents) == 5


def _vllm_greedy_refusal() -> openai.BadRequestError:
    """The 400 that vLLM 0.32 answers a chat request for n > 1 at temperature 0 with, as the openai client raises it."""
    body = {"error": {"message": "n must be 1 when using greedy sampling, got 2.", "type": "BadRequestError",
                      "param": None, "code": 400}}
    http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(400, json=body)))
    client = openai.OpenAI(api_key="sk-none", base_url="http://vllm.invalid/v1", http_client=http, max_retries=0)
    try:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=2, temperature=0)
    except openai.BadRequestError as exc:
        return exc
    raise AssertionError("the mock server did not refuse")


def test_a_refusal_of_n_above_1_in_vllms_words_samples_each_branch_alone_and_says_so(monkeypatch):
    refusal = _vllm_greedy_refusal()
    asked = []
    uniform = {f" t{i}": math.log(0.2) for i in range(5)}  # top-5 entropy ln 5 > fork_entropy: every token may fork

    async def refusing_n(ctx, params, on_token):
        asked.append(params["n"])
        if params["n"] > 1:
            raise refusal
        for word in [" so"] * 9 + [" the answer is 7."]:
            on_token(Chunk(0, word, [TextTokenLogprob(word, math.log(0.2), uniform)]))
        return Completion(["..."], ["stop"], params["model"], Usage(1, 10, 10), 0.01, logprobs=[[]])

    monkeypatch.setattr(module, "stream_chat", refusing_n)
    consensus = _vote(Options(agents=1, branches=2, early_stop=False))
    assert asked == [1, 2, 1, 1]  # the agent, its fork's two branches in one request, then one request each
    assert "the backend refused n > 1: branches were sampled one request each" in consensus.notes
    branches = [a for a in consensus.agents if a.forked_from == 0]
    assert len(branches) == 2 and all(a.status == "done" and a.tokens > 0 for a in branches)


def test_an_agents_cached_tokens_are_the_servers_standard_count(monkeypatch):
    async def caching(ctx, params, on_token):  # vLLM: usage.prompt_tokens_details.cached_tokens, no mimo report
        on_token(Chunk(0, "The answer is 7."))
        return Completion(["The answer is 7."], ["stop"], params["model"], Usage(1, 40, 5, cached_tokens=32), 0.01)

    monkeypatch.setattr(module, "stream_chat", caching)
    consensus = _vote(Options(agents=3, branches=0, early_stop=False))
    assert [(a.prompt_tokens, a.cached_tokens) for a in consensus.agents] == [(40, 32)] * 3


def test_a_second_record_takes_the_request_slots_the_first_leaves_idle(monkeypatch):
    # 4 requests in flight, 5 agents: one record's agents fill the limit, and while its last agent runs alone the
    # next record's agents take the idle slots (they would wait for it, were records voted on one at a time).
    started: list[str] = []
    second_started = asyncio.Event()
    waited_alone: list[str] = []

    async def answer(ctx, params, on_token):
        task = params["messages"][-1]["content"]
        started.append(task)
        if "3 + 4" in task and len(started) == 1:  # the first record's long agent: waits for the next record
            try:
                await asyncio.wait_for(second_started.wait(), timeout=5)
            except asyncio.TimeoutError:
                waited_alone.append(task)
        if "5 + 1" in task:
            second_started.set()
        text = "The answer is 7." if "3 + 4" in task else "The answer is 6."
        on_token(Chunk(0, text))
        return Completion([text], ["stop"], params["model"], Usage(1, 10, 5), 0.01, logprobs=None)

    monkeypatch.setattr(module, "stream_chat", answer)
    settings = load_settings(overrides={"model": "m", "base_url": "http://127.0.0.1:9", "concurrency": 4}, env={},
                             dotenv_path=None)
    records = [json.dumps({"id": i, "domain": "math", "task": t}) + "\n"
               for i, t in enumerate(["3 + 4?", "5 + 1?"])]
    out = io.StringIO()
    code = stage.run(Options(agents=5, first_wave=0, branches=0, early_stop=False), settings, source=records, sink=out)
    answers = [json.loads(line)["consensus"]["answer"] for line in out.getvalue().splitlines()]
    assert code == 0 and answers == ["7", "6"] and not waited_alone
