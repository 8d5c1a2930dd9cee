"""Speed of the exported graph in ONNX Runtime (CPU) against PyTorch eager, side by side.

    .venv/bin/python bench/export_speed.py [--checkpoint ../shared/reference/official_state_dict.pkl]
        [--preset xd] [--shapes 1,10,200 1,10,37] [--repeats 15] [--threads 2]
        [--variants default fp16 int8 ...] [--json out.json]

Every round runs every backend once on the same inputs, in rotated order, plus two
matrix-multiply probes (ONNX Runtime's MatMul and torch.matmul at the embedding GEMM's
size, (N*C*T, D) x (D, 3E)) that measure the fp32 peak in the same conditions: on a
shared CPU only ratios measured side by side mean anything. Reported per shape: median
milliseconds, ratio to PyTorch eager (higher is faster), GFLOP/s from
`BNWVAD.num_flops` (the model's nominal work, whatever a graph skips) and that rate as
a fraction of each measured peak.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bnwbench.measure import interleaved_rounds, matmul_probes
from bnwbench.plan import PUBLISHED
from bnwbench.system import load_average

# Graph variants: (precision, graph options, session config entries).
VARIANTS = {
    "default": ("fp32", {}, {}),
    "no-spin": ("fp32", {}, {"session.intra_op.allow_spinning": "0"}),
    "qkv-separate": ("fp32", {"qkv": "separate"}, {}),
    "mha": ("fp32", {"attention": "mha"}, {}),
    "adds-chain": ("fp32", {"adds": "chain"}, {}),
    "mask-mul": ("fp32", {"mask": "mul"}, {}),
    "fused-qkv": ("fp32", {"qkv": "fused"}, {}),
    "fp16": ("fp16", {}, {}),
    "int8": ("int8", {}, {}),
}


def _session(proto_bytes: bytes, threads: int, config: dict, level: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(proto_bytes, so, providers=["CPUExecutionProvider"])


def _graph(deploy, precision: str, options: dict) -> bytes:
    from bnwvad.export.graph import build_graph
    from bnwvad.export.quantize import quantize_int8

    if precision == "int8":
        proto = quantize_int8(build_graph(deploy, options={"row_scale": True, **options}))
    else:
        proto = build_graph(deploy, precision=precision, options=options)
    return proto.SerializeToString()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(PUBLISHED))
    p.add_argument("--preset", default="xd")
    p.add_argument("--shapes", nargs="+", default=["1,10,200", "1,10,37"], metavar="N,C,T")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS))
    p.add_argument("--pause", type=float, default=0.05, help="Seconds between timed calls.")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time (what a user waits); cpu: this process's CPU time, which "
                        "time stolen by other tenants does not inflate (use with --threads 1, where "
                        "no worker thread spins).")
    p.add_argument("--json", help="Also write the results here.")
    args = p.parse_args(argv)

    import torch

    from bnwvad.checkpoint import load_model
    from bnwvad.export.fold import fold
    from bnwvad.runtime.contract import OUTPUTS, compare_outputs

    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    model = load_model(args.checkpoint, preset=args.preset)
    deploy = fold(model)
    sessions = {name: _session(_graph(deploy, *VARIANTS[name][:2]), args.threads, VARIANTS[name][2])
                for name in args.variants}
    cfg = model.config
    results = []
    print(f"CPU threads {args.threads}, ONNX Runtime {__import__('onnxruntime').__version__}, "
          f"torch {torch.__version__}; {args.repeats} interleaved rounds, {args.clock} clock")
    for spec in args.shapes:
        n, c, t = (int(v) for v in spec.split(","))
        rng = np.random.default_rng(0)
        x = (rng.random((n, c, t, cfg.feature_dim), dtype=np.float32) * 2).astype(np.float32)
        lengths = np.full(n, t, np.int64)
        tx, tl = torch.from_numpy(x), torch.from_numpy(lengths)
        feeds = {"features": x, "lengths": lengths}

        def torch_eager():
            with torch.inference_mode():
                return model(tx, tl)
        ref = torch_eager()
        ref = {k: getattr(ref, k).numpy() for k in OUTPUTS}
        runs = {"pytorch": torch_eager}
        errs = {}
        for name, sess in sessions.items():
            runs[name] = (lambda s=sess: s.run(None, feeds))
            out = dict(zip((o.name for o in sess.get_outputs()), runs[name]()))
            errs[name] = max(d.max_rel for d in compare_outputs(out, ref, lengths))
        # The fp32 peak at the embedding GEMM's size, (N*C*T, D) x (D, 3E), in ORT and torch.
        probes = matmul_probes(shape=(n * c * t, cfg.feature_dim, 3 * cfg.embed_dim), threads=args.threads,
                               libraries=("onnxruntime", "torch"))
        mm_flops = probes["torch"][1]
        runs["peak:ort-matmul"], runs["peak:torch-matmul"] = probes["onnxruntime"][0], probes["torch"][0]
        # Interleaved rounds, rotated order, a pause before each call: the previous backend's
        # worker threads (ORT's pool, OpenMP) stop spinning instead of stealing this call's cores.
        times, _ = interleaved_rounds(runs, warmup=1, min_rounds=args.repeats, max_rounds=args.repeats,
                                      budget_s=0.0, gap_s=args.pause, clock=clock)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        flops = model.num_flops(t, crops=c) * n
        # The peak is the fastest GEMM seen (ORT's or torch's, whichever is higher): the
        # model's best round is compared with it, and its median with the probes' median.
        peak_best = max(mm_flops / best[k] for k in ("peak:ort-matmul", "peak:torch-matmul"))
        peak_med = max(mm_flops / med[k] for k in ("peak:ort-matmul", "peak:torch-matmul"))
        load = (load_average() or ["?"])[0]
        print(f"\nN,C,T = {n},{c},{t}: {flops / 1e9:.2f} GFLOP per call (nominal); fp32 matmul peak "
              f"{peak_best / 1e9:.0f} GFLOP/s best, {peak_med / 1e9:.0f} median "
              f"(ORT {mm_flops / med['peak:ort-matmul'] / 1e9:.0f}, torch {mm_flops / med['peak:torch-matmul'] / 1e9:.0f}); "
              f"load average {load}")
        print(f"  {'backend':14s} {'median ms':>9s} {'vs torch':>9s} {'GFLOP/s':>8s} {'/peak(med)':>10s} "
              f"{'best ms':>8s} {'/peak(best)':>11s} {'max rel err':>11s}")
        for name in ["pytorch", *sessions]:
            rate = flops / med[name]
            row = {"shape": [n, c, t], "backend": name, "ms": med[name] * 1e3, "best_ms": best[name] * 1e3,
                   "speedup_vs_pytorch": med["pytorch"] / med[name], "gflops": rate / 1e9,
                   "fraction_of_peak_median": rate / peak_med,
                   "fraction_of_peak_best": flops / best[name] / peak_best,
                   "max_rel_error": errs.get(name, 0.0)}
            results.append(row)
            print(f"  {name:14s} {row['ms']:9.1f} {row['speedup_vs_pytorch']:8.2f}x {row['gflops']:8.1f} "
                  f"{row['fraction_of_peak_median']:10.2f} {row['best_ms']:8.1f} {row['fraction_of_peak_best']:11.2f} "
                  f"{row['max_rel_error']:11.1e}")
        results.append({"shape": [n, c, t], "peak_gflops_best": peak_best / 1e9, "peak_gflops_median": peak_med / 1e9,
                        "load_average": load})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
