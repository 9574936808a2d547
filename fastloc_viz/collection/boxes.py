"""Localize a whole collection: ``fastloc_viz.boxes(bundle, SOURCE, FILE)``, and its command
line twin ``fastloc-viz boxes SOURCE --out FILE``.

Sources (:func:`collect_items`):

* a folder of images, searched recursively by the one folder walker
  (:func:`fastloc_viz.imaging.sources.image_files`: the suffixes of
  :data:`~fastloc_viz.imaging.sources.IMAGE_SUFFIXES`, hidden files and folders left out,
  sorted by path): the target is the top-1 class;
* an ImageFolder tree: every sub-folder of SOURCE is named by a class (a name, words or an
  index the model's class lookup resolves, :mod:`fastloc_viz.model.classes`) and gives the target of
  the images under it (``--layout imagefolder``; ``auto`` takes a folder as one when every
  sub-folder resolves and no image lies at its top);
* a CSV in the ``evaluate`` format: ``image`` (relative to the CSV's folder) and ``label``
  columns; other columns (``boxes`` ...) are ignored here;
* one image file (a suffix of ``IMAGE_SUFFIXES``): that image, its top-1 class.

Which classes get a box (``targets``): ``"top1"`` (default), one box per image for the
top-1 class; ``"positive"``, one box per label at or above the bundle's ``label_threshold``
(a multi-label model's findings; an image with none gets a ``skipped`` row saying so); or a
list of class names / indices, a box for each, on every image. An image whose source names
its class (ImageFolder, a CSV label) is explained for that class alone.

How it runs (:func:`boxes`): a ``torch.utils.data.DataLoader`` with worker processes
decodes each image to the model's grid (keeping the photo's own size) while the model works;
``explain`` runs on each preloaded batch. Each finished image is one JSON line in
``FILE.parts/rank-<r>.jsonl`` (flushed at once), so a killed run loses at most the batch in
flight; a rerun reads every part, skips the images done, and never writes one twice. The
output (COCO JSON in FILE, and a CSV beside it, :mod:`fastloc_viz.collection.coco`) is replaced
atomically after the first batch, at checkpoints, at the end, and when the run is interrupted
(Ctrl-C: :class:`Interrupted` says how to resume). Under ``torchrun`` each rank takes every
``world_size``-th image; rank 0 merges the parts. Images are read by
:func:`fastloc_viz.imaging.batch.try_read`, exactly as ``explain`` reads a file; a file that
cannot be used (corrupt, not an image, unreadable, too small) becomes a ``skipped`` row with
its reason; the run goes on.

Paths: each row's ``file`` is relative to the source's folder (the CSV's folder for a CSV);
that folder is recorded, absolute, as ``info.root`` in FILE (``info.source``: the source,
absolute), and the CSV's ``path`` column holds each file's absolute path, so the outputs
resolve from any working directory.

``FILE.lock`` (the process id, the host and the start time) refuses a second run on the same
output; a lock whose process no longer runs on this host is stale and taken over with a
warning (a lock from another host must be removed by hand).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core import maps as M
from ..core.files import (
    check_writable,
    make_dir,
    open_json_lines,
    read_json_lines,
    write_text_atomic,
)
from ..core.parallel import Dist, barrier, init_distributed, machine_info
from ..imaging.sources import IMAGE_SUFFIXES, image_files, no_images
from .coco import coco_document, csv_text, mask_rle, unique_rows

log = logging.getLogger("fastloc_viz")

LAYOUTS = ("auto", "folder", "imagefolder", "csv")
ROW_FORMAT = 2
"""The rows' format, kept in the run's ``spec.json``: 2 adds each box's ``score`` and ``kind``, so
parts written before cannot be resumed into a run that needs them."""
TARGETS = ("top1", "positive")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the images done are kept, and the message says how to resume."""


@dataclass(frozen=True)
class Item:
    """One image of a collection: ``index`` in the source's order, ``file`` relative to the
    source's root, ``path`` to read, ``label`` the given target (``None``: top-1)."""

    index: int
    file: str
    path: str
    label: int | None

    @property
    def key(self) -> str:
        return self.file if self.label is None else f"{self.file}#{self.label}"


# ------------------------------------------------------------------------------ sources
def collect_items(source: str | os.PathLike, bundle: Any, layout: str = "auto") -> tuple[list[Item], str]:
    """The images of ``source`` and the layout used (``"folder"``, ``"imagefolder"``, ``"csv"``,
    or ``"file"`` for one image file); each item's ``path`` is absolute.

    Raises:
        FileNotFoundError: no such source; ValueError: a CSV without ``image`` / ``label``, an
        ImageFolder sub-folder that names no class, or an empty source.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    src = Path(source).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"source {str(src)!r} does not exist (give a folder of images or a CSV)")
    src = src.resolve()
    if src.is_file() and layout != "csv" and src.suffix.lower() in IMAGE_SUFFIXES:
        items, used = [Item(0, src.name, str(src), None)], "file"
    elif src.is_file() or layout == "csv":
        items, used = _csv_items(src, bundle), "csv"
    else:
        files = image_files(src)
        subdirs = sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
        used = layout
        if layout == "auto":
            used = "imagefolder" if subdirs and all(p.parent != src for p in files) and all(
                _folder_class(bundle, d.name) is not None for d in subdirs) else "folder"
        labels: list[int | None] = [None] * len(files)
        if used == "imagefolder":
            classes = {d.name: _folder_class(bundle, d.name) for d in subdirs}
            bad = next((n for n, c in classes.items() if c is None), None)
            if bad is not None:
                raise ValueError(f"ImageFolder sub-folder {bad!r} names no class of the model")
            files = [p for p in files if p.parent != src]
            labels = [classes[p.relative_to(src).parts[0]] for p in files]
        items = [Item(i, p.relative_to(src).as_posix(), str(p), lab) for i, (p, lab) in enumerate(zip(files, labels))]
    if not items:
        raise ValueError(f"no images found in {str(src)!r}" if used == "csv" else no_images(src))
    return items, used


def source_root(source: str | os.PathLike) -> Path:
    """The absolute folder a source's ``file`` names are relative to: the folder itself, or
    a CSV's folder."""
    src = Path(source).expanduser().resolve()
    return src.parent if src.is_file() else src


def _folder_class(bundle: Any, name: str) -> int | None:
    try:
        return bundle.class_index(int(name) if name.isdigit() else name.replace("_", " "))
    except (LookupError, TypeError, ValueError):
        return None


def _csv_items(path: Path, bundle: Any) -> list[Item]:
    root = path.parent
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        try:
            fields = set(reader.fieldnames or ())
        except UnicodeDecodeError:
            raise ValueError(
                f"{str(path)!r} is not a text CSV, nor an image file with a known suffix "
                f"({', '.join(sorted(IMAGE_SUFFIXES)[:8])}, ...); give an image, a folder or a CSV"
            ) from None
        if not {"image", "label"} <= fields:
            raise ValueError(f"{str(path)!r} needs the columns 'image' and 'label' (the evaluate format)")
        items = []
        for i, rec in enumerate(reader):
            label = rec["label"].strip()
            try:
                target = None if label == "" else bundle.class_index(int(label) if label.lstrip("-").isdigit() else label)
            except LookupError as e:
                raise ValueError(f"{str(path)!r} row {i}: label {label!r}: {e}") from None
            items.append(Item(i, rec["image"], str(root / rec["image"]), target))
    return items


# ----------------------------------------------------------------------------- decoding
class _Decoded:
    """A torch Dataset: item ``i`` -> ``(i, C x H x W tensor or None, (w, h), reason)``."""

    def __init__(self, items: list[Item], size: tuple[int, int], interpolation: str = "bilinear",
                 channels: int = 3) -> None:
        self.items, self.size, self.interpolation, self.channels = items, tuple(size), interpolation, channels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from ..imaging.batch import load_batch_sizes, try_read

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image, reason = try_read(self.items[i].path, self.size)
            if image is None:
                return i, None, None, reason
            t, _, sizes = load_batch_sizes(image, self.size, self.interpolation, self.channels)
        return i, t[0], sizes[0], ""


def _collate(batch):
    return batch


# --------------------------------------------------------------------------------- lock
class OutputLock:
    """``FILE.lock``, created exclusively; see the module's docstring for the stale rule."""

    def __init__(self, out: Path) -> None:
        self.path = out.with_name(out.name + ".lock")
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if not self._stale(other):
                    raise RuntimeError(
                        f"another fastloc-viz boxes run (pid {other.get('pid')} on {other.get('host')}, started "
                        f"{time.ctime(other.get('started', 0))}) is writing {str(self.path)[:-5]!r}; wait for it, or "
                        f"remove {str(self.path)!r} if that run is gone"
                    ) from None
                log.warning("taking over the stale lock %s (process %s is gone)", self.path, other.get("pid"))
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RuntimeError(f"could not take the lock {str(self.path)!r}")

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _stale(other: dict) -> bool:
        if other.get("host") != socket.gethostname() or "pid" not in other:
            return not other  # unreadable / empty lock: a crash while writing it
        try:
            os.kill(int(other["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# -------------------------------------------------------------------------------- parts
def _read_parts(parts: Path) -> list[dict]:
    return [d for d in read_json_lines(parts, "rank-*.jsonl") if "key" in d and "status" in d]


def _spec(bundle: Any, method: str, params: dict, layout: str, source: Path, masks: bool, targets) -> dict:
    return {"rows": ROW_FORMAT, "model": bundle.name, "input_size": list(bundle.input_size), "method": method,
            "params": {k: v for k, v in sorted(params.items())}, "layout": layout,
            "source": str(source.resolve()), "masks": masks, "targets": targets, "output": bundle.output,
            "label_threshold": bundle.label_threshold}


_UNSET = object()


def _spec_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["threshold: 0.3 before, 0.5 now", ...]``: every setting (the method's parameters one
    by one) that differs; a parameter not given reads "the default"."""
    def text(v: Any) -> str:
        return "the default" if v is _UNSET else repr(v)

    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, _UNSET), new.get(k, _UNSET)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _spec_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{f'{prefix}{k}'.removeprefix('params.')}: {text(a)} before, {text(b)} now")
    return out


def _check_spec(parts: Path, spec: dict) -> None:
    path = parts / "spec.json"
    if path.exists():
        old = json.loads(path.read_text())
        new = json.loads(json.dumps(spec, default=str))
        if old != new:
            raise ValueError(
                f"{str(parts)!r} holds a run with other settings ({'; '.join(_spec_differences(old, new))}); "
                "rerun with the same settings to resume, or pass --restart to start over"
            )
    else:
        write_text_atomic(path, json.dumps(spec, indent=1, default=str), what="run settings")


# ---------------------------------------------------------------------------------- run
def check_targets(bundle: Any, targets) -> str | list[int]:
    """``"top1"``, ``"positive"``, or the class indices of a list of names / indices."""
    if isinstance(targets, str):
        if targets not in TARGETS:
            raise ValueError(f"targets={targets!r} is not one of {list(TARGETS)} or a list of class names")
        return targets
    if not isinstance(targets, (list, tuple)) or not targets:
        raise TypeError(f"targets must be 'top1', 'positive' or a non-empty list of class names, got {targets!r}")
    return list(dict.fromkeys(bundle.class_index(t) for t in targets))


def _pairs(bundle: Any, x, items: list[Item], targets) -> tuple[list[tuple[int, int | None]], dict[int, str]]:
    """The ``(image, target)`` pairs of a batch to explain (``None``: its top-1), and per image
    with nothing to explain, why (``"positive"``: no label at or above the threshold)."""
    if targets == "top1":
        return [(k, it.label) for k, it in enumerate(items)], {}
    if targets != "positive":
        return [(k, t) for k, it in enumerate(items) for t in ([it.label] if it.label is not None else targets)], {}
    probs = bundle.predict(x)
    pairs, none = [], {}
    for k, it in enumerate(items):
        found = [it.label] if it.label is not None else bundle.positive(probs[k])
        pairs += [(k, t) for t in found]
        if not found:
            best = int(probs[k, : len(bundle.class_names)].argmax())
            none[k] = (f"no label at or above {bundle.label_threshold:.0%} (best: {bundle.class_name(best)} "
                       f"{float(probs[k, best]):.1%})")
    return pairs, none


def _row(item: Item, e, masks: bool, asked: int | None) -> dict:
    key = item.file if asked is None else f"{item.file}#{asked}"
    if e.box is None:
        return {"key": key, "item": item.key, "index": item.index, "file": item.file, "status": "skipped",
                "reason": f"the map for {e.target_name!r} is all zero: no box"}
    d = {"key": key, "item": item.key, "index": item.index, "file": item.file, "status": "ok",
         "width": e.photo_size[0], "height": e.photo_size[1], "target": e.target, "target_name": e.target_name,
         "given": item.label is not None, "probability": _probability(e), "box": list(e.box),
         "box_original": list(e.box_original), "score": e.box_score, "kind": e.box_kind,
         "params": {k: v for k, v in e.to_dict()["params"].items() if k != "image"}}
    if e.boxes is not None:  # components="all": every component, with its own box score and kind
        d["boxes"] = [dict(b, box_score=M.box_score(e.saliency, b["box"]), kind=M.box_kind(e.saliency, b["box"]))
                      for b in e.to_dict()["boxes"]]
    if masks:
        d["rle"] = mask_rle(_mask_original(e))
    return d


def _probability(e) -> float:
    if e.probability is not None:
        return float(e.probability)
    return next((p.probability for p in e.top5 if p.index == e.target), 0.0)


def _mask_original(e) -> np.ndarray:
    """The thresholded map (the pixels the box came from) in the photo's pixels, nearest."""
    p = e.params
    mask = M.select_components(M.threshold_mask(e.saliency, float(p["threshold"])), p["components"], e.saliency)
    h, w = mask.shape
    w0, h0 = e.photo_size
    cols = np.minimum((np.arange(w0) + 0.5) * w / w0, w - 1).astype(int)
    rows = np.minimum((np.arange(h0) + 0.5) * h / h0, h - 1).astype(int)
    return mask[rows][:, cols]


def boxes(
    bundle: Any,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    targets: str | list[str | int] = "top1",
    method: str = "fastloc",
    layout: str = "auto",
    batch_size: int = 16,
    workers: int = 2,
    masks: bool = False,
    restart: bool = False,
    checkpoint_s: float = 60.0,
    progress: bool = True,
    dist: Dist | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Localize every image of ``source`` and write COCO JSON to ``out`` (and ``out`` with
    ``.csv`` beside it); returns a summary (counts, images/s, the paths written). The command
    ``fastloc-viz boxes`` runs this.

    Args:
        bundle: a :class:`~fastloc_viz.ModelBundle` (or an ``nn.Module``).
        source: a folder of images, an ImageFolder tree or a CSV (see the module).
        out: the COCO JSON to write (a ``.json`` path).
        targets: ``"top1"``, ``"positive"`` (every label at or above ``bundle.label_threshold``
            gets its own box and score) or a list of class names / indices (see the module).
        params: go to :func:`fastloc_viz.explain` (``threshold``, ``k``, ``layer`` ...).
    """
    from ..methods import get_method
    from ..model.bundle import bundle_of

    dist = dist or init_distributed()
    bundle = bundle_of(bundle)
    targets = check_targets(bundle, targets)
    m = get_method(method)
    out = Path(out).expanduser()
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {str(out)!r} must be a .json file (COCO); the CSV is written beside it")
    check_writable(out, "the boxes")
    lock = _lock(out, dist)
    t_start = time.perf_counter()
    try:
        items, used = collect_items(source, bundle, layout)
        # a bad parameter fails before any work (the probe layer is explain's, not the method's)
        m.make_params({k: v for k, v in params.items() if k != "layer"})
        spec = _spec(bundle, method, params, used, Path(source).expanduser(), masks, targets)
        run = _Run(out, bundle, method, masks, spec, items)
        run.prepare(restart, dist)
        new, steady = _localize(run, params, batch_size, workers, checkpoint_s, progress, dist)
        barrier()
        if not dist.is_main:
            return {"rank": dist.rank, "new_this_run": new}
        run.write_outputs()
        elapsed = time.perf_counter() - t_start
        rows = unique_rows(_read_parts(run.parts))
        return {"out": str(out), "csv": str(run.csv_out), "parts": str(run.parts), "images": len(items),
                "boxed": len({r["item"] for r in rows if r["status"] == "ok"}),
                "boxes": sum(r["status"] == "ok" for r in rows),
                "kinds": {k: sum(r.get("kind") == k for r in rows if r["status"] == "ok") for k in M.BOX_KINDS},
                "skipped": [{"file": r["file"], "reason": r["reason"]} for r in rows if r["status"] != "ok"],
                "new_this_run": new, "seconds": elapsed, "images_per_s": new * dist.world_size / elapsed,
                "steady_images_per_s": steady, "machine": machine_info(bundle.device), "world_size": dist.world_size}
    finally:
        if dist.is_main:
            lock.release()


def _lock(out: Path, dist: Dist) -> OutputLock:
    """``out``'s lock, taken by rank 0; every rank raises when it is held by another run."""
    lock = OutputLock(out)
    ok = 1
    if dist.is_main:
        try:
            lock.acquire()
        except RuntimeError:
            ok = 0
            if dist.world_size == 1:
                raise
    if not _all_min(ok, dist):
        raise RuntimeError(f"another fastloc-viz boxes run is writing {str(out)!r} (see {str(lock.path)!r})")
    return lock


class _Run:
    """One run's outputs, parts and images: what the loop and the checkpoints share."""

    def __init__(self, out: Path, bundle: Any, method: str, masks: bool, spec: dict, items: list[Item]) -> None:
        self.out, self.csv_out, self.parts = out, out.with_suffix(".csv"), out.with_name(out.name + ".parts")
        self.bundle, self.method, self.masks, self.spec, self.items = bundle, method, masks, spec, items
        source = Path(spec["source"])
        self.root = source_root(source)
        self.info = {"description": f"fastloc-viz boxes: {method} on {source.name}", "model": bundle.name,
                     "method": method, "params": spec["params"], "layout": spec["layout"], "source": str(source),
                     "root": str(self.root), "date_created": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "category_ids": "the model's class indices (0-based)",
                     "score": "the share of the map's mass inside the box (core.maps.box_score); probability: the "
                              "target's probability; kind: object, whole or diffuse (core.maps.box_kind)"}
        self.done: set[str] = set()
        self.mine: list[Item] = []

    def prepare(self, restart: bool, dist: Dist) -> None:
        """The parts folder (emptied with ``restart``; its settings checked), then this rank's
        images still to do."""
        if dist.is_main:
            if restart and self.parts.exists():
                for p in self.parts.iterdir():
                    p.unlink()
            make_dir(self.parts, "the run's parts folder")
            _check_spec(self.parts, self.spec)
        barrier()
        self.done = {r["item"] for r in _read_parts(self.parts)}
        self.mine = [it for it in self.items if it.index % dist.world_size == dist.rank and it.key not in self.done]

    def write_outputs(self) -> None:
        """FILE and its CSV from every part so far, atomically."""
        rows = unique_rows(_read_parts(self.parts))
        first = next((r for r in rows if r["status"] == "ok"), None)
        if first is not None:  # the method's full parameters, defaults included
            self.info["params"] = first["params"]
        doc = coco_document(rows, self.bundle.target_names, self.info)
        write_text_atomic(self.out, json.dumps(doc), what="the boxes")
        write_text_atomic(self.csv_out, csv_text(rows, self.root), what="the boxes CSV")


def _localize(run: _Run, params: dict, batch_size: int, workers: int, checkpoint_s: float, progress: bool,
              dist: Dist) -> tuple[int, float]:
    """Box this rank's images, a batch at a time, each batch's rows appended to its part;
    returns ``(images done, steady images/s over all ranks)``."""
    import torch

    loader = torch.utils.data.DataLoader(
        _Decoded(run.mine, run.bundle.input_size, run.bundle.interpolation, run.bundle.channels), batch_size=batch_size,
        shuffle=False,
        num_workers=workers, collate_fn=_collate, persistent_workers=False, prefetch_factor=4 if workers else None)
    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(run.items), initial=len(run.done), unit="img", desc=f"boxes {run.method}",
                   dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
    part = open_json_lines(run.parts / f"rank-{dist.rank}.jsonl")
    delay = float(os.environ.get("FASTLOC_BOXES_DELAY", "0") or 0)  # tests: slow a run down to kill it
    last = time.monotonic()
    new, first_batch = 0, None  # steady rate: from the end of the first batch (workers up, model warm)
    try:
        for batch in loader:
            lines = _batch_rows(run, batch, params, batch_size)
            part.write("".join(json.dumps(r) + "\n" for r in lines))
            part.flush()
            os.fsync(part.fileno())
            new += len(batch)
            if first_batch is None:
                first_batch = (time.perf_counter(), new)
            if bar is not None:
                bar.update(len(batch) * dist.world_size)
            if delay:
                time.sleep(delay)
            if dist.is_main and (new == first_batch[1] or time.monotonic() - last > checkpoint_s):
                run.write_outputs()  # after the first batch, then every checkpoint_s
                last = time.monotonic()
    except KeyboardInterrupt:
        if dist.is_main and (run.done or new):
            run.write_outputs()
        raise Interrupted(
            f"{len(run.done) + new * dist.world_size} of {len(run.items)} images are done and kept in "
            f"{str(run.parts)!r} ({str(run.out)!r} holds them); rerun the same command (without --restart) to resume"
        ) from None
    finally:
        part.close()
        if bar is not None:
            bar.close()
    t_end = time.perf_counter()
    steady = (new - first_batch[1]) / (t_end - first_batch[0]) if first_batch and new > first_batch[1] else None
    return new, _all_sum(steady or 0.0, dist)


def _batch_rows(run: _Run, batch: list, params: dict, batch_size: int) -> list[dict]:
    """One decoded batch -> its rows, by index: skipped files with their reason, images with
    no target (``"positive"``: no label found) with theirs, then one ``explain`` call on every
    (image, target) pair of the images that were read."""
    import torch

    from ..methods.explain import explain

    def skipped(it: Item, reason: str) -> dict:
        return {"key": it.key, "item": it.key, "index": it.index, "file": it.file, "status": "skipped", "reason": reason}

    lines = [skipped(run.mine[i], reason) for i, t, _, reason in batch if t is None]
    good = [(run.mine[i], t, s) for i, t, s, _ in batch if t is not None]
    if good:
        x = torch.stack([t for _, t, _ in good])
        pairs, none = _pairs(run.bundle, x, [it for it, _, _ in good], run.spec["targets"])
        lines += [skipped(good[k][0], why) for k, why in none.items()]
        if pairs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results = explain(run.bundle, x[[k for k, _ in pairs]], method=run.method,
                                  target=[t for _, t in pairs], batch_size=batch_size, progress=False, **params)
            for (k, asked), e in zip(pairs, results):
                it, _, size = good[k]
                lines.append(_row(it, e.replace(original_size=tuple(size)), run.masks, asked))
    return sorted(lines, key=lambda r: r["index"])


def _all_min(value: int, dist: Dist) -> int:
    if dist.world_size == 1:
        return value
    import torch
    import torch.distributed as td

    t = torch.tensor([value])
    td.all_reduce(t, op=td.ReduceOp.MIN)
    return int(t.item())


def _all_sum(value: float, dist: Dist) -> float:
    if dist.world_size == 1:
        return value
    import torch
    import torch.distributed as td

    t = torch.tensor([float(value)], dtype=torch.float64)
    td.all_reduce(t)
    return float(t.item())


