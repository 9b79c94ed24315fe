"""The byte containers (lvae/coding/container.py) without a model: layouts built by hand from
docs/bitstream.md, every field read back, and every consistency check made to fire.

Pure Python and fast: also the test subset of the mutation run for container.py (docs/testing.md).
"""
import math
import struct
import zlib

import pytest

from lvae import bitstream
from lvae.coding import container
from lvae.errors import BitstreamError

STRINGS = [b"\x01\x02\x03", b"", b"\xff" * 130, b"z"]
FP = bytes(range(10, 18))


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v >> 7 else 0))
        v >>= 7
        if not v:
            return bytes(out)


def v2_by_hand(name=b"qarv_tiny", lmb=100.5, h=70, w=200, strings=STRINGS, checks=None, fp=None, colour=0,
               total=None) -> bytes:
    flags = (1 if checks is not None else 0) | (2 if fp is not None else 0)
    total = len(strings) if total is None else total
    head = b"LVAE" + bytes([2, flags, colour, len(name)]) + name + (fp or b"") + struct.pack("<f", lmb)
    head += varint(h) + varint(w) + bytes([total, len(strings)]) + b"".join(varint(len(s)) for s in strings)
    body = b"".join((struct.pack("<I", checks[i]) if checks is not None else b"") + s for i, s in enumerate(strings))
    return head + struct.pack("<I", zlib.crc32(head)) + body


def v1_by_hand(name=b"qarv_tiny", lmb=100.5, h=70, w=90, strings=STRINGS) -> bytes:
    body = b"LVAE" + bytes([1, len(name)]) + name + struct.pack("<fIIB", lmb, h, w, len(strings))
    body += struct.pack(f"<{len(strings)}I", *map(len, strings)) + b"".join(strings)
    return body + struct.pack("<I", zlib.crc32(body))


def legacy_by_hand(h=100, w=150, lmb=16.0, strings=STRINGS, hp=None, wp=None, batch=1) -> bytes:
    hp = math.ceil(h / 64) if hp is None else hp
    wp = math.ceil(w / 64) if wp is None else wp
    head = struct.pack("<HHfHHHB", h, w, lmb, batch, hp, wp, len(strings))
    return head + struct.pack(f"<{len(strings)}I", *map(len, strings)) + b"".join(strings)


def with_header_crc(data: bytes, header_end: int) -> bytes:
    """Recompute version 2's header CRC (which sits at ``header_end``) after editing the header."""
    return data[:header_end] + struct.pack("<I", zlib.crc32(data[:header_end])) + data[header_end + 4:]


# -- version 2 ---------------------------------------------------------------------------------
def test_public_module_is_the_container():
    assert bitstream.pack is container.pack and bitstream.parse is container.parse
    assert (container.MAGIC, container.VERSION, container.VERSIONS) == (b"LVAE", 2, (1, 2))


@pytest.mark.parametrize("checks, fp, colour", [
    (None, None, "rgb"), ([1, 2**32 - 1, 0, 7], None, "rgb"), (None, FP, "gray"), ([5, 6, 7, 8], FP, "gray"),
])
def test_v2_bytes_are_as_documented_and_read_back(checks, fp, colour):
    data = bitstream.pack("qarv_tiny", 100.5, 70, 200, STRINGS, checks=checks, fingerprint=fp, colour=colour)
    assert data == v2_by_hand(checks=checks, fp=fp, colour=("rgb", "gray").index(colour))
    header, strings = bitstream.unpack(data)
    assert strings == STRINGS
    assert header == bitstream.Header(
        "lvae", 2, "qarv_tiny", 100.5, 70, 200, [3, 0, 130, 1], checks=checks, fingerprint=fp, colour=colour,
        num_latents=4,
    )
    assert (header.num_strings, header.num_bytes_strings) == (4, 134)
    assert bitstream.parse(data) == (header, strings) and bitstream.read_header(data) == header


def test_v2_prefix_records_the_models_total():
    data = bitstream.pack("m", 20.0, 1, 1, STRINGS[:2], num_latents=9)
    assert data == v2_by_hand(name=b"m", lmb=20.0, h=1, w=1, strings=STRINGS[:2], total=9)
    header, strings = bitstream.unpack(data)
    assert (header.num_latents, header.num_strings, strings) == (9, 2, STRINGS[:2])
    empty = bitstream.pack("m", 20.0, 3, 4, [], num_latents=9)  # no strings at all: the prior's image
    assert empty == v2_by_hand(name=b"m", lmb=20.0, h=3, w=4, strings=[], total=9)
    header, strings = bitstream.unpack(empty)
    assert (header.num_latents, header.string_lengths, strings, header.height) == (9, [], [], 3)


@pytest.mark.parametrize("side", [1, 127, 128, 16383, 16384, 2**32 - 1])
def test_v2_sides_are_shortest_varints(side):
    data = bitstream.pack("m", 20.0, side, 5, [b"ab"])
    assert data == v2_by_hand(name=b"m", lmb=20.0, h=side, w=5, strings=[b"ab"])
    assert bitstream.unpack(data)[0].height == side


def test_v2_string_of_128_bytes_has_a_two_byte_length():
    data = bitstream.pack("m", 20.0, 5, 5, [bytes(128)])
    assert data[8 + 1 + 4 + 2 + 2:][:2] == bytes([0x80, 0x01])
    assert bitstream.unpack(data)[1] == [bytes(128)]


COMMON_REFUSALS = [
    (dict(height=0), ValueError, "^image size must be positive integers, got 0×6$"),
    (dict(width=-3), ValueError, "^image size must be positive integers, got 5×-3$"),
    (dict(height=2.0), ValueError, "^image size must be positive integers, got 2.0×6$"),
    (dict(lmb=0.0), ValueError, "^λ must be a positive finite number, got 0.0$"),
    (dict(lmb=-1.0), ValueError, "^λ must be a positive finite number, got -1.0$"),
    (dict(lmb=math.inf), ValueError, "^λ must be a positive finite number, got inf$"),
    (dict(lmb=math.nan), ValueError, "^λ must be a positive finite number, got nan$"),
    (dict(strings=[b"a"] * 256), ValueError, "^a container holds 1 to 255 strings, got 256$"),
    (dict(strings=["text"]), TypeError, "^latent strings must be bytes, got str$"),
    (dict(model_name=""), ValueError, "^model name must be 1–255 ASCII characters, got ''$"),
    (dict(model_name="x" * 256), ValueError, "^model name must be 1–255 ASCII characters, got 'x+'$"),
    (dict(height=2**32), ValueError, "^image sides must be below 2\\*\\*32, got 4294967296×6$"),
    (dict(width=2**32), ValueError, "^image sides must be below 2\\*\\*32, got 5×4294967296$"),
    (dict(model_name="é"), UnicodeEncodeError, "ascii"),
]
V2_REFUSALS = [
    (dict(colour="cmyk"), ValueError, "^colour type must be one of \\('rgb', 'gray'\\), got 'cmyk'$"),
    (dict(checks=[1, 2]), ValueError, "^checks must be one unsigned 32-bit value per string$"),
    (dict(checks=[1, 2, 3, 2**32]), ValueError, "^checks must be one unsigned 32-bit value per string$"),
    (dict(checks=[1, 2, 3, -1]), ValueError, "^checks must be one unsigned 32-bit value per string$"),
    (dict(fingerprint=b"1234567"), ValueError, "^the weights' fingerprint must be 8 bytes$"),
    (dict(num_latents=3), ValueError, "^a container holds 0 to 255 of 1 to 255 strings, got 4 of 3$"),
    (dict(num_latents=256), ValueError, "^a container holds 0 to 255 of 1 to 255 strings, got 4 of 256$"),
    (dict(strings=[], num_latents=0), ValueError, "^a container holds 0 to 255 of 1 to 255 strings, got 0 of 0$"),
    (dict(version=3), ValueError, "^lvae writes container versions \\(1, 2\\), not 3$"),
]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("kwargs, error, words", COMMON_REFUSALS)
def test_pack_refuses_what_it_cannot_write(kwargs, error, words, version):
    args = dict(model_name="qarv_tiny", lmb=100.0, height=5, width=6, strings=STRINGS)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        bitstream.pack(args.pop("model_name"), args.pop("lmb"), args.pop("height"), args.pop("width"),
                       args.pop("strings"), version=version, **args)


@pytest.mark.parametrize("kwargs, error, words", V2_REFUSALS)
def test_pack_v2_refuses_what_it_cannot_write(kwargs, error, words):
    args = dict(model_name="qarv_tiny", lmb=100.0, height=5, width=6, strings=STRINGS)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        bitstream.pack(args.pop("model_name"), args.pop("lmb"), args.pop("height"), args.pop("width"),
                       args.pop("strings"), **args)


@pytest.mark.parametrize("version", [1, 2])
def test_pack_accepts_the_limits(version):
    data = bitstream.pack("x" * 255, 1e-30, 2**32 - 1, 2**32 - 1, [b"a"] * 255, version=version)
    header, strings = bitstream.unpack(data)
    assert (header.model_name, header.height, header.width, len(strings)) == ("x" * 255, 2**32 - 1, 2**32 - 1, 255)
    data = bitstream.pack("x", 20.0, 1, 1, [bytearray(b"ab")], version=version)
    assert bitstream.unpack(data)[1] == [b"ab"]
    bitstream.pack("x", 20.0, 1, 1, [b"a"] * 255, checks=[2**32 - 1] * 255, num_latents=255)


def test_version_1_refuses_what_it_cannot_record():
    for extra in (dict(checks=[1] * 4), dict(fingerprint=FP), dict(colour="gray"), dict(num_latents=5),
                  dict(lossless=True)):
        with pytest.raises(ValueError, match="^version 1 records no checks, fingerprint, colour type, prefix or "
                                             "losslessness$"):
            bitstream.pack("m", 20.0, 5, 6, STRINGS, version=1, **extra)
    assert bitstream.pack("m", 20.0, 5, 6, STRINGS, version=1, num_latents=4) == v1_by_hand(b"m", 20.0, 5, 6)


V2 = v2_by_hand(checks=[11, 22, 33, 44], fp=FP)
# name, fingerprint, λ, H, W (two bytes), counts, lengths (130: two bytes)
V2_HEADER_END = 8 + 9 + 8 + 4 + 1 + 2 + 2 + 5


@pytest.mark.parametrize("edit, words", [
    (lambda d: d[:5] + bytes([0x0b]) + d[6:], "unknown flags 0x0b"),
    (lambda d: d[:5] + bytes([0x83]) + d[6:], "unknown flags 0x83"),
    (lambda d: d[:6] + bytes([2]) + d[7:], "unknown colour type 2"),
    (lambda d: d[:4] + bytes([3]) + d[5:], "unsupported lvae format version 3"),
    (lambda d: d[:4] + bytes([0]) + d[5:], "unsupported lvae format version 0"),
    (lambda d: b"LVAF" + d[4:], "bad magic"),
    (lambda d: d[:V2_HEADER_END - 1] + bytes([d[V2_HEADER_END - 1] ^ 1]) + d[V2_HEADER_END:], "header checksum"),
    (lambda d: d[:-1], "truncated or extended: its strings need 150 bytes but it holds 149"),
    (lambda d: d + b"\x00", "truncated or extended: its strings need 150 bytes but it holds 151"),
])
def test_v2_damage_is_named(edit, words):
    bitstream.unpack(V2)
    with pytest.raises(BitstreamError, match=words):
        bitstream.unpack(edit(V2))


@pytest.mark.parametrize("h, w, lmb, total, present, words", [
    (0, 5, 20.0, 1, 1, "invalid image size 0×5"),
    (5, 0, 20.0, 1, 1, "invalid image size 5×0"),
    (5, 5, 0.0, 1, 1, "invalid λ 0"),
    (5, 5, -2.0, 1, 1, "invalid λ -2"),
    (5, 5, math.inf, 1, 1, "invalid λ inf"),
    (5, 5, 20.0, 0, 0, "0 of 0 latent strings"),
    (5, 5, 20.0, 1, 2, "2 of 1 latent strings"),
    (2**32, 5, 20.0, 1, 1, "invalid image size 4294967296×5"),
])
def test_v2_forged_fields_with_a_valid_crc_are_refused(h, w, lmb, total, present, words):
    strings = [b"ab"] * present
    head = b"LVAE" + bytes([2, 0, 0, 1]) + b"m" + struct.pack("<f", lmb) + varint(h) + varint(w)
    head += bytes([total, present]) + b"".join(varint(len(s)) for s in strings)
    data = head + struct.pack("<I", zlib.crc32(head)) + b"".join(strings)
    with pytest.raises(BitstreamError, match=words):
        bitstream.unpack(data)


def test_v2_every_header_cut_is_a_truncated_header():
    data = v2_by_hand(fp=FP, checks=[1, 2, 3, 4])
    for n in range(12, V2_HEADER_END + 4):
        with pytest.raises(BitstreamError, match="truncated|too short|checksum"):
            bitstream.unpack(data[:n])
    with pytest.raises(BitstreamError, match="too short to be an lvae file \\(11 bytes\\)"):
        bitstream.unpack(data[:11])
    with pytest.raises(BitstreamError, match="too short to be an lvae file \\(9 bytes\\)"):
        bitstream.unpack(data[:9])


@pytest.mark.parametrize("cut, words", [
    (9, "truncated header$"),  # inside the model name
    (17 + 8 + 3, "truncated header$"),  # inside λ
    (29, "truncated header \\(height\\)"),
    (30, "truncated header \\(width\\)"),
    (31, "truncated header \\(width\\)"),
    (32, "truncated header$"),  # the two counts
    (33, "truncated header$"),
    (34, "truncated header \\(string length\\)"),
    (37, "truncated header$"),  # the CRC
])
def test_v2_truncated_header_names_the_field(cut, words):
    data = v2_by_hand(fp=FP, h=70, w=200, strings=STRINGS[:1])
    assert data[29] == 70 and data[30:32] == bytes([0xC8, 0x01])
    with pytest.raises(BitstreamError, match=words):
        container._unpack_v2(data[:cut])


@pytest.mark.parametrize("raw, words", [
    (b"\x80\x00", "not in its shortest form"),
    (b"\x81\x80\x00", "not in its shortest form"),
    (b"\x80\x80\x80\x80\x80", "too long"),
    (b"\xff\xff\xff\xff\x7f", None),  # 5 bytes is the longest allowed: 2**35 - 1
])
def test_varints_must_be_short_and_shortest(raw, words):
    if words is None:
        assert container._read_varint(raw, 0, len(raw), "x") == (2**35 - 1, 5)
    else:
        with pytest.raises(BitstreamError, match=words):
            container._read_varint(raw + b"\x00" * 3, 0, len(raw) + 3, "x")
    assert container._read_varint(b"\x00", 0, 1, "x") == (0, 1)
    assert container._read_varint(b"\x05\x7f", 1, 2, "x") == (127, 2)
    with pytest.raises(BitstreamError, match="truncated header \\(x\\)"):
        container._read_varint(b"\x80\x80", 0, 2, "x")
    assert [container._varint(v) for v in (0, 127, 128, 300)] == [b"\x00", b"\x7f", b"\x80\x01", b"\xac\x02"]


@pytest.mark.parametrize("name, words", [(b"\xff", "not ASCII"), (b"a\nb", "invalid model name"),
                                         (b"\x00", "invalid model name")])
def test_model_name_must_be_printable_ascii(name, words):
    data = bytearray(v2_by_hand(name=b"abc", strings=[b"q"]))
    data[8:11] = name.ljust(3, b"a")
    with pytest.raises(BitstreamError, match=words):
        bitstream.unpack(with_header_crc(bytes(data), 8 + 3 + 4 + 1 + 2 + 2 + 1))
    with pytest.raises(BitstreamError, match="invalid model name"):
        container._model_name(b"")


# -- version 1 ---------------------------------------------------------------------------------
def test_v1_bytes_are_as_documented_and_read_back():
    data = bitstream.pack("qarv_tiny", 100.5, 70, 90, STRINGS, version=1)
    assert data == v1_by_hand()
    header, strings = bitstream.unpack(data)
    assert strings == STRINGS
    assert header == bitstream.Header("lvae", 1, "qarv_tiny", 100.5, 70, 90, [3, 0, 130, 1], num_latents=4)
    assert header.checks is None and header.fingerprint is None and header.colour == "rgb"


@pytest.mark.parametrize("data, words", [
    (v1_by_hand()[:-1] + b"\x00", "checksum mismatch"),
    (v1_by_hand(h=0), "invalid image size 0×90"),
    (v1_by_hand(w=0), "invalid image size 70×0"),
    (v1_by_hand(lmb=-1.0), "invalid λ -1"),
    (v1_by_hand(lmb=math.nan), "invalid λ nan"),
    (v1_by_hand(strings=[]), "invalid or truncated list of string lengths"),
    (b"LVAE\x01\x05ab" + struct.pack("<I", zlib.crc32(b"LVAE\x01\x05ab")), "truncated header"),
    (b"LVAE\x01\x01", "too short to be an lvae file \\(6 bytes\\)"),
])
def test_v1_damage_is_named(data, words):
    with pytest.raises(BitstreamError, match=words):
        bitstream.unpack(data)


def test_v1_lengths_must_account_for_every_byte():
    good = v1_by_hand()
    body = bytearray(good[:-4])
    struct.pack_into("<I", body, 6 + 9 + 13, 4)  # first string claims 4 bytes instead of 3
    forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    with pytest.raises(BitstreamError, match="string lengths add up to 135 bytes but the file holds 134"):
        bitstream.unpack(forged)
    body = bytearray(good[:-4])
    body[6 + 9 + 12] = 200  # 200 strings: their lengths would run past the end
    forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    with pytest.raises(BitstreamError, match="invalid or truncated list of string lengths"):
        bitstream.unpack(forged)
    body = good[:-4] + b"\x00\x00"  # two bytes after the strings, under a valid CRC
    forged = body + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(BitstreamError, match="string lengths add up to 134 bytes but the file holds 136"):
        bitstream.parse(forged)


# -- the authors' layout -------------------------------------------------------------------------
def test_legacy_bytes_are_the_authors_layout_and_read_back():
    data = bitstream.pack_legacy(16.0, 100, 150, STRINGS)
    assert data == legacy_by_hand()
    assert data[10:14] == struct.pack("<HH", 2, 3)  # padded to 128 × 192
    header, strings = bitstream.unpack_legacy(data)
    assert strings == STRINGS
    assert header == bitstream.Header("legacy", 0, None, 16.0, 100, 150, [3, 0, 130, 1], num_latents=4)
    assert bitstream.parse(data) == (header, strings)


@pytest.mark.parametrize("h, w", [(64, 64), (65, 1), (1, 129), (65535, 65535)])
def test_legacy_padded_size_is_rounded_up(h, w):
    data = bitstream.pack_legacy(16.0, h, w, [b"a"])
    assert struct.unpack_from("<HH", data, 10) == (-(-h // 64), -(-w // 64))
    assert bitstream.unpack_legacy(data)[0].height == h


@pytest.mark.parametrize("hp, wp", [(3, 3), (2, 2), (1, 3), (2, 4), (0, 0)])
def test_legacy_padded_size_must_match_the_image_size(hp, wp):
    """A file whose padded size disagrees with its image size is not a QARV file (100×150 pads to 2×3)."""
    data = legacy_by_hand(h=100, w=150, hp=hp, wp=wp)
    with pytest.raises(BitstreamError, match="^not a QARV file \\(padded size does not match the image size\\)$"):
        bitstream.unpack_legacy(data)
    with pytest.raises(BitstreamError, match="neither an lvae file nor an authors' QARV file: .*padded size"):
        bitstream.parse(data)


@pytest.mark.parametrize("data, words", [
    (legacy_by_hand(batch=2), "^not a QARV file \\(implausible header\\)$"),
    (legacy_by_hand(batch=0), "^not a QARV file \\(implausible header\\)$"),
    (legacy_by_hand(h=0, hp=0), "^not a QARV file \\(implausible header\\)$"),
    (legacy_by_hand(w=0, wp=0), "^not a QARV file \\(implausible header\\)$"),
    (legacy_by_hand(strings=[]), "^not a QARV file \\(implausible header\\)$"),
    (legacy_by_hand(lmb=0.0), "^invalid λ 0.0 in the header$"),
    (legacy_by_hand(lmb=-math.inf), "^invalid λ -inf in the header$"),
    (legacy_by_hand()[:15 + 4 * 3], "^truncated list of string lengths$"),
    (legacy_by_hand()[:-1],
     "^string lengths add up to 134 bytes but the file holds 133 \\(truncated or not a QARV file\\)$"),
    (legacy_by_hand() + b"\x00", "add up to 134 bytes but the file holds 135"),
    (legacy_by_hand()[:14], "^file too short \\(14 bytes\\)$"),
])
def test_legacy_damage_is_named(data, words):
    with pytest.raises(BitstreamError, match=words):
        bitstream.unpack_legacy(data)


def test_legacy_small_lambda_and_empty_strings_are_valid():
    header, strings = bitstream.unpack_legacy(legacy_by_hand(lmb=0.5, strings=[b"", b"", b""]))
    assert (header.lmb, strings, header.num_latents) == (0.5, [b"", b"", b""], 3)
    header, strings = bitstream.unpack_legacy(legacy_by_hand(strings=[b"", b"x"]))
    assert strings == [b"", b"x"]


def test_legacy_writer_refuses_sides_over_16_bits():
    with pytest.raises(ValueError, match="^the authors' layout stores sides in 16 bits; 65536×5 does not fit$"):
        bitstream.pack_legacy(16.0, 65536, 5, [b"a"])
    with pytest.raises(ValueError, match="^the authors' layout stores sides in 16 bits; 5×65536 does not fit$"):
        bitstream.pack_legacy(16.0, 5, 65536, [b"a"])
    with pytest.raises(ValueError, match="λ must be"):
        bitstream.pack_legacy(0.0, 5, 5, [b"a"])


# -- parse, truncate -------------------------------------------------------------------------------
def test_parse_falls_back_to_the_authors_layout_for_lvae_lookalikes():
    # An authors' file of 22092 × 17729 pixels starts with the bytes "LVAE".
    data = legacy_by_hand(h=22092, w=17729, strings=[b"abc"])
    assert data[:4] == b"LVAE"
    header, strings = bitstream.parse(data)
    assert (header.format, header.height, header.width, strings) == ("legacy", 22092, 17729, [b"abc"])
    # a damaged lvae file that is no authors' file either keeps the lvae error
    with pytest.raises(BitstreamError, match="header checksum mismatch"):
        bitstream.parse(V2[:V2_HEADER_END] + b"\x00\x00\x00\x00" + V2[V2_HEADER_END + 4:])
    with pytest.raises(BitstreamError, match="empty file"):
        bitstream.parse(b"")
    with pytest.raises(BitstreamError, match="^neither an lvae file nor an authors' QARV file: file too short"):
        bitstream.parse(b"\x00" * 5)


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_truncate_keeps_a_prefix_and_everything_else(k):
    checks = [11, 22, 33, 44]
    data = bitstream.pack("qarv_tiny", 100.5, 70, 200, STRINGS, checks=checks, fingerprint=FP, colour="gray")
    cut = bitstream.truncate(data, k)
    assert cut == v2_by_hand(strings=STRINGS[:k], checks=checks[:k], fp=FP, colour=1, total=4)
    header, strings = bitstream.unpack(cut)
    assert strings == STRINGS[:k] and header.num_latents == 4 and header.checks == checks[:k]


def test_truncate_turns_version_1_into_version_2_without_checks():
    cut = bitstream.truncate(v1_by_hand(), 2)
    assert cut == v2_by_hand(w=90, strings=STRINGS[:2], total=4)
    assert bitstream.truncate(v1_by_hand(), 4) == v2_by_hand(w=90)


@pytest.mark.parametrize("k", [-1, 5, 1.5, True, "2"])
def test_truncate_refuses_impossible_counts(k):
    with pytest.raises(ValueError, match=f"^num_latents must be an integer from 0 to 4, got {k!r}$"):
        bitstream.truncate(V2, k)


def test_truncate_refuses_the_authors_layout():
    with pytest.raises(BitstreamError, match="^the authors' layouts cannot be truncated \\(they have no field for "
                                             "missing strings\\); re-encode the image in the lvae format$"):
        bitstream.truncate(legacy_by_hand(), 1)


# -- boundaries and exact messages (each kills a mutant that the tests above let live) -------------
def test_v2_without_fingerprint_cut_after_lambda_names_the_height():
    data = v2_by_hand(name=b"m", strings=[b"ab"])
    with pytest.raises(BitstreamError, match=r"^truncated header \(height\)$"):
        bitstream.unpack(data[:8 + 1 + 4])
    with pytest.raises(BitstreamError, match="^truncated header$"):
        bitstream.unpack(data[:8 + 1 + 3])


@pytest.mark.parametrize("data, words", [
    (b"LVAE\x03" + bytes(5), "^unsupported lvae format version 3 \\(this library reads versions \\(1, 2\\)\\)$"),
    (b"LVAE\x02\x02\x00\x09" + bytes(4), "^truncated header$"),  # 12 bytes: the shortest that reaches the header
    (b"LVAE\x02\x02\x00\x09" + bytes(3), "^file too short to be an lvae file \\(11 bytes\\)$"),
    (b"LVAF\x02" + bytes(20), "^not an lvae file \\(bad magic bytes\\)$"),
])
def test_shortest_files_reach_the_right_check(data, words):
    with pytest.raises(BitstreamError, match=words):
        bitstream.unpack(data)


def test_v1_exact_messages_and_boundaries():
    good = v1_by_hand()
    with pytest.raises(BitstreamError, match="^checksum mismatch: the file is corrupted or truncated$"):
        bitstream.unpack(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(BitstreamError, match="^invalid λ 0.0 in the header$"):
        bitstream.unpack(v1_by_hand(lmb=0.0))
    with pytest.raises(BitstreamError, match="^invalid or truncated list of string lengths$"):
        bitstream.unpack(v1_by_hand(strings=[]))
    header, strings = bitstream.unpack(v1_by_hand(strings=[b"", b""]))  # lengths end exactly at the CRC
    assert strings == [b"", b""] and header.num_latents == 2
    # a long name and a body one byte short of λ, sizes and count
    body = b"LVAE\x01\x14" + b"n" * 20 + bytes(12)
    with pytest.raises(BitstreamError, match="^truncated header$"):
        bitstream.unpack(body + struct.pack("<I", zlib.crc32(body)))


def test_v2_exact_messages():
    with pytest.raises(BitstreamError, match="^header checksum mismatch: the file is corrupted or truncated$"):
        bitstream.unpack(V2[:V2_HEADER_END] + b"\x00\x00\x00\x00" + V2[V2_HEADER_END + 4:])
    data = bytearray(v2_by_hand(name=b"abc", strings=[b"q"]))
    data[8] = 0xFF
    with pytest.raises(BitstreamError, match="^model name in the header is not ASCII$"):
        bitstream.unpack(with_header_crc(bytes(data), 8 + 3 + 4 + 1 + 2 + 2 + 1))
    data[8] = ord("\n")
    with pytest.raises(BitstreamError, match="^invalid model name in the header$"):
        bitstream.unpack(with_header_crc(bytes(data), 8 + 3 + 4 + 1 + 2 + 2 + 1))
    with pytest.raises(BitstreamError, match="^empty file$"):
        bitstream.parse(b"")


def test_a_file_without_strings_is_still_checked():
    """A prefix of no strings still records λ and the size: they are validated like any other."""
    for lmb, h, w, words in ((-1.0, 5, 5, "λ must be"), (20.0, 0, 5, "image size"), (math.nan, 5, 5, "λ must be")):
        with pytest.raises(ValueError, match=words):
            bitstream.pack("m", lmb, h, w, [], num_latents=9)


def test_a_lossless_file_carries_every_string_its_checks_and_the_pixel_check():
    checks = [11, 22, 33, 44]
    pixel = bytes(range(16))
    data = bitstream.pack("m", 1.0, 5, 6, STRINGS, checks=checks, lossless=True, pixel_check=pixel)
    header, strings = bitstream.unpack(data)
    assert header.lossless and header.pixel_check == pixel and strings == STRINGS and header.checks == checks
    assert len(data) == len(bitstream.pack("m", 1.0, 5, 6, STRINGS, checks=checks)) + 16
    for bad in (dict(pixel_check=None), dict(checks=None), dict(pixel_check=b"short")):
        with pytest.raises(ValueError, match="lossless"):
            bitstream.pack("m", 1.0, 5, 6, STRINGS, **{"checks": checks, "lossless": True, "pixel_check": pixel, **bad})
    with pytest.raises(ValueError, match="prefix"):
        bitstream.pack("m", 1.0, 5, 6, STRINGS[:2], checks=checks[:2], num_latents=4, lossless=True, pixel_check=pixel)
    cut = bitstream.truncate(data, 3)
    assert not bitstream.read_header(cut).lossless and bitstream.read_header(cut).pixel_check is None
    assert bitstream.truncate(data, 4) == data
    with pytest.raises(BitstreamError, match="truncated or extended"):
        bitstream.unpack(data[:-1])
