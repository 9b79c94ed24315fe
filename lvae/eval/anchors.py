"""Published rate–distortion curves shipped with the package (``lvae/data/anchors/*.json``).

Each file holds one curve in the result format of :mod:`lvae.eval.results` (``name``,
``test-set`` and ``results: {bpp: [...], psnr: [...]}``, plus ``lambdas`` for learned models) and
is read by its parser: VTM 18.0 (the BD-rate anchor), ``qarv_base`` and ``qres34m`` (the QARV
authors' published measurements) on Kodak, Tecnick 1200 and CLIC 2022 test. On the command line
a shipped curve is named ``TEST-SET/NAME`` (``kodak/qres34m``).
"""
from __future__ import annotations

from importlib import resources
from typing import Any

from .results import parse_results

__all__ = ["BD_ANCHOR", "list_anchors", "load_anchor", "anchors_for", "anchor_by_label", "anchor_label"]

# The codec that BD-rates are measured against, as in the QARV paper.
BD_ANCHOR = "vtm18.0"


def _read_all() -> list[dict[str, Any]]:
    folder = resources.files("lvae") / "data" / "anchors"
    curves = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            curves.append(parse_results(entry.read_bytes(), f"lvae/data/anchors/{entry.name}"))
    return curves


def list_anchors() -> list[tuple[str, str]]:
    """``(test_set, name)`` of every shipped curve, sorted."""
    return sorted((c["test-set"], c["name"]) for c in _read_all())


def anchors_for(test_set: str) -> list[dict[str, Any]]:
    """All shipped curves measured on ``test_set`` (empty if there are none), sorted by name."""
    return sorted((c for c in _read_all() if c["test-set"] == test_set), key=lambda c: c["name"])


def load_anchor(test_set: str, name: str = BD_ANCHOR) -> dict[str, Any]:
    """The shipped curve ``name`` on ``test_set``; ``ValueError`` (listing what is shipped) if none."""
    for curve in anchors_for(test_set):
        if curve["name"] == name:
            return curve
    available = ", ".join(f"{t}/{n}" for t, n in list_anchors())
    raise ValueError(f"no shipped anchor curve {name!r} for test set {test_set!r} (available: {available})")


def anchor_label(curve: dict[str, Any]) -> str:
    """``kodak/qres34m``: how a shipped curve is named on the command line (``lvae bdrate``)."""
    return f"{curve['test-set']}/{curve['name']}"


def anchor_by_label(label: str) -> dict[str, Any] | None:
    """The shipped curve named ``TEST-SET/NAME`` (:func:`anchor_label`), or None if none is."""
    test_set, sep, name = label.partition("/")
    if not sep:
        return None
    return next((c for c in anchors_for(test_set) if c["name"] == name), None)
