"""Optional dependencies: which extra installs what, and the console scripts' launcher.

A deployment installs only what its extra names (DESIGN.md, "Deployment conditions"): the core
is numpy, click, tqdm and psutil; the rest comes with an extra of `pip install "bnwvad[...]"`.
Every console script starts through `launch`, so that a command that needs a package that is
not installed says which extra brings it, in one line, and exits with status 2 (nothing could
run) instead of a traceback.

This module imports nothing beyond the standard library and click (a core dependency).
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping

# Top-level module -> (the package that provides it, the extras that install it; first = advised).
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "torch": ("torch", ("train", "export")),
    "onnx": ("onnx", ("export",)),
    "onnxscript": ("onnxscript", ("export",)),
    "sklearn": ("scikit-learn", ("eval", "analysis", "train")),
    "scipy": ("scipy", ("eval", "analysis", "train")),          # scikit-learn's own dependency
    "matplotlib": ("matplotlib", ("plot", "analysis")),
    "onnxruntime": ("onnxruntime", ("cpu", "gpu")),
    "tensorrt": ("tensorrt", ("tensorrt",)),
    "av": ("av", ("video",)),
    "ray": ("ray[data,serve]", ("ray",)),
}
EXIT_MISSING = 2            # DESIGN.md: 2 = nothing could run


class MissingExtra(ModuleNotFoundError):
    """A package of an extra is not installed. Still a ModuleNotFoundError (an ImportError),
    so code that handles missing optional packages keeps working; its message names the
    extra that installs it."""

    def __init__(self, module: str, extra: str | None = None, feature: str | None = None,
                 detail: str | None = None):
        self.module = module.split(".")[0]
        self.package = EXTRAS.get(self.module, (self.module, ()))[0]
        self.extra = extra or extra_for(self.module)
        self.feature = feature
        self.detail = detail
        super().__init__(self.describe(), name=module)

    def describe(self) -> str:
        what = f"{self.feature} needs {self.package}" if self.feature else f"needs {self.package}"
        how = install_hint(self.module, self.extra)
        broken = f" ({self.detail})" if self.detail else ""
        return f"{what}, which is not installed here{broken}: {how}"


def extra_for(module: str, prefer: Mapping[str, str] | None = None) -> str | None:
    """The extra to advise for a missing top-level module (None: not one of bnwvad's)."""
    top = module.split(".")[0]
    if prefer and top in prefer:
        return prefer[top]
    entry = EXTRAS.get(top)
    return entry[1][0] if entry else None


def install_hint(module: str, extra: str | None = None) -> str:
    top = module.split(".")[0]
    extra = extra or extra_for(top)
    if extra is None:
        return f"pip install {EXTRAS.get(top, (top,))[0]}"
    hint = f'pip install "bnwvad[{extra}]"'
    if extra in ("cpu", "gpu"):
        hint = 'pip install "bnwvad[cpu]" (or "bnwvad[gpu]" on an NVIDIA machine; never both)'
    return hint


def require(module: str, feature: str | None = None, *, extra: str | None = None):
    """Import `module` and return it, or raise MissingExtra naming the extra that installs it.

        matplotlib = require("matplotlib", "--plot")
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != module.split(".")[0]:
            raise                     # something else is missing: not ours to explain
        raise MissingExtra(module, extra, feature,
                           None if e.name == module.split(".")[0] else str(e)) from e


def import_or_raise(module: str, error: Callable[[ImportError], Exception]):
    """Import `module` and return it, or raise `error(the ImportError)`: the caller's own
    exception, whose message says what needs the module and the fix, instead of a traceback.

        av = import_or_raise("av", lambda e: VideoDependencyError(f"... ({e}). Fix: ..."))
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise error(e) from None


def missing_module(exc: BaseException) -> ModuleNotFoundError | None:
    """The ModuleNotFoundError of one of bnwvad's optional packages (EXTRAS), or a
    MissingExtra (`require`), behind `exc`, if any:
    `exc` itself, or an exception in its cause/context chain (an ImportError turned into a
    friendlier error by the code that caught it still counts)."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MissingExtra) or (isinstance(e, ModuleNotFoundError) and e.name
                                           and e.name.split(".")[0] in EXTRAS):
            return e
        e = e.__cause__ or e.__context__
    return None


def missing_message(prog: str, err: ModuleNotFoundError, prefer: Mapping[str, str] | None = None) -> str:
    if isinstance(err, MissingExtra):
        if prefer and err.module in prefer and err.extra == extra_for(err.module):
            err = MissingExtra(err.module, prefer[err.module], err.feature, err.detail)
        return f"{prog}: {err.describe()}"
    top = err.name.split(".")[0]
    detail = None if err.name == top else f"no module {err.name!r}: a broken install?"
    return f"{prog}: {MissingExtra(top, extra_for(top, prefer), None, detail).describe()}"


def launch(prog: str, module: str, attr: str = "main", *,
           prefer: Mapping[str, str] | None = None, args: list[str] | None = None) -> int:
    """Run the click command `module.attr` as the console script `prog`.

    Exactly click's standalone behaviour (usage errors exit 2, ClickException 1, --help 0,
    a command's own exit codes), except that:
    - a ModuleNotFoundError for one of bnwvad's optional packages (EXTRAS), raised while the
      command's module is imported or while it runs, even when the command turned it into
      another error, becomes one line naming the extra (`pip install "bnwvad[export]"`) and
      exit status 2; `prefer` picks the extra to advise per module for this command
      (bnwvad-train: torch -> train; bnwvad-export: torch -> export);
    - Ctrl-C exits with 130 (DESIGN.md: interrupted), not click's 1.
    """
    import click

    def missing(exc: BaseException) -> int | None:
        err = missing_module(exc)
        if err is None:
            return None
        click.echo(missing_message(prog, err, prefer), err=True)
        return EXIT_MISSING

    try:
        command = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        code = missing(e)
        if code is None:
            raise
        return code
    try:
        rv = command.main(args=args, prog_name=prog, standalone_mode=False)
    except click.ClickException as e:
        code = missing(e)
        if code is not None:
            return code
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 130
    except KeyboardInterrupt:                 # raised outside click's own handling
        click.echo("Aborted!", err=True)
        return 130
    except Exception as e:                    # noqa: BLE001 - only to name a missing extra
        code = missing(e)
        if code is None:
            raise
        return code
    return rv if isinstance(rv, int) else 0


__all__ = ["EXTRAS", "EXIT_MISSING", "MissingExtra", "extra_for", "import_or_raise", "install_hint", "launch",
           "missing_message", "missing_module", "require"]
