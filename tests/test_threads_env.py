"""Passive OpenMP waiting is set before torch loads, in every tool (see detect/__init__.py)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = sorted(p for p in (Path(__file__).resolve().parents[1] / "tools").glob("*.py") if p.is_file())


def _first_import(path: Path, packages: tuple[str, ...]) -> int | None:
    for node in ast.parse(path.read_text()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(n.split(".")[0] in packages for n in names):
            return node.lineno
    return None


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.stem)
def test_tools_import_detect_before_torch(tool):
    torch_line = _first_import(tool, ("torch", "torchvision", "proposals"))
    detect_line = _first_import(tool, ("detect",))
    assert torch_line is None or (detect_line is not None and detect_line < torch_line)


def test_import_detect_sets_passive_waiting_unless_the_user_chose():
    code = "import os, detect; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
