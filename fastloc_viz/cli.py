"""The ``fastloc-viz`` command: ``explain``, ``boxes``, ``demo``, ``evaluate`` and ``atlas``.

Errors end the command with one readable line on stderr and exit code 2 (``--debug`` shows
the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

DEMO_PHOTOS = ("chelsea", "coffee")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    from . import METHODS

    __version__ = version("fastloc-viz")

    p = _Parser(prog="fastloc-viz", description="Fast object localization from a classifier.")
    p.add_argument("--version", action="version", version=f"fastloc-viz {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on error")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("explain", help="explain images and write one HTML report")
    e.add_argument(
        "image", nargs="+",
        help="image files or folders (searched recursively), or 'sample:NAME' for a scikit-image photo (sample:chelsea)",
    )
    e.add_argument("--model", default="efficientnet_lite0", help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2, a torchvision name or timm/<name>")
    e.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="a state dict file for --model (read with torch.load(weights_only=True))",
    )
    e.add_argument("--target", default=None, help="class index or name (default: the top-1 prediction)")
    e.add_argument(
        "--method", default="fastloc", help=f"one of {', '.join(METHODS)} or a --plugin's (default: %(default)s)"
    )
    e.add_argument("--layer", default=None, help="probe layer, a dotted module name")
    _param_arguments(e)
    e.add_argument(
        "--methods", default=None,
        help="the other methods in the report: comma-separated names or 'all' (default: the default "
        "methods without neurons: gradcam, guided_backprop, guided_gradcam)",
    )
    e.add_argument("--no-baselines", action="store_true", help="skip the other methods in the report")
    e.add_argument("--atlas", default=None, metavar="FILE", help="a neuron atlas (fastloc-viz atlas) for the neuron cards")
    e.add_argument(
        "--out", default=None,
        help="HTML report path (default: a temporary file; with --json and no --out, no report is written)",
    )
    e.add_argument("--json", action="store_true", help="print machine-readable JSON to stdout")
    e.add_argument("--page", type=int, default=None, help="TIFF page, DICOM frame or FITS HDU (0-based)")
    e.add_argument("--window", default=None, help="auto (default), percentile, minmax, full, file or LOW,HIGH")
    e.add_argument("--stretch", default=None, choices=("linear", "asinh"), help="how the window maps to [0, 1]")
    _output_arguments(e)

    d = sub.add_parser("demo", help="run fastloc and the baselines on bundled photos with EfficientNet-Lite0")
    d.add_argument("--out", default="out", help="directory for the reports (default ./out)")
    d.add_argument("--json", action="store_true", help="print machine-readable JSON to stdout")

    a = sub.add_parser("atlas", help="build a neuron atlas: each channel's top activating image patches")
    a.add_argument("source", help="a folder of images (recursive) or a CSV / data directory in the evaluate format")
    a.add_argument("--out", required=True, help="the atlas file to write (.npz)")
    a.add_argument("--model", default="efficientnet_lite0", help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2, a torchvision name or timm/<name>")
    a.add_argument("--layer", default=None, help="probe layer, a dotted module name (default: explain's)")
    a.add_argument("--top", type=int, default=8, help="units kept per channel (default 8)")
    a.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")

    from .evaluation import command as evaluate_command

    ev = sub.add_parser("evaluate", help="localization (boxes), faithfulness and sanity metrics on a data set")
    evaluate_command.add_arguments(ev)
    b = sub.add_parser("boxes", help="a box for every image of a folder, ImageFolder tree or CSV: COCO JSON + CSV")
    _box_arguments(b)
    for parser in (e, b, ev):
        parser.add_argument(
            "--plugin", action="append", default=[], metavar="FILE",
            help="a Python file that registers methods or combine rules (docs/own-method.md); repeatable",
        )
    return p


def _param_arguments(parser: argparse.ArgumentParser) -> None:
    """``-k`` and ``--threshold``: unset, each method takes its own default from the registry
    (the help says which)."""
    from .methods import defaults_text

    parser.add_argument("-k", type=int, default=None,
                        help=f"neurons to keep, methods with neurons (default: {defaults_text('k')})")
    parser.add_argument("--threshold", type=float, default=None,
                        help="box threshold, a fraction of the map's max (default: each method's own: "
                        f"{defaults_text('threshold')})")


def _box_arguments(b: argparse.ArgumentParser) -> None:
    from . import METHODS

    b.add_argument("source", help="a folder of images (searched recursively), an ImageFolder tree, a CSV "
                   "(image,label) or one image file")
    b.add_argument("--out", required=True, metavar="FILE.json", help="COCO JSON to write (the CSV goes beside it)")
    b.add_argument("--method", default="fastloc", help="a registered method: " + ", ".join(METHODS)
                   + " or a --plugin's (default: %(default)s)")
    b.add_argument("--model", default="efficientnet_lite0", help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2, a torchvision name or timm/<name>")
    b.add_argument("--weights", default=None, metavar="FILE", help="a state dict file for --model")
    b.add_argument("--layer", default=None, help="probe layer, a dotted module name")
    _param_arguments(b)
    b.add_argument("--targets", nargs="+", default=["top1"], metavar="TARGET",
                   help="top1 (default: one box per image), positive (a box per label at or above --label-threshold) "
                   "or class names / indices (a box for each, on every image)")
    _output_arguments(b)
    b.add_argument("--layout", default="auto", choices=("auto", "folder", "imagefolder", "csv"),
                   help="how SOURCE gives targets (auto: a CSV, an ImageFolder when every sub-folder names a class, "
                   "else top-1)")
    b.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default %(default)s)")
    b.add_argument("--workers", type=int, default=2, help="decoding processes beside the model (default %(default)s)")
    b.add_argument("--masks", action="store_true", help="add each thresholded map as a COCO RLE (needs pycocotools)")
    b.add_argument("--restart", action="store_true", help="forget the parts of an earlier run of this output")
    b.add_argument("--checkpoint", type=float, default=60.0, metavar="SECONDS",
                   help="rewrite the outputs this often (default %(default)s s)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--json", action="store_true", help="print the run's summary as JSON")


def _output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default=None, choices=("softmax", "sigmoid"),
                   help="how the model's logits are read: softmax (one class; the default) or sigmoid (multi-label)")
    p.add_argument("--label-threshold", type=float, default=None, metavar="P",
                   help="with sigmoid: the probability from which a label counts as found (default 0.5)")


def _load(args):
    """The model the command names, with its weights and output options."""
    from . import load_model

    given = (("weights", args.weights), ("output", args.output), ("label_threshold", args.label_threshold))
    return load_model(args.model, **{k: v for k, v in given if v is not None})


def _targets_arg(values: Sequence[str]):
    if len(values) == 1 and values[0] in ("top1", "positive"):
        return values[0]
    return [_target_arg(v) for v in values]


def load_plugins(paths: Sequence[str]) -> None:
    """Import each Python file, so the methods and rules it registers can be named."""
    import importlib.util

    for path in paths:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"--plugin {path!r} is not a file")
        spec = importlib.util.spec_from_file_location(f"fastloc_viz_plugin_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)


def _image_arg(text: str):
    from .imaging.batch import sample_image

    if text.startswith("sample:"):
        return sample_image(text.split(":", 1)[1])
    return Path(text)


def _image_args(texts: Sequence[str]) -> list[tuple[str, object, bool]]:
    """``(name, image, from a folder)`` for every argument; a folder gives each image file
    under it (the one folder walker, :func:`fastloc_viz.imaging.sources.image_files`)."""
    from .imaging.sources import image_files, no_images

    out: list[tuple[str, object, bool]] = []
    for text in texts:
        path = Path(text)
        if not text.startswith("sample:") and path.is_dir():
            files = image_files(path)
            if not files:
                raise IsADirectoryError(no_images(path))
            out += [(str(f), f, True) for f in files]
        else:
            out.append((text, _image_arg(text), False))
    return out


def _read_arg(image, args, size):
    """A file argument read with ``--page`` / ``--window`` / ``--stretch`` when given, else as
    ``explain`` reads it; anything else as it is."""
    from .imaging.batch import read_for_model
    from .imaging.readers import parse_window, read_image

    if not isinstance(image, Path):
        return image
    if args.page is not None or args.window or args.stretch:  # issue 14
        return read_image(image, page=args.page, window=parse_window(args.window), stretch=args.stretch or "linear")
    return read_for_model(image, size)


def _target_arg(text: str | None):
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _report_methods(methods: str | None, baselines: bool = True) -> tuple[str, ...]:
    """The other methods of a report: none, ``--methods`` (names or ``all``), or the default
    methods without neurons."""
    from .methods import METHODS, select_methods

    if not baselines:
        return ()
    if methods:
        return select_methods(methods)
    return tuple(m for m in select_methods(None) if not METHODS[m].has_neurons)


def _run_all(bundle, image, method: str, others: Sequence[str], **kwargs):
    """``method``, then each of ``others`` for the same class."""
    from . import explain

    results = {method: explain(bundle, image, method=method, **kwargs)}
    target = results[method].target
    for name in others:
        if name != method:
            # a --threshold given applies to every method; unset, each takes its own default
            results[name] = explain(bundle, image, method=name, target=target, threshold=kwargs.get("threshold"))
    return results


def _summary(name: str, results: dict, report: Path) -> str:
    main = next(iter(results.values()))
    found = ", ".join(f"{p.name} ({p.probability:.0%})" for p in main.top5[: 1 if main.output == "softmax" else None])
    lines = [
        f"{name}: {found or f'no label at or above {main.label_threshold:.0%}'}; explaining "
        f"{main.target_name!r} with {main.method} at layer {main.layer}",
    ]
    for n in main.neurons or ():
        lines.append(
            f"  neuron {n.rank}: channel {n.channel:4d} at (y={n.y:2d}, x={n.x:2d})  score {n.score:9.4f}  "
            f"activation {n.activation:8.3f}  gradient {n.gradient:8.4f}"
        )
    for method, e in results.items():
        where = f"box {e.box}  in the photo {e.box_original}" if e.box is not None else "no box (all-zero map)"
        lines.append(f"  {method:16s} {where}  {e.time_s * 1000:7.1f} ms")
    lines.append(f"  report: {report}")
    return "\n".join(lines)


def _as_json(name: str, results: dict, report: Path) -> dict:
    main = next(iter(results.values()))
    d = main.to_dict()
    d["image"] = name
    d["report"] = str(report) if report is not None else None
    d["baselines"] = {
        m: {"box": e.to_dict()["box"], "box_original": e.to_dict()["box_original"], "time_s": e.time_s}
        for m, e in list(results.items())[1:]
    }
    return d


def _cmd_explain(args) -> int:
    from .core.files import check_writable
    from .methods import get_method
    from .views.report import write_pages

    get_method(args.method)  # an unknown name fails before the model loads
    others = _report_methods(args.methods, not args.no_baselines)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_writable(out)  # before the slow part
    images = _image_args(args.image)
    bundle = _load(args)
    pages, skipped = {}, []
    for name, image, listed in images:
        try:
            image = _read_arg(image, args, bundle.input_size)
        except Exception as e:  # a file found in a folder that cannot be read: listed, the run goes on
            if not listed:
                raise
            from .imaging.batch import unreadable_reason

            skipped.append(name)
            print(f"fastloc-viz: skipped {name}: {unreadable_reason(e)}", file=sys.stderr)
            continue
        pages[name] = _run_all(
            bundle,
            image,
            args.method,
            others,
            target=_target_arg(args.target),
            layer=args.layer,
            k=args.k,
            threshold=args.threshold,
        )
    if not pages:
        raise ValueError(f"none of the {len(skipped)} image files could be read (see the reasons above)")
    if out is None and not args.json:
        out = Path(tempfile.mkdtemp(prefix="fastloc-")) / "report.html"
    report = None
    if out is not None:
        title = f"fastloc_viz: {Path(next(iter(pages))).name}" if len(pages) == 1 else f"fastloc_viz: {len(pages)} images"
        report = write_pages(out, pages, title=title, **_neuron_extras(bundle, pages, args.atlas))
    if args.json:
        docs = [_as_json(name, results, report) for name, results in pages.items()]
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    else:
        print("\n\n".join(_summary(name, results, report) for name, results in pages.items()))
    return 0


def _cmd_boxes(args) -> int:
    from .collection.boxes import boxes
    from .methods import get_method

    get_method(args.method)
    bundle = _load(args)
    params = {k: v for k, v in (("layer", args.layer), ("k", args.k), ("threshold", args.threshold)) if v is not None}
    summary = boxes(
        bundle, args.source, args.out, targets=_targets_arg(args.targets), method=args.method, layout=args.layout,
        batch_size=args.batch_size,
        workers=args.workers, masks=args.masks, restart=args.restart, checkpoint_s=args.checkpoint,
        progress=not args.no_progress, **params,
    )
    if "out" not in summary:  # a torchrun rank other than 0
        return 0
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['boxed']} of {summary['images']} images boxed, {summary['boxes']} boxes "
              f"({summary['new_this_run']} this run, "
              f"{summary['images_per_s']:.1f} images/s); {len(summary['skipped'])} skipped")
        kinds = summary["kinds"]
        print(f"  boxes: {kinds['object']} on an object, {kinds['whole']} covering the whole image, "
              f"{kinds['diffuse']} from a diffuse map (the kind column of the CSV)")
        for s in summary["skipped"]:
            print(f"  skipped {s['file']}: {s['reason']}")
        print(f"  COCO: {summary['out']}\n  CSV:  {summary['csv']}")
    return 0


def _neuron_extras(bundle, pages: dict, atlas_path: str | None) -> dict:
    """For ``write_pages``: the atlas, and each page's lead ablation (one batched forward pass)."""
    from .neurons.ablation import ablate
    from .neurons.atlas import NeuronAtlas

    atlas = NeuronAtlas.load(atlas_path) if atlas_path else None
    extras = {}
    for name, results in pages.items():
        lead = next(iter(results.values()))
        if lead.neurons is None:
            continue
        if atlas is not None:
            atlas.check(bundle, lead.layer)
        extras[name] = {"ablation": ablate(bundle, lead)}
    return {"atlas": atlas, "extras": extras}


def _cmd_demo(args) -> int:
    from . import load_model, sample_image
    from .core.files import make_dir
    from .views.report import write_pages

    t0 = time.perf_counter()
    bundle = load_model("efficientnet_lite0")
    out_dir = Path(args.out)
    make_dir(out_dir)
    docs = []
    for photo in DEMO_PHOTOS:
        results = _run_all(bundle, sample_image(photo), "fastloc", _report_methods(None))
        page = {"": results}
        report = write_pages(
            out_dir / f"demo-{photo}.html", page, title=f"fastloc_viz demo: {photo}", **_neuron_extras(bundle, page, None)
        )
        docs.append(_as_json(photo, results, report))
        if not args.json:
            print(_summary(photo, results, report.resolve()))
            print()
    if args.json:
        print(json.dumps(docs, indent=2))
    else:
        print(f"demo done in {time.perf_counter() - t0:.1f} s (EfficientNet-Lite0, CPU); open the reports above in a browser")
    return 0


def _cmd_atlas(args) -> int:
    """Build (resuming from ``OUT.partial`` after an interruption) and save an atlas; under
    ``torchrun`` the ranks share the images and rank 0 saves."""
    from . import load_model
    from .core.files import check_writable
    from .core.parallel import init_distributed
    from .neurons.atlas import NeuronAtlas

    out = Path(args.out)
    check_writable(out, what="the atlas")
    t0 = time.perf_counter()
    dist = init_distributed()
    bundle = load_model(args.model)
    atlas = NeuronAtlas.build(
        bundle, args.source, args.layer, top=args.top, batch_size=args.batch_size, checkpoint=str(out) + ".partial",
        dist=dist,
    )
    if not dist.is_main:
        return 0
    path = atlas.save(out)
    for d in atlas.skipped:
        print(f"fastloc-viz: skipped {d['image']}: {d['reason']}", file=sys.stderr)
    read = len(atlas.images) - len(atlas.skipped)
    print(
        f"atlas of {bundle.name} at {atlas.layer}: {atlas.channels} channels x top {atlas.top_n} over "
        f"{read} images" + (f" ({len(atlas.skipped)} files skipped: cannot be read)" if atlas.skipped else "")
        + f" in {time.perf_counter() - t0:.1f} s -> {path} ({path.stat().st_size / 1e6:.1f} MB)"
    )
    return 0


def _cmd_evaluate(args) -> int:
    """``fastloc-viz evaluate`` (also ``python -m fastloc_viz.evaluation``): the evaluation
    runner, with the plots of :mod:`fastloc_viz.views.evaluation_plots` for ``--out``."""
    from .evaluation import command
    from .views.evaluation_plots import evaluation_pages

    return command.run(args, pages=evaluation_pages)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastloc-viz`` console script; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="fastloc-viz: %(message)s")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            load_plugins(getattr(args, "plugin", []))
            if args.command == "explain":
                return _cmd_explain(args)
            if args.command == "demo":
                return _cmd_demo(args)
            if args.command == "atlas":
                return _cmd_atlas(args)
            if args.command == "boxes":
                return _cmd_boxes(args)
            return _cmd_evaluate(args)
    except KeyboardInterrupt as e:  # a run that can resume says how (collection.boxes.Interrupted)
        print(f"fastloc-viz: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130
    except Exception as e:  # one readable line, no traceback, unless --debug
        if args.debug or os.environ.get("FASTLOC_DEBUG"):
            raise
        message = " ".join(str(e).split())  # one line, whatever the exception holds
        print(f"fastloc-viz: error: {type(e).__name__}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
