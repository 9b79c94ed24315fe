"""Coding one latent tensor (lvae/coding/latent.py) without a model: synthetic latents whose prior
scales sit exactly on the CDF tables' boundaries, decoded with scales nudged across them (what
another machine's arithmetic does). Fast; also the mutation run's subset for latent.py."""
import hashlib
import zlib

import numpy as np
import pytest
import torch

from lvae.coding import latent, portable
from lvae.coding.gaussian import DiscreteGaussian, qarv_scale_table
from lvae.coding.latent import (
    MAX_CHECKED_TRIALS,
    MAX_FLIPS,
    MAX_SYMBOL,
    CodedLatent,
    decode_latent,
    encode_latent,
    trace,
)
from lvae.coding.portable import search_plan
from lvae.errors import BitstreamError

TABLE = torch.tensor(qarv_scale_table(), dtype=torch.float32)
SHAPE = (2, 4, 6, 5)  # 120 symbols per image


def _latent(seed=0):
    """Scales halfway between table scales (far from any boundary), means and latents around them."""
    g = torch.Generator().manual_seed(seed)
    j = torch.randint(0, 62, SHAPE, generator=g)
    scales = torch.sqrt(TABLE[j] * TABLE[j + 1])
    means = torch.randn(SHAPE, generator=g) * 3
    z = means + torch.randn(SHAPE, generator=g) * scales * 2
    return z, means, scales


def _on_boundaries(scales, positions, image=0):
    """Put the scale of the given flat positions (of one image) exactly on a table scale."""
    out = scales.clone()
    flat = out[image].reshape(-1)
    for k, p in enumerate(positions):
        flat[p] = TABLE[5 + 7 * k]
    return out


def _nudged(scales, positions, image=0, factor=1 + 1e-5):
    out = scales.clone()
    out[image].reshape(-1)[list(positions)] *= factor
    return out


def test_round_trip_gives_the_quantized_latent():
    z, means, scales = _latent()
    z_hat, coded = encode_latent(z, means, scales)
    assert torch.equal(z_hat, torch.round(z - means) + means)
    assert len(coded) == 2 and all(isinstance(c, CodedLatent) for c in coded)
    idx = DiscreteGaussian.indexes(scales)
    for i, c in enumerate(coded):
        assert c.check == zlib.crc32(c.string) ^ portable.index_map_hash(idx[i].reshape(-1).numpy())
    assert torch.equal(decode_latent(coded, means, scales), z_hat)
    unchecked = [CodedLatent(c.string) for c in coded]
    assert torch.equal(decode_latent(unchecked, means, scales), z_hat)


def test_escaped_values_and_the_symbol_limit():
    z, means, scales = _latent()
    z[0, 0, 0, 0] = means[0, 0, 0, 0] + MAX_SYMBOL  # the largest symbol accepted
    z[1, 3, 5, 4] = means[1, 3, 5, 4] - MAX_SYMBOL
    z_hat, coded = encode_latent(z, means, scales)
    assert torch.equal(decode_latent(coded, means, scales), z_hat)
    assert torch.equal(decode_latent([CodedLatent(c.string) for c in coded], means, scales), z_hat)  # end-state path
    for bad in (MAX_SYMBOL + 1, float("nan"), float("inf")):
        z2 = z.clone()
        z2[1, 0, 0, 0] = means[1, 0, 0, 0] + bad
        with pytest.raises(ValueError, match="^latent values are not finite or exceed the entropy coder's range; the "
                                             "model's weights are probably broken \\(NaN or diverged\\)$"):
            encode_latent(z2, means, scales)


def test_batch_size_must_match():
    z, means, scales = _latent()
    _, coded = encode_latent(z, means, scales)
    with pytest.raises(ValueError, match="got 1 strings for a batch of 2"):
        decode_latent(coded[:1], means, scales)


DECOYS = [60, 61, 62, 63, 64]  # scales even nearer a boundary than the moved ones, but on the same side everywhere


def _with_decoys(scales, image=0):
    out = scales.clone()
    flat = out[image].reshape(-1)
    for k, p in enumerate(DECOYS):
        flat[p] = TABLE[40 + k] * (1 + 2e-7)
    return out


@pytest.mark.parametrize("checked", [True, False])
@pytest.mark.parametrize("factor", [1 + 1e-5, 1 - 1e-5])
@pytest.mark.parametrize("moved", [1, 3, MAX_FLIPS])
def test_indexes_moved_across_a_boundary_are_repaired(checked, factor, moved):
    """The moved symbols rank behind five decoys (nearer a boundary, not moved): the repair must
    pick the right candidates among more than it needs, and look past the first four."""
    if moved == MAX_FLIPS and not checked:
        pytest.skip("without a check, the search tries at most three moved indexes")
    z, means, scales = _latent(moved)
    positions = [7, 40, 111, 3, 20, 30, 50, 70][:moved]
    enc_scales = _with_decoys(_on_boundaries(scales, positions))
    enc_scales = _nudged(enc_scales, positions, factor=1 / factor)  # on the other side, very near
    z_hat, coded = encode_latent(z, means, enc_scales)
    dec_scales = _nudged(enc_scales, positions, factor=factor * factor)
    enc_idx, dec_idx = DiscreteGaussian.indexes(enc_scales), DiscreteGaussian.indexes(dec_scales)
    assert int((enc_idx != dec_idx).sum()) == moved  # the decoder's indexes do differ, at the moved symbols only
    pos, _ = portable.candidates(dec_scales[0].numpy(), dec_idx[0].numpy(), TABLE.numpy(), limit=48)
    assert sorted(pos[:5].tolist()) == DECOYS and sorted(pos[5:].tolist()) == sorted(positions)
    if not checked:
        coded = [CodedLatent(c.string) for c in coded]
    with trace() as reports:
        out = decode_latent(coded, means, dec_scales)
    assert torch.equal(out, z_hat)
    assert [r.op for r in reports] == ["decode", "decode"]
    assert [r.checked for r in reports] == [checked, checked]
    assert reports[1].flips == reports[1].trials == 0 and reports[0].trials >= 1
    assert all(r.symbols == 120 and 0 <= r.seconds < 30 for r in reports)
    if checked:
        assert reports[0].flips == moved
        assert reports[0].trials <= 2  # the GF(2) solve points at the flips: no search
    else:
        # NOTE: the end state alone may accept fewer flips when a moved index codes its symbol
        # with the same frequency in both tables; the values are the encoder's all the same.
        assert 1 <= reports[0].flips <= moved
        assert 6 <= reports[0].trials <= len(search_plan(48))  # the five decoys are tried first, alone


CHECK_FAILS = ("^a latent string fails its check: the file is corrupted, was made with other weights, or on a "
               "machine whose arithmetic differs too much from this one$")
END_STATE_FAILS = ("^a latent string does not decode consistently: the file is corrupted, was made with other "
                   "weights, or on a machine whose arithmetic differs too much from this one$")


@pytest.mark.parametrize("checked, words, bound", [
    (True, CHECK_FAILS, MAX_CHECKED_TRIALS), (False, END_STATE_FAILS, len(search_plan(48))),
])
def test_too_many_moved_indexes_raise_after_bounded_work(checked, words, bound):
    z, means, scales = _latent(5)
    positions = list(range(3, 3 + 7 * (MAX_FLIPS + 1), 7))  # one more than a repair may move
    enc_scales = _nudged(_on_boundaries(scales, positions), positions, factor=1 - 1e-6)
    _, coded = encode_latent(z, means, enc_scales)
    dec_scales = _nudged(enc_scales, positions, factor=1 + 1e-5)
    if not checked:
        coded = [CodedLatent(c.string) for c in coded]
    with trace() as reports, pytest.raises(BitstreamError, match=words):
        decode_latent(coded, means, dec_scales)
    assert len(reports) == 1 and reports[0].flips == 0 and 0 <= reports[0].trials <= bound
    assert 0 <= reports[0].seconds < 30


@pytest.mark.parametrize("what", ["string", "check"])
def test_damage_is_refused(what):
    z, means, scales = _latent(6)
    _, coded = encode_latent(z, means, scales)
    c = coded[1]
    if what == "string":
        s = bytearray(c.string)
        s[len(s) // 2] ^= 0x04
        damaged = CodedLatent(bytes(s), c.check)
    else:
        damaged = CodedLatent(c.string, c.check ^ 1)
    with pytest.raises(BitstreamError, match=CHECK_FAILS):
        decode_latent([coded[0], damaged], means, scales)


def test_a_truncated_unchecked_string_is_refused():
    z, means, scales = _latent(7)
    _, coded = encode_latent(z, means, scales)
    with pytest.raises(BitstreamError, match=END_STATE_FAILS):
        decode_latent([CodedLatent(c.string[:-3]) for c in coded], means, scales)


def test_trace_records_reports_and_scales_only_when_asked():
    z, means, scales = _latent(8)
    assert latent._trace is None
    _, coded = encode_latent(z, means, scales)  # outside trace(): nothing is kept
    assert latent._trace is None
    with trace() as plain:
        encode_latent(z, means, scales)
    assert [(r.op, r.symbols, r.checked, r.scales_sha256, r.scales) for r in plain] == [
        ("encode", 120, True, "", None)] * 2
    with trace(scales=True) as hashed_encode:
        encode_latent(z, means, scales)
    assert [r.scales_sha256 for r in hashed_encode] == [hashlib.sha256(scales[i].numpy().tobytes()).hexdigest()
                                                        for i in range(2)]
    with trace(scales=True) as hashed:
        decode_latent(coded, means, scales)
        with trace(keep_scales=True) as kept:  # nested: the inner block collects alone
            decode_latent(coded, means, scales)
        assert len(hashed) == 2
    assert latent._trace is None
    for i in range(2):
        arr = scales[i].numpy()
        assert hashed[i].scales_sha256 == hashlib.sha256(arr.tobytes()).hexdigest() and hashed[i].scales is None
        assert kept[i].scales_sha256 == hashed[i].scales_sha256 and np.array_equal(kept[i].scales, arr)
    assert len(kept) == 2


def test_trace_is_closed_after_an_error():
    z, means, scales = _latent(9)
    _, coded = encode_latent(z, means, scales)
    with pytest.raises(BitstreamError):
        with trace() as reports:
            decode_latent([CodedLatent(coded[0].string, coded[0].check ^ 1)], means[:1], scales[:1])
    assert latent._trace is None and len(reports) == 1 and reports[0].op == "decode"
