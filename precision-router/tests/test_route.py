"""The route stage on the real embedded engine (smollm2-135m), its baseline, and the remote case."""

import io
import json

import pytest

from mimo_core import daemon
from mimo_core.settings import load_settings
from mimo_core.stage import run_stage
from mimo_core.testing import private_engine_settings
from precision_router.route import baseline, choose_policy, probe_entropy, route

MODEL = "smollm2-135m"
RECORDS = [
    {"schema": "mimo.task/1", "id": "m1", "domain": "math", "task": "What is 12 * 8?", "reference": {"answer": "96"}},
    {"schema": "mimo.task/1", "id": "g1", "domain": "general", "task": "Name a colour.",
     "config": {"disabled": ["precision-router"]}},
]


def run(settings) -> list[dict]:
    source = io.StringIO("".join(json.dumps(r) + "\n" for r in RECORDS))
    sink = io.StringIO()
    code = run_stage("precision-router", route, component="precision-router", baseline=baseline, source=source,
                     sink=sink, settings=settings)
    assert code == 0
    return [json.loads(line) for line in sink.getvalue().splitlines()]


@pytest.mark.model
def test_route_probes_the_real_engine_and_the_baseline_stays_native(tmp_path):
    settings = private_engine_settings(tmp_path)
    try:
        routed, disabled = run(settings)
    finally:
        daemon.stop_engine(settings)
    precision = routed["precision"]
    assert precision["backend"] == "engine" and precision["policy"].startswith("entropy@")
    assert precision["probe"]["tokens"] > 0 and precision["probe"]["mean_entropy"] >= 0
    assert precision["probe"]["bits_per_weight"] == 8.5  # the probe ran native: q8_0 everywhere
    # the thresholds the engine calibrated for this model and policy: one per layer group, an entropy in nats
    thresholds = precision["thresholds"]
    assert set(thresholds) == {"attn", "mlp", "head"}
    assert all(t in ("always", "never") or t >= 0 for t in thresholds.values())
    assert routed["trace"][-1]["status"] == "ok" and routed["reference"] == {"answer": "96"}
    assert disabled["precision"] == {"policy": "native", "backend": "engine"}
    assert disabled["trace"][-1]["status"] == "baseline"


def test_a_remote_backend_is_said_to_be_unsupported():
    settings = load_settings(overrides={"base_url": "http://127.0.0.1:9/v1", "model": "m"}, env={}, dotenv_path=None)
    routed, disabled = run(settings)
    assert routed["precision"]["backend"] == "unsupported" and routed["precision"]["reason"]
    assert disabled["precision"]["backend"] == "unsupported"


def test_policy_choice_from_domain_and_probe_entropy():
    assert choose_policy("math", 0.5) == "entropy@7" and choose_policy("math", 3.0) == "entropy@8"
    assert choose_policy("general", 0.1) == "entropy@5.5"

    class Token:
        def __init__(self, top):
            self.top_logprobs = top

    assert probe_entropy([Token({"a": 0.0})]) == 0.0  # certain
    assert probe_entropy([]) == 0.0
    assert abs(probe_entropy([Token({"a": -0.6931471805599453, "b": -0.6931471805599453})]) - 0.6931) < 1e-3
