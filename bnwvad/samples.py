"""One sample's features, as a training step or an evaluation reads them (numpy only).

A sample is one crop of one video: one crop file (`<video>__<k>.npy`, (L, D)) or one crop
of a stacked file (`<video>.npy`, (L, C, D)). `load_sample` reads it (audio appended when
it has some) and `resample` turns it into the T segments a training step consumes;
`load_test_features` reads all crops of a test video the same way. Which samples a list
holds, and the batches they form, is `bnwvad.data`'s.

Resampling (DESIGN.md, "Training, exactly")
    r = floor(linspace(0, L, T + 1)); segment i = mean of rows r[i]:r[i+1], or row r[i]
    when that range is empty. The published loader computes r with
    `np.linspace(0, L, T + 1, dtype=np.uint16)` and averages with `.mean(0)` row range by
    row range; `resample` does exactly that (bit-identical; tested against a literal
    transcription). uint16 wraps above 65535 snippets; we use int64 there instead, so a
    (45-hour) video that long is resampled correctly rather than reproducing the wrap.

Audio (XD-Violence, VGGish, 128-d): one audio file per *video* (shared by all its crops),
    found by video name, either
      - from audio list files (`--audio-list`, repeatable): one path per line, relative to
        the audio root (default: the list's folder), named `<video>__vggish.npy` or
        `<video>.npy` (the public XD-Violence audio lists use the first form); or
      - without a list, at `<audio_root>/<folder of the visual file in its list>/<video>__vggish.npy`,
        then `<audio_root>/<video>__vggish.npy`, then the same two with `<video>.npy`.
    Audio rows are appended after the visual ones (D = 1024 + 128 = 1152), row by row,
    before resampling. Visual and audio lengths may differ by one snippet (feature
    extractors round the last snippet differently); both are then cut to the shorter.
    A larger difference is an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .features import FeatureFileError, Video, load_features, load_video, read_list

AUDIO_SUFFIX = "__vggish"
# Largest visual/audio length difference that is trimmed rather than refused.
AUDIO_LENGTH_SLACK = 1


# -- resampling -------------------------------------------------------------------------
def segment_bounds(length: int, segments: int) -> np.ndarray:
    """r = floor(linspace(0, length, segments + 1)) as int64, (segments + 1,).

    Identical to the published `np.linspace(..., dtype=np.uint16)` for length < 65536
    (linspace floors before casting to an integer dtype).
    """
    if length < 1 or segments < 1:
        raise ValueError(f"need length >= 1 and segments >= 1, got {length} and {segments}")
    if length < 65536:
        return np.linspace(0, length, segments + 1, dtype=np.uint16).astype(np.int64)
    return np.floor(np.linspace(0, length, segments + 1)).astype(np.int64)


def resample(features: np.ndarray, segments: int = 200) -> np.ndarray:
    """(L, D) snippet features -> (segments, D) float32, as the published loader does.

    Segment i is the mean of rows r[i]:r[i+1] (float32 `.mean(0)`, the published
    arithmetic), or row r[i] where that range is empty (videos shorter than `segments`
    repeat rows). A per-segment loop costs ~1.5 ms for L = 1500, D = 1024: far below a
    training step, and it keeps the rounding bit-identical to the published code.
    """
    if features.ndim != 2:
        raise ValueError(f"resample expects (L, D) features, got shape {features.shape}")
    length = features.shape[0]
    r = segment_bounds(length, segments)
    out = np.empty((segments, features.shape[1]), dtype=np.float32)
    for i in range(segments):
        a, b = r[i], r[i + 1]
        out[i] = features[a] if a == b else features[a:b].mean(0)
    return out


# -- audio -------------------------------------------------------------------------------
def _audio_video_name(path: str | Path) -> str:
    stem = Path(path).name.removesuffix(".npy")
    return stem.removesuffix(AUDIO_SUFFIX)


@dataclass
class AudioSource:
    """Where a video's audio features are (see the module docstring for the rules)."""

    root: Path | None = None
    lists: tuple[Path, ...] = ()
    dim: int = 128
    _by_name: dict[str, Path] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root) if self.root is not None else None
        self.lists = tuple(Path(p) for p in self.lists)
        if self.root is None and not self.lists:
            raise ValueError("audio features need an audio root directory or audio list files")
        if self.lists:
            by_name: dict[str, Path] = {}
            for lf in self.lists:
                for e in read_list(lf, self.root if self.root is not None else None):
                    name = _audio_video_name(e.path)
                    if name in by_name and by_name[name] != e.path:
                        raise FeatureFileError(f"{lf}: video {name!r} has two audio files, "
                                               f"{by_name[name]} and {e.path}; expected one")
                    by_name[name] = e.path
            self._by_name = by_name

    def path_for(self, video: str, visual_path: str | Path | None = None,
                 list_folder: str | None = None) -> Path:
        """The audio file of `video`; FeatureFileError naming what was looked for."""
        if self._by_name is not None:
            try:
                return self._by_name[video]
            except KeyError:
                raise FeatureFileError(
                    f"video {video!r} ({visual_path}) has no audio file in the audio list(s) "
                    f"{[str(p) for p in self.lists]}; expected a line naming "
                    f"{video}{AUDIO_SUFFIX}.npy or {video}.npy") from None
        assert self.root is not None
        tried = []
        folders = [self.root / list_folder] if list_folder else []
        folders.append(self.root)
        for suffix in (AUDIO_SUFFIX, ""):
            for folder in folders:
                p = folder / f"{video}{suffix}.npy"
                if p.is_file():
                    return p
                tried.append(str(p))
        raise FeatureFileError(f"video {video!r} ({visual_path}): no audio features found; looked "
                               f"for {', '.join(tried)}")


def append_audio(visual: np.ndarray, audio: np.ndarray, *, visual_path, audio_path) -> np.ndarray:
    """Concatenate (L, Dv) visual and (La, Da) audio rows -> (min L, Dv + Da).

    Also accepts stacked visual (L, C, Dv): the audio is repeated for every crop.
    """
    lv, la = visual.shape[0], audio.shape[0]
    if abs(lv - la) > AUDIO_LENGTH_SLACK:
        raise FeatureFileError(
            f"{audio_path}: {la} audio snippets but {visual_path} has {lv} visual snippets; "
            f"expected the same length (a difference of at most {AUDIO_LENGTH_SLACK} is trimmed)")
    n = min(lv, la)
    a = audio[:n]
    if visual.ndim == 3:
        a = np.broadcast_to(a[:, None, :], (n, visual.shape[1], a.shape[1]))
    return np.concatenate([visual[:n], a], axis=-1)


# -- samples -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One training sample: one crop of one video.

    crop is None for a per-crop file (the file is the crop), else the crop index into a
    stacked (L, C, D) file.
    """

    path: Path
    video: str
    label: int
    crop: int | None = None
    audio: Path | None = None

    @property
    def key(self) -> str:
        return f"{self.path}" if self.crop is None else f"{self.path}[{self.crop}]"


def load_test_features(video: Video, *, feature_dim: int | None = None) -> np.ndarray:
    """All crops of a test video as (C, T, D) float32, audio appended when the video has it.

    feature_dim is the total D (visual + audio).
    """
    audio_path = video.extra.get("audio")
    if audio_path is None:
        return load_video(video, feature_dim=feature_dim)
    vis = load_video(video)                                   # (C, T, Dv)
    aud = load_features(audio_path, ndim=(2,))                # (Ta, Da)
    out = append_audio(vis.transpose(1, 0, 2), aud, visual_path=video.paths[0],
                       audio_path=audio_path).transpose(1, 0, 2)
    out = np.ascontiguousarray(out)
    if feature_dim is not None and out.shape[-1] != feature_dim:
        raise FeatureFileError(f"{video.paths[0]} + {audio_path}: D = {vis.shape[-1]} + {aud.shape[-1]} "
                               f"= {out.shape[-1]}; expected D = {feature_dim}")
    return out


def load_sample(sample: Sample, *, feature_dim: int | None = None) -> np.ndarray:
    """One sample's full-length features (L, D) float32, audio appended when it has some."""
    if sample.crop is None:
        x = load_features(sample.path, ndim=(2,))
    else:
        # A stacked file is read whole and one crop kept: C times the I/O of a per-crop
        # file; the in-RAM cache (cache_bytes) keeps every crop of a file it reads.
        x = load_features(sample.path, ndim=(3,))[:, sample.crop]
    if sample.audio is not None:
        aud = load_features(sample.audio, ndim=(2,))
        x = append_audio(x, aud, visual_path=sample.path, audio_path=sample.audio)
    if feature_dim is not None and x.shape[-1] != feature_dim:
        what = f"{sample.path}" + (f" + {sample.audio}" if sample.audio else "")
        raise FeatureFileError(f"{what}: feature dimension D = {x.shape[-1]}; expected D = {feature_dim}"
                               + (" (visual + audio)" if sample.audio else ""))
    return np.ascontiguousarray(x, dtype=np.float32)


__all__ = ["AUDIO_LENGTH_SLACK", "AUDIO_SUFFIX", "AudioSource", "Sample", "append_audio", "load_sample",
           "load_test_features", "resample", "segment_bounds"]
