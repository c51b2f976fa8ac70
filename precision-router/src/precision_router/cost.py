"""`cost`: weight bytes read per decoded token for a model shape, and the bandwidth-bound decode speed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mimo_core.profiles import load_profile
from precision_router.formats import BITS


def load_model_config(path: Path) -> dict[str, Any]:
    """A model shape: `name`, `groups` {group: {active_params, format}}, optional `total_params`, `notes`."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("groups"), dict) or not data["groups"]:
        raise ValueError(f"{path}: expected a mapping with `groups` (group: {{active_params, format}})")
    for group, spec in data["groups"].items():
        if spec.get("format") not in BITS or not isinstance(spec.get("active_params"), (int, float)):
            raise ValueError(f"{path}: group {group!r} needs active_params and a format of {', '.join(BITS)}")
    return data


def cost(config: dict[str, Any], profile_name: str, accepted_tokens: float = 1.0) -> dict[str, Any]:
    """Bytes read per token and the bandwidth bound on single-stream decode, on a hardware profile; with
    speculative decoding, one weight read verifies `accepted_tokens` tokens on average."""
    profile = load_profile(profile_name)
    groups = {g: {"active_params": s["active_params"], "format": s["format"],
                  "bytes": s["active_params"] * BITS[s["format"]] / 8} for g, s in config["groups"].items()}
    per_token = sum(g["bytes"] for g in groups.values())
    params = sum(g["active_params"] for g in groups.values())
    bound = profile.hbm_bandwidth / per_token
    return {"model": config.get("name"), "profile": profile.name, "hbm_bandwidth": profile.hbm_bandwidth,
            "total_params": config.get("total_params"), "active_params": params, "groups": groups,
            "bytes_per_token": per_token, "bits_per_weight": round(8 * per_token / params, 3),
            "decode_tokens_per_s_bound": round(bound, 1), "accepted_tokens_per_step": accepted_tokens,
            "with_speculation_tokens_per_s_bound": round(bound * accepted_tokens, 1)}
