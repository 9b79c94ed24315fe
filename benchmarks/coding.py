"""Encode/decode speed, peak memory and file-size overhead of qarv_base (or qres34m) on one Kodak-sized image.

    python benchmarks/coding.py [IMAGE] [--model qarv_base|qres34m] [--repeats 5] [--lmb 181]
                                [--ratio-lmbs 16,181,2048] [--device cpu|cuda] [--json OUT.json]
    python benchmarks/coding.py [IMAGE] [--model ...] --compare REV [--repeats 5] [--lmb 181]
    python benchmarks/coding.py [IMAGE] [--model ...] [--compare REV] --authors PATH [--repeats 5] [--lmb 181]

``--model`` (default ``qarv_base``) picks the network. ``qres34m`` is a fixed-λ family: ``--lmb``
picks the member, one of its published λ (default 64), and the file/estimate table has that λ only.

The model has the fixed reference weights of :mod:`lvae.models.fixed_weights` (no download needed), so its
rates are not those of the published model; the timings are. Without IMAGE a smooth random
512×768 image is synthesised (seeded). Times are medians of ``--repeats`` runs after one warm-up,
on the CPU and, when present, on CUDA (``--device`` picks one). ``encode`` is ``model.compress``, ``decode`` is
``model.decompress``, ``forward`` is the eval-mode forward pass that estimates the rate.
``file/est`` compares the real file's bits (header included) with the model's estimate
``bpp × H × W``. ``--json`` also writes both tables to a file. All three use torch's thread count (older
trees coded on ``lvae.models.qarv.CODING_THREADS`` threads; the machine line shows it when set).

``--compare REV`` (CPU) times ``encode`` and ``decode`` of this tree against the ``lvae`` package of
git revision REV (``git archive`` into a temporary folder; a folder holding an ``lvae`` package
works too). Each variant runs in its own subprocess with ``PYTHONPATH`` at its tree; the
subprocesses take turns call by call (old, new, old, new, ...) so that a machine whose load changes
affects all alike. Printed: medians, min/max and each variant's speed-up ``REV median / variant
median``. Where this tree's QARV runs its bfloat16 encoder (AVX-512 BF16 or AMX), it is also timed
with it ("new, bf16 encoder"). When REV's ``lvae.models.qarv`` has ``CODING_THREADS`` (coding
pinned to one CPU thread), REV is timed as it is and with ``CODING_THREADS = None`` (all threads),
separating the thread gain from the rest.

``--authors PATH`` (CPU; with or without ``--compare``) also times the QARV authors' own
``qarv_base``: PATH is a clone of https://github.com/duanzhiihao/lossy-vae (it needs timm:
``pip install -e '.[bench]'``). Their package is also called ``lvae``, so it runs in
benchmarks/authors_worker.py with ``PYTHONPATH=PATH`` alone and never sees this tree's. This
script saves the state dict of this tree's ``qarv_base`` (fixed reference weights) to a temporary
file; the worker loads it strictly into their ``qarv_base()`` and times their ``compress(image,
lmb=λ)`` and ``decompress``, taking turns with the other variants. λ is this tree's (``--lmb``,
else its default √(16·2048) ≈ 181.02), passed explicitly to every variant (the authors' own
default is 2048). A sanity check is printed first: the authors' bytes against this tree's
``compress(..., format="legacy")`` (their layout: λ, grid, string lengths, latent strings) byte
for byte, and the largest difference between the two decoded images (float noise: ≤ 1e-4).
Strings that differ are decoded with this tree's decoder: the same image as from this tree's
own file means the same latent symbols, coded with a neighbouring table where a prior scale
lies on a table boundary (the two round it differently; README, "Decoding on any machine"),
which is reported with ``!!!`` but still the same computation. Other latent symbols, or decoded
images further apart than float noise, fail the check: ``!!! SANITY CHECK FAILED`` before and
after the table, and the exit status is 1. Column ``vs authors``: that variant's median / the
authors' median (below 1: faster than the authors' code).

With ``--model qres34m``, ``--authors`` times the QRes-VAE authors' ``qres34m(lmb=λ)`` from the same
clone (``lvae/models/qresvae/zoo.py``; it needs timm and compressai too), loaded strictly with this
tree's λ member's state dict (fixed reference weights), timing their ``compress(image)`` and
``decompress(...)``. Their file is the pickle their ``compress_file`` writes (``compress``'s list,
then the image's height and width, pickle's default protocol); it is compared with this tree's
``compress(..., format="legacy")`` byte for byte, string for string, and the decoded images must
agree within 1e-5.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from worker_protocol import TAG, answer, serve  # benchmarks/: this script's folder

import lvae
from lvae.bitstream import read_header

try:
    from lvae.models.fixed_weights import load_fixed_reference_weights
except ImportError:  # --compare runs this script against older trees too (before the package was regrouped)
    from lvae.testing import load_fixed_reference_weights  # type: ignore[no-redef]

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


# -- memory ------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _maxrss_kib() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB on Linux


def _reset_high_water_mark() -> bool:
    """Linux ≥ 4.0: writing 5 to clear_refs resets the process's peak RSS to its current RSS."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _malloc_trim() -> None:
    """glibc keeps freed heap pages; hand them back so that RSS before a call is its live memory."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class CpuPeak:
    """Peak resident memory that one call adds on top of what the process held before it."""

    def __init__(self):
        self.exact = _reset_high_water_mark() and _status_kib("VmRSS") is not None
        self.method = (
            "resource ru_maxrss during the call (peak reset via /proc/self/clear_refs, freed heap "
            "trimmed first) minus RSS before it"
            if self.exact
            else "growth of resource ru_maxrss (monotone: 0 when an earlier step peaked higher)"
        )

    def measure(self, fn: Callable[[], object]) -> float:
        if self.exact:
            _malloc_trim()
            before = _status_kib("VmRSS")
            _reset_high_water_mark()
        else:
            before = _maxrss_kib()
        fn()
        return max(_maxrss_kib() - before, 0) / 1024  # MiB


def cuda_peak(fn: Callable[[], object], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


# -- timing --------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


# -- inputs ----------------------------------------------------------------------------------------------
def smooth_image(height: int = 512, width: int = 768, seed: int = 0) -> torch.Tensor:
    """Random low-frequency colour fields plus a little fine noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    im = torch.zeros(1, 3, height, width)
    for cells, weight in ((4, 0.5), (16, 0.3), (64, 0.15)):
        coarse = torch.rand(1, 3, cells, cells * width // height, generator=g)
        im += weight * F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    im += 0.02 * torch.randn(1, 3, height, width, generator=g)
    return im.clamp(0, 1)


def load_input(path: str | None) -> tuple[torch.Tensor, str]:
    if path is None:
        return smooth_image(), "synthetic smooth random image (seed 0)"
    from lvae.io import load_image

    im = load_image(path)
    h, w = im.shape[2:]
    h64, w64 = h - h % 64, w - w % 64
    if h64 == 0 or w64 == 0:
        raise SystemExit(f"{path}: the image must be at least 64×64")
    top, left = (h - h64) // 2, (w - w64) // 2
    note = "" if (h64, w64) == (h, w) else f", centre-cropped from {w}x{h} to multiples of 64"
    return im[:, :, top : top + h64, left : left + w64].contiguous(), f"{path}{note}"


def cpu_line() -> str:
    """The CPU, its instruction sets (AVX2 / AVX-512 / AVX512-BF16 / AMX; oneDNN's limit when set)
    and the CPU paths this tree chose from them: printed with every table."""
    from lvae.models.layers import cpu_paths  # this tree's lvae (never an old tree's: main process only)
    from lvae.utils.system import cpu_info

    paths = "; ".join(f"{k}: {v}" for k, v in cpu_paths().items())
    return f"CPU: {cpu_info().describe()}; ATen {torch.backends.cpu.get_cpu_capability()}; {paths}"


def machine_description() -> str:
    from lvae.utils.system import cpu_info

    try:
        load = " load average {:.1f} {:.1f} {:.1f},".format(*os.getloadavg())
    except OSError:
        load = ""
    from lvae.models import qarv

    coding = getattr(qarv, "CODING_THREADS", None) or torch.get_num_threads()
    info = cpu_info()
    return (
        f"{info.model}, {info.logical_cpus} logical CPUs,{load} torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads (CPU encode/decode: {coding}), Python {platform.python_version()}\n"
        f"{cpu_line()}"
    )


# -- the benchmark ---------------------------------------------------------------------------------------
def bench_device(model, im, device, lmb, repeats, cpu_peak: CpuPeak) -> list[tuple]:
    model.to(device)
    x = im.to(device)
    data = model.compress(x, lmb)  # warm-up
    model.decompress(data)
    with torch.no_grad():
        model(x, lmb)

    @torch.no_grad()
    def forward():
        return model(x, lmb)

    ops = {"encode": lambda: model.compress(x, lmb), "decode": lambda: model.decompress(data), "forward": forward}
    rows = []
    for name, fn in ops.items():
        if device.type == "cuda":
            peak = cuda_peak(fn, device)
        else:
            peak = cpu_peak.measure(fn)
        times = timed(fn, device, repeats)
        rows.append((device.type, name, statistics.median(times), min(times), max(times), peak))
    return rows


def bits_ratios(model, im, lmbs: list[float]) -> list[tuple]:
    h, w = im.shape[2:]
    x = im.to(next(model.parameters()).device)
    rows = []
    for lmb in lmbs:
        with torch.no_grad():
            out = model(x, lmb)
        est_bits = float(out["bpp"]) * h * w
        data = model.compress(x, lmb)
        decoded = model.decompress(data)
        psnr = -10 * torch.log10((decoded - x).pow(2).mean()).item()
        header = len(data) - read_header(data).num_bytes_strings
        rows.append((lmb, est_bits / (h * w), 8 * len(data) / (h * w), 8 * len(data) / est_bits, header, psnr))
    return rows


# -- old vs new ------------------------------------------------------------------------------------------
WORKER_TAG = TAG  # benchmarks/worker_protocol.py: the answers of every worker, ours and the authors'
ROOT = Path(__file__).resolve().parent.parent
AUTHORS_WORKER = Path(__file__).resolve().with_name("authors_worker.py")
AUTHORS_REPO = "https://github.com/duanzhiihao/lossy-vae"
FLOAT_NOISE = 1e-4  # largest difference between the decoded images that counts as float noise
QRES_FLOAT_NOISE = 1e-5  # the same for QRes-VAE (the authors' pickled layout)
#: The models --model offers, and the file of the authors' repository that defines each.
MODELS = {"qarv_base": "lvae/models/qarv/zoo.py", "qres34m": "lvae/models/qresvae/zoo.py"}
#: A small model of the same class, to ask whether this tree's encoder runs in bfloat16 here.
TINY = {"qarv_base": "qarv_tiny", "qres34m": "qres_tiny"}


def member_lambda(name: str, lmb: float | None) -> float | None:
    """``lmb`` checked against a fixed-λ family's published members (its default member when None);
    unchanged for a variable-rate model. A ValueError names the published set."""
    from lvae.models.registry import default_member, model_lambdas

    lambdas = model_lambdas(name)
    if lambdas is None:
        return lmb
    if lmb is None:
        return default_member(name)
    for v in lambdas:
        if abs(lmb - v) <= 1e-6 * v:
            return float(v)
    raise ValueError(f"{name} is a fixed-λ family: --lmb must be one of its published λ "
                     "{" + ", ".join(f"{v:g}" for v in lambdas) + f"}}, not {lmb:g}")


def load_model(name: str, lmb: float | None = None):
    """This tree's ``name`` with the fixed reference weights, in eval mode (for a fixed-λ family, member ``lmb``)."""
    if name == "qarv_base":  # as older trees build it (--compare)
        return load_fixed_reference_weights(lvae.get_model("qarv_base")).eval()
    return load_fixed_reference_weights(lvae.get_model(name, lmb=lmb)).eval()


def worker(image: str | None, lmb: float | None, all_coding_threads: bool, bf16_encoder: bool = False,
           model_name: str = "qarv_base") -> int:
    """Subprocess side of --compare: warm up, then time one op per line read from stdin."""
    from lvae.models import qarv

    coding = getattr(qarv, "CODING_THREADS", "absent")
    if all_coding_threads:
        qarv.CODING_THREADS = None
    im, _ = load_input(image)
    try:
        model = load_model(model_name, lmb)
    except Exception as e:  # e.g. an older tree (--compare) without this model: one line
        answer(f"error the lvae at {Path(lvae.__file__).parent} cannot build {model_name}: {type(e).__name__}: {e}")
        return 2
    if bf16_encoder:
        model.set_encoder_precision("bfloat16")
    lmb = model.default_lmb if lmb is None else lmb
    data = model.compress(im, lmb)  # warm-up
    model.decompress(data)
    ops = {"encode": lambda: model.compress(im, lmb), "decode": lambda: model.decompress(data)}
    answer(f"ready {Path(lvae.__file__).parent} CODING_THREADS={coding}"
           f"{' -> None' if all_coding_threads else ''} threads={torch.get_num_threads()} bytes={len(data)}")
    return serve(ops)


class Worker:
    def __init__(self, label: str, pythonpath: Path, args: list[str]):
        self.label = label
        env = dict(os.environ, PYTHONPATH=str(pythonpath))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._reply()

    def _reply(self) -> str:
        for line in self.proc.stdout:
            if line.startswith(WORKER_TAG):
                reply = line[len(WORKER_TAG):].strip()
                if reply.startswith("error "):  # a readable reason, one line (authors_worker.py)
                    self.proc.wait()
                    raise SystemExit(f"coding.py: {self.label}: {reply[len('error '):]}")
                return reply
        raise SystemExit(f"benchmark subprocess for {self.label} ended early (exit code {self.proc.wait()})")

    def time(self, op: str) -> float:
        self.proc.stdin.write(op + "\n")
        self.proc.stdin.flush()
        return float(self._reply())

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:  # it has ended already
            pass
        finally:
            self.proc.wait()


class AuthorsWorker(Worker):
    """The authors' ``qarv_base`` or ``qres34m`` (benchmarks/authors_worker.py, ``PYTHONPATH`` = their clone only).

    Starting it imports their code, so a missing dependency stops the run before anything is built;
    :meth:`write_input` saves this tree's state dict, the image and λ for it, and :meth:`load` has it
    build their model and returns its warm-up output (their bytes, decoded image) for :func:`authors_check`.
    """

    def __init__(self, path: Path, tmp: Path, model: str = "qarv_base"):
        self.label = f"authors' {model}"
        self.input, self.output = tmp / "authors_input.pt", tmp / "authors_output.pt"
        env = dict(os.environ, PYTHONPATH=str(path))
        cmd = [sys.executable, str(AUTHORS_WORKER), str(path), str(self.input), str(self.output), model]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._reply()  # "imported <their lvae folder>"

    def write_input(self, state_dict: dict, image: torch.Tensor, lmb: float) -> None:
        torch.save({"state_dict": state_dict, "image": image, "lmb": float(lmb)}, self.input)

    def load(self) -> tuple[bytes, torch.Tensor]:
        self.proc.stdin.write("load\n")
        self.proc.stdin.flush()
        self.info = self._reply()  # "ready ...", after their warm-up
        out = torch.load(self.output, weights_only=True)
        return out["bits"].numpy().tobytes(), out["decoded"]


def check_authors_path(path: str, model: str = "qarv_base") -> Path:
    """``--authors PATH`` must be a clone of the authors' repository with ``model`` (one readable line otherwise)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SystemExit(f"coding.py: --authors {path}: no such folder (expected a clone of {AUTHORS_REPO})")
    if not (folder / MODELS[model]).is_file():
        raise SystemExit(f"coding.py: --authors {path}: not a clone of {AUTHORS_REPO} "
                         f"(it has no {MODELS[model]})")
    return folder.resolve()


def _legacy_file(model, data: bytes) -> tuple[list[bytes], str]:
    """The latent strings of a file in the authors' layout of ``model`` and a word on what else it holds."""
    if getattr(model, "legacy_layout", "qarv") == "pickle":
        from lvae.coding.pickled import parse_qres_legacy

        f = parse_qres_legacy(data, stride=model.max_stride)
        return f.strings, f"top feature shape {f.top_shape}, image {f.height}x{f.width}"
    from lvae.bitstream import unpack_legacy

    head, strings = unpack_legacy(data)
    return strings, f"header lambda {head.lmb:.6g}"


def authors_check(model, ours: bytes, ours_decoded: torch.Tensor, theirs_bits: bytes, theirs_decoded: torch.Tensor,
                  height: int, width: int) -> tuple[list[str], bool, bool]:
    """The authors' warm-up output against this tree's ``model``: (report lines, byte-identical, same computation).

    ``ours`` is this tree's ``compress(..., format="legacy")``: the authors' ``compress_file`` layout.
    For QARV that is their ``compress`` output behind the image's height and width (two uint16),
    and ``theirs_bits`` is their ``compress`` output; for QRes-VAE (``model.legacy_layout ==
    "pickle"``) ``theirs_bits`` is their whole file already (the authors' worker pickles it). When the
    bytes differ, this tree's decoder reads their file: the same image as from its own file means
    the same latent symbols, coded with other tables where a prior scale lies on a table boundary
    (README, "Decoding on any machine"), so the timings still compare the same computation.
    """
    from lvae import BitstreamError
    from lvae.coding.latent import trace

    pickled = getattr(model, "legacy_layout", "qarv") == "pickle"
    noise = QRES_FLOAT_NOISE if pickled else FLOAT_NOISE
    theirs = theirs_bits if pickled else struct.pack("<2H", height, width) + theirs_bits
    our_strings, _ = _legacy_file(model, ours)
    try:
        their_strings, what = _legacy_file(model, theirs)
    except BitstreamError as e:
        return [f"!!! their bytes are not in their own layout: {e}"], False, False
    lines, identical, same = [], theirs == ours, True
    if identical:
        lines.append(f"latent strings: identical to this tree's, byte for byte ({len(our_strings)} strings, "
                     f"{sum(map(len, our_strings))} bytes; the whole file too, {what})")
    else:
        differ = [f"string {i + 1}: {len(a)} vs {len(b)} bytes" for i, (a, b) in
                  enumerate(zip(our_strings, their_strings)) if a != b]
        lines.append(f"!!! latent strings: NOT identical to this tree's: {len(our_strings) - len(differ)} of "
                     f"{len(our_strings)} equal (they have {len(their_strings)}; "
                     + "; ".join(differ[:4] + (["..."] if len(differ) > 4 else []))
                     + f"); files {len(theirs)} vs {len(ours)} bytes, {what}")
        try:
            with trace() as reports:
                cross = model.decompress(theirs)
        except BitstreamError as e:
            same = False
            lines.append(f"!!! this tree's decoder cannot read their file: {e}")
        else:
            moved = sum(r.flips for r in reports)
            cross_diff = (cross.float() - ours_decoded.float()).abs().max().item()
            same = cross_diff == 0.0
            if same:
                lines.append(f"    this tree's decoder reads their file to exactly the image of its own file, moving "
                             f"{moved} table choice(s): the same latent symbols, coded with another table where a "
                             "prior scale lies on a table boundary (float rounding differs between the two)")
            else:
                lines.append(f"!!! this tree's decoder reads their file to an image {cross_diff:.2e} away from the "
                             f"one of its own file ({moved} table choices moved): other latent symbols")
    if theirs_decoded.shape != ours_decoded.shape:
        same = False
        lines.append(f"!!! decoded image: shape {tuple(theirs_decoded.shape)}, this tree's {tuple(ours_decoded.shape)}")
    else:
        diff = (theirs_decoded.float() - ours_decoded.float()).abs().max().item()
        same = same and diff <= noise
        lines.append(("" if diff <= noise else "!!! ") + f"decoded image: max abs diff {diff:.2e} from this "
                     f"tree's ({'float noise' if diff <= noise else 'MORE THAN FLOAT NOISE'}: "
                     f"limit {noise:.0e})")
    return lines, identical, same


def export_revision(rev: str, dest: Path) -> Path:
    """REV's lvae package, written under ``dest`` (``git archive``; git state is not touched)."""
    if Path(rev).is_dir():
        return Path(rev).resolve()
    archive = dest / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "lvae"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(dest / "tree", filter="data")
        except TypeError:  # Python without extraction filters; the archive is our own repository's
            tar.extractall(dest / "tree")
    return dest / "tree"


def compare(rev: str | None, image: str | None, lmb: float | None, repeats: int, authors: Path | None = None,
            model_name: str = "qarv_base") -> int:
    tmp = Path(tempfile.mkdtemp(prefix="lvae-bench-"))
    workers: list[Worker] = []
    checked: tuple[list[str], bool, bool] | None = None
    authors_label = f"authors' {model_name}"
    try:
        im, im_desc = load_input(image)
        h, w = im.shape[2:]
        their_worker = None
        if authors is not None:
            their_worker = AuthorsWorker(authors, tmp, model_name)  # first: a missing dependency stops the run
            workers.append(their_worker)
            model = load_model(model_name, lmb)
            lmb = model.default_lmb if lmb is None else lmb  # explicit for everyone: the authors' default differs
            their_worker.write_input(model.state_dict(), im, lmb)  # before this tree codes anything
            ours = model.compress(im, lmb, format="legacy")
            ours_decoded = model.decompress(ours)  # this tree reads the authors' layout too
            checked = authors_check(model, ours, ours_decoded, *their_worker.load(), h, w)
            del model
        common = (([image] if image else []) + ([f"--lmb={lmb!r}"] if lmb is not None else [])
                  + ([f"--model={model_name}"] if model_name != "qarv_base" else []))
        old_tree = export_revision(rev, tmp) if rev is not None else None
        ours_first = [Worker("new (this tree)", ROOT, common)]
        if "bfloat16" in lvae.get_model(TINY[model_name]).encoder_precisions():  # AVX-512 BF16 or AMX
            ours_first.append(Worker("new, bf16 encoder", ROOT, common + ["--bf16-encoder"]))
        workers[:0] = ours_first
        if rev is not None and old_tree is not None:
            workers.insert(len(ours_first), Worker(f"{rev}", old_tree, common))
            if "CODING_THREADS=absent" not in workers[len(ours_first)].info:
                workers.insert(len(ours_first) + 1,
                               Worker(f"{rev}, all threads", old_tree, common + ["--all-coding-threads"]))
        print(f"{model_name}, fixed reference weights; {w}x{h} {im_desc}; lambda "
              f"{'default' if lmb is None else f'{lmb:.5g}'}; median of {repeats} after 1 warm-up, "
              "variants taking turns")
        print(f"machine: {machine_description()}")
        for wk in workers:
            print(f"  {wk.label}: {wk.info}")
        if checked is not None:
            lines, identical, same = checked
            print(f"sanity check, {authors_label} (this tree's weights, loaded strictly) against this tree, "
                  "warm-up call:")
            for line in lines:
                print(f"  {line}")
            if not same:
                print("  !!! SANITY CHECK FAILED: the authors' code does not compute what this tree computes, "
                      "so the timings below do not compare like with like")
        times = {(wk.label, op): [] for wk in workers for op in ("encode", "decode")}
        for r in range(repeats):
            order = workers[r % len(workers):] + workers[: r % len(workers)]
            for op in ("encode", "decode"):
                for wk in order:
                    times[wk.label, op].append(wk.time(op))
        try:
            load = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
        except OSError:
            load = "?"
        print(f"load average after: {load}")
        print()
        print(cpu_line())
        print(f"{'variant':<24} {'op':<7} {'median s':>9} {'min s':>8} {'max s':>8}"
              + (f" {'speed-up':>9}" if rev is not None else "") + (f" {'vs authors':>10}" if authors else ""))
        for op in ("encode", "decode"):
            old = statistics.median(times[rev, op]) if rev is not None else None
            theirs_med = statistics.median(times[authors_label, op]) if authors is not None else None
            for wk in workers:
                t = times[wk.label, op]
                med = statistics.median(t)
                row = f"{wk.label:<24} {op:<7} {med:>9.3f} {min(t):>8.3f} {max(t):>8.3f}"
                if old is not None:
                    row += f" {old / med:>8.2f}x"
                if theirs_med is not None:
                    row += f" {med / theirs_med:>9.2f}x"
                print(row)
        if rev is not None:
            print(f"speed-up: {rev}'s median / that variant's median (how many times faster than {rev})")
        if authors is not None:
            print("vs authors: that variant's median / the authors' median (below 1: faster than the authors' code)")
            if checked is not None and not checked[2]:
                print("!!! SANITY CHECK FAILED (see above): the authors' row is not the same computation")
                return 1
            if checked is not None and not checked[1]:
                print("!!! the authors' latent strings are not byte for byte this tree's (see above)")
    finally:
        for wk in workers:
            wk.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?", help="image to code (default: a synthetic 512x768 image)")
    parser.add_argument("--model", choices=tuple(MODELS), default="qarv_base",
                        help="the network (default: qarv_base); qres34m is a fixed-λ family: --lmb picks the member")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per operation (default: 5)")
    parser.add_argument("--lmb", type=float, default=None,
                        help="λ of the timed runs (default: the model's); for qres34m, one of its published λ "
                             "(default 64)")
    parser.add_argument("--ratio-lmbs", default="16,default,2048", help="λ values of the file/estimate table")
    parser.add_argument("--no-cuda", action="store_true", help="time the CPU only")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="time this device only (default: CPU, and CUDA if present)")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    parser.add_argument("--compare", metavar="REV", help="time encode/decode against git revision REV's lvae (CPU)")
    parser.add_argument("--authors", metavar="PATH",
                        help=f"also time the authors' own model (--model) from PATH, a clone of {AUTHORS_REPO} (CPU)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--all-coding-threads", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bf16-encoder", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.image, args.lmb, args.all_coding_threads, args.bf16_encoder, args.model)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        args.lmb = member_lambda(args.model, args.lmb)
    except ValueError as e:
        parser.error(str(e))
    if args.device == "cuda" and (args.no_cuda or not torch.cuda.is_available()):
        parser.error("--device cuda: " + ("--no-cuda was given too" if args.no_cuda else "CUDA is not available here"))
    if args.compare or args.authors:
        authors = check_authors_path(args.authors, args.model) if args.authors else None
        return compare(args.compare, args.image, args.lmb, args.repeats, authors, args.model)

    im, source = load_input(args.image)
    model = load_model(args.model, args.lmb)
    model.compress_mode(True)
    lmb = model.default_lmb if args.lmb is None else args.lmb
    ratio_lmbs = [model.default_lmb if v == "default" else float(v) for v in args.ratio_lmbs.split(",")]
    if model.lmb_range[0] == model.lmb_range[1]:  # one member of a fixed-λ family: it codes at its own λ only
        if args.ratio_lmbs == parser.get_default("ratio_lmbs"):
            ratio_lmbs = [lmb]
        elif any(abs(v - lmb) > 1e-6 * lmb for v in ratio_lmbs):
            parser.error(f"--ratio-lmbs: {args.model}'s λ={lmb:g} member codes at λ={lmb:g} only")

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    if args.device is not None:
        devices = [torch.device(args.device)]
    cpu_peak = CpuPeak()
    h, w = im.shape[2:]
    print(f"{args.model}, fixed reference weights; {w}x{h} {source}; lambda {lmb:.5g}; "
          f"median of {args.repeats} after 1 warm-up")
    print(f"machine: {machine_description()}")
    cuda_name = torch.cuda.get_device_name(0) if any(d.type == "cuda" for d in devices) else None
    if cuda_name:
        print(f"cuda: {cuda_name}")
    print(f"CPU peak memory: {cpu_peak.method}; CUDA peak: torch.cuda.max_memory_allocated minus allocated before")
    print()

    rows = []
    for device in devices:
        rows += bench_device(model, im, device, lmb, args.repeats, cpu_peak)
    print(cpu_line())
    print(f"{'device':<7} {'op':<8} {'median s':>9} {'min s':>8} {'max s':>8} {'peak MiB':>9} {'Mpx/s':>7}")
    for dev, op, med, lo, hi, peak in rows:
        print(f"{dev:<7} {op:<8} {med:>9.3f} {lo:>8.3f} {hi:>8.3f} {peak:>9.0f} {h * w / 1e6 / med:>7.3f}")
    print()

    model.to(devices[-1])
    print(f"file size vs the model's estimate (on {devices[-1].type}):")
    print(f"{'lambda':>8} {'est bpp':>9} {'file bpp':>9} {'file/est':>9} {'header B':>9} {'PSNR dB':>8}")
    ratios = bits_ratios(model, im, ratio_lmbs)
    for lm, est, real, ratio, header, psnr in ratios:
        print(f"{lm:>8.5g} {est:>9.4f} {real:>9.4f} {ratio:>9.4f} {header:>9d} {psnr:>8.2f}")
    if args.json:
        report = {
            "model": f"{args.model} (fixed reference weights)", "image": source, "height": h, "width": w,
            "lambda": lmb, "repeats": args.repeats, "machine": machine_description(), "cuda_device": cuda_name,
            "timings": [
                {"device": dev, "op": op, "median_s": med, "min_s": lo, "max_s": hi, "peak_mib": peak,
                 "mpx_per_s": h * w / 1e6 / med}
                for dev, op, med, lo, hi, peak in rows
            ],
            "ratio_device": devices[-1].type,
            "file_vs_estimate": [
                {"lambda": lm, "est_bpp": est, "file_bpp": real, "file_over_est": ratio, "header_bytes": header,
                 "psnr_db": psnr}
                for lm, est, real, ratio, header, psnr in ratios
            ],
        }
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
