"""Settings of every tool: flag > environment > .env > YAML config file > defaults."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml
from dotenv import dotenv_values
from platformdirs import user_cache_dir

ENGINE_ORACLE_MODEL = "qwen2.5-coder-0.5b"
ENGINE_DRAFT_MODEL = "smollm2-135m"
SHARED_FOLDERS = ("models", "calibrations")  # of a cache dir: what private engines share (`with_cache_dir`)


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def is_model_path(model: str) -> bool:
    """Whether `model` names a GGUF file rather than a registry model: it holds a / or ends in .gguf."""
    return "/" in model or model.lower().endswith(".gguf")


def served_model_name(model: str) -> str:
    """The name the embedded engine serves `model` under: a GGUF file's path made absolute (~ expanded), so that
    every tool, whatever its folder, names one file alike; a registry name as it is."""
    return os.path.abspath(os.path.expanduser(model)) if is_model_path(model) else model


@dataclass(frozen=True)
class Settings:
    """The resolved settings. `api_key` is never written anywhere: `to_dict` masks it."""

    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    draft_model: str | None = None
    cache_dir: Path = field(default_factory=lambda: Path(user_cache_dir("mimo-pipeline")))
    concurrency: int = 4
    timeout_s: float = 120.0
    max_retries: int = 2
    engine_extensions: bool = False
    engine_idle_timeout_s: float = 600.0
    precision_policies: tuple[str, ...] | None = None  # None: the engine's default set; ("all",): every policy
    engine_threads: int | None = None  # None: every core
    # a remote server's deployments of the oracle at other precisions: (policy or format, served model name) pairs
    precision_models: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())  # flags may pass a str
        if self.embedded:  # the engine's name for a GGUF file; a remote server's names are its own
            for name in ("model", "draft_model"):
                if getattr(self, name) is not None:
                    object.__setattr__(self, name, served_model_name(getattr(self, name)))

    @property
    def embedded(self) -> bool:
        """True when no remote endpoint is configured and the embedded engine serves every call."""
        return not self.base_url

    @property
    def oracle_model(self) -> str:
        """The model that answers and verifies (MIMO_MODEL, or the engine's default)."""
        return self.model or (ENGINE_ORACLE_MODEL if self.embedded else _required("MIMO_MODEL", self.model))

    @property
    def drafter_model(self) -> str:
        """The small draft model of spec-reasoner (MIMO_DRAFT_MODEL, or the engine's default)."""
        return self.draft_model or (ENGINE_DRAFT_MODEL if self.embedded else self.oracle_model)

    @property
    def send_extensions(self) -> bool:
        """Whether the `mimo` extension fields go out with requests (embedded engine, or opted in)."""
        return self.embedded or self.engine_extensions

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-safe values, with the API key reduced to whether it is set."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                out["api_key_set"] = bool(value)
                continue
            if isinstance(value, tuple):
                value = dict(value) if value and isinstance(value[0], tuple) else list(value)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out["backend"] = "embedded" if self.embedded else "remote"
        return out

    def to_env(self) -> dict[str, str]:
        """The environment variables that give these settings to another tool's process (unset ones left out).
        The key, when set, goes too: a child process's environment is where a key belongs, never a file or log."""
        out = {}
        for variable, (name, _) in VARIABLES.items():
            value = getattr(self, name)
            if value is not None:
                out[variable] = _to_text(value)
        return out

    def with_cache_dir(self, folder: Path) -> "Settings":
        """These settings with the engine's state, its KV tiers included, in `folder`, and what is a property of the
        models rather than of one engine still read from this cache (symlinks: the model files, and the calibrations
        measured on them), so a private engine starts with an empty KV cache and pulls or measures nothing twice."""
        folder.mkdir(parents=True, exist_ok=True)
        for shared in SHARED_FOLDERS:
            (self.cache_dir / shared).mkdir(parents=True, exist_ok=True)
            if not (folder / shared).exists():
                (folder / shared).symlink_to((self.cache_dir / shared).resolve())
        return dataclasses.replace(self, cache_dir=folder)


def _to_text(value: Any) -> str:
    """A setting's value as its variable's text (what its parser reads back)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(item if isinstance(item, str) else "=".join(item) for item in value)
    return str(value)


# variable -> (Settings field, parser)
def _parse_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use 1/0, true/false)")


def _parse_int(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _parse_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise SettingsError(f"{name}={raw!r} must be positive")
    return value


def _parse_url(name: str, raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")):
        raise SettingsError(f"{name}={raw!r} must start with http:// or https://")
    return raw.rstrip("/")


def _parse_str(name: str, raw: str) -> str | None:
    return raw.strip() or None


POLICY_NAME = re.compile(r"[a-z][a-z0-9_]*(-[a-z0-9_]+)*(@[0-9]+(\.[0-9]+)?)?")  # native, experts-mxfp4, entropy@5.5


def _parse_policies(name: str, raw: str) -> tuple[str, ...] | None:
    """Comma-separated precision policy names, or `all`. Only their form is checked here: which policies exist is
    the engine's to say (`mimo-engine serve` refuses an unknown one, naming this variable)."""
    names = tuple(part.strip() for part in raw.split(","))
    if names == ("",):
        return None
    for policy in names:
        if not POLICY_NAME.fullmatch(policy):
            raise SettingsError(f"{name}={raw!r}: {policy!r} is not a precision policy name (comma-separated names "
                                f"such as native,mxfp4,entropy@6, or all)")
    if "all" in names and len(names) > 1:
        raise SettingsError(f"{name}={raw!r}: `all` stands alone")
    return names


def _parse_models(name: str, raw: str) -> tuple[tuple[str, str], ...] | None:
    """`FORMAT=MODEL` pairs, comma-separated: the served model that runs the oracle at each precision."""
    if not raw.strip():
        return None
    pairs = []
    for part in raw.split(","):
        precision, sep, model = (piece.strip() for piece in part.partition("="))
        if not sep or not precision or not model or not POLICY_NAME.fullmatch(precision):
            raise SettingsError(f"{name}={raw!r}: {part.strip()!r} is not FORMAT=MODEL (such as fp8=mimo-fp8)")
        pairs.append((precision, model))
    return tuple(pairs)


def _parse_threads(name: str, raw: str) -> int | None:
    return _parse_int(name, raw, 1) if raw.strip() else None


VARIABLES: dict[str, tuple[str, Any]] = {
    "MIMO_BASE_URL": ("base_url", _parse_url),
    "MIMO_API_KEY": ("api_key", _parse_str),
    "MIMO_MODEL": ("model", _parse_str),
    "MIMO_DRAFT_MODEL": ("draft_model", _parse_str),
    "MIMO_CACHE_DIR": ("cache_dir", lambda n, r: Path(r).expanduser() if r.strip() else None),
    "MIMO_CONCURRENCY": ("concurrency", lambda n, r: _parse_int(n, r, 1)),
    "MIMO_TIMEOUT_S": ("timeout_s", _parse_float),
    "MIMO_MAX_RETRIES": ("max_retries", lambda n, r: _parse_int(n, r, 0)),
    "MIMO_ENGINE_EXTENSIONS": ("engine_extensions", _parse_bool),
    "MIMO_ENGINE_IDLE_TIMEOUT_S": ("engine_idle_timeout_s", _parse_float),
    "MIMO_PRECISION_POLICIES": ("precision_policies", _parse_policies),
    "MIMO_ENGINE_THREADS": ("engine_threads", _parse_threads),
    "MIMO_PRECISION_MODELS": ("precision_models", _parse_models),
}
_FIELD_TO_VARIABLE = {f: v for v, (f, _) in VARIABLES.items()}


def parse_setting(variable: str, raw: str, shown_as: str | None = None) -> Any:
    """The value of `variable` (a MIMO_* name) read from the text `raw`, as the environment would give it;
    SettingsError names `shown_as` (a flag, say) or else the variable."""
    _, parse = VARIABLES[variable]
    return parse(shown_as or variable, raw)


def _required(name: str, value: str | None) -> str:
    if not value:
        raise SettingsError(f"{name} must be set when MIMO_BASE_URL points at a remote endpoint")
    return value


def _from_yaml(path: Path) -> dict[str, str]:
    """A YAML config file's keys, either the variable names or the field names, as raw strings."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"config file {path}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a mapping of settings")
    out: dict[str, str] = {}
    for key, value in data.items():
        variable = key if key in VARIABLES else _FIELD_TO_VARIABLE.get(str(key))
        if variable is None:
            raise SettingsError(f"config file {path}: unknown setting {key!r}")
        out[variable] = "" if value is None else ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return out


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    dotenv_path: str | Path | None = ".env",
) -> Settings:
    """Resolve settings: `overrides` (flags, by field name) > env > .env > `config_file` > defaults."""
    env = os.environ if env is None else env
    raw: dict[str, str] = {}
    if config_file:
        raw.update(_from_yaml(Path(config_file)))
    if dotenv_path and Path(dotenv_path).is_file():
        raw.update({k: v for k, v in dotenv_values(dotenv_path).items() if k in VARIABLES and v is not None})
    raw.update({k: v for k, v in env.items() if k in VARIABLES})

    values: dict[str, Any] = {}
    for variable, text in raw.items():
        name, parse = VARIABLES[variable]
        parsed = parse(variable, text)
        if parsed is not None:
            values[name] = parsed
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return Settings(**values)
