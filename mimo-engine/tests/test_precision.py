"""Weights held packed on the real smollm2-135m: f32 unchanged, plans read the formats they report, mixed steps."""

import httpx
import numpy as np
import pytest
from precision_router.formats import BITS
from precision_router.policy import static_policy

from mimo_core.provenance import package_version
from mimo_core.settings import load_settings
from mimo_engine.runtime import EngineCore, LoadedModel, Work
from mimo_engine.step import WeightPlan
from mimo_core.testing import TEST_MODEL as MODEL

pytestmark = pytest.mark.model

# greedy continuations of the engine before weights were held packed (everything dequantized to float32 at load)
BEFORE = {
    "The capital of France is": [7042, 30, 198, 198, 504, 2988, 314, 42, 216, 34, 32, 33, 40, 29, 32, 33],
    "def fibonacci(n):": [472, 585, 304, 1758, 216, 32, 42, 448, 1003, 216, 33, 472, 1003, 304, 1672, 3987],
}


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return LoadedModel.load(MODEL, load_settings().cache_dir, policies=("native", "mxfp4", "f32"))


def greedy(core: EngineCore, seq_id, text: str, plan: WeightPlan, n: int = 16) -> list[int]:
    token = int(core.prefill(seq_id, core.model.tokenizer.encode(text), "last")[-1].argmax())
    out = [token]
    for _ in range(n - 1):
        core.append(seq_id, [token])
        (logits,) = core.step([Work(seq_id, 1, plan=plan)])
        token = int(logits[0].argmax())
        out.append(token)
    return out


def test_f32_greedy_output_is_unchanged_from_before(model):
    # f32 as the default: the prompt too runs in float32
    f32 = LoadedModel.load(MODEL, load_settings().cache_dir, policies=("f32",))
    # KV computed under other default formats is another model's as far as the cache (and its disk tier) knows
    assert f32.fingerprint != model.fingerprint and "q4_1" in model.fingerprint  # the GGUF's own Q4_1 layers
    assert f":engine={package_version('mimo-engine')}:" in model.fingerprint  # another engine rounds otherwise
    core = EngineCore(f32, num_blocks=16)
    plan = f32.plan(f32.policy("f32"))
    for i, (text, expected) in enumerate(BEFORE.items()):
        assert greedy(core, i, text, plan) == expected


def test_a_per_layer_plan_reads_the_formats_it_reports(model):
    n = model.config.n_layer
    plan = WeightPlan(attn=tuple("mxfp4" if i % 2 else "q4_1" for i in range(n)), mlp=("mxfp4",) * n, head="f32")
    core = EngineCore(model, num_blocks=16)
    ids = model.tokenizer.encode("Every layer group reads the form its plan names.")
    core.prefill("s", ids, reuse=False)
    core.append("s", [ids[-1]])  # a decode step (a prompt's chunk would take attention on gathered keys, unfused)
    batch = core.batch([Work("s", 1, "last", plan)])
    read: dict = {}
    model.forward(batch, core.pool, read)
    expected = model.plan_bytes(plan)
    assert {key: figures[0] for key, figures in read.items() if key[0] not in ("attention", "fused")} == expected
    # a step of few rows on integer forms runs each block as one fused call, timed as a whole; the head by itself
    assert read["fused", "blocks"][1] == n and read["fused", "blocks"][2] > 0 and read["head", "f32"][2] > 0
    assert set(expected) == {("attn", "q4_1"), ("attn", "mxfp4"), ("mlp", "mxfp4"), ("head", "f32")}
    # every layer's attention weights read at 4.25 bits in odd layers and the GGUF's own 5 in even ones
    assert expected["attn", "mxfp4"] * BITS["q4_1"] == expected["attn", "q4_1"] * BITS["mxfp4"]
    formats, weight_bytes, weights = model.plan_reads(plan)
    assert formats == {"attn": {"q4_1", "mxfp4"}, "mlp": {"mxfp4"}, "head": {"f32"}}
    assert weight_bytes == sum(expected.values()) and weights == sum(model.group_weights().values())


def test_sequences_with_different_plans_share_a_step_and_get_their_own_logits(model):
    native, mxfp4 = model.plan(model.policy("native")), model.plan(model.policy("mxfp4"))
    ids = model.tokenizer.encode("The three primary colours are red, yellow and")
    core = EngineCore(model, num_blocks=32)
    alone = {}
    for name, plan in (("native", native), ("mxfp4", mxfp4)):
        core.add(name, ids, reuse=False)
        (alone[name],) = core.step([Work(name, len(ids), "last", plan)])
    for name in alone:
        core.add(("mixed", name), ids, reuse=False)
    read: dict = {}
    batch = core.batch([Work(("mixed", "native"), len(ids), "last", native),
                        Work(("mixed", "mxfp4"), len(ids), "last", mxfp4)])
    mixed = model.forward(batch, core.pool, read)
    np.testing.assert_allclose(mixed[0], alone["native"][0], atol=2e-3)
    np.testing.assert_allclose(mixed[1], alone["mxfp4"][0], atol=2e-3)
    assert np.abs(alone["native"] - alone["mxfp4"]).max() > 0.1  # the two plans really computed differently
    assert {fmt for group, fmt in read if group != "attention"} == {"q4_1", "q8_0", "mxfp4"}  # q8_0: the head


def test_entropy_policy_is_calibrated_to_its_target_bits(model):
    with pytest.raises(ValueError, match="was not loaded with"):
        model.policy("bf16")
    entropy = model.policy("entropy@5.5")
    assert entropy.target_bits == 5.5 and len(set(entropy.thresholds.values())) == 1
    low, high = model.plan(entropy, 0.0), model.plan(entropy, 100.0)
    assert set(low.mlp) == {"mxfp4"} and set(high.mlp) == {"q4_1"} and model.plan(entropy) == high
    below = np.mean(model.calibration < entropy.thresholds["mlp"])  # share of calibration tokens at MXFP4
    native = 8 * sum(model.plan_bytes(high).values()) / sum(model.group_weights().values())  # 5.74
    bits = below * 4.25 + (1 - below) * native
    assert 0 < below < 0.5 and abs(bits - 5.5) < 0.1


def test_the_response_reports_formats_and_bytes_and_metrics_derive_them(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 6,
            "temperature": 0, "mimo": {"precision": {"policy": "experts-mxfp4"}}}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).json()
    report = reply["mimo"]["precision"]
    computed = reply["usage"]["prompt_tokens"] - reply["usage"]["prompt_tokens_details"]["cached_tokens"]
    tokens = computed + reply["usage"]["completion_tokens"] - 1  # the last sampled token is never computed
    assert report["policy"] == "experts-mxfp4"
    assert report["tokens"] == {"attn": {"q4_1": tokens}, "mlp": {"mxfp4": tokens}, "head": {"q8_0": tokens}}
    assert 5.0 < report["bits_per_weight"] < 6.5
    assert report["weight_bytes"] == report["weight_bytes_per_token"] * tokens
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'mimo_engine_precision_weight_bytes_total{{model="{MODEL}"}}' in metrics
    bad = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "mimo": {"precision": {"policy": "fp3"}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "mimo.precision.policy"


def test_static_policies_assign_one_format_everywhere():
    assert static_policy("mxfp4").assign(0.1).formats() == {"mxfp4"}
    assert static_policy("experts-mxfp4").assign(None).mlp == "mxfp4"


def test_blocks_computed_under_another_plan_are_never_reused(model):
    # a block's hash names its tokens and the model, not the formats its keys and values were computed with
    mxfp4 = model.plan(model.policy("mxfp4"))
    ids = model.tokenizer.encode("A prompt long enough to fill more than two blocks of sixteen tokens each, so that "
                                 "a later request starting the same way would find them in the cache.")
    core = EngineCore(model, num_blocks=32)
    core.add("other", ids, reuse=False)
    core.step([Work("other", len(ids), "last", mxfp4)])
    assert core.add("later", ids + [13], reuse=True)["hbm"] == 0
    core.add("default", ids, reuse=False)
    core.step([Work("default", len(ids), "last")])
    assert core.add("again", ids + [13], reuse=True)["hbm"] == len(ids) // 16 * 16


def test_the_thread_setting_reaches_each_thread_that_runs_the_kernels(model):
    import dataclasses
    import threading

    import numba

    one = dataclasses.replace(model, threads=1)
    seen = []

    def run_here() -> None:  # a new thread starts with numba's default: every core
        before = numba.get_num_threads()
        one.use_threads()
        seen.extend([before, numba.get_num_threads()])

    thread = threading.Thread(target=run_here)
    thread.start()
    thread.join()
    assert seen == [numba.config.NUMBA_NUM_THREADS, 1]
