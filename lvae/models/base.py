"""What the built-in networks share around their layers: the input's normalisation, the output's
mapping back to an image, the check of what a network accepts, and the statistics of a forward
pass (the one place of the R–D objective)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, TypeVar

import torch

LOG2_E = math.log2(math.e)

__all__ = ["ImageVAEBase", "ConfigDict"]

_C = TypeVar("_C", bound="ConfigDict")


def _tuples(value: Any) -> Any:
    """JSON's lists back as the tuples a frozen config holds (nested ones too)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class ConfigDict:
    """``from_dict``/``to_dict`` for a network's frozen config dataclass (checkpoints and run
    folders keep it as JSON); ``label`` names the network in the error for an unknown field."""

    label: ClassVar[str] = "model"

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.label} config field(s): {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: _tuples(v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


class ImageVAEBase:
    """Mixed into a network that reads images ``(im + im_shift) · im_scale`` and decodes into the
    target space [-1, 1]; ``max_stride``: image sides must be multiples of it."""

    im_shift: float
    im_scale: float
    max_stride: int

    def preprocess(self, im: torch.Tensor) -> torch.Tensor:
        return (im + self.im_shift) * self.im_scale

    @staticmethod
    def postprocess(x_hat: torch.Tensor) -> torch.Tensor:
        """Decoder output (target space, [-1, 1]) → image in [0, 1]."""
        return torch.clamp(x_hat, -1, 1) * 0.5 + 0.5

    def _check_image(self, im: torch.Tensor) -> None:
        if not torch.is_tensor(im) or im.dim() != 4 or im.shape[1] != 3:
            shape = tuple(im.shape) if torch.is_tensor(im) else type(im).__name__
            raise ValueError(f"expected an N×3×H×W image tensor, got {shape}")
        if not im.is_floating_point():
            raise ValueError(f"expected a float image in [0, 1], got dtype {im.dtype}")
        h, w = im.shape[2:]
        if h % self.max_stride or w % self.max_stride or h == 0 or w == 0:
            raise ValueError(
                f"image sides must be positive multiples of {self.max_stride}, got {h}×{w}; "
                "pad it first (lvae.bitstream pads automatically when compressing)"
            )

    @staticmethod
    def rd_statistics(
        im: torch.Tensor, x_hat: torch.Tensor, kl: torch.Tensor, lmb: torch.Tensor, rate_only: bool = False
    ) -> dict[str, torch.Tensor]:
        """What ``forward`` returns, from the batch ``im`` (N×3×H×W in [0, 1]), the decoder's output
        ``x_hat`` (target space [-1, 1]), the nats ``kl`` (N×L) and each image's λ: ``rd`` = R + λ·D per
        image in nats per dimension (``rate_only``: R alone, a lossless model's objective) and ``loss``
        its mean, ``bpp``, ``mse`` (target space), ``psnr`` (RGB [0, 1], clamped output), ``kl``,
        ``x_hat``, ``lmb``."""
        h, w = im.shape[2:]
        rate = kl.sum(dim=1) / (3 * h * w)  # nats per dimension
        distortion = (x_hat - (im - 0.5) * 2).pow(2).flatten(1).mean(dim=1)
        rd = rate if rate_only else rate + lmb * distortion
        with torch.no_grad():
            mse01 = (ImageVAEBase.postprocess(x_hat) - im).pow(2).flatten(1).mean(dim=1)
            psnr = (-10 * torch.log10(mse01.clamp_min(1e-12))).mean()
        return {"loss": rd.mean(), "bpp": rate.mean() * LOG2_E * 3, "mse": distortion.mean(), "psnr": psnr,
                "kl": kl, "x_hat": x_hat, "lmb": lmb, "rd": rd}
