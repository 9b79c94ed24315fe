"""The training loop behind ``train-var-rate.py``: a variable-rate model over its λ range, or one
member of a fixed-λ family at its λ (``--lmb``).

One :class:`Trainer` per process. Under ``torchrun`` the model is wrapped in
DistributedDataParallel, every rank reads its own shard of the data, and rank 0 alone writes the
run folder (``runs/<name>/``: ``config.json``, ``log.jsonl``, ``last.pt``, ``last_ema.pt``,
``best.pt``).
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import FrameType
from typing import Any, cast

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import __version__
from ..coding.contract import CodingModel, require_contract
from ..errors import LvaeError
from ..models.registry import load_model
from ..models.weights import load_checkpoint_state_dict, load_state_dict_strict
from ..utils.datasets import IMAGE_EXTENSIONS, resolve_dataset
from .checkpoint import (
    BEST,
    LAST,
    LAST_EMA,
    atomic_save,
    find_resume_checkpoint,
    load_training_checkpoint,
    param_checksum,
    rng_state,
    set_rng_state,
)
from .config import ConfigError, TrainConfig, TrainingError, merge_for_resume, parse_args, resolve_member
from .data import ImageFolderCrops, ResumableDistributedSampler, has_images, worker_init
from .distributed import DistContext, cleanup_distributed, setup_distributed
from .ema import ModelEma
from .schedule import SpikeGuard, lr_factor
from .tracking import RunLog, check_wandb, init_wandb
from .validation import (
    MIN_BD_POINTS,
    anchor_curve,
    bd_rate_vs_anchor,
    evaluate,
    load_validation_images,
    validation_lambdas,
)

__all__ = ["Trainer", "param_groups", "cuda_training_flags", "training_loss", "available_cpus", "format_duration",
           "main"]

PROG = "train-var-rate.py"

SPIKE_FACTOR = 10.0  # a grad norm above 10× the running median is a spike ...
SPIKE_WINDOW = 100  # ... of the last 100 norms
SPIKE_LR_CUT = 0.1  # a spike step runs at a tenth of the lr
MAX_SKIPPED_IN_A_ROW = 100  # non-finite gradients this many steps in a row: the run has diverged
# The time per iteration is measured over the steps after the first (which pays for start-up:
# worker processes, cuDNN's autotuner) and reported, with the time to go, after ETA_STEPS of them
# or after ETA_MAX_SECONDS, whichever comes first.
ETA_STEPS = 5
ETA_MAX_SECONDS = 60.0


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one): the count
    torch's DataLoader compares ``num_workers`` with."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``17 min``, ``5.3 h``, ``35,000 h (1,458 days)``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours:,.0f} h ({hours / 24:,.0f} days)"


def _say(message: str) -> None:
    """One line on stderr, above the progress bar."""
    tqdm.write(f"{PROG}: {message}", file=sys.stderr)


def param_groups(model: nn.Module | CodingModel, weight_decay: float) -> list[dict[str, Any]]:
    """Two Adam groups: weight decay on weight matrices and kernels only, never on biases,
    per-channel gains (``gamma``), norms or the decoder's learned input ``bias``."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(("bias", "gamma")) or "norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _grad_scaler(device_type: str, enabled: bool) -> torch.amp.GradScaler:
    if hasattr(torch.amp, "GradScaler"):  # torch ≥ 2.3
        return torch.amp.GradScaler(device_type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


@contextmanager
def cuda_training_flags(device: torch.device) -> Iterator[None]:
    """On CUDA, for the span of the block: TF32 matrix products and convolutions, and cuDNN's
    autotuner (``cudnn.benchmark``); the previous settings come back afterwards.

    Training steps see one crop size, so autotuning pays off there; validation sees every image
    size (each new size would be autotuned again) and keeps plain float32, so it is left outside.
    Nothing changes on other devices.
    """
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    with warnings.catch_warnings():
        # torch ≥ 2.9 warns (once) that it prefers its fp32_precision settings; these flags still
        # work, and reading them after the new settings were used can raise, so lvae uses only these.
        warnings.filterwarnings("ignore", message="Please use the new API settings to control TF32")
        saved = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32, torch.get_float32_matmul_precision())
        cudnn.benchmark = True
        cudnn.allow_tf32 = True
        matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Please use the new API settings to control TF32")
            cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[:3]
            torch.set_float32_matmul_precision(saved[3])


def training_loss(out: dict[str, torch.Tensor], im: torch.Tensor, loss_norm: str, lmb_mid: float) -> torch.Tensor:
    """The loss to minimise: the model's ``loss`` (``mean(R + λ·D)``), or with ``loss_norm='lmb'``
    each image's ``R + λ·D`` (the model's ``rd``) weighted by ``lmb_mid / λ``.

    The model alone computes R + λ·D (:meth:`lvae.coding.contract.CodingModel.forward`); ``im``,
    the batch, is not needed for that and is kept for callers.

    NOTE: the weighting leaves each image's optimum unchanged, but without it the images with a
    large λ dominate the gradient, and a short run learns a rate that hardly depends on λ.
    """
    if loss_norm == "none":
        return out["loss"]
    return (out["rd"] * (lmb_mid / out["lmb"])).mean()


class Trainer:
    """Builds the model, data, optimizer and run folder from a config, then trains (:meth:`run`)."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, explicit: set[str] | None = None):
        self._t0 = time.monotonic()  # --max_minutes counts from here
        self.ctx = ctx
        self.resume_path: Path | None = None
        ckpt: dict[str, Any] | None = None
        if cfg.resume:
            cfg, ckpt = self._read_resume_checkpoint(cfg, explicit or set())
        self.cfg = cfg
        self._check_preconditions()  # before anything heavy is built or anything is written
        self._setup_model_and_optimizer(ckpt)
        self._setup_data()
        self._setup_validation()
        self._setup_resume_state(ckpt)
        self.ddp = self._wrap_distributed()
        self._setup_run_folder()
        self._signal: int | None = None
        self._signals_seen = 0
        self._skipped_in_a_row = 0
        self._lr = cfg.lr
        self._reset_window()

    # -- set-up steps (in the order __init__ runs them) ----------------------------------------
    def _check_preconditions(self) -> None:
        """Check, cheaply and before the model, the data or the run folder are made, everything a
        run needs (the device itself was checked when it was picked, :func:`setup_distributed`):
        ``--amp`` on CUDA only, the model name and ``--lmb`` (a fixed-λ family's member, which is
        written into the config), W&B (when asked for), the run folder (free, or the resumed one,
        and writable), ``--weights``, the training and validation folders (each with an image).
        The crop size is checked against the model's stride once the model is built
        (:meth:`_setup_model_and_optimizer`). Then say what will not be as asked: data-loading
        workers beyond the CPUs are cut to their number (one line, instead of torch's warnings),
        and a default device that fell back to the CPU is named (one line: training will be slow)."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.amp and ctx.device.type != "cuda":
            raise ConfigError("--amp needs a CUDA device")
        cfg.lmb = resolve_member(cfg)  # an unknown name raises here, with the known ones
        # rank 0 alone writes the run folder and talks to W&B; under torchrun its failure stops every rank
        self._planned_run_dir = Path(ctx.run_on_primary(self._check_outputs))
        if cfg.weights and self.resume_path is None and not Path(cfg.weights).expanduser().is_file():
            raise FileNotFoundError(f"--weights {cfg.weights}: no such checkpoint file")
        for folder, what in ((cfg.trainset, "training"), (cfg.valset, "validation")):
            if what == "validation" and folder.lower() == "none":
                continue
            found = resolve_dataset(folder)
            if not has_images(found):
                raise ValueError(
                    f"no {what} images in {found} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
                )
        cpus = available_cpus()
        self.workers = min(cfg.workers, cpus)
        if not ctx.is_primary:
            return
        if self.workers < cfg.workers:
            _say(f"--workers {cfg.workers} is more than the {cpus} CPU(s) this process may use: "
                 f"loading data with {self.workers} worker process(es)")
        if cfg.device is None and ctx.device.type == "cpu":
            _say("no CUDA device here, so training runs on the CPU, many times slower than on a GPU "
                 "(the time per iteration follows after the first steps; --device cpu chooses the CPU "
                 "without this note)")

    def _check_outputs(self) -> str:
        """Rank 0: W&B can log (if asked), and the run folder can be written; return its path.

        A new run's folder must not exist (an existing run is continued with ``--resume`` only)
        and must be creatable; nothing is created here."""
        cfg = self.cfg
        if cfg.wbmode != "disabled":
            check_wandb(cfg.wbmode)
        if self.resume_path is not None:
            run_dir = self.resume_path.parent
            if not os.access(run_dir, os.W_OK | os.X_OK):
                raise ValueError(f"cannot continue the run in {run_dir}: the folder is not writable")
            return str(run_dir)
        name = cfg.name or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(cfg.runs_dir) / name
        if run_dir.exists() or run_dir.is_symlink():
            raise ValueError(f"run folder {run_dir} exists: continue it with --resume {name}, or pick another --name")
        ancestor = run_dir.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise ValueError(f"cannot create the run folder {run_dir}: {ancestor} is not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ValueError(f"cannot create the run folder {run_dir}: {ancestor} is not writable")
        return str(run_dir)

    def _read_resume_checkpoint(self, cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, dict[str, Any]]:
        """Find and read ``last.pt`` (sets :attr:`resume_path`); return the merged config and the checkpoint."""
        resume_path = self.resume_path = find_resume_checkpoint(cast(str, cfg.resume), cfg.runs_dir)
        ckpt = load_training_checkpoint(resume_path)
        cfg = merge_for_resume(ckpt["config"], cfg, explicit)
        if ckpt["model_name"] != cfg.model or ckpt["model_args"] != cfg.model_args:
            raise ConfigError(f"{resume_path} was written for another model than its config names")
        return cfg, ckpt

    def _setup_model_and_optimizer(self, ckpt: dict[str, Any] | None) -> None:
        """The model with its first weights (a resumed run's from ``last.pt``, else ``--weights``,
        else random), Adam, the gradient scaler, the EMA and the spike guard; the step counters at zero."""
        cfg = self.cfg
        # Every rank builds the same initial weights (DDP would broadcast rank 0's anyway).
        torch.manual_seed(cfg.seed)
        member = {} if cfg.lmb is None else {"lmb": cfg.lmb}
        module = load_model(cfg.model, "random", model_args={**cfg.model_args, **member}, device=self.ctx.device,
                            coding=False)
        if ckpt is not None:
            load_state_dict_strict(module, ckpt["model"], source="last.pt")
        elif cfg.weights:
            load_state_dict_strict(module, load_checkpoint_state_dict(cfg.weights), source=cfg.weights)
        try:
            self.model: CodingModel = require_contract(module, cfg.model)
        except TypeError as exc:  # e.g. the R(D) bound model: a measuring instrument, not a codec
            raise ConfigError(f"{exc}; train-var-rate.py trains codecs") from None
        stride = self.model.max_stride
        if cfg.crop % stride:
            raise ConfigError(f"the crop size must be a positive multiple of {stride} (the stride of {cfg.model}), "
                              f"got {cfg.crop}")
        self.model.train()
        self.optimizer = torch.optim.Adam(param_groups(self.model, cfg.wdecay), lr=cfg.lr)
        self.scaler = _grad_scaler(self.ctx.device.type, cfg.amp)
        self.ema = ModelEma(self.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema else None
        self.guard = SpikeGuard(SPIKE_FACTOR, SPIKE_WINDOW)
        self.iteration = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.wandb_id: str | None = None

    def _setup_data(self) -> None:
        """The training crops, this rank's sampler and the loader.

        The loader has its own generator, so the global RNG stream does not depend on when epochs
        start (a resumed run draws the same numbers).
        """
        cfg, ctx = self.cfg, self.ctx
        self.dataset = ImageFolderCrops(cfg.trainset, cfg.crop, cfg.hflip)
        per_rank = math.ceil(len(self.dataset) / ctx.world_size)
        if per_rank < cfg.batch_size:
            raise ValueError(
                f"the training set has {len(self.dataset)} images: too few for {ctx.world_size} process(es) "
                f"× --batch_size {cfg.batch_size}"
            )
        self.sampler = ResumableDistributedSampler(self.dataset, ctx.world_size, ctx.rank, seed=cfg.seed)
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=self.workers,  # --workers, at most the CPUs (_check_preconditions)
            pin_memory=ctx.device.type == "cuda",
            drop_last=True,
            persistent_workers=self.workers > 0,
            worker_init_fn=worker_init,
            generator=self.loader_generator,
        )

    def _setup_validation(self) -> None:
        """The validation images, λ values and anchor curve, and the best metric so far (none)."""
        cfg = self.cfg
        self.validating = cfg.valset.lower() != "none"
        self.val_images = load_validation_images(cfg.valset) if self.validating else []
        self.val_lmbs = validation_lambdas(self.model.lmb_range, cfg.val_steps)
        self.lmb_mid = (self.model.lmb_range[0] * self.model.lmb_range[1]) ** 0.5
        self.anchor = anchor_curve(cfg.valset) if self.validating else None
        # A BD-rate takes a curve: at fewer λ (a fixed-λ member has one) there is none to keep best.pt by.
        self.no_bd_rate = self.anchor is not None and len(self.val_lmbs) < MIN_BD_POINTS
        if self.no_bd_rate:
            self.anchor = None
        self.best: dict[str, Any] = {"metric": self._best_metric_name(), "value": None, "iteration": None}

    def _setup_resume_state(self, ckpt: dict[str, Any] | None) -> None:
        """Restore the saved state of a resumed run (:meth:`_load_state`), or seed this rank's
        random streams for a new one."""
        if ckpt is not None:
            self._load_state(ckpt)
        else:
            torch.manual_seed(self.cfg.seed + self.ctx.rank)  # each rank its own λ draws and crops
            random.seed(self.cfg.seed + self.ctx.rank)

    def _wrap_distributed(self) -> CodingModel | DistributedDataParallel:
        """The module a training step calls: the model, in DistributedDataParallel under torchrun."""
        device = self.ctx.device
        if not self.ctx.distributed:
            return self.model
        return DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def _setup_run_folder(self) -> None:
        """Rank 0 prepares the run folder (:meth:`_prepare_run`) and logs the start; every rank learns its path."""
        self.log: RunLog | None = None
        self.run_dir = Path(self.ctx.run_on_primary(self._prepare_run))
        self.cfg.name = self.run_dir.name
        if self.log is None:
            return
        if self.resume_path is not None:
            self.log.write("resume", self.iteration, checkpoint=str(self.resume_path), world_size=self.ctx.world_size)
        else:
            self.log.write("start", 0, world_size=self.ctx.world_size, device=str(self.ctx.device))

    # -- set-up helpers ----------------------------------------------------------------------
    def _best_metric_name(self) -> str:
        """BD-rate when the valset has a VTM anchor and lvae.metrics is there; the validation loss otherwise."""
        if self.anchor is not None:
            try:
                from ..metrics import bd_rate  # noqa: F401
            except ImportError:
                return "loss"
            return "bd_rate"
        return "loss"

    def _resolved_config(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            **cfg.to_dict(),
            "world_size": self.ctx.world_size,
            "global_batch": cfg.batch_size * cfg.accum_num * self.ctx.world_size,
            "data_workers": self.workers,
            "model_config": self.model.config.to_dict() if hasattr(self.model, "config") else None,
            "val_lambdas": self.val_lmbs,
            "best_metric": self.best["metric"],
            "lvae_version": __version__,
            "torch_version": torch.__version__,
        }

    def _prepare_run(self) -> str:
        """Rank 0: create (or, resuming, reuse) the run folder, write the resolved config, open the logs."""
        cfg = self.cfg
        run_dir = self._planned_run_dir  # checked by _check_outputs
        if self.resume_path is None:
            try:
                run_dir.mkdir(parents=True)
            except FileExistsError:  # made since the check
                raise ValueError(
                    f"run folder {run_dir} exists: continue it with --resume {run_dir.name}, or pick another --name"
                ) from None
        cfg.name = run_dir.name
        (run_dir / "config.json").write_text(json.dumps(self._resolved_config(), indent=2) + "\n")
        wb = None
        if cfg.wbmode != "disabled":
            wb = init_wandb(cfg.wbproject, cfg.wbgroup, cfg.name, cfg.wbmode, self._resolved_config(), run_dir,
                            run_id=self.wandb_id)
            self.wandb_id = wb.id
        self.log = RunLog(run_dir, wb)
        return str(run_dir)

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        """Everything of ``last.pt`` but the weights (loaded with the model) back in its place."""
        cfg, ctx = self.cfg, self.ctx
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if cfg.amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"])
            else:
                self.ema = ModelEma(self.model, cfg.ema_decay, cfg.ema_warmup)
        self.guard.load_state_dict(ckpt.get("spike_guard", {"history": []}))
        self.iteration = int(ckpt["iteration"])
        self.epoch = int(ckpt.get("epoch", 0))
        self.batch_in_epoch = int(ckpt.get("batch_in_epoch", 0))
        saved_best = ckpt.get("best") or {}
        if saved_best.get("metric") == self.best["metric"]:
            self.best = dict(saved_best)
        self.wandb_id = ckpt.get("wandb_id")
        rngs = ckpt.get("rng") or []
        same_layout = ckpt.get("world_size") == ctx.world_size and len(rngs) == ctx.world_size
        if same_layout:
            set_rng_state(rngs[ctx.rank])
        else:
            # Another process count: the data order and the random streams start afresh.
            if ctx.is_primary:
                warnings.warn(
                    f"resuming with {ctx.world_size} process(es) instead of {ckpt.get('world_size')}: "
                    "a new data epoch and new random streams begin",
                    RuntimeWarning,
                    stacklevel=2,
                )
            torch.manual_seed(cfg.seed + ctx.rank + 1_000_003 * self.iteration)
            random.seed(cfg.seed + ctx.rank + 1_000_003 * self.iteration)
            self.epoch += 1
            self.batch_in_epoch = 0

    # -- the loop ------------------------------------------------------------------------------
    def _batches(self) -> Iterator[torch.Tensor]:
        """Endless batches; ``epoch``/``batch_in_epoch`` count what has been handed out."""
        skip = self.batch_in_epoch * self.cfg.batch_size
        while True:
            self.sampler.set_position(self.epoch, skip)
            self.loader_generator.manual_seed(self.cfg.seed + 7919 * self.epoch + self.ctx.rank)
            skip = 0
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _reset_window(self) -> None:
        """Start a new logging window (averages between two log lines)."""
        self._acc = torch.zeros(4, device=self.ctx.device)  # loss, bpp, psnr, micro-batches
        self._norms: list[float] = []
        self._spikes = 0
        self._skipped = 0
        self._window_start = time.perf_counter()
        self._window_iter = self.iteration

    def train_step(self, batches: Iterator[torch.Tensor]) -> None:
        """One optimizer step over ``accum_num`` micro-batches."""
        cfg, ctx = self.cfg, self.ctx
        accum = cfg.accum_num
        for k in range(accum):
            im = next(batches).to(ctx.device, non_blocking=True)
            last_micro = k == accum - 1
            # Gradients are all-reduced only on the last micro-batch of the step.
            ddp = self.ddp if isinstance(self.ddp, DistributedDataParallel) else None
            sync = ddp.no_sync() if (ddp is not None and not last_micro) else nullcontext()
            with sync:
                with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=cfg.amp):
                    out = self.ddp(im)  # λ drawn per image
                loss = training_loss(out, im, cfg.loss_norm, self.lmb_mid)
                self.scaler.scale(loss / accum).backward()
            self._acc += torch.stack([out["loss"].detach().float(), out["bpp"].detach().float(),
                                      out["psnr"].detach().float(), torch.ones((), device=ctx.device)])

        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        # NOTE: .item() is a CPU-GPU sync point, needed every step by the spike guard.
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        finite = math.isfinite(norm)
        spike = self.guard.check(norm)
        lr = cfg.lr * lr_factor(cfg.lr_sched, self.iteration, cfg.iterations, cfg.lrf_min, cfg.lr_warmup)
        if spike:
            lr *= SPIKE_LR_CUT
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips the step itself when gradients are not finite
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if finite and not spike and self.ema is not None:
            self.ema.update(self.model, self.iteration + 1)

        self._lr = lr
        if finite:
            self._norms.append(norm)
            self._skipped_in_a_row = 0
        else:
            self._skipped += 1
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW and not cfg.amp:
                raise TrainingError(
                    f"gradients were not finite for {MAX_SKIPPED_IN_A_ROW} steps in a row (iteration "
                    f"{self.iteration + 1}): training diverged; lower --lr or resume from an earlier checkpoint"
                )
        self._spikes += int(spike)

    def _log_train(self, pbar: tqdm) -> None:
        """Average the window over all ranks (a collective: every rank calls it) and log it."""
        acc = self.ctx.all_reduce_(self._acc.clone()).tolist()
        n = max(acc[3], 1.0)
        steps = self.iteration - self._window_iter
        elapsed = time.perf_counter() - self._window_start
        stats = {
            "loss": acc[0] / n,
            "bpp": acc[1] / n,
            "psnr": acc[2] / n,
            "lr": self._lr,
            "grad_norm": sum(self._norms) / len(self._norms) if self._norms else None,
            "spikes": self._spikes,
            "skipped": self._skipped,
            "it_per_s": steps / elapsed if elapsed > 0 else None,
            "epoch": self.epoch,
        }
        if self.log is not None:
            self.log.write("train", self.iteration, **stats)
            self.log.wandb_log({f"train/{k}": v for k, v in stats.items()}, self.iteration)
            pbar.set_postfix(
                loss=f"{stats['loss']:.4g}", bpp=f"{stats['bpp']:.3f}", psnr=f"{stats['psnr']:.2f}",
                lr=f"{stats['lr']:.2e}", refresh=False,
            )
        self._reset_window()

    def validate(self) -> dict[str, Any]:
        """Evaluate (the EMA if kept, else the model) on the validation set; keep ``best.pt``."""
        target = self.ema.module if self.ema is not None else self.model
        res = evaluate(target, self.val_images, self.val_lmbs, self.ctx)
        bd = None
        if self.anchor is not None:
            bd = bd_rate_vs_anchor(self.anchor, res["bpp"], res["psnr"])
        res["bd_rate"] = bd
        value = bd if self.best["metric"] == "bd_rate" else res["loss"]
        improved = value is not None and (self.best["value"] is None or value < self.best["value"])
        if improved:
            self.best = {"metric": self.best["metric"], "value": value, "iteration": self.iteration}
        if self.log is not None:
            if improved:
                atomic_save({"model": target.state_dict()}, self.run_dir / BEST)
            which = "ema" if self.ema is not None else "model"
            self.log.write("val", self.iteration, model=which, best=improved, **res)
            scalars = {"val/loss": res["loss"], "val/bd_rate": bd}
            for lmb, b, p in zip(res["lmb"], res["bpp"], res["psnr"]):
                scalars[f"val/bpp_lmb{lmb:.0f}"] = b
                scalars[f"val/psnr_lmb{lmb:.0f}"] = p
            self.log.wandb_log(scalars, self.iteration)
            curve = ", ".join(f"{b:.3f}/{p:.2f}" for b, p in zip(res["bpp"], res["psnr"]))
            bd_text = f", BD-rate {bd:+.2f}%" if bd is not None else ""
            tqdm.write(f"[{self.iteration}] val ({which}) bpp/PSNR: {curve}{bd_text}", file=sys.stderr)
        return res

    def save_checkpoint(self) -> None:
        """Write ``last.pt`` (and ``last_ema.pt``) on rank 0; every rank must call it (collectives)."""
        rngs = self.ctx.all_gather_object(rng_state())
        checksums = self.ctx.all_gather_object(param_checksum(self.model))
        if not self.ctx.is_primary:
            return
        cfg = self.cfg
        ckpt = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "spike_guard": self.guard.state_dict(),
            "iteration": self.iteration,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best": self.best,
            "rng": rngs,
            "world_size": self.ctx.world_size,
            "config": cfg.to_dict(),
            "model_name": cfg.model,
            "model_args": cfg.model_args,
            "wandb_id": self.wandb_id,
            "lvae_version": __version__,
        }
        atomic_save(ckpt, self.run_dir / LAST)
        if self.ema is not None:
            atomic_save({"model": self.ema.state_dict()}, self.run_dir / LAST_EMA)
        identical = len(set(checksums)) == 1
        if self.log is not None:
            self.log.write("checkpoint", self.iteration, checksums=checksums, identical=identical)
        if not identical:
            warnings.warn(f"model weights differ between ranks at iteration {self.iteration}: {checksums}",
                          RuntimeWarning, stacklevel=2)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Save at the next step boundary; a third signal (the first may arrive twice, from the
        # terminal and from torchrun) stops at once without saving.
        self._signals_seen += 1
        if self._signals_seen >= 3:
            raise KeyboardInterrupt
        if self._signal is None:
            self._signal = signum

    def _out_of_time(self) -> bool:
        limit = self.cfg.max_minutes
        return limit > 0 and time.monotonic() - self._t0 >= 60.0 * limit

    def _stop_request(self) -> tuple[int, bool]:
        """The signal number that asks to stop (0: none) and whether ``--max_minutes`` is reached,
        agreed by all ranks (any rank's signal or clock stops them all at the same step)."""
        sig, late = self._signal or 0, int(self._out_of_time())
        if self.ctx.distributed:
            t = self.ctx.all_reduce_(torch.tensor([sig, late], device=self.ctx.device), op="max")
            sig, late = (int(v) for v in t.tolist())
        return sig, bool(late)

    def _announce(self) -> None:
        """Rank 0: the line that opens the run (what trains, where, how much); a second one when
        the validation set has a BD-rate anchor that too few λ cannot be compared with."""
        cfg, ctx = self.cfg, self.ctx
        n_params = sum(p.numel() for p in self.model.parameters())
        batch = cfg.batch_size * cfg.accum_num * ctx.world_size
        parts = f" = {ctx.world_size} processes × {cfg.batch_size}" if ctx.world_size > 1 else ""
        if cfg.accum_num > 1:
            parts += f"{' × ' if parts else f' = {cfg.batch_size} × '}{cfg.accum_num} accumulated"
        span = (f"iterations {self.iteration:,} to {cfg.iterations:,}" if self.iteration
                else f"{cfg.iterations:,} iterations")
        verb = "continuing" if self.resume_path is not None else "training"
        what = cfg.model if cfg.lmb is None else f"{cfg.model} λ={cfg.lmb:g}"
        _say(f"{verb} {what} ({n_params:,} parameters) on {ctx.device}: batch {batch}{parts}, {span}, "
             f"run folder {self.run_dir}")
        if self.no_bd_rate:
            at = ", ".join(f"{v:g}" for v in self.val_lmbs)
            _say(f"validating at λ = {at} only: no BD-rate against the {cfg.valset} anchor (it takes a curve of "
                 f"{MIN_BD_POINTS} λ or more); best.pt keeps the lowest validation loss")

    def _report_speed(self, s_per_iteration: float, steps: int) -> None:
        """Rank 0: the measured time per iteration and the time the remaining iterations will take."""
        remaining = self.cfg.iterations - self.iteration
        eta = s_per_iteration * remaining
        if self.log is None:
            return
        self.log.write("speed", self.iteration, s_per_iteration=s_per_iteration, steps=steps, remaining=remaining,
                       eta_s=eta, device=str(self.ctx.device))
        _say(f"{s_per_iteration:.3g} s per iteration on {self.ctx.device} (measured over {steps} step(s)): "
             f"about {format_duration(eta)} for the remaining {remaining:,} iterations "
             "(validation and checkpoints come on top)")

    def run(self) -> int:
        """Train to ``cfg.iterations`` (or until ``--max_minutes``); return 0, or 128 + signal number
        when stopped by a signal."""
        cfg = self.cfg
        if self.iteration >= cfg.iterations:
            if self.log is not None:
                tqdm.write(f"{self.run_dir} is at iteration {self.iteration} ≥ --iterations {cfg.iterations}: "
                           "nothing to do", file=sys.stderr)
                self.log.close()
            return 0
        if self.log is not None:
            self._announce()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        pbar = tqdm(total=cfg.iterations, initial=self.iteration, disable=not self.ctx.is_primary,
                    desc=self.run_dir.name, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
        batches = self._batches()
        self._reset_window()
        first = self.iteration
        timed: list[float] | None = []  # durations of the steps after the first, until the speed is reported
        try:
            while self.iteration < cfg.iterations:
                started = time.perf_counter()
                with cuda_training_flags(self.ctx.device):
                    self.train_step(batches)  # data loading included; it syncs with the device (the norm)
                self.iteration += 1
                pbar.update(1)
                if timed is not None and self.iteration > first + 1:
                    timed.append(time.perf_counter() - started)
                    if len(timed) >= ETA_STEPS or sum(timed) >= ETA_MAX_SECONDS:
                        if self.iteration < cfg.iterations:
                            self._report_speed(sum(timed) / len(timed), len(timed))
                        timed = None
                last = self.iteration == cfg.iterations
                sig, late = self._stop_request()
                late = late and not last and not sig
                if self.iteration % cfg.log_every == 0 or last or late:
                    self._log_train(pbar)
                paused = time.perf_counter()
                if self.validating and not (sig or late) and (self.iteration % cfg.val_every == 0 or last):
                    self.validate()
                if sig or late or last or self.iteration % cfg.ckpt_every == 0:
                    self.save_checkpoint()
                self._window_start += time.perf_counter() - paused  # it/s counts training time only
                if sig:
                    if self.log is not None:
                        self.log.write("stopped", self.iteration, signal=signal.Signals(sig).name)
                        tqdm.write(f"stopped by {signal.Signals(sig).name} at iteration {self.iteration}; "
                                   f"continue with --resume {self.run_dir}", file=sys.stderr)
                    return 128 + sig
                if late:
                    if self.log is not None:
                        self.log.write("stopped", self.iteration, reason="max_minutes", max_minutes=cfg.max_minutes)
                        tqdm.write(f"--max_minutes {cfg.max_minutes:g} reached at iteration {self.iteration} of "
                                   f"{cfg.iterations}; continue with --resume {self.run_dir}", file=sys.stderr)
                    return 0
            if self.log is not None:
                self.log.write("done", self.iteration, best=self.best)
            return 0
        finally:
            pbar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.log is not None:
                self.log.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``train-var-rate.py``: errors become one line on stderr and a non-zero exit."""
    prog = "train-var-rate.py"
    try:
        cfg, explicit = parse_args(argv)
        ctx = setup_distributed(cfg.device)
        return Trainer(cfg, ctx, explicit).run()
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, LvaeError, TrainingError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        cleanup_distributed()
