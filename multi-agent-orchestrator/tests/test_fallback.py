"""Control flow against a backend without logprobs (llama.cpp's chat): a fake stream stands in for it."""

import asyncio

from mimo_core.client import Completion, Usage
from mimo_core.record import TaskRecord
from mimo_core.settings import load_settings
from mimo_core.stage import StageContext
from multi_agent_orchestrator import orchestrate as module
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
