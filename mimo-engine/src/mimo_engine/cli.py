"""`mimo-engine`: a thin command line over the engine library; parses, calls one function, prints JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from precision_router.policy import POLICIES
from tiered_kv_cache.eviction import EVICTION_POLICIES
from tiered_kv_cache.tiers import TierSizes

from mimo_core.console import add_version_option, cli_app, fail, print_json, run_app
from mimo_core.extensions import DRAFTERS, MAX_SPECULATION_BLOCK
from mimo_core.settings import SettingsError, is_model_path, load_settings, parse_setting
from mimo_engine.config import DEFAULT_POLICIES, DEFAULTS, GIB, EngineConfig, PrefillStall, SpeculationOptions
from mimo_engine.local_model import ModelFileError, resolve_model
from mimo_engine.pull import PullError, pull as pull_model
from mimo_engine.registry import UnknownModelError, get_spec, model_status

PROG = "mimo-engine"
DRAFTER_HELP = "; ".join(f"{name}: {what}" for name, what in DRAFTERS.items())

app = cli_app(
    help="Run real small GGUF models in numpy and serve them over the OpenAI API "
    "(the embedded backend of mimo-pipeline). Registry models are cached in MIMO_CACHE_DIR and pulled on first use; "
    "a GGUF file of your own (llama or qwen2) is named by its path wherever a model is.",
    no_args_is_help=True,
)
add_version_option(app, "mimo-engine")


def _cache_dir() -> Path:
    return load_settings().cache_dir


def _model(reference: str) -> str:
    """Typer callback: a registry model's name, or a GGUF file's path (checked, made absolute: the name it is served
    under); else a usage error saying what is wrong with it."""
    try:
        return resolve_model(reference)
    except (UnknownModelError, ModelFileError) as exc:
        raise typer.BadParameter(str(exc)) from None


def _registry_model(name: str) -> str:
    """Typer callback: a registry model's name, or a usage error listing the known ones."""
    if is_model_path(name):
        raise typer.BadParameter(f"{name}: only registry models are pulled; a GGUF file is served from where it is "
                                 f"(serve --model PATH)")
    try:
        return get_spec(name).name
    except UnknownModelError as exc:
        raise typer.BadParameter(str(exc)) from None


def _known_policy(name: str) -> str:
    """Typer callback: an eviction policy's name, or a usage error listing the known ones."""
    if name not in EVICTION_POLICIES:
        raise typer.BadParameter(f"unknown eviction policy {name!r}; known: {', '.join(EVICTION_POLICIES)}")
    return name


def _optional_model(reference: str | None) -> str | None:
    return None if reference is None else _model(reference)


def _drafters(names: list[str]) -> list[str]:
    for name in names:
        if name not in DRAFTERS:
            raise typer.BadParameter(f"unknown drafter {name!r}; drafters: {', '.join(DRAFTERS)}")
    return names


def _speculation_method(name: str) -> str:
    return name if name == "none" else _drafters([name])[0]


def _models(references: list[str]) -> list[str]:
    return [_model(reference) for reference in references]


def _setting(variable: str, flag: str) -> Any:
    """Typer callback: a flag read as its MIMO_* variable would be (same checks), or a usage error naming the flag."""

    def parse(raw: str | None) -> Any:
        if raw is None:
            return None
        try:
            return parse_setting(variable, raw, flag)
        except SettingsError as exc:
            raise typer.BadParameter(str(exc)) from None

    return parse


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
        [], "--model", "-m", callback=_models,
        help="A model to load at start and serve (repeatable): a registry name, or a GGUF file's path (served under "
        "its absolute path).",
    ),  # fmt: skip
    allow: list[str] = typer.Option(
        [], "--allow", callback=_models,
        help="A model to serve too, loaded (and pulled if needed) on its first request (repeatable): a registry name "
        "or a GGUF file's path.",
    ),  # fmt: skip
    allow_pull: bool = typer.Option(False, "--allow-pull", help="Serve every registry model, loading and pulling it "
                                    "on its first request: any client may then make the server download up to "
                                    "1.1 GB and hold several GB of memory."),
    max_batch_size: int = typer.Option(DEFAULTS.max_batch_size, min=1,
                                       help="Most sequences decoded together per model."),
    max_queue: int = typer.Option(DEFAULTS.max_queue, min=0,
                                  help="Sequences that may wait beyond the batch; past it: 429."),
    max_body_mib: float = typer.Option(4.0, min=0.001, help="Largest request body in MiB; a larger one: 413."),
    idle_timeout: float = typer.Option(0.0, min=0.0, help="Exit after this many seconds without requests (0: never)."),
    drain_timeout: float = typer.Option(10.0, min=0.0, help="On SIGTERM, seconds requests in flight may still run "
                                        "before they are cut."),
    step_tokens: int = typer.Option(DEFAULTS.step_tokens, min=1,
                                    help="Token budget of one engine step: decode tokens first, then prompt chunks, "
                                    "so a long prompt shares steps with running streams."),
    prefill_stall_ms: float = typer.Option(DEFAULTS.prefill_stall.seconds * 1e3, min=0.0,
                                           help="How long a step that decodes running streams may take when it "
                                           "carries prompt chunks too, or --prefill-stall-steps of their decode "
                                           "steps if longer: the chunks are cut to fit by their measured cost "
                                           "(0: no time bound, --step-tokens alone)."),
    prefill_stall_steps: float = typer.Option(DEFAULTS.prefill_stall.decode_steps, min=1.0,
                                              help="How many of the streams' decode steps a step with prompt chunks "
                                              "may take, if longer than --prefill-stall-ms."),
    kv_cache_gib: float = typer.Option(DEFAULTS.kv_cache_bytes / GIB, min=0.01,
                                       help="KV cache pool per model, in GiB (backed lazily)."),
    kv_dram_gib: float = typer.Option(DEFAULTS.kv_tiers.dram_bytes / GIB, min=0.0,
                                      help="Host-memory KV tier per model, in GiB: blocks evicted from the pool wait "
                                      "here (0: none)."),
    kv_disk_gib: float = typer.Option(DEFAULTS.kv_tiers.disk_bytes / GIB, min=0.0,
                                      help="Disk KV tier per model, in GiB, under MIMO_CACHE_DIR/kv: checksummed, "
                                      "kept for the next engine process (0: none)."),
    kv_policy: str = typer.Option(DEFAULTS.kv_tiers.policy, callback=_known_policy,
                                  help=f"Eviction policy of every KV tier: {', '.join(EVICTION_POLICIES)}."),
    speculation: str = typer.Option(DEFAULTS.speculation.method, callback=_speculation_method,
                                    help=f"Block speculation of requests that do not ask for any: none (plain "
                                    f"decoding) or a drafter ({DRAFTER_HELP}). A request's mimo.speculation "
                                    f"overrides it."),
    speculation_block: int = typer.Option(DEFAULTS.speculation.block, min=1, max=MAX_SPECULATION_BLOCK,
                                          help="Most tokens drafted per verification, by default."),
    draft_model: str | None = typer.Option(None, callback=_optional_model, help="The draft-model drafter's model (a "
                                           "registry name or a GGUF file's path): a smaller one with the same "
                                           "tokenizer (qwen2.5-coder-0.5b for qwen2.5-coder-1.5b), loaded with each "
                                           "model it drafts for."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log only warnings and errors: no start line, no "
                               "line per request."),
    precision_policies: str | None = typer.Option(
        None, "--precision-policies", callback=_setting("MIMO_PRECISION_POLICIES", "--precision-policies"),
        help="The precision policies each model is loaded for, comma-separated, or all (default: "
        f"MIMO_PRECISION_POLICIES, else {','.join(DEFAULT_POLICIES)}); the first is the default.",
    ),  # fmt: skip
    threads: str | None = typer.Option(
        None, "--threads", callback=_setting("MIMO_ENGINE_THREADS", "--threads"),
        help="Threads of the packed-weight kernels (default: MIMO_ENGINE_THREADS, else every core).",
    ),  # fmt: skip
) -> None:
    """Serve the OpenAI API for the models named with --model, --allow or --allow-pull.

    Endpoints: /v1/chat/completions, /v1/completions, /v1/models, /health, /load, /metrics. Logs on stderr: a start
    line, model loads, one line per request."""
    from mimo_engine.runtime import resolve_policies  # the web and model stack: not for --help
    from mimo_engine.server import ServerOptions, serve as run_server
    from mimo_engine.worker import Unavailable

    if not (model or allow or allow_pull):
        raise typer.BadParameter("name a model to serve with --model (loaded at start) or --allow (loaded on first "
                                 "request), or pass --allow-pull")
    settings = load_settings(overrides={"precision_policies": precision_policies, "engine_threads": threads})
    try:
        resolve_policies(settings.precision_policies)  # which policies exist is the engine's to say
    except ValueError as exc:
        raise SettingsError(f"MIMO_PRECISION_POLICIES (or --precision-policies): {exc}") from None
    engine = EngineConfig.from_settings(
        settings, max_batch_size=max_batch_size, max_queue=max_queue, step_tokens=step_tokens,
        prefill_stall=PrefillStall(prefill_stall_ms / 1e3, prefill_stall_steps),
        kv_cache_bytes=int(kv_cache_gib * GIB),
        kv_tiers=TierSizes(int(kv_dram_gib * GIB), int(kv_disk_gib * GIB), kv_policy, settings.cache_dir / "kv"),
        speculation=SpeculationOptions(speculation, speculation_block, draft_model))
    options = ServerOptions(engine, allow=tuple(allow), allow_pull=allow_pull,
                            max_body_bytes=int(max_body_mib * (1 << 20)), idle_timeout_s=idle_timeout,
                            drain_s=drain_timeout)
    try:
        run_server(host, port, model, options, quiet=quiet)
    except Unavailable as exc:
        fail(str(exc), code=1, prog=PROG)


@app.command()
def pull(name: str = typer.Argument(..., callback=_registry_model, help="Registry model name.")) -> None:
    """Download a model into the cache (checked against its pinned sha256) and print its path."""
    try:
        path = pull_model(name, _cache_dir(), progress=True)
    except PullError as exc:
        fail(str(exc), code=1, prog=PROG)
    print_json({"name": name, "path": str(path)})


@app.command()
def models() -> None:
    """List the registry's models as JSON: name, size, whether pulled, and path."""
    print_json(model_status(_cache_dir()))


@app.command("export-hf", epilog="Then, for example: python -m vllm.entrypoints.openai.api_server --model OUT "
             "--served-model-name MODEL --dtype float32 (and MIMO_BASE_URL=http://127.0.0.1:8000/v1 MIMO_MODEL=MODEL "
             "for the pipeline).")
def export_hf(
    model: str = typer.Argument(..., callback=_model, metavar="MODEL",
                                help="A registry model (pulled on first use), or a GGUF file's path."),
    out: Path = typer.Argument(..., metavar="OUT",
                               help="The folder to write: it must not exist or be empty (see --force)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT when it holds files."),
) -> None:
    """Write MODEL as a Hugging Face folder that transformers and vLLM load: config.json, generation_config.json,
    tokenizer.json and tokenizer_config.json (the GGUF's chat template and special tokens), and model.safetensors
    in float32: the weights the engine's f32 policy computes with, unfused, in Hugging Face's layout. It is written
    beside OUT and renamed into place at the end. Prints what it wrote (JSON)."""
    from mimo_engine.export_hf import ExportError, export_hf as run_export  # the model stack: not for --help
    from mimo_engine.gguf_model import UnsupportedModelError

    try:
        result = run_export(model, out, _cache_dir(), force=force)
    except (ExportError, UnsupportedModelError) as exc:
        fail(str(exc), prog=PROG)
    except PullError as exc:
        fail(str(exc), code=1, prog=PROG)
    print_json(result.to_dict())


@app.command()
def bench(
    model: str = typer.Option(..., "--model", "-m", callback=_model,
                              help="A registry model, or a GGUF file's path."),
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
    interference: bool = typer.Option(False, help="Instead: the inter-token gaps of decoding streams while a long "
                                      "prompt arrives, against their usual gap, and that prompt's time to first "
                                      "token."),
    streams: int = typer.Option(4, min=1, help="With --interference: the decoding streams."),
    long_prompt_tokens: int = typer.Option(1500, min=1, help="With --interference: the long prompt's tokens."),
    step_tokens: int = typer.Option(DEFAULTS.step_tokens, min=1,
                                    help="With --interference: the engine's per-step token budget."),
    prefill_stall_ms: float = typer.Option(DEFAULTS.prefill_stall.seconds * 1e3, min=0.0,
                                           help="With --interference: the engine's --prefill-stall-ms (0: none)."),
    policy: str = typer.Option("native", help=f"Precision policy the weights are read under: "
                               f"{', '.join(POLICIES[:-2])} or {POLICIES[-2]}; the roofline counts its bytes."),
    speculation: bool = typer.Option(False, help="Instead: each drafter's mean accepted length and decode speedup "
                                     "over plain decoding on coding, math and agent prompts at batch 1 and 8."),
    draft_model: str | None = typer.Option(None, callback=_optional_model,
                                           help="With --speculation: the draft-model drafter's model."),
    method: list[str] = typer.Option([], "--method", callback=_drafters,
                                     help=f"With --speculation: a drafter to measure (repeatable; default: every "
                                     f"drafter the model serves: {', '.join(DRAFTERS)}, draft-model only with "
                                     f"--draft-model)."),
    block: int = typer.Option(DEFAULTS.speculation.block, min=1, max=MAX_SPECULATION_BLOCK,
                              help="With --speculation: most tokens drafted per verification."),
    max_tokens: int = typer.Option(64, min=1, help="With --speculation: tokens generated per prompt."),
    prompts: int = typer.Option(8, min=1, max=8, help="With --speculation: prompts per set."),
    plot: Path | None = typer.Option(None, help="With --speculation: also draw the table as a PNG here."),
) -> None:
    """Measure prefill and decode tokens/s at batch 1, 4 and 8 against the memory-bandwidth roofline, measured in
    the same run (or, with --interference or --speculation, what those options say). The kernels run on
    MIMO_ENGINE_THREADS threads (default: every core)."""
    from mimo_engine.bench import run_bench, run_interference  # the model stack: not for --help

    settings = load_settings()
    if speculation:
        from mimo_engine.bench_speculation import plot_speculation, run_speculation_bench

        try:
            table = run_speculation_bench(model, settings.cache_dir, draft_model, tuple(method) or None, block,
                                          max_tokens, prompts, progress=lambda text: print(text, file=sys.stderr),
                                          threads=settings.engine_threads)
        except ValueError as exc:  # an unknown drafter, draft-model without a draft model, another tokenizer
            fail(str(exc), prog=PROG)
        if plot:
            plot_speculation(table, plot)
        result = table.to_dict()
    elif interference:
        stall = PrefillStall(prefill_stall_ms / 1e3, DEFAULTS.prefill_stall.decode_steps)
        result = run_interference(model, settings.cache_dir, streams, long_prompt_tokens, step_tokens, stall,
                                  threads=settings.engine_threads).to_dict()
    else:
        try:
            bench_result = run_bench(model, settings.cache_dir, policy=policy, threads=settings.engine_threads)
        except ValueError as exc:  # an unknown policy, or entropy (calibrated per token: the sweep measures it)
            fail(str(exc), prog=PROG)
        if bench_result.roofline_note:
            print(f"{PROG}: warning: {bench_result.roofline_note}", file=sys.stderr)
        result = bench_result.to_dict()
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")
    print_json(result)


@app.command()
def sweep(model: str = typer.Option(..., "--model", "-m", callback=_model,
                                    help="A registry model (pulled on first use), or a GGUF file's path."),
          text: Path = typer.Option(..., "--text", help="A held-out text (UTF-8), not the calibration text."),
          out: Path | None = typer.Option(None, "--out", help="Also write the JSON to this file."),
          plot: Path | None = typer.Option(None, "--plot", help="Write the Pareto figure (PNG)."),
          rounds: int = typer.Option(3, "--rounds", min=1, help="Interleaved rounds of speed measurement.")) -> None:
    """Perplexity, mean KL to float32 and decode tokens/s for every precision policy (and entropy@5, 5.5, 6, 7)
    against the bits per weight the kernels read; marks the static policies' Pareto front (JSON on stdout)."""
    from rich.console import Console

    from mimo_engine.sweep import plot as draw, sweep as run_sweep  # the model stack: not for --help

    settings = load_settings()
    try:
        content = text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--text {text}: {exc}", prog=PROG)
    console = Console(stderr=True)
    try:
        with console.status("sweeping") as status:
            result = run_sweep(model, content, text.name, rounds, progress=status.update,
                               cache_dir=settings.cache_dir, threads=settings.engine_threads)
    except (ValueError, LookupError, RuntimeError, OSError) as exc:  # a bad text, an unknown model, a failed pull
        fail(str(exc).strip("'\""), prog=PROG)
    data = result.to_dict()
    if out:
        out.write_text(json.dumps(data, indent=2) + "\n")
    if plot:
        draw(result, plot)
    print_json(data)


def main() -> None:
    """Entry point: bad input ends with one line on stderr and exit code 2."""
    run_app(app, PROG)
