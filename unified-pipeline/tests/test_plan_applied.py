"""The record drives the inference: what the components decide reaches every later call, as the stages' `served`
figures show, through the real stage commands joined by OS pipes on the embedded engine (smollm2-135m)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mimo_core.record import TaskRecord
from mimo_core.testing import fresh_calibrations

pytestmark = pytest.mark.model

TASK = 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n'
POLICY = "mxfp4"  # pinned: on this CPU the router would measure that it does not pay and keep native


def command(name: str, *args: str) -> list[str]:
    return [str(Path(sys.executable).parent / name), *args]


PIPE = [
    command("precision-router", "route", "--policy", POLICY),
    command("tiered-kv-cache", "plan", "--concurrency", "1"),
    command("spec-reasoner", "reason", "--step-drafting", "always", "--k", "2", "--max-tokens", "24", "--step-tokens",
            "12", "--concurrency", "1"),
    command("multi-agent-orchestrator", "run", "--agents", "2", "--first-wave", "0", "--max-tokens", "24",
            "--concurrency", "1"),
]


def run_pipe(records: list[dict], env: dict[str, str]) -> list[dict]:
    """The records through the stage commands joined by OS pipes, as in a shell."""
    processes, upstream = [], subprocess.PIPE
    for argv in PIPE:
        process = subprocess.Popen(argv, stdin=upstream, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                   text=True)
        if processes:
            processes[-1].stdout.close()
        processes.append(process)
        upstream = process.stdout
    processes[0].stdin.write("".join(json.dumps(r) + "\n" for r in records))
    processes[0].stdin.close()
    out = processes[-1].stdout.read()
    assert [p.wait(timeout=900) for p in processes] == [0] * len(PIPE)
    return [json.loads(line) for line in out.splitlines()]


def served(record: dict, stage: str) -> dict | None:
    return next(e for e in record["trace"] if e["stage"] == stage)["served"]


@pytest.fixture(scope="module")
def records(engine_settings):
    settings = fresh_calibrations(engine_settings)  # the first record's spec-reasoner measures its drafters
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MIMO_")}, **settings.to_env()}
    base = {"domain": "coding", "task": TASK, "config": {"seed": 1}}
    return run_pipe([{"id": "full", **base},
                     {"id": "no-cache", **base, "config": {"seed": 1, "disabled": ["tiered-kv-cache"]}},
                     {"id": "no-spec", **base, "config": {"seed": 1, "disabled": ["spec-reasoner"]}}], env)


def test_the_routers_policy_reaches_the_later_stages_calls(records):
    full = records[0]
    assert full["precision"]["policy"] == POLICY and all(TaskRecord.from_dict(r) for r in records)
    assert set(served(full, "multi-agent-orchestrator")["policies"]) == {POLICY}  # every agent, under the policy
    assert POLICY in served(full, "spec-reasoner")["policies"]  # its oracle and draft calls for the record
    assert served(full, "spec-reasoner")["bits_per_weight"] < 8.5  # fewer bits really read than native's q8_0


def test_the_cache_plan_reaches_the_later_stages_calls(records):
    full, no_cache = records[0], records[1]
    assert full["kv"]["enabled"] and full["kv"]["warmed"] and no_cache["kv"]["enabled"] is False
    for stage in ("spec-reasoner", "multi-agent-orchestrator"):
        assert served(full, stage)["cached_tokens"] > 0, stage  # the warmed prefix, served from the cache
        assert served(no_cache, stage)["cached_tokens"] == 0, stage  # every call prefilled from scratch
        assert served(no_cache, stage)["reported"]["cached_tokens"] is True  # a reported 0, not a missing figure


def test_the_speculation_plan_reaches_the_calls_and_switching_it_off_stops_it(records):
    full, no_spec = records[0], records[2]
    assert served(full, "spec-reasoner")["drafted_tokens"] > 0  # its block drafters, measured on coding prompts
    method = full["reasoning"]["speculation"]["method"]
    assert method in ("ngram", "suffix", "none")
    # every agent's call ran with the drafter the spec-reasoner chose (the engine drafts where it pays)
    assert set(served(full, "multi-agent-orchestrator")["drafters"]) == {method}
    assert no_spec["reasoning"] == {"speculation": {"method": "none", "block": None,
                                                    "reason": "spec-reasoner is disabled", "settable": True,
                                                    "measured_acceptance": None}}
    assert served(no_spec, "spec-reasoner") is None  # no call at all
    assert set(served(no_spec, "multi-agent-orchestrator")["drafters"]) == {"none"}  # speculation sent as none
    assert served(no_spec, "multi-agent-orchestrator")["drafted_tokens"] == 0
