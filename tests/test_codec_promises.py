"""Issue 25 through the public API and the real ``lvae compress`` (in-process), on tiny images:

3. the QARV authors' layout (``format='legacy'``) records no model name and is read back as
   ``qarv_base``: every other model refuses to write it (``ValueError`` naming the models that
   can, nothing written), from the library as from the command line; ``qarv_base`` still writes it;
7. a rate target shows its steps: ``progress`` is told each one, and ``lvae compress`` draws them
   on stderr when it is a terminal (nothing when it is not).
"""
from __future__ import annotations

import io
import re
import sys

import numpy as np
import pytest
from PIL import Image

import lvae
from lvae import cli
from lvae.bitstream import LEGACY_MODEL, read_header
from lvae.cli import interrupt
from lvae.io import read_image

from conftest import exit_status


def lvae_main(*args) -> int:
    """``lvae ARGS`` in-process: its exit status."""
    return exit_status(cli.main, *args)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """a.png (64×48, smooth colours) and gray.png (the same in gray)."""
    root = tmp_path_factory.mktemp("codec_promises")
    rng = np.random.default_rng(3)
    img = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((64, 48), Image.BICUBIC)
    img.save(root / "a.png")
    img.convert("L").save(root / "gray.png")
    return root


@pytest.fixture(scope="module")
def small():
    return lvae.get_model("qarv_small", pretrained=True).eval()


# -- 3. the authors' layout holds qarv_base only ----------------------------------------------------
@pytest.mark.parametrize("name", ["qarv_small", "qarv_tiny"])
def test_legacy_layout_is_refused_for_other_models(work, tmp_path, name):
    model = lvae.get_model(name, pretrained=True) if name == "qarv_small" else lvae.get_model(name)
    words = r"format='legacy' \(the QARV authors' layout\) holds files of qarv_base only: .* as qarv_base's"
    im = read_image(work / "a.png").tensor
    with pytest.raises(ValueError, match=words):
        model.compress(im, lmb=64, format="legacy")
    with pytest.raises(ValueError, match=words):
        model.compress_with_result(im, target_bpp=1.0, format="legacy")
    out = tmp_path / "a.bits"
    with pytest.raises(ValueError, match=words):
        model.compress_file(work / "a.png", out, lmb=64, format="legacy")
    assert not out.exists()  # refused before any coding: nothing written
    out.write_bytes(b"kept")
    with pytest.raises(ValueError, match=words):
        model.compress_file(work / "a.png", out, target_psnr=20.0, format="legacy")
    assert out.read_bytes() == b"kept"
    assert model.legacy_layout_models == (LEGACY_MODEL,) == ("qarv_base",)


def test_cli_refuses_legacy_for_other_models(work, tmp_path, capsys):
    """The command refuses it up front (a usage error); what the library says to a direct user
    is the test above."""
    out = tmp_path / "a.bits"
    assert lvae_main("compress", work / "a.png", "-o", out, "--format", "legacy", "--model", "qarv_small") == 2
    err = capsys.readouterr().err
    assert "--format legacy" in err and "qarv_base" in err and "Traceback" not in err
    assert not out.exists()


def test_qarv_base_still_writes_the_legacy_layout(qarv_fixed, work, tmp_path):
    """qarv_base (the conformance tests' fixed weights) writes it from a file: a gray source comes
    back as RGB (the layout has no colour type), measured as such; test_codec.py checks its bytes."""
    out = tmp_path / "g.bits"
    res = qarv_fixed.compress_file(work / "gray.png", out, lmb=128, format="legacy")
    header = read_header(out.read_bytes())
    assert (header.format, header.model_name, header.height, header.width) == ("legacy", None, 48, 64)
    assert res.colour == "rgb" and res.num_bytes == out.stat().st_size
    assert qarv_fixed.decompress_file(out).shape == (1, 3, 48, 64)
    assert out.read_bytes() == qarv_fixed.compress(read_image(work / "gray.png").tensor, lmb=128, format="legacy")


# -- 7. a rate target shows its steps --------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_compress_shows_each_step_on_a_terminal(work, small, tmp_path, capsys, monkeypatch):
    im = read_image(work / "a.png").tensor
    lowest, highest = len(small.compress(im, lmb=16)), len(small.compress(im, lmb=2048))
    budget = (lowest + highest) // 2
    terminal = Terminal()
    monkeypatch.setattr(interrupt.State, "bar", False)
    monkeypatch.setattr(sys, "stderr", terminal)
    out = tmp_path / "a.lvae"
    assert lvae_main("compress", work / "a.png", "-o", out, "--bytes", budget) == 0
    shown = terminal.getvalue()
    # each step redraws the line: estimates first, then the real encodes, then the decoded PSNR
    steps = re.findall(r"a\.png: (\d+) steps \[[0-9:]+\], ([^\r]*?)\s*\r", shown)
    assert [int(n) for n, _ in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 3
    assert any(re.fullmatch(r"λ [0-9.]+: ≈\d+ bytes \(estimate\)", line) for _, line in steps)
    assert steps[-2][1] == f"λ {read_header(out.read_bytes()).lmb:.4g}: {out.stat().st_size} bytes"
    assert re.fullmatch(r"decoded: [0-9.]+ dB", steps[-1][1])
    assert shown.endswith("\r")  # the bar is cleared (leave=False) before the file's line
    printed = capsys.readouterr().out
    assert f"-> {out}: {out.stat().st_size} bytes" in printed and out.stat().st_size <= budget


def test_compress_shows_nothing_when_stderr_is_not_a_terminal(work, tmp_path, capsys):
    out = tmp_path / "a.lvae"
    assert lvae_main("compress", work / "a.png", "-o", out, "--psnr", 25) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and f"-> {out}:" in captured.out


def test_progress_through_the_api(work, small, tmp_path):
    """compress, compress_with_result and compress_file all take ``progress``: one line a step."""
    im = read_image(work / "gray.png").tensor
    lines: list[str] = []
    data = small.compress(im, target_psnr=30.0, progress=lines.append)
    assert lines[-2] == f"λ {read_header(data).lmb:.4g}: {len(data)} bytes" and lines[-1].startswith("decoded: ")
    lines.clear()
    res = small.compress_file(work / "gray.png", tmp_path / "g.lvae", lmb=100, progress=lines.append)
    assert lines == [f"λ 100: {res.num_bytes} bytes", f"decoded: {res.psnr:.2f} dB"]
