"""Pretrained weights: where they are, and strict loading.

Resolution order for ``pretrained=True``: a file shipped in the package, else the torch hub
cache (``torch.hub.get_dir()/checkpoints``, which honours ``TORCH_HOME``), else the URL.
A path given as ``pretrained='file.pt'`` is used as is. :func:`locate_weights` is that order
without downloading (``lvae models`` shows it).

This module imports torch only in the functions that load or download: knowing where weights
are (``lvae models``) costs no torch import. It knows nothing of the model registry (the
registry imports it, never the reverse).
"""
from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = [
    "Weights",
    "WeightsLocation",
    "locate_weights",
    "availability",
    "resolve_weights",
    "load_checkpoint_state_dict",
    "load_state_dict_strict",
    "load_pretrained",
]


@dataclass(frozen=True)
class Weights:
    """Where a model's pretrained weights come from, and on what terms.

    ``url`` + ``filename``: downloaded into ``torch.hub.get_dir()/checkpoints``.
    ``package_file``: a file shipped inside the ``lvae`` package (no network needed).
    """

    filename: str
    url: str | None = None
    package_file: str | None = None
    sha256: str | None = None
    license: str = ""
    paper: str = ""


def _torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``, without importing torch when it is not loaded yet.

    Until torch is imported nobody can have called ``torch.hub.set_dir``, so the directory is
    the one torch derives from the environment: ``$TORCH_HOME/hub``, where ``TORCH_HOME``
    defaults to ``$XDG_CACHE_HOME/torch`` and ``XDG_CACHE_HOME`` to ``~/.cache``.
    """
    if "torch" in sys.modules:
        import torch.hub

        return Path(torch.hub.get_dir())
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))) / "hub"


def hub_checkpoint_dir() -> Path:
    return _torch_hub_dir() / "checkpoints"


def packaged_path(weights: Weights) -> Path:
    """Where ``weights.package_file`` lies in the installed package (it may be missing)."""
    if weights.package_file is None:
        raise ValueError(f"the weights {weights.filename} are not shipped in the package")
    return Path(str(resources.files("lvae").joinpath(weights.package_file)))


@dataclass(frozen=True)
class WeightsLocation:
    """Where :func:`resolve_weights` looks for a weights file: ``source`` is 'packaged' or 'cached'."""

    path: Path
    source: str
    present: bool


def locate_weights(weights: Weights) -> WeightsLocation:
    """The file :func:`resolve_weights` would use (packaged, else the hub cache), without downloading."""
    if weights.package_file:
        path, source = packaged_path(weights), "packaged"
    else:
        path, source = hub_checkpoint_dir() / weights.filename, "cached"
    return WeightsLocation(path, source, path.is_file())


def availability(weights: Weights | None) -> tuple[bool, str]:
    """Whether :func:`resolve_weights` would find the weights without a network, and where they
    are or how they would be fetched (the ``lvae models`` listing)."""
    if weights is None:
        return False, "no published weights; pass --weights FILE"
    found = locate_weights(weights)
    if found.present:
        return True, f"{found.source}: {found.path}"
    if found.source == "packaged":
        return False, f"packaged file missing: {found.path}"
    if weights.url:
        return False, f"downloaded on first use from {weights.url} into {found.path}"
    return False, f"not found at {found.path}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _damaged(path: Path, name: str, weights: Weights) -> CheckpointError:
    return CheckpointError(
        f"the weights file of {name!r} at {path} is damaged: its SHA-256 is not {weights.sha256}; "
        "delete it and let it be fetched again (packaged weights: reinstall lvae)"
    )


def _verified(path: Path, name: str, weights: Weights, verify: bool = True) -> Path:
    if verify and weights.sha256 and file_sha256(path) != weights.sha256:
        raise _damaged(path, name, weights)
    return path


def resolve_weights(
    name: str,
    weights: Weights | None,
    progress: bool = True,
    *,
    offline_models: Sequence[str] = (),
    verify: bool = True,
) -> Path:
    """Return a local path to the pretrained weights of model ``name``, downloading if needed.

    A ``sha256`` in ``weights`` is checked for packaged, cached and downloaded files alike
    (``verify=False``: by the caller, on the bytes it reads; :func:`load_pretrained` does).
    ``offline_models``: names of models that work without a download, suggested when one fails.
    """
    if weights is None:
        raise WeightsUnavailableError(
            f"model {name!r} has no published weights; pass a checkpoint path, e.g. "
            f"get_model({name!r}, pretrained='runs/.../last_ema.pt')"
        )
    found = locate_weights(weights)
    if found.present:
        return _verified(found.path, name, weights, verify)
    if found.source == "packaged":
        raise WeightsUnavailableError(
            f"the packaged weights of {name!r} are missing from the installation ({found.path}); reinstall lvae"
        )
    cached = found.path
    if not weights.url:
        raise WeightsUnavailableError(f"no weights for {name!r} at {cached} and no URL to download them from")
    how = (
        f"download {weights.url} and save it as {cached} (the torch hub cache; set TORCH_HOME to "
        f"move it), or pass the file's path: get_model({name!r}, pretrained='/path/{weights.filename}')"
    )
    hint = f" Models shipped in the package work offline: {', '.join(offline_models)}." if offline_models else ""
    import torch.hub

    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        # download_url_to_file writes to a temporary file and renames it when complete.
        torch.hub.download_url_to_file(weights.url, str(cached), progress=progress)
    except Exception as exc:  # network errors come in many types (URLError, socket errors, HTTP...)
        raise WeightsUnavailableError(
            f"could not download the weights of {name!r} ({type(exc).__name__}: {exc}). To use them "
            f"offline, {how}.{hint}"
        ) from None
    return _verified(cached, name, weights, verify)


def load_checkpoint_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint (``{'model': state_dict, ...}`` or a bare state dict) safely, on the CPU."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    return _state_dict_of(ckpt, path)


def _load_verified(path: Path, name: str, weights: Weights) -> dict[str, torch.Tensor]:
    """The state dict of a file whose SHA-256 ``weights`` records, checked on the very bytes loaded.

    Bytes with that digest are the file this package (or the weights' publisher) made, so torch's
    full unpickler may read them: about 35 ms less than ``weights_only=True`` on a cold start,
    which ``lvae compress`` pays on every run.
    """
    import io

    import torch

    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != weights.sha256:
        raise _damaged(path, name, weights)
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    return _state_dict_of(ckpt, path)


def _state_dict_of(ckpt: object, path: Path) -> dict[str, torch.Tensor]:
    """The model state dict in a loaded checkpoint: ``{'model': state_dict, ...}`` or a bare one."""
    import torch

    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("model"), Mapping):
        sd = ckpt["model"]
    elif isinstance(ckpt, Mapping) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        sd = ckpt
    else:
        raise CheckpointError(
            f"{path} holds neither a state dict nor a dict with a 'model' state dict"
        )
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DDP wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict_strict(
    model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint", *, assign: bool = False
) -> None:
    """``load_state_dict(strict=True)`` with an error that names the first offending keys.

    The entropy coder's table buffers are derived data, stored empty or filled: their shape is free.
    ``assign``: the model takes ``sd``'s tensors themselves instead of copying them (for a state
    dict nobody else holds; it saves a copy of every weight when a model is loaded).
    """
    from ..coding.gaussian import TABLE_BUFFERS

    free_shape = tuple(f".{name}" for name in TABLE_BUFFERS)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and not k.endswith(free_shape) and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es) (file vs model), first: {'; '.join(wrong[:3])}")
    if problems:
        name = getattr(model, "name", None) or type(model).__name__
        raise CheckpointError(f"{source} does not fit model {name!r}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True, assign=assign)


def load_pretrained(
    model: nn.Module,
    name: str,
    weights: Weights | None,
    pretrained: bool | str | os.PathLike,
    *,
    offline_models: Sequence[str] = (),
) -> None:
    """Load ``pretrained`` (True or a path) into ``model`` strictly.

    ``offline_models``: see :func:`resolve_weights`.
    """
    if pretrained is True:
        # Weights with a recorded SHA-256 are checked on the bytes that are loaded, not before.
        recorded = weights if weights is not None and weights.sha256 is not None else None
        path = resolve_weights(name, weights, offline_models=offline_models, verify=recorded is None)
        sd = load_checkpoint_state_dict(path) if recorded is None else _load_verified(path, name, recorded)
    elif isinstance(pretrained, (str, os.PathLike)):
        path = Path(pretrained)
        sd = load_checkpoint_state_dict(path)
    else:
        raise ValueError(f"pretrained must be True, False or a checkpoint path, got {pretrained!r}")
    # The state dict was just read and is not kept: the model may take its tensors as they are.
    load_state_dict_strict(model, sd, source=str(path), assign=True)
