"""Training data: an image folder read as random crops, and a sampler that can resume mid-epoch."""
from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler
from torchvision.transforms import v2

from ..io import load_image
from ..utils.datasets import IMAGE_EXTENSIONS, list_images, resolve_dataset

__all__ = ["ImageFolderCrops", "ResumableDistributedSampler", "load_rgb", "has_images", "worker_init"]


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as a writable H×W×3 uint8 array, read by :func:`lvae.io.load_image`, the
    reader of evaluation and of the ``lvae`` command: the EXIF orientation is applied, and gray,
    16-bit, palette and alpha images become the same RGB pixels there and here. The file is decoded
    fully, so a truncated one fails here (:class:`lvae.errors.ImageReadError`, a ``ValueError``)."""
    rgb = load_image(path)[0]  # 3×H×W floats holding 8-bit values (v / 255): the round trip is exact
    return rgb.mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def has_images(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` or a folder under it holds a file with an image extension; stops at the
    first one (a cheap check before :class:`ImageFolderCrops` lists them all)."""
    for _dirpath, _dirs, files in os.walk(os.fspath(folder), followlinks=True):
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            return True
    return False


class ImageFolderCrops(Dataset[torch.Tensor]):
    """Random ``crop``×``crop`` patches (float, [0, 1], 3×crop×crop) of the images in a folder,
    mirrored left–right with probability ½ when ``hflip``.

    ``root`` is a folder or a name of :data:`lvae.utils.datasets.known_datasets`; sub-folders are searched.
    Images smaller than the crop are reflect-padded (right and bottom). Unreadable files are
    skipped with a warning (the next readable image takes their place). The random draws use
    torch's global generator.
    """

    def __init__(self, root: str | os.PathLike, crop: int, hflip: bool = True):
        self.root = resolve_dataset(root)
        self.files = list_images(self.root, recursive=True)
        if not self.files:
            raise ValueError(
                f"no training images in {self.root} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
            )
        if crop < 1:
            raise ValueError(f"crop size must be positive, got {crop}")
        self.crop = crop
        self.hflip = hflip
        steps: list[v2.Transform] = [v2.RandomCrop(crop)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        self._augment = v2.Compose(steps)
        self._unreadable: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self.files)
        for k in range(n):
            path = self.files[(index + k) % n]
            if path in self._unreadable:
                continue
            try:
                arr = load_rgb(path)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                self._unreadable.add(path)
                warnings.warn(f"skipping unreadable image {path}: {exc}", RuntimeWarning, stacklevel=2)
                continue
            return self.random_crop(arr)
        raise RuntimeError(f"none of the {n} images under {self.root} could be read")

    def random_crop(self, arr: np.ndarray) -> torch.Tensor:
        """A random crop (and flip) of an H×W×3 uint8 array, as a 3×crop×crop float tensor."""
        c = self.crop
        h, w = arr.shape[:2]
        if h < c or w < c:
            # Not RandomCrop(pad_if_needed=True): it pads both sides, and torch's reflect padding
            # cannot exceed the image side. numpy's reflect mode repeats the reflection then.
            arr = np.pad(arr, ((0, max(c - h, 0)), (0, max(c - w, 0)), (0, 0)), mode="reflect")
        patch = self._augment(torch.from_numpy(arr).permute(2, 0, 1))
        return patch.float().div_(255.0).contiguous()


class ResumableDistributedSampler(DistributedSampler):
    """A :class:`DistributedSampler` that can start an epoch at a given position (for resuming).

    The order of an epoch depends only on ``seed`` and the epoch number, so skipping the samples
    already used continues the interrupted epoch exactly.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Use epoch ``epoch`` and leave out its first ``skip`` samples (of this rank's shard)."""
        self.set_epoch(epoch)
        self.skip = max(0, skip)

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


def worker_init(_worker_id: int) -> None:
    """Data-loading workers leave SIGINT/SIGTERM to the training process, which saves and stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
