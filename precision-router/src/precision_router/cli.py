"""`precision-router`: a thin command line over the library; parses, calls one function, prints JSON."""

from __future__ import annotations

import json
import subprocess
from importlib import resources
from pathlib import Path

import typer
from rich.console import Console

from mimo_core.command import (concurrency_option, config_option, domain_words, domains_option, records_argument,
                               run_stage_command, stage_settings)
from mimo_core.console import add_version_option, cli_app, fail, print_json, run_app, warn
from mimo_core.tools import ToolError, tool_command
from precision_router.policy import POLICIES

PROG = "precision-router"
app = cli_app(help="Weight precision per token and per layer: the route stage, per-format error reports, and "
                  "the bytes a decoded token reads.", no_args_is_help=True, pretty_exceptions_enable=False)
add_version_option(app, "precision-router")


@app.command()
def route(file: Path | None = records_argument(),
          concurrency: int | None = concurrency_option(),
          policy: str | None = typer.Option(None, "--policy", help=f"Run every record under this policy "
                                            f"({', '.join(POLICIES[:-1])}, entropy@B) instead of choosing one per "
                                            f"record; the engine refuses one it does not hold."),
          config: Path | None = config_option(),
          ) -> None:
    """Pipeline stage: read records (JSONL) from FILE or stdin, write each with `precision` on stdout.

    The candidate policy comes from the record's domain (math and coding 7 bits per weight, triage 6, general 5.5)
    and a short probe of the model's next-token entropy (one bit more when it is uncertain); it is kept only where
    it reads fewer bytes than native and decodes no slower (measured once per policy), else the record runs native
    and says why. Every later call of the record runs under it. Disabled (config.disabled: precision-router):
    native. On a remote server: the deployment of MIMO_PRECISION_MODELS meeting the record's target bits."""
    from mimo_core.stage import run_stage  # the model client: not for --help

    from precision_router.route import Router, baseline

    settings = stage_settings(PROG, config)
    run_stage_command(PROG, file, lambda source: run_stage(PROG, Router(policy=policy).route, component=PROG,
                                                           baseline=baseline, source=source, concurrency=concurrency,
                                                           settings=settings))


@app.command(context_settings={"allow_extra_args": True})
def calibrate(ctx: typer.Context,
              domains: list[str] = domains_option(["math", "coding", "triage", "general"],
                                                  "The domains whose candidate policies are measured: --domains "
                                                  "math coding.")) -> None:
    """Measure what each policy `route` may choose for these domains costs against native on the oracle (bits per
    weight read, decode ms per token), and keep it in MIMO_CACHE_DIR/calibrations, where `route` finds it (a
    benchmark measures it before it times anything). JSON on stdout."""
    import asyncio

    from mimo_core.settings import load_settings
    from precision_router.route import calibrate as measure

    table = asyncio.run(measure(load_settings(), domain_words(domains, ctx.args, PROG)))
    print_json(table.to_dict() if table else {"reason": "a remote server: no policy is measured there"})


@app.command()
def quantize(model: str = typer.Option(..., "--model", "-m", help="A model pulled into MIMO_CACHE_DIR "
                                       "(`mimo-engine pull NAME`), or a GGUF file's path."),
             out: Path | None = typer.Option(None, help="Also write the JSON to this file.")) -> None:
    """Per weight tensor of the model's GGUF: SQNR, max error and bits per weight for each format."""
    from mimo_core.settings import load_settings

    from precision_router.quantize_report import quantize_gguf

    path = Path(model) if model.endswith(".gguf") else load_settings().cache_dir / "models" / f"{model}.gguf"
    if not path.is_file():
        fail(f"{path} not found: pull the model first with `mimo-engine pull {model}`", prog=PROG)
    console = Console(stderr=True)
    with console.status("quantizing") as status:
        report = quantize_gguf(path, lambda name: status.update(f"quantizing {name}"))
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")
    print_json(report)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def sweep(ctx: typer.Context) -> None:
    """Deprecated: runs `mimo-engine sweep` with the same options (the sweep measures the engine's own kernels, so
    it lives with the engine)."""
    warn("`precision-router sweep` is deprecated; use `mimo-engine sweep`", prog=PROG)
    try:
        command = tool_command("mimo-engine")
    except ToolError as exc:
        fail(str(exc), prog=PROG)
    raise typer.Exit(subprocess.call([command, "sweep", *ctx.args]))


@app.command()
def cost(model_config: str = typer.Option(..., "--model-config", help="YAML of the model's shape, or the name of "
                                          "a shipped one: smollm2-135m, qwen2.5-coder-0.5b, mimo-v2.5-pro."),
         profile: str = typer.Option(..., "--profile", help="Hardware profile: h100-sxm, h200, 8xh200, "
                                     "this-machine."),
         accepted: float = typer.Option(1.0, "--accepted", min=1.0, help="Tokens accepted per verification pass "
                                        "(speculative decoding), to scale the bound.")) -> None:
    """Weight bytes read per decoded token and the bandwidth-bound single-stream decode tokens/s."""
    from precision_router.cost import cost as model_cost, load_model_config

    shipped = resources.files("precision_router") / "models" / f"{model_config}.yaml"
    path = Path(str(shipped)) if shipped.is_file() else Path(model_config)
    try:
        print_json(model_cost(load_model_config(path), profile, accepted))
    except (OSError, ValueError) as exc:
        fail(str(exc), prog=PROG)


def main() -> None:
    """Entry point: bad input ends with one line on stderr and exit code 2."""
    run_app(app, PROG)
