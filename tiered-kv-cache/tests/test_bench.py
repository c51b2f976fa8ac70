"""The bench's figures when a server leaves some out: missing, and said to be, never 0 (fake responses: control flow
only; the bench itself runs the real engine)."""

import asyncio
import json

from mimo_core.client import Completion, Usage
from tiered_kv_cache.bench import AgentRun, agent_run, ask, disk_run, median_runs, summarize

FULL_REPORT = {"model": "m", "time_to_first_token_s": 0.5,
               "cache": {"enabled": True, "cached_tokens": 32, "prefilled_tokens": 268, "disk_hit_tokens": 0}}


def response(engine: dict | None, prompt_tokens: int = 300) -> Completion:
    return Completion(texts=["x"], finish_reasons=["length"], model="m", usage=Usage(1, prompt_tokens, 1),
                      latency_s=0.1, engine=engine)


class FakeClient:
    """Answers every chat with the same response, as a server that has no `mimo` report would."""

    def __init__(self, done: Completion):
        self.done = done

    async def chat(self, messages, **kwargs) -> Completion:
        return self.done


def run(ttft: float | None, cached: int | None = 272) -> AgentRun:
    return AgentRun(300, cached, None if cached is None else 300 - cached, ttft, 0,
                    [name for name, value in (("cached_tokens", cached), ("prefilled_tokens", cached),
                                              ("ttft_s", ttft)) if value is None])


def test_a_response_without_the_engine_report_has_its_figures_missing_not_zero():
    measured = asyncio.run(ask(FakeClient(response(None, prompt_tokens=0)), [], reuse=True))
    assert measured.cached_tokens is None and measured.prefilled_tokens is None and measured.ttft_s is None
    assert measured.prompt_tokens is None and measured.disk_hit_tokens is None
    assert set(measured.not_reported) == {"prompt_tokens", "cached_tokens", "prefilled_tokens", "ttft_s",
                                          "disk_hit_tokens"}
    written = json.loads(json.dumps(measured.to_dict()))
    assert written["ttft_s"] is None and "ttft_s" in written["not_reported"]


def test_a_report_without_its_time_to_first_token_keeps_the_figures_it_has():
    partial = {"model": "m", "cache": FULL_REPORT["cache"]}
    measured = agent_run(response(partial))
    assert measured.not_reported == ["ttft_s"] and measured.ttft_s is None
    assert (measured.prompt_tokens, measured.cached_tokens, measured.prefilled_tokens) == (300, 32, 268)
    whole = agent_run(response(FULL_REPORT))
    assert whole.not_reported == [] and whole.ttft_s == 0.5 and whole.disk_hit_tokens == 0


def test_a_median_over_rounds_where_one_lacks_the_figure_is_missing():
    (agent,) = median_runs([[run(0.4)], [run(None)], [run(0.6)]])
    assert agent.ttft_s is None and agent.not_reported == ["ttft_s"] and agent.cached_tokens == 272
    (agent,) = median_runs([[run(0.4)], [run(0.5)], [run(0.9)]])
    assert agent.ttft_s == 0.5 and agent.not_reported == []


def test_ratios_over_a_missing_figure_are_missing_and_say_why():
    off = [[run(1.5, 0), run(1.4, 0), run(None, 0)]]
    on = [[run(1.3), run(0.2), run(0.25)]]
    disk = disk_run(served=run(0.14), cold=run(None, 0))
    bench = summarize("m", 3, 1, 276, off, on, disk)
    assert bench.ttft_drop_later_agents is None and "ttft_drop_later_agents" in bench.not_reported
    assert bench.not_reported["off.ttft_s"].endswith("agents 3")
    assert bench.prefill_saved == round(3 * 272 / (3 * 276), 4)  # every cached count was reported
    assert disk.ttft_drop is None and disk.cold_ttft_s is None and disk.disk_ttft_s == 0.14
    assert "disk.ttft_drop" in bench.not_reported and "disk.cold.ttft_s" in bench.not_reported
    written = bench.to_dict()
    assert written["ttft_drop_later_agents"] is None and written["disk"]["ttft_drop"] is None

    unreported = summarize("m", 3, 1, None, off, [[run(0.3, None)] * 3], disk)
    assert unreported.prefill_saved is None and unreported.shareable_tokens is None
    assert {"shared_tokens", "prefill_saved", "on.cached_tokens"} <= set(unreported.not_reported)


def test_figures_all_reported_give_the_ratios_and_nothing_missing():
    off = [[run(1.5, 0), run(1.4, 0), run(1.6, 0)]]
    on = [[run(1.3, 32), run(0.2), run(0.3)]]
    bench = summarize("m", 3, 1, 276, off, on, disk_run(served=run(0.1), cold=run(1.0, 0)))
    assert bench.not_reported == {} and bench.disk.not_reported == {}
    assert bench.ttft_drop_later_agents == round(1 - 0.25 / 1.5, 4) and bench.disk.ttft_drop == 0.9
    assert bench.prefill_saved == round((32 + 272 + 272) / (3 * 276), 4) and bench.shareable_tokens == 272
