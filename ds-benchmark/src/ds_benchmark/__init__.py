"""ds-benchmark."""
