"""bnwvad-export: checkpoint -> verified folded-BN ONNX graph, and ONNX -> TensorRT engine.

    bnwvad-export CHECKPOINT -o model.onnx [--preset ucf|xd|shanghaitech] [--fp16 | --int8]
                  [--opset N] [--no-verify] [--external-data] [--trt model.engine ...]
    bnwvad-export engine model.onnx -o model.engine [--min-shape 1,1,1] [--opt-shape 1,10,200]
                  [--max-shape 4,10,2048] [--timing-cache FILE] [--checkpoint CKPT --preset P]

Errors print one line on stderr; nothing partial is left. Exit status: 0 written (and
verified); 1 the checkpoint or graph failed (cannot be read, verification failed, TensorRT
build failed); 2 nothing could run (usage, an output folder that cannot be created or
written, found before any work; a missing extra); 130 interrupted (Ctrl-C, SIGTERM).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click

from bnwvad.config import PRESETS
from bnwvad.runtime.options import window_options

# Commands of the group; anything else as the first argument is the export's CHECKPOINT.
_SUBCOMMANDS = ("onnx", "engine", "i3d")


class _DefaultToOnnx(click.Group):
    """`bnwvad-export CKPT ...` means `bnwvad-export onnx CKPT ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in _SUBCOMMANDS and args[0] not in ("--help", "-h", "--version"):
            args = ["onnx", *args]
        return super().parse_args(ctx, args)


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


def _fail(e: Exception | str, code: int = 1) -> None:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    click.echo(f"bnwvad-export: error: {first}", err=True)
    sys.exit(code)


@contextmanager
def _outputs(*files: tuple[str, Path | None]):
    """Check, before any work, that each output FILE's folder can be created and written (exit
    2 naming it otherwise); on failure or Ctrl-C / SIGTERM (exit 130) take back the folders
    made for them. Errors of the export itself exit 1."""
    from bnwvad.runtime.io import InterruptSignals, RunFolderError, prepare_output_dir, remove_created

    created: list[Path] = []
    done = False
    try:
        with InterruptSignals():
            for flag, path in files:
                if path is None:
                    continue
                if path.is_dir():
                    _fail(f"{flag} {path}: is a folder; expected a file name", 2)
                created += prepare_output_dir(path.parent, f"{flag} {path}: its folder")
            yield
            done = True
    except RunFolderError as e:
        _fail(e, 2)
    except KeyboardInterrupt as e:
        click.echo(f"bnwvad-export: interrupted ({getattr(e, 'signal', 'SIGINT')}); nothing was written",
                   err=True)
        sys.exit(130)
    except ModuleNotFoundError as e:
        _fail(f"needs {e.name}, which is not installed here: pip install \"bnwvad[export]\" "
              f"(torch and onnx)", 2)
    finally:
        if not done:
            remove_created(created)


_EPILOG = """\b
Exit status:
  0    written (and verified against the reference unless --no-verify)
  1    the checkpoint or graph failed: unreadable, verification failed, build failed (nothing written)
  2    nothing could run: usage, an output folder that cannot be created or written, a missing extra
  130  interrupted (Ctrl-C, SIGTERM); nothing written"""


def _shape(value: str | None, name: str):
    if value is None:
        return None
    try:
        parts = tuple(int(p) for p in value.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected N,C,T (three integers, e.g. 1,10,200)", param_hint=name)
    if len(parts) != 3 or min(parts) < 1:
        raise click.BadParameter(f"{value!r}: expected N,C,T (three positive integers)", param_hint=name)
    return parts


def _profile(shapes, crops):
    """shapes: the parsed (min, opt, max), each None for the default of that bound."""
    from .trt_engine import Profile

    d = Profile.default(crops)
    lo, opt, hi = shapes
    return Profile(lo or d.min, opt or d.opt, hi or d.max)


def _window_shapes(shapes, window, lookahead, step, streams, onnx_file):
    """(min, opt, max) for windowed scoring: T up to the window span, N up to `streams`; an
    explicit --min/--opt/--max-shape still wins."""
    from bnwvad.runtime.metadata import meta_from_props, onnx_metadata_props
    from bnwvad.runtime.stream import window_span

    span = window_span(window, lookahead, step)
    crops = meta_from_props(onnx_metadata_props(onnx_file), str(onnx_file)).crops or 10
    lo, opt, hi = shapes
    return (lo or (1, 1, 1), opt or (min(8, streams), crops, span), hi or (streams, crops, span))


def _shapes(min_shape, opt_shape, max_shape):
    return (_shape(min_shape, "--min-shape"), _shape(opt_shape, "--opt-shape"), _shape(max_shape, "--max-shape"))


def _code(e: Exception) -> int:
    """2 where nothing could run here (TensorRT, CUDA or a GPU missing), else 1."""
    from .trt_engine import TensorRTUnavailable

    return 2 if isinstance(e, TensorRTUnavailable) else 1


def _errors():
    """The exception types that are the user's problem (one line, exit 1)."""
    from bnwvad.checkpoint import CheckpointError

    from .exporter import ExportError
    from .fold import FoldError
    from .graph import GraphError
    from .metadata import MetadataError
    from .quantize import QuantizationError
    from .trt_engine import TensorRTError
    from .verify import VerificationError
    return (CheckpointError, ExportError, FoldError, GraphError, MetadataError, QuantizationError,
            TensorRTError, VerificationError, FileNotFoundError, PermissionError, IsADirectoryError)


_profile_options = [
    click.option("--min-shape", metavar="N,C,T", help="Smallest input the engine accepts (default 1,1,1)."),
    click.option("--opt-shape", metavar="N,C,T", help="Shape TensorRT tunes for (default 1,CROPS,200)."),
    click.option("--max-shape", metavar="N,C,T", help="Largest input the engine accepts (default 4,CROPS,2048)."),
    click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                 help="Timing cache FILE read and updated (default ENGINE.timing.cache)."),
    click.option("--workspace", type=float, metavar="GIB", help="TensorRT workspace limit in GiB."),
]


def _with(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco


@click.group(cls=_DefaultToOnnx, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
def main():
    """Export BN-WVAD checkpoints to ONNX (BatchNorm folded) and build TensorRT engines.

    `bnwvad-export CHECKPOINT -o model.onnx` is short for `bnwvad-export onnx CHECKPOINT -o model.onnx`.
    """


@main.command("onnx", epilog=_EPILOG)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              metavar="FILE", help="Output .onnx FILE to write (its folder is created).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="Dataset preset; needed for published state_dicts (they carry no config).")
@click.option("--fp16", "fp16", is_flag=True, help="Mixed-precision graph: fp16 matmuls, fp32 where fp16 overflows.")
@click.option("--int8", "int8", is_flag=True, help="Dynamic int8 weight quantisation (ONNX Runtime only).")
@click.option("--opset", type=int, default=None, help="ONNX opset (17..21, default 17).")
@click.option("--no-verify", is_flag=True, help="Skip running the graph against PyTorch (not recommended).")
@click.option("--external-data", is_flag=True, help="Store the weights in OUTPUT.data beside the graph.")
@click.option("--device", default="cpu", show_default=True, metavar="DEVICE",
              help="Torch device for folding and the reference.")
@click.option("--trt", "trt_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also build a TensorRT engine FILE.")
@_with(_profile_options)
def onnx_cmd(checkpoint, output, preset, fp16, int8, opset, no_verify, external_data, device, trt_path,
             min_shape, opt_shape, max_shape, timing_cache, workspace):
    """Export CHECKPOINT (ours, or a published state_dict with --preset) to a verified ONNX graph."""
    if fp16 and int8:
        raise click.UsageError("--fp16 and --int8 exclude each other: pick one precision")
    if trt_path and int8:
        raise click.UsageError("--trt needs an fp32 or --fp16 graph: TensorRT cannot run dynamic int8 ops")
    shapes = _shapes(min_shape, opt_shape, max_shape)
    with _outputs(("-o/--output", output), ("--trt", trt_path), ("--timing-cache", timing_cache)):
        _export(checkpoint, output, preset, fp16, int8, opset, no_verify, external_data, device, trt_path,
                shapes, timing_cache, workspace)


def _export(checkpoint, output, preset, fp16, int8, opset, no_verify, external_data, device, trt_path,
            shapes, timing_cache, workspace):
    try:
        from .exporter import DEFAULT_OPSET, export_onnx

        precision = "fp16" if fp16 else "int8" if int8 else "fp32"
        if trt_path:
            from .trt_engine import require_tensorrt
            require_tensorrt()        # fail before the export, not after it
        report = export_onnx(checkpoint, output, preset=preset, precision=precision,
                             opset=opset or DEFAULT_OPSET, verify=not no_verify, external_data=external_data,
                             device=device, log=_echo)
        if trt_path:
            from .trt_engine import build_engine
            build_engine(report.path, trt_path, profile=_profile(shapes, report.metadata.get("crops")),
                         timing_cache=timing_cache, workspace_gib=workspace, verify=not no_verify,
                         reference=checkpoint, preset=preset, log=_echo)
    except _errors() as e:
        _fail(e, _code(e))


@main.command("engine", epilog=_EPILOG)
@click.argument("onnx_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              metavar="FILE", help="Output TensorRT engine FILE to write (its folder is created; "
                                   "<FILE>.json beside it).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Verify against this PyTorch checkpoint (default: against the ONNX graph in ONNX Runtime).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="Preset of --checkpoint.")
@click.option("--no-verify", is_flag=True, help="Skip running the engine against the reference.")
@click.option("--device", default="cuda", show_default=True, metavar="DEVICE",
              help="CUDA device to build and verify on.")
@window_options(window_help="Build for windowed / streaming scoring (bnwvad-infer --window, bnwvad-stream): the "
                            "profile's T becomes the window span W-1+S+L (smaller, faster engines).",
                lookahead_help="With --window: snippets of lookahead.",
                step_help="With --window: snippets scored per call.")
@click.option("--streams", type=click.IntRange(min=1), default=32, show_default=True, metavar="N",
              help="With --window: most windows (streams' blocks) per call, the profile's max N.")
@_with(_profile_options)
def engine_cmd(onnx_file, output, checkpoint, preset, no_verify, device, window, lookahead, step, streams,
               min_shape, opt_shape, max_shape, timing_cache, workspace):
    """Build a TensorRT engine (strongly typed; fp16 from an --fp16 export) from ONNX_FILE.

    The .onnx file is the same for whole-video and windowed scoring (T is dynamic); --window only
    shapes the engine's optimisation profile around the window's span."""
    shapes = _shapes(min_shape, opt_shape, max_shape)
    if window is not None:
        shapes = _window_shapes(shapes, window, lookahead, step, streams, onnx_file)
    with _outputs(("-o/--output", output), ("--timing-cache", timing_cache)):
        _engine(onnx_file, output, checkpoint, preset, no_verify, device, shapes, timing_cache, workspace)


def _engine(onnx_file, output, checkpoint, preset, no_verify, device, shapes, timing_cache, workspace):
    try:
        from .metadata import read_metadata
        from .trt_engine import build_engine

        meta = read_metadata(onnx_file)
        build_engine(onnx_file, output, profile=_profile(shapes, meta.get("crops")),
                     timing_cache=timing_cache, workspace_gib=workspace, verify=not no_verify,
                     reference=checkpoint, preset=preset, device=device, log=_echo)
    except _errors() as e:
        _fail(e, _code(e))


@main.command("i3d", epilog=_EPILOG)
@click.argument("weights", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              metavar="FILE", help="Output .onnx FILE of the feature extractor (its folder is created).")
@click.option("--fp16", "fp16", is_flag=True, help="fp16 convolutions; fp32 inputs, outputs and the final pool.")
@click.option("--no-verify", is_flag=True, help="Skip running the graph against PyTorch (not recommended).")
@click.option("--device", default="cpu", show_default=True, metavar="DEVICE",
              help="Torch device for the reference run.")
def i3d_cmd(weights, output, fp16, no_verify, device):
    """Export an I3D feature extractor (pytorch-i3d's rgb_imagenet.pt state_dict, loaded by its
    own names) to a verified ONNX graph: clips (N, 3, 16, 224, 224) in [-1, 1] -> (N, 1024)."""
    with _outputs(("-o/--output", output)):
        try:
            from .i3d import export_i3d

            export_i3d(weights, output, precision="fp16" if fp16 else "fp32", verify=not no_verify,
                       device=device, log=_echo)
        except _errors() as e:
            _fail(e, _code(e))


if __name__ == "__main__":
    main()
