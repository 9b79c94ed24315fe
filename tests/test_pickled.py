"""The QRes-VAE authors' pickled files, read without unpickling (lvae/coding/pickled.py).

The fixtures in tests/data/families/ were written by the authors' own ``compress_file()`` from a 150×100
image (see ../shared/reference/families/README.md). Pure Python and fast: no model, no torch.
"""
import math
import os
import pickle
import pickletools
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvae.coding import pickled
from lvae.coding.pickled import QResLegacyFile, looks_like_pickle, pack_qres_legacy, parse_qres_legacy, safe_loads
from lvae.errors import BitstreamError

DATA = Path(__file__).parent / "data" / "families"
FIXTURES = {"qres34m": (384, False), "qres17m": (288, False), "qres34m_lossless": (384, True)}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fixture(name: str) -> bytes:
    return (DATA / f"legacy_{name}.pkl").read_bytes()


def typed(obj):
    """``obj`` with every value tagged by its exact type (``==`` alone takes True for 1)."""
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [typed(v) for v in obj])
    return (type(obj).__name__, obj)


def op(code: int | str) -> bytes:
    return bytes([code]) if isinstance(code, int) else code.encode("latin-1")


def p4(*body: bytes) -> bytes:
    """A hand-made protocol-4 pickle: PROTO 4, the opcodes, STOP."""
    return b"\x80\x04" + b"".join(body) + b"."


# -- the authors' files ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_authors_files_parse(name):
    data = fixture(name)
    channels, lossless = FIXTURES[name]
    f = parse_qres_legacy(data)
    assert isinstance(f, QResLegacyFile) and looks_like_pickle(data)
    assert (f.height, f.width) == (100, 150)
    assert f.top_shape == (1, channels, 2, 3)  # ceil(100 / 64), ceil(150 / 64)
    assert len(f.strings) == 12 and all(isinstance(s, bytes) and s for s in f.strings)
    assert f.lossless is lossless and (f.pixel_string is not None) is lossless
    # The strings are the pickle's byte-string arguments, in order (read by pickletools' disassembler,
    # which never builds an object).
    args = [arg for info, arg, _ in pickletools.genops(data) if info.name in ("SHORT_BINBYTES", "BINBYTES")]
    assert args == f.strings + ([f.pixel_string] if lossless else [])


@pytest.mark.parametrize("name", FIXTURES)
def test_packing_the_fields_gives_the_authors_bytes(name):
    """What we write is what the authors' code writes (and so what it reads)."""
    data = fixture(name)
    f = parse_qres_legacy(data)
    assert pack_qres_legacy(f.strings, f.top_shape, f.height, f.width, f.pixel_string) == data


@pytest.mark.parametrize("name", FIXTURES)
def test_truncated_authors_files_are_refused(name):
    data = fixture(name)
    for cut in range(0, len(data), 97):
        with pytest.raises(BitstreamError):
            parse_qres_legacy(data[:cut])
    with pytest.raises(BitstreamError, match="follow its STOP"):
        parse_qres_legacy(data + b"\x00")


@pytest.mark.parametrize("name", FIXTURES)
def test_byte_flips_give_a_bitstream_error_or_a_valid_file(name):
    data = fixture(name)
    rng = random.Random(f"flips-{name}")
    outcomes = set()
    for _ in range(150):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            # half of the flips land on the structure (the first and last opcodes), half anywhere
            at = rng.choice([rng.randrange(64), len(data) - 1 - rng.randrange(64), rng.randrange(len(data))])
            mutated[at] ^= rng.randint(1, 255)
        try:
            f = parse_qres_legacy(bytes(mutated))
        except BitstreamError:
            outcomes.add("refused")
        else:
            assert isinstance(f, QResLegacyFile)
            outcomes.add("parsed")
    assert outcomes == {"refused", "parsed"}  # the fuzz reached both sides


# -- pack and parse --------------------------------------------------------------------------------
@st.composite
def qres_fields(draw):
    stride = draw(st.sampled_from([64, 16, 8]))
    height, width = draw(st.integers(1, 3000)), draw(st.integers(1, 3000))
    shape = (1, draw(st.integers(1, 512)), math.ceil(height / stride), math.ceil(width / stride))
    strings = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=20))
    pixels = draw(st.none() | st.binary(max_size=300))
    return strings, shape, height, width, pixels, stride


@FAST
@given(qres_fields())
def test_pack_then_parse_round_trips(fields):
    strings, shape, height, width, pixels, stride = fields
    data = pack_qres_legacy(strings, shape, height, width, pixels, stride=stride)
    assert looks_like_pickle(data)
    assert parse_qres_legacy(data, stride=stride) == QResLegacyFile(strings, shape, pixels, height, width)
    assert typed(safe_loads(data)) == typed(pickle.loads(data))  # our own bytes: safe to unpickle here


def test_the_largest_layout_round_trips():
    strings = [bytes([i]) * i for i in range(255)]
    shape = (1, 2**16, 2**14, 1)
    data = pack_qres_legacy(strings, shape, 2**20, 64, b"\x00" * 70_000)
    f = parse_qres_legacy(data)
    assert (f.strings, f.top_shape, f.height, f.width) == (strings, shape, 2**20, 64)


@pytest.mark.parametrize("args, error", [
    (([], (1, 8, 2, 3), 100, 150), ValueError),  # no block
    (([b"x"] * 256, (1, 8, 2, 3), 100, 150), ValueError),  # more blocks than a file holds
    (([b"x"], (2, 8, 2, 3), 100, 150), ValueError),  # a batch of two
    (([b"x"], (1, 0, 2, 3), 100, 150), ValueError),  # no channel
    (([b"x"], (1, 8, 3, 3), 100, 150), ValueError),  # one row too many for 100 rows
    (([b"x"], (1, 8, 1, 3), 100, 150), ValueError),  # one row too few
    (([b"x"], (1, 8, 2, 4), 100, 150), ValueError),
    (([b"x"], (1, 8, 2), 100, 150), ValueError),  # not (N, C, h, w)
    (([b"x"], (1, 8, 2, 3), 0, 150), ValueError),
    (([b"x"], (1, 8, 2**25, 2**25), 2**31, 2**31), ValueError),  # an implausible size
    (([b"x"], (1, 8, 2, 3), 100.0, 150), TypeError),
    ((["x"], (1, 8, 2, 3), 100, 150), TypeError),  # a str, not bytes
])
def test_pack_refuses_what_parse_would_refuse(args, error):
    with pytest.raises(error):
        pack_qres_legacy(*args)
    assert not issubclass(error, BitstreamError)


def by_hand(obj) -> bytes:
    return pickle.dumps(obj, protocol=4)


GOOD = [[b"ab"], [b"cd"], (1, 8, 2, 3), (100, 150)]


@pytest.mark.parametrize("obj, message", [
    (tuple(GOOD), "not a list"),
    ([(100, 150)], "not a list"),
    ([[b"ab"], (1, 8, 2, 3)], "not a list"),  # too short
    ([[b"ab"], [b"cd"], (1, 8, 2, 3), (100, 150, 1)], "tuple of 2 integers"),
    ([[b"ab"], [b"cd"], (1, 8, 2, 3), (True, 150)], "tuple of 2 integers"),  # booleans are not sizes
    ([[b"ab"], [b"cd"], (1, 8, 2, 3), [100, 150]], "tuple of 2 integers"),
    ([[b"ab"], [b"cd"], (1, 8, 2), (100, 150)], "tuple of 4 integers"),
    ([[b"ab", b"ef"], [b"cd"], (1, 8, 2, 3), (100, 150)], "latent block 0"),  # a batch of two
    ([[b"ab"], [], (1, 8, 2, 3), (100, 150)], "latent block 1"),
    ([[b"ab"], (b"cd",), (1, 8, 2, 3), (100, 150)], "latent block 1"),
    ([[b"ab"], [[b"cd"]], (1, 8, 2, 3), (100, 150)], "latent block 1"),
    ([[b"ab"], [b"cd"], (1, 8, 2, 3), [b"px", b"px"], (100, 150)], "pixels"),
    ([(1, 8, 2, 3), [b"px"], (100, 150)], "0 latent strings"),
    ([[b"ab"], (2, 8, 2, 3), (100, 150)], "batch of 2"),
    ([[b"ab"], (1, 2**16 + 1, 2, 3), (100, 150)], "channels"),
    ([[b"ab"], (1, 8, 2, 2), (100, 150)], "padded to a multiple of 64"),
    ([[b"ab"], (1, 8, 2, 3), (129, 150)], "padded to a multiple of 64"),
    ([[b"ab"], (1, 8, -1, 3), (-100, 150)], "outside"),
    ([[b"ab"], (1, 8, 2**25, 2**25), (2**31, 2**31)], "outside"),  # a claimed 2**31 × 2**31 image
    ([[b"ab"]] * 256 + [(1, 8, 2, 3), (100, 150)], "256 latent strings"),
])
def test_parse_refuses_other_layouts(obj, message):
    with pytest.raises(BitstreamError, match=message) as info:
        parse_qres_legacy(by_hand(obj))
    assert str(info.value).startswith("not a QRes-VAE file")


def test_parse_uses_the_models_stride():
    data = pack_qres_legacy([b"s"], (1, 4, 7, 2), 100, 30, stride=16)
    assert parse_qres_legacy(data, stride=16).top_shape == (1, 4, 7, 2)
    with pytest.raises(BitstreamError, match="multiple of 64"):
        parse_qres_legacy(data)


def test_looks_like_pickle():
    assert all(looks_like_pickle(pickle.dumps([1], protocol=p)) for p in (2, 3, 4, 5))
    for data in (b"", b"\x80", b"\x80\x01", b"\x80\x06", pickle.dumps([1], protocol=1), b"LVAE\x02", b"\x00\x04"):
        assert not looks_like_pickle(data)


# -- safe_loads against pickle.loads -------------------------------------------------------------------
SCALARS = st.integers(-(2**70), 2**70) | st.none() | st.booleans()
PLAIN = st.recursive(
    SCALARS | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.lists(inner, max_size=6).map(tuple),
    max_leaves=40,
)
PLAIN_NO_BYTES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=6) | st.lists(inner, max_size=6).map(tuple), max_leaves=40,
)


@FAST
@given(PLAIN, st.sampled_from([3, 4, 5]))
def test_safe_loads_equals_pickle_loads(obj, protocol):
    data = pickle.dumps(obj, protocol=protocol)
    assert typed(safe_loads(data)) == typed(obj) == typed(pickle.loads(data))


@FAST
@given(PLAIN_NO_BYTES)
def test_safe_loads_equals_pickle_loads_protocol_2(obj):
    data = pickle.dumps(obj, protocol=2)
    assert typed(safe_loads(data)) == typed(obj) == typed(pickle.loads(data))


def test_protocol_2_bytes_are_refused():
    """Protocol 2 writes bytes as a call of ``_codecs.encode``: a global, hence refused."""
    with pytest.raises(BitstreamError, match="GLOBAL"):
        safe_loads(pickle.dumps([b"abc"], protocol=2))


@pytest.mark.parametrize("value", [
    2**2100, -(2**2100) + 1, 2**31, -(2**31), 2**31 - 1, 255, 256, 65535, 65536, -1, 0,
])
def test_integers_of_every_opcode(value):
    for protocol in (2, 3, 4, 5):
        assert safe_loads(pickle.dumps([value], protocol=protocol)) == [value]


def test_shared_objects_stay_shared():
    inner = [b"x", 3]
    obj = [inner, inner, (inner, b""), b""]
    out = safe_loads(pickle.dumps(obj, protocol=4))
    assert out == obj and out[0] is out[1] is out[2][0]


@FAST
@given(PLAIN, st.sampled_from([2, 3, 4, 5]), st.data())
def test_mutated_pickles_give_a_value_or_a_bitstream_error(obj, protocol, draw):
    data = bytearray(pickle.dumps(obj, protocol=protocol))
    for _ in range(draw.draw(st.integers(1, 4))):
        data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
    try:
        safe_loads(bytes(data))
    except BitstreamError:
        pass


def test_random_bytes_after_the_proto_opcode():
    rng = random.Random(23)
    for _ in range(300):
        tail = bytes(rng.choice(b"()]eatK\x85\x86\x87\x94hjqrCB\x8e\x8a\x8b\x95.0N\x88") if rng.random() < 0.7
                     else rng.randrange(256) for _ in range(rng.randint(0, 40)))
        try:
            safe_loads(b"\x80\x04" + tail)
        except BitstreamError:
            pass


# -- what a hostile file may try ---------------------------------------------------------------------
class OpenFile:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class RunShell:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("payload", [OpenFile, RunShell])
def test_code_in_a_pickle_is_never_run(tmp_path, payload, protocol):
    target = tmp_path / "pwned"
    hostile = [[b"ab"], payload(target), (1, 8, 2, 3), (100, 150)]
    for data in (pickle.dumps(payload(target), protocol=protocol), pickle.dumps(hostile, protocol=protocol)):
        with pytest.raises(BitstreamError, match="refusing the pickle's"):
            safe_loads(data)
        with pytest.raises(BitstreamError, match="not a QRes-VAE file"):
            parse_qres_legacy(data)
        assert not target.exists()


def test_the_hostile_payload_is_live(tmp_path):
    """The payload above is real: pickle.loads does create the file (which is why lvae never calls it)."""
    target = tmp_path / "pwned"
    pickle.loads(pickle.dumps(OpenFile(target), protocol=4)).close()
    assert target.exists()


GLOBAL = b"cos\nsystem\n"
REFUSED = {
    "GLOBAL": p4(GLOBAL),
    "STACK_GLOBAL": p4(b"C\x02osC\x06system\x93"),
    "REDUCE": p4(b"]\x85R"),
    "BUILD": p4(b"]]b"),
    "INST": p4(b"(ios\nsystem\n"),
    "OBJ": p4(b"(]o"),
    "NEWOBJ": p4(b"])\x81"),
    "NEWOBJ_EX": p4(b"]))\x92"),
    "PERSID": p4(b"Pid\n"),
    "BINPERSID": p4(b"]Q"),
    "EXT1": p4(b"\x82\x01"),
    "EXT2": p4(b"\x83\x01\x00"),
    "EXT4": p4(b"\x84\x01\x00\x00\x00"),
    "SHORT_BINUNICODE": pickle.dumps("text", protocol=4),
    "BINFLOAT": pickle.dumps(1.5, protocol=4),
    "EMPTY_DICT": pickle.dumps({}, protocol=4),
    "EMPTY_SET": pickle.dumps({1}, protocol=4),
    "FROZENSET": pickle.dumps(frozenset(), protocol=4),
    "BYTEARRAY8": pickle.dumps(bytearray(b"x"), protocol=5),
    "NEXT_BUFFER": p4(b"\x97"),
    "DUP": p4(b"]2"),
    "INT": p4(b"I1\n"),
    "LIST": p4(b"(l"),
    "PUT": p4(b"]p0\n"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_other_opcodes_are_refused_by_name(name):
    with pytest.raises(BitstreamError, match=f"refusing the pickle's {name} opcode at byte"):
        safe_loads(REFUSED[name])


@pytest.mark.parametrize("data, message", [
    (b"", "PROTO"),
    (pickle.dumps([1], protocol=0), "PROTO"),
    (pickle.dumps([1], protocol=1), "PROTO"),
    (b"\x80\x06].", "PROTO"),
    (p4(b"\x80\x04]"), "second PROTO"),
    (b"\x80\x04]", "before its STOP"),
    (p4(b"]") + b"\x00", "1 bytes follow its STOP"),
    (p4(), "leaves 0 objects"),
    (p4(b"]]"), "leaves 2 objects"),
    (p4(b"](]"), "MARK still open"),
    (p4(b"]e"), "needs a MARK"),
    (p4(b"t"), "needs a MARK"),
    (p4(b"1"), "needs a MARK"),
    (p4(b"0"), "needs 1 objects"),
    (p4(b"a"), "needs 1 objects"),
    (p4(b"](K\x01a"), "no list to append to"),  # the list sits below the MARK
    (p4(b"K\x01K\x02a"), "no list to append to"),
    (p4(b")K\x01a"), "no list to append to"),
    (p4(b"K\x01\x86"), "needs 2 objects"),
    (p4(b"(K\x01\x87t"), "needs 3 objects"),
    (p4(b"\x94"), "nothing to store"),
    (p4(b"]h\x00"), "entry 0, which was never stored"),
    (p4(b"]\x94j\x01\x00\x00\x00"), "entry 1, which was never stored"),
    (p4(b"]q\x05h\x04"), "entry 4"),
    (p4(b"]\x94h\x00a"), "inside itself"),  # a list containing itself
    (p4(b"]\x94]h\x00a\x94h\x00h\x01a0"), "placed before"),  # a list inside a list inside the first
    (p4(b"]\x94]h\x00a0h\x00K\x01a"), "placed before"),  # growing a list already placed
    (p4(b"\x8e" + struct.pack("<Q", 2**60)), "needs 1152921504606846976 bytes but 1 remain"),
    (p4(b"B" + struct.pack("<I", 2**32 - 1) + b"abc"), "needs 4294967295 bytes but 4 remain"),
    (p4(b"C\x05abc"), "needs 5 bytes"),
    (p4(b"B\x01\x00"), "needs 4 bytes"),
    (p4(b"\x8e\x01\x00\x00"), "needs 8 bytes"),
    (p4(b"J\x01\x00"), "needs 4 bytes"),
    (b"\x80\x04M\x01", "needs 2 bytes but 1 remain"),
    (p4(b"K"), "before its STOP"),  # K reads the STOP as its byte
    (b"\x80\x04K", "needs 1 bytes"),
    (p4(b"\x8a\x05\x01"), "needs 5 bytes"),
    (p4(b"\x8b" + struct.pack("<i", 2**31 - 1)), "integer of 2147483647 bytes"),
    (p4(b"\x8b" + struct.pack("<i", -1)), "integer of -1 bytes"),
    (p4(b"\x95" + struct.pack("<Q", 2**62) + b"]"), "FRAME at byte 2 claims"),
    (p4(b"\x95\x02\x00\x00\x00\x00\x00\x00\x00\x95\x01\x00\x00\x00\x00\x00\x00\x00]"), "inside the previous frame"),
    (p4(b"(" * 65), "more than 64 MARKs"),
    (p4(b"]" * 100_001), "more than 100000 objects"),
])
def test_malformed_pickles_are_refused(data, message):
    with pytest.raises(BitstreamError, match=message):
        safe_loads(data)


def test_cycles_that_pickle_writes_are_refused():
    direct = []
    direct.append(direct)
    outer, inner = [], []
    outer.append(inner)
    inner.append(outer)
    through_tuple = []
    through_tuple.append((through_tuple,))
    for obj in (direct, outer, through_tuple):
        with pytest.raises(BitstreamError, match="itself|placed before"):
            safe_loads(pickle.dumps(obj, protocol=4))


def nest(depth: int, container=list):
    obj = container()
    for _ in range(depth - 1):
        obj = container([obj])
    return obj


@pytest.mark.parametrize("container", [list, tuple])
def test_nesting_is_bounded(container):
    deepest = nest(pickled.MAX_DEPTH, container)
    assert safe_loads(pickle.dumps(deepest, protocol=4)) == deepest
    with pytest.raises(BitstreamError, match="nest more than 64 deep"):
        safe_loads(pickle.dumps(nest(pickled.MAX_DEPTH + 1, container), protocol=4))
    with pytest.raises(BitstreamError, match="nest more than 3 deep"):
        safe_loads(pickle.dumps(nest(4, container), protocol=4), max_depth=3)


def test_item_count_is_bounded():
    data = pickle.dumps([None] * 50, protocol=4)
    assert safe_loads(data, max_items=51) == [None] * 50
    with pytest.raises(BitstreamError, match="more than 50 objects"):
        safe_loads(data, max_items=50)
    with pytest.raises(BitstreamError, match="objects"):  # memo fetches count as well
        safe_loads(pickle.dumps([b""] * 200_000, protocol=4))
