"""Start-up time of the ``lvae`` command and of ``import lvae``, against the goals of issue 11.

    python benchmarks/startup.py [--repeats 5] [--compare REV] [--image IMAGE] [--model NAME]

Each command runs ``--repeats`` times, every time in a fresh interpreter, and the median wall
time (with the minimum) is printed:

- ``lvae --help``, ``lvae info FILE`` (FILE made by this run's ``lvae compress``; the authors'
  tests/data/legacy_lmb16.bits if that fails) and ``lvae models``: goal ≤ 1 s each;
- ``python -c 'import lvae'``: goal ≤ 3 s; ``python -c 'import torch'`` for reference;
- ``lvae compress IMAGE --model NAME``: goal ≤ 2 × the in-process time of the same work +
  torch's import. "In-process" is ``model.compress_file`` (encode, then the decode that measures
  the PSNR the command prints) on a model already built, median of ``--repeats`` calls after a
  warm-up; ``encode`` (``model.compress`` alone) is shown too.

``lvae ...`` runs a copy of the console script pip writes (a file named ``lvae``: ``from lvae.cli
import main; sys.exit(main())``), so the command behaves as installed (its Ctrl-C handler, and
Python's cyclic collector paused while torch and the model load: ``lvae.cli.common.
collector_paused``), with ``PYTHONPATH`` pointing at the tree under test. ``import torch`` is a
process like the others and so includes the collector's walk over torch's objects at exit;
``import torch, gc.freeze()`` leaves that walk out and gives a stricter second budget for
``lvae compress``, printed below the table. ``--compare REV`` checks REV out into a
temporary ``git worktree`` (removed afterwards) and measures it the same way, the runs of both
trees interleaved so that a change in the machine's load affects both alike. It also prints
which heavy packages ``--help``, ``info`` and ``models`` import (checked in ``sys.modules`` of a
child that runs the command). Timings on a shared machine are noisy: compare medians, and rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "tests" / "data" / "kodim20.png"
LEGACY_FILE = REPO / "tests" / "data" / "legacy_lmb16.bits"
HEAVY = ("torch", "compressai", "torch_geometric", "scipy", "numpy", "PIL", "tqdm", "matplotlib", "pytorch_msssim")
LIGHT_GOAL_S, IMPORT_GOAL_S = 1.0, 3.0

# The console script `lvae` as pip writes it; run with the tree under test first on sys.path.
CONSOLE_SCRIPT = "import sys\nfrom lvae.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n"

# Runs one light command in-process and reports what it imported (json on the last line).
MODULES_CHILD = """
import contextlib, io, json, sys
argv, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
with contextlib.redirect_stdout(io.StringIO()):
    try:
        import lvae.cli
        rc = lvae.cli.main(argv)
    except SystemExit as exc:
        rc = exc.code
print(json.dumps({"rc": rc, "heavy": [m for m in heavy if m in sys.modules], "modules": len(sys.modules)}))
"""

# The in-process reference: the model built once, then the same work as `lvae compress`.
ENCODE_CHILD = """
import json, statistics, sys, time
import lvae
from lvae.io import load_image
image, out, model_name, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = lvae.get_model(model_name, pretrained=True)
model.eval().compress_mode(True)
model.compress_file(image, out)  # warm-up
times = {"compress_file": [], "encode": []}
im = load_image(image)
for _ in range(repeats):
    t = time.perf_counter(); model.compress_file(image, out); times["compress_file"].append(time.perf_counter() - t)
    t = time.perf_counter(); model.compress(im); times["encode"].append(time.perf_counter() - t)
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
"""


class Tree:
    """A source tree of lvae, run with PYTHONPATH pointing at it."""

    def __init__(self, label: str, root: Path, work: Path):
        self.label, self.root, self.work = label, root, work
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.info_file: Path | None = None
        self.script = self.work / "bin" / "lvae"
        self.script.parent.mkdir(exist_ok=True)
        self.script.write_text(CONSOLE_SCRIPT)

    def run(self, args: list[str], timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, *args], cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        return time.perf_counter() - t, proc

    def lvae(self, *argv: str) -> list[str]:
        return [str(self.script), *argv]

    def check_source(self) -> None:
        _, proc = self.run(["-c", "import lvae; print(lvae.__file__)"])
        where = proc.stdout.strip()
        if proc.returncode != 0 or not Path(where).resolve().is_relative_to(self.root.resolve()):
            raise SystemExit(f"startup.py: {self.label}: lvae is not imported from {self.root} "
                             f"({where or proc.stderr})")


def _fail(tree: Tree, what: str, proc: subprocess.CompletedProcess) -> str:
    last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
    return f"{tree.label}: {what} exited {proc.returncode}: {last}"


def measure(trees: list[Tree], image: Path, model: str, repeats: int, skip_compress: bool) -> tuple[dict, list[str]]:
    """{tree label: {command: [seconds...]}} and the failures seen."""
    commands: dict[str, object] = {}
    if not skip_compress:
        commands["lvae compress"] = lambda t: t.lvae("compress", str(image), "--model", model,
                                                     "-o", str(t.work / "k.lvae"), "-f")
    commands.update({
        "lvae --help": lambda t: t.lvae("--help"),
        "lvae info": lambda t: t.lvae("info", str(t.info_file)),
        "lvae models": lambda t: t.lvae("models"),
        "import lvae": lambda t: ["-c", "import lvae"],
        "import torch": lambda t: ["-c", "import torch"],
        "torch, frozen": lambda t: ["-c", "import gc, torch; gc.freeze()"],
    })
    times: dict[str, dict[str, list[float]]] = {t.label: {c: [] for c in commands} for t in trees}
    failures: list[str] = []
    for tree in trees:  # the file `lvae info` reads: this tree's own compress output
        tree.info_file = LEGACY_FILE
        if not skip_compress:
            _, proc = tree.run(commands["lvae compress"](tree))
            if proc.returncode == 0:
                tree.info_file = tree.work / "k.lvae"
            else:
                failures.append(_fail(tree, "lvae compress", proc) + f" (info reads {LEGACY_FILE.name})")
    for i in range(repeats):
        for name, argv in commands.items():
            for tree in trees:  # interleaved: both trees see the same load
                seconds, proc = tree.run(argv(tree))
                if proc.returncode == 0:
                    times[tree.label][name].append(seconds)
                elif i == 0:
                    failures.append(_fail(tree, name, proc))
        print(f"  round {i + 1}/{repeats} done", file=sys.stderr, flush=True)
    return times, failures


def in_process(tree: Tree, image: Path, model: str, repeats: int) -> dict[str, float] | str:
    _, proc = tree.run(["-c", ENCODE_CHILD, str(image), str(tree.work / "inproc.lvae"), model, str(repeats)])
    if proc.returncode != 0:
        return _fail(tree, "in-process encode", proc)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def heavy_modules(tree: Tree) -> dict[str, dict]:
    found = {}
    for name, argv in (("--help", ["--help"]), ("info", ["info", str(tree.info_file)]), ("models", ["models"])):
        _, proc = tree.run(["-c", MODULES_CHILD, json.dumps(argv), json.dumps(HEAVY)])
        if proc.returncode == 0:
            found[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            found[name] = {"error": proc.stderr.strip()[-200:]}
    return found


# -- report ---------------------------------------------------------------------------------------
def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, unit: str = "s") -> str:
    return "-" if x is None else f"{x:.2f} {unit}" if unit else f"{x:.2f}"


def goals(med: dict[str, float | None], ref: dict[str, float] | str) -> dict[str, tuple[float | None, str]]:
    """{command: (ratio to its goal, goal described)}; a ratio ≤ 1 meets the goal."""
    out: dict[str, tuple[float | None, str]] = {}
    for name in ("lvae --help", "lvae info", "lvae models"):
        v = med.get(name)
        out[name] = (None if v is None else v / LIGHT_GOAL_S, f"≤ {LIGHT_GOAL_S:g} s")
    v = med.get("import lvae")
    out["import lvae"] = (None if v is None else v / IMPORT_GOAL_S, f"≤ {IMPORT_GOAL_S:g} s")
    v, torch_s = med.get("lvae compress"), med.get("import torch")
    if isinstance(ref, dict) and v is not None and torch_s is not None:
        budget = 2 * ref["compress_file"] + torch_s
        out["lvae compress"] = (v / budget, f"≤ 2×{ref['compress_file']:.2f} + {torch_s:.2f} = {budget:.2f} s")
    elif "lvae compress" in med:
        out["lvae compress"] = (None, "2 × in-process + import torch (not measured)")
    return out


def report(trees: list[Tree], times: dict, refs: dict, heavy: dict, repeats: int) -> None:
    labels = [t.label for t in trees]
    names = list(times[labels[0]])
    meds = {lab: {n: _median(times[lab][n]) for n in names} for lab in labels}
    mins = {lab: {n: (min(times[lab][n]) if times[lab][n] else None) for n in names} for lab in labels}
    rat = {lab: goals(meds[lab], refs[lab]) for lab in labels}
    print(f"\nwall time, median (min) of {repeats} fresh processes; ratio = median / goal (≤ 1 meets it)")
    head = f"{'command':<15}" + "".join(f"  {lab + ' median (min)':>22}  {'ratio':>6}" for lab in labels) + "  goal"
    print(head)
    print("-" * len(head))
    for n in names:
        row = f"{n:<15}"
        for lab in labels:
            r = rat[lab].get(n, (None, ""))[0]
            row += f"  {_fmt(meds[lab][n]) + ' (' + _fmt(mins[lab][n]) + ')':>22}  {_fmt(r, ''):>6}"
        goal = next((rat[lab][n][1] for lab in labels[::-1] if n in rat[lab]), "reference")
        print(row + f"  {goal}")
    for lab in labels:
        ref = refs[lab]
        if isinstance(ref, dict):
            print(f"in-process ({lab}): compress_file {ref['compress_file']:.2f} s (encode + the PSNR decode), "
                  f"encode alone {ref['encode']:.2f} s")
            cmd, torch_s = meds[lab].get("lvae compress"), meds[lab].get("import torch")
            if cmd is not None and torch_s is not None:
                print(f"  lvae compress - compress_file = {cmd - ref['compress_file']:.2f} s of start-up "
                      f"(imports, model build, weights), of which import torch alone {torch_s:.2f} s")
            frozen = meds[lab].get("torch, frozen")
            if cmd is not None and frozen is not None:
                budget = 2 * ref["compress_file"] + frozen
                print(f"  stricter budget, torch's import without its exit walk: 2×{ref['compress_file']:.2f} "
                      f"+ {frozen:.2f} = {budget:.2f} s, ratio {cmd / budget:.2f}")
        elif ref:
            print(f"in-process ({lab}): {ref}")
    print("\nheavy packages imported (sys.modules of a child running the command; total modules):")
    for lab in labels:
        for cmd, res in heavy[lab].items():
            if "heavy" in res:
                what = ", ".join(res["heavy"]) or "none"
            else:
                what = f"failed: {res['error']}"
            total = f" ({res['modules']} modules)" if "modules" in res else ""
            print(f"  {lab:<10} lvae {cmd:<7} {what}{total}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="fresh processes per command (default 5)")
    p.add_argument("--compare", metavar="REV", help="also measure git revision REV (temporary worktree)")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image for lvae compress (default kodim20)")
    p.add_argument("--model", default="qarv_small", help="model for lvae compress (default qarv_small)")
    p.add_argument("--skip-compress", action="store_true", help="only the start-up of the light commands")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    image = args.image.resolve()
    with tempfile.TemporaryDirectory(prefix="lvae-startup-") as tmp:
        tmp = Path(tmp)
        trees = [Tree("this tree", REPO, tmp / "this")]
        worktree = None
        try:
            if args.compare:
                worktree = tmp / "rev"
                proc = subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.compare],
                    capture_output=True, text=True)
                if proc.returncode != 0:
                    p.exit(1, f"startup.py: cannot check out {args.compare}: {proc.stderr.strip()}\n")
                trees.insert(0, Tree(args.compare, worktree, tmp / "rev-work"))
            for t in trees:
                t.check_source()
            print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; trees: "
                  + ", ".join(f"{t.label} = {t.root}" for t in trees), flush=True)
            times, failures = measure(trees, image, args.model, args.repeats, args.skip_compress)
            refs = {t.label: ("" if args.skip_compress else in_process(t, image, args.model, args.repeats))
                    for t in trees}
            heavy = {t.label: heavy_modules(t) for t in trees}
        finally:
            if worktree is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                               capture_output=True, text=True)
        report(trees, times, refs, heavy, args.repeats)
        for f in failures:
            print(f"failed: {f}")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
