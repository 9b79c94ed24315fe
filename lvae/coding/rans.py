"""CompressAI's rANS coder, loaded without importing the ``compressai`` package.

CompressAI's range coder is a compiled extension (``compressai.ans``). Importing it the usual way
runs ``compressai/__init__.py``, which imports torch_geometric and scipy.stats (about 3 s); the
extension itself needs none of that, so it is loaded directly from the installed package. The
byte format is CompressAI's (and so the QARV authors'): 32-bit state, 16-bit words, 16-bit
precision, out-of-range values escaped with its bypass code.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["CdfTables", "encode", "decode", "decode_guard_bytes"]

_loaded: dict[str, ModuleType] = {}


def _extension(name: str) -> ModuleType:
    full = f"compressai.{name}"
    if full in _loaded:
        return _loaded[full]
    module = sys.modules.get(full)
    if module is None:
        spec = importlib.util.find_spec("compressai")  # locates the package without running it
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("CompressAI is not installed; lvae needs its range coder (pip install compressai)")
        ext = None
        for folder in spec.submodule_search_locations:
            finder = importlib.machinery.FileFinder(
                folder, (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
            )
            ext = finder.find_spec(full, None)
            if ext is not None:
                break
        if ext is None:
            raise ImportError(f"CompressAI's compiled module {full} was not found")
        if ext.loader is None:
            raise ImportError(f"CompressAI's compiled module {full} cannot be loaded")
        module = importlib.util.module_from_spec(ext)
        ext.loader.exec_module(module)
        # NOTE: registered under its real name so that a later `import compressai` reuses it
        # (a pybind11 module initialised twice would register its classes twice).
        sys.modules[full] = module
    _loaded[full] = module
    return module


def _load() -> ModuleType:
    """The rANS coder (``compressai.ans``)."""
    return _extension("ans")


def _load_cxx() -> ModuleType:
    """CompressAI's helpers (``compressai._CXX``: ``pmf_to_quantized_cdf``), to build tables."""
    return _extension("_CXX")


class CdfTables:
    """Quantized CDF tables in the form the coder takes: plain lists, converted once."""

    __slots__ = ("cdfs", "lengths", "offsets")

    def __init__(self, cdfs: Sequence[Sequence[int]], lengths: Sequence[int], offsets: Sequence[int]):
        if not (len(cdfs) == len(lengths) == len(offsets)) or not cdfs:
            raise ValueError("cdfs, lengths and offsets must be non-empty and of the same length")
        self.cdfs = [list(map(int, c)) for c in cdfs]
        self.lengths = [int(v) for v in lengths]
        self.offsets = [int(v) for v in offsets]


def encode(symbols: list[int], indexes: list[int], tables: CdfTables) -> bytes:
    """rANS-code ``symbols`` (integers), symbol ``i`` with CDF table ``indexes[i]``."""
    return _load().RansEncoder().encode_with_indexes(symbols, indexes, tables.cdfs, tables.lengths, tables.offsets)


def decode_guard_bytes(string_length: int, num_symbols: int) -> int:
    """Zero bytes appended before decoding (see :func:`decode`)."""
    return 8 * num_symbols + 16 * string_length + 64


def decode(string: bytes, indexes: list[int], tables: CdfTables) -> list[int]:
    """Decode ``len(indexes)`` symbols from ``string`` with the given CDF indexes.

    NOTE: CompressAI's decoder reads 32-bit words without bounds checks, so a damaged string
    would make it read past its end. Zeros are appended first: enough for one word per symbol
    and its bypass header, plus the longest bypass run the string's bits can encode.
    """
    padded = bytes(string) + bytes(decode_guard_bytes(len(string), len(indexes)))
    return _load().RansDecoder().decode_with_indexes(padded, indexes, tables.cdfs, tables.lengths, tables.offsets)
