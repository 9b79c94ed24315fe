"""Coding integers exactly: the pixels of a lossless model, under a discretized Gaussian whose mean
is rounded to the integer grid.

A lossless model predicts, per pixel, a continuous centre ``c`` (in units of one intensity step)
and a scale ``σ``. The coded symbol is ``value − round(c)`` under the CDF table chosen by ``σ``
(:mod:`lvae.coding.gaussian`); the decoder adds ``round(c)`` back. Two things must come out the
same on the decoder's machine as on the encoder's, or the pixel (and, through a different CDF
table, every later symbol) decodes wrong: the rounded centre, where ``c`` lies near a half
integer, and the table, where ``σ`` lies near a table scale. A lossy decoder shrugs off a near
miss; a lossless one has no tolerance at all.

So each string carries a check of both, extending :mod:`lvae.coding.portable`'s index-map
check: ``tag = CRC-32(string) XOR H(map)`` where the map holds, per pixel, the CDF index and the
rounded centre (modulo 2**13) together, and 16 more bytes (``CodedLatent.extra``): four more
independent 32-bit hashes of the same map. A decoder whose map hashes differently repairs it:
the pixels whose centre lies nearest a half integer, or whose scale nearest a table scale, are
the candidates (a Kodak image has a few dozen centres within float32 noise of a half integer,
and a few of them round the other way on another machine), and a linear system over GF(2) with
160 equations finds which to move — with a 32-bit check alone, several dozen candidates would
leave many false solutions. The repaired indexes are confirmed by re-encoding (the rANS end
state). A map that cannot be repaired raises :class:`~lvae.errors.BitstreamError`: a checked
file never decodes to a wrong pixel, up to the 2**-160 chance of a forged match.

Strings without a check (the QRes-VAE authors' files) are verified by their rANS end state, which
confirms the CDF indexes but cannot see a centre rounded the other way: such files decode as the
authors' code decodes them on this machine.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import BitstreamError
from . import portable, rans
from .gaussian import DiscreteGaussian, gaussian_tables, scale_thresholds
from .latent import MAX_SYMBOL, BlockReport, CodedLatent, _decode_unchecked, _record, _try

__all__ = ["encode_integers", "decode_integers", "MAX_CENTRE_DISTANCE", "MAX_REPAIR_TRIALS", "EXTRA_CHECK_BYTES"]

_INDEX_BITS = 7  # CDF indexes (up to 128 tables)
_CENTRE_BITS = 13  # the rounded centre, modulo 2**13, beside the index in the checked map
_MAP_BITS = _INDEX_BITS + _CENTRE_BITS
MAX_CENTRE_DISTANCE = 1e-2  # centres farther than this from a half integer are never candidates
MAX_REPAIR_TRIALS = 32  # re-encodes spent confirming repairs of one string
_CANDIDATES = 120  # nearest-boundary pixels a repair considers
_EXTRA_SALTS = (1, 2, 3, 4)  # the four further hashes of the map (CodedLatent.extra)
EXTRA_CHECK_BYTES = 4 * len(_EXTRA_SALTS)


def _flat(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return t.detach().to("cpu", dtype).reshape(-1).numpy()


def _map(idx: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The checked map: each pixel's CDF index and rounded centre in one integer."""
    return idx.astype(np.int64) | ((centre.astype(np.int64) & ((1 << _CENTRE_BITS) - 1)) << _INDEX_BITS)


def _map_hash(idx: np.ndarray, centre: np.ndarray) -> int:
    return portable.index_map_hash(_map(idx, centre), bits=_MAP_BITS)


def _extra_hashes(idx: np.ndarray, centre: np.ndarray) -> bytes:
    m = _map(idx, centre)
    return b"".join(portable.index_map_hash(m, _MAP_BITS, salt).to_bytes(4, "little") for salt in _EXTRA_SALTS)


def _wide(low: int, extra: bytes) -> int:
    """The 32-bit check and the 128 extra bits as one 160-bit integer (a GF(2) vector)."""
    return low | int.from_bytes(extra, "little") << 32


def _wide_pair(p: int, value: int) -> int:
    """The 160-bit hash term of ``value`` at position ``p``."""
    here, v = np.array([p], dtype=np.uint64), np.array([value], dtype=np.int64)
    out = int(portable.pair_hashes(here, v, _MAP_BITS)[0])
    for k, salt in enumerate(_EXTRA_SALTS):
        out |= int(portable.pair_hashes(here, v, _MAP_BITS, salt)[0]) << (32 * (k + 1))
    return out


def _centres(centres: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The rounded centres (int64) and the continuous ones (float64, for the repair)."""
    c = centres.detach().to("cpu", torch.float32).reshape(-1)
    return torch.round(c).to(torch.int64).numpy(), c.double().numpy()


def encode_integers(
    values: torch.Tensor, centres: torch.Tensor, scales: torch.Tensor, kind: str
) -> list[CodedLatent]:
    """Entropy-code integer ``values`` (N×C×H×W) as ``value − round(centre)`` with the tables of
    ``kind`` chosen by ``scales``; one checked string per image."""
    if values.shape != centres.shape or values.shape != scales.shape:
        raise ValueError("values, centres and scales must have one shape")
    indexes = DiscreteGaussian.indexes(scales, kind)
    tables = gaussian_tables(kind).coder
    coded = []
    for i in range(values.shape[0]):
        rounded, _ = _centres(centres[i])
        symbols = _flat(values[i], torch.int64) - rounded
        if np.abs(symbols).max(initial=0) > MAX_SYMBOL:
            raise ValueError("the predicted centres are far outside the image's range: broken weights?")
        idx = _flat(indexes[i], torch.int64)
        string = rans.encode(symbols.tolist(), idx.tolist(), tables)
        coded.append(CodedLatent(string, zlib.crc32(string) ^ _map_hash(idx, rounded), _extra_hashes(idx, rounded)))
        _record(BlockReport("encode", idx.size, True), scales[i])
    return coded


def decode_integers(
    coded: Sequence[CodedLatent], centres: torch.Tensor, scales: torch.Tensor, kind: str
) -> torch.Tensor:
    """The integers :func:`encode_integers` coded (int64, N×C×H×W), from the decoder's own
    ``centres`` and ``scales``; a checked string is repaired to the encoder's map or refused."""
    if len(coded) != centres.shape[0]:
        raise ValueError(f"got {len(coded)} strings for a batch of {centres.shape[0]}")
    indexes = DiscreteGaussian.indexes(scales, kind)
    out = []
    for i, c in enumerate(coded):
        idx = _flat(indexes[i], torch.int64)
        rounded, continuous = _centres(centres[i])
        report = BlockReport("decode", idx.size, c.check is not None)
        try:
            if c.check is None:
                symbols = _decode_unchecked(c.string, idx.astype(np.int32), scales[i], report, kind)
            else:
                symbols, rounded = _decode_checked(c, idx, rounded, continuous, scales[i], kind, report)
        finally:
            _record(report, scales[i])
        values = np.asarray(symbols, dtype=np.int64) + rounded
        out.append(torch.from_numpy(values).reshape(centres.shape[1:]))
    return torch.stack(out).to(centres.device)


def _decode_checked(
    c: CodedLatent, idx: np.ndarray, rounded: np.ndarray, continuous: np.ndarray, scales: torch.Tensor, kind: str,
    report: BlockReport,
) -> tuple[list[int], np.ndarray]:
    assert c.check is not None
    if len(c.extra) != EXTRA_CHECK_BYTES:
        raise BitstreamError(f"a lossless string needs its {EXTRA_CHECK_BYTES}-byte map check")
    syndrome = _wide(_map_hash(idx, rounded) ^ c.check ^ zlib.crc32(c.string),
                     bytes(a ^ b for a, b in zip(_extra_hashes(idx, rounded), c.extra)))
    if syndrome == 0:
        return rans.decode(c.string, idx.astype(np.int32).tolist(), gaussian_tables(kind).coder), rounded
    # Candidates: (position, new index, new rounded centre), nearest their boundary first.
    cands: list[tuple[float, int, int, int]] = []
    pos, alt = portable.candidates(_flat(scales, torch.float32), idx, scale_thresholds("cpu", kind).numpy(),
                                   limit=_CANDIDATES)
    log_s = np.log(np.maximum(_flat(scales, torch.float32).astype(np.float64), 1e-30))
    for p, a in zip(pos.tolist(), alt.tolist()):
        # ranked by the distance to the boundary in units of the arithmetic's noise (≈5e-7 in ln σ)
        t = np.log(scale_thresholds("cpu", kind).numpy().astype(np.float64)[min(a, idx[p])])
        cands.append((abs(log_s[p] - t) / 5e-7, p, a, int(rounded[p])))
    gap = 0.5 - np.abs(continuous - rounded)  # distance of each centre to its rounding boundary
    near = np.flatnonzero(gap < MAX_CENTRE_DISTANCE)
    if near.size > _CANDIDATES:
        near = near[np.argpartition(gap[near], _CANDIDATES - 1)[:_CANDIDATES]]
    ulps = np.spacing(np.abs(continuous).astype(np.float32)).astype(np.float64)  # centres: noise ≈ 1 ulp
    for p in near.tolist():
        other = int(rounded[p]) + (1 if continuous[p] >= rounded[p] else -1)
        cands.append((gap[p] / ulps[p], p, int(idx[p]), other))
    by_pos: dict[int, list[tuple[float, int, int, int]]] = {}
    for cand in cands:
        by_pos.setdefault(cand[1], []).append(cand)
    for p, both in by_pos.items():  # a pixel whose index and centre both moved
        if len(both) == 2:
            cands.append((max(both[0][0], both[1][0]), p, both[0][2] if both[0][2] != idx[p] else both[1][2],
                          both[0][3] if both[0][3] != rounded[p] else both[1][3]))
    cands.sort()
    cands = cands[:_CANDIDATES]
    deltas = []
    for _, p, a, r in cands:
        old = int(_map(idx[p : p + 1], rounded[p : p + 1])[0])
        new = int(_map(np.array([a]), np.array([r]))[0])
        deltas.append(_wide_pair(p, old) ^ _wide_pair(p, new))
    for mask in portable.solve_xor(deltas, syndrome, max_solutions=8):
        chosen = [cands[j] for j in range(len(cands)) if mask >> j & 1]
        if len({cand[1] for cand in chosen}) != len(chosen):
            continue  # one pixel moved twice: not a map
        fixed_idx, fixed_centre = idx.copy(), rounded.copy()
        for _, p, a, r in chosen:
            fixed_idx[p], fixed_centre[p] = a, r
        symbols = _try(c.string, fixed_idx.astype(np.int32), report, kind)
        if symbols is not None:
            report.flips = len(chosen)
            return symbols, fixed_centre
        if report.trials >= MAX_REPAIR_TRIALS:
            break
    raise BitstreamError(
        "a lossless string fails its check: the file is corrupted, was made with other weights, or on a "
        "machine whose arithmetic differs too much from this one (no pixel is returned rather than a wrong one)"
    )
