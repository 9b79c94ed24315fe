"""The λ values a model is measured at: the one rule, for the evaluation and for the validation
during training. Importing this module imports neither numpy nor torch.

A variable-rate model (``qarv_*``) is measured at :func:`lambda_sweep` over its λ range; a
fixed-λ model (a member of a family such as ``qres34m``: ``model.lambdas`` is a tuple) at the λ
of the members it can code with, each point coded by its own network (:func:`rate_points`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..utils.text import format_lambdas

__all__ = ["DEFAULT_STEPS", "lambda_sweep", "rate_points", "member_points", "format_lambdas"]

DEFAULT_STEPS = 16  # the published curves use 16 λ values


def lambda_sweep(low: float, high: float, steps: int = DEFAULT_STEPS) -> list[float]:
    """``steps`` λ values log-spaced from ``low`` to ``high``, both included:
    ``exp(linspace(ln low, ln high, steps))``. One step gives ``[low]``.

    ``ValueError`` unless ``0 < low ≤ high`` (finite) and ``steps ≥ 1``.
    """
    import numpy as np

    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"the λ range must satisfy 0 < low ≤ high, got {low:g}, {high:g}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if steps == 1:
        return [float(low)]
    values = [float(v) for v in np.exp(np.linspace(math.log(low), math.log(high), steps))]
    # exp(log(x)) is x only up to the last bit, and that bit differs between numpy's AVX2 and
    # AVX-512 code: the ends are the given values exactly, on every CPU.
    values[0], values[-1] = float(low), float(high)
    return values


def _within(value: float, low: float, high: float) -> bool:
    """``low ≤ value ≤ high`` up to float rounding (a λ read back from a file or a command line)."""
    return low * (1 - 1e-6) <= value <= high * (1 + 1e-6)


def member_points(members: Sequence[float], lmb_range: Sequence[float] | None = None, name: str = "the model"
                  ) -> list[float]:
    """The members of a fixed-λ family to measure, ascending: all of ``members``, or those in
    ``lmb_range`` (both ends included); ``ValueError`` listing the members when none is in it."""
    values = sorted(float(v) for v in members)
    if lmb_range is None:
        return values
    low, high = _checked_range(lmb_range)
    chosen = [v for v in values if _within(v, low, high)]
    if not chosen:
        raise ValueError(f"no member of {name} in the λ range {low:g}–{high:g}: its members are λ ∈ "
                         f"{format_lambdas(values)}")
    return chosen


def _checked_range(lmb_range: Sequence[float]) -> tuple[float, float]:
    low, high = (float(v) for v in lmb_range)
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"the λ range must satisfy 0 < low ≤ high, got {low:g}, {high:g}")
    return low, high


def rate_points(model: Any, lmb_range: Sequence[float] | None = None, steps: int | None = None) -> list[float]:
    """The λ at which ``model`` is measured, ascending: the one rule.

    A fixed-λ model (``model.lambdas`` a tuple: its family's published members, or its own λ
    alone when it stands alone) gives its members, those in ``lmb_range`` when given
    (:func:`member_points`); ``steps`` does not apply to it. A variable-rate model
    (``model.lambdas`` None or absent) gives :func:`lambda_sweep` over ``lmb_range`` (default:
    ``model.lmb_range``, which it must lie within) in ``steps`` (default :data:`DEFAULT_STEPS`).
    ``ValueError``, naming the model's λ, otherwise.
    """
    name = getattr(model, "name", None) or type(model).__name__
    members = getattr(model, "lambdas", None)
    if members is not None:
        if steps is not None:
            raise ValueError(f"{name} is a fixed-λ model, measured at its members λ ∈ {format_lambdas(members)}: "
                             "steps do not apply (choose members with the λ range)")
        return member_points(members, lmb_range, name)
    lo_ok, hi_ok = (float(v) for v in model.lmb_range)
    low, high = (lo_ok, hi_ok) if lmb_range is None else _checked_range(lmb_range)
    if low < lo_ok or high > hi_ok:
        raise ValueError(f"the λ range {low:g}–{high:g} is outside the model's range [{lo_ok:g}, {hi_ok:g}]")
    return lambda_sweep(low, high, DEFAULT_STEPS if steps is None else steps)
