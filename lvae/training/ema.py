"""Exponential moving average of a model's weights, with the authors' warm-up of the decay."""
from __future__ import annotations

import copy
import math
from typing import Generic, TypeVar

import torch
import torch.nn as nn

from ..coding.contract import CodingModel

__all__ = ["ModelEma"]

M = TypeVar("M", bound=nn.Module | CodingModel)  # any module; the trainer's model as the contract types it


# Not timm's ModelEmaV3 (its warm-up is 1 − (1 + t/γ)^−p, not ours) nor torch's AveragedModel (no warm-up).
class ModelEma(Generic[M]):
    """An eval-mode copy of a model whose weights follow ``ema ← d·ema + (1 − d)·weights``.

    ``d = decay · (1 − exp(−step / warmup))``: early on the average follows the model closely,
    later it averages over about ``1 / (1 − decay)`` steps. ``warmup = 0`` keeps ``d = decay``.
    Buffers (e.g. entropy-coder constants) are copied, not averaged.
    """

    def __init__(self, model: M, decay: float = 0.9999, warmup: float = 10000.0):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        module = copy.deepcopy(model)
        module.eval()
        module.requires_grad_(False)
        self.module: M = module

    def decay_at(self, step: int) -> float:
        if self.warmup <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-step / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module | CodingModel, step: int) -> None:
        """Fold ``model``'s current weights in, after optimizer step number ``step`` (1-based)."""
        weight = 1.0 - self.decay_at(step)
        ema_params: list[torch.Tensor] = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("the EMA and the model have different parameter lists")
        torch._foreach_lerp_(ema_params, params, weight)  # one fused kernel per dtype/device group
        for eb, b in zip(self.module.buffers(), model.buffers()):
            if eb.shape == b.shape:
                eb.copy_(b)
            else:
                eb.data = b.detach().clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(sd, strict=True)
