"""Rate–distortion plots (PSNR against bpp) of result JSONs, with the shipped anchor curves.

The command line is ``lvae plot`` (:mod:`lvae.cli.plot`). matplotlib is imported only when a
figure is made.

A figure is written in the format its suffix names: PNG, PDF or SVG (:func:`figure_format`; any
other suffix is a ``ValueError``), marked as lvae's (the PNG ``Software`` text chunk, the PDF and
SVG ``Creator``), so that :func:`figure_written_by_lvae` tells it from other files. The functions
here write where they are asked, replacing what is there; the command lines refuse to replace
an existing file without ``--force``, and a file lvae did not write even with it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import WRITER_TAG
from . import anchors
from .results import is_bound_curve, load_results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FIGURE_FORMATS",
    "figure_format",
    "figure_written_by_lvae",
    "rd_figure",
    "plot_rd",
    "plot_progressive",
    "plot_progressive_rd",
]

# The formats a figure is written in, by suffix, and the mark each carries (matplotlib's metadata).
FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
_WRITER = WRITER_TAG  # the mark lvae.io puts in the images it writes
_MARKS = {"png": {"Software": _WRITER}, "pdf": {"Creator": _WRITER}, "svg": {"Creator": _WRITER}}
_SVG_MARK = re.compile(rb"<dc:creator>\s*<cc:Agent>\s*<dc:title>" + _WRITER.encode() + rb"</dc:title>")


def figure_format(path: str | os.PathLike[str]) -> str:
    """``png``, ``pdf`` or ``svg``, as the suffix of ``path`` says; ``ValueError`` for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise ValueError(f"{path}: a figure is written as PNG, PDF or SVG, the format its suffix names; "
                         "name it .png, .pdf or .svg")
    return FIGURE_FORMATS[suffix]


def figure_written_by_lvae(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a figure lvae wrote (PNG, PDF or SVG with lvae's mark) or another
    image lvae marked (:func:`lvae.io.written_by_lvae`); False for anything else, or a file
    that cannot be read."""
    from ..io import written_by_lvae

    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return False
        data = path.read_bytes()
    except OSError:
        return False
    if data.startswith(b"%PDF-"):
        return b"/Creator (" + _WRITER.encode() + b")" in data
    if data.lstrip().startswith((b"<?xml", b"<svg")):
        return _SVG_MARK.search(data) is not None
    return written_by_lvae(path)


def _save(fig: Figure, output: str | os.PathLike[str], dpi: int) -> Path:
    """Write ``fig`` at ``output`` in the format its suffix names, marked as lvae's, atomically
    (:func:`lvae.io.atomic_output`: never a half-written file); returns the path."""
    from ..io import atomic_output

    output = Path(output)
    fmt = figure_format(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt, metadata=_MARKS[fmt])
    return output


def _label(curve: dict[str, Any], fallback: str) -> str:
    name = str(curve.get("name") or fallback)
    if is_bound_curve(curve):
        name = f"R(D) upper bound ({name})"
    bd = curve.get("bd-rate")
    if isinstance(bd, dict) and bd.get("percent") is not None:
        name += f" (BD-rate {bd['percent']:+.2f} %)"
    return name


def rd_figure(
    curves: Sequence[dict[str, Any] | str | os.PathLike[str]],
    *,
    with_anchors: bool = True,
    title: str | None = None,
) -> Figure:
    """A matplotlib figure of PSNR against bpp for result dicts or JSON paths.

    With ``with_anchors``, the shipped curves of every test set in ``curves`` are drawn too
    (dashed). A bound (``"kind": "bound"``) is drawn dashed in black, labelled "R(D) upper bound".
    Every curve gets a legend entry; names that repeat are told apart by their file name, and by
    test set when there are several.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    loaded: list[tuple[dict[str, Any], str]] = []
    for c in curves:
        if isinstance(c, dict):
            loaded.append((c, str(c.get("name", "result"))))
        else:
            loaded.append((load_results(c), Path(c).stem))
    if not loaded:
        raise ValueError("nothing to plot: give at least one result")

    test_sets = sorted({str(c.get("test-set", "")) for c, _ in loaded} - {""})
    several_sets = len(test_sets) > 1
    labels = [_label(c, fb) + (f" [{c.get('test-set')}]" if several_sets else "") for c, fb in loaded]
    repeated = {lab for lab in labels if labels.count(lab) > 1}
    labels = [f"{lab} ({loaded[i][1]})" if lab in repeated else lab for i, lab in enumerate(labels)]

    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    if with_anchors:
        shown = {(c.get("test-set"), c.get("name")) for c, _ in loaded}
        for test_set in test_sets:
            for ref in anchors.anchors_for(test_set):
                if (test_set, ref["name"]) in shown:
                    continue  # a result of that name on that set is plotted already
                r = ref["results"]
                label = f"{ref['name']} (published)" + (f" [{test_set}]" if several_sets else "")
                ax.plot(*zip(*sorted(zip(r["bpp"], r["psnr"]))), linestyle="--", linewidth=1.2, label=label)
    for (c, _), label in zip(loaded, labels):
        r = c["results"]
        pts = sorted((b, p) for b, p in zip(r["bpp"], r["psnr"]) if b is not None and p is not None)
        if not pts:
            raise ValueError(f"{label}: no finite rate–PSNR points")
        if is_bound_curve(c):  # a bound, not a codec: dashed and black
            ax.plot(*zip(*pts), color="k", linestyle="--", marker=".", linewidth=1.6, label=label)
        else:
            ax.plot(*zip(*pts), marker=".", linewidth=1.6, label=label)
    ax.set_xlabel("bits per pixel (bpp)")
    ax.set_ylabel("PSNR (dB, RGB)")
    ax.set_title(title or ("Rate–distortion on " + (", ".join(test_sets) if test_sets else "images")))
    ax.grid(True, alpha=0.35)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def plot_rd(
    curves: Sequence[dict[str, Any] | str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    with_anchors: bool = True,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Write :func:`rd_figure` of ``curves`` at ``output`` (PNG, PDF or SVG, as its suffix says:
    :func:`figure_format`), creating its folder; returns its path."""
    figure_format(output)  # before the work
    return _save(rd_figure(curves, with_anchors=with_anchors, title=title), output, dpi)


def plot_progressive(images: Sequence[Any], labels: Sequence[str], output: str | os.PathLike[str], *,
                     columns: int = 4, title: str | None = None, dpi: int = 80) -> Path:
    """Write the images of a progressive decode (Pillow images or H×W×3 arrays) in a grid, each
    with its label underneath (e.g. ``k = 3: 0.0196 bpp``), at ``output`` (PNG, PDF or SVG, as its
    suffix says)."""
    import numpy as np
    from matplotlib.figure import Figure

    figure_format(output)
    if not images or len(images) != len(labels):
        raise ValueError("give one label per image, and at least one image")
    arrays = [np.asarray(im) for im in images]
    h, w = arrays[0].shape[:2]
    columns = max(1, min(columns, len(arrays)))
    rows = -(-len(arrays) // columns)
    panel = 3.2
    fig = Figure(figsize=(columns * panel, rows * panel * h / w + 0.35 * rows + (0.4 if title else 0)))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, arr, label in zip(axes.flat, arrays, labels):
        ax.imshow(arr)
        ax.set_title(label, y=-0.13, fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return _save(fig, output, dpi)


def plot_progressive_rd(report: dict[str, Any], output: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """PSNR against bpp of every prefix (k = 0 … L latent strings), one line per λ, over the
    full-file R–D curve (k = L), from :func:`lvae.eval.evaluation.evaluate_progressive`'s report,
    at ``output`` (PNG, PDF or SVG, as its suffix says)."""
    from matplotlib.figure import Figure

    figure_format(output)
    pre = report["prefixes"]
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    full_bpp = [row[-1] for row in pre["bpp"]]
    full_psnr = [row[-1] for row in pre["psnr"]]
    ax.plot(full_bpp, full_psnr, "k-", lw=2, label=f"{report['name']}: whole files")
    for lmb, bpp, psnr in zip(report["lambdas"], pre["bpp"], pre["psnr"]):
        ax.plot(bpp, psnr, "o--", ms=3, lw=1, label=f"prefixes, λ = {lmb:.4g}")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{report['name']} on {report['test-set']}: decoding the first k of {report['num-latents']} latents",
                 fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _save(fig, output, dpi)
