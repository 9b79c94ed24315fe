"""Byte containers for coded images: lvae's own format and the QARV authors' layout.

Both hold the same thing: the latent strings of one image (one per latent block, decoder order),
λ, and the original image size. The layouts are documented byte by byte in docs/bitstream.md.
All integers are little-endian. Every parsing error raises :class:`lvae.errors.BitstreamError`.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

from .errors import BitstreamError

__all__ = ["Header", "MAGIC", "VERSION", "pack", "unpack", "pack_legacy", "unpack_legacy", "read_header", "parse"]

MAGIC = b"LVAE"
VERSION = 1
MAX_STRINGS = 255
MAX_SIDE = 2**32 - 1
_FIXED = struct.Struct("<4sBB")  # magic, version, model-name length
_BODY = struct.Struct("<fIIB")  # λ, height, width, number of strings
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Header:
    """What a container says about the coded image (everything but the strings themselves)."""

    format: str  # "lvae" or "legacy"
    version: int  # 0 for the authors' layout
    model_name: str | None  # None in the authors' layout (always qarv_base)
    lmb: float
    height: int
    width: int
    string_lengths: list[int] = field(default_factory=list)

    @property
    def num_bytes_strings(self) -> int:
        return sum(self.string_lengths)


def _check_common(lmb: float, height: int, width: int, strings: list[bytes]) -> None:
    if not (isinstance(height, int) and isinstance(width, int)) or height < 1 or width < 1:
        raise ValueError(f"image size must be positive integers, got {height}×{width}")
    if not math.isfinite(lmb) or lmb <= 0:
        raise ValueError(f"λ must be a positive finite number, got {lmb}")
    if not 1 <= len(strings) <= MAX_STRINGS:
        raise ValueError(f"a container holds 1 to {MAX_STRINGS} strings, got {len(strings)}")
    for s in strings:
        if not isinstance(s, (bytes, bytearray)):
            raise TypeError(f"latent strings must be bytes, got {type(s).__name__}")


def pack(model_name: str, lmb: float, height: int, width: int, strings: list[bytes]) -> bytes:
    """lvae container: magic, version, model name, λ (float32), size (uint32), lengths, strings, CRC-32."""
    _check_common(lmb, height, width, strings)
    name = model_name.encode("ascii")
    if not 1 <= len(name) <= 255:
        raise ValueError(f"model name must be 1–255 ASCII characters, got {model_name!r}")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise ValueError(f"image sides must be below 2**32, got {height}×{width}")
    parts = [
        _FIXED.pack(MAGIC, VERSION, len(name)),
        name,
        _BODY.pack(lmb, height, width, len(strings)),
        struct.pack(f"<{len(strings)}I", *(len(s) for s in strings)),
        *[bytes(s) for s in strings],
    ]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse an lvae container; checks magic, version, CRC-32 and that every byte is accounted for."""
    data = bytes(data)
    if len(data) < _FIXED.size + _CRC.size:
        raise BitstreamError(f"file too short to be an lvae file ({len(data)} bytes)")
    magic, version, name_len = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise BitstreamError("not an lvae file (bad magic bytes)")
    if version != VERSION:
        raise BitstreamError(f"unsupported lvae format version {version} (this library reads version {VERSION})")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise BitstreamError("checksum mismatch: the file is corrupted or truncated")
    pos = _FIXED.size
    end = len(data) - _CRC.size
    if pos + name_len + _BODY.size > end:
        raise BitstreamError("truncated header")
    try:
        model_name = data[pos : pos + name_len].decode("ascii")
    except UnicodeDecodeError:
        raise BitstreamError("model name in the header is not ASCII") from None
    if not model_name.isprintable() or not model_name:
        raise BitstreamError("invalid model name in the header")
    pos += name_len
    lmb, height, width, n = _BODY.unpack_from(data, pos)
    pos += _BODY.size
    if height < 1 or width < 1:
        raise BitstreamError(f"invalid image size {height}×{width} in the header")
    if not math.isfinite(lmb) or lmb <= 0:
        raise BitstreamError(f"invalid λ {lmb} in the header")
    if n < 1 or pos + 4 * n > end:
        raise BitstreamError("invalid or truncated list of string lengths")
    lengths = list(struct.unpack_from(f"<{n}I", data, pos))
    pos += 4 * n
    if pos + sum(lengths) != end:
        raise BitstreamError(
            f"string lengths add up to {sum(lengths)} bytes but the file holds {end - pos}"
        )
    strings = []
    for length in lengths:
        strings.append(data[pos : pos + length])
        pos += length
    header = Header("lvae", version, model_name, float(lmb), int(height), int(width), lengths)
    return header, strings


# -- the QARV authors' layout ------------------------------------------------------------------
_LEGACY_HEAD = struct.Struct("<HHfHHHB")  # H, W, λ, N, H_pad/64, W_pad/64, number of strings
LEGACY_STRIDE = 64


def pack_legacy(lmb: float, height: int, width: int, strings: list[bytes]) -> bytes:
    """The authors' ``compress_file`` layout (no magic, no checksum; sides up to 65,535)."""
    _check_common(lmb, height, width, strings)
    if height > 0xFFFF or width > 0xFFFF:
        raise ValueError(f"the authors' layout stores sides in 16 bits; {height}×{width} does not fit")
    hp, wp = -(-height // LEGACY_STRIDE), -(-width // LEGACY_STRIDE)
    head = _LEGACY_HEAD.pack(height, width, lmb, 1, hp, wp, len(strings))
    lengths = struct.pack(f"<{len(strings)}I", *(len(s) for s in strings))
    return head + lengths + b"".join(bytes(s) for s in strings)


def unpack_legacy(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse the authors' layout, checking that its fields agree with each other and the size."""
    data = bytes(data)
    if len(data) < _LEGACY_HEAD.size:
        raise BitstreamError(f"file too short ({len(data)} bytes)")
    height, width, lmb, batch, hp, wp, n = _LEGACY_HEAD.unpack_from(data, 0)
    pos = _LEGACY_HEAD.size
    if batch != 1 or height < 1 or width < 1 or n < 1:
        raise BitstreamError("not a QARV file (implausible header)")
    if (hp, wp) != (-(-height // LEGACY_STRIDE), -(-width // LEGACY_STRIDE)):
        raise BitstreamError("not a QARV file (padded size does not match the image size)")
    if not math.isfinite(lmb) or lmb <= 0:
        raise BitstreamError(f"invalid λ {lmb} in the header")
    if pos + 4 * n > len(data):
        raise BitstreamError("truncated list of string lengths")
    lengths = list(struct.unpack_from(f"<{n}I", data, pos))
    pos += 4 * n
    if pos + sum(lengths) != len(data):
        raise BitstreamError(
            f"string lengths add up to {sum(lengths)} bytes but the file holds {len(data) - pos} "
            "(truncated or not a QARV file)"
        )
    strings = []
    for length in lengths:
        strings.append(data[pos : pos + length])
        pos += length
    return Header("legacy", 0, None, float(lmb), int(height), int(width), lengths), strings


def parse(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse either layout: lvae files are recognised by their magic bytes, else the authors' layout is tried."""
    data = bytes(data)
    if not data:
        raise BitstreamError("empty file")
    if data[: len(MAGIC)] == MAGIC:
        try:
            return unpack(data)
        except BitstreamError:
            # NOTE: an authors' file could start with these 4 bytes (H = 22092, W = 17729).
            try:
                return unpack_legacy(data)
            except BitstreamError:
                pass
            raise
    try:
        return unpack_legacy(data)
    except BitstreamError as exc:
        raise BitstreamError(f"neither an lvae file nor an authors' QARV file: {exc}") from None


def read_header(data: bytes) -> Header:
    """The header of a coded file of either layout (validated as by :func:`parse`)."""
    return parse(data)[0]
