"""Collections of images to scan (the neuron atlas): a folder searched recursively, a CSV or
data directory in the ``evaluate`` format (labels known), a
:class:`~fastloc_viz.imaging.dataset.LocalizationDataset`, or a list of paths / images; each with
names, labels and a fingerprint that says whether two builds saw the same images."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["IMAGE_SUFFIXES", "Source", "sources"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""The file suffixes (lower case) a folder scan reads."""


class Source:
    """The images to scan: names, labels, and how to load each one."""

    def __init__(self, names: list[str], items: list[Any], labels: list[list[int]], fingerprint: str):
        self.names, self.items, self.labels, self.fingerprint = names, items, labels, fingerprint

    def __len__(self) -> int:
        return len(self.items)


def sources(images: Any) -> Source:
    """A folder (recursive), a CSV / data directory in the evaluate format, a
    :class:`~fastloc_viz.imaging.dataset.LocalizationDataset`, or a list of images."""
    from .dataset import ANNOTATIONS, LocalizationDataset

    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_file() and path.suffix.lower() == ".csv" or path.is_dir() and (path / ANNOTATIONS).is_file():
            images = LocalizationDataset(path)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {str(path)!r}")
            names = [p.relative_to(path).as_posix() for p in files]
            return Source(names, files, [[] for _ in files], _digest(["folder", str(path.resolve()), *names]))
        else:
            raise FileNotFoundError(f"{str(path)!r} is neither a folder of images nor a CSV file")
    if isinstance(images, LocalizationDataset):
        first: dict[Path, int] = {}
        names, items, labels = [], [], []
        for q in images:  # an image on several rows (several classes) is scanned once
            if q.image in first:
                labels[first[q.image]].append(q.label)
                continue
            first[q.image] = len(items)
            names.append(q.image.relative_to(images.root).as_posix() if q.image.is_relative_to(images.root) else str(q.image))
            items.append(q.image)
            labels.append([q.label])
        return Source(names, items, labels, _digest(["csv", str(images.csv_path), *names]))
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("an empty list of images was given")
        names, parts = [], ["list"]
        for i, im in enumerate(images):
            if isinstance(im, (str, os.PathLike)):
                names.append(str(im))
                parts.append(str(im))
            else:
                names.append(f"#{i}")
                arr = np.asarray(im.detach().cpu() if isinstance(im, torch.Tensor) else im)
                parts.append(hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
        return Source(names, list(images), [[] for _ in images], _digest(parts))
    raise TypeError(
        f"images must be a folder, a CSV file, a LocalizationDataset or a list of images, got {type(images).__name__}"
    )


def _digest(parts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
