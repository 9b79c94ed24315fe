"""Damaged, cut, extended and forged files: each one decodes or raises BitstreamError — nothing else.

A seeded loop (no extra dependency); LVAE_FUZZ_CASES sets the number of cases (default 3000).
Forged cases recompute the CRC so that mutations reach the header checks and the range decoder.
"""
import os
import random
import struct
import zlib

import pytest
import torch

import lvae
from lvae import bitstream
from lvae.errors import BitstreamError

from conftest import DATA

CASES = int(os.environ.get("LVAE_FUZZ_CASES", "3000"))
MAX_PIXELS = 256 * 256  # keeps forged sizes cheap to decode


@pytest.fixture(scope="module")
def model():
    return lvae.get_model("qarv_tiny", pretrained=str(DATA / "qarv_tiny_trained.pt")).eval().compress_mode(True)


@pytest.fixture(scope="module")
def seeds(model):
    torch.manual_seed(0)
    files = []
    for hw, lmb in (((37, 41), 64.0), ((64, 64), 1000.0), ((5, 90), 16.0)):
        im = torch.rand(1, 3, *hw)
        files.append(model.compress(im, lmb=lmb))
        header, strings = bitstream.unpack(files[-1])
        files.append(bitstream.pack_legacy(header.lmb, *hw, strings))  # the authors' layout of the same strings
        files.append(bitstream.pack("qarv_tiny", header.lmb, *hw, strings, version=1))
        files.append(bitstream.truncate(files[-3], 2))  # a prefix of the version-2 file
    return files


def _v2_header_end(data: bytes) -> int | None:
    """Where version 2's header CRC sits (walking the header as the parser does), or None."""
    try:
        flags, name_len = data[5], data[7]
        pos = 8 + name_len + (8 if flags & 2 else 0) + 4
        for _ in range(2):  # height, width
            while data[pos] & 0x80:
                pos += 1
            pos += 1
        present = data[pos + 1]
        pos += 2
        for _ in range(present):
            while data[pos] & 0x80:
                pos += 1
            pos += 1
    except IndexError:
        return None
    return pos if pos + 4 <= len(data) else None


def _fix_crc(data: bytes) -> bytes:
    """Forge a valid checksum over the mutated bytes (version 2: the header's; version 1: the file's)."""
    if data[:4] != b"LVAE" or len(data) < 8:
        return data
    if data[4] == 2:
        end = _v2_header_end(data)
        if end is None:
            return data
        return data[:end] + struct.pack("<I", zlib.crc32(data[:end])) + data[end + 4 :]
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(8)
    if kind == 0:  # flip bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # cut
        b = b[: rng.randrange(len(b))]
    elif kind == 2:  # extend
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 3:  # overwrite a header byte
        i = rng.randrange(min(len(b), 64))
        b[i] = rng.randrange(256)
    elif kind == 4:  # random bytes inside a string
        start = rng.randrange(len(b) // 2, len(b))
        for i in range(start, min(len(b), start + rng.randint(1, 16))):
            b[i] = rng.randrange(256)
    elif kind == 5:  # swap two chunks
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b = b[:i] + b[j:] + b[i:j]
    elif kind == 6:  # drop a chunk
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 32)]
    else:  # version 2's per-string fields: a check value, or a header field after the name
        end = _v2_header_end(data) if data[:4] == b"LVAE" and data[4] == 2 else None
        if end is not None and rng.random() < 0.5:
            header, strings = bitstream.unpack(data)
            pos = end + 4
            target = rng.randrange(len(strings))
            for k in range(target):
                pos += 4 + len(strings[k])
            b[pos + rng.randrange(4)] ^= 1 << rng.randrange(8)
        elif end is not None:
            i = rng.randrange(4, end)  # version, flags, colour, name, fingerprint, λ, sizes, counts, lengths
            b[i] = rng.randrange(256)
    data = bytes(b)
    return _fix_crc(data) if rng.random() < 0.6 else data


def test_fuzzed_files_decode_or_raise_bitstream_error(model, seeds):
    rng = random.Random(1234)
    outcomes = {"decoded": 0, "error": 0}
    for case in range(CASES):
        data = _mutate(rng, rng.choice(seeds))
        try:
            img = model.decompress(data, max_pixels=MAX_PIXELS)
        except BitstreamError:
            outcomes["error"] += 1
            continue
        except Exception as exc:  # pragma: no cover - the failure we are looking for
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc} (file {data[:48].hex()}...)")
        h = bitstream.read_header(data)
        assert img.shape == (1, 3, h.height, h.width)
        assert bool(torch.isfinite(img).all()) and img.min() >= 0 and img.max() <= 1
        outcomes["decoded"] += 1
    # both outcomes must occur, or the mutations do not reach the decoder
    assert outcomes["decoded"] > CASES // 50 and outcomes["error"] > CASES // 2, outcomes


def test_any_single_bit_flip_is_detected(model, seeds):
    data = seeds[0]
    for i in range(len(data) * 8):
        b = bytearray(data)
        b[i // 8] ^= 1 << (i % 8)
        with pytest.raises(BitstreamError):
            model.decompress(bytes(b))


def test_every_truncation_is_detected(model, seeds):
    for data in seeds[:2]:
        for n in range(len(data)):
            with pytest.raises(BitstreamError):
                model.decompress(data[:n])
