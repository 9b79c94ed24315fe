"""Published rate–distortion curves shipped with the package (``lvae/data/anchors/*.json``).

Each file holds one curve in the result format of :mod:`lvae.eval.results` (``name``,
``test-set`` and ``results: {bpp: [...], psnr: [...]}``, plus ``lambdas`` for learned models) and
is read by its parser.
"""
from __future__ import annotations

from importlib import resources
from typing import Any

from .results import parse_results

__all__ = ["BD_ANCHOR", "list_anchors", "load_anchor", "anchors_for"]

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
