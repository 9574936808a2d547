"""Token layers: a Vision Transformer block's ``N x T x C`` tokens as an ``N x C x h x w`` grid.

A ViT cuts the image into ``h x w`` patches, one token each, and puts ``p`` prefix tokens in
front (a class token, a distillation token, register tokens). A block's output holds
``T = p + h * w`` tokens of ``C`` features; dropping the prefix and reshaping the rest gives a
map on the patch grid, which every probe-layer method then treats like a convolution's
output (as pytorch-grad-cam's ``reshape_transform`` does). The reshape only moves and drops
entries, so the gradient of anything w.r.t. the grid is the gradient w.r.t. the tokens put
through the same reshape.

The patch size and prefix count are read from the model (timm: ``patch_embed.patch_size`` and
``num_prefix_tokens``; torchvision's ``VisionTransformer``: ``patch_size`` and one class
token); for other models, the smallest prefix (up to 8) that leaves a grid of the input's
shape at an integer patch size from 4 to 64. Nothing here runs or changes a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TokenGrid", "as_map", "patch_geometry", "reach", "reads_class_token", "require_reach", "token_grid"]

MAX_PREFIX = 8  # class + distillation + register tokens, for models that do not declare them


@dataclass(frozen=True)
class TokenGrid:
    """How ``N x T x C`` tokens map to an ``N x C x h x w`` grid: skip ``prefix``, reshape."""

    prefix: int
    h: int
    w: int

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """``N x T x C`` tokens -> ``N x C x h x w`` (differentiable)."""
        n, _, c = tokens.shape
        return tokens[:, self.prefix :].transpose(1, 2).reshape(n, c, self.h, self.w)

    def to_tokens(self, grid: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
        """The inverse: ``N x C x h x w`` -> ``N x T x C``, the prefix tokens set to ``fill``."""
        n, c = grid.shape[:2]
        front = torch.full((n, self.prefix, c), fill, dtype=grid.dtype, device=grid.device)
        return torch.cat([front, grid.flatten(2).transpose(1, 2)], dim=1)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def patch_geometry(model: nn.Module) -> tuple[int | None, tuple[int, int] | None]:
    """``(prefix tokens, (patch h, patch w))`` as the model declares them, else ``(None, None)``."""
    for m in model.modules():
        embed = getattr(m, "patch_embed", None)
        if embed is not None and getattr(embed, "patch_size", None) is not None:  # timm
            prefix = getattr(m, "num_prefix_tokens", None)
            return (None if prefix is None else int(prefix)), _pair(embed.patch_size)
        if isinstance(getattr(m, "patch_size", None), int) and hasattr(m, "class_token"):  # torchvision
            return 1, _pair(m.patch_size)
    return None, None


def token_grid(model: nn.Module, shape: tuple[int, ...], size: tuple[int, int]) -> TokenGrid | None:
    """The grid of an output of ``shape`` for an ``H x W`` input, or ``None`` when it is not
    ``N x T x C`` tokens that tile the input."""
    if len(shape) != 3:
        return None
    t, (height, width) = int(shape[1]), (int(size[0]), int(size[1]))
    prefix, patch = patch_geometry(model)
    if patch is not None:
        h, w = height // patch[0], width // patch[1]
        p = t - h * w
        ok = h * w > 0 and p >= 0 and (prefix is None or p == prefix)
        return TokenGrid(p, h, w) if ok else None
    for p in range(min(t, MAX_PREFIX + 1)):
        s = round(math.sqrt(height * width / (t - p)))
        if 4 <= s <= 64 and height % s == 0 and width % s == 0 and (height // s) * (width // s) == t - p:
            return TokenGrid(p, height // s, width // s)
    return None


def as_map(model: nn.Module, name: str, out, size: tuple[int, int]) -> tuple[object, TokenGrid | None]:
    """A probe layer's output as a map: ``(out, None)`` for anything but 3-D tokens,
    ``(grid(out), grid)`` for tokens.

    Raises:
        ValueError: 3-D output that is not tokens tiling the ``H x W`` input.
    """
    if not (isinstance(out, torch.Tensor) and out.dim() == 3):
        return out, None
    grid = token_grid(model, tuple(out.shape), size)
    if grid is None:
        prefix, patch = patch_geometry(model)
        declared = f"patch size {patch}, {prefix} prefix tokens" if patch else "no declared patch size"
        raise ValueError(
            f"layer {name!r} outputs {tuple(out.shape)}, not N x T x C tokens that tile the "
            f"{size[0]} x {size[1]} input ({declared}); pick a transformer block or a conv layer"
        )
    return grid(out), grid


def reach(grad: torch.Tensor, grid: TokenGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, whether the patch tokens and the prefix tokens get any gradient: two ``N``
    bool tensors from the tokens' gradient ``grad`` (``N x T x C``)."""
    patches = grad[:, grid.prefix :].flatten(1).abs().amax(dim=1) > 0
    prefix = grad[:, : grid.prefix].flatten(1).abs().amax(dim=1) > 0 if grid.prefix else torch.zeros_like(patches)
    return patches, prefix


def require_reach(name: str, grad: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
    """The tokens' gradient ``grad`` on the patch grid, unless the prefix tokens get gradient
    and the patch tokens none (exactly zero): as after the last block of a class-token ViT,
    whose head reads only the class token. (All zero, as under an untrained zero-initialized
    head, is let through: then every layer's maps are zero, as they are for a CNN.)

    Raises:
        ValueError: the layer's patch tokens do not reach the logits.
    """
    patches, prefix = reach(grad, grid)
    if bool((prefix & ~patches).any()):
        raise ValueError(
            f"the patch tokens of layer {name!r} do not reach the logits (their gradient is exactly "
            "zero: after the last block the head reads only the class token); probe an earlier "
            "block, such as the one before it (layer=None picks it)"
        )
    return grid(grad)


def reads_class_token(model: nn.Module) -> bool:
    """Whether the model's head reads only the class token (torchvision's ViT, a timm model
    with ``global_pool="token"``); used only when gradients cannot tell (a zero head)."""
    for m in model.modules():
        if getattr(m, "global_pool", None) == "token" or (
            isinstance(getattr(m, "patch_size", None), int) and hasattr(m, "class_token")
        ):
            return True
    return False
