"""Build the held-out photo set of issue 13: the 20 Sun-Hays photos named in
results/heldout-sunhays20.txt (never in a training run since qarv_small run 4), halved.

    python benchmarks/heldout_set.py SUNHAYS_FOLDER OUT_FOLDER [--list results/heldout-sunhays20.txt]

The photos are JPEGs (about quality 75). Coded again by JPEG at nearby qualities they come back
almost unchanged (PSNR up to 78 dB), which favours JPEG in any comparison. Halving each side
with a Lanczos filter (Pillow) moves every pixel off the source's 8×8 block grid and averages its
quantization noise away, so the set behaves like camera photos; each is written as PNG.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="folder holding the Sun-Hays photos")
    p.add_argument("out", type=Path, help="folder to write the halved PNGs into (created)")
    p.add_argument("--list", type=Path, default=REPO / "results" / "heldout-sunhays20.txt")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.list.read_text().splitlines() if n.strip()]
    missing = [n for n in names if not (args.source / n).is_file()]
    if missing:
        print(f"error: not in {args.source}: {', '.join(missing)}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        with Image.open(args.source / name) as im:
            rgb = im.convert("RGB")
            half = rgb.resize((rgb.width // 2, rgb.height // 2), Image.Resampling.LANCZOS)
        half.save(args.out / (Path(name).stem + ".png"))
    print(f"{len(names)} photos halved into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
