"""qarv_base is the published model: layout and computations match the authors' reference."""
import numpy as np
import pytest
import torch

import lvae

from conftest import LAMBDAS


def test_state_dict_layout_matches_published(reference):
    model = lvae.get_model("qarv_base")
    sd = model.state_dict()
    ref_keys = reference["keys"]["keys"]
    assert [k for k, _ in ref_keys] == list(sd.keys())
    for key, shape in ref_keys:
        assert list(sd[key].shape) == shape, key
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == reference["keys"]["num_params"] == 93_433_400


@pytest.mark.parametrize("lmb", LAMBDAS)
def test_eval_forward_matches_reference(qarv_fixed, reference, lmb):
    npz = reference["npz"]
    with torch.no_grad():
        out = qarv_fixed(reference["input"], lmb=lmb)
    x_hat = out["x_hat"].numpy()
    assert x_hat.shape == npz[f"lmb{lmb}_x_hat"].shape
    np.testing.assert_allclose(x_hat, npz[f"lmb{lmb}_x_hat"], rtol=0, atol=1e-4)
    kl = out["kl"][0].double().numpy()
    ref_kl = npz[f"lmb{lmb}_kl"]
    assert kl.shape == (9,)
    np.testing.assert_allclose(kl, ref_kl, rtol=1e-4, atol=0)

    stats = reference["json"]["lambdas"][f"lmb{lmb}"]
    assert out["loss"].item() == pytest.approx(stats["loss"], rel=1e-5)
    assert out["bpp"].item() == pytest.approx(stats["bppix"], rel=1e-5)
    assert out["mse"].item() == pytest.approx(stats["mse"], rel=1e-5)
    assert out["psnr"].item() == pytest.approx(stats["psnr"], rel=1e-5)


def test_lambda_embedding_changes_output(qarv_fixed, reference):
    with torch.no_grad():
        a = qarv_fixed(reference["input"], lmb=16)["x_hat"]
        b = qarv_fixed(reference["input"], lmb=2048)["x_hat"]
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("lmb", LAMBDAS)
def test_latent_strings_match_reference(qarv_fixed, reference, lmb):
    """The nine range-coded strings are the authors' bytes; decoding them gives their image."""
    bits = reference["npz"][f"lmb{lmb}_bits"].tobytes()
    n = bits[10]
    lengths = np.frombuffer(bits[11 : 11 + 4 * n], "<u4")
    pos, ref_strings = 11 + 4 * n, []
    for length in lengths:
        ref_strings.append(bits[pos : pos + int(length)])
        pos += int(length)
    strings, grid = qarv_fixed.compress_latents(reference["input"], lmb)
    assert grid == (2, 3)
    assert len(strings) == 9
    for ours, theirs in zip(strings, ref_strings):
        assert ours == [theirs]
    x_hat = qarv_fixed.decompress_latents(strings, lmb, grid)
    decoded = qarv_fixed.postprocess(x_hat).numpy()
    np.testing.assert_allclose(decoded, reference["npz"][f"lmb{lmb}_decoded"], rtol=0, atol=1e-5)
