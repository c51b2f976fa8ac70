"""The route stage on the real embedded engine (smollm2-135m), its baseline, and the remote case."""

import asyncio
import functools

import pytest

from mimo_core.client import Completion, Usage
from mimo_core.record import TaskRecord
from mimo_core.settings import load_settings
from mimo_core.stage import StageContext, run_stage
from mimo_core.testing import pipe
from precision_router.route import (Cost, Router, baseline, choose_deployment, choose_policy, pays, probe_entropy,
                                    remote)

RECORDS = [
    {"schema": "mimo.task/1", "id": "m1", "domain": "math", "task": "What is 12 * 8?", "reference": {"answer": "96"}},
    {"schema": "mimo.task/1", "id": "g1", "domain": "general", "task": "Name a colour.",
     "config": {"disabled": ["precision-router"]}},
]


def run(settings) -> list[dict]:
    code, out = pipe(functools.partial(run_stage, "precision-router", Router().route), RECORDS,
                     component="precision-router", baseline=baseline, settings=settings)
    assert code == 0
    return out


@pytest.mark.model
def test_route_probes_the_real_engine_and_the_baseline_stays_native(private_engine):
    routed, disabled = run(private_engine())
    precision = routed["precision"]
    assert precision["backend"] == "engine" and precision["candidate"].startswith("entropy@")
    assert precision["probe"]["tokens"] > 0 and precision["probe"]["mean_entropy"] >= 0
    # the candidate was measured against native on this engine, and kept only where it pays
    native, candidate = precision["cost"]["native"], precision["cost"][precision["candidate"]]
    # the probe ran native: the GGUF's own Q4_1 blocks (5 bits) in every layer, its Q8_0 (8.5) in the head
    assert 5 < precision["probe"]["bits_per_weight"] == native["bits_per_weight"] < 8.5
    assert candidate["bits_per_weight"] <= native["bits_per_weight"]
    why_not = pays(Cost(**native), Cost(**candidate))
    assert (precision["policy"] == "native") == (why_not is not None)
    assert precision["stepped_aside"] == (None if why_not is None else f"{precision['candidate']} does not pay: {why_not}")
    # the thresholds the engine calibrated for this model and policy: one per layer group, an entropy in nats
    thresholds = precision["thresholds"]
    assert set(thresholds) == {"attn", "mlp", "head"}
    assert all(t in ("always", "never") or t >= 0 for t in thresholds.values())
    assert routed["trace"][-1]["status"] == "ok" and routed["reference"] == {"answer": "96"}
    assert disabled["precision"] == {"policy": "native", "backend": "engine"}
    assert disabled["trace"][-1]["status"] == "baseline"


def test_a_remote_backend_without_deployments_offers_one_precision():
    settings = load_settings(overrides={"base_url": "http://127.0.0.1:9/v1", "model": "m"}, env={}, dotenv_path=None)
    routed, disabled = run(settings)
    assert routed["precision"]["backend"] == "unsupported" and "one precision" in routed["precision"]["reason"]
    assert routed["precision"]["policy"] == "native" and routed["trace"][-1]["calls"] == 0
    assert disabled["precision"] == {"policy": "native", "backend": "model-tier"}


class Deployments:
    """A remote server's chat with or without logprobs (a unit test of control flow: no backend)."""

    def __init__(self, logprobs):
        self.logprobs, self.models = logprobs, []

    async def chat(self, messages, **kwargs):
        self.models.append(kwargs["model"])
        return Completion(["x"], ["stop"], kwargs["model"], Usage(1, 5, 1), 0.0, logprobs=self.logprobs)


@pytest.mark.parametrize("domain, bits, deployment", [("math", 7.0, "m-fp8"), ("general", 5.5, "m-fp8")])
def test_a_remote_record_goes_to_the_cheapest_deployment_meeting_its_target(domain, bits, deployment):
    settings = load_settings(overrides={"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                        "precision_models": (("fp8", "m-fp8"), ("mxfp4", "m-mxfp4"))},
                             env={}, dotenv_path=None)
    record = TaskRecord(id=1, domain=domain, task="t")
    section = asyncio.run(remote(record, StageContext(settings, lambda: Deployments(None), record)))
    assert section["backend"] == "model-tier" and section["target_bits"] == bits
    assert section["deployment"] == deployment and "no logprobs" in section["reason"]


def test_deployments_and_whether_a_policy_pays():
    assert choose_deployment({"fp8": "a", "mxfp4": "b", "bf16": "c"}, 7.0) == "fp8"
    assert choose_deployment({"fp8": "a", "mxfp4": "b"}, 4.0) == "mxfp4"
    assert choose_deployment({"mxfp4": "b"}, 7.0) is None  # none meets the target: native
    with pytest.raises(ValueError, match="not a format"):
        choose_deployment({"fp3": "x"}, 7.0)
    native = Cost(8.5, 20.0)
    assert pays(native, Cost(6.0, 18.0)) is None
    assert "about as many bytes" in pays(native, Cost(8.3, 15.0))
    assert "slower" in pays(native, Cost(6.0, 25.0))
    assert "did not report" in pays(native, Cost(None, 15.0))


def test_policy_choice_from_domain_and_probe_entropy():
    assert choose_policy("math", 0.5) == "entropy@7" and choose_policy("math", 3.0) == "entropy@8"
    assert choose_policy("general", 0.1) == "entropy@5.5"

    class Token:
        def __init__(self, top):
            self.top_logprobs = top

    assert probe_entropy([Token({"a": 0.0})]) == 0.0  # certain
    assert probe_entropy([]) == 0.0
    assert abs(probe_entropy([Token({"a": -0.6931471805599453, "b": -0.6931471805599453})]) - 0.6931) < 1e-3
