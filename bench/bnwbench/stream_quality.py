"""bench/stream.py's phases a and b: windowed scores against whole-video scores, for detection
quality on the demo test set (a) and agreement with the published XD-Violence weights (b)."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from bnwbench.measure import ForeignCpu, say
from bnwbench.plan import XD_LENGTHS
from bnwbench.report import fmt
from bnwbench.stream_plan import REFERENCE_VIDEO, StreamPlan
from bnwbench.workload import builtin_lengths, read_lengths, spread_sample


def agreement(windowed: dict[str, np.ndarray], full: dict[str, np.ndarray]) -> dict:
    """max |windowed - full|, that over max |full|, Pearson r over all snippets pooled, and the
    median of the per-video r (videos whose scores vary)."""
    w = np.concatenate([windowed[k] for k in full]).astype(np.float64)
    f = np.concatenate([full[k] for k in full]).astype(np.float64)
    per = []
    for k in full:
        a, b = windowed[k].astype(np.float64), full[k].astype(np.float64)
        if a.size > 2 and a.std() > 0 and b.std() > 0:
            per.append(float(np.corrcoef(a, b)[0, 1]))
    diff = float(np.abs(w - f).max())
    return {"max_abs": diff, "max_rel": diff / max(float(np.abs(f).max()), 1e-30),
            "whole_range": [float(f.min()), float(f.max())],
            "pearson": float(np.corrcoef(w, f)[0, 1]) if w.std() > 0 and f.std() > 0 else None,
            "pearson_median_video": float(np.median(per)) if per else None}


def phase_accuracy(plan: StreamPlan, models: dict, threads: int, clock) -> dict:
    from bnwvad.evaluate import dataset_files, load_test_set
    from bnwvad.features import load_video
    from bnwvad.metrics import evaluate_scores
    from bnwvad.runtime import ArraySource, Scorer, load_runner
    from bnwvad.runtime.stream import score_windowed

    test = load_test_set(dataset_files("demo", root=Path(models["demo"]["root"])))
    videos = test.videos
    if plan.demo_videos and plan.demo_videos < len(videos):
        videos = [videos[int(i)] for i in np.linspace(0, len(videos) - 1, plan.demo_videos).round()]
    snippets = {v.name: test.snippets[v.name] for v in videos} if test.snippets else None
    runner = load_runner(models["demo"]["path"], "ort-cpu", threads=threads)
    feats = {v.name: load_video(v, feature_dim=runner.meta.feature_dim) for v in videos}

    def metrics(anomaly):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*annotated videos are not in the test list")
            m = evaluate_scores(anomaly, videos, test.annotations, snippets=snippets, per_class=False)
        return {"auc": m["auc"], "ap": m["ap"]}

    # A 64-wide model: calls are bounded by the memory budget only (max_rows=None) so many
    # windows go into one call; batching changes no result.
    full = {r.name: r.anomaly for r in Scorer(runner, crops=None, max_rows=None).score(
        [ArraySource(k, v) for k, v in feats.items()])}
    ref = metrics(full)
    say(f"a. demo test set, {len(videos)} videos: whole-video AUC {100 * ref['auc']:.2f} AP {100 * ref['ap']:.2f}",
        clock)

    def windowed(w, l, s):
        t0 = time.perf_counter()
        sc = {k: score_windowed(runner, v, w, l, s, crops=None, max_rows=None)["anomaly"] for k, v in feats.items()}
        m = metrics(sc)
        row = {"W": w, "L": l, "S": s, **m, "d_auc_points": 100 * (m["auc"] - ref["auc"]),
               "d_ap_points": 100 * (m["ap"] - ref["ap"]), **agreement(sc, full),
               "seconds": time.perf_counter() - t0}
        say(f"  W={w:<4} L={l:<3} S={s}: AUC {100 * m['auc']:.2f} AP {100 * m['ap']:.2f}, r {row['pearson']:.4f}",
            clock)
        return row

    with ForeignCpu() as fc:
        grid = [windowed(w, l, plan.step) for w in plan.windows for l in plan.lookaheads]
        sens = [windowed(w, l, s) for w, l, s in plan.sensitivity]
    runner.close()
    return {"videos": len(videos), "abnormal_videos": sum(1 for v in videos if v.label == 1),
            "snippets": int(sum(v.shape[1] for v in feats.values())),
            "crops": sorted({int(v.shape[0]) for v in feats.values()}), "step": plan.step,
            "model": {k: models["demo"][k] for k in ("checkpoint", "steps", "reused")},
            "full": ref, "grid": grid, "step_sensitivity": sens, "foreign_cpu_share": fc.share}


# -- b. agreement with offline scores, published XD model ---------------------------------
def xd_standins(count: int, dim: int, seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """{name: (1, T, D)} random stand-ins with the lengths of a spread sample of XD-Violence's
    test videos (test_snippets.csv; else a built-in spread), and where the lengths came from."""
    try:
        rows, src = read_lengths(XD_LENGTHS), f"{XD_LENGTHS.name} (XD-Violence test set)"
    except ValueError:
        rows, src = builtin_lengths(), "a built-in log-normal spread (XD-Violence's median and quartiles)"
    sample = spread_sample(rows, count)
    rng = np.random.default_rng(seed)
    out = {}
    for i, (_, t) in enumerate(sample):
        out[f"standin_{i:02d}_T{t}"] = (rng.random((1, t, dim), dtype=np.float32) * 2).astype(np.float32)
    return out, src


def phase_agreement(plan: StreamPlan, models: dict, threads: int, clock) -> dict:
    from bnwvad.runtime import ArraySource, Scorer, load_runner
    from bnwvad.runtime.stream import score_windowed

    runner = load_runner(models["xd"]["path"], "ort-cpu", threads=threads)
    d = runner.meta.feature_dim
    feats, src = xd_standins(plan.xd_videos, d)
    ref_video = None
    if REFERENCE_VIDEO.is_file():
        with np.load(REFERENCE_VIDEO, allow_pickle=False) as z:
            ref_video = {"features": z["features"].astype(np.float32), "anomaly": z["anomaly_crop_mean"]}
    scorer = Scorer(runner, crops=None)
    full = {r.name: r.anomaly for r in scorer.score([ArraySource(k, v) for k, v in feats.items()])}
    out = {"videos": len(feats), "lengths": [int(v.shape[1]) for v in feats.values()], "lengths_from": src,
           "crops": 1, "step": plan.step, "model": models["xd"]["source"], "grid": [], "step_sensitivity": []}
    if ref_video is not None:
        rf = scorer.score([ArraySource("T137", ref_video["features"])])[0].anomaly
        out["reference"] = {"video": REFERENCE_VIDEO.name, "T": int(rf.shape[0]), "crops": 5,
                            "whole_vs_published_max_abs": float(np.abs(rf - ref_video["anomaly"]).max())}
        ref_full = {"T137": rf}
    say(f"b. XD model, {len(feats)} stand-in videos (T {min(out['lengths'])}..{max(out['lengths'])}, 1 crop)"
        + (" + the reference video (T = 137, 5 crops)" if ref_video is not None else ""), clock)

    def windowed(w, l, s):
        t0 = time.perf_counter()
        sc = {k: score_windowed(runner, v, w, l, s, crops=None)["anomaly"] for k, v in feats.items()}
        row = {"W": w, "L": l, "S": s, **agreement(sc, full)}
        if ref_video is not None:
            r = score_windowed(runner, ref_video["features"], w, l, s, crops=None)["anomaly"]
            row["reference"] = agreement({"T137": r}, ref_full)
        row["seconds"] = time.perf_counter() - t0
        say(f"  W={w:<4} L={l:<3} S={s}: max |diff| {row['max_abs']:.4f} (rel {row['max_rel']:.2e}), "
            f"r {fmt(row['pearson'], '.4f')}" + (f"; T137 r {fmt(row['reference']['pearson'], '.4f')}"
                                                  if ref_video is not None else ""), clock)
        return row

    with ForeignCpu() as fc:
        out["grid"] = [windowed(w, l, plan.step) for w in plan.windows for l in plan.lookaheads]
        out["step_sensitivity"] = [windowed(w, l, s) for w, l, s in plan.sensitivity]
    out["foreign_cpu_share"] = fc.share
    runner.close()
    return out
