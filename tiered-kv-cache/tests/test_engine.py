"""The tiers inside the real engine (smollm2-135m): greedy output is token-identical with the cache off and served
from each tier; the plan stage warms a record's prefix, and the next engine process finds it on disk."""

import asyncio
import io

import numpy as np
import pytest

from mimo_core import daemon
from mimo_core.client import Completion, Usage
from mimo_core.record import TaskRecord, write_record
from mimo_core.settings import load_settings
from mimo_core.stage import StageContext
from mimo_core.testing import TEST_MODEL as MODEL, pipe
from mimo_engine.runtime import BLOCK_SIZE, EngineCore, LoadedModel, Work
from tiered_kv_cache import TierConfig
from tiered_kv_cache.bench import private_engine
from tiered_kv_cache.disk import inspect_disk
from tiered_kv_cache.live import live_stats
from tiered_kv_cache.plan import (NO_CACHED_COUNT, NO_SWITCH, SERVER_REASON, baseline_record, plan_record,
                                  run_plan)

pytestmark = pytest.mark.model
PROMPT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
          "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. The tower is")
POOL_BLOCKS = 10  # the prompt and its generation fit; a filler of this many blocks evicts everything cached


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return LoadedModel.load(MODEL, load_settings().cache_dir)


def generate(core: EngineCore, seq: str, prompt: list[int], reuse: bool, n: int = 8) -> tuple[list[int], dict]:
    """Greedy tokens after `prompt`, and the prompt tokens served by each tier; the sequence is freed after."""
    hits = core.add(seq, prompt, reuse)
    (logits,) = core.step([Work(seq, core.pending(seq))])
    tokens = [int(logits[-1].argmax())]
    while len(tokens) < n:
        core.append(seq, tokens[-1:])
        (logits,) = core.step([Work(seq, 1)])
        tokens.append(int(logits[-1].argmax()))
    core.free(seq)
    return tokens, hits


def evict_everything(core: EngineCore) -> None:
    core.prefill("filler", list(range(1000, 1000 + POOL_BLOCKS * 16)), reuse=False)
    core.free("filler")


def test_greedy_output_is_identical_with_the_cache_off_and_served_from_each_tier(model, tmp_path):
    prompt = model.tokenizer.encode(PROMPT)
    assert len(prompt) >= 48
    full = (len(prompt) - 1) // 16 * 16  # tokens in the full blocks a lookup may serve

    off, none = generate(EngineCore(model, POOL_BLOCKS), "off", prompt, reuse=False)
    assert sum(none.values()) == 0

    core = EngineCore(model, POOL_BLOCKS, TierConfig(dram_blocks=16))
    generate(core, "first", prompt, reuse=True)
    hbm, hits = generate(core, "hbm", prompt, reuse=True)
    assert hits == {"hbm": full, "dram": 0, "disk": 0} and hbm == off
    evict_everything(core)
    dram, hits = generate(core, "dram", prompt, reuse=True)
    assert hits == {"hbm": 0, "dram": full, "disk": 0} and dram == off

    core = EngineCore(model, POOL_BLOCKS, TierConfig(disk_blocks=16, disk_root=tmp_path))
    generate(core, "first", prompt, reuse=True)
    evict_everything(core)  # no dram: straight to disk
    disk, hits = generate(core, "disk", prompt, reuse=True)
    assert hits == {"hbm": 0, "dram": 0, "disk": full} and disk == off
    core.close()  # the next process's turn: every cached block goes to disk
    again, hits = generate(EngineCore(model, POOL_BLOCKS, TierConfig(disk_blocks=16, disk_root=tmp_path)), "next",
                           prompt, reuse=True)
    assert hits["disk"] == full and again == off


def test_a_prefix_served_from_disk_gives_the_logits_of_a_prefill_from_scratch(model, tmp_path):
    prompt = model.tokenizer.encode(PROMPT)
    # computed in the steps the served prompt takes: its cached blocks, then the rest (int8 activations round apart
    # in another blocking, by a code here and there, so only the same steps can be compared exactly)
    cached = (len(prompt) - 1) // BLOCK_SIZE * BLOCK_SIZE
    cold = EngineCore(model, POOL_BLOCKS).prefill("cold", prompt, "all", reuse=False, chunk=cached)  # [T, V]
    core = EngineCore(model, POOL_BLOCKS, TierConfig(disk_blocks=16, disk_root=tmp_path))
    core.prefill("first", prompt, reuse=False, chunk=cached)
    core.close()
    core = EngineCore(model, POOL_BLOCKS, TierConfig(disk_blocks=16, disk_root=tmp_path))
    served = core.prefill("b", prompt, "all", reuse=True)  # logits of the positions not served from disk
    assert len(served) == len(prompt) - cached
    assert np.abs(served - cold[-len(served):]).max() <= 1e-5 * np.abs(cold).max()  # the bytes came back exact


def record(i, task="What is 12 * 8?", **config) -> str:
    out = io.StringIO()
    write_record(TaskRecord(id=i, domain="math", task=task, config=config), out)
    return out.getvalue()


def plan(lines: list[str], settings) -> list[dict]:
    """The plan stage over `lines`, one record at a time (two records warming one prefix at the same moment would
    both compute it: the engine shares committed blocks, not a prefill in flight)."""
    code, out = pipe(run_plan, lines, settings=settings, concurrency=1)
    assert code == 0
    return out


def test_plan_warms_the_prefix_and_the_next_engine_process_finds_it_on_disk():
    with private_engine(MODEL) as settings:
        task = "A farmer has 17 sheep and buys 5 times as many goats as sheep. How many animals does he have?"
        first, same, off = plan([record(1, task), record(2, task), record(3, task, disabled=["tiered-kv-cache"])],
                                settings)
        assert first["kv"]["enabled"] and first["kv"]["warmed"] and first["kv"]["backend"] == "engine"
        assert first["kv"]["prefix_tokens"] > 48 and first["kv"]["models"] == {MODEL: first["kv"]["models"][MODEL]}
        assert first["kv"]["prefix_key"] == same["kv"]["prefix_key"]
        assert same["kv"]["tier_hits"]["hbm"] >= 48  # the first record warmed the same prefix
        assert off["kv"]["enabled"] is False and off["trace"][-1]["status"] == "baseline"
        assert off["trace"][-1]["calls"] == 0 and first["trace"][-1]["calls"] == 1

        live = live_stats(settings).models[MODEL]
        assert live.figures["hit_tokens"]["hbm"] >= 48 and live.tier_capacity_blocks["disk"] > 0
        assert 0 < live.hit_rate < 1

        daemon.stop_engine(settings)  # SIGTERM: the engine moves its cached blocks to disk, then exits
        assert inspect_disk(settings.cache_dir / "kv").blocks >= 3
        (again,) = plan([record(4, task)], settings)  # a new engine process
        assert again["kv"]["tier_hits"]["disk"] >= 48


class Server:
    """A remote server's chat that reports `cached` prompt tokens, or none (a unit test of control flow)."""

    def __init__(self, cached):
        self.cached, self.calls = cached, []

    async def chat(self, messages, **kwargs):
        self.calls.append(kwargs)
        return Completion(["x"], ["stop"], kwargs["model"], Usage(1, 40, 1, cached_tokens=self.cached), 0.01)


@pytest.mark.parametrize("cached", [32, None])
def test_plan_warms_a_remote_servers_own_cache_and_says_what_it_reported(cached):
    settings = load_settings(overrides={"base_url": "http://127.0.0.1:9/v1", "model": "m"}, env={},
                             dotenv_path=None)
    server = Server(cached)
    task = TaskRecord(id=1, domain="math", task="What is 12 * 8?")
    asyncio.run(plan_record(task, StageContext(settings, lambda: server, task)))
    kv = task.kv
    assert kv["backend"] == "server" and kv["warmed"] and kv["enabled"] and kv["cached_tokens"] == cached
    assert kv["reason"] == (SERVER_REASON if cached is not None else f"{SERVER_REASON}; {NO_CACHED_COUNT}")
    assert [c["model"] for c in server.calls] == ["m"]  # one warm request (the client sends no engine fields)
    off = TaskRecord(id=2, domain="math", task="What is 12 * 8?", config={"disabled": ["tiered-kv-cache"]})
    baseline_record(off, StageContext(settings, lambda: server, off))
    assert off.kv["enabled"] is False and off.kv["reason"] == NO_SWITCH
