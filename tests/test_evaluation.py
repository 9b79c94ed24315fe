import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae.cli.evaluate import main
from lvae.eval import anchors, classical
from lvae.eval.evaluation import find_images, lambda_sweep
from lvae.io import load_image
from lvae.metrics import bd_rate, psnr
from lvae.utils.datasets import IMAGE_EXTENSIONS

REPO = Path(__file__).resolve().parent.parent
KODAK3 = Path(__file__).parent / "data" / "kodak3"  # kodim01/04/23, downscaled 3x (see docs/evaluation.md)
TOP_KEYS = {"name", "test-set", "platform", "device", "lambdas", "results", "versions", "timings", "per-image"}


def _quantized(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


@pytest.fixture()
def clean_tmp(tmp_path, monkeypatch):
    """Redirect temporary folders into the test's own folder, to see that they are cleaned up."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_lambda_sweep_matches_the_published_lambdas():
    published = anchors.load_anchor("kodak", "qarv_base")["lambdas"]
    ours = lambda_sweep(16, 2048, 16)
    # The published values were stored in float32.
    assert ours == pytest.approx(published, rel=1e-6)
    assert lambda_sweep(16, 2048, 1) == [16.0]
    for steps in (2, 3, 16, 40):  # the ends are the given values exactly (not exp(log(x)), CPU-dependent)
        sweep = lambda_sweep(16, 2048, steps)
        assert (sweep[0], sweep[-1]) == (16.0, 2048.0) and len(sweep) == steps
    assert lambda_sweep(0.1, 0.7, 5)[::4] == [0.1, 0.7]
    with pytest.raises(ValueError):
        lambda_sweep(100, 10)
    with pytest.raises(ValueError):
        lambda_sweep(16, 2048, 0)


def test_find_images_by_folder_and_by_name(tmp_path, monkeypatch):
    test_set, folder, images = find_images(str(KODAK3))
    assert test_set == "kodak3" and folder == KODAK3
    assert [p.name for p in images] == ["kodim01.png", "kodim04.png", "kodim23.png"]
    shutil.copytree(KODAK3, tmp_path / "kodak")
    monkeypatch.setenv("LVAE_DATA_ROOT", str(tmp_path))
    test_set, folder, images = find_images("kodak")
    assert test_set == "kodak" and folder == tmp_path / "kodak" and len(images) == 3


def test_jpeg_end_to_end_with_bd_rate(tmp_path, monkeypatch, clean_tmp, capsys):
    shutil.copytree(KODAK3, tmp_path / "data" / "kodak")
    monkeypatch.setenv("LVAE_DATA_ROOT", str(tmp_path / "data"))
    out = tmp_path / "out" / "jpeg.json"
    qualities = [15, 40, 65, 90]
    rc = main(["--codec", "jpeg", "--dataset_name", "kodak", "--qualities", *map(str, qualities),
               "--output", str(out), "--no_progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert TOP_KEYS <= set(report)
    assert report["name"] == "jpeg" and report["test-set"] == "kodak" and report["device"] == "cpu"
    assert report["lambdas"] is None and report["qualities"] == qualities
    assert report["codec"]["settings"] == {"subsampling": 2}
    assert list(clean_tmp.iterdir()) == []

    rows = report["per-image"]
    assert len(rows) == 3 * len(qualities)
    for row in rows:
        pil = Image.open(KODAK3 / row["image"]).convert("RGB")
        data = classical.encode(pil, "jpeg", row["quality"])
        assert row["bytes"] == len(data)
        assert row["bpp"] == pytest.approx(8 * len(data) / (pil.width * pil.height), rel=1e-12)
        ref = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        rec = torch.from_numpy(np.asarray(classical.decode(data), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        assert row["psnr"] == pytest.approx(psnr(ref, rec), abs=1e-6)
        assert 0 < row["ms-ssim"] < 1
    res = report["results"]
    for i, q in enumerate(qualities):
        sel = [r for r in rows if r["quality"] == q]
        assert res["bpp"][i] == pytest.approx(np.mean([r["bpp"] for r in sel]))
        assert res["psnr"][i] == pytest.approx(np.mean([r["psnr"] for r in sel]))
    assert res["bpp"] == sorted(res["bpp"]) and res["psnr"] == sorted(res["psnr"])

    vtm = anchors.load_anchor("kodak", "vtm18.0")["results"]
    expected = bd_rate(vtm["bpp"], vtm["psnr"], res["bpp"], res["psnr"])
    assert report["bd-rate"] == {"anchor": "vtm18.0", "percent": pytest.approx(expected)}
    assert f"BD-rate vs vtm18.0 on kodak: {expected:+.2f} %" in stdout
    assert report["timings"]["encode-seconds-mean"] > 0 and report["timings"]["decode-seconds-mean"] > 0


def test_model_end_to_end_bpp_is_the_file_size(tmp_path, clean_tmp):
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    torch.save(lvae.get_model("qarv_tiny").state_dict(), ckpt)
    out = tmp_path / "tiny.json"
    rc = main(["--model", "qarv_tiny", "--weights", str(ckpt), "--dataset_name", str(KODAK3),
               "--steps", "2", "--device", "cpu", "--output", str(out), "--no_progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert TOP_KEYS <= set(report)
    assert report["name"] == "qarv_tiny" and report["test-set"] == "kodak3" and report["weights"] == str(ckpt)
    assert report["lambdas"] == pytest.approx([16.0, 2048.0])
    assert "bd-rate" not in report  # no anchor for this folder
    assert list(clean_tmp.iterdir()) == []

    model = lvae.get_model("qarv_tiny", pretrained=str(ckpt)).eval()
    model.compress_mode(True)
    rows = report["per-image"]
    assert len(rows) == 3 * 2
    for row in rows:
        im = load_image(KODAK3 / row["image"])
        data = model.compress(im, lmb=row["lmb"])
        assert row["bytes"] == len(data)
        assert row["bpp"] == pytest.approx(8 * len(data) / (im.shape[2] * im.shape[3]), rel=1e-12)
        rec = model.decompress(data)
        assert row["psnr"] == pytest.approx(psnr(im, _quantized(rec)), abs=1e-5)
        assert row["mse"] == pytest.approx(10 ** (-row["psnr"] / 10), rel=1e-9)
    first = [r["bpp"] for r in rows if r["lmb"] == report["lambdas"][0]]
    assert len(first) == 3 and report["results"]["bpp"][0] == pytest.approx(np.mean(first))


@pytest.mark.parametrize("codec", ["webp", "avif"])
def test_other_codecs(codec, tmp_path):
    if codec == "avif" and not classical.has_avif():
        with pytest.raises(RuntimeError, match="without AVIF support"):
            classical.encode(Image.new("RGB", (8, 8)), "avif", 50)
        return
    from lvae.eval.evaluation import evaluate_codec

    image = KODAK3 / "kodim04.png"
    report = evaluate_codec(codec, [image], [30, 80], test_set="kodak3", progress=False)
    row_lo, row_hi = report["per-image"]
    pil = Image.open(image).convert("RGB")
    assert row_lo["bytes"] == len(classical.encode(pil, codec, 30))
    assert row_lo["bytes"] < row_hi["bytes"] and row_lo["psnr"] < row_hi["psnr"]


def test_classical_refuses_bad_settings():
    im = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="unknown codec 'gif'"):
        classical.encode(im, "gif", 50)
    with pytest.raises(ValueError, match=r"jpeg quality must be an integer in \[1, 95\]"):
        classical.encode(im, "jpeg", 0)
    assert "jpeg" in classical.available_codecs()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_bad_arguments_give_one_line(tmp_path, monkeypatch, capsys):
    assert main(["--codec", "jpeg", "--dataset_name", "no-such-set"]) == 1
    assert "'no-such-set' is neither an existing folder nor a known data set" in _error_line(capsys)

    monkeypatch.setenv("LVAE_DATA_ROOT", str(tmp_path))
    assert main(["--codec", "jpeg", "--dataset_name", "kodak"]) == 1
    line = _error_line(capsys)
    assert str(tmp_path / "kodak") in line and "LVAE_DATA_ROOT" in line

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    assert main(["--codec", "jpeg", "--dataset_name", str(tmp_path / "empty")]) == 1
    assert f"no images in {tmp_path / 'empty'}" in _error_line(capsys)

    assert main(["--model", "no_such_model", "--dataset_name", str(KODAK3)]) == 1
    assert "unknown model 'no_such_model'" in _error_line(capsys)

    assert main(["--model", "qarv_tiny", "--model_args", "{oops", "--dataset_name", str(KODAK3)]) == 1
    assert "cannot parse model arguments" in _error_line(capsys)

    assert main(["--model", "qarv_tiny", "--weights", "random", "--model_args", "no_such_arg=1",
                 "--dataset_name", str(KODAK3)]) == 1
    assert "bad model arguments for 'qarv_tiny'" in _error_line(capsys)

    assert main(["--model", "qarv_tiny", "--weights", "random", "--lmb_range", "1", "100",
                 "--dataset_name", str(KODAK3)]) == 1
    assert "outside the model's range" in _error_line(capsys)

    assert main(["--model", "qarv_tiny", "--weights", str(tmp_path / "none.pt"), "--dataset_name", str(KODAK3)]) == 1
    assert "does not exist" in _error_line(capsys)

    assert main(["--codec", "jpeg", "--qualities", "0", "--dataset_name", str(KODAK3), "--no_progress"]) == 1
    assert "quality must be" in _error_line(capsys)

    with pytest.raises(SystemExit) as exc:
        main(["--dataset_name", str(KODAK3)])  # neither --model nor --codec
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one of the arguments --model --codec is required" in err[0]


def test_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval-var-rate.py"), "--model", "qarv_tiny", "--dataset_name", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"error: no images in {tmp_path} "
                                                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"]
    assert proc.stdout == ""
