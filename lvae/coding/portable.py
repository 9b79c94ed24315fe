"""Portable decoding: checks that a decoder used the encoder's CDF indexes, and their repair.

Why: a symbol's CDF table is chosen by comparing its prior scale σ with 64 table scales (about
8 % apart). Two machines compute σ with different float rounding (CPU instruction set,
convolution algorithm, thread count, CPU vs GPU), so a σ within ~1e-6 (relative) of a table
scale can land on different tables, and every later symbol then decodes wrongly.

Two checks detect that, per latent string:

* **The index-map check** (lvae files, version ≥ 2): the encoder stores ``tag = CRC-32(string)
  XOR H(indexes)``, where ``H`` XORs a 32-bit hash of every (position, index) pair. The decoder
  computes its own ``H`` before decoding; a mismatch means a damaged string or differing
  indexes. Because ``H`` is a XOR of independent terms, changing the index at position ``p``
  from ``a`` to ``b`` changes ``H`` by ``h(p, a) ^ h(p, b)``: finding which of the ambiguous
  symbols (those whose σ lies nearest a table scale) to move is a small linear system over
  GF(2), solved without decoding anything.
* **The rANS end-state check** (every string, the authors' files included): decoding with the
  encoder's indexes and re-encoding the decoded symbols gives the string back byte for byte;
  with wrong indexes it almost never does (rANS decoding is only inverted exactly when the
  decoder ends in the encoder's initial state having consumed the whole string). It may accept
  another index set whose tables happen to re-encode its decoded symbols to the same bytes (seen
  in tests: a repair accepted with fewer moved indexes than were moved, the decoded values still
  correct); files with an index-map check also pin the index map itself. It costs
  a second coding pass, so it is used for files without an index-map check and to confirm a
  repair.

A repair that cannot satisfy the checks within its bounds raises :class:`BitstreamError`.
"""
from __future__ import annotations

import itertools
import zlib

import numpy as np

__all__ = [
    "CHECK_BITS", "MAX_DISTANCE", "index_map_hash", "pair_hashes", "tag", "candidates", "solve_xor", "search_plan",
]

CHECK_BITS = 32
MAX_DISTANCE = 1e-3  # ln-scale distance to a table scale beyond which a symbol is never a candidate
_SALT = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-mixed 64-bit hash of each uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def pair_hashes(positions: np.ndarray, indexes: np.ndarray, bits: int = 6, salt: int = 0) -> np.ndarray:
    """``h(p, i)``: the 32-bit hash of value ``i`` (0 to 2**bits − 1; CDF indexes: 0–63) at flat
    position ``p``, as uint64. Another ``salt`` gives an independent hash (wider checks)."""
    key = (positions.astype(np.uint64) << np.uint64(bits)) | indexes.astype(np.uint64)
    return _mix(key + _SALT + np.uint64(salt)) >> np.uint64(32)


def index_map_hash(indexes: np.ndarray, bits: int = 6, salt: int = 0) -> int:
    """``H(indexes)``: XOR of :func:`pair_hashes` over all positions (an int < 2**32)."""
    flat = np.ascontiguousarray(indexes, dtype=np.int64).reshape(-1)
    if flat.size == 0:
        return 0
    return int(np.bitwise_xor.reduce(pair_hashes(np.arange(flat.size, dtype=np.uint64), flat, bits, salt)))


def tag(string: bytes, indexes: np.ndarray) -> int:
    """The stored check of one latent string: ``CRC-32(string) XOR H(indexes)``."""
    return zlib.crc32(string) ^ index_map_hash(indexes)


def candidates(
    scales: np.ndarray, indexes: np.ndarray, thresholds: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``limit`` symbols whose scale lies nearest a table scale, nearest first.

    Returns their flat positions and, for each, the index on the other side of that table
    scale (what another machine's rounding would have chosen).
    """
    s = np.log(np.asarray(scales, dtype=np.float64).reshape(-1))
    idx = np.asarray(indexes).reshape(-1)
    t = np.log(np.asarray(thresholds, dtype=np.float64))
    step = (t[-1] - t[0]) / (len(t) - 1)
    j = np.clip(np.rint((s - t[0]) / step), 0, len(t) - 2).astype(np.int64)
    dist = np.abs(s - t[j])
    # the nearest boundary is not always the table scale at rint(): check the neighbours too
    for dj in (-1, 1):
        jj = np.clip(j + dj, 0, len(t) - 2)
        dd = np.abs(s - t[jj])
        better = dd < dist
        j = np.where(better, jj, j)
        dist = np.where(better, dd, dist)
    near = np.flatnonzero(dist < MAX_DISTANCE)
    if near.size > limit:
        near = near[np.argpartition(dist[near], limit - 1)[:limit]]
    near = near[np.argsort(dist[near], kind="stable")]
    # index j+1 means σ > t_j; the other side of t_j is index j (and vice versa)
    alt = np.where(idx[near] > j[near], j[near], j[near] + 1).astype(np.int32)
    return near.astype(np.int64), alt


def solve_xor(vectors: list[int], target: int, max_solutions: int) -> list[int]:
    """Subsets of ``vectors`` (as bit masks over their positions) whose XOR is ``target``.

    Gaussian elimination over GF(2); the solutions are the particular one combined with the
    null space, at most ``max_solutions`` of them, fewest vectors first.
    """
    pivots: dict[int, tuple[int, int]] = {}  # leading bit -> (vector, mask of the inputs making it)
    null: list[int] = []
    for i, v in enumerate(vectors):
        m = 1 << i
        while v:
            top = v.bit_length() - 1
            if top not in pivots:
                pivots[top] = (v, m)
                break
            pv, pm = pivots[top]
            v ^= pv
            m ^= pm
        else:
            null.append(m)
    t, m = target, 0
    while t:
        top = t.bit_length() - 1
        if top not in pivots:
            return []
        pv, pm = pivots[top]
        t ^= pv
        m ^= pm
    null = null[:12]  # enough to reach max_solutions of the lightest combinations
    sols = {m}
    for r in range(1, len(null) + 1):
        for combo in itertools.combinations(null, r):
            x = m
            for c in combo:
                x ^= c
            sols.add(x)
        if len(sols) >= 8 * max_solutions:
            break
    return sorted(sols, key=lambda x: (bin(x).count("1"), x))[:max_solutions]


def search_plan(n: int) -> list[tuple[int, ...]]:
    """Flip sets to try when a string carries no index-map check: candidates numbered nearest
    first; singles among 48, pairs among 12, triples among 8 (at most 170 trials)."""
    plan: list[tuple[int, ...]] = [(i,) for i in range(min(n, 48))]
    plan += list(itertools.combinations(range(min(n, 12)), 2))
    plan += list(itertools.combinations(range(min(n, 8)), 3))
    return plan
