"""Regenerate tests/data/qarv_tiny_trained.pt: qarv_tiny trained briefly so that its rate depends on λ.

Usage: python tests/tools/make_tiny_checkpoint.py IMAGE_FOLDER [--iters N]
(made from BSDS500 photos — never Kodak). A plain loop on purpose: the fixture must
not depend on the training package it may be used to test.
"""
import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lvae  # noqa: E402
from lvae.io import load_image  # noqa: E402
from lvae.utils.datasets import list_images  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--iters", type=int, default=6000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--init", default=None, help="start from this checkpoint")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "qarv_tiny_trained.pt"))
    args = p.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    images = [load_image(f) for f in list_images(args.folder)[:200]]
    model = lvae.get_model("qarv_tiny", pretrained=args.init or False).train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    for it in range(args.iters):
        batch = []
        for _ in range(8):
            im = random.choice(images)
            y = random.randrange(im.shape[2] - 64)
            x = random.randrange(im.shape[3] - 64)
            batch.append(im[:, :, y : y + 64, x : x + 64])
        # NOTE: λ from the two ends of the range half of the time: a short run otherwise learns
        # almost nothing of the conditioning, and the tests need a rate that follows λ.
        lmb = model.sample_lmb(8)
        ends = torch.tensor([16.0, 2048.0])[torch.randint(0, 2, (8,))]
        lmb = torch.where(torch.rand(8) < 0.5, ends, lmb)
        out = model(torch.cat(batch), lmb=lmb)
        # NOTE: each image's rate + λ·D is divided by its λ (same minimiser per λ): otherwise the
        # large-λ images dominate the gradient and a short run learns a rate that ignores λ.
        rate = out["kl"].sum(dim=1) / (3 * 64 * 64)
        dist = (out["x_hat"] - (torch.cat(batch) - 0.5) * 2).pow(2).flatten(1).mean(dim=1)
        loss = (rate / lmb + dist).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        if it % 100 == 0:
            print(it, f"loss {out['loss'].item():.3f} bpp {out['bpp'].item():.3f} "
                  f"psnr {out['psnr'].item():.2f}", flush=True)
    torch.save({"model": model.state_dict()}, args.out)
    print("saved", args.out)


if __name__ == "__main__":
    main()
