"""Declared once: every drafter the request contract names has a factory in the engine and a line in the CLI's
help; every format a precision policy may read has a kernel; the engine's defaults are the CLI's; and nothing in
the engine reads the environment below `EngineConfig`."""

import re
from pathlib import Path

import pytest

from precision_router.formats import BITS, FORMATS, POLICY_FORMATS, REGISTRY
from precision_router.kernels import KERNELS
from precision_router.policy import NATIVE_FORMATS, STATIC, native_format
from typer.main import get_command

import mimo_engine
from mimo_core.extensions import DRAFTERS, SPECULATION_METHODS, SpeculationRequest
from mimo_core.settings import Settings
from mimo_engine.cli import app
from mimo_engine.config import DEFAULTS, EngineConfig
from mimo_engine.speculation import DRAFTER_FACTORIES


def test_every_declared_drafter_has_a_factory_and_nothing_else_does():
    assert set(DRAFTER_FACTORIES) == set(DRAFTERS) and SPECULATION_METHODS == ("none", *DRAFTERS)
    for name in SPECULATION_METHODS:
        assert SpeculationRequest.from_dict({"method": name}).method == name


def _serve_options() -> dict:
    serve = get_command(app).commands["serve"]
    return {p.name: p for p in serve.params}


def test_the_cli_help_names_every_drafter_and_its_defaults_are_the_engine_config_s():
    options = _serve_options()
    assert all(name in options["speculation"].help for name in DRAFTERS)
    assert options["max_batch_size"].default == DEFAULTS.max_batch_size
    assert options["max_queue"].default == DEFAULTS.max_queue
    assert options["step_tokens"].default == DEFAULTS.step_tokens
    assert options["prefill_stall_ms"].default / 1e3 == DEFAULTS.prefill_stall.seconds
    assert options["prefill_stall_steps"].default == DEFAULTS.prefill_stall.decode_steps
    assert options["kv_cache_gib"].default * (1 << 30) == DEFAULTS.kv_cache_bytes
    assert options["speculation_block"].default == DEFAULTS.speculation.block


def test_every_format_a_policy_reads_has_a_kernel_and_the_lists_derive_from_the_registry():
    assert FORMATS == tuple(f for f in REGISTRY if REGISTRY[f].quantize_rows) and set(BITS) == set(REGISTRY)
    assert STATIC == POLICY_FORMATS == tuple(f for f in REGISTRY if REGISTRY[f].policy)
    assert set(POLICY_FORMATS) - {"f32"} <= set(KERNELS)  # f32 is multiplied by BLAS


def test_every_gguf_type_held_as_it_is_has_a_kernel_and_the_others_are_requantized():
    held = {name for name, f in REGISTRY.items() if f.gguf_type}
    assert held <= set(KERNELS) and {NATIVE_FORMATS[REGISTRY[f].gguf_type] for f in held} == held
    assert {native_format(t) for t in ("Q4_1", "Q5_0", "Q4_K", "Q6_K", "F16", "Q5_K", "IQ4_XS")} == {
        "q4_1", "q5_0", "q4_k", "q6_k", "f32", "q8_0"}
    with pytest.raises(ValueError, match="I32"):
        native_format("I32")


def test_engine_config_from_settings_takes_the_policies_threads_and_cache():
    settings = Settings(precision_policies=("native", "mxfp4"), engine_threads=3, cache_dir=Path("/tmp/c"))
    config = EngineConfig.from_settings(settings, max_batch_size=2)
    assert (config.precision_policies, config.threads, config.cache_dir) == (("native", "mxfp4"), 3, Path("/tmp/c"))
    assert config.max_batch_size == 2 and config.capacity == 2 + DEFAULTS.max_queue


def test_nothing_in_the_engine_reads_the_environment():
    for path in Path(mimo_engine.__file__).parent.rglob("*.py"):
        assert not re.search(r"os\.environ|getenv\(", path.read_text()), path
