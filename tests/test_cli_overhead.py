"""What ``lvae compress`` does besides encoding and decoding, made cheap (issue 26) without changing
what it computes: the PSNR it prints (banded, against the float64 formula), the image it reads (bit
for bit, read ahead in a thread while the model loads) and the input check."""
from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae import cli, metrics
from lvae import io as lvae_io
from lvae.coding.codec import delivered_psnr
from lvae.errors import ImageReadError
from lvae.io import read_image, reading_ahead
from lvae.metrics import mse_to_psnr
from lvae.models.fixed_weights import load_fixed_reference_weights

RNG = np.random.default_rng(26)


def reference_psnr(decoded: torch.Tensor, source: torch.Tensor) -> float:
    """The formula as it was: the whole image rounded to 8 bits, then compared in float64."""
    q = torch.round(decoded.float().clamp(0, 1) * 255).double() / 255
    ref = source.double()
    if ref.shape[1] != q.shape[1]:
        ref = ref.expand(-1, q.shape[1], -1, -1) if ref.shape[1] == 1 else ref
        q = q.expand(-1, ref.shape[1], -1, -1) if q.shape[1] == 1 else q
    return mse_to_psnr(float(((q - ref) ** 2).mean()))


def eight_bit(shape) -> torch.Tensor:
    return torch.from_numpy(RNG.integers(0, 256, shape).astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("chunk", [metrics.SQUARED_ERROR_BAND, 1000, 7])  # one band, a few rows, one row
@pytest.mark.parametrize("channels", [(3, 3), (1, 3), (3, 1), (1, 1)])  # (source, decoded)
def test_banded_psnr_matches_the_float64_formula(monkeypatch, chunk, channels):
    monkeypatch.setattr(metrics, "SQUARED_ERROR_BAND", chunk)
    src_c, dec_c = channels
    source = eight_bit((1, src_c, 37, 29))
    noise = torch.from_numpy(RNG.normal(0, 0.03, (1, dec_c, 37, 29)).astype(np.float32))
    near = source if src_c == dec_c else source.expand(-1, 3, -1, -1) if dec_c == 3 else source.mean(1, keepdim=True)
    decoded = near + noise  # values beyond [0, 1] too: clamped
    got, want = delivered_psnr(decoded, source), reference_psnr(decoded, source)
    assert 20 < want < 60 or src_c > dec_c  # (a gray decode of random colours is far off)
    assert got == pytest.approx(want, abs=1e-6)


def test_banded_psnr_of_other_sources_and_layouts():
    """A source that is not 8-bit, a channels-last decode cropped from a larger one, float64 input."""
    source = torch.rand(1, 3, 41, 53)
    big = (source + 0.01 * torch.randn(1, 3, 41, 53)).contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(big, (0, 11, 0, 7), mode="replicate")[:, :, :41, :53]
    for decoded in (big, padded, big.double()):
        assert delivered_psnr(decoded, source) == pytest.approx(reference_psnr(decoded, source), abs=1e-6)


def test_banded_psnr_of_an_exact_decode_and_of_mismatched_shapes():
    assert math.isinf(delivered_psnr(torch.zeros(1, 3, 4, 5), torch.zeros(1, 3, 4, 5)))
    source = eight_bit((1, 3, 9, 11))
    exact = delivered_psnr(source.clone(), source)  # float noise only (lvae.cli.coding.decoded_exactly)
    assert exact > 140 and exact == pytest.approx(reference_psnr(source.clone(), source), abs=1e-6)
    with pytest.raises(ValueError, match="decoded image"):
        delivered_psnr(source[:, :, :8], source)


def test_rounding_halves_to_even_as_torch_does():
    """Samples whose 255·x is a half level exactly: NumPy's and torch's rounding agree on each."""
    halves = torch.arange(255, dtype=torch.float32).add_(0.5).div_(255)
    halves = halves[(halves * 255).frac() == 0.5]  # those that land on the half exactly in float32
    assert halves.numel() > 100
    decoded = halves.repeat(3, 1).reshape(1, 3, 1, -1)
    source = torch.zeros_like(decoded)
    assert metrics.rounded_squared_error(decoded, source) == pytest.approx(
        float(((torch.round(decoded * 255).double() / 255) ** 2).sum()), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_banded_psnr_of_other_dtypes(dtype):
    source = eight_bit((1, 3, 13, 17)).to(dtype)
    decoded = (source.float() + 0.02 * torch.randn(1, 3, 13, 17)).to(dtype)
    assert delivered_psnr(decoded, source) == pytest.approx(reference_psnr(decoded, source), abs=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1.5, -0.01])
def test_input_check_in_one_pass_refuses_what_it_refused(bad, layout):
    model = lvae.get_model("qarv_tiny").eval()
    im = torch.full((1, 3, 20, 24), 0.5)
    im[0, 1, 7, 9] = bad
    if layout == "channels_last":
        im = im.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        im = torch.full((1, 3, 20, 30), 0.25)[:, :, :, 3:27].copy_(im)
    with pytest.raises(ValueError, match=r"finite and within \[0, 1\]"):
        model.compress(im)


def _old_read(path) -> torch.Tensor:
    """What read_image made of an 8-bit RGB file before: Pillow → uint8 → float → / 255."""
    with Image.open(path) as img:
        arr = np.array(np.asarray(img.convert("RGB")), dtype=np.uint8, copy=True)
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float().div_(255.0)


def test_read_image_gives_the_same_tensor_bit_for_bit(tmp_path):
    arr = np.concatenate([np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2),
                          RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)], axis=1)  # every value
    path = tmp_path / "all.png"
    Image.fromarray(arr).save(path)
    got, want = read_image(path).tensor, _old_read(path)
    assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert got.data_ptr() % 64 == 0  # aligned as torch's own allocations
    gray = tmp_path / "gray.png"
    Image.fromarray(arr[:, :, 0]).save(gray)
    g = read_image(gray).tensor
    assert g.shape == (1, 1, 16, 32) and g.stride() == (1, 1, 32, 1)
    assert torch.equal(g, want[:, :1])


def reads_in(monkeypatch) -> list[str]:
    """The names of the threads that decode an image file from now on."""
    threads: list[str] = []
    decode = lvae_io._read_pixels

    def counted(path):
        threads.append(threading.current_thread().name)
        return decode(path)

    monkeypatch.setattr(lvae_io, "_read_pixels", counted)
    return threads


def test_reading_ahead_gives_what_read_image_gives(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    threads = reads_in(monkeypatch)
    with reading_ahead(path):
        ahead = read_image(str(path))
    assert threads == ["lvae-read-image"]  # read once, ahead
    plain = read_image(path)
    assert torch.equal(ahead.tensor, plain.tensor) and ahead.tensor.stride() == plain.tensor.stride()
    assert (ahead.colour, ahead.alpha_dropped, ahead.mode, ahead.deep) == (
        plain.colour, plain.alpha_dropped, plain.mode, plain.deep)


def test_reading_ahead_raises_the_same_error(tmp_path):
    path = tmp_path / "not_an_image.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError) as plain:
        read_image(path)
    with reading_ahead(path), pytest.raises(ImageReadError) as ahead:
        read_image(path)
    assert str(ahead.value) == str(plain.value)


def test_reading_ahead_reads_again_a_file_changed_meanwhile(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    with reading_ahead(path):
        Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(path)
        os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock's resolution
        assert float(read_image(path).tensor.min()) == 1.0


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("overhead")
    model = load_fixed_reference_weights(lvae.get_model("qarv_tiny"))
    torch.save({"model": model.state_dict()}, root / "tiny.pt")
    return root / "tiny.pt"


@pytest.mark.parametrize("ahead", [True, False])
def test_compress_prints_the_psnr_of_the_file_it_wrote(tmp_path, tiny_weights, capsys, monkeypatch, ahead):
    """The command's line: the PSNR of what its file decodes to, by the float64 formula; the bytes
    are those of model.compress (the image read ahead, in a thread, while the model loads)."""
    rgb = np.asarray(Image.fromarray(RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((70, 52)))
    src, out = tmp_path / "a.png", tmp_path / "a.lvae"
    Image.fromarray(rgb).save(src)
    threads = reads_in(monkeypatch)
    if ahead:  # (a file this small is read in compress_file)
        monkeypatch.setattr(cli.coding, "READ_AHEAD_BYTES", 0)
    status = cli.main(["compress", str(src), "-o", str(out), "--model", "qarv_tiny", "--weights", str(tiny_weights)])
    assert status == 0 and threads == ["lvae-read-image" if ahead else "MainThread"]
    line = capsys.readouterr().out.strip()
    printed = float(re.search(r"PSNR ([\d.]+) dB", line).group(1))
    model = load_fixed_reference_weights(lvae.get_model("qarv_tiny")).eval()
    model.name = "qarv_tiny"
    data = out.read_bytes()
    im = read_image(src).tensor
    assert data == model.compress(im)
    assert printed == round(reference_psnr(model.decompress(data), im), 2)


@pytest.mark.parametrize("ahead", [0, 1 << 40])
def test_compress_of_an_unreadable_image_says_so_in_one_line(tmp_path, tiny_weights, capsys, monkeypatch, ahead):
    monkeypatch.setattr(cli.coding, "READ_AHEAD_BYTES", ahead)  # read ahead, or not
    src, out = tmp_path / "bad.png", tmp_path / "bad.lvae"
    src.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    status = cli.main(["compress", str(src), "-o", str(out), "--model", "qarv_tiny", "--weights", str(tiny_weights)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith(f"lvae: error: {src}: cannot read")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png"]  # nothing written, no temporary left


# -- benchmarks/cli_overhead.py -------------------------------------------------------------------
def test_cli_overhead_benchmark_makes_its_images(benchmark_script, tmp_path):
    bench = benchmark_script("cli_overhead")
    path = bench.make_image(tmp_path, 0.05, "png")
    assert bench.image_megapixels(path) == pytest.approx(0.05, abs=0.001)
    with Image.open(path) as im:
        assert im.width / im.height == pytest.approx(768 / 512, rel=0.01)  # kodim01's aspect
    assert bench.make_image(tmp_path, 0.05, "png") == path  # reused
    assert bench.sizes_arg("8, 0.4") == [0.4, 8.0]
    with pytest.raises(argparse.ArgumentTypeError):
        bench.sizes_arg("0,1")


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--breakdown"]])
def test_cli_overhead_benchmark_runs(tmp_path, mode):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cli_overhead.py"
    proc = subprocess.run([sys.executable, str(script), "--sizes", "0.02", "--repeats", "1", "--images",
                           str(tmp_path), *mode], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert ("| encode | " if mode else "| 0.02 | ") in proc.stdout
