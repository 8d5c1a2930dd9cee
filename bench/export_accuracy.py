"""Detection quality of the exported graphs: demo-set AUC / AP of fp32, fp16 and int8.

    .venv/bin/python bench/export_accuracy.py CHECKPOINT [--root demo_data] [--out DIR]

CHECKPOINT is a demo-trained checkpoint (`bnwvad-train` writes runs/demo-*/best.pt). Each
precision is exported (verified as usual), every test video is scored through ONNX
Runtime, and AUC / AP are computed exactly as bnwvad-eval does; fp16 is also scored in
true fp16 arithmetic (onnx.reference), since ONNX Runtime's CPU provider computes many
fp16 ops in fp32. Changes are reported in percentage points against fp32, with the
limits of bnwvad/tolerances.py (metric_fp16, metric_int8).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--root", default="demo_data", help="Demo dataset root (bnwvad.demo layout).")
    p.add_argument("--out", help="Keep the exported graphs here (default: a temporary folder).")
    p.add_argument("--no-true-fp16", action="store_true", help="Skip the (slow) onnx.reference fp16 pass.")
    args = p.parse_args(argv)

    import torch

    from bnwvad.checkpoint import load_model
    from bnwvad.evaluate import dataset_files, load_test_set
    from bnwvad.export import export_onnx
    from bnwvad.export.verify import ort_runner, reference_runner
    from bnwvad.features import load_video
    from bnwvad.metrics import evaluate_scores
    from bnwvad.tolerances import TOLERANCES

    test = load_test_set(dataset_files("demo", root=args.root))
    feats = {v.name: load_video(v) for v in test.videos}
    model = load_model(args.checkpoint)
    scores: dict[str, dict[str, np.ndarray]] = {}
    with torch.no_grad():
        scores["pytorch"] = {k: model(torch.from_numpy(f)[None]).anomaly[0].numpy() for k, f in feats.items()}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        for prec in ("fp32", "fp16", "int8"):
            path = export_onnx(args.checkpoint, out / f"model_{prec}.onnx", precision=prec).path
            runners = {prec: ort_runner(path)}
            if prec == "fp16" and not args.no_true_fp16:
                runners["fp16 (true fp16 arithmetic)"] = reference_runner(path)
            for name, run in runners.items():
                scores[name] = {k: run(f[None], np.array([f.shape[1]], np.int64))[2][0] for k, f in feats.items()}
    metrics = {k: evaluate_scores(s, test.videos, test.annotations, snippets=test.snippets)
               for k, s in scores.items()}
    base = metrics["fp32"]
    print(f"{len(test.videos)} test videos; changes in percentage points against the fp32 graph")
    for name, m in metrics.items():
        d_auc, d_ap = 100 * (m["auc"] - base["auc"]), 100 * (m["ap"] - base["ap"])
        limit = TOLERANCES["metric_int8" if name == "int8" else "metric_fp16"].limit
        flag = "" if name in ("pytorch", "fp32") else ("  ok" if max(abs(d_auc), abs(d_ap)) <= limit
                                                      else f"  EXCEEDS {limit:g}")
        print(f"  {name:28s} AUC {100 * m['auc']:7.3f}  AP {100 * m['ap']:7.3f}  "
              f"dAUC {d_auc:+.4f}  dAP {d_ap:+.4f}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
