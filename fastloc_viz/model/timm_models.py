"""timm models: build one by name, and read a timm model's ``pretrained_cfg``.

timm is an optional dependency (``pip install 'fastloc-viz[timm]'``), imported here only when
a timm model is asked for by name. A timm ``nn.Module`` is recognized by its
``pretrained_cfg`` attribute, without importing anything. From the cfg come the input size,
mean, std and resize interpolation; class names come from timm's offline ImageNet label
tables (``timm.data.ImageNetInfo``) when the model's class count matches one of them.

Pretrained weights not in the cache are downloaded by timm, which retries for about a minute
when there is no network. So before that, a missing download is refused at once with what to
do when the hub is off: ``HF_HUB_OFFLINE`` is set, or a 3 s connection probe to the weights'
host fails (skipped behind a proxy).
"""

from __future__ import annotations

import difflib
import os
import socket
import sys
import threading
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = ["PREFIX", "create", "pretrained_config", "timm_name"]

PREFIX = "timm/"
# timm's interpolation names -> the ones images are resized with (fastloc_viz.imaging.decode.resize).
_INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "lanczos": "bicubic"}


def timm_name(model: str) -> str | None:
    """The timm model name in ``"timm/<name>"``, else ``None``."""
    return model[len(PREFIX) :] if model.lower().startswith(PREFIX) else None


def _timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            "timm models need timm: pip install timm (or pip install 'fastloc-viz[timm]')"
        ) from e
    return timm


def create(name: str, pretrained: bool, download: bool = True, num_classes: int | None = None) -> nn.Module:
    """``timm.create_model(name, pretrained=...)``, in eval mode.

    Raises:
        ImportError: timm is not installed.
        LookupError: timm has no model ``name`` (the closest names are suggested).
        FileNotFoundError: pretrained weights not on this machine and ``download=False``.
        RuntimeError: the download failed, or cannot start (no network, ``HF_HUB_OFFLINE``).
    """
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        raise LookupError(
            f"timm has no model {name!r}; close matches: {close or 'none'} "
            "(timm.list_models('*vit*') lists them by pattern)"
        )
    arch = name.split(".")[0]
    if "." in name and name not in timm.list_pretrained(arch + ".*"):
        raise LookupError(f"timm has no pretrained tag {name!r}; choose one of {timm.list_pretrained(arch + '.*')}")
    if pretrained and not _cached(timm, name):
        if not download:
            raise FileNotFoundError(_weights_help(name, "download=False forbids fetching them"))
        offline = _offline(timm, name)
        if offline:  # fail now, not after timm's minute of retries
            raise RuntimeError(_weights_help(name, offline))
    extra = {} if num_classes is None else {"num_classes": num_classes}
    try:
        return timm.create_model(name, pretrained=pretrained, **extra).eval()
    except (OSError, RuntimeError) as e:  # no network, a failed download
        if not pretrained:
            raise
        raise RuntimeError(_weights_help(name, f"the download failed: {str(e).splitlines()[0][:200]}")) from e


def _cached(timm, name: str) -> bool:
    """Whether ``name``'s pretrained weights are already in the Hugging Face or torch hub cache."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return False
    if getattr(cfg, "file", None):
        return os.path.exists(cfg.file)
    if getattr(cfg, "hf_hub_id", None):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        repo = cfg.hf_hub_id.split("@")[0]
        files = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files):
            return True
    if getattr(cfg, "url", None):
        return os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url)))
    return False


def _offline(timm, name: str) -> str | None:
    """Why the weights of ``name`` cannot be downloaded now, or ``None`` (try it)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    cfg = timm.models.get_pretrained_cfg(name)
    if getattr(cfg, "hf_hub_id", None):
        try:
            from huggingface_hub import constants
        except ImportError:
            return None
        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
        url = constants.ENDPOINT
    else:
        url = getattr(cfg, "url", None)
    import urllib.request

    if not url or urllib.request.getproxies():  # behind a proxy a direct probe proves nothing
        return None
    return _unreachable(url)


def _unreachable(url: str, timeout: float = 3.0) -> str | None:
    """``None`` when a TCP connection to ``url``'s host opens within ``timeout`` seconds, else
    why not (the probe runs on a thread, so a name lookup that hangs cannot hold us longer)."""
    u = urlparse(url)
    host, port = u.hostname, u.port or (80 if u.scheme == "http" else 443)
    result: dict[str, Any] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=probe, name="fastloc-viz-hub-probe", daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if result.get("ok"):
        return None
    return f"{host} cannot be reached ({result.get('error') or f'no answer in {timeout:.0f} s'})"


def _weights_help(name: str, why: str) -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE as cache
    except ImportError:
        cache = "~/.cache/huggingface/hub"
    return (
        f"pretrained timm weights for {name!r} are not on this machine, and {why}. Either copy them "
        f"here: on a connected machine run `python -c \"import timm; timm.create_model('{name}', "
        f"pretrained=True)\"` and copy its Hugging Face cache (~/.cache/huggingface/hub) to {cache} on this "
        "machine; or pass weights=None to build the architecture untrained (and weights='file.pt' for "
        "a state dict of your own)"
    )


def _cfg_dict(model: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is not None and not isinstance(cfg, dict) and hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    return cfg if isinstance(cfg, dict) else None


def pretrained_config(model: nn.Module) -> dict[str, Any]:
    """What a timm model's ``pretrained_cfg`` says about its input: ``input_size`` ``(H, W)``,
    ``mean``, ``std``, ``interpolation`` and ``class_names`` (each only when present and
    usable; ``{}`` for a model without a cfg)."""
    cfg = _cfg_dict(model)
    if cfg is None:
        return {}
    out: dict[str, Any] = {}
    size = cfg.get("input_size")
    if isinstance(size, (tuple, list)) and len(size) == 3:
        out["input_size"] = (int(size[1]), int(size[2]))
    for key in ("mean", "std"):
        v = cfg.get(key)
        if isinstance(v, (tuple, list)) and len(v) == 3:
            out[key] = tuple(float(c) for c in v)
    interp = cfg.get("interpolation")
    if isinstance(interp, str):
        out["interpolation"] = _INTERPOLATION.get(interp.lower(), "bilinear")
    names = _class_names(model)
    if names:
        out["class_names"] = names
    return out


def _class_names(model: nn.Module) -> list[str] | None:
    """timm's ImageNet class descriptions when the model's class count matches a subset."""
    if "timm" not in sys.modules:  # a module with a pretrained_cfg but no timm: no tables
        return None
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:  # timm < 0.9.8
        return None
    subset = infer_imagenet_subset(model)
    n = getattr(model, "num_classes", None)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    if n != info.num_classes():
        return None
    return [info.index_to_description(i) for i in range(n)]
