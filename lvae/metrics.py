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

__all__ = ["mse", "psnr", "mse_to_psnr", "rounded_squared_error", "ms_ssim", "MS_SSIM_MIN_SIDE", "bd_rate"]

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


# Elements per band of rounded_squared_error: its float64 band (4 MiB) stays in cache.
SQUARED_ERROR_BAND = 1 << 19


def rounded_squared_error(decoded: torch.Tensor, source: torch.Tensor) -> float:
    """The sum of squared errors, in float64, of ``decoded`` rounded to 8 bits (clamped to [0, 1],
    ``round(255 · x)`` in float32, halves to even, as :func:`lvae.io.tensor_to_image` writes it)
    against ``source``: two CPU tensors of one shape, 1×C×H×W (a view with any strides,
    ``expand`` included); on the [0, 1] scale.

    Computed with NumPy a band of rows at a time, in one thread: the same float32 and float64
    operations as on whole-image tensors, without their float64 copies of the image (0.6 GB each
    at 24 megapixels: seconds) and without torch's thread hand-offs, which on a busy 2-core
    machine cost more than the arithmetic. Only the order of the sum differs (as a PSNR: 7e-15 dB
    on 8 and 24 megapixel images).
    """
    if decoded.shape != source.shape or decoded.dim() != 4 or decoded.shape[0] != 1:
        raise ValueError(f"expected two 1×C×H×W images of one shape, got {tuple(decoded.shape)} and "
                         f"{tuple(source.shape)}")
    import torch

    q = decoded.detach().float()[0].numpy()  # C×H×W views of the tensors' memory (float32 is a no-op)
    ref_t = source.detach()
    ref = (ref_t if ref_t.dtype in (torch.float32, torch.float64) else ref_t.float())[0].numpy()
    c, h, w = q.shape
    rows = max(1, min(h, SQUARED_ERROR_BAND // max(1, c * w)))
    level = np.empty(c * rows * w, dtype=np.float32)
    error = np.empty(c * rows * w, dtype=np.float64)
    total = 0.0
    for r in range(0, h, rows):
        n = min(rows, h - r)
        a, e = level[: c * n * w].reshape(c, n, w), error[: c * n * w].reshape(c, n, w)
        np.clip(q[:, r : r + n], np.float32(0), np.float32(1), out=a)
        np.multiply(a, np.float32(255), out=a)
        np.rint(a, out=a)
        np.divide(a, 255.0, out=e, dtype=np.float64)  # in float64: the level exactly, then / 255
        np.subtract(e, ref[:, r : r + n], out=e)
        flat = e.reshape(-1)
        total += float(np.einsum("i,i->", flat, flat))  # NumPy's own loop: no BLAS threads
    return total


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
