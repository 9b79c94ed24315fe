"""The ``lvae`` command's parser and entry point: each subcommand is a module of this package
(:mod:`.coding`: compress, decompress, truncate; :mod:`.inspect`: info, models; :mod:`.evaluate`,
:mod:`.plot`, :mod:`.bdrate`: eval, plot, bdrate) that adds its own parser and handler.

Exit status: 0 when every file succeeded, 1 when any failed, 2 for usage errors (one line each,
an unavailable ``--device`` included), 130 on Ctrl-C (:mod:`.interrupt`). Every long option takes
both spellings, ``--out-dir`` and ``--out_dir`` (:class:`lvae.utils.args.ArgumentParser`).
Output to a reader that goes away (``lvae info ... | head -1``) is dropped without an error; the
work goes on. Start-up: ``lvae --help``, ``lvae info`` and ``lvae models`` import neither
torch nor the model code (tests/test_startup_imports.py checks it); torch, tqdm and the models
load in the commands that code images, after the arguments and the outputs have been checked.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import __version__
from ..utils.args import OneLineArgumentParser
from . import bdrate, coding, evaluate, inspect, interrupt, plot
from .coding import legacy_format_problem
from .common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    RANDOM_WEIGHTS,
    check_device,
    flush_output,
    write_line,
)

if TYPE_CHECKING:
    pass

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lvae`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Ctrl-C gives one line, ``lvae: interrupted``, and status 130 (see the module's description).
    """
    command = interrupt.State.command and argv is None
    if not command:
        try:
            return _main(argv)
        except KeyboardInterrupt:
            write_line(f"{PROG}: interrupted", sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            flush_output()
    previous_hook = sys.unraisablehook
    sys.unraisablehook = interrupt.quiet_unraisable
    interrupt.State.in_main = True
    try:
        status = _main(argv)
        if interrupt.State.seen:  # an interrupt swallowed on the way (e.g. in a finaliser)
            raise KeyboardInterrupt
        interrupt.finished()
    except KeyboardInterrupt:
        interrupt.exit_interrupted()
    finally:
        interrupt.State.in_main = False
        sys.unraisablehook = previous_hook
        flush_output()
    _end_process(status)
    return status  # (only where the process cannot end here: see _end_process)


def _end_process(status: int) -> None:
    """End the ``lvae`` process with ``status`` now that its outputs are written and its lines
    flushed: the ``atexit`` handlers run, Python's own shutdown is skipped. Once torch is loaded,
    that shutdown spends about 0.2 s tearing down native libraries (docs/speed.md, "Large
    photos"). Returns (and the process ends as usual) where torch was never loaded or another
    non-daemon thread still runs."""
    import threading

    if "torch" not in sys.modules:
        return
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    import atexit
    import os

    atexit._run_exitfuncs()
    flush_output()
    os._exit(status)


def usage_line(message: str) -> int:
    """A usage error that needs no usage text: one line, status 2."""
    write_line(f"{PROG}: error: {message}", sys.stderr)
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
    if args.command == "compress" and (problem := legacy_format_problem(args)) is not None:
        parser.error(problem)
    if args.command == "decompress":
        # The output format is settled before anything is decoded: a lossy one must be asked for.
        from ..io import output_format

        try:
            args.image_format_resolved = output_format(
                args.output, args.image_format, args.quality, options=("--format ", "--quality ")
            )
        except ValueError as exc:
            return usage_line(str(exc))
    if args.command in ("compress", "decompress") and args.weights == RANDOM_WEIGHTS:
        return usage_line(f"--weights {RANDOM_WEIGHTS} is for evaluation only (lvae eval): a file coded with "
                          "random weights decodes with no other weights; give a checkpoint file")
    # Parsing a device imports torch (seconds): the default, cpu, is left to the first model load,
    # so that unwritable outputs and other per-file errors are found before any heavy work.
    check_device(args, parser.error)
    return int(args.handler(args))
