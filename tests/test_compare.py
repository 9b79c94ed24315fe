"""``lvae bdrate``: BD-rates between committed result JSONs."""
import json
from pathlib import Path

import pytest

from lvae import cli
from lvae.eval.compare import compare
from lvae.metrics import bd_rate

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_bdrate_command_prints_one_row_per_anchor(capsys):
    assert cli.main(["bdrate", str(RESULTS / "webp-kodak.json"), str(RESULTS / "jpeg-kodak.json"),
                     str(RESULTS / "avif-kodak.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    webp, jpeg = (json.loads((RESULTS / f"{c}-kodak.json").read_text())["results"] for c in ("webp", "jpeg"))
    expected = bd_rate(jpeg["bpp"], jpeg["psnr"], webp["bpp"], webp["psnr"])
    assert out[0] == "BD-rate of webp (PSNR RGB):"
    assert out[2].split()[:2] == ["jpeg", f"{expected:+.2f}%"]
    assert out[3].split()[0] == "avif" and len(out) == 4
    assert expected < -20  # WebP needs clearly fewer bits than JPEG at equal PSNR


def test_curves_that_cannot_be_compared(tmp_path, capsys):
    low = {"name": "a", "test-set": "kodak", "results": {"bpp": [0.1, 0.2, 0.3, 0.4], "psnr": [20, 21, 22, 23]}}
    high = {"name": "b", "test-set": "kodak", "results": {"bpp": [1, 2, 3, 4], "psnr": [30, 31, 32, 33]}}
    with pytest.raises(ValueError, match="PSNR ranges do not overlap"):
        compare(low, high)
    with pytest.raises(ValueError, match="different test sets"):
        compare(low, {**high, "test-set": "tecnick"})
    (tmp_path / "a.json").write_text(json.dumps(low))
    (tmp_path / "b.json").write_text(json.dumps(high))
    assert cli.main(["bdrate", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
    assert capsys.readouterr().err.startswith("error: the PSNR ranges do not overlap")
    assert cli.main(["bdrate", str(tmp_path / "a.json"), str(tmp_path / "missing.json")]) == 1
    assert "no such result file" in capsys.readouterr().err
