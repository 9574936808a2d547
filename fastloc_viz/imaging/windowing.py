"""Windowing: how raw pixel values (16-bit, 32-bit, float, any range) become ``[0, 1]``.

The window rule (``window=``), see ``docs/scientific-images.md``:

* ``"auto"`` (default): 8-bit data is divided by 255, exactly as before. A DICOM file's own
  window centre and width are used when it has them. Other data (16-bit, 32-bit, float) is
  windowed to its ``percentiles`` (default 0.5th to 99.5th) -- unless those already span at
  least half of the type's nominal range (``0..65535`` for 16-bit, ``0..1`` for float data
  in ``[0, 1]``), in which case the nominal range is used (nothing to gain, nothing clipped).
  A 12-bit image stored in 16 bits (values ``0..4095``) is therefore stretched to ``[0, 1]``.
* ``"percentile"``: always the percentiles; ``"minmax"``: the finite minimum and maximum;
  ``"full"``: the type's nominal range (the old behaviour): what the type allows, a signed
  16-bit type ``-32768..32767``, and for DICOM what its stored bits allow (12 unsigned bits:
  ``0..4095``; signed: ``-2048..2047``), rescaled to the file's units; ``"file"``: the DICOM window;
  ``(low, high)``: explicit values, in the file's units (Hounsfield units after a DICOM
  rescale, physical units after a FITS ``BSCALE`` / ``BZERO``).

Values are mapped linearly, ``(v - low) / (high - low)`` clipped to ``[0, 1]``, or with
``stretch="asinh"``: ``asinh(x / 0.1) / asinh(10)`` of that linear ``x``. NaN and inf pixels
are left out of the percentiles and shown as 0. Gray data stays one channel (repeated on R,
G and B for an RGB model, :func:`fastloc_viz.imaging.decode.to_channels`); colour data is windowed with one window for all channels (the colour balance is
kept). Images over :data:`fastloc_viz.imaging.decode.MAX_PIXELS` are first shrunk by an integer
factor (the mean of each ``f x f`` block), a band of rows at a time, and the window is
computed on what was read; percentiles are computed on at most about a million evenly
spaced pixels.

:func:`from_values` applies the rule and returns the tensor and the :class:`ImageInfo` that
says what was done; every reader of :mod:`fastloc_viz.imaging.readers` ends there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import decode

WINDOWS = ("auto", "percentile", "minmax", "full", "file")
STRETCHES = ("linear", "asinh")
DEFAULT_PERCENTILES = (0.5, 99.5)
ASINH_SOFTENING = 0.1
PERCENTILE_SAMPLES = 2**20


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


def check_options(window, percentiles, stretch) -> None:
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


def nominal_range(dtype: np.dtype, lo: float, hi: float) -> tuple[float, float] | None:
    """The range a type's values are meant to fill: ``0..255`` for 8-bit, ``0..65535`` for
    16-bit, the type's own range for signed 8- and 16-bit values beyond ``0..255``
    (``-32768..32767``), ``0..1`` for floats in ``[0, 1]``; ``None`` when there is none
    (other signed data, floats beyond ``[0, 255]``, 32-bit integers beyond 16 bits)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return (0.0, 1.0)
    if dtype == np.uint8:
        return (0.0, 255.0)
    if dtype == np.uint16:
        return (0.0, 65535.0)
    if dtype in (np.int8, np.int16) and (lo < 0 or hi > 255):
        return float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
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


def from_values(
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
    if scale == 1 and h * w > decode.MAX_PIXELS:
        scale = shrink_factor(w, h)
        decode.warn_downscale(w, h, scale, stacklevel=5)
        dtype = dtype or values.dtype
        values = block_mean(values, scale)
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
    t = decode.checked_size(t)
    what = ("gray",) if out.ndim == 2 else ()
    if invert:
        what += ("inverted (white is low)",)
    if masked:
        what += (f"{masked} NaN/inf pixels masked to 0",)
    info = ImageInfo(
        format=fmt, mode=mode, size=size, index=index, count=count, window=(float(low), float(high)),
        window_rule=how, stretch=opts["stretch"], scale=scale, inverted=invert, masked=masked,
        rule=rule_text(
            fmt, mode, size, index, scale,
            f"window {_g(low)}..{_g(high)} ({how}) -> [0, 1], {opts['stretch']}",
            notes + what,
        ),
    )
    return t, info


def rule_text(fmt, mode, size, index, scale, how, notes) -> str:
    parts = [f"{fmt} {mode} {size[0]} x {size[1]}"]
    if index is not None:
        parts[0] += f" [{index}]"
    if scale > 1:
        parts.append(f"shrunk by {scale} (block mean)")
    parts.append(how)
    parts += list(notes or ())
    return "; ".join(parts)


def shrink_factor(w: int, h: int) -> int:
    return int(np.ceil(np.sqrt(w * h / decode.MAX_PIXELS))) if w * h > decode.MAX_PIXELS else 1


def block_mean(values: np.ndarray, f: int) -> np.ndarray:
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
