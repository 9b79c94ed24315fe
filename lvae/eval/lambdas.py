"""The λ values a variable-rate model is measured at: the one rule, for the evaluation and for
the validation during training. Importing this module imports neither numpy nor torch."""
from __future__ import annotations

import math

__all__ = ["DEFAULT_STEPS", "lambda_sweep"]

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
