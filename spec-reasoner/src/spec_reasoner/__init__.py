"""spec-reasoner: a small model drafts reasoning steps, the oracle verifies k of them in one batched request."""
