"""The errors of turning a video into snippets (frames.py, video.py), and importing PyAV.

VideoError (a RuntimeFailure) is the base: its message names the file, what was found and what
was expected. bnwvad.runtime.video re-exports every name here.
"""
from __future__ import annotations

import os

from bnwvad._extras import import_or_raise

from .errors import RuntimeFailure

VIDEO_EXTRA = 'pip install "bnwvad[video]"'


class VideoError(RuntimeFailure):
    """A video that cannot be turned into snippets; the message names the file, what was found
    and what was expected. `path` is the file (or None for in-memory frames)."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class VideoDependencyError(VideoError, ImportError):
    """PyAV (the decoder) is not installed."""


class VideoOpenError(VideoError):
    """The file is missing, unreadable, not a video FFmpeg can demux, or has no video stream."""


class VideoTooShortError(VideoError):
    """Fewer frames than one snippet (16), zero included. `frames`: how many there were."""

    def __init__(self, message: str, *, path=None, frames: int = 0):
        super().__init__(message, path=path)
        self.frames = int(frames)


class VideoDecodeError(VideoError):
    """The stream broke mid-way (a decode error, or it ends well before its declared length).
    The snippets decoded before the break were delivered; `frame_index` is the first frame
    that could not be decoded, `snippets` how many snippets were delivered."""

    def __init__(self, message: str, *, path=None, frame_index: int = 0, snippets: int = 0):
        super().__init__(message, path=path)
        self.frame_index = int(frame_index)
        self.snippets = int(snippets)


def import_av():
    """The PyAV module, or VideoDependencyError naming the extra to install."""
    return import_or_raise("av", lambda e: VideoDependencyError(
        f"decoding video files needs PyAV, which is not importable here ({e}). Fix: {VIDEO_EXTRA}"))


__all__ = ["VIDEO_EXTRA", "VideoDecodeError", "VideoDependencyError", "VideoError", "VideoOpenError",
           "VideoTooShortError", "import_av"]
