"""Reading images into tensors and writing files safely.

Reading (:func:`read_image`, :func:`load_image`): any image Pillow opens is accepted, and the EXIF
orientation of photos is applied. Each image has a *colour type*:

- ``"gray"`` for the grayscale modes: ``1`` (bilevel, read as 0 or 255), ``L``, ``LA``/``La``,
  ``I;16*``/``I`` (16-bit samples reduced to 8 bits, rounded ``v / 257``) and ``F`` (floats,
  scaled by 255 when they lie within [0, 1]);
- ``"rgb"`` for everything else (RGB, palette, CMYK, YCbCr...), converted to 8-bit RGB.

An alpha channel is dropped (pixels keep their colour, transparency is lost);
:attr:`LoadedImage.alpha_dropped` says when that lost anything (some pixel not fully opaque,
also for a palette's or a PNG's transparent colour). :func:`load_image` always gives RGB (a gray
image repeated in the three channels); :func:`read_image` gives the image in its colour type.
:func:`reading_ahead` reads an image in a background thread while other work runs (the ``lvae``
command: torch's import and the model's load), for :func:`read_image` to take.

Writing (:func:`save_image`): the format comes from the file's suffix (or ``format``). Lossless
formats (PNG, BMP, TIFF, PPM/PGM, WebP without a quality) store the 8-bit image exactly; a lossy
one (JPEG, AVIF, WebP with a quality) is written only with an explicit ``quality``, since it
would degrade the image a second time. A 1×1×H×W tensor is written as a grayscale image.
Every file is written to a temporary file in the same folder and renamed (:func:`atomic_output`).

torch is imported by the functions that make or read tensors, not by importing this module.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageReadError

if TYPE_CHECKING:
    import torch

__all__ = [
    "load_image", "read_image", "LoadedImage", "save_image", "SavedImage", "ImageFormat", "output_format",
    "IMAGE_FORMATS", "GRAY_MODES", "atomic_write_bytes", "atomic_output", "check_writable",
    "remove_partial_outputs", "image_to_tensor", "tensor_to_image", "written_by_lvae", "reading_ahead",
]

# Pillow modes read as grayscale (colour type "gray"); all others are read as RGB.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


# -- reading -----------------------------------------------------------------------------------------
def _colour_type(img: Image.Image) -> str:
    return "gray" if img.mode in GRAY_MODES else "rgb"


def _alpha_dropped(img: Image.Image) -> bool:
    """True when the image has transparency (an alpha channel or a transparent colour) that is not
    fully opaque everywhere: dropping it loses something."""
    if img.mode in _ALPHA_MODES:
        alpha = img.getchannel(img.getbands()[-1])
    elif "transparency" in img.info:
        alpha = img.convert("RGBA").getchannel("A")
    else:
        return False
    lo, _ = cast("tuple[int, int]", alpha.getextrema())  # one band: (min, max)
    return lo < 255


def _to_gray8(img: Image.Image) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.float64)
        return np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
    if img.mode in ("LA", "La"):
        img = img.getchannel(0)  # alpha dropped (La: as stored, premultiplied)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in GRAY_MODES:
        return np.repeat(_to_gray8(img)[..., None], 3, axis=2)
    if img.mode in _ALPHA_MODES:
        img = img.convert("RGBA").convert("RGB")  # alpha dropped, colours kept
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)  # (an RGB image is read as it is: convert() would copy it)


_ALIGN = 64  # bytes: the alignment of torch's own CPU allocations, kept for the tensors made here


def _to_unit_float(arr: np.ndarray) -> np.ndarray:
    """8-bit samples (H×W or H×W×C) → H×W×C float32 in [0, 1], each ``v / 255`` correctly
    rounded: the values of ``torch.from_numpy(arr).float().div_(255)``, in one pass, without
    torch (so that it can run beside torch's import), in memory aligned as torch aligns its own."""
    if arr.ndim == 2:
        arr = arr[..., None]
    nbytes = arr.size * 4
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGN
    out = raw[start : start + nbytes].view(np.float32).reshape(arr.shape)
    # Two whole-array calls, each releasing the GIL once (a casting divide would take it back for
    # every 8192 values it buffers: slow beside torch's import).
    np.copyto(out, arr, casting="safe")
    np.divide(out, np.float32(255.0), out=out)
    return out


def _float_to_tensor(values: np.ndarray) -> torch.Tensor:
    """H×W×C float32 → 1×C×H×W (a view: channels-last in memory, as the image's rows are)."""
    import torch

    return torch.from_numpy(values).permute(2, 0, 1)[None]


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    return _float_to_tensor(_to_unit_float(arr))


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """A Pillow image → 1×3×H×W float tensor in [0, 1] (RGB; a gray image in all three channels)."""
    return _array_to_tensor(_to_rgb8(img))


@dataclass(frozen=True)
class LoadedImage:
    """An image read by :func:`read_image`."""

    tensor: torch.Tensor  # 1×C×H×W in [0, 1], 8-bit values: C = 1 for gray, 3 for RGB
    colour: str  # "gray" or "rgb"
    alpha_dropped: bool  # the source had transparency (not fully opaque) that was dropped
    mode: str  # the source's Pillow mode (e.g. "L", "RGBA", "I;16")
    deep: bool = False  # the source had more than 8 bits per sample (16-bit gray or RGB), reduced to 8

    def not_exact(self) -> str | None:
        """What of the source the tensor lost (a lossless coder refuses such a source), or None."""
        if self.alpha_dropped:
            return "transparency"
        if self.deep:
            return "samples of more than 8 bits"
        return None

    def rgb(self) -> torch.Tensor:
        """The image as 1×3×H×W (a gray image repeated in the three channels)."""
        return self.tensor if self.tensor.shape[1] == 3 else self.tensor.expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True)
class _Pixels:
    """What :func:`read_image` reads before torch is needed: the samples as float32 H×W×C."""

    values: np.ndarray
    colour: str
    alpha_dropped: bool
    mode: str
    deep: bool


def _read_pixels(path: Path) -> _Pixels:
    """Decode ``path`` (torch-free; Pillow's decoding and NumPy's conversions release the GIL)."""
    try:
        with Image.open(path) as img:
            # NOTE: Pillow opens a 16-bit RGB(A) PNG as 8-bit "RGB(A)"; only the raw tile mode tells.
            deep = img.mode in _SIXTEEN_BIT or img.mode == "F" or any(
                ";16" in str(getattr(tile, "args", tile[-1] if isinstance(tile, tuple) else "")) for tile in img.tile
            )
            img.load()
            if img.getexif().get(_ORIENTATION, 1) != 1:  # else exif_transpose would only copy the image
                img = ImageOps.exif_transpose(img)
            colour = _colour_type(img)
            dropped = _alpha_dropped(img)
            arr = _to_gray8(img) if colour == "gray" else _to_rgb8(img)
            mode = img.mode
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read {path} as an image ({type(exc).__name__}: {exc})") from None
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"{path} is an empty image")
    return _Pixels(_to_unit_float(arr), colour, dropped, mode, deep)


_ORIENTATION = 0x0112  # the EXIF tag (PIL.ExifTags.Base.Orientation)


class _ReadAhead:
    """One image being read in a background thread by :func:`reading_ahead`."""

    def __init__(self, path: Path):
        self.path = path
        self.identity = _file_identity(path)
        self.result: _Pixels | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lvae-read-image", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = _read_pixels(self.path)
        except BaseException as exc:  # noqa: BLE001  (raised again where read_image takes it)
            self.error = exc

    def take(self) -> _Pixels:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


_READ_AHEAD: dict[Path, _ReadAhead] = {}


def _file_identity(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def reading_ahead(path: str | os.PathLike) -> Iterator[None]:
    """Start reading the image ``path`` in a background thread; :func:`read_image` of the same
    file inside the block takes what it read (or raises the error it met), as it would have
    read it itself: the ``lvae`` command reads an image while torch imports and the model is
    built (Pillow's decoding and NumPy's conversions release the GIL). A file changed in the
    meantime (size, modification time or inode) is read again; a result nobody took is dropped
    when the block ends."""
    key = Path(os.path.abspath(path))
    ahead = _ReadAhead(key)
    _READ_AHEAD[key] = ahead
    try:
        yield
    finally:
        if _READ_AHEAD.get(key) is ahead:
            del _READ_AHEAD[key]


def _taken_ahead(path: Path) -> _Pixels | None:
    """What :func:`reading_ahead` read of ``path`` (None: nothing, or the file has changed since)."""
    if not _READ_AHEAD:
        return None
    ahead = _READ_AHEAD.pop(Path(os.path.abspath(path)), None)
    if ahead is None or ahead.identity is None or ahead.identity != _file_identity(path):
        return None
    return ahead.take()


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Read an image file in its colour type (see the module's description)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    pixels = _taken_ahead(path)
    if pixels is None:
        pixels = _read_pixels(path)
    return LoadedImage(_float_to_tensor(pixels.values), pixels.colour, pixels.alpha_dropped, pixels.mode, pixels.deep)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a 1×3×H×W float tensor in [0, 1] (RGB, 8-bit precision).

    A grayscale image is repeated in the three channels; :func:`read_image` keeps its colour type.
    """
    return read_image(path).rgb()


def tensor_to_image(img: torch.Tensor) -> Image.Image:
    """A 1×C×H×W (or C×H×W) tensor in [0, 1] → 8-bit Pillow image (rounded): C = 3 gives RGB,
    C = 1 gives grayscale (mode L)."""
    import torch

    if img.dim() == 4:
        if img.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {img.shape[0]}")
        img = img[0]
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"expected a 3×H×W or 1×H×W image tensor, got shape {tuple(img.shape)}")
    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[:, :, 0]), mode="L")
    return Image.fromarray(arr, mode="RGB")


# -- atomic writes ---------------------------------------------------------------------------------
# Temporary files being written right now: removed by remove_partial_outputs() when the process
# must stop at once (the lvae command on Ctrl-C), so that no half-written file is left behind.
_PENDING: set[str] = set()


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[str]:
    """A registered, not yet created temporary name in ``path``'s folder; removed on the way out
    (if it was not renamed into place)."""
    tmp = str(path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    _PENDING.add(tmp)
    try:
        yield tmp
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        _PENDING.discard(tmp)


def remove_partial_outputs() -> None:
    """Remove the temporary files of writes under way (for a process about to exit at once)."""
    for tmp in list(_PENDING):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _PENDING.discard(tmp)


def _cannot_write(path: Path, exc: OSError) -> OSError:
    folder = path.parent if str(path.parent) else Path(".")
    reason = exc.strerror or type(exc).__name__
    return PermissionError(
        exc.errno or errno.EACCES, f"cannot write {path}: the folder {folder} is not writable ({reason})"
    )


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``OSError`` (naming ``path``) unless a file can be created in ``path``'s folder.

    Cheap (creates and removes an empty temporary file): call it before expensive work whose
    result goes to ``path``.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"the output folder {folder} does not exist")
    with _temporary_beside(path) as tmp:
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            raise _cannot_write(path, exc) from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder to write to; rename it to ``path`` on success.

    An existing file at ``path`` is either left as it was or replaced whole, never half-written;
    the temporary file is removed when the block fails (or is interrupted).
    """
    path = Path(path)
    with _temporary_beside(path) as tmp:
        yield Path(tmp)
        os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    An existing file at ``path`` is either left as it was or replaced whole, never half-written.
    The file gets the permissions a plain ``open()`` would give it (0666 less the umask). An
    unwritable folder raises ``OSError`` naming ``path`` (not the temporary file).
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as exc:
            raise _cannot_write(path, exc) from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


# -- image formats for writing ---------------------------------------------------------------------
@dataclass(frozen=True)
class ImageFormat:
    """An image format lvae writes, as chosen by :func:`output_format`."""

    name: str  # "png", "bmp", "tiff", "ppm", "pgm", "webp", "jpeg", "avif"
    label: str  # as printed: "PNG", "WebP", ...
    pillow: str  # Pillow's format name
    suffixes: tuple[str, ...]  # the first is the default
    lossy: bool  # needs a quality (JPEG, AVIF); WebP is lossless without one
    takes_quality: bool
    quality: int | None = None  # None: lossless

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    @property
    def lossless(self) -> bool:
        return self.quality is None

    def describe(self) -> str:
        return f"{self.label} ({'lossless' if self.quality is None else f'quality {self.quality}'})"


IMAGE_FORMATS = {
    f.name: f
    for f in (
        ImageFormat("png", "PNG", "PNG", (".png",), False, False),
        ImageFormat("bmp", "BMP", "BMP", (".bmp",), False, False),
        ImageFormat("tiff", "TIFF", "TIFF", (".tif", ".tiff"), False, False),
        ImageFormat("ppm", "PPM", "PPM", (".ppm", ".pnm"), False, False),  # gray images as P5, RGB as P6
        ImageFormat("pgm", "PGM", "PPM", (".pgm",), False, False),  # grayscale only
        ImageFormat("webp", "WebP", "WEBP", (".webp",), False, True),  # lossless, or lossy with a quality
        ImageFormat("jpeg", "JPEG", "JPEG", (".jpg", ".jpeg", ".jpe", ".jfif"), True, True),
        ImageFormat("avif", "AVIF", "AVIF", (".avif",), True, True),
    )
}
_ALIASES = {"jpg": "jpeg", "tif": "tiff", "pnm": "ppm"}
_BY_SUFFIX = {s: f for f in IMAGE_FORMATS.values() for s in f.suffixes}


def _suffix_lists() -> str:
    lossless = " ".join(s for f in IMAGE_FORMATS.values() if not f.lossy for s in f.suffixes)
    lossy = " ".join(s for f in IMAGE_FORMATS.values() if f.takes_quality for s in f.suffixes)
    return f"lossless: {lossless}; lossy, with a quality: {lossy}"


def output_format(
    path: str | os.PathLike | None = None,
    format: str | None = None,
    quality: int | None = None,
    *,
    options: tuple[str, str] = ("format=", "quality="),
) -> ImageFormat:
    """The format an image written to ``path`` gets: ``format`` if given (a name of
    :data:`IMAGE_FORMATS`, ``jpg``/``tif``/``pnm``, or Pillow's name), else the suffix of ``path``
    (PNG when it has none). Raises ``ValueError``, with what to do, for an unknown or contradictory
    format, a lossy format without ``quality`` (JPEG, AVIF), or a ``quality`` for a format that is
    always lossless. ``options`` names the two options in messages (the command line passes
    ``("--format ", "--quality ")``).
    """
    fmt_opt, q_opt = options
    path = Path(path) if path is not None else None
    suffix = path.suffix.lower() if path is not None else ""
    from_suffix = _BY_SUFFIX.get(suffix)
    if format is not None:
        key = str(format).lower().lstrip(".")
        key = _ALIASES.get(key, key)
        chosen = IMAGE_FORMATS.get(key)
        if chosen is None:
            raise ValueError(f"lvae does not write {format!r} images ({_suffix_lists()})")
        if from_suffix is not None and from_suffix.pillow != chosen.pillow:
            raise ValueError(f"the name {path} says {from_suffix.label} but {fmt_opt}{format} says {chosen.label}")
    elif not suffix:
        chosen = IMAGE_FORMATS["png"]
    elif from_suffix is None:
        raise ValueError(f"lvae does not write {suffix} images ({_suffix_lists()}); name the file with one of "
                         f"these suffixes, or give {fmt_opt}NAME")
    else:
        chosen = from_suffix
    where = f"{path}: " if path is not None and path.name else (f"{fmt_opt}{format}: " if format else "")
    if quality is not None:
        if isinstance(quality, bool) or int(quality) != quality or not 1 <= quality <= 100:
            raise ValueError(f"the quality must be an integer from 1 to 100, got {quality!r}")
        if not chosen.takes_quality:
            raise ValueError(f"{where}{chosen.label} is lossless and written as decoded: {q_opt}Q applies only to "
                             "the lossy formats (JPEG, AVIF, lossy WebP)")
        chosen = dataclasses.replace(chosen, quality=int(quality))
    elif chosen.lossy:
        raise ValueError(f"{where}{chosen.label} is lossy and would degrade the decoded image a second time: choose "
                         f"its quality with {q_opt}Q (1-100), or write a lossless format such as .png")
    if chosen.pillow in ("AVIF", "WEBP"):
        _check_pillow_writes(chosen)
    return chosen


def _check_pillow_writes(fmt: ImageFormat) -> None:
    from PIL import features

    if not features.check(fmt.name):
        raise ValueError(f"this Pillow cannot write {fmt.label} images; choose another format")


@dataclass(frozen=True)
class SavedImage:
    """What :func:`save_image` wrote."""

    path: Path
    format: ImageFormat  # with its quality (None: lossless)
    colour: str  # "gray" or "rgb"

    def describe(self) -> str:
        """E.g. ``gray PNG (lossless)``, ``RGB JPEG (quality 90)``."""
        return f"{'gray' if self.colour == 'gray' else 'RGB'} {self.format.describe()}"


WRITER_TAG = "lvae"


def written_by_lvae(path: str | os.PathLike) -> bool:
    """True when ``path`` is an image :func:`save_image` wrote and marked: a PNG (Software text
    chunk), JPEG (comment) or TIFF (Software tag) saying lvae. Other formats carry no mark."""
    try:
        with Image.open(path) as im:
            if im.format == "PNG":
                return getattr(im, "text", {}).get("Software") == WRITER_TAG
            if im.format == "JPEG":
                return im.info.get("comment") == WRITER_TAG.encode()
            if im.format == "TIFF":
                return im.tag_v2.get(305) == WRITER_TAG
            return False
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return False


def save_image(
    img: torch.Tensor, path: str | os.PathLike, format: str | None = None, *, quality: int | None = None
) -> SavedImage:
    """Save a [0, 1] image tensor (1×3×H×W RGB, or 1×1×H×W grayscale), atomically.

    The format is ``format`` or the suffix's (PNG when there is none): see :func:`output_format`.
    Lossless formats store the rounded 8-bit image exactly; JPEG and AVIF need ``quality``
    (1–100), and WebP is lossless unless ``quality`` is given. PNG, JPEG and TIFF files are
    marked as written by lvae (:func:`written_by_lvae`). Returns what was written.
    """
    import io

    path = Path(path)
    fmt = output_format(path, format, quality)
    pil = tensor_to_image(img)
    colour = "gray" if pil.mode == "L" else "rgb"
    if fmt.name == "pgm" and colour != "gray":
        raise ValueError(f"{path}: PGM holds grayscale images only and this one is in colour; write .ppm or .png")
    kwargs: dict = {}
    if fmt.pillow == "PNG":  # marks the image as lvae's own output (the CLI overwrites only those on advice)
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Software", WRITER_TAG)
        kwargs["pnginfo"] = info
    elif fmt.pillow == "JPEG":
        kwargs.update(quality=fmt.quality, comment=WRITER_TAG.encode())
    elif fmt.pillow == "TIFF":
        kwargs["tiffinfo"] = {305: WRITER_TAG}
    elif fmt.pillow == "WEBP":
        kwargs.update({"lossless": True} if fmt.quality is None else {"quality": fmt.quality})
    elif fmt.pillow == "AVIF":
        kwargs["quality"] = fmt.quality
    buf = io.BytesIO()
    pil.save(buf, format=fmt.pillow, **kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return SavedImage(path, fmt, colour)
