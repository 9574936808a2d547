"""Weight files: read a state dict safely, and load it into a bundle's model (a torchvision or
timm classifier head of another size is rebuilt to fit)."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import timm_models

if TYPE_CHECKING:
    from .bundle import ModelBundle


def weights_file(weights) -> Path | None:
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


def load_state(bundle: ModelBundle, state: dict, file: Path, rebuild: str | None) -> None:
    """Load ``state`` into the bundle's model (rebuilding a torchvision head of another size)."""
    missing, unexpected, shapes = _mismatch(bundle.model, state)
    n_classes = {s[0] for _, s, o in shapes if len(o) >= 1 and o[0] == len(bundle.class_names) and s[1:] == o[1:]}
    if rebuild and shapes and not missing and not unexpected and len(n_classes) == 1 and len(
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
