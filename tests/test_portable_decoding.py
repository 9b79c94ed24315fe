"""Coded files decode to the encoder's image on machines that compute differently.

One process encodes; others decode with another thread count, with oneDNN disabled (another
convolution algorithm), and with oneDNN limited to AVX2 (on an AVX-512 CPU). Each setting is
shown to really change the prior scales, so these tests cannot pass vacuously. The numbers of
each run (scales changed, CDF indexes repaired, repair cost, file-size cost) are printed with
``pytest -s`` and written as JSON where ``LVAE_PORTABLE_REPORT`` points.
"""
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
from lvae.coding import latent as coding_latent
from lvae.coding.latent import MAX_CHECKED_TRIALS, trace
from lvae.coding.portable import search_plan
from lvae.errors import BitstreamError
from lvae.models.fixed_weights import load_fixed_reference_weights
from lvae.utils.system import cpu_info

from conftest import DATA, LAMBDAS

WORKER = Path(__file__).parent / "tools" / "portable_worker.py"
KODAK = sorted((DATA / "kodak24").glob("*.webp"))
SMALL_LMBS = "16,64,256,1024,2048"
BASE_IMAGES = sorted((DATA / "kodak3").glob("*.png"))
REPORT: dict = {}


def _avx512() -> bool:
    """This process's oneDNN may use AVX-512: the CPU has it, and ONEDNN_MAX_CPU_ISA (set to make
    this machine stand in for an AVX2-only one, docs/testing.md) does not hold oneDNN below it."""
    return bool(cpu_info().onednn_avx512)  # the one rule, also behind the MLPs' GELU path


SETTINGS = {
    "1 thread": (["--threads", "1"], {}),
    "mkldnn off": (["--no-mkldnn"], {}),
    "AVX2": ([], {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
}


def _worker(*args, env=None) -> str:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True, text=True, env=full_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _report(key: str, value) -> None:
    REPORT[key] = value
    print(f"\n{key}: {json.dumps(value)}")
    if os.environ.get("LVAE_PORTABLE_REPORT"):
        Path(os.environ["LVAE_PORTABLE_REPORT"]).write_text(json.dumps(REPORT, indent=1))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """qarv_small on the 24 Kodak images × 5 λ, qarv_base (fixed weights) on 3 images × 3 λ, and
    qres34m's λ = 64 member (fixed weights) on one of them, at 2 threads (tests/test_qres_lossless.py
    decodes the same latents, and the pixels, of four more images)."""
    folders = {}
    base_lmbs = ",".join(map(str, LAMBDAS))
    for model, images, lmbs in (("qarv_small", KODAK, SMALL_LMBS), ("qarv_base", BASE_IMAGES, base_lmbs),
                                ("qres34m", BASE_IMAGES[:1], "64")):
        out = tmp_path_factory.mktemp(model)
        _worker("encode", "--model", model, "--out", out, "--lmbs", lmbs, "--threads", 2, *images)
        folders[model] = out
    return folders


def test_fixture_is_complete():
    assert len(KODAK) == 24 and len(BASE_IMAGES) == 3


@pytest.mark.parametrize("model", ["qarv_small", "qarv_base", "qres34m"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_files_decode_under_other_arithmetic(encoded, model, setting):
    args, env = SETTINGS[setting]
    if setting == "AVX2" and not _avx512():
        pytest.skip("oneDNN runs without AVX-512 here already: limiting it to AVX2 changes nothing")
    summary = json.loads(_worker("decode", "--model", model, "--dir", encoded[model], *args, env=env))
    _report(f"{model} / {setting}", summary)
    expected = {"qarv_small": 24 * 5, "qarv_base": 3 * 3, "qres34m": 1}[model]
    assert summary["files"] == expected
    assert summary["corrupted"] == []
    # not vacuous: the decoder's prior scales differ from the encoder's
    assert summary["changed_blocks"] > 0 and summary["max_dlog_scale"] > 0


def test_checks_cost_few_bytes(encoded):
    """Container version 2 vs version 1 (the same strings): ≤ 40 bytes a file, ≤ 0.3 % at λ = 16 on Kodak."""
    files = json.loads((encoded["qarv_small"] / "encoded.json").read_text())["files"]
    extra = [f["bytes"] - f["bytes_v1"] for f in files]
    at16 = [f for f in files if f["stem"].endswith("-16")]
    growth16 = sum(f["bytes"] - f["bytes_v1"] for f in at16) / sum(f["bytes_v1"] for f in at16)
    _report("qarv_small size cost", {"max_extra_bytes": max(extra), "min_extra_bytes": min(extra),
                                     "growth_at_lmb16": growth16,
                                     "mean_bytes_at_lmb16": sum(f["bytes"] for f in at16) / 24})
    assert max(extra) <= 40
    assert growth16 <= 0.003


# -- the authors' layout: no check of ours, verified by the rANS end state ------------------------
@pytest.fixture(scope="module")
def fixed_base():
    return load_fixed_reference_weights(lvae.get_model("qarv_base")).eval()


@pytest.mark.parametrize("threads", [1, 2])
def test_authors_layout_written_at_other_thread_counts_decodes(tmp_path, fixed_base, threads):
    out = tmp_path / f"t{threads}"
    _worker("encode", "--model", "qarv_base", "--out", out, "--lmbs", "16,2048", "--format", "legacy",
            "--threads", threads, *BASE_IMAGES)
    before = torch.get_num_threads()
    for ours in (1, 2):
        torch.set_num_threads(ours)
        try:
            for f in sorted(out.glob("*.lvae")):
                im = fixed_base.decompress(f.read_bytes())
                ref = torch.from_numpy(np.array(Image.open(f.with_suffix(".png")))).float()
                diff = (im[0].permute(1, 2, 0) * 255 - ref).abs().max().item()
                assert diff <= 1.5, (f.name, threads, ours, diff)
        finally:
            torch.set_num_threads(before)


def _perturbed(monkeypatch, factor: float):
    import lvae.models.qarv as qarv

    original = qarv.decode_latent
    monkeypatch.setattr(qarv, "decode_latent", lambda coded, means, scales: original(coded, means, scales * factor))


@pytest.mark.parametrize("factor", [1 + 1e-5, 1 - 1e-5])
@pytest.mark.parametrize("lmb", LAMBDAS)
def test_authors_files_decode_with_perturbed_scales(monkeypatch, fixed_base, reference, lmb, factor):
    """The authors' own bytes, decoded with every prior scale off by 1e-5 (relative)."""
    _perturbed(monkeypatch, factor)
    data = (DATA / f"legacy_lmb{lmb}.bits").read_bytes()
    with trace() as reports:
        im = fixed_base.decompress(data)
    np.testing.assert_allclose(im.numpy(), reference["npz"][f"lmb{lmb}_legacy_decoded"], rtol=0, atol=1e-5)
    flips = sum(r.flips for r in reports)
    assert flips > 0  # the perturbation did move indexes, and they were repaired
    _report(f"authors' file λ={lmb} ×{factor}", {"repaired_indexes": flips, "trials": sum(r.trials for r in reports)})


@pytest.mark.parametrize("factor", [1 + 1e-5, 1 - 1e-5])
def test_checked_files_decode_with_perturbed_scales(monkeypatch, fixed_base, reference, factor):
    data = fixed_base.compress(reference["odd"], lmb=128)
    expected = fixed_base.decompress(data)
    _perturbed(monkeypatch, factor)
    with trace() as reports:
        im = fixed_base.decompress(data)
    assert (im - expected).abs().max() <= 1e-5
    assert sum(r.flips for r in reports) > 0
    assert all(r.trials <= 2 for r in reports)  # the check finds the flips without a search


def test_unsatisfiable_check_raises_in_bounded_work(monkeypatch, fixed_base, reference):
    """Scales off by 1 % cannot be repaired: BitstreamError after a bounded number of trials."""
    data = fixed_base.compress(reference["odd"], lmb=128)
    legacy = fixed_base.compress(reference["odd"], lmb=128, format="legacy")
    _perturbed(monkeypatch, 1.01)
    for blob, bound in ((data, MAX_CHECKED_TRIALS), (legacy, len(search_plan(48)))):
        with trace() as reports, pytest.raises(BitstreamError, match="corrupted"):
            fixed_base.decompress(blob)
        assert reports and reports[-1].flips == 0  # the block that could not be repaired
        assert max(r.trials for r in reports) <= bound


def test_damaged_check_value_is_refused(fixed_base, reference):
    data = bytearray(fixed_base.compress(reference["odd"], lmb=16))
    header, strings = lvae.bitstream.unpack(bytes(data))
    tag_at = len(data) - sum(len(s) + 4 for s in strings)  # the first string's check
    data[tag_at] ^= 0x10
    with pytest.raises(BitstreamError, match="fails its check"):
        fixed_base.decompress(bytes(data))


def test_repair_report_is_recorded_only_inside_trace():
    assert coding_latent._trace is None
