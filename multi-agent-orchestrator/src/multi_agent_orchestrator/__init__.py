"""N agents in parallel, forks at uncertain tokens, a confidence-weighted consensus vote, early stop."""
