"""bnwvad-train: train BN-WVAD on UCF-Crime, XD-Violence, ShanghaiTech or the built-in demo set.

    bnwvad-train                      # generate (or reuse) ./demo_data, train a small model on it
    bnwvad-train --dataset xd --root /data/xd            # the paper's XD-Violence recipe
    bnwvad-train --dataset xd --root /data/xd --audio-root /data/xd-vggish   # + VGGish (D = 1152)
    bnwvad-train --resume --out runs/xd-20240101-120000  # continue an interrupted run

Defaults per dataset, relative to --root: lists `list/<UCF|XD|SH>_Train.list` and
`list/<UCF|XD|SH>_Test.list`, annotations `<UCF|XD|SH>_Annotation.txt` (or under `list/`).
Every recipe value and the paper's ablation switches are options. Writes `run.json`,
`metrics.jsonl`, `last.pt` and `best.pt` to the run folder (--out/-o) and nothing outside it;
`--resume --out DIR` continues the run in DIR from any working directory, also after DIR was
moved (a copy of a run folder continues as a run of its own). Every file of the lists is
checked (headers only) before step 0.

Exit status: 0 done; 1 the run stopped (a NaN/inf loss, an error after step 0: last.pt holds the
last good state); 2 nothing ran (bad options, no run to resume, bad data files, all named; a
missing extra); 130 interrupted (Ctrl-C: last.pt saved).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

DATASETS = ("ucf", "xd", "shanghaitech", "demo")
TRAIN_LISTS = {"ucf": "list/UCF_Train.list", "xd": "list/XD_Train.list",
               "shanghaitech": "list/SH_Train.list", "demo": "list/XD_Train.list"}
# What may be given together with --resume (the rest comes from the run's run.json).
RESUME_OPTIONS = {"resume", "out", "iterations", "eval_every", "device", "workers", "prefetch",
                  "cache_gb", "progress", "log_every"}


class _Failed(click.ClickException):
    """One-line error with the exit status of DESIGN.md: 2 nothing ran, 1 the run stopped."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _numbers(text: str | None, what: str, kind: type, example: str) -> tuple | None:
    """`--what 1,2,3` -> (kind(1), kind(2), kind(3)); None when the option was not given."""
    if text is None:
        return None
    try:
        return tuple(kind(t) for t in text.split(","))
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise click.BadParameter(f"{text!r}: expected comma-separated {noun}, e.g. {example}", param_hint=what)


def _build(o: dict[str, Any]):
    """Options -> (ModelConfig, TrainConfig, DataSpec, RunConfig, notes to print)."""
    from ..config import ModelConfig, TrainConfig, get_preset
    from ..data import LoaderConfig
    from ..train import DEFAULT_SELECT_METRIC, DataSpec, RunConfig

    dataset = o["dataset"]
    notes: list[str] = []
    audio = bool(o["audio_root"] or o["audio_list"])
    if dataset == "demo":
        from ..demo import DEFAULT_ROOT, DEMO_MODEL, DEMO_TRAIN, demo_preset, existing_demo, generate_demo

        if audio:
            raise click.UsageError("the demo set has no audio features; drop --audio-root/--audio-list")
        root = Path(o["root"] or DEFAULT_ROOT)
        spec = existing_demo(root)
        existed = spec is not None and (spec.seed == o["demo_seed"] or "demo_seed" not in o["_given"])
        if not existed:
            generate_demo(root, seed=o["demo_seed"])
            spec = existing_demo(root)
        assert spec is not None
        notes.append(f"demo dataset: {root} ({'reused' if existed else 'generated'}; "
                     f"{spec.train_abnormal}+{spec.train_normal} training videos x {spec.crops} crops, "
                     f"{spec.test_abnormal}+{spec.test_normal} test videos, D = {spec.feature_dim})")
        model_kw: dict[str, Any] = dict(feature_dim=spec.feature_dim, **DEMO_MODEL)
        train_kw: dict[str, Any] = dict(DEMO_TRAIN)
        # The `demo` preset (5 crops, D = 128) when the set is the standard one; checkpoints
        # record it and their crop count, so exports of them know what videos look like.
        preset_name = demo_preset(spec)
    else:
        preset = get_preset(dataset)
        root = Path(o["root"]) if o["root"] else None
        if root is None and (o["train_list"] is None or (o["test_list"] is None and not o["no_eval"])):
            raise click.UsageError(f"--dataset {dataset} needs --root DIR (or --train-list and "
                                   f"--test-list/--annotations, or --no-eval)")
        model_kw = preset.model_config(audio=audio).to_dict()
        train_kw = {}
        preset_name = dataset

    for name in ("embed_dim", "heads", "head_dim", "mlp_dim", "depth", "ratio_sample", "ratio_batch",
                 "bn_momentum", "margin", "w_normal", "selection", "distance", "score"):
        if o[name] is not None:
            model_kw[name] = o[name]
    if o["hidden_dims"] is not None:
        model_kw["hidden_dims"] = _numbers(o["hidden_dims"], "--hidden-dims", int, "32,16")
    if o["w_mpp"] is not None:
        model_kw["w_mpp"] = _numbers(o["w_mpp"], "--w-mpp", float, "5,20")
    for name in ("batch_size", "segments", "lr", "weight_decay", "grad_clip", "iterations", "eval_every",
                 "seed"):
        if o[name] is not None:
            train_kw[name] = o[name]
    model_cfg = ModelConfig(**model_kw)
    train_cfg = TrainConfig(**train_kw)
    if dataset == "demo":
        m, t = model_cfg, train_cfg
        notes.append(f"demo recipe, smaller than the paper's so it trains in minutes on 2 CPU cores: "
                     f"embed {m.embed_dim} (paper 512), batch {t.batch_size}+{t.batch_size} (64+64), "
                     f"{t.segments} segments (200), {t.iterations} iterations (3000), evaluation every "
                     f"{t.eval_every}; selection {m.selection}, distance {m.distance}, score {m.score}")

    train_list = Path(o["train_list"]) if o["train_list"] else root / TRAIN_LISTS[dataset]
    test_list = annotations = snippets = None
    if not o["no_eval"]:
        from ..evaluate import dataset_files

        files = dataset_files(dataset, root=root, list_file=o["test_list"], annotations=o["annotations"],
                              snippets=o["snippets"])
        test_list, annotations, snippets = files.list_file, files.annotations, files.snippets
    data = DataSpec(dataset, train_list, root, test_list, annotations, snippets,
                    Path(o["audio_root"]) if o["audio_root"] else None,
                    tuple(Path(p) for p in o["audio_list"]))
    out = Path(o["out"]) if o["out"] else Path("runs") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    loader = LoaderConfig(workers=o["workers"], prefetch=o["prefetch"],
                          cache_bytes=int(o["cache_gb"] * 2 ** 30))
    run = RunConfig(out, device=o["device"], select_metric=o["select_metric"] or DEFAULT_SELECT_METRIC[dataset],
                    log_every=o["log_every"], eval_at_start=o["eval_at_start"], progress=o["progress"],
                    preset=preset_name, loader=loader)
    return model_cfg, train_cfg, data, run, notes


def _from_run_dir(o: dict[str, Any], given: set[str]):
    """--resume: the settings of the run in --out (read relative to that folder, wherever it
    is now and whatever the working directory), with the few allowed changes."""
    from ..data import LoaderConfig
    from ..train import read_run

    if not o["out"]:
        raise click.UsageError("--resume needs --out DIR, the folder of the run to continue")
    # First whether there is a run at all: options are only wrong for a run that exists.
    saved = read_run(o["out"])              # RunFolderError: "DIR holds no bnwvad-train run ..."
    not_allowed = sorted(given - RESUME_OPTIONS)
    if not_allowed:
        raise click.UsageError(
            f"with --resume the settings come from {Path(o['out']) / 'run.json'}; "
            f"{', '.join('--' + n.replace('_', '-') for n in not_allowed)} cannot be changed "
            f"(allowed: --iterations, --eval-every, --device, --workers, --prefetch, --cache-gb, "
            f"--log-every, --progress/--no-progress)")
    model_cfg, train_cfg, data, run = saved.model, saved.train, saved.data, saved.run
    for name in ("iterations", "eval_every"):
        if name in given:
            setattr(train_cfg, name, o[name])
    run.resume = True
    if "device" in given:
        run.device = o["device"]
    if "log_every" in given:
        run.log_every = o["log_every"]
    if "progress" in given:
        run.progress = o["progress"]
    if given & {"workers", "prefetch", "cache_gb"}:
        run.loader = LoaderConfig(workers=o["workers"], prefetch=o["prefetch"],
                                  cache_bytes=int(o["cache_gb"] * 2 ** 30))
    return model_cfg, train_cfg, data, run, []


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--dataset", type=click.Choice(DATASETS), default="demo", show_default=True,
              help="Dataset preset: selection ratios, crops, feature size, default file names.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), metavar="DIR", help="Dataset root; list paths resolve against it "
              "(demo: where the demo set is generated, default ./demo_data).")
@click.option("--train-list", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", help="Training list [ROOT/list/*_Train.list].")
@click.option("--test-list", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", help="Test list [ROOT/list/*_Test.list].")
@click.option("--annotations", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Test annotations [ROOT/*_Annotation.txt or ROOT/list/...].")
@click.option("--snippets", type=click.Path(dir_okay=False, path_type=Path), metavar="CSV",
              help="Optional test_snippets.csv to check test feature lengths against.")
@click.option("--no-eval", is_flag=True, help="Train without a test set (no periodic evaluation, no best.pt).")
@click.option("--audio-root", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="XD-Violence VGGish features (128-d, one <video>__vggish.npy per video), appended "
                   "to the visual ones: D = 1152.")
@click.option("--audio-list", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Audio list file(s) naming <video>__vggish.npy paths (relative to --audio-root); repeatable.")
# The recipe (DESIGN.md "Training, exactly"); unset = the dataset's default.
@click.option("--batch-size", type=click.IntRange(1), help="B normal + B abnormal per step [64; demo 32].")
@click.option("--segments", type=click.IntRange(1), help="T after resampling [200; demo 64].")
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="Adam learning rate [1e-4].")
@click.option("--weight-decay", type=click.FloatRange(0), help="Adam L2 weight decay [5e-5].")
@click.option("--grad-clip", type=click.FloatRange(0, min_open=True), help="Gradient-norm clip [1.0].")
@click.option("--iterations", type=click.IntRange(1), help="Training steps [3000; demo 300].")
@click.option("--eval-every", type=click.IntRange(1), help="Evaluate (and save last.pt) every N steps [100; demo 50].")
@click.option("--ratio-sample", type=click.FloatRange(0, 1), help="rho_s, sample-level selection ratio [ucf 0.1, xd/demo 0.2, shanghaitech 0.3].")
@click.option("--ratio-batch", type=click.FloatRange(0, 1), help="rho_b, batch-level selection ratio [ucf 0.2, xd/demo/shanghaitech 0.4].")
@click.option("--bn-momentum", type=click.FloatRange(0, 1), help="BatchNorm momentum [0.1].")
@click.option("--margin", type=float, help="MPP margin m [1.0].")
@click.option("--w-normal", type=float, help="Weight of the normal loss [1.0].")
@click.option("--w-mpp", metavar="W1,W2", help="MPP weights per hidden layer, comma-separated [5,20].")
@click.option("--embed-dim", type=click.IntRange(1), help="Enhancer width [512; demo 64] (= heads x head-dim).")
@click.option("--heads", type=click.IntRange(1), help="Attention heads [4; demo 2].")
@click.option("--head-dim", type=click.IntRange(1), help="Per-head width [128; demo 32].")
@click.option("--mlp-dim", type=click.IntRange(1), help="Feed-forward width [512; demo 64].")
@click.option("--depth", type=click.IntRange(1), help="Enhancer blocks [2].")
@click.option("--hidden-dims", metavar="N1,N2", help="Normal-head BN layer widths, comma-separated [32,16].")
# The paper's ablations.
@click.option("--selection", type=click.Choice(("sbs", "sls", "bls")), help="Snippet selection [sbs].")
@click.option("--distance", type=click.Choice(("mahalanobis", "euclidean", "cosine")), help="DFM distance [mahalanobis].")
@click.option("--score", type=click.Choice(("product", "classifier", "dfm")),
              help="Anomaly score: classifier x DFM (product), or either alone.")
# The run.
@click.option("--device", default="auto", show_default=True, metavar="DEVICE", help="auto (CUDA when present), cpu, cuda, cuda:N.")
@click.option("--seed", type=int, help="Seed of the initial weights and the batch order [0].")
@click.option("--out", "-o", "out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Output FOLDER of the run, created (run.json, metrics.jsonl, last.pt, best.pt; "
                   "nothing is written outside it) [runs/<dataset>-<time>].")
@click.option("--resume", is_flag=True, help="Continue the run in the folder --out DIR from its last.pt "
              "(settings from its run.json; from any working directory, also after the folder moved).")
@click.option("--select-metric", type=click.Choice(("ap", "auc", "average_precision", "auc_sub", "ap_sub")),
              help="Test metric that picks best.pt [ap for xd/demo, auc for ucf/shanghaitech].")
@click.option("--log-every", type=click.IntRange(1), default=10, show_default=True,
              help="A training record in metrics.jsonl every N steps.")
@click.option("--eval-at-start", is_flag=True, help="Also evaluate the untrained model.")
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True,
              help="Loader threads (0: load in the training thread).")
@click.option("--prefetch", type=click.IntRange(1), default=2, show_default=True,
              help="Batches loaded ahead; memory is (prefetch + 1) x 2 x B x T x D x 4 bytes.")
@click.option("--cache-gb", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Keep up to this many GiB of resampled training samples in RAM.")
@click.option("--demo-seed", type=int, default=0, show_default=True, help="Seed of the demo dataset.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@click.pass_context
def main(ctx: click.Context, **o: Any) -> None:
    """Train BN-WVAD. With no arguments: the built-in demo, start to finish in a few minutes."""
    given = {n for n in o if ctx.get_parameter_source(n) in (ParameterSource.COMMANDLINE,
                                                              ParameterSource.ENVIRONMENT)}
    # The training stack needs torch (the `train` extra): imported first and outside the
    # error handling below, so that a missing package is reported as one (the console
    # script names the extra to install) and never hides behind another error.
    from ..train import NonFiniteLossError, TrainingInterrupted, prepare

    # Everything before the first step: an error here means nothing ran (exit status 2), and
    # nothing was written (the run folder is created by run() below, and only then named).
    try:
        if o["resume"]:
            model_cfg, train_cfg, data, run, notes = _from_run_dir(o, given)
        else:
            model_cfg, train_cfg, data, run, notes = _build({**o, "_given": given})
        for line in notes:
            click.echo(line)
        prepared = prepare(model_cfg, train_cfg, data, run)
    except click.ClickException:
        raise
    except (ValueError, OSError, RuntimeError) as e:      # bnwvad's errors derive from these
        raise _Failed(str(e), 2) from None

    try:
        result = prepared.run(log=click.echo)
    except TrainingInterrupted as e:
        click.echo(str(e), err=True)
        sys.exit(130)
    except NonFiniteLossError as e:
        raise _Failed(str(e), 1) from None
    except (ValueError, OSError, RuntimeError) as e:
        raise _Failed(str(e), 1) from None

    if result.steps_run == 0:
        click.echo(f"the run was already complete at step {result.step}: nothing to train (raise "
                   f"--iterations to continue it); weights in {result.last_checkpoint}")
        return
    resumed = f" (resumed: {result.steps_run} this run)" if result.steps_run != result.step else ""
    click.echo(f"trained {result.step} iterations{resumed} in {result.seconds:.0f} s on {result.device} "
               f"({result.compute_s:.3f} s/it compute, {result.data_wait_s:.3f} s/it waiting for data)")
    m = result.final_metrics
    if m is not None:
        click.echo(f"final model (step {result.step}, {result.last_checkpoint}): "
                   f"AUC {_pct(m.get('auc'))}  AP {_pct(m.get('ap'))}")
        if result.best_checkpoint is not None:
            click.echo(f"best by test {result.select_metric.upper()} (step {result.best_step}, "
                       f"{result.best_checkpoint}): {result.select_metric.upper()} {_pct(result.best_value)}"
                       f"  [selected on the test split, as the published numbers are]")
    else:
        click.echo(f"no test set: final weights in {result.last_checkpoint}")


if __name__ == "__main__":      # pragma: no cover
    main()
