"""`tiered-kv-cache`: a thin command line over the library; parses, calls one function, prints JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mimo_core.command import config_option, concurrency_option, records_argument, run_stage_command, stage_settings
from mimo_core.console import add_version_option, cli_app, fail, print_json, run_app
from mimo_core.contract import ContractError
from mimo_core.settings import load_settings

PROG = "tiered-kv-cache"
GIB = 1 << 30
DAY_S = 86400.0

app = cli_app(
    help="The KV cache of the embedded engine in three tiers (hbm -> dram -> disk): the pipeline's plan stage, an "
    "exact trace simulator, the live engine's figures, and the disk tier's inspect and gc.",
    no_args_is_help=True,
)
add_version_option(app, PROG)


def _disk_root(folder: Path | None) -> Path:
    return folder if folder is not None else load_settings().cache_dir / "kv"


DirOption = typer.Option(None, "--dir", help="The disk tier's folder (default: MIMO_CACHE_DIR/kv, the engine's).")


@app.command()
def plan(
    file: Path | None = records_argument(),
    concurrency: int | None = concurrency_option(),
    config: Path | None = config_option(),
) -> None:
    """Warm each record's shared prefix in the engine; write the record on with `kv` (JSONL in, JSONL out).

    The shared prefix (system prompt and task) starts every later call about the record.

    The warm request is a one-token chat: the engine prefills the prefix and keeps its blocks for those calls.

    A record with tiered-kv-cache in config.disabled gets `kv.enabled: false` and no call.

    Against a remote server: the same request warms the server's own prefix cache (`kv.backend: "server"`), and
    `kv.cached_tokens` says what the server reported cached, or null where it reports nothing.

    Exit codes: 0 done; 2 bad input (`line N: reason`; the records before it were written)."""
    from tiered_kv_cache.plan import run_plan

    settings = stage_settings(PROG, config)
    run_stage_command(PROG, file, lambda source: run_plan(source=source, concurrency=concurrency, settings=settings))


@app.command()
def simulate(
    trace: Path = typer.Option(..., "--trace", help='Request trace, JSONL: {"id": ..., "tokens": [ids]} a line.'),
    config: Path = typer.Option(..., "--config", help="YAML: block_size, capacity_blocks {hbm, dram, disk} or "
                                "capacity_bytes with model {n_layer, n_kv_head, head_dim, dtype_bytes}, policy "
                                "(lru, slru, s3fifo), profile (hardware profile name), prefill_tokens_per_s."),
) -> None:
    """Replay a request trace through the engine's block manager; print what each tier did (JSON).

    Blocks and tokens hit per tier and missed, demotions, promotions, drops, bytes moved per link.

    With a hardware profile: transfer time; with prefill_tokens_per_s: prefill time of the missed tokens.

    Exit codes: 0 done; 2 a bad config or trace line."""
    from tiered_kv_cache.simulate import SimulateConfig, TraceError, simulate_trace

    try:
        settings = SimulateConfig.from_yaml(config)
    except ContractError as exc:
        fail(str(exc), prog=PROG)
    try:
        with open(trace, encoding="utf-8") as lines:
            result = simulate_trace(lines, settings)
    except TraceError as exc:
        fail(f"{trace}: {exc}", prog=PROG)
    except OSError as exc:
        fail(f"{trace}: {exc.strerror}", prog=PROG)
    print_json(result.to_dict())


@app.command()
def trace(
    records: int = typer.Option(200, min=1, help="Records (tasks) in the trace."),
    agents: int = typer.Option(8, min=1, help="Agents answering each record."),
    turns: int = typer.Option(3, min=1, help="Turns of each agent (each extends its previous prompt)."),
    concurrent: int = typer.Option(4, min=1, help="Records in flight at once (their requests interleave)."),
    scan_every: int = typer.Option(10, min=0, help="Every Nth request is a long one-off prompt (0: none)."),
    seed: int = typer.Option(0, help="The trace is the same for the same seed."),
) -> None:
    """Write a synthetic multi-agent, multi-turn request trace (JSONL) for `simulate`, to size the tiers."""
    from tiered_kv_cache.workload import AgentWorkload, agent_trace

    workload = AgentWorkload(records=records, agents=agents, turns=turns, concurrent=concurrent,
                             scan_every=scan_every, seed=seed)
    for request in agent_trace(workload):
        sys.stdout.write(json.dumps(request, separators=(",", ":")) + "\n")
    sys.stdout.flush()


@app.command()
def stats(
    url: str | None = typer.Option(None, help="A mimo-engine server (default: the shared embedded engine)."),
) -> None:
    """The live engine's KV tiers per model (JSON): the KV figures its /metrics exports.

    Blocks held and capacity per tier, hit rate, hits and misses per tier, promotions, demotions, drops.

    Bytes moved per link, corrupt disk blocks (deleted, never served).

    Exit codes: 0 done; 1 no engine answers."""
    from tiered_kv_cache.live import NoEngine, live_stats

    try:
        print_json(live_stats(load_settings(), url).to_dict())
    except NoEngine as exc:
        fail(str(exc), code=1, prog=PROG)


@app.command()
def inspect(
    folder: Path | None = DirOption,
    verify: bool = typer.Option(False, "--verify", help="Also read every block and check it (slow on a big tier)."),
) -> None:
    """What the disk tier holds per model (JSON): blocks, bytes, ages, leftover temporary files.

    Safe while an engine runs."""
    from tiered_kv_cache.disk import inspect_disk

    print_json(inspect_disk(_disk_root(folder), verify).to_dict())


@app.command()
def gc(
    folder: Path | None = DirOption,
    max_gib: float | None = typer.Option(None, min=0.0, help="Remove the oldest blocks until at most this many GiB "
                                         "remain."),
    max_age_days: float | None = typer.Option(None, min=0.0, help="Remove blocks written longer ago than this."),
    verify: bool = typer.Option(False, "--verify", help="Also remove blocks that fail their check."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed."),
) -> None:
    """Shrink the disk tier (JSON report of what was removed and what is kept).

    Removes crash leftovers, failing blocks (--verify), old ones (--max-age-days), the oldest past --max-gib.

    Safe while an engine runs: a block removed under it is a miss."""
    from tiered_kv_cache.disk import collect_disk

    max_bytes = None if max_gib is None else int(max_gib * GIB)
    max_age_s = None if max_age_days is None else max_age_days * DAY_S
    print_json(collect_disk(_disk_root(folder), max_bytes, max_age_s, verify, dry_run).to_dict())


@app.command()
def bench(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="A model of the engine's registry."),
    agents: int = typer.Option(8, min=2, help="Agents sharing one record's prefix."),
    repeats: int = typer.Option(3, min=1, help="Fresh records per setting; figures are medians."),
    out: Path | None = typer.Option(None, help="Also write the JSON to this file."),
) -> None:
    """Measure prefill and time to first token saved by prefix reuse on the embedded engine (JSON).

    N agents answer one record with reuse off, then on; one prompt goes across two engine processes via disk.

    The engines run in a private cache folder that shares the model files."""
    from tiered_kv_cache.bench import run_bench

    result = run_bench(model, agents, repeats).to_dict()
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_json(result)


def main() -> None:
    """Entry point: bad input ends with one line on stderr and exit code 2."""
    run_app(app, PROG)
