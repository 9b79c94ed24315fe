"""What the lossless model's checks cost: ``qres34m_lossless`` with the fixed reference weights (no download).

    python benchmarks/lossless_cost.py [IMAGE] [--repeats 5] [--crop W H]

On one image (default tests/data/kodak24/kodim01.webp, 768×512), medians of ``--repeats`` runs:

* **whole**: ``model.compress(image)`` and ``model.decompress(file)``;
* **pixels' stage** of the decode (:func:`lvae.coding.lossless.decode_integers`: CDF indexes,
  rounded centres, the checked map, rANS), with the decoder's own centres and scales of the file;
* **map check**: what checking costs the decoder when nothing needs repair: CRC-32 of the pixels'
  string and the five 32-bit hashes (160 bits) of the map of CDF index and rounded centre (the
  encoder computes the same hashes), and the 12 latent strings' index-map checks (``trace()``);
* **repair**: the pixels' stage with the k centres nearest a half integer pushed just across it
  (by 2e-5 of a step, as tests/test_qres_lossless.py's ``_perturb`` does: a machine whose
  arithmetic rounds them the other way), k = 1, 3, 6; each must be repaired to the same pixels.

Ratios are against the whole decode (and encode).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lvae  # noqa: E402
from lvae.coding import lossless, rans  # noqa: E402
from lvae.coding.gaussian import DiscreteGaussian, gaussian_tables  # noqa: E402
from lvae.coding.latent import trace  # noqa: E402
from lvae.io import load_image  # noqa: E402
from lvae.models import qres  # noqa: E402
from lvae.models.fixed_weights import load_fixed_reference_weights  # noqa: E402

NAME = "qres34m_lossless"


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pixel_inputs(model, data: bytes) -> tuple:
    """What the decoder hands the pixels' stage for this file: strings, centres, scales, table kind."""
    seen: dict = {}
    original = qres.decode_integers

    def capture(coded, centres, scales, kind):
        seen.update(args=(coded, centres.clone(), scales.clone(), kind))
        return original(coded, centres, scales, kind)

    qres.decode_integers = capture
    try:
        model.decompress(data)
    finally:
        qres.decode_integers = original
    return seen["args"]


def pushed(centres: torch.Tensor, k: int) -> torch.Tensor:
    """``centres`` with the ``k`` nearest a half integer moved 2e-5 of a step across it."""
    r = torch.round(centres).flatten()
    flat = centres.clone().flatten()
    near = torch.argsort(0.5 - (flat - r).abs())[:k]
    flat[near] = torch.where(flat[near] >= r[near], r[near] + 0.5 + 2e-5, r[near] - 0.5 - 2e-5)
    return flat.reshape(centres.shape)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", nargs="?", default=str(REPO / "tests" / "data" / "kodak24" / "kodim01.webp"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--crop", type=int, nargs=2, metavar=("W", "H"), help="code the top-left W×H pixels only")
    args = p.parse_args()
    im = load_image(args.image)
    if args.crop:
        im = im[:, :, : args.crop[1], : args.crop[0]].contiguous()
    h, w = im.shape[2:]
    print(f"{args.image} ({w}x{h}), {NAME} with the fixed reference weights (not the published ones), medians of "
          f"{args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f}")
    model = load_fixed_reference_weights(lvae.get_model(NAME)).eval()
    data = model.compress(im)
    decoded = model.decompress(data)
    assert torch.equal(torch.round(decoded * 255), torch.round(im * 255)), "not lossless: stop"
    print(f"file: {len(data)} bytes, {8 * len(data) / (h * w):.4f} bpp (fixed weights: the size means nothing); "
          f"decodes to the source exactly")

    encode = median_time(lambda: model.compress(im), max(1, args.repeats // 2 + 1))
    decode = median_time(lambda: model.decompress(data), args.repeats)
    coded, centres, scales, kind = pixel_inputs(model, data)
    stage = median_time(lambda: lossless.decode_integers(coded, centres, scales, kind), args.repeats)
    clean = lossless.decode_integers(coded, centres, scales, kind)

    # The check alone: what the decoder computes besides the decode when nothing needs repair.
    c = coded[0]
    idx = DiscreteGaussian.indexes(scales, kind)[0].reshape(-1).to(torch.int64).numpy()
    rounded = torch.round(centres[0].float().reshape(-1)).to(torch.int64).numpy()

    def check() -> None:
        zlib.crc32(c.string)
        lossless._map_hash(idx, rounded)
        lossless._extra_hashes(idx, rounded)

    pixel_check = median_time(check, args.repeats)
    rans_only = median_time(lambda: rans.decode(c.string, idx.astype(np.int32).tolist(),
                                                gaussian_tables(kind).coder), args.repeats)
    latent_checks = []
    for _ in range(args.repeats):
        with trace() as reports:
            model.decompress(data)
        latent_checks.append(sum(r.seconds for r in reports[:-1]))  # the last report: the pixels'
    latents = statistics.median(latent_checks)
    checks = pixel_check + latents
    check_bytes = 4 * len(lvae.bitstream.unpack(data)[1]) + lossless.EXTRA_CHECK_BYTES
    print(f"\nwhole: encode {encode:.3f} s, decode {decode:.3f} s")
    print(f"pixels' stage of the decode: {stage:.3f} s ({100 * stage / decode:.1f} % of the decode; "
          f"its rANS decode alone {rans_only:.3f} s, {idx.size} symbols)")
    print(f"map check of the pixels (CRC-32 + 160-bit map hash): {1000 * pixel_check:.1f} ms "
          f"({100 * pixel_check / decode:.2f} % of the decode, {100 * pixel_check / encode:.2f} % of the encode, "
          "which computes the same hashes)")
    print(f"index-map checks of the 12 latent strings: {1000 * latents:.1f} ms ({100 * latents / decode:.2f} %)")
    print(f"all checks, nothing to repair: {1000 * checks:.1f} ms = {100 * checks / decode:.2f} % of the decode; "
          f"file bytes for them: {check_bytes} ({100 * check_bytes / len(data):.4f} % of the file)")
    print("\nrepair: k centres pushed across their rounding boundary (pixels' stage, then over the clean stage)")
    for k in (1, 3, 6):
        moved = pushed(centres, k)
        with trace() as reports:
            values = lossless.decode_integers(coded, moved, scales, kind)
        assert torch.equal(values, clean), f"k={k}: repaired to other pixels"
        report = reports[-1]
        t = median_time(lambda moved=moved: lossless.decode_integers(coded, moved, scales, kind), args.repeats)
        print(f"  k={k}: {t:.3f} s ({1000 * (t - stage):+.1f} ms over the clean stage, "
              f"{100 * (t - stage) / decode:+.2f} % of the whole decode; {report.flips} moved back, "
              f"{report.trials} re-encode{'s' if report.trials != 1 else ''})")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (other work on the machine slows torch's threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
