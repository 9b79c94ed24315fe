"""Regenerate tests/data/qarv_tiny_trained.pt: qarv_tiny trained briefly so that its rate depends on λ.

Usage: python tests/tools/make_tiny_checkpoint.py IMAGE_FOLDER [--iters N]
(made from ../shared/data/train/bsds500 — never Kodak). A plain loop on purpose: the fixture must
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
from lvae.paths import list_images  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--iters", type=int, default=6000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "qarv_tiny_trained.pt"))
    args = p.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    images = [load_image(f) for f in list_images(args.folder)[:200]]
    model = lvae.get_model("qarv_tiny").train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    for it in range(args.iters):
        batch = []
        for _ in range(8):
            im = random.choice(images)
            y = random.randrange(im.shape[2] - 64)
            x = random.randrange(im.shape[3] - 64)
            batch.append(im[:, :, y : y + 64, x : x + 64])
        out = model(torch.cat(batch))
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        if it % 100 == 0:
            print(it, f"loss {out['loss'].item():.3f} bpp {out['bpp'].item():.3f} psnr {out['psnr'].item():.2f}", flush=True)
    torch.save({"model": model.state_dict()}, args.out)
    print("saved", args.out)


if __name__ == "__main__":
    main()
