"""The engine's configuration, declared once: `EngineConfig` is built by the CLI from `mimo_core`'s `Settings` and
its flags, and passed whole to the server and from there to every model's worker. Nothing below it reads the
environment; its defaults are the defaults of the CLI's flags too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiered_kv_cache import TierSizes

from mimo_core.settings import Settings

GIB = 1 << 30
# Per-step token budget. Measured on smollm2-135m (`mimo-engine bench --interference`, results/interference-*-step*):
# 4 streams' inter-token p99 while an 800-token prompt arrives is 4121 ms with the whole prompt in one step, 1281 /
# 1001 / 416 ms at 256 / 128 / 64, and that prompt's time to first token 4.12 / 3.87 / 4.74 / 5.01 s.
STEP_TOKENS = 128
# How long a step that decodes running streams may take when it carries prompt chunks too (the chunks are cut to fit
# by their measured cost): STALL_S, or STALL_DECODE_STEPS of the streams' own decode steps, whichever is longer; set
# under the goal of 0.3 s or 10 usual gaps, with room for a step's ~30% variance on a 2-core machine. Measured on
# smollm2-135m with a 1,500-token prompt (results/interference-smollm2-135m-1500-*.jsonl, medians of 2): the worst
# gap of 1 stream (9 ms usual) 794 ms at 128 tokens a step, 292 ms with this bound; of 4 streams (16 ms usual) 660 and
# 281 ms; the prompt's time to first token 7.04 -> 8.39 s and 6.26 -> 9.10 s. At 250 ms the worst gaps were 327 ms.
STALL_S = 0.2
STALL_DECODE_STEPS = 8.0
DEFAULT_BLOCK = 8  # MiMo's speculation block size: its table is measured with blocks of up to 8
DEFAULT_POLICIES = ("native", "mxfp4", "experts-mxfp4", "entropy")  # hold the GGUF's own forms and MXFP4


@dataclass(frozen=True)
class SpeculationOptions:
    """The speculation of requests that name none (method "none": plain decoding), and the draft model that the
    `draft-model` method drafts with (registry name; None: that method is not served)."""

    method: str = "none"
    block: int = DEFAULT_BLOCK
    draft_model: str | None = None


@dataclass(frozen=True)
class PrefillStall:
    """How long a step that decodes running sequences may take when it also carries prompt chunks: `seconds`, or
    `decode_steps` times a decode-only step of its decode tokens, whichever is longer; its chunks are cut to fit by
    their measured cost. `seconds` 0: no time bound, the token budget alone."""

    seconds: float = STALL_S
    decode_steps: float = STALL_DECODE_STEPS

    def bound(self, decode_s: float) -> float:
        """The longest such a step may take, its decode tokens alone taking `decode_s`."""
        return max(self.seconds, self.decode_steps * decode_s)


@dataclass(frozen=True)
class EngineConfig:
    """How every model's worker runs: batch, queue, per-step token budget and time bound, KV pool and tiers, the
    default speculation, the precision policies each model is loaded for, and the kernels' threads."""

    max_batch_size: int = 8  # sequences decoded together per model
    max_queue: int = 32  # sequences that may wait beyond the batch; past it a request is refused
    step_tokens: int = STEP_TOKENS
    prefill_stall: PrefillStall = PrefillStall()  # how long a step with decode rows may take for prompt chunks
    kv_cache_bytes: int = GIB  # KV pool per model; the OS backs it lazily, as blocks are first written
    kv_tiers: TierSizes = TierSizes()  # dram and disk below the pool; the disk tier only with a folder
    speculation: SpeculationOptions = SpeculationOptions()
    precision_policies: tuple[str, ...] | None = None  # MIMO_PRECISION_POLICIES (None: DEFAULT_POLICIES)
    threads: int | None = None  # MIMO_ENGINE_THREADS: the packed kernels' threads (None: every core)
    cache_dir: Path = Path(".")  # MIMO_CACHE_DIR: models, the disk KV tier

    @classmethod
    def from_settings(cls, settings: Settings, **flags: Any) -> EngineConfig:
        """The configuration of `settings` (policies, threads, cache folder), with the CLI's `flags` on top."""
        return cls(precision_policies=settings.precision_policies, threads=settings.engine_threads,
                   cache_dir=settings.cache_dir, **flags)

    @property
    def capacity(self) -> int:
        """Sequences a worker holds at once: running plus waiting."""
        return self.max_batch_size + self.max_queue


DEFAULTS = EngineConfig()  # what the CLI's flags default to
