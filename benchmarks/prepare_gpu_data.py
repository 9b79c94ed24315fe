"""Build ``.gpu_data/train/``: the training images that travel with a GPU check (docs/gpu.md).

    python benchmarks/prepare_gpu_data.py SRC [--out .gpu_data] [--max-mib 35]

``SRC`` holds ``bsds500/`` and ``sunhays80/`` (the small training sets of the shared data folder).
The folder must fit, with the repository and the wheels, in the 64 MiB that a device call carries,
so it is capped at ``--max-mib``. Rules, all deterministic:

1. Held out: the 20 Sun-Hays photos with the most pixels (ties broken by file name). Their names
   are written, sorted, to ``--heldout-list`` (default ``results/heldout-sunhays20.txt``); they
   are never copied.
2. The other 60 Sun-Hays photos are copied unchanged (bytes identical).
3. BSDS500 images are taken in the order of the SHA-256 of their file names (a fixed,
   content-blind shuffle), each copied unchanged if the folder still fits in ``--max-mib``
   with it; the rest are left out.
   They are not re-encoded: they are already JPEG quality ~95 (re-encoding at 95 saved 0.4 %)
   and a second JPEG generation would teach the codec JPEG artefacts.

``<out>/MANIFEST.json`` lists every copied file with its size and SHA-256, and what was left out.
An existing ``<out>`` is rebuilt only if it holds such a manifest (it is never a user's folder).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SETS = ("bsds500", "sunhays80")
EXTENSIONS = {".jpg", ".jpeg", ".png"}
MANIFEST = "MANIFEST.json"
MIB = 2**20


class DataError(RuntimeError):
    """The source folder or the output folder is not what this script expects."""


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise DataError(f"no images in {folder}")
    return files


def pixel_count(path: Path) -> int:
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return w * h


def choose_heldout(files: list[Path], count: int) -> list[Path]:
    """The ``count`` images with the most pixels, ties broken by file name."""
    if count > len(files):
        raise DataError(f"cannot hold out {count} of {len(files)} images")
    ranked = sorted(files, key=lambda p: (-pixel_count(p), p.name))
    return ranked[:count]


def name_order(files: list[Path]) -> list[Path]:
    """A fixed, content-blind order: by SHA-256 of the file name."""
    return sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plan(src: Path, max_bytes: int, heldout_count: int) -> dict:
    """Which files go where; raises :class:`DataError` if even the Sun-Hays photos do not fit."""
    sun = list_images(src / "sunhays80")
    bsds = list_images(src / "bsds500")
    heldout = choose_heldout(sun, heldout_count)
    held = {p.name for p in heldout}
    sun_train = [p for p in sun if p.name not in held]
    total = sum(p.stat().st_size for p in sun_train)
    if total > max_bytes:
        raise DataError(f"the {len(sun_train)} Sun-Hays training photos alone take {total / MIB:.1f} MiB "
                        f"> --max-mib {max_bytes / MIB:g}")
    kept, dropped = [], []
    for p in name_order(bsds):
        size = p.stat().st_size
        if total + size <= max_bytes:
            kept.append(p)
            total += size
        else:
            dropped.append(p)
    return {"heldout": heldout, "sunhays80": sun_train, "bsds500": kept, "dropped": dropped, "bytes": total}


def build(src: Path, out: Path, max_mib: float, heldout_count: int, heldout_list: Path) -> dict:
    # The manifest itself (~60 KiB) counts towards the cap too.
    p = plan(src, int(max_mib * MIB) - 96 * 1024, heldout_count)
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file()):
            raise DataError(f"{out} exists and was not made by this script (no {MANIFEST}); remove it or pick --out")
        shutil.rmtree(out)
    train = out / "train"
    files = []
    for subset in SETS:
        (train / subset).mkdir(parents=True)
        for f in p[subset]:
            dst = train / subset / f.name
            shutil.copyfile(f, dst)
            files.append({"path": str(dst.relative_to(out)), "bytes": dst.stat().st_size, "sha256": sha256_file(dst)})
    heldout_names = sorted(f.name for f in p["heldout"])
    heldout_list.parent.mkdir(parents=True, exist_ok=True)
    heldout_list.write_text("".join(f"{n}\n" for n in heldout_names))
    manifest = {
        "source": str(src),
        "max_mib": max_mib,
        "rules": {
            "heldout": f"the {heldout_count} sunhays80 photos with the most pixels, ties by file name",
            "sunhays80": "every other sunhays80 photo, bytes unchanged",
            "bsds500": "in order of sha256(file name), bytes unchanged, each if the folder still fits in max_mib",
        },
        "counts": {"sunhays80": len(p["sunhays80"]), "bsds500": len(p["bsds500"]),
                   "bsds500_dropped": len(p["dropped"]), "heldout": len(heldout_names)},
        "train_bytes": sum(f["bytes"] for f in files),
        "heldout": heldout_names,
        "bsds500_dropped": sorted(f.name for f in p["dropped"]),
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="folder holding bsds500/ and sunhays80/")
    ap.add_argument("--out", type=Path, default=REPO / ".gpu_data", help="output folder (default: .gpu_data)")
    ap.add_argument("--max-mib", type=float, default=35.0, help="size cap of the output folder (default: 35)")
    ap.add_argument("--heldout", type=int, default=20, help="Sun-Hays photos held out (default: 20)")
    ap.add_argument("--heldout-list", type=Path, default=REPO / "results" / "heldout-sunhays20.txt",
                    help="where the held-out names are written")
    args = ap.parse_args(argv)
    try:
        m = build(args.src, args.out, args.max_mib, args.heldout, args.heldout_list)
    except (DataError, OSError) as exc:
        print(f"prepare_gpu_data.py: error: {exc}", file=sys.stderr)
        return 1
    c = m["counts"]
    print(f"{args.out}/train: {c['sunhays80']} Sun-Hays + {c['bsds500']} BSDS500 images "
          f"({c['bsds500_dropped']} BSDS500 left out), {m['train_bytes'] / MIB:.2f} MiB of images, "
          f"{folder_bytes(args.out) / MIB:.2f} MiB with the manifest; {c['heldout']} held out, "
          f"listed in {args.heldout_list}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
