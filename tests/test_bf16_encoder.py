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

import pytest
import torch

import lvae
from lvae.io import load_image
from lvae.metrics import psnr
from lvae.models import layers

DATA = Path(__file__).parent / "data"
WORKER = Path(__file__).parent / "tools" / "portable_worker.py"
KODAK3 = sorted((DATA / "kodak3").glob("*.png"))


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


def test_command_line_flag(tmp_path):
    src = KODAK3[2]
    out = tmp_path / "a.lvae"
    proc = subprocess.run([sys.executable, "-m", "lvae", "compress", str(src), "-o", str(out), "--bf16-encoder",
                           "--lmb", "100"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    decoded = lvae.get_model("qarv_small", pretrained=True).eval().decompress(out.read_bytes())
    assert decoded.shape == load_image(src).shape
    assert torch.isfinite(decoded).all()
