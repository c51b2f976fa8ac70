"""precision-router sits below the engine: it imports no `mimo_engine`, and its deprecated `sweep` command runs
`mimo-engine sweep` as a process."""

import ast
from pathlib import Path

from typer.testing import CliRunner

import precision_router
from precision_router.cli import app


def test_precision_router_imports_no_mimo_engine():
    for path in Path(precision_router.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "mimo_engine" for n in names), path


def test_the_deprecated_sweep_runs_mimo_engine_sweep_with_a_warning(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--model", "nope", "--text", str(tmp_path / "missing.txt")])
    assert result.exit_code == 2  # mimo-engine sweep's own usage error, passed through
    assert "deprecated" in result.output and "mimo-engine sweep" in result.output
