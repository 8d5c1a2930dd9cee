"""bnwvad-eval: the published evaluation protocol on a checkpoint or on precomputed scores.

    bnwvad-eval CHECKPOINT --dataset ucf|xd|shanghaitech|demo [--root DIR] [--list FILE]
                [--annotations FILE] [--snippets CSV] [--preset P] [--device auto|cpu|cuda]
                [--json FILE] [--plot FILE.png] [--videos NAME]...
    bnwvad-eval --scores DIR [--scores DIR2 ...] --dataset ... (the --out folders of bnwvad-infer
                runs of one model: one <video>.npy of snippet scores (T,) per test video; no torch)

Prints a metrics table (fractions, with percentages); --json writes the metrics atomically.
Score folders must be recorded runs of one model (their summary.json lists the files and the
weights digest): score files of no recorded run, or of several models, are refused by name.

Exit status: 0 evaluated; 1 a bad input (named in one line; nothing written); 2 nothing could
run (usage, an output path that cannot be written, a missing extra); 130 interrupted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import click

from ..atomic import atomic_write_json
from ..config import PRESETS

DATASETS = ("ucf", "xd", "shanghaitech", "demo")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename: never a partial file."""
    atomic_write_json(path, obj, allow_nan=False)


def run(checkpoint: str | None, scores_dir: str | Sequence[str] | None, dataset: str | None,
        root: str | None,
        list_file: str | None, annotations: str | None, snippets: str | None, preset: str | None,
        device: str, json_path: str | None, plot_path: str | None, videos: tuple[str, ...],
        progress: bool) -> dict[str, Any]:
    # Torch-free imports only here: the --scores path must work without torch.
    from ..evaluate import dataset_files, load_test_set
    from ..metrics import evaluate_scores, format_table
    from ..score_folders import load_run_scores
    from ..plot import check_plot_videos, plot_score_curves

    if isinstance(scores_dir, (str, Path)):
        scores_dir = [scores_dir]
    scores_dir = list(scores_dir) if scores_dir else None
    if (checkpoint is None) == (scores_dir is None):
        raise click.UsageError("give either a CHECKPOINT or --scores DIR (exactly one)")
    files = dataset_files(dataset, root=root, list_file=list_file, annotations=annotations,
                          snippets=snippets)
    test_set = load_test_set(files, need_snippets=scores_dir is not None)
    if videos:                      # fail on a wrong name before minutes of scoring
        check_plot_videos(videos, test_set.videos)

    extra = None
    if scores_dir is not None:
        scores, runs = load_run_scores(scores_dir, test_set.videos)
        source: dict[str, Any] = {
            "scores": str(scores_dir[0]) if len(scores_dir) == 1 else [str(d) for d in scores_dir],
            "scores_model": {"weights_digest": runs[0]["weights_digest"], "precision": runs[0]["precision"]},
            "score_runs": runs}
    else:
        from ..checkpoint import load_model
        from ..evaluate import resolve_device, score_videos

        dev = resolve_device(device)
        model = load_model(checkpoint, preset=preset or files.preset, device=dev)
        out = score_videos(model, test_set.videos, device=dev, progress=progress)
        scores = {k: v.anomaly for k, v in out.items()}
        extra = {"classifier score": {k: v.score for k, v in out.items()}}
        source = {"checkpoint": str(checkpoint), "device": str(dev)}

    metrics = evaluate_scores(scores, test_set.videos, test_set.annotations, snippets=test_set.snippets)
    title = (f"bnwvad-eval  {dataset or 'custom'}  "
             f"{'checkpoint ' + str(checkpoint) if checkpoint else 'scores ' + ', '.join(map(str, scores_dir))}")
    if plot_path:
        plot_score_curves(plot_path, scores, test_set.videos, test_set.annotations,
                          names=list(videos) or None, frames_per_snippet=metrics["frames_per_snippet"],
                          title=title, extra=extra)
    report = {**metrics, "dataset": dataset, "list": str(files.list_file),
              "annotations": str(files.annotations), "units": "fractions in [0, 1]", **source}
    # The table goes to stdout only once everything succeeded, then the JSON is written last.
    click.echo(format_table(metrics, title=title))
    if plot_path:
        click.echo(f"plot: {plot_path}")
    if json_path:
        write_json_atomic(Path(json_path), report)
        click.echo(f"metrics: {json_path}")
    return report


_EPILOG = """\b
Exit status:
  0    evaluated (the table on stdout; --json and --plot written)
  1    a bad input: checkpoint, list, annotations, feature or score files (named; nothing written)
  2    nothing could run: usage, an output path (--json, --plot) that cannot be written, a
       missing extra (torch for a CHECKPOINT)
  130  interrupted (Ctrl-C, SIGTERM); nothing written"""


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--scores", "scores_dir", multiple=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Evaluate precomputed scores: the --out folder of a bnwvad-infer run (<video>.npy, "
                   "float (T,), per test video, listed in its summary.json). Repeat for test sets "
                   "scored in several runs of the same model.")
@click.option("--dataset", type=click.Choice(DATASETS),
              help="Dataset layout for the default file locations (demo: ./demo_data, XD layout).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Dataset root: the list's feature paths resolve against it.")
@click.option("--list", "list_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Test list file (default <root>/list/<UCF|XD|SH>_Test.list).")
@click.option("--annotations", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Temporal annotation file, UCF-Crime or XD-Violence format (auto-detected).")
@click.option("--snippets", type=click.Path(dir_okay=False, path_type=Path), metavar="CSV",
              help="CSV video,snippets giving each test video's T (default <root>/test_snippets.csv "
                   "if present, else read from the feature files).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="Model preset for a bare (published) state_dict; default: the dataset's.")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the metrics as JSON to this FILE (atomically).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write a PNG FILE of score curves against the ground truth.")
@click.option("--videos", "--video", "videos", multiple=True, metavar="NAME",
              help="A video to plot (repeat the option for more); default: 3 anomalous + 1 normal.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar over the test videos (stderr).")
@click.pass_context
def main(ctx, checkpoint, scores_dir, dataset, root, list_file, annotations, snippets, preset, device,
         json_path, plot_path, videos, progress):
    """Evaluate a BN-WVAD CHECKPOINT (or --scores DIR) with the published protocol:
    frame-level AUC, AP (published trapezoid form) beside average_precision_score,
    the _sub metrics on abnormal videos, and per-class AUC / AP. Values are fractions."""
    from ..runtime.io import InterruptSignals, RunFolderError, prepare_output_dir, remove_created

    created: list[Path] = []
    done = False
    try:
        with InterruptSignals():
            for path, flag in ((json_path, "--json"), (plot_path, "--plot")):
                if path is not None:       # found before minutes of scoring, not after them
                    if path.is_dir():
                        raise _Exit2(f"{flag} {path}: is a folder; expected a file name")
                    created += prepare_output_dir(path.parent, f"{flag} {path}: its folder")
            run(checkpoint, scores_dir, dataset, root, list_file, annotations, snippets, preset, device,
                json_path, plot_path, tuple(videos), progress)
            done = True
    except RunFolderError as e:
        raise _Exit2(str(e)) from None
    except KeyboardInterrupt as e:
        click.echo(f"bnwvad-eval: interrupted ({getattr(e, 'signal', 'SIGINT')}); nothing was written",
                   err=True)
        ctx.exit(130)
    except click.ClickException:
        raise
    except ImportError as e:           # a missing extra: nothing could run
        if (getattr(e, "name", None) or "").split(".")[0] == "torch":
            raise _Exit2(f"{e}: evaluating a checkpoint needs torch (pip install 'bnwvad[train]'); "
                         f"--scores DIR does not") from None
        raise _Exit2(f"{e}: a package bnwvad-eval needs is not installed") from None
    except (ValueError, OSError) as e:
        # FeatureFileError, AnnotationError, EvaluationError and CheckpointError are ValueErrors.
        msg = " ".join(str(e).split())
        raise click.ClickException(msg) from None
    finally:
        if not done:
            remove_created(created)


class _Exit2(click.ClickException):
    """Nothing could run (DESIGN.md's exit status 2), in click's one-line error form."""

    exit_code = 2


if __name__ == "__main__":
    main()
