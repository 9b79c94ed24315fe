"""Image ↔ bytes ↔ file: padding, containers, rate targets, files on disk.

:class:`CompressionMixin` adds ``compress``/``decompress``/``compress_file``/``decompress_file``
to a model that provides ``encode_latents``/``decompress_latents``, ``latent_blocks``,
``max_stride``, ``lmb_range``, ``postprocess`` and ``reconstruct`` (see :class:`lvae.models.QARV`).
Nothing here knows the network's insides.

Rate targets (``target_bytes``, ``target_bpp``, ``target_psnr``) search λ (:func:`find_crossing`).
File size and PSNR are smooth and increasing in ln λ, so each step interpolates (secants) where
bisection would halve, aiming just past the crossing so that the bracket closes in one or two
more steps; it bisects when interpolation stops paying. The model's own estimate
(:meth:`CompressionMixin.estimate_rd`: one forward pass, no entropy coding) places λ first:

* A PSNR target needs nothing else, since the estimate's image is the decoded one: λ is
  bracketed to ``LMB_TOLERANCE`` (0.5 %) on forward passes, coded once, and the decoded file's
  PSNR measured (a file that falls short, e.g. from a bfloat16 encoder, continues the search on
  real files).
* A byte budget brackets the estimated size to a few %, then searches real encodes from there,
  until a file lies within ``BUDGET_TOLERANCE`` (0.5 %) under the budget or λ is bracketed to
  ``LMB_TOLERANCE``. Only a real file that fits is ever returned.

A phase takes at most ``MAX_PROBES`` steps; a bracket, at most 2 more than bisection would.

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
from ..metrics import mse_to_psnr, rounded_squared_error
from ..utils.text import format_lambdas
from . import container as bitstream
from .container import LEGACY_MODEL
from .determinism import coding_arithmetic
from .gaussian import entropy_coder_keys
from .latent import CodedLatent

__all__ = [
    "CompressResult", "CompressionMixin", "pad_image", "weights_fingerprint", "delivered_image", "delivered_psnr",
    "LMB_TOLERANCE", "BUDGET_TOLERANCE", "MAX_PROBES", "DEFAULT_MAX_PIXELS",
]

LMB_TOLERANCE = 0.005  # a target search stops once its ln-λ bracket is this narrow (0.5 % in λ)
BUDGET_TOLERANCE = 0.005  # a byte/bpp search also stops at a file this close under the budget (0.5 %)
MAX_PROBES = 20  # the most steps (forward passes, or encodes) of one phase of a search
_OUTWARD_STEPS = 2  # extrapolations before each outward step must double the last one
DEFAULT_MAX_PIXELS = 2**28  # ≈ 268 megapixels: refuse to decode headers that claim more
FORMATS = ("lvae", "legacy")
MEMBERS_KEPT = 2  # sibling members of a fixed-λ family kept loaded (each a whole network)


@dataclass
class _FamilyLink:
    """A member's way to its siblings: the family's λ, a loader, and the members loaded so far."""

    lambdas: tuple[float, ...]
    load: Callable[[float], CompressionMixin]
    cache: dict[float, CompressionMixin]


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
    forward_passes: int = 0  # the model's estimates spent by a target search (estimate_rd: no entropy coding)


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
    # Rounded exactly as lvae.io.tensor_to_image rounds what it writes (float32), then compared in float64.
    q, ref = decoded.detach(), source.detach().to(decoded.device)
    if ref.shape[1] != q.shape[1]:
        ref = ref.expand(-1, q.shape[1], -1, -1) if ref.shape[1] == 1 else ref
        q = q.expand(-1, ref.shape[1], -1, -1) if q.shape[1] == 1 else q
    if q.shape != ref.shape:
        raise ValueError(f"the decoded image is {tuple(q.shape)}, the source {tuple(ref.shape)}")
    if q.numel() == 0:
        return math.nan
    if q.device.type == "cpu" and q.shape[0] == 1:
        # in bands, without whole-image float64 copies (docs/speed.md, "Large photos")
        return mse_to_psnr(rounded_squared_error(q, ref) / q.numel())
    levels = torch.round(q.float().clamp(0, 1) * 255).double() / 255
    return mse_to_psnr(float(((levels - ref.double()) ** 2).mean()))


@dataclass(frozen=True)
class Probe:
    """One step of a λ search: the (float32) ``lmb`` used, the ``value`` interpolated (ln bytes,
    or dB), and whether it is ``high``: past the goal (over the budget, or reaching the PSNR).
    ``data``: the file, when the step was a real encode."""

    lmb: float
    value: float
    high: bool
    data: bytes | None = None

    @property
    def t(self) -> float:
        return math.log(self.lmb)


def _secant_root(p: Probe, q: Probe, goal: float) -> float | None:
    """Where the line through ``p`` and ``q`` meets ``goal``; None unless it rises."""
    if q.t == p.t or not (q.value - p.value) / (q.t - p.t) > 0:
        return None
    x = p.t + (goal - p.value) * (q.t - p.t) / (q.value - p.value)
    return x if math.isfinite(x) else None


def find_crossing(
    probe: Callable[[float], Probe],
    lo: float,
    hi: float,
    start: float,
    slope: float,
    goal: float,
    tol: float,
    *,
    done: Callable[[Probe], bool] | None = None,
    known: Sequence[Probe] = (),
    max_probes: int = MAX_PROBES,
) -> list[Probe]:
    """Probe a quantity that grows with t = ln λ (file size, PSNR) until its crossing of ``goal``
    is known: a low and a high probe at most ``tol`` apart, or ``done(probe)``, or the crossing is
    past an end of [``lo``, ``hi``] (that end probed), or ``max_probes`` probes. Returns the probes
    in order, after the ``known`` ones it was given; ``probe(t)`` codes at λ = e^t (it may round
    λ, e.g. to float32: the probe says which).

    Steps: from ``start``, outward along the secant of the two probes nearest the crossing
    (``slope``, the expected d value / d t, while there is one probe) until the crossing is
    bracketed, each step at least twice the last after ``_OUTWARD_STEPS``. Then the secant of the
    last two probes, or regula falsi between the bracket's ends (the first that falls inside the
    bracket), aimed ``tol``/2 past the crossing away from the nearer end, so that the probe lands
    across it and leaves a short bracket; bisection once the bracket is under 2 ``tol`` (closing
    it), or when interpolation has used up its 2 spare steps: a bracket never takes more than 2
    probes beyond what bisection would need.
    """
    probes: list[Probe] = list(known)
    low: Probe | None = None  # the highest-λ probe below the goal
    high: Probe | None = None  # the lowest-λ probe at or past it
    for p in probes:
        if p.high and (high is None or p.t < high.t):
            high = p
        elif not p.high and (low is None or p.t > low.t):
            low = p
    deadline: int | None = None  # once bracketed: the probe count by which it closes
    outward = 0  # steps taken outward, the last of length ``reach``
    reach = 0.0
    t = min(max(start, lo), hi)
    for _ in range(max_probes):
        p = probe(t)
        probes.append(p)
        if p.high:
            if high is None or p.t < high.t:
                high = p
        elif low is None or p.t > low.t:
            low = p
        if done is not None and done(p):
            break
        if low is not None and high is not None:
            width = high.t - low.t
            if width <= tol:
                break
            halvings = math.ceil(math.log2(width / tol))  # bisection's probes from here
            if deadline is None:
                deadline = len(probes) + halvings + 2
            if halvings <= 1 or halvings >= deadline - len(probes):
                t = (low.t + high.t) / 2
                continue
            x = _secant_root(probes[-2], probes[-1], goal)
            if x is None or not low.t < x < high.t:
                x = _secant_root(low, high, goal)
            if x is None or not low.t < x < high.t:
                x = (low.t + high.t) / 2
            t = x + tol / 2 if x - low.t <= high.t - x else x - tol / 2
            t = min(max(t, low.t + tol / 4), high.t - tol / 4)
            continue
        side = sorted((q for q in probes if q.high == p.high), key=lambda q: q.t)
        least = max(tol, 2 * reach if outward >= _OUTWARD_STEPS else 0.0)  # doubling after _OUTWARD_STEPS
        if high is None:  # every probe is below the goal: the crossing is above
            assert low is not None
            if low.t >= hi:
                break
            x = _secant_root(side[-2], side[-1], goal) if len(side) >= 2 else None
            x = low.t + (goal - low.value) / slope if x is None else x
            t = min(max(x + tol / 2, low.t + least), hi)
            reach = t - low.t
        else:  # every probe is at or past the goal: the crossing is below
            if high.t <= lo:
                break
            x = _secant_root(side[0], side[1], goal) if len(side) >= 2 else None
            x = high.t - (high.value - goal) / slope if x is None else x
            t = max(min(x - tol / 2, high.t - least), lo)
            reach = high.t - t
        outward += 1
    return probes


# The expected growth with ln λ before a search has two points of its own: ln(file size) grows by
# 0.1-0.5 per unit of ln λ on photos (qarv_small and qarv_base), the PSNR by 0.3-1.5 dB.
_RATE_SLOPE = 0.3
_PSNR_SLOPE = 1.0
# What the range coder adds to the estimate, per string (qarv_small: 6-12 bytes); real encodes correct it.
_CODER_BYTES_PER_STRING = 8
_GUIDE_TOLERANCE = 0.03  # the estimate's crossing is bracketed to 3 % in λ ...
_GUIDE_WINDOW = 0.01  # ... unless an estimate falls within 1 % of the aim


def _crossing_of(probes: Sequence[Probe], goal: float) -> float:
    """Where ``probes`` place the crossing of ``goal``: interpolated between the nearest low and high
    probes, else the probe nearest to it (an end of the range, when the crossing is past it)."""
    lows = [p for p in probes if not p.high]
    highs = [p for p in probes if p.high]
    low = max(lows, key=lambda p: p.t) if lows else None
    high = min(highs, key=lambda p: p.t) if highs else None
    if low is None or high is None:
        return (low or high or probes[-1]).t
    x = _secant_root(low, high, goal)
    return x if x is not None and low.t <= x <= high.t else (low.t + high.t) / 2


def _local_slope(probes: Sequence[Probe], t: float, default: float) -> float:
    """The slope of the two probes nearest to ``t`` (``default`` unless they rise)."""
    near = sorted(probes, key=lambda p: abs(p.t - t))
    for q in near[1:]:
        if q.t != near[0].t:
            slope = (q.value - near[0].value) / (q.t - near[0].t)
            return slope if math.isfinite(slope) and slope > 0 else default
    return default


class _Steps:
    """The steps of compressing one image, counted and reported: real encodes, the model's
    estimates (forward passes), and decodes measuring the delivered PSNR."""

    def __init__(self, model: CompressionMixin, im: torch.Tensor, source: torch.Tensor, colour: str, format: str,
                 progress: Callable[[str], None] | None):
        self.model, self.im, self.source, self.colour, self.format = model, im, source, colour, format
        self.progress = progress
        self.encodes = self.forwards = 0
        self._padded: torch.Tensor | None = None

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    def encode(self, lmb: float) -> bytes:
        self.encodes += 1
        data = self.model.member(lmb)._encode(self.im, lmb, self.format, self.colour)
        self.say(f"λ {lmb:.4g}: {len(data)} bytes")
        return data

    def estimate(self, lmb: float) -> tuple[float, torch.Tensor]:
        """Estimated bits, and the decoded image as delivered (the source's size and colour type)."""
        if self._padded is None:
            self._padded = pad_image(self.im, self.model.max_stride)
        self.forwards += 1
        bits, x_hat = self.model.member(lmb).estimate_rd(self._padded, lmb)
        h, w = self.im.shape[2:]
        return bits, delivered_image(x_hat[:, :, :h, :w], self.colour)

    def measure(self, data: bytes, lmb: float) -> float:
        """The PSNR the file ``data``, coded at ``lmb``, delivers (decoded)."""
        quality = delivered_psnr(self.model.member(lmb).decompress(data), self.source)
        self.say(f"decoded: {quality:.2f} dB")
        return quality

    def overhead(self) -> int:
        """The container's bytes around the latent strings (with empty strings: the estimate adds theirs)."""
        h, w = self.im.shape[2:]
        empty = [b""] * len(self.model.latent_blocks)
        if self.format == "legacy":
            return len(self.model._pack_legacy(1.0, h, w, empty)) + _CODER_BYTES_PER_STRING * len(empty)
        fingerprint = weights_fingerprint(self.model)
        container = len(bitstream.pack(self.model.name or "?", 1.0, h, w, empty, checks=[0] * len(empty),
                                       fingerprint=fingerprint, colour=self.colour))
        return container + _CODER_BYTES_PER_STRING * len(empty)


def _check_input(im: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(im) or im.dim() != 4 or im.shape[0] != 1 or im.shape[1] not in (1, 3):
        shape = tuple(im.shape) if torch.is_tensor(im) else type(im).__name__
        raise ValueError(f"expected one image as a 1×3×H×W (RGB) or 1×1×H×W (gray) tensor, got {shape}")
    if im.shape[2] < 1 or im.shape[3] < 1:
        raise ValueError(f"image is empty ({im.shape[2]}×{im.shape[3]})")
    if not im.is_floating_point():
        raise ValueError(f"expected a float image in [0, 1], got dtype {im.dtype}")
    # One pass; a NaN makes both NaN and fails the test, as ±inf does. Over the memory as it lies:
    # torch reduces a channels-last view (as read_image makes) over ten times slower than a flat one.
    if im.is_contiguous():
        flat = im.reshape(-1)
    elif im.is_contiguous(memory_format=torch.channels_last):
        flat = im.permute(0, 2, 3, 1).reshape(-1)  # a view
    else:
        flat = im
    lo, hi = torch.aminmax(flat)
    if not (bool(lo >= 0) and bool(hi <= 1)):
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

    #: The models whose files the QARV authors' layout (``format='legacy'``) holds. It records no
    #: model name and lvae reads it back as :data:`LEGACY_MODEL`, so every other model refuses to
    #: write it; a model family with an authors' layout of its own overrides this.
    legacy_layout_models: tuple[str, ...] = (LEGACY_MODEL,)
    #: Which authors' layout ``format='legacy'`` means for this model: ``"qarv"`` (the QARV binary
    #: layout) or ``"pickle"`` (QRes-VAE's pickled list, read without unpickling: :mod:`.pickled`).
    legacy_layout: str = "qarv"
    #: True for a lossless model: its files decode to the 8-bit source bit for bit, and say so.
    lossless: bool = False

    # -- operating points: one continuous range, or fixed-λ members ----------------------------
    @property
    def lambdas(self) -> tuple[float, ...] | None:
        """None: the model codes at any λ in :attr:`lmb_range`. Otherwise the λ it codes at, each by
        a network of its own (a fixed-λ family's members, :meth:`member`): the family's published
        set for a member loaded with ``pretrained=True``, else its own λ alone."""
        link = self.__dict__.get("_lvae_family")
        if link is not None:
            return link.lambdas
        lo, hi = self.lmb_range
        return (float(lo),) if lo == hi else None

    def link_family(self, lambdas: Sequence[float], load: Callable[[float], CompressionMixin]) -> None:
        """Called by the registry for a member with published weights: ``load(λ)`` builds the
        member of λ (one of ``lambdas``), so that this model codes and decodes at all of them."""
        self.__dict__["_lvae_family"] = _FamilyLink(tuple(float(v) for v in lambdas), load, {})

    def member(self, lmb: float) -> CompressionMixin:
        """The model that codes at ``lmb``: this one for a variable-rate model or this member's own
        λ; a sibling member otherwise, loaded on first use (kept for the next call: the last
        :data:`MEMBERS_KEPT`), on this model's device and in its mode. A λ that is not a member
        raises ValueError listing the members."""
        lambdas = self.lambdas
        if lambdas is None:
            return self
        value = float(lmb)
        if abs(value - self.default_lmb) <= 1e-6 * self.default_lmb:
            return self
        link = self.__dict__.get("_lvae_family")
        match = [v for v in lambdas if abs(value - v) <= 1e-6 * v]
        members = format_lambdas(lambdas)
        if not match or link is None:
            alone = "" if link is not None else (
                f" (this network was not loaded with pretrained=True, so it has no siblings: load the member of "
                f"λ={value:g} with lvae.get_model({self.name!r}, lmb={value:g}, pretrained=True))"
            )
            raise ValueError(f"{self.name or 'this model'} codes at λ ∈ {members}, not λ={value:g}{alone}")
        key = match[0]
        cached = link.cache.pop(key, None)
        if cached is None:
            cached = link.load(key)
            cached.__dict__["_lvae_family"] = link  # the siblings share one cache
        link.cache[key] = cached  # most recent last
        while len(link.cache) > MEMBERS_KEPT:
            link.cache.pop(next(iter(link.cache)))
        device = next(self.parameters()).device
        return cached.to(device).train(self.training)

    def _pack_legacy(self, lmb: float, height: int, width: int, strings: list[bytes]) -> bytes:
        """The authors' layout of this model (:attr:`legacy_layout`): QARV's; a model whose authors
        wrote another one overrides this (QRes-VAE: their pickle)."""
        return bitstream.pack_legacy(lmb, height, width, strings)

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

    def encoder_precisions(self) -> tuple[str, ...]:
        """The encoder precisions :meth:`set_encoder_precision` accepts for this model on the device
        it is on now. A model that can encode in reduced precision overrides both (QARV)."""
        return ("float32",)

    def set_encoder_precision(self, precision: str) -> CompressionMixin:
        """The arithmetic of the computations only an encoder does; by default only ``"float32"``."""
        if precision != "float32":
            raise ValueError(f"this model has only a float32 encoder (asked for {precision!r})")
        return self

    @torch.no_grad()
    def compress_latents(
        self, im: torch.Tensor, lmb: float | None = None
    ) -> tuple[list[list[bytes]], tuple[int, int]]:
        """Like the model's ``encode_latents`` (default λ: :attr:`default_lmb`), returning only the
        strings (``strings[block][image]``) and the latent grid."""
        coded, grid = self.encode_latents(im, self.default_lmb if lmb is None else lmb)
        return [[c.string for c in block] for block in coded], grid

    # -- one real encode ---------------------------------------------------------------------
    def _check_format(self, format: str) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; choose one of {FORMATS}")
        if format == "legacy" and self.name not in self.legacy_layout_models:
            which = ", ".join(self.legacy_layout_models) or "no model"
            raise ValueError(
                f"format='legacy' (the QARV authors' layout) holds files of {which} only: it records no model "
                f"name, so lvae would read a file of {self.name or 'this model'!r} in it as {LEGACY_MODEL}'s; "
                "use format='lvae'"
            )

    def _encode(self, im: torch.Tensor, lmb: float, format: str, colour: str = "rgb") -> bytes:
        h, w = im.shape[2:]
        x = pad_image(im, self.max_stride)
        per_block, _ = self.encode_latents(x, lmb)
        coded = [c[0] for c in per_block]  # the batch's one image
        strings = [c.string for c in coded]
        if format == "legacy":
            return self._pack_legacy(lmb, h, w, strings)
        if not self.name:
            raise ValueError("the model has no registered name to record in the file; build it with lvae.get_model()")
        checks = [c.check for c in coded if c.check is not None]
        if len(checks) != len(coded):
            raise RuntimeError("the model's encode_latents gave a string without its index-map check")
        return bitstream.pack(
            self.name, lmb, h, w, strings, checks=checks, fingerprint=weights_fingerprint(self), colour=colour,
            lossless=self.lossless, pixel_check=coded[-1].extra if self.lossless else None,
        )

    @torch.no_grad()
    def estimate_rd(self, x: torch.Tensor, lmb: float) -> tuple[float, torch.Tensor]:
        """The model's own estimate, without entropy coding, of coding ``x`` (1×3×H×W in [0, 1],
        sides multiples of :attr:`max_stride`) at ``lmb``: the bits of its latent strings, and the
        image (1×3×H×W in [0, 1]) that decoding the file gives, exactly (from a float32 encoder;
        a bfloat16 one may choose a few other symbols, which the PSNR search then measures).

        Rate targets place λ with it before coding for real. By default one forward pass in
        evaluation mode, in the arithmetic of coding (as QARV's ``reconstruct``): the bits from its
        ``kl`` (nats per latent block), the image from its ``x_hat``. A model whose ``forward``
        returns neither overrides this.
        """
        was_training = self.training
        self.eval()
        try:
            with coding_arithmetic(x.device):
                out = self(x, lmb)
        finally:
            self.train(was_training)
        return float(out["kl"].double().sum()) * math.log2(math.e), self.postprocess(out["x_hat"])

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
        progress: Callable[[str], None] | None = None,
    ) -> tuple[bytes, CompressResult]:
        """Like :meth:`compress`, also returning a :class:`CompressResult`.

        With ``compute_psnr`` the file is decoded once to measure the PSNR of what it gives back
        (8-bit, in its colour type: :func:`delivered_psnr`); a PSNR target always is.
        """
        self._check_format(format)
        chosen = [k for k, v in (("lmb", lmb), ("target_bpp", target_bpp), ("target_bytes", target_bytes),
                                 ("target_psnr", target_psnr)) if v is not None]
        if len(chosen) > 1:
            raise ValueError(
                f"give at most one of lmb, target_bpp, target_bytes, target_psnr (got {', '.join(chosen)})"
            )
        if lmb is not None and self.lambdas is not None:
            other = self.member(lmb)
            if other is not self:  # another network codes at that λ
                return other.compress_with_result(im, lmb, format=format, compute_psnr=compute_psnr, progress=progress)
        source = _check_input(im).to(next(self.parameters()).device)
        h, w = source.shape[2:]
        # A gray source is coded as three equal channels; only the lvae container records "gray".
        colour = "gray" if source.shape[1] == 1 and format == "lvae" else "rgb"
        rgb = source if source.shape[1] == 3 else source.expand(-1, 3, -1, -1).contiguous()
        steps = _Steps(self, rgb, source, colour, format, progress)
        quality = float("nan")
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
            if self.lambdas is not None:
                value, data = self._members_budget(steps, budget, unit, asked)
            else:
                value, data = self._search_budget(steps, budget, unit, asked)
        elif target_psnr is not None:
            if not math.isfinite(target_psnr):
                raise ValueError(f"target_psnr must be a finite number, got {target_psnr}")
            if self.lambdas is not None:
                value, data, quality = self._members_psnr(steps, float(target_psnr))
            else:
                value, data, quality = self._search_psnr(steps, float(target_psnr))
        else:
            value = self._lmb_value(self.default_lmb if lmb is None else lmb)
            data = steps.encode(value)
        if compute_psnr and math.isnan(quality):
            quality = steps.measure(data, value)
        result = CompressResult(None, len(data), 8 * len(data) / (h * w), quality, value, h, w, steps.encodes, colour,
                                forward_passes=steps.forwards)
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
        progress: Callable[[str], None] | None = None,
    ) -> bytes:
        """Compress one image (1×3×H×W RGB or 1×1×H×W gray, in [0, 1], any size ≥ 1×1) into a
        complete file's bytes. A gray image is recorded as such and decodes to a gray image.

        Give at most one of: ``lmb`` (default :attr:`default_lmb`); ``target_bytes`` / ``target_bpp``
        (the highest quality whose real file fits the budget: never over it; the search stops at a
        file within ``BUDGET_TOLERANCE`` under it, or λ within ``LMB_TOLERANCE`` of a larger λ that
        does not fit); ``target_psnr`` (the smallest file whose decoded image, rounded to 8 bits,
        reaches that PSNR, to ``LMB_TOLERANCE`` in λ). An impossible target raises ValueError.
        ``progress``: called with one short line (``"λ 123.4: 5123 bytes"``) after each step that
        codes or estimates; a target takes several. ``format='legacy'`` writes the QARV authors'
        layout instead of lvae's container, for the models it holds (:attr:`legacy_layout_models`:
        ``qarv_base``); any other model raises ValueError.
        """
        return self.compress_with_result(
            im, lmb, target_bpp=target_bpp, target_bytes=target_bytes, target_psnr=target_psnr, format=format,
            compute_psnr=False, progress=progress,
        )[0]

    # -- rate targets over fixed-λ members: bisection over the sorted λ --------------------------
    def _members_budget(
        self, steps: _Steps, budget: int, unit: Callable[[int], str], asked: str
    ) -> tuple[float, bytes]:
        """The highest-λ member whose real file fits ``budget`` bytes, and its file: bisection over
        the members (size grows with λ), at most ⌈log2(members + 1)⌉ encodes."""
        lambdas = self.lambdas
        assert lambdas is not None
        below, above = -1, len(lambdas)  # the highest member known to fit; the lowest known not to
        best: tuple[float, bytes] | None = None
        smallest = 0
        while above - below > 1:
            mid = (below + above) // 2
            data = steps.encode(lambdas[mid])
            if len(data) <= budget:
                below, best = mid, (lambdas[mid], data)
            else:
                above, smallest = mid, len(data)
        if best is None:
            raise ValueError(
                f"impossible target: even the lowest rate (λ={lambdas[0]:g}) needs {unit(smallest)}, "
                f"over the target of {asked}"
            )
        return best

    def _members_psnr(self, steps: _Steps, target: float) -> tuple[float, bytes, float]:
        """The lowest-λ member whose decoded image reaches ``target`` dB, its file and PSNR:
        bisection over the members on :meth:`estimate_rd` (the decoded image itself, no coding),
        then one encode, measured (should it fall short, the next members are coded in turn)."""
        lambdas = self.lambdas
        assert lambdas is not None
        below, above = -1, len(lambdas)
        top = -math.inf
        while above - below > 1:
            mid = (below + above) // 2
            q = delivered_psnr(steps.estimate(lambdas[mid])[1], steps.source)
            steps.say(f"λ {lambdas[mid]:.4g}: {q:.2f} dB (forward pass)")
            if q >= target:
                above = mid
            else:
                below, top = mid, q
        quality = top
        for i in range(above, len(lambdas)):
            data = steps.encode(lambdas[i])
            quality = steps.measure(data, lambdas[i])
            if quality >= target:
                return lambdas[i], data, quality
        raise ValueError(
            f"impossible target: the highest quality of this model (λ={lambdas[-1]:g}) gives {quality:.2f} dB, "
            f"below {target:g} dB"
        )

    def _search_ends(self) -> tuple[float, float, float]:
        """ln λ at the ends of the range and at the default (float32 values)."""
        lo, hi, mid = (math.log(self._lmb_value(v)) for v in (*self.lmb_range, self.default_lmb))
        return lo, hi, mid

    def _search_budget(
        self, steps: _Steps, budget: int, unit: Callable[[int], str], asked: str
    ) -> tuple[float, bytes]:
        """The largest λ whose real file fits ``budget`` bytes (to the tolerances), and its file.

        First the estimated size (:meth:`estimate_rd` plus the container's bytes) is bracketed
        to 3 % in λ, or until an estimate lies within 1 % of the middle of the window a file may
        end in; then real encodes start from there, the first step taken with the estimate's slope.
        """
        lo, hi, mid = self._search_ends()
        floor = budget * (1 - BUDGET_TOLERANCE)  # a file in [floor, budget] ends the search
        aim = math.log(max(budget, 1) * (1 - BUDGET_TOLERANCE / 2))  # (a budget of 0 bytes: none fits)
        overhead = steps.overhead()

        def estimate(t: float) -> Probe:
            lmb = self._lmb_value(math.exp(t))
            n = steps.estimate(lmb)[0] / 8 + overhead
            steps.say(f"λ {lmb:.4g}: ≈{n:.0f} bytes (estimate)")
            return Probe(lmb, math.log(n), math.log(n) > aim)

        guide = find_crossing(estimate, lo, hi, mid, _RATE_SLOPE, aim, _GUIDE_TOLERANCE,
                              done=lambda p: abs(p.value - aim) <= _GUIDE_WINDOW)
        start = _crossing_of(guide, aim)

        def encode(t: float) -> Probe:
            lmb = self._lmb_value(math.exp(t))
            data = steps.encode(lmb)
            return Probe(lmb, math.log(len(data)), len(data) > budget, data)

        real = find_crossing(encode, lo, hi, start, _local_slope(guide, start, _RATE_SLOPE), aim, LMB_TOLERANCE,
                             done=lambda p: p.data is not None and floor <= len(p.data) <= budget)
        fits = [p for p in real if not p.high]
        if not fits:
            bottom = min(real, key=lambda p: p.t)
            if bottom.t > lo:  # stopped before the end of the range (MAX_PROBES): the end decides
                bottom = encode(lo)
                fits = [bottom] if not bottom.high else []
            if not fits:
                assert bottom.data is not None
                raise ValueError(
                    f"impossible target: even the lowest rate (λ={bottom.lmb:g}) needs {unit(len(bottom.data))}, "
                    f"over the target of {asked}"
                )
        best = max(fits, key=lambda p: p.t)
        assert best.data is not None
        return best.lmb, best.data

    def _search_psnr(self, steps: _Steps, target: float) -> tuple[float, bytes, float]:
        """The smallest λ whose decoded image, as delivered (8-bit, in the file's colour type),
        reaches ``target`` dB against the source (to ``LMB_TOLERANCE``); its file and PSNR.

        :meth:`estimate_rd` gives the decoded image itself, so the search runs on forward passes
        and codes once; the file's PSNR is then measured, and should it fall short (an encoder that
        computes otherwise, e.g. in bfloat16), the search goes on with real files from there.
        """
        lo, hi, mid = self._search_ends()

        def estimate(t: float) -> Probe:
            lmb = self._lmb_value(math.exp(t))
            q = delivered_psnr(steps.estimate(lmb)[1], steps.source)
            steps.say(f"λ {lmb:.4g}: {q:.2f} dB (forward pass)")
            return Probe(lmb, q, q >= target)

        def impossible(top: Probe) -> ValueError:
            return ValueError(
                f"impossible target: the highest quality of this model (λ={top.lmb:g}) gives {top.value:.2f} dB, "
                f"below {target:g} dB"
            )

        def lowest_reaching(probes: list[Probe], probe: Callable[[float], Probe]) -> Probe:
            """The lowest-λ probe reaching the target; if none does, the end of the range decides."""
            reached = [p for p in probes if p.high]
            if not reached:
                top = max(probes, key=lambda p: p.t)
                if top.t < hi:  # stopped before the end of the range (MAX_PROBES)
                    top = probe(hi)
                if not top.high:
                    raise impossible(top)
                reached = [top]
            return min(reached, key=lambda p: p.t)

        guide = find_crossing(estimate, lo, hi, mid, _PSNR_SLOPE, target, LMB_TOLERANCE)
        first = lowest_reaching(guide, estimate)
        data = steps.encode(first.lmb)
        quality = steps.measure(data, first.lmb)
        if quality >= target:
            return first.lmb, data, quality
        if first.t >= hi:
            raise impossible(Probe(first.lmb, quality, False))

        def real(t: float) -> Probe:
            lmb = self._lmb_value(math.exp(t))
            data = steps.encode(lmb)
            q = steps.measure(data, lmb)
            return Probe(lmb, q, q >= target, data)

        done = find_crossing(real, lo, hi, first.t + LMB_TOLERANCE, _local_slope(guide, first.t, _PSNR_SLOPE), target,
                             LMB_TOLERANCE, known=[Probe(first.lmb, quality, False, data)])
        best = lowest_reaching(done, real)
        assert best.data is not None
        return best.lmb, best.data, best.value

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
        if header.format == "pickle":
            if self.legacy_layout != "pickle":
                raise BitstreamError(
                    "the file is in the QRes-VAE authors' layout, which records no model: decode it with the QRes-VAE "
                    f"model that made it (e.g. lvae.get_model('qres34m', lmb=..., pretrained=True)), not {self.name!r}"
                )
            header = replace(header, lmb=self.default_lmb)  # the layout records no λ: this network's
        elif header.model_name == self.name and self.lambdas is not None:
            if abs(header.lmb - self.default_lmb) > 1e-6 * self.default_lmb:
                try:
                    other = self.member(header.lmb)
                except ValueError as exc:
                    raise BitstreamError(f"the file was coded at λ={header.lmb:g}: {exc}") from None
                return other.decompress(data, max_pixels, num_latents=num_latents,
                                        ignore_weights_mismatch=ignore_weights_mismatch)
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
        if header.pixel_check is not None:  # a lossless file: the pixels' further check
            coded[-1] = [CodedLatent(strings[-1], checks[-1], header.pixel_check)]
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
        progress: Callable[[str], None] | None = None,
    ) -> CompressResult:
        """Compress an image file to ``out_path`` (written atomically; the input is never overwritten).

        The image is read by :func:`lvae.io.read_image`: a grayscale source is recorded as gray
        (``result.colour``) and decodes to a gray image; ``result.alpha_dropped`` says that
        transparency was lost. ``out_path``'s folder is checked for writing, and ``format``
        against the model, before any coding. Rate options and ``progress`` as in :meth:`compress`.
        """
        image_path, out_path = Path(image_path), Path(out_path)
        self._check_format(format)
        if out_path.exists() and image_path.exists() and out_path.resolve() == image_path.resolve():
            raise ValueError(f"refusing to overwrite the input image {image_path} with its compressed file")
        check_writable(out_path)
        loaded = read_image(image_path)
        what = loaded.not_exact()
        if self.lossless and what is not None:
            raise ValueError(
                f"{image_path} has {what}, which a lossless file of 8-bit RGB or gray cannot hold: nothing was written"
            )
        data, result = self.compress_with_result(
            loaded.tensor, lmb, target_bpp=target_bpp, target_bytes=target_bytes, target_psnr=target_psnr,
            format=format, progress=progress,
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
