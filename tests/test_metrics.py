import math

import numpy as np
import pytest
import torch

from lvae.eval import anchors
from lvae.metrics import MS_SSIM_MIN_SIDE, bd_rate, ms_ssim, mse, psnr

# Published BD-rates of qarv_base against VTM 18.0 (QARV paper).
PUBLISHED_BD = {"kodak": -5.90, "tecnick-rgb-1200": -8.94, "clic2022-test": -6.91}


@pytest.mark.parametrize("test_set", sorted(PUBLISHED_BD))
def test_bd_rate_reproduces_published_numbers(test_set):
    vtm = anchors.load_anchor(test_set, "vtm18.0")["results"]
    qarv = anchors.load_anchor(test_set, "qarv_base")["results"]
    value = bd_rate(vtm["bpp"], vtm["psnr"], qarv["bpp"], qarv["psnr"])
    assert value == pytest.approx(PUBLISHED_BD[test_set], abs=0.01)


def test_bd_rate_of_a_scaled_curve_is_exact():
    vtm = anchors.load_anchor("kodak")["results"]
    rate = np.asarray(vtm["bpp"])
    assert bd_rate(rate, vtm["psnr"], rate, vtm["psnr"]) == pytest.approx(0.0, abs=1e-9)
    # A test curve using 10 % fewer bits at every PSNR is -10 %; the anchor then is +11.1 %.
    assert bd_rate(rate, vtm["psnr"], 0.9 * rate, vtm["psnr"]) == pytest.approx(-10.0, abs=1e-6)
    assert bd_rate(0.9 * rate, vtm["psnr"], rate, vtm["psnr"]) == pytest.approx(100 / 9, abs=1e-6)


def test_bd_rate_ignores_point_order_and_uses_only_the_shared_interval():
    a = anchors.load_anchor("kodak", "vtm18.0")["results"]
    t = anchors.load_anchor("kodak", "qarv_base")["results"]
    forward = bd_rate(a["bpp"], a["psnr"], t["bpp"], t["psnr"])
    assert bd_rate(a["bpp"][::-1], a["psnr"][::-1], t["bpp"][::-1], t["psnr"][::-1]) == pytest.approx(forward, abs=1e-9)
    # Exactly cubic log-rate curves: an anchor of twice the rate gives -50 %, although it
    # extends well beyond the test curve's PSNR interval on both sides.
    q = np.linspace(20, 50, 12)
    log_r = 0.002 * (q - 20) ** 3 - 0.05 * (q - 20) ** 2 + 0.3 * q - 8
    test_q = q[3:9]
    test_r = np.exp(0.002 * (test_q - 20) ** 3 - 0.05 * (test_q - 20) ** 2 + 0.3 * test_q - 8)
    assert bd_rate(2 * np.exp(log_r), q, test_r, test_q) == pytest.approx(-50.0, abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (([1, 2, 3], [30, 31, 32], [1, 2, 3, 4], [30, 31, 32, 33]), "at least 4"),
        (([1, 2, 3, 4], [30, 31, 32], [1, 2, 3, 4], [30, 31, 32, 33]), "same length"),
        (([1, 2, 3, 4], [30, 31, 32, 33], [1, 2, 3, 4], [40, 41, 42, 43]), "share no PSNR interval"),
        (([0, 2, 3, 4], [30, 31, 32, 33], [1, 2, 3, 4], [30, 31, 32, 33]), "positive"),
        (([1, 2, 3, 4], [30, 31, 32, math.nan], [1, 2, 3, 4], [30, 31, 32, 33]), "finite"),
        (([1, 2, 3, 4], [30, 30, 31, 31], [1, 2, 3, 4], [30, 31, 32, 33]), "distinct"),
    ],
)
def test_bd_rate_refuses_curves_it_cannot_compare(args, message):
    with pytest.raises(ValueError, match=message):
        bd_rate(*args)


def test_psnr_and_mse_known_values():
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 0.1)
    assert mse(a, b) == pytest.approx(0.01)
    assert psnr(a, b) == pytest.approx(20.0)
    b[0, 0, 0, 0] = 0.5  # one sample off by 0.5 among 192
    assert mse(a, b) == pytest.approx((191 * 0.01 + 0.25) / 192)
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="shape"):
        psnr(a, b[:, :, :4])


def test_ms_ssim():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, MS_SSIM_MIN_SIDE, 200, generator=g)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    slightly = (a + 0.02 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    very = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert 1.0 > ms_ssim(a, slightly) > ms_ssim(a, very) > 0.0
    with pytest.raises(ValueError, match=str(MS_SSIM_MIN_SIDE)):
        ms_ssim(a[:, :, :100], a[:, :, :100])


def test_shipped_anchors():
    assert set(anchors.list_anchors()) >= {
        ("kodak", "vtm18.0"),
        ("kodak", "qarv_base"),
        ("kodak", "qres34m"),
        ("tecnick-rgb-1200", "vtm18.0"),
        ("tecnick-rgb-1200", "qarv_base"),
        ("clic2022-test", "vtm18.0"),
        ("clic2022-test", "qarv_base"),
    }
    kodak = anchors.load_anchor("kodak", "qarv_base")
    assert kodak["name"] == "qarv_base" and kodak["test-set"] == "kodak"
    assert len(kodak["results"]["bpp"]) == len(kodak["results"]["psnr"]) == len(kodak["lambdas"]) == 16
    assert [c["name"] for c in anchors.anchors_for("kodak")] == ["qarv_base", "qres34m", "vtm18.0"]
    assert anchors.anchors_for("no-such-set") == []
    with pytest.raises(ValueError, match="no shipped anchor curve 'vtm18.0' for test set 'kodak3'"):
        anchors.load_anchor("kodak3")


def _cubic_log_rate(q):
    return 0.002 * (q - 20) ** 3 - 0.05 * (q - 20) ** 2 + 0.3 * q - 8


@pytest.mark.parametrize(
    "anchor_q, test_q",
    [
        ((20.0, 35.0), (25.0, 45.0)),  # overlapping: the shared interval is [25, 35]
        ((25.0, 45.0), (20.0, 35.0)),  # the same, the other way round
        ((25.0, 35.0), (20.0, 45.0)),  # the test curve extends beyond the anchor on both sides
        ((20.0, 45.0), (30.0, 40.0)),  # the anchor extends beyond the test curve
    ],
)
def test_bd_rate_integrates_over_the_shared_psnr_interval(anchor_q, test_q):
    """Curves with different PSNR ranges and a known answer.

    Both log-rates are exact cubics (so the fits are exact); the test curve's log-rate exceeds the
    anchor's by ``0.1·(q − 30)``, whose mean over the shared interval [lo, hi] is
    ``0.1·((lo + hi)/2 − 30)``: the BD-rate is ``exp(that) − 1``. Integrating over either curve's
    own range (or their union) gives another value in every case above.
    """
    qa = np.linspace(*anchor_q, 9)
    qt = np.linspace(*test_q, 7)
    ra = np.exp(_cubic_log_rate(qa))
    rt = np.exp(_cubic_log_rate(qt) + 0.1 * (qt - 30))
    lo, hi = max(anchor_q[0], test_q[0]), min(anchor_q[1], test_q[1])
    expected = (math.exp(0.1 * ((lo + hi) / 2 - 30)) - 1) * 100
    assert bd_rate(ra, qa, rt, qt) == pytest.approx(expected, abs=1e-6)
    # swapping the roles inverts the rate ratio over the same interval
    assert bd_rate(rt, qt, ra, qa) == pytest.approx((math.exp(-0.1 * ((lo + hi) / 2 - 30)) - 1) * 100, abs=1e-6)


def test_mse_of_two_nonzero_images_and_channel_check():
    a = torch.full((2, 3, 4, 4), 0.75)
    b = torch.full((2, 3, 4, 4), 0.5)
    assert mse(a, b) == pytest.approx(0.0625) and psnr(a, b) == pytest.approx(-10 * math.log10(0.0625))
    for bad in ((1, 1, 4, 4), (1, 4, 4, 4), (3, 4, 4)):
        with pytest.raises(ValueError, match=r"expected N×3×H×W images, got \(" + ", ".join(map(str, bad)) + r"\)"):
            mse(torch.zeros(bad), torch.zeros(bad))
    with pytest.raises(ValueError, match=r"images differ in shape: \(2, 3, 4, 4\) vs \(2, 3, 4, 5\)"):
        mse(a, torch.zeros(2, 3, 4, 5))


def test_ms_ssim_is_the_five_scale_index_on_the_unit_range():
    from pytorch_msssim import ms_ssim as reference

    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, MS_SSIM_MIN_SIDE, 170, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    expected = float(reference(a, b, data_range=1.0, size_average=True))
    assert ms_ssim(a, b) == pytest.approx(expected, abs=1e-6)  # a batch of two: their mean
    assert ms_ssim(a, b) != pytest.approx(float(reference(a, b, data_range=255.0, size_average=True)), abs=1e-3)
    assert ms_ssim(a.double(), b.double()) == pytest.approx(expected, abs=1e-6)


def test_bd_rate_computes_in_float64_whatever_the_input():
    vtm = anchors.load_anchor("kodak", "vtm18.0")["results"]
    qarv = anchors.load_anchor("kodak", "qarv_base")["results"]
    exact = bd_rate(vtm["bpp"], vtm["psnr"], qarv["bpp"], qarv["psnr"])
    as32 = [np.asarray(v, dtype=np.float32) for v in (vtm["bpp"], vtm["psnr"], qarv["bpp"], qarv["psnr"])]
    as64 = [v.astype(np.float64) for v in as32]  # the same float32 values, computed in float64
    assert bd_rate(*as32) == bd_rate(*as64)
    assert bd_rate(*as64) == pytest.approx(exact, abs=1e-4)
    ints = bd_rate([1, 2, 4, 8], [30, 33, 35, 36], [1, 2, 4, 8], [31, 33, 35, 37])
    assert ints == bd_rate(
        [1.0, 2.0, 4.0, 8.0], [30.0, 33.0, 35.0, 36.0], [1.0, 2.0, 4.0, 8.0], [31.0, 33.0, 35.0, 37.0]
    )


@pytest.mark.parametrize("which", ["anchor", "test"])
def test_bd_rate_errors_name_the_curve(which):
    good = ([1, 2, 3, 4], [30, 31, 32, 33])
    bad = ([1, 2, 3], [30, 31, 32])
    args = (*bad, *good) if which == "anchor" else (*good, *bad)
    with pytest.raises(ValueError, match=f"^{which}: a cubic fit needs at least 4 rate–PSNR points, got 3$"):
        bd_rate(*args)


def test_bd_rate_curves_touching_at_one_psnr_share_no_interval():
    with pytest.raises(ValueError, match=r"^the two curves share no PSNR interval \(anchor 30\.00–33\.00 dB, "
                                         r"test 33\.00–36\.50 dB\)$"):
        bd_rate([1, 2, 3, 4], [30, 31, 32, 33], [1, 2, 3, 4], [33, 34, 35, 36.5])
