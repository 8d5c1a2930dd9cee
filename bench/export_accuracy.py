"""Detection quality of the exported graphs: demo-set AUC / AP of fp32, fp16 and int8.

    .venv/bin/python bench/export_accuracy.py CHECKPOINT [--root demo_data] [--out DIR]

CHECKPOINT is a demo-trained checkpoint (`bnwvad-train` writes runs/demo-*/best.pt). Each
precision is exported (verified as usual), every test video is scored through ONNX
Runtime, and AUC / AP are computed exactly as bnwvad-eval does; fp16 is also scored in
true fp16 arithmetic (onnx.reference), since ONNX Runtime's CPU provider computes many
fp16 ops in fp32. Changes are reported in percentage points against fp32, with the
limits of the tolerance table (bnwvad.runtime.contract: metric_fp16, metric_int8).
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

    from bnwvad.checkpoint import load_model
    from bnwvad.evaluate import dataset_files, load_test_set
    from bnwvad.export import export_onnx
    from bnwvad.export.verify import OnnxReferenceRunner
    from bnwvad.features import load_video
    from bnwvad.metrics import evaluate_scores
    from bnwvad.runtime import load_runner
    from bnwvad.runtime.contract import TOLERANCES, metric_tolerance_for
    from bnwvad.torch_runner import TorchRunner

    from bnwbench.accuracy import metric_change

    test = load_test_set(dataset_files("demo", root=args.root))
    feats = {v.name: load_video(v) for v in test.videos}
    model = load_model(args.checkpoint)
    runners = {"pytorch": ("fp32", TorchRunner(model))}
    scores: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        for prec in ("fp32", "fp16", "int8"):
            path = export_onnx(args.checkpoint, out / f"model_{prec}.onnx", precision=prec).path
            runners[prec] = (prec, load_runner(path, "ort-cpu"))
            if prec == "fp16" and not args.no_true_fp16:
                runners["fp16 (true fp16 arithmetic)"] = (prec, OnnxReferenceRunner(path))
        for name, (_, runner) in runners.items():
            scores[name] = {k: runner.run(f[None], np.array([f.shape[1]], np.int64), check=False)["anomaly"][0]
                            for k, f in feats.items()}
            runner.close()
    metrics = {k: evaluate_scores(s, test.videos, test.annotations, snippets=test.snippets)
               for k, s in scores.items()}
    base = metrics["fp32"]
    print(f"{len(test.videos)} test videos; changes in percentage points against the fp32 graph")
    for name, m in metrics.items():
        prec = runners[name][0]
        row = metric_change(m, base, metric_tolerance_for(prec))
        flag = ""
        if name not in ("pytorch", "fp32"):
            flag = "  ok" if row["ok"] else f"  EXCEEDS {TOLERANCES[row['metric_tolerance']].limit:g}"
        print(f"  {name:28s} AUC {100 * m['auc']:7.3f}  AP {100 * m['ap']:7.3f}  "
              f"dAUC {row['delta_auc_points']:+.4f}  dAP {row['delta_ap_points']:+.4f}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
