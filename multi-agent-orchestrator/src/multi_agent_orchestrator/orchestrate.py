"""One record's vote: agents streaming side by side, forks at uncertain tokens, online early stop, the tally.

The agents' requests run concurrently (on the embedded engine their decode steps batch together). Each streamed
token updates its trace's DeepConf group confidence; once `warmup` traces have finished, a trace whose group
confidence falls below the threshold set from them is stopped, and once the leading answer cannot be overtaken by
the voters still running, every running request is cancelled. Stopping means closing the stream, so the backend
stops generating for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import openai

from mimo_core.record import TaskRecord
from mimo_core.stage import StageContext

from .agents import Agent, fork_messages, messages, plan
from .behaviour import SandboxMissing, behaviour_keys
from .confidence import RunningGroup, certainty, stop_threshold, token_confidence, token_entropy, trace_confidence
from .options import Options
from .section import AgentVote, Consensus
from .stream import Chunk, StopStream, stream_chat
from .vote import Tally, answer_of, cast, decided, window_agrees

FORK_TEMPERATURE = 0.8  # at least this hot, so that branches leave the parent's path at the uncertain token


@dataclass
class Trace:
    """One voter's reply as it streams in; a branch starts with its parent's reply up to the fork point."""

    index: int
    agent: Agent
    messages: list[dict[str, Any]]
    forked_from: int | None = None
    fork_token: int | None = None
    prefix: str = ""
    confidences: list[float] = field(default_factory=list)  # per token, the inherited prefix's included
    logprobs: list[float] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    group: RunningGroup = field(default_factory=RunningGroup)
    tokens: int = 0  # generated for this trace (not inherited)
    status: str = "running"
    forked: bool = False
    answer: str | None = None
    key: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None
    wall_s: float | None = None  # from the record's start to this trace's end

    @property
    def text(self) -> str:
        """The whole reply so far."""
        return self.prefix + "".join(self.pieces)


class Orchestration:
    """The vote over one record; `run()` returns its `consensus` section."""

    def __init__(self, record: TaskRecord, ctx: StageContext, options: Options):
        self.record, self.ctx, self.options = record, ctx, options
        seed = record.config.get("seed")
        self.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
        self.traces: list[Trace] = []
        self.tasks: dict[asyncio.Task, list[Trace]] = {}
        self.finished: asyncio.Queue[asyncio.Task] = asyncio.Queue()
        self.logprobs = True  # until the backend shows it has none
        self.threshold: float | None = None
        self.stop_reason: str | None = None
        self.arrivals: list[str | None] = []  # answer keys in the order the traces finished
        self.notes: list[str] = []
        self.started = time.monotonic()

    # ------------------------------------------------------------ requests

    def _params(self, traces: list[Trace], temperature: float, seed: int) -> dict[str, Any]:
        params: dict[str, Any] = dict(
            model=self.ctx.settings.oracle_model, messages=traces[0].messages, n=len(traces),
            temperature=temperature, seed=seed, max_tokens=self.options.max_tokens,
        )
        if self.logprobs:
            params.update(logprobs=True, top_logprobs=self.options.top_logprobs)
        return params

    def _start(self, traces: list[Trace], temperature: float, seed: int) -> None:
        task = asyncio.create_task(self._request(traces, temperature, seed))
        task.add_done_callback(self.finished.put_nowait)
        self.tasks[task] = traces

    async def _request(self, traces: list[Trace], temperature: float, seed: int) -> None:
        try:
            completion = await stream_chat(self.ctx, self._params(traces, temperature, seed),
                                           lambda chunk: self._on_chunk(traces, chunk))
        except openai.BadRequestError as exc:
            retry = self._fallback(traces, exc)
            if retry is None:
                raise
            self.notes.append(retry)
            for trace in traces[1:] if len(traces) > 1 else []:  # n > 1 refused: one request per branch
                self._start([trace], temperature, seed + trace.index)
            return await self._request(traces[:1], temperature, seed)
        except asyncio.CancelledError:
            self.ctx.count_cancelled(sum(t.tokens for t in traces))
            raise
        if self.logprobs and completion.logprobs is None and any(completion.texts):
            self.logprobs = False
            self.notes.append("the backend returned no logprobs: the vote is unweighted")
        cached = completion.usage.cached_tokens  # the standard count (vLLM gives it), else the engine's report
        cached = cached if cached is not None else ((completion.engine or {}).get("cache") or {}).get("cached_tokens")
        for i, trace in enumerate(traces):
            trace.prompt_tokens, trace.cached_tokens = completion.usage.prompt_tokens or None, cached
            if i < len(completion.texts) and completion.finish_reasons[i] is None and trace.status == "running":
                # The stream ended with no finish reason and not by our hand: the server cut it off (llama-cpp-python
                # does so to a stream when another request arrives, unless started with --interrupt_requests false).
                trace.status, trace.error = "failed", "the server ended the stream unfinished (no finish reason)"
            elif i < len(completion.texts):
                trace.finish_reason = completion.finish_reasons[i]
                trace.status = "done" if trace.status == "running" else trace.status
            elif trace.status == "running":  # the backend gave fewer choices than asked (no n > 1)
                self._start([trace], temperature, seed + trace.index)

    def _fallback(self, traces: list[Trace], exc: openai.BadRequestError) -> str | None:
        """What to change when a request is refused for a feature the backend lacks; None if it is not that."""
        message = str(exc).lower()
        if self.logprobs and "logprobs" in message:
            self.logprobs = False
            return "the backend refused logprobs: the vote is unweighted"
        if len(traces) > 1 and ("'n'" in message or " n " in message or "n must" in message):
            return "the backend refused n > 1: branches were sampled one request each"
        return None

    # ------------------------------------------------------------ tokens as they come

    def _on_chunk(self, traces: list[Trace], chunk: Chunk) -> None:
        if chunk.index >= len(traces) or traces[chunk.index].status != "running":
            return
        trace = traces[chunk.index]
        before = trace.text
        trace.pieces.append(chunk.text)
        trace.tokens += len(chunk.tokens) or 1
        for token in chunk.tokens:
            top = list(token.top_logprobs.values()) or [token.logprob or 0.0]
            position = len(trace.confidences)
            trace.confidences.append(token_confidence(top))
            trace.logprobs.append(token.logprob or 0.0)
            group = trace.group.push(trace.confidences[-1])
            if self._may_fork(trace, position) and token_entropy(top) >= self.options.fork_entropy:
                self._fork(trace, before, position)
            if self.threshold is not None and group is not None and group < self.threshold:
                trace.status = "stopped"
                break
        if all(t.status != "running" for t in traces):
            raise StopStream

    def _may_fork(self, trace: Trace, position: int) -> bool:
        return (self.options.branches > 0 and trace.forked_from is None and not trace.forked
                and position >= self.options.fork_min_token and self.stop_reason is None)

    def _fork(self, parent: Trace, before: str, position: int) -> None:
        """Start `branches` continuations of `parent` from just before its token at `position`, in one request."""
        parent.forked = True
        temperature = max(parent.agent.temperature, FORK_TEMPERATURE)
        branches = []
        for _ in range(self.options.branches):
            index = len(self.traces)
            agent = Agent(index, parent.agent.strategy, temperature, parent.agent.seed + 1000 * (index + 1))
            branch = Trace(index, agent, fork_messages(parent.messages, before), parent.index, position, before,
                           parent.confidences[:position], parent.logprobs[:position])
            for confidence in branch.confidences[-branch.group.window:]:
                branch.group.push(confidence)
            self.traces.append(branch)
            branches.append(branch)
        self._start(branches, temperature, branches[0].agent.seed)

    # ------------------------------------------------------------ the vote

    def _voters(self) -> list[Trace]:
        return [t for t in self.traces if t.status == "done"]

    def _tally(self) -> tuple[Tally, list[float]]:
        """The vote over the finished traces (and the spec-reasoner's answer), and each finished trace's weight."""
        voters = self._voters()
        spec = self._spec_vote()
        options = self.options if self.logprobs else dataclasses.replace(self.options, weighting="unweighted",
                                                                         doubt=False)
        return cast([t.key for t in voters], [t.confidences for t in voters], [t.logprobs for t in voters], options,
                    None if spec is None else spec[1:])

    @property
    def weighting(self) -> str:
        """The weighting in force: the chosen one, or unweighted where the backend gave no logprobs."""
        return self.options.weighting if self.logprobs else "unweighted"

    def _spec_vote(self) -> tuple[str | None, str | None, float] | None:
        """The spec-reasoner's verified answer as a voter: (answer, key, certainty), weighing as the heaviest agent."""
        if not self.options.spec_voter:
            return None
        text = self.record.reasoning.get("answer")
        if not isinstance(text, str) or not text.strip():
            return None
        answer, key = answer_of(self.record.domain, text)
        stated = self.record.reasoning.get("confidence")
        sure = float(stated) if isinstance(stated, (int, float)) and 0 < stated <= 1 else 1.0
        return answer, key, sure

    def _running_voters(self) -> int:
        """How many more votes could still arrive: running traces, and the branches of agents yet to fork."""
        running = [t for t in self.traces if t.status == "running"]
        unforked = sum(1 for t in running if self._may_fork(t, self.options.fork_min_token))
        return len(running) + unforked * self.options.branches

    def _settle(self, task: asyncio.Task, traces: list[Trace]) -> None:
        """Book a finished request: its traces' answers, or its failure."""
        error = None if task.cancelled() else task.exception()
        for trace in traces:
            trace.wall_s = time.monotonic() - self.started
            if error is not None and trace.status == "running":
                trace.status, trace.error = "failed", f"{type(error).__name__}: {error}"
            if trace.status == "done":
                trace.answer, trace.key = answer_of(self.record.domain, trace.text)
                self.arrivals.append(trace.key)

    def _set_threshold(self) -> None:
        """DeepConf's online threshold, from the lowest group confidence of the first finished traces."""
        done = [t for t in self.traces if t.status == "done" and t.confidences]
        if self.threshold is None and self.options.early_stop and self.logprobs and len(done) >= self.options.warmup:
            self.threshold = stop_threshold([t.confidences for t in done], self.options.keep)

    def _check_decided(self) -> None:
        if not self.options.early_stop or self.stop_reason is not None:
            return
        running = self._running_voters()
        if running == 0:
            return
        if decided(self._tally()[0].votes, running):
            self.stop_reason = "decided: the leading answer cannot be overtaken"
        elif window_agrees(self.arrivals, self.options.window):
            self.stop_reason = f"the last {self.options.window} answers agree"

    async def _cancel_running(self) -> None:
        for task, traces in self.tasks.items():
            task.cancel()
            for trace in traces:
                if trace.status == "running":
                    trace.status, trace.wall_s = "cancelled", time.monotonic() - self.started
        await asyncio.gather(*self.tasks, return_exceptions=True)  # their streams are closed when this returns
        self.tasks.clear()

    def _launch(self, agents: list[Agent]) -> None:
        for agent in agents:
            trace = Trace(agent.index, agent, messages(self.record, agent))
            self.traces.append(trace)
            self._start([trace], agent.temperature, agent.seed)

    def _wave_agrees(self) -> bool:
        """ESC's rule over the first wave: every finished voter (and the spec-reasoner's answer) gave one answer."""
        keys = [t.key for t in self._voters()]
        spec = self._spec_vote()
        keys += [spec[1]] if spec is not None else []
        return len(keys) >= 2 and keys[0] is not None and all(k == keys[0] for k in keys)

    async def run(self) -> Consensus:
        """Run the agents to a decided vote and return the section. The first wave of agents runs alone; the
        others start only if its answers disagree (agreeing agents make the others' votes unlikely to matter)."""
        agents = plan(self.record, self.options.agents, self.seed)
        first = self.options.first_wave if 0 < self.options.first_wave < len(agents) else len(agents)
        waiting = agents[first:]
        self._launch(agents[:first])
        try:
            while self.tasks:
                task = await self.finished.get()
                if task not in self.tasks:
                    continue
                self._settle(task, self.tasks.pop(task))
                self._set_threshold()
                self._check_decided()
                if self.stop_reason is not None:
                    await self._cancel_running()
                elif not self.tasks and waiting:
                    if self.options.early_stop and self._wave_agrees():
                        self.stop_reason = (f"the first {first} agents agree: the other {len(waiting)} were not "
                                            f"started")
                    else:
                        self._launch(waiting)
                    waiting = []
        finally:
            await self._cancel_running()
        failed = [t for t in self.traces if t.status == "failed"]
        if failed and not self._voters() and self._spec_vote() is None:
            raise RuntimeError(f"every agent failed; the first: {failed[0].error}")
        keys = await self._behaviour_keys()
        return self._section(keys)

    async def _behaviour_keys(self) -> str:
        """For code, replace text keys by behaviour keys where the task has examples and the sandbox runs."""
        if self.record.domain != "coding":
            return "value" if self.record.domain in ("math", "triage") else "text"
        voters = [t for t in self._voters() if t.answer]
        try:
            keys = await asyncio.to_thread(behaviour_keys, self.record.task, [t.answer for t in voters])
        except SandboxMissing as exc:
            self.notes.append(f"code compared as text: {exc}")
            return "text"
        if keys is None:
            return "text"
        for trace in voters:
            trace.key = keys[trace.answer]
        return "behaviour"

    def _section(self, keys: str) -> Consensus:
        result, w = self._tally()
        weight_of = {t.index: weight for t, weight in zip(self._voters(), w)}
        voters = [self._vote(t, weight_of.get(t.index, 0.0)) for t in self.traces]
        spec = self._spec_vote()
        if spec is not None:
            voters.append(AgentVote(len(self.traces), "spec-reasoner", 0.0, None, spec[0], spec[1], None, spec[2],
                                    1.0, 0, "done"))
        lone = len([v for v in voters if v.status == "done"]) == 1 and not self.logprobs
        return Consensus(
            answer=self._representative(result.winner, voters),
            confidence=None if lone or result.share is None else round(result.share, 6),
            n_agents=self.options.agents,
            votes={k: round(v, 6) for k, v in result.votes.items()},
            agents=voters,
            stopped_early=self.stop_reason is not None or any(t.status == "stopped" for t in self.traces),
            weighting=self.weighting,  # type: ignore[arg-type]
            measure=self.options.measure if self.logprobs else "none",
            keys=keys,  # type: ignore[arg-type]
            tokens=sum(t.tokens for t in self.traces),
            stop_reason=self.stop_reason,
            threshold=self.threshold,
            notes=self.notes,
        )

    def _vote(self, trace: Trace, weight: float) -> AgentVote:
        measured = self.logprobs and bool(trace.confidences)
        return AgentVote(
            index=trace.index, strategy=trace.agent.strategy, temperature=trace.agent.temperature,
            seed=trace.agent.seed, answer=trace.answer, key=trace.key,
            confidence=round(trace_confidence(trace.confidences, self.options.measure), 6) if measured else None,
            certainty=round(certainty(trace.logprobs), 6) if measured else 1.0, weight=round(weight, 6),
            tokens=trace.tokens, status=trace.status, forked_from=trace.forked_from,  # type: ignore[arg-type]
            fork_token=trace.fork_token, finish_reason=trace.finish_reason, prompt_tokens=trace.prompt_tokens,
            cached_tokens=trace.cached_tokens, error=trace.error,
            wall_s=None if trace.wall_s is None else round(trace.wall_s, 3),
        )

    @staticmethod
    def _representative(winner: str | None, voters: list[AgentVote]) -> str | None:
        """The winning answer as the most heavily weighted of its voters wrote it (one program among equals)."""
        group = [v for v in voters if winner is not None and v.key == winner and v.answer is not None]
        return max(group, key=lambda v: v.weight).answer if group else None


async def orchestrate(record: TaskRecord, ctx: StageContext, options: Options) -> Consensus:
    """The consensus of `options.agents` agents over `record`."""
    return await Orchestration(record, ctx, options).run()
