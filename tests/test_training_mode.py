"""Training mode against the QARV authors' implementation (tests/data/training_mode.*, copied from
the shared reference; see its README, section "Training mode").

* The per-element training rate, ``gaussian_bin_nll``, on their 4,096 (z, μ, σ) points.
* A whole ``train()``-mode forward pass of ``qarv_base`` with the fixed weights: their noise
  draws (``torch.manual_seed(2024)``, one ``uniform_(-0.5, 0.5)`` per latent block) give their
  per-latent rates, reconstruction and loss.

What we compute, and where it differs from theirs: the mass of the unit bin around ``z`` is
``Φ((½ − |z − μ|)/σ) − Φ((−½ − |z − μ|)/σ)``: both CDFs are taken on the lower side of the
mean, where float32 keeps its relative precision. Their code takes the difference of two CDFs
near 1 on the upper side, which cancels: where the mass lies between about 1e-6 and 1e-2
(their nll 5 – 14.5 nats), their float32 value is off by up to about 2**-24 in absolute mass,
up to 0.05 nats in the nll. There we check that the two masses differ by no more than 2**-23
(the rounding of one CDF near 1) and that ours agrees with a float64 computation; everywhere
else the two nll agree within 1e-4 nats.
"""
import json
import math

import numpy as np
import pytest
import torch

from lvae.coding.gaussian import gaussian_bin_nll

from conftest import DATA

CANCELLATION_NLL = (5.0, 14.5)  # their nll where their float32 mass cancels (README)


@pytest.fixture(scope="module")
def training_reference():
    return np.load(DATA / "training_mode.npz"), json.loads((DATA / "training_mode.json").read_text())


def _float64_bin_nll(z, m, s):
    v = np.abs(z.astype(np.float64) - m.astype(np.float64))
    s = s.astype(np.float64)
    phi = np.vectorize(lambda x: 0.5 * math.erfc(-x / math.sqrt(2)))
    p = phi((0.5 - v) / s) - phi((-0.5 - v) / s)
    log_density = -0.5 * (v / s) ** 2 - np.log(s) - 0.5 * math.log(2 * math.pi)
    return -np.where(p > 1e-6, np.log(np.maximum(p, 1e-8)), log_density), p


def test_bin_nll_matches_the_authors(training_reference):
    npz, meta = training_reference
    z, m, s, ref = (npz[k] for k in ("bin_z", "bin_mean", "bin_scale", "bin_nll"))
    assert z.shape == (meta["bin_nll_summary"]["n"],) == (4096,)
    ours = gaussian_bin_nll(torch.from_numpy(z), torch.from_numpy(m), torch.from_numpy(s)).numpy()
    assert ours.dtype == np.float32 and np.isfinite(ours).all()

    cancel = (ref >= CANCELLATION_NLL[0]) & (ref <= CANCELLATION_NLL[1])
    assert 500 < cancel.sum() < 1500  # the region is populated, and not everything
    np.testing.assert_allclose(ours[~cancel], ref[~cancel], rtol=0, atol=1e-4)

    # Where theirs cancels: the masses differ by at most the rounding of a CDF near 1 ...
    mass_gap = np.abs(np.exp(-ours[cancel].astype(np.float64)) - np.exp(-ref[cancel].astype(np.float64)))
    assert mass_gap.max() <= 2.0**-23
    assert np.abs(ours[cancel] - ref[cancel]).max() <= 0.06
    # ... and ours is the accurate one.
    exact, _ = _float64_bin_nll(z, m, s)
    np.testing.assert_allclose(ours, exact, rtol=2e-6, atol=2e-5)


def test_bin_nll_switches_to_the_density_in_the_far_tail():
    """Below a mass of 1e-6 the log-density at z is used (bin width 1): finite, with gradients."""
    z = torch.tensor([0.0, 3.0, 40.0, 400.0], requires_grad=True)
    m, s = torch.zeros(4), torch.ones(4)
    nll = gaussian_bin_nll(z, m, s)
    exact, p = _float64_bin_nll(z.detach().numpy(), m.numpy(), s.numpy())
    assert p[0] > 1e-6 and p[1] > 1e-6 and p[2] < 1e-6
    np.testing.assert_allclose(nll.detach().numpy(), exact, rtol=1e-5)
    assert nll[3].item() == pytest.approx(0.5 * 400.0**2 + 0.5 * math.log(2 * math.pi), rel=1e-6)
    nll.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad[3] == pytest.approx(400.0, rel=1e-5)


def test_train_mode_forward_matches_the_authors(qarv_fixed, reference, training_reference):
    """qarv_base, fixed weights, train() mode: the same noise gives the authors' numbers (~10 s)."""
    npz, meta = training_reference
    x = reference["input"].repeat(2, 1, 1, 1)
    lmb = torch.tensor(meta["lambdas"], dtype=torch.float32)
    assert torch.equal(lmb, torch.from_numpy(npz["forward_lmb"]))
    qarv_fixed.train()
    try:
        torch.manual_seed(meta["seed_before_forward"])
        with torch.no_grad():
            out = qarv_fixed(x, lmb=lmb)
    finally:
        qarv_fixed.eval()
    kl = out["kl"].double().numpy()
    assert kl.shape == (2, 9)
    np.testing.assert_allclose(kl, npz["forward_kl"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(kl, meta["kl_per_latent_nats"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(out["x_hat"].numpy(), npz["forward_x_hat"], rtol=0, atol=1e-4)
    for key, ref_key in (("loss", "loss"), ("bpp", "bpp"), ("mse", "mse"), ("psnr", "psnr")):
        assert out[key].item() == pytest.approx(meta[ref_key], rel=1e-5), key
    # train mode is not eval mode: the noise changes the rates (the fixtures would not tell apart)
    with torch.no_grad():
        eval_kl = qarv_fixed(x, lmb=lmb)["kl"].double().numpy()
    assert np.abs(eval_kl / kl - 1).max() > 1e-3
