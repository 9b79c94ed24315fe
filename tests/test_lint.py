"""Static checks as part of the suite, so that CI's one `pytest` command runs them: ruff (style,
imports, likely bugs) and mypy (types), both configured in pyproject.toml."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff():
    proc = _run([_tool("ruff"), "check", "--no-cache", "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy(tmp_path):
    proc = _run([_tool("mypy"), "--cache-dir", str(tmp_path)])  # a cold run: no stale cache
    assert proc.returncode == 0, proc.stdout + proc.stderr
