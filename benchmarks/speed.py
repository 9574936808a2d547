"""Speed benchmark: fastloc against Captum, guided backprop, Grad-CAM and the floor; or
(``--methods``) every registered method's time per image against Grad-CAM.

One process, one model after the other (EfficientNet-Lite0, pretrained and offline; VGG-16
built with ``weights=None``), one 224 x 224 image per call. Every measurement is a median
over rounds; inside a round every case runs once, in a rotated order, so that load from
other processes on a shared machine hits every case alike. Timed per image:

- ``fastloc`` k=5 through :func:`fastloc_viz.explain`, the k neuron passes looped and
  batched (``torch.func.vmap`` over the k seeds): everything the user gets (ranking, neuron
  maps, combined smoothed map, box, top-5). The ratios use the strategy ``passes="auto"``
  picks on the device (loop on CPU, batched on GPU);
- the Captum pipeline for the same result: the ranking from ``LayerGradientXActivation`` on
  the same layer (one neuron per channel), then ``k`` ``NeuronGuidedBackprop`` calls on the
  ranked neurons. The target class is handed to it (the forward pass that finds the top-1
  is not timed) and no map, box or top-5 is made: both favour Captum;
- one guided-backprop call: Captum's ``GuidedBackprop`` (on ReLU6 models such as
  EfficientNet-Lite0 it silently returns the plain gradient) and ours
  (:func:`fastloc_viz.engine.captum_maps.guided_backprop`, exact on every ReLU family);
- Captum ``LayerGradCam`` at the Grad-CAM layer;
- the floor, in plain PyTorch autograd (no guided rule, no Python hooks): one forward pass
  with grad, one backward pass from the target logit to the probe layer, and k backward
  passes from one neuron of the layer down to the input, each timed alone on a kept graph.
  floor = forward + backward to layer + the k lower passes.

With ``--methods all`` (or a comma-separated list) it times instead each method through
:func:`fastloc_viz.explain` with its defaults, on ``--images`` scikit-image photos, one image
per call (``--batch-size`` inputs per forward pass, the setting every method shares), rounds
rotated as above, and prints each method's median seconds per image and its ratio to
Grad-CAM's.

Usage::

    .venv/bin/python benchmarks/speed.py                 # both models, ~3-5 min on 2 cores
    .venv/bin/python benchmarks/speed.py --models efficientnet_lite0 --repeats 30
    .venv/bin/python benchmarks/speed.py --markdown --photo   # markdown table; a real photo too
    .venv/bin/python benchmarks/speed.py --device cuda        # on a GPU machine
    .venv/bin/python benchmarks/speed.py --models efficientnet_lite0 --methods all --images 3 --repeats 1
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch

from fastloc_viz import explain, load_model
from fastloc_viz.engine.captum_maps import guided_backprop
from fastloc_viz.engine.ranking import rank_neurons
from fastloc_viz.model.bundle import as_logits
from fastloc_viz.model.layers import resolve_layer

MODELS = ("efficientnet_lite0", "vgg16")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # --clock cpu: process CPU time, steadier on a loaded machine

# Row keys, in table order, with their labels.
ROWS = {
    "fastloc_loop": "fastloc k=5, loop (explain)",
    "fastloc_batched": "fastloc k=5, batched, torch.func.vmap (explain)",
    "captum_pipeline": "Captum pipeline: LayerGradientXActivation + k NeuronGuidedBackprop",
    "captum_gbp": "Captum GuidedBackprop, 1 call",
    "ours_gbp": "guided backprop (ours, exact on ReLU6), 1 call",
    "captum_gradcam": "Captum LayerGradCam, 1 call",
    "floor_forward": "floor: forward (with grad)",
    "floor_upper": "floor: backward logit -> layer",
    "floor_lower": "floor: k backward passes layer -> input",
    "floor": "floor total",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load(name: str, device: str):
    if name == "efficientnet_lite0":
        return load_model(name, device=device)
    return load_model(name, weights=None, device=device)


def test_image(photo: bool, seed: int) -> torch.Tensor:
    """``3 x 224 x 224`` in ``[0, 1]``: uniform noise from ``seed``, or scikit-image's chelsea."""
    if photo:
        from skimage import data

        img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float() / 255.0
        return torch.nn.functional.interpolate(img[None], size=(224, 224), mode="bilinear", antialias=True)[0]
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(3, 224, 224, generator=gen)


PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left")


def method_times(name: str, args) -> dict:
    """Each method's median seconds per image through ``explain``, rounds in rotated order."""
    from fastloc_viz import sample_image
    from fastloc_viz.methods import select_methods

    methods = list(select_methods(args.methods))
    if "gradcam" not in methods:
        methods.insert(0, "gradcam")
    bundle = load(name, args.device)
    images = [sample_image(PHOTOS[i % len(PHOTOS)]) for i in range(args.images)]
    explain(bundle, images[0], method="gradcam")  # the layer's dry run, first-call costs
    times: dict[str, list[float]] = {m: [] for m in methods}
    load_before, start = os.getloadavg()[0], time.perf_counter()
    for r in range(args.repeats):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for m in order:
            for img in images:
                _sync(bundle.device)
                t = clock()
                explain(bundle, img, method=m, batch_size=args.batch_size)
                _sync(bundle.device)
                times[m].append(clock() - t)
    return {"name": name, "median": {m: statistics.median(v) for m, v in times.items()},
            "calls": len(times[methods[0]]), "seconds": time.perf_counter() - start,
            "load": (load_before, os.getloadavg()[0])}


def method_table(result: dict, markdown: bool) -> str:
    from fastloc_viz.views.plots import method_label

    med = result["median"]
    rows = [(m, method_label(m), s, s / med["gradcam"]) for m, s in med.items()]
    if markdown:
        return "\n".join(["| method | s / image | x Grad-CAM |", "| --- | ---: | ---: |",
                          *(f"| {label} (`{m}`) | {s:.3f} | {r:.1f} |" for m, label, s, r in rows)])
    return "\n".join([f"{'method':32s} {'s/image':>9s} {'x Grad-CAM':>11s}",
                      *(f"{label + ' (' + m + ')':32s} {s:9.3f} {r:11.1f}" for m, label, s, r in rows)])


def make_cases(bundle, img: torch.Tensor, k: int) -> tuple[dict[str, Callable[[], object]], dict, tuple]:
    """The timed callables of one model, and facts about the setup (layers, target)."""
    from captum.attr import (
        GuidedBackprop,
        LayerGradCam,
        LayerGradientXActivation,
        NeuronGuidedBackprop,
    )

    model = bundle.model
    device = bundle.device
    ref = explain(bundle, img, k=k)
    cam = explain(bundle, img, method="gradcam")
    _, layer = resolve_layer(model, ref.layer)
    _, cam_layer = resolve_layer(model, cam.layer)
    target = ref.target
    x = bundle.preprocess(img[None].to(device))

    def fastloc(passes: str) -> Callable[[], object]:
        return lambda: explain(bundle, img, k=k, passes=passes)

    def captum_pipeline():
        attr = LayerGradientXActivation(model, layer).attribute(x, target=target)
        r = rank_neurons(attr.detach(), k)
        ngb = NeuronGuidedBackprop(model, layer)
        return [
            ngb.attribute(x, neuron_selector=(int(r.channel[0, j]), int(r.y[0, j]), int(r.x[0, j])))
            for j in range(k)
        ]

    tgt = torch.tensor([target], device=device)
    cases: dict[str, Callable[[], object]] = {
        "fastloc_loop": fastloc("loop"),
        "fastloc_batched": fastloc("batched"),
        "captum_pipeline": captum_pipeline,
        "captum_gbp": lambda: GuidedBackprop(model).attribute(x, target=target),
        "ours_gbp": lambda: guided_backprop(model, x, tgt, as_logits),
        "captum_gradcam": lambda: LayerGradCam(model, cam_layer).attribute(x, target=target),
    }
    facts = {
        "layer": ref.layer,
        "layer_shape": tuple(ref.layer_shape) if ref.layer_shape is not None else None,
        "cam_layer": cam.layer,
        "target": f"{target} ({ref.target_name})",
        "neurons": [(n.channel, n.y, n.x) for n in ref.neurons],
    }
    return cases, facts, (model, layer, x, target)


def floor_round(model, layer, x, target: int, k: int, device) -> dict[str, float]:
    """One floor measurement: forward, backward to the layer, k lower passes, each timed alone."""
    got = {}

    def hook(_m, _i, out):
        got["acts"] = out
        return out.clone()  # as fastloc: downstream in-place ops must not touch it

    x = x.detach().requires_grad_(True)
    handle = layer.register_forward_hook(hook)
    try:
        _sync(device)
        t0 = clock()
        logits = as_logits(model(x))
        _sync(device)
        t1 = clock()
    finally:
        handle.remove()
    acts = got["acts"]
    t2 = clock()
    (grad,) = torch.autograd.grad(logits[0, target], acts, retain_graph=True)
    _sync(device)
    t3 = clock()
    c, h, w = acts.shape[1:]
    seed = torch.zeros_like(acts)
    lower = 0.0
    # k different single-unit seeds, like fastloc's; each pass timed alone.
    flat = torch.topk((acts.detach() * grad).flatten(), k).indices.tolist()
    for j, f in enumerate(flat):
        seed.zero_()
        seed.view(-1)[f] = 1.0
        _sync(device)
        t = clock()
        torch.autograd.grad(acts, x, grad_outputs=seed, retain_graph=j < k - 1)
        _sync(device)
        lower += clock() - t
    return {"floor_forward": t1 - t0, "floor_upper": t3 - t2, "floor_lower": lower}


def run_model(name: str, args) -> dict:
    device = torch.device(args.device)
    bundle = load(name, args.device)
    img = test_image(args.photo, args.seed)
    cases, facts, (model, layer, x, target) = make_cases(bundle, img, args.k)
    if args.only:
        cases = {key: f for key, f in cases.items() if key in args.only}
    keys = list(cases) + ["floor"]
    times: dict[str, list[float]] = {key: [] for key in keys}
    times.update(floor_forward=[], floor_upper=[], floor_lower=[])

    def one(key: str) -> None:
        if key == "floor":
            for part, v in floor_round(model, layer, x, target, args.k, device).items():
                times[part].append(v)
            return
        _sync(device)
        t = clock()
        cases[key]()
        _sync(device)
        times[key].append(clock() - t)

    for _ in range(args.warmup):
        for key in keys:
            one(key)
    for key in times:
        times[key].clear()
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    rounds = 0
    while rounds < args.repeats and (rounds < args.min_repeats or time.perf_counter() - start < args.budget):
        gc.collect()
        shift = rounds % len(keys)
        for key in keys[shift:] + keys[:shift]:
            one(key)
        rounds += 1
    med = {key: statistics.median(v) for key, v in times.items() if v}
    spread = {key: (min(v), max(v)) for key, v in times.items() if v}
    med["floor"] = med["floor_forward"] + med["floor_upper"] + med["floor_lower"]
    return {
        "name": name,
        "device": device.type,
        "median": med,
        "spread": spread,
        "rounds": rounds,
        "seconds": time.perf_counter() - start,
        "load": (load_before, os.getloadavg()[0]),
        **facts,
    }


def ratios(med: dict, device: str = "cpu") -> dict[str, float]:
    """The target ratios, for the pass strategy ``passes="auto"`` picks on ``device``."""
    out = {}
    auto = "fastloc_loop" if device == "cpu" else "fastloc_batched"
    best = med.get(auto)
    if best is None:
        return out
    for key, label in (
        ("captum_pipeline", "Captum pipeline / fastloc (speed-up, target >= 1.5 on VGG-16, > 1 on Lite0)"),
        ("floor", "fastloc / floor (target <= 1.15)"),
        ("ours_gbp", "fastloc / one guided-backprop call, ours (GPU target <= 1.5)"),
        ("captum_gbp", "fastloc / one Captum GuidedBackprop call"),
    ):
        if key not in med:
            continue
        out[label] = med[key] / best if key == "captum_pipeline" else best / med[key]
    if "fastloc_loop" in med and "fastloc_batched" in med:
        out["fastloc batched / loop"] = med["fastloc_batched"] / med["fastloc_loop"]
    return out


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads){gpu}, Python {platform.python_version()}"
    )


def table(results: list[dict], markdown: bool) -> str:
    names = [r["name"] for r in results]
    lines = []
    if markdown:
        lines.append("| per image, median | " + " | ".join(names) + " |")
        lines.append("| --- |" + " ---: |" * len(names))
    else:
        width = max(len(v) for v in ROWS.values()) + 2
        lines.append("per image, median".ljust(width) + "".join(n.rjust(22) for n in names))

    def fmt(s: float | None) -> str:
        if s is None:
            return "-"
        return f"{s * 1e3:.0f} ms" if s < 10 else f"{s:.1f} s"

    for key, label in ROWS.items():
        cells = [fmt(r["median"].get(key)) for r in results]
        if all(c == "-" for c in cells):
            continue
        if markdown:
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        else:
            lines.append(label.ljust(width) + "".join(c.rjust(22) for c in cells))
    rats = [ratios(r["median"], r["device"]) for r in results]
    for label in dict.fromkeys(lab for ra in rats for lab in ra):
        cells = [f"{ra[label]:.2f}x" if label in ra else "-" for ra in rats]
        if markdown:
            lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
        else:
            lines.append(label.ljust(width) + "".join(c.rjust(22) for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per model at most (default 15)")
    p.add_argument("--min-repeats", type=int, default=5, help="timed rounds per model at least (default 5)")
    p.add_argument("--budget", type=float, default=100.0, help="seconds of timed rounds per model, once "
                   "--min-repeats are done (default 100)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--photo", action="store_true", help="scikit-image's chelsea instead of random noise")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall", help="wall time (default) or "
                   "the process's CPU time (all threads; steadier when other jobs load the machine)")
    p.add_argument("--only", nargs="+", choices=list(ROWS)[:6], help="time only these cases (and the floor)")
    p.add_argument("--markdown", action="store_true", help="print the table in markdown")
    p.add_argument("--methods", default=None, help="time these registered methods ('all', or comma-separated) "
                   "against Grad-CAM instead")
    p.add_argument("--images", type=int, default=3, help="photos per round with --methods (default 3)")
    p.add_argument("--batch-size", type=int, default=8, help="explain's batch_size with --methods (default 8)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    clock = CLOCKS[args.clock]
    warnings.filterwarnings("ignore")  # Captum warns on every call; warnings cost time too
    torch.manual_seed(args.seed)
    print(machine(), flush=True)
    print("command: " + " ".join([os.path.basename(sys.executable), *sys.argv]), flush=True)
    if args.methods:
        for name in args.models:
            r = method_times(name, args)
            print(f"{name}: {args.images} photos x {args.repeats} rounds = {r['calls']} calls per method in "
                  f"{r['seconds']:.0f} s, load average {r['load'][0]:.1f} -> {r['load'][1]:.1f}")
            print(method_table(r, args.markdown), flush=True)
        return 0
    results = []
    for name in args.models:
        r = run_model(name, args)
        results.append(r)
        print(
            f"{name}: layer {r['layer']} {r['layer_shape']}, Grad-CAM layer {r['cam_layer']}, target "
            f"{r['target']}, input {'chelsea' if args.photo else f'random (seed {args.seed})'}; "
            f"{r['rounds']} rounds in {r['seconds']:.0f} s, load average {r['load'][0]:.1f} -> {r['load'][1]:.1f}",
            flush=True,
        )
    print()
    print(table(results, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
