"""Maps and photos to pixels: colour lookup, downsampling, thumbnails, data URIs.

Pure NumPy / Pillow (no plotly, no model): :mod:`fastloc_viz.views.plots` builds its figures from
these, and the widgets use the thumbnails for their cards.
"""

from __future__ import annotations

import base64
import functools
import io
import math

import numpy as np
import plotly.colors as pcolors
from PIL import Image as PILImage

from .checks import check_choice
from .maps import map_to_box, smooth
from .results import Box, Explanation

DEFAULT_COLORSCALE = "Inferno"


def downsample(
    saliency: np.ndarray, max_side: int = 112, reduce: str = "mean"
) -> tuple[np.ndarray, int]:
    """Block-reduce an ``H x W`` map so that neither side exceeds ``max_side``.

    Args:
        saliency: ``H x W`` map.
        max_side: the largest side wanted.
        reduce: ``"mean"`` (smooth maps) or ``"max"`` (sparse maps: keeps isolated pixels).

    Returns:
        ``(small, f)``: the ``ceil(H/f) x ceil(W/f)`` float32 map and the integer factor ``f``
        (cell ``(i, j)`` covers input pixels ``i*f .. i*f + f - 1``).
    """
    m = np.asarray(saliency, dtype=np.float32)
    h, w = m.shape
    f = max(1, math.ceil(max(h, w) / max_side))
    if f == 1:
        return m, 1
    ph, pw = -h % f, -w % f
    if ph or pw:
        m = np.pad(m, ((0, ph), (0, pw)), mode="edge")
    blocks = m.reshape(m.shape[0] // f, f, m.shape[1] // f, f)
    small = blocks.max(axis=(1, 3)) if reduce == "max" else blocks.mean(axis=(1, 3))
    return small.astype(np.float32), f


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.dtype == np.uint8:
        return a
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def shrink(rgb: np.ndarray, f: int) -> np.ndarray:
    """An ``H x W x 3`` RGB image shrunk by the integer factor ``f`` (bilinear), to
    ``ceil(H/f) x ceil(W/f)`` uint8: the grid of a map downsampled by ``f`` (:func:`downsample`)."""
    img = to_uint8(rgb)
    if f <= 1:
        return img
    h, w = img.shape[:2]
    return np.asarray(PILImage.fromarray(img).resize((math.ceil(w / f), math.ceil(h / f)), PILImage.BILINEAR))


def encode(rgb: np.ndarray, fmt: str = "JPEG", quality: int = 88, optimize: bool = True) -> bytes:
    """An ``H x W x 3`` RGB image (float in ``[0, 1]`` or uint8) as JPEG or PNG bytes."""
    buf = io.BytesIO()
    img = PILImage.fromarray(to_uint8(rgb))
    if fmt.upper() == "JPEG":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", optimize=optimize)
    return buf.getvalue()


def image_uri(rgb: np.ndarray, fmt: str = "JPEG", quality: int = 88) -> str:
    """A ``data:`` URI for an ``H x W x 3`` RGB image (float in ``[0, 1]`` or uint8)."""
    mime = "image/jpeg" if fmt.upper() == "JPEG" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(encode(rgb, fmt, quality)).decode("ascii")


@functools.lru_cache(maxsize=32)
def _lut(colorscale: str) -> np.ndarray:
    """``256 x 3`` uint8 lookup table for a named plotly colorscale."""
    try:
        cs = pcolors.get_colorscale(colorscale)
    except Exception as err:  # plotly raises PlotlyError with its own list
        raise ValueError(
            f"colorscale={colorscale!r} is not a plotly colorscale name "
            f"(for example 'Inferno', 'Viridis', 'Jet', 'Hot')"
        ) from err
    cols = pcolors.sample_colorscale(cs, list(np.linspace(0.0, 1.0, 256)))
    rgb = [pcolors.unlabel_rgb(c) if c.startswith("rgb") else pcolors.hex_to_rgb(c) for c in cols]
    return np.clip(np.round(np.asarray(rgb, dtype=np.float32)), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def fading_colorscale(
    colorscale: str = DEFAULT_COLORSCALE, ramp: float = 0.3
) -> tuple[tuple[float, str], ...]:
    """A plotly colorscale whose low end fades to transparent.

    The map's weak values then leave the photo visible instead of tinting it all: the alpha
    grows linearly from 0 at value 0 to 1 at value ``ramp``.
    """
    lut = _lut(colorscale)
    stops = []
    for v in np.linspace(0.0, 1.0, 21):
        r, g, b = lut[int(round(v * 255))]
        a = min(1.0, v / ramp) if ramp > 0 else 1.0
        stops.append((float(v), f"rgba({r},{g},{b},{a:.3f})"))
    return tuple(stops)


def colorize(saliency: np.ndarray, colorscale: str = DEFAULT_COLORSCALE) -> np.ndarray:
    """Map an ``H x W`` map in ``[0, 1]`` to ``H x W x 3`` uint8 colours."""
    idx = (np.clip(np.asarray(saliency, dtype=np.float32), 0, 1) * 255 + 0.5).astype(np.intp)
    return _lut(colorscale)[idx]


THUMBNAIL_KINDS = ("guided", "activation")
"""What a thumbnail draws: a sparse guided-backprop map, or a smooth activation map."""


def neuron_thumbnail(
    image: np.ndarray,
    neuron_map: np.ndarray,
    *,
    size: int = 112,
    colorscale: str = DEFAULT_COLORSCALE,
    dim: float = 0.35,
    kind: str = "guided",
) -> np.ndarray:
    """A map drawn over a dimmed grey copy of the photo, on the input grid.

    ``kind="guided"``: guided-backprop maps are sparse, so the map is max-pooled (isolated
    pixels survive downsampling), lightly blurred, scaled by a high percentile and lifted
    (square root) before colouring; its strength is the blend's alpha. ``kind="activation"``:
    a smooth map (a channel's activation, upsampled), mean-pooled and drawn as it is.

    Args:
        image: ``H x W x 3`` RGB in ``[0, 1]``.
        neuron_map: ``H x W`` in ``[0, 1]``.
        size: the thumbnail's longest side, in pixels.
        kind: one of :data:`THUMBNAIL_KINDS`.

    Returns:
        ``h x w x 3`` uint8 with ``max(h, w) <= size`` (factor ``f`` from :func:`downsample`).
    """
    check_choice("kind", kind, THUMBNAIL_KINDS)
    if kind == "guided":
        m, f = downsample(neuron_map, size, reduce="max")
        m = smooth(m, 0.6)
        pos = m[m > 0]
        if pos.size:  # scale by a high percentile, not the single brightest pixel
            m = np.clip(m / max(float(np.percentile(pos, 99)), 1e-12), 0.0, 1.0)
        m = np.sqrt(m)  # lift faint structure so small thumbnails stay readable
        alpha = np.clip(m * 1.2, 0, 1)
    else:
        m, f = downsample(neuron_map, size, reduce="mean")
        alpha = np.clip(m, 0, 1) * 0.85
    img = np.asarray(image, dtype=np.float32)
    if f > 1:
        img = shrink(img, f).astype(np.float32) / 255.0
    grey = img.mean(axis=2, keepdims=True) * dim
    col = colorize(m, colorscale).astype(np.float32) / 255.0
    return to_uint8(grey * (1 - alpha[..., None]) + col * alpha[..., None])


def photo_aspect(explanation: Explanation) -> float:
    """How tall one grid pixel is drawn relative to its width, so that the photo shows at its
    own aspect ratio: ``(photo height / grid height) / (photo width / grid width)`` (1 for a
    square photo on a square grid, or when the photo's size is not known)."""
    h, w = explanation.input_size
    pw, ph = explanation.photo_size
    return (ph / h) / (pw / w)


def to_photo_aspect(img: np.ndarray, aspect: float, max_side: int | None = None) -> np.ndarray:
    """An ``h x w x 3`` uint8 image on the grid stretched to the photo's aspect ratio (rows by
    ``aspect``, see :func:`photo_aspect`), then shrunk so no side exceeds ``max_side``."""
    h, w = img.shape[:2]
    if abs(aspect - 1) < 1e-3:
        return img
    nh, nw = h * aspect, float(w)
    if max_side is not None and max(nh, nw) > max_side:
        f = max_side / max(nh, nw)
        nh, nw = nh * f, nw * f
    size = (max(1, round(nw)), max(1, round(nh)))
    return np.asarray(PILImage.fromarray(img).resize(size, PILImage.BILINEAR))


def neuron_card_image(
    explanation: Explanation,
    index: int,
    *,
    size: int = 112,
    colorscale: str = DEFAULT_COLORSCALE,
    kind: str = "guided",
) -> np.ndarray:
    """A neuron's thumbnail (see :func:`neuron_thumbnail`) with its marks burnt in, at the
    photo's own aspect ratio.

    ``kind="guided"``: its guided-backprop map, with the extent of the map (dotted white box);
    ``kind="activation"``: where its channel fires on the image (``activation_maps``). Both
    mark the neuron's cell on the layer grid (cyan square).

    Args:
        explanation: a fastloc explanation.
        index: the neuron's position in ``explanation.neurons`` (0-based).

    Returns:
        ``h x w x 3`` uint8, ``max(h, w) <= size``, at the photo's own aspect ratio.
    """
    from PIL import ImageDraw

    check_choice("kind", kind, THUMBNAIL_KINDS)
    maps = explanation.neuron_maps if kind == "guided" else explanation.activation_maps
    if explanation.neurons is None or maps is None:
        what = "neurons" if explanation.neurons is None or kind == "guided" else "activation maps"
        raise ValueError(f"method {explanation.method!r} has no {what} (fastloc methods only)")
    n, nmap = explanation.neurons[index], maps[index]
    img = PILImage.fromarray(
        neuron_thumbnail(explanation.image, nmap, size=size, colorscale=colorscale, kind=kind)
    )
    draw = ImageDraw.Draw(img)
    h, w = explanation.input_size
    f = math.ceil(max(h, w) / size) if max(h, w) > size else 1
    if kind == "guided":
        _dotted_box(draw, [v / f for v in receptive_field(nmap)])
    cx, cy, sx, sy = neuron_centre(explanation, n.y, n.x)
    cx, cy, sx, sy = (cx + 0.5) / f, (cy + 0.5) / f, sx / f, sy / f
    draw.rectangle(
        [cx - sx / 2, cy - sy / 2, cx + sx / 2 - 1, cy + sy / 2 - 1], outline=(0, 229, 255), width=1
    )
    return to_photo_aspect(np.asarray(img), photo_aspect(explanation), max_side=size)


def _dotted_box(draw, box) -> None:
    """A dotted white box (2 px on, 2 px off) on a Pillow ``ImageDraw``."""
    x0, y0, x1, y1 = box
    for x in np.arange(x0, x1, 4):
        draw.line([(x, y0), (min(x + 2, x1), y0)], fill=(255, 255, 255))
        draw.line([(x, y1 - 1), (min(x + 2, x1), y1 - 1)], fill=(255, 255, 255))
    for y in np.arange(y0, y1, 4):
        draw.line([(x0, y), (x0, min(y + 2, y1))], fill=(255, 255, 255))
        draw.line([(x1 - 1, y), (x1 - 1, min(y + 2, y1))], fill=(255, 255, 255))


def receptive_field(neuron_map: np.ndarray, threshold: float = 0.15, sigma: float = 2.0) -> Box:
    """A rough, empirical receptive field: the extent of a neuron's guided-backprop map.

    The theoretical receptive field of a deep unit often covers the whole image; what the
    neuron actually responds to is where its guided-backprop map is non-negligible, so this
    boxes every pixel at or above ``threshold`` of the (lightly smoothed) map's maximum (the
    whole map when it is all zero).
    """
    h, w = np.shape(neuron_map)
    return map_to_box(smooth(neuron_map, sigma), threshold, "merged") or (0, 0, w, h)


def neuron_centre(expl: Explanation, y: int, x: int) -> tuple[float, float, float, float]:
    """Centre ``(cx, cy)`` and cell size ``(sx, sy)`` on the input grid of layer unit ``(y, x)``."""
    h_in, w_in = expl.input_size
    if expl.layer_shape is not None:
        _, lh, lw = expl.layer_shape
    else:  # unknown layer grid: assume stride 16
        lh, lw = max(1, h_in // 16), max(1, w_in // 16)
    sy, sx = h_in / lh, w_in / lw
    return (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5, sx, sy
