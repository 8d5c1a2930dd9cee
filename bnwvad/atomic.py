"""Atomic file writes: a temporary file beside the target, fsync, then rename.

A reader (or a crash) never sees a partial file. Torch-free and numpy-free, so the
runtime, the exporter, training and the CLIs all write through this one helper.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

# The process umask, read ONCE here. os.umask can only be read by setting it, and setting it
# at every write would race with other threads creating files meanwhile (they would create
# them with umask 0); a umask changed later in the process is therefore not seen.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(binary_file) on a temp file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates 0600; give the result the permissions a plain open() would.
            os.chmod(tmp, 0o666 & ~_UMASK)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """JSON with a trailing newline; dumps_kwargs go to json.dumps (indent=2 by default)."""
    dumps_kwargs.setdefault("indent", 2)
    return atomic_write_bytes(path, (json.dumps(obj, **dumps_kwargs) + "\n").encode("utf-8"))


class StagedFiles:
    """Files that must appear together (an ONNX model and its external-data file; an engine
    and its sidecar), written by a third party into a private folder beside their
    destination, then fsynced and renamed into place by `commit`. Until then nothing is
    visible at the destination; leaving the block without committing removes the folder.

        with StagedFiles(out.parent, out.name) as stage:
            onnx.save_model(proto, stage.path(out.name))
            verify(stage.path(out.name))
            stage.commit({out.name: out})
    """

    def __init__(self, folder: str | os.PathLike, label: str = "stage"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{label}.", suffix=".tmp", dir=self.folder))

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self, destinations: dict[str, str | os.PathLike]) -> list[Path]:
        """Move staged files (name -> destination) into place, each fsynced first, in the
        order given (put the file readers look for last)."""
        moved = []
        for name, dest in destinations.items():
            src = self.dir / name
            with open(src, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(src, 0o666 & ~_UMASK)
            os.replace(src, dest)
            moved.append(Path(dest))
        return moved

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
