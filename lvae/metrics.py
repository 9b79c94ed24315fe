"""Image-quality metrics and the Bjøntegaard delta rate.

Images are compared in RGB with values in [0, 1]; MSE is on that scale, PSNR is
``10·log10(1 / MSE)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the metrics only call tensor methods: importing this module costs no torch
    import torch

__all__ = ["mse", "psnr", "mse_to_psnr", "ms_ssim", "MS_SSIM_MIN_SIDE", "bd_rate"]

# pytorch_msssim's default 11-pixel window over 5 scales needs sides > (11 - 1) · 2⁴.
MS_SSIM_MIN_SIDE = 161


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() != 4 or a.shape[1] != 3:
        raise ValueError(f"expected N×3×H×W images, got {tuple(a.shape)}")


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error of two N×3×H×W images in [0, 1] (over all pixels and channels)."""
    _check_pair(a, b)
    return float(((a.double() - b.double()) ** 2).mean())


def mse_to_psnr(value: float) -> float:
    """PSNR in dB for an MSE on the [0, 1] scale (``inf`` for identical images)."""
    return math.inf if value <= 0 else -10.0 * math.log10(value)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two N×3×H×W images in [0, 1], from their RGB MSE."""
    return mse_to_psnr(mse(a, b))


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """MS-SSIM (5 scales, 11-pixel Gaussian window) of two N×3×H×W images in [0, 1].

    Raises ``ValueError`` for images with a side shorter than :data:`MS_SSIM_MIN_SIDE` pixels,
    for which the five scales are not defined.
    """
    from pytorch_msssim import ms_ssim as _ms_ssim

    _check_pair(a, b)
    h, w = a.shape[2:]
    if min(h, w) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs both image sides ≥ {MS_SSIM_MIN_SIDE} pixels, got {h}×{w}")
    return float(_ms_ssim(a.float(), b.float(), data_range=1.0, size_average=True))


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_psnr: Sequence[float],
    test_rate: Sequence[float],
    test_psnr: Sequence[float],
) -> float:
    """Bjøntegaard delta rate of ``test`` against ``anchor``, in percent (negative = fewer bits).

    log(rate) is fitted as a cubic polynomial of PSNR for each curve; both fits are integrated
    over the PSNR interval the two curves share, and the result is
    ``(exp(mean log-rate difference) − 1) · 100``. Points may come in any order.
    """
    curves = []
    for label, rate, quality in (("anchor", anchor_rate, anchor_psnr), ("test", test_rate, test_psnr)):
        r = np.asarray(rate, dtype=np.float64)
        q = np.asarray(quality, dtype=np.float64)
        if r.ndim != 1 or r.shape != q.shape:
            raise ValueError(f"{label}: rate and PSNR must be 1-D lists of the same length")
        if r.size < 4:
            raise ValueError(f"{label}: a cubic fit needs at least 4 rate–PSNR points, got {r.size}")
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
            raise ValueError(f"{label}: rates and PSNRs must be finite")
        if np.any(r <= 0):
            raise ValueError(f"{label}: rates must be positive")
        if np.unique(q).size < 4:
            raise ValueError(f"{label}: a cubic fit needs at least 4 distinct PSNR values")
        curves.append((np.log(r), q))

    low = max(q.min() for _, q in curves)
    high = min(q.max() for _, q in curves)
    if not high > low:
        raise ValueError(
            "the two curves share no PSNR interval "
            f"(anchor {curves[0][1].min():.2f}–{curves[0][1].max():.2f} dB, "
            f"test {curves[1][1].min():.2f}–{curves[1][1].max():.2f} dB)"
        )
    integrals = []
    for log_r, q in curves:
        antiderivative = np.polyint(np.polyfit(q, log_r, 3))
        integrals.append(np.polyval(antiderivative, high) - np.polyval(antiderivative, low))
    mean_diff = (integrals[1] - integrals[0]) / (high - low)
    return float((math.exp(mean_diff) - 1.0) * 100.0)
