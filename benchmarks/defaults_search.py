"""Choose FastLoc's defaults (combine rule, box threshold) on a development split, across models.

Two steps, so the expensive one runs once per model:

    # 1. one fastloc pass per query: the k neuron maps and the probe layer's Grad-CAM, cached
    python benchmarks/defaults_search.py dump --model efficientnet_lite0 --out /tmp/ds \
        single=../shared/data/imagenet-val-wsol:0:300 coll=/tmp/c_dev_object
    # 2. every candidate rule, every threshold, from the cache (no model)
    python benchmarks/defaults_search.py score --out /tmp/ds --models efficientnet_lite0,efficientnet_lite1 \
        --sets single,coll,collq=coll@/tmp/c_dev_quadrant
    # 3. held out: the registered rules at their default thresholds against Grad-CAM at its own,
    #    with paired 95 % intervals (and guided Grad-CAM from evaluate caches, paired by row)
    python benchmarks/defaults_search.py compare --out /tmp/ds --models efficientnet_lite0 \
        --sets ho,hocoll,hocollq=hocoll@/tmp/c_test_quadrant --rules within_cam,refine_cam,sum --cache /tmp/ds/gg

The probe layer's Grad-CAM computed by fastloc from its ranking gradient *is* the ``gradcam``
method's map at the same layer (tests/test_core.py checks it against Captum), so one pass
scores Grad-CAM and every fastloc combine rule on identical inputs. ``collq=coll@DIR`` reuses
the maps of set ``coll`` with the ground truth of another CSV built from the same collages
(``--box quadrant``). Prints, per rule, pointing, MaxBoxAcc@0.5, MaxBoxAccV2 and the
peak-component box accuracy at every threshold, per model and set, and the threshold that
maximizes the mean peak-box accuracy over models and sets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastloc_viz.core import maps as M  # noqa: E402
from fastloc_viz.evaluation.metrics import IOU_LEVELS, pointing_hit, sweep_all  # noqa: E402
from fastloc_viz.imaging.dataset import LocalizationDataset  # noqa: E402
from fastloc_viz.methods.combine import combine_maps  # noqa: E402

THRESHOLDS = np.round(np.arange(0, 100, 2) / 100, 2)


def _split(spec: str) -> tuple[str, str, tuple[int, int] | None]:
    name, _, rest = spec.partition("=")
    parts = rest.split(":")
    rows = (int(parts[1]), int(parts[2])) if len(parts) == 3 else None
    return name, parts[0], rows


def dump(args) -> None:
    from tqdm import tqdm

    from fastloc_viz import explain, load_model

    bundle = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for spec in args.sets:
        name, path, rows = _split(spec)
        target = out / f"{args.model}__{name}.npz"
        if target.exists():
            continue
        data = [q for q in LocalizationDataset(path) if rows is None or rows[0] <= q.row < rows[1]]
        nmaps, cams, labels, preds, ids = [], [], [], [], []
        for i in tqdm(range(0, len(data), args.batch), desc=f"{args.model} {name}"):
            chunk = data[i : i + args.batch]
            es = explain(bundle, [q.load_image() for q in chunk], method="fastloc",
                         target=[q.label for q in chunk], progress=False)
            for q, e in zip(chunk, es):
                nmaps.append(e.neuron_maps.astype(np.float16))
                cams.append(e.class_map.astype(np.float16))
                labels.append(q.label)
                preds.append(e.top5[0].index)
                ids.append(q.row)
        np.savez(target, neuron_maps=np.stack(nmaps), class_map=np.stack(cams), label=np.array(labels),
                 prediction=np.array(preds), row=np.array(ids), data=str(path))


def _g(maps, cam, sigma, power=1.0):
    return M.normalize(M.smooth((maps * cam**power).mean(axis=0), sigma))


def _region(cam: np.ndarray, tau: float) -> np.ndarray:
    """The connected component of ``cam >= tau * max`` that holds the class map's peak."""
    return M.select_components(M.threshold_mask(cam, tau), "peak", cam).astype(np.float32)


def rules(maps: np.ndarray, cam: np.ndarray) -> dict[str, np.ndarray]:
    """Candidate localization maps from the ``k x H x W`` neuron maps and the class map."""
    sigma = M.default_sigma(cam.shape)
    cam = M.normalize(cam)
    g1 = _g(maps, cam, sigma)
    g2 = _g(maps, cam, sigma, 2.0)
    s = M.normalize(M.smooth(maps.mean(axis=0), sigma))
    return {
        "gradcam": cam,
        "gate_cam": M.normalize(g1 + cam),
        "sum_cam": M.normalize(s + cam),
        "sum": s,
        "gate2_cam": M.normalize(g2 + cam),
        "gate_cam_w2": M.normalize(g1 + 2 * cam),
        "gate_x_cam": M.normalize(g1 * cam),
        "gate_x_cam_sqrt": M.normalize(np.sqrt(g1 * cam)),
        "cam_x_1+gate": M.normalize(cam * (1 + g1)),
        "cam_x_1+gate2": M.normalize(cam * (1 + g2)),
        "gate_cam_w3": M.normalize(g1 + 3 * cam),
        "anchored30": M.normalize(g1 * _region(cam, 0.3) + cam),
        "anchored50": M.normalize(g1 * _region(cam, 0.5) + cam),
        "anchored70": M.normalize(g1 * _region(cam, 0.7) + cam),
        "anchored50_gate2": M.normalize(g2 * _region(cam, 0.5) + cam),
        "anchored50_x": M.normalize(cam * (1 + g2 * _region(cam, 0.5))),
        "anchored70_x": M.normalize(cam * (1 + g2 * _region(cam, 0.7))),
        "anchored50_x1": M.normalize(cam * (1 + g1 * _region(cam, 0.5))),
        "lift50": cam + 0.9 * (1 - cam) * g1 * _region(cam, 0.5),
        "lift": cam + 0.9 * (1 - cam) * g1,
        "lift2": cam + 0.9 * (1 - cam) * g2,
        "refine_cam": combine_maps(maps, rule="refine_cam", sigma=sigma, class_map=cam),
        "lift2_r20": cam + 0.9 * (1 - cam) * g2 * _region(cam, 0.2),
        "lift2_r30": cam + 0.9 * (1 - cam) * g2 * _region(cam, 0.3),
        "lift3": cam + 0.9 * (1 - cam) * _g(maps, cam, sigma, 3.0),
        "lift2_half": cam + 0.5 * (1 - cam) * g2,
        "gate2_cam_w2": M.normalize(g2 + 2 * cam),
        "cam2_x_1+gate": M.normalize(cam**2 * (1 + g1)),
        "cam_x_1+gate_hard": M.normalize(cam * (1 + _g(maps, (cam >= 0.5).astype(np.float32), sigma))),
        "cam_x_1+gate_hard2": M.normalize(cam * (1 + _g(maps, cam * (cam >= 0.5), sigma))),
    }


def _score_one(job) -> dict:
    out, model, name, maps_from, csv_dir, wanted = job
    z = np.load(Path(out) / f"{model}__{maps_from}.npz")
    data = LocalizationDataset(csv_dir or str(z["data"]))
    by_row = {q.row: q for q in data}
    # an NpzFile reads the whole array on every z[key]: read each once, not once per query
    neuron_maps, class_maps = z["neuron_maps"], z["class_map"]
    h, w = class_maps.shape[-2:]
    acc: dict[str, dict[str, list]] = {}
    for i, row in enumerate(z["row"]):
        q = by_row[int(row)]
        assert q.label == int(z["label"][i]), "maps and ground truth from different collages"
        gt = q.boxes_at((h, w))
        for rule, sal in rules(neuron_maps[i].astype(np.float32), class_maps[i].astype(np.float32)).items():
            if wanted and rule not in wanted.split(","):
                continue
            largest, all_, peak = sweep_all(sal, gt, THRESHOLDS)
            a = acc.setdefault(rule, {"largest": [], "all": [], "peak": [], "pointing": []})
            a["largest"].append(largest)
            a["all"].append(all_)
            a["peak"].append(peak)
            a["pointing"].append(pointing_hit(sal, gt))
    return {rule: {k: np.array(v) for k, v in a.items()} for rule, a in acc.items()}


def _sets(spec: str) -> dict[str, tuple[str, str | None]]:
    """``NAME[=MAPS_SET@CSV_DIR],...`` -> ``{name: (the dump's set, the ground truth's CSV
    directory or None: the dump's own)}``."""
    sets = {}
    for item in spec.split(","):
        name, _, rest = item.partition("=")
        maps_from, _, csv_dir = rest.partition("@")
        sets[name] = (maps_from or name, csv_dir or None)
    return sets


def score(args) -> None:
    sets = _sets(args.sets)
    models = args.models.split(",")
    jobs = [(args.out, model, name, maps_from, csv_dir, args.rules) for model in models
            for name, (maps_from, csv_dir) in sets.items()]
    from multiprocessing import Pool

    with Pool(args.jobs) as pool:
        parts = pool.map(_score_one, jobs)
    results: dict = {}  # (model, set, rule) -> dict of arrays
    for (_, model, name, *_), part in zip(jobs, parts):
        for rule, a in part.items():
            results[model, name, rule] = a
    rule_names = list(dict.fromkeys(r for (_, _, r) in results))
    for name in sets:
        print(f"\n### {name}\n")
        print("| rule | " + " | ".join(f"{m}: pointing | MaxBoxAcc@0.5 | V2 | peak@best (t)" for m in models) + " |")
        print("|---|" + "---|" * (4 * len(models)))
        for rule in rule_names:
            cells = []
            for m in models:
                r = results[m, name, rule]
                mba = (r["largest"] >= 0.5).mean(0)
                v2 = np.mean([(r["all"] >= d).mean(0).max() for d in IOU_LEVELS])
                pk = (r["peak"] >= 0.5).mean(0)
                j = int(np.argmax(pk))
                cells += [f"{r['pointing'].mean():.3f}", f"{mba.max():.3f}", f"{v2:.3f}", f"{pk[j]:.3f} ({THRESHOLDS[j]:.2f})"]
            print(f"| {rule} | " + " | ".join(cells) + " |")
    print("\n### default threshold: peak-box accuracy (IoU 0.5), single images and collages weighted")
    print("equally (the collage sets averaged first), then the mean over models\n")
    single = [n for n in sets if not n.startswith("coll")]
    colls = [n for n in sets if n.startswith("coll")]

    def acc(m, names, rule):
        return np.mean([(results[m, n, rule]["peak"] >= 0.5).mean(0) for n in names], axis=0)

    for rule in rule_names:
        parts = [names for names in (single, colls) if names]
        curve = np.mean([np.mean([acc(m, names, rule) for names in parts], axis=0) for m in models], axis=0)
        j = int(np.argmax(curve))
        near = ", ".join(f"{t:.2f}: {curve[k]:.3f}" for k, t in enumerate(THRESHOLDS) if abs(k - j) <= 3)
        print(f"- {rule}: best t = {THRESHOLDS[j]:.2f} ({curve[j]:.3f}); {near}")


def _per_query(z: dict, by_row: dict, rule: str, threshold: float, kept: list[int]) -> dict[str, np.ndarray]:
    """paired_bootstrap's per-query arrays for one registered rule (``"gradcam"``: the class map)
    at its default ``threshold``, on the arrays of a dump (its indices ``kept``; ``by_row``: the
    ground truth's queries by row)."""
    neuron_maps, class_maps = z["neuron_maps"], z["class_map"]
    h, w = class_maps.shape[-2:]
    cols: dict[str, list] = {"hits50": [], "hits_peak": [], "all": [], "pointing": [], "gt_known": []}
    j = int(np.argmin(np.abs(THRESHOLDS - threshold)))
    assert abs(THRESHOLDS[j] - threshold) < 1e-9, f"{threshold} is not on the sweep"
    for i in kept:
        q = by_row[int(z["row"][i])]
        assert q.label == int(z["label"][i]), "maps and ground truth from different collages"
        gt = q.boxes_at((h, w))
        cam = M.normalize(class_maps[i].astype(np.float32))
        sal = cam if rule == "gradcam" else combine_maps(neuron_maps[i].astype(np.float32), rule=rule, class_map=cam)
        largest, all_, peak = sweep_all(sal, gt, THRESHOLDS)
        cols["hits50"].append(largest >= 0.5)
        cols["hits_peak"].append(peak >= 0.5)
        cols["all"].append(all_)
        cols["pointing"].append(float(pointing_hit(sal, gt)))
        cols["gt_known"].append(float(peak[j] >= 0.5))
    every = np.array(cols.pop("all"))
    out = {k: np.array(v) for k, v in cols.items()}
    out["hits_all"] = np.stack([every >= level for level in IOU_LEVELS])
    return out


def compare(args) -> None:
    """Held-out figures: each rule at its registered default threshold against Grad-CAM at its
    own, per model and set, with paired 95 % intervals; ``--cache`` adds an ``evaluate`` run's
    methods (guided Grad-CAM) on the single images, paired on the same rows."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from paired_bootstrap import differences, load, per_query

    from fastloc_viz.methods import default_of
    from fastloc_viz.methods.combine import RULES

    rules = args.rules.split(",")
    names = ("MaxBoxAcc@0.5", "GT-known loc", "pointing")
    print("| model | set | rule | " + " | ".join(f"{n} (vs {args.ref})" for n in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for model in args.models.split(","):
        for name, (maps_from, csv_dir) in _sets(args.sets).items():
            # read every array once per set (an NpzFile re-reads the whole array per z[key])
            with np.load(Path(args.out) / f"{model}__{maps_from}.npz") as npz:
                z = {key: npz[key] for key in ("neuron_maps", "class_map", "row", "label", "data")}
            by_row = {q.row: q for q in LocalizationDataset(csv_dir or str(z["data"]))}
            # every query, or (--one-box) those whose image has one ground-truth box
            kept = [i for i, row in enumerate(z["row"]) if not args.one_box or len(by_row[int(row)].boxes) == 1]
            q = {r: _per_query(z, by_row, r, RULES[r].threshold if r in RULES else default_of(r, "threshold"), kept)
                 for r in dict.fromkeys([args.ref, *rules])}
            if args.cache and name == args.cache_set:
                for label, run in load(Path(args.cache) / model / "cache").items():
                    q[label] = per_query(run["results"], [int(z["row"][i]) for i in kept])
            for r, arrays in q.items():
                if r == args.ref:
                    continue
                d = differences(arrays, q[args.ref], args.n_boot, 0)
                cells = [f"{d[n]['a']:.3f} vs {d[n]['b']:.3f}: {d[n]['diff']:+.3f} [{d[n]['lo']:+.3f}, {d[n]['hi']:+.3f}]"
                         for n in names]
                print(f"| {model} | {name} (n={len(kept)}) | {r} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--model", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("sets", nargs="+", help="NAME=DIR[:START:STOP]")
    s = sub.add_parser("score")
    s.add_argument("--out", required=True)
    s.add_argument("--models", required=True)
    s.add_argument("--sets", required=True, help="NAME[=MAPS_SET@CSV_DIR],...")
    s.add_argument("--rules", default=None, help="only these rules (comma-separated)")
    s.add_argument("--jobs", type=int, default=2)
    c = sub.add_parser("compare", help="held-out: rules at their defaults vs a reference, paired intervals")
    c.add_argument("--out", required=True)
    c.add_argument("--models", required=True)
    c.add_argument("--sets", required=True, help="NAME[=MAPS_SET@CSV_DIR],...")
    c.add_argument("--rules", required=True, help="registered combine rules (and 'gradcam')")
    c.add_argument("--ref", default="gradcam")
    c.add_argument("--cache", default=None, help="DIR with DIR/<model>/cache from evaluate runs (guided Grad-CAM)")
    c.add_argument("--cache-set", default="ho", help="the set those runs cover")
    c.add_argument("--n-boot", type=int, default=2000)
    c.add_argument("--one-box", action="store_true", help="only the images with one ground-truth box")
    args = parser.parse_args(argv)
    {"dump": dump, "score": score, "compare": compare}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
