"""What a channel detects: a neuron atlas, built once over a collection of images.

:meth:`NeuronAtlas.build` runs the images through the model once (batched, ``torch.no_grad``,
the forward stopped right after the probe layer) and keeps, for every channel of the probe
layer, its ``top`` most activating images: in each image the channel's strongest unit
(position and activation; one unit per image, so a channel's strip shows ``top`` different
images), the images ranked by that activation (ties: the earlier image first). With
``negative=True`` (the default) it also keeps each channel's ``top`` most *negative* units
the same way: a probe layer without a final activation (EfficientNet's block outputs) has
negative units, and the ranking keeps such a unit when its gradient is negative too; what
such a neuron detects is where its channel is most negative (``top(channel, sign=-1)``).
Then it cuts
each kept unit's receptive-field patch out of its image: a square of ``patch_cells x
patch_cells`` layer cells centred on the unit (the core of its effective receptive field; the
theoretical one of a late layer covers the whole image), stored as a small JPEG.

The file (:meth:`NeuronAtlas.save`) is a NumPy ``.npz`` of plain numeric arrays plus a JSON
header (format, model name, layer, layer shape, input size, the images and their labels),
read back with ``allow_pickle=False``: loading an atlas runs no code from the file. It is
keyed by model and layer (:meth:`NeuronAtlas.check`), so it is built once and reused.

A long build resumes: with ``checkpoint=`` the running tables are written atomically every
few batches, and a new build with the same model, layer, images and ``top`` starts from the
last checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.checks import check_int
from ..core.files import write_bytes_atomic
from ..core.parallel import Dist, gather_objects, init_distributed
from ..core.raster import encode, to_uint8
from ..imaging.batch import load_batch, unreadable_reason
from ..imaging.sources import Source, sources
from ..model.bundle import ModelBundle, bundle_of
from ..model.state import forward_hook, preserved, require_called, require_spatial
from ..model.tokens import as_map

__all__ = ["AtlasUnit", "NeuronAtlas"]

log = logging.getLogger("fastloc_viz")

FORMAT = "fastloc_viz.neurons.atlas/1"


@dataclass(frozen=True)
class AtlasUnit:
    """One of a channel's top units.

    Attributes:
        channel: the probe layer's channel.
        rank: 1 for the channel's most activating image.
        image: the image's name: its path relative to the folder or CSV it came from, the
            path as given in a list, or ``"#i"`` for the i-th in-memory image of a list.
        index: the image's position in :attr:`NeuronAtlas.images`.
        y, x: the unit's cell on the layer's ``h x w`` grid.
        activation: its activation.
        labels: the image's class names, where the source gives labels (a CSV), else ``()``.
    """

    channel: int
    rank: int
    image: str
    index: int
    y: int
    x: int
    activation: float
    labels: tuple[str, ...] = ()


class _Stop(Exception):
    """Raised by the probe hook: the rest of the forward pass is not needed."""


def _scan(bundle: ModelBundle, layer, x: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[int, int, int]]:
    """Each channel's strongest and most negative unit per image: ``[(max values, flat
    positions), (-min values, flat positions)]``, ``B x C`` each."""
    name, module = layer
    seen: dict = {"calls": 0}

    def hook(_m, _inp, out):
        seen["calls"] += 1
        seen["out"] = out = as_map(bundle.model, name, out, tuple(x.shape[-2:]))[0]  # tokens: their grid
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            flat = out.detach().flatten(2).float()
            seen["max"] = [flat.max(dim=2), (-flat).max(dim=2)]
            seen["shape"] = tuple(out.shape[1:])
        raise _Stop

    with preserved(bundle.model), torch.no_grad(), forward_hook(module, hook):
        try:
            bundle.model(bundle.preprocess(x))
        except _Stop:
            pass
    require_called(name, seen["calls"])
    require_spatial(name, seen["out"])
    return [(v.cpu(), w.cpu()) for v, w in seen["max"]], seen["shape"]


def _merge(vals, idx, pos, new_vals, new_idx, new_pos, top):
    """Keep each row's ``top`` best of old and new: activation descending, then image index."""
    v = np.concatenate([vals, new_vals], axis=1)
    i = np.concatenate([idx, new_idx], axis=1)
    p = np.concatenate([pos, new_pos], axis=1)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -v), axis=1)[:, :top]
    return (np.take_along_axis(v, order, 1), np.take_along_axis(i, order, 1), np.take_along_axis(p, order, 1))


def _patch_jpeg(image: Image.Image, y: int, x: int, grid: tuple[int, int], cells: int, px: int) -> bytes:
    """The ``cells x cells`` window centred on cell ``(y, x)``, resized to ``px``, as JPEG."""
    ww, hh = image.size
    sy, sx = hh / grid[0], ww / grid[1]
    cy, cx = (y + 0.5) * sy, (x + 0.5) * sx
    box = (round(cx - cells * sx / 2), round(cy - cells * sy / 2), round(cx + cells * sx / 2), round(cy + cells * sy / 2))
    img = image.crop(box).resize((px, px), Image.BILINEAR)  # outside the image: black
    return encode(np.asarray(img))


class NeuronAtlas:
    """Every channel's top activating units over a collection of images, with patches.

    Build one with :meth:`build`, store it with :meth:`save`, reload it with :meth:`load`.
    Attributes: ``model``, ``layer``, ``layer_shape`` ``(C, h, w)``, ``input_size``
    ``(H, W)``, ``images`` (names), ``labels`` (per image, class indices), ``class_names``
    (index -> name for those labels), ``top_n``, ``signs`` (``(1,)`` or ``(1, -1)``),
    ``patch_cells``, ``patch_px``; the tables ``activation`` (``S x C x top`` float32, one
    slice per sign, ``nan`` where fewer images than ``top``), ``image_index`` (``-1`` there),
    ``y``, ``x``; ``skipped``: ``{"image", "reason"}`` of every file that could not be read
    (left out of the build, which went on).
    """

    def __init__(
        self,
        *,
        model: str,
        layer: str,
        layer_shape: tuple[int, int, int],
        input_size: tuple[int, int],
        images: list[str],
        labels: list[list[int]],
        class_names: dict[int, str],
        top: int,
        signs: Sequence[int] = (1,),
        patch_cells: int,
        patch_px: int,
        activation: np.ndarray,
        image_index: np.ndarray,
        y: np.ndarray,
        x: np.ndarray,
        patch_bytes: np.ndarray,
        patch_offsets: np.ndarray,
        skipped: Sequence[dict] = (),
    ) -> None:
        self.model, self.layer = model, layer
        self.layer_shape = tuple(int(v) for v in layer_shape)
        self.input_size = tuple(int(v) for v in input_size)
        self.images, self.labels, self.class_names = list(images), [list(v) for v in labels], dict(class_names)
        self.top_n, self.patch_cells, self.patch_px = int(top), int(patch_cells), int(patch_px)
        self.signs = tuple(int(v) for v in signs)
        self.skipped = [{"image": str(d["image"]), "reason": str(d["reason"])} for d in skipped]
        if self.signs not in ((1,), (1, -1)):
            raise ValueError(f"atlas signs {self.signs} must be (1,) or (1, -1)")
        self.activation = np.asarray(activation, dtype=np.float32)
        self.image_index = np.asarray(image_index, dtype=np.int64)
        self.y, self.x = np.asarray(y, dtype=np.int64), np.asarray(x, dtype=np.int64)
        self._patch_bytes = np.asarray(patch_bytes, dtype=np.uint8)
        self._patch_offsets = np.asarray(patch_offsets, dtype=np.int64)
        want = (len(self.signs), self.layer_shape[0], self.top_n)
        for name in ("activation", "image_index", "y", "x"):
            if getattr(self, name).shape != want:
                raise ValueError(f"atlas table {name!r} has shape {getattr(self, name).shape}, expected {want}")
        if self._patch_offsets.shape != (int(np.prod(want)) + 1,):
            raise ValueError("atlas patch offsets do not match its tables")

    def __repr__(self) -> str:
        return (
            f"<NeuronAtlas {self.model} {self.layer!r}: {self.layer_shape[0]} channels x top {self.top_n}, "
            f"{len(self.images)} images>"
        )

    @property
    def channels(self) -> int:
        return self.layer_shape[0]

    # --- reading -----------------------------------------------------------------------

    def _check_channel(self, channel: int) -> int:
        channel = int(channel)
        if not 0 <= channel < self.channels:
            raise IndexError(f"channel {channel} does not exist; layer {self.layer!r} has {self.channels} channels")
        return channel

    def _sign(self, sign: int) -> int:
        if sign not in self.signs:
            raise ValueError(f"sign={sign!r}: this atlas holds the units of sign {list(self.signs)}")
        return self.signs.index(sign)

    def top(self, channel: int, n: int | None = None, sign: int = 1) -> list[AtlasUnit]:
        """The channel's ``n`` (default: all kept) most activating units, best first;
        ``sign=-1``: its most negative units, most negative first."""
        c = self._check_channel(channel)
        s = self._sign(sign)
        n = self.top_n if n is None else min(int(n), self.top_n)
        out = []
        for r in range(n):
            i = int(self.image_index[s, c, r])
            if i < 0:
                break
            out.append(
                AtlasUnit(
                    channel=c,
                    rank=r + 1,
                    image=self.images[i],
                    index=i,
                    y=int(self.y[s, c, r]),
                    x=int(self.x[s, c, r]),
                    activation=float(self.activation[s, c, r]),
                    labels=tuple(self.class_names.get(lab, f"class {lab}") for lab in self.labels[i]),
                )
            )
        return out

    def patch(self, channel: int, rank: int, sign: int = 1) -> np.ndarray:
        """The receptive-field patch of the channel's unit of ``rank`` (1-based):
        ``patch_px x patch_px x 3`` uint8."""
        c = self._check_channel(channel)
        s = self._sign(sign)
        if not 1 <= rank <= self.top_n or self.image_index[s, c, rank - 1] < 0:
            raise IndexError(f"channel {c} has no unit of rank {rank}")
        j = (s * self.channels + c) * self.top_n + rank - 1
        data = self._patch_bytes[self._patch_offsets[j] : self._patch_offsets[j + 1]].tobytes()
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    def patches(self, channel: int, n: int | None = None, sign: int = 1) -> list[np.ndarray]:
        """The patches of :meth:`top` ``(channel, n, sign)``, in order."""
        return [self.patch(u.channel, u.rank, sign) for u in self.top(channel, n, sign)]

    def strip(self, channel: int, n: int = 6, sign: int = 1, gap: int = 2) -> np.ndarray:
        """The channel's top ``n`` patches side by side (white gaps): ``h x w x 3`` uint8."""
        ps = self.patches(channel, n, sign)
        px = self.patch_px
        out = np.full((px, max(1, len(ps)) * (px + gap) - gap, 3), 255, dtype=np.uint8)
        for i, p in enumerate(ps):
            out[:, i * (px + gap) : i * (px + gap) + px] = p
        return out

    def check(self, model: ModelBundle | torch.nn.Module, layer: str | None) -> None:
        """Raise ``ValueError`` unless the atlas was built for this model's name and layer."""
        bundle = bundle_of(model)
        if bundle.name != self.model or (layer is not None and layer != self.layer):
            raise ValueError(
                f"the atlas was built for model {self.model!r} at layer {self.layer!r}, not {bundle.name!r} "
                f"at {layer!r}; build one for that layer (NeuronAtlas.build or fastloc-viz atlas)"
            )

    # --- files -------------------------------------------------------------------------

    def _header(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model,
            "layer": self.layer,
            "layer_shape": list(self.layer_shape),
            "input_size": list(self.input_size),
            "images": self.images,
            "labels": self.labels,
            "class_names": {str(k): v for k, v in self.class_names.items()},
            "top": self.top_n,
            "signs": list(self.signs),
            "patch_cells": self.patch_cells,
            "patch_px": self.patch_px,
            "skipped": self.skipped,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the atlas to ``path`` (``.npz``; atomically). Returns the path."""
        buf = io.BytesIO()
        np.savez(
            buf,
            header=np.frombuffer(json.dumps(self._header()).encode(), dtype=np.uint8),
            activation=self.activation,
            image_index=self.image_index.astype(np.int32),
            y=self.y.astype(np.int16),
            x=self.x.astype(np.int16),
            patch_bytes=self._patch_bytes,
            patch_offsets=self._patch_offsets,
        )
        return write_bytes_atomic(path, buf.getvalue(), what="atlas")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NeuronAtlas:
        """Read an atlas written by :meth:`save` (no pickle: plain arrays and JSON)."""
        with np.load(Path(path), allow_pickle=False) as z:
            try:
                header = json.loads(z["header"].tobytes().decode())
            except KeyError:
                raise ValueError(f"{str(path)!r} is not a fastloc_viz atlas (no header)") from None
            if header.get("format") != FORMAT:
                raise ValueError(f"{str(path)!r} has atlas format {header.get('format')!r}; this version reads {FORMAT!r}")
            arrays = {k: z[k] for k in ("activation", "image_index", "y", "x", "patch_bytes", "patch_offsets")}
        header.pop("format")
        header["class_names"] = {int(k): v for k, v in header["class_names"].items()}
        return cls(**header, **arrays)

    @classmethod
    def load_or_build(cls, path: str | os.PathLike[str], model, images, layer: str | None = None, **kwargs) -> NeuronAtlas:
        """:meth:`load` ``path`` if it holds an atlas for this model and layer, else
        :meth:`build` one (resuming from ``path + ".partial"``) and :meth:`save` it there."""
        bundle = bundle_of(model)
        path = Path(path)
        if path.exists():
            atlas = cls.load(path)
            atlas.check(bundle, layer)
            return atlas
        atlas = cls.build(bundle, images, layer, checkpoint=kwargs.pop("checkpoint", str(path) + ".partial"), **kwargs)
        atlas.save(path)
        return atlas

    # --- building ----------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model: ModelBundle | torch.nn.Module,
        images: Any,
        layer: str | torch.nn.Module | None = None,
        *,
        top: int = 8,
        batch_size: int = 16,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 8,
        progress: bool | None = None,
        patch_cells: int = 3,
        patch_px: int = 64,
        negative: bool = True,
        dist: Dist | None = None,
    ) -> NeuronAtlas:
        """Run ``images`` through the model once and keep each channel's top units.

        Args:
            model: a :class:`~fastloc_viz.ModelBundle` (or module).
            images: a folder (the files :func:`fastloc_viz.imaging.sources.image_files` lists),
                a CSV file or data directory in the ``evaluate`` format (labels known), a
                :class:`~fastloc_viz.imaging.dataset.LocalizationDataset`, or a list of paths /
                images. Files are read as :func:`fastloc_viz.explain` reads them; one that
                cannot be read is left out and listed in :attr:`skipped` with its reason.
            layer: the probe layer (``None``: the same default as :func:`fastloc_viz.explain`).
            top: units kept per channel (at most one per image).
            batch_size: images per forward pass.
            checkpoint: a file to write the running tables to every ``checkpoint_every``
                batches (atomically); a build that finds a matching one resumes from it, and
                removes it when done. ``None``: no checkpoints. Under ``torchrun`` each rank
                keeps its own (``FILE.rank<r>``), so a job resumes with the same number of
                processes.
            progress: show tqdm bars (default: when there is more than one batch; rank 0 only).
            patch_cells: the patch's side in layer cells; patch_px: its stored side in pixels.
            negative: also keep each channel's ``top`` most negative units (``sign=-1``).
            dist: this process's place in a ``torchrun`` job (``None``: read from the
                environment). Rank ``r`` of ``N`` scans batches ``r, r + N, ...`` (the batches of
                one process, so every activation is the same) and cuts the patches of images
                ``r, r + N, ...``; the ranks' tables are merged and every rank returns the atlas
                one process would build.
        """
        from ..methods.explain import _layer

        bundle = bundle_of(model)
        for arg, value, low in (("top", top, 1), ("batch_size", batch_size, 1), ("checkpoint_every", checkpoint_every, 1),
                                ("patch_cells", patch_cells, 1), ("patch_px", patch_px, 8)):
            check_int(arg, value, low)
        dist = dist or init_distributed()
        src = sources(images)
        size = tuple(bundle.input_size)
        name_module = _layer(bundle, layer, _first_readable(src, size, bundle.interpolation, bundle.channels))
        scan = _Scan(bundle, src, name_module, (1, -1) if negative else (1,), top, batch_size, dist)
        show = bool(progress if progress is not None else len(range(0, len(src), batch_size)) > 1) and dist.is_main
        ck = None if checkpoint is None else Path(checkpoint)
        if ck is not None and dist.world_size > 1:
            ck = ck.with_name(f"{ck.name}.rank{dist.rank}")
        tables = _merge_ranks(scan.run(ck, checkpoint_every, show), top)
        atlas = cls._assemble(scan, tables, patch_cells, patch_px, show)
        if ck is not None and ck.exists():
            ck.unlink()
        return atlas

    @classmethod
    def _assemble(cls, scan: _Scan, tables: _Tables, patch_cells: int, patch_px: int, show: bool) -> NeuronAtlas:
        """The atlas from the merged tables: unit positions, activations, patches, skipped files."""
        bundle, src, signs, idx = scan.bundle, scan.src, scan.signs, tables.idx
        c, h, w = tables.shape
        ys = np.where(idx >= 0, tables.pos // w, -1)
        xs = np.where(idx >= 0, tables.pos % w, -1)
        activation = np.where(idx >= 0, tables.vals * np.array(signs, dtype=np.float32)[:, None, None], np.nan)
        blobs = _cut_patches(src, scan.size, bundle.interpolation, idx, ys, xs, (h, w), patch_cells, patch_px, show,
                             scan.dist)
        offsets = np.zeros(idx.size + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(bt) for bt in blobs])
        data = np.frombuffer(b"".join(blobs), dtype=np.uint8) if offsets[-1] else np.zeros(0, dtype=np.uint8)
        used = sorted({lab for labs in src.labels for lab in labs})
        return cls(
            model=bundle.name,
            layer=scan.layer[0],
            layer_shape=tables.shape,
            input_size=scan.size,
            images=src.names,
            labels=src.labels,
            class_names={lab: bundle.class_name(lab) for lab in used},
            top=scan.top,
            signs=signs,
            patch_cells=patch_cells,
            patch_px=patch_px,
            activation=activation.astype(np.float32),
            image_index=idx,
            y=ys,
            x=xs,
            patch_bytes=data.copy(),
            patch_offsets=offsets,
            skipped=[{"image": src.names[i], "reason": why} for i, why in sorted(tables.skipped.items())],
        )


@dataclass
class _Tables:
    """Each channel's running top units: ``S x C x top`` activations (sign-flipped for the
    negative slice), image indices (``-1``: empty) and flat positions on the layer's grid; and
    the images that could not be read (index -> reason)."""

    vals: np.ndarray | None = None
    idx: np.ndarray | None = None
    pos: np.ndarray | None = None
    shape: tuple[int, int, int] | None = None
    skipped: dict[int, str] = field(default_factory=dict)

    def add(self, found, kept: Sequence[int], shape: tuple[int, int, int], n_signs: int, top: int) -> None:
        """Merge in one batch's strongest units (:func:`_scan`) of the images ``kept``."""
        if self.idx is None:
            full = (n_signs, shape[0], top)
            self.vals = np.full(full, -np.inf, dtype=np.float32)
            self.idx = np.full(full, -1, dtype=np.int64)
            self.pos = np.full(full, -1, dtype=np.int64)
        self.shape = shape
        img = np.asarray(kept, dtype=np.int64)[None, :].repeat(shape[0], 0)
        for k, (v, w) in enumerate(found[:n_signs]):
            self.merge_slice(k, v.numpy().T, img, w.numpy().T.astype(np.int64), top)

    def merge_slice(self, k: int, vals, idx, pos, top: int) -> None:
        self.vals[k], self.idx[k], self.pos[k] = _merge(self.vals[k], self.idx[k], self.pos[k], vals, idx, pos, top)


def _merge_ranks(tables: _Tables, top: int) -> _Tables:
    """Every rank's tables merged into one (a collective call under ``torchrun``): the top
    units of all images and every skipped file, as one process would keep them."""
    every = gather_objects(tables)
    parts = [t for t in every if t.idx is not None]
    out = parts[0]
    for t in parts[1:]:
        for k in range(len(out.vals)):
            out.merge_slice(k, t.vals[k], t.idx[k], t.pos[k], top)
    out.skipped = {i: why for t in every for i, why in t.skipped.items()}
    return out


class _Scan:
    """The forward passes of one build: this rank's batches, checkpointed."""

    def __init__(self, bundle: ModelBundle, src: Source, layer: tuple[str, Any], signs: tuple[int, ...], top: int,
                 batch_size: int, dist: Dist) -> None:
        self.bundle, self.src, self.layer = bundle, src, layer
        self.signs, self.top, self.batch_size, self.dist = signs, top, batch_size, dist
        self.size = tuple(bundle.input_size)
        self.key = {"model": bundle.name, "layer": layer[0], "images": src.fingerprint, "top": top,
                    "signs": list(signs), "input_size": list(self.size)}
        if dist.world_size > 1:
            self.key["shard"] = [dist.rank, dist.world_size]

    def resume(self, ck: Path | None) -> tuple[_Tables, int]:
        """The tables and the next image from a matching checkpoint, else empty ones and 0."""
        if ck is None or not ck.exists():
            return _Tables(), 0
        state = _read_checkpoint(ck)
        if state is None or state["key"] != self.key:
            log.warning("fastloc_viz: checkpoint %s is for another build; starting over", ck)
            return _Tables(), 0
        log.info("fastloc_viz: atlas build resumes at image %d of %d from %s", state["next"], len(self.src), ck)
        return _Tables(state["vals"], state["idx"], state["pos"], state["shape"], state["skipped"]), state["next"]

    def run(self, ck: Path | None, checkpoint_every: int, show: bool) -> _Tables:
        """Scan this rank's batches (batch ``b`` belongs to rank ``b % N``), from the checkpoint on."""
        tables, start = self.resume(ck)
        n, bs, dist = len(self.src), self.batch_size, self.dist
        mine = [s for b, s in enumerate(range(0, n, bs)) if b % dist.world_size == dist.rank and s >= start]
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, initial=start, desc=f"atlas {self.layer[0]}", unit="img")
        try:
            for j, s in enumerate(mine):
                stop = min(n, s + bs)
                x, kept = _read_chunk(self.src, range(s, stop), self.size, self.bundle.interpolation, tables.skipped,
                                      self.bundle.channels)
                if x is not None:
                    found, shape = _scan(self.bundle, self.layer, x)
                    tables.add(found, kept, shape, len(self.signs), self.top)
                if bar is not None:
                    bar.update(min((stop - s) * dist.world_size, n - bar.n))
                if ck is not None and tables.idx is not None and (j + 1) % checkpoint_every == 0 and stop < n:
                    _write_checkpoint(ck, self.key, tables.vals, tables.idx, tables.pos, tables.shape, stop,
                                      tables.skipped)
        finally:
            if bar is not None:
                bar.close()
        return tables


def _read_chunk(src: Source, rows: range, size, interpolation: str, skipped: dict[int, str], channels: int = 3):
    """Images ``rows`` of ``src`` at the model's size, the ones that can be read: ``(N x 3 x H
    x W tensor or None, their indices)``; a file that cannot be read goes to ``skipped``
    (index -> reason). An in-memory image that cannot be used raises, as ``explain`` does."""
    ts, kept = [], []
    for i in rows:
        try:
            ts.append(load_batch(src.items[i], size, interpolation, channels))
        except Exception as e:  # noqa: BLE001 - a file that cannot be read is listed, the build goes on
            if not isinstance(src.items[i], (str, os.PathLike)):
                raise
            skipped[i] = unreadable_reason(e)
            log.warning("fastloc_viz: atlas leaves out %s: %s", src.names[i], skipped[i])
            continue
        kept.append(i)
    return (torch.cat(ts) if ts else None), kept


def _first_readable(src: Source, size, interpolation: str, channels: int = 3) -> torch.Tensor:
    """The first image of ``src`` that can be read (for the dry run that finds the layer)."""
    reasons: dict[int, str] = {}
    for i in range(len(src)):
        x, _ = _read_chunk(src, range(i, i + 1), size, interpolation, reasons, channels)
        if x is not None:
            return x
    raise ValueError(f"none of the {len(src)} images can be read; the first: {src.names[0]}: {reasons.get(0)}")


def _cut_patches(src: Source, size, interpolation: str, idx, ys, xs, grid, cells: int, px: int,
                 show: bool, dist: Dist | None = None) -> list[bytes]:
    """The JPEG patch of every kept unit, in table order (``b""`` for empty slots); each
    image is loaded once. Under ``torchrun`` rank ``r`` cuts those of images ``r, r + N, ...``
    and every rank gets them all."""
    dist = dist or Dist()
    ys, xs = ys.ravel(), xs.ravel()
    blobs = [b""] * idx.size
    by_image: dict[int, list[int]] = {}
    for j, i in enumerate(idx.ravel().tolist()):
        if i >= 0 and i % dist.world_size == dist.rank:
            by_image.setdefault(i, []).append(j)
    items = sorted(by_image.items())
    if show:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="atlas patches", unit="img")
    for i, slots in items:
        t = load_batch(src.items[i], size, interpolation)[0]
        rgb = Image.fromarray(to_uint8(t.permute(1, 2, 0).numpy()))
        for j in slots:
            blobs[j] = _patch_jpeg(rgb, int(ys[j]), int(xs[j]), grid, cells, px)
    for part in gather_objects({j: b for j, b in enumerate(blobs) if b}):
        for j, b in part.items():
            blobs[j] = b
    return blobs


def _write_checkpoint(path: Path, key: dict, vals, idx, pos, shape, done: int, skipped: dict[int, str]) -> None:
    buf = io.BytesIO()
    meta = {"key": key, "shape": list(shape), "next": int(done), "skipped": [[i, r] for i, r in skipped.items()]}
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), vals=vals, idx=idx, pos=pos)
    write_bytes_atomic(path, buf.getvalue(), what="atlas checkpoint")


def _read_checkpoint(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            return {
                "key": meta["key"],
                "shape": tuple(meta["shape"]),
                "next": int(meta["next"]),
                "skipped": {int(i): str(r) for i, r in meta.get("skipped", [])},
                "vals": z["vals"],
                "idx": z["idx"],
                "pos": z["pos"],
            }
    except (OSError, ValueError, KeyError) as err:
        log.warning("fastloc_viz: cannot read the atlas checkpoint %s (%s); starting over", path, err)
        return None
