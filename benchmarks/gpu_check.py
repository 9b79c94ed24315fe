"""The steps of ``benchmarks/gpu_check.sh`` (see docs/gpu.md); start it through that script.

Each step runs as its own process with its own time limit; a step that fails or runs out of time
is recorded and the next one starts. ``gpu_check.json`` is rewritten after every step, so a run
cut short still leaves the steps it finished. Only the standard library is imported here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGED = REPO / "lvae" / "data" / "weights" / "qarv_small.pt"
SUMMARY, LOG = "gpu_check.json", "gpu_check.log"
STEPS = ("setup", "info", "cuda_tests", "coding", "eval", "train_fp32", "train_amp", "finetune")
MIB = 2**20
PART_MIB = 15  # the device tool brings back files of at most 16 MiB: larger weights travel in parts


class Settings:
    """The sizes of one check: the GPU run, or the CPU dry run."""

    def __init__(self, dry: bool, minutes: float, batch: int, speed_iters: int, data: Path | None):
        self.dry = dry
        self.minutes = minutes
        self.device = "cpu" if dry else "cuda"
        self.eval_images = [REPO / "tests/data/kodak3/kodim01.png"] if dry else (
            sorted((REPO / "tests/data/kodak3").glob("*.png")) + [REPO / "tests/data/kodim20.png"])
        self.eval_steps = 2 if dry else 4
        self.coding_args = ["tests/data/kodak3/kodim01.png", "--repeats", "1"] if dry else ["--repeats", "5"]
        self.trainset = data or (REPO / "tests/data/train_small" if dry else REPO / ".gpu_data/train")
        self.crop = 64 if dry else 256
        self.batch = 2 if dry else batch
        self.workers = 0 if dry else 12
        self.speed_iters = 4 if dry else speed_iters
        self.speed_log_every = 2 if dry else 50
        self.ft_log_every = 5 if dry else 100
        # (cap, least worth starting) in seconds, per step; the fine-tune gets the rest.
        self.caps = {"info": (60, 5), "cuda_tests": (150, 20), "coding": (120, 15), "eval": (90, 15),
                     "train_fp32": (150, 30), "train_amp": (150, 30)}
        if dry:
            self.caps = {k: (60, 5) for k in self.caps}
        self.ft_reserve = 25 if dry else 120  # kept free for the fine-tune while earlier steps run
        self.ft_min = 8 if dry else 45  # a shorter fine-tune is not started
        # the dry run's fine-tune is a smoke test; 25 s leave room for a slow or busy CPU's start-up
        self.ft_max = 25 if dry else math.inf
        self.end_margin = 3 if dry else 8  # for the summary after the last step


# -- running steps ---------------------------------------------------------------------------------
def step_env(s: Settings) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if s.dry:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is a CPU run even where a GPU is present
        env.setdefault("OMP_NUM_THREADS", "1")  # faster on a small shared machine
    return env


def run_process(cmd: list[str], timeout: float, log_path: Path, env: dict[str, str],
                grace: float = 20.0) -> dict[str, Any]:
    """Run ``cmd`` in its own process group, its output appended to ``log_path`` as it comes (so
    a run cut short keeps it); past ``timeout`` send SIGTERM (training saves and stops), then
    SIGKILL after ``grace`` seconds. Returns the exit status, whether it timed out, the seconds
    and the output."""
    with open(log_path, "a", encoding="utf-8") as log:  # O_APPEND: the child's writes go to the end
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        start = log_path.stat().st_size
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        seconds = time.monotonic() - t0
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", errors="replace")
        log.write(("" if text.endswith("\n") or not text else "\n")
                  + f"# exit status {proc.returncode}{' (time limit)' if timed_out else ''}, {seconds:.1f} s\n\n")
    return {"returncode": proc.returncode, "timed_out": timed_out, "seconds": seconds, "output": text}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this script created for the step (start_new_session)
    except ProcessLookupError:
        pass


def tail(text: str, chars: int = 1500) -> str:
    text = text.replace("\r", "\n")
    return text[-chars:]


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# -- reading what the steps wrote -------------------------------------------------------------------
def parse_pytest_counts(output: str) -> dict[str, int]:
    """The counts of pytest's last summary line (``3 passed, 1 skipped, 2 deselected in 4.5s``)."""
    counts: dict[str, int] = {}
    for line in reversed(output.replace("\r", "\n").splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?|warnings?)\b", line)
        if found and re.search(r"\bin [\d.]+s\b", line):
            for n, word in found:
                word = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[word] = counts.get(word, 0) + int(n)
            break
    return counts


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by a kill
    return records


def training_numbers(log: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Throughput and losses of one run's log.jsonl: steady it/s leaves out the first window
    (worker start-up, cuDNN autotuning); overhead is the process time not spent in steps at that rate."""
    train = [r for r in log if r.get("type") == "train"]
    if not train:
        return {}
    rates = [r["it_per_s"] for r in train if r.get("it_per_s")]
    steady = rates[1:] or rates
    it_s = sum(steady) / len(steady) if steady else None
    iters = train[-1]["iteration"]
    stopped = [r for r in log if r.get("type") == "stopped"]
    return {
        "iterations": iters,
        "it_per_s": it_s,
        "it_per_s_first_window": rates[0] if rates else None,
        "overhead_s": seconds - iters / it_s if it_s else None,
        "first_loss": train[0].get("loss"),
        "final_loss": train[-1].get("loss"),
        "final_bpp": train[-1].get("bpp"),
        "final_psnr": train[-1].get("psnr"),
        "final_lr": train[-1].get("lr"),
        "skipped_steps": sum(r.get("skipped") or 0 for r in train),
        "spikes": sum(r.get("spikes") or 0 for r in train),
        "done": any(r.get("type") == "done" for r in log),
        "stopped": stopped[-1] if stopped else None,
        "log": [{k: r.get(k) for k in ("iteration", "loss", "bpp", "psnr", "lr", "it_per_s")} for r in train],
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def split_file(path: Path, part_bytes: int) -> list[str]:
    """``path.part1``, ``path.part2``, ... of at most ``part_bytes`` each; ``cat`` joins them."""
    names = []
    with open(path, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(part_bytes), b""), 1):
            part = path.with_name(f"{path.name}.part{i}")
            part.write_bytes(block)
            names.append(part.name)
    return names


# -- the check -------------------------------------------------------------------------------------------
class Check:
    def __init__(self, s: Settings, out: Path, python: str, t0: float):
        self.s, self.out, self.python, self.t0 = s, out, python, t0
        self.deadline = t0 + 60.0 * s.minutes - s.end_margin  # wall clock (time.time)
        self.work = Path(tempfile.mkdtemp(prefix="lvae-gpu-check-"))
        self.env = step_env(s)
        self.log_path = out / LOG
        self.log_path.write_text("")
        self.summary: dict[str, Any] = {
            "dry_run": s.dry,
            "budget_minutes": s.minutes,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
            "python": python,
            "host": platform.node(),
            "out_dir": str(out),
            "steps": {name: {"status": "pending"} for name in STEPS},
        }

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        self.summary["elapsed_s"] = round(time.time() - self.t0, 1)
        tmp = self.out / (SUMMARY + ".tmp")
        tmp.write_text(json.dumps(self.summary, indent=1, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.out / SUMMARY)

    def record(self, name: str, **fields: Any) -> dict[str, Any]:
        entry = self.summary["steps"][name]
        entry.clear()
        entry.update(fields)
        self.save()
        status = entry["status"] + (f" ({entry['reason']})" if entry.get("reason") else "")
        print(f"[gpu_check] {name}: {status}, {entry.get('duration_s', 0):.1f} s", flush=True)
        return entry

    def timeout_for(self, name: str) -> float | None:
        cap, least = self.s.caps[name]
        t = min(cap, self.left() - self.s.ft_reserve)
        return t if t >= least else None

    def run_step(self, name: str, cmd: list[str], timeout: float | None = None) -> dict[str, Any] | None:
        """Run one command as step ``name``; None (and the step recorded as skipped) when no time is left."""
        timeout = self.timeout_for(name) if timeout is None else timeout
        if timeout is None:
            self.record(name, status="skipped", reason="not enough time left", duration_s=0.0)
            return None
        print(f"[gpu_check] {name}: running (at most {timeout:.0f} s)", flush=True)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"## {name}\n")
        res = run_process(cmd, timeout, self.log_path, self.env)
        res["timeout_s"] = round(timeout, 1)
        return res

    @staticmethod
    def basic(res: dict[str, Any], cmd: list[str]) -> dict[str, Any]:
        status = "timeout" if res["timed_out"] else ("ok" if res["returncode"] == 0 else "failed")
        entry = {"status": status, "duration_s": round(res["seconds"], 1), "timeout_s": res["timeout_s"],
                 "returncode": res["returncode"], "command": " ".join(cmd)}
        if status != "ok":
            entry["reason"] = "time limit" if res["timed_out"] else last_line(res["output"])[:300]
            entry["output_tail"] = tail(res["output"])
        return entry

    # -- the steps ----------------------------------------------------------------------------------
    def setup(self) -> None:
        state = os.environ.get("GPU_CHECK_WHEELS", "none")
        seconds = float(os.environ.get("GPU_CHECK_WHEELS_SECONDS", "0") or 0)
        if state == "none":
            reason = "dry run" if self.s.dry else "no .whl folder"
            self.record("setup", status="skipped", reason=reason, duration_s=seconds)
            return
        entry = {"status": "ok" if state == "ok" else "failed", "duration_s": seconds,
                 "site": os.environ.get("GPU_CHECK_SITE"),
                 "wheels": sorted(p.name for p in (REPO / ".whl").glob("*.whl"))}
        log_path = os.environ.get("GPU_CHECK_WHEELS_LOG")
        pip_output = Path(log_path).read_text(errors="replace") if log_path and Path(log_path).is_file() else ""
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"## setup\n$ pip install --target {entry['site']} .whl/*.whl\n{pip_output}# {state}\n\n")
        if state != "ok":
            entry["reason"] = "pip install failed"
            entry["output_tail"] = tail(pip_output)
        self.record("setup", **entry)

    def info(self) -> None:
        code = r"""
import importlib, importlib.metadata as md, json, platform
out = {"python": platform.python_version(), "platform": platform.platform()}
def version(dist):
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None
for dist in ("torch", "torchvision", "numpy", "pillow", "scipy", "tqdm", "compressai", "pytorch-msssim"):
    out[dist] = version(dist)
import torch
out["torch"] = torch.__version__
out["torch_cuda"] = torch.version.cuda
out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
out["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out["gpu"] = p.name
    out["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
    out["capability"] = f"{p.major}.{p.minor}"
    out["gpu_count"] = torch.cuda.device_count()
for mod in ("compressai.ans", "compressai._CXX", "pytorch_msssim"):
    try:
        importlib.import_module(mod)
        out["import " + mod] = "ok"
    except Exception as exc:
        out["import " + mod] = f"{type(exc).__name__}: {exc}"
try:
    import lvae
    out["lvae"] = lvae.__version__
except Exception as exc:
    out["lvae"] = f"import failed: {type(exc).__name__}: {exc}"
print("GPU_CHECK_INFO " + json.dumps(out))
"""
        cmd = [self.python, "-c", code]
        res = self.run_step("info", cmd)
        if res is None:
            return
        entry = self.basic(res, [self.python, "-c", "<versions>"])
        info = {}
        for line in res["output"].splitlines():
            if line.startswith("GPU_CHECK_INFO "):
                info = json.loads(line[len("GPU_CHECK_INFO "):])
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20)
                info["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
            except (OSError, subprocess.TimeoutExpired) as exc:
                info["nvidia_smi"] = f"failed: {exc}"
        entry["versions"] = info
        self.summary["device"] = info.get("gpu") or "cpu"
        self.summary["versions"] = {k: info.get(k) for k in ("python", "torch", "torch_cuda", "cudnn", "torchvision",
                                                             "numpy", "pillow", "compressai", "pytorch-msssim", "lvae")}
        if res["returncode"] == 0 and not self.s.dry and not info.get("cuda_available"):
            entry.update(status="failed", reason="CUDA is not available")
        self.record("info", **entry)
        for key in ("torch", "torch_cuda", "gpu", "gpu_memory_gib", "capability", "numpy", "compressai", "lvae"):
            print(f"    {key}: {info.get(key)}")

    def cuda_available(self) -> bool:
        return bool(self.summary["steps"]["info"].get("versions", {}).get("cuda_available")) and not self.s.dry

    def cuda_tests(self) -> None:
        if not self.cuda_available():
            self.record("cuda_tests", status="skipped", reason="no CUDA" + (" (dry run)" if self.s.dry else ""),
                        duration_s=0.0)
            return
        cmd = [self.python, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-q"]
        res = self.run_step("cuda_tests", cmd)
        if res is None:
            return
        entry = self.basic(res, cmd)
        entry["counts"] = parse_pytest_counts(res["output"])
        if res["returncode"] == 5:
            entry.update(status="skipped", reason="no tests marked cuda were collected")
        elif entry["status"] == "ok" and not entry["counts"].get("passed"):
            entry.update(status="skipped", reason="every CUDA test was skipped")
        if entry["status"] != "ok":
            entry["output_tail"] = tail(res["output"], 3000)
        self.record("cuda_tests", **entry)

    def no_cuda(self, name: str) -> bool:
        """On the GPU run, record ``name`` as skipped when CUDA is missing (the info step has failed)."""
        if self.s.device == "cuda" and not self.cuda_available():
            self.record(name, status="skipped", reason="no CUDA", duration_s=0.0)
            return True
        return False

    def coding(self) -> None:
        if self.no_cuda("coding"):
            return
        report = self.work / "coding.json"
        cmd = [self.python, "benchmarks/coding.py", *self.s.coding_args,
               "--device", self.s.device, "--json", str(report)]
        res = self.run_step("coding", cmd)
        if res is None:
            return
        entry = self.basic(res, cmd)
        if report.is_file():
            data = json.loads(report.read_text())
            entry["results"] = data
            times = {t["op"]: t["median_s"] for t in data["timings"] if t["device"] == self.s.device}
            entry["qarv_base"] = {"size": f"{data['width']}x{data['height']}", "device": self.s.device,
                                  "encode_s": times.get("encode"), "decode_s": times.get("decode"),
                                  "forward_s": times.get("forward")}
        elif entry["status"] == "ok":
            entry.update(status="failed", reason="coding.py wrote no JSON")
        self.record("coding", **entry)

    def eval(self) -> None:
        if self.no_cuda("eval"):
            return
        folder = self.work / "eval-images"
        folder.mkdir()
        for p in self.s.eval_images:
            shutil.copyfile(p, folder / p.name)
        report = self.work / "eval.json"
        cmd = [self.python, "eval-var-rate.py", "--model", "qarv_small",
               "--device", "cuda:0" if self.s.device == "cuda" else "cpu", "--dataset_name", str(folder),
               "--steps", str(self.s.eval_steps), "--output", str(report), "--no_progress"]
        res = self.run_step("eval", cmd)
        if res is None:
            return
        entry = self.basic(res, cmd)
        if report.is_file():
            data = json.loads(report.read_text())
            entry.update(images=[p.name for p in self.s.eval_images], device=data.get("device"),
                         lambdas=data.get("lambdas"),
                         results={k: data["results"].get(k) for k in ("bpp", "psnr", "ms-ssim")},
                         timings=data.get("timings"), weights=data.get("weights"))
        elif entry["status"] == "ok":
            entry.update(status="failed", reason="eval-var-rate.py wrote no JSON")
        self.record("eval", **entry)

    def train_args(self, name: str, iterations: int, log_every: int, amp: bool, warmup: int, sched: str,
                   ckpt_every: int = 1_000_000) -> list[str]:
        s = self.s
        return [self.python, "train-var-rate.py", "--model", "qarv_small", "--weights", str(PACKAGED),
                "--trainset", str(s.trainset), "--valset", "none", "--transform", f"crop={s.crop},hflip=True",
                "--batch_size", str(s.batch), "--workers", str(s.workers), "--device", s.device,
                "--lr", "1e-4", "--lr_sched", sched, "--lrf_min", "0.01", "--lr_warmup", str(warmup),
                "--loss_norm", "lmb", "--ema_decay", "0.999", "--ema_warmup", "1000",
                "--iterations", str(iterations), "--log_every", str(log_every), "--ckpt_every", str(ckpt_every),
                "--runs_dir", str(self.work / "runs"), "--name", name, "--seed", "0",
                *(["--amp"] if amp else [])]

    def no_training_data(self) -> str | None:
        if not self.s.trainset.is_dir():
            return f"no training data at {self.s.trainset} (run benchmarks/prepare_gpu_data.py)"
        return None

    def train_speed(self, amp: bool) -> None:
        name = "train_amp" if amp else "train_fp32"
        if amp and not self.cuda_available():
            self.record(name, status="skipped", reason="--amp needs CUDA", duration_s=0.0)
            return
        if self.no_cuda(name):
            return
        missing = self.no_training_data()
        if missing:
            self.record(name, status="skipped", reason=missing, duration_s=0.0)
            return
        iters = self.s.speed_iters
        cmd = self.train_args(name, iters, self.s.speed_log_every, amp, warmup=min(100, iters // 3), sched="constant")
        res = self.run_step(name, cmd)
        if res is None:
            return
        entry = self.basic(res, cmd)
        entry.update(amp=amp, batch=self.s.batch, crop=self.s.crop)
        entry.update(training_numbers(read_jsonl(self.work / "runs" / name / "log.jsonl"), res["seconds"]))
        if entry["status"] == "ok" and entry.get("iterations") != iters:
            entry.update(status="failed", reason=f"stopped at iteration {entry.get('iterations')} of {iters}")
        self.record(name, **entry)

    def choose_amp(self) -> tuple[bool, dict[str, Any], str]:
        """float16 autocast for the fine-tune only if it ran cleanly, was clearly faster, and its
        final loss (same seed, same batches) was no worse than float32's by more than 2 %.

        Returns (autocast?, the speed run whose it/s plans the fine-tune, why). A float32 run cut
        by its time limit still gives its it/s."""
        fp32, amp = self.summary["steps"]["train_fp32"], self.summary["steps"]["train_amp"]
        ok32, ok16 = bool(fp32.get("it_per_s")), amp.get("status") == "ok" and bool(amp.get("it_per_s"))
        if ok16 and not ok32:
            return True, amp, "the float32 speed run gave no it/s"
        if not ok16:
            return False, fp32, "the autocast speed run did not succeed"
        l32, l16 = fp32.get("final_loss"), amp.get("final_loss")
        if not (isinstance(l16, (int, float)) and math.isfinite(l16)) or amp.get("skipped_steps", 0) > 5:
            return False, fp32, "autocast gave non-finite losses or skipped steps"
        if amp["it_per_s"] < 1.15 * fp32["it_per_s"]:
            return False, fp32, f"autocast was not 15 % faster ({amp['it_per_s']:.2f} vs {fp32['it_per_s']:.2f} it/s)"
        if l32 is not None and l16 > 1.02 * l32:
            return False, fp32, f"autocast's final loss {l16:.4g} > 1.02 × float32's {l32:.4g}"
        return True, amp, (f"autocast {amp['it_per_s'] / fp32['it_per_s']:.2f}× faster "
                           f"with a final loss of {l16:.4g} vs {l32:.4g}")

    def finetune(self) -> None:
        name = "finetune"
        if self.no_cuda(name):
            return
        missing = self.no_training_data()
        if missing:
            self.record(name, status="skipped", reason=missing, duration_s=0.0)
            return
        budget = min(self.left(), self.s.ft_max)
        if budget < self.s.ft_min:
            self.record(name, status="skipped", reason=f"only {budget:.0f} s left", duration_s=0.0)
            return
        amp, ref, why = self.choose_amp()
        it_s, overhead = ref.get("it_per_s"), ref.get("overhead_s")
        if not it_s:
            it_s, overhead, why = (2.0 if self.s.dry else 5.0), 20.0, why + "; no measured it/s: guessed"
        overhead = max(overhead or 0.0, 5.0)
        # The process needs imports before the trainer's clock starts and a little to exit after it.
        slack = 14.0 if self.s.dry else 25.0
        max_minutes = (budget - slack) / 60.0
        iterations = max(10, int(it_s * max(budget - overhead - slack, 1.0) * 0.97))
        warmup = min(200, iterations // 10)
        cmd = self.train_args(name, iterations, self.s.ft_log_every, amp, warmup=warmup, sched="const-0.5-cos",
                              ckpt_every=max(iterations // 4, 1))
        cmd += ["--max_minutes", f"{max_minutes:.3f}"]
        # SIGTERM (the trainer saves and stops) only just before the end of the whole budget.
        res = self.run_step(name, cmd, timeout=budget + self.s.end_margin - 2)
        entry = self.basic(res, cmd)
        run = self.work / "runs" / name
        entry.update(amp=amp, amp_choice=why, planned_iterations=iterations, planned_from_it_per_s=round(it_s, 3),
                     max_minutes=round(max_minutes, 3), batch=self.s.batch, crop=self.s.crop,
                     lr=f"1e-4, constant for half the run then cosine to 1e-6, warm-up {warmup:d}",
                     trainset=str(self.s.trainset))
        log = read_jsonl(run / "log.jsonl")
        entry.update(training_numbers(log, res["seconds"]))
        entry.pop("log", None)  # log.jsonl itself is copied
        dest = self.out / name
        dest.mkdir(exist_ok=True)
        for f in ("config.json", "log.jsonl"):
            if (run / f).is_file():
                shutil.copyfile(run / f, dest / f)
        ema = run / "last_ema.pt"
        if ema.is_file():
            weights = dest / "qarv_small-ft-ema.pt"
            shutil.copyfile(ema, weights)
            entry["weights"] = {"path": str(weights), "bytes": weights.stat().st_size, "sha256": sha256(weights),
                                "format": "{'model': state_dict} of the EMA, as lvae/data/weights/qarv_small.pt"}
            if os.environ.get("OUT") and weights.stat().st_size > PART_MIB * MIB:
                parts = split_file(weights, PART_MIB * MIB)
                entry["weights"]["parts"] = parts
                entry["weights"]["join"] = f"cat {' '.join(parts)} > {weights.name}"
            self.summary["trained_weights"] = str(weights)
        elif entry["status"] == "ok":
            entry.update(status="failed", reason="the run wrote no last_ema.pt")
        if entry["status"] == "ok" and not entry.get("iterations"):
            entry.update(status="failed", reason="no training step was logged")
        self.record(name, **entry)

    # -- the end ---------------------------------------------------------------------------------------
    def finish(self) -> int:
        st = self.summary["steps"]
        coding = st["coding"].get("qarv_base") or {}
        self.summary["numbers"] = {
            "cuda_tests": st["cuda_tests"].get("counts"),
            f"qarv_base_{coding.get('size', '?')}_{coding.get('device', '?')}_encode_s": coding.get("encode_s"),
            f"qarv_base_{coding.get('size', '?')}_{coding.get('device', '?')}_decode_s": coding.get("decode_s"),
            "train_it_per_s_fp32": st["train_fp32"].get("it_per_s"),
            "train_it_per_s_amp": st["train_amp"].get("it_per_s"),
            "final_loss_fp32": st["train_fp32"].get("final_loss"),
            "final_loss_amp": st["train_amp"].get("final_loss"),
            "finetune_iterations": st["finetune"].get("iterations"),
            "finetune_final_loss": st["finetune"].get("final_loss"),
            "trained_weights": self.summary.get("trained_weights"),
        }
        failed = [n for n in STEPS if st[n]["status"] in ("failed", "timeout", "pending")]
        self.summary["failed_steps"] = failed
        self.summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()
        shutil.rmtree(self.work, ignore_errors=True)
        self.print_table()
        return 1 if failed else 0

    def print_table(self) -> None:
        st = self.summary["steps"]

        def fmt(v: Any, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        notes = {
            "setup": lambda e: e.get("reason") or ", ".join(e.get("wheels", [])),
            "info": lambda e: e.get("reason") or (f"{self.summary.get('device')}, "
                                                  f"torch {e.get('versions', {}).get('torch')}"),
            "cuda_tests": lambda e: e.get("reason") or ", ".join(
                f"{v} {k}" for k, v in (e.get("counts") or {}).items()),
            "coding": lambda e: e.get("reason") or "qarv_base {size} {device}: encode {enc} s, decode {dec} s".format(
                size=e.get("qarv_base", {}).get("size"), device=e.get("qarv_base", {}).get("device"),
                enc=fmt(e.get("qarv_base", {}).get("encode_s"), ".3f"),
                dec=fmt(e.get("qarv_base", {}).get("decode_s"), ".3f")),
            "eval": lambda e: e.get("reason") or "bpp {} / PSNR {}".format(
                "/".join(fmt(v, ".3f") for v in (e.get("results") or {}).get("bpp") or []),
                "/".join(fmt(v, ".2f") for v in (e.get("results") or {}).get("psnr") or [])),
        }
        for n in ("train_fp32", "train_amp", "finetune"):
            notes[n] = lambda e: e.get("reason") or "{} it, {} it/s, loss {} -> {}".format(
                e.get("iterations"), fmt(e.get("it_per_s"), ".2f"), fmt(e.get("first_loss"), ".4g"),
                fmt(e.get("final_loss"), ".4g"))
        print()
        print(f"{'step':<11} {'status':<8} {'seconds':>8}  notes")
        for n in STEPS:
            e = st[n]
            print(f"{n:<11} {e['status']:<8} {fmt(e.get('duration_s'), '8.1f'):>8}  {str(notes[n](e))[:110]}")
        print(f"summary: {self.out / SUMMARY}; log: {self.out / LOG}"
              + (f"; weights: {self.summary['trained_weights']}" if self.summary.get("trained_weights") else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check.sh", description="GPU check of lvae (docs/gpu.md)")
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny sizes")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: $OUT if set, else results/gpu, or results/gpu/dry-run)")
    ap.add_argument("--minutes", type=float, default=None, help="time budget of everything (default: 8; dry run 1.5)")
    ap.add_argument("--batch", type=int, default=16, help="training batch size on the GPU (default: 16)")
    ap.add_argument("--speed-iters", type=int, default=300, help="iterations of each speed run (default: 300)")
    ap.add_argument("--data", type=Path, default=None, help="training images (default: .gpu_data/train)")
    args = ap.parse_args(argv)
    minutes = args.minutes if args.minutes is not None else (1.5 if args.dry_run else 8.0)
    if not (math.isfinite(minutes) and minutes > 0) or args.batch < 1 or args.speed_iters < 2:
        print("gpu_check.sh: error: --minutes must be positive, --batch at least 1, --speed-iters at least 2",
              file=sys.stderr)
        return 2
    t0 = float(os.environ.get("GPU_CHECK_T0") or time.time())
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else
                       REPO / "results" / "gpu" / ("dry-run" if args.dry_run else ""))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = os.environ.get("PYTHON") or sys.executable
    s = Settings(args.dry_run, minutes, args.batch, args.speed_iters, args.data.resolve() if args.data else None)
    check = Check(s, out, python, t0)
    print(f"[gpu_check] {'dry run, ' if s.dry else ''}budget {minutes:g} min, output in {out}", flush=True)
    steps = [("setup", check.setup), ("info", check.info), ("cuda_tests", check.cuda_tests),
             ("coding", check.coding), ("eval", check.eval), ("train_fp32", lambda: check.train_speed(amp=False)),
             ("train_amp", lambda: check.train_speed(amp=True)), ("finetune", check.finetune)]
    for name, step in steps:
        t = time.monotonic()
        try:
            step()
        except Exception as exc:  # a bug in reading one step's results must not cost the others
            check.record(name, status="failed", reason=f"gpu_check.py: {type(exc).__name__}: {exc}",
                         duration_s=round(time.monotonic() - t, 1))
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
