"""Imports point one way: features <- predictor <- training, and serving never imports training."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> packages of the project it must not import
FORBIDDEN = {
    "features": ("predictor", "training", "serving", "journey"),
    "predictor": ("training", "serving", "journey"),
    "serving": ("training", "journey"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in a file, at any depth (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_flow(package: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert found == []


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from training.registry import configure\n")
    assert imported_modules(module) == [(1, "os"), (4, "training.registry")]


def test_loading_the_service_loads_no_training_module() -> None:
    code = (
        "import sys\n"
        "import serving.app, serving.audience, serving.service, serving.model, predictor.pyfunc\n"
        "loaded = sorted(m for m in sys.modules if m == 'training' or m.startswith('training.'))\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"
