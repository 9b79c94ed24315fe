"""The zero padding that keeps CompressAI's rANS decoder inside its buffer (lvae/coding/rans.py).

CompressAI's decoder reads 32-bit words without bounds checks: a damaged or forged string makes
it read past its end, into whatever memory follows (a crash, or an image that depends on that
memory). lvae appends ``decode_guard_bytes`` zero bytes before decoding. What protects a user:

1. every decode lvae makes, directly or through a model's latent decoding, hands the extension
   the string followed by exactly that many zeros;
2. that is enough: for the strings that read furthest (all bits set: each 4-bit escape nibble
   says "15 more", so one escaped symbol reads about 15 bytes per byte of string), the decoded
   values do not depend on anything placed after the zeros; and without the zeros they do
   (the decoder really reads past the end of such a string).

The reach is measured by appending two different junk patterns after ``P`` zero bytes: the
smallest ``P`` for which the results agree is how far past the string the decoder read.
"""
import numpy as np
import pytest
import torch

from lvae.coding import latent, rans
from lvae.coding.gaussian import gaussian_tables

JUNK = (b"\x5a" * 65536, b"\xa5" * 65536)


def _raw_decode(data: bytes, indexes: list[int]) -> list[int]:
    t = gaussian_tables().coder
    return rans._load().RansDecoder().decode_with_indexes(data, indexes, t.cdfs, t.lengths, t.offsets)


def reach(string: bytes, indexes: list[int]) -> int:
    """How many bytes past ``string`` the decoder reads (when those bytes are zeros)."""
    def independent(p: int) -> bool:
        pad = string + bytes(p)
        return _raw_decode(pad + JUNK[0], indexes) == _raw_decode(pad + JUNK[1], indexes)

    hi = 64
    while not independent(hi):
        hi *= 2
        assert hi < len(JUNK[0]), "the decoder reads further than this test can see"
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if independent(mid) else (mid + 1, hi)
    return lo


class _Recorder:
    """Stands in for the extension: records what each decode is given, then decodes it for real."""

    def __init__(self):
        self.real = rans._load()
        self.given: list[tuple[bytes, int]] = []
        recorder = self

        class Decoder:
            def decode_with_indexes(self, data, indexes, *tables):
                recorder.given.append((bytes(data), len(indexes)))
                return recorder.real.RansDecoder().decode_with_indexes(data, indexes, *tables)

        self.RansDecoder = Decoder
        self.RansEncoder = self.real.RansEncoder


@pytest.fixture()
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(rans, "_load", lambda: rec)
    return rec


@pytest.mark.parametrize("string, n", [(b"\xff" * 40, 3), (b"", 5), (b"\x12\x34", 1), (bytes(range(256)), 300)],
                         ids=["ones", "empty", "short", "ramp"])
def test_every_decode_gets_the_string_then_the_zero_guard(recorder, string, n):
    idx = list(range(n))
    idx = [i % 64 for i in idx]
    out = rans.decode(string, idx, gaussian_tables().coder)
    assert len(out) == n
    [(data, count)] = recorder.given
    guard = rans.decode_guard_bytes(len(string), n)
    assert count == n and data == string + bytes(guard)
    assert guard >= 8 * n + 16 * len(string)  # one word per symbol, 15 bytes of escapes per byte read


def test_model_latent_decoding_goes_through_the_guard(recorder):
    """decode_latent (with and without index-map checks, and its repair trials) never hands the
    extension a bare string."""
    torch.manual_seed(0)
    means = torch.randn(2, 3, 4, 5)
    scales = torch.exp(torch.randn(2, 3, 4, 5))
    z = means + torch.randn(2, 3, 4, 5) * scales * 3
    z[0, 0, 0, 0] = means[0, 0, 0, 0] + 5000  # an escaped symbol
    z_hat, coded = latent.encode_latent(z, means, scales)
    for strings in (coded, [latent.CodedLatent(c.string) for c in coded]):  # checked, and end-state verified
        recorder.given.clear()
        out = latent.decode_latent(strings, means, scales)
        assert torch.equal(out, z_hat)
        assert len(recorder.given) >= 2
        for data, n in recorder.given:
            assert n == 60
            string = next(c.string for c in coded if data.startswith(c.string))
            assert data == string + bytes(rans.decode_guard_bytes(len(string), n))


# The strings that read furthest past their end: all bits set, for the smallest and largest tables.
FARTHEST = [(b"\xff" * length, [table] * n) for length in (1, 3, 8, 61, 192) for n in (1, 11) for table in (0, 63)]


@pytest.mark.parametrize("string, indexes", FARTHEST, ids=lambda v: str(len(v)))
def test_guard_covers_the_farthest_read(string, indexes):
    needed = reach(string, indexes)
    guard = rans.decode_guard_bytes(len(string), len(indexes))
    assert needed <= guard
    if len(string) >= 61:  # not vacuous: without the guard these strings make it read far past their end
        assert needed >= 13 * len(string)
    padded = string + bytes(guard)
    assert _raw_decode(padded + JUNK[0], indexes) == _raw_decode(padded + JUNK[1], indexes)
    assert rans.decode(string, indexes, gaussian_tables().coder) == _raw_decode(padded + JUNK[0], indexes)


def test_guard_covers_damaged_real_strings():
    """Real strings (with escaped values), cut, extended and overwritten: never read past the guard."""
    t = gaussian_tables().coder
    rng = np.random.default_rng(3)
    for trial in range(60):
        n = int(rng.integers(1, 400))
        idx = rng.integers(0, 64, n).tolist()
        sym = rng.integers(-4, 5, n)
        sym[rng.random(n) < 0.05] = 3000  # escaped (bypass) values
        string = rans.encode(sym.tolist(), idx, t)
        damaged = bytearray(string[: int(rng.integers(0, len(string) + 1))])
        damaged += bytes(rng.integers(0, 256, int(rng.integers(0, 24)), dtype=np.uint8))
        if damaged and trial % 3 == 0:
            damaged[int(rng.integers(0, len(damaged)))] = 0xFF
        damaged = bytes(damaged)
        assert reach(damaged, idx) <= rans.decode_guard_bytes(len(damaged), n)
        out = rans.decode(damaged, idx, t)
        assert len(out) == n and out == rans.decode(damaged, idx, t)


# -- the rest of lvae/coding/rans.py -----------------------------------------------------------------
def test_cdf_tables_are_checked_and_converted_once():
    t = rans.CdfTables([np.array([0, 40000, 65536])], (np.int64(3),), [np.int32(-1)])
    assert t.cdfs == [[0, 40000, 65536]] and t.lengths == [3] and t.offsets == [-1]
    assert all(type(v) is int for v in t.cdfs[0] + t.lengths + t.offsets)
    for args in (([[0, 65536]], [2], []), ([[0, 65536]], [], [0]), ([], [], []), ([[0, 65536], [0, 65536]], [2], [0])):
        with pytest.raises(ValueError, match="^cdfs, lengths and offsets must be non-empty and of the same length$"):
            rans.CdfTables(*args)
    encoded = rans.encode([0, 1, -1], [0, 0, 0], t)
    assert encoded != b"" and rans.decode(encoded, [0, 0, 0], t)


def test_the_extensions_load_without_the_compressai_package(monkeypatch):
    import sys

    ans, cxx = rans._load(), rans._load_cxx()
    assert ans.__name__ == "compressai.ans" and sys.modules["compressai.ans"] is ans
    assert cxx.__name__ == "compressai._CXX" and hasattr(cxx, "pmf_to_quantized_cdf")
    assert rans._load() is ans  # cached
    # a fresh load finds the compiled module beside the package, without running its __init__
    monkeypatch.setattr(rans, "_loaded", {})
    monkeypatch.delitem(sys.modules, "compressai.ans")
    fresh = rans._load()
    assert fresh.__file__ == ans.__file__ and rans._loaded["compressai.ans"] is fresh
    assert sys.modules["compressai.ans"] is fresh


def test_missing_compressai_is_a_clear_import_error(monkeypatch):
    import importlib.util
    import sys

    monkeypatch.setattr(rans, "_loaded", {})
    monkeypatch.delitem(sys.modules, "compressai.ans", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError,
                       match=r"^CompressAI is not installed; lvae needs its range coder \(pip install compressai\)$"):
        rans._load()


def test_missing_compiled_module_is_named(monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util
    import sys

    monkeypatch.setattr(rans, "_loaded", {})
    monkeypatch.delitem(sys.modules, "compressai.ans", raising=False)
    empty = importlib.machinery.ModuleSpec("compressai", None, is_package=True)
    empty.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: empty)
    with pytest.raises(ImportError, match=r"^CompressAI's compiled module compressai\.ans was not found$"):
        rans._load()


def test_an_already_imported_extension_is_reused(monkeypatch):
    import sys
    import types

    sentinel = types.ModuleType("compressai.ans")
    monkeypatch.setattr(rans, "_loaded", {})
    monkeypatch.setitem(sys.modules, "compressai.ans", sentinel)
    assert rans._load() is sentinel  # `import compressai` came first: its module is used, not loaded again


def test_the_compiled_module_is_searched_in_every_package_folder(monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util
    import sys

    rans._load()  # whatever ran before, the extension is loaded once
    real = importlib.util.find_spec("compressai")
    two = importlib.machinery.ModuleSpec("compressai", None, is_package=True)
    two.submodule_search_locations = [str(tmp_path), *real.submodule_search_locations]  # the first one is empty
    monkeypatch.setattr(rans, "_loaded", {})
    monkeypatch.delitem(sys.modules, "compressai.ans")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: two)
    assert hasattr(rans._load(), "RansDecoder")
