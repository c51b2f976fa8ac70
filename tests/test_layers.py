"""The packages' layers (docs/architecture.md): every import across packages goes to a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "mimo_core": 0,
    "precision_router": 1, "tiered_kv_cache": 1, "spec_reasoner": 1, "multi_agent_orchestrator": 1, "ds_benchmark": 1,
    "mimo_engine": 2,
    "unified_pipeline": 3,
}
FOLDERS = {name.replace("_", "-"): name for name in LAYERS}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & LAYERS.keys()


def test_every_package_imports_only_from_layers_below() -> None:
    upward = []
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "tests" in path.relative_to(ROOT).parts:
                continue
            for imported in _imports(path) - {package}:
                if LAYERS[imported] >= LAYERS[package]:
                    upward.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not upward, upward


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from mimo_engine.runtime import LoadedModel\nimport precision_router.route\n")
    assert _imports(module) == {"mimo_engine", "precision_router"}
