"""The result JSON of an evaluation: the one place that writes it, reads it and makes its header.

A result holds one rate–distortion curve: ``name``, ``test-set`` and ``results: {bpp: [...],
psnr: [...]}`` (non-empty lists of equal length), plus whatever the run adds (``lambdas``,
``per-image``, ``timings``...; see docs/evaluation.md). ``"kind": "bound"`` marks the curve of
an R(D) upper bound (:mod:`lvae.eval.bound`), measured without coding; a codec's has no ``kind``.
``"kind": "lossless"`` marks the result of a lossless model (:mod:`lvae.eval.lossless`): bits per
pixel beside PNG and lossless WebP, no curve (it is a result file, but no R–D curve to plot or compare).
The shipped anchor curves (:mod:`lvae.eval.anchors`) are files of the same format and are read by
the same :func:`parse_results`.

Importing this module imports no torch, numpy or Pillow (the functions that need them import them).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "report_header",
    "versions",
    "describe_device",
    "save_results",
    "parse_results",
    "load_results",
    "is_result_file",
    "BOUND",
    "is_bound_curve",
    "LOSSLESS",
    "is_lossless_result",
]

#: The ``kind`` of a result that measures an upper bound on R(D) (``rd_model_base``), not a codec's
#: files; a result without ``kind`` is a codec's curve.
BOUND = "bound"
#: The ``kind`` of a lossless model's result: per-image bits per pixel (``bpp``) of the model, PNG and
#: lossless WebP, and how many images decoded exactly; no ``results`` curve.
LOSSLESS = "lossless"


# -- the header every result starts with ----------------------------------------------------------
def versions() -> dict[str, str | None]:
    """The versions of lvae, Python, torch, CompressAI, numpy, Pillow and Pillow's codec libraries."""
    import numpy as np
    import PIL
    import torch
    from PIL import features

    import lvae

    try:  # the distribution's metadata: importing the compressai package takes seconds
        compressai_version: str | None = importlib.metadata.version("compressai")
    except importlib.metadata.PackageNotFoundError:
        compressai_version = None
    return {
        "lvae": lvae.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "compressai": compressai_version,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "libjpeg": features.version("jpg"),
        "libwebp": features.version("webp"),
        "libavif": features.version("avif"),
    }


def describe_device(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (<the GPU's name>)``."""
    if device.type == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def report_header(
    name: str, test_set: str, folder: Path, images: Sequence[Path], device: torch.device
) -> dict[str, Any]:
    """The first keys of a result: what was measured, on which images, where, when and with what."""
    return {
        "name": name,
        "test-set": test_set,
        "dataset-folder": str(folder),
        "num-images": len(images),
        "platform": f"{platform.platform()} ({platform.processor() or platform.machine()})",
        "device": describe_device(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }


# -- writing and reading --------------------------------------------------------------------------
def save_results(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a result as indented JSON (creating parent folders), atomically; returns the path.

    It writes where it is asked, replacing what is there; the command lines (``lvae eval``)
    refuse to replace an existing file without ``--force``, and anything but a result
    (:func:`is_result_file`) even with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..io import atomic_write_bytes  # here: lvae.io imports numpy and Pillow, which `lvae --help` must not

    atomic_write_bytes(path, (json.dumps(report, indent=1) + "\n").encode("utf-8"))
    return path


def parse_results(data: str | bytes, source: str) -> dict[str, Any]:
    """Parse the text of a result and check that it holds a curve (``results.bpp`` and
    ``results.psnr``, non-empty lists of equal length); ``ValueError`` naming ``source`` if not."""
    try:
        parsed = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{source} is not a JSON file ({exc})") from None
    if is_lossless_result(parsed):
        raise ValueError(f"{source} is a lossless model's result (bits per pixel of exact coding, beside PNG and "
                         "WebP): it holds no rate–distortion curve to plot or compare")
    res = parsed.get("results") if isinstance(parsed, dict) else None
    if not isinstance(res, dict) or not isinstance(res.get("bpp"), list) or not isinstance(res.get("psnr"), list):
        raise ValueError(f"{source} holds no rate–distortion curve (expected results.bpp and results.psnr lists)")
    if len(res["bpp"]) != len(res["psnr"]) or not res["bpp"]:
        raise ValueError(f"{source}: results.bpp and results.psnr must be non-empty and of equal length")
    return parsed


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one result file (see :func:`parse_results`); ``FileNotFoundError`` if there is none."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such result file: {path}") from None
    return parse_results(data, str(path))


def is_bound_curve(curve: dict[str, Any]) -> bool:
    """Whether a result measures an upper bound on R(D) (``"kind": "bound"``) rather than a codec."""
    return curve.get("kind") == BOUND


def is_lossless_result(parsed: Any) -> bool:
    """Whether a parsed result is a lossless model's (``"kind": "lossless"``, with its ``bpp`` means)."""
    return (isinstance(parsed, dict) and parsed.get("kind") == LOSSLESS and isinstance(parsed.get("name"), str)
            and isinstance(parsed.get("bpp"), dict))


def _is_progressive(parsed: Any) -> bool:
    """The result of ``lvae eval --progressive``: ``prefixes.bpp`` and ``prefixes.psnr``, one
    list (k = 0 … L) per λ."""
    pre = parsed.get("prefixes") if isinstance(parsed, dict) else None
    if not isinstance(pre, dict) or not isinstance(parsed.get("name"), str):
        return False
    bpp, psnr = pre.get("bpp"), pre.get("psnr")
    return (isinstance(bpp, list) and isinstance(psnr, list) and len(bpp) == len(psnr) > 0
            and all(isinstance(row, list) for row in bpp + psnr))


def is_result_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a result that ``lvae eval`` writes: a curve (:func:`load_results`
    reads it), the prefixes of ``--progressive`` or a lossless model's bits per pixel; False for
    anything else."""
    path = Path(path)
    try:
        if path.stat().st_size > 1 << 30:  # no result is that large: not read whole to find out
            return False
        data = path.read_bytes()
    except OSError:
        return False
    try:
        parse_results(data, str(path))
    except ValueError:
        try:
            parsed = json.loads(data)
            return _is_progressive(parsed) or is_lossless_result(parsed)
        except ValueError:  # not JSON, or not UTF-8 text
            return False
    return True
