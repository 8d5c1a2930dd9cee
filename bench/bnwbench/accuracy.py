"""Accuracy against torch_eager: the worst output error of each backend over every comparison
the phases make (`Errors`), and AUC / AP on the demo test set (`demo_accuracy`).

Outputs are compared by bnwvad.runtime.contract.compare_outputs and judged by its tolerance
table: the project's one comparison and one table, as in export verification and tests.
"""
from __future__ import annotations

import warnings

import numpy as np

from bnwvad.runtime.contract import OUTPUTS, TOLERANCES, check, compare_outputs

from .backends import Backend, ort_trt_kwargs
from .measure import say
from .models import Models
from .plan import REFERENCE

# The metric compare_outputs measures; every entry that judges a backend's outputs uses it.
OUTPUT_METRIC = "rel_to_max"


def as_batch(outputs, lengths=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({name: (N, T)}, lengths (N,)) from one runner's outputs: (N, T) arrays, or one video's
    (T,) arrays (then lengths default to T)."""
    out = {k: np.atleast_2d(np.asarray(outputs[k])) for k in OUTPUTS}
    n, t = out[OUTPUTS[0]].shape
    return out, (np.full(n, t, np.int64) if lengths is None else np.asarray(lengths, np.int64))


class Errors:
    """Worst error per output of one backend against the reference, over many comparisons,
    under its tolerance entry (None: the reference itself, always 0)."""

    def __init__(self, tolerance: str | None):
        if tolerance is not None and TOLERANCES[tolerance].metric != OUTPUT_METRIC:
            raise ValueError(f"tolerance {tolerance!r} is {TOLERANCES[tolerance].metric}; outputs are compared "
                             f"{OUTPUT_METRIC}")
        self.tolerance = tolerance
        self.limit = TOLERANCES[tolerance].limit if tolerance else None
        self.worst = {k: {"max_abs": 0.0, "error": 0.0, "ok": True, "finite": True, "where": None} for k in OUTPUTS}
        self.comparisons = 0

    def add(self, ours, ref, where: str, lengths=None) -> None:
        """Compare one call's (or one video's) outputs with the reference's, over the real
        snippets (`lengths`; default all)."""
        ours, lengths = as_batch(ours, lengths)
        ref, _ = as_batch(ref, lengths)
        self.comparisons += 1
        for diff in compare_outputs(ours, ref, lengths):
            w = self.worst[diff.output]
            err = diff.max_rel if self.tolerance else 0.0
            if (not diff.finite and w["finite"]) or err > w["error"] or w["where"] is None:
                w["where"] = where
            w["max_abs"] = max(w["max_abs"], diff.max_abs)
            w["error"] = max(w["error"], err)
            w["ok"] = w["ok"] and (diff.within(self.limit) if self.tolerance else diff.finite)
            w["finite"] = w["finite"] and diff.finite

    @property
    def ok(self) -> bool:
        return all(w["ok"] for w in self.worst.values())

    def to_dict(self) -> dict:
        tol = TOLERANCES.get(self.tolerance) if self.tolerance else None
        return {"tolerance": self.tolerance, "limit": tol.limit if tol else None,
                "metric": tol.metric if tol else None, "comparisons": self.comparisons,
                "outputs": self.worst, "ok": self.ok}


def demo_accuracy(backends: list[Backend], models: Models, test, videos, errors: dict[str, Errors],
                  clock) -> dict:
    """Each backend scores the demo test videos (through the runtime's Scorer); AUC / AP
    against PyTorch eager's, and per-video output errors into `errors`."""
    import torch

    from bnwvad.evaluate import score_videos
    from bnwvad.features import load_video
    from bnwvad.metrics import evaluate_scores
    from bnwvad.runtime import ArraySource, Scorer

    snippets = {v.name: test.snippets[v.name] for v in videos} if test.snippets else None
    feats = {v.name: load_video(v, feature_dim=models.demo.config.feature_dim) for v in videos}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)        # a 64-wide model: 1 thread is faster and not timed here
    try:
        ref_scores = score_videos(models.demo, videos, progress=False)
        ref = {k: {o: getattr(v, o) for o in OUTPUTS} for k, v in ref_scores.items()}

        def metrics(anomaly):
            with warnings.catch_warnings():
                # A subset of the test list (--demo-videos) leaves annotated videos out: expected.
                warnings.filterwarnings("ignore", message=r".*annotated videos are not in the test list")
                m = evaluate_scores(anomaly, videos, test.annotations, snippets=snippets, per_class=False)
            return {"auc": m["auc"], "ap": m["ap"]}
        out = {"videos": len(videos), "abnormal_videos": sum(1 for v in videos if v.label == 1),
               "model": models.demo_source, "reference": metrics({k: v["anomaly"] for k, v in ref.items()}),
               "backends": {}}
        say(f"demo accuracy: {len(videos)} test videos; torch_eager AUC {100 * out['reference']['auc']:.2f} "
            f"AP {100 * out['reference']['ap']:.2f}", clock)
        for b in backends:
            if not b.measured or b.name == REFERENCE:
                continue
            try:
                runner = _demo_runner(b, models)
                results = Scorer(runner, crops=None).score([ArraySource(k, v) for k, v in feats.items()])
            except Exception as e:          # noqa: BLE001 - reported per backend
                out["backends"][b.name] = {"error": f"{type(e).__name__}: {e}"}
                b.fail(f"demo accuracy: {type(e).__name__}: {e}")
                continue
            ours = {r.name: {o: getattr(r, o) for o in OUTPUTS} for r in results}
            for name, o in ours.items():
                errors[b.name].add(o, ref[name], f"demo video {name}")
            m = metrics({k: v["anomaly"] for k, v in ours.items()})
            out["backends"][b.name] = metric_change(m, out["reference"], b.spec.metric_tolerance)
            if hasattr(runner, "close"):
                runner.close()
    finally:
        torch.set_num_threads(old_threads)
    return out


def metric_change(m: dict, ref: dict, tolerance: str | None) -> dict:
    """AUC / AP of a backend, their change in percentage points against the reference's, and
    whether the change is within `tolerance` (a "points" entry; None: not judged)."""
    row = {"auc": m["auc"], "ap": m["ap"],
           "delta_auc_points": 100 * (m["auc"] - ref["auc"]),
           "delta_ap_points": 100 * (m["ap"] - ref["ap"]),
           "metric_tolerance": tolerance, "ok": True}
    if tolerance:
        row["ok"] = all(check(tolerance, 100 * m[k], 100 * ref[k])[1] for k in ("auc", "ap"))
    return row


def _demo_runner(b: Backend, models: Models):
    """The demo model on backend `b` (1 thread: a small model, not timed)."""
    from bnwvad.runtime import load_runner
    from bnwvad.torch_runner import TorchRunner

    s = b.spec
    if s.kind == "torch":
        return TorchRunner(models.demo, device=s.device, name=s.name)
    if s.kind == "ort":
        path = models.demo_files[s.precision]
        return load_runner(path, s.runtime_backend, strict=True, threads=1,
                           **ort_trt_kwargs(s, path.parent, (8, 5, 512)))
    return load_runner(models.demo_files[f"engine_{s.precision}"], "tensorrt", strict=True)


__all__ = ["Errors", "as_batch", "demo_accuracy", "metric_change"]
