"""Training of variable-rate models (``train-var-rate.py``): config, data, distributed set-up,
EMA, schedules, checkpoints, validation and the loop. Importing it does not import W&B."""
from __future__ import annotations

from .config import ConfigError, TrainConfig, TrainingError, build_parser, parse_args
from .trainer import Trainer, main

__all__ = ["ConfigError", "TrainConfig", "TrainingError", "Trainer", "build_parser", "parse_args", "main"]
