"""How far a model's reconstruction can go: PSNR with rounded latents against continuous ones.

    python benchmarks/rd_ceiling.py FOLDER [--model qarv_small] [--weights CKPT] [--lmbs 16,256,2048]
                                    [--limit 6]

For each λ and the first ``--limit`` images of FOLDER (sorted), the model's evaluation-mode
forward pass is run twice: as coded (every latent rounded around its prior mean: the image a
file gives, and the estimated bpp), and with every latent left at its posterior mean, unrounded
(a forward hook on each latent block's quantizer hands its input back). The second PSNR is the
network's ceiling at that λ with no quantization at all: when it is barely above the first, more
bits cannot buy quality; the encoder/decoder (their widths, the latent dimensions) are the limit.
Prints mean bpp and PSNR per λ. CPU by default; ``--device cuda`` when present.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import lvae
from lvae.coding.codec import pad_image
from lvae.coding.gaussian import DiscreteGaussian
from lvae.io import load_image
from lvae.metrics import psnr
from lvae.models import load_model
from lvae.utils.datasets import list_images


def _unrounded(module: torch.nn.Module, args: tuple, output: tuple) -> tuple:
    """Forward hook of a quantizer: the latent as it came in (the posterior mean), not rounded."""
    return args[0], output[1]


@torch.no_grad()
def mean_quality(model, images: list[torch.Tensor], lmb: float, rounded: bool) -> tuple[float, float]:
    hooks = [] if rounded else [m.register_forward_hook(_unrounded) for m in model.modules()
                                if isinstance(m, DiscreteGaussian)]
    try:
        bpps, psnrs = [], []
        for im in images:
            h, w = im.shape[2:]
            out = model(pad_image(im, model.max_stride), lmb)
            x_hat = model.postprocess(out["x_hat"])[:, :, :h, :w]
            psnrs.append(float(psnr(x_hat, im)))
            bpps.append(float(out["bpp"]))  # of the padded image, as the model estimates it
        return sum(bpps) / len(bpps), sum(psnrs) / len(psnrs)
    finally:
        for hook in hooks:
            hook.remove()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="folder of images")
    p.add_argument("--model", default="qarv_small")
    p.add_argument("--weights", default=None, help="checkpoint (default: the model's own weights)")
    p.add_argument("--lmbs", default="16,256,2048", help="comma-separated λ values")
    p.add_argument("--limit", type=int, default=6, help="images used (the first, sorted)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        lmbs = [float(v) for v in args.lmbs.split(",")]
        paths = list_images(args.folder)[: args.limit]
        if not paths:
            raise ValueError(f"no images in {args.folder}")
        model = load_model(args.model, args.weights, device=args.device)
        images = [load_image(q).to(args.device) for q in paths]
    except (OSError, ValueError, lvae.LvaeError) as e:
        print(f"rd_ceiling.py: {e}", file=sys.stderr)
        return 1
    print(f"{args.model} ({args.weights or 'its own weights'}), {len(images)} images of {args.folder}")
    print(f"{'lambda':>8} {'bpp (est.)':>11} {'PSNR rounded':>13} {'PSNR unrounded':>15}")
    for lmb in lmbs:
        bpp, rounded = mean_quality(model, images, lmb, rounded=True)
        _, ceiling = mean_quality(model, images, lmb, rounded=False)
        print(f"{lmb:8g} {bpp:11.3f} {rounded:13.2f} {ceiling:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
