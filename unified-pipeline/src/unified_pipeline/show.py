"""A record for a person: the answer, its confidence and verdict, and what each stage decided, took and spent."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mimo_core.record import TaskRecord

from .task import stage_errors


def _precision(p: dict[str, Any]) -> str:
    if p.get("backend") == "unsupported":
        return f"not applied: {p.get('reason') or 'unsupported on this backend'}"
    if p.get("backend") == "model-tier":
        deployment = f" on {p['deployment']}" if p.get("deployment") else ""
        return f"policy {p.get('policy', '?')}{deployment}: {p.get('reason') or ''}".strip()
    probe = p.get("probe") or {}
    entropy = f"; probe entropy {probe['mean_entropy']:.2f} nats" if probe.get("mean_entropy") is not None else ""
    aside = f"; {p['stepped_aside']}" if p.get("stepped_aside") else ""
    return f"policy {p.get('policy', '?')} (native format {p.get('default_format') or '?'}){entropy}{aside}"


def _kv(kv: dict[str, Any]) -> str:
    if not kv.get("enabled", True):
        return "cache off: every prompt prefilled from scratch"
    if kv.get("backend") not in (None, "engine"):
        return f"{kv.get('backend')}: {kv.get('reason') or ''}".strip()
    hits = kv.get("tier_hits") or {}
    found = ", ".join(f"{tier} {n}" for tier, n in hits.items() if n) or "none yet"
    return f"prefix of {kv.get('prefix_tokens', 0)} tokens warmed; cached tokens found: {found}"


def _reasoning(r: dict[str, Any]) -> str:
    speculation = r.get("speculation") or {}
    drafter = f"block drafter {speculation.get('method')}" + (f" ({speculation['reason']})"
                                                              if speculation.get("reason") else "")
    if "chain" not in r:  # stepped aside or switched off: the agents reason alone
        aside = (r.get("step_drafting") or {}).get("reason")
        return f"no step drafting{f' ({aside})' if aside else ''}; {drafter}"
    return (f"{r.get('accepted_steps', 0)} of {r.get('drafted_steps', 0)} drafted steps accepted in "
            f"{r.get('rounds', 0)} rounds; answer {r.get('answer')!r}; {drafter}")


def _consensus(c: dict[str, Any]) -> str:
    votes = ", ".join(f"{answer!r}: {weight:.2f}" for answer, weight in (c.get("votes") or {}).items())
    early = f"; stopped early ({c['stop_reason']})" if c.get("stopped_early") and c.get("stop_reason") else ""
    return f"{c.get('n_agents', 0)} agents, {c.get('weighting', 'weighted')} vote {{{votes}}}{early}"


def _verdict(v: dict[str, Any]) -> str:
    return v.get("detail") or "not scored"


DECISIONS = {
    "precision-router": lambda r: _precision(r.precision),
    "tiered-kv-cache": lambda r: _kv(r.kv),
    "spec-reasoner": lambda r: _reasoning(r.reasoning),
    "multi-agent-orchestrator": lambda r: _consensus(r.consensus),
    "ds-benchmark": lambda r: _verdict(r.verdict),
}


def verdict_line(record: TaskRecord) -> str:
    """Whether the answer was right, in words."""
    correct = record.verdict.get("correct")
    if correct is None:
        return record.verdict.get("detail") or "not scored"
    return "correct" if correct else f"wrong ({record.verdict.get('detail')})"


def render(record: TaskRecord) -> Group:
    """The record as a panel (answer, confidence, verdict) over a table of its stages."""
    confidence = record.consensus.get("confidence")
    head = Text(str(record.answer) if record.answer is not None else "(no answer)", style="bold")
    head.append(f"\nconfidence {confidence:.2f}" if isinstance(confidence, (int, float)) else "\nconfidence unknown")
    head.append(f"\n{verdict_line(record)}")
    if record.error:
        head.append(f"\nerror: {record.error}", style="red")
    # Text, never markup: a task or a model's answer may hold anything, brackets included.
    stages = Table("stage", "status", "time (s)", "calls", "tokens in/out", "decision", title=Text(record.task))
    stages.columns[0].no_wrap = True
    errors = stage_errors(record.error)
    for entry in record.trace:
        decide = DECISIONS.get(entry.stage)
        # a failed stage decided nothing: its section is empty or stale, so its error stands in its row
        decision = (f"failed: {errors.get(entry.stage, 'it wrote no error')}" if entry.status == "error"
                    else decide(record) if decide else "")
        stages.add_row(entry.stage, entry.status, f"{entry.wall_s:.2f}", str(entry.calls),
                       f"{entry.prompt_tokens}/{entry.completion_tokens}", Text(decision))
    return Group(Panel(head, title=f"answer ({record.domain})", expand=False), stages)
