"""I3D feature extraction speed: ONNX Runtime (fp32, fp16) against PyTorch eager, same network.

    .venv/bin/python bench/extract.py            # full: 1, 5, 10 crops, more rounds, fp16
    .venv/bin/python bench/extract.py --quick    # a few minutes on 2 busy cores: fewer rounds

What it measures, on the full-size InceptionI3d (1024-d features) with the deterministic
reference weights (bnwvad.i3d.deterministic_state_dict: random, so only speed and agreement
mean anything here), exported once to --cache by bnwvad.export.i3d:

- per snippet, where the time goes: decode (PyAV, a synthetic 320x240 H.264 video at 30 fps),
  resize to shorter side 256, crop + scale to (C, 3, 16, 224, 224), and the network;
- the network for C = 1, 5, 10 crops (one call of C clips = one snippet), ONNX Runtime fp32 and
  PyTorch eager timed side by side in interleaved rounds (bench/bnwbench/measure.py), and fp16
  (and int8, where it keeps the features within tolerance) beside them;
- snippets per second and the real-time factor (seconds of 30 fps video per second: a snippet
  is 16 / 30 s) of the whole pipeline (decode + resize + crops + network, one thread of work
  after another, as bnwvad-extract runs it on CPU: the decode thread overlaps a little);
- the fraction of the machine's measured fp32 GEMM peak (fastest of torch / numpy / ONNX
  Runtime 2048^3 matmul, timed in the same run) that the network reaches, from its convolution
  FLOPs (counted with forward hooks).

Writes <out>/report.json and report.md, prints the markdown. Timings on a shared machine are
noisy: the rounds are interleaved so drift hits every contender alike, and the other
processes' CPU share during the rounds is reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bnwvad.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402
from bnwbench.measure import fastest_probe, interleaved_rounds, matmul_probes, say, summarize, Stopwatch  # noqa: E402

FPS = 30.0
SNIPPET_S = 16 / FPS


def make_video(path: Path, frames: int, h: int = 240, w: int = 320) -> Path:
    """A synthetic H.264 video: a moving gradient with noise (compressible, not constant)."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(int(FPS)))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            base = ((xx + 4 * i) % 256)[..., None] * np.array([1.0, 0.6, 0.3]) + ((yy + i) % 64)[..., None]
            img = np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def conv_flops(model) -> float:
    """FLOPs (2 x multiply-adds) of the convolutions for one clip (1, 3, 16, 224, 224). Hooks on
    the Unit3D blocks (their output has the convolution's shape): a Unit3D calls F.conv3d with
    its conv's weight where the padding is symmetric, which a hook on the Conv3d would miss."""
    import torch

    from bnwvad.i3d import Unit3D

    total = [0.0]

    def hook(mod, inp, out):
        k = mod.conv3d.weight.shape            # (out, in, t, h, w)
        total[0] += 2.0 * out.numel() * k[1] * k[2] * k[3] * k[4]

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Unit3D)]
    with torch.inference_mode():
        model.clip_features(torch.zeros(1, 3, 16, 224, 224))
    for h in hs:
        h.remove()
    return total[0]


def ensure_exports(cache: Path, fp16: bool, log) -> dict[str, Path]:
    import torch

    from bnwvad.export.i3d import default_clip_cases, export_i3d
    from bnwvad.i3d import deterministic_state_dict

    cache.mkdir(parents=True, exist_ok=True)
    weights = cache / "i3d_det.pt"
    if not weights.is_file():
        torch.save(deterministic_state_dict(), weights)
    cases = {"random": default_clip_cases()["random"][:1]}
    out = {}
    for prec in ("fp32", "fp16") if fp16 else ("fp32",):
        path = cache / f"i3d_{prec}.onnx"
        if not path.is_file():
            log(f"exporting the full-size I3D ({prec}) to {path} (a minute or two)")
            export_i3d(weights, path, precision=prec, cases=cases, log=lambda *_: None)
        out[prec] = path
    return out


def int8_export(fp32: Path, cache: Path) -> Path | None:
    """Dynamic int8 weight quantisation of the convolutions (ONNX Runtime's quantize_dynamic);
    None where it cannot be made."""
    path = cache / "i3d_int8.onnx"
    if path.is_file():
        return path
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
        return path
    except Exception as e:                  # noqa: BLE001 - reported, not fatal
        say(f"int8: quantize_dynamic failed ({type(e).__name__}: {e})")
        return None


def detector_score_change(runners: dict, resized: list, cache: Path, clock) -> dict | None:
    """What each precision's feature error does to BN-WVAD: every snippet of the video
    extracted with the detector's crop count by each runner, the (1, C, T, D) features scored by
    the published XD-Violence model (ONNX Runtime fp32; bnwbench.models picks it, or the
    paper-size architecture with random weights when the weights are absent), and the score /
    anomaly of each precision's features compared with those of ort-fp32's features.
    None when the detector cannot be loaded (its dimension must be the extractor's 1024)."""
    from bnwbench.models import export_graphs, load_speed_model
    from bnwvad.runtime.contract import error
    from bnwvad.runtime.runners import load_runner
    from bnwvad.runtime.video import snippet_clips

    model, desc, _, preset = load_speed_model(None, None, cache, seed=0)
    onnx_path = export_graphs(model, ["fp32"], cache, "speed", preset, clock)["fp32"]
    detector = load_runner(onnx_path, "ort-cpu")
    try:
        c = detector.meta.crops or 10
        if detector.meta.feature_dim != 1024:
            say(f"score change: skipped, the detector takes D = {detector.meta.feature_dim}, not 1024", clock)
            return None
        out = {}
        for name, r in runners.items():
            feats = np.stack([r.run(snippet_clips(f, c, resized=True)) for f in resized], axis=1)  # (C, T, D)
            out[name] = detector.run(feats[None], np.array([feats.shape[1]], np.int64))
        ref = out["ort-fp32"]
        change = {name: {k: error(o[k], ref[k], "abs") for k in ("score", "anomaly")}
                  for name, o in out.items() if name != "ort-fp32"}
        return {"detector": desc["kind"], "crops": c, "snippets": len(resized),
                "anomaly_max": float(np.abs(ref["anomaly"]).max()), "max_abs_change": change}
    finally:
        detector.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, no fp16/int8 unless cached")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crops", default="1,5,10")
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "extract_cache")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "extract")
    ap.add_argument("--no-fp16", action="store_true")
    ap.add_argument("--int8", action="store_true", help="also try a dynamic int8 graph")
    ap.add_argument("--backend", choices=["ort-cpu", "ort-cuda", "ort-trt"], default="ort-cpu",
                    help="ONNX Runtime provider of the graphs (strict: no silent fallback to CPU)")
    ap.add_argument("--torch-device", default="cpu", help="device of the PyTorch eager reference (cpu, cuda)")
    args = ap.parse_args(argv)
    clock = Stopwatch()
    import onnxruntime  # noqa: F401  (before torch: one OpenMP runtime each, as in bench/run.py)
    import torch

    from bnwvad.i3d import TorchExtractor, deterministic_state_dict, load_i3d
    from bnwvad.runtime.contract import error
    from bnwvad.runtime.errors import RuntimeFailure
    from bnwvad.runtime.extractor import ExtractorRunner
    from bnwvad.runtime.video import VideoReader, resize_frames, snippet_clips

    torch.set_num_threads(args.threads)
    crops_list = [int(c) for c in args.crops.split(",")]
    want_fp16 = not args.no_fp16 and (not args.quick or (args.cache / "i3d_fp16.onnx").is_file())
    paths = ensure_exports(args.cache, want_fp16, lambda m: say(m, clock))
    model = load_i3d(deterministic_state_dict())
    flops = conv_flops(model)
    say(f"I3D: {flops / 1e9:.1f} GFLOP per clip (convolutions)", clock)
    torch_ex = TorchExtractor(model, device=args.torch_device)

    def ort_runner(path):
        return ExtractorRunner(path, args.backend, strict=True, threads=args.threads, batch=10)

    try:
        runners = {"ort-fp32": ort_runner(paths["fp32"])}
    except RuntimeFailure as e:        # e.g. --backend ort-cuda without onnxruntime-gpu: say so, no fallback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "fp16" in paths:
        runners["ort-fp16"] = ort_runner(paths["fp16"])
    if args.int8:
        p8 = int8_export(paths["fp32"], args.cache)
        if p8 is not None:
            try:
                runners["ort-int8"] = ort_runner(p8)
            except Exception as e:          # noqa: BLE001
                say(f"int8: cannot be run ({type(e).__name__}: {e})", clock)

    # -- the stages of one snippet, on a real (synthetic) video -------------------------------
    frames = 64 if args.quick else 160
    video = make_video(args.cache / f"synthetic_{frames}f.mp4", frames)
    t0 = time.perf_counter()
    raw = [s.frames for s in VideoReader(video)]
    decode = (time.perf_counter() - t0) / len(raw)
    t0 = time.perf_counter()
    resized = [resize_frames(f) for f in raw]
    resize = (time.perf_counter() - t0) / len(raw)
    crop = {}
    for c in crops_list:
        t0 = time.perf_counter()
        for f in resized:
            snippet_clips(f, c, resized=True)
        crop[c] = (time.perf_counter() - t0) / len(resized)
    say(f"per snippet ({len(raw)} snippets of {video.name}): decode {decode * 1e3:.1f} ms, resize "
        f"{resize * 1e3:.1f} ms, crops {', '.join(f'{c}: {v * 1e3:.1f} ms' for c, v in crop.items())}", clock)

    # -- agreement: fp16 / int8 against fp32 on the video's clips -----------------------------
    clips10 = snippet_clips(resized[0], 10, resized=True)
    ref = runners["ort-fp32"].run(clips10)
    agree = {"torch-eager": error(torch_ex.run(clips10), ref, "rel_to_max")}
    for name, r in runners.items():
        if name != "ort-fp32":
            agree[name] = error(r.run(clips10), ref, "rel_to_max")
    say("agreement with ort-fp32 (max |d| / max |ref|, 10 clips): "
        + ", ".join(f"{k} {v:.2e}" for k, v in agree.items()), clock)
    scores = detector_score_change(runners, resized, args.cache, clock)
    if scores is not None:
        say("BN-WVAD score change against ort-fp32's features (max abs): " + ", ".join(
            f"{k} score {v['score']:.2e} anomaly {v['anomaly']:.2e}" for k, v in scores["max_abs_change"].items()),
            clock)

    # -- the network, interleaved ------------------------------------------------------------
    runs = {}
    for c in crops_list:
        clips = snippet_clips(resized[0], c, resized=True)
        for name, r in runners.items():
            runs[f"{name}/{c}"] = (lambda r=r, x=clips: r.run(x, check=False))
        runs[f"torch-eager/{c}"] = (lambda x=clips: torch_ex.run(x, check=False))
    peak_name = None
    probes = matmul_probes(2048, args.threads)
    peak_name, rates = fastest_probe(probes)
    runs["gemm-peak"] = probes[peak_name][0]
    rounds = 2 if args.quick else 5
    say(f"timing {len(runs)} contenders, {rounds} interleaved rounds after 1 warm-up", clock)
    times, foreign = interleaved_rounds(runs, warmup=1, min_rounds=rounds, max_rounds=rounds, budget_s=0,
                                        on_round=lambda k, _: say(f"round {k}/{rounds}", clock))
    peak = probes[peak_name][1] / (np.median(times["gemm-peak"]))
    rows = []
    for key, ts in times.items():
        if key == "gemm-peak":
            continue
        name, c = key.split("/")
        c = int(c)
        net = float(np.median(ts))
        per = decode + resize + crop[c] + net
        rows.append({"backend": name, "crops": c, "network_ms": net * 1e3, **summarize(ts),
                     "network_snippets_per_s": 1 / net, "pipeline_ms": per * 1e3,
                     "snippets_per_s": 1 / per, "realtime_factor": SNIPPET_S / per,
                     "gflops": flops * c / net / 1e9, "peak_fraction": flops * c / net / peak})
    rows.sort(key=lambda r: (r["crops"], r["backend"]))
    devices = {"onnxruntime": f"{args.backend} ({runners['ort-fp32'].providers[0]})", "torch": args.torch_device}
    report = {"threads": args.threads, "quick": args.quick, "devices": devices, "gflop_per_clip": flops / 1e9,
              "gemm_peak_gflops": peak / 1e9, "gemm_peak_library": peak_name, "gemm_probe_rates": rates,
              "per_snippet_ms": {"decode": decode * 1e3, "resize": resize * 1e3,
                                 "crops": {c: v * 1e3 for c, v in crop.items()}},
              "agreement_rel_to_max": agree, "detector_score_change": scores, "foreign_cpu_share": foreign, "rows": rows,
              "video": {"frames": frames, "size": "320x240", "fps": FPS, "codec": "h264"}}
    md = [f"# I3D extraction speed ({args.threads} threads{', quick' if args.quick else ''})", "",
          f"ONNX Runtime on {devices['onnxruntime']}, PyTorch eager on {args.torch_device}; the GEMM peak "
          "is the CPU's.", "",
          f"Full-size InceptionI3d, {flops / 1e9:.1f} GFLOP per clip; fp32 GEMM peak "
          f"{peak / 1e9:.0f} GFLOP/s ({peak_name}, measured in the same rounds). Other processes' CPU "
          f"share during the rounds: {', '.join(f'{f:.0%}' for f in foreign if f is not None) or 'n/a'}.", "",
          f"Per snippet: decode {decode * 1e3:.1f} ms, resize {resize * 1e3:.1f} ms, crops "
          + ", ".join(f"{c}: {v * 1e3:.1f} ms" for c, v in crop.items()) + ".", "",
          "| crops | backend | network ms (median) | pipeline snippets/s | real-time factor (30 fps) | "
          "GFLOP/s | % of GEMM peak |",
          "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['crops']} | {r['backend']} | {r['network_ms']:.0f} | {r['snippets_per_s']:.2f} | "
                  f"{r['realtime_factor']:.2f} | {r['gflops']:.0f} | {100 * r['peak_fraction']:.0f}% |")
    md += ["", "Agreement with ort-fp32 on 10 clips (max |d| / max |fp32|): "
           + ", ".join(f"{k} {v:.1e}" for k, v in agree.items()) + " (contract: onnx_fp32 1e-4; fp16 "
           "per bnwvad.runtime.contract.TOLERANCES)."]
    if scores is not None:
        md += ["", f"What that does to BN-WVAD ({scores['detector']}, {scores['crops']} crops, the video's "
               f"{scores['snippets']} snippets; max |anomaly| {scores['anomaly_max']:.1f}): max abs change of "
               "score / anomaly against ort-fp32's features: "
               + ", ".join(f"{k} {v['score']:.1e} / {v['anomaly']:.1e}" for k, v in scores["max_abs_change"].items())
               + "."]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "report.json", report, indent=2)
    atomic_write_bytes(args.out / "report.md", ("\n".join(md) + "\n").encode())
    print("\n".join(md))
    for r in runners.values():
        r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
