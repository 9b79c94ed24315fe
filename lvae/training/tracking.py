"""Where a run's numbers go: a JSON-lines file in the run folder, always; W&B when enabled."""
from __future__ import annotations

import json
import math
import netrc
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .config import TrainingError

__all__ = ["RunLog", "init_wandb", "require_wandb", "check_wandb", "LOG_FILE"]

LOG_FILE = "log.jsonl"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class RunLog:
    """Appends one JSON object per line to ``<run>/log.jsonl`` and mirrors scalars to W&B."""

    def __init__(self, run_dir: str | os.PathLike, wandb_run: Any = None):
        self.path = Path(run_dir) / LOG_FILE
        self.wandb_run = wandb_run
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, kind: str, iteration: int, **fields: Any) -> None:
        record = {"type": kind, "iteration": iteration, "time": round(time.time(), 3), **fields}
        self._file.write(json.dumps(_clean(record)) + "\n")
        self._file.flush()

    def wandb_log(self, scalars: dict[str, float], iteration: int) -> None:
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in scalars.items() if v is not None}, step=iteration)

    def close(self) -> None:
        self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def require_wandb() -> Any:
    """The wandb module, or a :class:`TrainingError` that says how to install it."""
    try:
        import wandb
    except ImportError:
        raise TrainingError(
            "W&B logging needs the wandb package: pip install 'lvae[wandb]' (or use --wbmode disabled)"
        ) from None
    return wandb


def _wandb_credentials() -> bool:
    """Whether W&B finds an API key without asking: ``WANDB_API_KEY``, an identity-token file, or
    the netrc entry that ``wandb login`` writes for the W&B host (``WANDB_BASE_URL``)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_wandb(mode: str) -> None:
    """Raise :class:`TrainingError` unless W&B can log in ``mode`` (``online`` or ``offline``):
    the package imports and, online, an API key is configured. Cheap: run it before anything
    heavy (wandb itself would ask for the key, or fail, only when the run starts)."""
    require_wandb()
    if mode == "online" and not _wandb_credentials():
        raise TrainingError(
            "W&B online logging needs an API key: run `wandb login` once (or set WANDB_API_KEY), "
            "or use --wbmode offline"
        )


def init_wandb(
    project: str,
    group: str,
    name: str,
    mode: str,
    config: dict[str, Any],
    run_dir: str | os.PathLike,
    run_id: str | None = None,
) -> Any:
    """Start (or, given ``run_id``, continue) a W&B run; wandb is imported only here."""
    wandb = require_wandb()
    return wandb.init(
        project=project,
        group=group,
        name=name,
        mode=mode,
        config=config,
        dir=str(run_dir),
        id=run_id,
        resume="allow" if run_id else None,
    )
