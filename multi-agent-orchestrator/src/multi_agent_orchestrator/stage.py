"""`multi-agent-orchestrator run`: the pipeline stage that writes every record's `consensus`."""

from __future__ import annotations

import dataclasses
from typing import Any

from mimo_core.record import TaskRecord
from mimo_core.settings import Settings, load_settings
from mimo_core.stage import StageContext, run_stage

from .options import Options
from .orchestrate import orchestrate

STAGE = "multi-agent-orchestrator"


def baseline_options(options: Options) -> Options:
    """The component switched off: one agent, no branch, no vote (its confidence from its own logprobs)."""
    return dataclasses.replace(options, agents=1, branches=0, early_stop=False, spec_voter=False)


def records_at_once(settings: Settings, options: Options) -> int:
    """Records voted on at once: as many as fit every agent of each within the client's request limit (at least one),
    and one more. The client's limit still bounds the requests in flight; the extra record's agents take the slots a
    record leaves idle while its last long agent runs or a branch waits for its fork. With one record at a time
    (4 // 5 agents), the quickstart's 30 tasks kept one record in this stage for 558 of their 569 s, at 45 generated
    tokens/s."""
    return max(1, settings.concurrency // options.agents) + 1


def run(options: Options, settings: Settings | None = None, concurrency: int | None = None, **kwargs: Any) -> int:
    """Stream records through the orchestrator (stdin to stdout unless `source`/`sink` are given); the exit code."""
    settings = settings or load_settings()

    async def vote(record: TaskRecord, ctx: StageContext) -> None:
        record.consensus = (await orchestrate(record, ctx, options)).to_dict()

    async def alone(record: TaskRecord, ctx: StageContext) -> None:
        record.consensus = (await orchestrate(record, ctx, baseline_options(options))).to_dict()

    return run_stage(STAGE, vote, component=STAGE, baseline=alone, settings=settings,
                     concurrency=concurrency or records_at_once(settings, options), **kwargs)
