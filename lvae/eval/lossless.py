"""Evaluating a lossless model (``qres34m_lossless``): bits per pixel of real files that decode to
their source exactly, beside PNG and lossless WebP on the same images.

For each image (8-bit RGB or gray, as :func:`lvae.io.read_image` reads it; a source with
transparency or more than 8 bits per sample cannot be coded losslessly and is refused) the model
codes a file, the file is read back and decoded, and the decoded image must equal the source
sample for sample: a difference is an error, never a number in the table. The same 8-bit image,
in its colour type, is written as PNG (Pillow, ``optimize=True``) and as lossless WebP (Pillow,
``lossless=True, method=6``: libwebp's slowest method, Pillow's default quality 80, which sets the
lossless effort; quality 100 took 30× longer on Kodak's kodim01 for a file 0.03 % larger), each
decoded and checked alike. bpp is 8·bytes / (H·W) of each file, means over images.
No λ and no R–D curve: the result is marked ``"kind": "lossless"`` (:data:`lvae.eval.results.LOSSLESS`).

Importing this module imports neither torch nor numpy (``lvae --help`` stays light).
"""
from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .results import LOSSLESS, report_header

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..coding.codec import CompressionMixin

__all__ = [
    "PNG_SETTINGS", "WEBP_SETTINGS", "is_lossless_model", "codes_losslessly", "png_bytes", "webp_bytes",
    "evaluate_lossless", "summary",
]

PNG_SETTINGS: dict[str, Any] = {"optimize": True}
WEBP_SETTINGS: dict[str, Any] = {"lossless": True, "method": 6}  # quality: Pillow's default, 80
CODERS = ("model", "png", "webp")


def is_lossless_model(name: str) -> bool:
    """Whether the registered model ``name`` is a built-in lossless model (no model is built)."""
    from ..models.zoo import LOSSLESS_MODELS

    return name in LOSSLESS_MODELS


def codes_losslessly(model: object) -> bool:
    """Whether ``model``'s files decode to their 8-bit source bit for bit (``model.lossless``)."""
    return bool(getattr(model, "lossless", False))


# -- the classical lossless coders ------------------------------------------------------------------
def _pillow(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def _coded(arr: np.ndarray, format: str, settings: dict[str, Any]) -> bytes:
    """``arr`` (H×W×C uint8, C = 1 or 3) as a ``format`` file, checked to decode to ``arr`` exactly."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    _pillow(arr).save(buf, format=format, **settings)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        back = np.asarray(im.convert("L" if arr.shape[2] == 1 else "RGB")).reshape(arr.shape)
    if not np.array_equal(back, arr):
        raise RuntimeError(f"Pillow's {format} did not give the image back exactly: it cannot serve as a lossless "
                           "baseline here")
    return data


def png_bytes(arr: np.ndarray) -> bytes:
    """The PNG file of an H×W×C uint8 image (Pillow, :data:`PNG_SETTINGS`), checked to decode exactly."""
    return _coded(arr, "PNG", PNG_SETTINGS)


def webp_bytes(arr: np.ndarray) -> bytes:
    """The lossless WebP file of an H×W×C uint8 image (Pillow, :data:`WEBP_SETTINGS`), checked to decode
    exactly."""
    return _coded(arr, "WEBP", WEBP_SETTINGS)


# -- the model ---------------------------------------------------------------------------------------
def _eight_bit(im: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.round(im.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu()


def _read_source(path: Path):
    """The image as the lossless model codes it, refused (as ``compress_file`` refuses it) when a
    lossless file of 8-bit RGB or gray cannot hold it."""
    from ..io import read_image

    loaded = read_image(path)
    what = loaded.not_exact()
    if what is not None:
        raise ValueError(f"{path} has {what}, which a lossless file of 8-bit RGB or gray cannot hold: "
                         "remove it from the data set, or convert it first")
    return loaded


def _code_image(model: CompressionMixin, path: Path, tmp: Path, device: torch.device) -> dict[str, Any]:
    import torch

    loaded = _read_source(path)
    source = loaded.tensor.to(device)
    h, w = source.shape[2:]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # NOTE: time finished work only
    sync()
    t0 = time.perf_counter()
    data = model.compress(source)
    sync()
    t1 = time.perf_counter()
    file = tmp / f"{path.stem}.lvae"
    file.write_bytes(data)  # the real file, read back: its size is what is counted
    data = file.read_bytes()
    t2 = time.perf_counter()
    decoded = model.decompress(data)
    sync()
    t3 = time.perf_counter()
    want, got = _eight_bit(loaded.tensor), _eight_bit(decoded)
    if got.shape != want.shape or not torch.equal(got, want):
        differ = int((got != want).sum()) if got.shape == want.shape else want.numel()
        raise RuntimeError(f"{path.name}: the lossless file decodes to an image that differs from the source in "
                           f"{differ} of {want.numel()} samples; the lossless promise is broken, please report it")
    arr = want[0].permute(1, 2, 0).numpy()
    png, webp = png_bytes(arr), webp_bytes(arr)
    pixels = h * w
    return {
        "image": path.name, "width": w, "height": h, "colour": loaded.colour, "exact": True,
        "bytes": len(data), "bpp": 8 * len(data) / pixels,
        "png-bytes": len(png), "png-bpp": 8 * len(png) / pixels,
        "webp-bytes": len(webp), "webp-bpp": 8 * len(webp) / pixels,
        "encode-seconds": t1 - t0, "decode-seconds": t3 - t2,
    }


def evaluate_lossless(
    model: CompressionMixin,
    images: Sequence[Path],
    *,
    name: str | None = None,
    test_set: str = "",
    folder: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Code every image with the lossless ``model`` through a real file, check that it decodes
    exactly (``RuntimeError`` if not), and measure PNG and lossless WebP on the same 8-bit image.

    Returns the result dict (``"kind": "lossless"``; ``bpp``: the means of the model, PNG and
    WebP; ``per-image`` rows; ``exact-images``; the coders' settings; timings of the model)."""
    from PIL import features
    from tqdm import tqdm

    if not codes_losslessly(model):
        raise ValueError(f"{name or getattr(model, 'name', None) or 'the model'} is not a lossless model")
    if not images:
        raise ValueError("no images to evaluate")
    device = next(model.parameters()).device
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lvae-lossless-") as tmp, \
            tqdm(images, disable=not progress, unit="image", dynamic_ncols=True) as bar:
        for path in bar:
            bar.set_description(path.name)
            rows.append(_code_image(model, Path(path), Path(tmp), device))
    total = time.perf_counter() - start

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    report = report_header(name or getattr(model, "name", None) or type(model).__name__, test_set,
                           folder or images[0].parent, images, device)
    report.update({
        "kind": LOSSLESS,
        "exact-images": sum(r["exact"] for r in rows),
        "bpp": {"model": mean("bpp"), "png": mean("png-bpp"), "webp": mean("webp-bpp")},
        "coders": {
            "png": {"library": "Pillow (zlib)", "library_version": features.version("zlib"), "settings": PNG_SETTINGS},
            "webp": {"library": "Pillow (libwebp)", "library_version": features.version("webp"),
                     "settings": WEBP_SETTINGS},
        },
        "timings": {"encode-seconds-mean": mean("encode-seconds"), "decode-seconds-mean": mean("decode-seconds"),
                    "total-seconds": total, "cuda-synchronized": device.type == "cuda"},
        "per-image": rows,
    })
    return report


def summary(report: dict[str, Any]) -> str:
    """The table printed after a lossless evaluation: bpp per image and the means."""
    rows = report["per-image"]
    width = max(len("image"), *(len(r["image"]) for r in rows))
    lines = [f"{report['name']} on {report['test-set']} ({report['num-images']} images, {report['device']}): lossless, "
             f"{report['exact-images']} of {report['num-images']} images decoded exactly",
             f"{'image':<{width}} {'model bpp':>10} {'PNG bpp':>9} {'WebP bpp':>9}"]
    for r in rows:
        lines.append(f"{r['image']:<{width}} {r['bpp']:>10.4f} {r['png-bpp']:>9.4f} {r['webp-bpp']:>9.4f}")
    bpp = report["bpp"]
    lines.append(f"{'mean':<{width}} {bpp['model']:>10.4f} {bpp['png']:>9.4f} {bpp['webp']:>9.4f}")
    t = report["timings"]
    lines.append(f"PNG: Pillow optimize=True; WebP: Pillow lossless, method 6. Model: mean encode "
                 f"{t['encode-seconds-mean']:.4f} s, decode {t['decode-seconds-mean']:.4f} s per image")
    return "\n".join(lines)
