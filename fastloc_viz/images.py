"""Turning what users pass as an image into an ``N x 3 x H x W`` float batch in ``[0, 1]``.

Accepted: a path (``str`` / ``pathlib.Path``), a PIL image, a NumPy array (``H x W``,
``H x W x 1|3|4``; uint8, uint16, bool or float in ``[0, 1]``), a tensor (``H x W``,
``1|3 x H x W`` or ``N x 1|3 x H x W``; uint8 or float in ``[0, 1]``), or a list of these.
Conversions: grayscale is repeated to RGB; alpha is dropped (composited on white) with a
warning; palette, 16-bit and CMYK images are converted to 8-bit RGB. Every image is resized
(stretched, not cropped) to the model's input size, so a list may mix sizes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

MIN_SIDE = 8
MAX_PIXELS = 64_000_000  # larger decoded images are downscaled with a warning

ImageLike = "str | os.PathLike | Image.Image | np.ndarray | torch.Tensor"


def is_batch(image) -> bool:
    """Whether ``image`` holds several images (a list/tuple, or a 4-D array/tensor)."""
    if isinstance(image, (list, tuple)):
        return True
    return isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4


def load_batch(image, size: tuple[int, int]) -> torch.Tensor:
    """Any accepted image or list of images -> ``N x 3 x H x W`` float32 in ``[0, 1]`` (CPU).

    Raises:
        FileNotFoundError, IsADirectoryError: bad path.
        ValueError: unreadable file, NaN/inf, values out of range, a degenerate size, an
            empty list.
        TypeError: an unsupported type, dtype or shape.
    """
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("an empty list of images was given; pass at least one image")
        return torch.cat([load_batch(im, size) for im in image])
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
        return torch.cat([load_batch(im, size) for im in image])
    return _resize(_to_tensor(image), size)


def _to_tensor(image) -> torch.Tensor:
    """One image -> ``1 x 3 x h x w`` float32 in ``[0, 1]`` on the CPU."""
    if isinstance(image, (str, os.PathLike)):
        return _from_pil(_open(Path(image)))
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image)
    raise TypeError(
        f"image of type {type(image).__name__} is not supported; pass a path, a PIL image, "
        "a numpy array, a torch tensor, or a list of these"
    )


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"image path {str(path)!r} is a directory, not an image file")
    try:
        with Image.open(path) as img:
            if _too_big(img):  # JPEG can decode straight to a smaller scale
                img.draft("RGB", (img.width // 8 or 1, img.height // 8 or 1))
            img.load()
            return img.copy()
    except UnidentifiedImageError:
        raise ValueError(f"{str(path)!r} is not an image file PIL can read") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"image file {str(path)!r} is truncated or corrupt: {e}") from None


def _too_big(img: Image.Image) -> bool:
    return img.width * img.height > MAX_PIXELS


def _from_pil(img: Image.Image) -> torch.Tensor:
    if _too_big(img):
        need = img.width * img.height * 3 * 4 / 2**30
        factor = int(np.ceil(np.sqrt(img.width * img.height / MAX_PIXELS)))
        warnings.warn(
            f"image of {img.width} x {img.height} pixels would take {need:.1f} GiB as a float "
            f"tensor; downscaling it by {factor} before resizing to the model's input",
            UserWarning,
            stacklevel=4,
        )
        img = img.reduce(factor)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        warnings.warn(
            f"image mode {img.mode} has an alpha channel: composited on white, alpha dropped",
            UserWarning,
            stacklevel=4,
        )
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return _from_array(np.clip(arr / top, 0, 1))
    return _from_array(np.asarray(img.convert("RGB")))


def _from_array(arr: np.ndarray) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise TypeError(
            f"a numpy image must be H x W or H x W x 1|3|4 (channels last), got shape {arr.shape}"
        )
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        t = torch.from_numpy(arr.astype(np.float32) / 255.0)
    elif arr.dtype == np.uint16:
        t = torch.from_numpy(arr.astype(np.float32) / 65535.0)
    elif arr.dtype == np.bool_:
        t = torch.from_numpy(arr.astype(np.float32))
    elif np.issubdtype(arr.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        _check_unit_range(t)
    else:
        raise TypeError(f"numpy image dtype {arr.dtype} is not supported; use uint8, uint16 or float in [0, 1]")
    return _three_channels(t.permute(2, 0, 1)[None])


def _from_tensor(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise TypeError(
            f"a tensor image must be H x W, 1|3 x H x W or N x 1|3 x H x W (channels first), "
            f"got shape {tuple(t.shape)}"
        )
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
        _check_unit_range(t)
    else:
        raise TypeError(f"tensor image dtype {t.dtype} is not supported; use uint8 or float in [0, 1]")
    return _three_channels(t.cpu()[None])


def _check_unit_range(t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ValueError("the image holds NaN or inf values")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        hint = (
            " (it looks already normalized: pass the raw RGB image, fastloc_viz normalizes it)"
            if lo < 0
            else " (for 0..255 values use uint8)"
        )
        raise ValueError(f"float image values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]{hint}")


def _three_channels(t: torch.Tensor) -> torch.Tensor:
    h, w = t.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image of {w} x {h} pixels is too small; each side needs at least {MIN_SIDE} pixels")
    return t.expand(-1, 3, -1, -1).contiguous() if t.shape[1] == 1 else t


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def to_numpy_image(t: torch.Tensor) -> np.ndarray:
    """``3 x H x W`` tensor in ``[0, 1]`` -> ``H x W x 3`` float32 array."""
    return t.detach().cpu().permute(1, 2, 0).numpy().astype(np.float32)


def sample_image(name: str = "chelsea") -> np.ndarray:
    """A real photograph bundled with scikit-image (``chelsea``, ``coffee``, ``astronaut``,
    ``rocket``, ``motorcycle_left``, ...) as an ``H x W x 3`` uint8 array."""
    from skimage import data

    fn = getattr(data, name, None)
    if fn is None or not callable(fn):
        raise LookupError(f"scikit-image has no sample image {name!r}; try 'chelsea', 'coffee' or 'astronaut'")
    img = fn()
    return img if img.ndim == 3 else np.stack([img] * 3, axis=-1)


def collage(images: Sequence[np.ndarray], size: int = 224, cols: int | None = None) -> np.ndarray:
    """Tile images (each resized to ``size x size``) into a grid: ``rows*size x cols*size x 3`` uint8."""
    n = len(images)
    cols = cols or (n if n <= 3 else int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / cols))
    out = np.full((rows * size, cols * size, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        t = _resize(_to_tensor(im), (size, size))[0]
        r, c = divmod(i, cols)
        out[r * size : (r + 1) * size, c * size : (c + 1) * size] = (to_numpy_image(t) * 255).round().astype(np.uint8)
    return out
