"""The loop's control flow with a scripted client (no model): acceptance, the oracle's step, budgets, and the
fallbacks when the endpoint cannot score through completions, or at all. End-to-end runs are in test_engine.py."""

import asyncio
import math

import httpx
import openai
import pytest

from mimo_core.client import Completion, TextTokenLogprob, Usage
from mimo_core.record import TaskRecord
from mimo_core.settings import Settings
from mimo_core.stage import StageContext

from spec_reasoner.reasoner import ReasoningOptions, Reasoner
from spec_reasoner.section import Reasoning

SETTINGS = Settings(base_url="http://fake.invalid/v1", model="oracle", draft_model="draft")
RECORD = TaskRecord(id="m1", domain="math", task="What is 12 * 8?", reference={"answer": "96"})


def refused(status=404):
    response = httpx.Response(status, request=httpx.Request("POST", "http://fake.invalid/v1/x"))
    return openai.NotFoundError("no", response=response, body=None)


def done(texts, logprobs=None, model="m"):
    return Completion(texts=texts, finish_reasons=["stop"] * len(texts), model=model,
                      usage=Usage(calls=1, prompt_tokens=10, completion_tokens=5), latency_s=0.0, logprobs=logprobs)


def rating(digit):
    return [TextTokenLogprob(str(digit), 0.0, {str(digit): math.log(0.9), "0": math.log(0.1)})]


class ScriptedClient:
    """Drafts come from a list; the oracle rates a step 9 unless it says 'wrong', and writes 'The answer is 96.'."""

    def __init__(self, drafts, completions=True, chat_logprobs=True):
        self.drafts = list(drafts)
        self.completions, self.chat_logprobs = completions, chat_logprobs
        self.calls = []

    def _rate(self, solution):
        return rating(0 if solution.rstrip().split("\n\n")[-1].startswith("wrong") else 9)

    async def complete(self, prompt, *, model, max_tokens, echo, logprobs, stop=None, **_):
        self.calls.append(("complete", model, prompt, max_tokens))
        if not self.completions:
            raise refused()
        if isinstance(prompt, list):  # a round's scoring prompts, one request
            return done(["9"] * len(prompt), [self._rate(p.split("partial solution", 1)[1].split("Rate its")[0])
                                              for p in prompt])
        if logprobs:  # the probe
            return done(["7"], [rating(7)])
        return done([self.drafts.pop(0) if model == "draft" and self.drafts else "The answer is 96."])

    async def chat(self, messages, *, model, max_tokens, logprobs=False, **_):
        self.calls.append(("chat", model, messages, max_tokens))
        if logprobs:
            if not self.chat_logprobs:
                return done(["7"])
            text = messages[-1]["content"]
            return done(["9"], [self._rate(text.split("partial solution to the task above:", 1)[-1].split("Rate its")[0])])
        if model == "draft" and self.drafts:
            return done([self.drafts.pop(0)])
        alone = max_tokens > ReasoningOptions().step_tokens  # the oracle writes the whole solution in one request
        return done(["12 * 8 = 96\n\nThe answer is 96." if alone else "The answer is 96."])


def reason(client, **options):
    ctx = StageContext(SETTINGS, lambda: client)
    return asyncio.run(Reasoner(ReasoningOptions(**options)).reason(RECORD, ctx)), ctx


def test_accepted_prefix_then_the_oracle_writes_the_rejected_step():
    client = ScriptedClient(["12 * 8 is 12 eights.", "wrong: 12 * 8 = 100", "so 100"])
    result, ctx = reason(client, k=3)
    assert result.scoring == "completions" and result.rounds == 1
    assert [(s.author, s.text) for s in result.chain] == [("draft", "12 * 8 is 12 eights."),
                                                          ("oracle", "The answer is 96.")]
    assert result.chain[0].score == pytest.approx(8.1) and result.chain[1].score is None
    assert (result.drafted_steps, result.accepted_steps, result.acceptance_rate) == (3, 1, pytest.approx(1 / 3, abs=1e-4))
    assert result.round_log[0].scores == [pytest.approx(8.1), 0.0, pytest.approx(8.1)]
    assert result.round_log[0].accepted == 1 and result.round_log[0].oracle_step
    assert result.answer == "96" and result.stopped == "answer" and result.verify_requests == 1
    scoring_calls = [c for c in client.calls if isinstance(c[2], list)]
    assert len(scoring_calls) == 1 and len(scoring_calls[0][2]) == 3 and scoring_calls[0][1] == "oracle"
    assert ctx.served.calls == len(client.calls)  # every call counts towards the trace entry
    Reasoning.from_dict(result.to_dict())  # the section reads back through its contract


def test_all_accepted_means_no_oracle_step_and_the_chain_goes_on():
    client = ScriptedClient(["a", "b", "c", "d", "The answer is 96."])
    result, _ = reason(client, k=3)
    assert [s.author for s in result.chain] == ["draft"] * 5
    assert [r.oracle_step for r in result.round_log] == [False, False]
    assert result.rounds == 2 and result.accepted_steps == 5 and result.answer == "96"


def test_budgets_end_the_chain():
    result, _ = reason(ScriptedClient(["a"] * 50), k=2, max_steps=3)
    assert len(result.chain) == 3 and result.stopped == "max_steps"
    result, _ = reason(ScriptedClient(["a"] * 50), k=2, max_tokens=12)  # every call writes 5 tokens
    assert result.stopped == "max_tokens" and sum(s.tokens for s in result.chain) >= 12


def test_a_draft_model_with_nothing_to_say_hands_over_to_the_oracle():
    result, _ = reason(ScriptedClient([""]), k=3)
    assert result.drafted_steps == 0 and [s.author for s in result.chain] == ["oracle"] and result.answer == "96"


def test_chat_logprobs_only_score_one_request_per_step():
    client = ScriptedClient(["x", "wrong", "y"], completions=False)
    result, _ = reason(client, k=3)
    assert result.scoring == "chat" and result.verify_requests == 3
    assert result.accepted_steps == 1 and result.chain[-1].author == "oracle"


def test_no_logprobs_anywhere_means_the_oracle_reasons_alone_and_says_so():
    client = ScriptedClient(["x"], completions=False, chat_logprobs=False)
    result, _ = reason(client)
    assert result.scoring == "unavailable" and result.drafted_steps == 0 and result.acceptance_rate is None
    assert [s.text for s in result.chain] == ["12 * 8 = 96", "The answer is 96."]
    assert all(s.author == "oracle" for s in result.chain) and result.answer == "96"
    assert not any(c[1] == "draft" for c in client.calls)


def test_probe_runs_once_for_concurrent_records():
    client = ScriptedClient(["The answer is 96."] * 4)
    reasoner = Reasoner(ReasoningOptions())

    async def four():
        ctxs = [StageContext(SETTINGS, lambda: client) for _ in range(4)]
        return await asyncio.gather(*(reasoner.reason(RECORD, c) for c in ctxs))

    asyncio.run(four())
    probes = [c for c in client.calls if c[0] == "complete" and not isinstance(c[2], list) and c[3] == 1]
    assert len(probes) == 1
