"""Reading image files as scientific users have them: every PIL mode at any size, 16-bit and
float TIFF (``tifffile``), DICOM (``pydicom``) and FITS (``astropy``).

One entry point, :func:`read_image`, reads a file (or a PIL image, or a NumPy array) into
float RGB in ``[0, 1]`` plus an :class:`ImageInfo` saying how: the source format and mode,
the original size, the page / frame / HDU, the window mapped to ``[0, 1]`` and the stretch.
:func:`fastloc_viz.explain` accepts the :class:`LoadedImage` it returns, and records the
info in ``Explanation.params["image"]``; a path given to ``explain`` is read the same way
with the default options.

The window rule (``window=``), see ``docs/scientific-images.md``:

* ``"auto"`` (default): 8-bit data is divided by 255, exactly as before. A DICOM file's own
  window centre and width are used when it has them. Other data (16-bit, 32-bit, float) is
  windowed to its ``percentiles`` (default 0.5th to 99.5th) -- unless those already span at
  least half of the type's nominal range (``0..65535`` for 16-bit, ``0..1`` for float data
  in ``[0, 1]``), in which case the nominal range is used (nothing to gain, nothing clipped).
  A 12-bit image stored in 16 bits (values ``0..4095``) is therefore stretched to ``[0, 1]``.
* ``"percentile"``: always the percentiles; ``"minmax"``: the finite minimum and maximum;
  ``"full"``: the type's nominal range (the old behaviour); ``"file"``: the DICOM window;
  ``(low, high)``: explicit values, in the file's units (Hounsfield units after a DICOM
  rescale, physical units after a FITS ``BSCALE`` / ``BZERO``).

Values are mapped linearly, ``(v - low) / (high - low)`` clipped to ``[0, 1]``, or with
``stretch="asinh"``: ``asinh(x / 0.1) / asinh(10)`` of that linear ``x``. NaN and inf pixels
are left out of the percentiles and shown as 0. Gray data is repeated on the three RGB
channels; colour data is windowed with one window for all channels (the colour balance is
kept). Images over :data:`fastloc_viz.images.MAX_PIXELS` are first shrunk by an integer
factor (the mean of each ``f x f`` block), a band of rows at a time, and the window is
computed on what was read; percentiles are computed on at most about a million evenly
spaced pixels.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import images

WINDOWS = ("auto", "percentile", "minmax", "full", "file")
STRETCHES = ("linear", "asinh")
DEFAULT_PERCENTILES = (0.5, 99.5)
ASINH_SOFTENING = 0.1
PERCENTILE_SAMPLES = 2**20
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_REDUCE_UNSUPPORTED = ("1", "P", "PA") + HIGH_BIT_MODES
_EXTRAS = {
    "TIFF": ("tifffile", "tiff"),
    "DICOM": ("pydicom", "dicom"),
    "FITS": ("astropy", "fits"),
}


@dataclass(frozen=True)
class ImageInfo:
    """How an image was read and converted to the model's RGB in ``[0, 1]``.

    Attributes:
        format: the source: ``"PNG"``, ``"JPEG"``, ``"TIFF"``, ``"DICOM"``, ``"FITS"``,
            ``"PIL"`` (an image in memory), ``"array"``...
        mode: the stored pixel type: a PIL mode (``"I;16"``), a NumPy dtype (``"uint16"``),
            with the DICOM photometric interpretation when there is one.
        size: the original ``(width, height)``.
        index: the page (TIFF), frame (DICOM) or HDU (FITS) read, ``None`` when there is one.
        count: how many pages / frames / HDUs the file has (1 for single images).
        window: the values mapped to 0 and 1, ``None`` when not windowed (8-bit RGB).
        window_rule: how ``window`` was chosen (``"8-bit"``, ``"percentile 0.5-99.5"``,
            ``"full 0-65535"``, ``"minmax"``, ``"file (DICOM window)"``, ``"given"``).
        stretch: ``"linear"`` or ``"asinh"``.
        scale: the integer factor the image was shrunk by while reading (1: none).
        inverted: whether the values were inverted (DICOM ``MONOCHROME1``, TIFF min-is-white).
        masked: how many NaN / inf pixels were masked (shown as 0).
        rule: all of the above in words, one line.
    """

    format: str
    mode: str
    size: tuple[int, int]
    index: int | str | None = None
    count: int = 1
    window: tuple[float, float] | None = None
    window_rule: str = "8-bit"
    stretch: str = "linear"
    scale: int = 1
    inverted: bool = False
    masked: int = 0
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready builtins (what ``Explanation.params["image"]`` holds)."""
        d = dataclasses.asdict(self)
        d["size"] = list(self.size)
        d["window"] = None if self.window is None else [float(v) for v in self.window]
        return d


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
    return LoadedImage(images.to_numpy_image(t[0]), info)


def parse_window(text: str | None) -> str | tuple[float, float]:
    """A ``--window`` value: a rule name, or ``LOW,HIGH`` values."""
    if text is None:
        return "auto"
    if text in WINDOWS:
        return text
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"window {text!r} is not one of {list(WINDOWS)} nor LOW,HIGH values") from None
    return (low, high)


# --- dispatch ----------------------------------------------------------------------------


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
    model's input) lets 8-bit files shrink while decoding, as :mod:`fastloc_viz.images` does."""
    _check_options(window, percentiles, stretch)
    index = _one_index(page, frame, hdu)
    opts = {"window": window, "percentiles": tuple(percentiles), "stretch": stretch}
    if isinstance(source, Image.Image):
        return _from_pil_image(source, size, "PIL", index, 1, opts)
    if isinstance(source, np.ndarray):
        return _from_values(np.asarray(source), "array", str(source.dtype), None, 1, opts)
    if isinstance(source, str) and "://" in source and not Path(source).exists():
        raise FileNotFoundError(f"image {source!r} is a URL; URLs are not fetched: download the image first")
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"image path {str(path)!r} is a directory, not an image file")
    kind = sniff(path)
    if kind == "DICOM":
        return _read_dicom(path, index, opts)
    if kind == "FITS":
        return _read_fits(path, index, opts)
    if kind == "TIFF":
        try:
            import tifffile  # noqa: F401
        except ImportError:
            try:  # PIL reads the simple TIFFs
                return _read_pil(path, size, index, opts)
            except ValueError:
                raise _missing("TIFF") from None
        return _read_tiff(path, index, opts)
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


def _missing(kind: str) -> ImportError:
    module, extra = _EXTRAS[kind]
    return ImportError(f"reading {kind} needs {module}: pip install 'fastloc-viz[{extra}]'")


def _check_options(window, percentiles, stretch) -> None:
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"window={window!r} is not one of {list(WINDOWS)} nor (low, high) values")
    else:
        try:
            low, high = (float(v) for v in window)
        except (TypeError, ValueError):
            raise ValueError(f"window={window!r} is not one of {list(WINDOWS)} nor (low, high) values") from None
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"window={window!r} must be finite (low, high) values with low < high")
    try:
        p_lo, p_hi = (float(v) for v in percentiles)
    except (TypeError, ValueError):
        raise ValueError(f"percentiles={percentiles!r} must be two numbers (low, high)") from None
    if not 0 <= p_lo < p_hi <= 100:
        raise ValueError(f"percentiles={percentiles!r} must satisfy 0 <= low < high <= 100")
    if stretch not in STRETCHES:
        raise ValueError(f"stretch={stretch!r} is not one of {list(STRETCHES)}")


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


def _check_index(index, count: int, what: str, path: Path) -> int:
    i = 0 if index is None else index
    if isinstance(i, str) or not 0 <= i < count:
        raise ValueError(f"{str(path)!r} has {count} {what}{'s' if count != 1 else ''} (0..{count - 1}); {what} {index!r} does not exist")
    return i


# --- PIL -----------------------------------------------------------------------------------


def _read_pil(path: Path, size, index, opts):
    img = images._open(path, size, page=index or 0)
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
    f = _factor(w, h)
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
        return _from_values(
            values.astype(np.float32, copy=False), fmt, img.mode, index, count, opts, size=(w, h), scale=f, dtype=src
        )
    if img.mode in _REDUCE_UNSUPPORTED and f > 1:
        transparent = img.mode == "PA" or "transparency" in img.info
        img = _bands(img, f, "L" if img.mode == "1" else "RGBA" if transparent else "RGB")
    t = images._from_pil(img, size)
    what = _EIGHT_BIT.get(mode0, f"mode {mode0} converted to RGB")
    if opts["window"] != "auto":  # windowing asked for 8-bit data: on the 0..255 values
        values = t[0].permute(1, 2, 0).numpy() * 255.0
        return _from_values(values, fmt, img.mode, index, count, opts, size=(w, h), scale=f, nominal=(0.0, 255.0))
    shrunk = f * draft * (img.width // t.shape[-1] if t.shape[-1] < img.width else 1)
    size0 = tuple(drafted) if drafted else (w, h)
    info = ImageInfo(
        format=fmt, mode=mode0, size=size0, index=index, count=count, window=(0.0, 255.0), scale=shrunk,
        rule=_rule_text(fmt, mode0, size0, index, shrunk, f"8-bit, {what}: values / 255", None),
    )
    return t, info


_EIGHT_BIT = {
    "RGB": "RGB",
    "L": "gray repeated on R, G, B",
    "1": "bilevel, 0 and 1 as black and white",
    "P": "palette looked up to RGB",
    "PA": "palette looked up, alpha composited on white",
    "LA": "gray, alpha composited on white",
    "RGBA": "alpha composited on white",
    "CMYK": "CMYK converted to RGB without a colour profile",
    "YCbCr": "YCbCr converted to RGB",
}


def _factor(w: int, h: int) -> int:
    return int(np.ceil(np.sqrt(w * h / images.MAX_PIXELS))) if w * h > images.MAX_PIXELS else 1


def _bands(img: Image.Image, f: int, mode: str) -> Image.Image:
    """``img`` shrunk by ``f`` (the mean of each ``f x f`` block) for a mode ``Image.reduce``
    refuses: a band of rows at a time (about 16 M source pixels) is converted to ``mode``
    (``"F"`` for 16/32-bit and float data, ``"L"``, ``"RGB"`` or ``"RGBA"`` for bilevel and
    palette images) and reduced; with the usual downscaling warning."""
    w, h = img.size
    warnings.warn(
        f"image of {w} x {h} pixels (mode {img.mode}) would take {h * w * 12 / 2**30:.1f} GiB as a "
        f"float tensor; downscaling it by {f} before resizing to the model's input",
        UserWarning,
        stacklevel=5,
    )
    ho, wo = h // f, w // f
    out = Image.new(mode, (wo, ho))
    rows = max(1, (2**24 // max(1, w)) // f)  # output rows per band
    for r in range(0, ho, rows):
        r1 = min(ho, r + rows)
        band = img.crop((0, r * f, wo * f, r1 * f)).convert(mode)
        out.paste(band.reduce(f), (0, r))
    return out


def _block_mean(values: np.ndarray, f: int) -> np.ndarray:
    """``H x W [x C]`` array (a memory map is fine) -> float32 means of ``f x f`` blocks, a
    band of rows at a time."""
    squeeze = values.ndim == 2
    if squeeze:
        values = values[:, :, None]
    h, w, c = values.shape
    ho, wo = h // f, w // f
    out = np.empty((ho, wo, c), dtype=np.float32)
    rows = max(1, (2**24 // max(1, w * c)) // f)
    for r in range(0, ho, rows):
        r1 = min(ho, r + rows)
        band = np.asarray(values[r * f : r1 * f, : wo * f], dtype=np.float32)
        out[r:r1] = band.reshape(r1 - r, f, wo, f, c).mean(axis=(1, 3))
    return out[:, :, 0] if squeeze else out


# --- windowing -----------------------------------------------------------------------------


def nominal_range(dtype: np.dtype, lo: float, hi: float) -> tuple[float, float] | None:
    """The range a type's values are meant to fill: ``0..255`` for 8-bit, ``0..65535`` for
    16-bit, ``0..1`` for floats in ``[0, 1]``; ``None`` when there is none (signed data,
    floats beyond ``[0, 255]``, 32-bit integers beyond 16 bits)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return (0.0, 1.0)
    if dtype == np.uint8:
        return (0.0, 255.0)
    if dtype == np.uint16:
        return (0.0, 65535.0)
    if lo < 0:
        return None
    if dtype.kind == "f" and hi <= 1:
        return (0.0, 1.0)
    if hi <= 255:
        return (0.0, 255.0)
    if dtype.kind in "ui" and hi <= 65535:
        return (0.0, 65535.0)
    return None


def choose_window(
    values: np.ndarray,
    window: str | tuple[float, float] = "auto",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    *,
    nominal: tuple[float, float] | None | str = "dtype",
    file_window: tuple[float, float] | None = None,
    dtype: np.dtype | None = None,
) -> tuple[tuple[float, float], str]:
    """``((low, high), rule)``: the values to map to 0 and 1, and how they were chosen (see
    the module's docstring). NaN / inf values are ignored."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    sample = _sample(values)
    if finite.size == 0:
        raise ValueError("the image holds no finite value (all NaN or inf)")
    lo, hi = float(finite.min()), float(finite.max())
    if nominal == "dtype":
        nominal = nominal_range(dtype or values.dtype, lo, hi)
    if not isinstance(window, str):
        return (float(window[0]), float(window[1])), "given"
    if window == "file" or (window == "auto" and file_window is not None):
        if file_window is None:
            raise ValueError("window='file' needs a file with its own window (a DICOM window centre and width)")
        return file_window, "file (DICOM window centre and width)"
    if window == "minmax":
        return (lo, hi), "minmax"
    if window == "full":
        if nominal is None:
            raise ValueError(
                f"window='full': {values.dtype} values in [{lo:.6g}, {hi:.6g}] have no nominal range; "
                "use 'percentile', 'minmax' or (low, high)"
            )
        return nominal, f"full {_g(nominal[0])}-{_g(nominal[1])}"
    dtype = np.dtype(dtype or values.dtype)
    if window == "auto" and dtype in (np.uint8, np.bool_):
        return ((0.0, 255.0), "8-bit") if dtype == np.uint8 else ((0.0, 1.0), "bilevel")
    p = np.percentile(sample, percentiles).astype(float)
    pw = (float(p[0]), float(p[1]))
    prule = f"percentile {_g(percentiles[0])}-{_g(percentiles[1])}"
    if window == "percentile":
        return pw, prule
    # auto: the percentiles, unless they already span half of the nominal range
    if nominal is not None and (pw[1] - pw[0] >= 0.5 * (nominal[1] - nominal[0]) or pw[1] <= pw[0]):
        why = "the data fills it" if pw[1] > pw[0] else "the percentiles are equal"
        return nominal, f"full {_g(nominal[0])}-{_g(nominal[1])} ({why})"
    if pw[1] <= pw[0]:
        return (lo, hi), "minmax (the percentiles are equal)"
    return pw, prule


def _sample(values: np.ndarray) -> np.ndarray:
    """At most about PERCENTILE_SAMPLES evenly spaced finite values."""
    n = values.shape[0] * values.shape[1]
    step = int(np.ceil(np.sqrt(n / PERCENTILE_SAMPLES))) if n > PERCENTILE_SAMPLES else 1
    s = values[::step, ::step]
    return s[np.isfinite(s)] if s.dtype.kind == "f" else s.ravel()


def apply_window(values: np.ndarray, low: float, high: float, stretch: str = "linear") -> np.ndarray:
    """``values`` mapped to float32 ``[0, 1]``: linear ``(v - low) / (high - low)``, clipped,
    then ``asinh(x / 0.1) / asinh(10)`` for ``stretch="asinh"``; NaN / inf become 0."""
    out = np.asarray(values, dtype=np.float32)
    bad = ~np.isfinite(out)
    out = (out - np.float32(low)) * np.float32(1.0 / (high - low)) if high > low else np.zeros_like(out)
    np.clip(out, 0, 1, out=out)
    if stretch == "asinh":
        out = (np.arcsinh(out / ASINH_SOFTENING) / np.arcsinh(1 / ASINH_SOFTENING)).astype(np.float32)
    out[bad] = 0
    return out


def _g(v: float) -> str:
    return f"{v:.6g}"


def _from_values(
    values: np.ndarray,
    fmt: str,
    mode: str,
    index,
    count: int,
    opts,
    *,
    size: tuple[int, int] | None = None,
    scale: int = 1,
    nominal: tuple[float, float] | None | str = "dtype",
    file_window: tuple[float, float] | None = None,
    invert: bool = False,
    notes: tuple[str, ...] = (),
    dtype: np.dtype | None = None,
):
    """Raw values (``H x W`` or ``H x W x C``, any real dtype) -> windowed tensor and info;
    ``dtype``: the source's type when ``values`` were already averaged to float32."""
    import torch

    if values.dtype.kind not in "biuf":
        raise TypeError(f"{fmt} pixels of dtype {values.dtype} are not supported; real numbers are")
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    if values.ndim == 3 and values.shape[2] in (2, 4):
        notes += (f"channel {values.shape[2]} (alpha) dropped",)
        values = values[:, :, : 1 if values.shape[2] == 2 else 3]
        if values.shape[2] == 1:
            values = values[:, :, 0]
    if values.ndim != 2 and not (values.ndim == 3 and values.shape[2] == 3):
        raise ValueError(f"{fmt} image of shape {values.shape} is not H x W or H x W x 1|2|3|4")
    h, w = values.shape[:2]
    size = size or (w, h)
    if scale == 1 and h * w > images.MAX_PIXELS:
        scale = _factor(w, h)
        warnings.warn(
            f"image of {w} x {h} pixels would take {h * w * 12 / 2**30:.1f} GiB as a float tensor; "
            f"downscaling it by {scale} before resizing to the model's input",
            UserWarning,
            stacklevel=4,
        )
        dtype = dtype or values.dtype
        values = _block_mean(values, scale)
    if dtype is not None and dtype != values.dtype and nominal == "dtype":  # the source type's range
        finite = values[np.isfinite(values)]
        nominal = nominal_range(dtype, float(finite.min()), float(finite.max())) if finite.size else None
    masked = int(values.size - np.isfinite(values).sum()) if values.dtype.kind == "f" else 0
    (low, high), how = choose_window(
        values, opts["window"], opts["percentiles"], nominal=nominal, file_window=file_window, dtype=dtype
    )
    out = apply_window(values, low, high, opts["stretch"])
    if invert:
        out = 1 - out
    if masked and invert:
        out[~np.isfinite(np.asarray(values, dtype=np.float32))] = 0
    t = torch.from_numpy(np.ascontiguousarray(out))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    t = images._three_channels(t)
    what = ("gray repeated on R, G, B",) if out.ndim == 2 else ()
    if invert:
        what += ("inverted (white is low)",)
    if masked:
        what += (f"{masked} NaN/inf pixels masked to 0",)
    info = ImageInfo(
        format=fmt, mode=mode, size=size, index=index, count=count, window=(float(low), float(high)),
        window_rule=how, stretch=opts["stretch"], scale=scale, inverted=invert, masked=masked,
        rule=_rule_text(
            fmt, mode, size, index, scale,
            f"window {_g(low)}..{_g(high)} ({how}) -> [0, 1], {opts['stretch']}",
            notes + what,
        ),
    )
    return t, info


def _rule_text(fmt, mode, size, index, scale, how, notes) -> str:
    parts = [f"{fmt} {mode} {size[0]} x {size[1]}"]
    if index is not None:
        parts[0] += f" [{index}]"
    if scale > 1:
        parts.append(f"shrunk by {scale} (block mean)")
    parts.append(how)
    parts += list(notes or ())
    return "; ".join(parts)


# --- TIFF (tifffile) -------------------------------------------------------------------


def _read_tiff(path: Path, index, opts):
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises its own TiffFileError, ValueError, struct.error...
        raise ValueError(f"image file {str(path)!r} is truncated or corrupt (TIFF): {e}") from None
    with tf:
        count = len(tf.pages)
        if count == 0:
            raise ValueError(f"image file {str(path)!r} is truncated or corrupt (TIFF): it has no page")
        i = _check_index(index, count, "page", path)
        page = tf.pages[i]
        shape, dtype = tuple(page.shape), np.dtype(page.dtype)
        need = int(np.prod(shape)) * dtype.itemsize
        if need > images.MAX_DECODE_BYTES:
            raise ValueError(
                f"image file {str(path)!r} page {i} is {shape} {dtype} (TIFF): decoding it needs "
                f"{need / 2**30:.1f} GiB of memory, over the {images.MAX_DECODE_BYTES / 2**30:.1f} GiB limit "
                "(fastloc_viz.images.MAX_DECODE_BYTES); downscale it first"
            )
        try:
            arr = page.asarray()
        except Exception as e:
            raise ValueError(f"image file {str(path)!r} page {i} cannot be decoded (TIFF): {e}") from None
        photometric = getattr(page.photometric, "name", str(page.photometric))
        colormap = page.colormap
        planar_separate = getattr(page.planarconfig, "name", "") == "SEPARATE"
    notes: tuple[str, ...] = ()
    if arr.ndim == 3 and planar_separate:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim > 3:
        notes += (f"first plane of {arr.shape}",)
        while arr.ndim > 3:
            arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] > 4:
        notes += (f"first 3 of {arr.shape[2]} samples",)
        arr = arr[:, :, :3]
    if photometric == "PALETTE" and colormap is not None and arr.ndim == 2:
        arr = np.moveaxis(colormap[:, arr], 0, -1)  # 3 x 2**bits uint16 -> H x W x 3
        notes += ("palette looked up to RGB",)
    if photometric == "SEPARATED" and arr.ndim == 3 and arr.shape[2] == 4:
        top = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
        cmyk = arr.astype(np.float32) / top
        arr = (1 - cmyk[..., :3]) * (1 - cmyk[..., 3:]) * top
        arr = arr.astype(dtype) if dtype.kind in "ui" else arr
        notes += ("CMYK converted to RGB without a colour profile",)
    mode = f"{dtype.name}" + (f" {photometric}" if photometric else "")
    h, w = arr.shape[:2]
    return _from_values(
        arr, "TIFF", mode, i if count > 1 else None, count, opts, size=(w, h),
        invert=photometric == "MINISWHITE", notes=notes,
    )


# --- DICOM (pydicom) -------------------------------------------------------------------


def _read_dicom(path: Path, index, opts):
    try:
        import pydicom
    except ImportError:
        raise _missing("DICOM") from None
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # InvalidDicomError, EOFError...
        raise ValueError(f"{str(path)!r} is not a DICOM file pydicom can read: {e}") from None
    if "PixelData" not in ds:
        raise ValueError(f"DICOM file {str(path)!r} holds no image (no Pixel Data element)")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    i = _check_index(index, count, "frame", path)
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    need = rows * cols * count * int(ds.get("SamplesPerPixel", 1) or 1) * 8
    if need > images.MAX_DECODE_BYTES:
        raise ValueError(
            f"DICOM file {str(path)!r} is {cols} x {rows} pixels x {count} frame(s): decoding it needs "
            f"{need / 2**30:.1f} GiB, over the {images.MAX_DECODE_BYTES / 2**30:.1f} GiB limit "
            "(fastloc_viz.images.MAX_DECODE_BYTES)"
        )
    try:
        arr = ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ValueError(
            f"DICOM file {str(path)!r} ({name}) cannot be decoded: {' '.join(str(e).split())[:300]} "
            "(compressed DICOM needs pydicom's decoders: pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg, or python-gdcm)"
        ) from None
    if count > 1:
        arr = arr[i]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    notes: tuple[str, ...] = ()
    file_window = None
    mode = f"{arr.dtype.name} {photometric}"
    if photometric.startswith("MONOCHROME"):
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            arr = arr.astype(np.float64) * slope + intercept
            notes += (f"rescaled: value * {_g(slope)} {'-' if intercept < 0 else '+'} {_g(abs(intercept))}",)
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width >= 1:
            # DICOM PS3.3 C.11.2.1.2.1, linear: the window's ends
            file_window = (center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2)
            notes += (f"file window centre {_g(center)}, width {_g(width)}",)
        nominal = "dtype" if arr.dtype.kind in "ui" else None
    else:
        nominal = "dtype"
        if photometric.startswith("YBR"):
            notes += (f"{photometric} converted to RGB by pydicom",)
    h, w = arr.shape[:2]
    return _from_values(
        np.asarray(arr), "DICOM", mode, i if count > 1 else None, count, opts, size=(w, h),
        nominal=nominal, file_window=file_window, invert=photometric == "MONOCHROME1", notes=notes,
    )


def _first(value) -> float | None:
    """A DICOM window value (single or multi-valued: the first) as a float."""
    if value is None:
        return None
    if not isinstance(value, (str, bytes)):
        try:
            value = value[0]
        except (TypeError, IndexError, KeyError):
            pass
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --- FITS (astropy) --------------------------------------------------------------------


def _read_fits(path: Path, index, opts):
    try:
        from astropy.io import fits
    except ImportError:
        raise _missing("FITS") from None
    try:
        hdul = fits.open(path, memmap=True)
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a FITS file astropy can read: {e}") from None
    with hdul:
        count = len(hdul)
        images_at = [j for j, h in enumerate(hdul) if h.is_image and h.header.get("NAXIS", 0) >= 2]
        if isinstance(index, str):
            try:
                j = hdul.index_of(index)
            except KeyError:
                raise ValueError(f"FITS file {str(path)!r} has no HDU named {index!r}") from None
        elif index is not None:
            j = _check_index(index, count, "HDU", path)
        else:
            if not images_at:
                raise ValueError(f"FITS file {str(path)!r} holds no image HDU (of 2 or more axes)")
            j = images_at[0]
        hdu = hdul[j]
        if j not in images_at:
            raise ValueError(f"FITS HDU {index!r} of {str(path)!r} is not an image of 2 or more axes")
        shape = tuple(hdu.shape)
        need = int(np.prod(shape[-2:])) * 8
        if need > images.MAX_DECODE_BYTES:
            raise ValueError(
                f"FITS HDU {j} of {str(path)!r} is {shape[-1]} x {shape[-2]} pixels: reading it needs "
                f"{need / 2**30:.1f} GiB, over the {images.MAX_DECODE_BYTES / 2**30:.1f} GiB limit"
            )
        data = hdu.section[(0,) * (len(shape) - 2)] if len(shape) > 2 else hdu.data
        notes: tuple[str, ...] = ()
        if len(shape) > 2:
            notes += (f"first plane of {shape}",)
        if hdu.name and hdu.name != "PRIMARY":
            notes += (f"HDU {j} {hdu.name}",)
        mode = f"{np.asarray(data[:1, :1]).dtype.name} BITPIX {hdu.header.get('BITPIX')}"
        values = np.asarray(data)[::-1]  # FITS rows run bottom to top: shown as DS9 shows them
        notes += ("rows flipped (FITS origin at the bottom)",)
        if values.dtype.byteorder not in ("=", "|"):
            values = values.astype(values.dtype.newbyteorder("="))
    h, w = values.shape
    return _from_values(
        values, "FITS", mode, j if count > 1 else None, count, opts, size=(w, h), nominal=None, notes=notes
    )
