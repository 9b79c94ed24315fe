"""The deterministic "fixed weights" of the reference outputs (tests and benchmarks).

The authors' implementation was run with these weights to produce the reference outputs that
tests/data holds (docs/testing.md), so any QARV configuration can be checked against it without
a download. Rule: the i-th entry of the state dict, counting in state-dict order and skipping
the entropy coders' state (:func:`lvae.coding.gaussian.entropy_coder_keys`), is
``randn(shape, generator seeded 1000 + i) * std`` with
std 0.2 for ``gamma``, ``0.7 / sqrt(fan_in)`` for tensors of 2+ dimensions and 0.02 otherwise.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["fixed_reference_state_dict", "load_fixed_reference_weights"]


def fixed_reference_state_dict(model: nn.Module, seed_base: int = 1000) -> dict[str, torch.Tensor]:
    from ..coding.gaussian import entropy_coder_keys

    coder = entropy_coder_keys(model)
    out: dict[str, torch.Tensor] = {}
    i = 0
    for key, value in model.state_dict().items():
        if key in coder:
            continue
        shape = tuple(value.shape)
        if key.endswith("gamma"):
            std = 0.2
        elif len(shape) >= 2:
            std = 0.7 / math.sqrt(math.prod(shape[1:]))
        else:
            std = 0.02
        g = torch.Generator().manual_seed(seed_base + i)
        out[key] = torch.randn(shape, generator=g) * std
        i += 1
    return out


def load_fixed_reference_weights(model: nn.Module) -> nn.Module:
    model.load_state_dict(fixed_reference_state_dict(model), strict=False)
    return model
