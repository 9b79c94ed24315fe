"""Real compression: containers, the authors' layout, round trips, targets, files."""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae import bitstream
from lvae.errors import BitstreamError, ImageReadError
from lvae.io import load_image, save_image

from conftest import DATA, LAMBDAS


@pytest.fixture(scope="module")
def trained_tiny():
    """qarv_tiny trained briefly (tests/tools/make_tiny_checkpoint.py): its rate follows λ, a little."""
    return lvae.get_model("qarv_tiny", pretrained=str(DATA / "qarv_tiny_trained.pt")).eval().compress_mode(True)


# -- conformance with the authors' bitstreams ---------------------------------------------------
@pytest.mark.parametrize("lmb", LAMBDAS)
def test_legacy_writer_reproduces_reference_bits(qarv_fixed, reference, lmb):
    """Our authors'-layout writer gives `bits` exactly (the body after the 4-byte H, W)."""
    data = qarv_fixed.compress(reference["input"], lmb=lmb, format="legacy")
    assert data[4:] == reference["npz"][f"lmb{lmb}_bits"].tobytes()
    assert struct.unpack("<HH", data[:4]) == (128, 192)


@pytest.mark.parametrize("lmb", LAMBDAS)
def test_legacy_files_decode_to_reference(qarv_fixed, reference, lmb):
    data = (DATA / f"legacy_lmb{lmb}.bits").read_bytes()
    header = bitstream.read_header(data)
    assert (header.format, header.height, header.width, header.lmb) == ("legacy", 100, 150, lmb)
    decoded = qarv_fixed.decompress(data)
    np.testing.assert_allclose(decoded.numpy(), reference["npz"][f"lmb{lmb}_legacy_decoded"], rtol=0, atol=1e-5)
    # and we write the same file from the same image
    assert qarv_fixed.compress(reference["odd"], lmb=lmb, format="legacy") == data


@pytest.mark.parametrize("hw", [(1, 1), (37, 101), (100, 150)])
def test_qarv_base_round_trip_odd_size_is_exact(qarv_fixed, reference, hw):
    im = reference["odd"][:, :, : hw[0], : hw[1]].contiguous()
    data = qarv_fixed.compress(im, lmb=128)
    out = qarv_fixed.decompress(data)
    assert out.shape == im.shape
    assert torch.equal(out, qarv_fixed._reconstruct_padded(im, 128))


# -- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(1, 1), (37, 101), (100, 150), (64, 64), (65, 3)])
def test_tiny_round_trip_equals_eval_reconstruction(trained_tiny, hw):
    torch.manual_seed(hw[0])
    im = torch.rand(1, 3, *hw)
    data = trained_tiny.compress(im, lmb=300)
    out = trained_tiny.decompress(data)
    assert out.shape == im.shape
    assert torch.equal(out, trained_tiny._reconstruct_padded(im, 300))
    h = bitstream.read_header(data)
    assert (h.format, h.model_name, h.height, h.width, h.lmb) == ("lvae", "qarv_tiny", *hw, 300.0)


def test_container_layout_is_as_documented(trained_tiny):
    """Version 2, byte by byte as docs/bitstream.md describes it."""
    im = torch.rand(1, 3, 70, 200)
    data = trained_tiny.compress(im, lmb=100.5)
    assert data[:4] == b"LVAE" and data[4] == 2 and data[5] == 0x03 and data[6] == 0 and data[7] == len("qarv_tiny")
    assert data[8:17] == b"qarv_tiny"
    assert data[17:25] == lvae.codec.weights_fingerprint(trained_tiny)
    (lmb,) = struct.unpack_from("<f", data, 25)
    assert lmb == 100.5
    assert data[29] == 70 and data[30:32] == bytes([200 - 128 + 0x80, 1])  # LEB128 varints
    assert data[32:34] == bytes([4, 4])  # 4 strings of the model's 4
    pos, lengths = 34, []
    for _ in range(4):
        value, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        lengths.append(value)
    assert struct.unpack_from("<I", data, pos)[0] == zlib.crc32(data[:pos])
    pos += 4
    header, strings = bitstream.unpack(data)
    for length, string, check in zip(lengths, strings, header.checks):
        assert struct.unpack_from("<I", data, pos)[0] == check
        assert data[pos + 4 : pos + 4 + length] == string
        pos += 4 + length
    assert pos == len(data)


def test_version_1_layout_still_decodes(trained_tiny):
    """Files of container version 1 (no checks) decode as before, verified by their rANS end state."""
    im = torch.rand(1, 3, 70, 90)
    strings, _ = trained_tiny.compress_latents(lvae.codec.pad_image(im, 64), 100.5)
    data = bitstream.pack("qarv_tiny", 100.5, 70, 90, [s[0] for s in strings], version=1)
    assert data[:4] == b"LVAE" and data[4] == 1 and data[5] == len("qarv_tiny")
    assert data[6:15] == b"qarv_tiny"
    lmb, h, w, n = struct.unpack_from("<fIIB", data, 15)
    assert (lmb, h, w, n) == (100.5, 70, 90, 4)
    lengths = struct.unpack_from("<4I", data, 28)
    assert 28 + 16 + sum(lengths) + 4 == len(data)
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    assert torch.equal(trained_tiny.decompress(data), trained_tiny.decompress(trained_tiny.compress(im, lmb=100.5)))


def test_default_lambda_is_mid_range(trained_tiny):
    data = trained_tiny.compress(torch.rand(1, 3, 64, 64))
    assert bitstream.read_header(data).lmb == pytest.approx(trained_tiny.default_lmb, rel=1e-6)


def test_rate_grows_with_lambda(trained_tiny):
    im = load_image(DATA / "kodak3" / "kodim01.png")
    sizes = [len(trained_tiny.compress(im, lmb=lmb)) for lmb in (16, 128, 2048)]
    assert sizes[0] < sizes[1] < sizes[2]


# -- rate targets -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo():
    return load_image(DATA / "kodak3" / "kodim01.png")  # 256×171


# The searches' answers (target_bytes, target_bpp, target_psnr) are checked against the exact
# optimum and against an exhaustive sweep in tests/test_rate_targets.py (qarv_small, whose rate
# span exceeds every tolerance there; this tiny model's PSNR spans only 0.03 dB).


def test_conflicting_or_bad_targets(trained_tiny, photo):
    with pytest.raises(ValueError, match="at most one"):
        trained_tiny.compress(photo, lmb=100, target_bpp=1.0)
    for kw in ({"target_bpp": -1.0}, {"target_bytes": 0}, {"target_bytes": 1.5}, {"target_psnr": float("nan")}):
        with pytest.raises(ValueError):
            trained_tiny.compress(photo, **kw)
    with pytest.raises(ValueError, match="outside this model's range"):
        trained_tiny.compress(photo, lmb=4096)
    with pytest.raises(ValueError, match="unknown format"):
        trained_tiny.compress(photo, format="jpeg")


@pytest.mark.parametrize("bad", [torch.rand(3, 8, 8), torch.rand(2, 3, 8, 8), torch.rand(1, 3, 8, 8) * 2,
                                 torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.rand(1, 3, 0, 8)])
def test_bad_input_images(trained_tiny, bad):
    with pytest.raises(ValueError):
        trained_tiny.compress(bad)


# -- errors on bad files ------------------------------------------------------------------------
def test_file_of_another_model_is_refused(trained_tiny, qarv_fixed):
    data = trained_tiny.compress(torch.rand(1, 3, 8, 8), lmb=50)
    with pytest.raises(BitstreamError, match="made by model 'qarv_tiny'"):
        qarv_fixed.decompress(data)


@pytest.mark.parametrize("data", [b"", b"LVAE", b"\x89PNG\r\n\x1a\n" + bytes(40), bytes(100), b"LVAE" + bytes(30)])
def test_foreign_files_are_bitstream_errors(trained_tiny, data):
    with pytest.raises(BitstreamError):
        trained_tiny.decompress(data)


def test_huge_claimed_size_is_refused(trained_tiny):
    h, strings = bitstream.unpack(trained_tiny.compress(torch.rand(1, 3, 8, 8), lmb=50))
    forged = bitstream.pack("qarv_tiny", 50.0, 100_000, 100_000, strings)
    with pytest.raises(BitstreamError, match="max_pixels"):
        trained_tiny.decompress(forged)


# -- files ----------------------------------------------------------------------------------------
def test_compress_file_and_decompress_file(trained_tiny, tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8)).save(src)
    out = tmp_path / "a.lvae"
    res = trained_tiny.compress_file(src, out, lmb=200)
    assert res.path == out and res.num_bytes == out.stat().st_size
    assert res.bpp == pytest.approx(8 * res.num_bytes / (37 * 53))
    img = trained_tiny.decompress_file(out)
    assert img.shape == (1, 3, 37, 53)
    save_image(img, tmp_path / "a.dec.png")
    assert Image.open(tmp_path / "a.dec.png").size == (53, 37)
    # the reported PSNR is that of the 8-bit image a user saves, measured here from the two PNGs
    saved = np.asarray(Image.open(tmp_path / "a.dec.png"), dtype=np.float64)
    source = np.asarray(Image.open(src), dtype=np.float64)
    assert res.psnr == pytest.approx(10 * np.log10(255**2 / ((saved - source) ** 2).mean()), abs=1e-6)
    # the authors' layout holds qarv_base only (compress refuses it here); decoding reads its strings alike
    legacy = tmp_path / "a.bits"
    header, strings = bitstream.unpack(out.read_bytes())
    legacy.write_bytes(bitstream.pack_legacy(header.lmb, 37, 53, strings))
    assert torch.equal(trained_tiny.decompress_file(legacy), img)


def test_failed_compress_leaves_existing_output_untouched(trained_tiny, tmp_path):
    src = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(src)
    out = tmp_path / "a.lvae"
    out.write_bytes(b"precious")
    with pytest.raises(ValueError, match="impossible target"):
        trained_tiny.compress_file(src, out, target_bytes=3)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lvae", "a.png"]  # no temp files left
    with pytest.raises(ValueError, match="refusing to overwrite the input"):
        trained_tiny.compress_file(src, src)


# Image modes, formats and EXIF orientation: tests/test_image_loading.py (pixel by pixel).


def test_non_image_and_missing_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match="cannot read"):
        load_image(tmp_path / "x.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "none.png")


def test_impossible_budget_is_answered_in_the_units_asked(trained_tiny):
    im = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"needs [\d.]+ bpp \(\d+ bytes\), over the target of 0.0001 bpp \(0 bytes\)"):
        trained_tiny.compress(im, target_bpp=0.0001)
    with pytest.raises(ValueError, match=r"needs \d+ bytes, over the target of 5 bytes"):
        trained_tiny.compress(im, target_bytes=5)
