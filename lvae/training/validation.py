"""Periodic validation: bpp and PSNR at a few λ values, and BD-rate against the shipped anchor.

Every rank evaluates its share of the images (image ``i`` goes to rank ``i mod world``) and the
sums are all-reduced, so no rank waits for another's whole validation.

The rules come from one place each: the λ values from :func:`lvae.eval.lambdas.lambda_sweep`,
the padding from :func:`lvae.coding.codec.pad_image`, PSNR from :mod:`lvae.metrics`, the anchor
(:data:`lvae.eval.anchors.BD_ANCHOR`) from :func:`lvae.eval.anchors.load_anchor` and the BD-rate
from :func:`lvae.eval.compare.compare`.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..coding.codec import pad_image
from ..eval.anchors import BD_ANCHOR, load_anchor
from ..eval.compare import compare
from ..eval.lambdas import lambda_sweep
from ..metrics import psnr as rgb_psnr
from ..utils.datasets import known_datasets, list_images, resolve_dataset
from .data import load_rgb
from .distributed import DistContext

if TYPE_CHECKING:
    from ..coding.contract import CodingModel

__all__ = [
    "validation_lambdas", "load_validation_images", "evaluate", "anchor_curve", "bd_rate_vs_anchor", "MIN_BD_POINTS",
]

MIN_BD_POINTS = 4  # a BD-rate fits a cubic to each curve (lvae.metrics.bd_rate)


def validation_lambdas(lmb_range: Sequence[float], steps: int) -> list[float]:
    """:func:`lvae.eval.lambdas.lambda_sweep` over ``lmb_range`` (``[low]`` when ``steps`` is 1);
    a fixed-λ member's range ``(λ, λ)`` gives ``[λ]`` whatever ``steps``."""
    low, high = (float(v) for v in lmb_range)
    return lambda_sweep(low, high, steps if low < high else 1)


def load_validation_images(valset: str) -> list[torch.Tensor]:
    """The images of ``valset`` (folder or known name) as 1×3×H×W uint8 tensors, on the CPU."""
    folder = resolve_dataset(valset)
    files = list_images(folder, recursive=True)
    if not files:
        raise ValueError(f"no validation images in {folder}")
    images = []
    for path in files:
        try:
            arr = load_rgb(path)  # the reader of evaluation (EXIF orientation, modes)
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping unreadable validation image {path}: {exc}", RuntimeWarning, stacklevel=2)
            continue
        images.append(torch.from_numpy(arr).permute(2, 0, 1)[None])
    if not images:
        raise ValueError(f"none of the validation images in {folder} could be read")
    return images


@torch.no_grad()
def evaluate(
    model: CodingModel,
    images: Sequence[torch.Tensor],
    lmbs: Sequence[float],
    ctx: DistContext,
) -> dict[str, Any]:
    """Eval-mode rate and quality of ``model`` over ``images`` at each λ, averaged over images.

    Images are padded as for coding (:func:`~lvae.coding.codec.pad_image`); bpp is the model's
    estimated bits spread over the pixels of the original image, PSNR is
    :func:`lvae.metrics.psnr` of the cropped reconstruction (RGB, [0, 1]), as in the evaluation
    protocol.
    """
    was_training = model.training
    model.eval()
    # Per λ: sums of bpp, PSNR and loss over this rank's images, and the image count.
    sums = torch.zeros(len(lmbs), 4, dtype=torch.float64, device=ctx.device)
    try:
        for i in range(ctx.rank, len(images), ctx.world_size):
            im = images[i].to(ctx.device).float().div_(255.0)
            h, w = im.shape[2:]
            x = pad_image(im, model.max_stride)
            padded_per_original = x.shape[2] * x.shape[3] / (h * w)
            for j, lmb in enumerate(lmbs):
                out = model(x, lmb=lmb)
                bpp = float(out["bpp"].double()) * padded_per_original  # the model's bpp is per padded pixel
                rec = model.postprocess(out["x_hat"])[..., :h, :w]
                row = [bpp, rgb_psnr(rec, im), float(out["loss"].double()), 1.0]
                sums[j] += torch.tensor(row, dtype=torch.float64, device=ctx.device)
    finally:
        model.train(was_training)
    ctx.all_reduce_(sums)
    sums = sums.cpu()
    count = sums[:, 3].clamp_min(1)
    bpp_mean, psnr_mean, loss = (sums[:, k] / count for k in range(3))
    return {
        "lmb": [float(v) for v in lmbs],
        "bpp": bpp_mean.tolist(),
        "psnr": psnr_mean.tolist(),
        "loss": float(loss.mean()),
        "images": int(sums[0, 3]),
    }


def anchor_curve(valset: str) -> dict[str, Any] | None:
    """The shipped :data:`~lvae.eval.anchors.BD_ANCHOR` curve of ``valset`` if it is a known data
    set name that has one, else None."""
    if valset not in known_datasets:
        return None
    try:
        return load_anchor(valset, BD_ANCHOR)
    except ValueError:
        return None


def bd_rate_vs_anchor(anchor: dict[str, Any], bpp: Sequence[float], psnr: Sequence[float]) -> float | None:
    """BD-rate (%) of a validation curve against ``anchor``, by :func:`lvae.eval.compare.compare`;
    None when it cannot be computed (fewer than :data:`MIN_BD_POINTS` points, no PSNR overlap early
    in training)."""
    curve = {"results": {"bpp": list(bpp), "psnr": list(psnr)}}
    try:
        value = compare(curve, anchor)["bd-rate"]
    except ValueError:
        return None
    return value if math.isfinite(value) else None
