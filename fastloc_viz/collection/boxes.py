"""Localize a whole collection: ``fastloc-viz boxes SOURCE --out FILE``.

Sources (:func:`collect_items`):

* a folder of images, searched recursively (files whose extension is an image format's,
  :data:`IMAGE_EXTENSIONS`; hidden files and folders are left out): the target is the top-1
  class;
* an ImageFolder tree: every sub-folder of SOURCE is named by a class (a name, words or an
  index the model's class lookup resolves, :mod:`fastloc_viz.model.classes`) and gives the target of
  the images under it (``--layout imagefolder``; ``auto`` takes a folder as one when every
  sub-folder resolves and no image lies at its top);
* a CSV in the ``evaluate`` format: ``image`` (relative to the CSV's folder) and ``label``
  columns; other columns (``boxes`` ...) are ignored here.

How it runs (:func:`run_boxes`): a ``torch.utils.data.DataLoader`` with worker processes
decodes each image to the model's grid (keeping the photo's own size) while the model works;
``explain`` runs on each preloaded batch. Each finished image is one JSON line in
``FILE.parts/rank-<r>.jsonl`` (flushed at once), so a killed run loses at most the batch in
flight; a rerun reads every part, skips the images done, and never writes one twice. The
output (COCO JSON in FILE, and a CSV beside it, :mod:`fastloc_viz.collection.coco`) is replaced
atomically at checkpoints and at the end. Under ``torchrun`` each rank takes every
``world_size``-th image; rank 0 merges the parts. A file that cannot be used (corrupt, not an
image, unreadable, too small) becomes a ``skipped`` row with its reason; the run goes on.

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
from .coco import coco_document, csv_text, mask_rle, unique_rows

log = logging.getLogger("fastloc_viz")

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .dcm .dicom .fits .fit .fts .fz "
    ".jp2 .j2k .tga .ico".split()
)
LAYOUTS = ("auto", "folder", "imagefolder", "csv")
ROW_FORMAT = 2
"""The rows' format, kept in the run's ``spec.json``: 2 adds each box's ``score`` and ``kind``, so
parts written before cannot be resumed into a run that needs them."""


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
def _image_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                out.append(Path(dirpath) / name)
    return out


def collect_items(source: str | os.PathLike, bundle: Any, layout: str = "auto") -> tuple[list[Item], str]:
    """The images of ``source`` and the layout used (``"folder"``, ``"imagefolder"``, ``"csv"``).

    Raises:
        FileNotFoundError: no such source; ValueError: a CSV without ``image`` / ``label``, an
        ImageFolder sub-folder that names no class, or an empty source.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    src = Path(source).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"source {str(src)!r} does not exist (give a folder of images or a CSV)")
    if src.is_file() or layout == "csv":
        items = _csv_items(src, bundle)
        used = "csv"
    else:
        subdirs = sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
        top_images = [p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        used = layout
        if layout == "auto":
            used = "imagefolder" if subdirs and not top_images and all(_folder_class(bundle, d.name) is not None
                                                                       for d in subdirs) else "folder"
        if used == "imagefolder":
            items = []
            for d in subdirs:
                label = _folder_class(bundle, d.name)
                if label is None:
                    raise ValueError(f"ImageFolder sub-folder {d.name!r} names no class of the model")
                items += [(p, label) for p in _image_files(d)]
            items = [Item(i, p.relative_to(src).as_posix(), str(p), lab) for i, (p, lab) in enumerate(items)]
        else:
            items = [Item(i, p.relative_to(src).as_posix(), str(p), None) for i, p in enumerate(_image_files(src))]
    if not items:
        raise ValueError(f"no images found in {str(src)!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS)[:8])}, ...)")
    return items, used


def _folder_class(bundle: Any, name: str) -> int | None:
    try:
        return bundle.class_index(int(name) if name.isdigit() else name.replace("_", " "))
    except (LookupError, TypeError, ValueError):
        return None


def _csv_items(path: Path, bundle: Any) -> list[Item]:
    root = path.parent
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"image", "label"} <= set(reader.fieldnames or ()):
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
    """A torch Dataset: item ``i`` -> ``(i, 3 x H x W tensor or None, (w, h), reason)``."""

    def __init__(self, items: list[Item], size: tuple[int, int], interpolation: str = "bilinear") -> None:
        self.items, self.size, self.interpolation = items, tuple(size), interpolation

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from ..imaging.batch import load_batch_sizes

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t, _, sizes = load_batch_sizes(Path(self.items[i].path), self.size, self.interpolation)
            return i, t[0], sizes[0], ""
        except Exception as e:  # noqa: BLE001 - any bad file becomes a skipped row
            return i, None, None, f"{type(e).__name__}: {' '.join(str(e).split())}"


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


def _spec(bundle: Any, method: str, params: dict, layout: str, source: Path, masks: bool) -> dict:
    return {"rows": ROW_FORMAT, "model": bundle.name, "input_size": list(bundle.input_size), "method": method,
            "params": {k: v for k, v in sorted(params.items())}, "layout": layout,
            "source": str(source.resolve()), "masks": masks}


def _check_spec(parts: Path, spec: dict) -> None:
    path = parts / "spec.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(spec, default=str)):
            diff = sorted(k for k in set(old) | set(spec) if old.get(k) != json.loads(json.dumps(spec, default=str)).get(k))
            raise ValueError(
                f"{str(parts)!r} holds a run with other settings ({', '.join(diff)} differ); rerun with the same "
                "settings to resume, or pass --restart to start over"
            )
    else:
        write_text_atomic(path, json.dumps(spec, indent=1, default=str), what="run settings")


# ---------------------------------------------------------------------------------- run
def _row(item: Item, e, masks: bool) -> dict:
    if e.box is None:
        return {"key": item.key, "index": item.index, "file": item.file, "status": "skipped",
                "reason": f"the map for {e.target_name!r} is all zero: no box"}
    d = {"key": item.key, "index": item.index, "file": item.file, "status": "ok",
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
    mask = M.select_components(M.threshold_mask(e.saliency, float(p.get("threshold", 0.3))),
                               p.get("components", "peak"), e.saliency)
    h, w = mask.shape
    w0, h0 = e.photo_size
    cols = np.minimum((np.arange(w0) + 0.5) * w / w0, w - 1).astype(int)
    rows = np.minimum((np.arange(h0) + 0.5) * h / h0, h - 1).astype(int)
    return mask[rows][:, cols]


def run_boxes(
    source: str | os.PathLike,
    out: str | os.PathLike,
    bundle: Any,
    *,
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
    ``.csv`` beside it); returns a summary (counts, images/s, the paths written).

    ``params`` go to :func:`fastloc_viz.explain` (``threshold``, ``k``, ``layer`` ...).
    """
    import torch

    from ..methods import get_method
    from ..methods.explain import explain

    dist = dist or init_distributed()
    m = get_method(method)
    out = Path(out).expanduser()
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {str(out)!r} must be a .json file (COCO); the CSV is written beside it")
    check_writable(out, "the boxes")
    csv_out = out.with_suffix(".csv")
    parts = out.with_name(out.name + ".parts")
    lock = OutputLock(out)
    ok = 1
    if dist.is_main:
        try:
            lock.acquire()
        except RuntimeError:
            ok = 0
            if dist.world_size == 1:
                raise
    ok = _all_min(ok, dist)
    if not ok:
        raise RuntimeError(f"another fastloc-viz boxes run is writing {str(out)!r} (see {str(lock.path)!r})")
    t_start = time.perf_counter()
    try:
        items, used = collect_items(source, bundle, layout)
        m.make_params(dict(params))  # a bad parameter fails before any work
        spec = _spec(bundle, method, params, used, Path(source), masks)
        if dist.is_main:
            if restart and parts.exists():
                for p in parts.iterdir():
                    p.unlink()
            make_dir(parts, "the run's parts folder")
            _check_spec(parts, spec)
        barrier()
        done = {r["key"] for r in _read_parts(parts)}
        mine = [it for it in items if it.index % dist.world_size == dist.rank and it.key not in done]
        info = {"description": f"fastloc-viz boxes: {method} on {Path(source).name}", "model": bundle.name,
                "method": method, "params": spec["params"], "layout": used, "source": str(source),
                "date_created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "category_ids": "the model's class indices (0-based)",
                "score": "the share of the map's mass inside the box (core.maps.box_score); "
                         "probability: the target's probability; kind: object, whole or diffuse (core.maps.box_kind)"}

        def write_outputs() -> None:
            rows = unique_rows(_read_parts(parts))
            first = next((r for r in rows if r["status"] == "ok"), None)
            if first is not None:  # the method's full parameters, defaults included
                info["params"] = first["params"]
            write_text_atomic(out, json.dumps(coco_document(rows, bundle.class_names, info)), what="the boxes")
            write_text_atomic(csv_out, csv_text(rows), what="the boxes CSV")

        loader = torch.utils.data.DataLoader(
            _Decoded(mine, bundle.input_size, bundle.interpolation), batch_size=batch_size, shuffle=False, num_workers=workers,
            collate_fn=_collate, persistent_workers=False, prefetch_factor=4 if workers else None)
        bar = None
        if progress and dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), initial=len(done), unit="img", desc=f"boxes {method}",
                       dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
        part = open_json_lines(parts / f"rank-{dist.rank}.jsonl")
        delay = float(os.environ.get("FASTLOC_BOXES_DELAY", "0") or 0)  # tests: slow a run down to kill it
        last = time.monotonic()
        new, first_batch = 0, None  # steady rate: from the end of the first batch (workers up, model warm)
        try:
            for batch in loader:
                lines = []
                good = [(mine[i], t, s) for i, t, s, reason in batch if t is not None]
                for i, t, s, reason in batch:
                    if t is None:
                        lines.append({"key": mine[i].key, "index": mine[i].index, "file": mine[i].file,
                                      "status": "skipped", "reason": reason})
                if good:
                    x = torch.stack([t for _, t, _ in good])
                    targets = [it.label for it, _, _ in good]
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        results = explain(bundle, x, method=method, target=targets, batch_size=len(good),
                                          progress=False, **params)
                    for (it, _, s), e in zip(good, results):
                        lines.append(_row(it, e.replace(original_size=tuple(s)), masks))
                lines.sort(key=lambda r: r["index"])
                part.write("".join(json.dumps(r) + "\n" for r in lines))
                part.flush()
                os.fsync(part.fileno())
                new += len(lines)
                if first_batch is None:
                    first_batch = (time.perf_counter(), new)
                if bar is not None:
                    bar.update(len(lines) * dist.world_size)
                if delay:
                    time.sleep(delay)
                if dist.is_main and time.monotonic() - last > checkpoint_s:
                    write_outputs()
                    last = time.monotonic()
        finally:
            part.close()
            if bar is not None:
                bar.close()
        t_end = time.perf_counter()
        steady = (new - first_batch[1]) / (t_end - first_batch[0]) if first_batch and new > first_batch[1] else None
        steady = _all_sum(steady or 0.0, dist)
        barrier()
        elapsed = time.perf_counter() - t_start
        if dist.is_main:
            write_outputs()
            rows = unique_rows(_read_parts(parts))
            summary = {"out": str(out), "csv": str(csv_out), "parts": str(parts), "images": len(items),
                       "boxed": sum(r["status"] == "ok" for r in rows),
                       "kinds": {k: sum(r.get("kind") == k for r in rows if r["status"] == "ok") for k in M.BOX_KINDS},
                       "skipped": [{"file": r["file"], "reason": r["reason"]} for r in rows if r["status"] != "ok"],
                       "new_this_run": new, "seconds": elapsed, "images_per_s": new * dist.world_size / elapsed,
                       "steady_images_per_s": steady,
                       "machine": machine_info(bundle.device), "world_size": dist.world_size}
            return summary
        return {"rank": dist.rank, "new_this_run": new}
    finally:
        if dist.is_main:
            lock.release()


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


