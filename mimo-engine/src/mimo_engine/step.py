"""The step contract between the scheduler and the forward pass: what runs in one engine iteration.

Each iteration the scheduler builds one `StepBatch`. For every sequence it schedules, a `ScheduledSequence` says which
tokens run this step (a prefill chunk, one decode token, or a drafted block to verify), where they go (their first
position and the sequence's KV block table), which of them need logits, and which weight format each layer group
reads (sequences of one step may read different formats: the forward pass runs their rows as groups).
`LoadedModel.forward(batch, pool)` runs the whole batch in one pass and returns those logits, in batch order.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class WeightPlan:
    """Which stored form of its weights each layer group reads: a format per block for attention (fused q/k/v and
    output) and for the MLP, and one for the output head. "native" stands for each group's GGUF precision."""

    attn: tuple[str, ...]
    mlp: tuple[str, ...]
    head: str

    @classmethod
    def every(cls, n_layer: int, attn: str, mlp: str, head: str) -> WeightPlan:
        """The same format for a group in every block."""
        return cls((attn,) * n_layer, (mlp,) * n_layer, head)

    @classmethod
    def native(cls, n_layer: int) -> WeightPlan:
        """Every group at the GGUF's own precision (the engine's default policy)."""
        return cls.every(n_layer, "native", "native", "native")

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Each layer group's formats: {"attn": per block, "mlp": per block, "head": (one,)}."""
        return {"attn": self.attn, "mlp": self.mlp, "head": (self.head,)}


@dataclass(frozen=True)
class ScheduledSequence:
    """One sequence's share of a step."""

    seq_id: Hashable
    token_ids: tuple[int, ...]  # the tokens computed this step, at positions start_position, start_position + 1, ...
    start_position: int  # tokens of this sequence already in the KV cache
    block_table: tuple[int, ...]  # the sequence's KV blocks, covering start_position + len(token_ids) positions
    logit_indices: tuple[int, ...]  # which of this step's tokens (0-based) need next-token logits
    weight_plan: WeightPlan
    prompt: bool = False  # whether they are (a chunk of) its prompt, not decoded or drafted tokens

    @property
    def num_tokens(self) -> int:
        """Tokens this sequence runs this step."""
        return len(self.token_ids)

    @property
    def end_position(self) -> int:
        """Tokens of this sequence in the KV cache once the step has run."""
        return self.start_position + len(self.token_ids)


@dataclass(frozen=True)
class StepBatch:
    """Everything one forward pass computes: the scheduled sequences, their tokens packed in this order."""

    sequences: tuple[ScheduledSequence, ...]

    @property
    def num_tokens(self) -> int:
        """Tokens in the step, over all sequences: what the per-step token budget bounds."""
        return sum(s.num_tokens for s in self.sequences)

    @property
    def num_logits(self) -> int:
        """Rows of logits the step returns."""
        return sum(len(s.logit_indices) for s in self.sequences)
