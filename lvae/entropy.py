"""Entropy model of a QARV latent: a discretized Gaussian with CompressAI's range coder.

``DiscreteGaussian`` is CompressAI's ``GaussianConditional`` with QARV's fixed scale table. Its
CDF tables are derived data: they are rebuilt by :meth:`DiscreteGaussian.update`, and a checkpoint
may carry them either empty or filled.
"""
from __future__ import annotations

import math

import torch
from compressai.entropy_models import GaussianConditional

__all__ = ["DiscreteGaussian", "qarv_scale_table", "gaussian_bin_nll"]

SCALE_MIN = 0.11
SCALE_MAX = 20.0
SCALE_LEVELS = 64


def qarv_scale_table() -> list[float]:
    """``exp(linspace(ln 0.11, ln 20, 64))``: the scales for which CDF tables are built.

    NOTE: computed in float64 and only then rounded to float32 (by CompressAI); a float32
    computation differs by one ulp in 36 of the 64 entries, which changes the CDF index of a scale
    that falls exactly on an entry, and so the bytes (seen on the reference λ=16 file).
    """
    step = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1)
    return [math.exp(math.log(SCALE_MIN) + i * step) for i in range(SCALE_LEVELS)]


class DiscreteGaussian(GaussianConditional):
    """``GaussianConditional`` (tail mass 1e-9, likelihood bound 1e-9, scale bound 0.11).

    Differences from the parent, both needed to load the published checkpoint:
    the scale table is not part of the state dict, and the CDF buffers take whatever size the
    loaded state dict has (empty or filled).
    """

    _TABLE_BUFFERS = ("_offset", "_quantized_cdf", "_cdf_length")

    def __init__(self):
        super().__init__(qarv_scale_table(), scale_bound=SCALE_MIN, tail_mass=1e-9, likelihood_bound=1e-9)
        # NOTE: the published state dict has no `scale_table` / `scale_bound` entries.
        for name in ("scale_table", "scale_bound"):
            value = self._buffers.pop(name)
            self.register_buffer(name, value, persistent=False)

    @property
    def ready(self) -> bool:
        """True when the CDF tables are built and the entropy coder can run."""
        return self._quantized_cdf.numel() > 0

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name in self._TABLE_BUFFERS:
            key = prefix + name
            if key in state_dict and torch.is_tensor(state_dict[key]):
                incoming = state_dict[key]
                current = getattr(self, name)
                self._buffers[name] = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-_INV_SQRT2 * x)


def gaussian_bin_nll(z: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Negative log-probability (nats, elementwise) of the unit-width bin around ``z``.

    ``P = Φ((z+½−μ)/σ) − Φ((z−½−μ)/σ)``; where ``P ≤ 1e-6`` the Gaussian log-density at ``z``
    is used instead (its bin width is 1), which keeps gradients alive far in the tails.
    """
    v = torch.abs(z - mean)
    upper = _std_normal_cdf((0.5 - v) / scale)
    lower = _std_normal_cdf((-0.5 - v) / scale)
    prob = upper - lower
    log_bin = torch.log(torch.clamp(prob, min=1e-8))
    log_density = -0.5 * (v / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    return -torch.where(prob > 1e-6, log_bin, log_density)
