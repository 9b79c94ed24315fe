"""The coding layer's parts: shipped tables, CDF indexes, the index-map check and its solver.

The index-map check is part of the file format (docs/bitstream.md): its hash is pinned below by a
plain-integer SplitMix64, and the repair helpers are checked against independent definitions.
"""
import itertools
import math
import random
import zlib

import numpy as np
import pytest
import torch

from lvae.coding import portable, rans
from lvae.coding.gaussian import DiscreteGaussian, build_cdf_tables, gaussian_tables, qarv_scale_table


@pytest.fixture(scope="module")
def compressai_layer():
    from compressai.entropy_models import GaussianConditional

    layer = GaussianConditional(qarv_scale_table(), scale_bound=0.11, tail_mass=1e-9, likelihood_bound=1e-9)
    layer.update()
    return layer


def test_shipped_tables_equal_compressai_construction(compressai_layer):
    t = gaussian_tables()
    assert torch.equal(t.quantized_cdf, compressai_layer._quantized_cdf)
    assert torch.equal(t.cdf_length, compressai_layer._cdf_length)
    assert torch.equal(t.offset, compressai_layer._offset)
    cdfs, lengths, offsets = build_cdf_tables()
    assert (cdfs, lengths, offsets) == (t.coder.cdfs, t.coder.lengths, t.coder.offsets)


def test_indexes_equal_compressai_and_boundaries(compressai_layer):
    table = torch.tensor(qarv_scale_table(), dtype=torch.float32)
    s = torch.cat([torch.exp(torch.randn(20000) * 1.5 - 1), table, torch.nextafter(table, table + 1),
                   torch.nextafter(table, table - 1), torch.tensor([0.05, 0.11, 20.0, 1e4])])
    assert torch.equal(DiscreteGaussian.indexes(s), compressai_layer.build_indexes(s))


def test_likelihood_equals_compressai(compressai_layer):
    z, mu = torch.randn(5000) * 5, torch.randn(5000)
    sigma = torch.exp(torch.randn(5000))
    ours = DiscreteGaussian()
    z_hat, lik = ours(z, sigma, mu)
    ref_z, ref_lik = compressai_layer(z, sigma, means=mu, training=False)
    assert torch.equal(z_hat, ref_z) and torch.allclose(lik, ref_lik, rtol=0, atol=0)


def test_rans_round_trip_and_guard():
    t = gaussian_tables().coder
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 64, 5000).tolist()
    sym = rng.integers(-3, 4, 5000).tolist()
    sym[10] = 1000  # escaped (bypass) value
    s = rans.encode(sym, idx, t)
    assert rans.decode(s, idx, t) == sym
    assert len(rans.decode(s[: len(s) // 2], idx, t)) == 5000  # a cut string reads zeros, not past its buffer


def test_map_hash_is_a_xor_of_independent_terms():
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 64, 1000).astype(np.int32)
    h = portable.index_map_hash(idx)
    moved = idx.copy()
    pos = np.array([3, 500, 999])
    moved[pos] = (moved[pos] + 1) % 64
    delta = np.bitwise_xor.reduce(portable.pair_hashes(pos, idx[pos]) ^ portable.pair_hashes(pos, moved[pos]))
    assert portable.index_map_hash(moved) == h ^ int(delta) != h


def test_solve_xor_finds_the_subset_and_only_real_ones():
    rng = random.Random(2)
    vectors = [rng.getrandbits(32) for _ in range(20)]
    target = vectors[2] ^ vectors[9] ^ vectors[17]
    [mask] = portable.solve_xor(vectors, target, max_solutions=4)
    assert mask == (1 << 2) | (1 << 9) | (1 << 17)
    assert portable.solve_xor(vectors[:3], vectors[5], max_solutions=4) == []  # not in the span
    dependent = vectors[:4] + [vectors[0] ^ vectors[1]]
    sols = portable.solve_xor(dependent, vectors[0] ^ vectors[1], max_solutions=4)
    assert sorted(sols) == sorted([0b00011, 0b10000])


def test_candidates_are_the_scales_nearest_a_boundary():
    table = np.asarray(qarv_scale_table(), dtype=np.float32)
    scales = np.array([table[10] * (1 + 1e-6), table[20] * (1 - 3e-6), 1.0, table[30] * (1 + 5e-4)], dtype=np.float32)
    idx = DiscreteGaussian.indexes(torch.from_numpy(scales)).numpy()
    pos, alt = portable.candidates(scales, idx, table, limit=10)
    assert pos.tolist()[:2] == [0, 1] and 3 in pos.tolist()
    assert alt[0] == idx[0] - 1 and alt[1] == idx[1] + 1


# -- lvae/coding/portable.py against independent definitions ----------------------------------------
MASK = 2**64 - 1


def splitmix64_finaliser(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def h(p: int, i: int) -> int:
    """docs/bitstream.md: splitmix64((p << 6 | index) + 0x9E3779B97F4A7C15) >> 32."""
    return splitmix64_finaliser(((p << 6 | i) + 0x9E3779B97F4A7C15) & MASK) >> 32


@pytest.mark.parametrize("p, i", [(0, 0), (0, 63), (1, 5), (12345, 17), (2**40, 63), (2**57, 1)])
def test_pair_hash_is_the_documented_splitmix64(p, i):
    got = portable.pair_hashes(np.array([p], dtype=np.uint64), np.array([i], dtype=np.int32))
    assert got.dtype == np.uint64 and int(got[0]) == h(p, i) < 2**32


def test_index_map_hash_and_tag():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 64, (3, 7, 5)).astype(np.int32)
    expected = 0
    for p, i in enumerate(idx.reshape(-1).tolist()):
        expected ^= h(p, i)
    assert portable.index_map_hash(idx) == expected
    assert portable.index_map_hash(idx.astype(np.int64)) == expected
    assert portable.index_map_hash(np.zeros(0, dtype=np.int32)) == 0
    assert portable.index_map_hash(np.array([9], dtype=np.int32)) == h(0, 9)
    assert portable.tag(b"string", idx) == zlib.crc32(b"string") ^ expected
    assert portable.CHECK_BITS == 32


TABLE = np.asarray(qarv_scale_table(), dtype=np.float32)


def _indexes(scales):
    return DiscreteGaussian.indexes(torch.from_numpy(np.asarray(scales, dtype=np.float32))).numpy()


def test_candidates_rank_by_distance_and_give_the_other_side():
    ln = np.log(TABLE.astype(np.float64))
    scales = np.array([
        math.exp(ln[10] + 2e-4),  # 0: above t10 → index 11; other side 10
        math.exp(ln[20] - 5e-5),  # 1: below t20 → index 20; other side 21
        math.exp(ln[30] + 9.9e-4),  # 2: just inside MAX_DISTANCE
        math.exp(ln[30] + 1.2e-3),  # 3: just outside
        math.exp((ln[40] + ln[41]) / 2),  # 4: halfway: far from both
        math.exp(ln[0] - 1e-4),  # 5: below the first table scale (index 0 either way)
        math.exp(ln[63] + 1e-4),  # 6: above the last
        math.exp(ln[62] - 1e-6),  # 7: nearest of all
    ], dtype=np.float32)
    idx = _indexes(scales)
    assert idx[:2].tolist() == [11, 20]
    pos, alt = portable.candidates(scales, idx, TABLE, limit=48)
    assert pos.dtype == np.int64 and alt.dtype == np.int32
    assert pos.tolist() == [7, 1, 5, 0, 2]
    by_pos = dict(zip(pos.tolist(), alt.tolist()))
    assert by_pos[0] == 10 and by_pos[1] == 21 and by_pos[7] == 63 and by_pos[2] == 30
    assert by_pos[5] == 1  # σ clamps to t0: index 0, the other side of t0 is index 1
    pos2, alt2 = portable.candidates(scales, idx, TABLE, limit=2)
    assert pos2.tolist() == [7, 1] and alt2.tolist() == alt.tolist()[:2]
    assert portable.MAX_DISTANCE == 1e-3


def test_candidates_find_the_nearest_boundary_beyond_rounding():
    """The nearest table scale is not always the one at rint((ln σ − ln t0)/step): both neighbours
    are compared (float32 table scales are not exactly evenly spaced)."""
    ln = np.log(TABLE.astype(np.float64))
    step = (ln[-1] - ln[0]) / 63
    for j in range(1, 62):
        for d in (-0.4999, 0.4999):
            s = np.array([math.exp(ln[0] + (j + d) * step)], dtype=np.float32)
            pos, alt = portable.candidates(s, _indexes(s), TABLE, limit=4)
            nearest = np.min(np.abs(np.log(s.astype(np.float64)) - ln[:63]))
            assert (pos.size == 1) == (nearest < 1e-3)


def test_solve_xor_returns_the_lightest_solutions_first():
    vectors = [0b0011, 0b0101, 0b0110, 0b1000, 0b1111]
    # 0b0110 = v2 = v0 ^ v1, and v4 = v0 ^ v1 ^ ... : several subsets give the target
    sols = portable.solve_xor(vectors, 0b0110, max_solutions=10)
    for m in sols:
        acc = 0
        for j in range(len(vectors)):
            if m >> j & 1:
                acc ^= vectors[j]
        assert acc == 0b0110
    weights = [bin(m).count("1") for m in sols]
    assert weights == sorted(weights) and sols[0] == 0b00100
    every = {m for m in range(1, 2 ** len(vectors)) if _xor_of(vectors, m) == 0b0110}
    assert set(sols) == every
    assert portable.solve_xor(vectors, 0b0110, max_solutions=2) == sols[:2]
    assert portable.solve_xor(vectors, 0, max_solutions=3)[0] == 0  # nothing to change
    assert portable.solve_xor([0b01, 0b01], 0b10, max_solutions=3) == []
    assert portable.solve_xor([], 0, max_solutions=1) == [0]


def _xor_of(vectors, mask):
    acc = 0
    for j, v in enumerate(vectors):
        if mask >> j & 1:
            acc ^= v
    return acc


def test_solve_xor_with_a_large_null_space():
    rng = np.random.default_rng(4)
    base = [int(v) for v in rng.integers(1, 2**16, 16)]
    vectors = base + [base[i] ^ base[j] for i, j in itertools.combinations(range(6), 2)]  # 15 dependent ones
    target = base[3] ^ base[9]
    sols = portable.solve_xor(vectors, target, max_solutions=4)
    assert len(sols) == 4 and all(_xor_of(vectors, m) == target for m in sols)
    assert bin(sols[0]).count("1") == 2


def test_search_plan_singles_pairs_triples():
    plan = portable.search_plan(48)
    assert len(plan) == 48 + math.comb(12, 2) + math.comb(8, 3) == 170
    assert plan[:3] == [(0,), (1,), (2,)] and plan[47] == (47,)
    assert plan[48] == (0, 1) and plan[48 + 65] == (10, 11) and plan[48 + 66] == (0, 1, 2) and plan[-1] == (5, 6, 7)
    assert portable.search_plan(100) == plan
    assert portable.search_plan(5) == [(i,) for i in range(5)] + list(itertools.combinations(range(5), 2)) + \
        list(itertools.combinations(range(5), 3))
    assert portable.search_plan(0) == [] and portable.search_plan(1) == [(0,)]


def test_candidates_beyond_the_limit_are_the_nearest_in_order():
    rng = np.random.default_rng(7)
    ln = np.log(TABLE.astype(np.float64))
    j = rng.integers(1, 62, 300)
    offsets = rng.uniform(-9e-4, 9e-4, 300)
    scales = np.exp(ln[j] + offsets).astype(np.float32)
    idx = _indexes(scales)
    dist = np.abs(np.log(scales.astype(np.float64)) - ln[j])
    for limit in (1, 10, 47, 48):
        pos, _ = portable.candidates(scales, idx, TABLE, limit=limit)
        assert pos.tolist() == np.argsort(dist, kind="stable")[:limit].tolist()
    ties = np.full(40, np.exp(ln[20] + 1e-4), dtype=np.float32)  # equal distances: in position order
    pos, alt = portable.candidates(ties, _indexes(ties), TABLE, limit=48)
    assert pos.tolist() == list(range(40)) and set(alt.tolist()) == {20}
