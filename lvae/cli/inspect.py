"""``lvae info`` and ``lvae models``: describe coded files and the registered models. Neither
imports torch (they answer in well under a second)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..bitstream import read_header, truncate
from ..models.registry import list_models, model_weights
from .coding import DEFAULT_MODEL, LEGACY_MODEL
from .common import EXIT_FAILED, EXIT_OK, check_input, report_error, write_line

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands info and models."""
    i = sub.add_parser("info", help="describe coded files (model, λ, size, bytes per latent)")
    i.add_argument("files", nargs="+", metavar="FILE")

    m = sub.add_parser("models", help="list registered models and whether their weights are available offline")

    i.set_defaults(handler=info)
    m.set_defaults(handler=models)


def describe(src: Path) -> str:
    check_input(src)
    data = src.read_bytes()
    h = read_header(data)
    lengths = h.string_lengths
    model = h.model_name if h.model_name else f"{LEGACY_MODEL} (authors' layout, no model name recorded)"
    rows = [
        ("file", str(src)),
        ("format", f"{h.format} (version {h.version})"),
        ("model", model),
        ("lambda", f"{h.lmb:.6g}"),
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
    return "\n".join(f"{k + ':':<9} {v}" for k, v in rows)


def info(args: argparse.Namespace) -> int:
    failed = 0
    first = True
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
    from ..models.weights import availability

    rows = []
    for name in list_models():
        found, where = availability(model_weights(name))
        rows.append((name, "yes" if found else "no", where))
    width = max(len("model"), *(len(r[0]) for r in rows))
    lines = [f"{'model':<{width}}  offline  weights"]
    for name, offline, where in rows:
        mark = " (default for compress)" if name == DEFAULT_MODEL else ""
        lines.append(f"{name:<{width}}  {offline:<7}  {where}{mark}")
    for line in lines:
        write_line(line)
    return EXIT_OK
