"""Robustness and safety (issue 5): every bad input gets a clear error, or a documented
conversion with a warning; the user's model, files and session are never harmed.

One table of bad inputs runs through the API (exception type + message fragment) and, where
the CLI can express it, through ``fastloc-viz explain`` (non-zero exit, exactly one readable
error line, no traceback). After every case the model is checked unchanged: state dict bit
for bit, training flags, ``requires_grad``, ``.grad``, hooks, ``inplace`` flags, and outputs.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_state, model_state
from PIL import Image
from torch import nn

import fastloc_viz as fv
from fastloc_viz import cli
from fastloc_viz.imaging import batch as images
from fastloc_viz.imaging import decode
from fastloc_viz.model.state import hook_counts

CLASSES = ["cat", "dog", "car", "tree", "boat"]
SIZE = 16


class Net(nn.Module):
    """conv-relu-conv(stride 2)-relu (8 channels, 8x8 at 16 px) -> global pool -> fc.

    ``unused`` never runs; ``act`` picks the activation (``nn.Identity`` for no ReLU at all).
    """

    def __init__(self, act=nn.ReLU, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), act(), nn.Conv2d(6, 8, 3, stride=2, padding=1), act()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, len(CLASSES))
        self.unused = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _bundle(model: nn.Module) -> fv.ModelBundle:
    return fv.load_model(model, class_names=CLASSES, input_size=SIZE, layer="features")


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _prepare(model: nn.Module) -> None:
    """Put the model in the awkward state a user's model may be in."""
    model.train()
    model.features[0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)


def _outputs(model: nn.Module) -> torch.Tensor:
    training = [m.training for m in model.modules()]
    model.eval()
    with torch.no_grad():
        out = model(torch.stack([_image(1), _image(2)]))
    for m, t in zip(model.modules(), training):
        m.training = t
    return out


def _session_state() -> dict:
    return {
        "grad": torch.is_grad_enabled(),
        "inference": torch.is_inference_mode_enabled(),
        "rng": torch.get_rng_state(),
        "pil_limit": Image.MAX_IMAGE_PIXELS,
    }


def _assert_untouched(model, before_state, before_out, before_session):
    assert_same_state(before_state, model_state(model))
    assert sum(hook_counts(model).values()) == 0
    assert torch.equal(_outputs(model), before_out)
    after = _session_state()
    assert after["grad"] == before_session["grad"] and after["inference"] == before_session["inference"]
    assert torch.equal(after["rng"], before_session["rng"])
    assert after["pil_limit"] == before_session["pil_limit"]


# --- files built in tmp_path ------------------------------------------------------------


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png(path: Path, w: int, h: int, depth: int, color: int, raw: bytes) -> Path:
    """A PNG written by hand: 16-bit RGB, or a huge header without the pixels."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images é ü")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:50]  # smooth, so that JPEG keeps the colours
    rgb = np.stack([xx * 5, yy * 6, 255 - xx * 4], axis=-1).clip(0, 255).astype(np.uint8)
    out = {}

    def save(name, img, **kw):
        out[name] = d / name
        img.save(out[name], **kw)

    save("ok.jpg", Image.fromarray(rgb), quality=95)
    data = out["ok.jpg"].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "cut.jpg").write_bytes(data[: len(data) - 200])  # the header survives: opens lazily
    (d / "corrupt.jpg").write_bytes(data[:200] + b"\0" * (len(data) - 200))
    (d / "text.jpg").write_text("this is not an image")
    (d / "empty.png").write_bytes(b"")
    (d / "a directory.png").mkdir()
    save("gray.png", Image.fromarray(rgb).convert("L"))
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full((40, 50), 128, np.uint8)]), "RGBA"))
    save("palette.png", Image.fromarray(rgb).convert("P"))
    pal_t = Image.fromarray(rgb).convert("P")
    save("palette_transparent.png", pal_t, transparency=0)
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    save("bilevel.png", Image.fromarray(rgb).convert("1"))
    gray16 = rng.integers(0, 65536, (40, 50)).astype(np.uint16)
    save("gray16.png", Image.fromarray(gray16))
    out["gray16_values"] = gray16
    save("float.tiff", Image.fromarray(rgb[:, :, 0].astype(np.float32) / 255.0))
    raw16 = b"".join(b"\0" + rng.integers(0, 65536, 150).astype(">u2").tobytes() for _ in range(40))
    out["rgb16.png"] = _png(d / "rgb16.png", 50, 40, 16, 2, raw16)
    out["huge.png"] = _png(d / "huge.png", 40_000, 30_000, 8, 2, b"\0" * 64)  # header only
    save("tiny.png", Image.fromarray(rgb[:3, :3]))
    for name in ("truncated.jpg", "cut.jpg", "corrupt.jpg", "text.jpg", "empty.png", "a directory.png"):
        out[name] = d / name
    out["missing.jpg"] = d / "missing.jpg"
    return out


# --- the table of bad inputs --------------------------------------------------------------
# (id, explain kwargs or a callable(files) -> kwargs, exception, message fragment, CLI argv or None)
# CLI argv: "{f:NAME}" is replaced by the path of the file NAME.

_nan = torch.full((3, SIZE, SIZE), float("nan"))
_inf = np.full((SIZE, SIZE, 3), np.inf, dtype=np.float32)

BAD = [
    # images
    ("missing path", {"image": "{f:missing.jpg}"}, FileNotFoundError, "does not exist", ["{f:missing.jpg}"]),
    ("directory", {"image": "{f:a directory.png}"}, IsADirectoryError, "is a directory", ["{f:a directory.png}"]),
    ("text with .jpg", {"image": "{f:text.jpg}"}, ValueError, "not an image file", ["{f:text.jpg}"]),
    ("empty file", {"image": "{f:empty.png}"}, ValueError, "not an image file", ["{f:empty.png}"]),
    ("truncated JPEG", {"image": "{f:truncated.jpg}"}, ValueError, "truncated or corrupt", ["{f:truncated.jpg}"]),
    ("corrupt JPEG", {"image": "{f:corrupt.jpg}"}, ValueError, "truncated or corrupt", ["{f:corrupt.jpg}"]),
    ("huge PNG", {"image": "{f:huge.png}"}, ValueError, r"40000 x 30000 pixels: decoding it needs 3\.4 GiB", ["{f:huge.png}"]),
    ("URL", {"image": "https://example.com/cat.jpg"}, FileNotFoundError, "URLs are not fetched", ["https://example.com/cat.jpg"]),
    ("lazy truncated PIL image", lambda f: {"image": Image.open(f["cut.jpg"])}, ValueError, "PIL image cannot be decoded", None),
    ("tiny file", {"image": "{f:tiny.png}"}, ValueError, "3 x 3 pixels is too small", ["{f:tiny.png}"]),
    ("tiny tensor", {"image": torch.rand(3, 2, 5)}, ValueError, "5 x 2 pixels is too small", None),
    ("NaN tensor", {"image": _nan}, ValueError, "NaN or inf", None),
    ("inf array", {"image": _inf}, ValueError, "NaN or inf", None),
    ("normalized tensor", {"image": torch.rand(3, SIZE, SIZE) - 0.5}, ValueError, "already normalized", None),
    ("0..255 floats", {"image": torch.rand(3, SIZE, SIZE) * 255}, ValueError, "use uint8", None),
    ("rank 5", {"image": torch.rand(1, 1, 3, SIZE, SIZE)}, TypeError, r"got shape \(1, 1, 3, 16, 16\)", None),
    ("rank 1", {"image": torch.rand(SIZE)}, TypeError, r"got shape \(16,\)", None),
    ("2 channels", {"image": torch.rand(2, SIZE, SIZE)}, TypeError, r"1\|3 x H x W", None),
    ("channels last tensor", {"image": torch.rand(SIZE, SIZE, 3)}, TypeError, r"channels first", None),
    ("5-channel array", {"image": np.zeros((SIZE, SIZE, 5), np.uint8)}, TypeError, "channels last", None),
    ("int64 tensor", {"image": torch.zeros(3, SIZE, SIZE, dtype=torch.int64)}, TypeError, "dtype torch.int64", None),
    ("complex tensor", {"image": torch.zeros(3, SIZE, SIZE, dtype=torch.complex64)}, TypeError, "complex64", None),
    ("int32 array", {"image": np.zeros((SIZE, SIZE, 3), np.int32)}, TypeError, "dtype int32", None),
    ("meta tensor", {"image": torch.empty(3, SIZE, SIZE, device="meta")}, TypeError, "meta tensor", None),
    ("sparse tensor", {"image": torch.eye(SIZE).to_sparse()}, TypeError, "sparse", None),
    ("an int", {"image": 42}, TypeError, "type int is not supported", None),
    ("empty list", {"image": []}, ValueError, "empty list", None),
    ("empty batch", {"image": torch.rand(0, 3, SIZE, SIZE)}, ValueError, "empty batch", None),
    # arguments
    ("target out of range", {"target": 99}, LookupError, r"target=99 is out of range: the model has 5 classes \(0..4\)", ["--target", "1000"]),
    ("negative target", {"target": -1}, LookupError, "out of range", ["--target", "-1"]),
    ("unknown class name", {"target": "dgo"}, LookupError, r"not a class name.*closest: \['dog'", ["--target", "tabby kat"]),
    ("float target", {"target": 1.5}, TypeError, "target must be a class index", None),
    ("targets per image", {"image": [_image(), _image(1)], "target": [1]}, ValueError, "1 entries for 2 images", None),
    ("unknown layer", {"layer": "features.9"}, LookupError, r"does not exist.*candidates: \['features", ["--layer", "_blocks.99"]),
    ("layer of another model", {"layer": nn.ReLU()}, LookupError, "not a submodule", None),
    ("layer as int", {"layer": 3}, TypeError, "dotted module name", None),
    ("fc layer fastloc", {"layer": "fc"}, ValueError, r"'fc' outputs \(1, 5\).*no spatial map", ["--layer", "_fc"]),
    ("pooled layer fastloc", {"layer": "pool"}, ValueError, r"\(1, 8, 1, 1\).*no spatial map", ["--layer", "_avg_pooling"]),
    ("fc layer gradcam", {"layer": "fc", "method": "gradcam"}, ValueError, "'fc'.*no spatial map", ["--layer", "_fc", "--method", "gradcam"]),
    ("pooled layer gradcam", {"layer": "pool", "method": "gradcam"}, ValueError, "'pool'.*no spatial map", None),
    ("fc layer guided_gradcam", {"layer": "fc", "method": "guided_gradcam"}, ValueError, "no spatial map", None),
    ("fc layer fastloc_rescored", {"layer": "fc", "method": "fastloc_rescored"}, ValueError, "no spatial map", None),
    ("layer never called fastloc", {"layer": "unused"}, ValueError, "'unused' was not called", None),
    ("layer never called gradcam", {"layer": "unused", "method": "gradcam"}, ValueError, "'unused' was not called", None),
    ("k = 0", {"k": 0}, ValueError, "k=0 must be at least 1", ["-k", "0"]),
    ("k < 0", {"k": -3}, ValueError, "k=-3 must be at least 1", None),
    ("k as str", {"k": "5"}, TypeError, "k must be an integer, got '5'", None),
    ("k as bool", {"k": True}, TypeError, "k must be an integer", None),
    ("k > channels", {"k": 9}, ValueError, "k=9 is larger than the 8 channels of layer 'features'", ["-k", "113", "--layer", "_blocks.10"]),
    ("kmax > channels", {"method": "fastloc_rescored", "k": 2, "kmax": 9}, ValueError, "k=9 is larger than the 8 channels", None),
    ("kmax < k", {"method": "fastloc_rescored", "k": 5, "kmax": 3}, ValueError, "kmax=3 must be at least k=5", None),
    ("unknown method", {"method": "gradcam++"}, ValueError, r"method='gradcam\+\+' is not one of \['fastloc'", ["--method", "gradcam++"]),
    ("unknown rank_grad", {"rank_grad": "smooth"}, ValueError, r"rank_grad='smooth' is not one of \['guided', 'plain'\]", None),
    ("unknown passes", {"passes": "vmap"}, ValueError, "passes='vmap' is not one of", None),
    ("unknown combine", {"combine": "mean"}, ValueError, "combine='mean' is not one of", None),
    ("unknown components", {"components": "some"}, ValueError, "components='some' is not one of", None),
    ("threshold > 1", {"threshold": 2}, ValueError, r"threshold=2 must be a fraction", ["--threshold", "2"]),
    ("negative sigma", {"sigma": -1.0}, ValueError, "sigma=-1.0 must be a non-negative", None),
    ("batch_size 0", {"batch_size": 0}, ValueError, "batch_size=0 must be at least 1", None),
    ("unknown model name", lambda f: {"model": "resnet5O"}, LookupError, r"unknown model 'resnet5O'.*'resnet50'", ["--model", "resnet5O"]),
    ("model not a module", lambda f: {"model": object()}, TypeError, "must be a ModelBundle .* or an nn.Module, got object", None),
]


def _fill(value, files):
    if isinstance(value, str) and value.startswith("{f:"):
        return str(files[value[3:-1]])
    return value


@pytest.fixture(scope="module")
def net_bundle():
    model = Net()
    bundle = _bundle(model)
    _prepare(model)
    return bundle


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_api(case, files, net_bundle):
    _, kwargs, exc, match, _argv = case
    kwargs = kwargs(files) if callable(kwargs) else dict(kwargs)
    kwargs = {k: _fill(v, files) for k, v in kwargs.items()}
    model = net_bundle.model
    target_model = kwargs.pop("model", net_bundle)
    image = kwargs.pop("image", _image())
    strided = isinstance(image, torch.Tensor) and image.layout == torch.strided and not image.is_meta
    image_copy = image.clone() if strided else None
    before = (model_state(model), _outputs(model), _session_state())
    with pytest.raises(exc, match=match):
        if target_model == "resnet5O":
            fv.load_model(target_model)
        else:
            fv.explain(target_model, image, **kwargs)
    _assert_untouched(model, *before)
    if image_copy is not None:  # the caller's tensor is untouched
        assert torch.equal(image.nan_to_num(), image_copy.nan_to_num())


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("fastloc-viz")
    return lines[0]


@pytest.fixture()
def cli_lite0(lite0, monkeypatch):
    """The CLI's default model is the shared EfficientNet-Lite0 bundle (so its state can be
    checked after the command); other names and weight files load for real."""
    real = fv.load_model

    def load(name, **kw):
        return lite0 if name == "efficientnet_lite0" and not kw else real(name, **kw)

    monkeypatch.setattr(fv, "load_model", load)
    return lite0


CLI_BAD = [c for c in BAD if c[4] is not None]


@pytest.mark.parametrize("case", CLI_BAD, ids=[c[0] for c in CLI_BAD])
def test_bad_input_cli(case, files, cli_lite0, tmp_path, capsys):
    _, _kwargs, exc, _match, argv = case
    argv = [_fill(a, files) for a in argv]
    image = argv[0] if not argv[0].startswith("-") else str(files["ok.jpg"])
    rest = argv[1:] if not argv[0].startswith("-") else argv
    model = cli_lite0.model
    before = (model_state(model), _session_state())
    out = tmp_path / "report.html"
    code = cli.main(["explain", image, "--no-baselines", "--out", str(out), *rest])
    assert code != 0
    line = _one_error_line(capsys)
    if code == 2 and "invalid choice" not in line:
        assert f"error: {exc.__name__}" in line or any(
            f"error: {t.__name__}" in line for t in exc.__subclasses__()
        ), line
    assert not out.exists()
    assert_same_state(before[0], model_state(model))
    assert torch.equal(_session_state()["rng"], before[1]["rng"])


def test_cli_usage_errors_are_one_line(capsys):
    assert cli.main(["explain", "x.jpg", "-k", "five"]) == 2
    assert "invalid int value: 'five'" in _one_error_line(capsys)
    assert cli.main(["explain", "x.jpg", "--method", "nope"]) == 2
    line = _one_error_line(capsys)
    assert "method='nope' is not one of ['fastloc'" in line  # the registry's one message
    assert cli.main(["frobnicate"]) == 2
    assert "'explain'" in _one_error_line(capsys)


# --- real model: the same guarantees on EfficientNet-Lite0 --------------------------------


LITE0_BAD = [
    ({"layer": "_fc"}, ValueError, r"'_fc' outputs \(1, 1000\).*no spatial map"),
    ({"layer": "_avg_pooling", "method": "gradcam"}, ValueError, "'_avg_pooling'.*no spatial map"),
    ({"layer": "_blocks.10", "k": 113}, ValueError, "k=113 is larger than the 112 channels of layer '_blocks.10'"),
    ({"target": "tabbby"}, LookupError, r"closest: \['tabby'"),
    ({"target": 1000}, LookupError, "1000 classes"),
    ({"layer": "_blocks.99"}, LookupError, r"candidates: \['_blocks.9"),
]


@pytest.mark.parametrize("kwargs, exc, match", LITE0_BAD, ids=[str(c[0]) for c in LITE0_BAD])
def test_bad_input_lite0(lite0, kwargs, exc, match):
    model = lite0.model
    model.train()
    try:
        before = model_state(model)
        with pytest.raises(exc, match=match):
            fv.explain(lite0, fv.sample_image("chelsea"), **kwargs)
        assert_same_state(before, model_state(model))
    finally:
        model.eval()


def test_lite0_training_mode_restored_and_outputs_identical(lite0):
    model = lite0.model
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        ref_expl = fv.explain(lite0, fv.sample_image("chelsea"), k=3)
    model.train()
    try:
        before = model_state(model)
        e = fv.explain(lite0, fv.sample_image("chelsea"), k=3)
        assert_same_state(before, model_state(model))
        assert all(m.training for m in model.modules())
    finally:
        model.eval()
    assert e.target == ref_expl.target  # explained in eval mode, not with batch statistics
    np.testing.assert_allclose(e.saliency, ref_expl.saliency, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model(x), ref)


# --- conversions (documented, some with a warning) ---------------------------------------


CONVERSIONS = [
    ("gray.png", None),
    ("palette.png", None),
    ("palette_transparent.png", "alpha channel"),
    ("rgba.png", "alpha channel"),
    ("cmyk.jpg", "CMYK"),
    ("bilevel.png", None),
    ("gray16.png", None),
    ("rgb16.png", None),
    ("float.tiff", None),
]


@pytest.mark.parametrize("name, warning", CONVERSIONS, ids=[c[0] for c in CONVERSIONS])
def test_image_files_are_converted(files, name, warning, net_bundle):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = images.load_batch(files[name], (40, 50))
        e = fv.explain(net_bundle, files[name], k=2)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if warning is None:
        assert not any("image" in m or "CMYK" in m for m in messages), messages
    else:
        assert any(warning in m for m in messages), messages
    assert batch.shape == (1, 3, 40, 50) and batch.dtype == torch.float32
    assert 0 <= float(batch.min()) and float(batch.max()) <= 1
    assert e.saliency.shape == (SIZE, SIZE)


def test_conversions_keep_the_values(files):
    rgb = np.asarray(Image.open(files["gray.png"]))
    gray = images.load_batch(files["gray.png"], (40, 50))[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    np.testing.assert_allclose(gray[0].numpy(), rgb / 255.0, atol=1e-6)
    g16 = images.load_batch(files["gray16.png"], (40, 50))[0, 0].numpy()
    np.testing.assert_allclose(g16, files["gray16_values"] / 65535.0, atol=1e-6)  # 16 bits kept
    f = images.load_batch(files["float.tiff"], (40, 50))[0, 0].numpy()
    np.testing.assert_allclose(f, np.asarray(Image.open(files["float.tiff"])), atol=1e-6)
    with pytest.warns(UserWarning, match="alpha"):
        rgba = images.load_batch(files["rgba.png"], (40, 50))[0]
    src = np.asarray(Image.open(files["rgba.png"])).astype(np.float32) / 255
    composited = src[..., :3] * src[..., 3:] + (1 - src[..., 3:])  # on white
    np.testing.assert_allclose(rgba.permute(1, 2, 0).numpy(), composited, atol=1 / 255 + 1e-6)
    with pytest.warns(UserWarning, match="CMYK"):
        cmyk = images.load_batch(files["cmyk.jpg"], (40, 50))[0]
    ok = images.load_batch(files["ok.jpg"], (40, 50))[0]
    assert float((cmyk - ok).abs().mean()) < 0.05


IN_MEMORY = [
    ("float64 tensor", lambda: _image().double(), None),
    ("float16 tensor", lambda: _image().half(), None),
    ("uint8 tensor", lambda: (_image() * 255).to(torch.uint8), None),
    ("bool array", lambda: np.random.default_rng(0).random((SIZE, SIZE)) > 0.5, None),
    ("uint16 array", lambda: np.random.default_rng(0).integers(0, 65536, (SIZE, SIZE, 3)).astype(np.uint16), None),
    ("4-channel array", lambda: np.zeros((SIZE, SIZE, 4), np.uint8), "4th channel is dropped"),
    ("reversed strides", lambda: np.ascontiguousarray(np.random.default_rng(0).random((SIZE, SIZE, 3)))[::-1, ::-1], None),
    ("requires_grad tensor", lambda: _image().requires_grad_(True), None),
    ("grayscale H x W tensor", lambda: _image()[0], None),
    ("PIL image", lambda: Image.new("RGB", (30, 20), (10, 200, 30)), None),
]


@pytest.mark.parametrize("name, make, warning", IN_MEMORY, ids=[c[0] for c in IN_MEMORY])
def test_in_memory_images_are_converted(name, make, warning, net_bundle):
    image = make()
    before = image.detach().clone() if isinstance(image, torch.Tensor) else np.array(image)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = fv.explain(net_bundle, image, k=2)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if warning:
        assert any(warning in m for m in messages), messages
    else:
        assert not messages, messages
    assert e.saliency.shape == (SIZE, SIZE) and np.isfinite(e.saliency).all()
    after = image.detach() if isinstance(image, torch.Tensor) else np.array(image)
    assert (torch.equal(after, before) if isinstance(image, torch.Tensor) else np.array_equal(after, before))


def test_mixed_size_batch_is_resized_per_image(net_bundle):
    batch = [_image(0), torch.rand(3, 40, 24), np.zeros((9, 70, 3), np.uint8)]
    out = fv.explain(net_bundle, batch, k=2)
    assert len(out) == 3 and all(e.saliency.shape == (SIZE, SIZE) for e in out)
    alone = fv.explain(net_bundle, batch[1], k=2)
    np.testing.assert_allclose(out[1].saliency, alone.saliency, atol=1e-6)


def test_the_input_tensor_is_not_aliased(net_bundle):
    image = _image()
    e = fv.explain(net_bundle, image, k=2)
    image.zero_()
    assert e.image.max() > 0  # the explanation kept its own copy


def test_large_images_are_downscaled_with_a_warning(monkeypatch, files, tmp_path, net_bundle):
    monkeypatch.setattr(decode, "MAX_PIXELS", 300)
    for image in (np.zeros((40, 50, 3), np.uint8), torch.rand(3, 40, 50), np.random.default_rng(0).random((40, 50))):
        with pytest.warns(UserWarning, match=r"image of 50 x 40 pixels .* downscaling it by 3"):
            t = images.load_batch(image, (SIZE, SIZE))
        assert t.shape == (1, 3, SIZE, SIZE)
    with pytest.warns(UserWarning, match=r"downscaling it by 3"):
        images.load_batch(files["gray.png"], (SIZE, SIZE))
    big = tmp_path / "big.jpg"
    Image.new("RGB", (400, 300), (120, 30, 200)).save(big)
    with pytest.warns(UserWarning) as caught:
        t = images.load_batch(big, (SIZE, SIZE))
    assert any("400 x 300 pixels is decoded at a reduced scale, 50 x 38" in str(w.message) for w in caught)
    assert abs(float(t[0, 0].mean()) - 120 / 255) < 0.02
    # Block means keep the values: a constant image stays constant.
    with pytest.warns(UserWarning):
        t = images.load_batch(np.full((40, 50, 3), 0.25), (SIZE, SIZE))
    assert torch.allclose(t, torch.full_like(t, 0.25))


def test_decoded_size_limit_names_the_memory(monkeypatch, files):
    pil_limit = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(decode, "MAX_DECODE_BYTES", 1000)
    with pytest.raises(ValueError, match=r"50 x 40 pixels: decoding it needs 0.0 GiB.*MAX_DECODE_BYTES"):
        images.load_batch(files["ok.jpg"], (SIZE, SIZE))
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's own limit is restored


def test_a_1024_image_is_fine(net_bundle):
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no downscaling warning at this size
        e = fv.explain(net_bundle, image, k=2)
    assert e.saliency.shape == (SIZE, SIZE)


def test_big_photos_are_shrunk_in_8_bits_with_the_same_result(tmp_path):
    yy, xx = np.mgrid[0:1024, 0:1200]
    arr = np.stack([(xx // 3) % 256, (yy // 2) % 256, (xx + yy) // 9 % 256], axis=-1).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.png")
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=95)
    direct = images.load_batch(arr, (224, 224))  # arrays: one antialiased resize
    for source, tol in ((tmp_path / "big.png", 3 / 255), (Image.fromarray(arr), 3 / 255), (tmp_path / "big.jpg", 0.1)):
        got = images.load_batch(source, (224, 224))
        assert got.shape == direct.shape
        assert float((got - direct).abs().max()) < tol
        assert float((got - direct).abs().mean()) < 0.01


# --- models ------------------------------------------------------------------------------


class _Tuple(Net):
    def forward(self, x):
        return super().forward(x), {"aux": 1}


class _Dict(Net):
    def forward(self, x):
        return {"logits": super().forward(x), "features": None}


class _HF(Net):
    class Output:
        def __init__(self, logits):
            self.logits = logits

    def forward(self, x):
        return self.Output(super().forward(x))


class _Str(Net):
    def forward(self, x):
        return "not logits"


class _Rank3(Net):
    def forward(self, x):
        return super().forward(x)[:, :, None]


@pytest.mark.parametrize("method", fv.METHODS)
def test_non_tensor_outputs_give_the_same_explanation(method):
    ref = fv.explain(_bundle(Net()), _image(), method=method, k=2, kmax=4)
    for cls in (_Tuple, _Dict, _HF):
        model = cls()
        bundle = _bundle(model)  # load_model puts it in eval mode (documented)
        before = model_state(model)
        e = fv.explain(bundle, _image(), method=method, k=2, kmax=4)
        assert_same_state(before, model_state(model))
        assert e.target == ref.target
        np.testing.assert_array_equal(e.saliency, ref.saliency)


@pytest.mark.parametrize("cls, match", [(_Str, r"output str holds no N x classes"), (_Rank3, r"output \(1, 5, 1\)")])
@pytest.mark.parametrize("method", ["fastloc", "gradcam", "guided_backprop"])
def test_outputs_without_logits_are_refused(cls, match, method):
    model = cls()
    bundle = fv.ModelBundle(model=model, class_names=CLASSES, input_size=(SIZE, SIZE), default_layer="features")
    before = model_state(model)
    with pytest.raises(TypeError, match=match):
        fv.explain(bundle, _image(), method=method, k=2, kmax=4)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("method", fv.METHODS)
def test_training_mode_is_used_as_eval_and_restored(method):
    model = Net()
    bundle = _bundle(model)
    ref = fv.explain(bundle, _image(), method=method, k=2, kmax=4)
    _prepare(model)
    before = (model_state(model), _outputs(model), _session_state())
    e = fv.explain(bundle, _image(), method=method, k=2, kmax=4)
    _assert_untouched(model, *before)
    assert all(m.training for m in model.modules())
    np.testing.assert_array_equal(e.saliency, ref.saliency)


@pytest.mark.parametrize("method", fv.METHODS)
def test_no_grad_and_inference_mode_callers(method):
    bundle = _bundle(Net())
    ref = fv.explain(bundle, _image(), method=method, k=2, kmax=4)
    with torch.no_grad():
        a = fv.explain(bundle, _image(), method=method, k=2, kmax=4)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        image = _image()  # an inference tensor
        b = fv.explain(bundle, image, method=method, k=2, kmax=4)
        assert torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    np.testing.assert_array_equal(a.saliency, ref.saliency)
    np.testing.assert_array_equal(b.saliency, ref.saliency)


@pytest.mark.parametrize("method", ["fastloc", "guided_backprop", "guided_gradcam"])
def test_no_relu_model_warns_guided_equals_plain_gradient(method):
    model = Net(act=nn.Identity)
    with pytest.warns(UserWarning, match="guided backprop equals the plain gradient"):
        fv.explain(_bundle(model), _image(), method=method, k=2, kmax=4)


def test_relu_model_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fv.explain(_bundle(Net()), _image(), k=2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_model_in_another_dtype(dtype):
    ref = fv.explain(_bundle(Net()), _image(), k=2)
    model = Net().to(dtype)
    bundle = _bundle(model)
    before = model_state(model)
    e = fv.explain(bundle, _image(), k=2)
    assert_same_state(before, model_state(model))
    assert e.saliency.shape == (SIZE, SIZE) and np.isfinite(e.saliency).all()
    if dtype == torch.float64:
        assert e.target == ref.target
        np.testing.assert_allclose(e.saliency, ref.saliency, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("method", fv.METHODS)
def test_model_on_gpu_input_on_cpu_and_back(method):
    model = Net()
    ref = fv.explain(_bundle(model), _image(), method=method, k=2, kmax=4)
    gpu = _bundle(Net().cuda())
    before = model_state(gpu.model)
    for image in (_image(), _image().cuda()):
        e = fv.explain(gpu, image, method=method, k=2, kmax=4)
        np.testing.assert_allclose(e.saliency, ref.saliency, atol=1e-3)
    assert_same_state(before, model_state(gpu.model))


class _Interrupting(Net):
    """Raises KeyboardInterrupt in the n-th forward (``where="forward"``) or in the backward
    pass through its features (``where="backward"``), like a user pressing Ctrl-C."""

    def __init__(self):
        super().__init__()
        self.plan = {"where": None, "after": 0}  # a plain attribute: not in the state dict

    def forward(self, x):
        plan = self.plan
        if plan["where"] == "forward":
            plan["after"] -= 1
            if plan["after"] < 0:
                raise KeyboardInterrupt
        h = self.features(x)
        if plan["where"] == "backward" and h.requires_grad:

            def interrupt(grad):
                raise KeyboardInterrupt

            h.register_hook(interrupt)
        return self.fc(self.pool(h).flatten(1))


@pytest.mark.parametrize("where, after", [("forward", 0), ("forward", 1), ("backward", 0)])
@pytest.mark.parametrize("method", fv.METHODS)
def test_keyboard_interrupt_leaves_the_model_intact(method, where, after):
    model = _Interrupting()
    bundle = _bundle(model)
    _prepare(model)
    before = (model_state(model), _outputs(model), _session_state())
    model.plan.update(where=where, after=after)
    try:
        fv.explain(bundle, _image(), method=method, k=2, kmax=4)
    except KeyboardInterrupt:
        pass
    else:
        assert (where, after, method) == ("forward", 1, "fastloc")  # its only forward passed
    model.plan.update(where=None)
    _assert_untouched(model, *before)
    # and it still works afterwards
    fv.explain(bundle, _image(), method=method, k=2, kmax=4)


def test_keyboard_interrupt_in_the_cli_exits_130(cli_lite0, files, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fv, "explain", interrupted)
    assert cli.main(["explain", str(files["ok.jpg"]), "--no-baselines"]) == 130
    assert "interrupted" in _one_error_line(capsys)


# --- weight files --------------------------------------------------------------------------


class _Getpid:
    """Pickles as a call of os.getpid: harmless, but code that weights_only must refuse."""

    def __reduce__(self):
        return (os.getpid, ())


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    import torchvision

    d = tmp_path_factory.mktemp("weights with spaces ü")
    torch.manual_seed(0)
    net = torchvision.models.get_model("squeezenet1_1", weights=None)
    tuned = torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=7)
    out = {name: d / name for name in ("plain.pth", "checkpoint.pth", "dataparallel.pth", "finetuned.pth", "whole model.pth", "code.pth", "junk.pth", "truncated.pth", "list.pth", "other arch.pth")}
    torch.save(net.state_dict(), out["plain.pth"])
    torch.save({"epoch": 3, "state_dict": net.state_dict()}, out["checkpoint.pth"])
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, out["dataparallel.pth"])
    torch.save(tuned.state_dict(), out["finetuned.pth"])
    torch.save(net, out["whole model.pth"])
    torch.save({"a": _Getpid()}, out["code.pth"])
    out["junk.pth"].write_bytes(b"these bytes are not a checkpoint")
    data = out["plain.pth"].read_bytes()
    out["truncated.pth"].write_bytes(data[: len(data) // 2])
    torch.save([1, 2, 3], out["list.pth"])
    torch.save(torchvision.models.get_model("squeezenet1_0", weights=None).state_dict(), out["other arch.pth"])
    out["missing.pth"] = d / "missing.pth"
    out["dir"] = d
    out["_net"] = net
    return out


WEIGHTS_BAD = [
    ("whole model.pth", ValueError, r"needs arbitrary pickled code to load \(it references torchvision\.models\.squeezenet\.SqueezeNet\).*re-save it as a plain state dict"),
    ("code.pth", ValueError, r"arbitrary pickled code .*getpid"),
    ("junk.pth", ValueError, "not a PyTorch weight file"),
    ("truncated.pth", ValueError, "truncated or corrupt"),
    ("list.pth", ValueError, "holds a list, not a state dict"),
    ("other arch.pth", ValueError, r"does not fit squeezenet1_1: parameters .* another shape \(e\.g\. features\.0\.weight"),
    ("missing.pth", FileNotFoundError, "does not exist"),
    ("dir", IsADirectoryError, "is a directory"),
]


@pytest.mark.parametrize("name, exc, match", WEIGHTS_BAD, ids=[c[0] for c in WEIGHTS_BAD])
def test_bad_weight_files(weight_files, name, exc, match, capsys):
    path = weight_files[name]
    content = path.read_bytes() if path.is_file() else None
    with pytest.raises(exc, match=match):
        fv.load_model("squeezenet1_1", weights=str(path))
    assert cli.main(["explain", "sample:chelsea", "--model", "squeezenet1_1", "--weights", str(path)]) == 2
    assert f"error: {exc.__name__}" in _one_error_line(capsys)
    if content is not None:
        assert path.read_bytes() == content  # the user's file is untouched


@pytest.mark.parametrize("name", ["plain.pth", "checkpoint.pth", "dataparallel.pth"])
def test_weight_files_load(weight_files, name):
    bundle = fv.load_model("squeezenet1_1", weights=Path(weight_files[name]))
    ref = weight_files["_net"].state_dict()
    got = bundle.model.state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    assert len(bundle.class_names) == 1000 and bundle.class_names[0] == "tench"
    assert not bundle.model.training


def test_finetuned_head_is_rebuilt(weight_files):
    bundle = fv.load_model("squeezenet1_1", weights=str(weight_files["finetuned.pth"]))
    assert bundle.class_names == [f"class {i}" for i in range(7)]
    named = fv.load_model("squeezenet1_1", weights=str(weight_files["finetuned.pth"]), class_names=list("abcdefg"))
    assert named.class_names == list("abcdefg")
    e = fv.explain(named, _image(), method="gradcam", target="c")
    assert e.target == 2 and e.target_name == "c"


def test_weights_into_your_own_module(weight_files):
    import torchvision

    mine = torchvision.models.get_model("squeezenet1_1", weights=None)
    bundle = fv.load_model(mine, weights=str(weight_files["plain.pth"]))
    assert bundle.model is mine
    assert torch.equal(mine.features[0].weight, weight_files["_net"].features[0].weight)


def test_cli_weights_and_paths_with_spaces_and_non_ascii(weight_files, files, tmp_path, capsys):
    import json

    out = tmp_path / "sortie é ü" / "rapport final ñ.html"
    code = cli.main(
        ["explain", str(files["gray.png"]), "--model", "squeezenet1_1", "--weights", str(weight_files["plain.pth"]),
         "--no-baselines", "-k", "2", "--out", str(out), "--json"]
    )
    assert code == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out)
    assert doc["report"] == str(out) and out.read_text(encoding="utf-8").lstrip().startswith("<!DOCTYPE html>")
    assert doc["image"] == str(files["gray.png"])


# --- output locations and atomic writes ---------------------------------------------------


def test_cli_unwritable_output_locations(cli_lite0, files, tmp_path, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    for out, exc, named in (
        (blocker / "report.html", "NotADirectoryError", blocker),
        (blocker / "sub" / "report.html", "NotADirectoryError", blocker / "sub"),
        (tmp_path, "IsADirectoryError", tmp_path),
    ):
        assert cli.main(["explain", str(files["ok.jpg"]), "--no-baselines", "--out", str(out)]) == 2
        line = _one_error_line(capsys)
        assert exc in line and str(named) in line, line
    assert blocker.read_text() == "x"


def test_unwritable_directory_is_named(tmp_path, monkeypatch):
    from fastloc_viz.core import files

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match=r"cannot write the report to .*out\.html.*not writable"):
        files.write_text_atomic(tmp_path / "out.html", "x", what="report")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_directory(cli_lite0, files, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert cli.main(["explain", str(files["ok.jpg"]), "--no-baselines", "--out", str(ro / "r.html")]) == 2
        assert "PermissionError" in _one_error_line(capsys)
    finally:
        ro.chmod(0o700)


def test_interrupted_report_write_keeps_the_old_file(cli_lite0, files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report.html"
    out.write_text("the good old report")

    def interrupted_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted_replace)
    assert cli.main(["explain", str(files["ok.jpg"]), "--no-baselines", "-k", "2", "--out", str(out)]) == 130
    assert out.read_text() == "the good old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary left


def test_evaluate_outputs_are_written_atomically(tmp_path, monkeypatch):
    from fastloc_viz.evaluation import command
    from fastloc_viz.evaluation.localization import JSON_KEYS
    from fastloc_viz.views.evaluation_plots import evaluation_pages

    results = {
        "n": 1, "model": "m", "data": "d", "layer": None, "thresholds": [0.5], "metrics": ["localization"],
        "methods": {"gradcam": {k: 0.5 for k in (*JSON_KEYS, "best_threshold_50", "peak_memory_mb")}
                    | {"curves": {"largest_50": [0.5], "all_50": [0.5]}}},
    }
    paths = command.write_outputs(results, tmp_path, pages=evaluation_pages)
    good = {p: p.read_bytes() for p in paths}

    def interrupted_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        command.write_outputs({**results, "n": 2}, tmp_path, pages=evaluation_pages)
    assert {p: p.read_bytes() for p in paths} == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_cli_evaluate_checks_its_output_directory_first(shared_data, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("x")
    argv = ["evaluate", str(shared_data), "--limit", "1", "--no-cache", "--no-progress"]
    assert cli.main([*argv, "--out", str(blocker)]) == 2
    assert "NotADirectoryError: --out" in _one_error_line(capsys)
    assert cli.main([*argv, "--out", str(blocker / "sub")]) == 2
    assert "cannot create the output directory" in _one_error_line(capsys)
    assert blocker.read_text() == "x"
