"""The training configuration: one dataclass, its command line, and the rules for resuming."""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NoReturn

from ..models.registry import default_member, model_lambdas
from ..utils.args import OneLineArgumentParser, parse_model_args

__all__ = [
    "ConfigError", "TrainingError", "TrainConfig", "build_parser", "parse_args", "merge_for_resume", "resolve_member",
    "LR_SCHEDULES",
]

LR_SCHEDULES = ("const-0.5-cos", "cosine", "constant")
WB_MODES = ("online", "offline", "disabled")
LOSS_NORMS = ("none", "lmb")

# Flags that may change when a run is resumed; any other flag must keep its value.
RESUME_OVERRIDABLE = frozenset(
    {"iterations", "workers", "device", "wbmode", "val_every", "ckpt_every", "log_every", "valset", "val_steps",
     "trainset", "runs_dir",  # data and run folders may have moved
     "max_minutes"}
)


class ConfigError(ValueError):
    """A command-line flag or a combination of flags is invalid."""


class TrainingError(RuntimeError):
    """Training cannot start or go on (the message says why); the script prints it in one line."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved in the run folder and in every checkpoint.

    Defaults are the recipe of the published ``qarv_base`` (docs/training.md).
    ``batch_size`` is per process: ``torchrun --nproc_per_node 2 ... --batch_size 16`` trains with
    the same global batch (32) as one process with ``--batch_size 32``.
    """

    model: str = "qarv_base"
    model_args: dict[str, Any] = field(default_factory=dict)
    # A fixed-λ family trains one member per run: its λ (default: the family's default member,
    # written down when the run starts). None for a variable-rate model, which trains all its λ.
    lmb: float | None = None
    trainset: str = "coco-train2017"
    crop: int = 256  # random square crops; a multiple of the model's max_stride (64 for the published models)
    hflip: bool = True
    valset: str = "kodak"  # "none" disables validation
    val_steps: int = 8  # λ values, log-spaced over the model's range (a fixed-λ member: its own λ alone)
    val_every: int = 2000
    ckpt_every: int = 2000  # a crash loses at most one validation period
    log_every: int = 100
    batch_size: int = 32
    accum_num: int = 1
    lr: float = 2e-4
    lr_sched: str = "const-0.5-cos"
    lrf_min: float = 0.01  # final lr as a fraction of --lr
    lr_warmup: int = 0  # iterations of linear warm-up
    wdecay: float = 0.0  # the authors used no weight decay
    grad_clip: float = 2.0  # 0 disables clipping (the norm is still measured for the spike guard)
    # "lmb": weight each image's R + λ·D by λ_mid/λ (same optimum per λ); "none": the authors' loss
    loss_norm: str = "none"
    iterations: int = 2_000_000
    max_minutes: float = 0.0  # wall-clock limit of this process's run (0: none); it saves and stops
    ema: bool = True
    ema_decay: float = 0.9999
    ema_warmup: float = 10000.0  # decay · (1 − exp(−step / ema_warmup))
    workers: int = 8  # data-loading processes per training process
    amp: bool = False  # float16 autocast + gradient scaling (CUDA only)
    seed: int = 0
    wbproject: str = "default"
    wbgroup: str = "var-rate-exp"
    wbmode: str = "disabled"
    name: str | None = None  # default: <model>-<timestamp>
    runs_dir: str = "runs"
    resume: str | None = None
    weights: str | None = None
    device: str | None = None  # default: cuda if available, else cpu

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad value."""
        positive = ("val_steps", "val_every", "ckpt_every", "log_every", "batch_size", "accum_num", "iterations")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        # The model's max_stride is checked once it is built (Trainer): only the model knows it.
        if self.crop < 1:
            raise ConfigError(f"the crop size must be a positive multiple of the model's stride, got {self.crop}")
        if self.lmb is not None and not (math.isfinite(self.lmb) and self.lmb > 0):
            raise ConfigError(f"--lmb must be a positive number, got {self.lmb}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.lr_sched not in LR_SCHEDULES:
            raise ConfigError(f"--lr_sched must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_sched!r}")
        if not 0 <= self.lrf_min <= 1:
            raise ConfigError(f"--lrf_min must be in [0, 1], got {self.lrf_min}")
        for name in ("lr_warmup", "workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must not be negative, got {getattr(self, name)}")
        for name in ("wdecay", "grad_clip", "ema_warmup", "max_minutes"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"--{name} must be a non-negative number, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.loss_norm not in LOSS_NORMS:
            raise ConfigError(f"--loss_norm must be one of {', '.join(LOSS_NORMS)}, got {self.loss_norm!r}")
        if self.wbmode not in WB_MODES:
            raise ConfigError(f"--wbmode must be one of {', '.join(WB_MODES)}, got {self.wbmode!r}")
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ConfigError(f"--name must be a plain folder name, got {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training config field(s): {', '.join(unknown)}")
        return cls(**d)


class _Parser(OneLineArgumentParser):
    """:class:`OneLineArgumentParser` whose usage error is raised as :class:`ConfigError` (its one
    line, less the ``prog: error:`` that :func:`lvae.training.main` prints) instead of exiting, so
    that :func:`parse_args` can be called from code. ``--help`` still prints and exits."""

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status == 0 or message is None:
            super().exit(status, message)
        raise ConfigError(message.rstrip("\n").removeprefix(f"{self.prog}: error: "))


def _parse_transform(text: str) -> dict[str, Any]:
    try:
        spec = parse_model_args(text)
    except ValueError:
        raise ConfigError(f"cannot parse --transform {text!r}: write it like 'crop=256,hflip=True'") from None
    unknown = sorted(set(spec) - {"crop", "hflip"})
    if unknown:
        raise ConfigError(f"--transform knows crop and hflip, not {', '.join(unknown)}")
    if "crop" in spec and (not isinstance(spec["crop"], int) or isinstance(spec["crop"], bool)):
        raise ConfigError(f"--transform crop must be an integer, got {spec['crop']!r}")
    if "hflip" in spec and not isinstance(spec["hflip"], bool):
        raise ConfigError(f"--transform hflip must be True or False, got {spec['hflip']!r}")
    return spec


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = _Parser(
        prog="train-var-rate.py",
        description="Train a model: a variable-rate one over its whole λ range, or one member (--lmb) of a "
        "fixed-λ family (single process, or one process per GPU under torchrun).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", type=str, default=d.model, help="registered model name (lvae.list_models())")
    g.add_argument("--model_args", type=str, default="", help="architecture overrides, e.g. 'dec_final_depth=2'")
    g.add_argument("--lmb", type=float, default=None,
                   help="a fixed-λ family (e.g. qres34m): the λ of the member to train, one run per λ; None: the "
                   "family's default member. A variable-rate model trains every λ of its range and takes none")
    g.add_argument("--weights", type=str, default=None, help="initialise from this checkpoint (a new run)")
    g = p.add_argument_group("data")
    g.add_argument("--trainset", type=str, default=d.trainset, help="image folder or known data set name")
    g.add_argument("--transform", type=str, default=f"crop={d.crop},hflip={d.hflip}", help="training crops")
    g.add_argument("--valset", type=str, default=d.valset, help="image folder, known data set name, or 'none'")
    g.add_argument("--val_steps", type=int, default=d.val_steps, help="number of validation λ values")
    g.add_argument("--workers", type=int, default=d.workers, help="data-loading processes per training process")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=d.batch_size, help="images per step and process")
    g.add_argument("--accum_num", type=int, default=d.accum_num, help="gradient-accumulation steps")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    g.add_argument("--lr_sched", type=str, default=d.lr_sched, choices=LR_SCHEDULES, help="lr schedule")
    g.add_argument("--lrf_min", type=float, default=d.lrf_min, help="final lr as a fraction of --lr")
    g.add_argument("--lr_warmup", type=int, default=d.lr_warmup, help="linear warm-up iterations")
    g.add_argument("--wdecay", type=float, default=d.wdecay, help="weight decay (not on biases/gains)")
    g.add_argument("--loss_norm", type=str, default=d.loss_norm, choices=LOSS_NORMS,
                   help="'lmb': divide each image's loss by its λ (times the range's geometric middle), "
                   "so that low-λ images are not drowned by high-λ ones in short runs")
    g.add_argument("--grad_clip", type=float, default=d.grad_clip, help="gradient-norm clip (0: none)")
    g.add_argument("--iterations", type=int, default=d.iterations, help="optimizer steps in all")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=d.ema, help="keep an EMA of weights")
    g.add_argument("--ema_decay", type=float, default=d.ema_decay, help="final EMA decay")
    g.add_argument("--ema_warmup", type=float, default=d.ema_warmup, help="EMA decay time constant (steps)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp, help="float16 autocast (CUDA)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (each rank adds its rank)")
    g = p.add_argument_group("run")
    g.add_argument("--name", type=str, default=None, help="run folder name; None: <model>-<timestamp>")
    g.add_argument("--runs_dir", type=str, default=d.runs_dir, help="folder of the run folders")
    g.add_argument("--resume", type=str, default=None, help="run name, run folder or last.pt to continue")
    g.add_argument("--device", type=str, default=None, help="cpu or cuda; None: cuda if available")
    g.add_argument("--val_every", type=int, default=d.val_every, help="validate every N iterations")
    g.add_argument("--ckpt_every", type=int, default=d.ckpt_every, help="write last.pt every N iterations")
    g.add_argument("--max_minutes", type=float, default=d.max_minutes,
                   help="stop (saving last.pt) once this process has run this many minutes; 0: no limit")
    g.add_argument("--log_every", type=int, default=d.log_every, help="log averages every N iterations")
    g.add_argument("--wbproject", type=str, default=d.wbproject, help="W&B project")
    g.add_argument("--wbgroup", type=str, default=d.wbgroup, help="W&B group")
    g.add_argument("--wbmode", type=str, default=d.wbmode, choices=WB_MODES, help="W&B mode")
    return p


def _namespace_to_config(ns: dict[str, Any]) -> dict[str, Any]:
    """Turn parsed flags into TrainConfig fields (``--transform`` → crop/hflip, ``--model_args`` → dict)."""
    out = dict(ns)
    if "transform" in out:
        out.update(_parse_transform(out.pop("transform")))
    if "model_args" in out:
        try:
            out["model_args"] = parse_model_args(out["model_args"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return out


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """Parse the command line; return the config and the names of the fields given explicitly."""
    parser = build_parser()
    cfg = TrainConfig.from_dict(_namespace_to_config(vars(parser.parse_args(argv))))
    for action in parser._actions:  # a second pass without defaults tells which flags were given
        action.default = argparse.SUPPRESS
    explicit = set(_namespace_to_config(vars(parser.parse_args(argv))))
    cfg.validate()
    # Checked here, not in validate(): a resumed run's saved config keeps the --weights it started from.
    if cfg.resume and cfg.weights:
        raise ConfigError("--resume and --weights exclude each other (--weights starts a new run)")
    return cfg, explicit


def resolve_member(cfg: TrainConfig) -> float | None:
    """The λ of the member a run trains: ``--lmb``, else the family's default member; None for a
    variable-rate model. A registered name is needed (``ValueError`` listing the known ones);
    ``--lmb`` for a variable-rate model, or a family without a default and no ``--lmb``, raise
    :class:`ConfigError`."""
    lambdas = model_lambdas(cfg.model)
    if "lmb" in cfg.model_args:
        raise ConfigError("give the λ of a fixed-λ family's member with --lmb, not in --model_args")
    if lambdas is None:
        if cfg.lmb is not None:
            raise ConfigError(f"--lmb chooses the member of a fixed-λ family, but {cfg.model} is a variable-rate model "
                              "that trains every λ of its range at once: leave --lmb out")
        return None
    if cfg.lmb is not None:
        return float(cfg.lmb)
    default = default_member(cfg.model)
    if default is None:
        known = ", ".join(f"{v:g}" for v in lambdas)
        raise ConfigError(f"{cfg.model} is a fixed-λ family: choose the member to train with --lmb "
                          f"(its published members: λ ∈ {{{known}}})")
    return default


def merge_for_resume(saved: dict[str, Any], cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The config of a resumed run: the saved one, with the explicitly given flags that may change.

    A run started with ``--weights`` keeps that field (where it started); resumed, it takes its
    weights from ``last.pt``."""
    merged = TrainConfig.from_dict(saved)
    merged.resume = cfg.resume
    for key in sorted(explicit - {"resume"}):
        new, old = getattr(cfg, key), getattr(merged, key)
        if key in RESUME_OVERRIDABLE:
            setattr(merged, key, new)
        elif new != old:
            raise ConfigError(
                f"--{key} cannot change when resuming (the run uses {old!r}); "
                "start a new run with --weights to change it"
            )
    merged.validate()
    return merged
