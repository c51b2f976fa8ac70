"""`mimo-engine bench`'s roofline arithmetic on plain numbers: the cache size that sizes the bandwidth buffer, and a
fraction of the roofline that is never published above 1 (no timing here: the bench's figures are measured); and the
instructions it names for each integer format."""

import platform

import pytest

from mimo_core.profiles import FALLBACK_BUFFER_BYTES, MIN_BUFFER_BYTES, bandwidth_buffer_bytes, last_level_cache_bytes
from mimo_engine.bench import (Bandwidth, BandwidthSampler, BenchResult, DecodeFigures, integer_instructions,
                               roofline_fraction)


def test_a_decode_within_the_roofline_is_its_fraction():
    assert roofline_fraction(18.0, 20.0) == (0.9, None)
    assert roofline_fraction(20.0, 20.0) == (1.0, None)  # exactly at the bound is possible


@pytest.mark.parametrize("decode, roofline", [(47.12, 20.69), (20.01, 20.0)])
def test_a_decode_faster_than_the_roofline_is_no_fraction_but_a_note(decode, roofline):
    fraction, note = roofline_fraction(decode, roofline)
    assert fraction is None
    assert "inconsistent" in note and "under-measured" in note and f"{decode:g} tokens/s" in note


def _cache(folder, index: int, level: int, size: str) -> None:
    (folder / f"index{index}").mkdir(parents=True)
    (folder / f"index{index}" / "level").write_text(f"{level}\n")
    (folder / f"index{index}" / "size").write_text(f"{size}\n")


def test_the_buffer_is_four_last_level_caches_or_the_fallback(tmp_path):
    _cache(tmp_path, 0, 1, "32K")
    _cache(tmp_path, 2, 2, "512K")
    _cache(tmp_path, 3, 3, "32768K")
    assert last_level_cache_bytes(tmp_path) == 32 << 20
    assert bandwidth_buffer_bytes(32 << 20) == 128 << 20
    assert bandwidth_buffer_bytes(1 << 20) == MIN_BUFFER_BYTES  # a small cache: still far past it
    assert last_level_cache_bytes(tmp_path / "absent") is None
    assert bandwidth_buffer_bytes(None) == FALLBACK_BUFFER_BYTES == 256 << 20


def test_the_best_sample_counts_and_the_json_says_how(tmp_path):
    _cache(tmp_path, 3, 3, "16M")
    sampler = BandwidthSampler(threads=2, caches=tmp_path)
    sampler.reads, sampler.copies = [2.96e9, 7.1e9, 6.5e9], [4.6e9, 9.0e9, 8.8e9]  # one sample slowed by other work
    measured = sampler.result()
    assert (measured.read_gb_s, measured.copy_gb_s, measured.samples) == (7.1, 9.0, 3)
    assert measured.buffer_bytes == 64 << 20 and measured.last_level_cache_bytes == 16 << 20
    assert "best of 3" in measured.method and "2 threads" in measured.method
    result = BenchResult(
        model="m", policy="native", cpu_count=2, load_average={"before": 0.1, "after": 0.2}, load_s=1.0,
        prompt_tokens=128, prefill_tokens_per_s=100.0, decode={"1": DecodeFigures(20.0, 50.0)}, bandwidth=measured,
        weight_bytes_per_token=143_025_408, bits_per_weight=8.5, roofline_tokens_per_s=49.64,
        decode_fraction_of_roofline=None, batch8_over_batch1=1.8, targets={},
        roofline_note=roofline_fraction(50.0, 49.64)[1],
    )  # fmt: skip
    data = result.to_dict()
    assert data["decode_fraction_of_roofline"] is None and data["roofline_note"]
    assert data["bandwidth"]["method"] == measured.method
    assert BenchResult.from_dict(data) == result and isinstance(result.bandwidth, Bandwidth)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the x86 mnemonics")
def test_every_integer_format_of_a_plan_names_its_instructions_whether_or_not_it_ran_here():
    # the GGUF block formats run only inside the fused decode step, never through `matmul` in this process
    found = integer_instructions({"q4_k", "q5_0", "q6_k", "q8_0", "f32"})
    assert sorted(found) == ["q4_k", "q5_0", "q6_k", "q8_0"]  # f32 has no integer kernel
    assert all({"vpmaddubsw", "vpmaddwd"} <= set(names) or "vpdpbusd" in names for names in found.values())
