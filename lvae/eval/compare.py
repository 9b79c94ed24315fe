"""``lvae bdrate``: Bjøntegaard delta rates between result JSONs (PSNR–bpp curves).

``lvae bdrate results/qarv_small-kodak.json results/jpeg-kodak.json results/webp-kodak.json``
prints the BD-rate of the first curve against each of the others, with the PSNR interval the two
curves share (the interval the BD-rate integrates over).
"""
from __future__ import annotations

import sys
from typing import Any

from ..metrics import bd_rate
from .plot import load_results
from ..utils.args import OneLineArgumentParser

__all__ = ["compare", "main"]


def compare(test: dict[str, Any], anchor: dict[str, Any]) -> dict[str, float]:
    """BD-rate (%) of ``test`` against ``anchor`` and the shared PSNR interval (dB).

    ``ValueError`` when the curves cannot be compared (too few points, no shared PSNR interval).
    """
    t, a = test["results"], anchor["results"]
    if test.get("test-set") and anchor.get("test-set") and test["test-set"] != anchor["test-set"]:
        raise ValueError(f"the curves are of different test sets: {test['test-set']!r} and {anchor['test-set']!r}")
    low = max(min(t["psnr"]), min(a["psnr"]))
    high = min(max(t["psnr"]), max(a["psnr"]))
    if not low < high:
        raise ValueError(
            f"the PSNR ranges do not overlap ({min(t['psnr']):.2f}–{max(t['psnr']):.2f} dB and "
            f"{min(a['psnr']):.2f}–{max(a['psnr']):.2f} dB)"
        )
    return {"bd-rate": bd_rate(a["bpp"], a["psnr"], t["bpp"], t["psnr"]), "psnr-low": low, "psnr-high": high}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = OneLineArgumentParser(
        prog=prog,
        description="BD-rate (PSNR, %; negative = fewer bits) of the first result JSON against each of the others.",
    )
    p.add_argument("test", help="result JSON of the curve to judge")
    p.add_argument("anchors", nargs="+", help="result JSONs to compare it with")
    args = p.parse_args(argv)
    try:
        test = load_results(args.test)
        rows = []
        for path in args.anchors:
            anchor = load_results(path)
            rows.append((str(anchor.get("name") or path), compare(test, anchor)))
    except (ValueError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    name = str(test.get("name") or args.test)
    width = max(len("anchor"), *(len(r[0]) for r in rows))
    print(f"BD-rate of {name} (PSNR RGB):")
    print(f"{'anchor':<{width}}  {'BD-rate':>9}  shared PSNR range")
    for label, r in rows:
        print(f"{label:<{width}}  {r['bd-rate']:>+8.2f}%  {r['psnr-low']:.2f}–{r['psnr-high']:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
