"""Layer discovery: a layer by name, the default probe layer (a dry run), the layer menu."""

from __future__ import annotations

import difflib
import logging
import weakref
from collections.abc import Callable

import torch
from torch import nn

from .state import forward_hooks, preserved
from .tokens import reach, reads_class_token, token_grid

log = logging.getLogger("fastloc_viz")


def spatial_layer_names(model: nn.Module) -> list[str]:
    """Names of the conv / block-like submodules (candidates for a probe layer)."""
    return [
        n
        for n, m in model.named_modules()
        if n and (isinstance(m, (nn.Conv2d, nn.ReLU, nn.ReLU6)) or len(list(m.children())) > 0)
    ]


def input_channels(model: nn.Module) -> int | None:
    """The channels the model takes: the ``in_channels`` of its first ``nn.Conv2d`` (the stem,
    in registration order); ``None`` when it has none (or only a lazy one)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels > 0:
            return int(m.in_channels)
    return None


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Find a layer by dotted name or by module object; returns ``(name, module)``.

    Raises:
        LookupError: no such submodule (the message lists the closest names).
        TypeError: ``layer`` is neither a string nor a module.
    """
    if isinstance(layer, nn.Module):
        for name, m in model.named_modules():
            if m is layer:
                return name, m
        raise LookupError(
            f"layer {type(layer).__name__} is not a submodule of the model; pass one of its "
            f"modules or a dotted name such as {spatial_layer_names(model)[-3:]}"
        )
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted module name or an nn.Module, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return layer, modules[layer]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    hint = close or spatial_layer_names(model)[-8:]
    raise LookupError(f"layer {layer!r} does not exist in the model; candidates: {hint}")


def _dry_run(model: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, tuple[int, ...], bool]], dict[str, int]]:
    """One no-grad forward of ``x``: each module's spatial output as ``(name, N x C x h x w
    shape, is_tokens)`` (token outputs by their grid, see :mod:`fastloc_viz.model.tokens`) and how
    often each module ran. Pooling layers are skipped: they only repeat the map before them."""
    outputs: list[tuple[str, tuple[int, ...], bool]] = []
    calls: dict[str, int] = {}
    size = tuple(x.shape[-2:])

    def make_hook(name: str):
        def hook(_m, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                outputs.append((name, tuple(out.shape), False))
            elif isinstance(out, torch.Tensor) and out.dim() == 3:
                grid = token_grid(model, tuple(out.shape), size)
                if grid is not None:
                    outputs.append((name, (out.shape[0], out.shape[2], grid.h, grid.w), True))

        return hook

    modules = {n: m for n, m in model.named_modules() if n and "Pool" not in type(m).__name__}
    with preserved(model), forward_hooks(modules, make_hook), torch.no_grad():
        model(x)
    return outputs, calls


def patch_embeddings(model: nn.Module) -> set[str]:
    """Names of the patch-embedding / patchify-stem convolutions (kernel == stride >= 4: a
    ViT's ``patch_embed.proj`` or ``conv_proj``, ConvNeXt's stem) and the modules holding them."""
    convs = {n: m for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d)}
    found = {n for n, m in convs.items() if m.kernel_size == m.stride and min(m.stride) >= 4}
    for name in list(found):  # the modules around it that hold no other convolution
        parts = name.split(".")
        for i in range(1, len(parts)):
            holder = ".".join(parts[:i])
            if all(c == name or not c.startswith(holder + ".") for c in convs):
                found.add(holder)
    return found


def _in_block_list(model: nn.Module, name: str) -> bool:
    """Whether ``name`` is an item of a ``Sequential`` / ``ModuleList`` (a repeated block)."""
    parent, _, _ = name.rpartition(".")
    return bool(parent) and isinstance(model.get_submodule(parent), (nn.Sequential, nn.ModuleList))


def default_layer(model: nn.Module, x: torch.Tensor, stride: int = 32, as_logits: Callable | None = None) -> str:
    """Pick a probe layer by a dry forward: among the shallowest modules whose output is the
    stride-``stride`` feature map (``h == ceil(H / stride)``) and that run once per forward,
    the last to finish (a whole block, e.g. ResNet's ``layer3``, VGG's ``features.29``).
    Falls back to the last spatial (4-D, h > 1) output. ``x`` is one normalized input batch.

    A Vision Transformer (blocks whose ``N x T x C`` tokens tile the input, see
    :mod:`fastloc_viz.model.tokens`) gets the last block whose patch tokens reach the logits, found
    by one backward pass (``as_logits`` turns the model's output into logits): the last block
    under an average-pooling head, the one before it under a class-token head (after the last
    block the head reads only the class token, so the patch tokens' gradient is exactly zero
    there). A block, not the final norm after it: the norm rescales each token on its own, is
    not in every ViT (``fc_norm`` replaces it under average pooling), and under a class-token
    head its patch tokens do not reach the logits either. Never the patch embedding: its map is
    a linear projection of the pixels, not what the model made of them.

    Raises:
        ValueError: no spatial output, or only the patch embedding's (then pass ``layer=``).
    """
    outputs, calls = _dry_run(model, x)
    once = [(n, s, tok) for n, s, tok in outputs if calls[n] == 1]
    blocks = [n for n, _, tok in once if tok and _in_block_list(model, n)]
    blocks = [n for n in blocks if n.count(".") == min(b.count(".") for b in blocks)]  # not an MLP's
    if blocks:
        return _last_reaching_block(model, x, blocks, as_logits)
    stem = patch_embeddings(model)
    once = [(n, s) for n, s, tok in once if not tok and n not in stem]
    height, width = x.shape[-2:]
    want = (-(-height // stride), -(-width // stride))
    pick = [n for n, s in once if s[-2:] == want] or [n for n, s in once if s[-1] > 1 and s[-2] > 1]
    if pick:  # the shallowest such modules (whole blocks, not a conv inside the next stage)
        depth = min(n.count(".") for n in pick)
        pick = [n for n in pick if n.count(".") == depth]
    elif any(n in stem for n, _, _ in outputs):
        raise ValueError(
            f"the model's only spatial output is its patch embedding {sorted(stem)[0]!r}, a linear "
            "projection of the pixels, and no block's output could be read as a patch grid; pass "
            "layer= explicitly (a late block)"
        )
    else:
        raise ValueError(
            "the model has no module with a spatial (N x C x h x w) output to probe; "
            "pass layer= explicitly"
        )
    log.info("fastloc_viz: probe layer %r picked by a dry run (stride-%d map)", pick[-1], stride)
    return pick[-1]


def _last_reaching_block(model: nn.Module, x: torch.Tensor, blocks: list[str], as_logits) -> str:
    """The last of ``blocks`` (token outputs) whose patch tokens get a non-zero gradient from
    every image's top logit."""
    outs: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_m, _inp, out):
            outs[name] = out.clone()
            return outs[name]

        return hook

    with preserved(model), forward_hooks({n: model.get_submodule(n) for n in blocks}, make_hook):
        out = model(x.detach().requires_grad_(True))
        logits = as_logits(out) if as_logits else out
        score = logits.max(dim=1).values.sum()
        grads = torch.autograd.grad(score, [outs[n] for n in blocks], allow_unused=True)
    size = tuple(x.shape[-2:])
    for name, g in reversed(list(zip(blocks, grads))):
        if g is None:
            continue
        patches, prefix = reach(g, token_grid(model, tuple(g.shape), size))
        if bool(patches.all()):
            log.info("fastloc_viz: probe layer %r picked by a dry run (the last block whose tokens reach the logits)", name)
            return name
        if bool(prefix.any()):  # the class token reaches the logits, the patches do not: go on
            continue
    # No gradient at all (an untrained, zero-initialized head): the model's declared pooling decides.
    name = blocks[-2] if len(blocks) > 1 and reads_class_token(model) else blocks[-1]
    log.info("fastloc_viz: probe layer %r picked by the model's pooling (its logits have no gradient)", name)
    return name


_OPTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probe_layer_options(model: nn.Module, current: str | None = None, input_size: tuple[int, int] = (224, 224)) -> list[str]:
    """Probe-layer names worth offering in a menu, in forward order, plus ``current``.

    The candidates are the blocks of the model's top-level ``Sequential`` / ``ModuleList``
    containers and its top-level convolutions; one dry forward at ``input_size`` (cached per
    model) keeps the late ones: a spatial map at stride >= 16 of the input, or, for a Vision
    Transformer, the later half of its blocks (all of them are at the patch stride) up to the
    last whose patch tokens reach the logits (see :func:`default_layer`). Never the stem, the
    patch embedding or the first blocks. A small model that never reaches stride 16
    keeps its coarsest maps; one whose dry run fails keeps every candidate.
    """
    names: list[str] = []
    for name, mod in model.named_modules():
        if not name:
            continue
        parent_name, _, _ = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if parent_name.count(".") <= 1 and isinstance(parent, (nn.Sequential, nn.ModuleList)) and parent is not model:
            names.append(name)
        elif not parent_name and isinstance(mod, nn.Conv2d):
            names.append(name)
    key = (tuple(int(v) for v in input_size), tuple(names))
    cache = _OPTIONS.setdefault(model, {})
    if key not in cache:
        try:
            cache[key] = _late_layers(model, names, key[0])
        except (RuntimeError, ValueError, TypeError) as e:  # a model that needs other inputs
            log.info("fastloc_viz: layer options not filtered (dry run failed: %s)", e)
            cache[key] = names
    options = list(cache[key])
    if current and current not in options:
        options.append(current)
    return options


def _late_layers(model: nn.Module, names: list[str], size: tuple[int, int]) -> list[str]:
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    channels = input_channels(model) or 3
    x = torch.zeros(1, channels, *size, dtype=dtype, device=param.device if param is not None else "cpu")
    outputs, calls = _dry_run(model, x)
    grids = {n: (s, tok) for n, s, tok in outputs if calls[n] == 1}
    stem = patch_embeddings(model)
    spatial = [n for n in names if n in grids and n not in stem and grids[n][0][-1] * grids[n][0][-2] > 1]
    if not spatial:
        return names
    tokens = [n for n in spatial if grids[n][1]]
    if tokens:  # the later half, up to the last block whose patch tokens reach the logits
        try:
            last = tokens.index(_last_reaching_block(model, x, tokens, None)) + 1
        except (RuntimeError, ValueError, TypeError, AttributeError):  # output not a logits tensor
            last = len(tokens)
        return tokens[min(len(tokens) // 2, last - 1) : last]
    stride = {n: size[0] / grids[n][0][-2] for n in spatial}
    late = [n for n in spatial if stride[n] >= 16]
    return late or [n for n in spatial if stride[n] == max(stride.values())]
