"""Scientific file formats beyond PIL: TIFF (``tifffile``), DICOM (``pydicom``), FITS (``astropy``).

Each reader is an optional extra; a file whose reader is missing gets a one-line
``ImportError`` naming the extra to install. Each returns what
:func:`fastloc_viz.imaging.windowing.from_values` returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import decode
from .windowing import _g, from_values

_EXTRAS = {
    "TIFF": ("tifffile", "tiff"),
    "DICOM": ("pydicom", "dicom"),
    "FITS": ("astropy", "fits"),
}


def missing_reader(kind: str) -> ImportError:
    module, extra = _EXTRAS[kind]
    return ImportError(f"reading {kind} needs {module}: pip install 'fastloc-viz[{extra}]'")


def check_index(index, count: int, what: str, path: Path) -> int:
    i = 0 if index is None else index
    if isinstance(i, str) or not 0 <= i < count:
        raise ValueError(f"{str(path)!r} has {count} {what}{'s' if count != 1 else ''} (0..{count - 1}); {what} {index!r} does not exist")
    return i


def read_tiff(path: Path, index, opts):
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises its own TiffFileError, ValueError, struct.error...
        raise ValueError(f"image file {str(path)!r} is truncated or corrupt (TIFF): {e}") from None
    with tf:
        count = len(tf.pages)
        if count == 0:
            raise ValueError(f"image file {str(path)!r} is truncated or corrupt (TIFF): it has no page")
        i = check_index(index, count, "page", path)
        page = tf.pages[i]
        shape, dtype = tuple(page.shape), np.dtype(page.dtype)
        need = int(np.prod(shape)) * dtype.itemsize
        if need > decode.MAX_DECODE_BYTES:
            raise ValueError(
                f"image file {str(path)!r} page {i} is {shape} {dtype} (TIFF): decoding it needs "
                f"{need / 2**30:.1f} GiB of memory, over the {decode.MAX_DECODE_BYTES / 2**30:.1f} GiB limit "
                "(fastloc_viz.imaging.decode.MAX_DECODE_BYTES); downscale it first"
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
    return from_values(
        arr, "TIFF", mode, i if count > 1 else None, count, opts, size=(w, h),
        invert=photometric == "MINISWHITE", notes=notes,
    )


def read_dicom(path: Path, index, opts):
    try:
        import pydicom
    except ImportError:
        raise missing_reader("DICOM") from None
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # InvalidDicomError, EOFError...
        raise ValueError(f"{str(path)!r} is not a DICOM file pydicom can read: {e}") from None
    if "PixelData" not in ds:
        raise ValueError(f"DICOM file {str(path)!r} holds no image (no Pixel Data element)")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    i = check_index(index, count, "frame", path)
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    need = rows * cols * count * int(ds.get("SamplesPerPixel", 1) or 1) * 8
    if need > decode.MAX_DECODE_BYTES:
        raise ValueError(
            f"DICOM file {str(path)!r} is {cols} x {rows} pixels x {count} frame(s): decoding it needs "
            f"{need / 2**30:.1f} GiB, over the {decode.MAX_DECODE_BYTES / 2**30:.1f} GiB limit "
            "(fastloc_viz.imaging.decode.MAX_DECODE_BYTES)"
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
        nominal = _stored_range(ds, arr.dtype, slope, intercept)
        if slope != 1 or intercept != 0:
            arr = arr.astype(np.float64) * slope + intercept
            notes += (f"rescaled: value * {_g(slope)} {'-' if intercept < 0 else '+'} {_g(abs(intercept))}",)
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width >= 1:
            # DICOM PS3.3 C.11.2.1.2.1, linear: the window's ends
            file_window = (center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2)
            notes += (f"file window centre {_g(center)}, width {_g(width)}",)
    else:
        nominal = "dtype"
        if photometric.startswith("YBR"):
            notes += (f"{photometric} converted to RGB by pydicom",)
    h, w = arr.shape[:2]
    return from_values(
        np.asarray(arr), "DICOM", mode, i if count > 1 else None, count, opts, size=(w, h),
        nominal=nominal, file_window=file_window, invert=photometric == "MONOCHROME1", notes=notes,
    )


def _stored_range(ds, dtype: np.dtype, slope: float, intercept: float) -> tuple[float, float] | str | None:
    """What a monochrome DICOM's stored bits allow (``BitsStored``, signed when
    ``PixelRepresentation`` is 1), in the file's units after the rescale; the type's range
    when the file does not say."""
    bits = int(ds.get("BitsStored", 0) or 0)
    if dtype.kind not in "ui" or not 1 <= bits <= 8 * dtype.itemsize:
        return "dtype" if dtype.kind in "ui" and slope == 1 and intercept == 0 else None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = sorted((lo * slope + intercept, hi * slope + intercept))
    return float(ends[0]), float(ends[1])


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


def read_fits(path: Path, index, opts):
    try:
        from astropy.io import fits
    except ImportError:
        raise missing_reader("FITS") from None
    try:  # raw values (memory-mapped where astropy can); BZERO / BSCALE / BLANK applied below
        hdul = fits.open(path, memmap=True, do_not_scale_image_data=True)
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
            j = check_index(index, count, "HDU", path)
        else:
            if not images_at:
                raise ValueError(f"FITS file {str(path)!r} holds no image HDU (of 2 or more axes)")
            j = images_at[0]
        hdu = hdul[j]
        if j not in images_at:
            raise ValueError(f"FITS HDU {index!r} of {str(path)!r} is not an image of 2 or more axes")
        shape = tuple(hdu.shape)
        need = int(np.prod(shape[-2:])) * 8
        if need > decode.MAX_DECODE_BYTES:
            raise ValueError(
                f"FITS HDU {j} of {str(path)!r} is {shape[-1]} x {shape[-2]} pixels: reading it needs "
                f"{need / 2**30:.1f} GiB, over the {decode.MAX_DECODE_BYTES / 2**30:.1f} GiB limit"
            )
        data = hdu.section[(0,) * (len(shape) - 2)] if len(shape) > 2 else hdu.data
        notes: tuple[str, ...] = ()
        if len(shape) > 2:
            notes += (f"first plane of {shape}",)
        if hdu.name and hdu.name != "PRIMARY":
            notes += (f"HDU {j} {hdu.name}",)
        mode = f"{np.asarray(data[:1, :1]).dtype.name} BITPIX {hdu.header.get('BITPIX')}"
        values, scaled = _physical(np.asarray(data)[::-1], hdu.header)  # rows bottom to top: as DS9 shows them
        notes += scaled + ("rows flipped (FITS origin at the bottom)",)
    h, w = values.shape
    return from_values(
        values, "FITS", mode, j if count > 1 else None, count, opts, size=(w, h), nominal=None, notes=notes
    )


def _physical(raw: np.ndarray, header) -> tuple[np.ndarray, tuple[str, ...]]:
    """FITS values in physical units (FITS 4.0, section 5.3): ``BZERO + BSCALE * raw``, with
    the integer pixels equal to ``BLANK`` set to NaN (masked like a float image's NaN); the
    notes saying what was applied. ``BZERO = 32768`` with ``BSCALE = 1`` is the usual way of
    storing unsigned 16-bit data."""
    bzero, bscale = float(header.get("BZERO", 0) or 0), float(header.get("BSCALE", 1) or 1)
    blank = header.get("BLANK") if raw.dtype.kind in "iu" else None
    notes: tuple[str, ...] = ()
    if bzero == 0 and bscale == 1 and blank is None:
        values = raw
    else:
        values = raw.astype(np.float64)
        if blank is not None:
            hole = raw == int(blank)
            values[hole] = np.nan
            notes += (f"BLANK {int(blank)}: {int(hole.sum())} pixel(s) masked",)
        if bscale != 1:
            values *= bscale
        if bzero != 0:
            values += bzero
        if bzero or bscale != 1:
            notes += (f"scaled: BZERO {_g(bzero)} + BSCALE {_g(bscale)} * value",)
    if values.dtype.byteorder not in ("=", "|"):
        values = values.astype(values.dtype.newbyteorder("="))
    return values, notes
