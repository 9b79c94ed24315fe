"""The ``lvae`` command: compress and decompress images, inspect coded files, list models.

``lvae compress``, ``decompress`` and ``info`` handle each file on its own: a failure prints one
line ``lvae: error: <file>: <message>`` on stderr and the next file goes on. Exit status: 0 when
every file succeeded, 1 when any failed, 2 for usage errors. ``lvae eval``, ``lvae plot`` and
``lvae bdrate`` hand their arguments to :func:`lvae.eval.evaluation.main`, :func:`lvae.eval.plot.main` and
:func:`lvae.eval.compare.main`.

Start-up: ``lvae --help``, ``lvae info`` and ``lvae models`` import neither torch nor the model
code (tests/test_startup_imports.py checks it); torch, tqdm and the models load in the commands
that code images, after the arguments and the outputs have been checked.

Ctrl-C: in the ``lvae`` process (the console script, ``python -m lvae``) a SIGINT handler is
installed as soon as this module starts loading. Before :func:`main` runs it ends the process at
once; inside :func:`main` the first Ctrl-C unwinds (writes under way remove their temporary
files), a second one ends the process at once. Either way the process prints one line,
``lvae: interrupted``, and exits with status 130, leaving no partial output. Called in-process
(``main(argv)``), ``main`` catches ``KeyboardInterrupt``, prints the same line and returns 130.
"""
from __future__ import annotations

import os
import signal
import sys

PROG = "lvae"
EXIT_INTERRUPTED = 130


# -- Ctrl-C: set up first, before the other imports ----------------------------------------------------
def _started_as_command() -> bool:
    """True in the ``lvae`` console script and in ``python -m lvae`` (or ``-m lvae.cli``)."""
    entry = sys.modules.get("__main__")
    spec = getattr(entry, "__spec__", None)
    if spec is not None and spec.name in ("lvae.__main__", "lvae.cli"):
        return True
    return os.path.basename(getattr(entry, "__file__", None) or "") in ("lvae", "lvae.exe", "lvae-script.py")


class _Interrupt:
    command = False  # this process is the lvae command and the handler below is installed
    in_main = False  # main() of the command is running: unwind on the first Ctrl-C
    seen = False  # a Ctrl-C came
    bar = False  # a progress bar may be on the terminal


def _exit_interrupted() -> None:
    """Remove partial outputs, print ``lvae: interrupted`` and end the process (status 130), now."""
    io = sys.modules.get("lvae.io")
    if io is not None:
        io.remove_partial_outputs()
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001  (e.g. a reentrant call: the lines already out stay out)
        pass
    end_bar = "\n" if _Interrupt.bar and sys.stderr.isatty() else ""
    try:
        os.write(2, f"{end_bar}{PROG}: interrupted\n".encode())
    except OSError:
        pass
    os._exit(EXIT_INTERRUPTED)


def _on_sigint(signum, frame) -> None:
    if _Interrupt.seen or not _Interrupt.in_main:
        _exit_interrupted()
    _Interrupt.seen = True
    raise KeyboardInterrupt


def _quiet_unraisable(unraisable) -> None:
    """A Ctrl-C that lands in a finaliser is not reported ("Exception ignored in ..."): main()
    sees the flag and stops."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


if _started_as_command():
    try:
        signal.signal(signal.SIGINT, _on_sigint)
        _Interrupt.command = True
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGINT here
        pass

import argparse  # noqa: E402  (after the handler: a Ctrl-C during these imports is one line too)
import importlib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Callable, Sequence

from .. import __version__
from ..bitstream import read_header, truncate
from ..errors import BitstreamError, LvaeError, WeightsUnavailableError
from ..models.registry import get_model, list_models, model_weights

if TYPE_CHECKING:
    import torch

    from ..io import ImageFormat

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# The default is the model shipped inside the package: it works offline and gives the same file
# on every machine. The published qarv_base (downloaded on first use) is one `--model` away.
DEFAULT_MODEL = "qarv_small"
LEGACY_MODEL = "qarv_base"  # the authors' layout records no model name; it only ever held qarv_base
SUFFIXES = {"lvae": ".lvae", "legacy": ".bits"}
DELEGATED = {"eval": "evaluation", "plot": "plot", "bdrate": "compare"}

# Errors that concern one file (or the model it needs): one line each, then the next file.
FILE_ERRORS = (LvaeError, ValueError, OSError, RuntimeError)


# -- argument parsing -----------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def _nonnegative_int(text: str) -> int:
    return _integer(text, 0, "a whole number ≥ 0")


def _quality(text: str) -> int:
    value = _integer(text, 1, "an integer from 1 to 100")
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 100, got {text}")
    return value


def _device(text: str) -> torch.device:
    import torch

    try:
        return torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:1)") from None


def _add_model_options(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument("--model", choices=list_models(), metavar="NAME", help=model_help)
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="checkpoint to load ({'model': state_dict} or a bare state dict); "
        "default: the model's own weights (torch hub cache, else download)",
    )
    p.add_argument(
        "--device",
        default="cpu",  # other devices are parsed by _device in main(), after the cheap checks (it imports torch)
        metavar="DEV",
        help="torch device (default: cpu; decode on the same kind of device that encoded, since "
        "the range coder needs bit-identical priors on both sides)",
    )


def _add_output_options(p: argparse.ArgumentParser, suffix: str) -> None:
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="OUT", help="output file (only with a single input)")
    out.add_argument(
        "--out-dir", metavar="DIR", help=f"write <input stem>{suffix} files into DIR (created if needed)"
    )
    p.add_argument(
        "-f", "--force", action="store_true", help="overwrite existing outputs (never the input itself)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Learned lossy image compression with QARV.",
        epilog="Exit status: 0 success, 1 if any file failed, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser(
        "compress",
        help="compress images",
        description="Compress images. Default output: <image stem>.lvae next to the image "
        "(or in --out-dir). Existing outputs are kept unless --force is given.",
    )
    c.add_argument("images", nargs="+", metavar="IMAGE")
    _add_output_options(c, ".lvae")
    rate = c.add_mutually_exclusive_group()
    rate.add_argument("--lmb", type=_positive_float, metavar="X", help="rate-distortion trade-off λ (default: the model's default)")
    rate.add_argument("--bpp", type=_positive_float, metavar="X", help="largest λ whose file is at most X bits per pixel")
    rate.add_argument("--bytes", type=_positive_int, metavar="N", help="largest λ whose file is at most N bytes")
    rate.add_argument("--psnr", type=_positive_float, metavar="X", help="smallest λ that reaches X dB PSNR")
    c.add_argument(
        "--format",
        choices=sorted(SUFFIXES),
        default="lvae",
        help="container: lvae (default; magic, model name, checksum) or legacy (the QARV authors' "
        "layout, qarv_base only; default suffix .bits)",
    )
    _add_model_options(
        c,
        f"registered model (default: {DEFAULT_MODEL}, shipped in the package; {LEGACY_MODEL} with "
        "--format legacy; qarv_base is the published model, downloaded on first use)",
    )

    d = sub.add_parser(
        "decompress",
        help="decompress .lvae (or the authors' .bits) files to images (PNG by default)",
        description="Decompress coded files to images. Default output: the input's name followed by .png "
        "(photo.lvae -> photo.lvae.png), next to it (or in --out-dir), so that it never replaces the "
        "image the file was made from. The format is the output's suffix or --format: lossless ones "
        "(PNG, BMP, TIFF, PPM/PGM, WebP) store the decoded image exactly; a lossy one (JPEG, AVIF, "
        "lossy WebP) needs --quality. Files of grayscale images decode to grayscale. The model is the "
        "one recorded in the file.",
    )
    d.add_argument("files", nargs="+", metavar="FILE")
    _add_output_options(d, ".png (or the --format's suffix)")
    d.add_argument("--format", dest="image_format", metavar="FMT",
                   help="image format: png (default), bmp, tiff, ppm, pgm, webp (lossless unless --quality), "
                   "jpeg or avif (lossy: need --quality); default: the suffix of -o, else png")
    d.add_argument("--quality", type=_quality, metavar="Q",
                   help="quality 1-100 of a lossy format (JPEG, AVIF, or WebP, which is lossless without it)")
    prefix = d.add_mutually_exclusive_group()
    prefix.add_argument("--latents", type=_nonnegative_int, metavar="K",
                        help="decode only the first K latent strings (coarse to fine): a coarser image")
    prefix.add_argument("--progressive", action="store_true",
                        help="write one image per prefix: <output stem>-k<K><suffix> for K = 0 ... the strings held")
    d.add_argument("--ignore-weights-mismatch", action="store_true",
                   help="decode a file made with other weights of its model anyway (usually a wrong image)")
    d.add_argument("--figure", metavar="PNG", help="with --progressive: also draw every prefix, with its bpp, in one figure")
    _add_model_options(d, "refuse files not made by this model (default: the model the file names)")

    t = sub.add_parser(
        "truncate",
        help="cut a .lvae file to its first latent strings (a smaller file of a coarser image)",
        description="Write a smaller, valid file holding the first K latent strings of FILE "
        "(decoded, it gives `decompress --latents K` of the whole file, bit for bit).",
    )
    t.add_argument("file", metavar="FILE")
    t.add_argument("-o", "--output", metavar="OUT", required=True, help="output file")
    t.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    size = t.add_mutually_exclusive_group(required=True)
    size.add_argument("--latents", type=_nonnegative_int, metavar="K", help="keep the first K latent strings")
    size.add_argument("--bytes", type=_positive_int, metavar="N", help="keep the longest prefix whose file fits N bytes")

    i = sub.add_parser("info", help="describe coded files (model, λ, size, bytes per latent)")
    i.add_argument("files", nargs="+", metavar="FILE")

    sub.add_parser("models", help="list registered models and whether their weights are available offline")

    for name, module in DELEGATED.items():
        sub.add_parser(name, help=f"run lvae.eval.{module} (see `lvae {name} --help`)", add_help=False)
    return parser


# -- helpers -----------------------------------------------------------------------------------------
def _message(exc: BaseException) -> str:
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


def _write(text: str, file) -> None:
    """One line, written around a progress bar on stderr (tqdm is imported here: not at start-up)."""
    from tqdm import tqdm

    tqdm.write(text, file=file)
    file.flush()  # a line printed is out, even if the process is then ended at once (Ctrl-C)


def _report_error(name: object, exc: BaseException) -> None:
    if _Interrupt.seen:  # an interrupt turned into another exception on its way up
        raise KeyboardInterrupt from None
    _write(f"{PROG}: error: {name}: {_message(exc)}", sys.stderr)


def _warn(name: object, text: str) -> None:
    _write(f"{PROG}: warning: {name}: {text}", sys.stderr)


def _progress(items: Sequence[str], desc: str):
    if len(items) < 2:
        return items
    from tqdm import tqdm

    _Interrupt.bar = True
    # tqdm's disable=None hides the bar when stderr is not a terminal (pipes, logs, tests).
    return tqdm(items, desc=desc, unit="file", file=sys.stderr, disable=None)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class _Outputs:
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
        if out.resolve() == src.resolve() or _same_file(out, src):
            raise FileExistsError(f"the output {out} would overwrite the input; choose another with -o or --out-dir")
        if out.resolve() in self.written:
            raise FileExistsError(f"the output {out} was already written by an earlier input of this run")
        if out.exists() and not self.force:
            if self.keep_name and out.is_file() and not _written_by_lvae(out):
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


class _Models:
    """Models built on first use and kept; a model that failed to load is not tried again."""

    def __init__(self, weights: str | None, device: torch.device | str):
        self.weights = weights
        self.device = device
        self._cache: dict[str, torch.nn.Module | BaseException] = {}

    def get(self, name: str) -> torch.nn.Module:
        if name not in self._cache:
            try:
                model = get_model(name, pretrained=self.weights if self.weights else True)
                model.eval().compress_mode(True)
                self._cache[name] = model.to(self.device)
            except FILE_ERRORS as exc:
                self._cache[name] = exc
        cached = self._cache[name]
        if isinstance(cached, BaseException):
            raise cached
        return cached


def _written_by_lvae(path: Path) -> bool:
    from ..io import written_by_lvae

    return written_by_lvae(path)


def _check_input(src: Path) -> None:
    if not src.exists():
        raise FileNotFoundError("no such file")
    if not src.is_file():
        raise IsADirectoryError("not a regular file")


def _run_files(items: Sequence[str], desc: str, job: Callable[[Path], str]) -> int:
    failed = 0
    for item in _progress(items, desc):
        if _Interrupt.seen:
            raise KeyboardInterrupt
        try:
            _write(job(Path(item)), sys.stdout)
        except Exception as exc:  # noqa: BLE001  (one line per file, whatever went wrong)
            _report_error(item, exc)
            failed += 1
    return EXIT_FAILED if failed else EXIT_OK


# -- commands ----------------------------------------------------------------------------------------
def _compress_model(args: argparse.Namespace) -> str:
    """--model, else qarv_base for the authors' layout (the only model it holds), else the default."""
    if args.model:
        return args.model
    return LEGACY_MODEL if args.format == "legacy" else DEFAULT_MODEL


def _compress(args: argparse.Namespace) -> int:
    models = _Models(args.weights, args.device)
    outputs = _Outputs(args.output, args.out_dir, SUFFIXES[args.format], args.force)
    model_name = _compress_model(args)

    def job(src: Path) -> str:
        _check_input(src)
        out = outputs.path_for(src)
        model = models.get(model_name)
        res = model.compress_file(
            src,
            out,
            lmb=args.lmb,
            target_bpp=args.bpp,
            target_bytes=args.bytes,
            target_psnr=args.psnr,
            format=args.format,
        )
        outputs.done(out)
        if res.alpha_dropped:
            _warn(src, "its transparency (alpha channel) was dropped: lvae codes the colours only")
        gray = ", gray" if res.colour == "gray" else ""
        return (
            f"{src} -> {res.path}: {res.num_bytes} bytes, {res.bpp:.4f} bpp, PSNR {res.psnr:.2f} dB, "
            f"{model_name}, lmb {res.lmb:.4g}, {res.width}x{res.height}{gray}"
        )

    return _run_files(args.images, "compress", job)


def _refuse_existing(path: Path, force: bool) -> None:
    """An existing output is replaced only with --force, which is advised only for lvae's own images."""
    if path.exists() and not force:
        if not _written_by_lvae(path):
            raise FileExistsError(f"the output {path} exists and is not an image lvae wrote; "
                                  "choose another name with -o or --out-dir")
        raise FileExistsError(f"the output {path} exists; pass --force to overwrite it")


def _decompress(args: argparse.Namespace) -> int:
    from ..io import atomic_output, check_writable, save_image, tensor_to_image

    fmt: ImageFormat = args.image_format_resolved
    models = _Models(args.weights, args.device)
    outputs = _Outputs(args.output, args.out_dir, fmt.suffix, args.force, keep_name=True)

    def job(src: Path) -> str:
        _check_input(src)
        out = outputs.path_for(src)
        data = src.read_bytes()
        header = read_header(data)
        made_by = header.model_name or LEGACY_MODEL
        if args.model is not None and args.model != made_by:
            raise BitstreamError(f"made by model {made_by!r}, not by {args.model!r}")
        colour = header.colour if header.format == "lvae" else "rgb"
        if fmt.name == "pgm" and colour != "gray":
            raise ValueError("the file holds a colour image and PGM holds grayscale only; write .ppm or .png")
        pixels = header.height * header.width
        if args.progressive:
            if header.format != "lvae":
                raise BitstreamError("the authors' layout cannot be decoded progressively; it holds no prefixes")
            paths = [out.with_name(f"{out.stem}-k{k}{out.suffix}") for k in range(header.num_strings + 1)]
            for path in paths:  # all checked before decoding any
                _refuse_existing(path, args.force)
            figure = Path(args.figure) if args.figure else None
            if figure is not None:
                if figure.exists() and not args.force:
                    raise FileExistsError(f"the figure {figure} exists; choose another name for --figure")
                figure.parent.mkdir(parents=True, exist_ok=True)
                check_writable(figure)
            model = models.get(made_by)
            lines, shown, labels = [], [], []
            for k, path in enumerate(paths):
                prefix_bytes = len(truncate(data, k))
                img = model.decompress(data, num_latents=k, ignore_weights_mismatch=args.ignore_weights_mismatch)
                saved = save_image(img, path, format=fmt.name, quality=fmt.quality)
                if args.figure:
                    shown.append(tensor_to_image(img).convert("RGB"))
                    labels.append(f"{k} of {header.num_latents} latents: {8 * prefix_bytes / pixels:.4f} bpp")
                lines.append(f"{src} -> {path}: {k} of {header.num_latents} latents, {prefix_bytes} bytes, "
                             f"{8 * prefix_bytes / pixels:.4f} bpp, {saved.describe()}")
            outputs.done(out)
            if figure is not None:
                from ..eval.plot import plot_progressive

                with atomic_output(figure) as tmp:
                    plot_progressive(shown, labels, tmp, title=f"{src.name}: {made_by}, λ = {header.lmb:.4g}")
                lines.append(f"{src} -> {figure}: figure of the {len(shown)} prefixes")
            return "\n".join(lines)
        model = models.get(made_by)
        img = model.decompress(data, num_latents=args.latents, ignore_weights_mismatch=args.ignore_weights_mismatch)
        saved = save_image(img, out, format=fmt.name, quality=fmt.quality)
        outputs.done(out)
        used = len(data) if args.latents is None else len(truncate(data, args.latents))
        latents = "" if args.latents is None else f", {args.latents} of {header.num_latents} latents"
        return (f"{src} -> {out}: {used} bytes, {8 * used / pixels:.4f} bpp, {header.width}x{header.height}{latents}, "
                f"{saved.describe()}")

    return _run_files(args.files, "decompress", job)


def _truncate(args: argparse.Namespace) -> int:
    from ..io import atomic_write_bytes

    src, out = Path(args.file), Path(args.output)
    try:
        _check_input(src)
        if out.exists() and _same_file(out, src):
            raise FileExistsError(f"the output {out} would overwrite the input; choose another with -o")
        if out.exists() and not args.force:
            raise FileExistsError(f"the output {out} exists; pass --force to overwrite it")
        data = src.read_bytes()
        header = read_header(data)
        if args.latents is not None:
            k = args.latents
            if k > header.num_strings:
                raise ValueError(f"the file holds {header.num_strings} latent strings; cannot keep {k}")
            cut = truncate(data, k)
        else:
            fitting = [c for c in (truncate(data, k) for k in range(header.num_strings + 1)) if len(c) <= args.bytes]
            if not fitting:
                raise ValueError(f"impossible budget: even 0 latent strings take {len(truncate(data, 0))} bytes "
                                 f"(the header), over {args.bytes}")
            cut = fitting[-1]
        atomic_write_bytes(out, cut)
    except Exception as exc:  # noqa: BLE001
        _report_error(src, exc)
        return EXIT_FAILED
    k = read_header(cut).num_strings
    print(f"{src} -> {out}: {k} of {header.num_latents} latents, {len(cut)} bytes, "
          f"{8 * len(cut) / (header.width * header.height):.4f} bpp")
    return EXIT_OK


def _describe(src: Path) -> str:
    _check_input(src)
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
        ("latents", f"{len(lengths)} of {h.num_latents or len(lengths)} blocks, {sum(lengths)} bytes: "
         + " ".join(map(str, lengths))),
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


def _info(args: argparse.Namespace) -> int:
    failed = 0
    first = True
    for item in args.files:
        try:
            text = _describe(Path(item))
        except Exception as exc:  # noqa: BLE001
            _report_error(item, exc)
            failed += 1
            continue
        print(text if first else "\n" + text)
        first = False
    return EXIT_FAILED if failed else EXIT_OK


def _weights_status(name: str) -> tuple[str, str]:
    """('yes' | 'no', where the weights are or how to get them) for the ``models`` listing."""
    from ..models.weights import locate_weights

    w = model_weights(name)
    if w is None:
        return "no", "no published weights; pass --weights FILE"
    found = locate_weights(w)
    if found.present:
        return "yes", f"{found.source}: {found.path}"
    if found.source == "packaged":
        return "no", f"packaged file missing: {found.path}"
    if w.url:
        return "no", f"downloaded on first use from {w.url} into {found.path}"
    return "no", f"not found at {found.path}"


def _models(args: argparse.Namespace) -> int:
    rows = [(name, *_weights_status(name)) for name in list_models()]
    width = max(len("model"), *(len(r[0]) for r in rows))
    print(f"{'model':<{width}}  offline  weights")
    for name, offline, where in rows:
        mark = " (default for compress)" if name == DEFAULT_MODEL else ""
        print(f"{name:<{width}}  {offline:<7}  {where}{mark}")
    return EXIT_OK


def _delegate(command: str, argv: list[str]) -> int:
    module = f"lvae.eval.{DELEGATED[command]}"
    try:
        entry = importlib.import_module(module).main
    except (ImportError, AttributeError) as exc:
        print(
            f"{PROG}: error: '{PROG} {command}' is not available: cannot load {module}.main "
            f"({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    sys.argv[0] = f"{PROG} {command}"  # so that the delegate's argparse names itself "lvae eval"
    rc = entry(argv)
    return EXIT_OK if rc is None else int(rc)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


COMMANDS = {"compress": _compress, "decompress": _decompress, "truncate": _truncate, "info": _info, "models": _models}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lvae`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Ctrl-C gives one line, ``lvae: interrupted``, and status 130 (see the module's description).
    """
    command = _Interrupt.command and argv is None
    if not command:
        try:
            return _main(argv)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable
    _Interrupt.in_main = True
    try:
        status = _main(argv)
    except KeyboardInterrupt:
        _exit_interrupted()
    finally:
        _Interrupt.in_main = False
        sys.unraisablehook = previous_hook
    if _Interrupt.seen:  # an interrupt swallowed on the way (e.g. in a finaliser)
        _exit_interrupted()
    return status


def _usage_line(message: str) -> int:
    """A usage error that needs no usage text: one line, status 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")  # λ in messages on a non-UTF-8 terminal
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    inputs = getattr(args, "images", None) or getattr(args, "files", None) or []
    if getattr(args, "output", None) and len(inputs) > 1:
        parser.error("-o/--output takes a single input; use --out-dir for several")
    if getattr(args, "figure", None) and not args.progressive:
        parser.error("--figure draws the prefixes of --progressive; give both")
    if getattr(args, "figure", None) and len(inputs) > 1:
        parser.error("--figure takes a single input")
    if args.command == "compress" and args.format == "legacy" and _compress_model(args) != LEGACY_MODEL:
        parser.error(f"--format legacy records no model name and is read back as {LEGACY_MODEL}; use --format lvae")
    if args.command == "decompress":
        # The output format is settled before anything is decoded: a lossy one must be asked for.
        from ..io import output_format

        try:
            args.image_format_resolved = output_format(
                args.output, args.image_format, args.quality, options=("--format ", "--quality ")
            )
        except ValueError as exc:
            return _usage_line(str(exc))
        if args.figure and Path(args.figure).suffix.lower() not in ("", ".png"):
            return _usage_line(f"--figure {args.figure}: the figure is a PNG image; name it .png")
    # Parsing a device imports torch (seconds): the default, cpu, is left to the first model load,
    # so that unwritable outputs and other per-file errors are found before any heavy work.
    if getattr(args, "device", None) not in (None, "cpu"):
        try:
            args.device = _device(args.device)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument --device: {exc}")
        if args.device.type == "cuda" and not _cuda_available():
            parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if getattr(args, "out_dir", None):
        try:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _report_error(args.out_dir, exc)
            return EXIT_FAILED
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
