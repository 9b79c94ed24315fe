"""What portable decoding costs, and what coding on every thread gains.

    python benchmarks/portable_cost.py [IMAGE] [--repeats 5] [--lmb 181]

For qarv_small (packaged weights) and qarv_base (fixed reference weights, no download), on one
image (default tests/data/kodim20.png, 768×512):

* **threads**: encode and decode on one thread (the rule lvae followed before its coding layer
  could repair index flips) and on all of torch's threads, alternating, medians and ratio;
* **check cost**: decoding a version-2 file, the time spent computing the index-map checks
  (nothing to repair here) over the whole decode; decoding the same strings without checks
  (authors' layout), verified by re-encoding, for comparison;
* **size cost**: bytes of version 2 over version 1 for the same strings.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lvae  # noqa: E402
from lvae import bitstream  # noqa: E402
from lvae.coding.latent import trace  # noqa: E402
from lvae.io import load_image  # noqa: E402
from lvae.models.fixed_weights import load_fixed_reference_weights  # noqa: E402


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def with_threads(n: int, fn):
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", nargs="?", default=str(REPO / "tests" / "data" / "kodim20.png"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lmb", type=float, default=181.0)
    args = p.parse_args()
    im = load_image(args.image)
    all_threads = torch.get_num_threads()
    print(f"{args.image} ({im.shape[3]}x{im.shape[2]}), λ={args.lmb:g}, medians of {args.repeats}; "
          f"torch {torch.__version__}, {all_threads} threads")
    for name in ("qarv_small", "qarv_base"):
        if name == "qarv_base":
            model = load_fixed_reference_weights(lvae.get_model(name)).eval()
        else:
            model = lvae.get_model(name, pretrained=True).eval()
        data = model.compress(im, lmb=args.lmb)
        legacy = model.compress(im, lmb=args.lmb, format="legacy") if name == "qarv_base" else None
        model.decompress(data)  # warm-up
        enc = {n: [] for n in (1, all_threads)}
        dec = {n: [] for n in (1, all_threads)}
        for _ in range(args.repeats):  # alternate, so that machine noise hits both alike
            for n in (1, all_threads):
                enc[n].append(median_time(with_threads(n, lambda model=model: model.compress(im, lmb=args.lmb)), 1))
                dec[n].append(median_time(with_threads(n, lambda model=model, data=data: model.decompress(data)), 1))
        e1, en = statistics.median(enc[1]), statistics.median(enc[all_threads])
        d1, dn = statistics.median(dec[1]), statistics.median(dec[all_threads])
        print(f"\n{name}: encode {e1:.3f} s on 1 thread, {en:.3f} s on {all_threads} ({e1 / en:.2f}x); "
              f"decode {d1:.3f} s, {dn:.3f} s ({d1 / dn:.2f}x)")
        checks, totals = [], []
        for _ in range(args.repeats):
            with trace() as reports:
                t = time.perf_counter()
                model.decompress(data)
                totals.append(time.perf_counter() - t)
            checks.append(sum(r.seconds for r in reports))
            assert all(r.flips == 0 for r in reports)
        c, d = statistics.median(checks), statistics.median(totals)
        h, strings = bitstream.unpack(data)
        v1 = bitstream.pack(h.model_name, h.lmb, h.height, h.width, strings, version=1)
        print(f"  checks: {1000 * c:.1f} ms of a {d:.3f} s decode ({100 * c / d:.2f} %); "
              f"file {len(data)} bytes, {len(data) - len(v1):+d} vs version 1 "
              f"({100 * (len(data) - len(v1)) / len(v1):+.3f} %)")
        if legacy is not None:
            tl = median_time(lambda model=model, legacy=legacy: model.decompress(legacy), args.repeats)
            print(f"  the same strings in the authors' layout (verified by re-encoding): decode {tl:.3f} s "
                  f"({100 * (tl / d - 1):+.1f} % vs version 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
