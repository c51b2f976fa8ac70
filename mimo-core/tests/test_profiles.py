import pytest

from mimo_core.profiles import (
    HardwareProfile,
    load_profile,
    measure_disk_read_bandwidth,
    measure_memory_bandwidth,
    shipped_profiles,
)


def test_shipped_profiles_load_with_consistent_figures():
    names = shipped_profiles()
    assert {"h100-sxm", "h200", "8xh200", "this-machine"} <= set(names)
    h100, h200, node = (load_profile(n) for n in ("h100-sxm", "h200", "8xh200"))
    assert h200.hbm_bytes > h100.hbm_bytes and h200.hbm_bandwidth > h100.hbm_bandwidth
    assert node.hbm_bytes == pytest.approx(8 * h200.hbm_bytes)
    for p in (h100, h200, node):  # each tier is slower than the one above it
        assert p.hbm_bandwidth > p.dram_bandwidth > p.nvme_bandwidth
        assert HardwareProfile.from_dict(p.to_dict()) == p


def test_unknown_profile_and_unknown_field_are_refused():
    with pytest.raises(ValueError, match="unknown hardware profile"):
        load_profile("tpu-v9")
    with pytest.raises(ValueError, match="unknown field"):
        HardwareProfile.from_dict({"name": "x", "warp_drive": 1})


def test_measurements_are_positive_and_this_machine_is_kept(tmp_path):
    assert measure_memory_bandwidth(16 << 20) > 1e8
    assert measure_disk_read_bandwidth(tmp_path, 8 << 20) > 1e6
    first = load_profile("this-machine", tmp_path)
    assert first.gpus == 0 and first.hbm_bytes is None and first.dram_bytes > 0
    assert (tmp_path / "profiles" / "this-machine.yaml").is_file()
    assert load_profile("this-machine", tmp_path) == first  # second load reads the kept figures
