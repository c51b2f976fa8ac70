"""End to end on the real engine, smollm2-135m drafting and verifying: the record's shape, the acceptance
bookkeeping, exactly one verification request per round, the baseline when disabled."""

import asyncio
import io
import json

import pytest

from mimo_core.client import LLMClient
from mimo_core.record import TaskRecord
from mimo_core.stage import StageContext

from spec_reasoner.reasoner import ReasoningOptions, Reasoner, reason_stream
from spec_reasoner.section import Reasoning

pytestmark = pytest.mark.model
OPTIONS = ReasoningOptions(k=2, threshold=5.0, max_steps=4, max_tokens=32, step_tokens=10, step_drafting="always",
                  drafter="none")
MATH = {"id": "m1", "domain": "math", "task": "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "reference": {"answer": "7"}, "config": {"disabled": [], "seed": 1}, "mine": {"kept": True}}


class CountingClient:
    """The real client, with every call it forwards written down (to count the verification requests)."""

    def __init__(self, client):
        self.client, self.calls = client, []

    async def complete(self, prompt, **kwargs):
        self.calls.append(("complete", prompt, kwargs))
        return await self.client.complete(prompt, **kwargs)

    async def chat(self, messages, **kwargs):
        self.calls.append(("chat", messages, kwargs))
        return await self.client.chat(messages, **kwargs)


def test_one_verification_request_per_round_and_the_bookkeeping(engine_settings):
    record = TaskRecord.from_dict(MATH)

    async def run():
        client = CountingClient(LLMClient(engine_settings))
        try:
            result = await Reasoner(OPTIONS).reason(record, StageContext(engine_settings, lambda: client))
        finally:
            await client.client.close()
        return result, client.calls

    result, calls = asyncio.run(run())
    assert result.scoring == "completions"  # the engine returns top logprobs on /v1/completions
    scoring = [c for c in calls if c[0] == "complete" and isinstance(c[1], list)]
    rounds_with_drafts = [r for r in result.round_log if r.drafted]
    assert len(scoring) == len(rounds_with_drafts) == result.verify_requests
    assert [len(c[1]) for c in scoring] == [r.drafted for r in rounds_with_drafts]  # k prompts, one request
    assert all(c[2]["max_tokens"] == 1 and c[2]["logprobs"] == 20 for c in scoring)
    # prompt i of a round repeats prompt i-1 up to its step: the engine can share that prefix
    for _, prompts, _ in scoring:
        assert all(p.startswith(prompts[0].split("Rate its last step")[0].rstrip()) for p in prompts)

    assert result.drafted_steps == sum(r.drafted for r in result.round_log)
    assert result.accepted_steps == sum(r.accepted for r in result.round_log)
    drafted = [s for s in result.chain if s.author == "draft"]
    assert len(drafted) <= result.accepted_steps <= result.drafted_steps
    assert all(s.score is not None and s.score >= OPTIONS.threshold for s in drafted)
    assert all(s.score is None for s in result.chain if s.author == "oracle")
    for r in result.round_log:  # accepted = the longest prefix at or above the threshold
        assert all(s is not None and s >= OPTIONS.threshold for s in r.scores[: r.accepted])
        assert r.accepted == len(r.scores) or r.scores[r.accepted] is None or r.scores[r.accepted] < 5.0
        assert r.oracle_step == (r.accepted < r.drafted or r.drafted == 0) or result.stopped != "end"
    assert result.draft_tokens.completion > 0 and result.oracle_tokens.prompt > 0
    # the record's prefix, computed once, is served from the engine's prefix cache to the later oracle prompts
    assert 0 < result.oracle_tokens.cached < result.oracle_tokens.prompt
    assert result.stopped in ("answer", "end", "max_steps", "max_tokens")


def test_the_stage_writes_reasoning_and_a_trace_and_passes_the_rest(engine_settings):
    disabled = dict(MATH, id="m2", config={"disabled": ["spec-reasoner"]})
    out = io.StringIO()
    source = io.StringIO(json.dumps(MATH) + "\n" + json.dumps(disabled) + "\n")
    assert reason_stream(OPTIONS, source=source, sink=out, settings=engine_settings, concurrency=2) == 0
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]

    reasoning = Reasoning.from_dict(first["reasoning"])
    assert reasoning.draft_model == reasoning.oracle_model == "smollm2-135m"
    assert set(first["reasoning"]) >= {"answer", "chain", "rounds", "drafted_steps", "accepted_steps",
                                       "acceptance_rate", "draft_model", "oracle_model", "confidence"}
    assert all({"text", "author", "score"} <= set(step) for step in first["reasoning"]["chain"])
    assert first["mine"] == {"kept": True} and first["reference"] == {"answer": "7"}
    trace = first["trace"][-1]
    assert trace["stage"] == "spec-reasoner" and trace["status"] == "ok" and trace["calls"] >= 3
    written = reasoning.draft_tokens.completion + reasoning.oracle_tokens.completion
    assert 0 <= trace["completion_tokens"] - written <= 2  # plus the endpoint's probe: a token per call, once

    assert set(second["reasoning"]) == {"speculation"}  # disabled: no chain, no speculation, no model call
    assert second["reasoning"]["speculation"]["method"] == "none"
    assert second["trace"][-1]["status"] == "baseline" and second["trace"][-1]["calls"] == 0
