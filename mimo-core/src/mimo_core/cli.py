"""`mimo-core`: show and check the configuration, the hardware profiles and the shared engine."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from . import daemon
from .client import LLMClient
from .console import add_version_option, cli_app, fail, run_app
from .profiles import load_profile, shipped_profiles
from .settings import Settings, SettingsError, load_settings

PROG = "mimo-core"
app = cli_app(
    help="Shared settings of mimo-pipeline: check the backend, list hardware profiles, manage the embedded engine.",
    no_args_is_help=True,
)
engine_app = cli_app(help="The shared embedded engine that serves every tool when MIMO_BASE_URL is unset.")
app.add_typer(engine_app, name="engine")
add_version_option(app, "mimo-core")

ConfigOption = typer.Option(None, "--config", help="YAML file of settings (lowest precedence after defaults).")


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _settings(config: Optional[Path]) -> Settings:
    try:
        return load_settings(config_file=config)
    except SettingsError as exc:
        fail(str(exc), prog=PROG)


async def _check(settings: Settings) -> dict[str, Any]:
    client = LLMClient(settings)
    try:
        served = await client.list_models()
    finally:
        await client.close()
    wanted = {settings.oracle_model, settings.drafter_model}
    return {"reachable": True, "models": served, "missing": sorted(wanted - set(served))}


def _running_engine(settings: Settings) -> daemon.EngineState | None:
    state = daemon.read_state(settings)
    return state if state is not None and daemon.is_healthy(state) else None


def _say_engine_started(settings: Settings, before: daemon.EngineState | None) -> dict[str, Any] | None:
    """The engine --check found or started; a line on stderr when it started one, since it keeps running."""
    state = _running_engine(settings)
    if state is None:
        return None
    started = before is None or before.pid != state.pid
    if started:
        print(f"mimo-core: started the embedded engine in the background (pid {state.pid}, {state.base_url}); "
              f"it exits after {settings.engine_idle_timeout_s:g} s idle, or now with `mimo-core engine stop`",
              file=sys.stderr)
    return {"pid": state.pid, "base_url": state.base_url, "started": started,
            "idle_timeout_s": settings.engine_idle_timeout_s}


@app.command()
def config(
    check: bool = typer.Option(False, "--check", help="Also reach the backend (starting the embedded engine)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Print the resolved settings as JSON (the API key only as set / not set)."""
    settings = _settings(config)
    report = settings.to_dict()
    try:
        report["resolved"] = {"oracle_model": settings.oracle_model, "draft_model": settings.drafter_model}
    except SettingsError as exc:
        fail(str(exc), prog=PROG)
    if check:
        before = _running_engine(settings) if settings.embedded else None
        try:
            report["check"] = asyncio.run(_check(settings))
            if settings.embedded:
                report["check"]["engine"] = _say_engine_started(settings, before)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the backend is the answer to --check
            report["check"] = {"reachable": False, "error": f"{type(exc).__name__}: {exc}"}
            _print(report)
            raise typer.Exit(1) from None
    _print(report)
    if check and report["check"]["missing"]:
        fail(f"the endpoint does not serve {', '.join(report['check']['missing'])}", code=1, prog=PROG)


@app.command()
def profiles() -> None:
    """List the hardware profile names."""
    _print(shipped_profiles())


@app.command()
def profile(
    name: str = typer.Argument(..., help="A profile name from `mimo-core profiles`."),
    remeasure: bool = typer.Option(False, help="Measure this-machine again instead of using the kept figures."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Print one hardware profile (bytes, bytes/s); `this-machine` is measured on first use."""
    settings = _settings(config)
    try:
        _print(load_profile(name, settings.cache_dir, remeasure=remeasure).to_dict())
    except ValueError as exc:
        fail(str(exc), prog=PROG)


@engine_app.command("status")
def engine_status(config: Optional[Path] = ConfigOption) -> None:
    """Print the shared engine's pid, port and health."""
    settings = _settings(config)
    state = daemon.read_state(settings)
    if state is None:
        _print({"running": False})
        return
    _print({"running": daemon.is_healthy(state), **state.to_dict(), "base_url": state.base_url})


@engine_app.command("stop")
def engine_stop(config: Optional[Path] = ConfigOption) -> None:
    """Stop the shared engine (the next call that needs it starts it again)."""
    _print({"stopped": daemon.stop_engine(_settings(config))})


def main() -> None:
    """Console-script entry point."""
    run_app(app, PROG)
