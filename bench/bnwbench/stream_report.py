"""bench/stream.py's report: report.md, the plots (accuracy.png, capacity.png, cost.png) and
report.json."""
from __future__ import annotations

import io
from pathlib import Path

from bnwbench.report import fmt, table
from bnwbench.stream_plan import contention_text
from bnwbench.system import GIB, MIB


def pct(v) -> str:
    return fmt(None if v is None else 100 * v, ".2f")


def markdown(rep: dict) -> str:
    m = rep["machine"]
    lines = [f"### bnwvad streaming benchmark ({rep['mode']}) — {m['cpu']}, {m['usable_cpus']} CPUs, "
             f"{m['ram_gib']} GiB RAM",
             "",
             f"{rep['created']}, bnwvad {rep['libraries'].get('bnwvad')} ({rep['git']}), onnxruntime "
             f"{rep['libraries'].get('onnxruntime')}, ONNX Runtime CPU, {rep['threads']} threads. "
             f"Command: `{rep['command']}` ({rep['elapsed_s'] / 60:.1f} min).",
             "",
             f"**Shared machine.** Load average at start {rep['load']['start']}, at end {rep['load']['end']}. "
             f"Other processes' share of the CPUs during the phases: "
             + ", ".join(f"{k} {fmt(v, '.0%')}" for k, v in rep["load"]["phases"].items())
             + f". Busiest other processes at the start: {contention_text(rep['load']['top_start'])}; at the end: "
             f"{contention_text(rep['load']['top_end'])}. Timings and capacity are those of a machine shared with "
             f"them: noisy, and lower than on an idle machine.", ""]
    a = rep.get("accuracy")
    if a:
        lines += [f"#### a. Detection quality on the demo test set ({a['videos']} videos, {a['abnormal_videos']} "
                  f"abnormal, {a['snippets']} snippets, {a['crops']} crops; demo model, {a['model']['steps']} "
                  f"training steps), windowed at S = {a['step']}",
                  "",
                  f"Whole-video scoring (the same graph): AUC {pct(a['full']['auc'])}, AP {pct(a['full']['ap'])}. "
                  f"r: Pearson correlation of the windowed with the whole-video snippet scores (pooled).", ""]
        lines += table(["W", *[f"L = {l}: AUC / AP (Δ AUC pts), r" for l in sorted({g['L'] for g in a['grid']})]],
                       "r" * (1 + len({g['L'] for g in a['grid']})),
                       [[w, *[(lambda g: f"{pct(g['auc'])} / {pct(g['ap'])} ({g['d_auc_points']:+.2f}), "
                                         f"{fmt(g['pearson'], '.3f')}")(g)
                              for g in sorted((g for g in a['grid'] if g['W'] == w), key=lambda g: g['L'])]]
                        for w in sorted({g['W'] for g in a['grid']})])
        if a["step_sensitivity"]:
            lines += ["", "Beside the grid (W, L, S): " + "; ".join(
                f"({g['W']}, {g['L']}, {g['S']}): AUC {pct(g['auc'])}, AP {pct(g['ap'])}, r {fmt(g['pearson'], '.3f')}"
                for g in a["step_sensitivity"]) + "."]
        lines += [""]
    b = rep.get("agreement")
    if b:
        ref = b.get("reference")
        lines += [f"#### b. Agreement with whole-video scoring, published XD-Violence weights, S = {b['step']}",
                  "",
                  f"{b['videos']} stand-in videos (random features, 1 crop) with the lengths of a spread sample of "
                  f"{b['lengths_from']}: T = {', '.join(map(str, sorted(b['lengths'])))}"
                  + (f"; and the reference video {ref['video']} (T = {ref['T']}, its 5 real crops; whole-video "
                     f"scores match the published outputs within {ref['whole_vs_published_max_abs']:.1e})"
                     if ref else "")
                  + ". max abs Δ: the largest difference of a snippet's anomaly score (whole-video scores span "
                    + (f"{b['grid'][0]['whole_range'][0]:.1f}..{b['grid'][0]['whole_range'][1]:.1f} on the stand-ins"
                       if b["grid"] else "?")
                    + ((lambda lo, hi: f", {lo:.1f}..{hi:.1f} on T137")(*b["grid"][0]["reference"]["whole_range"])
                       if ref and b["grid"] else "")
                    + "); r: Pearson, pooled over the stand-ins.", ""]
        hdr = ["W", "L", "max abs Δ", "max Δ / max score", "r (pooled)", "r (median per video)"]
        if ref:
            hdr += ["T137: max abs Δ", "T137: r"]
        rows = []
        for g in b["grid"] + [dict(x, _s=True) for x in b["step_sensitivity"]]:
            row = [g["W"], f"{g['L']}" + (f" (S = {g['S']})" if g.get("_s") else ""), fmt(g["max_abs"], ".3f"),
                   fmt(g["max_rel"], ".2e"), fmt(g["pearson"], ".4f"), fmt(g["pearson_median_video"], ".4f")]
            if ref:
                row += [fmt(g["reference"]["max_abs"], ".4f"), fmt(g["reference"]["pearson"], ".4f")]
            rows.append(row)
        lines += table(hdr, "r" * len(hdr), rows) + [""]
    c = rep.get("latency")
    if c:
        lines += [f"#### c. Latency per snippet, published weights, W = {c['W']}, L = {c['L']} (one stream; "
                  f"configurations interleaved; ms)",
                  "",
                  f"compute: wall time from the push that made a snippet final to its result. End to end at 30 fps: a "
                  f"snippet waits for its S - 1 + L successors ({c['period_ms']:.0f} ms each), then compute. CPU: this "
                  f"process's CPU time (all {c['threads']} threads, ONNX Runtime's spin-waiting included) of a push "
                  f"that scored a block: other tenants inflate it far less than wall time, and on an idle machine the "
                  f"wall time lies between CPU / threads and CPU.", ""]
        lines += table(["C", "S", "delay (snippets)", "compute p50", "compute p99", "end to end p50", "end to end p99",
                        "CPU / scoring push p50", "runner calls / snippet", "snippets"], "rrrrrrrrrr",
                       [[r["C"], r["S"], r["delay_snippets"], fmt(r["compute_p50_ms"], ".1f"),
                         fmt(r["compute_p99_ms"], ".1f"), fmt(r["e2e_p50_ms"], ".0f"), fmt(r["e2e_p99_ms"], ".0f"),
                         fmt(r.get("cpu_per_scoring_push_p50_ms"), ".1f"), fmt(r["runner_calls_per_snippet"], ".2f"),
                         r["snippets"]] for r in c["cases"]])
        lines += [""]
    k = rep.get("capacity")
    if k:
        lines += [f"#### c. Capacity: live {k['C']}-crop streams at 30 fps in one StreamGroup (W = {k['W']}, "
                  f"L = {k['L']}; {k['periods']} periods per trial; a period's work is every stream's push, batched; "
                  f"N passes when its p99 < {k['period_ms']:.0f} ms)", ""]

        def rows(steps, extra):
            out = []
            for s in steps:
                at = next((t for t in s["trials"] if t["N"] == s["max_streams"]), None)
                al = s["aligned_at_max"]
                out.append([s["S"], s["delay_snippets"],
                            f"{s['max_streams']}" + (" (search limit)" if s["searched_to_limit"] else ""),
                            *extra(s),
                            f"{at['p50_ms']:.0f} / {at['p99_ms']:.0f}" if at else "–",
                            (f"{al['p99_ms']:.0f}" + ("" if al["ok"] else " (over)")) if al else "–",
                            ", ".join(f"{t['N']}: {t['p99_ms']:.0f}" + ("" if t["ok"] else " ✗")
                                      for t in s["trials"])])
            return out
        lines += [f"Wall time on this machine as it was ({k['threads']} threads, other tenants included):", ""]
        lines += table(["S", "delay (snippets)", "max streams", "period p50 / p99 at max (ms)",
                        "aligned phases at max: p99", "trials (N: p99 ms)"], "rrrrrl", rows(k["by_step"], lambda s: []))
        if k.get("cpu_by_step"):
            lines += ["", f"CPU time of a 1-thread runner (what other tenants barely inflate): streams one core "
                          f"sustains, and {k['cores']} such processes with the streams sharded between them:", ""]
            lines += table(["S", "delay (snippets)", "streams per core", f"machine ({k['cores']} cores)",
                            "period CPU p50 / p99 at max (ms)", "aligned phases at max: p99",
                            "trials (N: p99 ms)"], "rrrrrrl",
                           rows(k["cpu_by_step"], lambda s: [s["machine_estimate"]]))
        lines += ["", "Streams start at staggered times (stream i at phase i mod S) and are in steady state. Aligned: "
                      "every stream's block falls due in the same period (streams started together).", ""]
    d = rep.get("cost")
    if d:
        lines += [f"#### d. Cost growth: one video, C = 1 crop (to keep it short), windowed W = {d['W']}, "
                  f"L = {d['L']}, "
                  f"S = {d['S']} vs whole video; fresh process per point; budget {d['budget_bytes'] / GIB:.0f} GiB", ""]
        ts = sorted({p["T"] for p in d["points"]})

        def cell(mode, t, key):
            p = next((p for p in d["points"] if p["T"] == t and p["mode"] == mode), None)
            if p is None:
                return "–"
            if "skipped" in p:
                return "skipped"
            if "error" in p:
                return "failed"
            if key == "seconds":
                return f"{p['seconds']:.2f}"
            if key == "rss":
                return f"{p['peak_rss'] / MIB:.0f}"
            return f"{(p['peak_rss'] - p.get('input_bytes', 0)) / MIB:.0f}"
        lines += table(["", *[f"T = {t}" for t in ts]], "l" + "r" * len(ts),
                       [["windowed: seconds", *[cell("windowed", t, "seconds") for t in ts]],
                        ["windowed: peak RSS (MiB)", *[cell("windowed", t, "rss") for t in ts]],
                        ["windowed: peak RSS less the input (MiB)", *[cell("windowed", t, "net") for t in ts]],
                        ["whole: seconds", *[cell("whole", t, "seconds") for t in ts]],
                        ["whole: peak RSS (MiB)", *[cell("whole", t, "rss") for t in ts]],
                        ["whole: peak RSS less the input (MiB)", *[cell("whole", t, "net") for t in ts]]])
        lw = d.get("longest_windowed")
        skipped = [p for p in d["points"] if "skipped" in p]
        lines += ["", f"Slope of log(time) against log(T): windowed {fmt(d['slope_windowed'], '.2f')} "
                      f"({'linear' if d['linear'] else 'NOT linear'}), whole video {fmt(d['slope_whole'], '.2f')}."
                  + (f" Windowed at T = {lw['T']}: {lw['seconds']:.1f} s, peak RSS {lw['peak_rss'] / MIB:.0f} MiB "
                     f"({'within' if lw['within_budget'] else 'OVER'} the {d['budget_bytes'] / GIB:.0f} GiB budget; it "
                     f"includes the memory-mapped input pages touched, {d['input_bytes_per_snippet']} bytes a snippet)."
                     if lw else "")
                  + "".join(f" Whole video at T = {p['T']} skipped: {p['skipped']}." for p in skipped), ""]
    return "\n".join(lines)


def _window_axes(ax, ylabel: str, title: str, **legend) -> None:
    """An axis whose x is the window W (log 2), as phases a and b plot it."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel("window W (snippets)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, **legend)
    ax.grid(True, alpha=0.3)


def plots(rep: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return buf.getvalue()

    a, b = rep.get("accuracy"), rep.get("agreement")
    if a or b:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        if a:
            ax = axes[0]
            for l in sorted({g["L"] for g in a["grid"]}):
                g = sorted((g for g in a["grid"] if g["L"] == l), key=lambda g: g["W"])
                ax.plot([x["W"] for x in g], [100 * x["auc"] for x in g], marker="o", label=f"AUC, L = {l}")
                ax.plot([x["W"] for x in g], [100 * x["ap"] for x in g], marker="s", linestyle=":",
                        label=f"AP, L = {l}")
            ax.axhline(100 * a["full"]["auc"], color="k", linestyle="--", linewidth=1, label="whole video AUC")
            ax.axhline(100 * a["full"]["ap"], color="grey", linestyle="--", linewidth=1, label="whole video AP")
            _window_axes(ax, "%", f"a. demo test set, windowed (S = {a['step']}) vs whole video", ncol=2)
        if b:
            ax = axes[1]
            for l in sorted({g["L"] for g in b["grid"]}):
                g = sorted((g for g in b["grid"] if g["L"] == l), key=lambda g: g["W"])
                ax.plot([x["W"] for x in g], [x["pearson"] for x in g], marker="o", label=f"r, stand-ins, L = {l}")
                if g and g[0].get("reference"):
                    ax.plot([x["W"] for x in g], [x["reference"]["pearson"] for x in g], marker="x", linestyle=":",
                            label=f"r, T137 video, L = {l}")
            _window_axes(ax, "Pearson r with whole-video scores",
                         f"b. published XD weights: agreement (S = {b['step']})")
        out["accuracy.png"] = png(fig)
    k = rep.get("capacity")
    if k:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for s in k["by_step"]:
            ax.plot([t["N"] for t in s["trials"]], [t["p99_ms"] for t in s["trials"]], marker="o",
                    label=f"wall, {k['threads']} threads, S = {s['S']} (delay {s['delay_snippets']})")
        for s in k.get("cpu_by_step", []):
            ax.plot([t["N"] for t in s["trials"]], [t["p99_ms"] for t in s["trials"]], marker="x", linestyle="--",
                    label=f"CPU time, 1 thread, S = {s['S']}")
        ax.axhline(k["period_ms"], color="k", linestyle="--", linewidth=1, label="one period (533 ms)")
        ax.set_xlabel(f"live {k['C']}-crop streams N")
        ax.set_ylabel("period work, p99 (ms)")
        ax.set_title(f"c. capacity, W = {k['W']}, L = {k['L']}, {k['threads']} threads", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        out["capacity.png"] = png(fig)
    d = rep.get("cost")
    if d:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for mode, style in (("windowed", "-o"), ("whole", "--s")):
            pts = sorted((p for p in d["points"] if p["mode"] == mode and "seconds" in p), key=lambda p: p["T"])
            if pts:
                axes[0].plot([p["T"] for p in pts], [p["seconds"] for p in pts], style, label=mode)
                axes[1].plot([p["T"] for p in pts], [p["peak_rss"] / MIB for p in pts], style, label=mode)
        axes[1].axhline(d["budget_bytes"] / MIB, color="r", linestyle=":", linewidth=1, label="2 GiB budget")
        for ax, yl in zip(axes, ("seconds", "peak RSS (MiB)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("T (snippets), 1 crop")
            ax.set_ylabel(yl)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        axes[0].set_title(f"d. time: windowed slope {fmt(d['slope_windowed'], '.2f')}, whole "
                          f"{fmt(d['slope_whole'], '.2f')}", fontsize=9)
        axes[1].set_title("d. peak RSS of the process", fontsize=9)
        out["cost.png"] = png(fig)
    return out


def write_outputs(out: Path, rep: dict, md: str) -> None:
    from bnwvad.atomic import atomic_write
    from bnwvad.runtime.io import save_json

    out.mkdir(parents=True, exist_ok=True)
    pics = plots(rep)
    rep["files"] = [str(out / n) for n in ("report.json", "report.md", *pics)]
    for name, data in pics.items():
        atomic_write(out / name, lambda f, data=data: f.write(data))
    atomic_write(out / "report.md", lambda f: f.write(md.encode("utf-8")))
    save_json(out / "report.json", rep)
