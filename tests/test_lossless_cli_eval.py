"""A lossless model through the command line and the evaluation (issue 24, points 2 and 3).

``qres_tiny_lossless`` (qres_tiny's network ending in the lossless pixel output) with random
weights saved to a checkpoint: random weights code badly, but exactly — what is tested here is
exactness and the command lines' rules, not the size of the files.
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

import lvae
from lvae import cli
from lvae.bitstream import read_header
from lvae.cli import evaluate
from lvae.coding.codec import CompressionMixin
from lvae.eval.results import is_result_file, load_results
from lvae.io import read_image
from lvae.models import load_model

from conftest import exit_status

DATA = Path(__file__).parent / "data"
NAME = "qres_tiny_lossless"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Three small images (two RGB crops, one of odd size; one gray) and a checkpoint of random weights."""
    root = tmp_path_factory.mktemp("lossless")
    (root / "images").mkdir()
    kodim01 = Image.open(DATA / "kodak3" / "kodim01.png").convert("RGB")
    kodim23 = Image.open(DATA / "kodak3" / "kodim23.png").convert("RGB")
    kodim01.crop((200, 150, 264, 198)).save(root / "images" / "a.png")
    kodim23.crop((301, 97, 338, 126)).save(root / "images" / "b.png")  # 37×29
    kodim23.crop((400, 200, 440, 233)).convert("L").save(root / "images" / "c.png")  # gray
    torch.manual_seed(7)
    torch.save({"model": lvae.get_model(NAME).state_dict()}, root / "tiny.pt")
    return root


@pytest.fixture(scope="module")
def model(work):
    return load_model(NAME, str(work / "tiny.pt"))


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny jobs: threads only slow them on a loaded 2-core machine
    yield
    torch.set_num_threads(before)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def run(*args) -> int:
    return exit_status(cli.main, *args)


@pytest.fixture(scope="module")
def coded(work, tmp_path_factory):
    """a.png and the gray c.png compressed through the command line (its stdout kept)."""
    out = tmp_path_factory.mktemp("coded")
    lines = {}
    for stem in ("a", "c"):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = run("compress", work / "images" / f"{stem}.png", "-o", out / f"{stem}.lvae", "--model", NAME,
                         "--weights", work / "tiny.pt")
        assert status == 0
        lines[stem] = printed.getvalue().strip()
    return out, lines


# -- compress, info, decompress -----------------------------------------------------------------------
def test_compress_says_lossless_and_the_file_decodes_to_the_source_exactly(work, coded, model, tmp_path, capsys):
    out, lines = coded
    data = (out / "a.lvae").read_bytes()
    assert lines["a"] == (f"{work / 'images' / 'a.png'} -> {out / 'a.lvae'}: {len(data)} bytes, "
                          f"{8 * len(data) / (64 * 48):.4f} bpp, lossless, {NAME}, 64x48")
    assert lines["c"].endswith(", lossless, qres_tiny_lossless, 40x33, gray")
    header = read_header(data)
    assert header.lossless and header.model_name == NAME
    assert data == model.compress(read_image(work / "images" / "a.png").tensor)  # the library's file, byte for byte

    for stem in ("a", "c"):
        png = tmp_path / f"{stem}.png"
        assert run("decompress", out / f"{stem}.lvae", "-o", png, "--weights", work / "tiny.pt") == 0
        assert capsys.readouterr().out.rstrip().endswith(
            f"lossless: the source exactly, {'gray' if stem == 'c' else 'RGB'} PNG (lossless)")
        source = pixels(work / "images" / f"{stem}.png")
        assert pixels(png).shape == source.shape and np.array_equal(pixels(png), source)


def test_info_says_lossless_without_importing_torch(coded, tmp_path):
    out, _ = coded
    code = ("import sys\nfrom lvae.cli import main\nstatus = main(['info', sys.argv[1]])\n"
            "print(status, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(out / "a.lvae")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "0 False"
    assert any(line.startswith("lossless: yes: decodes to the source bit for bit") for line in lines)
    preview = tmp_path / "preview.lvae"
    assert run("truncate", out / "a.lvae", "-o", preview, "--latents", "5") == 0
    assert not read_header(preview.read_bytes()).lossless
    proc = subprocess.run([sys.executable, "-m", "lvae", "info", str(preview)], capture_output=True, text=True,
                          timeout=120)
    assert "lossless: no: 5 of 6 strings, without the pixels' string" in proc.stdout


@pytest.mark.parametrize("option", [["--lmb", "1"], ["--bpp", "4"], ["--bytes", "2000"], ["--psnr", "40"]])
@pytest.mark.parametrize("name", [NAME, "qres34m_lossless"])
def test_rate_options_on_a_lossless_model_are_usage_errors(work, tmp_path, capsys, name, option):
    status = run("compress", work / "images" / "a.png", "-o", tmp_path / "a.lvae", "--model", name, *option)
    err = capsys.readouterr().err.splitlines()
    assert status == 2 and len(err) == 1 and not (tmp_path / "a.lvae").exists()
    assert f"{option[0]} applies to a lossy model; {name} codes every image losslessly" in err[0]


def test_a_lossless_file_is_written_only_in_lossless_formats(work, coded, tmp_path, capsys):
    out, _ = coded
    src, weights = out / "a.lvae", work / "tiny.pt"
    lossy = [["-o", tmp_path / "x.jpg", "--quality", "90"], ["-o", tmp_path / "x.webp", "--quality", "80"]]
    if features.check("avif"):
        lossy.append(["-o", tmp_path / "x.avif", "--quality", "50"])
    for option in lossy:
        assert run("decompress", src, "--weights", weights, *option) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and f"{src} is a lossless file" in err[0] and "write a lossless format" in err[0]
    assert run("decompress", src, "--weights", weights, "--format", "jpeg") == 2  # no quality: refused as before
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    source = pixels(work / "images" / "a.png")
    for name in ("x.png", "x.tif", "x.bmp", "x.ppm", "x.webp"):
        assert run("decompress", src, "--weights", weights, "-o", tmp_path / name) == 0, capsys.readouterr().err
        assert np.array_equal(pixels(tmp_path / name), source), name
    # A prefix without the pixels is a lossy preview: a lossy format is allowed for it.
    assert run("decompress", src, "--weights", weights, "--latents", "5", "-o", tmp_path / "p.jpg",
               "--quality", "90") == 0


def test_sources_a_lossless_file_cannot_hold_are_refused_in_one_line(work, tmp_path, capsys):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(tmp_path / "deep.png")
    for name, why in (("alpha.png", "transparency"), ("deep.png", "more than 8 bits")):
        status = run("compress", tmp_path / name, "-o", tmp_path / f"{name}.lvae", "--model", NAME,
                     "--weights", work / "tiny.pt")
        err = capsys.readouterr().err.splitlines()
        assert status == 1 and len(err) == 1 and why in err[0] and "nothing was written" in err[0]
        assert not (tmp_path / f"{name}.lvae").exists()


# -- evaluation -------------------------------------------------------------------------------------
def baseline_bytes(path: Path, format: str, **settings) -> int:
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.save(buf, format=format, **settings)
    return len(buf.getvalue())


def test_eval_reports_bpp_beside_png_and_webp(work, model, tmp_path, capsys):
    out = tmp_path / "lossless.json"
    assert evaluate.main(["--model", NAME, "--weights", str(work / "tiny.pt"), "--dataset_name",
                          str(work / "images"), "--output", str(out), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "3 of 3 images decoded exactly" in printed and "BD-rate" not in printed
    report = json.loads(out.read_text())
    assert report["kind"] == "lossless" and report["name"] == NAME and report["exact-images"] == 3
    assert report["coders"]["webp"]["settings"] == {"lossless": True, "method": 6}
    rows = report["per-image"]
    assert [r["image"] for r in rows] == ["a.png", "b.png", "c.png"]
    for r in rows:
        path = work / "images" / r["image"]
        pixels_ = r["width"] * r["height"]
        assert r["bytes"] == len(model.compress(read_image(path).tensor))  # the model's real file
        assert r["png-bytes"] == baseline_bytes(path, "PNG", optimize=True)
        assert r["webp-bytes"] == baseline_bytes(path, "WEBP", lossless=True, method=6)
        for key, size in (("bpp", "bytes"), ("png-bpp", "png-bytes"), ("webp-bpp", "webp-bytes")):
            assert r[key] == pytest.approx(8 * r[size] / pixels_)
        assert f"{r['image']} {r['bpp']:>10.4f} {r['png-bpp']:>9.4f} {r['webp-bpp']:>9.4f}" in printed
    for coder, key in (("model", "bpp"), ("png", "png-bpp"), ("webp", "webp-bpp")):
        assert report["bpp"][coder] == pytest.approx(np.mean([r[key] for r in rows]))
    assert rows[2]["colour"] == "gray"

    # A result file lvae wrote (replaced with --force only), but no curve to plot or compare.
    assert is_result_file(out)
    with pytest.raises(ValueError, match="lossless model's result"):
        load_results(out)
    assert cli.main(["bdrate", str(out)]) == 1
    assert "no rate–distortion curve" in capsys.readouterr().err
    assert evaluate.main(["--model", NAME, "--weights", str(work / "tiny.pt"), "--dataset_name",
                          str(work / "images"), "--output", str(out), "--no_progress"]) == 1
    assert "pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--steps", "4"], ["--lmb-range", "1", "2"], ["--progressive"]])
def test_eval_rate_options_do_not_apply(work, tmp_path, capsys, option):
    assert evaluate.main(["--model", NAME, "--weights", "random", "--dataset_name", str(work / "images"),
                          "--output", str(tmp_path / "x.json"), "--no_progress", *option]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{option[0]} applies to a lossy model" in err[0]
    assert not (tmp_path / "x.json").exists()


def test_a_decoded_image_that_differs_is_an_error_never_a_number(work, tmp_path, capsys, monkeypatch):
    decompress = CompressionMixin.decompress

    def one_sample_off(self, data, *args, **kwargs):
        im = decompress(self, data, *args, **kwargs).clone()
        im[0, 0, 1, 2] = 1 - im[0, 0, 1, 2]
        return im

    monkeypatch.setattr(CompressionMixin, "decompress", one_sample_off)
    out = tmp_path / "x.json"
    assert evaluate.main(["--model", NAME, "--weights", str(work / "tiny.pt"), "--dataset_name",
                          str(work / "images"), "--output", str(out), "--no_progress"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "a.png: the lossless file decodes to an image that differs from the source in 1 of" \
        in err[0]
    assert not out.exists()
    # compress checks the file it wrote in the same way, and keeps nothing
    assert run("compress", work / "images" / "a.png", "-o", tmp_path / "a.lvae", "--model", NAME,
               "--weights", work / "tiny.pt") == 1
    assert "not to the source exactly" in capsys.readouterr().err
    assert not (tmp_path / "a.lvae").exists()


def test_eval_stops_at_a_source_a_lossless_file_cannot_hold(work, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.open(work / "images" / "a.png").save(folder / "a.png")
    rgba = np.full((20, 30, 4), 200, np.uint8)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "b.png")
    assert evaluate.main(["--model", NAME, "--weights", str(work / "tiny.pt"), "--dataset_name", str(folder),
                          "--output", str(tmp_path / "x.json"), "--no_progress"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{folder / 'b.png'} has transparency" in err[0]
    assert not (tmp_path / "x.json").exists()
