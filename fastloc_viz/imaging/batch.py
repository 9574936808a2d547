"""Turning what users pass as an image into an ``N x C x H x W`` float batch in ``[0, 1]``,
``C`` the model's channels: 3 (RGB) or 1 (grey).

Accepted: a path (``str`` / ``pathlib.Path``), a PIL image, a
:class:`~fastloc_viz.imaging.readers.LoadedImage` (from :func:`fastloc_viz.read_image`), a NumPy array (``H x W``,
``H x W x 1|3|4``; uint8, uint16, bool or float in ``[0, 1]``), a tensor (``H x W``,
``1|3 x H x W`` or ``N x 1|3 x H x W``; uint8 or float in ``[0, 1]``), or a list of these.
Conversions (see ``docs/robustness.md``): grayscale and bilevel images stay one channel,
repeated on R, G and B for an RGB model; palette images are looked up to RGB; colour becomes
luma for a grey model (:func:`~fastloc_viz.imaging.decode.to_channels`); 16-bit grayscale keeps its precision (scaled by 1/65535); 16-bit RGB PNGs are decoded
to 8 bits per channel by Pillow; 32-bit float images (mode ``F``) are used as they are when in
``[0, 1]``, divided by 255 when in ``[0, 255]``. With a warning: alpha is dropped (composited
on white), CMYK is converted to RGB without a colour profile, and images over
:data:`~fastloc_viz.imaging.decode.MAX_PIXELS` are downscaled (JPEGs while decoding) before the resize. Files whose
decoded pixels would need more than :data:`~fastloc_viz.imaging.decode.MAX_DECODE_BYTES` are refused, naming the memory
needed; images under :data:`~fastloc_viz.imaging.decode.MIN_SIDE` pixels a side are refused. Float64 / float16 inputs
become float32; tensors on another device are copied to the CPU. Every image is resized
(stretched, not cropped) to the model's input size, so a list may mix sizes.

Files and PIL images are read by :mod:`fastloc_viz.imaging.readers` (issue 14): 16-bit, 32-bit and
float data (modes ``I;16*``, ``I``, ``F``; TIFF, DICOM, FITS files) is windowed to ``[0, 1]``
by its default rule, and bilevel and palette images over :data:`~fastloc_viz.imaging.decode.MAX_PIXELS` are shrunk a band
of rows at a time; 8-bit data is converted exactly as described above. Arrays and tensors are
taken as given (pass them through :func:`fastloc_viz.read_image` to window them). The
decoding itself, and its limits, are :mod:`fastloc_viz.imaging.decode`'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import decode, readers

log = logging.getLogger("fastloc_viz")


ImageLike = "str | os.PathLike | Image.Image | np.ndarray | torch.Tensor"


def is_batch(image) -> bool:
    """Whether ``image`` holds several images (a list/tuple, or a 4-D array/tensor)."""
    if isinstance(image, (list, tuple)):
        return True
    return isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4


def load_batch(image, size: tuple[int, int], interpolation: str = "bilinear", channels: int = 3) -> torch.Tensor:
    """Any accepted image or list of images -> ``N x channels x H x W`` float32 in ``[0, 1]``
    (CPU), resized to ``size`` with ``interpolation`` (``"bilinear"``, ``"bicubic"``,
    ``"nearest"``: the bundle's, e.g. a timm model's ``pretrained_cfg``); ``channels`` is the
    bundle's (3: RGB, 1: grey).

    Raises:
        FileNotFoundError, IsADirectoryError: bad path.
        ImportError: a TIFF, DICOM or FITS file whose optional reader is not installed.
        ValueError: unreadable file, NaN/inf, values out of range, a degenerate size, an
            empty list.
        TypeError: an unsupported type, dtype or shape.
    """
    return load_batch_info(image, size, interpolation, channels)[0]


def load_batch_info(
    image, size: tuple[int, int], interpolation: str = "bilinear", channels: int = 3
) -> tuple[torch.Tensor, list]:
    """:func:`load_batch`, and per image the :class:`~fastloc_viz.imaging.readers.ImageInfo` of how a
    file, PIL image or :class:`~fastloc_viz.imaging.readers.LoadedImage` was converted (``None`` for
    arrays and tensors)."""
    batch, infos, _ = load_batch_sizes(image, size, interpolation, channels)
    return batch, infos


def load_batch_sizes(
    image, size: tuple[int, int], interpolation: str = "bilinear", channels: int = 3
) -> tuple[torch.Tensor, list, list[tuple[int, int]]]:
    """:func:`load_batch_info`, and per image its original ``(width, height)`` before the
    resize: a file's full size (``ImageInfo.size``, also when it was decoded at a reduced
    scale), an array's or tensor's own size."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("an empty list of images was given; pass at least one image")
        parts = [load_batch_sizes(im, size, interpolation, channels) for im in image]
        return torch.cat([p[0] for p in parts]), [i for p in parts for i in p[1]], [s for p in parts for s in p[2]]
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
        if image.shape[0] == 0:
            raise ValueError(f"an empty batch of images (shape {tuple(image.shape)}) was given")
        parts = [load_batch_sizes(im, size, interpolation, channels) for im in image]
        return torch.cat([p[0] for p in parts]), [None] * image.shape[0], [p[2][0] for p in parts]
    t, info = _to_tensor_info(image, size)
    own = (int(info.size[0]), int(info.size[1])) if info is not None else (t.shape[-1], t.shape[-2])
    if t.shape[1] > channels:  # fewer channels to resize: colour to grey first, grey to RGB last
        t = decode.to_channels(t, channels)
    return decode.to_channels(decode.resize(t, size, interpolation), channels), [info], [own]


def _to_tensor(image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """One image -> ``1 x C x h x w`` float32 in ``[0, 1]`` on the CPU (``C``: 1 for grey data, 3 for colour).

    With ``size`` (the model's input), a file or PIL image at least twice as large on both
    sides is first shrunk in 8-bit (a JPEG while decoding) to no less than twice ``size``:
    the float copy and the antialiased resize then handle a few megabytes, not hundreds.
    """
    return _to_tensor_info(image, size)[0]


def _to_tensor_info(image, size: tuple[int, int] | None = None):
    """:func:`_to_tensor` and the conversion's ImageInfo (``None`` for arrays and tensors)."""
    if isinstance(image, readers.LoadedImage):
        return decode.from_array(image.pixels), image.info
    if isinstance(image, str) and "://" in image and not Path(image).exists():
        raise FileNotFoundError(f"image {image!r} is a URL; URLs are not fetched: download the image first")
    if isinstance(image, (str, os.PathLike)):
        return readers.load(image, size)
    if isinstance(image, Image.Image):
        try:
            return readers.load(image, size)  # a lazily opened image decodes here
        except (OSError, SyntaxError) as e:
            raise ValueError(f"the PIL image cannot be decoded (truncated or corrupt file?): {e}") from None
    if isinstance(image, np.ndarray):
        return decode.from_array(image), None
    if isinstance(image, torch.Tensor):
        return decode.from_tensor(image), None
    raise TypeError(
        f"image of type {type(image).__name__} is not supported; pass a path, a PIL image, "
        "a numpy array, a torch tensor, or a list of these"
    )


def read_for_model(source, size: tuple[int, int] | None) -> readers.LoadedImage:
    """A file (or PIL image) read exactly as :func:`fastloc_viz.explain` reads it for a model
    of input ``size`` (``(H, W)``; ``None``: at full size): the same reader, window and
    page rule, and the same reduced-scale decoding of large photos. ``explain`` given the
    result sees the same pixels as given the path, and records the same ``ImageInfo`` and
    photo size. Not resized yet (each consumer resizes with the model's interpolation)."""
    t, info = readers.load(source, size)
    return readers.LoadedImage(decode.to_numpy_image(t[0]), info)


def unreadable_reason(error: BaseException) -> str:
    """Why a file could not be used, on one line: ``"ValueError: <message>"``."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def try_read(source, size: tuple[int, int] | None) -> tuple[readers.LoadedImage | None, str]:
    """:func:`read_for_model`, or ``(None, reason)`` for a file that cannot be used (missing,
    corrupt, not an image, unreadable, too small, its reader not installed): every
    collection run (``boxes``, ``atlas``, ``evaluate``, ``explain FOLDER``) lists such a file
    with this reason and goes on."""
    try:
        return read_for_model(source, size), ""
    except Exception as e:  # noqa: BLE001 - any file that cannot be read becomes a listed reason
        return None, unreadable_reason(e)


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
        t = decode.resize(_to_tensor(im), (size, size))[0]
        r, c = divmod(i, cols)
        out[r * size : (r + 1) * size, c * size : (c + 1) * size] = (decode.to_numpy_image(t) * 255).round().astype(np.uint8)
    return out
