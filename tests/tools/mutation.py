"""Mutation testing of the modules where a silent bug costs most (docs/testing.md).

    nice -n 19 .venv/bin/python tests/tools/mutation.py [--group NAME ...] [--max-children N] [--report-only]

Runs mutmut 3 (configured in pyproject.toml: the files it mutates, the fast test subset, forkserver
isolation) on each group's mutants, then writes ``results/mutation/``:

* ``summary.md`` / ``summary.json``: per group, the mutants, how many the tests killed, how many
  survivors are explained (``tests/tools/mutation_explained.toml``: one line per kept survivor,
  saying why it is equivalent or not worth a test), and the score ``(killed + explained) / total``;
* ``survivors.md``: every survivor with its diff and its reason (or "UNEXPLAINED").

mutmut works in ``mutants/`` (a copy of the sources, git-ignored): nothing under ``lvae/`` is
ever changed. Never run ``mutmut apply``, which would write a mutant into ``lvae/``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "results" / "mutation"
EXPLAINED = Path(__file__).with_name("mutation_explained.toml")
MUTMUT = Path(sys.executable).with_name("mutmut")
T = "lvae.training.trainer.xǁTrainerǁ"
C = "lvae.coding.codec.xǁCompressionMixinǁ"

# group -> mutant-name patterns (fnmatch); codec and trainer: only the functions named in the issue
GROUPS: dict[str, list[str]] = {
    "container": ["lvae.coding.container.*"],
    "latent": ["lvae.coding.latent.*"],
    "gaussian": ["lvae.coding.gaussian.*"],
    "portable": ["lvae.coding.portable.*"],
    "rans": ["lvae.coding.rans.*"],
    "metrics": ["lvae.metrics.*"],
    "codec-targets": [f"{C}_search_budget__mutmut_*", f"{C}_search_psnr__mutmut_*", f"{C}_lmb_value__mutmut_*",
                      "lvae.coding.codec.x_find_crossing__mutmut_*"],
    "training-resume": [
        "lvae.training.checkpoint.*", "lvae.training.schedule.*",
        f"{T}_load_state__mutmut_*", f"{T}save_checkpoint__mutmut_*", f"{T}_batches__mutmut_*",
    ],
}
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault",
          -9: "segfault", None: "not checked"}


def _matches(name: str, patterns: list[str]) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, p) for p in patterns)


def load_results() -> dict[str, int | None]:
    results: dict[str, int | None] = {}
    for meta in (REPO / "mutants").rglob("*.meta"):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


def diff_of(name: str) -> str:
    proc = subprocess.run([str(MUTMUT), "show", name], capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "\n".join(lines)


def report(timings: dict[str, float]) -> dict:
    explained = tomllib.loads(EXPLAINED.read_text()) if EXPLAINED.exists() else {}
    reasons: dict[str, str] = {k: v for section in explained.values() for k, v in section.items()}
    results = load_results()
    OUT.mkdir(parents=True, exist_ok=True)
    previous = json.loads((OUT / "summary.json").read_text()) if (OUT / "summary.json").exists() else {}
    summary = {"groups": {}, "mutmut": "3.8.1"}
    survivors_md = ["# Surviving mutants", "",
                    "Each survivor of the last run, its diff, and why it is kept "
                    "(tests/tools/mutation_explained.toml).", ""]
    for group, patterns in GROUPS.items():
        names = sorted(n for n in results if _matches(n, patterns))
        counts = Counter(STATUS.get(results[n], "suspicious") for n in names)
        alive = [n for n in names if STATUS.get(results[n], "suspicious") in ("survived", "no tests", "suspicious")]
        explained_here = [n for n in alive if n in reasons]
        total = len(names)
        checked = total - counts.get("not checked", 0)
        killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("segfault", 0)
        entry = {
            "mutants": total,
            "checked": checked,
            "killed": killed,
            "survived": counts.get("survived", 0),
            "no_tests": counts.get("no tests", 0),
            "explained": len(explained_here),
            "unexplained": len(alive) - len(explained_here),
            "killed_pct": round(100 * killed / checked, 1) if checked else None,
            "killed_or_explained_pct": round(100 * (killed + len(explained_here)) / checked, 1) if checked else None,
            "seconds": timings.get(group, previous.get("groups", {}).get(group, {}).get("seconds")),
        }
        summary["groups"][group] = entry
        if alive:
            survivors_md += [f"## {group}", ""]
            for n in alive:
                reason = reasons.get(n, "UNEXPLAINED")
                survivors_md += [f"- `{n}` ({STATUS.get(results[n])}): {reason}", "", "  ```diff"]
                survivors_md += ["  " + ln for ln in diff_of(n).splitlines()] + ["  ```", ""]
    stale = sorted(k for k in reasons if k not in results or STATUS.get(results[k]) == "killed")
    summary["stale_explanations"] = stale
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (OUT / "survivors.md").write_text("\n".join(survivors_md) + "\n")
    rows = ["| group | mutants | killed | explained survivors | unexplained | killed % "
            "| killed or explained % | run time |",
            "|---|---|---|---|---|---|---|---|"]
    for group, e in summary["groups"].items():
        secs = f"{e['seconds'] / 60:.1f} min" if e["seconds"] else "–"
        rows.append(f"| {group} | {e['checked']} | {e['killed']} | {e['explained']} | {e['unexplained']} | "
                    f"{e['killed_pct']} | {e['killed_or_explained_pct']} | {secs} |")
    tot = {k: sum(e[k] for e in summary["groups"].values()) for k in ("checked", "killed", "explained", "unexplained")}
    rows.append(f"| **all** | {tot['checked']} | {tot['killed']} | {tot['explained']} | {tot['unexplained']} | "
                f"{100 * tot['killed'] / max(tot['checked'], 1):.1f} | "
                f"{100 * (tot['killed'] + tot['explained']) / max(tot['checked'], 1):.1f} | |")
    text = ["# Mutation score", "",
            "`nice -n 19 .venv/bin/python tests/tools/mutation.py` (mutmut 3.8.1; see docs/testing.md). Timeouts "
            "count as killed (the mutant hangs the code). Survivors and their reasons: survivors.md.", "",
            *rows, ""]
    if stale:
        text += ["Explanations no longer needed (mutant killed or gone): " + ", ".join(f"`{s}`" for s in stale), ""]
    (OUT / "summary.md").write_text("\n".join(text))
    print("\n".join(text))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", action="append", choices=sorted(GROUPS), help="run these groups only (default: all)")
    ap.add_argument("--max-children", type=int, default=1, help="parallel mutant runs (default 1)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite results/mutation/ from mutants/")
    args = ap.parse_args(argv)
    timings: dict[str, float] = {}
    if not args.report_only:
        for group in args.group or list(GROUPS):
            start = time.monotonic()
            proc = subprocess.run([str(MUTMUT), "run", "--max-children", str(args.max_children), *GROUPS[group]],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            timings[group] = time.monotonic() - start
            print(f"{group}: mutmut exited {proc.returncode} after {timings[group] / 60:.1f} min", flush=True)
            if proc.returncode not in (0, 1):
                print(proc.stderr[-3000:], file=sys.stderr)
    report(timings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
