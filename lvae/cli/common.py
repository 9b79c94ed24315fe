"""What every ``lvae`` subcommand shares: exit statuses, one-line errors, argument types and the
options every command spells alike (``--weights``, ``--device``, ``-o``/``--out-dir``/``--force``),
the per-file loop, output that survives a reader going away, the output-path policy and the
model cache. Imports no torch (until a device other than cpu is asked for)."""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn, cast

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
    if isinstance(exc, WeightsUnavailableError) and "--weights" not in msg:
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
            write_line(f"error: {one_line(exc)}", sys.stderr)
            return EXIT_FAILED

    return wrapped


def standalone(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """A subcommand run as its own script (``eval-var-rate.py``): the same arguments, checks and
    ``run`` as under ``lvae``, usage errors on one line (status 2, an unavailable ``--device``
    included), Ctrl-C as ``interrupted`` (status 130)."""
    parser = OneLineArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_device(args, parser.error)
    try:
        return run(args)
    except KeyboardInterrupt:
        write_line("interrupted", sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        flush_output()


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


def device_unavailable(device: torch.device) -> str | None:
    """Why ``device`` cannot be used on this machine, or None when it can."""
    import torch

    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA device{'s' if count != 1 else ''} (cuda:0 ... cuda:{count - 1})"
        return None
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError, AssertionError) as exc:
        return f"not available on this machine ({' '.join(str(exc).split()) or type(exc).__name__})"
    return None


def check_device(args: argparse.Namespace, error: Callable[[str], NoReturn]) -> None:
    """Parse and check ``args.device`` (if the command has one) as every command does: an unknown
    or unavailable device is a usage error (``error``: one line, status 2). The default, cpu,
    stays a string: parsing a device imports torch (seconds), which the cheap checks of the
    outputs come before."""
    text = getattr(args, "device", None)
    if text is None or text == "cpu":
        return
    try:
        device = device_arg(text)
    except argparse.ArgumentTypeError as exc:
        error(f"argument --device: {exc}")
    problem = device_unavailable(device)
    if problem is not None:
        error(f"--device {text}: {problem}")
    args.device = device


DEVICE_HELP = (
    "torch device: cpu (the default, in every lvae command) or cuda, cuda:1, ...; an unavailable "
    "device is a usage error. Files decode on any device, whichever device made them"
)


def add_device_option(p: argparse.ArgumentParser) -> None:
    # A device other than cpu is parsed by check_device after the arguments (it imports torch).
    p.add_argument("--device", default="cpu", metavar="DEV", help=DEVICE_HELP)


RANDOM_WEIGHTS = "random"


def add_weights_option(p: argparse.ArgumentParser, random_ok: bool = False) -> None:
    """``--weights``: the same meaning in every command: a checkpoint file, by default the model's
    own weights (an error if it has none or they cannot be had); ``random`` only where
    ``random_ok`` (evaluation), and only when asked."""
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="checkpoint to load ({'model': state_dict} or a bare state dict); default: the model's own "
        "weights (packaged, torch hub cache, else download; an error if the model has none)"
        + ("; 'random': random weights" if random_ok else ""),
    )


def check_weights(name: str, weights: str | None, random_ok: bool = False) -> None:
    """Before a model is built: the model has weights of its own, or ``weights`` gives some."""
    from ..models.registry import model_weights

    if weights is None and model_weights(name) is None:
        also = f", or --weights {RANDOM_WEIGHTS} for random weights" if random_ok else ""
        raise WeightsUnavailableError(
            f"model {name!r} has no weights of its own: give a checkpoint with --weights FILE{also}"
        )
    if weights == RANDOM_WEIGHTS and not random_ok:
        raise ValueError(f"--weights {RANDOM_WEIGHTS} is for evaluation only (lvae eval): a file coded with random "
                         "weights decodes with no other weights; give a checkpoint file")


def add_model_options(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument("--model", choices=list_models(), metavar="NAME", help=model_help)
    add_weights_option(p)
    add_device_option(p)


def add_output_options(p: argparse.ArgumentParser, name: str) -> None:
    """``-o``/``--output``, ``--out-dir`` (``name``: the name of each output in it) and ``--force``."""
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="OUT",
                     help="output file (only with a single input; its folder is created if needed)")
    out.add_argument("--out-dir", metavar="DIR", help=f"write {name} files into DIR (created if needed)")
    p.add_argument("-f", "--force", action="store_true",
                   help="replace existing outputs that lvae wrote (never another file, never the input)")


def add_force_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--force`` of the outputs that :func:`claim_output` checks (results, plots)."""
    p.add_argument("-f", "--force", action="store_true",
                   help=f"replace an existing output if it is {what} lvae wrote (nothing else is ever replaced)")


def figure_path(text: str) -> str:
    """A figure's file name: its suffix says PNG, PDF or SVG (else a usage error)."""
    from ..eval.plot import figure_format

    try:
        figure_format(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# -- output that outlives its reader ----------------------------------------------------------------
def write_line(text: str, file: IO[str] | None = None) -> None:
    """Print ``text`` (one line or several) on ``file`` (default stdout), around a progress bar if
    one may be shown, and flush it: a line printed is out, even if the process is then ended at
    once (Ctrl-C).

    A reader that went away (``lvae info a.lvae b.lvae | head -1``: a closed pipe) is no error:
    the rest of that stream is dropped (:func:`drop_stream`) and the work goes on; the exit
    status says only whether the work succeeded."""
    file = sys.stdout if file is None else file
    try:
        if interrupt.State.bar:
            from tqdm import tqdm  # imported only where a bar may be: not at start-up

            tqdm.write(text, file=file)
        else:
            file.write(text + "\n")
        file.flush()
    except BrokenPipeError:
        drop_stream(file)


def drop_stream(file: IO[str]) -> None:
    """The reader of ``file`` is gone. If it is the process's own stdout or stderr, point its
    descriptor at ``os.devnull`` (Python's advice for a closed pipe, docs of ``signal``): what is
    still buffered, and what is written later, then go nowhere, without an error at exit."""
    if file is not sys.__stdout__ and file is not sys.__stderr__:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, file.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):
        pass


def flush_output() -> None:
    """Flush stdout and stderr at the end of a command; a reader that is gone is no error."""
    for file in (sys.stdout, sys.stderr):
        try:
            file.flush()
        except BrokenPipeError:
            drop_stream(file)
        except (OSError, ValueError):
            pass


# -- the per-file loop ----------------------------------------------------------------------------
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


def make_folder(folder: Path) -> None:
    """Create an output's folder (and its parents) when it is missing: the same for ``-o``,
    ``--out-dir``, ``--output`` and ``--figure`` in every command."""
    if folder.is_dir():
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the output folder {folder} ({exc.strerror or exc})") from None


# Images lvae writes carry its mark in PNG, JPEG and TIFF only (lvae.io.written_by_lvae).
IMAGE_LVAE_WROTE = "an image"
IMAGE_MARKS = "PNG, JPEG and TIFF carry lvae's mark, other formats cannot"


def claim_output(path: Path, force: bool, ours: Callable[[Path], bool], what: str, option: str) -> Path:
    """The one output rule of every command, checked before any work: an existing file is
    replaced only with ``--force``, and only when it is ``what`` lvae wrote (``ours``), never
    anything else; its folder is created if needed and must be writable."""
    from ..io import check_writable

    if path.is_dir():
        raise IsADirectoryError(f"the output {path} is a folder")
    if path.exists():
        if not ours(path):
            note = f" ({IMAGE_MARKS})" if what == IMAGE_LVAE_WROTE else ""
            raise FileExistsError(f"the output {path} exists and is not {what} lvae wrote{note}; "
                                  f"choose another name with {option}")
        if not force:
            raise FileExistsError(f"the output {path} exists; pass --force to replace it")
    make_folder(path.parent)
    check_writable(path)
    return path


class Outputs:
    """Output-path policy: never the input, never an existing file without --force, never twice;
    a missing folder is created (``-o`` and ``--out-dir`` alike)."""

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
        # before any decoding or encoding: name the real output, not a temporary
        if self.keep_name:
            return claim_output(out, self.force, written_by_lvae, IMAGE_LVAE_WROTE, "-o or --out-dir")
        return claim_output(out, self.force, coded_by_lvae, "a coded file", "-o or --out-dir")

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
    """Models built on first use and kept; a model that failed to load is not tried again.

    A fixed-λ family (``qres34m``) is kept per member: :meth:`get` with the λ a file names (or
    ``--lmb``) builds that member itself, so that decoding a λ=512 file never loads, or fetches,
    another member's weights."""

    def __init__(self, weights: str | None, device: torch.device | str):
        self.weights = weights
        self.device = device
        self._cache: dict[tuple[str, float | None], CompressionMixin | BaseException] = {}

    def empty(self) -> bool:
        """No model has been loaded (or tried) yet: the next :meth:`get` builds one."""
        return not self._cache

    def get(self, name: str, lmb: float | None = None) -> CompressionMixin:
        """The model ``name``; for a fixed-λ model, the member that codes at ``lmb`` (None: the
        default member, which reaches its siblings when it has the published weights)."""
        from ..models.registry import model_lambdas

        known = name in list_models()  # an unknown name is load_model's to report
        if known and lmb is not None and model_lambdas(name) is not None:
            return self._load(name, float(lmb))
        model = self._load(name, None)
        members = getattr(model, "lambdas", None)
        if lmb is not None and members is not None and not any(_same_lmb(lmb, v) for v in members):
            # A fixed-λ network the registry lists as no family (a toy, a checkpoint): its entry
            # function takes lmb (the model contract), and the member of that λ is built instead.
            return self._load(name, float(lmb))
        return model

    def _load(self, name: str, lmb: float | None) -> CompressionMixin:
        from ..models.registry import load_model

        key = (name, lmb)
        if key not in self._cache:
            try:
                if name in list_models() and self.weights is None and lmb is not None:
                    check_member(name, lmb)
                if name in list_models():
                    check_weights(name, self.weights)
                with collector_paused():
                    if lmb is None:
                        model = load_model(name, self.weights, device=self.device)
                    else:  # the member of λ
                        model = load_model(name, self.weights, model_args={"lmb": lmb}, device=self.device)
                self._cache[key] = cast("CompressionMixin", model)  # every registered model codes
            except FILE_ERRORS as exc:
                self._cache[key] = exc
        cached = self._cache[key]
        if isinstance(cached, BaseException):
            raise cached
        return cached


def _same_lmb(a: float, b: float) -> bool:
    """Two λ that are one member's (a λ read back from a file is a float32)."""
    return abs(float(a) - float(b)) <= 1e-6 * abs(float(b))


def family_member_problem(name: str, lmb: float) -> str | None:
    """Why the published weights of the family ``name`` have no member at ``lmb`` (one line
    listing its members), or None: it has one, or ``name`` is no fixed-λ family."""
    from ..eval.lambdas import format_lambdas
    from ..models.registry import model_lambdas, model_weights

    members = model_lambdas(name)
    if members is None or model_weights(name) is None or any(_same_lmb(lmb, v) for v in members):
        return None  # not a family, or one with no weights at all (check_weights says so)
    return (f"{name} has published weights for λ ∈ {format_lambdas(members)}, not λ={lmb:g} "
            "(another λ needs weights of your own: --weights FILE)")


def check_member(name: str, lmb: float) -> None:
    """:func:`family_member_problem` as a ValueError."""
    problem = family_member_problem(name, lmb)
    if problem is not None:
        raise ValueError(problem)


def written_by_lvae(path: Path) -> bool:
    from ..io import written_by_lvae

    return written_by_lvae(path)


def coded_by_lvae(path: Path) -> bool:
    """A file lvae coded: it starts with the lvae container's magic bytes (damaged or not), or it
    reads whole as the authors' layout (which has no magic bytes)."""
    from ..bitstream import MAGIC, read_header

    try:
        data = path.read_bytes()
        if data.startswith(MAGIC):
            return True
        read_header(data)
        return True
    except (OSError, ValueError):
        return False


def use_bf16_encoder(model: CompressionMixin) -> bool:
    """``--bf16-encoder``: the model's bfloat16 encoder where it runs (AVX-512 BF16 or AMX), else
    one warning line on stderr and the float32 encoder. Returns whether bfloat16 is used."""
    if "bfloat16" in model.encoder_precisions():
        model.set_encoder_precision("bfloat16")
        return True
    where = "this device" if next(model.parameters()).device.type != "cpu" else "this CPU (no AVX-512 BF16 or AMX)"
    warn("--bf16-encoder", f"the bfloat16 encoder does not run on {where}; encoding with the float32 encoder")
    return False


def check_input(src: Path) -> None:
    if not src.exists():
        raise FileNotFoundError("no such file")
    if not src.is_file():
        raise IsADirectoryError("not a regular file")


def run_files(items: Sequence[str], desc: str, job: Callable[[Path], str | None]) -> int:
    """``job`` each item; print the line it returns (a job may print its own lines as it goes and
    return None). Status 1 if any item failed; a reader of stdout that went away is no failure."""
    failed = 0
    for item in progress(items, desc):
        if interrupt.State.seen:
            raise KeyboardInterrupt
        try:
            line = job(Path(item))
        except Exception as exc:  # noqa: BLE001  (one line per file, whatever went wrong)
            report_error(item, exc)
            failed += 1
            continue
        if line is not None:
            write_line(line, sys.stdout)
    return EXIT_FAILED if failed else EXIT_OK

