"""Reading image files as scientific users have them: every PIL mode at any size, 16-bit and
float TIFF (``tifffile``), DICOM (``pydicom``) and FITS (``astropy``).

One entry point, :func:`read_image`, reads a file (or a PIL image, or a NumPy array) into
float RGB in ``[0, 1]`` plus an :class:`ImageInfo` saying how: the source format and mode,
the original size, the page / frame / HDU, the window mapped to ``[0, 1]`` and the stretch.
:func:`fastloc_viz.explain` accepts the :class:`LoadedImage` it returns, and records the
info in ``Explanation.params["image"]``; a path given to ``explain`` is read the same way
with the default options.

How values are windowed is :mod:`fastloc_viz.imaging.windowing`'s job (the rule is stated there and
in ``docs/scientific-images.md``); TIFF, DICOM and FITS are read by :mod:`fastloc_viz.imaging.formats`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import decode
from .formats import missing_reader, read_dicom, read_fits, read_tiff
from .windowing import (
    DEFAULT_PERCENTILES,
    STRETCHES,
    WINDOWS,
    ImageInfo,
    apply_window,
    check_options,
    choose_window,
    from_values,
    nominal_range,
    parse_window,
    rule_text,
    shrink_factor,
)

__all__ = ["ImageInfo", "LoadedImage", "read_image", "parse_window", "choose_window", "apply_window",
           "nominal_range", "sniff", "load", "WINDOWS", "STRETCHES", "DEFAULT_PERCENTILES"]

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_REDUCE_UNSUPPORTED = ("1", "P", "PA") + HIGH_BIT_MODES


@dataclass(frozen=True)
class LoadedImage:
    """An image read by :func:`read_image`: ``pixels`` (``H x W x 3`` float32 RGB in
    ``[0, 1]``) and ``info`` (:class:`ImageInfo`). Pass it to :func:`fastloc_viz.explain`
    or the widgets like any image."""

    pixels: np.ndarray
    info: ImageInfo

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of ``pixels`` (after any downscaling while reading)."""
        return (self.pixels.shape[1], self.pixels.shape[0])


def read_image(
    source: str | os.PathLike | Image.Image | np.ndarray,
    *,
    page: int | None = None,
    frame: int | None = None,
    hdu: int | str | None = None,
    window: str | tuple[float, float] = "auto",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    stretch: str = "linear",
) -> LoadedImage:
    """Read an image file (any PIL format, TIFF, DICOM, FITS), a PIL image or a NumPy array
    into RGB float32 in ``[0, 1]``, windowed by a stated rule (see the module's docstring).

    Args:
        source: a path, a PIL image, or an ``H x W`` / ``H x W x 1|3|4`` NumPy array of any
            real dtype (windowed like a file's values).
        page: which page of a multi-page TIFF (or other multi-frame PIL file), 0-based;
            default the first. For DICOM it means the frame, for FITS the HDU.
        frame: the DICOM frame (0-based); default the first. Same as ``page``.
        hdu: the FITS HDU, an index (0 is the primary HDU) or an ``EXTNAME``; default the
            first HDU holding an image. Same as ``page``.
        window: ``"auto"`` (default), ``"percentile"``, ``"minmax"``, ``"full"``, ``"file"``
            (the DICOM window) or explicit ``(low, high)`` values.
        percentiles: the ``(low, high)`` percentiles of the percentile window.
        stretch: ``"linear"`` (default) or ``"asinh"``.

    Raises:
        FileNotFoundError, IsADirectoryError: bad path.
        ImportError: a TIFF, DICOM or FITS file whose reader is not installed; the message
            names the extra to install (``pip install 'fastloc-viz[dicom]'``).
        ValueError: an unreadable file, a page out of range, a file too large to decode, a
            bad window.
    """
    t, info = load(
        source, None, page=page, frame=frame, hdu=hdu, window=window, percentiles=percentiles, stretch=stretch
    )
    return LoadedImage(decode.to_numpy_image(t[0]), info)


def load(
    source,
    size: tuple[int, int] | None,
    *,
    page: int | None = None,
    frame: int | None = None,
    hdu: int | str | None = None,
    window: str | tuple[float, float] = "auto",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    stretch: str = "linear",
):
    """``(1 x 3 x h x w`` float32 tensor in ``[0, 1]``, :class:`ImageInfo`)``; ``size`` (the
    model's input) lets 8-bit files shrink while decoding, as :mod:`fastloc_viz.imaging.batch` does."""
    check_options(window, percentiles, stretch)
    index = _one_index(page, frame, hdu)
    opts = {"window": window, "percentiles": tuple(percentiles), "stretch": stretch}
    if isinstance(source, Image.Image):
        return _from_pil_image(source, size, "PIL", index, 1, opts)
    if isinstance(source, np.ndarray):
        return from_values(np.asarray(source), "array", str(source.dtype), None, 1, opts)
    if isinstance(source, str) and "://" in source and not Path(source).exists():
        raise FileNotFoundError(f"image {source!r} is a URL; URLs are not fetched: download the image first")
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"image path {str(path)!r} is a directory, not an image file")
    kind = sniff(path)
    if kind == "DICOM":
        return read_dicom(path, index, opts)
    if kind == "FITS":
        return read_fits(path, index, opts)
    if kind == "TIFF":
        try:
            import tifffile  # noqa: F401  (installed?)
        except ImportError:
            try:  # PIL reads the simple TIFFs
                return _read_pil(path, size, index, opts)
            except ValueError:
                raise missing_reader("TIFF") from None
        return read_tiff(path, index, opts)
    return _read_pil(path, size, index, opts)


def sniff(path: Path) -> str:
    """``"TIFF"``, ``"DICOM"``, ``"FITS"`` or ``"PIL"`` (anything else), from the file's
    first bytes, else its extension."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except PermissionError as e:
        raise PermissionError(f"image file {str(path)!r} cannot be read: {e.strerror or e}") from None
    if head[128:132] == b"DICM":  # before TIFF: a DICOM preamble may hold a TIFF header
        return "DICOM"
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "TIFF"
    if head.startswith(b"SIMPLE  ="):
        return "FITS"
    ext = path.suffix.lower()
    if ext in (".dcm", ".dicom") and head:
        return "DICOM"
    if ext in (".fits", ".fit", ".fts", ".fz") and head:
        return "FITS"
    return "PIL"


def _one_index(page, frame, hdu):
    given = [(n, v) for n, v in (("page", page), ("frame", frame), ("hdu", hdu)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give one of page, frame and hdu, got {', '.join(n for n, _ in given)}")
    if not given:
        return None
    name, value = given[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)) or (
        isinstance(value, str) and name != "hdu"
    ):
        raise TypeError(f"{name} must be an integer index, got {value!r}")
    if not isinstance(value, str) and value < 0:
        raise ValueError(f"{name}={value} must be at least 0")
    return value if isinstance(value, str) else int(value)


def _read_pil(path: Path, size, index, opts):
    img = decode.open_image(path, size, page=index or 0)
    fmt = img.format or path.suffix.lstrip(".").upper() or "PIL"
    count = getattr(img, "n_frames", 1)
    return _from_pil_image(img, size, fmt, index, count, opts)


def _from_pil_image(img: Image.Image, size, fmt: str, index, count: int, opts):
    if index is not None and fmt == "PIL":
        n = getattr(img, "n_frames", 1)
        if not 0 <= index < n:
            raise ValueError(f"the PIL image has {n} frame(s); page {index} does not exist")
        img.seek(index)
        count = n
    w, h = img.size
    mode0 = img.mode
    index = index if count > 1 or index else None
    f = shrink_factor(w, h)
    drafted = img.info.get("fastloc_original_size")  # a JPEG decoded at a reduced scale
    draft = max(1, round(drafted[0] / w)) if drafted else 1
    if f > 1 and size is not None and img.mode in _REDUCE_UNSUPPORTED:  # as small as the 8-bit path
        f = max(f, min(w // (2 * size[1]), h // (2 * size[0])))
    if img.mode in HIGH_BIT_MODES:
        if f > 1:
            values = np.asarray(_bands(img, f, "F"))
        else:
            values = np.asarray(img)
        src = np.dtype(np.uint16) if img.mode.startswith("I;16") else values.dtype if f == 1 else None
        if src is None:  # I or F averaged: the nominal range of the values read
            src = np.dtype(np.int32 if img.mode == "I" else np.float32)
        return from_values(
            values.astype(np.float32, copy=False), fmt, img.mode, index, count, opts, size=(w, h), scale=f, dtype=src
        )
    if img.mode in _REDUCE_UNSUPPORTED and f > 1:
        transparent = img.mode == "PA" or "transparency" in img.info
        img = _bands(img, f, "L" if img.mode == "1" else "RGBA" if transparent else "RGB")
    t = decode.from_pil(img, size)
    what = _EIGHT_BIT.get(mode0, f"mode {mode0} converted to RGB")
    if opts["window"] != "auto":  # windowing asked for 8-bit data: on the 0..255 values
        values = t[0].permute(1, 2, 0).numpy() * 255.0
        return from_values(values, fmt, img.mode, index, count, opts, size=(w, h), scale=f, nominal=(0.0, 255.0))
    shrunk = f * draft * (img.width // t.shape[-1] if t.shape[-1] < img.width else 1)
    size0 = tuple(drafted) if drafted else (w, h)
    info = ImageInfo(
        format=fmt, mode=mode0, size=size0, index=index, count=count, window=(0.0, 255.0), scale=shrunk,
        rule=rule_text(fmt, mode0, size0, index, shrunk, f"8-bit, {what}: values / 255", None),
    )
    return t, info

_EIGHT_BIT = {
    "RGB": "RGB",
    "L": "gray",
    "1": "bilevel, 0 and 1 as black and white",
    "P": "palette looked up to RGB",
    "PA": "palette looked up, alpha composited on white",
    "LA": "gray, alpha composited on white",
    "RGBA": "alpha composited on white",
    "CMYK": "CMYK converted to RGB without a colour profile",
    "YCbCr": "YCbCr converted to RGB",
}


def _bands(img: Image.Image, f: int, mode: str) -> Image.Image:
    """``img`` shrunk by ``f`` (the mean of each ``f x f`` block) for a mode ``Image.reduce``
    refuses: a band of rows at a time (about 16 M source pixels) is converted to ``mode``
    (``"F"`` for 16/32-bit and float data, ``"L"``, ``"RGB"`` or ``"RGBA"`` for bilevel and
    palette images) and reduced; with the usual downscaling warning."""
    w, h = img.size
    decode.warn_downscale(w, h, f, img.mode, stacklevel=6)
    ho, wo = h // f, w // f
    out = Image.new(mode, (wo, ho))
    rows = max(1, (2**24 // max(1, w)) // f)  # output rows per band
    for r in range(0, ho, rows):
        r1 = min(ho, r + rows)
        band = img.crop((0, r * f, wo * f, r1 * f)).convert(mode)
        out.paste(band.reduce(f), (0, r))
    return out
