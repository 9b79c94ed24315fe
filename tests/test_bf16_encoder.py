"""The bfloat16 encoder (``QARV.set_encoder_precision('bfloat16')``, ``lvae compress --bf16-encoder``).

It computes in bfloat16 only what no decoder computes (the bottom-up features and the
posteriors), so its files decode on every machine exactly like float32 ones, at nearly the same
rate and quality. The Kodak BD-rate of the whole sweep is measured in docs/speed.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae.io import load_image
from lvae.metrics import psnr
from lvae.models import layers

DATA = Path(__file__).parent / "data"
WORKER = Path(__file__).parent / "tools" / "portable_worker.py"
KODAK3 = sorted((DATA / "kodak3").glob("*.png"))


# The bfloat16 encoder runs where oneDNN computes bfloat16 linears (AVX-512 BF16 or AMX); elsewhere
# (AVX2-only CPUs, ONEDNN_MAX_CPU_ISA=AVX2) it is refused up front: see the tests at the end.
needs_bf16 = pytest.mark.skipif(not layers.bf16_mlps_supported(), reason="this CPU runs no bfloat16 linears")


@pytest.fixture(scope="module")
def small():
    return lvae.get_model("qarv_small", pretrained=True).eval()


@pytest.fixture()
def bf16_calls(monkeypatch):
    """Counts the blocks that ran their MLP in bfloat16."""
    calls = []
    real = layers.ConvNeXtBlockAdaLN._mlp_residual_bf16

    def spy(self, h, x):
        calls.append(h.shape)
        return real(self, h, x)

    monkeypatch.setattr(layers.ConvNeXtBlockAdaLN, "_mlp_residual_bf16", spy)
    return calls


def test_precision_is_checked(small):
    with pytest.raises(ValueError, match="encoder precision must be one of float32, bfloat16"):
        small.set_encoder_precision("float16")
    assert small.encoder_precision == "float32"


@needs_bf16
def test_only_the_encoder_side_runs_in_bfloat16(small, bf16_calls):
    im = load_image(KODAK3[0])[..., :192, :256]
    small.set_encoder_precision("bfloat16")
    try:
        data = small.compress(im, lmb=256)
        encoded_calls = len(bf16_calls)
        decoded = small.decompress(data)
    finally:
        small.set_encoder_precision("float32")
    enc_blocks = sum(isinstance(b, layers.ConvNeXtBlockAdaLN) for b in small.encoder.enc_blocks)
    posterior_blocks = 3 * len(small.latent_blocks)  # posterior0, 1 and 2 of each latent
    assert encoded_calls == enc_blocks + posterior_blocks
    assert len(bf16_calls) == encoded_calls  # decoding: none, even with the setting on
    reference = small.decompress(small.compress(im, lmb=256))  # the float32 encoder's file
    assert not bf16_calls[encoded_calls:]
    assert abs(psnr(im, decoded) - psnr(im, reference)) < 0.1


def test_float32_is_untouched(small, bf16_calls):
    im = load_image(KODAK3[1])[..., :128, :192]
    before = small.compress(im, lmb=64)
    with layers.bf16_mlps(False):
        again = small.compress(im, lmb=64)
    assert before == again and bf16_calls == []


@needs_bf16
def test_rate_and_quality_match_the_float32_encoder(small):
    """Three Kodak images at three λ: file sizes within 1 %, PSNR within 0.05 dB."""
    for path in KODAK3:
        im = load_image(path)
        for lmb in (16, 256, 2048):
            small.set_encoder_precision("float32")
            ref = small.compress(im, lmb=lmb)
            small.set_encoder_precision("bfloat16")
            fast = small.compress(im, lmb=lmb)
            small.set_encoder_precision("float32")
            assert abs(len(fast) / len(ref) - 1) < 0.01, (path.name, lmb, len(fast), len(ref))
            dq = psnr(im, small.decompress(fast)) - psnr(im, small.decompress(ref))
            assert abs(dq) < 0.05, (path.name, lmb, dq)


@needs_bf16
def test_files_decode_under_other_arithmetic(tmp_path):
    """Encoded with the bfloat16 encoder in one process; decoded in another limited to AVX2 with
    oneDNN off: every image as the encoder's own decode (tests/tools/portable_worker.py)."""
    env = {**os.environ}
    run = [sys.executable, str(WORKER)]
    enc = subprocess.run([*run, "encode", "--model", "qarv_small", "--out", str(tmp_path), "--lmbs", "16,2048",
                          "--bf16-encoder", *map(str, KODAK3)], capture_output=True, text=True, env=env)
    assert enc.returncode == 0, enc.stderr[-2000:]
    dec = subprocess.run([*run, "decode", "--model", "qarv_small", "--dir", str(tmp_path), "--no-mkldnn"],
                         capture_output=True, text=True, env={**env, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert dec.returncode == 0, dec.stderr[-2000:]
    summary = json.loads(dec.stdout)
    assert summary["files"] == 6 and summary["corrupted"] == []


@needs_bf16
def test_command_line_flag(tmp_path):
    src = KODAK3[2]
    out = tmp_path / "a.lvae"
    proc = subprocess.run([sys.executable, "-m", "lvae", "compress", str(src), "-o", str(out), "--bf16-encoder",
                           "--lmb", "100"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "bfloat16" not in proc.stderr  # no warning where it runs
    decoded = lvae.get_model("qarv_small", pretrained=True).eval().decompress(out.read_bytes())
    assert decoded.shape == load_image(src).shape
    assert torch.isfinite(decoded).all()


# -- where bfloat16 does not run ------------------------------------------------------------------
def test_unsupported_precision_is_refused_up_front(monkeypatch):
    """Without bfloat16 linears the model refuses the precision at once and keeps float32 (it used
    to accept it, fail in the first block and switch itself off for the process, silently)."""
    from lvae.models import qarv

    model = lvae.get_model("qarv_tiny").eval()
    monkeypatch.setattr(qarv, "bf16_mlps_supported", lambda device="cpu": False)
    assert model.encoder_precisions() == ("float32",)
    with pytest.raises(lvae.PrecisionUnavailableError, match="bfloat16 encoder does not run on this CPU"):
        model.set_encoder_precision("bfloat16")
    assert model.encoder_precision == "float32"
    model.set_encoder_precision("float32")  # always accepted


def test_encoding_never_switches_arithmetic_midway(monkeypatch):
    """A model set to bfloat16 that is then asked to encode where bfloat16 does not run raises
    before coding anything."""
    from lvae.models import qarv

    model = lvae.get_model("qarv_tiny").eval()
    model.encoder_precision = "bfloat16"  # as if set on a machine (or device) where it ran
    monkeypatch.setattr(qarv, "bf16_mlps_supported", lambda device="cpu": False)
    with pytest.raises(lvae.PrecisionUnavailableError):
        model.compress(torch.rand(1, 3, 64, 64), lmb=100)


def test_probe_follows_onednn_isa_limit():
    """With oneDNN limited to AVX2 (no bfloat16 instructions) the probe says no, and the model
    offers float32 only: what an AVX2-only CPU (e.g. AMD EPYC before Zen 4) gets."""
    code = ("import lvae; from lvae.models import layers; m = lvae.get_model('qarv_tiny');"
            "print(layers.bf16_mlps_supported(), m.encoder_precisions())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "('float32',)"]


def test_command_line_flag_without_bfloat16_says_so_and_encodes_in_float32(tmp_path):
    """`lvae compress --bf16-encoder` on a CPU without bfloat16: one warning line, and the file is
    the float32 encoder's, byte for byte."""
    src = KODAK3[2]
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    cmd = [sys.executable, "-m", "lvae", "compress", str(src), "--lmb", "100"]
    fast = subprocess.run([*cmd, "-o", str(tmp_path / "a.lvae"), "--bf16-encoder"], capture_output=True, text=True,
                          env=env)
    assert fast.returncode == 0, fast.stderr
    warnings = [line for line in fast.stderr.splitlines() if "bfloat16" in line]
    assert len(warnings) == 1 and "float32" in warnings[0], fast.stderr
    plain = subprocess.run([*cmd, "-o", str(tmp_path / "b.lvae")], capture_output=True, text=True, env=env)
    assert plain.returncode == 0, plain.stderr
    assert (tmp_path / "a.lvae").read_bytes() == (tmp_path / "b.lvae").read_bytes()


def test_evaluation_records_the_precision_that_ran(tmp_path, monkeypatch, capsys):
    """eval --bf16_encoder where bfloat16 does not run: one warning line, and the result does not
    claim a bfloat16 encoder."""
    from lvae.cli.evaluate import main
    from lvae.models import qarv

    folder = tmp_path / "set"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    monkeypatch.setattr(qarv, "bf16_mlps_supported", lambda device="cpu": False)
    out = tmp_path / "r.json"
    rc = main(["--model", "qarv_tiny", "--weights", "random", "--dataset_name", str(folder), "--steps", "1",
               "--device", "cpu", "--output", str(out), "--no_progress", "--bf16_encoder"])
    assert rc == 0
    err = capsys.readouterr().err
    assert sum("bfloat16" in line for line in err.splitlines()) == 1, err
    assert "encoder-precision" not in json.loads(out.read_text())
