"""The model contract: everything the coder, the container, the command lines, the evaluation and
the training may ask of a model, in one :class:`typing.Protocol`.

A model is an ``nn.Module`` with :class:`~lvae.coding.codec.CompressionMixin` (which adds
``compress``/``decompress``/``compress_file``/``decompress_file`` on top of this contract) that
provides :class:`CodingModel`; nothing else is read from it. mypy checks that the built-in models
satisfy it (``lvae/models/__init__.py``) and that ``CompressionMixin`` declares it (below);
:func:`require_contract` checks a model built at run time, member by member.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import torch
import torch.nn as nn

from .latent import CodedLatent

__all__ = [
    "CodingModel", "FORWARD_KEYS", "CONTRACT_MEMBERS", "missing_members", "provides_contract", "require_contract",
]

#: What ``model(im, lmb)`` returns, by key (tensors): ``loss`` (scalar, the mean of ``rd``); ``rd``
#: (N: each image's R + λ·D); ``lmb`` (N: the λ of each image); ``bpp`` (scalar, estimated bits per
#: pixel of ``im``); ``mse`` (scalar, in the model's target space); ``psnr`` (scalar, dB, RGB in
#: [0, 1]); ``kl`` (N×L: nats of each latent block); ``x_hat`` (N×3×H×W, before :meth:`postprocess`).
FORWARD_KEYS = ("loss", "rd", "lmb", "bpp", "mse", "psnr", "kl", "x_hat")


class CodingModel(Protocol):
    """What lvae asks of a model (a variable-rate model, or one member of a fixed-λ family).

    ``forward`` returns the statistics of :data:`FORWARD_KEYS`: training minimises ``loss`` (or
    weights ``rd`` by ``lmb``) and logs ``bpp`` and ``psnr``; validation reads ``bpp``, ``loss``
    and ``x_hat``; rate targets read ``kl`` and ``x_hat`` (through :meth:`estimate_rd`). Image
    tensors are N×3×H×W in [0, 1] with sides multiples of :attr:`max_stride`, unless said otherwise.
    """

    # -- what the model is, and the λ it codes at ----------------------------------------------
    @property
    def name(self) -> str | None:
        """The registered name (set by ``lvae.get_model``), recorded in every file."""

    @property
    def max_stride(self) -> int:
        """Image sides must be multiples of this (the coder pads to it; training crops are)."""

    @property
    def lmb_range(self) -> tuple[float, float]:
        """The λ it codes at, (low, high); ``(λ, λ)`` for a member of a fixed-λ family."""

    @property
    def default_lmb(self) -> float:
        """The λ used when none is asked for."""

    @property
    def lambdas(self) -> tuple[float, ...] | None:
        """None for a variable-rate model; a fixed-λ member: the λ it reaches through :meth:`member`."""

    def member(self, lmb: float) -> CodingModel:
        """The model that codes at ``lmb``: itself, or a sibling member of its family."""

    @property
    def legacy_layout_models(self) -> tuple[str, ...]:
        """The model names whose files the authors' layout (``format='legacy'``) holds."""

    @property
    def lossless(self) -> bool:
        """True for a lossless model: its files decode to the 8-bit source exactly (and say so)."""

    @property
    def legacy_layout(self) -> str:
        """Which authors' layout ``format='legacy'`` writes: ``"qarv"`` or ``"pickle"`` (QRes-VAE's)."""

    # -- coding --------------------------------------------------------------------------------
    @property
    def latent_blocks(self) -> Sequence[nn.Module]:
        """The latent blocks in decoder order, one string each in a file (progressive decoding)."""

    def encode_latents(self, im: torch.Tensor, lmb: float) -> tuple[list[list[CodedLatent]], tuple[int, int]]:
        """Entropy-code a batch: per block, one :class:`CodedLatent` per image; and the latent grid."""

    def decompress_latents(
        self, strings: Sequence[Sequence[bytes | CodedLatent]], lmb: float, latent_hw: tuple[int, int],
        batch: int = 1,
    ) -> torch.Tensor:
        """Decode what :meth:`encode_latents` gave (a prefix of the blocks: progressively); x̂ before postprocess."""

    def reconstruct(self, im: torch.Tensor, lmb: float | None = None) -> torch.Tensor:
        """What decoding the file of ``im`` gives, in [0, 1], without entropy coding."""

    def lmb_tensor(self, lmb: float, n: int) -> torch.Tensor:
        """``lmb`` checked against :attr:`lmb_range`, as a float32 tensor of ``n`` values."""

    @staticmethod
    def postprocess(x_hat: torch.Tensor) -> torch.Tensor:
        """The decoder's output → an image in [0, 1]."""

    def estimate_rd(self, x: torch.Tensor, lmb: float) -> tuple[float, torch.Tensor]:
        """Bits and decoded image of coding one image at ``lmb``, estimated without coding (rate targets)."""

    def encoder_precisions(self) -> tuple[str, ...]:
        """The encoder precisions :meth:`set_encoder_precision` accepts here (``"float32"`` always)."""

    def set_encoder_precision(self, precision: str) -> CodingModel:
        """Encode in ``precision`` (``PrecisionUnavailableError`` where it cannot run); returns the model."""

    # -- training and evaluation -----------------------------------------------------------------
    def forward(self, im: torch.Tensor, lmb: float | None = None) -> dict[str, torch.Tensor]:
        """The statistics of :data:`FORWARD_KEYS`; ``lmb`` None: training draws λ (a member: its own)."""

    def __call__(self, im: torch.Tensor, lmb: float | None = None) -> dict[str, torch.Tensor]:
        """:meth:`forward`, through ``nn.Module``'s hooks."""

    # -- what is used of nn.Module ---------------------------------------------------------------
    @property
    def training(self) -> bool:
        """True in training mode (noisy latents), False in evaluation mode (rounded latents)."""

    def train(self, mode: bool = True) -> CodingModel:
        """Training (``mode``) or evaluation mode; returns the model."""

    def eval(self) -> CodingModel:
        """Evaluation mode; returns the model."""

    def requires_grad_(self, requires_grad: bool = True) -> CodingModel:
        """Whether autograd records the parameters; returns the model."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The learned weights (the optimizer's, the EMA's; the device is read from the first)."""

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The learned weights with their state-dict names (weight decay groups, checksums)."""

    def buffers(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        """The non-learned tensors (copied, not averaged, by the EMA)."""

    def state_dict(self) -> dict[str, Any]:
        """The weights as checkpoints hold them."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load weights (strictly: lvae's loaders first check and name every mismatch)."""


def _members() -> tuple[str, ...]:
    own = {n for n in vars(CodingModel) if not n.startswith("_")} | {"__call__"}
    return tuple(sorted(own))


#: The names a model must have: the members of :class:`CodingModel`.
CONTRACT_MEMBERS = _members()


def missing_members(model: object) -> list[str]:
    """The members of :class:`CodingModel` that ``model`` lacks (by name; mypy checks the types)."""
    return [m for m in CONTRACT_MEMBERS if not hasattr(model, m)]


def provides_contract(model: object) -> TypeGuard[CodingModel]:
    """Whether ``model`` is an ``nn.Module`` with every member of :class:`CodingModel`."""
    return isinstance(model, nn.Module) and not missing_members(model)


def require_contract(model: object, name: str) -> CodingModel:
    """``model`` as a :class:`CodingModel`; ``TypeError`` naming what it lacks when it is none.

    ``name``: how to call it in the error (the registered name).
    """
    if provides_contract(model):
        return model
    lacks = ", ".join(missing_members(model)) if isinstance(model, nn.Module) else "nn.Module as its base"
    raise TypeError(
        f"model {name!r} does not provide lvae's model contract (lvae.coding.contract.CodingModel): it lacks {lacks}"
    )


if TYPE_CHECKING:  # mypy: CompressionMixin declares the whole contract (the models inherit it)
    from .codec import CompressionMixin

    _mixin_declares_the_contract: type[CodingModel] = CompressionMixin
