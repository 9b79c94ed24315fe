"""Atomic outputs get the permissions of an ordinary new file."""
import os
import stat
import sys

import pytest

from lvae.io import atomic_write_bytes


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_atomic_write_respects_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "out.bin", b"data")
        (tmp_path / "plain.bin").write_bytes(b"data")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "out.bin").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode) == 0o644
    assert (tmp_path / "out.bin").read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "plain.bin"]
