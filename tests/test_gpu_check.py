"""benchmarks/gpu_check.sh: the CPU dry run end to end, and the helpers that read its steps' output.

The dry run took 27 s on the shared 2-core machine when this test was written.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lvae

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ("setup", "info", "cuda_tests", "coding", "eval", "train_fp32", "train_amp", "finetune")


def test_dry_run_writes_a_summary_with_every_step(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_CHECK_SITE")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    steps = summary["steps"]
    assert tuple(steps) == STEPS
    status = {name: steps[name]["status"] for name in STEPS}
    assert status == {"setup": "skipped", "info": "ok", "cuda_tests": "skipped", "coding": "ok", "eval": "ok",
                      "train_fp32": "ok", "train_amp": "skipped", "finetune": "ok"}, status
    assert "no CUDA" in steps["cuda_tests"]["reason"] and "CUDA" in steps["train_amp"]["reason"]
    assert summary["dry_run"] is True and summary["failed_steps"] == []
    assert summary["versions"]["torch"] == torch.__version__

    coding = steps["coding"]["qarv_base"]
    assert coding["device"] == "cpu" and coding["encode_s"] > 0 and coding["decode_s"] > 0
    ev = steps["eval"]
    assert len(ev["lambdas"]) == 2 and all(b > 0 for b in ev["results"]["bpp"])
    assert ev["results"]["bpp"][0] < ev["results"]["bpp"][1]  # a larger λ spends more bits
    fp32 = steps["train_fp32"]
    assert fp32["iterations"] == 4 and fp32["it_per_s"] > 0 and math.isfinite(fp32["final_loss"])

    ft = steps["finetune"]
    assert ft["iterations"] >= 1 and math.isfinite(ft["final_loss"])
    weights = Path(ft["weights"]["path"])
    assert weights == out / "finetune" / "qarv_small-ft-ema.pt" and summary["trained_weights"] == str(weights)
    assert (out / "finetune" / "config.json").is_file() and (out / "finetune" / "log.jsonl").is_file()
    assert json.loads((out / "finetune" / "config.json").read_text())["max_minutes"] == ft["max_minutes"]
    # The packaged file's format: {'model': state_dict} with the same keys; get_model loads it.
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    packaged = torch.load(REPO / "lvae/data/weights/qarv_small.pt", map_location="cpu", weights_only=True)
    assert set(saved) == {"model"} and saved["model"].keys() == packaged["model"].keys()
    lvae.get_model("qarv_small", pretrained=str(weights))
    assert "finetune" in proc.stdout and "summary:" in proc.stdout  # the closing table


def test_bad_arguments_exit_2(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--minutes", "-1", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error:" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_pytest_counts_are_read_from_the_last_summary_line(benchmark_script):
    gc = benchmark_script("gpu_check")
    out = "....s\n2 passed in 0.1s\nmore\n=== 3 passed, 1 skipped, 180 deselected, 2 warnings in 12.34s ===\n"
    assert gc.parse_pytest_counts(out) == {"passed": 3, "skipped": 1, "deselected": 180, "warnings": 2}
    assert gc.parse_pytest_counts("1 failed, 1 error in 2.00s") == {"failed": 1, "errors": 1}
    assert gc.parse_pytest_counts("no summary here") == {}


def test_training_numbers_leave_out_the_warm_up_window(benchmark_script):
    gc = benchmark_script("gpu_check")
    log = [{"type": "start", "iteration": 0}]
    log += [{"type": "train", "iteration": i, "loss": 10.0 - i / 100, "it_per_s": 2.0 if i == 50 else 10.0}
            for i in (50, 100, 150)]
    log.append({"type": "stopped", "iteration": 150, "reason": "max_minutes"})
    n = gc.training_numbers(log, seconds=40.0)
    assert n["iterations"] == 150 and n["it_per_s"] == 10.0 and n["it_per_s_first_window"] == 2.0
    assert n["overhead_s"] == pytest.approx(25.0)
    assert (n["first_loss"], n["final_loss"]) == (9.5, 8.5)
    assert n["stopped"]["reason"] == "max_minutes" and not n["done"]
    assert gc.training_numbers([{"type": "start"}], 1.0) == {}


def test_large_weights_are_split_into_parts_that_join_back(tmp_path, benchmark_script):
    gc = benchmark_script("gpu_check")
    blob = os.urandom(2500)
    f = tmp_path / "w.pt"
    f.write_bytes(blob)
    parts = gc.split_file(f, 1000)
    assert parts == ["w.pt.part1", "w.pt.part2", "w.pt.part3"]
    assert b"".join((tmp_path / p).read_bytes() for p in parts) == blob


def test_autocast_is_chosen_only_when_clean_and_faster(benchmark_script):
    gc = benchmark_script("gpu_check")

    def choice(fp32, amp):
        check = gc.Check.__new__(gc.Check)
        check.summary = {"steps": {"train_fp32": fp32, "train_amp": amp}}
        return check.choose_amp()[0]

    fp32 = {"status": "ok", "it_per_s": 10.0, "final_loss": 1.00}
    assert choice(fp32, {"status": "ok", "it_per_s": 13.0, "final_loss": 1.01, "skipped_steps": 2})
    assert not choice(fp32, {"status": "ok", "it_per_s": 11.0, "final_loss": 1.00})  # not 15 % faster
    assert not choice(fp32, {"status": "ok", "it_per_s": 13.0, "final_loss": 1.05})  # worse loss
    assert not choice(fp32, {"status": "ok", "it_per_s": 13.0, "final_loss": None})
    assert not choice(fp32, {"status": "failed"})
    assert not choice(fp32, {"status": "timeout", "it_per_s": 20.0, "final_loss": 1.0})
    assert choice({"status": "failed"}, {"status": "ok", "it_per_s": 5.0, "final_loss": 1.0})


def test_prepare_gpu_data_holds_out_the_largest_and_keeps_under_the_cap(tmp_path, benchmark_script):
    prep = benchmark_script("prepare_gpu_data")
    from PIL import Image

    src = tmp_path / "src"
    rng = torch.Generator().manual_seed(0)
    sizes = {"a.jpg": (40, 30), "b.jpg": (64, 48), "c.jpg": (48, 64), "d.jpg": (30, 20)}  # b and c tie
    for sub, names in (("sunhays80", sizes), ("bsds500", {f"{i:03d}.jpg": (48, 32) for i in range(12)})):
        (src / sub).mkdir(parents=True)
        for name, (w, h) in names.items():
            arr = (torch.rand(h, w, 3, generator=rng) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(src / sub / name, quality=95)
    bsds_bytes = sorted(p.stat().st_size for p in (src / "bsds500").iterdir())
    sun_bytes = sum(p.stat().st_size for p in (src / "sunhays80").iterdir())
    held = tmp_path / "heldout.txt"
    out = tmp_path / "out"
    # A cap that leaves room for some but not all BSDS images (beside the manifest allowance).
    cap_bytes = sun_bytes + sum(bsds_bytes[:5]) + 96 * 1024
    assert prep.main([str(src), "--out", str(out), "--max-mib", str(cap_bytes / 2**20), "--heldout", "2",
                      "--heldout-list", str(held)]) == 0
    assert held.read_text().split() == ["b.jpg", "c.jpg"]  # the two largest (tied): by name
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert sorted(p.name for p in (out / "train" / "sunhays80").iterdir()) == ["a.jpg", "d.jpg"]
    kept = sorted(p.name for p in (out / "train" / "bsds500").iterdir())
    assert 4 <= len(kept) < 12 and manifest["counts"]["bsds500"] == len(kept)
    assert len(kept) + len(manifest["bsds500_dropped"]) == 12
    assert manifest["train_bytes"] <= cap_bytes - 96 * 1024
    for name in kept:  # copied byte for byte
        assert (out / "train" / "bsds500" / name).read_bytes() == (src / "bsds500" / name).read_bytes()
    # Deterministic: a rebuild gives the same manifest; a folder it did not make is refused.
    first = (out / "MANIFEST.json").read_text()
    assert prep.main([str(src), "--out", str(out), "--max-mib", str(cap_bytes / 2**20), "--heldout", "2",
                      "--heldout-list", str(held)]) == 0
    assert (out / "MANIFEST.json").read_text() == first
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    assert prep.main([str(src), "--out", str(tmp_path / "mine"), "--heldout-list", str(held)]) == 1
    assert (tmp_path / "mine" / "keep.txt").exists()
