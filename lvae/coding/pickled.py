"""The QRes-VAE authors' file layout, a Python pickle, read without unpickling anything.

The authors' ``compress_file()`` pickles ``[[bytes] per latent block, ..., (N, C, h, w),
([bytes] pixels,) (H, W)]``: one list holding one string per latent block (a batch of one), the
shape of the top feature map, for the lossless model a list holding the pixels' string, and the
original image size. ``pickle.load`` on such a file would run whatever code the file names, so
:func:`safe_loads` interprets the binary pickle opcodes itself and builds only lists, tuples,
bytes, integers, ``None`` and booleans; every other opcode, and every length, memo index or mark
that does not add up, raises :class:`lvae.errors.BitstreamError`.

Pure Python on purpose (no torch), like :mod:`lvae.coding.container`.
"""
from __future__ import annotations

import operator
import pickle
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import BitstreamError

__all__ = [
    "QResLegacyFile", "QRES_STRIDE", "safe_loads", "looks_like_pickle", "parse_qres_legacy", "pack_qres_legacy",
]

QRES_STRIDE = 64  # the published QRes-VAE models' stride: compress_file pads the image to a multiple of it
MAX_DEPTH = 64  # nesting of lists and tuples (a QRes-VAE file nests 2 deep)
MAX_ITEMS = 100_000  # objects pushed while reading (a QRes-VAE file pushes about 30)
MAX_INT_BYTES = 1024  # an integer's two's-complement bytes (LONG1/LONG4)
MAX_STRINGS = 255  # latent blocks
MAX_SIDE = 2**20  # image height or width
MAX_CHANNELS = 2**16  # channels of the top feature map
_PROTOCOLS = range(2, 6)
_U2, _U4, _I4, _U8 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<i"), struct.Struct("<Q")
# Opcodes that load a global, call it, or hand data to a persistent-id or extension-registry hook.
_CODE_OPCODES = frozenset(b"ciobRQP\x81\x82\x83\x84\x92\x93")


@dataclass(frozen=True)
class QResLegacyFile:
    """What one of the authors' QRes-VAE files holds."""

    strings: list[bytes]  # one per latent block, decoder order
    top_shape: tuple[int, int, int, int]  # (N, C, h, w) of the top feature map; N == 1
    pixel_string: bytes | None  # the lossless model's pixels; None for the lossy models
    height: int  # the original image size (before padding to the stride)
    width: int

    @property
    def lossless(self) -> bool:
        return self.pixel_string is not None


def looks_like_pickle(data: bytes) -> bool:
    """Whether ``data`` starts as a pickle of protocol 2 to 5 does (the PROTO opcode 0x80 and its protocol)."""
    return len(data) >= 2 and data[0] == 0x80 and data[1] in _PROTOCOLS


def safe_loads(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> object:
    """The object a binary pickle (protocol 2 to 5) of lists, tuples, bytes, integers, None and booleans
    describes, built without importing or calling anything; anything else raises BitstreamError.

    Lists and tuples nest at most ``max_depth`` deep; at most ``max_items`` objects are pushed. The
    pickle must end with its STOP opcode, leaving exactly one object. Lists that contain themselves
    (directly or not) are refused: pickle writes a list's items before the list is placed anywhere,
    so a list receiving items after it was placed is a cycle or a forgery.
    """
    return _Reader(bytes(data), max_depth, max_items).run()


def _opcode_name(op: int) -> str:
    import pickletools  # only for the message; the reader itself uses no table of pickle's

    names = {ord(info.code): info.name for info in pickletools.opcodes}
    return names.get(op, f"unknown opcode 0x{op:02x}")


class _Reader:
    """One pass over the opcodes: a stack, a stack of marks, and the memo, as pickle's own machine has."""

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.max_items = max_items
        self.stack: list[object] = []
        self.marks: list[list[object]] = []  # the stacks below each open MARK
        self.memo: dict[int, object] = {}
        self.depth: dict[int, int] = {}  # id(list or tuple) -> nesting depth (bytes and integers: 0)
        self.alive: list[object] = []  # keeps every container alive, so that no id above is reused
        self.placed: set[int] = set()  # ids of lists already placed inside a list or tuple
        self.pushes = 0
        self.frame_end = 0
        self.stopped = False

    def fail(self, message: str) -> BitstreamError:
        return BitstreamError(f"unreadable pickle: {message}")

    def run(self) -> object:
        data = self.data
        if not looks_like_pickle(data):
            raise self.fail("it does not start with the PROTO opcode of protocol 2 to 5")
        self.pos = 2
        while not self.stopped:
            if self.pos >= len(data):
                raise self.fail("it ends before its STOP opcode (truncated)")
            at = self.pos
            op = data[at]
            self.pos += 1
            handler = _HANDLERS.get(op)
            if handler is None:
                raise self.refuse(op, at)
            handler(self, at)
        if self.pos != len(data):
            raise self.fail(f"{len(data) - self.pos} bytes follow its STOP opcode")
        return self.stack[0]

    def refuse(self, op: int, at: int) -> BitstreamError:
        reason = "can import or call code" if op in _CODE_OPCODES else "is not one of the plain-data opcodes read"
        return BitstreamError(
            f"refusing the pickle's {_opcode_name(op)} opcode at byte {at}: it {reason}; lvae reads only lists, "
            "tuples, bytes, integers, None and booleans from a pickle"
        )

    # -- reading arguments ------------------------------------------------------------------------
    def take(self, n: int, what: str, at: int) -> bytes:
        """The next ``n`` bytes, refused before anything is allocated when fewer remain."""
        remaining = len(self.data) - self.pos
        if n > remaining:
            raise self.fail(f"the {what} at byte {at} needs {n} bytes but {remaining} remain (truncated)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, fmt: struct.Struct, what: str, at: int) -> int:
        value: int = fmt.unpack(self.take(fmt.size, what, at))[0]
        return value

    # -- the stack ----------------------------------------------------------------------------------
    def push(self, value: object) -> None:
        self.pushes += 1
        if self.pushes > self.max_items:
            raise self.fail(f"it holds more than {self.max_items} objects")
        self.stack.append(value)

    def pop(self, n: int, at: int) -> list[object]:
        if len(self.stack) < n:
            where = "after the last MARK" if self.marks else "on the stack"
            raise self.fail(f"the opcode at byte {at} needs {n} objects but {len(self.stack)} are {where}")
        items = self.stack[len(self.stack) - n:]
        del self.stack[len(self.stack) - n:]
        return items

    def pop_mark(self, at: int) -> list[object]:
        if not self.marks:
            raise self.fail(f"the opcode at byte {at} needs a MARK and none is open")
        items = self.stack
        self.stack = self.marks.pop()
        return items

    def child_depth(self, items: Sequence[object], at: int) -> int:
        """1 + the deepest of ``items``, which are being placed into a container; marks lists as placed."""
        deepest = 0
        for item in items:
            if isinstance(item, (list, tuple)):
                deepest = max(deepest, self.depth[id(item)])
                if isinstance(item, list):
                    self.placed.add(id(item))
        if deepest + 1 > self.max_depth:
            raise self.fail(f"lists and tuples nest more than {self.max_depth} deep (byte {at})")
        return deepest + 1

    def new_container(self, value: list[object] | tuple[object, ...], depth: int) -> None:
        self.alive.append(value)
        self.depth[id(value)] = depth
        self.push(value)

    def extend_list(self, items: list[object], at: int) -> None:
        if not self.stack or type(self.stack[-1]) is not list:
            raise self.fail(f"the APPEND or APPENDS at byte {at} has no list to append to")
        target = self.stack[-1]
        if id(target) in self.placed:
            raise self.fail(f"the APPEND or APPENDS at byte {at} grows a list placed before (a cycle)")
        if any(item is target for item in items):
            raise self.fail(f"the APPEND or APPENDS at byte {at} puts a list inside itself")
        self.depth[id(target)] = max(self.depth[id(target)], self.child_depth(items, at))
        target.extend(items)

    # -- opcode handlers (``at``: the opcode's byte offset) -----------------------------------------
    def op_proto(self, at: int) -> None:
        raise self.fail(f"a second PROTO opcode at byte {at}")

    def op_frame(self, at: int) -> None:
        if self.pos < self.frame_end:
            raise self.fail(f"the FRAME at byte {at} begins inside the previous frame")
        size = self.uint(_U8, "FRAME", at)
        if size > len(self.data) - self.pos:
            raise self.fail(f"the FRAME at byte {at} claims {size} bytes but {len(self.data) - self.pos} remain")
        self.frame_end = self.pos + size

    def op_stop(self, at: int) -> None:
        if self.marks:
            raise self.fail(f"STOP at byte {at} with a MARK still open")
        if len(self.stack) != 1:
            raise self.fail(f"STOP at byte {at} leaves {len(self.stack)} objects instead of one")
        self.stopped = True

    def op_mark(self, at: int) -> None:
        if len(self.marks) >= self.max_depth:
            raise self.fail(f"more than {self.max_depth} MARKs are open at byte {at}")
        self.marks.append(self.stack)
        self.stack = []

    def op_pop(self, at: int) -> None:
        self.pop(1, at)

    def op_pop_mark(self, at: int) -> None:
        self.pop_mark(at)

    def op_none(self, at: int) -> None:
        self.push(None)

    def op_true(self, at: int) -> None:
        self.push(True)

    def op_false(self, at: int) -> None:
        self.push(False)

    def op_binint(self, at: int) -> None:
        self.push(self.uint(_I4, "BININT", at))

    def op_binint1(self, at: int) -> None:
        self.push(self.take(1, "BININT1", at)[0])

    def op_binint2(self, at: int) -> None:
        self.push(self.uint(_U2, "BININT2", at))

    def op_long1(self, at: int) -> None:
        self.long(self.take(1, "LONG1", at)[0], at)

    def op_long4(self, at: int) -> None:
        size = self.uint(_I4, "LONG4", at)
        if not 0 <= size <= MAX_INT_BYTES:
            raise self.fail(f"the LONG4 at byte {at} claims an integer of {size} bytes (at most {MAX_INT_BYTES})")
        self.long(size, at)

    def long(self, size: int, at: int) -> None:
        self.push(int.from_bytes(self.take(size, "integer", at), "little", signed=True))

    def op_short_binbytes(self, at: int) -> None:
        self.push(self.take(self.take(1, "SHORT_BINBYTES", at)[0], "SHORT_BINBYTES", at))

    def op_binbytes(self, at: int) -> None:
        self.push(self.take(self.uint(_U4, "BINBYTES", at), "BINBYTES", at))

    def op_binbytes8(self, at: int) -> None:
        self.push(self.take(self.uint(_U8, "BINBYTES8", at), "BINBYTES8", at))

    def op_empty_list(self, at: int) -> None:
        self.new_container([], 1)

    def op_append(self, at: int) -> None:
        self.extend_list(self.pop(1, at), at)

    def op_appends(self, at: int) -> None:
        self.extend_list(self.pop_mark(at), at)

    def op_empty_tuple(self, at: int) -> None:
        self.new_container((), 1)

    def tuple_of(self, items: list[object], at: int) -> None:
        self.new_container(tuple(items), self.child_depth(items, at))

    def op_tuple(self, at: int) -> None:
        self.tuple_of(self.pop_mark(at), at)

    def op_tuple1(self, at: int) -> None:
        self.tuple_of(self.pop(1, at), at)

    def op_tuple2(self, at: int) -> None:
        self.tuple_of(self.pop(2, at), at)

    def op_tuple3(self, at: int) -> None:
        self.tuple_of(self.pop(3, at), at)

    def put(self, index: int, at: int) -> None:
        if not self.stack:
            raise self.fail(f"the memo store at byte {at} has nothing to store")
        self.memo[index] = self.stack[-1]

    def op_memoize(self, at: int) -> None:
        self.put(len(self.memo), at)

    def op_binput(self, at: int) -> None:
        self.put(self.take(1, "BINPUT", at)[0], at)

    def op_long_binput(self, at: int) -> None:
        self.put(self.uint(_U4, "LONG_BINPUT", at), at)

    def get(self, index: int, at: int) -> None:
        if index not in self.memo:
            raise self.fail(f"the memo fetch at byte {at} asks for entry {index}, which was never stored")
        self.push(self.memo[index])

    def op_binget(self, at: int) -> None:
        self.get(self.take(1, "BINGET", at)[0], at)

    def op_long_binget(self, at: int) -> None:
        self.get(self.uint(_U4, "LONG_BINGET", at), at)


_HANDLERS: dict[int, Callable[[_Reader, int], None]] = {
    0x80: _Reader.op_proto, 0x95: _Reader.op_frame, ord("."): _Reader.op_stop, ord("("): _Reader.op_mark,
    ord("0"): _Reader.op_pop, ord("1"): _Reader.op_pop_mark,
    ord("N"): _Reader.op_none, 0x88: _Reader.op_true, 0x89: _Reader.op_false,
    ord("J"): _Reader.op_binint, ord("K"): _Reader.op_binint1, ord("M"): _Reader.op_binint2,
    0x8A: _Reader.op_long1, 0x8B: _Reader.op_long4,
    ord("C"): _Reader.op_short_binbytes, ord("B"): _Reader.op_binbytes, 0x8E: _Reader.op_binbytes8,
    ord("]"): _Reader.op_empty_list, ord("a"): _Reader.op_append, ord("e"): _Reader.op_appends,
    ord(")"): _Reader.op_empty_tuple, ord("t"): _Reader.op_tuple,
    0x85: _Reader.op_tuple1, 0x86: _Reader.op_tuple2, 0x87: _Reader.op_tuple3,
    0x94: _Reader.op_memoize, ord("q"): _Reader.op_binput, ord("r"): _Reader.op_long_binput,
    ord("h"): _Reader.op_binget, ord("j"): _Reader.op_long_binget,
}


# -- the QRes-VAE layout ----------------------------------------------------------------------------
def _layout_problem(
    strings: Sequence[bytes], top_shape: tuple[int, ...], height: int, width: int, stride: int,
) -> str | None:
    """Why these fields cannot be a QRes-VAE file, or None when they can."""
    if not 1 <= len(strings) <= MAX_STRINGS:
        return f"it holds {len(strings)} latent strings (1 to {MAX_STRINGS})"
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        return f"the image size {height}×{width} is outside 1 to {MAX_SIDE}"
    n, c, h, w = top_shape
    if n != 1:
        return f"the top feature map has a batch of {n} (a file holds one image)"
    if not 1 <= c <= MAX_CHANNELS:
        return f"the top feature map has {c} channels (1 to {MAX_CHANNELS})"
    # compress_file pads the image at the bottom and right to the next multiple of the model's stride,
    # and the top feature map is the padded image divided by the stride: h == ceil(H / stride), which
    # for integers is exactly (h - 1) * stride < H <= h * stride (and the same for w and W).
    if not ((h - 1) * stride < height <= h * stride and (w - 1) * stride < width <= w * stride):
        return (f"the top feature map's {h}×{w} does not fit a {height}×{width} image padded to a multiple of "
                f"{stride}")
    return None


def _not_qres(reason: str) -> BitstreamError:
    return BitstreamError(f"not a QRes-VAE file: {reason}")


def _one_string(item: object, what: str) -> bytes:
    if type(item) is not list or len(item) != 1 or type(item[0]) is not bytes:
        raise _not_qres(f"{what} is not a list of one byte string")
    return item[0]


def _ints(item: object, count: int, what: str) -> tuple[int, ...]:
    if type(item) is not tuple or len(item) != count or any(type(v) is not int for v in item):
        raise _not_qres(f"{what} is not a tuple of {count} integers")
    return item


def parse_qres_legacy(data: bytes, *, stride: int = QRES_STRIDE) -> QResLegacyFile:
    """Read a file written by the authors' QRes-VAE ``compress_file()`` (or :func:`pack_qres_legacy`),
    without unpickling; ``stride`` is the model's (64 for every published QRes-VAE model)."""
    try:
        obj = safe_loads(data)
    except BitstreamError as exc:
        raise _not_qres(str(exc)) from exc
    if type(obj) is not list or len(obj) < 3:
        raise _not_qres("the pickle is not a list of latent strings, a shape and an image size")
    height, width = _ints(obj[-1], 2, "the last item (the image size)")
    pixel_string = None
    if type(obj[-2]) is list:  # the lossless model's pixels come between the shape and the size
        pixel_string = _one_string(obj[-2], "the pixels' item")
        obj = obj[:-1]
    shape = _ints(obj[-2], 4, "the item before the image size (the top feature shape)")
    strings = [_one_string(item, f"latent block {i}'s item") for i, item in enumerate(obj[:-2])]
    problem = _layout_problem(strings, shape, height, width, stride)
    if problem is not None:
        raise _not_qres(problem)
    n, c, h, w = shape
    return QResLegacyFile(strings, (n, c, h, w), pixel_string, height, width)


def pack_qres_legacy(
    strings: Sequence[bytes],
    top_shape: Sequence[int],
    height: int,
    width: int,
    pixel_string: bytes | None = None,
    *,
    stride: int = QRES_STRIDE,
) -> bytes:
    """The authors' QRes-VAE layout, which their ``decompress_file()`` reads: a protocol-4 pickle of plain
    lists, tuples, bytes and integers only (nothing that loads code)."""
    for s in [*strings, *([] if pixel_string is None else [pixel_string])]:
        if not isinstance(s, (bytes, bytearray)):
            raise TypeError(f"strings must be bytes, got {type(s).__name__}")
    shape = tuple(operator.index(v) for v in top_shape)
    if len(shape) != 4:
        raise ValueError(f"top_shape must be (N, C, h, w), got {tuple(top_shape)}")
    height, width = operator.index(height), operator.index(width)
    problem = _layout_problem(list(strings), shape, height, width, stride)
    if problem is not None:
        raise ValueError(f"cannot write a QRes-VAE file: {problem}")
    obj: list[object] = [[bytes(s)] for s in strings]
    obj.append(shape)
    if pixel_string is not None:
        obj.append([bytes(pixel_string)])
    obj.append((height, width))
    return pickle.dumps(obj, protocol=4)
