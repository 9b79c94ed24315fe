"""Periodic validation: bpp and PSNR at a few λ values, and BD-rate against VTM 18.0.

Every rank evaluates its share of the images (image ``i`` goes to rank ``i mod world``) and the
sums are all-reduced, so no rank waits for another's whole validation.
"""
from __future__ import annotations

import json
import math
import warnings
from importlib import resources
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.datasets import known_datasets, list_images, resolve_dataset
from .data import load_rgb
from .distributed import DistContext

__all__ = ["validation_lambdas", "load_validation_images", "evaluate", "anchor_curve", "bd_rate_vs_anchor"]

LOG2_E = math.log2(math.e)
ANCHOR = "vtm18.0"


def validation_lambdas(lmb_range: Sequence[float], steps: int) -> list[float]:
    """``steps`` λ values log-spaced over ``lmb_range`` (its geometric middle when ``steps`` is 1)."""
    lo, hi = (float(v) for v in lmb_range)
    if steps == 1:
        return [math.sqrt(lo * hi)]
    return [float(v) for v in np.exp(np.linspace(math.log(lo), math.log(hi), steps))]


def load_validation_images(valset: str) -> list[torch.Tensor]:
    """The images of ``valset`` (folder or known name) as 1×3×H×W uint8 tensors, on the CPU."""
    folder = resolve_dataset(valset)
    files = list_images(folder, recursive=True)
    if not files:
        raise ValueError(f"no validation images in {folder}")
    images = []
    for path in files:
        try:
            arr = load_rgb(path)
        except OSError as exc:
            warnings.warn(f"skipping unreadable validation image {path}: {exc}", RuntimeWarning, stacklevel=2)
            continue
        images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1)[None])
    if not images:
        raise ValueError(f"none of the validation images in {folder} could be read")
    return images


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    lmbs: Sequence[float],
    ctx: DistContext,
) -> dict[str, Any]:
    """Eval-mode rate and quality of ``model`` over ``images`` at each λ, averaged over images.

    Images are padded (edge replication, right/bottom) to multiples of ``model.max_stride``;
    bpp counts the estimated bits per pixel of the original image, PSNR is on the cropped
    reconstruction (RGB, [0, 1]), as in the evaluation protocol.
    """
    was_training = model.training
    model.eval()
    stride = model.max_stride
    # Per λ: sums of bpp, PSNR and loss over this rank's images, and the image count.
    sums = torch.zeros(len(lmbs), 4, dtype=torch.float64, device=ctx.device)
    try:
        for i in range(ctx.rank, len(images), ctx.world_size):
            im = images[i].to(ctx.device).float().div_(255.0)
            h, w = im.shape[2:]
            pad = (0, (-w) % stride, 0, (-h) % stride)
            x = F.pad(im, pad, mode="replicate") if any(pad) else im
            for j, lmb in enumerate(lmbs):
                out = model(x, lmb=lmb)
                bpp = out["kl"].sum().double() * LOG2_E / (h * w)
                rec = model.postprocess(out["x_hat"])[..., :h, :w]
                mse = (rec.double() - im.double()).pow(2).mean()
                psnr = -10 * torch.log10(mse.clamp_min(1e-20))
                sums[j] += torch.stack([bpp, psnr, out["loss"].double(), torch.ones_like(bpp)])
    finally:
        model.train(was_training)
    ctx.all_reduce_(sums)
    sums = sums.cpu()
    count = sums[:, 3].clamp_min(1)
    bpp, psnr, loss = (sums[:, k] / count for k in range(3))
    return {
        "lmb": [float(v) for v in lmbs],
        "bpp": bpp.tolist(),
        "psnr": psnr.tolist(),
        "loss": float(loss.mean()),
        "images": int(sums[0, 3]),
    }


def anchor_curve(valset: str) -> dict[str, Any] | None:
    """The VTM 18.0 curve shipped for ``valset`` if it is a known data set name, else None."""
    if valset not in known_datasets:
        return None
    try:
        from ..eval.anchors import load_anchor
    except ImportError:
        path = resources.files("lvae").joinpath("data", "anchors", f"{valset}-{ANCHOR}.json")
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    try:
        return load_anchor(valset, ANCHOR)
    except ValueError:
        return None


def bd_rate_vs_anchor(anchor: dict[str, Any], bpp: Sequence[float], psnr: Sequence[float]) -> float | None:
    """BD-rate (%) of a validation curve against ``anchor``; None if it cannot be computed
    (fewer than 4 points, no PSNR overlap early in training, or :mod:`lvae.metrics` missing)."""
    try:
        from ..metrics import bd_rate
    except ImportError:
        return None
    results = anchor["results"]
    try:
        value = bd_rate(results["bpp"], results["psnr"], list(bpp), list(psnr))
    except ValueError:
        return None
    return value if math.isfinite(value) else None
