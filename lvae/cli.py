"""The ``lvae`` command: compress and decompress images, inspect coded files, list models.

``lvae compress``, ``decompress`` and ``info`` handle each file on its own: a failure prints one
line ``lvae: error: <file>: <message>`` on stderr and the next file goes on. Exit status: 0 when
every file succeeded, 1 when any failed, 2 for usage errors. ``lvae eval``, ``lvae plot`` and
``lvae bdrate`` hand their arguments to :func:`lvae.evaluation.main`, :func:`lvae.plot.main` and
:func:`lvae.compare.main`.

Start-up: ``lvae --help``, ``lvae info`` and ``lvae models`` import neither torch nor the model
code (tests/test_startup_imports.py checks it); torch, tqdm and the models load in the commands
that code images.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from . import __version__
from .bitstream import read_header, truncate
from .errors import BitstreamError, LvaeError, WeightsUnavailableError
from .registry import get_model, list_models, model_weights

if TYPE_CHECKING:
    import torch

__all__ = ["main", "build_parser"]

PROG = "lvae"
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
        type=_device,
        default="cpu",  # argparse passes a string default through _device, in the commands that have it
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
        help="decompress .lvae (or the authors' .bits) files to PNG",
        description="Decompress coded files to PNG. Default output: the input's name followed by .png "
        "(photo.lvae -> photo.lvae.png), next to it (or in --out-dir), so that it never replaces the "
        "image the file was made from. The model is the one recorded in the file.",
    )
    d.add_argument("files", nargs="+", metavar="FILE")
    _add_output_options(d, ".png")
    prefix = d.add_mutually_exclusive_group()
    prefix.add_argument("--latents", type=_nonnegative_int, metavar="K",
                        help="decode only the first K latent strings (coarse to fine): a coarser image")
    prefix.add_argument("--progressive", action="store_true",
                        help="write one PNG per prefix: <output stem>-k<K>.png for K = 0 ... the strings held")
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
        sub.add_parser(name, help=f"run lvae.{module} (see `lvae {name} --help`)", add_help=False)
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


def _report_error(name: object, exc: BaseException) -> None:
    _write(f"{PROG}: error: {name}: {_message(exc)}", sys.stderr)


def _progress(items: Sequence[str], desc: str):
    if len(items) < 2:
        return items
    from tqdm import tqdm

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
        return out

    def done(self, out: Path) -> None:
        self.written.add(out.resolve())


class _Models:
    """Models built on first use and kept; a model that failed to load is not tried again."""

    def __init__(self, weights: str | None, device: torch.device):
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
    from .io import written_by_lvae

    return written_by_lvae(path)


def _check_input(src: Path) -> None:
    if not src.exists():
        raise FileNotFoundError("no such file")
    if not src.is_file():
        raise IsADirectoryError("not a regular file")


def _run_files(items: Sequence[str], desc: str, job: Callable[[Path], str]) -> int:
    failed = 0
    for item in _progress(items, desc):
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
        return (
            f"{src} -> {res.path}: {res.num_bytes} bytes, {res.bpp:.4f} bpp, PSNR {res.psnr:.2f} dB, "
            f"{model_name}, lmb {res.lmb:.4g}, {res.width}x{res.height}"
        )

    return _run_files(args.images, "compress", job)


def _decompress(args: argparse.Namespace) -> int:
    from .io import save_image

    models = _Models(args.weights, args.device)
    outputs = _Outputs(args.output, args.out_dir, ".png", args.force, keep_name=True)

    def job(src: Path) -> str:
        _check_input(src)
        out = outputs.path_for(src)
        data = src.read_bytes()
        header = read_header(data)
        made_by = header.model_name or LEGACY_MODEL
        if args.model is not None and args.model != made_by:
            raise BitstreamError(f"made by model {made_by!r}, not by {args.model!r}")
        model = models.get(made_by)
        pixels = header.height * header.width
        if args.progressive:
            if header.format != "lvae":
                raise BitstreamError("the authors' layout cannot be decoded progressively; it holds no prefixes")
            lines, shown, labels = [], [], []
            for k in range(header.num_strings + 1):
                path = out.with_name(f"{out.stem}-k{k}{out.suffix}")
                if path.exists() and not args.force:
                    if not _written_by_lvae(path):
                        raise FileExistsError(f"the output {path} exists and is not an image lvae wrote; "
                                              "choose another name with -o or --out-dir")
                    raise FileExistsError(f"the output {path} exists; pass --force to overwrite it")
                prefix_bytes = len(truncate(data, k))
                img = model.decompress(data, num_latents=k, ignore_weights_mismatch=args.ignore_weights_mismatch)
                save_image(img, path)
                if args.figure:
                    from .io import tensor_to_image

                    shown.append(tensor_to_image(img))
                    labels.append(f"{k} of {header.num_latents} latents: {8 * prefix_bytes / pixels:.4f} bpp")
                lines.append(f"{src} -> {path}: {k} of {header.num_latents} latents, {prefix_bytes} bytes, "
                             f"{8 * prefix_bytes / pixels:.4f} bpp")
            outputs.done(out)
            if args.figure:
                from .plot import plot_progressive

                plot_progressive(shown, labels, args.figure, title=f"{src.name}: {made_by}, λ = {header.lmb:.4g}")
                lines.append(f"{src} -> {args.figure}: figure of the {len(shown)} prefixes")
            return "\n".join(lines)
        img = model.decompress(data, num_latents=args.latents, ignore_weights_mismatch=args.ignore_weights_mismatch)
        save_image(img, out)
        outputs.done(out)
        used = len(data) if args.latents is None else len(truncate(data, args.latents))
        latents = "" if args.latents is None else f", {args.latents} of {header.num_latents} latents"
        return f"{src} -> {out}: {used} bytes, {8 * used / pixels:.4f} bpp, {header.width}x{header.height}{latents}"

    return _run_files(args.files, "decompress", job)


def _truncate(args: argparse.Namespace) -> int:
    from .io import atomic_write_bytes

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
    from .hub import locate_weights

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
    module = f"lvae.{DELEGATED[command]}"
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
    """Run the ``lvae`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
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
    device = getattr(args, "device", None)
    if device is not None and device.type == "cuda" and not _cuda_available():
        parser.error(f"--device {device}: CUDA is not available on this machine")
    if getattr(args, "out_dir", None):
        try:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _report_error(args.out_dir, exc)
            return EXIT_FAILED
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
