"""The report: report.json's assembly, its markdown, the latency chart and the headline line.

Everything here reads the report dict only (plain JSON data), so each piece can be checked on
a small hand-made report.
"""
from __future__ import annotations

import datetime as _dt
import io
import math
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .measure import GAP_S
from .plan import BUSY_SHARE, HEADLINE_T, LIBRARIES, MIN_CLEAN, REFERENCE, REPO, SCHEMA
from .system import git_revision, gpu_info, library_versions, load_average, machine_info, usable_cpus

HEADLINE_BACKEND = "ort_fp32"
GFLOPS_NOTE = ("GFLOP/s count the published model's operations (`BNWVAD.num_flops`); the exported graph folds the "
               "temporal branch's output projection into its input projection (export/fold.py) and so computes a "
               "little less, which lets its fraction of peak pass 1. Every backend is compared with the fp32 GEMM "
               "peak, so int8 and fp16 graphs pass 1 where their narrow types pay.")
BUSY_NOTE = ("Ratios are side by side, but PyTorch's OpenMP threads were seen to lose far more to contention than "
             "ONNX Runtime's pool, so ratios against torch_eager come out inflated and absolute numbers low")


# --------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------
def fmt(v, spec=".2f", none="–") -> str:
    """`v` formatted by `spec`; `none` for a missing or non-finite value."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def table(header: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines. `align` has one letter per column: l (left) or r (right).
    A row may have fewer cells than the header (one message for a backend that failed)."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: expected one of l / r per column ({len(header)})")

    def line(cells) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"
    return [line(header), "|" + "".join("---:|" if a == "r" else "---|" for a in align),
            *(line(row) for row in rows)]


def measured(report: dict) -> list[str]:
    return [n for n, b in report["backends"].items() if b["status"] == "measured"]


def headline_case(report: dict) -> dict | None:
    return next((c for c in report["latency"]["cases"] if c["T"] == HEADLINE_T), None)


def headline(report: dict) -> tuple[str, bool]:
    """(the run's last stdout line, whether it has its figures): ort_fp32 over torch_eager at
    C = 10, T = 200, and ort_fp32's fraction of the measured fp32 peak."""
    case = headline_case(report)
    row = case["backends"].get(HEADLINE_BACKEND) if case else None
    ok = bool(row and case["backends"].get(REFERENCE) and row.get("speedup_vs_torch") is not None)
    ratio = fmt(row["speedup_vs_torch"]) if ok else "n/a"
    frac = fmt(row["fraction_of_peak"]) if ok and row.get("fraction_of_peak") is not None else "n/a"
    return f"{HEADLINE_BACKEND}/torch_eager throughput ratio: {ratio}; fraction of peak: {frac}", ok


# --------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = [*_header(report), *_latency(report), *_throughput(report), *_memory(report), *_accuracy(report)]
    skipped = {n: b for n, b in report["backends"].items() if b["status"] != "measured"}
    if skipped:
        lines += ["", "### Not measured", ""]
        lines += [f"- {n} ({b['status']}): {b['reason']}" for n, b in skipped.items()]
    notes = [f"- {n}: {note}" for n, b in report["backends"].items() for note in b.get("notes", [])]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def _header(report: dict) -> list[str]:
    m, load, speed = report["machine"], report["load_average"], report["models"]["speed"]
    gpu = f"; GPU {m['gpu']['name']} ({m['gpu']['memory_gib']} GiB)" if m.get("gpu") else "; no GPU"
    busy = (f" (**busy machine**: other processes used up to {fmt(load.get('foreign_cpu_share_max'), '.0%')} of "
            f"the CPUs during the timed rounds. {BUSY_NOTE})" if load.get("busy") else "")
    return [
        f"## bnwvad benchmark ({report['mode']}) — {m['cpu']}, {m['usable_cpus']} CPUs, {m['ram_gib']} GiB RAM{gpu}",
        "",
        f"{report['created']}, bnwvad {report['libraries'].get('bnwvad')} ({report.get('git') or 'no git'}), "
        f"torch {report['libraries'].get('torch')}, onnxruntime {report['runtime_library']}, "
        f"{report['settings']['threads']} threads. Load average at start {load['start']}, at end {load['end']}"
        f"{busy}.",
        f"Timed model: {speed['kind']} (D = {speed['feature_dim']}, E = {speed['embed_dim']}); "
        f"{speed['mflop_per_snippet_crop_T200']:.1f} MFLOP per snippet-crop at T = 200. "
        f"Command: `{report['command']}`",
    ]


def _latency(report: dict) -> list[str]:
    lat, h = report["latency"], HEADLINE_T
    ts = [c["T"] for c in lat["cases"]]
    head = headline_case(report)
    rows = []
    for n in measured(report):
        cells = []
        for c in lat["cases"]:
            s = c["backends"].get(n)
            cells.append(f"{fmt(s['median_ms'], '.1f')} / {fmt(s['p90_ms'], '.1f')}" if s else "–")
        r = head["backends"].get(n) if head else None
        rows.append([n, ", ".join(report["backends"][n]["providers"]), *cells, fmt(r and r["speedup_vs_torch"]),
                     fmt(r and r["gflops"], ".1f"), fmt(r and r["fraction_of_peak"])])
    rows.append(["*other processes' CPU share*", "", *(fmt(c.get("foreign_cpu_share"), ".0%") for c in lat["cases"]),
                 "", "", ""])
    peaks = ", ".join(f"T = {c['T']}: " + "/".join(fmt(v, '.0f') for v in c.get("peak_gflops", {}).values())
                      for c in lat["cases"] if c.get("peak_gflops"))
    pk = report["peak"]
    lines = ["", f"### Latency, one video, C = {lat['C']} (median / p90 ms; speed-up vs torch_eager; GFLOP/s and "
                 f"fraction of the fp32 matmul peak at T = {h})", "",
             *table(["backend", "provider", *(f"T = {t}" for t in ts), f"× torch @{h}", f"GFLOP/s @{h}",
                     f"of peak @{h}"], "ll" + "r" * (len(ts) + 3), rows),
             "", GFLOPS_NOTE,
             f"Peak: fp32 GEMM {pk['size']}³ in {pk['library']} (the fastest at setup of "
             f"{', '.join(f'{k} {v:.0f}' for k, v in pk['setup_gflops'].items())} GFLOP/s), "
             f"{report['settings']['threads']} threads, timed in the same rounds, GFLOP/s: {peaks}."]
    hc = head["backends"].get(HEADLINE_BACKEND, {}) if head else {}
    if hc.get("speedup_vs_torch_clean") is not None:
        lines.append(f"At T = {h}, {head['rounds_clean']} rounds had other processes under {BUSY_SHARE:.0%} of the "
                     f"CPUs; on those: ort_fp32/torch_eager {hc['speedup_vs_torch_clean']:.2f}, "
                     f"fraction of peak {hc['fraction_of_peak_clean']:.2f}.")
    elif head:
        lines.append(f"At T = {h}, {head.get('rounds_clean', 0)} rounds had other processes under "
                     f"{BUSY_SHARE:.0%} of the CPUs (fewer than {MIN_CLEAN}: no figures of their own).")
    if hc.get("speedup_vs_torch_best") is not None:
        lines.append(f"Best rounds at T = {h} (the least disturbed; robust to other processes): "
                     f"ort_fp32/torch_eager {hc['speedup_vs_torch_best']:.2f}, fraction of peak "
                     f"{hc['fraction_of_peak_best']:.2f}.")
    for c in lat["cases"]:
        if c.get("skipped"):
            lines.append(f"T = {c['T']} not measured: {c['skipped']}.")
        lines += [f"Note: {note}." for note in c.get("notes", [])]
    return lines


def _throughput(report: dict) -> list[str]:
    thr = report.get("throughput")
    if not thr:
        return []
    src = thr["lengths_source"]
    src = Path(src).name if src.endswith(".csv") else src
    rows = [[n, f"{r['seconds']:.2f}", f"{r['videos_per_s']:.2f}", f"{r['snippet_crops_per_s']:.0f}",
             f"{r['gflops']:.1f}", fmt(r["fraction_of_peak"]), fmt(r["speedup_vs_torch"]), r["calls"]]
            for n in measured(report) if (r := thr["backends"].get(n))]
    hb = thr["backends"].get(HEADLINE_BACKEND, {})
    clean = (f"; in the {thr['groups_clean']} groups where they used under {BUSY_SHARE:.0%}: ort_fp32/torch_eager "
             f"{hb['speedup_vs_torch_clean']:.2f}, fraction of peak {fmt(hb['fraction_of_peak_clean'])}."
             if hb.get("speedup_vs_torch_clean") is not None else ".")
    return ["", f"### Throughput: {thr['videos']} videos, {thr['crops']} crops, {thr['snippets']} snippets "
                f"(lengths p0/p10/p50/p90/p100 {'/'.join(fmt(v, '.0f') for v in thr['length_percentiles'].values())}"
                f", from {src}), runtime batching, {thr['groups']} interleaved group(s)", "",
            *table(["backend", "seconds", "videos/s", "snippet-crops/s", "GFLOP/s", "of peak", "× torch", "calls"],
                   "lrrrrrrr", rows),
            f"\nPeak GEMM over the same groups: {', '.join(fmt(v, '.0f') for v in thr['peak_gflops'].values())} "
            f"GFLOP/s. Other processes used {fmt(thr.get('foreign_cpu_share'), '.0%')} of the CPUs meanwhile{clean}"]


def _memory(report: dict) -> list[str]:
    mem = report.get("memory")
    if not mem or not mem.get("backends"):
        return []
    ts = [c["T"] for c in report["latency"]["cases"]]
    lts = [t for t in ts if any(str(t) in (r.get("cases") or {}) for r in mem["backends"].values())]
    rows = []
    for n, r in mem["backends"].items():
        if "error" in r:
            rows.append([n, f"failed: {r['error']}"])
            continue
        cells = []
        for t in lts:
            cse = r["cases"].get(str(t))
            dev = cse and cse.get("device_peak_delta_mib")
            cells.append("–" if not cse else f"{cse['host_peak_delta_mib']:.0f}"
                         + (f" (+{dev:.0f} device)" if dev is not None else ""))
        last = r["cases"].get(str(lts[-1])) if lts else None
        total = f"{r['rss_warm_mib'] + last['host_peak_delta_mib']:.0f}" if last else "–"
        rows.append([n, f"{r['rss_imports_mib']:.0f}", f"{r['rss_model_mib'] - r['rss_imports_mib']:.0f}", *cells,
                     total, "yes" if r.get("torch_imported") else "no"])
    return ["", f"### Peak memory, one video, C = {mem['C']} ({mem['method']}), MiB", "",
            *table(["backend", "RSS after imports", "+ model loaded", *(f"+ call at T = {t}" for t in lts),
                    f"process peak at T = {lts[-1] if lts else '–'}", "torch imported"],
                   "lrr" + "r" * len(lts) + "rl", rows)]


def _accuracy(report: dict) -> list[str]:
    acc, demo = report["accuracy"], report.get("demo") or {}
    rows = []
    for n in measured(report):
        a = acc.get(n)
        if a is None:
            continue
        d = demo.get("backends", {}).get(n, {}) if n != REFERENCE else demo.get("reference", {})
        o = a["outputs"]
        tol = f"{a['tolerance']} ({a['limit']:g} {a['metric']})" if a["tolerance"] else "reference"
        rows.append([n, tol, f"{o['score']['error']:.1e}", f"{o['dfm']['error']:.1e}", f"{o['anomaly']['error']:.1e}",
                     f"{o['anomaly']['max_abs']:.1e}", "yes" if a["ok"] and d.get("ok", True) else "**NO**",
                     fmt(d.get("auc") and 100 * d["auc"]), fmt(d.get("delta_auc_points"), "+.3f"),
                     fmt(d.get("ap") and 100 * d["ap"]), fmt(d.get("delta_ap_points"), "+.3f")])
    lines = ["", "### Accuracy against torch_eager (worst over every latency input, workload video and demo video)",
             "", *table(["backend", "tolerance (limit)", "score", "dfm", "anomaly", "max abs (anomaly)", "ok", "AUC",
                         "Δ AUC pts", "AP", "Δ AP pts"], "llrrrrlrrrr", rows)]
    if demo:
        lines.append(f"\nDemo test set: {demo['videos']} videos ({demo['abnormal_videos']} abnormal), model: "
                     f"{demo['model'].get('kind')}. Errors are max |ours − ref| / max |ref| per output "
                     f"(rel_to_max).")
    return lines


# --------------------------------------------------------------------------------------
# Chart and files
# --------------------------------------------------------------------------------------
def chart(report: dict) -> bytes:
    """latency.png: median latency (bar to p90) against T per backend, log-log."""
    import matplotlib

    matplotlib.use("Agg")       # files only, never a window
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for n in measured(report):
        pts = [(c["T"], c["backends"][n]) for c in report["latency"]["cases"] if n in c["backends"]]
        if not pts:
            continue
        med = np.array([p[1]["median_ms"] for p in pts])
        p90 = np.array([p[1]["p90_ms"] for p in pts])
        ax.errorbar([p[0] for p in pts], med, yerr=[np.zeros_like(med), p90 - med], marker="o", capsize=3, label=n,
                    linestyle="--" if n == REFERENCE else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ts = [c["T"] for c in report["latency"]["cases"]]
    ax.set_xticks(ts)
    ax.set_xticklabels([str(t) for t in ts])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("T (snippets per crop)")
    ax.set_ylabel("latency per video, ms (median; bar to p90)")
    m = report["machine"]
    ax.set_title(f"BN-WVAD, one video, C = {report['latency']['C']}: {m['cpu']}, "
                 f"{report['settings']['threads']} threads" + (f", {m['gpu']['name']}" if m.get("gpu") else ""),
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out: Path, report: dict, md: str) -> dict[str, str]:
    """report.json, report.md and latency.png, each written atomically (temp file + rename)."""
    from bnwvad.runtime.io import atomic_write, save_json

    out.mkdir(parents=True, exist_ok=True)
    png = chart(report)
    files = {"json": out / "report.json", "markdown": out / "report.md", "chart": out / "latency.png"}
    report["files"] = {k: str(v) for k, v in files.items()}
    atomic_write(files["chart"], lambda f: f.write(png))
    atomic_write(files["markdown"], lambda f: f.write(md.encode("utf-8")))
    save_json(files["json"], report)
    return report["files"]


# --------------------------------------------------------------------------------------
# report.json
# --------------------------------------------------------------------------------------
def build_report(*, quick, backends, models, plan, threads, lengths, crops, trt_max, videos, errors, latency,
                 throughput, memory, demo, peak, load_start, clock) -> dict:
    """Everything a run found, as plain JSON data; `ok` is False when a measured backend
    missed its tolerance, failed midway, or the headline has no figures."""
    import onnxruntime

    load_end = load_average()
    shares = [x for x in [*(c.get("foreign_cpu_share") for c in latency["cases"]),
                          throughput.get("foreign_cpu_share")] if x is not None]
    speed = models.speed
    report = {
        "schema": SCHEMA, "mode": "quick" if quick else "full",
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "git": git_revision(REPO), "machine": machine_info(gpu_info()),
        "libraries": library_versions(LIBRARIES), "runtime_library": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "load_average": {"start": load_start, "end": load_end,
                         "foreign_cpu_share_max": max(shares) if shares else None,
                         # measured contention when there is a figure; the load average (which lags,
                         # and counts this run's own threads) only where CPU times cannot be read
                         "busy": bool(max(shares) > BUSY_SHARE if shares else
                                      (load_start and load_end and max(load_start[0], load_end[0]) > usable_cpus()))},
        "settings": {"threads": threads, "lengths": lengths, "crops": crops,
                     "rounds": {str(t): plan.rounds(t) for t in lengths}, "workload_videos": plan.workload_videos,
                     "workload_crops": plan.workload_crops, "demo_videos": len(videos), "trt_max": list(trt_max),
                     "gap_s": GAP_S, "quiet_wait_s": plan.gate.budget_s, "quiet_waited_s": plan.gate.waited_s,
                     "quiet_wait_gave_up": plan.gate.gave_up},
        "peak": peak,
        "models": {"speed": {**models.speed_source, "feature_dim": speed.config.feature_dim,
                             "embed_dim": speed.config.embed_dim, "config": speed.config.to_dict(),
                             "mflop_per_snippet_crop_T200": speed.num_flops(HEADLINE_T) / HEADLINE_T / 1e6},
                   "demo": {**models.demo_source, "config": models.demo.config.to_dict()}},
        "backends": {b.name: b.info() for b in backends},
        "latency": latency, "throughput": throughput, "memory": memory,
        "accuracy": {b.name: errors[b.name].to_dict() for b in backends if b.measured},
        "demo": demo,
    }
    line, have_headline = headline(report)
    bad = [n for n, a in report["accuracy"].items() if not a["ok"]]
    bad += [n for n, d in demo["backends"].items() if not d.get("ok", False) and n not in bad]
    bad += [b.name for b in backends if b.status == "failed" and b.name not in bad]   # ran, then broke
    h = (headline_case(report) or {}).get("backends", {})
    ort = h.get(HEADLINE_BACKEND) or {}
    ort_w = throughput["backends"].get(HEADLINE_BACKEND) or {}
    report["headline"] = {"line": line, "T": HEADLINE_T, "C": crops, "ratio": ort.get("speedup_vs_torch"),
                          "fraction_of_peak": ort.get("fraction_of_peak"),
                          "workload_ratio": ort_w.get("speedup_vs_torch"),
                          "workload_fraction_of_peak": ort_w.get("fraction_of_peak"),
                          # the same from rounds / groups in which other processes were (nearly) idle
                          "ratio_clean": ort.get("speedup_vs_torch_clean"),
                          "fraction_of_peak_clean": ort.get("fraction_of_peak_clean"),
                          "workload_ratio_clean": ort_w.get("speedup_vs_torch_clean"),
                          "workload_fraction_of_peak_clean": ort_w.get("fraction_of_peak_clean")}
    report["failures"] = bad
    report["ok"] = not bad and have_headline
    report["elapsed_s"] = clock()
    return report


__all__ = ["build_report", "chart", "fmt", "headline", "markdown", "table", "write_outputs"]
