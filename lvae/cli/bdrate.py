"""``lvae bdrate``: Bjøntegaard delta rates between result JSONs (PSNR–bpp curves).

``lvae bdrate results/qarv_small-kodak.json results/jpeg-kodak.json results/webp-kodak.json``
prints the BD-rate of the first curve against each of the others (:func:`lvae.eval.compare.compare`),
with the PSNR interval the two curves share (the interval the BD-rate integrates over).
Importing this module imports no numpy.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import reports_errors, standalone, write_line

__all__ = ["HELP", "DESCRIPTION", "PROG_NAME", "add_arguments", "run", "main"]

PROG_NAME = "lvae bdrate"
HELP = "BD-rate of one result JSON against others"
DESCRIPTION = "BD-rate (PSNR, %; negative = fewer bits) of the first result JSON against each of the others."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("test", help="result JSON of the curve to judge")
    p.add_argument("anchors", nargs="+", help="result JSONs to compare it with")


@reports_errors
def run(args: argparse.Namespace) -> int:
    from ..eval.compare import compare
    from ..eval.results import load_results

    test = load_results(args.test)
    rows = []
    for path in args.anchors:
        anchor = load_results(path)
        rows.append((str(anchor.get("name") or path), compare(test, anchor)))
    name = str(test.get("name") or args.test)
    width = max(len("anchor"), *(len(r[0]) for r in rows))
    lines = [f"BD-rate of {name} (PSNR RGB):", f"{'anchor':<{width}}  {'BD-rate':>9}  shared PSNR range"]
    lines += [f"{label:<{width}}  {r['bd-rate']:>+8.2f}%  {r['psnr-low']:.2f}–{r['psnr-high']:.2f} dB"
              for label, r in rows]
    write_line("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``lvae bdrate`` as its own command line; returns the exit status."""
    return standalone(PROG_NAME, DESCRIPTION, add_arguments, run, argv)
