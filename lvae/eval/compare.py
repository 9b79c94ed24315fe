"""BD-rate of one rate–distortion curve against another: the one function for it.

:func:`compare` serves ``lvae bdrate`` (:mod:`lvae.cli.bdrate`), the BD-rate that ``lvae eval``
stores against the shipped anchor of its test set, and the validation during training
(:func:`lvae.training.validation.bd_rate_vs_anchor`).
"""
from __future__ import annotations

from typing import Any

from ..metrics import bd_rate

__all__ = ["compare", "MIN_POINTS"]

MIN_POINTS = 4  # the cubic fit of log-rate against PSNR (lvae.metrics.bd_rate)


def compare(test: dict[str, Any], anchor: dict[str, Any]) -> dict[str, float]:
    """BD-rate (%) of ``test`` against ``anchor`` and the shared PSNR interval (dB).

    Both are curves in the result format (``results.bpp`` and ``results.psnr``; ``test-set``
    optional). Returns ``{"bd-rate", "psnr-low", "psnr-high"}``. ``ValueError`` when the curves
    cannot be compared (different test sets, fewer than :data:`MIN_POINTS` points, no shared
    PSNR interval).
    """
    t, a = test["results"], anchor["results"]
    if test.get("test-set") and anchor.get("test-set") and test["test-set"] != anchor["test-set"]:
        raise ValueError(f"the curves are of different test sets: {test['test-set']!r} and {anchor['test-set']!r}")
    for role, curve in (("the test curve", test), ("the anchor", anchor)):
        n = len(curve["results"]["bpp"])
        if n < MIN_POINTS:  # e.g. one fixed-λ network alone: a point, not a curve
            label = f"{role} ({curve['name']})" if curve.get("name") else role
            raise ValueError(f"{label} has {n} rate point{'s' if n != 1 else ''}; a BD-rate needs at least "
                             f"{MIN_POINTS} (a cubic fit)")
    low = max(min(t["psnr"]), min(a["psnr"]))
    high = min(max(t["psnr"]), max(a["psnr"]))
    if not low < high:
        raise ValueError(
            f"the PSNR ranges do not overlap ({min(t['psnr']):.2f}–{max(t['psnr']):.2f} dB and "
            f"{min(a['psnr']):.2f}–{max(a['psnr']):.2f} dB)"
        )
    return {"bd-rate": bd_rate(a["bpp"], a["psnr"], t["bpp"], t["psnr"]), "psnr-low": low, "psnr-high": high}
