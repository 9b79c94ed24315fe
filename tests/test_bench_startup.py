"""benchmarks/startup.py measures the command as installed: its console script is taken for the
``lvae`` process (so the process-only start-up measures apply), and the benchmark runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "startup.py"


def test_console_script_is_the_lvae_process(tmp_path, benchmark_script):
    tree = benchmark_script("startup").Tree("this tree", REPO, tmp_path / "work")
    assert tree.script.name == "lvae"
    child = (
        "import runpy, sys\n"
        "sys.argv = [sys.argv[1], '--version']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "from lvae.cli import interrupt\n"
        "print(code, interrupt.State.command)\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(tree.script)], env=tree.env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["0", "True"]


def test_light_commands_are_measured():
    """The rows only, no timing asserted (timings belong to the benchmark)."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--skip-compress", "--repeats", "1"], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines()
            if line.startswith(("lvae ", "import ", "torch, "))}
    assert set(rows) == {"lvae --help", "lvae info", "lvae models", "import lvae", "import torch", "torch, frozen"}
    assert "lvae --help  none" in proc.stdout  # no heavy package imported by --help
