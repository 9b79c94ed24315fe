"""``lvae eval`` and ``eval-var-rate.py``: the rate–distortion evaluation of a variable-rate model
or a classical codec (:mod:`lvae.eval.evaluation`), written as a result JSON.

Importing this module, and :func:`add_arguments`, import neither torch nor numpy: ``lvae --help``
stays light. :func:`run` imports the evaluation.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..eval.classical import CODECS
from ..eval.lambdas import DEFAULT_STEPS
from .common import reports_errors, standalone

if TYPE_CHECKING:
    import torch

    from ..coding.codec import CompressionMixin

__all__ = ["HELP", "DESCRIPTION", "PROG_NAME", "add_arguments", "run", "main"]

PROG_NAME = "eval-var-rate.py"
HELP = "rate–distortion evaluation of a model or a classical codec (writes a result JSON)"
DESCRIPTION = (
    "Rate–distortion evaluation of a variable-rate model or a classical codec: "
    "real coding to files, bpp from file sizes, PSNR (RGB) and MS-SSIM; writes a JSON."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="registered model name, e.g. qarv_base")
    what.add_argument("--codec", choices=CODECS, help="classical codec through Pillow")
    p.add_argument("--model_args", default=None, help="architecture overrides: \"{'k': v}\" or \"k=v, k2=v2\"")
    p.add_argument(
        "--weights",
        default=None,
        help="checkpoint path, or 'random'; default: the model's published weights (random if it has none)",
    )
    p.add_argument("--lmb_range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="default: the model's range")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"number of log-spaced λ values (default {DEFAULT_STEPS})")
    p.add_argument("--qualities", type=int, nargs="+", help="codec qualities (default: a sweep from 5 in steps of 5)")
    p.add_argument("--dataset_name", default="kodak", help="known data set name or image folder (default kodak)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--output", default=None, help="result JSON (default: results/<name>-<test-set>.json)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--bf16_encoder", action="store_true",
                   help="encode with the bfloat16 encoder (QARV.set_encoder_precision); the result records it")
    p.add_argument("--progressive", action="store_true",
                   help="measure every prefix of the latent strings (bpp and PSNR for k = 0 … L) instead; "
                        "writes results/<name>-<test-set>-progressive.json and a plot beside it")


def _device(requested: str | torch.device | None) -> torch.device:
    import torch

    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(requested)!r} was asked for, but CUDA is not available here")
    return device


def _check_flags(args: argparse.Namespace) -> None:
    if args.codec is not None:
        for flag in ("model_args", "weights", "lmb_range"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} applies to --model, not to --codec")
        if args.bf16_encoder:
            raise ValueError("--bf16_encoder applies to --model, not to --codec")
    elif args.qualities is not None:
        raise ValueError("--qualities applies to --codec, not to --model")


def _load_model(name: str, weights: str | None, model_args: dict[str, Any], device: torch.device
                ) -> tuple[CompressionMixin, str]:
    """The model ready for coding and how its weights are described in the result: ``published``
    (the model's own), ``random`` (asked for, or the model has none), or the checkpoint's path."""
    from ..coding.codec import CompressionMixin
    from ..models import load_model, model_weights

    if weights is None:
        weights = "random" if model_weights(name) is None else None  # ValueError for an unknown name
    elif weights != "random" and not Path(weights).is_file():
        raise FileNotFoundError(f"checkpoint {weights} does not exist")  # before building the model
    model = load_model(name, weights, model_args=model_args, device=device, coding=True)
    if not isinstance(model, CompressionMixin):
        raise ValueError(f"{name} is not a variable-rate image codec (it has no compress/decompress)")
    return model, "published" if weights is None else weights


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


def _add_bd_rate(report: dict[str, Any]) -> None:
    """Store and print the BD-rate against the shipped anchor of the test set, if it has one."""
    from ..eval.anchors import BD_ANCHOR, load_anchor
    from ..eval.compare import compare

    try:
        anchor = load_anchor(report["test-set"], BD_ANCHOR)
    except ValueError:
        return  # no anchor curve for this test set
    try:
        value = compare(report, anchor)["bd-rate"]
    except ValueError as exc:
        report["bd-rate"] = {"anchor": BD_ANCHOR, "percent": None, "note": str(exc)}
        print(f"BD-rate vs {BD_ANCHOR}: not computed: {exc}")
    else:
        report["bd-rate"] = {"anchor": BD_ANCHOR, "percent": value}
        print(f"BD-rate vs {BD_ANCHOR} on {report['test-set']}: {value:+.2f} %")


@reports_errors
def run(args: argparse.Namespace) -> int:
    from ..eval.evaluation import evaluate_codec, evaluate_model, find_images
    from ..eval.lambdas import lambda_sweep
    from ..eval.results import save_results
    from ..utils.args import parse_model_args

    device = _device(args.device)
    _check_flags(args)
    test_set, folder, images = find_images(args.dataset_name)
    progress = not args.no_progress
    if args.codec is not None:
        report = evaluate_codec(args.codec, images, args.qualities, test_set=test_set, folder=folder, progress=progress)
    else:
        model_args = parse_model_args(args.model_args)
        model, weights = _load_model(args.model, args.weights, model_args, device)
        if args.bf16_encoder:
            model.set_encoder_precision("bfloat16")
        low, high = args.lmb_range if args.lmb_range is not None else model.lmb_range
        lo_ok, hi_ok = model.lmb_range
        if low < lo_ok or high > hi_ok:
            raise ValueError(f"--lmb_range {low:g} {high:g} is outside the model's range [{lo_ok:g}, {hi_ok:g}]")
        lambdas = lambda_sweep(low, high, args.steps)
        if weights == "random":
            print(f"note: {args.model} is evaluated with random weights", file=sys.stderr)
        if args.progressive:
            return _run_progressive(args, model, images, lambdas, test_set, folder, progress)
        report = evaluate_model(model, images, lambdas, name=args.model, test_set=test_set, folder=folder,
                                progress=progress)
        report.update(weights=weights, **{"model-args": model_args})
        if args.bf16_encoder:
            report["encoder-precision"] = "bfloat16"

    _print_table(report)
    _add_bd_rate(report)
    output = args.output or f"results/{report['name']}-{test_set}.json"
    print(f"results written to {save_results(report, output)}")
    return 0


def _run_progressive(args: argparse.Namespace, model: CompressionMixin, images: Sequence[Path],
                     lambdas: Sequence[float], test_set: str, folder: Path, progress: bool) -> int:
    from ..eval.evaluation import evaluate_progressive
    from ..eval.plot import plot_progressive_rd
    from ..eval.results import save_results

    report = evaluate_progressive(model, images, lambdas, name=args.model, test_set=test_set, folder=folder,
                                  progress=progress)
    pre = report["prefixes"]
    print(f"{report['name']} on {test_set} ({len(images)} images): mean bpp / PSNR of the first k latent strings")
    print(f"{'lmb':>9} " + " ".join(f"{'k=' + str(k):>15}" for k in range(report["num-latents"] + 1)))
    for i, lmb in enumerate(lambdas):
        print(f"{lmb:>9.4g} " + " ".join(f"{b:>7.4f}/{p:>6.2f}" for b, p in zip(pre["bpp"][i], pre["psnr"][i])))
    output = Path(args.output or f"results/{report['name']}-{test_set}-progressive.json")
    print(f"results written to {save_results(report, output)}")
    print(f"plot written to {plot_progressive_rd(report, output.with_suffix('.png'))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``eval-var-rate.py``; returns the exit status."""
    return standalone(PROG_NAME, DESCRIPTION, add_arguments, run, argv)
