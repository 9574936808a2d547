"""Images as scientific users have them (issue 14): every PIL mode at any size, 16-bit and
float TIFF, DICOM and FITS, windowed by a stated, recorded rule.

The "huge" rows of the mode table lower ``decode.MAX_PIXELS`` so the huge-image path runs on
small images (fast); ``test_truly_huge_pngs`` (slow) reads real 30000 x 30000 and 40000 x
40000 PNGs in a subprocess and bounds its peak RSS.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require, skip_or_fail
from PIL import Image
from torch import nn

import fastloc_viz as fv
from fastloc_viz import cli
from fastloc_viz.imaging import decode, formats, readers, windowing

SIZE = 16
CLASSES = ["a", "b", "c"]
REPO = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(8, len(CLASSES))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def bundle():
    return fv.load_model(Net(), class_names=CLASSES, input_size=SIZE, layer="features")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _ramp(w, h, top):
    return (np.arange(w * h).reshape(h, w) * (top / (w * h - 1))).round()


def _make(mode: str, w: int, h: int) -> Image.Image:
    """An image of ``mode``; the high-bit ones hold 12-bit values (0..4095), as CT gives."""
    if mode in ("I;16", "I;16B"):
        return Image.frombytes(mode, (w, h), _ramp(w, h, 4095).astype("<u2" if mode == "I;16" else ">u2").tobytes())
    if mode == "I":
        return Image.fromarray(_ramp(w, h, 4095).astype(np.int32))
    if mode == "F":
        return Image.fromarray((_ramp(w, h, 4095) * 0.25).astype(np.float32))
    rgb = np.stack([_ramp(w, h, 255)] * 3, axis=-1).astype(np.uint8)
    rgb[:, :, 1] = 255 - rgb[:, :, 1]
    base = Image.fromarray(rgb)
    if mode == "1":
        return base.convert("L").point(lambda v: 255 if v > 127 else 0).convert("1")
    if mode == "LA":
        return Image.merge("LA", (base.convert("L"), Image.new("L", (w, h), 200)))
    return base.convert(mode)


MODES = ["1", "L", "P", "I;16", "I;16B", "I", "F", "LA", "RGBA", "CMYK", "YCbCr"]
HIGH = ("I;16", "I;16B", "I", "F")


@pytest.mark.parametrize("huge", [False, True], ids=["small", "huge"])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_at_every_size(mode, huge, bundle, monkeypatch):
    w, h = 120, 90
    if huge:  # the huge-image path, on a small image: over MAX_PIXELS
        monkeypatch.setattr(decode, "MAX_PIXELS", 2000)
    img = _make(mode, w, h)
    before = _state(bundle.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = fv.explain(bundle, img, k=2)
    messages = [str(m.message) for m in caught if issubclass(m.category, UserWarning)]
    info = e.params["image"]
    assert info["mode"] == mode and info["size"] == [w, h]
    assert e.image.shape == (SIZE, SIZE, 3) and 0 <= e.image.min() and e.image.max() <= 1
    assert all(torch.equal(v, before[k]) for k, v in bundle.model.state_dict().items())
    if huge:  # shrunk by 3 to MAX_PIXELS, then (8-bit, as before) towards twice the input
        assert info["scale"] >= 3 and any("downscaling it by 3" in m for m in messages), messages
    else:
        assert not any("downscaling" in m for m in messages), messages
        assert info["scale"] == 1 or mode not in HIGH
    if mode in HIGH:  # 12-bit data is stretched, not left nearly black
        assert info["window_rule"].startswith("percentile")
        assert e.image.max() > 0.9
        assert "window" in info["rule"]
    # also as a file: PNG for what PNG stores, TIFF (PIL or tifffile) and JPEG for the rest


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_from_a_file(mode, bundle, tmp_path, monkeypatch):
    img = _make(mode, 120, 90)
    ext = {"CMYK": "jpg", "YCbCr": "jpg", "I;16B": "tif", "I": "tif", "F": "tif"}.get(mode, "png")
    path = tmp_path / f"m.{ext}"
    img.save(path)
    t, info = readers.load(path, (SIZE, SIZE))
    channels = 1 if mode in ("1", "L") + HIGH else 3  # grey stays one channel (issue 22)
    assert t.shape[:2] == (1, channels) and 0 <= float(t.min()) and float(t.max()) <= 1
    if mode in HIGH:
        assert float(t.max()) > 0.9  # windowed, whichever reader (PIL or tifffile) read it
    monkeypatch.setattr(decode, "MAX_PIXELS", 2000)
    t, info = readers.load(path, (SIZE, SIZE))
    assert info.size == (120, 90) and info.scale >= 2 and t.shape[:2] == (1, channels)  # JPEG: 1/2 in draft


def test_twelve_bit_png_is_not_black(tmp_path, bundle):
    """The issue's case: 16-bit PNG of 0..4095 reached the model with a maximum of 0.06."""
    values = _ramp(64, 48, 4095).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "ct.png")
    e = fv.explain(bundle, tmp_path / "ct.png", k=2)
    assert e.image.max() > 0.95 and e.params["image"]["window_rule"] == "percentile 0.5-99.5"
    full = fv.read_image(tmp_path / "ct.png", window="full")  # the old rule, on request
    assert abs(full.pixels.max() - 4095 / 65535) < 1e-6


# --- windowing against hand-computed values --------------------------------------------------


def test_percentile_window_hand_computed():
    v = np.arange(201, dtype=np.uint16).reshape(1, 201).repeat(8, axis=0) * 10  # 0..2000
    (lo, hi), rule = readers.choose_window(v, "auto", (10, 90))
    # numpy's linear percentile over 8 copies of 0, 10, ..., 2000: 10% -> 200, 90% -> 1800
    assert (lo, hi) == (200.0, 1800.0) and rule == "percentile 10-90"
    out = readers.apply_window(v, lo, hi)
    assert out[0, 20] == 0 and out[0, 180] == 1 and out[0, 100] == pytest.approx(0.5)
    assert out[0, 65] == pytest.approx((650 - 200) / 1600)
    asinh = readers.apply_window(np.array([650.0]), lo, hi, "asinh")
    assert asinh[0] == pytest.approx(np.arcsinh(((650 - 200) / 1600) / 0.1) / np.arcsinh(10), rel=1e-6)


def test_auto_keeps_full_range_data_and_8_bit_data():
    full = np.random.default_rng(0).integers(0, 65536, (40, 50)).astype(np.uint16)
    assert readers.choose_window(full)[0] == (0.0, 65535.0)
    assert readers.choose_window(np.zeros((9, 9), np.uint8) + 7)[0] == (0.0, 255.0)
    unit = np.linspace(0, 0.9, 100, dtype=np.float32).reshape(10, 10)
    assert readers.choose_window(unit)[0] == (0.0, 1.0)
    assert readers.choose_window(unit, "minmax")[0] == (0.0, pytest.approx(0.9))
    assert readers.choose_window(unit, (0.2, 0.4))[0] == (0.2, 0.4)
    with pytest.raises(ValueError, match="no nominal range"):
        readers.choose_window(np.array([[-5.0, 3000.0]]), "full")


def test_nan_pixels_are_masked():
    v = np.tile(np.array([[np.nan, 0.0, 1.0, 2.0], [3.0, 4.0, np.inf, 5.0]], np.float32), (4, 2))
    t, info = windowing.from_values(v, "array", "float32", None, 1, {"window": "minmax", "percentiles": (0.5, 99.5), "stretch": "linear"})
    assert info.window == (0.0, 5.0) and info.masked == 16
    np.testing.assert_allclose(t[0, 0, :2, :4].numpy(), [[0, 0, 0.2, 0.4], [0.6, 0.8, 0, 1]], atol=1e-6)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="window='median' is not one of"):
        fv.read_image(np.zeros((9, 9), np.uint16), window="median")
    with pytest.raises(ValueError, match="percentiles"):
        fv.read_image(np.zeros((9, 9), np.uint16), percentiles=(90, 10))
    with pytest.raises(ValueError, match="stretch='log'"):
        fv.read_image(np.zeros((9, 9), np.uint16), stretch="log")
    with pytest.raises(ValueError, match="give one of page, frame and hdu"):
        fv.read_image(np.zeros((9, 9), np.uint16), page=0, frame=1)
    assert readers.parse_window("-1000,400") == (-1000.0, 400.0)


# --- TIFF ------------------------------------------------------------------------------------


def test_tiff_multi_page_tiled_16_bit_and_float(tmp_path, bundle):
    tifffile = require("tifffile")
    a = _ramp(64, 64, 4095).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([a, a[::-1] // 2, a * 0 + 7]), tile=(32, 32), photometric="minisblack")
    first = fv.read_image(tmp_path / "stack.tif")
    assert first.info.index == 0 and first.info.count == 3 and first.pixels.max() > 0.95
    second = fv.read_image(tmp_path / "stack.tif", page=1)
    assert second.info.index == 1 and second.pixels[0, 0, 0] > second.pixels[-1, -1, 0]
    with pytest.raises(ValueError, match=r"has 3 pages \(0..2\); page 5 does not exist"):
        fv.read_image(tmp_path / "stack.tif", page=5)
    tifffile.imwrite(tmp_path / "float.tif", np.random.default_rng(0).normal(100, 20, (40, 50)).astype(np.float32))
    e = fv.explain(bundle, fv.read_image(tmp_path / "float.tif", stretch="asinh"), k=2)
    assert e.params["image"]["stretch"] == "asinh" and e.params["image"]["format"] == "TIFF"
    rgb16 = (np.random.default_rng(1).random((30, 40, 3)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    li = fv.read_image(tmp_path / "rgb16.tif")
    assert li.pixels.shape == (30, 40, 3) and li.info.mode.startswith("uint16")


def test_missing_extra_names_it(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_extras(name, *args, **kwargs):
        if name.split(".")[0] in ("pydicom", "astropy", "tifffile"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    (tmp_path / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (tmp_path / "x.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    monkeypatch.setattr(builtins, "__import__", no_extras)
    with pytest.raises(ImportError, match=r"reading DICOM needs pydicom: pip install 'fastloc-viz\[dicom\]'"):
        fv.read_image(tmp_path / "x.dcm")
    with pytest.raises(ImportError, match=r"reading FITS needs astropy: pip install 'fastloc-viz\[fits\]'"):
        fv.read_image(tmp_path / "x.fits")


def test_cli_missing_extra_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(readers, "read_dicom", lambda *a: (_ for _ in ()).throw(formats.missing_reader("DICOM")))
    (tmp_path / "x.dcm").write_bytes(b"\0" * 128 + b"DICM")
    monkeypatch.setattr(fv, "load_model", lambda *a, **k: fv.ModelBundle.__new__(fv.ModelBundle))
    assert cli.main(["explain", str(tmp_path / "x.dcm"), "--page", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'fastloc-viz[dicom]'" in err[0]


# --- DICOM -----------------------------------------------------------------------------------


def _dicom(name):
    require("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        skip_or_fail(f"pydicom test file {name} is not installed")
    return path


def test_dicom_rescale_window_and_monochrome1():
    import pydicom

    ct = fv.read_image(_dicom("CT_small.dcm"))  # intercept -1024, no window: percentiles in HU
    ds = pydicom.dcmread(_dicom("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    lo, hi = np.percentile(hu, (0.5, 99.5))
    assert ct.info.window == pytest.approx((lo, hi)) and "rescaled" in ct.info.rule
    np.testing.assert_allclose(ct.pixels[..., 0], np.clip((hu - lo) / (hi - lo), 0, 1), atol=1e-5)

    mr = fv.read_image(_dicom("MR_small.dcm"))  # window centre 600, width 1600
    assert mr.info.window == (600 - 0.5 - 1599 / 2, 600 - 0.5 + 1599 / 2)
    assert mr.info.window_rule.startswith("file")
    raw = pydicom.dcmread(_dicom("MR_small.dcm")).pixel_array.astype(np.float64)
    np.testing.assert_allclose(mr.pixels[..., 0], np.clip((raw - 599.5) / 1599 + 0.5, 0, 1), atol=1e-5)
    assert fv.read_image(_dicom("MR_small.dcm"), window="percentile").info.window_rule.startswith("percentile")

    m1 = fv.read_image(_dicom("6154"))  # MONOCHROME1, slope 0.684, intercept 200, window 1600/2800
    ds = pydicom.dcmread(_dicom("6154"))
    v = ds.pixel_array * 0.684 + 200
    expect = 1 - np.clip((v - 200) / 2799, 0, 1)
    assert m1.info.inverted and m1.info.window == (200.0, 2999.0)
    np.testing.assert_allclose(m1.pixels[..., 0], expect, atol=1e-5)


def test_dicom_frames():
    first = fv.read_image(_dicom("rtdose.dcm"))
    third = fv.read_image(_dicom("rtdose.dcm"), frame=2)
    assert first.info.count == 15 and first.info.index == 0 and third.info.index == 2
    assert not np.array_equal(first.pixels, third.pixels)
    with pytest.raises(ValueError, match="has 15 frames"):
        fv.read_image(_dicom("rtdose.dcm"), page=15)
    colour = fv.read_image(_dicom("SC_rgb_rle_2frame.dcm"), frame=1)
    assert colour.info.window_rule == "8-bit" and colour.pixels.shape == (100, 100, 3)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "6154", "rtdose.dcm"])
def test_dicom_explains_end_to_end(name, bundle, tmp_path):
    e = fv.explain(bundle, _dicom(name), k=2)
    x0, y0, x1, y1 = e.box
    assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    assert e.params["image"]["format"] == "DICOM"
    from fastloc_viz.views.report import render_report

    html = render_report({"fastloc": e})
    assert "image: DICOM" in html and "window" in html


# --- FITS ------------------------------------------------------------------------------------


def _fits(rel):
    astropy = require("astropy")
    path = Path(astropy.__path__[0]) / rel
    if not path.exists():
        skip_or_fail(f"astropy test file {rel} is not installed")
    return path


M13 = "io/fits/hdu/compressed/tests/data/m13.fits"
NANS = "modeling/tests/data/1904-66_AZP.fits"
MULTI = "io/fits/tests/data/test0.fits"


def test_fits_hdu_nan_and_stretch():
    from astropy.io import fits

    m13 = fv.read_image(_fits(M13))
    data = fits.getdata(_fits(M13)).astype(np.float64)[::-1]
    lo, hi = np.percentile(data, (0.5, 99.5))
    assert m13.info.window == pytest.approx((lo, hi))
    np.testing.assert_allclose(m13.pixels[..., 0], np.clip((data - lo) / (hi - lo), 0, 1), atol=1e-5)
    asinh = fv.read_image(_fits(M13), stretch="asinh")
    assert asinh.pixels.mean() > m13.pixels.mean()  # asinh lifts the faint parts

    nans = fv.read_image(_fits(NANS))
    assert nans.info.masked == int(np.isnan(fits.getdata(_fits(NANS))).sum()) > 0
    assert np.isfinite(nans.pixels).all()

    multi = fv.read_image(_fits(MULTI))  # the primary HDU is empty: the first image HDU
    assert multi.info.index == 1 and multi.info.count > 2
    assert fv.read_image(_fits(MULTI), hdu=3).info.index == 3
    assert fv.read_image(_fits(MULTI), hdu="SCI").info.index == 1
    with pytest.raises(ValueError, match="not an image"):
        fv.read_image(_fits(MULTI), hdu=0)


@pytest.mark.parametrize("rel", [M13, NANS, MULTI])
def test_fits_explains_end_to_end(rel, bundle):
    e = fv.explain(bundle, _fits(rel), k=2)
    x0, y0, x1, y1 = e.box
    assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    from fastloc_viz.views.report import render_report

    assert "image: FITS" in render_report({"fastloc": e})


def test_cli_page_and_window(tmp_path, monkeypatch, capsys, bundle):
    monkeypatch.setattr(fv, "load_model", lambda *a, **k: bundle)
    out = tmp_path / "r.html"
    rc = cli.main(
        ["explain", str(_dicom("rtdose.dcm")), "--page", "4", "--window", "minmax", "--stretch", "asinh",
         "--no-baselines", "-k", "2", "--layer", "features", "--out", str(out), "--json"]
    )
    assert rc == 0, capsys.readouterr().err
    d = json.loads(capsys.readouterr().out)
    assert d["params"]["image"]["index"] == 4 and d["params"]["image"]["window_rule"] == "minmax"
    assert "image: DICOM" in out.read_text()


def test_widgets_take_a_read_image(bundle):
    from fastloc_viz.widgets import NeuronExplorer

    ex = NeuronExplorer(bundle, fv.read_image(_dicom("MR_small.dcm")), k=2)
    assert ex.explanation.params["image"]["format"] == "DICOM"


# --- truly huge files --------------------------------------------------------------------------


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def zero_png(path: Path, w: int, h: int, depth: int, color: int, plte: bytes | None = None, k: int = 64) -> Path:
    """A w x h PNG of zeros written in a fraction of a second: K rows are deflated once and
    the block repeated (a fully flushed deflate block does not depend on what came before);
    the Adler-32 of n zero bytes is ``n % 65521 << 16 | 1``."""
    row = b"\0" * (1 + (w * depth * {0: 1, 3: 1}[color] + 7) // 8)
    c = zlib.compressobj(9)
    head = c.compress(row * k) + c.flush(zlib.Z_FULL_FLUSH)
    rep = c.compress(row * k) + c.flush(zlib.Z_FULL_FLUSH)
    blocks, rest = divmod(h, k)
    tail = c.compress(row * rest) + c.flush(zlib.Z_FULL_FLUSH) if rest else b""
    adler = ((len(row) * h) % 65521) << 16 | 1
    data = head + rep * (blocks - 1) + tail + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + (_chunk(b"PLTE", plte) if plte else b"")
        + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    )
    return path


def test_zero_png_writer_is_a_valid_png(tmp_path):
    for depth, color, mode in ((16, 0, "I;16"), (8, 3, "P"), (1, 0, "1")):
        path = zero_png(tmp_path / f"z{depth}.png", 301, 203, depth, color, bytes(768) if color == 3 else None)
        img = Image.open(path)
        img.load()
        assert img.mode == mode and img.size == (301, 203) and not np.asarray(img).any()


# The peak is this process's VmHWM, not ru_maxrss: Linux carries the parent's RSS at fork into
# the child's ru_maxrss across exec, so a big pytest process would inflate it (by 2.4 GB once).
_MEASURE = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
from fastloc_viz.imaging import batch as images
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
base = status("VmRSS")
t = images.load_batch(sys.argv[1], (224, 224))
print(json.dumps({"shape": list(t.shape), "grew": status("VmHWM") - base}))
"""

HUGE = [  # (w, h, depth, color, PIL's decoded bytes)
    ("I;16 30000", 30000, 30000, 16, 0, 30000 * 30000 * 2),
    ("P 30000", 30000, 30000, 8, 3, 30000 * 30000),
    ("1 40000", 40000, 40000, 1, 0, 40000 * 40000),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, w, h, depth, color, decoded", HUGE, ids=[c[0] for c in HUGE])
def test_truly_huge_pngs(name, w, h, depth, color, decoded, tmp_path):
    """Memory bound: the peak RSS grows by at most PIL's decoded image plus 256 MiB (the
    bands and the shrunk image); measured 1.87 / 0.99 / 1.57 GiB over a 0.77 GiB baseline."""
    path = zero_png(tmp_path / "huge.png", w, h, depth, color, bytes(768) if color == 3 else None)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["shape"] == [1, 3, 224, 224]
    assert got["grew"] <= decoded + 256 * 2**20, got


def test_over_the_decode_limit_names_mode_and_size(tmp_path, monkeypatch):
    path = zero_png(tmp_path / "big16.png", 3000, 2000, 16, 0)
    monkeypatch.setattr(decode, "MAX_DECODE_BYTES", 10_000_000)
    with pytest.raises(ValueError, match=r"3000 x 2000 pixels: decoding it needs .*mode I;16"):
        fv.read_image(path)


# --- FITS BZERO / BSCALE / BLANK (issue 19) ---------------------------------------------------


def _fits_scaled(path: Path, compressed: bool = False) -> np.ndarray:
    """A 40 x 50 int16 FITS image with BSCALE 0.5, BZERO 100 and BLANK -32768 on 3 pixels
    (compressed: a tile-compressed HDU after an empty primary HDU); returns the physical
    values (NaN at the BLANK pixels), rows as stored."""
    from astropy.io import fits

    raw = (_ramp(50, 40, 3000) - 1000).astype(np.int16)
    raw[5, 7] = raw[20, 30] = raw[39, 0] = -32768
    hdu = fits.CompImageHDU(raw) if compressed else fits.PrimaryHDU(raw)
    hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["BLANK"] = 0.5, 100.0, -32768
    (fits.HDUList([fits.PrimaryHDU(), hdu]) if compressed else fits.HDUList([hdu])).writeto(path)
    physical = raw * 0.5 + 100.0
    physical[raw == -32768] = np.nan
    return physical


def _fits_unsigned(path: Path) -> np.ndarray:
    """Unsigned 16-bit data as cameras store it: int16 with BZERO 32768 (astropy's own way)."""
    from astropy.io import fits

    values = _ramp(50, 40, 60000).astype(np.uint16)
    fits.PrimaryHDU(values).writeto(path)
    assert fits.getheader(path)["BZERO"] == 32768
    return values.astype(np.float64)


@pytest.mark.parametrize("compressed", [False, True], ids=["image", "compressed"])
def test_fits_bzero_bscale_blank_are_applied(compressed, tmp_path, bundle):
    pytest.importorskip("astropy")
    physical = _fits_scaled(tmp_path / "s.fits", compressed)
    im = fv.read_image(tmp_path / "s.fits", window="minmax")
    finite = physical[np.isfinite(physical)]
    assert im.info.window == pytest.approx((finite.min(), finite.max())) == (-400.0, 1100.0)
    assert im.info.masked == 3 and "BLANK -32768: 3 pixel(s) masked" in im.info.rule
    expect = np.clip((physical - finite.min()) / (finite.max() - finite.min()), 0, 1)[::-1]
    expect[~np.isfinite(expect)] = 0  # BLANK: masked like NaN, shown as 0
    np.testing.assert_allclose(im.pixels[..., 0], expect, atol=1e-6)
    given = fv.read_image(tmp_path / "s.fits", window=(100.0, 300.0))  # windows in physical units
    np.testing.assert_allclose(given.pixels[..., 0], np.nan_to_num(np.clip((physical - 100) / 200, 0, 1))[::-1],
                               atol=1e-6)
    e = fv.explain(bundle, tmp_path / "s.fits", k=2)
    assert e.params["image"]["format"] == "FITS" and e.params["image"]["masked"] == 3

    values = _fits_unsigned(tmp_path / "u.fits")
    u = fv.read_image(tmp_path / "u.fits", window="minmax")
    assert u.info.window == (0.0, 60000.0) and u.info.masked == 0
    np.testing.assert_allclose(u.pixels[..., 0], (values / 60000)[::-1], atol=1e-6)


# --- a mixed-format folder, for every consumer (issue 19) -------------------------------------


class Bright(nn.Module):
    """Class "bright" when the mean brightness is over 0.6, else "dark"; both maps are
    non-zero on ordinary images (channel 0 is the brightness, channel 1 the darkness)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[1 / 3] * 3, [-1 / 3] * 3]).view(2, 3, 1, 1))
            self.features[0].bias.copy_(torch.tensor([0.0, 1.0]))
            self.fc.weight.copy_(torch.eye(2) * 10)
            self.fc.bias.copy_(torch.tensor([0.0, 2.0]))

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def bright_bundle():
    return fv.load_model(Bright().eval(), class_names=["bright", "dark"], input_size=16, layer="features",
                         mean=(0, 0, 0), std=(1, 1, 1))


def _blob(w: int, h: int, top: float, seed: int = 0) -> np.ndarray:
    """A ramp with a bright disc and noise, ``0..top``: structure to see on a card."""
    y, x = np.mgrid[0:h, 0:w]
    disc = ((x - w * 0.6) ** 2 + (y - h * 0.4) ** 2) < (min(w, h) * 0.25) ** 2
    v = 0.5 * x / (w - 1) + 0.5 * disc + 0.05 * np.random.default_rng(seed).random((h, w))
    return v / v.max() * top


MIXED_READABLE = ["a.jpg", "b.png", "comp.fits", "scan.dcm", "sky.fits", "sub/c.jpg", "t12.tif", "t16.tif"]
MIXED_BROKEN = "broken.jpg"


def mixed_folder(root: Path) -> Path:
    """JPEG, PNG, 16-bit and 12-bit TIFF, DICOM, FITS with BZERO / BSCALE / BLANK, a
    compressed FITS HDU, a hidden ``._x.jpg`` and a hidden folder (both valid images: left
    out by the walker, not by a failure), a non-image suffix, and a file that cannot be read.
    The readable files are :data:`MIXED_READABLE` (sorted), the broken one :data:`MIXED_BROKEN`."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("astropy")
    (root / "sub").mkdir(parents=True)
    (root / ".cache").mkdir()
    rgb = (np.stack([_blob(40, 30, 255, s) for s in range(3)], axis=-1)).astype(np.uint8)
    Image.fromarray(rgb).save(root / "a.jpg")
    Image.fromarray(255 - rgb[::-1]).save(root / "b.png")  # a bright one
    Image.fromarray(rgb[:, ::-1]).save(root / "sub" / "c.jpg")
    Image.fromarray(rgb).save(root / "._x.jpg")
    Image.fromarray(rgb).save(root / ".cache" / "d.png")
    tifffile.imwrite(root / "t16.tif", _blob(48, 32, 65535).astype(np.uint16), photometric="minisblack")
    tifffile.imwrite(root / "t12.tif", _blob(48, 32, 4095, 1).astype(np.uint16), photometric="minisblack")
    import shutil

    shutil.copy(_dicom("CT_small.dcm"), root / "scan.dcm")
    _fits_scaled(root / "sky.fits")
    _fits_scaled(root / "comp.fits", compressed=True)
    (root / MIXED_BROKEN).write_text("not an image at all\n")
    (root / "notes.txt").write_text("not an image suffix: not listed\n")
    return root


def test_the_walker_lists_the_mixed_folder_once_in_order(tmp_path):
    from fastloc_viz.imaging.dataset import LocalizationDataset
    from fastloc_viz.imaging.sources import image_files, sources

    root = mixed_folder(tmp_path / "mixed")
    expect = sorted(MIXED_READABLE + [MIXED_BROKEN], key=lambda n: n.split("/"))
    assert [p.relative_to(root).as_posix() for p in image_files(root)] == expect
    assert sources(root).names == expect
    assert [q.image.relative_to(root.resolve()).as_posix() for q in LocalizationDataset(root, boxes=False)] == expect
