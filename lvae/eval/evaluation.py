"""Rate–distortion evaluation: real coding of every image at every rate point, results as JSON.

For each rate point (a λ of a variable-rate model, or a codec quality) and each image the image
is coded to a file, the file is read back and decoded, and the row keeps the file's size
(bpp = 8·bytes / (H·W) of the original image), the RGB MSE on the [0, 1] scale, the PSNR and
MS-SSIM. Reconstructions are rounded to 8 bits, as written to an image file. Per-point results
are means over images (PSNR averaged per image, as the published curves were made).

The λ values come from :func:`lvae.eval.lambdas.rate_points` (a sweep over a variable-rate
model's range, or the members of a fixed-λ family such as ``qres34m``, each coded by its own
network through ``model.compress(im, lmb=λ)``), the result's header and its file from
:mod:`lvae.eval.results`; the command line is ``eval-var-rate.py`` / ``lvae eval``
(:mod:`lvae.cli.evaluate`).
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..metrics import MS_SSIM_MIN_SIDE, ms_ssim, mse, mse_to_psnr
from ..utils.datasets import IMAGE_EXTENSIONS, known_datasets, list_images, resolve_dataset
from . import classical
from .lambdas import DEFAULT_STEPS, lambda_sweep
from .results import report_header, save_results

if TYPE_CHECKING:
    from ..coding.codec import CompressionMixin

__all__ = [
    "DEFAULT_STEPS",
    "lambda_sweep",
    "find_images",
    "evaluate_model",
    "evaluate_progressive",
    "evaluate_codec",
    "save_results",
]


def find_images(dataset: str) -> tuple[str, Path, list[Path]]:
    """Resolve a data-set name or folder; returns ``(test_set, folder, images)``.

    ``test_set`` is the name of a known data set, else the folder's name; an image-less folder
    raises ``ValueError``.
    """
    folder = resolve_dataset(dataset)
    test_set = dataset if dataset in known_datasets else folder.resolve().name
    images = list_images(folder)
    if not images:
        raise ValueError(f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return test_set, folder, images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # NOTE: CUDA runs asynchronously; time only finished work


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def _image_metrics(ref: torch.Tensor, rec: torch.Tensor) -> dict[str, float | None]:
    m = mse(ref, rec)
    small = min(ref.shape[2:]) < MS_SSIM_MIN_SIDE
    return {"mse": m, "psnr": mse_to_psnr(m), "ms-ssim": None if small else ms_ssim(ref, rec)}


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _model_name(model: CompressionMixin, name: str | None) -> str:
    return name or getattr(model, "name", None) or type(model).__name__


def _sweep(
    images: Sequence[Path],
    points: Sequence[Any],
    point_key: str,
    suffix: str,
    encode: Callable[[torch.Tensor, Any], bytes],
    decode: Callable[[bytes], torch.Tensor],
    device: torch.device,
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, list], dict[str, Any]]:
    """Code every image at every point through files in a temporary folder."""
    if len(set(points)) != len(points):
        raise ValueError(f"the rate points repeat: {', '.join(f'{p:g}' for p in points)}")
    from tqdm import tqdm

    from ..io import load_image

    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(total=len(images) * len(points), disable=not progress, unit="code", dynamic_ncols=True)
    with tempfile.TemporaryDirectory(prefix="lvae-eval-") as tmp, bar:
        for path in images:
            ref = load_image(path).to(device)
            h, w = ref.shape[2:]
            for i, point in enumerate(points):
                bar.set_description(f"{path.name} {point_key}={point:g}")
                bits_path = Path(tmp) / f"{path.stem}-{i}{suffix}"
                _sync(device)
                t0 = time.perf_counter()
                data = encode(ref, point)
                _sync(device)
                t1 = time.perf_counter()
                bits_path.write_bytes(data)
                num_bytes = bits_path.stat().st_size
                data = bits_path.read_bytes()
                t2 = time.perf_counter()
                rec = decode(data)
                _sync(device)
                t3 = time.perf_counter()
                if rec.shape != ref.shape:
                    raise RuntimeError(f"decoding {path.name} gave shape {tuple(rec.shape)}, not {tuple(ref.shape)}")
                rows.append(
                    {
                        "image": path.name,
                        point_key: point,
                        "bytes": num_bytes,
                        "bpp": num_bytes * 8 / (h * w),
                        **_image_metrics(ref, _quantize(rec)),
                        "encode-seconds": t1 - t0,
                        "decode-seconds": t3 - t2,
                    }
                )
                bar.update()
    total = time.perf_counter() - start

    results: dict[str, list] = {k: [] for k in ("bpp", "mse", "psnr", "ms-ssim", "encode-seconds", "decode-seconds")}
    for point in points:
        sel = [r for r in rows if r[point_key] == point]
        for key in results:
            results[key].append(_mean([r[key] for r in sel]))
    timings = {
        "encode-seconds-mean": _mean([r["encode-seconds"] for r in rows]),
        "decode-seconds-mean": _mean([r["decode-seconds"] for r in rows]),
        "total-seconds": total,
        "cuda-synchronized": device.type == "cuda",
    }
    return rows, results, timings


def evaluate_model(
    model: CompressionMixin,
    images: Sequence[Path],
    lambdas: Sequence[float],
    *,
    name: str | None = None,
    test_set: str = "",
    folder: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model (``compress``/``decompress``, tables built) at each λ: a variable-rate
    model codes every λ itself; a fixed-λ model (``model.lambdas``) codes each with the member
    trained at it, and the result records those members (``members``).

    Returns the result dict (the JSON schema of the published curves plus per-image rows,
    timings and versions). The model's device is used; on CUDA one untimed warm-up run comes first.
    """
    device = next(model.parameters()).device
    lambdas = [float(v) for v in lambdas]

    def encode(im: torch.Tensor, lmb: float) -> bytes:
        return model.compress(im, lmb=lmb)

    def decode(data: bytes) -> torch.Tensor:
        return model.decompress(data)

    if device.type == "cuda" and images and lambdas:
        from ..io import load_image

        model.decompress(model.compress(load_image(images[0]).to(device), lmb=lambdas[0]))
    rows, results, timings = _sweep(images, lambdas, "lmb", ".bits", encode, decode, device, progress)
    report = report_header(_model_name(model, name), test_set, folder or images[0].parent, images, device)
    report.update(lambdas=lambdas, qualities=None, results=results, timings=timings, **{"per-image": rows})
    report.update(_members(model, lambdas))
    return report


def _members(model: CompressionMixin, lambdas: Sequence[float]) -> dict[str, Any]:
    """For a fixed-λ model: ``members``, the λ of the networks that coded the points, and
    ``family-lambdas``, every λ the model could code with (its own alone when it stands alone)."""
    family = getattr(model, "lambdas", None)
    if family is None:
        return {}
    return {"members": list(lambdas), "family-lambdas": [float(v) for v in family]}


def evaluate_progressive(
    model: CompressionMixin,
    images: Sequence[Path],
    lambdas: Sequence[float],
    *,
    name: str | None = None,
    test_set: str = "",
    folder: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """bpp and PSNR of every prefix of every file: each image coded once per λ, then decoded from
    its first k = 0 … L latent strings (the size of a prefix is that of its truncated file)."""
    from tqdm import tqdm

    from ..bitstream import truncate
    from ..io import load_image

    device = next(model.parameters()).device
    lambdas = [float(v) for v in lambdas]
    n = len(model.latent_blocks)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(images) * len(lambdas), disable=not progress, unit="code", dynamic_ncols=True)
    with bar:
        for path in images:
            ref = load_image(path).to(device)
            h, w = ref.shape[2:]
            for lmb in lambdas:
                bar.set_description(f"{path.name} lmb={lmb:g}")
                data = model.compress(ref, lmb=lmb)
                for k in range(n + 1):
                    rec = model.decompress(data, num_latents=k)
                    size = len(truncate(data, k))
                    rows.append({"image": path.name, "lmb": lmb, "latents": k, "bytes": size,
                                 "bpp": 8 * size / (h * w), "psnr": mse_to_psnr(mse(ref, _quantize(rec)))})
                bar.update()
    prefixes: dict[str, list[list[float | None]]] = {"bpp": [], "psnr": []}
    for lmb in lambdas:
        for key in prefixes:
            prefixes[key].append([_mean([r[key] for r in rows if r["lmb"] == lmb and r["latents"] == k])
                                  for k in range(n + 1)])
    report = report_header(_model_name(model, name), test_set, folder or images[0].parent, images, device)
    report.update(lambdas=lambdas, **{"num-latents": n, "prefixes": prefixes, "per-image": rows})
    report.update(_members(model, lambdas))
    return report


def evaluate_codec(
    codec: str,
    images: Sequence[Path],
    qualities: Sequence[int] | None = None,
    *,
    test_set: str = "",
    folder: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a classical codec (``jpeg``, ``webp``, ``avif``) over a quality sweep, on CPU."""
    from PIL import Image

    info = classical.codec_info(codec)
    qualities = list(classical.DEFAULT_QUALITIES[codec] if qualities is None else qualities)
    if not qualities:
        raise ValueError("give at least one quality")

    def encode(im: torch.Tensor, quality: int) -> bytes:
        arr = (im[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return classical.encode(Image.fromarray(arr, "RGB"), codec, quality)

    def decode(data: bytes) -> torch.Tensor:
        arr = np.asarray(classical.decode(data), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None]

    cpu = torch.device("cpu")
    suffix = classical.FILE_SUFFIX[codec]
    rows, results, timings = _sweep(images, qualities, "quality", suffix, encode, decode, cpu, progress)
    report = report_header(codec, test_set, folder or images[0].parent, images, cpu)
    report.update(lambdas=None, qualities=qualities, codec=info, results=results, timings=timings,
                  **{"per-image": rows})
    return report
