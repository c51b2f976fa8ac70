"""The unified pipeline: the five stage tools joined by pipes, the D/s benchmark over them, and comparisons."""
