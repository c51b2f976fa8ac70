"""`python -m mimo_engine`: the same CLI as the `mimo-engine` console script (the daemon starts it this way)."""

from .cli import main

main()
