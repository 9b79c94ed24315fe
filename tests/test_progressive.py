"""Progressive decoding: every prefix of a file's latent strings decodes to a coarser image."""
import numpy as np
import pytest
import torch

import lvae
from lvae import bitstream
from lvae.errors import BitstreamError
from lvae.io import load_image
from lvae.metrics import psnr
from lvae.models.fixed_weights import load_fixed_reference_weights

from conftest import DATA, LAMBDAS


@pytest.fixture(scope="module")
def small():
    return lvae.get_model("qarv_small", pretrained=True).eval()


@pytest.fixture(scope="module")
def base():
    return load_fixed_reference_weights(lvae.get_model("qarv_base")).eval()


@pytest.mark.parametrize("name, hw", [("small", (100, 150)), ("small", (37, 101)), ("base", (37, 101))])
def test_prefix_decode_equals_truncated_file(request, name, hw):
    model = request.getfixturevalue(name)
    torch.manual_seed(hw[1])
    im = load_image(DATA / "conformance_odd.png")[:, :, : hw[0], : hw[1]]
    n = len(model.latent_blocks)
    for lmb in LAMBDAS:
        data = model.compress(im, lmb=lmb)
        full = model.decompress(data)
        sizes = []
        for k in range(n + 1):
            cut = bitstream.truncate(data, k)
            header = bitstream.read_header(cut)
            assert (header.num_strings, header.num_latents) == (k, n)
            a = model.decompress(data, num_latents=k)
            assert torch.equal(a, model.decompress(cut)), (name, hw, lmb, k)
            assert a.shape == im.shape
            sizes.append(len(cut))
        assert torch.equal(model.decompress(data, num_latents=n), full)
        assert sizes == sorted(sizes) and sizes[-1] == len(data)


def test_zero_latents_is_the_prior_prediction(small):
    """k = 0 decodes what the prior alone predicts: independent of the image."""
    a = small.decompress(bitstream.truncate(small.compress(torch.rand(1, 3, 64, 64), lmb=100), 0))
    b = small.decompress(bitstream.truncate(small.compress(torch.zeros(1, 3, 64, 64), lmb=100), 0))
    assert torch.equal(a, b)


def test_mean_psnr_on_kodak_grows_with_the_prefix(small):
    n = len(small.latent_blocks)
    totals = np.zeros(n + 1)
    images = sorted((DATA / "kodak24").glob("*.webp"))
    for path in images:
        im = load_image(path)
        data = small.compress(im, lmb=small.default_lmb)
        for k in range(n + 1):
            totals[k] += psnr(small.decompress(data, num_latents=k), im)
    means = totals / len(images)
    print("\nqarv_small, Kodak, λ default: mean PSNR per prefix", np.round(means, 2).tolist())
    assert all(np.diff(means) >= 0), means


def test_truncation_errors(small, base):
    data = small.compress(torch.rand(1, 3, 40, 40), lmb=100)
    n = len(small.latent_blocks)
    for bad in (-1, n + 1, 1.5, True):
        with pytest.raises(ValueError, match="num_latents"):
            bitstream.truncate(data, bad)
        with pytest.raises(ValueError, match="num_latents"):
            small.decompress(data, num_latents=bad)
    cut = bitstream.truncate(data, 3)
    with pytest.raises(ValueError, match="from 0 to 3"):
        small.decompress(cut, num_latents=4)
    with pytest.raises(BitstreamError, match="cannot be truncated"):
        bitstream.truncate((DATA / "legacy_lmb16.bits").read_bytes(), 3)
    # a version-1 file becomes a version-2 file without checks
    header, strings = bitstream.unpack(data)
    v1 = bitstream.pack(header.model_name, header.lmb, header.height, header.width, strings, version=1)
    assert torch.equal(small.decompress(bitstream.truncate(v1, 4)), small.decompress(data, num_latents=4))


def test_progressive_evaluation_script(tmp_path):
    import json

    from lvae.cli.evaluate import main

    out = tmp_path / "prog.json"
    rc = main(["--model", "qarv_small", "--dataset_name", str(DATA / "kodak3"), "--steps", "2", "--progressive",
               "--no_progress", "--output", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    bpp, psnr = report["prefixes"]["bpp"], report["prefixes"]["psnr"]
    assert report["num-latents"] == 7 and len(bpp) == 2 and all(len(row) == 8 for row in bpp + psnr)
    assert all(row == sorted(row) for row in bpp)  # a longer prefix is a larger file
    rows = [r for r in report["per-image"] if r["latents"] == 7]
    assert len(rows) == 2 * 3
    assert (tmp_path / "prog.png").stat().st_size > 0
