"""``lvae compress``, ``decompress`` and ``truncate``: images to files, files to images, files to
shorter files. Each file is handled on its own (see :func:`lvae.cli.common.run_files`)."""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..bitstream import LEGACY_MODEL, read_header, truncate
from ..errors import BitstreamError
from ..eval.lambdas import format_lambdas
from ..models.registry import list_models, model_lambdas
from . import interrupt
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    IMAGE_LVAE_WROTE,
    PROG,
    Models,
    Outputs,
    add_model_options,
    add_output_options,
    check_input,
    claim_output,
    coded_by_lvae,
    family_member_problem,
    figure_path,
    make_folder,
    nonnegative_int,
    positive_float,
    positive_int,
    quality_arg,
    report_error,
    run_files,
    same_file,
    use_bf16_encoder,
    warn,
    write_line,
    written_by_lvae,
)

if TYPE_CHECKING:
    from ..bitstream import Header
    from ..coding.codec import CompressionMixin, CompressResult
    from ..io import ImageFormat

__all__ = ["DEFAULT_MODEL", "LEGACY_MODEL", "SUFFIXES", "AUTHORS_LAYOUT_MODELS", "add_parsers", "legacy_format_problem"]

# The default is the model shipped inside the package: it works offline and gives the same file
# on every machine. The published qarv_base (downloaded on first use) is one `--model` away.
DEFAULT_MODEL = "qarv_small"
SUFFIXES = {"lvae": ".lvae", "legacy": ".bits"}
# Image files from this size on are read while the model loads (reading a PNG of 2 MB, about 2
# megapixels, takes about what the reading thread costs torch's import: benchmarks/cli_overhead.py).
READ_AHEAD_BYTES = 2 << 20


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands compress, decompress and truncate."""
    c = sub.add_parser(
        "compress",
        help="compress images",
        description="Compress images. Default output: <image stem>.lvae next to the image "
        "(or in --out-dir). Existing outputs are kept unless --force is given.",
    )
    c.add_argument("images", nargs="+", metavar="IMAGE")
    add_output_options(c, "<image stem>.lvae (.bits with --format legacy)")
    rate = c.add_mutually_exclusive_group()
    rate.add_argument("--lmb", type=positive_float, metavar="X",
                      help="rate-distortion trade-off λ (default: the model's default); a fixed-λ family "
                      "(qres34m) takes the λ of its members (lvae models lists them)")
    rate.add_argument("--bpp", type=positive_float, metavar="X",
                      help="largest λ (a family: member) whose file is at most X bits per pixel")
    rate.add_argument("--bytes", type=positive_int, metavar="N",
                      help="largest λ (a family: member) whose file is at most N bytes")
    rate.add_argument("--psnr", type=positive_float, metavar="X",
                      help="smallest λ (a family: member) that reaches X dB PSNR")
    c.add_argument(
        "--format",
        choices=sorted(SUFFIXES),
        default="lvae",
        help="container: lvae (default; magic, model name, checksum) or legacy (the authors' layout "
        "of qarv_base, and the QRes-VAE authors' pickle of qres34m and qres17m; default suffix .bits)",
    )
    c.add_argument(
        "--bf16-encoder",
        action="store_true",
        help="compute what only the encoder computes in bfloat16: faster on CPUs with AMX; the files "
        "still decode everywhere (docs/speed.md)",
    )
    add_model_options(
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
    add_output_options(d, "<input name>.png (photo.lvae -> photo.lvae.png; the --format's suffix instead of .png)")
    d.add_argument("--format", dest="image_format", metavar="FMT",
                   help="image format: png (default), bmp, tiff, ppm, pgm, webp (lossless unless --quality), "
                   "jpeg or avif (lossy: need --quality); default: the suffix of -o, else png")
    d.add_argument("--quality", type=quality_arg, metavar="Q",
                   help="quality 1-100 of a lossy format (JPEG, AVIF, or WebP, which is lossless without it)")
    prefix = d.add_mutually_exclusive_group()
    prefix.add_argument("--latents", type=nonnegative_int, metavar="K",
                        help="decode only the first K latent strings (coarse to fine): a coarser image")
    prefix.add_argument("--progressive", action="store_true",
                        help="write one image per prefix: <output stem>-k<K><suffix> for K = 0 ... the strings held")
    d.add_argument("--lmb", type=positive_float, metavar="X",
                   help="the member of a fixed-λ family that made the QRes-VAE authors' files (which record "
                   "neither model nor λ; give --model too); other files name theirs, and are refused if coded "
                   "at another λ")
    d.add_argument("--ignore-weights-mismatch", action="store_true",
                   help="decode a file made with other weights of its model anyway (usually a wrong image)")
    d.add_argument("--figure", metavar="FIG", type=figure_path,
                   help="with --progressive: also draw every prefix, with its bpp, in one figure "
                   "(PNG, PDF or SVG, as its suffix says)")
    add_model_options(d, "refuse files not made by this model (default: the model the file names)")

    t = sub.add_parser(
        "truncate",
        help="cut a .lvae file to its first latent strings (a smaller file of a coarser image)",
        description="Write a smaller, valid file holding the first K latent strings of FILE "
        "(decoded, it gives `decompress --latents K` of the whole file, bit for bit).",
    )
    t.add_argument("file", metavar="FILE")
    t.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="output file (its folder is created if needed)")
    t.add_argument("-f", "--force", action="store_true", help="overwrite an existing output (never the input)")
    size = t.add_mutually_exclusive_group(required=True)
    size.add_argument("--latents", type=nonnegative_int, metavar="K", help="keep the first K latent strings")
    size.add_argument("--bytes", type=positive_int, metavar="N", help="keep the longest prefix whose file fits N bytes")

    c.set_defaults(handler=compress)
    d.set_defaults(handler=decompress)
    t.set_defaults(handler=truncate_file)


# The models whose authors wrote files of their own layout, which `--format legacy` writes (each
# model's legacy_layout_models): named here so that the check needs no model built (no torch).
AUTHORS_LAYOUT_MODELS = (LEGACY_MODEL, "qres34m", "qres17m", "qres34m_lossless")


def legacy_format_problem(args: argparse.Namespace) -> str | None:
    """Why ``compress --format legacy`` cannot write the model's file (a usage error), or None."""
    name = compress_model_name(args)
    if args.format != "legacy" or name in AUTHORS_LAYOUT_MODELS:
        return None
    return (f"--format legacy is the authors' layout of {', '.join(AUTHORS_LAYOUT_MODELS)} only (it records no "
            f"model name), not of {name}; use --format lvae")


def compress_model_name(args: argparse.Namespace) -> str:
    """--model, else qarv_base for the authors' layout (the only model it holds), else the default."""
    if args.model:
        return args.model
    return LEGACY_MODEL if args.format == "legacy" else DEFAULT_MODEL


def rate_option(args: argparse.Namespace) -> str | None:
    """The rate option of ``compress`` given (``--lmb``, ``--bpp``, ``--bytes``, ``--psnr``), or None."""
    return next((f"--{flag}" for flag in ("lmb", "bpp", "bytes", "psnr") if getattr(args, flag) is not None), None)


def decoded_exactly(res: CompressResult) -> bool:
    """Whether the file decoded to its 8-bit source exactly, read from ``res.psnr`` (measured on the decoded
    image rounded to 8 bits, against the float32 source: float noise alone keeps it above 140 dB): one
    sample one level off would make the squared errors add up to at least one level², in 8-bit units."""
    samples = res.width * res.height * (1 if res.colour == "gray" else 3)
    return math.isinf(res.psnr) or 10 ** (-res.psnr / 10) * samples * 255**2 < 0.5


def lossless_rate_problem(name: str, option: str) -> str:
    return (f"{option} applies to a lossy model; {name} codes every image losslessly (no λ, no rate target: each "
            "file is as long as its image needs)")


def compress(args: argparse.Namespace) -> int:
    from ..eval.bound import is_bound_model
    from ..eval.lossless import is_lossless_model

    models = Models(args.weights, args.device)
    outputs = Outputs(args.output, args.out_dir, SUFFIXES[args.format], args.force)
    model_name = compress_model_name(args)
    if is_bound_model(model_name):  # a usage error, before any model is built or file touched
        write_line(f"{PROG}: error: --model {model_name} measures an upper bound on the rate–distortion function "
                   f"R(D) of images; it is not a codec and compresses nothing (measure the bound: eval-var-rate.py "
                   f"--model {model_name})", sys.stderr)
        return EXIT_USAGE
    rate = rate_option(args)
    if rate is not None and is_lossless_model(model_name):
        write_line(f"{PROG}: error: {lossless_rate_problem(model_name, rate)}", sys.stderr)
        return EXIT_USAGE
    if args.lmb is not None and args.weights is None:
        # A fixed-λ family codes at its members' λ only: a usage error, before any file is touched.
        problem = family_member_problem(model_name, args.lmb)
        if problem is not None:
            write_line(f"{PROG}: error: --lmb {args.lmb:g}: {problem}", sys.stderr)
            return EXIT_USAGE
    bf16_pending = [args.bf16_encoder]  # settled once, on the model's first load

    def encode(src: Path, out: Path) -> tuple[CompressionMixin, CompressResult]:
        """The model (loaded on first use) and what it wrote of ``src`` to ``out``."""
        model = models.get(model_name, args.lmb)
        if model.lossless and rate is not None:  # a lossless model registered outside lvae
            raise ValueError(lossless_rate_problem(model_name, rate))
        if bf16_pending[0]:
            use_bf16_encoder(model)  # or one warning line and float32
            bf16_pending[0] = False
        from tqdm import tqdm

        # Each step (an encode; a forward pass of a target's search), drawn as it is taken on one
        # line of stderr when it is a terminal: a rate target takes several steps.
        with tqdm(desc=str(src), bar_format="{desc}: {n_fmt} steps [{elapsed}]{postfix}", disable=None,
                  leave=False, mininterval=0, file=sys.stderr) as bar:
            interrupt.State.bar = interrupt.State.bar or not bar.disable

            def progress(line: str) -> None:
                bar.set_postfix_str(line, refresh=False)
                bar.update()

            return model, model.compress_file(
                src,
                out,
                lmb=args.lmb,
                target_bpp=args.bpp,
                target_bytes=args.bytes,
                target_psnr=args.psnr,
                format=args.format,
                progress=progress,
            )

    def job(src: Path) -> str:
        from ..io import reading_ahead

        check_input(src)
        out = outputs.path_for(src)
        # The first model imports torch and is built (seconds, in Python): a large image is read
        # meanwhile, in a thread (docs/speed.md, "Large photos"); compress_file takes what it read, or
        # the error it met. A small one is read after: the thread costs torch's import some 0.07 s.
        ahead = models.empty() and src.stat().st_size >= READ_AHEAD_BYTES
        with reading_ahead(src) if ahead else contextlib.nullcontext():
            model, res = encode(src, out)
        outputs.done(out)
        if res.alpha_dropped:
            warn(src, "its transparency (alpha channel) was dropped: lvae codes the colours only")
        gray = ", gray" if res.colour == "gray" else ""
        if model.lossless and not decoded_exactly(res):  # the library's promise, checked on the file written
            out.unlink(missing_ok=True)
            raise RuntimeError(f"the lossless file decodes to {res.psnr:.2f} dB, not to the source exactly: it was "
                               "removed; please report it")
        quality = "lossless" if model.lossless else f"PSNR {res.psnr:.2f} dB"
        lmb = "" if model.lossless else f", lmb {res.lmb:.4g}"  # a lossless model has no λ to choose
        return (
            f"{src} -> {res.path}: {res.num_bytes} bytes, {res.bpp:.4f} bpp, {quality}, "
            f"{model_name}{lmb}, {res.width}x{res.height}{gray}"
        )

    return run_files(args.images, "compress", job)


def decode(model: CompressionMixin, data: bytes, num_latents: int | None, ignore_weights_mismatch: bool):
    """``model.decompress``, its advice on other weights given in the command's terms."""
    try:
        return model.decompress(data, num_latents=num_latents, ignore_weights_mismatch=ignore_weights_mismatch)
    except BitstreamError as exc:
        text = str(exc)
        if "ignore_weights_mismatch" not in text:
            raise
        head = text.split("; decode it with", 1)[0]
        raise BitstreamError(f"{head}; decode it with the weights that made it (--weights FILE), or pass "
                             "--ignore-weights-mismatch to decode it anyway (usually a wrong image)") from None


def file_maker(header: Header, model: str | None, lmb: float | None, weights: str | None
               ) -> tuple[str, float | None]:
    """The model, and the λ of the member, that decode a file: those it names (checked against
    ``--model`` and ``--lmb``). The QRes-VAE authors' files name neither: ``--model`` says which,
    and ``--lmb`` which member (needed when the family's published weights decode it)."""
    if header.format == "pickle":
        if model is None:
            raise BitstreamError("the file is in the QRes-VAE authors' layout, which records neither model nor λ: "
                                 "give --model (e.g. qres34m) and --lmb (the member that made it)")
        members = model_lambdas(model) if model in list_models() else None
        if lmb is None and weights is None and members is not None:
            raise BitstreamError(f"the file is in the QRes-VAE authors' layout, which records no λ: give --lmb, "
                                 f"the member of {model} that made it (λ ∈ {format_lambdas(members)})")
        return model, lmb
    made_by = header.model_name or LEGACY_MODEL
    if model is not None and model != made_by:
        raise BitstreamError(f"made by model {made_by!r}, not by {model!r}")
    if lmb is not None and not (math.isfinite(header.lmb) and abs(lmb - header.lmb) <= 1e-6 * header.lmb):
        raise BitstreamError(f"coded at λ={header.lmb:g}, not at --lmb {lmb:g}")
    return made_by, header.lmb


def lossless_format_problem(src: Path, fmt: ImageFormat, latents: int | None) -> str | None:
    """Why ``src``, decoded whole, cannot be written in ``fmt``: a lossless file in a lossy format
    (a usage error); None otherwise, and for a file that cannot be read (its error comes later)."""
    if fmt.lossless:
        return None
    try:
        header = read_header(src.read_bytes())
    except (OSError, ValueError):
        return None
    if not header.lossless or (latents is not None and latents < len(header.string_lengths)):
        return None
    return (f"{src} is a lossless file: it decodes to its source exactly, and {fmt.describe()} would lose that; "
            "write a lossless format (PNG, TIFF, BMP, PPM, or WebP without --quality)")


def decompress(args: argparse.Namespace) -> int:
    from ..eval.plot import figure_written_by_lvae
    from ..io import save_image, tensor_to_image

    fmt: ImageFormat = args.image_format_resolved
    for item in args.files:  # before anything is decoded or written
        problem = lossless_format_problem(Path(item), fmt, args.latents)
        if problem is not None:
            write_line(f"{PROG}: error: {problem}", sys.stderr)
            return EXIT_USAGE
    models = Models(args.weights, args.device)
    outputs = Outputs(args.output, args.out_dir, fmt.suffix, args.force, keep_name=True)

    def job(src: Path) -> str | None:
        check_input(src)
        out = outputs.path_for(src)
        data = src.read_bytes()
        header = read_header(data)
        made_by, lmb = file_maker(header, args.model, args.lmb, args.weights)
        colour = header.colour if header.format == "lvae" else "rgb"
        if fmt.name == "pgm" and colour != "gray":
            raise ValueError("the file holds a colour image and PGM holds grayscale only; write .ppm or .png")
        pixels = header.height * header.width
        if args.progressive:
            if header.format != "lvae":
                raise BitstreamError("the authors' layout cannot be decoded progressively; it holds no prefixes")
            paths = [out.with_name(f"{out.stem}-k{k}{out.suffix}") for k in range(header.num_strings + 1)]
            for path in paths:  # all checked before decoding any
                claim_output(path, args.force, written_by_lvae, IMAGE_LVAE_WROTE, "-o or --out-dir")
            figure = Path(args.figure) if args.figure else None
            if figure is not None:
                claim_output(figure, args.force, figure_written_by_lvae, "a figure", "--figure")
            model = models.get(made_by, lmb)
            shown, labels = [], []
            for k, path in enumerate(paths):
                prefix_bytes = len(truncate(data, k))
                img = decode(model, data, k, args.ignore_weights_mismatch)
                # Each line is printed as soon as its image is written; Ctrl-C waits for the pair,
                # so that every image on disk has had its line.
                with interrupt.deferred():
                    saved = save_image(img, path, format=fmt.name, quality=fmt.quality)
                    write_line(f"{src} -> {path}: {k} of {header.num_latents} latents, {prefix_bytes} bytes, "
                               f"{8 * prefix_bytes / pixels:.4f} bpp, {saved.describe()}")
                if args.figure:
                    shown.append(tensor_to_image(img).convert("RGB"))
                    labels.append(f"{k} of {header.num_latents} latents: {8 * prefix_bytes / pixels:.4f} bpp")
            outputs.done(out)
            if figure is not None:
                from ..eval.plot import plot_progressive

                with interrupt.deferred():
                    plot_progressive(shown, labels, figure, title=f"{src.name}: {made_by}, λ = {header.lmb:.4g}")
                    write_line(f"{src} -> {figure}: figure of the {len(shown)} prefixes")
            return None
        model = models.get(made_by, lmb)
        img = decode(model, data, args.latents, args.ignore_weights_mismatch)
        saved = save_image(img, out, format=fmt.name, quality=fmt.quality)
        outputs.done(out)
        used = len(data) if args.latents is None else len(truncate(data, args.latents))
        latents = "" if args.latents is None else f", {args.latents} of {header.num_latents} latents"
        if header.lossless and (args.latents is None or args.latents >= len(header.string_lengths)):
            latents += ", lossless: the source exactly"
        return (f"{src} -> {out}: {used} bytes, {8 * used / pixels:.4f} bpp, {header.width}x{header.height}{latents}, "
                f"{saved.describe()}")

    return run_files(args.files, "decompress", job)


def truncate_file(args: argparse.Namespace) -> int:
    from ..io import atomic_write_bytes

    src, out = Path(args.file), Path(args.output)
    try:
        check_input(src)
        if out.exists() and same_file(out, src):
            raise FileExistsError(f"the output {out} would overwrite the input; choose another with -o")
        claim_output(out, args.force, coded_by_lvae, "a coded file", "-o")
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
        make_folder(out.parent)
        atomic_write_bytes(out, cut)
    except Exception as exc:  # noqa: BLE001
        report_error(src, exc)
        return EXIT_FAILED
    k = read_header(cut).num_strings
    write_line(f"{src} -> {out}: {k} of {header.num_latents} latents, {len(cut)} bytes, "
               f"{8 * len(cut) / (header.width * header.height):.4f} bpp")
    return EXIT_OK
