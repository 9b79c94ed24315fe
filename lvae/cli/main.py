"""The ``lvae`` command's parser and entry point: each subcommand is a module of this package
(:mod:`.coding`: compress, decompress, truncate; :mod:`.inspect`: info, models; :mod:`.evaluate`,
:mod:`.plot`, :mod:`.bdrate`: eval, plot, bdrate) that adds its own parser and handler.

Exit status: 0 when every file succeeded, 1 when any failed, 2 for usage errors, 130 on Ctrl-C
(:mod:`.interrupt`). Start-up: ``lvae --help``, ``lvae info`` and ``lvae models`` import neither
torch nor the model code (tests/test_startup_imports.py checks it); torch, tqdm and the models
load in the commands that code images, after the arguments and the outputs have been checked.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from . import bdrate, coding, evaluate, inspect, interrupt, plot
from .coding import LEGACY_MODEL, compress_model_name
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, PROG, device_arg, report_error

if TYPE_CHECKING:
    pass

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Learned lossy image compression with QARV.",
        epilog="Exit status: 0 success, 1 if any file failed, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    coding.add_parsers(sub)
    inspect.add_parsers(sub)
    for command, module in (("eval", evaluate), ("plot", plot), ("bdrate", bdrate)):
        p = sub.add_parser(command, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
    return parser


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lvae`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Ctrl-C gives one line, ``lvae: interrupted``, and status 130 (see the module's description).
    """
    command = interrupt.State.command and argv is None
    if not command:
        try:
            return _main(argv)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    previous_hook = sys.unraisablehook
    sys.unraisablehook = interrupt.quiet_unraisable
    interrupt.State.in_main = True
    try:
        status = _main(argv)
    except KeyboardInterrupt:
        interrupt.exit_interrupted()
    finally:
        interrupt.State.in_main = False
        sys.unraisablehook = previous_hook
    if interrupt.State.seen:  # an interrupt swallowed on the way (e.g. in a finaliser)
        interrupt.exit_interrupted()
    return status


def usage_line(message: str) -> int:
    """A usage error that needs no usage text: one line, status 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")  # λ in messages on a non-UTF-8 terminal
    parser = build_parser()
    args = parser.parse_args(argv)
    inputs = getattr(args, "images", None) or getattr(args, "files", None) or []
    if getattr(args, "output", None) and len(inputs) > 1:
        parser.error("-o/--output takes a single input; use --out-dir for several")
    if getattr(args, "figure", None) and not args.progressive:
        parser.error("--figure draws the prefixes of --progressive; give both")
    if getattr(args, "figure", None) and len(inputs) > 1:
        parser.error("--figure takes a single input")
    if args.command == "compress" and args.format == "legacy" and compress_model_name(args) != LEGACY_MODEL:
        parser.error(f"--format legacy records no model name and is read back as {LEGACY_MODEL}; use --format lvae")
    if args.command == "decompress":
        # The output format is settled before anything is decoded: a lossy one must be asked for.
        from ..io import output_format

        try:
            args.image_format_resolved = output_format(
                args.output, args.image_format, args.quality, options=("--format ", "--quality ")
            )
        except ValueError as exc:
            return usage_line(str(exc))
        if args.figure and Path(args.figure).suffix.lower() not in ("", ".png"):
            return usage_line(f"--figure {args.figure}: the figure is a PNG image; name it .png")
    # Parsing a device imports torch (seconds): the default, cpu, is left to the first model load,
    # so that unwritable outputs and other per-file errors are found before any heavy work.
    if getattr(args, "device", None) not in (None, "cpu"):
        try:
            args.device = device_arg(args.device)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument --device: {exc}")
        if args.device.type == "cuda" and not cuda_available():
            parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if getattr(args, "out_dir", None):
        try:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            report_error(args.out_dir, exc)
            return EXIT_FAILED
    return int(args.handler(args))
