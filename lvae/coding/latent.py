"""Coding one latent tensor: what a model asks for to turn latents into strings and back.

A model gives the continuous latent (its posterior mean) with the prior means and scales; it
gets back the value the decoder will reconstruct and one :class:`CodedLatent` per image. To
decode, it gives the prior means and scales it computed on its own machine; this module makes
sure those produce the encoder's symbols (see :mod:`lvae.coding.portable`), repairing the CDF
indexes where rounding moved a scale across a table boundary, or raising
:class:`~lvae.errors.BitstreamError`.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import BitstreamError
from . import portable, rans
from .gaussian import QARV_TABLES, DiscreteGaussian, gaussian_tables, scale_thresholds

__all__ = ["CodedLatent", "MAX_SYMBOL", "encode_latent", "decode_latent", "BlockReport", "trace"]

MAX_SYMBOL = 2**20  # largest |round(z − μ)| the encoder accepts
MAX_CHECKED_TRIALS = 64  # decodes spent confirming repairs of a string with an index-map check
MAX_FLIPS = 8  # a repair moves at most this many CDF indexes of one string


@dataclass(frozen=True)
class CodedLatent:
    """One image's coded latent: the rANS string and its index-map check (None: not recorded);
    ``extra``: further check bytes some strings carry (a lossless model's pixels: 16)."""

    string: bytes
    check: int | None = None
    extra: bytes = b""


@dataclass
class BlockReport:
    """What coding one latent string did (collected by :func:`trace`)."""

    op: str  # "encode" or "decode"
    symbols: int
    checked: bool  # decode: the string carried an index-map check
    flips: int = 0  # decode: CDF indexes that differed from the encoder's (repaired)
    trials: int = 0  # decode: extra decodes spent on repair
    seconds: float = 0.0  # decode: time spent on checks and repair (not the decode itself)
    scales_sha256: str = ""  # SHA-256 of the float32 prior scales (with trace(scales=True))
    scales: np.ndarray | None = field(default=None, repr=False)  # with trace(keep_scales=True)


_trace: list[BlockReport] | None = None
_trace_opts: dict[str, bool] = {}


@contextlib.contextmanager
def trace(scales: bool = False, keep_scales: bool = False) -> Iterator[list[BlockReport]]:
    """Record a :class:`BlockReport` for every string coded inside the ``with`` block (tests, benchmarks)."""
    global _trace, _trace_opts
    before, before_opts = _trace, _trace_opts
    _trace, _trace_opts = [], {"scales": scales or keep_scales, "keep": keep_scales}
    try:
        yield _trace
    finally:
        _trace, _trace_opts = before, before_opts


def _record(report: BlockReport, scales: torch.Tensor) -> None:
    if _trace is None:
        return
    if _trace_opts.get("scales"):
        arr = scales.detach().float().cpu().numpy()
        report.scales_sha256 = hashlib.sha256(arr.tobytes()).hexdigest()
        if _trace_opts.get("keep"):
            report.scales = arr.copy()
    _trace.append(report)


def _flat_cpu(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return t.detach().to("cpu", dtype).reshape(-1).numpy()


def encode_latent(
    z: torch.Tensor, means: torch.Tensor, scales: torch.Tensor, kind: str = QARV_TABLES
) -> tuple[torch.Tensor, list[CodedLatent]]:
    """Entropy-code ``round(z − μ)`` (N×C×H×W) with the prior ``N(μ, σ)``; one string per image.
    ``kind``: the set of CDF tables (:mod:`lvae.coding.gaussian`), QARV's by default."""
    symbols = torch.round(z - means)
    # NOTE: CompressAI's range coder loops forever on NaN and on symbols near the int32 limit.
    if not bool(torch.isfinite(symbols).all()) or bool((symbols.abs() > MAX_SYMBOL).any()):
        raise ValueError(
            "latent values are not finite or exceed the entropy coder's range; "
            "the model's weights are probably broken (NaN or diverged)"
        )
    indexes = DiscreteGaussian.indexes(scales, kind)
    tables = gaussian_tables(kind).coder
    coded = []
    for i in range(z.shape[0]):
        idx = _flat_cpu(indexes[i], torch.int32)
        string = rans.encode(_flat_cpu(symbols[i], torch.int32).tolist(), idx.tolist(), tables)
        coded.append(CodedLatent(string, portable.tag(string, idx)))
        _record(BlockReport("encode", idx.size, True), scales[i])
    return symbols + means, coded


def decode_latent(
    coded: Sequence[CodedLatent], means: torch.Tensor, scales: torch.Tensor, kind: str = QARV_TABLES
) -> torch.Tensor:
    """Decode one string per image with the decoder's own prior; returns ``symbols + μ``."""
    if len(coded) != means.shape[0]:
        raise ValueError(f"got {len(coded)} strings for a batch of {means.shape[0]}")
    indexes = DiscreteGaussian.indexes(scales, kind)
    out = []
    for i, c in enumerate(coded):
        idx = _flat_cpu(indexes[i], torch.int32)
        report = BlockReport("decode", idx.size, c.check is not None)
        try:
            if c.check is not None:
                values = _decode_checked(c, c.check, idx, scales[i], report, kind)
            else:
                values = _decode_unchecked(c.string, idx, scales[i], report, kind)
        finally:
            _record(report, scales[i])
        # NOTE: via NumPy: torch.tensor() on a list of Python ints takes twice as long.
        flat = np.fromiter(values, dtype=np.float32, count=len(values))
        out.append(torch.from_numpy(flat).reshape(means.shape[1:]))
    return torch.stack(out).to(means.device) + means


# -- verification and repair ---------------------------------------------------------------------
def _thresholds(kind: str) -> np.ndarray:
    return scale_thresholds("cpu", kind).numpy()


def _try(string: bytes, idx: np.ndarray, report: BlockReport, kind: str) -> list[int] | None:
    """Decode with ``idx``; the symbols if re-encoding them gives ``string`` back, else None."""
    tables = gaussian_tables(kind).coder
    report.trials += 1
    idx_list = idx.tolist()
    try:
        values = rans.decode(string, idx_list, tables)
        # NOTE: a wrong index decodes garbage, possibly huge escaped values, and the encoder
        # loops forever near the int32 limit; no encoder wrote values beyond MAX_SYMBOL anyway.
        if values and int(np.abs(np.asarray(values, dtype=np.int64)).max()) > MAX_SYMBOL:
            return None
        again = rans.encode(values, idx_list, tables)
    except (ValueError, RuntimeError, OverflowError):
        return None
    return values if again == string else None


def _decode_checked(
    c: CodedLatent, check: int, idx: np.ndarray, scales: torch.Tensor, report: BlockReport, kind: str
) -> list[int]:
    start = time.perf_counter()
    h = portable.index_map_hash(idx)
    target = check ^ zlib.crc32(c.string)
    report.seconds = time.perf_counter() - start
    if h == target:
        return rans.decode(c.string, idx.tolist(), gaussian_tables(kind).coder)
    try:
        return _repair_checked(c, idx, scales, report, h ^ target, kind)
    finally:
        report.seconds = time.perf_counter() - start


def _repair_checked(
    c: CodedLatent, idx: np.ndarray, scales: torch.Tensor, report: BlockReport, syndrome: int, kind: str
) -> list[int]:
    pos, alt = portable.candidates(_flat_cpu(scales, torch.float32), idx, _thresholds(kind), limit=48)
    if pos.size:
        deltas = portable.pair_hashes(pos, idx[pos]) ^ portable.pair_hashes(pos, alt)
        deltas = [int(v) for v in deltas]
        tried: set[int] = set()
        for k in (4, 8, 12, 16, 20, 24, 28, 32, 40, 48):
            k = min(k, pos.size)
            for mask in portable.solve_xor(deltas[:k], syndrome, max_solutions=4):
                if mask in tried or bin(mask).count("1") > MAX_FLIPS:
                    continue
                tried.add(mask)
                chosen = [j for j in range(k) if mask >> j & 1]
                fixed = idx.copy()
                fixed[pos[chosen]] = alt[chosen]
                values = _try(c.string, fixed, report, kind)
                if values is not None:
                    report.flips = len(chosen)
                    return values
                if report.trials >= MAX_CHECKED_TRIALS:
                    break
            if k == pos.size or report.trials >= MAX_CHECKED_TRIALS:
                break
    raise BitstreamError(
        "a latent string fails its check: the file is corrupted, was made with other weights, or "
        "on a machine whose arithmetic differs too much from this one"
    )


def _decode_unchecked(
    string: bytes, idx: np.ndarray, scales: torch.Tensor, report: BlockReport, kind: str
) -> list[int]:
    start = time.perf_counter()
    try:
        return _verify_or_search(string, idx, scales, report, kind)
    finally:
        report.seconds = time.perf_counter() - start  # includes the decode itself: it cannot be separated


def _verify_or_search(
    string: bytes, idx: np.ndarray, scales: torch.Tensor, report: BlockReport, kind: str
) -> list[int]:
    values = _try(string, idx, report, kind)
    report.trials = 0  # the first decode is not a repair trial
    if values is not None:
        return values
    pos, alt = portable.candidates(_flat_cpu(scales, torch.float32), idx, _thresholds(kind), limit=48)
    for flips in portable.search_plan(pos.size):
        chosen = list(flips)
        fixed = idx.copy()
        fixed[pos[chosen]] = alt[chosen]
        values = _try(string, fixed, report, kind)
        if values is not None:
            report.flips = len(chosen)
            return values
    raise BitstreamError(
        "a latent string does not decode consistently: the file is corrupted, was made with other "
        "weights, or on a machine whose arithmetic differs too much from this one"
    )
