"""Which files are images, and the one folder walker; collections of images to scan.

:data:`IMAGE_SUFFIXES` and :func:`image_files` are the only suffix list and folder walker:
``fastloc-viz boxes``, ``atlas``, ``evaluate`` on a folder without annotations and
``fastloc-viz explain FOLDER`` all see the same files in the same order. The rule: every file
under the folder, recursively, whose suffix (any case) is in :data:`IMAGE_SUFFIXES`; hidden
files and folders (a name starting with ``.``, such as macOS's ``._x.jpg``) are left out,
symbolic links to folders are not followed (a link to a file is listed, and reported as
unreadable when it leads nowhere); sorted by the path relative to the folder, part by part.

:func:`sources` gives the collections the neuron atlas scans: a folder, a CSV or data
directory in the ``evaluate`` format (labels known), a
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

__all__ = ["IMAGE_SUFFIXES", "Source", "image_files", "no_images", "sources"]

IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .dcm .dicom .fits .fit .fts .fz "
    ".jp2 .j2k .tga .ico".split()
)
"""The file suffixes (lower case) a folder scan reads: PIL's formats, TIFF, DICOM and FITS."""


def image_files(root: str | os.PathLike) -> list[Path]:
    """Every image file under the folder ``root`` (see the module's docstring for the rule),
    sorted by its path relative to ``root``; ``[]`` when there is none."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / n for n in filenames if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(out, key=lambda p: p.relative_to(root).parts)


def no_images(root: str | os.PathLike) -> str:
    """The message for a folder without image files."""
    return (f"no image files under {str(root)!r} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}; "
            "hidden files and folders are left out)")


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
            files = image_files(path)
            if not files:
                raise ValueError(no_images(path))
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
