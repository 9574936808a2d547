"""How fast the NeuronExplorer reacts, without a browser (EfficientNet-Lite0, chelsea).

Measures, in one process:
  * ``recombine`` alone (the map + box from cached neuron maps);
  * a neuron toggle through the checkbox, i.e. the event handler: recombine, then the
    figure, bar and card updates that go to the browser;
  * a box-threshold change through its slider;
  * the size of the heatmap a toggle sends to the browser;
  * a class change (a new explain call) and the same class again (cached).

    python benchmarks/widget_latency.py [--repeats 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastloc_viz as fv
from fastloc_viz.widgets import NeuronExplorer


def ms(samples: list[float]) -> str:
    s = sorted(samples)
    return f"median {statistics.median(s):6.1f} ms  p90 {s[int(0.9 * (len(s) - 1))]:6.1f} ms  (n={len(s)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    bundle = fv.load_model("efficientnet_lite0")
    image = fv.sample_image("chelsea")
    ex = NeuronExplorer(bundle, image, debounce=0.05)
    base = ex.base_explanation

    rec = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        fv.recombine(base, [1 + i % 5, 1 + (i + 2) % 5])
        rec.append((time.perf_counter() - t0) * 1000)

    fig = ex.overlay_fig
    tog = []
    for i in range(args.repeats):
        check = ex._cards[i % 5]["check"]
        t0 = time.perf_counter()
        check.value = not check.value
        tog.append((time.perf_counter() - t0) * 1000)
    z = np.asarray(fig.data[1].z, dtype=np.float32)
    thr = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        ex.threshold_slider.value = [0.2, 0.3, 0.4, 0.5][i % 4]
        thr.append((time.perf_counter() - t0) * 1000)

    other = base.top5[1]
    t0 = time.perf_counter()
    ex.target = other.index
    heavy = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    ex.target = base.target
    cached = (time.perf_counter() - t0) * 1000

    print(f"recombine alone        {ms(rec)}")
    print(f"toggle (checkbox)      {ms(tog)}")
    print(f"threshold (slider)     {ms(thr)}")
    print(f"heatmap payload        {z.size} float32 cells = {z.nbytes / 1024:.0f} kB per update")
    print(f"class change (explain) {heavy:6.0f} ms; back to a cached class {cached:6.0f} ms")


if __name__ == "__main__":
    main()
