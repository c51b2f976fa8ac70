"""The sweep on the real smollm2-135m: references that must hold exactly, and the routed pass equal to decode's."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mimo_core.settings import load_settings
from mimo_core.testing import TEST_MODEL
from mimo_engine.cli import app
from mimo_engine.runtime import LoadedModel
from mimo_engine.sampling import log_softmax
from mimo_engine.sweep import SweepPoint, Sweep, _Runner, front_perplexity, judge, mean_kl, pareto_front, perplexity

TEXT = ("The water that reaches a kitchen tap in a small hill town has usually travelled farther than the people "
        "drinking it would guess. It starts as rain on the slopes above the valley, soaks into gravel and fractured "
        "rock, and moves downhill underground for months before it surfaces in a spring or is drawn up by a well.")


def point(policy, bits, ppl, kind="static"):
    return SweepPoint(policy, kind, bits, ppl, ppl / 10.0, 0.0, None)


def test_pareto_front_and_the_entropy_verdict():
    static = [point("f32", 32, 10.0), point("bf16", 16, 10.0), point("q8_0", 8.5, 10.1), point("mxfp8", 8.25, 10.5),
              point("mxfp4", 4.25, 20.0), point("bad", 9.0, 30.0)]
    assert [p.policy for p in pareto_front(static)] == ["mxfp4", "mxfp8", "q8_0", "bf16"]
    assert front_perplexity(pareto_front(static), 6.25) == pytest.approx(15.25)
    assert front_perplexity(pareto_front(static), 4.0) is None  # outside the front's bits: no verdict
    under, over = point("entropy@6", 6.25, 12.0, "entropy"), point("entropy@7", 8.3, 10.45, "entropy")
    goals = judge([*static, under, over])
    assert under.below_static_front and not over.below_static_front
    assert goals["entropy_on_or_below_static_front"] is False and goals["which"] == []


def test_perplexity_and_kl_of_known_distributions():
    logp = log_softmax(np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])))
    assert perplexity(logp, [0, 1, 1]) == pytest.approx(np.exp(-(np.log(0.25) + np.log(0.8)) / 2))
    assert mean_kl(logp, logp) == pytest.approx(0.0, abs=1e-9)
    uniform = log_softmax(np.zeros((2, 3)))
    assert mean_kl(logp, uniform) > 0


@pytest.mark.model
def test_the_routed_pass_equals_a_prefill_and_the_command_measures_every_policy(tmp_path):
    model = LoadedModel.load(TEST_MODEL, load_settings().cache_dir, policies=["native", "entropy"])
    ids = model.tokenizer.encode(TEXT)
    runner = _Runner(model, ids)
    native = model.policy("native")
    routed, nbytes, low = runner.routed(native)  # token by token, as decode computes them
    # the same model up to int8 activations' rounding, which the integer kernels (token by token) and BLAS (a
    # prefill) round differently: measured 0.3% apart in perplexity
    whole = runner.prefill(model.plan(native))
    ratio = perplexity(log_softmax(routed), ids) / perplexity(log_softmax(whole), ids)
    assert abs(ratio - 1) < 0.02 and (routed.argmax(-1) == whole.argmax(-1)).mean() > 0.9
    assert low == 0 and nbytes == model.plan_reads(model.plan(native))[1] * len(ids)

    text = tmp_path / "text.txt"
    text.write_text(TEXT * 2)
    result = CliRunner().invoke(app, ["sweep", "--model", TEST_MODEL, "--text", str(text), "--rounds", "1",
                                      "--plot", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    sweep = Sweep.from_dict(json.loads(result.stdout))
    by = {p.policy: p for p in sweep.points}
    assert by["f32"].perplexity_ratio == 1.0 and by["f32"].mean_kl == 0.0 and by["f32"].bits_per_weight == 32.0
    # smollm2: native is its own Q4_1 layers (5 bits) and Q8_0 head (8.5)
    assert 5 < by["native"].bits_per_weight < 8.5 and by["mxfp4"].bits_per_weight == 4.25
    assert by["mxfp4"].mean_kl > by["mxfp8"].mean_kl > by["bf16"].mean_kl > 0
    assert all(0 <= p.low_share <= 1 for p in sweep.points if p.kind == "entropy")
    assert all(p.decode_tokens_per_s > 0 for p in sweep.points)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_one_line(tmp_path):
    missing = str(tmp_path / "missing.txt")
    result = CliRunner().invoke(app, ["sweep", "--model", "nope", "--text", missing])
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output  # the model is checked first
    result = CliRunner().invoke(app, ["sweep", "--model", TEST_MODEL, "--text", missing])
    assert result.exit_code == 2 and "missing.txt" in result.output

