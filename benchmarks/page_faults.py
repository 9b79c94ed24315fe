"""What fresh memory costs a large image: encode and decode time beside the page faults they take,
under the C library's allocation settings of the environment (glibc's ``GLIBC_TUNABLES``).

    python benchmarks/page_faults.py IMAGE [--model qarv_small] [--repeats 3]
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/page_faults.py IMAGE
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295 python benchmarks/page_faults.py IMAGE

In one process (the packaged weights, the model's default λ), ``--repeats`` times: ``compress`` of
IMAGE, then ``decompress`` of its bytes; for each, the wall time, the minor page faults and the
system CPU time they cost (``getrusage``), and at the end the process's peak resident memory.
glibc gives every allocation over 32 MB its own fresh pages (``mmap``), which the kernel faults in
and zeroes on first touch: a large image's feature maps are that big, so each coding call pays for
gigabytes of fresh memory (docs/speed.md, "Large photos"). The settings above change that for the
whole process: 2 MB pages where the kernel allows them (``hugetlb=1``; transparent huge pages in
``madvise`` or ``always`` mode), or freed memory kept and reused (``mmap_max=0``, no trimming).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coding import machine_description  # noqa: E402


def usage() -> tuple[int, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", type=Path)
    p.add_argument("--model", default="qarv_small")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not args.image.is_file():
        raise SystemExit(f"page_faults.py: no such image file: {args.image}")
    import torch

    import lvae
    from lvae.io import read_image

    model = lvae.get_model(args.model, pretrained=True).eval()
    im = read_image(args.image).tensor
    print(f"# {args.model} on {args.image.name} ({im.shape[3]}x{im.shape[2]}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(machine_description())
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}; transparent huge pages: {thp_mode()}")
    rows = {"encode": [], "decode": []}
    for i in range(args.repeats):
        f0, s0 = usage()
        t0 = time.perf_counter()
        data = model.compress(im)
        t1 = time.perf_counter()
        f1, s1 = usage()
        model.decompress(data)
        t2 = time.perf_counter()
        f2, s2 = usage()
        rows["encode"].append((t1 - t0, f1 - f0, s1 - s0))
        rows["decode"].append((t2 - t1, f2 - f1, s2 - s1))
        print(f"run {i}: encode {t1 - t0:.2f} s ({f1 - f0} faults, {s1 - s0:.2f} s system), "
              f"decode {t2 - t1:.2f} s ({f2 - f1} faults, {s2 - s1:.2f} s system)", flush=True)
    for name, runs in rows.items():
        wall, faults, system = (statistics.median(r[k] for r in runs) for k in range(3))
        print(f"median {name}: {wall:.2f} s, {faults:.0f} faults, {system:.2f} s system")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


def thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    return next((w.strip("[]") for w in text.split() if w.startswith("[")), text.strip())


if __name__ == "__main__":
    main()
