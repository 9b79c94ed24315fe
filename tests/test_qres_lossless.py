"""qres34m_lossless: the published layout and outputs, and lossless means lossless on every machine
(issue 24, points 1 and 2). Fixed reference weights throughout (tests/data/families/)."""
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
from lvae.coding.latent import trace
from lvae.errors import BitstreamError
from lvae.models.fixed_weights import load_fixed_reference_weights
from lvae.models.qres import PixelOutput

from conftest import DATA, load_image_tensor

FAMILIES = DATA / "families"
WORKER = Path(__file__).parent / "tools" / "portable_worker.py"
NAME = "qres34m_lossless"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = load_fixed_reference_weights(lvae.get_model(NAME)).eval()
    m.name = NAME  # as get_model names it (recorded in files)
    return m


@pytest.fixture(scope="module")
def npz():
    return np.load(FAMILIES / f"{NAME}.npz")


def eight_bit(im: torch.Tensor) -> torch.Tensor:
    return torch.round(im * 255).to(torch.uint8)


def test_state_dict_layout_matches_published():
    sd = lvae.get_model(NAME).state_dict()
    ref = json.loads((FAMILIES / f"{NAME}_state_dict.json").read_text())
    assert [k for k, _ in ref["keys"]] == list(sd)
    for key, shape in ref["keys"]:
        assert list(sd[key].shape) == shape, key
    assert sum(v.numel() for k, v in sd.items() if "discrete_gaussian" not in k) == ref["num_params"] == 34_045_866


def test_forward_matches_reference(model, npz):
    im = load_image_tensor(FAMILIES / "families_input.png")
    with torch.no_grad():
        out = model(im)
    np.testing.assert_allclose(out["x_hat"].numpy(), npz["x_hat"], rtol=0, atol=1e-4)
    assert out["kl"].shape == (1, 13)  # 12 latent blocks, then the pixels' own nats
    np.testing.assert_allclose(out["kl"][0, :12].double().numpy(), npz["kl"], rtol=1e-4, atol=0)
    stats = json.loads((FAMILIES / "families.json").read_text())["models"][NAME]["forward"]
    assert out["kl"][0, 12].item() / im[0].numel() == pytest.approx(stats["nll"], rel=1e-4)
    assert out["loss"].item() == pytest.approx(stats["loss"], rel=1e-4)


def test_all_13_strings_are_the_authors_bytes_and_decode_to_the_input_exactly(model, npz):
    im = load_image_tensor(FAMILIES / "families_input.png")
    strings, grid = model.compress_latents(im)
    data, pos, ref = npz["strings"].tobytes(), 0, []
    for n in npz["string_lengths"]:
        ref.append(data[pos : pos + int(n)])
        pos += int(n)
    assert len(strings) == 13 and [s for (s,) in strings] == ref
    decoded = model.postprocess(model.decompress_latents(strings, None, grid))
    assert torch.equal(eight_bit(decoded), eight_bit(im))
    np.testing.assert_allclose(decoded.numpy(), npz["decoded"], rtol=0, atol=1e-5)


def test_the_authors_pickled_file_decodes_and_is_written_byte_for_byte(model, npz):
    theirs = (FAMILIES / f"legacy_{NAME}.pkl").read_bytes()
    decoded = model.decompress(theirs)
    np.testing.assert_allclose(decoded.numpy(), npz["legacy_decoded"], rtol=0, atol=1e-5)
    source = load_image_tensor(FAMILIES / "families_odd.png")
    assert torch.equal(eight_bit(decoded), eight_bit(source))
    assert model.compress(source, format="legacy") == theirs


@pytest.fixture(scope="module")
def lossless_file(model):
    source = load_image_tensor(FAMILIES / "families_odd.png")
    return source, model.compress(source)


def test_the_file_says_lossless_and_decodes_exactly(model, lossless_file):
    source, data = lossless_file
    header = lvae.bitstream.read_header(data)
    assert header.lossless and header.num_latents == 13 and len(header.pixel_check) == 16
    assert torch.equal(eight_bit(model.decompress(data)), eight_bit(source))
    cut = lvae.bitstream.truncate(data, 12)  # without the pixels: a lossy preview, no longer lossless
    assert not lvae.bitstream.read_header(cut).lossless
    preview = model.decompress(cut)
    assert preview.shape == source.shape and not torch.equal(eight_bit(preview), eight_bit(source))


def _perturb(monkeypatch, centres=1.0, scales=1.0, push=0):
    """Decoder-side centres and scales off by a factor, and ``push`` centres nearest a half integer
    moved just across it (by 2e-5 of a step: the size of float32 noise there)."""
    original = PixelOutput.coding_params

    def perturbed(self, f):
        c, s = original(self, f)
        c = c * centres
        if push:
            r = torch.round(c).flatten()
            flat = c.clone().flatten()
            near = torch.argsort(0.5 - (flat - r).abs())[:push]
            flat[near] = torch.where(flat[near] >= r[near], r[near] + 0.5 + 2e-5, r[near] - 0.5 - 2e-5)
            c = flat.reshape(c.shape)
        return c, s * scales

    monkeypatch.setattr(PixelOutput, "coding_params", perturbed)


@pytest.mark.parametrize("push", [1, 3, 6])
def test_centres_rounded_the_other_way_are_repaired(model, lossless_file, monkeypatch, push):
    source, data = lossless_file
    _perturb(monkeypatch, push=push)
    with trace() as reports:
        decoded = model.decompress(data)
    assert reports[-1].flips == push  # not vacuous: the pushed centres were moved back
    assert torch.equal(eight_bit(decoded), eight_bit(source))


@pytest.mark.parametrize("centres, scales", [(1 + 1e-5, 1), (1 - 1e-5, 1), (1, 1 + 1e-5), (1, 1 - 1e-5),
                                             (1 + 1e-6, 1 + 1e-6)])
def test_perturbed_means_or_scales_decode_exactly_or_raise(model, lossless_file, monkeypatch, centres, scales):
    """Decoder-side means or scales off by ±1e-5 (relative): the exact image, or BitstreamError —
    never a wrong pixel."""
    source, data = lossless_file
    _perturb(monkeypatch, centres, scales)
    try:
        decoded = model.decompress(data)
    except BitstreamError as exc:
        assert "fails its check" in str(exc)
        return
    assert torch.equal(eight_bit(decoded), eight_bit(source))


def test_a_damaged_pixel_check_is_refused(model, lossless_file):
    _, data = lossless_file
    header, strings = lvae.bitstream.unpack(data)
    at = len(data) - len(strings[-1]) - 16  # the pixel check sits just before the pixels' string
    damaged = bytearray(data)
    damaged[at] ^= 0x01
    with pytest.raises(BitstreamError, match="fails its check"):
        model.decompress(bytes(damaged))


def _png_rgb16(h: int, w: int) -> bytes:
    """A 16-bit RGB PNG, written by hand (Pillow writes none)."""
    import struct
    import zlib

    rows = b"".join(b"\x00" + bytes((7 * (x + y)) % 256 for x in range(6 * w)) for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_sources_a_lossless_file_cannot_hold_are_refused(model, tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "deep_rgb.png").write_bytes(_png_rgb16(20, 30))  # Pillow opens it as 8-bit "RGB"
    for name, why in (("alpha.png", "transparency"), ("deep.png", "more than 8 bits"),
                      ("deep_rgb.png", "more than 8 bits")):
        with pytest.raises(ValueError, match=why):
            model.compress_file(tmp_path / name, tmp_path / f"{name}.lvae")
        assert not (tmp_path / f"{name}.lvae").exists()


# -- across processes: other thread count, oneDNN off, oneDNN held to AVX2 -------------------------
def _worker(*args, env=None) -> str:
    proc = subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Two Kodak images of tests/data and two odd-size crops of others, coded at 2 threads."""
    folder = tmp_path_factory.mktemp("sources")
    images = sorted((DATA / "kodak3").glob("*.png"))[:2]
    for i, path in enumerate(sorted((DATA / "kodak24").glob("*.webp"))[:2]):
        crop = Image.open(path).convert("RGB").crop((11 * i, 7 * i, 11 * i + 97 + 20 * i, 7 * i + 131 - 10 * i))
        crop.save(folder / f"crop{i}.png")
        images.append(folder / f"crop{i}.png")
    out = tmp_path_factory.mktemp(NAME)
    _worker("encode", "--model", NAME, "--out", out, "--lmbs", "1", "--threads", 2, *images)
    return out


@pytest.mark.parametrize("setting, args, env", [
    ("1 thread", ["--threads", "1"], {}),
    ("mkldnn off", ["--no-mkldnn"], {}),
    ("AVX2", [], {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
])
def test_no_pixel_differs_under_other_arithmetic(encoded, setting, args, env):
    summary = json.loads(_worker("decode", "--model", NAME, "--dir", encoded, *args, env=env))
    print(f"\n{NAME} / {setting}: {json.dumps(summary)}")
    assert summary["files"] == 4
    assert summary["corrupted"] == []
