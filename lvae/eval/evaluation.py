"""Rate–distortion evaluation: real coding of every image at every rate point, results as JSON.

For each rate point (a λ of a variable-rate model, or a codec quality) and each image the image
is coded to a file, the file is read back and decoded, and the row keeps the file's size
(bpp = 8·bytes / (H·W) of the original image), the RGB MSE on the [0, 1] scale, the PSNR and
MS-SSIM. Reconstructions are rounded to 8 bits, as written to an image file. Per-point results
are means over images (PSNR averaged per image, as the published curves were made).

``main`` is the command line of ``eval-var-rate.py`` and ``lvae eval``.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import anchors, classical
from ..errors import LvaeError
from ..metrics import MS_SSIM_MIN_SIDE, ms_ssim, mse, mse_to_psnr, bd_rate
from ..utils.datasets import IMAGE_EXTENSIONS, known_datasets, list_images, resolve_dataset
from ..utils.args import OneLineArgumentParser

__all__ = [
    "lambda_sweep",
    "find_images",
    "load_model",
    "evaluate_model",
    "evaluate_codec",
    "bd_rate_vs_anchor",
    "save_results",
    "main",
]

DEFAULT_STEPS = 16  # the published curves use 16 λ values


def lambda_sweep(low: float, high: float, steps: int = DEFAULT_STEPS) -> list[float]:
    """``steps`` λ values log-spaced from ``low`` to ``high`` (both included)."""
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"the λ range must satisfy 0 < low ≤ high, got {low:g}, {high:g}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if steps == 1:
        return [float(low)]
    return [float(v) for v in np.exp(np.linspace(math.log(low), math.log(high), steps))]


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


def load_model(
    name: str,
    weights: str | None = None,
    model_args: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, str]:
    """Build a registered model ready for coding; returns ``(model, weights_description)``.

    ``weights``: a checkpoint path; ``'random'`` for random weights; None for the model's
    published weights, or random weights if it has none.
    """
    import lvae
    from ..models.registry import model_weights

    has_published = model_weights(name) is not None  # ValueError for an unknown name
    if weights is None:
        pretrained: bool | str = has_published
        described = "published" if has_published else "random"
    elif weights == "random":
        pretrained, described = False, "random"
    else:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"checkpoint {weights} does not exist")
        pretrained, described = str(weights), str(weights)
    try:
        model = lvae.get_model(name, pretrained=pretrained, **(model_args or {}))
    except TypeError as exc:
        raise ValueError(f"bad model arguments for {name!r}: {exc}") from None
    model = model.eval().to(device)
    model.compress_mode(True)
    return model, described


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


def _versions() -> dict[str, str | None]:
    import PIL
    from PIL import features

    import lvae

    try:  # the distribution's metadata: importing the compressai package takes seconds
        compressai_version = importlib.metadata.version("compressai")
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


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _report(name: str, test_set: str, folder: Path, images: Sequence[Path], device: torch.device) -> dict[str, Any]:
    return {
        "name": name,
        "test-set": test_set,
        "dataset-folder": str(folder),
        "num-images": len(images),
        "platform": f"{platform.platform()} ({platform.processor() or platform.machine()})",
        "device": _describe_device(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }


def evaluate_model(
    model: nn.Module,
    images: Sequence[Path],
    lambdas: Sequence[float],
    *,
    name: str | None = None,
    test_set: str = "",
    folder: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a variable-rate model (``compress``/``decompress``, tables built) at each λ.

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
    report = _report(name or getattr(model, "name", type(model).__name__), test_set, folder or images[0].parent, images, device)
    report.update(lambdas=lambdas, qualities=None, results=results, timings=timings, **{"per-image": rows})
    return report


def evaluate_progressive(
    model: nn.Module,
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
    report = _report(name or getattr(model, "name", type(model).__name__), test_set, folder or images[0].parent,
                     images, device)
    report.update(lambdas=lambdas, **{"num-latents": n, "prefixes": prefixes, "per-image": rows})
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
    rows, results, timings = _sweep(images, qualities, "quality", classical.FILE_SUFFIX[codec], encode, decode, cpu, progress)
    report = _report(codec, test_set, folder or images[0].parent, images, cpu)
    report.update(lambdas=None, qualities=qualities, codec=info, results=results, timings=timings, **{"per-image": rows})
    return report


def bd_rate_vs_anchor(report: dict[str, Any], anchor: str = anchors.BD_ANCHOR) -> float | None:
    """BD-rate (%) of a result against the shipped ``anchor`` curve of its test set.

    None when no such curve is shipped; ``ValueError`` when the curves cannot be compared.
    """
    try:
        ref = anchors.load_anchor(report["test-set"], anchor)
    except ValueError:
        return None
    res = report["results"]
    return bd_rate(ref["results"]["bpp"], ref["results"]["psnr"], res["bpp"], res["psnr"])


def save_results(report: dict[str, Any], path: str | Path) -> Path:
    """Write a result dict as indented JSON (creating parent folders); returns the path."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _build_parser(prog: str | None) -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog=prog,
        description="Rate–distortion evaluation of a variable-rate model or a classical codec: "
        "real coding to files, bpp from file sizes, PSNR (RGB) and MS-SSIM; writes a JSON.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="registered model name, e.g. qarv_base")
    what.add_argument("--codec", choices=classical.CODECS, help="classical codec through Pillow")
    p.add_argument("--model_args", default=None, help="architecture overrides: \"{'k': v}\" or \"k=v, k2=v2\"")
    p.add_argument(
        "--weights",
        default=None,
        help="checkpoint path, or 'random'; default: the model's published weights (random if it has none)",
    )
    p.add_argument("--lmb_range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="default: the model's range")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="number of log-spaced λ values (default 16)")
    p.add_argument("--qualities", type=int, nargs="+", help="codec qualities (default: a sweep from 5 in steps of 5)")
    p.add_argument("--dataset_name", default="kodak", help="known data set name or image folder (default kodak)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--output", default=None, help="result JSON (default: results/<name>-<test-set>.json)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--progressive", action="store_true",
                   help="measure every prefix of the latent strings (bpp and PSNR for k = 0 … L) instead; "
                        "writes results/<name>-<test-set>-progressive.json and a plot beside it")
    return p


def _print_table(report: dict[str, Any]) -> None:
    key, points = ("lmb", report["lambdas"]) if report["lambdas"] is not None else ("quality", report["qualities"])
    res = report["results"]
    print(f"{report['name']} on {report['test-set']} ({report['num-images']} images, {report['device']})")
    print(f"{key:>9} {'bpp':>8} {'PSNR':>8} {'MS-SSIM':>8}")
    for i, point in enumerate(points):
        ms = res["ms-ssim"][i]
        print(f"{point:>9.4g} {res['bpp'][i]:>8.4f} {res['psnr'][i]:>8.3f} {'-' if ms is None else f'{ms:.5f}':>8}")
    t = report["timings"]
    print(f"mean encode {t['encode-seconds-mean']:.4f} s, decode {t['decode-seconds-mean']:.4f} s per image")


def _run(args: argparse.Namespace) -> int:
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {args.device!r} was asked for, but CUDA is not available here")

    if args.codec is not None:
        for flag in ("model_args", "weights", "lmb_range"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} applies to --model, not to --codec")
    elif args.qualities is not None:
        raise ValueError("--qualities applies to --codec, not to --model")

    test_set, folder, images = find_images(args.dataset_name)
    progress = not args.no_progress
    if args.codec is not None:
        report = evaluate_codec(args.codec, images, args.qualities, test_set=test_set, folder=folder, progress=progress)
    else:
        from ..utils.args import parse_model_args

        model_args = parse_model_args(args.model_args)
        model, weights = load_model(args.model, args.weights, model_args, device)
        low, high = args.lmb_range if args.lmb_range is not None else model.lmb_range
        lo_ok, hi_ok = model.lmb_range
        if low < lo_ok or high > hi_ok:
            raise ValueError(f"--lmb_range {low:g} {high:g} is outside the model's range [{lo_ok:g}, {hi_ok:g}]")
        lambdas = lambda_sweep(low, high, args.steps)
        if weights == "random":
            print(f"note: {args.model} is evaluated with random weights", file=sys.stderr)
        if args.progressive:
            return _run_progressive(args, model, images, lambdas, test_set, folder, progress)
        report = evaluate_model(model, images, lambdas, name=args.model, test_set=test_set, folder=folder, progress=progress)
        report.update(weights=weights, **{"model-args": model_args})

    _print_table(report)
    try:
        value = bd_rate_vs_anchor(report)
    except ValueError as exc:
        report["bd-rate"] = {"anchor": anchors.BD_ANCHOR, "percent": None, "note": str(exc)}
        print(f"BD-rate vs {anchors.BD_ANCHOR}: not computed: {exc}")
    else:
        if value is not None:
            report["bd-rate"] = {"anchor": anchors.BD_ANCHOR, "percent": value}
            print(f"BD-rate vs {anchors.BD_ANCHOR} on {test_set}: {value:+.2f} %")
    output = args.output or f"results/{report['name']}-{test_set}.json"
    print(f"results written to {save_results(report, output)}")
    return 0


def _run_progressive(args, model, images, lambdas, test_set, folder, progress) -> int:
    report = evaluate_progressive(model, images, lambdas, name=args.model, test_set=test_set, folder=folder,
                                  progress=progress)
    pre = report["prefixes"]
    print(f"{report['name']} on {test_set} ({len(images)} images): mean bpp / PSNR of the first k latent strings")
    print(f"{'lmb':>9} " + " ".join(f"{'k=' + str(k):>15}" for k in range(report["num-latents"] + 1)))
    for i, lmb in enumerate(lambdas):
        print(f"{lmb:>9.4g} " + " ".join(f"{b:>7.4f}/{p:>6.2f}" for b, p in zip(pre["bpp"][i], pre["psnr"][i])))
    output = Path(args.output or f"results/{report['name']}-{test_set}-progressive.json")
    print(f"results written to {save_results(report, output)}")
    from .plot import plot_progressive_rd

    print(f"plot written to {plot_progressive_rd(report, output.with_suffix('.png'))}")
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command line of ``eval-var-rate.py`` / ``lvae eval``; returns the exit status."""
    args = _build_parser(prog).parse_args(argv)
    try:
        return _run(args)
    except (ValueError, OSError, RuntimeError, LvaeError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
