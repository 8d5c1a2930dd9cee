"""Thin click command-line front ends over the library (bnwvad-train, bnwvad-eval), and the
entry points of every console script (setup.cfg `console_scripts`).

Each entry point starts its command through `bnwvad._extras.launch`: in an install without the
command's extra, the command still starts (`--help` works where the command's module can be
imported), and when it needs a package that is not installed it says which extra installs it
(`pip install "bnwvad[export]"`) and exits with status 2, never with a traceback. The
functions import nothing heavy themselves.
"""
from __future__ import annotations


def run_train() -> int:
    """bnwvad-train (bnwvad.cli.train:main)."""
    from .._extras import launch

    return launch("bnwvad-train", "bnwvad.cli.train",
                  prefer={"torch": "train", "sklearn": "train", "scipy": "train"})


def run_eval() -> int:
    """bnwvad-eval (bnwvad.cli.eval:main). --scores needs scikit-learn (the `eval` extra);
    evaluating a checkpoint also needs torch (`train`, which includes scikit-learn)."""
    from .._extras import launch

    return launch("bnwvad-eval", "bnwvad.cli.eval", prefer={"torch": "train"})


def run_export() -> int:
    """bnwvad-export (bnwvad.export.cli:main)."""
    from .._extras import launch

    return launch("bnwvad-export", "bnwvad.export.cli", prefer={"torch": "export"})


def run_infer() -> int:
    """bnwvad-infer (bnwvad.runtime.cli:main): needs one ONNX Runtime (`cpu` or `gpu`)."""
    from .._extras import launch

    return launch("bnwvad-infer", "bnwvad.runtime.cli")


def run_extract() -> int:
    """bnwvad-extract (bnwvad.runtime.extract_cli:main): needs one ONNX Runtime (`cpu` or `gpu`)
    and PyAV (`video`)."""
    from .._extras import launch

    return launch("bnwvad-extract", "bnwvad.runtime.extract_cli")


def run_stream() -> int:
    """bnwvad-stream (bnwvad.runtime.stream_cli:main), once it is a console script: needs one
    ONNX Runtime (`cpu` or `gpu`), like bnwvad-infer."""
    from .._extras import launch

    return launch("bnwvad-stream", "bnwvad.runtime.stream_cli")


def run_serve() -> int:
    """bnwvad-serve (bnwvad.runtime.serve_cli:main): needs Ray Serve (the `ray` extra) and one
    ONNX Runtime."""
    from .._extras import launch

    return launch("bnwvad-serve", "bnwvad.runtime.serve_cli")


__all__ = ["run_eval", "run_export", "run_extract", "run_infer", "run_serve", "run_stream", "run_train"]
