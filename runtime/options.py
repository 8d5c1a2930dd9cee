"""What the runtime's commands share: exit statuses, the one-line messages on stderr, loading a
model with its warnings said once, and the click options that mean the same in every command
(bnwvad-infer, bnwvad-stream, bnwvad-serve, bnwvad-extract; bnwvad-export's window options).

An option group is a decorator placed where its options stand in the command's list, e.g.

    @click.command()
    @model_option()
    @backend_options(arena_help=None)
    @memory_budget_option()
    def main(model, backend, strict, threads, device_id, sidecar, memory_budget): ...

Its options keep their names, defaults and help everywhere; where a command's help says
something of its own (bnwvad-serve's --threads are per replica), the group takes that text.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import click

from .errors import parse_bytes

# DESIGN.md's exit statuses, the same for every command.
EXIT_OK, EXIT_SOME_FAILED, EXIT_NOTHING_RAN, EXIT_INTERRUPTED = 0, 1, 2, 130
PATH = dict(path_type=Path)
BACKEND_CHOICES = ("auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")


# -- messages ------------------------------------------------------------------------------------
def warn(msg: str) -> None:
    click.secho(f"WARNING: {msg}", fg="yellow", err=True)


def fail(msg: str) -> None:
    """One input that failed (the run goes on)."""
    click.secho(f"FAILED {msg}", fg="red", err=True)


def error(msg: str) -> None:
    """What stops the command."""
    click.secho(f"error: {msg}", fg="red", err=True)


def parse_budget(ctx, param, value):
    """click callback: a size such as 2GiB -> bytes (None stays None)."""
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def load_warning_once(load: Callable, *args, **kw):
    """load(*args, **kw) (a runner or an extractor), each of its warnings printed once with our
    prefix; ONNX Runtime's own 'Specified provider ... not in available provider names', which
    repeats a fallback the runtime has just reported with its fix, is dropped. Errors of `load`
    propagate; nothing is printed for them here."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = load(*args, **kw)
    for msg in dict.fromkeys(str(w.message) for w in caught):
        if runner.fallback and "not in available provider names" in msg:
            continue
        warn(msg)
    return runner


def prepare_out(out: Path, flag: str = "--out") -> list[Path] | None:
    """io.prepare_output_dir(out, flag): the folders it created; None after printing why `out`
    cannot be written (the caller exits EXIT_NOTHING_RAN)."""
    from .io import RunFolderError, prepare_output_dir

    try:
        return prepare_output_dir(out, flag)
    except RunFolderError as e:
        error(str(e))
        return None


def calibrate_on(scorer, videos, failures, false_alarm_rate: float, *, quiet: bool = False):
    """The threshold calibrated on normal videos (events.Calibration: the quantile of their
    anomaly scores giving `false_alarm_rate`), each video that could not be collected
    (`failures`) or scored named on stderr, the result said unless quiet; None after the error
    when no video could be scored (the caller exits EXIT_NOTHING_RAN)."""
    from .events import calibrate_threshold

    for f in failures:
        fail(f"(calibration) {f.message}")
    scores = []
    for r in scorer.iter_results(videos):
        if hasattr(r, "anomaly"):
            scores.append(r.anomaly)
        else:
            fail(f"(calibration) {r.message}")
    if not scores:
        error("no calibration video could be scored; no threshold")
        return None
    calibration = calibrate_threshold(scores, false_alarm_rate)
    if not quiet:
        click.echo(f"calibrated threshold {calibration.threshold:.6g} on {calibration.videos} normal videos "
                   f"({calibration.snippets} snippets, {100 * calibration.achieved_rate:.2f}% above)", err=True)
    return calibration


# -- options -------------------------------------------------------------------------------------
def group(*decorators: Callable) -> Callable:
    """Several option decorators as one, in the order written (the first is listed first)."""
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


MODEL_HELP = "Exported model: .onnx, or a TensorRT engine (.engine/.plan) with its JSON sidecar."
BACKEND_HELP = "auto: tensorrt for engines; else ort-cuda where ONNX Runtime offers CUDA, else ort-cpu."
THREADS_HELP = "ONNX Runtime intra-op threads (0 or unset: its default)."
ARENA_HELP = ("ONNX Runtime's CPU memory arena: keeps the largest call's buffers (measured: about twice the "
              "working set of the longest video held to the end); off returns them.")
DEVICE_HELP = "CUDA device (GPU index) for the ort-cuda, ort-trt and tensorrt backends."
MEMORY_BUDGET_HELP = ("Working memory per call, e.g. 2GiB (default: half of the available RAM, or of free GPU "
                      "memory on CUDA backends).")
CALIBRATE_HELP = ("Normal videos' features (same forms as FEATURES; repeat the option): the threshold becomes "
                  "the quantile giving --false-alarm-rate on them.")


def model_option(help: str = MODEL_HELP, *, required: bool = True) -> Callable:
    """--model / -m FILE (required unless the command can do without it: default None)."""
    optional = {} if required else {"default": None}
    return click.option("--model", "-m", "model", required=required, metavar="FILE",
                        type=click.Path(dir_okay=False, **PATH), help=help, **optional)


def backend_options(*, choices: Sequence[str] = BACKEND_CHOICES, backend_help: str = BACKEND_HELP,
                    threads_min: int = 0, threads_help: str = THREADS_HELP, after_threads: Sequence[Callable] = (),
                    arena_help: str | None = ARENA_HELP, device_help: str = DEVICE_HELP,
                    sidecar: bool = True) -> Callable:
    """--backend, --strict/--no-strict, --threads, [after_threads], --arena/--no-arena (unless
    arena_help is None), --device-id, --sidecar (unless sidecar=False): how a model runs."""
    options = [
        click.option("--backend", type=click.Choice(list(choices)), default="auto", show_default=True,
                     help=backend_help),
        click.option("--strict/--no-strict", default=False, show_default=True,
                     help="Fail (instead of warning) when the backend asked for is not what runs."),
        click.option("--threads", type=click.IntRange(min=threads_min), default=None, help=threads_help),
        *after_threads,
    ]
    if arena_help is not None:
        options.append(click.option("--arena/--no-arena", default=True, show_default=True, help=arena_help))
    options.append(click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True,
                                help=device_help))
    if sidecar:
        options.append(click.option("--sidecar", type=click.Path(dir_okay=False, **PATH), default=None,
                                    metavar="FILE",
                                    help="A TensorRT engine's metadata JSON, if not <engine>.json beside it."))
    return group(*options)


def crops_options(crops_help: str = "Crops each video must have (default: the model's metadata).",
                  any_crops_help: str = "Accept videos with any number of crops (averaged).") -> Callable:
    """--crops N, --any-crops."""
    return group(
        click.option("--crops", "crops", type=click.IntRange(min=1), default=None, help=crops_help),
        click.option("--any-crops", is_flag=True, help=any_crops_help))


def memory_budget_option(help: str = MEMORY_BUDGET_HELP) -> Callable:
    """--memory-budget SIZE -> bytes or None."""
    return click.option("--memory-budget", callback=parse_budget, default=None, metavar="SIZE", help=help)


def window_options(*, window_help: str, lookahead_help: str, step_help: str) -> Callable:
    """--window W (default: none), --lookahead L (0), --step S (1): windowed scoring."""
    return group(
        click.option("--window", type=click.IntRange(min=1), default=None, metavar="W", help=window_help),
        click.option("--lookahead", type=click.IntRange(min=0), default=0, show_default=True, metavar="L",
                     help=lookahead_help),
        click.option("--step", type=click.IntRange(min=1), default=1, show_default=True, metavar="S",
                     help=step_help))


def threshold_options(*, calibrate_help: str = CALIBRATE_HELP, after_calibrate: Sequence[Callable] = ()
                      ) -> Callable:
    """--threshold, --calibrate PATH (repeatable), [after_calibrate], --false-alarm-rate."""
    return group(
        click.option("--threshold", type=float, default=None, help="Report events above this anomaly score."),
        click.option("--calibrate", "calibrate", multiple=True, metavar="PATH", type=click.Path(**PATH),
                     help=calibrate_help),
        *after_calibrate,
        click.option("--false-alarm-rate", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.01,
                     show_default=True, help="With --calibrate: fraction of normal snippets allowed above."))


__all__ = ["ARENA_HELP", "BACKEND_CHOICES", "BACKEND_HELP", "CALIBRATE_HELP", "DEVICE_HELP", "EXIT_INTERRUPTED",
           "EXIT_NOTHING_RAN", "EXIT_OK", "EXIT_SOME_FAILED", "MEMORY_BUDGET_HELP", "MODEL_HELP", "PATH",
           "THREADS_HELP", "backend_options", "calibrate_on", "crops_options", "error", "fail", "group",
           "load_warning_once", "memory_budget_option", "model_option", "parse_budget", "prepare_out",
           "threshold_options", "warn", "window_options"]
