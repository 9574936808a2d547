"""``fastloc-viz evaluate``: the pipeline on a stub, then the real model on the shared images.

The data tests read ``../shared/data/imagenet-val-wsol`` seen from the repository root (or
``$FASTLOC_SHARED_DATA``) and are skipped when it (or the ``lite0`` extra) is absent, except
under CI, where that fails (``conftest.skip_or_fail``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA as DATA
from conftest import require

from fastloc_viz.core.parallel import Dist
from fastloc_viz.core.results import Explanation, Prediction
from fastloc_viz.evaluation import command, runner
from fastloc_viz.evaluation.base import MethodSpec, RowCache, parse_methods
from fastloc_viz.evaluation.runner import evaluate
from fastloc_viz.methods import get_method
from fastloc_viz.views.evaluation_plots import evaluation_pages
from fastloc_viz.imaging.dataset import LocalizationDataset, parse_boxes

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {
    "maxboxacc_30", "maxboxacc_50", "maxboxacc_70", "maxboxacc_v2", "gt_known_loc",
    "top1_loc", "pointing", "centre_in_box", "sec_per_image",
}
# what may differ between runs of the same queries: wall time, memory, the machine
VOLATILE = {"sec_per_image", "peak_memory_mb", "sec_per_image_faithfulness", "sec_per_image_sanity"}


# ------------------------------------------------------------------ stub pipeline tests
def _write_dataset(root: Path, rows: list[tuple[int, str]], size: int = 32) -> Path:
    """Tiny PNGs and a CSV; ``rows`` are ``(label, boxes)`` per image."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    lines = ["image,label,wnid,width,height,orig_width,orig_height,boxes"]
    for i, (label, boxes) in enumerate(rows):
        Image.new("RGB", (size, size), (i * 10 % 255, 0, 0)).save(root / f"images/{i}.png")
        lines.append(f"images/{i}.png,{label},n{label:08d},{size},{size},{size * 2},{size * 2},{boxes}")
    (root / "annotations.csv").write_text("\n".join(lines) + "\n")
    return root


class _Bundle:
    name = "stub"
    input_size = (16, 16)  # half the stored 32 px: boxes scale by 0.5
    default_layer = None
    device = None


def _stub_explain(calls: list):
    """An ``explain`` whose map is 1 inside box ``(4, 4, 12, 12)`` of the 16 px grid and whose
    prediction is always class 1."""

    def explain(bundle, image, *, method, target, **kwargs):
        calls.append((method, target, kwargs))
        sal = np.zeros((16, 16), dtype=np.float32)
        sal[4:12, 4:12] = 1.0
        return Explanation(
            method=method, target=target, target_name=str(target),
            top5=(Prediction(1, "one", 0.9),), layer=None, saliency=sal, box=(4, 4, 12, 12),
            image=np.zeros((16, 16, 3), dtype=np.float32), time_s=0.0,
        )

    return explain


@pytest.fixture
def stub_data(tmp_path, monkeypatch):
    # stored boxes (8, 8, 24, 24) = (4, 4, 12, 12) on the 16 px grid: a perfect hit;
    # (0, 0, 8, 8) -> (0, 0, 4, 4): a miss; two boxes, one of them the hit.
    root = _write_dataset(tmp_path / "d", [
        (1, "8 8 24 24"), (2, "0 0 8 8"), (1, "0 0 8 8;8 8 24 24"), (3, "8 8 24 24"),
    ])
    calls: list = []
    monkeypatch.setattr(runner, "_explain_function", lambda: _stub_explain(calls))
    return LocalizationDataset(root), calls


def test_evaluate_pipeline_counts_exactly(stub_data):
    data, calls = stub_data
    r = evaluate(_Bundle(), data, ["gradcam", MethodSpec("fastloc", {"k": 3})], layer="L")
    assert r["n"] == 4
    m = r["methods"]["gradcam"]
    assert m["gt_known_loc"] == 0.75 and m["maxboxacc_50"] == 0.75
    assert m["top1_acc"] == 0.5  # labels 1, 2, 1, 3 against prediction 1
    assert m["top1_loc"] == 0.5  # rows 0 and 2
    assert m["pointing"] == 1.0  # peak (4.5, 4.5) is 5 px from the miss box (0, 0, 4, 4)
    assert m["centre_in_box"] == 0.75
    assert set(r["methods"]) == {"gradcam", "fastloc[k=3]"}
    # each row's label is the target; the spec's kwargs and the layer reach explain()
    assert [c[1] for c in calls if c[0] == "gradcam"] == [1, 2, 1, 3]
    assert calls[1] == ("fastloc", 1, {"k": 3, "layer": "L"})


def test_shards_cover_every_row_once_and_merge_to_the_whole(stub_data):
    data, _ = stub_data
    whole = evaluate(_Bundle(), data, ["gradcam"])["methods"]["gradcam"]
    parts = [evaluate(_Bundle(), data, ["gradcam"], dist=Dist(rank=r, world_size=3))
             for r in range(3)]
    assert [p["n"] for p in parts] == [2, 1, 1]  # rows 0,3 | 1 | 2
    hits = sum(p["methods"]["gradcam"]["gt_known_loc"] * p["n"] for p in parts)
    assert hits == whole["gt_known_loc"] * 4


def test_cache_resumes_and_ignores_a_cut_line(stub_data, tmp_path):
    data, calls = stub_data
    cache = tmp_path / "cache"
    first = evaluate(_Bundle(), data, ["gradcam"], cache_dir=cache, max_queries=2)
    assert first["n"] == 2 and len(calls) == 2
    (part,) = cache.glob("localization/*/part-0.jsonl")
    with open(part, "a") as f:
        f.write('{"row": 2, "label": 1, "imag')  # a run killed mid-write
    again = evaluate(_Bundle(), data, ["gradcam"], cache_dir=cache)
    assert [c[1] for c in calls] == [1, 2, 1, 3]  # only rows 2 and 3 were computed again
    fresh = evaluate(_Bundle(), data, ["gradcam"])
    assert _stable(again) == _stable(fresh)
    lines = part.read_text().splitlines()
    assert len(lines) == 5 and sum(1 for ln in lines if ln.endswith("}")) == 4
    # a cached row whose label has changed in the CSV is not reused
    spec = json.loads((part.parent / "spec.json").read_text())
    assert len(RowCache(cache / "localization", spec).load(data)) == 4
    csv = data.csv_path.read_text().replace("images/3.png,3,", "images/3.png,4,")
    data.csv_path.write_text(csv)
    assert sorted(RowCache(cache / "localization", spec).load(LocalizationDataset(data.root))) == [0, 1, 2]


def test_a_changed_default_does_not_reuse_cached_rows(stub_data, tmp_path, monkeypatch):
    data, calls = stub_data
    cache = tmp_path / "cache"
    evaluate(_Bundle(), data, ["fastloc"], cache_dir=cache)
    evaluate(_Bundle(), data, ["fastloc"], cache_dir=cache)
    assert len(calls) == 5  # the second run came from the cache (one call asks for the layer)
    fastloc = type(get_method("fastloc"))
    monkeypatch.setattr(fastloc, "Params", dataclasses.make_dataclass(
        "Params", [("combine", str, "sum")], bases=(fastloc.Params,), frozen=True))
    evaluate(_Bundle(), data, ["fastloc"], cache_dir=cache)
    assert len(calls) == 9 and len(list(cache.glob("localization/*/spec.json"))) == 2


def test_parse_methods_and_errors():
    specs = parse_methods("gradcam, fastloc[k=10,rank_grad=plain,sigma=8.5,combine=none]")
    assert specs[0] == MethodSpec("gradcam")
    assert dict(specs[1].kwargs) == {"k": 10, "rank_grad": "plain", "sigma": 8.5, "combine": None}
    assert specs[1].label == "fastloc[combine=none,k=10,rank_grad=plain,sigma=8.5]"
    with pytest.raises(ValueError, match=r"method='gradcan' is not one of \['fastloc'"):
        parse_methods("gradcan")
    with pytest.raises(ValueError, match="'k' in method 'fastloc\\[k\\]' is not key=value"):
        parse_methods("fastloc[k]")
    with pytest.raises(ValueError, match="methods repeat"):
        parse_methods("gradcam,gradcam")


def test_data_reader_scales_boxes_and_names_bad_rows(tmp_path):
    root = _write_dataset(tmp_path / "d", [(5, "3.2 4 10 30.5;0 0 32 32")])
    (q,) = LocalizationDataset(root)
    np.testing.assert_allclose(q.boxes_at((16, 64)), [[6.4, 2, 20, 15.25], [0, 0, 64, 16]])
    assert q.load_image().size == (32, 32)
    with pytest.raises(ValueError, match="box '1 2 3' must be four numbers"):
        parse_boxes("1 2 3")
    with pytest.raises(ValueError, match="x1 < x0"):
        parse_boxes("5 0 1 1")
    bad = tmp_path / "bad.csv"
    bad.write_text((root / "annotations.csv").read_text().replace("5,n", "five,n"))
    with pytest.raises(ValueError, match=r"bad.csv row 0 \('images/0.png'\)"):
        LocalizationDataset(bad)
    with pytest.raises(FileNotFoundError, match="no annotations.csv"):
        LocalizationDataset(tmp_path)


def test_outputs_are_written(stub_data, tmp_path):
    data, _ = stub_data
    r = evaluate(_Bundle(), data, ["gradcam"])
    paths = command.write_outputs(r, tmp_path / "out", pages=evaluation_pages)
    assert [p.name for p in paths] == ["results.json", "results.md", "accuracy_vs_threshold.html"]
    assert json.loads(paths[0].read_text())["methods"]["gradcam"]["maxboxacc_50"] == 0.75
    assert "| `gradcam` | - | 0.750 | 0.750 | 0.750 | 0.01 | 0.750 | 0.750 | 0.500 | 1.000 | 0.750 |" in (
        paths[1].read_text()
    )
    assert set(command.json_summary(r)) == {"n", "model", "methods", "skipped"}


# ------------------------------------------------------------------ the real model
needs_data = pytest.mark.usefixtures("shared_data")  # skipped without it; a failure under CI


def _cli(*args: str, env: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "fastloc_viz.evaluation", str(DATA), *args]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _stable(results: dict) -> dict:
    return {label: {k: v for k, v in m.items() if k not in VOLATILE}
            for label, m in results["methods"].items()}


@pytest.fixture(scope="module")
def bundle():
    require("efficientnet_lite_pytorch")
    from fastloc_viz import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def reference20(bundle):
    """Single-process, uncached results on the first 20 images (gradcam, fastloc)."""
    return evaluate(bundle, LocalizationDataset(DATA, limit=20), ["gradcam", "fastloc"])


@pytest.mark.slow
@needs_data
def test_first_50_images_sane_numbers_and_exact_json_schema(bundle, tmp_path, capsys):
    from fastloc_viz.cli import main

    assert main(["evaluate", str(DATA), "--methods", "gradcam,fastloc", "--limit", "50",
                 "--json", "--no-progress", "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"n", "model", "methods"}
    assert out["n"] == 50 and out["model"] == "efficientnet_lite0"
    assert set(out["methods"]) == {"gradcam", "fastloc"}
    for m in out["methods"].values():
        assert set(m) == SCHEMA
        for k, v in m.items():
            assert isinstance(v, float)
            assert v > 0 if k == "sec_per_image" else 0.0 <= v <= 1.0
    assert out["methods"]["gradcam"]["maxboxacc_50"] >= 0.5
    assert out["methods"]["fastloc"]["pointing"] >= 0.5
    # above the whole-image box (0.47 on the shared data), which the poster's stride-16 layer
    # with the neuron maps alone did not beat (0.56 here); measured 0.78 (Grad-CAM 0.74)
    assert out["methods"]["fastloc"]["maxboxacc_50"] >= 0.65
    assert (tmp_path / "results.md").read_text().count("| `") == 2
    full = json.loads((tmp_path / "results.json").read_text())
    assert full["methods"]["gradcam"]["maxboxacc_50"] == out["methods"]["gradcam"]["maxboxacc_50"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@needs_data
def test_torchrun_two_processes_equal_single_process(reference20, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "fastloc_viz.evaluation", str(DATA), "--methods", "gradcam,fastloc",
           "--limit", "20", "--no-cache", "--no-progress", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["world_size"] == 2 and results["n"] == 20
    assert _stable(results) == _stable(reference20)


@pytest.mark.slow
@needs_data
def test_torchrun_box_free_metrics_merge_to_the_single_process_result(shared_data, tmp_path):
    """Every metric family sharded over 2 gloo ranks (``torchrun -m fastloc_viz.evaluation``):
    each rank computes its own rows only, and the merge equals one process (``fastloc-viz
    evaluate``) exactly."""
    common = [str(shared_data), "--methods", "gradcam", "--metrics", "localization,faithfulness,sanity",
              "--limit", "5", "--steps", "4", "--sanity-depths", "1", "--sanity-limit", "3", "--no-progress"]
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "fastloc_viz.cli", "evaluate", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "fastloc_viz.evaluation",
                          *common, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    m = b["methods"]["gradcam"]
    assert (m["n"], m["n_faithfulness"], m["n_sanity"]) == (5, 5, 3)
    assert _stable(b) == _stable(a)
    for metric, rows in (("localization", {0: [0, 2, 4], 1: [1, 3]}), ("faithfulness", {0: [0, 2, 4], 1: [1, 3]}),
                         ("sanity", {0: [0, 2], 1: [1]})):
        parts = sorted((tmp_path / "two" / "cache" / metric).glob("*/part-*.jsonl"))
        assert [p.name for p in parts] == ["part-0.jsonl", "part-1.jsonl"]
        assert [[json.loads(line)["row"] for line in p.read_text().splitlines()] for p in parts] == [rows[0], rows[1]]


def test_python_m_evaluation_is_the_cli_command(monkeypatch, capsys):
    """``python -m fastloc_viz.evaluation`` is ``fastloc-viz evaluate``: the same parser (its
    help, byte for byte) and the same error handling."""
    from fastloc_viz.cli import main

    monkeypatch.setenv("COLUMNS", "100")
    assert main(["evaluate", "--help"]) == 0
    cli_help = capsys.readouterr().out
    env = {**_env(), "COLUMNS": "100"}
    proc = subprocess.run([sys.executable, "-m", "fastloc_viz.evaluation", "--help"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == cli_help and "--sanity-limit" in cli_help
    bad = subprocess.run([sys.executable, "-m", "fastloc_viz.evaluation", "/no/such/data", "--no-progress"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("fastloc-viz: error: FileNotFoundError: no annotations.csv")


@pytest.mark.slow
@needs_data
def test_interrupted_run_resumes_to_the_same_results(reference20, tmp_path):
    cache = tmp_path / "cache"
    cmd = _cli("--methods", "gradcam,fastloc", "--limit", "20", "--cache", str(cache),
               "--no-progress", "--json")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        parts = list(cache.glob("localization/*/part-0.jsonl"))
        if len(parts) == 2 and min(len(p.read_text().splitlines()) for p in parts) >= 4:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    before = {p.parent.name: len(p.read_text().splitlines()) for p in cache.glob("localization/*/part-0.jsonl")}
    assert all(4 <= n < 20 for n in before.values())

    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    ref = command.json_summary(reference20)
    for label in ("gradcam", "fastloc"):
        got = {k: v for k, v in out["methods"][label].items() if k != "sec_per_image"}
        want = {k: v for k, v in ref["methods"][label].items() if k != "sec_per_image"}
        assert got == want
    after = {p.parent.name: p.read_text().splitlines() for p in cache.glob("localization/*/part-0.jsonl")}
    # the restart appended only the missing rows (a line cut by the kill may remain)
    for key, lines in after.items():
        rows = [json.loads(ln)["row"] for ln in lines if ln.endswith("}")]
        assert sorted(rows) == list(range(20))


def test_results_tables_reads_a_tree_of_runs(stub_data, tmp_path, capsys):
    """benchmarks/results_tables.py: every method's scores, then each against the baseline."""
    import importlib.util

    data, _ = stub_data
    for name in ("single", "coll"):
        evaluate(_Bundle(), data, ["gradcam", MethodSpec("fastloc", {"k": 3})],
                    cache_dir=tmp_path / "runs" / "stub" / name / "cache")
    path = REPO / "benchmarks" / "results_tables.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location("results_tables", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.main([str(tmp_path / "runs"), "--n-boot", "50"]) == 0
    finally:
        sys.path.remove(str(path.parent))
    out = capsys.readouterr().out.splitlines()
    # sets in the order single, coll; the baseline first; rows 0, 2 and 3 hit (IoU 1), row 1 misses
    assert out[4] == "| single (4) | `gradcam` | 0.750 | 0.750 | 0.750 | 1.000 | 0.750 |"
    assert out[5].startswith("| single (4) | `fastloc[k=3]` |") and out[6].startswith("| coll (4) | `gradcam`")
    # the stub gives both methods the same map: every paired difference is exactly zero
    diffs = [line for line in out if line.startswith("| single | `fastloc[k=3]`")]
    assert diffs == ["| single | `fastloc[k=3]` |" + " +0.000 [+0.000, +0.000] |" * 5]
