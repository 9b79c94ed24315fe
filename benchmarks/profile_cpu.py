"""Where the time of qarv_base encode/decode goes on the CPU: a torch.profiler table of top ops.

    python benchmarks/profile_cpu.py [--op encode|decode|both] [--top 15] [--lmb 181]

Fixed reference weights (no download), the synthetic 512×768 image of benchmarks/coding.py,
one warm-up, then one profiled call of ``model.compress`` / ``model.decompress``. Prints, per op,
the self CPU time and its share of the call's wall time, as a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coding import smooth_image  # noqa: E402

import lvae  # noqa: E402
from lvae.models.fixed_weights import load_fixed_reference_weights  # noqa: E402


def table(fn, top: int) -> str:
    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) / 1e6
    out = [f"wall {wall:.3f} s under the profiler; self CPU time of all ops {total:.3f} s", "",
           "| op | calls | self CPU s | % of self CPU |", "|---|---:|---:|---:|"]
    for e in rows[:top]:
        s = e.self_cpu_time_total / 1e6
        out.append(f"| `{e.key}` | {e.count} | {s:.3f} | {100 * s / total:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", choices=("encode", "decode", "both"), default="both")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--lmb", type=float, default=181.0)
    args = p.parse_args(argv)
    model = load_fixed_reference_weights(lvae.get_model("qarv_base")).eval()
    x = smooth_image()
    data = model.compress(x, args.lmb)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 768x512, lambda {args.lmb:g}")
    if args.op in ("encode", "both"):
        print("\n### encode (model.compress)\n")
        print(table(lambda: model.compress(x, args.lmb), args.top))
    if args.op in ("decode", "both"):
        print("\n### decode (model.decompress)\n")
        print(table(lambda: model.decompress(data), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
