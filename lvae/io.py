"""Reading images into tensors and writing files safely.

Any image Pillow opens is accepted. Grayscale and palette images are converted to RGB; an alpha
channel is dropped (pixels keep their colour, transparency is lost); 16-bit samples are reduced
to 8 bits (rounded ``v / 257``); the EXIF orientation of photos is applied.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import ImageReadError

__all__ = ["load_image", "save_image", "atomic_write_bytes", "image_to_tensor", "tensor_to_image"]


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data (Pillow opens 16-bit grayscale as I;16 or I): reduce to 8 bits
        arr = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        arr = np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA").convert("RGB")  # alpha dropped
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """A Pillow image → 1×3×H×W float tensor in [0, 1]."""
    arr = _to_rgb8(img)
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float().div_(255.0)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a 1×3×H×W float tensor in [0, 1] (RGB, 8-bit precision)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            tensor = image_to_tensor(img)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read {path} as an image ({type(exc).__name__}: {exc})") from None
    if tensor.shape[2] == 0 or tensor.shape[3] == 0:
        raise ImageReadError(f"{path} is an empty image")
    return tensor


def tensor_to_image(img: torch.Tensor) -> Image.Image:
    """A 1×3×H×W (or 3×H×W) tensor in [0, 1] → 8-bit RGB Pillow image (rounded)."""
    if img.dim() == 4:
        if img.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {img.shape[0]}")
        img = img[0]
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"expected a 3×H×W image tensor, got shape {tuple(img.shape)}")
    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    An existing file at ``path`` is either left as it was or replaced whole, never half-written.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


WRITER_TAG = "lvae"


def written_by_lvae(path: str | os.PathLike) -> bool:
    """True when ``path`` is a PNG that :func:`save_image` wrote (its Software text chunk says lvae)."""
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and getattr(im, "text", {}).get("Software") == WRITER_TAG
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def save_image(img: torch.Tensor, path: str | os.PathLike, format: str | None = None) -> None:
    """Save a [0, 1] image tensor (PNG unless the extension or ``format`` says otherwise), atomically."""
    import io

    path = Path(path)
    pil = tensor_to_image(img)
    fmt = format or (Image.registered_extensions().get(path.suffix.lower()) if path.suffix else None) or "PNG"
    buf = io.BytesIO()
    if fmt == "PNG":  # marks the image as lvae's own output (the CLI overwrites only those on advice)
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Software", WRITER_TAG)
        pil.save(buf, format=fmt, pnginfo=info)
    else:
        pil.save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())
