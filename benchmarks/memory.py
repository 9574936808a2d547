"""Memory benchmark: peak RSS of explaining big images, and RSS across 300 images in a row.

Each part runs in its own fresh process, so that its peak RSS (``VmHWM``) is its own:

* ``1024``: one 1024 x 1024 photo (a JPEG file and the same pixels as a uint8 array),
  every method, on EfficientNet-Lite0.
* ``huge``: a 12000 x 9000 JPEG (108 megapixels): decoded at a reduced scale, then explained.
* ``run``: the first 300 rows of ``../shared/data/imagenet-val-wsol`` through
  ``fastloc_viz.evaluation.runner.evaluate`` (the real pipeline: loading, explaining, scoring), with
  the resident set size sampled after every image; reported every 50 images, with the slope
  of a line fitted over images 50..300 (a leak shows as a steady climb).

Usage: ``python benchmarks/memory.py [--n 300] [--methods fastloc] [--out results.json]``.
Torch runs on 2 threads (``FASTLOC_BENCH_THREADS`` to change: on a machine busy with other
jobs, 1 thread can be several times faster; the figures in docs/robustness.md used 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imagenet-val-wsol"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def peak_mib() -> float:
    return _status_kib("VmHWM") / 1024


def _photo_1024():
    import numpy as np
    from PIL import Image

    from fastloc_viz import sample_image

    return np.asarray(Image.fromarray(sample_image("chelsea")).resize((1024, 1024), Image.BICUBIC))


def part_1024() -> dict:
    import torch
    from PIL import Image

    import fastloc_viz as fv

    torch.set_num_threads(int(os.environ.get("FASTLOC_BENCH_THREADS", "2")))
    bundle = fv.load_model("efficientnet_lite0")
    base = rss_mib()
    pixels = _photo_1024()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chelsea_1024.jpg"
        Image.fromarray(pixels).save(path, quality=95)
        rows = []
        for method in fv.METHODS:
            for name, image in (("jpeg file", path), ("uint8 array", pixels)):
                reset = reset_peak()
                before = rss_mib()
                t = time.perf_counter()
                e = fv.explain(bundle, image, method=method)
                rows.append(
                    {"method": method, "input": name, "time_s": time.perf_counter() - t, "top1": e.top5[0].name,
                     "rss_before_mib": before, "rss_mib": rss_mib(), "call_peak_mib": peak_mib() if reset else None}
                )
                del e
    return {"model_loaded_rss_mib": base, "peak_rss_mib": max(peak_mib(), *(r["call_peak_mib"] or 0 for r in rows)), "rows": rows}


def part_huge() -> dict:
    import torch
    from PIL import Image

    import fastloc_viz as fv

    torch.set_num_threads(int(os.environ.get("FASTLOC_BENCH_THREADS", "2")))
    bundle = fv.load_model("efficientnet_lite0")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "huge.jpg"
        small = Image.fromarray(_photo_1024())
        small.resize((12000, 9000), Image.BILINEAR).save(path, quality=85)
        del small
        import gc

        gc.collect()
        reset = reset_peak()  # the peak of writing the test file is not the explain's
        base = rss_mib()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = time.perf_counter()
            e = fv.explain(bundle, path)
            elapsed = time.perf_counter() - t
        size_mb = path.stat().st_size / 2**20
    return {
        "image": "12000 x 9000 JPEG", "file_mib": size_mb, "full_decode_mib": 12000 * 9000 * 3 / 2**20,
        "float_tensor_mib": 12000 * 9000 * 3 * 4 / 2**20, "before_rss_mib": base, "peak_rss_mib": peak_mib(),
        "peak_is_of_the_call": reset,
        "time_s": elapsed, "top1": e.top5[0].name, "warnings": [str(w.message) for w in caught],
    }


def part_run(n: int, methods: list[str]) -> dict:
    import gc

    import torch

    import fastloc_viz as fv
    from fastloc_viz.evaluation import runner as ev
    from fastloc_viz.imaging.dataset import LocalizationDataset

    torch.set_num_threads(int(os.environ.get("FASTLOC_BENCH_THREADS", "2")))
    bundle = fv.load_model("efficientnet_lite0")
    dataset = LocalizationDataset(DATA, limit=n)
    samples: list[float] = []
    real = ev._explain_function()

    def measured(*args, **kwargs):
        out = real(*args, **kwargs)
        samples.append(rss_mib())
        if len(samples) % 10 == 0:  # progress, and figures that survive an interrupted run
            print(f"memory.py: {len(samples)} calls, RSS {samples[-1]:.0f} MiB", file=sys.stderr, flush=True)
        return out

    ev._explain_function = lambda: measured  # the real pipeline, with a probe after each call
    base = rss_mib()
    t = time.perf_counter()
    results = ev.evaluate(bundle, dataset, methods, cache_dir=None, progress=False)
    elapsed = time.perf_counter() - t
    gc.collect()
    per_image = [max(samples[i * len(methods) : (i + 1) * len(methods)]) for i in range(len(samples) // len(methods))]
    marks = {i: per_image[i - 1] for i in range(50, len(per_image) + 1, 50)}
    import numpy as np

    xs = np.arange(50, len(per_image) + 1)
    slope = float(np.polyfit(xs, np.asarray(per_image[49:]), 1)[0]) * 100 if len(xs) > 1 else float("nan")
    return {
        "n": len(per_image), "methods": methods, "before_rss_mib": base, "first_image_rss_mib": per_image[0],
        "rss_every_50_mib": marks, "slope_mib_per_100_images": slope, "peak_rss_mib": peak_mib(),
        "time_s": elapsed, "maxboxacc_50": {k: v["maxboxacc_50"] for k, v in results["methods"].items()},
    }


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["1024", "huge", "run"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=300, help="images in the run (default 300)")
    p.add_argument("--methods", default="fastloc", help="comma-separated methods for the run")
    p.add_argument("--out", default=None, help="write all figures as JSON here")
    args = p.parse_args()
    methods = args.methods.split(",")
    if args.part:
        out = {"1024": part_1024, "huge": part_huge}.get(args.part)
        doc = out() if out else part_run(args.n, methods)
        print(json.dumps(doc))
        return 0

    def child(part: str) -> dict:
        cmd = [sys.executable, __file__, "--part", part, "--n", str(args.n), "--methods", args.methods]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if res.returncode != 0:
            sys.stderr.write(res.stderr)
            raise SystemExit(f"part {part} failed")
        return json.loads(res.stdout.strip().splitlines()[-1])

    doc = {"machine": _machine()}
    doc["1024"] = child("1024")
    d = doc["1024"]
    print(f"machine: {doc['machine']}")
    print(f"\n1024 x 1024 image, EfficientNet-Lite0: model loaded {d['model_loaded_rss_mib']:.0f} MiB, "
          f"peak RSS over all methods {d['peak_rss_mib']:.0f} MiB")
    for r in d["rows"]:
        peak = f"call peak {r['call_peak_mib']:.0f} MiB, " if r.get("call_peak_mib") else ""
        print(f"  {r['method']:17s} {r['input']:12s} {r['time_s'] * 1000:7.0f} ms  {peak}RSS after {r['rss_mib']:.0f} MiB  ({r['top1']})")
    doc["huge"] = child("huge")
    h = doc["huge"]
    print(f"\n{h['image']} ({h['file_mib']:.1f} MiB file; full decode would be {h['full_decode_mib']:.0f} MiB, "
          f"{h['float_tensor_mib']:.0f} MiB as float): peak RSS {h['peak_rss_mib']:.0f} MiB "
          f"(before {h['before_rss_mib']:.0f}), {h['time_s']:.1f} s, top-1 {h['top1']}")
    for w in h["warnings"]:
        print(f"  warning: {w}")
    if (DATA / "annotations.csv").exists():
        doc["run"] = child("run")
        r = doc["run"]
        print(f"\n{r['n']} images in a row through fastloc_viz.evaluation.runner ({', '.join(r['methods'])}), "
              f"{r['time_s']:.0f} s: RSS before {r['before_rss_mib']:.0f} MiB, after image 1 "
              f"{r['first_image_rss_mib']:.0f} MiB, peak {r['peak_rss_mib']:.0f} MiB")
        print("  " + "  ".join(f"@{k}: {v:.0f}" for k, v in r["rss_every_50_mib"].items()) + "  (MiB)")
        print(f"  fitted slope over images 50..{r['n']}: {r['slope_mib_per_100_images']:+.1f} MiB per 100 images")
    else:
        print(f"\n(no data at {DATA}: the 300-image run is skipped)")
    if args.out:
        from fastloc_viz.core.files import write_text_atomic

        write_text_atomic(args.out, json.dumps(doc, indent=1), what="benchmark results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
