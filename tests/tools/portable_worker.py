"""Encode in one process, decode in another that computes differently (tests/test_portable_decoding.py).

    python tests/tools/portable_worker.py encode --model M --out DIR --lmbs 16,64 IMAGE...
    python tests/tools/portable_worker.py decode --model M --dir DIR [--threads N] [--no-mkldnn]

``encode`` writes, per image and λ, the file (``<stem>-<λ>.lvae``), the encoder-side decode as
an 8-bit PNG, and a JSON line with the SHA-256 of each block's prior scales; for the first image
it also keeps the scales themselves. ``decode`` decodes every file with its own settings
(``ONEDNN_MAX_CPU_ISA`` comes from the environment) and prints one JSON summary: corrupted
images (any 8-bit pixel more than 1 away from the encoder's decode, or an exception), blocks
whose prior scales differ from the encoder's, CDF indexes that differed before repair, and what
repair cost (a lossless model's images: any 8-bit pixel that differs at all). ``--model qarv_base``,
``--model qres34m`` (its λ = 64 member) and ``--model qres34m_lossless`` use the fixed reference
weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lvae  # noqa: E402
from lvae.coding.gaussian import PIXEL_TABLES, DiscreteGaussian  # noqa: E402
from lvae.coding.latent import trace  # noqa: E402
from lvae.io import load_image  # noqa: E402


def build(name: str, device: str = "cpu"):
    if name in ("qarv_base", "qres34m", "qres34m_lossless"):
        from lvae.models.fixed_weights import load_fixed_reference_weights

        model = load_fixed_reference_weights(lvae.get_model(name, **({"lmb": 64} if name == "qres34m" else {})))
    else:
        model = lvae.get_model(name, pretrained=True)
    return model.eval().to(device)


def to_uint8(im: torch.Tensor) -> np.ndarray:
    return (im[0].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def encode(args) -> None:
    model = build(args.model, args.device)
    if args.bf16_encoder:
        model.set_encoder_precision("bfloat16")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, path in enumerate(args.images):
        im = load_image(path)
        for lmb in args.lmbs:
            stem = f"{Path(path).stem}-{lmb:g}"
            with trace(scales=True, keep_scales=(n == 0)) as tr:
                data = model.compress(im, lmb=lmb, format=args.format)
            (out / f"{stem}.lvae").write_bytes(data)
            decoded = to_uint8(model.decompress(data))
            if model.lossless and not np.array_equal(decoded, to_uint8(im)):
                raise SystemExit(f"{stem}: the lossless model's own decode differs from the source")
            Image.fromarray(decoded).save(out / f"{stem}.png")
            if n == 0:
                np.savez(out / f"{stem}.scales.npz", *[r.scales for r in tr])
            entry = {"stem": stem, "bytes": len(data), "scales": [r.scales_sha256 for r in tr]}
            if args.format == "lvae":  # the same strings in container version 1 (no checks): the cost of v2
                h, strings = lvae.bitstream.unpack(data)
                entry["bytes_v1"] = len(lvae.bitstream.pack(h.model_name, h.lmb, h.height, h.width, strings, version=1))
            lines.append(entry)
    (out / "encoded.json").write_text(json.dumps({"threads": torch.get_num_threads(), "files": lines}))


def decode(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build(args.model, args.device)
    folder = Path(args.dir)
    encoded = json.loads((folder / "encoded.json").read_text())
    summary = {"files": 0, "corrupted": [], "changed_blocks": 0, "blocks": 0, "files_with_changed_scales": 0,
               "repaired_blocks": 0, "flips": 0, "trials": 0, "repair_seconds": 0.0, "max_dlog_scale": 0.0,
               "index_diffs_first_image": [], "decode_seconds": 0.0}
    for entry in encoded["files"]:
        stem = entry["stem"]
        keep = (folder / f"{stem}.scales.npz").exists()
        start = time.perf_counter()
        try:
            with trace(scales=True, keep_scales=keep) as tr:
                im = model.decompress((folder / f"{stem}.lvae").read_bytes())
        except Exception as exc:  # noqa: BLE001 - every failure is a corrupted image here
            summary["corrupted"].append(f"{stem}: {type(exc).__name__}: {exc}")
            summary["files"] += 1
            continue
        summary["decode_seconds"] += time.perf_counter() - start
        ref = np.asarray(Image.open(folder / f"{stem}.png")).astype(np.int16)
        diff = int(np.abs(to_uint8(im).astype(np.int16) - ref).max())
        if diff > (0 if model.lossless else 1):  # lossless: not one pixel may differ
            summary["corrupted"].append(f"{stem}: max 8-bit difference {diff}")
        changed = sum(a != b for a, b in zip(entry["scales"], [r.scales_sha256 for r in tr]))
        summary["files"] += 1
        summary["blocks"] += len(tr)
        summary["changed_blocks"] += changed
        summary["files_with_changed_scales"] += changed > 0
        summary["repaired_blocks"] += sum(r.flips > 0 for r in tr)
        summary["flips"] += sum(r.flips for r in tr)
        summary["trials"] += sum(r.trials for r in tr)
        summary["repair_seconds"] += sum(r.seconds for r in tr if r.flips or r.trials)
        if keep:
            enc = np.load(folder / f"{stem}.scales.npz")
            diffs = 0
            for i, r in enumerate(tr):
                a, b = enc[f"arr_{i}"], r.scales
                summary["max_dlog_scale"] = max(summary["max_dlog_scale"], float(np.abs(np.log(a) - np.log(b)).max()))
                coder = getattr(model.latent_blocks[i], "discrete_gaussian", None)  # none: a lossless model's pixels
                kind = coder.kind if coder is not None else PIXEL_TABLES
                index_a = DiscreteGaussian.indexes(torch.from_numpy(a), kind)
                index_b = DiscreteGaussian.indexes(torch.from_numpy(b), kind)
                diffs += int((index_a != index_b).sum())
            summary["index_diffs_first_image"].append(diffs)
    print(json.dumps(summary))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--lmbs", type=lambda s: [float(v) for v in s.split(",")], required=True)
    e.add_argument("--format", default="lvae")
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--bf16-encoder", action="store_true", help="QARV.set_encoder_precision('bfloat16')")
    e.add_argument("images", nargs="+")
    d = sub.add_parser("decode")
    d.add_argument("--model", required=True)
    d.add_argument("--dir", required=True)
    d.add_argument("--device", default="cpu")
    d.add_argument("--threads", type=int, default=0)
    d.add_argument("--no-mkldnn", action="store_true")
    d.add_argument("--tf32", action="store_true", help="caller enables TF32 (CUDA); coding must pin it off")
    args = p.parse_args()
    if args.cmd == "encode":
        if args.threads:
            torch.set_num_threads(args.threads)
        encode(args)
    else:
        decode(args)


if __name__ == "__main__":
    main()
