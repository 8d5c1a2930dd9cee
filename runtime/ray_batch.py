"""Archive scoring on a Ray cluster: `bnwvad-infer FEATURES... --model M --out DIR --ray [ADDRESS]`.

The driver (bnwvad-infer) collects the videos as the single-process run does (headers read, names
checked), opens the model itself (its identity, its metadata, --calibrate), then streams the
videos still to score through Ray Data:

    ray.data.from_items([descriptor per video, longest first])
        .map_batches(ScoreBatch, concurrency=--actors, num_gpus=--gpus-per-actor, batch_size=B)

Each `ScoreBatch` actor holds ONE runner (runtime.runners.load_runner: an ONNX Runtime session or
a TensorRT engine) and one Scorer (runtime.scoring) over it, so the videos of a batch are packed
into padded calls by length exactly as the single-process run packs them, within the memory
budget of the actor's node (runtime.memory; by default each actor takes 1/--actors of the
single-process default, as if all actors shared one node). The items are sorted by length, so a
batch holds videos of similar lengths and pads little.

Why Ray Data rather than hand-made actors: it gives the actor pool, backpressure, the streaming
of results back to the driver, and the fault handling (an actor pool's actors are restarted and
their batches retried, `max_restarts=-1`, `max_task_retries=-1`). What it does not give is
per-item failure isolation: an exception out of a batch fails the whole dataset. So a batch never
raises: the Scorer yields a VideoFailure for a bad file, and any other error of a call is retried
video by video, each failure returned as a row naming the video.

Exactly once and resumable. Data stays on storage every node sees (inputs and --out; multi-node
needs a shared file system): actors read feature files by path and write each video's outputs
themselves, atomically, in this order:

    DIR/<video>.npy          the snippet anomaly scores (as the single-process run writes them)
    DIR/.parts/<video>.npz   score, dfm, anomaly (T,) float32
    DIR/.parts/<video>.json  the completion record, LAST: the model (weights digest, precision),
                             the settings that change scores (window, lookahead, step), the
                             sources (path, size, mtime_ns of every file), T, crops, calls

A video is done when its record is valid: readable, of this model and settings, its sources
unchanged, its files present. Before scoring, the driver keeps the done videos and sends only
the others; an actor re-checks each video of its batch (a batch retried after an actor died
skips what it had finished). At the end, and when interrupted (exit 130), the driver assembles
results.npz, summary.json and events.json from all records, so an interrupted-and-resumed run
ends with the same files as an uninterrupted one. While it runs, summary.json (status
"running") lists every file the run may write, so a killed run's folder is still accounted for.

Output folder (--ray): a folder written by this same model is RESUMED (not replaced, as the
single-process run does): its valid records are kept; the files it lists of any other video are
removed. Another model's folder, or one that is not a run folder, is refused unless --overwrite,
as in the single-process run.

Test hooks (fault injection for the test suite, read by the driver, passed to the actors):
BNWVAD_RAY_TEST_DIE_AFTER="K:MARKER" makes an actor exit (os._exit) after writing K videos,
once: the first to create the file MARKER. BNWVAD_RAY_TEST_SLEEP_S=S: each video takes S more.

ray is imported only when a Ray run starts: `import bnwvad.runtime.ray_batch` needs numpy only.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import time
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .contract import OUTPUTS

PARTS = ".parts"
PART_FORMAT = "bnwvad-ray-part"
PART_VERSION = 1
DIE_ENV, SLEEP_ENV = "BNWVAD_RAY_TEST_DIE_AFTER", "BNWVAD_RAY_TEST_SLEEP_S"
BATCHES_PER_ACTOR = 4           # batches each actor gets at least, where there are enough videos


# -- per-video records ---------------------------------------------------------------------------
def source_identity(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """(path, size, mtime_ns) of each file; OSError if one is gone."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append({"path": str(p), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)})
    return out


def describe(video) -> dict:
    """A FileVideo (runtime.inputs) as plain data for a Ray item (absolute paths)."""
    return {"name": video.name, "paths": [os.path.abspath(p) for p in video.paths],
            "given": [str(p) for p in video.paths], "layout": video.layout,
            "crops": int(video.crops), "length": int(video.length),
            "feature_dim": None if video.feature_dim is None else int(video.feature_dim)}


def from_description(d: dict):
    from .inputs import FileVideo

    return FileVideo(d["name"], [Path(p) for p in d["paths"]], d["layout"], int(d["crops"]), int(d["length"]),
                     d["feature_dim"])


def part_files(name: str) -> list[str]:
    """A video's files, relative to the output folder; the record last."""
    return [f"{name}.npy", f"{PARTS}/{name}.npz", f"{PARTS}/{name}.json"]


def run_key(identity, window: int | None, lookahead: int, step: int) -> dict:
    """What a record must match to be reused: the model, and the options that change scores."""
    return {"model": {"weights_digest": identity.digest, "precision": identity.precision},
            "settings": {"window": window, "lookahead": lookahead if window else 0, "step": step if window else 1}}


def write_part(out: Path, r, sources: list[dict], key: dict) -> None:
    """Write one scored video's files, each atomically, the record last."""
    from ..atomic import atomic_write
    from .io import save_json, save_npy

    npy, npz, rec = (out / f for f in part_files(r.name))
    save_npy(npy, r.anomaly)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(getattr(r, k), np.float32) for k in OUTPUTS})
    atomic_write(npz, lambda f: f.write(buf.getvalue()))
    save_json(rec, {"format": PART_FORMAT, "format_version": PART_VERSION, "video": r.name, **key,
                    "sources": sources, "snippets": r.length, "crops": r.crops,
                    "frames_per_snippet": r.frames_per_snippet, "calls": r.calls})


def read_part(out: Path, desc: dict, key: dict):
    """The VideoResult of a video whose record is valid for this run (model, settings, unchanged
    sources, files present and consistent), else None: such a video is scored (again)."""
    from .sources import VideoResult

    name = desc["name"]
    npy, npz, rec = (out / f for f in part_files(name))
    try:
        doc = json.loads(rec.read_text(encoding="utf-8"))
        if (not isinstance(doc, dict) or doc.get("format") != PART_FORMAT or doc.get("video") != name
                or doc.get("model") != key["model"] or doc.get("settings") != key["settings"]
                or doc.get("sources") != source_identity(desc["paths"]) or not npy.is_file()):
            return None
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k], np.float32) for k in OUTPUTS}
        t = int(doc["snippets"])
        if any(a.shape != (t,) for a in arrays.values()):
            return None
        return VideoResult(name, arrays["score"], arrays["dfm"], arrays["anomaly"], crops=int(doc["crops"]),
                           frames_per_snippet=int(doc["frames_per_snippet"]), calls=int(doc.get("calls", 1)))
    except (OSError, ValueError, KeyError, TypeError):   # unreadable or malformed: not a record
        return None


# -- the actor -----------------------------------------------------------------------------------
class ScoreBatch:
    """A Ray Data map_batches actor: one runner, one Scorer; a batch of descriptors in, one row
    per video out (name, status "scored" | "done" | "failed", message, calls)."""

    def __init__(self, cfg: dict):
        from .io import model_identity
        from .runners import load_runner
        from .scoring import Scorer

        self.cfg = cfg
        self.out = Path(cfg["out"])
        runner = load_runner(cfg["model"], cfg["backend"], **cfg["load"])
        ident = model_identity(runner.meta, cfg["model"])
        want = cfg["key"]["model"]
        if (ident.digest, ident.precision) != (want["weights_digest"], want["precision"]):
            # Every node must read the same model: a different file at that path would mix models.
            raise RuntimeError(f"{cfg['model']} on this node is model {ident.describe()}; the driver's is "
                               f"{want['weights_digest']} ({want['precision']}). Expected the same file on "
                               f"every node (shared storage)")
        budget = cfg["memory_budget"]
        if budget is None:
            from .memory import DEFAULT_FRACTION, memory_budget

            budget = memory_budget(getattr(runner, "device", "cpu"), fraction=DEFAULT_FRACTION / cfg["actors"],
                                   include_process=True)
        kw = dict(memory_budget=budget, max_batch=cfg["max_batch"], max_rows=cfg["max_rows"] or "auto",
                  crops=cfg["crops"])
        s = cfg["key"]["settings"]
        if s["window"] is not None:
            from .stream import WindowedScorer

            self.scorer = WindowedScorer(runner, s["window"], s["lookahead"], s["step"], **kw)
        else:
            self.scorer = Scorer(runner, **kw)
        self.written = 0

    def __call__(self, batch: dict) -> dict:
        rows: list[tuple[str, str, str, int]] = []
        todo, idents, given = [], {}, {}
        for text in batch["video"]:
            d = json.loads(str(text))
            done = read_part(self.out, d, self.cfg["key"])
            if done is not None:                 # a retried batch: finished before the actor died
                rows.append((d["name"], "done", "", done.calls))
                continue
            try:
                idents[d["name"]] = source_identity(d["paths"])
            except OSError as e:
                rows.append((d["name"], "failed", f"{e.filename}: cannot read ({e.strerror or e})", 0))
                continue
            todo.append(from_description(d))
            given[d["name"]] = dict(zip(d["paths"], d["given"]))
        # Failures name the files as the user gave them (the actors read them by absolute path).
        for name, status, message, calls in self._score(todo, idents):
            for absolute, rel in given.get(name, {}).items():
                message = message.replace(absolute, rel)
            rows.append((name, status, message, calls))
        names, status, message, calls = zip(*rows) if rows else ((), (), (), ())
        return {"name": np.array(names, dtype=str), "status": np.array(status, dtype=str),
                "message": np.array(message, dtype=str), "calls": np.array(calls, dtype=np.int64)}

    def _score(self, videos, idents) -> list:
        rows, settled = [], set()
        try:
            for r in self.scorer.iter_results(videos):
                rows.append(self._settle(r, idents))
                settled.add(r.name)
        except Exception:                        # noqa: BLE001 - a call failed: each video on its own
            for v in videos:
                if v.name in settled:
                    continue
                try:
                    rows.extend(self._settle(r, idents) for r in self.scorer.iter_results([v]))
                except Exception as e:           # noqa: BLE001 - this video's failure, by name
                    rows.append((v.name, "failed", f"{v.name}: {type(e).__name__}: {e}", 0))
        return rows

    def _settle(self, r, idents) -> tuple:
        if not hasattr(r, "anomaly"):
            return (r.name, "failed", r.message if r.name in r.message else f"{r.name}: {r.message}", 0)
        hooks = self.cfg["hooks"]
        if hooks.get("sleep"):
            time.sleep(hooks["sleep"])
        write_part(self.out, r, idents[r.name], self.cfg["key"])
        self.written += 1
        die = hooks.get("die")
        if die and self.written >= die[0]:
            try:
                fd = os.open(die[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass                             # another actor already died once: keep going
            else:
                os.close(fd)
                os._exit(3)
        return (r.name, "scored", "", r.calls)


def fault_hooks() -> dict:
    """The fault-injection hooks of the environment (module docstring); {} normally."""
    hooks: dict[str, Any] = {}
    die = os.environ.get(DIE_ENV)
    if die:
        k, _, marker = die.partition(":")
        hooks["die"] = (int(k), marker)
    if os.environ.get(SLEEP_ENV):
        hooks["sleep"] = float(os.environ[SLEEP_ENV])
    return hooks


def batch_size_for(videos: int, actors: int, max_batch: int) -> int:
    """Videos per Ray batch: at most max_batch, and small enough that every actor gets
    BATCHES_PER_ACTOR batches (so the pool stays balanced and a retried batch is small)."""
    return max(1, min(max_batch, math.ceil(videos / (actors * BATCHES_PER_ACTOR))))


# -- the driver ------------------------------------------------------------------------------------
def parse_address(value: str) -> str | None:
    """--ray's value -> ray.init's address (None: start a local cluster); ValueError if it is
    not an address (e.g. a FEATURES argument click took as --ray's value)."""
    if value in ("", "local"):
        return None
    if value == "auto" or value.startswith("ray://"):
        return value
    host, sep, port = value.rpartition(":")
    if sep and host and port.isdigit():
        return value
    raise ValueError(f"--ray {value!r}: not a Ray address; expected auto, HOST:PORT or ray://HOST:PORT "
                     f"(or nothing: a local cluster). A FEATURES argument right after --ray is read as its "
                     f"address: write --ray last, or --ray=ADDRESS")


def require_ray():
    """ray with Ray Data, or MissingExtra naming the `ray` extra (the command exits 2)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ModuleNotFoundError as e:
        from .._extras import MissingExtra

        raise MissingExtra("ray", "ray", "bnwvad-infer --ray",
                           None if (e.name or "").split(".")[0] == "ray" else str(e)) from e
    return ray


def start_ray(address: str | None, cpus: int, quiet: bool):
    """ray.init: a local cluster of `cpus` CPUs, or the cluster at `address`."""
    ray = require_ray()
    kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address is None:
        ray.init(address="local", num_cpus=cpus, object_store_memory=256 << 20, **kw)
    else:
        ray.init(address=address, **kw)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False              # the driver's own bar, as without --ray
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")   # Ray Data's "Progress bars disabled" note: we chose it
    return ray


def run_ray(signals, run, videos: list, bad: list, t0: float, *, earlier, address: str | None, actors: int,
            gpus_per_actor: float, cpus_per_actor: float | None, model: Path, backend: str, load: dict,
            key: dict, crops, batch_size: int, max_rows, memory_budget, min_event_snippets: int,
            quiet: bool) -> int:
    """The --ray run after the driver's checks (model opened, inputs collected, threshold known);
    `run` is the run's _Outputs (runtime.outputs), not yet written. Returns the exit status."""
    import click

    from .options import EXIT_INTERRUPTED, EXIT_NOTHING_RAN, EXIT_OK, EXIT_SOME_FAILED
    from .io import RunRecord, remove_listed
    from .outputs import _error, _fail, _report

    out = run.out
    descs = {v.name: describe(v) for v in videos}
    order = [v.name for v in videos]
    calls = {"calls": 0}
    run.scorer = type("Calls", (), {"stats": calls})()     # summary.json's "calls": all actors'
    interrupted = None
    try:
        with signals.held():                     # commit: what was done, what is to do, recorded
            done = {n: r for n, r in ((n, read_part(out, d, key)) for n, d in descs.items()) if r is not None}
            if earlier is not None:
                same = (earlier.model.digest, earlier.model.precision) == (key["model"]["weights_digest"],
                                                                           key["model"]["precision"])
                keep = {f for n in done for f in part_files(n)} if same else set()
                stale = tuple(f for f in earlier.files if f not in keep)
                remove_listed(RunRecord(earlier.folder, earlier.model, earlier.model_path, stale, earlier.status))
                if not same:
                    done = {}
            for n, r in done.items():
                run.add_video(r, part_files(n), min_event_snippets=min_event_snippets)
                calls["calls"] += r.calls
            todo = [descs[n] for n in order if n not in done]
            run.planned = [f for d in todo for f in part_files(d["name"])]
            _remove_torn(out, run.planned)
            run.save_summary("running", order)
        for f in bad:
            run.failures[f.name] = f.message
            _fail(f.message)
        if not quiet:
            click.echo(f"{len(done)} of {len(videos)} video(s) already scored in {out}; {len(todo)} to score "
                       f"on Ray with {actors} actor(s)", err=True)
        if todo:
            _stream(signals, run, todo, key, calls, address=address, actors=actors, gpus=gpus_per_actor,
                    cpus_per_actor=cpus_per_actor, model=model, backend=backend, load=load, crops=crops,
                    batch_size=batch_size, max_rows=max_rows, memory_budget=memory_budget,
                    min_event_snippets=min_event_snippets, quiet=quiet)
    except KeyboardInterrupt as e:
        interrupted = getattr(e, "signal", "SIGINT")
    except Exception as e:                       # noqa: BLE001 - Ray's errors are many; recorded, exit 2
        from .._extras import missing_module

        if missing_module(e) is not None:
            raise
        run.failures["(run)"] = f"the run stopped: {type(e).__name__}: {e}"
        _error(run.failures["(run)"])
    finally:
        _stop_ray()
    # Videos whose records landed after the last row the driver saw (interrupted, or an error).
    for n in order:
        if n not in run.results and n not in run.failures:
            r = read_part(out, descs[n], key)
            if r is not None:
                run.add_video(r, part_files(n), min_event_snippets=min_event_snippets)
                calls["calls"] += r.calls
    run.planned = []
    run.pending = [n for n in order if n not in run.results and n not in run.failures]
    elapsed = time.perf_counter() - t0
    status = "interrupted" if interrupted else ("failed" if "(run)" in run.failures else "complete")
    try:
        with signals.held():
            ordered = run.finish(order, status, elapsed, interrupted)
            _report(run, ordered, quiet)
    except KeyboardInterrupt:
        pass
    if interrupted:
        click.echo(f"interrupted ({interrupted}): {len(ordered)} of {len(videos)} video(s) scored "
                   f"({len(run.pending)} not scored; run again with the same --out to score only those); "
                   f"{out / 'summary.json'} says \"interrupted\": true", err=True)
        return EXIT_INTERRUPTED
    if "(run)" in run.failures:
        return EXIT_NOTHING_RAN if not ordered else EXIT_SOME_FAILED
    failures = run.failures
    click.echo(f"scored {len(ordered)} video(s) in {elapsed:.1f} s on Ray ({actors} actor(s))"
               + (f"; {len(failures)} failed (listed in {out / 'summary.json'})" if failures else "")
               + f"; outputs in {out}", err=True)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _stream(signals, run, todo, key, calls, *, address, actors, gpus, cpus_per_actor, model, backend, load, crops,
            batch_size, max_rows, memory_budget, min_event_snippets, quiet) -> None:
    """Score `todo` through a Ray Data actor pool; each finished video lands in `run` as it comes."""
    from tqdm import tqdm

    from .outputs import _fail

    from .serve_cli import usable_cpus

    local_cpus = usable_cpus()
    ray = start_ray(address, local_cpus, quiet)
    signals.reinstall()                       # ray.init took SIGTERM: Ctrl-C / SIGTERM still end as exit 130
    if cpus_per_actor is None:
        cpus_per_actor = max(1.0, local_cpus / actors) if address is None else 1.0
    load = dict(load)
    if load.get("sidecar") is not None:
        load["sidecar"] = str(Path(load["sidecar"]).resolve())
    if load.get("threads") is None:
        load["threads"] = max(1, int(cpus_per_actor))   # ORT's threads: the CPUs the actor holds
    cfg = {"out": str(run.out.resolve()), "model": str(Path(model).resolve()), "backend": backend, "load": load,
           "key": key, "crops": crops, "max_batch": batch_size, "max_rows": max_rows,
           "memory_budget": memory_budget, "actors": actors, "hooks": fault_hooks()}
    items = [{"video": json.dumps(d)} for d in sorted(todo, key=lambda d: (-d["length"], d["name"]))]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * actors * BATCHES_PER_ACTOR))
    # The configuration travels inside the class (not as constructor arguments, which Ray keeps in
    # its object store and warns that an actor restarted after they are gone cannot start).
    actor = type("ScoreBatch", (ScoreBatch,), {"__init__": lambda self: ScoreBatch.__init__(self, cfg)})
    ds = ds.map_batches(actor, compute=ray.data.ActorPoolStrategy(size=actors),
                        num_cpus=cpus_per_actor, num_gpus=gpus or None,
                        batch_size=batch_size_for(len(items), actors, batch_size), batch_format="numpy")
    descs = {d["name"]: d for d in todo}
    bar = tqdm(total=len(todo), unit="video", disable=True if quiet else None, file=sys.stderr, dynamic_ncols=True)
    try:
        for row in ds.iter_rows():
            name, status = str(row["name"]), str(row["status"])
            bar.update(1)
            if status == "failed":
                bar.clear()
                run.failures[name] = str(row["message"])
                _fail(run.failures[name])
                continue
            r = read_part(run.out, descs[name], key)
            if r is None:                        # its record was written, then changed or removed
                run.failures[name] = f"{name}: its outputs in {run.out} vanished or changed while the run went on"
                _fail(run.failures[name])
                continue
            run.add_video(r, part_files(name), min_event_snippets=min_event_snippets)
            calls["calls"] += r.calls
    finally:
        bar.close()


def _remove_torn(out: Path, files: list[str]) -> None:
    """Remove the temporary files (bnwvad.atomic.atomic_write's `.<name>.*.tmp`) that a killed
    run left beside the files this run is to write: never renamed into place, they are nothing."""
    for rel in files:
        p = out / rel
        for tmp in p.parent.glob(f".{glob_escape(p.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _stop_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


__all__ = ["ScoreBatch", "batch_size_for", "describe", "parse_address", "read_part", "run_key", "run_ray",
           "source_identity", "write_part"]
