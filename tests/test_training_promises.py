"""What train-var-rate.py promises, checked through its entry point (``lvae.training.main``):
the lr schedule and the EMA warm-up read back from what the run wrote, the lines that say what
trains where and how long it will take, every precondition checked before anything heavy is
built, and one image reader for training and evaluation (issue 25, points 4, 6 and 8).

Each run is qarv_tiny on 64×64 crops for a few iterations (about a second on one CPU thread).
"""
import json
import math
import os
import re
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae.io import load_image
from lvae.training import main
from lvae.training import trainer as trainer_module
from lvae.training.checkpoint import load_training_checkpoint
from lvae.training.data import ImageFolderCrops
from lvae.training.trainer import format_duration
from lvae.training.validation import load_validation_images

TRAIN = Path(__file__).parent / "data" / "train_small"
PREFIX = "train-var-rate.py: "


def args(runs: Path, name: str, *extra: str, device: str | None = "cpu") -> list[str]:
    out = [
        "--model", "qarv_tiny", "--trainset", str(TRAIN), "--valset", "none", "--transform", "crop=64",
        "--batch_size", "1", "--workers", "0", "--runs_dir", str(runs), "--name", name,
    ]
    if device is not None:
        out += ["--device", device]
    return out + list(extra)


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in read_log(run_dir) if r["type"] == kind]


def said(text: str) -> list[str]:
    """The script's own lines in captured stderr (the progress bar's ``\\r`` updates left out)."""
    lines = re.split(r"[\r\n]+", text)
    return [line.strip() for line in lines if line.strip().startswith(PREFIX)]


@pytest.fixture
def heavy(monkeypatch):
    """A spy on what a run builds: the model, the training data set, the data loader and the
    validation images, in the order the trainer asks for them."""
    events: list[str] = []

    def spy(attr: str, label: str) -> None:
        real = getattr(trainer_module, attr)

        def wrapped(*a, **k):
            events.append(label)
            return real(*a, **k)

        monkeypatch.setattr(trainer_module, attr, wrapped)

    spy("load_model", "model")
    spy("ImageFolderCrops", "dataset")
    spy("DataLoader", "loader")
    spy("load_validation_images", "valset")
    return events


# -- point 4: the wiring of --lrf_min and of the EMA warm-up -----------------------------------------
def schedule(sched: str, k: int, total: int, lrf_min: float, warmup: int) -> float:
    """The lr factor of 0-based step ``k``, written out here (not lvae's lr_factor)."""
    def cos_down(progress: float) -> float:
        return lrf_min + (1 - lrf_min) * (1 + math.cos(math.pi * progress)) / 2

    if sched == "cosine":
        f = cos_down(k / total)
    else:  # const-0.5-cos: constant for the first half, then the cosine
        f = 1.0 if k < total / 2 else cos_down((k - total / 2) / (total / 2))
    return f * ((k + 1) / warmup if k < warmup else 1.0)


@pytest.mark.parametrize("sched, lrf_min, warmup", [("cosine", 0.3, 0), ("const-0.5-cos", 0.5, 2)])
def test_the_lr_read_back_from_the_log_follows_the_schedule_with_lrf_min(tmp_path, one_thread, sched, lrf_min,
                                                                           warmup):
    """Every step's lr (logged every step) and the lr left in last.pt's optimizer are the schedule's,
    with the --lrf_min given: a trainer that passed the default 0.01 instead would log other values."""
    total, lr = 6, 2e-3
    runs = tmp_path / "runs"
    assert main(args(runs, "lr", "--iterations", str(total), "--lr", str(lr), "--lr_sched", sched,
                     "--lrf_min", str(lrf_min), "--lr_warmup", str(warmup), "--log_every", "1")) == 0
    train = records(runs / "lr", "train")
    assert [r["iteration"] for r in train] == list(range(1, total + 1))
    expected = [lr * schedule(sched, k, total, lrf_min, warmup) for k in range(total)]
    assert [r["lr"] for r in train] == pytest.approx(expected, rel=1e-9)
    ckpt = load_training_checkpoint(runs / "lr" / "last.pt")
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == pytest.approx([expected[-1]] * 2, rel=1e-9)


def _ema_decay(ema: dict, before: dict, after: dict, names: list[str]) -> float:
    """The ``d`` of ``ema = d·before + (1 − d)·after`` (least squares over all parameters), after
    checking that the EMA is such a mixture."""
    num = den = 0.0
    for n in names:
        e, b, a = (t[n].double() for t in (ema, before, after))
        num += float(((e - a) * (b - a)).sum())
        den += float(((b - a) ** 2).sum())
    assert den > 0  # the step moved the weights
    d = num / den
    for n in names:
        mix = d * before[n].double() + (1 - d) * after[n].double()
        assert torch.allclose(ema[n].double(), mix, atol=1e-5, rtol=0), n
    return d


def test_the_ema_warm_up_read_back_from_the_weights(tmp_path, one_thread):
    """From known initial weights (--weights), one step, then a resume to a second: the EMA
    in last.pt is ``d·previous EMA + (1 − d)·new weights`` with d = decay·(1 − exp(−step/warmup))
    at step 1 and step 2 (decay 0.9, warm-up 1 step: d = 0.569 and 0.778). A warm-up one step
    early (step 2's decay at step 1) or one step late (decay 0 at step 1) gives another d."""
    torch.manual_seed(5)
    init = lvae.get_model("qarv_tiny")
    names = [n for n, _ in init.named_parameters()]
    torch.save({"model": init.state_dict()}, tmp_path / "init.pt")
    runs = tmp_path / "runs"
    common = ("--lr", "1e-2", "--lr_sched", "constant", "--ema_decay", "0.9", "--ema_warmup", "1")
    assert main(args(runs, "ema", "--iterations", "1", "--weights", str(tmp_path / "init.pt"), *common)) == 0
    one = load_training_checkpoint(runs / "ema" / "last.pt")
    assert one["iteration"] == 1
    d1 = _ema_decay(one["ema"], init.state_dict(), one["model"], names)
    assert d1 == pytest.approx(0.9 * (1 - math.exp(-1)), abs=1e-3)

    # A run started from --weights resumes (it was refused: "--resume and --weights exclude each
    # other", from its own saved config) and takes its weights from last.pt, not from that file.
    (tmp_path / "init.pt").unlink()
    assert main(["--resume", str(runs / "ema"), "--iterations", "2"]) == 0
    two = load_training_checkpoint(runs / "ema" / "last.pt")
    assert two["iteration"] == 2
    d2 = _ema_decay(two["ema"], one["ema"], two["model"], names)
    assert d2 == pytest.approx(0.9 * (1 - math.exp(-2)), abs=1e-3)
    # last_ema.pt, the published shape, holds the same EMA
    published = torch.load(runs / "ema" / "last_ema.pt", weights_only=True)["model"]
    assert all(torch.equal(published[n], two["ema"][n]) for n in names)


# -- point 6: say what trains where, and how long it will take -----------------------------------------
def test_the_start_line_names_model_parameters_device_batch_and_iterations(tmp_path, one_thread, capsys, heavy):
    runs = tmp_path / "runs"
    assert main(args(runs, "start", "--iterations", "2", "--batch_size", "2", "--accum_num", "2",
                     "--valset", str(TRAIN), "--val_steps", "1")) == 0
    lines = said(capsys.readouterr().err)
    n_params = sum(p.numel() for p in lvae.get_model("qarv_tiny").parameters())
    assert lines == [
        f"{PREFIX}training qarv_tiny ({n_params:,} parameters) on cpu: batch 4 = 2 × 2 accumulated, "
        f"2 iterations, run folder {runs / 'start'}"
    ]
    assert heavy == ["model", "dataset", "loader", "valset"]  # the spy sees what a run builds

    assert main(["--resume", str(runs / "start"), "--iterations", "3"]) == 0
    assert said(capsys.readouterr().err) == [
        f"{PREFIX}continuing qarv_tiny ({n_params:,} parameters) on cpu: batch 4 = 2 × 2 accumulated, "
        f"iterations 2 to 3, run folder {runs / 'start'}"
    ]


def test_the_time_per_iteration_and_the_time_to_go_follow_the_first_steps(tmp_path, one_thread, capsys,
                                                                           monkeypatch):
    """After 5 timed steps (the first step, which pays for start-up, is not timed) one line gives
    the measured time per iteration and the time the remaining iterations will take; log.jsonl
    holds the same numbers. Slow steps (past ETA_MAX_SECONDS: qarv_base on a CPU takes a minute
    each) are reported after the first timed one."""
    runs = tmp_path / "runs"
    assert main(args(runs, "eta", "--iterations", "8", "--log_every", "8")) == 0
    lines = said(capsys.readouterr().err)
    (speed,) = records(runs / "eta", "speed")
    assert (speed["iteration"], speed["steps"], speed["remaining"]) == (6, 5, 2)
    assert speed["s_per_iteration"] > 0
    assert speed["eta_s"] == pytest.approx(2 * speed["s_per_iteration"], rel=1e-9)
    eta_lines = [line for line in lines if "per iteration" in line]
    assert eta_lines == [
        f"{PREFIX}{speed['s_per_iteration']:.3g} s per iteration on cpu (measured over 5 step(s)): about "
        f"{format_duration(speed['eta_s'])} for the remaining 2 iterations (validation and checkpoints come on top)"
    ]
    assert lines.index(eta_lines[0]) > 0  # after the start line

    monkeypatch.setattr(trainer_module, "ETA_MAX_SECONDS", 0.0)
    assert main(args(runs, "slow", "--iterations", "4", "--log_every", "4")) == 0
    (speed,) = records(runs / "slow", "speed")
    assert (speed["iteration"], speed["steps"], speed["remaining"]) == (2, 1, 2)
    assert len([line for line in said(capsys.readouterr().err) if "per iteration" in line]) == 1

    # a run too short to have anything left after the measurement says nothing of it
    assert main(args(runs, "short", "--iterations", "1")) == 0
    assert not records(runs / "short", "speed")
    assert not [line for line in said(capsys.readouterr().err) if "per iteration" in line]


def test_durations_read_as_people_say_them():
    assert format_duration(0.37) == "0.4 s"
    assert format_duration(42) == "42 s"
    assert format_duration(17 * 60) == "17 min"
    assert format_duration(5.3 * 3600) == "5.3 h"
    assert format_duration(35_000 * 3600) == "35,000 h (1,458 days)"


def test_a_default_device_that_falls_back_to_the_cpu_says_so(tmp_path, one_thread, capsys, monkeypatch):
    """The README's GPU recipe on a machine without CUDA: the run goes on, on the CPU, and a line
    says so before training starts (and the start line names the device)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runs = tmp_path / "runs"
    assert main(args(runs, "nocuda", "--iterations", "1", device=None)) == 0
    lines = said(capsys.readouterr().err)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{PREFIX}no CUDA device here, so training runs on the CPU, many times slower")
    assert lines[1].startswith(f"{PREFIX}training qarv_tiny (") and " on cpu: " in lines[1]
    assert records(runs / "nocuda", "start")[0]["device"] == "cpu"


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_an_explicit_cuda_device_without_cuda_exits_2_creating_nothing(tmp_path, capsys, monkeypatch, heavy, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runs = tmp_path / "runs"
    assert main(args(runs, "gpu", "--iterations", "1", device=device)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{PREFIX}error: --device {device} was asked for, but CUDA is not available here "
                   "(use --device cpu)"]
    assert not runs.exists() and heavy == []


# -- point 6: every precondition before anything heavy -------------------------------------------------
def test_missing_wandb_stops_before_the_model_and_the_loaders(tmp_path, capsys, monkeypatch, heavy):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, as if not installed
    runs = tmp_path / "runs"
    assert main(args(runs, "wb", "--iterations", "1", "--wbmode", "offline")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'lvae[wandb]'" in err[0], err
    assert heavy == [] and not runs.exists()


def test_wandb_online_without_an_api_key_stops_before_anything(tmp_path, capsys, monkeypatch, heavy):
    """wandb installed but never logged in: online logging would ask for a key (or fail) only once
    everything is built; the check finds no WANDB_API_KEY and no netrc entry first."""
    monkeypatch.setitem(sys.modules, "wandb", types.ModuleType("wandb"))
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    runs = tmp_path / "runs"
    assert main(args(runs, "wb", "--iterations", "1", "--wbmode", "online")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wandb login" in err[0] and "--wbmode offline" in err[0], err
    assert heavy == [] and not runs.exists()

    # the entry `wandb login` writes is enough to pass the check (which then fails at the model, on purpose)
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    (tmp_path / "netrc").chmod(0o600)
    assert main(args(runs, "wb", "--iterations", "1", "--wbmode", "online", "--model_args", "nope=1")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad model arguments" in err[0], err
    assert heavy == ["model"] and not runs.exists()


@pytest.mark.parametrize(
    "extra, status, words",
    [
        (["--trainset", "{empty}"], 1, "no training images in"),
        (["--trainset", "{missing}"], 1, "is neither an existing folder nor a known data set"),
        (["--valset", "{empty}"], 1, "no validation images in"),
        (["--valset", "{missing}"], 1, "is neither an existing folder nor a known data set"),
        (["--weights", "{missing}"], 1, "no such checkpoint file"),
        (["--name", "taken"], 1, "exists: continue it with --resume taken"),
        (["--runs_dir", "{file}/runs"], 1, "is not a folder"),
        (["--model", "qarv_huge"], 1, "unknown model 'qarv_huge'"),
        (["--amp"], 2, "--amp needs a CUDA device"),
    ],
)
def test_preconditions_fail_before_anything_is_built_or_written(tmp_path, capsys, heavy, extra, status, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "file").write_text("not a folder")
    paths = {"{empty}": tmp_path / "empty", "{missing}": tmp_path / "missing", "{file}": tmp_path / "file"}
    for key, path in paths.items():
        extra = [e.replace(key, str(path)) for e in extra]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(args(tmp_path / "runs", "pre", "--iterations", "1", *extra)) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{PREFIX}error: ") and words in err[0], err
    assert heavy == []
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_workers_beyond_the_cpus_are_cut_with_one_line(tmp_path, one_thread, capsys, monkeypatch):
    """--workers 2 where the process may use 1 CPU: one line, 1 worker, and no warning from torch's
    DataLoader (which warned twice: when the loader is made and when its workers start)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    runs = tmp_path / "runs"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args(runs, "workers", "--iterations", "1", "--workers", "2")) == 0
    lines = said(capsys.readouterr().err)
    assert [line for line in lines if "--workers" in line] == [
        f"{PREFIX}--workers 2 is more than the 1 CPU(s) this process may use: loading data with 1 worker process(es)"
    ]
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]
    config = json.loads((runs / "workers" / "config.json").read_text())
    assert (config["workers"], config["data_workers"]) == (2, 1)


# -- point 8: training reads images as evaluation does -------------------------------------------------
def test_training_and_validation_read_images_as_evaluation_does(tmp_path):
    """A photo whose EXIF orientation says "rotate 90° clockwise" (tag 0x0112 = 6) and a 16-bit
    gray PNG: the training crops and the validation images hold the pixels lvae.io.load_image
    (the reader of `lvae eval` and `lvae compress`) gives, i.e. the rotated photo and v / 257."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)  # 128 wide, 64 tall as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(stored).save(photos / "rotated.png", exif=exif)
    shown = np.rot90(stored, k=-1)  # 64 wide, 128 tall, as viewers show it
    as_evaluated = (load_image(photos / "rotated.png")[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(as_evaluated, shown)

    crops = ImageFolderCrops(photos, crop=64, hflip=False)
    for _ in range(4):
        crop = (crops[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert any(np.array_equal(crop, shown[r:r + 64]) for r in range(65)), "not a window of the rotated photo"
    (val,) = load_validation_images(str(photos))
    np.testing.assert_array_equal(val[0].permute(1, 2, 0).numpy(), shown)

    deep = tmp_path / "deep"
    deep.mkdir()
    gray16 = rng.integers(0, 65536, (64, 64), dtype=np.uint16)
    Image.fromarray(gray16).save(deep / "gray16.png")
    expected = np.repeat(np.round(gray16 / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    crop = (ImageFolderCrops(deep, crop=64, hflip=False)[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(crop, expected)
    (val,) = load_validation_images(str(deep))
    np.testing.assert_array_equal(val[0].permute(1, 2, 0).numpy(), expected)
