"""`python -m multi_agent_orchestrator`: the console script."""

from .cli import main

main()
