"""A record's inference plan: what the components decided about how the record's later model calls run.

The precision router writes the precision part into `precision` (a policy on the engine; on a remote server, the
deployment that serves that precision), the KV plan the cache part into `kv` (reuse on or off), the spec-reasoner
the speculation part into `reasoning.speculation` (the token-level drafter and block). A disabled component writes
its baseline part: `native`, cache off, no speculation. A part nobody decided (the stage has not run) is left to the
backend's default. `StageContext` reads the plan from the record before each call and sends it as the typed
`MimoRequest` (and the deployment as the call's model), so no stage builds the request's `mimo` field by hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .extensions import CacheRequest, MimoRequest, PrecisionRequest, SpeculationRequest
from .record import TaskRecord

NATIVE = "native"


@dataclass(frozen=True)
class InferencePlan:
    """The parts of a record's plan; None: not decided, the backend's default applies."""

    policy: str | None = None  # the engine's precision policy
    deployment: str | None = None  # remote: the served model that runs the oracle's calls at the chosen precision
    cache: bool | None = None  # prefix reuse
    speculation: SpeculationRequest | None = None

    @classmethod
    def of(cls, record: TaskRecord) -> InferencePlan:
        """The plan the record's sections hold."""
        speculation = record.reasoning.get("speculation")
        return cls(
            policy=_str(record.precision.get("policy")),
            deployment=_str(record.precision.get("deployment")),
            cache=record.kv["enabled"] if isinstance(record.kv.get("enabled"), bool) else None,
            speculation=SpeculationRequest.from_dict(_request_fields(speculation), "reasoning.speculation")
            if isinstance(speculation, dict) and speculation.get("method") else None,
        )

    def request(self, override: MimoRequest | None = None) -> MimoRequest | None:
        """The `mimo` field of a call under this plan; `override`'s parts replace the plan's (a stage's deliberate
        exception for one call, such as the router's probe at native precision). None when nothing is decided."""
        mimo = MimoRequest(
            precision=PrecisionRequest(self.policy) if self.policy else None,
            cache=CacheRequest(self.cache) if self.cache is not None else None,
            speculation=self.speculation,
        )
        if override is not None:
            mimo = dataclasses.replace(mimo, **{f.name: getattr(override, f.name) for f in dataclasses.fields(override)
                                                if getattr(override, f.name) is not None})
        return mimo if any(getattr(mimo, f.name) is not None for f in dataclasses.fields(mimo)) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _request_fields(section: dict[str, Any]) -> dict[str, Any]:
    """The part of `reasoning.speculation` that is the request (the section also says why, and what it measured)."""
    return {key: section[key] for key in ("method", "block", "adaptive") if section.get(key) is not None}
