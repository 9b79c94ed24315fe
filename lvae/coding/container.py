"""Byte containers for coded images: lvae's own format (versions 2 and 1) and the QARV authors' layout.

All hold the latent strings of one image (one per latent block, decoder order), λ, and the
original image size. Version 2 (written by default) adds, per string, the index-map check of
:mod:`lvae.coding.portable`, the weights' fingerprint, the source's colour type, and the count of
strings present out of the model's total (so that a prefix of the strings is a valid file). The
layouts are documented byte by byte in docs/bitstream.md. Integers are little-endian.
Every parsing error raises :class:`lvae.errors.BitstreamError`.

Pure Python on purpose (no torch): ``lvae info`` reads headers without importing torch.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

from ..errors import BitstreamError

__all__ = [
    "Header", "MAGIC", "VERSION", "VERSIONS", "COLOURS", "pack", "unpack", "pack_legacy", "unpack_legacy",
    "read_header", "parse", "truncate", "LEGACY_MODEL", "unpack_pickled",
]

MAGIC = b"LVAE"
VERSION = 2  # written by default
VERSIONS = (1, 2)  # read
MAX_STRINGS = 255
MAX_SIDE = 2**32 - 1
COLOURS = ("rgb", "gray")  # version 2's colour-type byte: the index of the source's colour type
FINGERPRINT_BYTES = 8
FLAG_CHECKS = 0x01  # each string is preceded by its 32-bit index-map check
FLAG_FINGERPRINT = 0x02  # the header holds the weights' fingerprint
FLAG_LOSSLESS = 0x04  # every string is present and the file decodes to its source exactly (a lossless model);
# the last string (the pixels) carries PIXEL_CHECK_BYTES more check bytes after its 32-bit check
PIXEL_CHECK_BYTES = 16
_FIXED = struct.Struct("<4sBB")  # magic, version, model-name length (v1)
_BODY = struct.Struct("<fIIB")  # λ, height, width, number of strings (v1)
_FIXED2 = struct.Struct("<4sBBBB")  # magic, version, flags, colour type, model-name length (v2)
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Header:
    """What a container says about the coded image (everything but the strings themselves)."""

    format: str  # "lvae", "legacy" (the QARV authors' layout) or "pickle" (the QRes-VAE authors')
    version: int  # 0 for the authors' layouts
    model_name: str | None  # None in the authors' layouts (QARV's: always qarv_base; QRes-VAE's: unknown)
    lmb: float  # NaN in the QRes-VAE authors' layout (not recorded)
    height: int
    width: int
    string_lengths: list[int] = field(default_factory=list)
    checks: list[int] | None = None  # version 2: one index-map check per string (None: not recorded)
    fingerprint: bytes | None = None  # version 2: first 8 bytes of the weights' SHA-256
    colour: str = "rgb"  # version 2: the source image's colour type, one of COLOURS
    num_latents: int | None = None  # the model's number of latent strings (None: as many as present)
    lossless: bool = False  # version 2: the file decodes to its source bit for bit (a lossless model's)
    pixel_check: bytes | None = None  # lossless files: the pixel map's further check (PIXEL_CHECK_BYTES)

    @property
    def num_bytes_strings(self) -> int:
        return sum(self.string_lengths)

    @property
    def num_strings(self) -> int:
        return len(self.string_lengths)


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


def _varint(value: int) -> bytes:
    """Unsigned LEB128 (7 bits a byte, low bits first)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(5):  # values below 2**35; callers bound them further
        if pos >= end:
            raise BitstreamError(f"truncated header ({what})")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise BitstreamError(f"invalid header ({what} is not in its shortest form)")
            return value, pos
    raise BitstreamError(f"invalid header ({what} is too long)")


def pack(
    model_name: str,
    lmb: float,
    height: int,
    width: int,
    strings: list[bytes],
    *,
    checks: list[int] | None = None,
    fingerprint: bytes | None = None,
    colour: str = "rgb",
    num_latents: int | None = None,
    version: int = VERSION,
    lossless: bool = False,
    pixel_check: bytes | None = None,
) -> bytes:
    """An lvae container (version 2 by default; ``version=1`` writes the older layout).

    ``checks``: one 32-bit index-map check per string; ``fingerprint``: 8 bytes identifying the
    weights; ``num_latents``: the model's number of strings when ``strings`` is a prefix of them;
    ``lossless``: the file decodes to its source exactly (all strings present, with checks, and
    ``pixel_check``, the last string's further :data:`PIXEL_CHECK_BYTES`).
    """
    if version == 1:
        if (checks is not None or fingerprint is not None or colour != "rgb" or num_latents not in (None, len(strings))
                or lossless):
            raise ValueError("version 1 records no checks, fingerprint, colour type, prefix or losslessness")
        return _pack_v1(model_name, lmb, height, width, strings)
    if version != 2:
        raise ValueError(f"lvae writes container versions {VERSIONS}, not {version}")
    total = len(strings) if num_latents is None else num_latents
    if strings or total:
        _check_common(lmb, height, width, strings or [b""])
    if not 0 <= len(strings) <= total <= MAX_STRINGS or total < 1:
        raise ValueError(
            f"a container holds 0 to {MAX_STRINGS} of 1 to {MAX_STRINGS} strings, got {len(strings)} of {total}"
        )
    name = model_name.encode("ascii")
    if not 1 <= len(name) <= 255:
        raise ValueError(f"model name must be 1–255 ASCII characters, got {model_name!r}")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise ValueError(f"image sides must be below 2**32, got {height}×{width}")
    if colour not in COLOURS:
        raise ValueError(f"colour type must be one of {COLOURS}, got {colour!r}")
    flags = 0
    if checks is not None:
        if len(checks) != len(strings) or any(not 0 <= int(c) < 2**32 for c in checks):
            raise ValueError("checks must be one unsigned 32-bit value per string")
        flags |= FLAG_CHECKS
    if fingerprint is not None:
        if len(fingerprint) != FINGERPRINT_BYTES:
            raise ValueError(f"the weights' fingerprint must be {FINGERPRINT_BYTES} bytes")
        flags |= FLAG_FINGERPRINT
    if lossless:
        if len(strings) != total:
            raise ValueError("a lossless file holds every string (a prefix of them is not lossless)")
        if checks is None or pixel_check is None or len(pixel_check) != PIXEL_CHECK_BYTES:
            raise ValueError(f"a lossless file needs the strings' checks and a {PIXEL_CHECK_BYTES}-byte pixel check")
        flags |= FLAG_LOSSLESS
    elif pixel_check is not None:
        raise ValueError("only a lossless file carries a pixel check")
    head = [_FIXED2.pack(MAGIC, 2, flags, COLOURS.index(colour), len(name)), name]
    if fingerprint is not None:
        head.append(bytes(fingerprint))
    head += [struct.pack("<f", lmb), _varint(height), _varint(width), bytes([total, len(strings)])]
    head += [_varint(len(s)) for s in strings]
    header = b"".join(head)
    body = [header, _CRC.pack(zlib.crc32(header))]
    for i, s in enumerate(strings):
        if checks is not None:
            body.append(_CRC.pack(int(checks[i])))
        if lossless and i == len(strings) - 1:
            assert pixel_check is not None
            body.append(bytes(pixel_check))
        body.append(bytes(s))
    return b"".join(body)


def _unpack_v2(data: bytes) -> tuple[Header, list[bytes]]:
    _, version, flags, colour, name_len = _FIXED2.unpack_from(data, 0)
    if flags & ~(FLAG_CHECKS | FLAG_FINGERPRINT | FLAG_LOSSLESS):
        raise BitstreamError(f"unknown flags 0x{flags:02x} in the header (a newer lvae wrote this file?)")
    if colour >= len(COLOURS):
        raise BitstreamError(f"unknown colour type {colour} in the header")
    end = len(data)
    pos = _FIXED2.size
    fixed = name_len + (FINGERPRINT_BYTES if flags & FLAG_FINGERPRINT else 0) + 4
    if pos + fixed > end:
        raise BitstreamError("truncated header")
    model_name = _model_name(data[pos : pos + name_len])
    pos += name_len
    fingerprint = None
    if flags & FLAG_FINGERPRINT:
        fingerprint = data[pos : pos + FINGERPRINT_BYTES]
        pos += FINGERPRINT_BYTES
    (lmb,) = struct.unpack_from("<f", data, pos)
    pos += 4
    height, pos = _read_varint(data, pos, end, "height")
    width, pos = _read_varint(data, pos, end, "width")
    if pos + 2 > end:
        raise BitstreamError("truncated header")
    total, present = data[pos], data[pos + 1]
    pos += 2
    lengths = []
    for _ in range(present):
        length, pos = _read_varint(data, pos, end, "string length")
        lengths.append(length)
    if pos + _CRC.size > end:
        raise BitstreamError("truncated header")
    (crc,) = _CRC.unpack_from(data, pos)
    if zlib.crc32(data[:pos]) != crc:
        raise BitstreamError("header checksum mismatch: the file is corrupted or truncated")
    pos += _CRC.size
    if not 1 <= height <= MAX_SIDE or not 1 <= width <= MAX_SIDE:
        raise BitstreamError(f"invalid image size {height}×{width} in the header")
    if not math.isfinite(lmb) or lmb <= 0:
        raise BitstreamError(f"invalid λ {lmb} in the header")
    if total < 1 or present > total:
        raise BitstreamError(f"invalid header: {present} of {total} latent strings")
    lossless = bool(flags & FLAG_LOSSLESS)
    if lossless and (present != total or not flags & FLAG_CHECKS):
        raise BitstreamError(f"invalid header: a lossless file with {present} of {total} strings or without checks")
    per_check = _CRC.size if flags & FLAG_CHECKS else 0
    needed = sum(lengths) + per_check * present + (PIXEL_CHECK_BYTES if lossless else 0)
    if pos + needed != end:
        raise BitstreamError(
            f"the file is truncated or extended: its strings need {needed} bytes but it holds {end - pos}"
        )
    strings, checks = [], []
    pixel_check = None
    for i, length in enumerate(lengths):
        if per_check:
            checks.append(_CRC.unpack_from(data, pos)[0])
            pos += per_check
        if lossless and i == len(lengths) - 1:
            pixel_check = data[pos : pos + PIXEL_CHECK_BYTES]
            pos += PIXEL_CHECK_BYTES
        strings.append(data[pos : pos + length])
        pos += length
    header = Header(
        "lvae", version, model_name, float(lmb), int(height), int(width), lengths,
        checks=checks if per_check else None, fingerprint=fingerprint, colour=COLOURS[colour], num_latents=total,
        lossless=lossless, pixel_check=pixel_check,
    )
    return header, strings


def _model_name(raw: bytes) -> str:
    try:
        model_name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BitstreamError("model name in the header is not ASCII") from None
    if not model_name.isprintable() or not model_name:
        raise BitstreamError("invalid model name in the header")
    return model_name



def _pack_v1(model_name: str, lmb: float, height: int, width: int, strings: list[bytes]) -> bytes:
    """Version 1: magic, version, model name, λ (float32), size (uint32), lengths, strings, CRC-32."""
    _check_common(lmb, height, width, strings)
    name = model_name.encode("ascii")
    if not 1 <= len(name) <= 255:
        raise ValueError(f"model name must be 1–255 ASCII characters, got {model_name!r}")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise ValueError(f"image sides must be below 2**32, got {height}×{width}")
    parts = [
        _FIXED.pack(MAGIC, 1, len(name)),
        name,
        _BODY.pack(lmb, height, width, len(strings)),
        struct.pack(f"<{len(strings)}I", *(len(s) for s in strings)),
        *[bytes(s) for s in strings],
    ]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse an lvae container (version 2 or 1); checks magic, version, checksums and that every
    byte is accounted for. (Version 2's strings are verified when they are decoded.)"""
    data = bytes(data)
    if len(data) < _FIXED.size + _CRC.size:
        raise BitstreamError(f"file too short to be an lvae file ({len(data)} bytes)")
    magic, version, name_len = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise BitstreamError("not an lvae file (bad magic bytes)")
    if version not in VERSIONS:
        raise BitstreamError(f"unsupported lvae format version {version} (this library reads versions {VERSIONS})")
    if version == 2:
        if len(data) < _FIXED2.size + _CRC.size:
            raise BitstreamError(f"file too short to be an lvae file ({len(data)} bytes)")
        return _unpack_v2(data)
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise BitstreamError("checksum mismatch: the file is corrupted or truncated")
    pos = _FIXED.size
    end = len(data) - _CRC.size
    if pos + name_len + _BODY.size > end:
        raise BitstreamError("truncated header")
    model_name = _model_name(data[pos : pos + name_len])
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
    header = Header("lvae", version, model_name, float(lmb), int(height), int(width), lengths, num_latents=n)
    return header, strings


# -- the QARV authors' layout ------------------------------------------------------------------
_LEGACY_HEAD = struct.Struct("<HHfHHHB")  # H, W, λ, N, H_pad/64, W_pad/64, number of strings
LEGACY_STRIDE = 64
# The layout records no model name: it holds the authors' published model, and is read back as it.
LEGACY_MODEL = "qarv_base"


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
    return Header("legacy", 0, None, float(lmb), int(height), int(width), lengths, num_latents=n), strings


def unpack_pickled(data: bytes) -> tuple[Header, list[bytes]]:
    """The QRes-VAE authors' pickled layout (read without unpickling: :mod:`.pickled`). It records
    no model and no λ: the header says ``format='pickle'``, ``model_name`` None and λ NaN."""
    from .pickled import parse_qres_legacy

    f = parse_qres_legacy(data)
    strings = [*f.strings, *([f.pixel_string] if f.pixel_string is not None else [])]
    lengths = [len(s) for s in strings]
    header = Header("pickle", 0, None, math.nan, f.height, f.width, lengths, num_latents=len(strings),
                    lossless=f.lossless)
    return header, strings


def parse(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse any layout: lvae files are recognised by their magic bytes, the QRes-VAE authors' by a
    pickle's first two bytes, else the QARV authors' layout is tried."""
    from .pickled import looks_like_pickle

    data = bytes(data)
    if not data:
        raise BitstreamError("empty file")
    if looks_like_pickle(data):
        try:
            return unpack_pickled(data)
        except BitstreamError as exc:
            # NOTE: a QARV authors' file of height 640-1407 with some widths starts with these two bytes too.
            try:
                return unpack_legacy(data)
            except BitstreamError:
                raise exc from None
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


def truncate(data: bytes, num_latents: int) -> bytes:
    """A valid, smaller file holding the first ``num_latents`` latent strings of ``data``.

    Decoding it gives what ``model.decompress(data, num_latents=k)`` gives, bit for bit. lvae
    files of version 2 keep their checks, fingerprint and colour type; version 1 files become
    version 2 files without checks. The authors' layout cannot say that strings are missing, so
    it cannot be truncated (BitstreamError).
    """
    header, strings = parse(data)
    if header.format != "lvae":
        raise BitstreamError("the authors' layouts cannot be truncated (they have no field for missing strings); "
                             "re-encode the image in the lvae format")
    if isinstance(num_latents, bool) or int(num_latents) != num_latents or not 0 <= num_latents <= len(strings):
        raise ValueError(f"num_latents must be an integer from 0 to {len(strings)}, got {num_latents!r}")
    k = int(num_latents)
    if header.model_name is None:  # an lvae container always names its model; parse() checks it
        raise BitstreamError("the file names no model")
    return pack(
        header.model_name, header.lmb, header.height, header.width, strings[:k],
        checks=header.checks[:k] if header.checks is not None else None, fingerprint=header.fingerprint,
        colour=header.colour, num_latents=header.num_latents, lossless=header.lossless and k == len(strings),
        pixel_check=header.pixel_check if header.lossless and k == len(strings) else None,
    )
