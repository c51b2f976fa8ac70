"""Where work happened: the backend, endpoint, models, versions and machine a stage's trace entry carries.

Recorded by the stage that does the work, so a report written later, on another machine, still describes the run."""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .settings import Settings


@functools.cache
def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def machine() -> dict[str, Any]:
    """This machine, as far as a result depends on it."""
    return {"host": platform.node(), "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux's `model name`), else what `platform` knows: a speed depends on it."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass  # not Linux: platform's answer below
    return platform.processor() or platform.machine()


def endpoint(settings: Settings) -> str:
    """The backend's address without credentials, path or query: `embedded`, or scheme://host[:port]."""
    if settings.embedded:
        return "embedded"
    parts = urlsplit(settings.base_url or "")
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def measured_on(settings: Settings) -> str:
    """What a measurement kept between runs (a cost, a calibration) is valid for: the embedded engine of this
    installed version (its kernels set its speeds and its numbers), or the remote endpoint's address."""
    if settings.embedded:
        return f"embedded mimo-engine {package_version('mimo-engine')}"
    return str(settings.base_url)


def provenance(stage: str, settings: Settings, models: set[str]) -> dict[str, Any]:
    """A trace entry's provenance: backend, endpoint, the models that answered, versions, machine (never a key)."""
    versions = {"mimo-core": package_version("mimo-core"), stage: package_version(stage)}
    if settings.embedded and models:
        versions["mimo-engine"] = package_version("mimo-engine")  # the daemon runs this same installation
    return {
        "backend": "embedded" if settings.embedded else "remote",
        "endpoint": endpoint(settings),
        "models": sorted(models),
        "versions": {name: version for name, version in versions.items() if version},
        "machine": machine(),
    }
