"""The coding layer's parts: shipped tables, CDF indexes, the index-map check and its solver."""
import random

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
