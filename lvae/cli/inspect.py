"""``lvae info`` and ``lvae models``: describe coded files and the registered models. Neither
imports torch (they answer in well under a second), but for ``lvae info --system``, which says what
the CPU offers and which code paths this process chose from it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..bitstream import read_header, truncate
from ..eval.lambdas import format_lambdas
from ..eval.lossless import is_lossless_model
from ..models.registry import list_models, model_lambdas, model_weights
from .coding import DEFAULT_MODEL, LEGACY_MODEL
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG, check_input, report_error, write_line

if TYPE_CHECKING:
    from ..bitstream import Header

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands info and models."""
    i = sub.add_parser("info", help="describe coded files (model, λ, size, bytes per latent), or this machine")
    i.add_argument("files", nargs="*", metavar="FILE")
    i.add_argument("--system", action="store_true",
                   help="describe this machine: CPU, instruction sets, threads, the CPU code paths chosen, CUDA")

    m = sub.add_parser("models", help="list registered models and whether their weights are available offline")

    i.set_defaults(handler=info)
    m.set_defaults(handler=models)


def _model_rows(h: Header) -> list[tuple[str, str]]:
    """The model, member and λ rows: what the file names (the authors' layouts name less)."""
    if h.format == "pickle":
        return [("model", "not recorded (the QRes-VAE authors' layout): decompress with --model NAME --lmb X"),
                ("lambda", "not recorded")]
    if not h.model_name:
        return [("model", f"{LEGACY_MODEL} (authors' layout, no model name recorded)"), ("lambda", f"{h.lmb:.6g}")]
    lmb = f"{h.lmb:.6g}" + (" (unused: a lossless model has no λ)" if is_lossless_model(h.model_name) else "")
    rows = [("model", h.model_name), ("lambda", lmb)]
    members = model_lambdas(h.model_name) if h.model_name in list_models() else None
    if members is not None:
        rows.append(("member", member_line(h.model_name, h.lmb, members)))
    return rows


def member_line(name: str, lmb: float, members: tuple[float, ...]) -> str:
    """``λ=512 of qres34m (λ ∈ {16, ..., 2048})``, or that no published member has the λ."""
    if any(abs(lmb - v) <= 1e-6 * v for v in members):
        return f"λ={lmb:g} of {name} (λ ∈ {format_lambdas(members)})"
    return (f"λ={lmb:g}, no published member of {name} (λ ∈ {format_lambdas(members)}): "
            "decode it with the weights that made it (--weights FILE)")


def _lossless_row(h: Header) -> str | None:
    """Whether the file decodes to its source bit for bit: said for a lossless file, and for a prefix
    of one (a lossy preview); None for the files of lossy models."""
    if h.lossless and h.pixel_check is not None:
        return ("yes: decodes to the source bit for bit on any machine (the pixels carry a 160-bit map check; "
                "a file that cannot be verified is refused, never decoded wrong)")
    if h.lossless:
        return ("yes (the QRes-VAE authors' layout: its pixels carry no map check, so it decodes as their code "
                "decodes it on this machine)")
    if h.model_name is not None and is_lossless_model(h.model_name):
        return (f"no: {len(h.string_lengths)} of {h.num_latents} strings, without the pixels' string "
                "(a lossy preview of a lossless file)")
    return None


def describe(src: Path) -> str:
    check_input(src)
    data = src.read_bytes()
    h = read_header(data)
    lengths = h.string_lengths
    layout = "the QRes-VAE authors' layout" if h.format == "pickle" else f"version {h.version}"
    rows = [
        ("file", str(src)),
        ("format", f"{h.format} ({layout})"),
        *_model_rows(h),
        ("size", f"{h.width}x{h.height} (width x height)"),
        ("bytes", f"{len(data)} ({8 * len(data) / (h.width * h.height):.4f} bpp)"),
        ("header", f"{len(data) - sum(lengths)} bytes"),
        ("latents", f"{len(lengths)} of {h.num_latents or len(lengths)} blocks, {sum(lengths)} bytes"
         + (": " + " ".join(map(str, lengths)) if lengths else "")),
    ]
    rows.append(("colour", "gray (decodes to a grayscale image)" if h.colour == "gray" else "RGB"))
    if h.format == "lvae":
        pixels = h.width * h.height
        sizes = [len(truncate(data, k)) for k in range(len(lengths) + 1)]
        rows.append(("prefixes", "  ".join(f"k={k}: {b} B {8 * b / pixels:.4f} bpp" for k, b in enumerate(sizes))))
    if h.fingerprint is not None:
        rows.append(("weights", f"fingerprint {h.fingerprint.hex()}"))
    if h.checks is not None:
        rows.append(("checks", "one 32-bit index-map check per string (decodes on any machine)"))
    lossless = _lossless_row(h)
    if lossless is not None:
        rows.append(("lossless", lossless))
    return "\n".join(f"{k + ':':<9} {v}" for k, v in rows)


def system_rows() -> list[tuple[str, str]]:
    """``lvae info --system``: what decides the speed of coding here, and what this process chose."""
    import platform

    import torch

    from .. import __version__
    from ..models.layers import cpu_paths
    from ..utils.system import cpu_info

    cpu = cpu_info()
    rows = [("lvae", f"{__version__} (torch {torch.__version__}, Python {platform.python_version()})"),
            ("cpu", f"{cpu.model}, {cpu.logical_cpus} logical CPUs, torch uses {torch.get_num_threads()} threads"),
            ("isa", cpu.isa_line()),
            ("aten", f"{torch.backends.cpu.get_cpu_capability()} kernels (ATEN_CPU_CAPABILITY may lower it)")]
    rows += [(k, v) for k, v in cpu_paths().items()]
    cuda = torch.cuda.is_available()
    rows.append(("cuda", f"{torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} device(s))" if cuda
                 else "not available"))
    return rows


def info(args: argparse.Namespace) -> int:
    if not args.files and not args.system:
        write_line(f"{PROG}: error: info: give one or more FILEs, or --system", sys.stderr)
        return EXIT_USAGE
    failed = 0
    first = True
    if args.system:
        rows = system_rows()
        width = max(len(k) for k, _ in rows) + 1
        write_line("\n".join(f"{k + ':':<{width}} {v}" for k, v in rows))
        first = False
    for item in args.files:
        try:
            text = describe(Path(item))
        except Exception as exc:  # noqa: BLE001
            report_error(item, exc)
            failed += 1
            continue
        write_line(text if first else "\n" + text)
        first = False
    return EXIT_FAILED if failed else EXIT_OK


def models(args: argparse.Namespace) -> int:
    rows = [_model_row(name) for name in list_models()]
    width = max(len("model"), *(len(r[0]) for r in rows))
    lines = [f"{'model':<{width}}  offline  weights"]
    for name, offline, where in rows:
        mark = " (default for compress)" if name == DEFAULT_MODEL else ""
        lines.append(f"{name:<{width}}  {offline:<7}  {where}{mark}")
    for line in lines:
        write_line(line)
    return EXIT_OK


def _model_row(name: str) -> tuple[str, str, str]:
    """``(name, offline, weights)``: for a fixed-λ family, how many of its members' weights are
    here (``3 of 8``), its λ set, and where the members' weights are or come from."""
    from ..models.weights import availability, locate_weights

    members = model_lambdas(name)
    if members is None or model_weights(name) is None:  # one set of weights, or none at all
        found, where = availability(model_weights(name))
        family = f"one network per λ ∈ {format_lambdas(members)}; " if members is not None else ""
        return name, "yes" if found else "no", family + where
    weights = {lmb: model_weights(name, lmb) for lmb in members}
    here = [lmb for lmb, w in weights.items() if availability(w)[0]]
    parts = [f"one network per λ ∈ {format_lambdas(members)}"]
    if here:
        folders = sorted({str(locate_weights(w).path.parent) for lmb, w in weights.items() if lmb in here and w})
        which = "all" if len(here) == len(members) else "λ " + ", ".join(f"{v:g}" for v in here)
        parts.append(f"{which} in {', '.join(folders)}")
    missing = [lmb for lmb in members if lmb not in here]
    if missing:
        first = weights[missing[0]]
        how = availability(first)[1] if first is not None else availability(None)[1]
        others = f" (λ {', '.join(f'{v:g}' for v in missing[1:])} alike)" if len(missing) > 1 else ""
        parts.append(f"λ {missing[0]:g}: {how}{others}")
    return name, f"{len(here)} of {len(members)}", "; ".join(parts)
