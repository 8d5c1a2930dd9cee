"""Seconds per training iteration at the paper's batch, split into data loading and compute.

    .venv/bin/python bench/train_speed.py [--iterations 3] [--batch-size 64] [--segments 200]

Builds (once) a stand-in XD-Violence tree under --root: the real list layout and video names
(from ../shared/datasets when present), 5 crops per video, random float32 (T, 1024)
features with T drawn from the real test-set lengths. Then measures, on the full-size model
(D = 1024, embed 512, the paper's batch of 64 normal + 64 abnormal, T = 200):

  data     s/batch to read and resample one batch (128 files) synchronously, and with the
           loader's threads alone (no training running beside it)
  compute  s/it of `train_step` on a batch already in memory
  ours     s/it of the real loop (`BatchLoader` prefetching in threads + `train_step`), and
           how long each step waited for its batch
  published-style
           s/it of the published loop's data path: two torch DataLoaders, 4 worker
           processes, shuffle, the published per-file resampling, + the same step

Files are read from the page cache after the first pass (the tree is small enough); cold
reads from a disk come on top of "data" and are hidden by prefetching as long as one batch
loads faster than one step computes. Timings on a shared machine are noisy: the methods are
measured back to back, and --repeat runs the whole comparison again.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bnwbench.plan import XD_LENGTHS
from bnwbench.workload import read_lengths

SHARED = XD_LENGTHS.parent          # the XD-Violence lists and test_snippets.csv


def build_tree(root: Path, videos: int, crops: int, dim: int, seed: int = 0) -> Path:
    """A stand-in XD tree: list/XD_Train.list + train/<video>__<k>.npy, violent first."""
    lf = root / "list" / "XD_Train.list"
    if lf.is_file() and (root / ".complete").is_file():
        return lf
    rng = np.random.default_rng(seed)
    names_abn, names_nor = [], []
    if (SHARED / "XD_Train.list").is_file():
        for line in (SHARED / "XD_Train.list").read_text().splitlines():
            name = Path(line.split()[0]).name.rsplit("__", 1)[0]
            bucket = names_nor if "_label_A" in name else names_abn
            if name not in bucket:
                bucket.append(name)
    names_abn = (names_abn or [f"stand.in.{i:04d}__#1_label_B1-0-0" for i in range(videos)])[:videos]
    names_nor = (names_nor or [f"stand.in.{i:04d}__#1_label_A" for i in range(videos)])[:videos]
    lengths_pool = None
    if XD_LENGTHS.is_file():
        lengths_pool = np.array([n for _, n in read_lengths(XD_LENGTHS)])
    (root / "train").mkdir(parents=True, exist_ok=True)
    lines = []
    for name in names_abn + names_nor:
        t = int(rng.choice(lengths_pool)) if lengths_pool is not None else int(rng.integers(50, 1500))
        base = np.abs(rng.standard_normal((t, dim), dtype=np.float32)) * 0.5
        for k in range(crops):
            rel = f"train/{name}__{k}.npy"
            np.save(root / rel, base + np.float32(0.01 * k), allow_pickle=False)
            lines.append(rel)
    lf.parent.mkdir(parents=True, exist_ok=True)
    lf.write_text("\n".join(lines) + "\n")
    (root / ".complete").write_text("ok\n")
    return lf


# -- the published data path, transcribed (dataset_loader.py + main.py of the paper's code) --
class PublishedXD:
    def __init__(self, paths, num_segments, len_feature):
        self.paths, self.num_segments, self.len_feature = paths, num_segments, len_feature

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        video_feature = np.load(self.paths[index]).astype(np.float32)
        new_feature = np.zeros((self.num_segments, self.len_feature)).astype(np.float32)
        sample_index = np.linspace(0, video_feature.shape[0], self.num_segments + 1, dtype=np.uint16)
        for i in range(len(sample_index) - 1):
            if sample_index[i] == sample_index[i + 1]:
                new_feature[i, :] = video_feature[sample_index[i], :]
            else:
                new_feature[i, :] = video_feature[sample_index[i]:sample_index[i + 1], :].mean(0)
        return new_feature, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("/tmp/bnwvad-bench-xd"))
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per method")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--segments", type=int, default=200)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--videos", type=int, default=80, help="videos per half in the stand-in tree")
    ap.add_argument("--workers", type=int, default=2, help="our loader threads")
    ap.add_argument("--skip-published", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    import torch

    from bnwvad import ModelConfig, TrainConfig
    from bnwvad.data import BatchLoader, LoaderConfig, load_train_samples
    from bnwvad.model import BNWVAD
    from bnwvad.optim import make_optimizer, train_step

    lf = build_tree(args.root, args.videos, 5, args.dim)
    normal, abnormal = load_train_samples(lf, args.root)
    B, T, n = args.batch_size, args.segments, args.iterations
    print(f"stand-in tree {args.root}: {len(normal)} normal + {len(abnormal)} abnormal crop files, "
          f"batch {B}+{B}, T = {T}, D = {args.dim}; torch threads {torch.get_num_threads()}", flush=True)

    torch.manual_seed(0)
    model = BNWVAD(ModelConfig(feature_dim=args.dim))
    opt = make_optimizer(model, TrainConfig())
    results = []

    for rep in range(args.repeat):
        r: dict = {}
        # Data alone: synchronous, then with threads.
        for workers in (0, args.workers):
            loader = BatchLoader(normal, abnormal, batch_size=B, segments=T, seed=rep, feature_dim=args.dim,
                                 config=LoaderConfig(workers=workers, prefetch=2))
            it = loader.batches(0, n + 1)
            next(it)                                         # warm the page cache / threads
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            r[f"data_s_workers{workers}"] = (time.perf_counter() - t0) / n
            it.close()
        # Compute alone on a batch in memory.
        batch = next(BatchLoader(normal, abnormal, batch_size=B, segments=T, seed=rep,
                                 config=LoaderConfig(workers=0)).batches(0, 1))
        xn, xa = torch.from_numpy(batch.normal), torch.from_numpy(batch.abnormal)
        train_step(model, opt, xn, xa)                       # warm-up (allocations, kernels)
        t0 = time.perf_counter()
        for _ in range(n):
            train_step(model, opt, xn, xa)
        r["compute_s"] = (time.perf_counter() - t0) / n
        # Our loop: prefetching loader + step.
        loader = BatchLoader(normal, abnormal, batch_size=B, segments=T, seed=rep, feature_dim=args.dim,
                             config=LoaderConfig(workers=args.workers, prefetch=2))
        it = loader.batches(0, n)
        waits = []
        t0 = time.perf_counter()
        for _ in range(n):
            b = next(it)
            waits.append(b.wait_s)
            xn, xa = torch.from_numpy(b.normal), torch.from_numpy(b.abnormal)
            del b
            train_step(model, opt, xn, xa)
        r["ours_s_per_it"] = (time.perf_counter() - t0) / n
        # The first batch cannot be prefetched (nothing runs before it); the rest can.
        r["ours_wait_first_s"] = waits[0]
        r["ours_wait_s"] = float(np.mean(waits[1:])) if n > 1 else waits[0]
        it.close()
        # The published data path (4 worker processes per loader) + the same step.
        if not args.skip_published:
            from torch.utils.data import DataLoader

            loaders = [DataLoader(PublishedXD([str(s.path) for s in half], T, args.dim), batch_size=B,
                                  shuffle=True, num_workers=4, drop_last=True) for half in (normal, abnormal)]
            iters = [iter(dl) for dl in loaders]
            t0 = time.perf_counter()
            waits = []
            for _ in range(n):
                w0 = time.perf_counter()
                (xn, _), (xa, _) = next(iters[0]), next(iters[1])
                waits.append(time.perf_counter() - w0)
                train_step(model, opt, xn, xa)
            r["published_style_s_per_it"] = (time.perf_counter() - t0) / n
            r["published_style_wait_s"] = float(np.mean(waits))
            del iters, loaders
        results.append(r)
        print(json.dumps({"repeat": rep, **{k: round(v, 3) for k, v in r.items()}}), flush=True)

    summary = {k: float(np.median([r[k] for r in results])) for k in results[0]}
    print("\nseconds per iteration (median over repeats):")
    rows = [(f"data, synchronous (one batch, {2 * B} files)", summary["data_s_workers0"], ""),
            (f"data, {args.workers} loader threads alone", summary[f"data_s_workers{args.workers}"], ""),
            ("compute (train_step, batch in memory)", summary["compute_s"], ""),
            ("ours: prefetching loop", summary["ours_s_per_it"],
             f"waited {summary['ours_wait_s']:.3f} s/it for data after the first batch "
             f"({summary['ours_wait_first_s']:.3f} s for the first)")]
    if "published_style_s_per_it" in summary:
        rows.append(("published-style loop (4 worker processes)", summary["published_style_s_per_it"],
                     f"waited {summary['published_style_wait_s']:.3f} s/it for data"))
    for name, v, note in rows:
        print(f"  {name:<44} {v:7.3f}  {note}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results, "median": summary}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
