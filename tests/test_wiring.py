"""Wiring, end to end: what the command line and the public API print, return and record is
checked against what is on disk (file sizes, the source's true H×W, the digest of the weights
file, the bytes of a container). Each test here fails on a hand-made mutant that passed the rest
of the suite (issue 25, point 4; docs/testing.md, "What the tests pin down").

The image is a 96×70 crop of Kodak's kodim20: its sides are not multiples of the models' stride
(64), so the padded size the models code (128×128) differs from the true size by a factor 2.4,
and any bpp computed over the padded size is far off.
"""
from __future__ import annotations

import dataclasses
import json
import re
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

import lvae
from lvae import bitstream, cli
from lvae.errors import BitstreamError, CheckpointError
from lvae.io import load_image
from lvae.models import registry
from lvae.models.weights import file_sha256, locate_weights, resolve_weights

DATA = Path(__file__).parent / "data"
W, H = 96, 70
PIXELS = W * H  # 6,720; the padded size is 128 × 128 = 16,384
BPP_PRINTED = 5e-5  # bpp is printed with 4 decimals

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny images: a second thread only waits on a busy machine


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 96×70 photo (kodim20's sky, boat and water) in a folder of its own: a one-image data set."""
    folder = tmp_path_factory.mktemp("wiring") / "photos"
    folder.mkdir()
    path = folder / "boat.png"
    Image.open(DATA / "kodim20.png").convert("RGB").crop((300, 200, 300 + W, 200 + H)).save(path)
    return path


@pytest.fixture(scope="module")
def small():
    return lvae.get_model("qarv_small", pretrained=True).eval()


@pytest.fixture(scope="module")
def coded(photo, tmp_path_factory) -> Path:
    """``photo`` compressed by ``lvae compress`` at λ = 128 (qarv_small, the default model)."""
    out = tmp_path_factory.mktemp("coded") / "boat.lvae"
    assert cli.main(["compress", str(photo), "-o", str(out), "--lmb", "128"]) == 0
    return out


def lvae_cmd(capsys, *args) -> tuple[int, list[str], list[str]]:
    """Run ``lvae ARGS`` in this process: (exit status, stdout lines, stderr lines)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err.splitlines()


def errors(stderr_lines: list[str]) -> list[str]:
    """The ``lvae: error:`` lines among stderr's (progress and notes may be there too)."""
    return [line for line in stderr_lines if line.startswith("lvae: error")]


def bytes_and_bpp(line: str) -> tuple[int, float]:
    """The ``N bytes, X bpp`` that a line of ``lvae compress``/``decompress`` reports."""
    found = re.search(r"(\d+) bytes, (\d+\.\d+) bpp", line)
    assert found, line
    return int(found[1]), float(found[2])


def true_bpp(num_bytes: int) -> float:
    return 8 * num_bytes / PIXELS


# -- a: lvae compress --bytes N / --bpp X hand that budget to the library ----------------------
@pytest.mark.parametrize("option, value, budget", [
    ("--bytes", 800, 800),
    ("--bpp", 0.9, 756),  # floor(0.9 · 96 · 70 / 8): bits over the true pixels, not the padded ones
])
def test_compress_rate_target_is_the_budget_on_disk(photo, tmp_path, capsys, option, value, budget):
    """A budget of N bytes gives a file of at most N bytes and not far below (qarv_small spans
    531 to 1,977 bytes on this photo, so a budget read as 8·N, or as bits over the padded size,
    lands on λ = 2048 and 1,977 bytes); the printed size and bpp are the file's."""
    out = tmp_path / "boat.lvae"
    rc, lines, err = lvae_cmd(capsys, "compress", photo, "-o", out, option, value)
    assert rc == 0 and not errors(err), err
    size = out.stat().st_size
    assert 0.85 * budget <= size <= budget
    [line] = lines
    assert bytes_and_bpp(line)[0] == size
    assert bytes_and_bpp(line)[1] == pytest.approx(true_bpp(size), abs=BPP_PRINTED)
    assert f"{W}x{H}" in line
    header = bitstream.read_header(out.read_bytes())
    assert (header.width, header.height) == (W, H)


# -- b: every bpp is over the source's true H×W ------------------------------------------------
def test_decompress_prints_the_files_bpp(coded, tmp_path, capsys):
    data = coded.read_bytes()
    rc, lines, err = lvae_cmd(capsys, "decompress", coded, "-o", tmp_path / "full.png")
    assert rc == 0 and not errors(err), err
    assert bytes_and_bpp(lines[0])[0] == len(data) == coded.stat().st_size
    assert bytes_and_bpp(lines[0])[1] == pytest.approx(true_bpp(len(data)), abs=BPP_PRINTED)
    assert Image.open(tmp_path / "full.png").size == (W, H)

    rc, lines, err = lvae_cmd(capsys, "decompress", coded, "-o", tmp_path / "three.png", "--latents", 3)
    assert rc == 0 and not errors(err), err
    cut = len(bitstream.truncate(data, 3))
    assert bytes_and_bpp(lines[0]) == (cut, pytest.approx(true_bpp(cut), abs=BPP_PRINTED))


def test_progressive_lines_and_figure_labels_carry_each_prefixs_bpp(coded, tmp_path, capsys, monkeypatch):
    from lvae.eval import plot

    labels_drawn: list[list[str]] = []
    real_plot = plot.plot_progressive

    def spy(images, labels, output, **kwargs):
        labels_drawn.append(list(labels))
        return real_plot(images, labels, output, **kwargs)

    monkeypatch.setattr(plot, "plot_progressive", spy)
    data = coded.read_bytes()
    n = bitstream.read_header(data).num_latents
    figure = tmp_path / "fig.png"
    rc, lines, err = lvae_cmd(capsys, "decompress", coded, "--progressive", "-o", tmp_path / "p.png",
                              "--figure", figure)
    assert rc == 0 and not errors(err), err
    sizes = [len(bitstream.truncate(data, k)) for k in range(n + 1)]
    assert sizes[-1] == len(data)
    prefix_lines = [line for line in lines if " latents, " in line]
    assert len(prefix_lines) == n + 1
    for k, (line, size) in enumerate(zip(prefix_lines, sizes)):
        assert f"p-k{k}.png: {k} of {n} latents" in line
        assert bytes_and_bpp(line) == (size, pytest.approx(true_bpp(size), abs=BPP_PRINTED))
        assert Image.open(tmp_path / f"p-k{k}.png").size == (W, H)
    [labels] = labels_drawn
    assert len(labels) == n + 1
    for k, (label, size) in enumerate(zip(labels, sizes)):
        found = re.fullmatch(rf"{k} of {n} latents: (\d+\.\d+) bpp", label)
        assert found, label
        assert float(found[1]) == pytest.approx(true_bpp(size), abs=BPP_PRINTED)
    assert figure.stat().st_size > 0


def test_info_prints_the_files_bpp(coded, capsys):
    data = coded.read_bytes()
    rc, lines, err = lvae_cmd(capsys, "info", coded)
    assert rc == 0 and not errors(err), err
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines}
    assert fields["size"].startswith(f"{W}x{H}")
    total, bpp = re.fullmatch(r"(\d+) \((\d+\.\d+) bpp\)", fields["bytes"]).groups()
    assert int(total) == len(data)
    assert float(bpp) == pytest.approx(true_bpp(len(data)), abs=BPP_PRINTED)
    prefixes = re.findall(r"k=(\d+): (\d+) B (\d+\.\d+) bpp", fields["prefixes"])
    assert len(prefixes) == bitstream.read_header(data).num_strings + 1
    for k, size, bpp in prefixes:
        assert int(size) == len(bitstream.truncate(data, int(k)))
        assert float(bpp) == pytest.approx(true_bpp(int(size)), abs=BPP_PRINTED)


def test_eval_records_the_files_bpp(photo, small, tmp_path, capsys):
    """``lvae eval``: each row's bytes are those of the file the model writes, its bpp is over
    the true H×W, and the table's bpp is their mean."""
    out = tmp_path / "eval.json"
    rc, lines, err = lvae_cmd(capsys, "eval", "--model", "qarv_small", "--dataset_name", photo.parent, "--steps", 2,
                              "--device", "cpu", "--no_progress", "--output", out)
    assert rc == 0 and not errors(err), err
    report = json.loads(out.read_text())
    rows = report["per-image"]
    assert len(rows) == 2
    im = load_image(photo)
    for i, row in enumerate(rows):
        size = len(small.compress(im, lmb=row["lmb"]))
        assert row["bytes"] == size
        assert row["bpp"] == pytest.approx(true_bpp(size), rel=1e-12)
        assert report["results"]["bpp"][i] == pytest.approx(true_bpp(size), rel=1e-12)
        table = next(line for line in lines if line.split()[:1] == [f"{row['lmb']:.4g}"])
        assert float(table.split()[1]) == pytest.approx(true_bpp(size), abs=BPP_PRINTED)


def test_progressive_eval_records_each_prefixs_bpp(photo, small, tmp_path, capsys):
    """``lvae eval --progressive`` (evaluate_progressive): a prefix's bytes are those of the
    truncated file, its bpp over the true H×W, in the rows, the means and the printed table."""
    out = tmp_path / "prog.json"
    rc, lines, err = lvae_cmd(capsys, "eval", "--model", "qarv_small", "--dataset_name", photo.parent, "--steps", 2,
                              "--device", "cpu", "--no_progress", "--progressive", "--output", out)
    assert rc == 0 and not errors(err), err
    report = json.loads(out.read_text())
    n = report["num-latents"]
    assert n == len(small.latent_blocks)
    im = load_image(photo)
    for i, lmb in enumerate(report["lambdas"]):
        data = small.compress(im, lmb=lmb)
        expected = [true_bpp(len(bitstream.truncate(data, k))) for k in range(n + 1)]
        rows = sorted((r for r in report["per-image"] if r["lmb"] == lmb), key=lambda r: r["latents"])
        assert [r["latents"] for r in rows] == list(range(n + 1))
        assert [r["bytes"] for r in rows] == [len(bitstream.truncate(data, k)) for k in range(n + 1)]
        assert [r["bpp"] for r in rows] == pytest.approx(expected, rel=1e-12)
        assert report["prefixes"]["bpp"][i] == pytest.approx(expected, rel=1e-12)
        table = next(line for line in lines if line.split()[:1] == [f"{lmb:.4g}"])
        printed = [float(b) for b in re.findall(r"(\d+\.\d+)/", table)]
        assert printed == pytest.approx(expected, abs=BPP_PRINTED)
    assert out.with_suffix(".png").stat().st_size > 0


# -- c: the recorded SHA-256 of packaged weights is compared in full ---------------------------
def _forged(digest: str, where: str) -> str:
    """``digest`` with one hex digit changed (first, middle or last), or cut short by one."""
    if where == "shortened":
        return digest[:-1]
    i = {"first": 0, "middle": 32, "last": 63}[where]
    return digest[:i] + ("0" if digest[i] != "0" else "1") + digest[i + 1:]


@pytest.fixture()
def torch_loads(monkeypatch) -> list[object]:
    """Every file torch.load is asked to read from now on (it still reads them)."""
    calls: list[object] = []
    real_load = torch.load

    def spy(f, *args, **kwargs):
        calls.append(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


@pytest.mark.parametrize("where", ["last", "middle", "first", "shortened"])
def test_packaged_weights_with_a_digest_differing_anywhere_are_refused_unread(
        photo, tmp_path, capsys, monkeypatch, torch_loads, where):
    """The packaged file's real digest is the recorded one but for one hex digit (or one digit
    short): a comparison of any prefix would accept it and hand the bytes to the full unpickler."""
    entry = registry._MODELS["qarv_small"]
    assert entry.weights is not None and entry.weights.sha256 is not None
    real = file_sha256(locate_weights(entry.weights).path)
    assert real == entry.weights.sha256  # the shipped file is intact
    forged = _forged(real, where)
    assert forged != real and (where == "first" or forged[:32] == real[:32])
    weights = dataclasses.replace(entry.weights, sha256=forged)
    monkeypatch.setitem(registry._MODELS, "qarv_small", dataclasses.replace(entry, weights=weights))

    with pytest.raises(CheckpointError, match=f"is damaged: its SHA-256 is not {forged}"):
        lvae.get_model("qarv_small", pretrained=True)
    with pytest.raises(CheckpointError, match="is damaged"):
        resolve_weights("qarv_small", weights)
    out = tmp_path / "boat.lvae"
    rc, lines, err = lvae_cmd(capsys, "compress", photo, "-o", out)
    assert (rc, lines) == (1, [])
    assert len(err) == 1 and err[0].startswith("lvae: error: ") and "is damaged" in err[0]
    assert not out.exists()
    assert torch_loads == []  # nothing was unpickled

    # the same file under its true digest loads (so the spy does see torch.load)
    monkeypatch.setitem(registry._MODELS, "qarv_small", entry)
    lvae.get_model("qarv_small", pretrained=True)
    assert len(torch_loads) == 1


# -- d: a container with bytes after its strings is refused, even under a valid CRC -----------
def _v1_with_trailing_bytes(v1: bytes, how: str) -> bytes:
    """A version-1 file with bytes appended and its CRC-32 (of every byte before it) made valid."""
    if how == "zeros before the CRC":
        body = v1[:-4] + bytes(3)
    else:  # the old CRC kept, a new one over everything after it
        body = v1
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("version, how", [
    (1, "zeros before the CRC"),
    (1, "old CRC kept"),
    (2, "appended"),
])
def test_container_with_trailing_bytes_is_refused(photo, small, tmp_path, capsys, version, how):
    header, strings = bitstream.parse(small.compress(load_image(photo), lmb=128))
    if version == 1:
        good = bitstream.pack(header.model_name, header.lmb, header.height, header.width, strings, version=1)
        forged = _v1_with_trailing_bytes(good, how)
        assert zlib.crc32(forged[:-4]) == struct.unpack("<I", forged[-4:])[0]  # the CRC is valid
    else:
        good = small.compress(load_image(photo), lmb=128)
        forged = good + b"\x00\x00\x00"  # version 2's CRC covers the header only
    assert small.decompress(good).shape == (1, 3, H, W)  # the file without the extra bytes decodes
    assert bitstream.parse(good)[0].version == version

    with pytest.raises(BitstreamError):
        bitstream.parse(forged)
    with pytest.raises(BitstreamError):
        small.decompress(forged)
    folder = tmp_path / "in"
    folder.mkdir()
    src = folder / "forged.lvae"
    src.write_bytes(forged)
    out = tmp_path / "out"
    for args in (["decompress", src, "-o", out / "x.png"], ["decompress", src, "--out-dir", out],
                 ["decompress", src, "--progressive", "-o", out / "p.png"], ["info", src],
                 ["truncate", src, "--latents", 2, "-o", out / "cut.lvae"]):
        rc, lines, err = lvae_cmd(capsys, *args)
        assert (rc, lines) == (1, []), args
        assert len(err) == 1 and err[0].startswith(f"lvae: error: {src}: "), (args, err)
    assert list(folder.iterdir()) == [src] and src.read_bytes() == forged
    assert not out.exists() or list(out.iterdir()) == []
