"""Throughput of `fastloc-viz boxes` against the model-bound limit (issue 12).

The limit: the median wall time of `explain` on preloaded tensors (decoded and resized
beforehand, the same batch size), as images/s. Then `fastloc_viz.boxes` on the same images from
their files (a DataLoader with workers decoding beside the model), with 1 process, and with 2
under `torchrun --nproc_per_node 2` (gloo on CPU, 1 thread each); each reports images/s.

    OMP_NUM_THREADS=1 python benchmarks/boxes_throughput.py [--n 64] [--method fastloc]

It prints one table and writes it as JSON (--json-out). The machine's load average is
printed alongside: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imagenet-val-wsol"
sys.path.insert(0, str(REPO))


def limit(n: int, method: str, batch_size: int, repeats: int) -> float:
    import torch

    import fastloc_viz as fv
    from fastloc_viz.imaging.batch import load_batch

    bundle = fv.load_model("efficientnet_lite0")
    files = sorted((DATA / "images").iterdir())[:n]
    x = load_batch(files, bundle.input_size)
    fv.explain(bundle, x[:batch_size], method=method, batch_size=batch_size, progress=False)  # warm-up
    per_image = []
    for _ in range(repeats):
        for s in range(0, n, batch_size):
            t0 = time.perf_counter()
            fv.explain(bundle, x[s : s + batch_size], method=method, batch_size=batch_size, progress=False)
            per_image.append((time.perf_counter() - t0) / len(x[s : s + batch_size]))
    del torch
    return 1.0 / statistics.median(per_image)


def boxes_run(n: int, method: str, batch_size: int, procs: int, workers: int, work: Path) -> float:
    src = work / "src.csv"
    lines = (DATA / "annotations.csv").read_text().splitlines()
    src.write_text("image,label\n" + "".join(f"{DATA / r.split(',')[0]},\n" for r in lines[1 : n + 1]))
    out = work / f"boxes-{procs}.json"
    args = ["boxes", str(src), "--out", str(out), "--method", method, "--batch-size", str(batch_size),
            "--workers", str(workers), "--restart", "--no-progress", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if procs == 1:
        cmd = [sys.executable, "-m", "fastloc_viz.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "fastloc_viz.cli", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    return summary["images_per_s"], summary["steady_images_per_s"]


def limit_processes(procs: int, n: int, method: str, batch_size: int, repeats: int) -> float:
    """The model-bound limit of ``procs`` processes at once: each runs :func:`limit` on its
    own preloaded tensors at the same time; their images/s summed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, __file__, "--limit-only", "--n", str(n), "--method", method,
           "--batch-size", str(batch_size), "--repeats", str(repeats)]
    running = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
               for _ in range(procs)]
    return sum(float(p.communicate()[0].split()[-1]) for p in running)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--method", default="fastloc")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--limit-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.limit_only:
        print(limit(args.n, args.method, args.batch_size, args.repeats))
        return
    load0 = os.getloadavg()
    # the limits are measured before and after the runs and averaged: the machine's load drifts
    lim1 = [limit_processes(1, args.n, args.method, args.batch_size, args.repeats)]
    lim2 = [limit_processes(2, args.n, args.method, args.batch_size, args.repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        one = boxes_run(args.n, args.method, args.batch_size, 1, args.workers, Path(tmp))
        one0 = boxes_run(args.n, args.method, args.batch_size, 1, 0, Path(tmp))
        two = boxes_run(args.n, args.method, args.batch_size, 2, args.workers, Path(tmp))
    lim1.append(limit_processes(1, args.n, args.method, args.batch_size, args.repeats))
    lim2.append(limit_processes(2, args.n, args.method, args.batch_size, args.repeats))
    l1, l2 = statistics.mean(lim1), statistics.mean(lim2)
    load1 = os.getloadavg()
    res = {"n": args.n, "method": args.method, "batch_size": args.batch_size, "workers_per_process": args.workers,
           "limit_1_process": lim1, "limit_2_processes": lim2,
           "boxes_1_process": one, "boxes_1_process_no_workers": one0, "boxes_2_processes": two,
           "load_average_before": load0, "load_average_after": load1, "cpus": os.cpu_count(),
           "torch": torch.__version__}
    print(f"model-bound limit (explain on preloaded tensors, 1 thread per process; before, after): "
          f"1 process {lim1[0]:.2f}, {lim1[1]:.2f} images/s; 2 processes at once {lim2[0]:.2f}, {lim2[1]:.2f} images/s")
    for name, (total, steady), lim in ((f"1 process, {args.workers} decoding worker(s)", one, l1),
                                       ("1 process, decoding in the main process", one0, l1),
                                       (f"2 processes (torchrun), {args.workers} worker(s) each", two, l2)):
        print(f"boxes, {name}: end to end {total:.2f} images/s ({total / lim:.0%} of the limit), "
              f"steady (after the first batch) {steady:.2f} images/s ({steady / lim:.0%})")
    print(f"load average before {load0}, after {load1}; {os.cpu_count()} CPUs")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
