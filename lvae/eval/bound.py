"""Measuring an upper bound on the rate–distortion function R(D) of images (``rd_model_base``).

An R(D) model (:class:`lvae.models.rd.RDModel`) codes nothing: at each λ of the sweep
(:func:`lvae.eval.lambdas.rate_points`, the one rule) and for each image it gives a posterior over
continuous latents. The **rate** is the KL divergence between posterior and prior, summed over
the latent blocks, in bits per pixel of the image (nats · log2 e / (H·W), H×W the image's own size;
no entropy coding, no file). The **distortion** is the MSE on the [0, 1] scale between the image
and the decoder's output for latents drawn from the posterior (seeded; ``samples`` draws per image
and λ, rate and MSE averaged over them), clamped to [0, 1] and not rounded to 8 bits. Each pair
is achievable in the information-theoretic sense, so the curve upper-bounds R(D): no codec's
curve can, in theory, be bettered by less than the gap between them. The result is marked
``"kind": "bound"`` (:data:`lvae.eval.results.BOUND`); plots draw it dashed and ``lvae bdrate``
says how far a codec is above it (:func:`gap_to_bound`).

Importing this module imports neither torch nor numpy.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from .results import BOUND, is_bound_curve, report_header

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_SAMPLES", "DEFAULT_SEED", "BoundModel", "is_bound_model", "measures_bound", "measure_image",
    "evaluate_bound", "gap_to_bound", "gap_line",
]

DEFAULT_SAMPLES = 1  # the authors' evaluation draws one posterior sample per image and λ
DEFAULT_SEED = 0
LOG2_E = math.log2(math.e)


class BoundModel(Protocol):
    """What the measurement reads of an R(D) model (:class:`lvae.models.rd.RDModel` provides it)."""

    kind: str
    max_stride: int
    lmb_range: tuple[float, float]

    def __call__(self, im: torch.Tensor, lmb: float, posterior: str = "sample",
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]: ...

    def postprocess(self, x_hat: torch.Tensor) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...


def is_bound_model(name: str) -> bool:
    """Whether the registered model ``name`` is a built-in R(D) model (no model is built)."""
    from ..models.zoo import BOUND_MODELS

    return name in BOUND_MODELS


def measures_bound(model: object) -> TypeGuard[BoundModel]:
    """Whether ``model`` measures an upper bound on R(D) (its ``kind`` is ``"bound"``) instead of coding."""
    return getattr(model, "kind", None) == BOUND


def measure_image(model: BoundModel, im: torch.Tensor, lmb: float, samples: int = DEFAULT_SAMPLES,
                  seed: int = DEFAULT_SEED) -> dict[str, float]:
    """The bound's rate and distortion for one image ``im`` (1×3×H×W in [0, 1], any size) at ``lmb``:
    ``bpp`` (the KL in bits over the H·W pixels of ``im``), ``mse`` ([0, 1] scale) and ``psnr``, each
    the mean over ``samples`` posterior draws from a generator seeded with ``seed`` (on the model's
    device: the same numbers on the same kind of device)."""
    import torch

    from ..coding.codec import pad_image

    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    h, w = im.shape[2:]
    device = next(model.parameters()).device
    x = pad_image(im.to(device), model.max_stride)
    generator = torch.Generator(device=device).manual_seed(seed)
    nats = sq_err = 0.0
    ref = im.to(device).double()
    with torch.no_grad():
        for _ in range(samples):
            out = model(x, lmb, posterior="sample", generator=generator)
            nats += float(out["kl"].double().sum())  # NOTE: a device sync: the timings are of finished work
            rec = model.postprocess(out["x_hat"])[:, :, :h, :w]
            sq_err += float((rec.double() - ref).pow(2).mean())
    m = sq_err / samples
    return {"bpp": nats / samples * LOG2_E / (h * w), "mse": m, "psnr": math.inf if m <= 0 else -10 * math.log10(m)}


def evaluate_bound(
    model: BoundModel,
    images: Sequence[Path],
    lambdas: Sequence[float],
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = DEFAULT_SEED,
    name: str | None = None,
    test_set: str = "",
    folder: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure the bound at each λ on ``images`` (:func:`measure_image` per image; every image at
    every λ draws from its own generator seeded with ``seed``, so any point can be rerun alone).

    Returns a result (:mod:`lvae.eval.results`) with ``"kind": "bound"``: ``results`` holds
    ``bpp``, ``mse`` and ``psnr`` per λ (means over images; PSNR averaged per image, as the
    published curves), ``per-image`` the rows, ``samples``, ``seed`` and how rate and distortion
    were measured.
    """
    from tqdm import tqdm

    from ..io import load_image

    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    lambdas = [float(v) for v in lambdas]
    device = next(model.parameters()).device
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(total=len(images) * len(lambdas), disable=not progress, unit="point", dynamic_ncols=True)
    with bar:
        for path in images:
            im = load_image(path)
            for lmb in lambdas:
                bar.set_description(f"{path.name} lmb={lmb:g}")
                rows.append({"image": path.name, "lmb": lmb, **measure_image(model, im, lmb, samples, seed)})
                bar.update()
    total = time.perf_counter() - start

    results: dict[str, list[float]] = {"bpp": [], "mse": [], "psnr": []}
    for lmb in lambdas:
        sel = [r for r in rows if r["lmb"] == lmb]
        for key, values in results.items():
            values.append(sum(r[key] for r in sel) / len(sel))
    report = report_header(name or getattr(model, "name", None) or type(model).__name__, test_set,
                           folder or images[0].parent, images, device)
    report.update(
        kind=BOUND,
        lambdas=lambdas,
        qualities=None,
        results=results,
        samples=samples,
        seed=seed,
        rate="KL(posterior ‖ prior) summed over the latent blocks, bits per pixel of each image (no entropy coding)",
        distortion=f"MSE [0, 1] of the decoded posterior samples ({samples} per image and λ), clamped, not rounded",
        timings={"seconds-per-point-mean": total / max(1, len(rows)), "total-seconds": total},
        **{"per-image": rows},
    )
    return report


def gap_to_bound(codec: dict[str, Any], bound: dict[str, Any]) -> float:
    """How many more bits (%) the codec's curve spends than the bound's at equal PSNR: the BD-rate
    of ``codec`` against ``bound`` (:func:`lvae.eval.compare.compare`; its ``ValueError`` when the
    curves cannot be compared)."""
    from .compare import compare

    return compare(codec, bound)["bd-rate"]


def gap_line(test: dict[str, Any], other: dict[str, Any], other_label: str) -> str | None:
    """When exactly one of two curves is a bound: ``this codec is X % above the bound`` (``test`` is
    the codec) or ``<other_label> is X % above the bound`` (``test`` is the bound); None otherwise,
    or when the two cannot be compared."""
    if is_bound_curve(test) == is_bound_curve(other):
        return None
    codec, bound, who = (other, test, other_label) if is_bound_curve(test) else (test, other, "this codec")
    try:
        gap = gap_to_bound(codec, bound)
    except ValueError:
        return None
    return f"{who} is {abs(gap):.1f} % {'above' if gap >= 0 else 'below'} the bound"
