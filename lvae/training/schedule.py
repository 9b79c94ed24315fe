"""Learning-rate schedules and the gradient-spike guard."""
from __future__ import annotations

import math
import statistics
from collections import deque

__all__ = ["lr_factor", "SpikeGuard"]


# Not a timm/torch scheduler: none holds the lr for half the run before the cosine (const-0.5-cos),
# and a pure function of the step resumes exactly with no scheduler state in last.pt.
def lr_factor(schedule: str, step: int, total: int, lrf_min: float = 0.01, warmup: int = 0) -> float:
    """The multiplier of the base lr for optimizer step ``step`` (0-based) of ``total``.

    - ``constant``: 1.
    - ``cosine``: cosine from 1 down to ``lrf_min`` over the whole run.
    - ``const-0.5-cos``: 1 for the first half, then cosine down to ``lrf_min`` (the authors' recipe).

    ``warmup`` > 0 multiplies by a linear ramp ``(step + 1) / warmup`` over the first steps.
    """
    if total < 1:
        raise ValueError(f"total iterations must be at least 1, got {total}")
    t = min(max(step, 0), total)

    def cosine(progress: float) -> float:
        return lrf_min + (1.0 - lrf_min) * 0.5 * (1.0 + math.cos(math.pi * progress))

    if schedule == "constant":
        f = 1.0
    elif schedule == "cosine":
        f = cosine(t / total)
    elif schedule == "const-0.5-cos":
        half = total / 2
        f = 1.0 if t < half else cosine((t - half) / (total - half))
    else:
        raise ValueError(f"unknown lr schedule {schedule!r} (known: const-0.5-cos, cosine, constant)")
    if warmup > 0 and step < warmup:
        f *= (step + 1) / warmup
    return f


class SpikeGuard:
    """Flags gradient-norm spikes: a norm above ``factor`` × the median of the last ``window`` norms.

    The guard judges only once the window is full (a median of a few early norms is too noisy).
    Every finite norm, spike or not, enters the window.
    """

    def __init__(self, factor: float = 10.0, window: int = 100):
        self.factor = factor
        self.history: deque[float] = deque(maxlen=window)

    def check(self, norm: float) -> bool:
        """Record ``norm``; return True if it is a spike."""
        if not math.isfinite(norm):
            return False
        full = len(self.history) == self.history.maxlen
        spike = full and norm > self.factor * statistics.median(self.history)
        self.history.append(norm)
        return spike

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history.clear()
        self.history.extend(float(v) for v in state["history"])
