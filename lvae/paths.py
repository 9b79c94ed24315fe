"""``lvae.paths.known_datasets``: the name the QARV authors' README gave for the data sets that
``--dataset-name`` knows, kept for code written against it
(``img_dir = lvae.paths.known_datasets['kodak']``).

It is a dict, data-set name → folder (a string), made on each access from the one table of
names, :data:`lvae.utils.datasets.known_datasets` (folders relative to the data root), under the
current :func:`lvae.utils.datasets.data_root` (``$LVAE_DATA_ROOT``, the config file, else
``~/datasets``). To add a data set, add it to that table, or pass its folder itself.
"""
from __future__ import annotations

from .utils import datasets
from .utils.datasets import data_root, resolve_dataset

__all__ = ["known_datasets", "data_root", "resolve_dataset"]  # noqa: F822  (known_datasets: __getattr__)


def __getattr__(name: str) -> dict[str, str]:
    """PEP 562: ``known_datasets`` is made when it is asked for, under the data root of that moment."""
    if name == "known_datasets":
        root = data_root()
        return {key: str(root / folder) for key, folder in datasets.known_datasets.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
