"""``lvae plot``: PSNR against bpp of result JSONs, with the shipped anchor curves
(:func:`lvae.eval.plot.plot_rd`). Importing this module imports no matplotlib."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .common import add_force_option, claim_output, figure_path, reports_errors, standalone, write_line

__all__ = ["HELP", "DESCRIPTION", "PROG_NAME", "add_arguments", "run", "main"]

PROG_NAME = "lvae plot"
HELP = "plot PSNR against bpp of result JSONs, with the published curves"
DESCRIPTION = "Plot PSNR against bpp for result JSONs, with the published anchor curves."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="result JSON files (from eval-var-rate.py / lvae eval)")
    p.add_argument("-o", "--output", default="rd.png", type=figure_path, metavar="OUT",
                   help="figure to write: PNG, PDF or SVG, as its suffix says (default rd.png; "
                   "its folder is created if needed)")
    add_force_option(p, "a figure")
    p.add_argument("--title", default=None, help="plot title")
    p.add_argument("--no-anchors", action="store_true", help="leave out the published anchor curves")


@reports_errors
def run(args: argparse.Namespace) -> int:
    from ..eval.plot import figure_written_by_lvae, plot_rd

    output = claim_output(Path(args.output), args.force, figure_written_by_lvae, "a figure", "-o")
    out = plot_rd(args.results, output, with_anchors=not args.no_anchors, title=args.title)
    write_line(f"plot written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``lvae plot`` as its own command line; returns the exit status."""
    return standalone(PROG_NAME, DESCRIPTION, add_arguments, run, argv)
