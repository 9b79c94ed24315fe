"""What every ``lvae`` subcommand shares: exit statuses, one-line errors, argument types, the
per-file loop, the output-path policy and the model cache. Imports no torch."""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..errors import LvaeError, WeightsUnavailableError
from ..models.registry import list_models
from ..utils.args import OneLineArgumentParser
from . import interrupt

if TYPE_CHECKING:
    import torch

    from ..coding.codec import CompressionMixin

PROG = "lvae"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = interrupt.EXIT_INTERRUPTED

# Errors that concern one file (or the model it needs): one line each, then the next file.
FILE_ERRORS = (LvaeError, ValueError, OSError, RuntimeError)


def one_line(exc: BaseException) -> str:
    """The message of an expected error on one line (OSErrors as 'reason: file')."""
    if isinstance(exc, OSError) and exc.strerror:
        msg = exc.strerror
        if exc.filename is not None:
            msg += f": {exc.filename}"
    elif isinstance(exc, FILE_ERRORS):
        msg = str(exc) or type(exc).__name__
    else:
        msg = f"internal error ({type(exc).__name__}: {exc}); please report it"
    if isinstance(exc, WeightsUnavailableError):
        msg += " (with the lvae command: --weights FILE)"
    return " ".join(msg.split())


def reports_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command's ``run(args)``: an expected error (``FILE_ERRORS``) prints
    ``error: <one line>`` on stderr and gives status 1 (the eval, plot and bdrate commands)."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except FILE_ERRORS as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return EXIT_FAILED

    return wrapped


def standalone(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """A subcommand run as its own script (``eval-var-rate.py``): the same arguments and ``run``
    as under ``lvae``, usage errors on one line (status 2), Ctrl-C as ``interrupted`` (status 130)."""
    parser = OneLineArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# -- argument types and option groups ------------------------------------------------------------
def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    return integer(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    return integer(text, 0, "a whole number ≥ 0")


def quality_arg(text: str) -> int:
    value = integer(text, 1, "an integer from 1 to 100")
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 100, got {text}")
    return value


def device_arg(text: str) -> torch.device:
    import torch

    try:
        return torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:1)") from None


def add_model_options(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument("--model", choices=list_models(), metavar="NAME", help=model_help)
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="checkpoint to load ({'model': state_dict} or a bare state dict); "
        "default: the model's own weights (torch hub cache, else download)",
    )
    p.add_argument(
        "--device",
        default="cpu",  # other devices are parsed by device_arg in main(), after the cheap checks (it imports torch)
        metavar="DEV",
        help="torch device (default: cpu; decode on the same kind of device that encoded, since "
        "the range coder needs bit-identical priors on both sides)",
    )


def add_output_options(p: argparse.ArgumentParser, suffix: str) -> None:
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="OUT", help="output file (only with a single input)")
    out.add_argument(
        "--out-dir", metavar="DIR", help=f"write <input stem>{suffix} files into DIR (created if needed)"
    )
    p.add_argument(
        "-f", "--force", action="store_true", help="overwrite existing outputs (never the input itself)"
    )



# -- the per-file loop ----------------------------------------------------------------------------
def write_line(text: str, file) -> None:
    """One line, written around a progress bar on stderr (tqdm is imported here: not at start-up)."""
    from tqdm import tqdm

    tqdm.write(text, file=file)
    file.flush()  # a line printed is out, even if the process is then ended at once (Ctrl-C)


def report_error(name: object, exc: BaseException) -> None:
    if interrupt.State.seen:  # an interrupt turned into another exception on its way up
        raise KeyboardInterrupt from None
    write_line(f"{PROG}: error: {name}: {one_line(exc)}", sys.stderr)


def warn(name: object, text: str) -> None:
    write_line(f"{PROG}: warning: {name}: {text}", sys.stderr)


def progress(items: Sequence[str], desc: str):
    if len(items) < 2:
        return items
    from tqdm import tqdm

    interrupt.State.bar = True
    # tqdm's disable=None hides the bar when stderr is not a terminal (pipes, logs, tests).
    return tqdm(items, desc=desc, unit="file", file=sys.stderr, disable=None)


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class Outputs:
    """Output-path policy: never the input, never an existing file without --force, never twice."""

    def __init__(self, output: str | None, out_dir: str | None, suffix: str, force: bool, keep_name: bool = False):
        self.output = Path(output) if output else None
        self.out_dir = Path(out_dir) if out_dir else None
        self.suffix = suffix
        self.force = force
        # decompress: photo.lvae -> photo.lvae.png, never the name of the image the file came from
        self.keep_name = keep_name
        self.written: set[Path] = set()

    def path_for(self, src: Path) -> Path:
        name = src.name + self.suffix if self.keep_name else src.stem + self.suffix
        if self.output is not None:
            out = self.output
        elif self.out_dir is not None:
            out = self.out_dir / name
        else:
            out = src.with_name(name)
        if out.resolve() == src.resolve() or same_file(out, src):
            raise FileExistsError(f"the output {out} would overwrite the input; choose another with -o or --out-dir")
        if out.resolve() in self.written:
            raise FileExistsError(f"the output {out} was already written by an earlier input of this run")
        if out.exists() and not self.force:
            if self.keep_name and out.is_file() and not written_by_lvae(out):
                raise FileExistsError(
                    f"the output {out} exists and is not an image lvae wrote; choose another name with -o or --out-dir"
                )
            raise FileExistsError(f"the output {out} exists; pass --force to overwrite it")
        if out.is_dir():
            raise IsADirectoryError(f"the output {out} is a directory")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"the output folder {out.parent} does not exist")
        from ..io import check_writable

        check_writable(out)  # before any decoding or encoding: name the real output, not a temporary
        return out

    def done(self, out: Path) -> None:
        self.written.add(out.resolve())


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """In the ``lvae`` process, Python's cyclic garbage collector is paused while torch imports
    and a model is built, then everything alive is frozen out of later collections (``gc.freeze``).

    Importing torch creates some 180,000 objects the collector tracks, and it walks them again
    and again while the import runs and once more when the process exits: 0.44 s of a 2.28 s
    ``lvae compress`` on a 2-core CPU (``benchmarks/startup.py``, docs/cli.md). Called
    in-process (``main(argv)``, tests), it does nothing: the caller's collector is left alone.
    """
    if not interrupt.State.command:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


class Models:
    """Models built on first use and kept; a model that failed to load is not tried again."""

    def __init__(self, weights: str | None, device: torch.device | str):
        self.weights = weights
        self.device = device
        self._cache: dict[str, CompressionMixin | BaseException] = {}

    def get(self, name: str) -> CompressionMixin:
        from ..models.registry import load_model

        if name not in self._cache:
            try:
                with collector_paused():
                    model = load_model(name, self.weights, device=self.device)
                self._cache[name] = cast("CompressionMixin", model)  # every registered model codes
            except FILE_ERRORS as exc:
                self._cache[name] = exc
        cached = self._cache[name]
        if isinstance(cached, BaseException):
            raise cached
        return cached


def written_by_lvae(path: Path) -> bool:
    from ..io import written_by_lvae

    return written_by_lvae(path)


def check_input(src: Path) -> None:
    if not src.exists():
        raise FileNotFoundError("no such file")
    if not src.is_file():
        raise IsADirectoryError("not a regular file")


def run_files(items: Sequence[str], desc: str, job: Callable[[Path], str]) -> int:
    failed = 0
    for item in progress(items, desc):
        if interrupt.State.seen:
            raise KeyboardInterrupt
        try:
            write_line(job(Path(item)), sys.stdout)
        except Exception as exc:  # noqa: BLE001  (one line per file, whatever went wrong)
            report_error(item, exc)
            failed += 1
    return EXIT_FAILED if failed else EXIT_OK

