"""Which GELU path of the ConvNeXt MLPs is faster on this CPU: oneDNN's post-op inside fc1
("fused") or ATen's GELU after fc1 ("separate") — the choice ``lvae.models.layers.gelu_path``
makes once per process from the CPU's instruction sets.

    python benchmarks/mlp_paths.py [IMAGE] [--model qarv_base] [--repeats 7]

Records the inputs of every MLP of one ``compress`` and one ``decompress`` (real activations: the
fixed reference weights, the image, λ = the model's default), then times the two paths on them,
taking turns, and prints the medians per operation. Only the MLPs are timed (fc1, GELU, fc2 with
the residual), so the difference is not drowned in the rest of a coding call. The machine line
says the CPU's instruction sets and oneDNN's limit (``ONEDNN_MAX_CPU_ISA``), which decide the choice.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coding import load_input, load_model, machine_description  # noqa: E402

from lvae.models import layers  # noqa: E402


def record(model, im: torch.Tensor) -> dict[str, list[tuple]]:
    """The (block, h, x) of every fused-MLP call of one encode and one decode."""
    calls: dict[str, list[tuple]] = {"encode": [], "decode": []}
    original = layers._ConvNeXtCore._mlp_residual_onednn
    data = model.compress(im)
    target: list[tuple] = []

    def spy(block, h, x):
        target.append((block, h.clone(), x.clone()))
        return original(block, h, x)

    layers._ConvNeXtCore._mlp_residual_onednn = spy  # type: ignore[method-assign]
    try:
        target = calls["encode"]
        model.compress(im)
        target = calls["decode"]
        model.decompress(data)
    finally:
        layers._ConvNeXtCore._mlp_residual_onednn = original  # type: ignore[method-assign]
    return calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", nargs="?", help="image to code (default: a synthetic 512x768 image)")
    p.add_argument("--model", choices=("qarv_base", "qres34m"), default="qarv_base")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    model = load_model(args.model)
    im, label = load_input(args.image)
    print(f"{args.model}, fixed reference weights; {label}; MLPs of one encode and one decode, "
          f"median of {args.repeats}, the two paths taking turns")
    print(f"machine: {machine_description()}")
    with torch.no_grad():
        calls = record(model, im)
        times: dict[tuple[str, str], list[float]] = {}
        for op, recorded in calls.items():
            for _ in range(args.repeats + 1):  # the first round warms up
                for path in layers.GELU_PATHS:
                    layers.set_gelu_path(path)
                    t0 = time.perf_counter()
                    for block, h, x in recorded:
                        block._mlp_residual_onednn(h, x)
                    times.setdefault((op, path), []).append(time.perf_counter() - t0)
        layers.set_gelu_path(None)
    print(f"\n{'op':8s} {'GELU path':10s} {'MLPs':>5s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for (op, path), ts in times.items():
        ts = ts[1:]
        print(f"{op:8s} {path:10s} {len(calls[op]):5d} {statistics.median(ts):9.3f} {min(ts):7.3f} {max(ts):7.3f}")
    for op in calls:
        fused, separate = (statistics.median(times[(op, p)][1:]) for p in layers.GELU_PATHS)
        print(f"{op}: separate / fused = {separate / fused:.3f}")
    print(f"this process's choice: {layers.gelu_path()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
