"""Precision policies: which format each layer group of the model reads, for each token.

A model's linear weights fall in three layer groups: `attn` (each block's fused q/k/v and output projections),
`mlp` (each block's fused gate/up and down projections: what a dense model has in place of MoE experts) and
`head` (the output projection). A policy maps a token to one format per group:

- `native`: each weight as the GGUF stores it, where a kernel reads its type: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K
  and Q6_K as their own blocks (`formats.REGISTRY`'s `gguf_type`), F32 and F16 as `f32`, BF16 as `bf16`. Any other
  quantized type (Q2_K, Q3_K, Q5_K, the IQ types) goes to `q8_0`, the format of at least its bits that holds an
  integer grid almost exactly (its step is 1/254 of a block's range).
- `f32`, `bf16`, `q8_0`, `mxfp8`, `mxfp4`: every group in that format.
- `experts-mxfp4`: MiMo's split: the MLP in MXFP4, attention and the head native.
- `entropy` (or `entropy@B` for a target of B bits per weight, default 6): per token, every group reads MXFP4 when
  the entropy of the model's previous next-token distribution is below the group's threshold and native
  otherwise. Thresholds are quantiles of the entropies the native model produces on calibration text, chosen so
  that the average bits per weight read meets the target. A prompt, which has no previous distribution, is native.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from precision_router.formats import BITS, GGUF_FORMATS, POLICY_FORMATS

GROUPS = ("attn", "mlp", "head")
STATIC = POLICY_FORMATS  # every format a policy may read: from the format registry
POLICIES = ("native", *STATIC, "experts-mxfp4", "entropy")
DEFAULT_TARGET_BITS = 6.0
LOW_FORMAT = "mxfp4"
NATIVE_FORMATS = {"F32": "f32", "F16": "f32", "BF16": "bf16", **GGUF_FORMATS}
REQUANTIZED = "q8_0"  # what a quantized GGUF type without a kernel of its own is held in


class UnknownPolicy(ValueError):
    """A policy name that is not one of POLICIES (or `entropy@B` with B not a number in range)."""


def native_format(gguf_type: str) -> str:
    """The format a GGUF tensor of type `gguf_type` (its name: Q4_K) is held in by default: its own where a kernel
    reads it, else REQUANTIZED for a quantized type; a ValueError for the integer and float64 types."""
    if gguf_type in NATIVE_FORMATS:
        return NATIVE_FORMATS[gguf_type]
    if gguf_type.startswith(("Q", "IQ", "TQ", "MXFP", "NVFP")):
        return REQUANTIZED
    raise ValueError(f"no kernel format for GGUF tensor type {gguf_type}")


@dataclass(frozen=True)
class Assignment:
    """One format per layer group ("native" meaning each group's own)."""

    attn: str
    mlp: str
    head: str

    @classmethod
    def every(cls, fmt: str) -> Assignment:
        return cls(fmt, fmt, fmt)

    def formats(self) -> set[str]:
        return {self.attn, self.mlp, self.head}


@dataclass(frozen=True)
class Policy:
    """A named rule from the previous next-token entropy (None for a prompt) to an Assignment."""

    name: str
    high: Assignment  # prompts, and tokens at or above a group's threshold
    low: Assignment = field(default_factory=lambda: Assignment.every(LOW_FORMAT))
    thresholds: dict[str, float] = field(default_factory=dict)  # group -> entropy (nats) below which it reads `low`
    target_bits: float | None = None

    def assign(self, entropy: float | None) -> Assignment:
        """The formats of a token whose previous next-token distribution had `entropy` nats (None: a prompt)."""
        if entropy is None or not self.thresholds:
            return self.high
        pick = {g: getattr(self.low if entropy < self.thresholds[g] else self.high, g) for g in GROUPS}
        return Assignment(**pick)

    def formats(self) -> set[str]:
        """Every format a token under this policy may read."""
        return self.high.formats() | (self.low.formats() if self.thresholds else set())


def parse(name: str) -> tuple[str, float | None]:
    """(policy kind, target bits) of a policy name; UnknownPolicy lists the policies."""
    kind, _, target = name.partition("@")
    if kind not in POLICIES or (target and kind != "entropy"):
        raise UnknownPolicy(f"unknown precision policy {name!r}; policies: {', '.join(POLICIES)} "
                            f"(entropy@B: a target of B bits per weight)")
    if not target:
        return kind, (DEFAULT_TARGET_BITS if kind == "entropy" else None)
    try:
        bits = float(target)
    except ValueError:
        raise UnknownPolicy(f"precision policy {name!r}: {target!r} is not a number of bits") from None
    if not 4.25 <= bits <= 32:
        raise UnknownPolicy(f"precision policy {name!r}: the target must be 4.25 to 32 bits per weight")
    return kind, bits


def static_policy(name: str) -> Policy:
    """Any policy but `entropy`, which needs calibration (`entropy_policy`)."""
    kind, _ = parse(name)
    if kind == "native":
        return Policy(name, Assignment.every("native"))
    if kind == "experts-mxfp4":
        return Policy(name, Assignment("native", LOW_FORMAT, "native"))
    if kind in STATIC:
        return Policy(name, Assignment.every(kind))
    raise UnknownPolicy(f"{name!r} needs calibration: use entropy_policy")


def entropy_policy(name: str, entropies: np.ndarray, group_weights: dict[str, int],
                   native_bits: dict[str, float]) -> Policy:
    """The entropy policy `name` calibrated on `entropies` (nats of the native model's next-token distributions on
    calibration text) so that tokens read `target` bits per weight on average: one quantile for every group, since
    every group's weights are read by every token. `group_weights`: parameters per group; `native_bits`: bits per
    weight of each group's native form."""
    _, target = parse(name)
    total = sum(group_weights.values())
    high = sum(group_weights[g] * native_bits[g] for g in GROUPS) / total
    low = sum(group_weights[g] * BITS[LOW_FORMAT] for g in GROUPS) / total
    share = float(np.clip((high - target) / (high - low), 0.0, 1.0)) if high > low else 0.0  # tokens at low bits
    threshold = float(np.quantile(entropies, share)) if share < 1 else float("inf")
    if share == 0:
        threshold = float("-inf")
    thresholds = {g: threshold for g in GROUPS}
    return Policy(name, Assignment.every("native"), thresholds=thresholds, target_bits=target)



def entropy_nats(logits: np.ndarray) -> np.ndarray:
    """Entropy in nats of the softmax of each row of `logits` ([..., V])."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    total = p.sum(axis=-1, keepdims=True)
    return np.log(total[..., 0]) - (p * z).sum(axis=-1) / total[..., 0]


def calibration_text() -> str:
    """The text the entropy policy's thresholds are calibrated on (shipped with the package)."""
    return (resources.files("precision_router") / "calibration.txt").read_text(encoding="utf-8")
