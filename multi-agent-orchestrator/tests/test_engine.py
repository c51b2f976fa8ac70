"""Against the real embedded engine (smollm2-135m): agents overlap, a stop frees the slot, forks share the prefix,
and the stage writes the consensus section (and the one-agent baseline when disabled)."""

import asyncio
import functools
import re
import time

import httpx
import pytest

from mimo_core import daemon
from mimo_core.client import LLMClient
from mimo_core.record import TaskRecord
from mimo_core.stage import StageContext
from mimo_core.testing import pipe
from multi_agent_orchestrator.options import Options
from multi_agent_orchestrator.orchestrate import Orchestration
from multi_agent_orchestrator.section import Consensus
from multi_agent_orchestrator.stage import run
from multi_agent_orchestrator.stream import StopStream, stream_chat

pytestmark = pytest.mark.model
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def _record(**fields):
    return TaskRecord.from_dict({"id": "m1", "domain": "math", "task": QUESTION, "config": {"seed": 1}, **fields})


def _params(settings, max_tokens, seed=0):
    return dict(model=settings.oracle_model, messages=[{"role": "user", "content": QUESTION}], n=1,
                temperature=0.8, seed=seed, max_tokens=max_tokens, logprobs=True, top_logprobs=3)


def _gauge(settings, name):
    port = daemon.read_state(settings).port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.findall(rf"^mimo_engine_{name}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.MULTILINE)
    return sum(float(v) for v in found)


def test_agents_overlap_in_time(engine_settings):
    async def go():
        client = LLMClient(engine_settings)
        arrivals = []
        try:
            await asyncio.gather(*(stream_chat(StageContext(engine_settings, lambda: client), _params(engine_settings, 12, seed),
                                               lambda chunk, s=seed: arrivals.append(s)) for seed in (1, 2)))
        finally:
            await client.close()
        return arrivals

    arrivals = asyncio.run(go())
    # the second stream's tokens arrive before the first stream's last token: they were decoded together
    assert arrivals.count(1) == 12 and arrivals.count(2) == 12
    assert max(i for i, s in enumerate(arrivals) if s == 1) > min(i for i, s in enumerate(arrivals) if s == 2)
    assert max(i for i, s in enumerate(arrivals) if s == 2) > min(i for i, s in enumerate(arrivals) if s == 1)


def test_a_stopped_stream_stops_generating_and_frees_its_slot(engine_settings):
    async def go():
        client = LLMClient(engine_settings)
        seen = []

        def on_token(chunk):
            seen.append(chunk)
            if len(seen) == 5:
                raise StopStream

        try:
            result = await stream_chat(StageContext(engine_settings, lambda: client), _params(engine_settings, 400),
                                       on_token)
        finally:
            await client.close()
        return result, seen

    result, seen = asyncio.run(go())
    assert len(seen) == 5 and result.finish_reasons == ["stopped"] and result.usage.completion_tokens == 5
    deadline = time.monotonic() + 60
    while _gauge(engine_settings, "running") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gauge(engine_settings, "running") == 0 and _gauge(engine_settings, "kv_blocks_used") == 0
    generated = _gauge(engine_settings, "completion_tokens_total")
    time.sleep(1.0)
    assert _gauge(engine_settings, "completion_tokens_total") == generated < 400


def _orchestrate(settings, record, options):
    async def go():
        client = LLMClient(settings)
        try:
            orchestration = Orchestration(record, StageContext(settings, lambda: client), options)
            return await orchestration.run(), orchestration
        finally:
            await client.close()

    return asyncio.run(go())


def test_forks_continue_the_parent_from_its_prefix_and_share_it(engine_settings):
    options = Options(agents=1, branches=2, fork_entropy=0.0, fork_min_token=6, early_stop=False, max_tokens=20)
    consensus, orchestration = _orchestrate(engine_settings, _record(), options)
    parent, *branches = orchestration.traces
    assert len(branches) == 2 and all(b.forked_from == 0 and b.fork_token == 6 for b in branches)
    assert all(b.text.startswith(b.prefix) and parent.text.startswith(b.prefix) and b.prefix for b in branches)
    assert all(len(b.confidences) == 6 + b.tokens for b in branches)  # the shared prefix's tokens, then its own
    # the engine served the branches' prompt (system, task, the parent's reply so far) from cached blocks
    assert all(b.cached_tokens and b.cached_tokens > 0 for b in branches)
    assert all(b.prompt_tokens > parent.prompt_tokens for b in branches)
    votes = [a for a in consensus.agents if a.forked_from == 0]
    assert len(votes) == 2 and consensus.n_agents == 1
    assert Consensus.from_dict(consensus.to_dict()) == consensus


def test_the_stage_votes_and_the_disabled_stage_is_one_agent(engine_settings):
    records = [_record(id="a"), _record(id="b", config={"seed": 1, "disabled": ["multi-agent-orchestrator"]})]
    options = Options(agents=3, branches=0, max_tokens=24)
    code, (voted, alone) = pipe(functools.partial(run, options, engine_settings), records)
    assert code == 0
    assert voted["trace"][-1]["status"] == "ok" and alone["trace"][-1]["status"] == "baseline"
    assert voted["consensus"]["n_agents"] == 3 and len(voted["consensus"]["agents"]) == 3
    assert voted["trace"][-1]["calls"] >= 3 and voted["trace"][-1]["completion_tokens"] > 0
    solo = Consensus.from_dict(alone["consensus"])
    assert solo.n_agents == 1 and len(solo.agents) == 1 and not solo.stopped_early
    # one agent's confidence is its own token certainty, never a vote share of 1
    assert solo.confidence == pytest.approx(solo.agents[0].certainty) and 0 < solo.confidence < 1
