"""Decoding: one file, PIL image, array or tensor -> a ``1 x C x h x w`` float32 tensor in ``[0, 1]``,
``C`` 1 for grey data and 3 for colour (:func:`to_channels` turns it into the model's).

The low level under :mod:`fastloc_viz.imaging.batch` (which assembles batches) and
:mod:`fastloc_viz.imaging.readers` (which windows high-bit-depth data): opening files safely (size
limits, JPEG draft decoding of huge photos, 8-bit shrinking), converting 8-bit PIL modes,
arrays and tensors, and the resize. The limits below are read at call time, so tests and
users can lower them.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..core.checks import check_choice

log = logging.getLogger("fastloc_viz")

MIN_SIDE = 8
MAX_PIXELS = 64_000_000  # larger decoded images are downscaled with a warning
MAX_DECODE_BYTES = 2**31  # a file whose decoded pixels need more is refused (2 GiB)
_PIL_LIMIT_LOCK = threading.Lock()


def open_image(path: Path, size: tuple[int, int] | None = None, page: int = 0) -> Image.Image:
    if not path.exists():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"image path {str(path)!r} is a directory, not an image file")
    try:
        with _own_size_check():
            img = Image.open(path)
    except UnidentifiedImageError:
        raise ValueError(
            f"{str(path)!r} is not an image file PIL can read (its content is not a known image "
            "format, whatever its extension)"
        ) from None
    except PermissionError as e:
        raise PermissionError(f"image file {str(path)!r} cannot be read: {e.strerror or e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image file {str(path)!r} is truncated or corrupt: {e}") from None
    with img:
        if page:
            n = getattr(img, "n_frames", 1)
            if page >= n:
                raise ValueError(f"image file {str(path)!r} has {n} page(s) (0..{n - 1}); page {page} does not exist")
            img.seek(page)
        # A JPEG decodes straight at 1/2, 1/4 or 1/8 scale (draft mode) to at least the size
        # asked: the size _reduced() would shrink a huge image to, and twice the model input.
        asks = []
        if _too_big(img):
            f = int(np.ceil(np.sqrt(img.width * img.height / MAX_PIXELS)))
            asks.append((img.width // f or 1, img.height // f or 1))
        if size is not None and img.width >= 4 * size[1] and img.height >= 4 * size[0]:
            asks.append((2 * size[1], 2 * size[0]))
        if asks:
            full = img.size
            img.draft(img.mode, (min(a[0] for a in asks), min(a[1] for a in asks)))
            img.info["fastloc_original_size"] = full  # for readers.ImageInfo
            if img.size != full and full[0] * full[1] > MAX_PIXELS:  # below that, it is silent
                warnings.warn(
                    f"image file {str(path)!r} of {full[0]} x {full[1]} pixels is decoded at a "
                    f"reduced scale, {img.width} x {img.height}, to save memory",
                    UserWarning,
                    stacklevel=5,
                )
        need = _decoded_bytes(img)
        if need > MAX_DECODE_BYTES:
            raise ValueError(
                f"image file {str(path)!r} is {img.width} x {img.height} pixels: decoding it needs "
                f"{need / 2**30:.1f} GiB of memory (mode {img.mode}; {img.width * img.height * 12 / 2**30:.1f} "
                "GiB as a float tensor), over the {MAX_DECODE_BYTES / 2**30:.1f} GiB limit "
                "(fastloc_viz.imaging.decode.MAX_DECODE_BYTES); downscale it first (for example "
                "`vipsthumbnail`), or save it as JPEG, which decodes at a reduced scale"
            )
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ValueError(f"image file {str(path)!r} is truncated or corrupt: {e}") from None
    return img  # loaded: usable after the file is closed


@contextmanager
def _own_size_check() -> Iterator[None]:
    """Open files without PIL's decompression-bomb limit: :func:`_open` checks the decoded
    size itself, after a JPEG's reduced-scale draft, and names the memory needed."""
    with _PIL_LIMIT_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _decoded_bytes(img: Image.Image) -> int:
    depth = 4 if img.mode in ("I", "F") else 2 if img.mode.startswith("I;16") else 1
    return img.width * img.height * len(img.getbands()) * depth


def _too_big(img: Image.Image) -> bool:
    return img.width * img.height > MAX_PIXELS


def _reduced(img: Image.Image) -> Image.Image:
    """``img`` shrunk by an integer factor to at most :data:`MAX_PIXELS` pixels, with a warning."""
    factor = int(np.ceil(np.sqrt(img.width * img.height / MAX_PIXELS)))
    warn_downscale(img.width, img.height, factor, stacklevel=6)
    return img.reduce(factor)


def from_pil(img: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    if _too_big(img):
        img = _reduced(img)
    if size is not None:
        f = min(img.width // (2 * size[1]), img.height // (2 * size[0]))
        if f >= 2:
            try:
                img = img.reduce(f)  # box filter in 8 bits; the antialiased resize follows
            except ValueError:  # a mode reduce() does not support: resize from full size
                pass
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        warnings.warn(
            f"image mode {img.mode} has an alpha channel: composited on white, alpha dropped",
            UserWarning,
            stacklevel=4,
        )
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode == "CMYK":
        warnings.warn(
            "CMYK image: converted to RGB without a colour profile (colours are approximate)",
            UserWarning,
            stacklevel=4,
        )
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return from_array(np.clip(arr / top, 0, 1))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if np.isfinite(arr).all() and arr.size and arr.max() > 1 and arr.min() >= 0 and arr.max() <= 255:
            arr = arr / 255.0
        return from_array(arr)
    if img.mode in ("L", "1"):  # grey stays one channel
        return from_array(np.asarray(img.convert("L")))
    if img.mode not in ("RGB", "P", "CMYK", "RGBA"):
        log.info("fastloc_viz: image mode %s converted to RGB", img.mode)
    try:
        rgb = img.convert("RGB")
    except ValueError as e:
        raise ValueError(f"image mode {img.mode} cannot be converted to RGB: {e}") from None
    return from_array(np.asarray(rgb))


def from_array(arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise TypeError(
            f"a numpy image must be H x W or H x W x 1|3|4 (channels last), got shape {arr.shape}"
        )
    if arr.shape[2] == 4:
        warnings.warn(
            "a 4-channel array is taken as RGBA: the 4th channel is dropped (not composited)",
            UserWarning,
            stacklevel=4,
        )
        arr = arr[:, :, :3]
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.bool_): 1.0}.get(arr.dtype)
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS and scale is not None:
        return checked_size(torch.from_numpy(_block_mean(arr) / scale).permute(2, 0, 1)[None])
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        t = torch.from_numpy(arr.astype(np.float32))
        t /= scale  # in place: one float copy of a big image, not two
    elif arr.dtype == np.bool_:
        t = torch.from_numpy(arr.astype(np.float32))
    elif arr.dtype == np.float16 or arr.dtype == np.float32 or arr.dtype == np.float64:
        _check_unit_range(arr)
        # A copy: the caller's array is never aliased (nor written to by a later clamp).
        huge = arr.shape[0] * arr.shape[1] > MAX_PIXELS
        t = torch.from_numpy(_block_mean(arr) if huge else np.array(arr, dtype=np.float32))
    else:
        raise TypeError(
            f"numpy image dtype {arr.dtype} is not supported; use uint8, uint16, bool or float in [0, 1]"
        )
    return checked_size(t.permute(2, 0, 1)[None])


def warn_downscale(w: int, h: int, f: int, mode: str | None = None, stacklevel: int = 5) -> None:
    """The one warning for an image shrunk by ``f`` before the resize, to save memory."""
    what = f"image of {w} x {h} pixels" + (f" (mode {mode})" if mode else "")
    warnings.warn(
        f"{what} would take {h * w * 12 / 2**30:.1f} GiB as a float tensor; "
        f"downscaling it by {f} before resizing to the model's input",
        UserWarning,
        stacklevel=stacklevel,
    )


def _block_mean(arr: np.ndarray) -> np.ndarray:
    """``H x W x C`` -> mean over ``f x f`` blocks (float32, same value scale), ``f`` the
    smallest factor reaching :data:`MAX_PIXELS`; a band of rows at a time, with a warning."""
    h, w, c = arr.shape
    f = int(np.ceil(np.sqrt(h * w / MAX_PIXELS)))
    warn_downscale(w, h, f, stacklevel=6)
    ho, wo = h // f, w // f
    out = np.empty((ho, wo, c), dtype=np.float32)
    step = max(1, 4096 // f)
    for r in range(0, ho, step):
        band = arr[r * f : min(ho, r + step) * f, : wo * f].astype(np.float32)
        out[r : r + step] = band.reshape(-1, f, wo, f, c).mean(axis=(1, 3))
    return out


def from_tensor(t: torch.Tensor) -> torch.Tensor:
    if t.is_meta or t.layout != torch.strided:
        what = "meta" if t.is_meta else str(t.layout)
        raise TypeError(
            f"a tensor image must be a dense tensor holding data, got a {what} tensor of shape "
            f"{tuple(t.shape)}; pass a strided tensor on the CPU or a GPU"
        )
    t = t.detach()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise TypeError(
            f"a tensor image must be H x W, 1|3 x H x W or N x 1|3 x H x W (channels first), "
            f"got shape {tuple(t.shape)}"
        )
    if t.dtype == torch.bool:
        t = t.float()
    if t.dtype == torch.uint8 or t.is_floating_point():
        # On the CPU first: the image is then resized and moved to the model's device.
        return from_array(t.cpu().permute(1, 2, 0).numpy())
    raise TypeError(
        f"tensor image dtype {t.dtype} is not supported; use uint8, bool or float in [0, 1]"
    )


def _check_unit_range(arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise ValueError(
            f"the image holds NaN or inf values ({bad} of {arr.size}); pass finite values in [0, 1]"
        )
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 1:
        hint = (
            " (it looks already normalized: pass the raw RGB image, fastloc_viz normalizes it)"
            if lo < 0
            else " (for 0..255 values use uint8)"
        )
        raise ValueError(f"float image values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]{hint}")


def checked_size(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, once its sides are known to be at least :data:`MIN_SIDE` pixels."""
    h, w = t.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image of {w} x {h} pixels is too small; each side needs at least {MIN_SIDE} pixels")
    return t


CHANNELS = (1, 3)
"""The channel counts a model can be given: grey or RGB."""
LUMA = (0.299, 0.587, 0.114)
"""ITU-R 601-2 luma, the weights Pillow's ``convert("L")`` uses: how colour becomes grey."""


def to_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    """``N x 1|3 x H x W`` -> ``N x channels x H x W``: grey is repeated on R, G and B for an RGB
    model; for a grey model, colour becomes luma (:data:`LUMA`), and an image whose three
    channels are equal (grey stored as RGB) keeps its values exactly."""
    have = t.shape[1]
    if have == channels:
        return t
    if channels == 3:
        return t.expand(-1, 3, -1, -1).contiguous()
    if torch.equal(t[:, :1], t[:, 1:2]) and torch.equal(t[:, :1], t[:, 2:3]):
        return t[:, :1].contiguous()
    weights = torch.tensor(LUMA, dtype=t.dtype, device=t.device)[None, :, None, None]
    return (t * weights).sum(dim=1, keepdim=True).clamp_(0, 1)


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def resize(t: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Stretch ``N x C x h x w`` to ``size`` (antialiased bilinear or bicubic, or nearest)."""
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    if interpolation == "nearest":
        return F.interpolate(t, size=tuple(size), mode="nearest-exact")
    return F.interpolate(t, size=tuple(size), mode=interpolation, antialias=True, align_corners=False).clamp_(0, 1)


def to_numpy_image(t: torch.Tensor) -> np.ndarray:
    """``1|3 x H x W`` tensor in ``[0, 1]`` -> ``H x W x 3`` float32 RGB array (grey repeated:
    what is shown, whatever the model took)."""
    return to_channels(t.detach().cpu()[None], 3)[0].permute(1, 2, 0).numpy().astype(np.float32)
