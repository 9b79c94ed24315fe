"""Image ↔ bytes ↔ file: padding, containers, rate targets, files on disk.

:class:`CompressionMixin` adds ``compress``/``decompress``/``compress_file``/``decompress_file``
to a model that provides ``encode_latents``/``decompress_latents``, ``latent_blocks``,
``max_stride``, ``lmb_range``, ``postprocess`` and ``reconstruct`` (see :class:`lvae.models.QARV`).
Nothing here knows the network's insides.

Rate targets (``target_bytes``, ``target_bpp``, ``target_psnr``) are met by bisection over ln λ:
2 encodes (or forward passes, for PSNR) at the ends of the λ range, then at most
``SEARCH_STEPS`` (= 12) more, stopping early once the λ bracket is narrower than 0.1 %.

Colour types. A 1×1×H×W (grayscale) image is coded as its three equal channels and recorded as
``gray`` in the container (version 2); decoding such a file gives a 1×1×H×W image, the mean of
the decoded R, G and B (:func:`delivered_image`). The authors' layout records no colour type: a
gray image coded in it decodes as RGB.

PSNR, wherever this module reports or targets it, is that of what a user gets (:func:`delivered_psnr`):
the decoded image in the file's colour type, rounded to 8 bits, against the source.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import BitstreamError
from ..io import atomic_write_bytes, check_writable, read_image
from ..metrics import mse_to_psnr
from . import container as bitstream
from .gaussian import entropy_coder_keys
from .latent import CodedLatent

__all__ = [
    "CompressResult", "CompressionMixin", "pad_image", "weights_fingerprint", "delivered_image", "delivered_psnr",
    "SEARCH_STEPS", "DEFAULT_MAX_PIXELS",
]

SEARCH_STEPS = 12
DEFAULT_MAX_PIXELS = 2**28  # ≈ 268 megapixels: refuse to decode headers that claim more
FORMATS = ("lvae", "legacy")


@dataclass(frozen=True)
class CompressResult:
    """What one compression produced (``path`` is None for in-memory compression)."""

    path: Path | None
    num_bytes: int
    bpp: float  # file bits / original pixels
    psnr: float  # dB, of the 8-bit image the file decodes to, in its colour type (NaN if not measured)
    lmb: float
    height: int
    width: int
    encodes: int  # real encodes spent (1 without a target)
    colour: str = "rgb"  # the colour type the file decodes to: "rgb", or "gray" (recorded for gray sources)
    alpha_dropped: bool = False  # compress_file: the source's transparency was dropped (not fully opaque)


def pad_image(im: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad right and bottom by edge replication to multiples of ``stride``."""
    h, w = im.shape[2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return im
    return F.pad(im, (0, pw, 0, ph), mode="replicate")


def delivered_image(decoded: torch.Tensor, colour: str) -> torch.Tensor:
    """The image a file of colour type ``colour`` gives back, from the model's RGB decode:
    itself for ``rgb``; for ``gray``, the mean of R, G and B (1×1×H×W)."""
    if colour == "gray":
        return decoded.mean(dim=1, keepdim=True)
    return decoded


def delivered_psnr(decoded: torch.Tensor, source: torch.Tensor) -> float:
    """PSNR (dB) of what a user gets: ``decoded`` (already in its colour type) rounded to 8 bits,
    against ``source`` (1×C×H×W in [0, 1]; a gray source against an RGB decode counts in all
    three channels). The one measurement behind ``CompressResult.psnr`` and ``target_psnr``."""
    # rounded exactly as lvae.io.tensor_to_image rounds what it writes (float32), then compared in float64
    q = torch.round(decoded.detach().float().clamp(0, 1) * 255).double() / 255
    ref = source.detach().double().to(q.device)
    if ref.shape[1] != q.shape[1]:
        ref = ref.expand(-1, q.shape[1], -1, -1) if ref.shape[1] == 1 else ref
        q = q.expand(-1, ref.shape[1], -1, -1) if q.shape[1] == 1 else q
    return mse_to_psnr(float(((q - ref) ** 2).mean()))


def _check_input(im: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(im) or im.dim() != 4 or im.shape[0] != 1 or im.shape[1] not in (1, 3):
        shape = tuple(im.shape) if torch.is_tensor(im) else type(im).__name__
        raise ValueError(f"expected one image as a 1×3×H×W (RGB) or 1×1×H×W (gray) tensor, got {shape}")
    if im.shape[2] < 1 or im.shape[3] < 1:
        raise ValueError(f"image is empty ({im.shape[2]}×{im.shape[3]})")
    if not im.is_floating_point():
        raise ValueError(f"expected a float image in [0, 1], got dtype {im.dtype}")
    if not bool(torch.isfinite(im).all()) or im.min() < 0 or im.max() > 1:
        raise ValueError("image values must be finite and within [0, 1]")
    return im


def weights_fingerprint(model: torch.nn.Module) -> bytes:
    """First 8 bytes of a SHA-256 over the model's parameters and persistent buffers.

    Canonical order: state-dict keys sorted; for each, the key, dtype, shape and the values as
    little-endian float32 (other dtypes as they are). The entropy coders' state
    (:func:`~lvae.coding.gaussian.entropy_coder_keys`: derived tables, filled or empty, and
    constant bounds) is left out: it is the coder's, not the weights'.
    Cached on the model until a parameter changes (torch's in-place version counters).
    """
    # NOTE: the cache key walks the tensors only; state_dict() (twice, with the coder's keys) cost
    # ~2 % of a decode when it was rebuilt on every call.
    key = tuple((t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers()))
    cached = model.__dict__.get("_lvae_fingerprint")
    if cached is not None and cached[0] == key:
        return cached[1]
    sd = model.state_dict()
    coder = entropy_coder_keys(model, sd)
    h = hashlib.sha256()
    for k in sorted(sd):
        if k in coder:
            continue
        v = sd[k]
        if v.is_floating_point() and v.dtype != torch.float32:
            v = v.float()
        a = v.cpu().contiguous().numpy()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        # the array's memory itself (no copy) unless it is big-endian
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).reshape(-1).view("u1"))
    digest = h.digest()[: bitstream.FINGERPRINT_BYTES]
    model.__dict__["_lvae_fingerprint"] = (key, digest)  # a plain attribute (not a buffer)
    return digest


if TYPE_CHECKING:  # the mixin is always combined with nn.Module (for the type checker: it is one)
    from torch.nn import Module as _ModuleBase
else:
    _ModuleBase = object


class CompressionMixin(_ModuleBase):
    """Adds byte- and file-level coding to a model with ``encode_latents``/``decompress_latents``.

    The model provides what is declared below (QARV does) and nothing else is read from it.
    """

    if TYPE_CHECKING:
        name: str | None
        max_stride: int
        lmb_range: tuple[float, float]
        default_lmb: float

        @property
        def latent_blocks(self) -> Sequence[torch.nn.Module]: ...

        def encode_latents(self, im: torch.Tensor, lmb: float) -> tuple[list[list[CodedLatent]], tuple[int, int]]:
            ...

        def decompress_latents(
            self, strings: Sequence[Sequence[bytes | CodedLatent]], lmb: float, latent_hw: tuple[int, int],
            batch: int = 1,
        ) -> torch.Tensor:
            ...

        def reconstruct(self, im: torch.Tensor, lmb: float | None = None) -> torch.Tensor:
            ...

        def lmb_tensor(self, lmb: float, n: int) -> torch.Tensor:
            ...

        @staticmethod
        def postprocess(x_hat: torch.Tensor) -> torch.Tensor:
            ...

    def set_encoder_precision(self, precision: str) -> CompressionMixin:
        """The arithmetic of the computations only an encoder does. A model that can encode in
        reduced precision overrides this (QARV: ``"bfloat16"``); by default only ``"float32"``."""
        if precision != "float32":
            raise ValueError(f"this model has only a float32 encoder (asked for {precision!r})")
        return self

    # -- one real encode ---------------------------------------------------------------------
    def _encode(self, im: torch.Tensor, lmb: float, format: str, colour: str = "rgb") -> bytes:
        h, w = im.shape[2:]
        x = pad_image(im, self.max_stride)
        per_block, _ = self.encode_latents(x, lmb)
        coded = [c[0] for c in per_block]  # the batch's one image
        strings = [c.string for c in coded]
        if format == "legacy":
            return bitstream.pack_legacy(lmb, h, w, strings)
        if not self.name:
            raise ValueError("the model has no registered name to record in the file; build it with lvae.get_model()")
        checks = [c.check for c in coded if c.check is not None]
        if len(checks) != len(coded):
            raise RuntimeError("the model's encode_latents gave a string without its index-map check")
        return bitstream.pack(
            self.name, lmb, h, w, strings, checks=checks, fingerprint=weights_fingerprint(self), colour=colour
        )

    @torch.no_grad()
    def _reconstruct_padded(self, im: torch.Tensor, lmb: float) -> torch.Tensor:
        h, w = im.shape[2:]
        return self.reconstruct(pad_image(im, self.max_stride), lmb)[:, :, :h, :w]

    def _lmb_value(self, lmb: float) -> float:
        """Validate λ and round it to float32, the precision it is stored with."""
        value = float(self.lmb_tensor(lmb, 1)[0])
        lo, hi = self.lmb_range
        return min(max(value, lo), hi)

    # -- the public API ----------------------------------------------------------------------
    @torch.no_grad()
    def compress_with_result(
        self,
        im: torch.Tensor,
        lmb: float | None = None,
        *,
        target_bpp: float | None = None,
        target_bytes: int | None = None,
        target_psnr: float | None = None,
        format: str = "lvae",
        compute_psnr: bool = True,
    ) -> tuple[bytes, CompressResult]:
        """Like :meth:`compress`, also returning a :class:`CompressResult`.

        With ``compute_psnr`` the file is decoded once to measure the PSNR of what it gives back
        (8-bit, in its colour type: :func:`delivered_psnr`).
        """
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; choose one of {FORMATS}")
        chosen = [k for k, v in (("lmb", lmb), ("target_bpp", target_bpp), ("target_bytes", target_bytes),
                                 ("target_psnr", target_psnr)) if v is not None]
        if len(chosen) > 1:
            raise ValueError(
                f"give at most one of lmb, target_bpp, target_bytes, target_psnr (got {', '.join(chosen)})"
            )
        source = _check_input(im).to(next(self.parameters()).device)
        h, w = source.shape[2:]
        # A gray source is coded as three equal channels; only the lvae container records "gray".
        colour = "gray" if source.shape[1] == 1 and format == "lvae" else "rgb"
        im = source if source.shape[1] == 3 else source.expand(-1, 3, -1, -1).contiguous()
        encodes = 0

        def encode(value: float) -> bytes:
            nonlocal encodes
            encodes += 1
            return self._encode(im, value, format, colour)

        if target_bpp is not None or target_bytes is not None:
            if target_bpp is not None:
                if not (math.isfinite(target_bpp) and target_bpp > 0):
                    raise ValueError(f"target_bpp must be a positive number, got {target_bpp}")
                budget = int(math.floor(target_bpp * h * w / 8))
            elif target_bytes is not None:
                if isinstance(target_bytes, bool) or int(target_bytes) != target_bytes or target_bytes <= 0:
                    raise ValueError(f"target_bytes must be a positive integer, got {target_bytes}")
                budget = int(target_bytes)
            if target_bpp is not None:
                def unit(n: int) -> str:
                    return f"{8 * n / (h * w):.4g} bpp ({n} bytes)"
                asked = f"{target_bpp:g} bpp ({budget} bytes)"
            else:
                def unit(n: int) -> str:
                    return f"{n} bytes"
                asked = f"{budget} bytes"
            value, data = self._search_budget(encode, budget, unit, asked)
        elif target_psnr is not None:
            if not math.isfinite(target_psnr):
                raise ValueError(f"target_psnr must be a finite number, got {target_psnr}")
            value = self._search_psnr(im, source, colour, float(target_psnr))
            data = encode(value)
        else:
            value = self._lmb_value(self.default_lmb if lmb is None else lmb)
            data = encode(value)
        quality = delivered_psnr(self.decompress(data), source) if compute_psnr else float("nan")
        if target_psnr is not None and quality < target_psnr:  # the search measured reconstruct(): the same image
            raise RuntimeError(f"internal error: the file decodes to {quality:.4f} dB, below the {target_psnr:g} dB "
                               "its λ reached in the search; please report it")
        result = CompressResult(None, len(data), 8 * len(data) / (h * w), quality, value, h, w, encodes, colour)
        return data, result

    def compress(
        self,
        im: torch.Tensor,
        lmb: float | None = None,
        *,
        target_bpp: float | None = None,
        target_bytes: int | None = None,
        target_psnr: float | None = None,
        format: str = "lvae",
    ) -> bytes:
        """Compress one image (1×3×H×W RGB or 1×1×H×W gray, in [0, 1], any size ≥ 1×1) into a
        complete file's bytes. A gray image is recorded as such and decodes to a gray image.

        Give at most one of: ``lmb`` (default :attr:`default_lmb`); ``target_bytes`` / ``target_bpp``
        (the highest quality whose real file fits the budget; never over it); ``target_psnr`` (the
        smallest file whose decoded image, rounded to 8 bits, reaches that PSNR). An impossible
        target raises ValueError. ``format='legacy'`` writes the QARV authors' layout instead of
        lvae's container.
        """
        return self.compress_with_result(
            im, lmb, target_bpp=target_bpp, target_bytes=target_bytes, target_psnr=target_psnr, format=format,
            compute_psnr=False,
        )[0]

    def _search_budget(
        self, encode: Callable[[float], bytes], budget: int, unit: Callable[[int], str], asked: str
    ) -> tuple[float, bytes]:
        lo, hi = (self._lmb_value(v) for v in self.lmb_range)
        data_lo = encode(lo)
        if len(data_lo) > budget:
            raise ValueError(
                f"impossible target: even the lowest rate (λ={lo:g}) needs {unit(len(data_lo))}, "
                f"over the target of {asked}"
            )
        data_hi = encode(hi)
        if len(data_hi) <= budget:
            return hi, data_hi
        best = (lo, data_lo)
        a, b = math.log(lo), math.log(hi)  # fits at a, does not fit at b
        for _ in range(SEARCH_STEPS):
            if b - a < 1e-3:
                break
            mid = self._lmb_value(math.exp((a + b) / 2))
            data = encode(mid)
            if len(data) <= budget:
                a = math.log(mid)
                if mid > best[0]:
                    best = (mid, data)
            else:
                b = math.log(mid)
        return best

    def _search_psnr(self, im: torch.Tensor, source: torch.Tensor, colour: str, target: float) -> float:
        """The smallest λ whose decoded image, as delivered (8-bit, in ``colour``), reaches ``target``
        dB against ``source``; ``im`` is what the model codes (1×3×H×W)."""
        lo, hi = (self._lmb_value(v) for v in self.lmb_range)

        def quality(value: float) -> float:
            return delivered_psnr(delivered_image(self._reconstruct_padded(im, value), colour), source)

        q_hi = quality(hi)
        if q_hi < target:
            raise ValueError(
                f"impossible target: the highest quality of this model (λ={hi:g}) gives {q_hi:.2f} dB, "
                f"below {target:g} dB"
            )
        if quality(lo) >= target:
            return lo
        a, b = math.log(lo), math.log(hi)  # below target at a, reaches it at b
        best = hi
        for _ in range(SEARCH_STEPS):
            if b - a < 1e-3:
                break
            mid = self._lmb_value(math.exp((a + b) / 2))
            if quality(mid) >= target:
                b = math.log(mid)
                best = min(best, mid)
            else:
                a = math.log(mid)
        return best

    @torch.no_grad()
    def decompress(
        self,
        data: bytes,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        *,
        num_latents: int | None = None,
        ignore_weights_mismatch: bool = False,
    ) -> torch.Tensor:
        """Decode a file's bytes (lvae container or the authors' layout) to 1×3×H×W in [0, 1]
        (1×1×H×W for a file recorded as grayscale: the mean of the decoded R, G and B).

        ``num_latents=k`` decodes only the first ``k`` latent strings (0 ≤ k ≤ the strings the
        file holds); the deeper latents take their prior mean, a coarser image. The default
        decodes every string the file holds (all of them, unless it was cut by
        :func:`lvae.bitstream.truncate`).

        Raises :class:`lvae.errors.BitstreamError` for a damaged, foreign or other-model file, for
        a file made with other weights (unless ``ignore_weights_mismatch``), and for a header
        claiming more than ``max_pixels`` pixels; ``ValueError`` for a ``num_latents`` the file
        cannot give.
        """
        header, strings = bitstream.parse(data)
        if header.model_name is not None and header.model_name != self.name:
            raise BitstreamError(
                f"the file was made by model {header.model_name!r}, not {self.name!r}; "
                f"decode it with lvae.get_model({header.model_name!r}, pretrained=...)"
            )
        if header.fingerprint is not None and not ignore_weights_mismatch:
            ours = weights_fingerprint(self)
            if ours != header.fingerprint:
                raise BitstreamError(
                    f"the file was made with other weights of {self.name!r} (fingerprint "
                    f"{header.fingerprint.hex()}, these weights: {ours.hex()}); decode it with the weights "
                    "that made it (ignore_weights_mismatch=True decodes anyway, usually to a wrong image)"
                )
        n_blocks = len(self.latent_blocks)
        total = header.num_latents if header.num_latents is not None else len(strings)
        if total != n_blocks:
            raise BitstreamError(f"the file holds strings of {total} latent blocks; this model has {n_blocks}")
        if num_latents is not None:
            if isinstance(num_latents, bool) or int(num_latents) != num_latents or not 0 <= num_latents <= len(strings):
                raise ValueError(
                    f"num_latents must be an integer from 0 to {len(strings)} (the strings this file holds), "
                    f"got {num_latents!r}"
                )
            strings = strings[: int(num_latents)]
        lo, hi = self.lmb_range
        if not lo * (1 - 1e-6) <= header.lmb <= hi * (1 + 1e-6):
            raise BitstreamError(f"λ={header.lmb:g} in the file is outside this model's range [{lo:g}, {hi:g}]")
        if header.height * header.width > max_pixels:
            raise BitstreamError(
                f"the header claims a {header.height}×{header.width} image, more than max_pixels={max_pixels}"
            )
        checks = header.checks[: len(strings)] if header.checks is not None else [None] * len(strings)
        coded = [[CodedLatent(s, c)] for s, c in zip(strings, checks)]
        s = self.max_stride
        grid = (-(-header.height // s), -(-header.width // s))
        try:
            x_hat = self.decompress_latents(coded, header.lmb, grid)
        except (ValueError, RuntimeError, IndexError, OverflowError) as exc:
            if isinstance(exc, BitstreamError):
                raise
            raise BitstreamError(f"the latent strings cannot be decoded ({exc})") from None
        im = self.postprocess(x_hat)[:, :, : header.height, : header.width]
        if not bool(torch.isfinite(im).all()):
            raise BitstreamError("the file decodes to non-finite values: it is corrupted")
        return delivered_image(im, header.colour)

    def compress_file(
        self,
        image_path: str | os.PathLike,
        out_path: str | os.PathLike,
        lmb: float | None = None,
        *,
        target_bpp: float | None = None,
        target_bytes: int | None = None,
        target_psnr: float | None = None,
        format: str = "lvae",
    ) -> CompressResult:
        """Compress an image file to ``out_path`` (written atomically; the input is never overwritten).

        The image is read by :func:`lvae.io.read_image`: a grayscale source is recorded as gray
        (``result.colour``) and decodes to a gray image; ``result.alpha_dropped`` says that
        transparency was lost. ``out_path``'s folder is checked for writing before any coding.
        """
        image_path, out_path = Path(image_path), Path(out_path)
        if out_path.exists() and image_path.exists() and out_path.resolve() == image_path.resolve():
            raise ValueError(f"refusing to overwrite the input image {image_path} with its compressed file")
        check_writable(out_path)
        loaded = read_image(image_path)
        data, result = self.compress_with_result(
            loaded.tensor, lmb, target_bpp=target_bpp, target_bytes=target_bytes, target_psnr=target_psnr,
            format=format,
        )
        atomic_write_bytes(out_path, data)
        return replace(result, path=out_path, alpha_dropped=loaded.alpha_dropped)

    def decompress_file(self, path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        """Decode a compressed file (either layout) to a 1×3×H×W tensor in [0, 1] (1×1×H×W for a
        grayscale source).

        Save it with :func:`lvae.io.save_image` (PNG unless its suffix says otherwise; atomic).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return self.decompress(path.read_bytes(), max_pixels=max_pixels)
