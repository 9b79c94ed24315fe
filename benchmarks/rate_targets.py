"""Rate targets: real encodes, forward passes and wall time of ``compress_with_result`` with a
byte (bpp) or PSNR target, on kodim20 and a 256×192 crop of it.

The steps are counted by wrapping the model's ``encode_latents`` and ``forward``, so an older tree
is measured alike: ``PYTHONPATH=/path/to/old/tree python benchmarks/rate_targets.py`` (a tree
exported with ``git archive REV lvae | tar -x -C /path/to/old/tree``) against
``python benchmarks/rate_targets.py``, one after the other on the same machine.

    python benchmarks/rate_targets.py [--model qarv_small] [--threads 1]

``--model qarv_base`` uses the deterministic fixed weights of the conformance tests (the
published weights need a download): their rate and PSNR hardly move with λ, so only the timing of
one step means anything there.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import lvae
from lvae.io import load_image

KODIM20 = Path(__file__).resolve().parents[1] / "tests" / "data" / "kodim20.png"
TARGETS = {
    "768x512": [("lmb", 181.0), ("target_bpp", 0.3), ("target_bpp", 0.5), ("target_bpp", 0.7),
                ("target_psnr", 32.0), ("target_psnr", 33.5), ("target_psnr", 34.5)],
    "256x192 crop": [("lmb", 181.0), ("target_bpp", 0.4), ("target_bpp", 0.6), ("target_bpp", 0.8),
                     ("target_psnr", 30.5), ("target_psnr", 31.0), ("target_psnr", 32.0)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qarv_small")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "qarv_small":
        model = lvae.get_model("qarv_small", pretrained=True).eval()
    else:
        from lvae.models.fixed_weights import load_fixed_reference_weights

        model = load_fixed_reference_weights(lvae.get_model(args.model)).eval()
    calls = {"encode": 0, "forward": 0}
    encode_latents, forward = model.encode_latents, model.forward

    def counted_encode(*a, **k):
        calls["encode"] += 1
        return encode_latents(*a, **k)

    def counted_forward(*a, **k):
        calls["forward"] += 1
        return forward(*a, **k)

    model.encode_latents, model.forward = counted_encode, counted_forward
    full = load_image(KODIM20)
    images = {"768x512": full, "256x192 crop": full[:, :, 160:352, 256:512].contiguous()}
    print(f"# {lvae.__file__}, {args.model}, {args.threads} thread(s)")
    for name, im in images.items():
        model.compress(im, lmb=181.0)  # warm-up
        for key, value in TARGETS[name]:
            calls.update(encode=0, forward=0)
            start = time.perf_counter()
            try:
                _, res = model.compress_with_result(im, **{key: value})
                out = f"{res.bpp:.4f} bpp, {res.psnr:.3f} dB, lmb {res.lmb:.5g}"
            except ValueError as exc:
                out = str(exc)
            seconds = time.perf_counter() - start
            print(f"{name} {key}={value:g}: {calls['encode']} encodes, {calls['forward']} forward passes, "
                  f"{seconds:.2f} s ({out})", flush=True)


if __name__ == "__main__":
    main()
