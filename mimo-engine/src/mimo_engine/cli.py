"""`mimo-engine`: a thin command line over the engine library; parses, calls one function, prints JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from tiered_kv_cache.policy import POLICIES
from tiered_kv_cache.tiers import DISK_BYTES, DRAM_BYTES, TierSizes

from mimo_core.console import EXIT_BAD_INPUT, add_version_option, fail
from mimo_core.settings import SettingsError, load_settings
from mimo_engine.pull import PullError, pull as pull_model
from mimo_engine.registry import UnknownModelError, get_spec, model_status

PROG = "mimo-engine"
GIB = 1 << 30

app = typer.Typer(
    help="Run real small GGUF models in numpy and serve them over the OpenAI API "
    "(the embedded backend of mimo-pipeline). Models are cached in MIMO_CACHE_DIR and pulled on first use.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
add_version_option(app, "mimo-engine")


def _cache_dir() -> Path:
    return load_settings().cache_dir


def _known_model(name: str) -> str:
    """Typer callback: a registry model name, or a usage error listing the known ones."""
    try:
        return get_spec(name).name
    except UnknownModelError as exc:
        raise typer.BadParameter(str(exc)) from None


def _known_policy(name: str) -> str:
    """Typer callback: an eviction policy's name, or a usage error listing the known ones."""
    if name not in POLICIES:
        raise typer.BadParameter(f"unknown eviction policy {name!r}; known: {', '.join(POLICIES)}")
    return name


def _known_models(names: list[str]) -> list[str]:
    return [_known_model(name) for name in names]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


@app.command(epilog="Limits: request bodies over --max-body-mib are refused with 413 before they are read; a "
             "model not named here answers 404 (model_not_found); one that fails to load or pull, 503; past the batch "
             "and queue, 429 with Retry-After; prompt token ids must be within the vocabulary (400); message text "
             "is tokenized as text, never as control tokens. A client that hangs up has its sequences stopped. "
             "SIGTERM or Ctrl-C: no new connections, requests in flight get --drain-timeout seconds, then end with "
             "an error.")
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    model: list[str] = typer.Option(
        [], "--model", "-m", callback=_known_models, help="A model to load at start and serve (repeatable).",
    ),  # fmt: skip
    allow: list[str] = typer.Option(
        [], "--allow", callback=_known_models,
        help="A model to serve too, loaded (and pulled if needed) on its first request (repeatable).",
    ),  # fmt: skip
    allow_pull: bool = typer.Option(False, "--allow-pull", help="Serve every registry model, loading and pulling it "
                                    "on its first request: any client may then make the server download up to "
                                    "1.1 GB and hold several GB of memory."),
    max_batch_size: int = typer.Option(8, min=1, help="Most sequences decoded together per model."),
    max_queue: int = typer.Option(32, min=0, help="Sequences that may wait beyond the batch; past it: 429."),
    max_body_mib: float = typer.Option(4.0, min=0.001, help="Largest request body in MiB; a larger one: 413."),
    idle_timeout: float = typer.Option(0.0, min=0.0, help="Exit after this many seconds without requests (0: never)."),
    drain_timeout: float = typer.Option(10.0, min=0.0, help="On SIGTERM, seconds requests in flight may still run "
                                        "before they are cut."),
    step_tokens: int = typer.Option(128, min=1, help="Token budget of one engine step: decode tokens first, then "
                                    "prompt chunks, so a long prompt shares steps with running streams."),
    kv_cache_gib: float = typer.Option(1.0, min=0.01, help="KV cache pool per model, in GiB (backed lazily)."),
    kv_dram_gib: float = typer.Option(DRAM_BYTES / GIB, min=0.0, help="Host-memory KV tier per model, in GiB: "
                                      "blocks evicted from the pool wait here (0: none)."),
    kv_disk_gib: float = typer.Option(DISK_BYTES / GIB, min=0.0, help="Disk KV tier per model, in GiB, under "
                                      "MIMO_CACHE_DIR/kv: checksummed, kept for the next engine process (0: none)."),
    kv_policy: str = typer.Option("lru", callback=_known_policy, help=f"Eviction policy of every KV tier: "
                                  f"{', '.join(POLICIES)}."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log only warnings and errors: no start line, no "
                               "line per request."),
) -> None:
    """Serve the OpenAI API for the models named with --model, --allow or --allow-pull.

    Endpoints: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics. Logs on stderr: a start line,
    model loads, one line per request."""
    from mimo_engine.scheduler import Unavailable  # the web and model stack: not for --help
    from mimo_engine.server import ServerOptions, serve as run_server

    if not (model or allow or allow_pull):
        raise typer.BadParameter("name a model to serve with --model (loaded at start) or --allow (loaded on first "
                                 "request), or pass --allow-pull")
    options = ServerOptions(allow=tuple(allow), allow_pull=allow_pull, max_batch_size=max_batch_size,
                            max_queue=max_queue, step_tokens=step_tokens, kv_cache_bytes=int(kv_cache_gib * (1 << 30)),
                            kv_tiers=TierSizes(int(kv_dram_gib * GIB), int(kv_disk_gib * GIB), kv_policy,
                                               _cache_dir() / "kv"),
                            max_body_bytes=int(max_body_mib * (1 << 20)), idle_timeout_s=idle_timeout,
                            drain_s=drain_timeout, cache_dir=_cache_dir())
    try:
        run_server(host, port, model, options, quiet=quiet)
    except Unavailable as exc:
        fail(str(exc), code=1, prog=PROG)


@app.command()
def pull(name: str = typer.Argument(..., callback=_known_model, help="Registry model name.")) -> None:
    """Download a model into the cache (checked against its pinned sha256) and print its path."""
    try:
        path = pull_model(name, _cache_dir(), progress=True)
    except PullError as exc:
        fail(str(exc), code=1, prog=PROG)
    _print_json({"name": name, "path": str(path)})


@app.command()
def models() -> None:
    """List the registry's models as JSON: name, size, whether pulled, and path."""
    _print_json(model_status(_cache_dir()))


@app.command()
def bench(
    model: str = typer.Option(..., "--model", "-m", callback=_known_model, help="Registry model name."),
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
    interference: bool = typer.Option(False, help="Instead: inter-token latency of 4 decoding streams while an "
                                      "800-token prompt arrives, and that prompt's time to first token."),
    step_tokens: int = typer.Option(128, min=1, help="With --interference: the engine's per-step token budget."),
    policy: str = typer.Option("native", help="Precision policy the weights are read under: native, f32, bf16, "
                               "q8_0, mxfp8, mxfp4 or experts-mxfp4; the roofline counts its bytes."),
) -> None:
    """Measure prefill and decode tokens/s at batch 1, 4 and 8 against the memory-bandwidth roofline."""
    from mimo_engine.bench import run_bench, run_interference  # the model stack: not for --help

    if interference:
        result = run_interference(model, cache_dir=_cache_dir(), step_tokens=step_tokens).to_dict()
    else:
        try:
            result = run_bench(model, cache_dir=_cache_dir(), policy=policy).to_dict()
        except ValueError as exc:  # an unknown policy, or entropy (calibrated per token: the sweep measures it)
            fail(str(exc), prog=PROG)
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")
    _print_json(result)


def main() -> None:
    """Entry point: bad input ends with one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # a usage error: bad option value, unknown command or model
        if exc.format_message():
            fail(exc.format_message(), prog=PROG)
        sys.exit(EXIT_BAD_INPUT)  # bare `mimo-engine`: the help has been shown
    except SettingsError as exc:
        fail(str(exc), prog=PROG)
    sys.exit(code if isinstance(code, int) else 0)
