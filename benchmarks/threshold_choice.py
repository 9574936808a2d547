"""Each method's default box threshold from a development run of ``fastloc-viz evaluate``.

The box users get is the connected component holding the map's peak, at the method's
default threshold; its accuracy at every threshold of the sweep is ``curves["peak_50"]`` in
``evaluate``'s ``results.json`` (IoU >= 0.5 with a ground-truth box). The choice is the
threshold whose accuracy, averaged with its neighbours +-``--window`` steps (a small
development set gives a ragged curve), is highest, among thresholds of at least ``--low``
(0.05: at 0 every pixel passes and the box is the whole image); ties go to the lower one::

    fastloc-viz evaluate DATA --rows 0:100 --methods layercam,saliency --out /tmp/dev
    python benchmarks/threshold_choice.py /tmp/dev/results.json [/tmp/dev2/results.json ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def choose(thresholds: np.ndarray, curve: np.ndarray, window: int, low: float) -> tuple[float, float, float]:
    """``(threshold, its smoothed accuracy, its own accuracy)``."""
    kernel = np.ones(2 * window + 1)
    counts = np.convolve(np.ones_like(curve), kernel, mode="same")
    smooth = np.convolve(curve, kernel, mode="same") / counts
    i = int(np.argmax(np.where(thresholds >= low - 1e-9, smooth, -1.0)))
    return float(thresholds[i]), float(smooth[i]), float(curve[i])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.json files of evaluate runs (--out DIR)")
    parser.add_argument("--window", type=int, default=2, help="neighbours averaged each side (default 2)")
    parser.add_argument("--low", type=float, default=0.05, help="lowest threshold chosen (default 0.05)")
    args = parser.parse_args(argv)
    print("| method | queries | threshold | peak-box acc (smoothed) | at the threshold | best of the sweep |")
    print("|---|---|---|---|---|---|")
    for path in args.results:
        r = json.loads(Path(path).read_text())
        t = np.asarray(r["thresholds"])
        for label, m in r["methods"].items():
            curve = np.asarray(m["curves"]["peak_50"], dtype=float)
            th, sm, at = choose(t, curve, args.window, args.low)
            print(f"| `{label}` | {m['n']} | {th:.2f} | {sm:.3f} | {at:.3f} | {curve.max():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
