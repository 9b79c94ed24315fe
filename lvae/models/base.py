"""What the built-in networks share around their layers: the input's normalisation, the output's
mapping back to an image, and the check of what a network accepts."""
from __future__ import annotations

import torch

__all__ = ["ImageVAEBase"]


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
