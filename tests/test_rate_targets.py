"""Rate targets (``target_bytes``, ``target_bpp``, ``target_psnr``): the λ searches of
lvae/coding/codec.py.

Two kinds of check:

* a fake codec whose file size and PSNR are known functions of λ: the searches' answers are
  checked against the exact optimum, to the precision the bisection promises (12 halvings of
  ln λ over [16, 2048]: within a factor exp(ln(128)/2**12) ≈ 1.0012). Fast; also the mutation
  run's subset for the searches.
* the packaged ``qarv_small`` on a 256×192 crop of kodim20, whose rate spans 2.4× and PSNR
  2.2 dB between λ = 16 and 2048 (far more than any tolerance here): the searches' answers are
  compared with the best answer of an exhaustive sweep over 25 λ.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import lvae
from lvae import bitstream
from lvae.codec import SEARCH_STEPS, CompressionMixin
from lvae.coding.latent import CodedLatent
from lvae.io import load_image
from lvae.metrics import psnr

from conftest import DATA

LO, HI = 16.0, 2048.0
PRECISION = math.log(HI / LO) / 2**SEARCH_STEPS + 1e-6  # ln-λ bracket left after the search


class FakeCodec(CompressionMixin, nn.Module):
    """One latent string of ``size(λ)`` bytes; decoding gives the image brightened by
    ``shift(λ)``/255 (whole 8-bit steps, so the PSNR is the same with or without rounding the
    decoded image to 8 bits). Both are monotone in λ, so the optimum of each search is known."""

    max_stride = 64
    name = "fake"
    lmb_range = (LO, HI)
    default_lmb = math.sqrt(LO * HI)

    def __init__(self, size, shift, lmb_range=(LO, HI)):
        super().__init__()
        self.size, self.shift = size, shift
        self.lmb_range = lmb_range
        self.w = nn.Parameter(torch.zeros(1))
        self.latent_blocks = [None]
        self.calls = {"encode": 0, "reconstruct": 0}

    def lmb_tensor(self, lmb, n):
        return torch.as_tensor(lmb, dtype=torch.float32).reshape(-1).expand(n)

    def _shifted(self, im, lmb):
        return im + self.shift(float(lmb)) / 255

    def encode_latents(self, x, lmb):
        self.calls["encode"] += 1
        self._source = x
        return [[CodedLatent(bytes(int(self.size(float(lmb)))), 0)]], (x.shape[2] // 64, x.shape[3] // 64)

    def decompress_latents(self, coded, lmb, grid):
        return self._shifted(self._source, lmb)

    def reconstruct(self, im, lmb):
        self.calls["reconstruct"] += 1
        return self._shifted(im, lmb)

    @staticmethod
    def postprocess(x):
        return x


def size_of(lmb):  # bytes of the latent string: 250 at λ = 16, 5102 at λ = 2048
    return 250 + math.floor(1000 * math.log(lmb / LO))


def shift_of(lmb):  # 8-bit steps the decoded image is off by: 40 at λ = 16, 16 at λ = 2048
    return 40 - math.floor(5 * math.log(lmb / LO))


def quality_of(lmb):  # dB: 16.09 at λ = 16, 24.05 at λ = 2048, in 25 steps
    return 20 * math.log10(255 / shift_of(lmb))


@pytest.fixture()
def fake():
    return FakeCodec(size_of, shift_of)


IM = torch.full((1, 3, 70, 100), 64 / 255)
OVERHEAD = len(bitstream.pack("fake", 100.0, 70, 100, [bytes(1000)], checks=[0], fingerprint=bytes(8))) - 1000


def file_bytes(lmb):
    return OVERHEAD + size_of(lmb)


@pytest.mark.parametrize("budget", [OVERHEAD + 250, OVERHEAD + 251, OVERHEAD + 1234, OVERHEAD + 3000, OVERHEAD + 5101])
def test_budget_search_finds_the_largest_lambda_that_fits(fake, budget):
    data, res = fake.compress_with_result(IM, target_bytes=budget)
    assert len(data) == res.num_bytes == file_bytes(res.lmb) <= budget
    assert bitstream.read_header(data).lmb == pytest.approx(res.lmb, rel=1e-7)
    # optimal to the bisection's precision: a λ larger by that factor would not fit
    assert file_bytes(res.lmb * math.exp(PRECISION)) > budget or res.lmb == HI
    assert res.encodes == fake.calls["encode"] == SEARCH_STEPS + 2
    assert res.psnr == pytest.approx(quality_of(res.lmb), abs=1e-4)
    assert res.bpp == pytest.approx(8 * len(data) / (70 * 100))


def test_budget_that_fits_the_highest_rate_takes_it_in_two_encodes(fake):
    for budget in (file_bytes(HI), file_bytes(HI) + 1, 10**9):
        data, res = fake.compress_with_result(IM, target_bytes=budget, compute_psnr=False)
        assert (res.lmb, res.encodes, len(data)) == (HI, 2, file_bytes(HI))
        assert math.isnan(res.psnr)


def test_budget_below_the_lowest_rate_is_impossible(fake):
    with pytest.raises(ValueError,
                       match=rf"impossible target: even the lowest rate \(λ=16\) needs {file_bytes(LO)} bytes, "
                             rf"over the target of {file_bytes(LO) - 1} bytes"):
        fake.compress(IM, target_bytes=file_bytes(LO) - 1)
    assert fake.calls["encode"] == 1
    res = fake.compress_with_result(IM, target_bytes=file_bytes(LO), compute_psnr=False)[1]
    assert res.lmb * math.exp(-PRECISION) <= LO * 1.0000001 and file_bytes(res.lmb) == file_bytes(LO)


@pytest.mark.parametrize("bpp", [0.6, 2.0, 5.77])
def test_bpp_target_is_the_byte_budget_rounded_down(fake, bpp):
    budget = math.floor(bpp * 70 * 100 / 8)
    data, res = fake.compress_with_result(IM, target_bpp=bpp, compute_psnr=False)
    assert len(data) <= budget and res.bpp <= bpp
    assert file_bytes(res.lmb * math.exp(PRECISION)) > budget
    assert fake.compress(IM, target_bytes=budget) == data


@pytest.mark.parametrize("target", [16.0, quality_of(LO), 17.0, 20.0, quality_of(300.0), 23.5, quality_of(HI)])
def test_psnr_search_finds_the_smallest_lambda_that_reaches_it(fake, target):
    data, res = fake.compress_with_result(IM, target_psnr=target)
    assert res.psnr >= target - 1e-6 and quality_of(res.lmb) >= target - 1e-9
    assert res.lmb == LO or quality_of(res.lmb * math.exp(-PRECISION)) < target
    assert res.encodes == 1 and bitstream.read_header(data).lmb == pytest.approx(res.lmb, rel=1e-7)
    assert fake.calls["reconstruct"] <= SEARCH_STEPS + 2
    if target > quality_of(LO):
        assert fake.calls["reconstruct"] == SEARCH_STEPS + 2


def measured(lmb):
    """The PSNR the fake's file at ``lmb`` really delivers (as compress_with_result measures it)."""
    return FakeCodec(size_of, shift_of).compress_with_result(IM, lmb=lmb)[1].psnr


@pytest.mark.parametrize("lmb", [LO, 300.0, 1000.0, HI])
def test_psnr_target_equal_to_a_reachable_quality(fake, lmb):
    """A target equal to a PSNR some λ delivers is reached, at the first λ of its plateau."""
    target = measured(lmb)
    res = fake.compress_with_result(IM, target_psnr=target)[1]
    assert res.psnr == target and shift_of(res.lmb) == shift_of(lmb)
    if shift_of(lmb) == shift_of(LO):
        assert res.lmb == LO  # reached at the lowest rate: nothing smaller to search for
    else:
        assert shift_of(res.lmb * math.exp(-PRECISION)) > shift_of(lmb)


def test_psnr_target_at_or_below_the_lowest_rate_takes_it(fake):
    for target in (10.0, quality_of(LO) - 1e-9):
        res = fake.compress_with_result(IM, target_psnr=target, compute_psnr=False)[1]
        assert res.lmb == LO
    assert fake.calls["reconstruct"] == 4  # the two ends, twice


def test_psnr_target_above_the_highest_quality_is_impossible(fake):
    with pytest.raises(ValueError, match=r"impossible target: the highest quality of this model \(λ=2048\) gives "
                                         r"24\.05 dB, below 24\.1 dB"):
        fake.compress(IM, target_psnr=24.1)
    assert fake.calls == {"encode": 0, "reconstruct": 1}


@pytest.mark.parametrize("kwargs, words", [
    ({"target_bpp": 0.0}, "target_bpp must be a positive number"),
    ({"target_bpp": math.inf}, "target_bpp must be a positive number"),
    ({"target_bytes": -5}, "target_bytes must be a positive integer"),
    ({"target_bytes": True}, "target_bytes must be a positive integer"),
    ({"target_psnr": math.inf}, "target_psnr must be a finite number"),
    ({"lmb": 100.0, "target_psnr": 30.0},
     "at most one of lmb, target_bpp, target_bytes, target_psnr \\(got lmb, target_psnr\\)"),
    ({"target_bpp": 1.0, "target_bytes": 9}, "\\(got target_bpp, target_bytes\\)"),
])
def test_bad_targets_are_refused_before_encoding(fake, kwargs, words):
    with pytest.raises(ValueError, match=words):
        fake.compress(IM, **kwargs)
    assert fake.calls == {"encode": 0, "reconstruct": 0}


@pytest.mark.parametrize("target", ["bytes", "psnr"])
def test_searches_stop_once_the_bracket_is_narrow(target):
    """Over a narrow λ range the bisection stops when the ln-λ bracket is under 1e-3, before its
    12 steps: ln(110/100) = 0.095 takes 7 halvings."""
    lo, hi = 100.0, 110.0
    fake = FakeCodec(lambda lmb: 250 + math.floor(100000 * math.log(lmb / lo)),
                     lambda lmb: 40 - math.floor(300 * math.log(lmb / lo)),
                     lmb_range=(lo, hi))
    steps = math.ceil(math.log2(math.log(hi / lo) / 1e-3))
    assert steps == 7 < SEARCH_STEPS
    if target == "bytes":
        budget = OVERHEAD + 250 + 5000
        data, res = fake.compress_with_result(IM, target_bytes=budget, compute_psnr=False)
        assert len(data) <= budget and res.encodes == 2 + steps
        assert OVERHEAD + 250 + math.floor(100000 * math.log(res.lmb * math.exp(1e-3) / lo)) > budget
    else:
        goal = 20 * math.log10(255 / 20)  # shift 20: reached from ln(λ/100) = 20/300
        res = fake.compress_with_result(IM, target_psnr=goal, compute_psnr=False)[1]
        assert fake.calls["reconstruct"] == 2 + steps
        assert math.log(res.lmb / lo) >= 20 / 300 - 1e-9 and math.log(res.lmb / lo) < 20 / 300 + 1e-3


def test_plain_lambda_is_rounded_to_float32_and_clamped(fake):
    data, res = fake.compress_with_result(IM, lmb=100.1)
    assert res.lmb == float(np.float32(100.1)) and res.encodes == 1
    assert fake.compress_with_result(IM, lmb=2048.0000001)[1].lmb == HI  # float32 rounding stays in range
    assert fake.compress_with_result(IM)[1].lmb == float(np.float32(fake.default_lmb))


# -- the real model --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return lvae.get_model("qarv_small", pretrained=True).eval()


@pytest.fixture(scope="module")
def crop():
    return load_image(DATA / "kodim20.png")[:, :, 160:352, 256:512].contiguous()  # 192 × 256


@pytest.fixture(scope="module")
def sweep(small, crop):
    """File size and PSNR at 25 λ, log-spaced over the model's range (an exhaustive search's grid)."""
    grid = [small._lmb_value(v) for v in np.exp(np.linspace(math.log(LO), math.log(HI), 25))]
    sizes = [len(small.compress(crop, lmb=v)) for v in grid]
    qualities = [psnr(small._reconstruct_padded(crop, v), crop) for v in grid]
    assert sizes[-1] > 2 * sizes[0] and qualities[-1] > qualities[0] + 2  # a span no tolerance hides
    return grid, sizes, qualities


@pytest.mark.parametrize("where", [0.25, 0.5, 0.75])
def test_qarv_small_byte_target_is_at_least_the_sweeps_best(small, crop, sweep, where):
    grid, sizes, _ = sweep
    budget = int(sizes[0] + where * (sizes[-1] - sizes[0]))
    best = max(s for s in sizes if s <= budget)  # the exhaustive search's answer
    data, res = small.compress_with_result(crop, target_bytes=budget)
    assert best <= len(data) <= budget
    assert res.encodes <= SEARCH_STEPS + 2
    assert torch.equal(small.decompress(data), small._reconstruct_padded(crop, res.lmb))


@pytest.mark.parametrize("where", [0.3, 0.7])
def test_qarv_small_bpp_target_is_at_least_the_sweeps_best(small, crop, sweep, where):
    grid, sizes, _ = sweep
    pixels = crop.shape[2] * crop.shape[3]
    bpp = 8 * (sizes[0] + where * (sizes[-1] - sizes[0])) / pixels
    best = max(s for s in sizes if 8 * s / pixels <= bpp)
    data, res = small.compress_with_result(crop, target_bpp=bpp)
    assert 8 * best / pixels <= res.bpp == 8 * len(data) / pixels <= bpp


@pytest.mark.parametrize("where", [0.3, 0.5])
def test_qarv_small_psnr_target_is_the_smallest_file_reaching_it(small, crop, sweep, where):
    grid, sizes, qualities = sweep
    target = qualities[0] + where * (qualities[-1] - qualities[0])
    first = next(i for i, q in enumerate(qualities) if q >= target)  # the exhaustive search's answer
    assert first > 0 and qualities[first - 1] < target
    data, res = small.compress_with_result(crop, target_psnr=target)
    assert res.psnr >= target
    assert grid[first - 1] < res.lmb <= grid[first]  # between the sweep's last miss and first hit
    assert len(data) <= sizes[first]
