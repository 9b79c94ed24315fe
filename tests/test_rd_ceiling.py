"""benchmarks/rd_ceiling.py runs, and its unrounded pass really leaves the latents unrounded."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "rd_ceiling.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_rounded_and_unrounded_rows():
    proc = _run(str(REPO / "tests" / "data" / "kodak3"), "--model", "qarv_tiny",
                "--weights", str(REPO / "tests" / "data" / "qarv_tiny_trained.pt"), "--lmbs", "16,2048", "--limit", "1")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["16", "2048"]
    for _, bpp, rounded, unrounded in rows:
        assert float(bpp) > 0 and float(rounded) > 10
        assert float(unrounded) != float(rounded)  # the hook took effect: another reconstruction


def test_missing_folder_is_one_line():
    proc = _run("/nonexistent/folder")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "rd_ceiling.py:" in proc.stderr
