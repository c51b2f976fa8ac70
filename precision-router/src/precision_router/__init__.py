"""precision-router: weight formats computed packed, and per-token, per-layer precision policies."""
