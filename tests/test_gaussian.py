"""The discretized Gaussian's constants and module (lvae/coding/gaussian.py), without a model."""
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from lvae.coding import gaussian
from lvae.coding.gaussian import (
    LIKELIHOOD_BOUND,
    SCALE_MIN,
    DiscreteGaussian,
    gaussian_tables,
    qarv_scale_table,
    scale_thresholds,
)


def test_scale_table_is_the_float64_log_spacing():
    table = qarv_scale_table()
    assert len(table) == 64
    assert table[0] == pytest.approx(0.11, rel=1e-15) and table[-1] == pytest.approx(20.0, rel=1e-15)
    expected = np.exp(np.linspace(math.log(0.11), math.log(20.0), 64))
    np.testing.assert_allclose(table, expected, rtol=1e-15)
    assert torch.equal(scale_thresholds(), torch.tensor(table, dtype=torch.float32))
    assert scale_thresholds("cpu").dtype == torch.float32


def test_written_table_file_is_the_shipped_one(tmp_path):
    path = tmp_path / "a" / "b" / "tables.json"  # folders are made as needed
    digest = gaussian.write_table_file(path)
    assert digest == gaussian.TABLE_SHA256
    assert gaussian.write_table_file(path) == digest  # and may exist already
    assert path.read_bytes() == gaussian.TABLE_FILE.read_bytes()
    assert path.read_bytes().endswith(b"}\n") and b" " not in path.read_bytes()
    d = json.loads(path.read_bytes())
    assert list(d) == ["cdfs", "lengths", "offsets"] and len(d["cdfs"]) == 64


def test_damaged_table_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "t.json"
    raw = bytearray(gaussian.TABLE_FILE.read_bytes())
    raw[20] = ord("9") if raw[20] != ord("9") else ord("8")
    bad.write_bytes(bytes(raw))
    monkeypatch.setattr(gaussian, "TABLE_FILE", bad)
    gaussian.gaussian_tables.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"is damaged \(SHA-256 [0-9a-f]{16}…\); reinstall lvae"):
            gaussian.gaussian_tables()
    finally:
        gaussian.gaussian_tables.cache_clear()


def test_tables_as_tensors_and_lists():
    t = gaussian_tables()
    assert t.quantized_cdf.dtype == t.cdf_length.dtype == t.offset.dtype == torch.int32
    assert t.quantized_cdf.shape == (64, max(t.coder.lengths))
    for i in (0, 31, 63):
        n = t.coder.lengths[i]
        assert t.quantized_cdf[i, :n].tolist() == t.coder.cdfs[i] and not t.quantized_cdf[i, n:].any()
        assert t.coder.cdfs[i][0] == 0 and t.coder.cdfs[i][-1] == 2**16
    assert t.cdf_length.tolist() == t.coder.lengths and t.offset.tolist() == t.coder.offsets
    assert t.coder.offsets[0] == -((t.coder.lengths[0] - 2) // 2)
    raw = gaussian.TABLE_FILE.read_bytes().strip()
    assert hashlib.sha256(raw).hexdigest() == gaussian.TABLE_SHA256


def test_module_buffers_bounds_and_filling():
    dg = DiscreteGaussian()
    sd = dg.state_dict()
    assert list(sd) == ["_offset", "_quantized_cdf", "_cdf_length", "likelihood_lower_bound.bound",
                        "lower_bound_scale.bound"]
    assert all(sd[k].numel() == 0 and sd[k].dtype == torch.int32 for k in ("_offset", "_quantized_cdf", "_cdf_length"))
    assert sd["likelihood_lower_bound.bound"].tolist() == [pytest.approx(LIKELIHOOD_BOUND)]
    assert sd["lower_bound_scale.bound"].tolist() == [pytest.approx(SCALE_MIN)]
    assert not dg.ready
    dg.fill_tables()
    t = gaussian_tables()
    assert dg.ready and torch.equal(dg._quantized_cdf, t.quantized_cdf)
    assert torch.equal(dg._cdf_length, t.cdf_length) and torch.equal(dg._offset, t.offset)


@pytest.mark.parametrize("filled_source, filled_target", [(True, False), (False, True), (True, True), (False, False)])
def test_state_dict_loads_empty_or_filled_tables(filled_source, filled_target):
    source, target = DiscreteGaussian(), DiscreteGaussian()
    if filled_source:
        source.fill_tables()
    if filled_target:
        target.fill_tables()
    target.load_state_dict(source.state_dict(), strict=True)
    assert target.ready == filled_source
    for name in ("_offset", "_quantized_cdf", "_cdf_length"):
        assert torch.equal(getattr(target, name), getattr(source, name))
        assert getattr(target, name).dtype == torch.int32
    bad = source.state_dict()
    bad["lower_bound_scale.bound"] = torch.zeros(2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        target.load_state_dict(bad)


@pytest.mark.parametrize("edit, words", [
    (lambda sd: sd.pop("_offset"), 'Missing key\\(s\\) in state_dict: "_offset"'),
    (lambda sd: sd.update(_extra=torch.zeros(1)), 'Unexpected key\\(s\\) in state_dict: "_extra"'),
    (lambda sd: sd.update(_offset=[1, 2]), "expected torch.Tensor or Tensor-like object from checkpoint"),
])
def test_strict_loading_still_reports_the_tables_keys(edit, words):
    sd = DiscreteGaussian().state_dict()
    edit(sd)
    with pytest.raises(RuntimeError, match=words):
        DiscreteGaussian().load_state_dict(sd, strict=True)


def test_likelihood_is_the_unit_bin_with_both_bounds():
    dg = DiscreteGaussian()
    z_hat, means = torch.tensor([0.0, 1.0, -2.0, 50.0, 0.0]), torch.zeros(5)
    scales = torch.tensor([1.0, 2.0, 0.5, 1.0, 0.01])  # 0.01: below the scale bound, taken as 0.11
    p = dg.likelihood(z_hat, means, scales)

    def mass(v, s):
        return 0.5 * (math.erfc(-(0.5 - abs(v)) / s / math.sqrt(2)) - math.erfc(-(-0.5 - abs(v)) / s / math.sqrt(2)))

    expected = [mass(0, 1), mass(1, 2), mass(2, 0.5), LIKELIHOOD_BOUND, mass(0, 0.11)]
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-5)
    z, lik = dg(torch.tensor([0.4, 1.6, -0.7]), torch.ones(3), torch.tensor([0.2, 0.2, 0.2]))
    assert z.tolist() == pytest.approx([0.2, 1.2, -0.8])  # round(z − μ) + μ
    assert torch.equal(DiscreteGaussian.quantize(torch.tensor([0.4, 1.6]), torch.tensor([0.2, 0.2])), z[:2])
    assert torch.equal(lik, dg.likelihood(z, torch.tensor([0.2, 0.2, 0.2]), torch.ones(3)))


def test_indexes_count_the_table_scales_strictly_below():
    t = torch.tensor(qarv_scale_table(), dtype=torch.float32)
    s = torch.cat([t, torch.nextafter(t, t + 1), torch.tensor([0.0, 0.05, 1e6])])
    idx = DiscreteGaussian.indexes(s)
    assert idx.dtype == torch.int32
    assert idx[:64].tolist() == list(range(64))  # a table scale itself: that table
    assert idx[64:128].tolist() == list(range(1, 64)) + [63]  # just above: the next (the last stays)
    assert idx[128:].tolist() == [0, 0, 63]
    assert DiscreteGaussian.indexes(s.double()).tolist() == idx.tolist()
