"""Time of the explorer's first display: ``explain`` (fastloc, defaults) and the
``NeuronExplorer`` construction, EfficientNet-Lite0 on chelsea, one thread.

    OMP_NUM_THREADS=1 python benchmarks/first_display.py [--repeats 15]

Prints medians and p90; run it before and after a change on the same machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastloc_viz as fv


def stats(xs: list[float]) -> str:
    s = sorted(xs)
    return f"median {1000 * statistics.median(s):7.1f} ms  p90 {1000 * s[int(0.9 * (len(s) - 1))]:7.1f} ms (n={len(s)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--widget", action="store_true", help="also time NeuronExplorer(...)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bundle = fv.load_model("efficientnet_lite0")
    image = fv.sample_image("chelsea")
    fv.explain(bundle, image)  # warm-up (layer pick, allocator)
    t_explain = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        fv.explain(bundle, image)
        t_explain.append(time.perf_counter() - t)
    print("explain (fastloc, defaults):", stats(t_explain))
    if args.widget:
        from fastloc_viz.widgets import NeuronExplorer

        t_widget = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            ex = NeuronExplorer(bundle, image)
            t_widget.append(time.perf_counter() - t)
            # stop its worker before it starts the lazy work (the neurons' drops), which
            # would otherwise run during the next construction
            ex.close()
        print("NeuronExplorer(bundle, image):", stats(t_widget))


if __name__ == "__main__":
    main()
