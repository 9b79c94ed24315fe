"""CPU ↔ CUDA: a file coded on one device decodes on the other (run with `pytest -m cuda`).

Skipped without a CUDA GPU. The caller's TF32 settings are on in some cases: coding must pin
full float32 while it runs and restore the caller's settings afterwards.
"""
import json

import numpy as np
import pytest
import torch

import lvae
from lvae.coding.latent import trace
from lvae.io import load_image
from lvae.models.fixed_weights import load_fixed_reference_weights

from conftest import DATA, LAMBDAS

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
KODAK = sorted((DATA / "kodak24").glob("*.webp"))[:6]
SMALL_LMBS = (16, 64, 256, 1024, 2048)


def _set_tf32(on: bool) -> tuple:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return before


def _round_trip(cpu_model, gpu_model, images, lmbs, tf32: bool) -> dict:
    stats = {"files": 0, "corrupted": 0, "flips": 0, "max_diff": 0.0}
    before = _set_tf32(tf32)
    try:
        for path in images:
            im = load_image(path)
            for lmb in lmbs:
                for enc, dec in ((cpu_model, gpu_model), (gpu_model, cpu_model)):
                    data = enc.compress(im, lmb=lmb)
                    ref = enc.decompress(data).cpu()
                    with trace() as reports:
                        out = dec.decompress(data).cpu()
                    diff = (out - ref).abs().max().item()
                    stats["files"] += 1
                    stats["corrupted"] += diff > 1 / 255
                    stats["flips"] += sum(r.flips for r in reports)
                    stats["max_diff"] = max(stats["max_diff"], diff)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32, tf32)
    finally:
        _set_tf32(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
    return stats


@pytest.mark.parametrize("tf32", [False, True])
def test_qarv_small_cpu_cuda_both_ways(tf32):
    cpu = lvae.get_model("qarv_small", pretrained=True).eval()
    gpu = lvae.get_model("qarv_small", pretrained=True).eval().cuda()
    stats = _round_trip(cpu, gpu, KODAK, SMALL_LMBS, tf32)
    print("\nqarv_small CPU<->CUDA", "tf32" if tf32 else "fp32", json.dumps(stats))
    assert stats["files"] == len(KODAK) * len(SMALL_LMBS) * 2 and stats["corrupted"] == 0


@pytest.mark.parametrize("tf32", [False, True])
def test_qarv_base_cpu_cuda_both_ways(tf32):
    cpu = load_fixed_reference_weights(lvae.get_model("qarv_base")).eval()
    gpu = load_fixed_reference_weights(lvae.get_model("qarv_base")).eval().cuda()
    stats = _round_trip(cpu, gpu, sorted((DATA / "kodak3").glob("*.png")), LAMBDAS, tf32)
    print("\nqarv_base CPU<->CUDA", "tf32" if tf32 else "fp32", json.dumps(stats))
    assert stats["corrupted"] == 0


@pytest.mark.parametrize("lmb", LAMBDAS)
def test_authors_files_decode_on_cuda(reference, lmb):
    model = load_fixed_reference_weights(lvae.get_model("qarv_base")).eval().cuda()
    before = _set_tf32(True)
    try:
        im = model.decompress((DATA / f"legacy_lmb{lmb}.bits").read_bytes()).cpu()
    finally:
        _set_tf32(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
    np.testing.assert_allclose(im.numpy(), reference["npz"][f"lmb{lmb}_legacy_decoded"], rtol=0, atol=1e-4)


def test_cuda_encoder_reproduces_authors_strings(reference):
    """Encoding on CUDA gives the authors' CPU bytes, or bytes that decode to the same image."""
    model = load_fixed_reference_weights(lvae.get_model("qarv_base")).eval().cuda()
    cpu = load_fixed_reference_weights(lvae.get_model("qarv_base")).eval()
    for lmb in LAMBDAS:
        data = model.compress(reference["input"], lmb=lmb)
        np.testing.assert_allclose(cpu.decompress(data).numpy(), model.decompress(data).cpu().numpy(),
                                   rtol=0, atol=1e-4)
