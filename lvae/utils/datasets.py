"""Where data sets live: names → folders under a data root, and image collection.

The data root is ``$LVAE_DATA_ROOT``, else the ``data_root`` entry of the user config file
``~/.config/lvae/config.json`` (``$LVAE_CONFIG`` overrides its path), else ``~/datasets``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["known_datasets", "data_root", "resolve_dataset", "list_images", "IMAGE_EXTENSIONS"]

# Dataset name → folder relative to the data root.
known_datasets: dict[str, str] = {
    "kodak": "kodak",
    "tecnick-rgb-1200": "tecnick/TESTIMAGES/RGB/RGB_OR_1200x1200",
    "clic2022-test": "clic/test-2022",
    "coco-train2017": "coco/train2017",
    "bsds500": "train/bsds500",
    "sunhays80": "train/sunhays80",
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm")


def config_path() -> Path:
    return Path(os.environ.get("LVAE_CONFIG", Path.home() / ".config" / "lvae" / "config.json"))


def data_root() -> Path:
    """The folder under which the known data sets are looked for."""
    env = os.environ.get("LVAE_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    cfg = config_path()
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text()).get("data_root")
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"cannot read the lvae config file {cfg}: {exc}") from None
        if value:
            return Path(value).expanduser()
    return Path.home() / "datasets"


def resolve_dataset(name_or_path: str | os.PathLike) -> Path:
    """An existing folder is used as is; a known name maps to its folder under :func:`data_root`."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    name = str(name_or_path)
    if name not in known_datasets:
        raise FileNotFoundError(
            f"{name!r} is neither an existing folder nor a known data set "
            f"(known: {', '.join(sorted(known_datasets))})"
        )
    folder = data_root() / known_datasets[name]
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data set {name!r} was looked for in {folder}, which does not exist; set LVAE_DATA_ROOT "
            f"(or 'data_root' in {config_path()}) to the folder that holds {known_datasets[name]!r}, "
            "or pass the image folder itself"
        )
    return folder


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` (by extension, case-insensitive), sorted by path."""
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
