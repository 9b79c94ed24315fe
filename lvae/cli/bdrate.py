"""``lvae bdrate``: Bjøntegaard delta rates between result JSONs (PSNR–bpp curves).

``lvae bdrate results/qarv_small-kodak.json results/jpeg-kodak.json results/webp-kodak.json``
prints the BD-rate of the first curve against each of the others (:func:`lvae.eval.compare.compare`),
with the PSNR interval the two curves share (the interval the BD-rate integrates over). A curve
shipped with lvae (:mod:`lvae.eval.anchors`) is named ``TEST-SET/NAME`` (``kodak/qres34m``); with
no curves to compare with, the first is compared with every shipped curve of its test set
(``lvae bdrate kodak/qres34m``: the published BD-rates of qres34m). Where one of two curves is an
R(D) upper bound (``eval-var-rate.py --model rd_model_base``), the line adds how far the codec is
above it (:func:`lvae.eval.bound.gap_line`: "this codec is X % above the bound").
Importing this module imports no numpy.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import reports_errors, standalone, write_line

__all__ = ["HELP", "DESCRIPTION", "PROG_NAME", "add_arguments", "run", "main"]

PROG_NAME = "lvae bdrate"
HELP = "BD-rate of one result JSON against others"
DESCRIPTION = "BD-rate (PSNR, %; negative = fewer bits) of the first result JSON against each of the others."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("test", help="result JSON of the curve to judge, or a shipped curve as TEST-SET/NAME "
                   "(e.g. kodak/qres34m)")
    p.add_argument("anchors", nargs="*",
                   help="result JSONs (or shipped curves, TEST-SET/NAME) to compare it with; default: every "
                   "shipped curve of its test set (VTM 18.0 and the published models)")


def _load(text: str) -> tuple[dict[str, Any], bool]:
    """A result file, else the shipped curve ``TEST-SET/NAME``; and whether it is a shipped one."""
    from ..eval.anchors import anchor_by_label, list_anchors
    from ..eval.results import load_results

    if not Path(text).exists():
        shipped = anchor_by_label(text)
        if shipped is not None:
            return shipped, True
        if "/" in text and not text.endswith(".json"):
            names = ", ".join(f"{t}/{n}" for t, n in list_anchors())
            raise FileNotFoundError(f"no such result file: {text} (nor a shipped curve: {names})")
    return load_results(text), False


def _label(curve: dict[str, Any], fallback: str, shipped: bool) -> str:
    from ..eval.results import is_bound_curve

    name = str(curve.get("name") or fallback) + (" (published)" if shipped else "")
    return f"R(D) upper bound ({name})" if is_bound_curve(curve) else name


def _gap(test: dict[str, Any], curve: dict[str, Any], label: str) -> str:
    """``; this codec is X % above the bound`` where one of the two is a bound, else nothing."""
    from ..eval.bound import gap_line

    line = gap_line(test, curve, label)
    return "" if line is None else f"; {line}"


@reports_errors
def run(args: argparse.Namespace) -> int:
    from ..eval.anchors import BD_ANCHOR, anchors_for
    from ..eval.compare import compare

    test, test_shipped = _load(args.test)
    rows: list[tuple[str, dict[str, float] | str]] = []
    gaps: list[str] = []
    if args.anchors:  # every curve asked for must compare
        for text in args.anchors:
            curve, shipped = _load(text)
            rows.append((_label(curve, text, shipped), compare(test, curve)))
            gaps.append(_gap(test, curve, rows[-1][0]))
    else:  # the shipped curves of its test set, VTM first; one that cannot compare says why
        test_set = test.get("test-set")
        candidates = [c for c in anchors_for(str(test_set)) if not (test_shipped and c["name"] == test["name"])]
        shipped_curves = sorted(candidates, key=lambda c: (c["name"] != BD_ANCHOR, c["name"]))
        if not shipped_curves:
            raise ValueError(f"no shipped curves of the test set {test_set!r} to compare {args.test} with; "
                             "name the result JSONs to compare it with")
        for curve in shipped_curves:
            try:
                rows.append((_label(curve, "", True), compare(test, curve)))
            except ValueError as exc:
                rows.append((_label(curve, "", True), str(exc)))
            gaps.append(_gap(test, curve, rows[-1][0]))
        if all(isinstance(r, str) for _, r in rows):
            raise ValueError(str(rows[0][1]))
    name = _label(test, args.test, test_shipped)
    width = max(len("anchor"), *(len(r[0]) for r in rows))
    lines = [f"BD-rate of {name} (PSNR RGB):", f"{'anchor':<{width}}  {'BD-rate':>9}  shared PSNR range"]
    for (label, r), gap in zip(rows, gaps):
        if isinstance(r, str):
            lines.append(f"{label:<{width}}  {'-':>9}  not computed: {r}")
        else:
            lines.append(f"{label:<{width}}  {r['bd-rate']:>+8.2f}%  {r['psnr-low']:.2f}–{r['psnr-high']:.2f} dB{gap}")
    write_line("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``lvae bdrate`` as its own command line; returns the exit status."""
    return standalone(PROG_NAME, DESCRIPTION, add_arguments, run, argv)
