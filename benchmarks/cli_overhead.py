"""What ``lvae compress`` costs beyond its encode and decode, from small to large photos (issue 26).

    python benchmarks/cli_overhead.py [--sizes 0.4,2,8,24] [--repeats 3] [--large-mp 16 --large-repeats 1]
                                      [--model NAME] [--tree PATH] [--compare TREE] [--format png]
                                      [--images DIR] [--breakdown]

For each size, an image is made from tests/data/kodak24/kodim01.webp (resized with Pillow, its
aspect kept, saved as PNG by default) in a temporary folder (or ``--images DIR``, reused when it
holds them). Then, in turn, ``--repeats`` times (``--large-repeats`` from ``--large-mp``
megapixels up):

- ``lvae compress IMAGE -o OUT -f`` (``--model`` if given) in a fresh process: its wall time, seen
  from outside (interpreter start to exit). The command is a copy of the console script pip
  writes, run with the tree under test first on ``PYTHONPATH`` and its bytecode cached as an
  installed package's is (``PYTHONPYCACHEPREFIX``; the first run, a warm-up, writes it);
- in one long-lived worker process (the model built once, warmed up on the smallest image), the
  same image: ``read_image`` (the read), ``model.compress`` (encode: the input check, padding,
  the network, the entropy coder, the container), ``model.decompress`` of those bytes (decode) and
  ``delivered_psnr`` (the PSNR the command prints). The worker also checks that the command wrote
  the same bytes.

The table gives medians: CLI wall, encode, decode, overhead = CLI wall - encode - decode (start-up,
torch's import, the model's load, reading, the PSNR, writing, exit, and what a first call costs
more than a warm one), overhead as a percentage of encode + decode (issue 26's goal: under 15 %),
and the CLI's seconds per megapixel; the worker's read and PSNR times are shown beside them.
Runs of the command and of the worker alternate, so that a change in the machine's load affects
both alike; the header gives the CPU and the load average, which on a shared machine moves every
number: compare medians, and rerun. A default run took 2.5 minutes on 2 cores (``--compare``: twice that).

``--breakdown`` runs instead the command itself with timestamps (the same console script, its
functions wrapped from outside: ``load_model``, ``read_image``, ``_encode``, ``decompress``,
``delivered_psnr``, ``atomic_write_bytes``) and prints where its wall time goes, phase by phase
(medians of ``--repeats`` runs): start-up (interpreter and ``import lvae.cli``), the checks before
the model, the model's load (torch's import and the network; an image read ahead runs beside it),
the read (what is left of it), the steps before the encode (input check), encode, decode, PSNR,
write, the line printed, and the interpreter's exit. Works on older trees too (``--tree``).

``--compare TREE`` measures a second source tree the same way (a ``git worktree add /tmp/old REV``
of an older commit), its runs interleaved with those of ``--tree``, so that both see the same
machine: before and after, side by side.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "data" / "kodak24" / "kodim01.webp"
GOAL_PERCENT = 15.0

# The console script `lvae` as pip writes it; run with the tree under test first on sys.path.
CONSOLE_SCRIPT = "import sys\nfrom lvae.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n"


# -- the worker: the same work in-process, timed piece by piece ----------------------------------------
def worker(model_name: str) -> None:
    """Read one JSON request per line on stdin ({"image", "cli_output"}), answer one JSON line."""
    import torch

    import lvae
    from lvae.coding.codec import delivered_psnr
    from lvae.io import read_image

    model = lvae.get_model(model_name, pretrained=True).eval()
    print(json.dumps({"lvae": lvae.__file__, "torch": torch.__version__, "threads": torch.get_num_threads()}),
          flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        t0 = time.perf_counter()
        im = read_image(request["image"]).tensor
        t1 = time.perf_counter()
        data = model.compress(im)
        t2 = time.perf_counter()
        decoded = model.decompress(data)
        t3 = time.perf_counter()
        quality = delivered_psnr(decoded, im)
        t4 = time.perf_counter()
        out = request.get("cli_output")
        same = None if not out else Path(out).read_bytes() == data
        print(json.dumps({"read": t1 - t0, "encode": t2 - t1, "decode": t3 - t2, "psnr_s": t4 - t3,
                          "psnr": quality, "bytes": len(data), "same_file": same}), flush=True)
        del im, decoded, data


class Worker:
    def __init__(self, env: dict[str, str], model: str):
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", "--model", model], env=env,
                                     cwd=Path(env["PYTHONPYCACHEPREFIX"]).parent, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.info = self._answer()

    def _answer(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"cli_overhead.py: the worker exited ({self.proc.wait()})")
        return json.loads(line)

    def measure(self, image: Path, cli_output: Path | None = None) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"image": str(image), "cli_output": str(cli_output or "")}) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


# -- images -----------------------------------------------------------------------------------------
def make_image(folder: Path, megapixels: float, fmt: str) -> Path:
    """kodim01 resized to about ``megapixels`` (aspect kept), saved in ``fmt`` (reused if there)."""
    from PIL import Image

    with Image.open(SOURCE) as src:
        src = src.convert("RGB")
        aspect = src.width / src.height
        width = round(math.sqrt(megapixels * 1e6 * aspect))
        height = round(width / aspect)
        path = folder / f"kodim01_{width}x{height}.{fmt}"
        if not path.exists():
            big = src.resize((width, height), Image.Resampling.BICUBIC)
            options = {"quality": 95} if fmt in ("jpeg", "jpg") else {"lossless": True} if fmt == "webp" else {}
            big.save(path, **options)
    return path


def image_megapixels(path: Path) -> float:
    from PIL import Image

    with Image.open(path) as im:
        return im.width * im.height / 1e6


# -- the command ------------------------------------------------------------------------------------
def run_cli(script: Path, env: dict[str, str], image: Path, out: Path, model: str | None) -> tuple[float, str]:
    argv = [sys.executable, str(script), "compress", str(image), "-o", str(out), "-f"]
    if model:
        argv += ["--model", model]
    t = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=script.parent, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"cli_overhead.py: lvae compress {image.name} exited {proc.returncode}: "
                         f"{(proc.stderr.strip().splitlines() or ['(no message)'])[-1]}")
    return wall, proc.stdout.strip()


# The command, run as the console script runs it, with timestamps around its steps (time.time(), so
# that the parent can place them against its own clock: interpreter start-up and exit included).
BREAKDOWN_CHILD = r"""
import atexit, json, sys, time
marks = [("start", time.time())]
out_file = sys.argv[1]
atexit.register(lambda: open(out_file, "w").write(json.dumps(marks + [("atexit", time.time())])))
sys.argv = ["lvae", *sys.argv[2:]]
sys.modules["__main__"].__file__ = "lvae"  # the console script's name: lvae.cli treats this as the command
import lvae.cli
marks.append(("import lvae.cli", time.time()))
marks.append(("lvae: " + lvae.cli.__file__, 0.0))

def wrap(owner, name, label):
    original = getattr(owner, name)
    def timed(*a, **k):
        marks.append(("> " + label, time.time()))
        try:
            return original(*a, **k)
        finally:
            marks.append(("< " + label, time.time()))
    setattr(owner, name, timed)

import lvae.models.registry as registry
load_model = registry.load_model
def loaded(*a, **k):
    marks.append(("> load_model", time.time()))
    model = load_model(*a, **k)
    marks.append(("< load_model", time.time()))
    import lvae.coding.codec as codec
    for name in ("read_image", "delivered_psnr", "atomic_write_bytes"):
        wrap(codec, name, name)
    for name in ("_encode", "decompress"):
        wrap(codec.CompressionMixin, name, name)
    return model
registry.load_model = loaded
status = lvae.cli.main()
marks.append(("main returned", time.time()))
sys.exit(status)
"""

PHASES = (  # (label, from mark, to mark)
    ("start-up: interpreter, import lvae.cli", "spawn", "import lvae.cli"),
    ("arguments, output checks", "import lvae.cli", "> load_model"),
    ("model load: import torch, build (read ahead beside it)", "> load_model", "< load_model"),
    ("read_image (what is left of the read)", "> read_image", "< read_image"),
    ("input check, padding, set-up", "< read_image", "> _encode"),
    ("encode", "> _encode", "< _encode"),
    ("decode (for the PSNR)", "> decompress", "< decompress"),
    ("PSNR", "> delivered_psnr", "< delivered_psnr"),
    ("write the file", "> atomic_write_bytes", "< atomic_write_bytes"),
    ("print the line, return", "< atomic_write_bytes", "main returned"),
    ("interpreter exit", "main returned", "end"),
)


def breakdown_once(env: dict[str, str], work: Path, image: Path, model: str | None) -> dict[str, float]:
    marks_file = work / "marks.json"
    argv = [sys.executable, "-c", BREAKDOWN_CHILD, str(marks_file), "compress", str(image),
            "-o", str(work / "out.lvae"), "-f"] + (["--model", model] if model else [])
    spawn = time.time()
    proc = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, timeout=1800)
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"cli_overhead.py: lvae compress {image.name} exited {proc.returncode}: "
                         f"{(proc.stderr.strip().splitlines() or ['(no message)'])[-1]}")
    at: dict[str, float] = {"spawn": spawn, "end": end}
    for name, t in json.loads(marks_file.read_text()):
        at.setdefault(name, t)  # the first of each (decompress: the decode that measures the PSNR)
    # A tree whose main() ends the process itself (after the atexit handlers) never returns from it.
    at.setdefault("main returned", at["atexit"])
    where = next(Path(name[len("lvae: "):]) for name in at if name.startswith("lvae: "))
    if not where.resolve().is_relative_to(Path(env["PYTHONPATH"].split(os.pathsep)[0])):
        raise SystemExit(f"cli_overhead.py: the command imported lvae from {where}, not from the tree under test")
    times = {label: at[b] - at[a] for label, a, b in PHASES}
    times["wall"] = end - spawn
    times["rest"] = times["wall"] - times["encode"] - times["decode (for the PSNR)"]
    times["rest %"] = 100 * times["rest"] / (times["encode"] + times["decode (for the PSNR)"])
    return times


def breakdown(trees: list[Tree], work: Path, images: list[Path], model: str | None, repeats: int) -> None:
    for tree in trees:  # warm-up: bytecode written, files cached
        breakdown_once(tree.env, work, images[0], model)
    for image in images:
        runs: dict[str, list[dict[str, float]]] = {t.label: [] for t in trees}
        for _ in range(repeats):
            for tree in trees:  # interleaved: a change in the machine's load affects every tree alike
                runs[tree.label].append(breakdown_once(tree.env, work, image, model))
        mp = image_megapixels(image)
        med = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}
        print(f"\n{image.stem.split('_')[-1]} ({mp:.2f} MP), medians of {repeats} runs, seconds:")
        print("| phase | " + " | ".join(med) + " |\n|---|" + "---:|" * len(med))
        for label, _, _ in PHASES:
            print(f"| {label} | " + " | ".join(f"{m[label]:.3f}" for m in med.values()) + " |")
        print("| **wall** | " + " | ".join(f"**{m['wall']:.2f}**" for m in med.values()) + " |")
        print("| **all but encode and decode** (median of each run's) | " + " | ".join(
            f"**{m['rest']:.2f}** ({m['rest %']:.1f} % of encode + decode)" for m in med.values()) + " |")


class Tree:
    """An lvae source tree, run with PYTHONPATH pointing at it (bytecode cached under ``work``)."""

    def __init__(self, label: str, root: Path, work: Path):
        self.label, self.root = label, root.resolve()
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env["PYTHONPATH"] = os.pathsep.join([str(self.root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")  # bytecode cached, as an installed package's is
        self.worker: Worker | None = None
        self.runs: dict[Path, list[tuple[float, dict]]] = {}

    def measure(self, image: Path, cli_output: Path | None = None) -> dict:
        assert self.worker is not None
        return self.worker.measure(image, cli_output)


def git_revision(tree: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{rev}{' + changes' if dirty else ''}" if rev else "?"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def cpu_description() -> str:
    sys.path.insert(0, str(REPO))
    try:
        from lvae.utils.system import cpu_info  # torch-free

        return cpu_info().describe()
    except ImportError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    finally:
        sys.path.remove(str(REPO))


def sizes_arg(text: str) -> list[float]:
    try:
        sizes = sorted(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of megapixels: {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive megapixels, got {text!r}")
    return sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=sizes_arg, default=sizes_arg("0.4,2,8,24"), metavar="MP,MP,...",
                   help="image sizes in megapixels (default 0.4,2,8,24)")
    p.add_argument("--repeats", type=int, default=3, help="runs per size (default 3)")
    p.add_argument("--large-mp", type=float, default=16.0, help="sizes from this many megapixels ... (default 16)")
    p.add_argument("--large-repeats", type=int, default=1, help="... get this many runs (default 1)")
    p.add_argument("--model", default=None, help="--model of lvae compress (default: the command's default)")
    p.add_argument("--tree", type=Path, default=REPO, help="the lvae source tree to measure (default: this one)")
    p.add_argument("--compare", type=Path, default=None, metavar="TREE",
                   help="also measure this lvae source tree (e.g. a `git worktree` of an older commit), runs "
                   "interleaved with --tree's")
    p.add_argument("--format", default="png", choices=("png", "jpeg", "webp"), help="the images' format (png)")
    p.add_argument("--images", type=Path, default=None, help="keep the images in DIR (reused by later runs)")
    p.add_argument("--breakdown", action="store_true",
                   help="time the command's phases (timestamps inside it) instead of the table")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.model)
        return
    if args.repeats < 1 or args.large_repeats < 1:
        p.error("--repeats and --large-repeats must be at least 1")

    with tempfile.TemporaryDirectory(prefix="lvae-cli-overhead-") as tmp:
        work = Path(tmp)
        folder = args.images or work / "images"
        folder.mkdir(parents=True, exist_ok=True)
        trees = [Tree("this tree" if args.compare else "seconds", args.tree, work)]
        if args.compare:
            trees.append(Tree(str(args.compare), args.compare, work))
        script = work / "bin" / "lvae"
        script.parent.mkdir()
        script.write_text(CONSOLE_SCRIPT)

        started = time.perf_counter()
        print(f"# lvae compress: overhead beyond encode + decode\n"
              f"CPU: {cpu_description()}\nload average at the start: {load_average()}; Python "
              f"{platform.python_version()}; " + "; ".join(f"tree {t.root} ({git_revision(t.root)})" for t in trees),
              flush=True)
        images = [make_image(folder, mp, args.format) for mp in args.sizes]
        model_name = args.model
        if args.breakdown:
            if len(trees) > 1:
                trees[0].label = str(trees[0].root)
            breakdown(trees, work, images, model_name, args.repeats)
            print(f"load average at the end: {load_average()}; {time.perf_counter() - started:.0f} s in all")
            return
        try:
            for tree in trees:
                tree.worker = Worker(tree.env, model_name or _default_model(tree.env))
                where = Path(tree.worker.info["lvae"]).resolve()
                if not where.is_relative_to(tree.root):
                    raise SystemExit(f"cli_overhead.py: the worker imported lvae from {where}, not from {tree.root}")
            assert trees[0].worker is not None
            info = trees[0].worker.info
            print(f"torch {info['torch']} ({info['threads']} threads); model {model_name or 'the command default'}; "
                  f"images: kodim01 resized, {args.format}", flush=True)
            out = work / "out.lvae"
            for tree in trees:  # warm-up: bytecode written, files cached, the worker's first call
                run_cli(script, tree.env, images[0], out, model_name)
                tree.measure(images[0])
            for image in images:
                repeats = args.large_repeats if image_megapixels(image) >= args.large_mp else args.repeats
                for _ in range(repeats):
                    for tree in trees:  # interleaved: a change in the machine's load affects every tree alike
                        wall, line = run_cli(script, tree.env, image, out, model_name)
                        measured = tree.measure(image, out)
                        if not measured["same_file"]:
                            raise SystemExit(f"cli_overhead.py: {tree.label}: lvae compress {image.name} wrote other "
                                             "bytes than model.compress")
                        tree.runs.setdefault(image, []).append((wall, measured))
        finally:
            for tree in trees:
                if tree.worker is not None:
                    tree.worker.close()
        for tree in trees:
            print_table(tree, images, line)
        print(f"load average at the end: {load_average()}; {time.perf_counter() - started:.0f} s in all")


def print_table(tree: Tree, images: list[Path], line: str) -> None:
    print(f"\n{tree.root}:\n\n| MP | image | runs | CLI wall s | encode s | decode s | overhead s | overhead % of "
          "enc+dec | CLI s/MP | read s | PSNR s |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    for image in images:
        runs = tree.runs[image]
        mp = image_megapixels(image)
        wall = statistics.median(w for w, _ in runs)
        med = {k: statistics.median(m[k] for _, m in runs) for k in ("read", "encode", "decode", "psnr_s")}
        coding = med["encode"] + med["decode"]
        over = wall - coding
        pct = 100 * over / coding
        print(f"| {mp:.2f} | {image.stem.split('_')[-1]} | {len(runs)} | {wall:.2f} | {med['encode']:.2f} | "
              f"{med['decode']:.2f} | {over:.2f} | {pct:.1f} | {wall / mp:.2f} | {med['read']:.2f} | "
              f"{med['psnr_s']:.3f} |")
        verdicts.append(f"{mp:.2f} MP: overhead {pct:.1f} % of encode + decode: goal (< {GOAL_PERCENT:g} %) "
                        f"{'met' if pct < GOAL_PERCENT else 'not met'}")
    print("\n" + "\n".join(verdicts))
    print(f"last line printed: {line}")


def _default_model(env: dict[str, str]) -> str:
    """The command's default model, as the tree under test says."""
    proc = subprocess.run([sys.executable, "-c", "from lvae.cli.coding import DEFAULT_MODEL; print(DEFAULT_MODEL)"],
                          env=env, cwd=Path(env["PYTHONPYCACHEPREFIX"]).parent, capture_output=True, text=True,
                          timeout=120)
    name = proc.stdout.strip()
    if proc.returncode != 0 or not name:
        raise SystemExit(f"cli_overhead.py: cannot read the default model: {proc.stderr.strip()}")
    return name


if __name__ == "__main__":
    main()
