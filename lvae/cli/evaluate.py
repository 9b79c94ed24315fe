"""``lvae eval`` and ``eval-var-rate.py``: the rate–distortion evaluation of a model (a variable-rate
model over a λ sweep, a fixed-λ family such as ``qres34m`` over its members) or a classical codec
(:mod:`lvae.eval.evaluation`), written as a result JSON. Which λ: :func:`lvae.eval.lambdas.rate_points`.
An R(D) model (``rd_model_base``) is measured, not coded: :mod:`lvae.eval.bound`.

Importing this module, and :func:`add_arguments`, import neither torch nor numpy: ``lvae --help``
stays light. :func:`run` imports the evaluation.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..eval.bound import DEFAULT_SAMPLES, DEFAULT_SEED, is_bound_model
from ..eval.classical import CODECS
from ..eval.lambdas import DEFAULT_STEPS
from ..eval.lossless import is_lossless_model
from .common import (
    RANDOM_WEIGHTS,
    add_device_option,
    add_force_option,
    add_weights_option,
    check_weights,
    claim_output,
    positive_int,
    reports_errors,
    standalone,
    use_bf16_encoder,
    write_line,
)

if TYPE_CHECKING:
    import torch

    from ..coding.codec import CompressionMixin
    from ..eval.bound import BoundModel

__all__ = ["HELP", "DESCRIPTION", "PROG_NAME", "add_arguments", "run", "main"]

PROG_NAME = "eval-var-rate.py"
HELP = "rate–distortion evaluation of a model or a classical codec (writes a result JSON)"
DESCRIPTION = (
    "Rate–distortion evaluation of a model (a variable-rate model over a λ sweep, a fixed-λ family "
    "such as qres34m over its members) or a classical codec: real coding to files, bpp from file "
    "sizes, PSNR (RGB) and MS-SSIM; writes a JSON. An R(D) model (rd_model_base) measures an upper bound "
    "on R(D) instead: rate from the KL, distortion from decoded posterior samples."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="registered model name, e.g. qarv_base")
    what.add_argument("--codec", choices=CODECS, help="classical codec through Pillow")
    p.add_argument("--model-args", default=None, help="architecture overrides: \"{'k': v}\" or \"k=v, k2=v2\"")
    add_weights_option(p, random_ok=True)
    p.add_argument("--lmb-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="default: the model's range; a fixed-λ family (qres34m): its members in this range")
    p.add_argument("--steps", type=int, default=None,
                   help=f"number of log-spaced λ values of a variable-rate model (default {DEFAULT_STEPS}); "
                   "a fixed-λ family is measured at its members")
    p.add_argument("--qualities", type=int, nargs="+", help="codec qualities (default: a sweep from 5 in steps of 5)")
    p.add_argument("--dataset-name", default="kodak", help="known data set name or image folder (default kodak)")
    add_device_option(p)
    p.add_argument("--output", default=None,
                   help="result JSON (default: results/<name>-<test-set>.json; its folder is created if needed)")
    add_force_option(p, "a result JSON (and, with --progressive, its plot)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--bf16-encoder", action="store_true",
                   help="encode with the bfloat16 encoder (QARV.set_encoder_precision); the result records it")
    p.add_argument("--samples", type=positive_int, default=None,
                   help=f"R(D) model (rd_model_base): posterior samples per image and λ (default {DEFAULT_SAMPLES})")
    p.add_argument("--seed", type=int, default=None,
                   help=f"R(D) model: seed of the posterior samples (default {DEFAULT_SEED})")
    p.add_argument("--progressive", action="store_true",
                   help="measure every prefix of the latent strings (bpp and PSNR for k = 0 … L) instead; "
                        "writes results/<name>-<test-set>-progressive.json and a PNG plot beside it")


def _device(requested: str | torch.device) -> torch.device:
    """The device checked by :func:`lvae.cli.common.check_device` (cpu, the default, is a string)."""
    import torch

    return torch.device(requested)


def _check_flags(args: argparse.Namespace) -> None:
    if args.codec is not None:
        for flag in ("model_args", "weights", "lmb_range", "steps"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} applies to --model, not to --codec")
        for flag in ("bf16_encoder", "progressive"):
            if getattr(args, flag):
                raise ValueError(f"--{flag.replace('_', '-')} applies to --model, not to --codec")
    elif args.qualities is not None:
        raise ValueError("--qualities applies to --codec, not to --model")
    bound = args.model is not None and is_bound_model(args.model)
    for flag in ("samples", "seed"):
        if getattr(args, flag) is not None and not bound:
            raise ValueError(f"--{flag} applies to an R(D) model (rd_model_base), whose distortion is sampled")
    if bound:
        _refuse_codec_flags(args)
    if args.model is not None and is_lossless_model(args.model):
        _refuse_rate_flags(args)


def _refuse_codec_flags(args: argparse.Namespace) -> None:
    """An R(D) model codes nothing: the flags of coding are usage errors for it."""
    for flag in ("bf16_encoder", "progressive"):
        if getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')} applies to a codec; {args.model} measures an upper "
                             "bound on R(D) and codes nothing")


def _refuse_rate_flags(args: argparse.Namespace) -> None:
    """A lossless model has no λ: the flags of a rate sweep are usage errors for it."""
    for flag in ("lmb_range", "steps", "progressive"):
        if getattr(args, flag) not in (None, False):
            raise ValueError(f"--{flag.replace('_', '-')} applies to a lossy model; {args.model} codes losslessly "
                             "(no λ: each file is as long as its image needs)")


def _claim_outputs(args: argparse.Namespace, name: str, test_set: str) -> tuple[Path, Path | None]:
    """The result JSON (and the plot of ``--progressive``), checked before any work: an existing
    file is replaced only with ``--force``, and only a result JSON (a figure) lvae wrote."""
    from ..eval.plot import figure_written_by_lvae
    from ..eval.results import is_result_file

    default = f"results/{name}-{test_set}{'-progressive' if args.progressive else ''}.json"
    output = Path(args.output or default)
    plot = output.with_suffix(".png") if args.progressive else None
    if plot is not None and plot == output:
        raise ValueError(f"--output {output}: the plot of --progressive is written beside the JSON, as "
                         f"{plot}; name the JSON .json")
    claim_output(output, args.force, is_result_file, "a result JSON", "--output")
    if plot is not None:
        claim_output(plot, args.force, figure_written_by_lvae, "a figure", "--output")
    return output, plot


def _load_model(name: str, weights: str | None, model_args: dict[str, Any], device: torch.device
                ) -> tuple[CompressionMixin | BoundModel, str]:
    """The model ready for coding (an R(D) model: for measuring) and how its weights are described
    in the result: ``published`` (the model's own), ``random`` (asked for), or the checkpoint's path."""
    from ..coding.codec import CompressionMixin
    from ..eval.bound import measures_bound
    from ..models import load_model

    model = load_model(name, weights, model_args=model_args, device=device, coding=True)
    if not isinstance(model, CompressionMixin) and not measures_bound(model):
        raise ValueError(f"{name} is not a variable-rate image codec (it has no compress/decompress)")
    return model, "published" if weights is None else weights


def _first_member(name: str, weights: str | None, lmb_range: Sequence[float] | None, model_args: dict[str, Any]
                  ) -> dict[str, Any]:
    """The build arguments of the model to load. A fixed-λ family with its published weights loads
    the first member it is measured at (the others load when their λ is coded), so that no
    member outside ``--lmb-range`` is fetched; a λ range holding no member fails here, before
    any weights are read."""
    from ..eval.lambdas import member_points
    from ..models.registry import model_lambdas

    members = model_lambdas(name)
    if members is None or weights is not None or "lmb" in model_args:
        return model_args
    return {**model_args, "lmb": member_points(members, lmb_range, name)[0]}


def _note_one_network(name: str, model: CompressionMixin) -> None:
    """A fixed-λ network that stands alone (random weights, a checkpoint): one line says that its
    result is one rate point."""
    members = getattr(model, "lambdas", None)
    if members is not None and len(members) == 1:
        write_line(f"note: {name} with these weights is one network, trained at λ={members[0]:g}: the result is "
                   "one rate point, not a curve (the published members are measured with the model's own "
                   "weights)", sys.stderr)


def _print_table(report: dict[str, Any]) -> None:
    key, points = ("lmb", report["lambdas"]) if report["lambdas"] is not None else ("quality", report["qualities"])
    if report.get("members") is not None:
        key = "member λ"
    res = report["results"]
    lines = [f"{report['name']} on {report['test-set']} ({report['num-images']} images, {report['device']})",
             f"{key:>9} {'bpp':>8} {'PSNR':>8} {'MS-SSIM':>8}"]
    for i, point in enumerate(points):
        ms = res["ms-ssim"][i]
        lines.append(f"{point:>9.4g} {res['bpp'][i]:>8.4f} {res['psnr'][i]:>8.3f} "
                     f"{'-' if ms is None else f'{ms:.5f}':>8}")
    t = report["timings"]
    lines.append(f"mean encode {t['encode-seconds-mean']:.4f} s, decode {t['decode-seconds-mean']:.4f} s per image")
    write_line("\n".join(lines))


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
        write_line(f"BD-rate vs {BD_ANCHOR}: not computed: {exc}")
    else:
        report["bd-rate"] = {"anchor": BD_ANCHOR, "percent": value}
        write_line(f"BD-rate vs {BD_ANCHOR} on {report['test-set']}: {value:+.2f} %")


@reports_errors
def run(args: argparse.Namespace) -> int:
    from ..eval.bound import measures_bound
    from ..eval.evaluation import evaluate_codec, evaluate_model, find_images
    from ..eval.lambdas import rate_points
    from ..utils.args import parse_model_args

    _check_flags(args)
    device = _device(args.device)
    test_set, folder, images = find_images(args.dataset_name)
    model_args = parse_model_args(args.model_args)
    if args.model is not None:
        check_weights(args.model, args.weights, random_ok=True)  # ValueError for an unknown name
        if args.weights not in (None, RANDOM_WEIGHTS) and not Path(args.weights).is_file():
            raise FileNotFoundError(f"checkpoint {args.weights} does not exist")
    output, plot = _claim_outputs(args, args.codec or args.model, test_set)  # before any work
    if device.type == "cpu":
        _note_unused_cuda()
    progress = not args.no_progress
    if args.codec is not None:
        report = evaluate_codec(args.codec, images, args.qualities, test_set=test_set, folder=folder, progress=progress)
    else:
        build_args = _first_member(args.model, args.weights, args.lmb_range, model_args)
        loaded, weights = _load_model(args.model, args.weights, build_args, device)
        if measures_bound(loaded):
            report = _measure_bound(args, loaded, weights, images, test_set, folder, progress)
            report.update(weights=weights, **{"model-args": model_args})
            return _finish(report, output, _print_bound_table)
        model = cast("CompressionMixin", loaded)  # a codec: _load_model gives a codec or a bound
        bf16 = args.bf16_encoder and use_bf16_encoder(model)  # or one warning line and float32
        if model.lossless:  # bits per pixel beside PNG and WebP: lvae.eval.lossless
            _note_random_weights(args.model, weights)
            extra = {"weights": weights, "model-args": model_args}
            return _run_lossless(args, model, images, test_set, folder, progress, output,
                                 {**extra, "encoder-precision": "bfloat16"} if bf16 else extra)
        lambdas = rate_points(model, args.lmb_range, args.steps)
        _note_random_weights(args.model, weights)
        _note_one_network(args.model, model)
        if args.progressive:
            assert plot is not None
            return _run_progressive(args, model, images, lambdas, test_set, folder, progress, output, plot)
        report = evaluate_model(model, images, lambdas, name=args.model, test_set=test_set, folder=folder,
                                progress=progress)
        report.update(weights=weights, **{"model-args": model_args})
        if bf16:  # recorded only when it ran
            report["encoder-precision"] = "bfloat16"

    return _finish(report, output, _print_table)


def _finish(report: dict[str, Any], output: Path, print_table: Callable[[dict[str, Any]], None]) -> int:
    from ..eval.results import save_results

    print_table(report)
    _add_bd_rate(report)
    write_line(f"results written to {save_results(report, output)}")
    return 0


def _run_lossless(args: argparse.Namespace, model: CompressionMixin, images: Sequence[Path], test_set: str,
                  folder: Path, progress: bool, output: Path, extra: dict[str, Any]) -> int:
    """A lossless model: no λ, no curve, no BD-rate (:mod:`lvae.eval.lossless`)."""
    from ..eval.lossless import evaluate_lossless, summary
    from ..eval.results import save_results

    _refuse_rate_flags(args)  # again: a lossless model registered outside lvae is known only now
    report = evaluate_lossless(model, images, name=args.model, test_set=test_set, folder=folder, progress=progress)
    report.update(extra)
    write_line(summary(report))
    write_line(f"results written to {save_results(report, output)}")
    return 0


def _note_random_weights(name: str, weights: str) -> None:
    if weights == RANDOM_WEIGHTS:
        write_line(f"note: {name} is evaluated with random weights (--weights random)", sys.stderr)


def _measure_bound(args: argparse.Namespace, model: BoundModel, weights: str, images: Sequence[Path], test_set: str,
                   folder: Path, progress: bool) -> dict[str, Any]:
    """The R(D) upper bound over the model's λ sweep (:mod:`lvae.eval.bound`)."""
    from ..eval.bound import evaluate_bound
    from ..eval.lambdas import rate_points

    _refuse_codec_flags(args)  # again: a bound registered outside lvae is known only now
    samples = DEFAULT_SAMPLES if args.samples is None else args.samples
    seed = DEFAULT_SEED if args.seed is None else args.seed
    lambdas = rate_points(model, args.lmb_range, args.steps)
    _note_random_weights(args.model, weights)
    return evaluate_bound(model, images, lambdas, samples=samples, seed=seed, name=args.model, test_set=test_set,
                          folder=folder, progress=progress)


def _print_bound_table(report: dict[str, Any]) -> None:
    res = report["results"]
    lines = [f"{report['name']}: upper bound on R(D) on {report['test-set']} ({report['num-images']} images, "
             f"{report['samples']} posterior sample{'s' if report['samples'] != 1 else ''} per image and λ, "
             f"seed {report['seed']}, {report['device']}; rate from the KL, no coding)",
             f"{'lmb':>9} {'bpp':>8} {'PSNR':>8}"]
    for i, lmb in enumerate(report["lambdas"]):
        lines.append(f"{lmb:>9.4g} {res['bpp'][i]:>8.4f} {res['psnr'][i]:>8.3f}")
    lines.append(f"mean {report['timings']['seconds-per-point-mean']:.4f} s per image and λ")
    write_line("\n".join(lines))


def _note_unused_cuda() -> None:
    """On the CPU, the default, while CUDA is there: one line says how to use it."""
    import torch

    if torch.cuda.is_available():
        write_line("note: evaluating on the CPU (the default device); --device cuda evaluates on the GPU", sys.stderr)


def _run_progressive(args: argparse.Namespace, model: CompressionMixin, images: Sequence[Path],
                     lambdas: Sequence[float], test_set: str, folder: Path, progress: bool,
                     output: Path, plot: Path) -> int:
    from ..eval.evaluation import evaluate_progressive
    from ..eval.plot import plot_progressive_rd
    from ..eval.results import save_results

    report = evaluate_progressive(model, images, lambdas, name=args.model, test_set=test_set, folder=folder,
                                  progress=progress)
    pre = report["prefixes"]
    lines = [f"{report['name']} on {test_set} ({len(images)} images): mean bpp / PSNR of the first k latent strings",
             f"{'lmb':>9} " + " ".join(f"{'k=' + str(k):>15}" for k in range(report["num-latents"] + 1))]
    for i, lmb in enumerate(lambdas):
        lines.append(f"{lmb:>9.4g} " + " ".join(f"{b:>7.4f}/{p:>6.2f}" for b, p in zip(pre["bpp"][i], pre["psnr"][i])))
    write_line("\n".join(lines))
    write_line(f"results written to {save_results(report, output)}")
    write_line(f"plot written to {plot_progressive_rd(report, plot)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``eval-var-rate.py``; returns the exit status."""
    return standalone(PROG_NAME, DESCRIPTION, add_arguments, run, argv)
