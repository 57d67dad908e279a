"""Files to clip-sized pixel spans: PNG spectrograms and recordings, long ones span by span.

A recording is rendered with exactly the feature settings stored in the model's ``config.json``. The span
is the length of the clips the model was trained on (``image_shape``); a recording longer than that is cut
into spans, each scored as one clip, by pooling over its windows (:mod:`spectro.model.windows`). A
recording shorter than a training clip but at least one window long is one span of its own length.

Every file is checked against :class:`~spectro.features.limits.InputLimits` from its header, before it is decoded:
a recording's sample rate, channels and duration, a PNG's height (the model's mel bands) and width (at most the
frames ``max_seconds`` renders to).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spectro.data.layout import AUDIO_EXTENSIONS
from spectro.errors import SpectroError
from spectro.features.limits import InputLimits
from spectro.features.reader import read_image_and_info
from spectro.features.settings import FeatureSettings
from spectro.model.windows import window_starts

IMAGE_EXTENSIONS = (".png",)


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """The files to classify: given files as they are, folders searched recursively (hidden ones skipped).

    Raises
    ------
    SpectroError
        A path that does not exist, a file that is neither PNG nor audio, a folder holding neither.
    """
    known = IMAGE_EXTENSIONS + AUDIO_EXTENSIONS
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in known
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise SpectroError(f"{path}: no {', '.join(known)} files in this folder")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in known:
                raise SpectroError(f"{path}: not a spectrogram image or a recording (expected one of "
                                   f"{', '.join(known)}, found '{path.suffix or 'no extension'}')")
            files.append(path)
        else:
            raise SpectroError(f"{path}: no such file or folder")
    return files


@dataclass
class Windows:
    """The clip-sized pixel spans of one file and where they lie in it."""

    path: Path
    kind: str  # "png" or "audio"
    pixels: np.ndarray  # (n_spans, n_mels, frames) uint8: at least a model window wide, at most a training clip
    starts: list[float] = field(default_factory=list)  # seconds
    ends: list[float] = field(default_factory=list)
    # (n_spans, modulation_hz) float32 when the settings ask for modulation spectra (a PNG's own, for each of its
    # spans; a recording's, of each span), else None
    modulation: np.ndarray | None = None


def png_windows(path: Path, settings: FeatureSettings, span_shape: tuple[int, int], *, window: int | None = None,
                hop_seconds: float | None = None, limits: InputLimits | None = None) -> Windows:
    """A spectro PNG as clip-sized spans (one, unless the image is wider than a training clip); it must be at
    least ``window`` frames wide (default: a span, for models that take whole images) and at most what
    ``limits.max_seconds`` renders to (``None``: :class:`InputLimits`' defaults)."""
    rows, frames = span_shape
    window = window or frames
    pixels, info = read_image_and_info(path, settings=settings, bands=rows, min_frames=window, limits=limits)
    frames = min(frames, pixels.shape[1])
    hop = max(1, int(round(hop_seconds * settings.sr / settings.hop_length)) if hop_seconds else frames // 2)
    starts = window_starts(pixels.shape[1], frames, hop)
    step = settings.hop_length / settings.sr
    modulation = None
    if info.modulation is not None:  # an image carries one, of all of it: each span gets it
        modulation = np.tile(np.asarray(info.modulation, dtype=np.float32), (len(starts), 1))
    return Windows(path, "png", np.stack([pixels[:, s:s + frames] for s in starts]),
                   [s * step for s in starts], [(s + frames) * step for s in starts], modulation)


def audio_windows(path: Path, settings: FeatureSettings, span_shape: tuple[int, int], *, window: int | None = None,
                  hop_seconds: float | None = None, limits: InputLimits | None = None) -> Windows:
    """A recording rendered with the model's settings, cut into spans of a training clip's length.

    The span is ``settings.segment_seconds`` when the model was trained on segments, else the longest
    stretch that renders to a training image's frames; the hop is ``hop_seconds``, else the settings'
    segment hop, else half a span. A recording that renders to a training image's frames or fewer (but at
    least ``window``; default: a span, for models that take whole images) is one span. A recording whose header
    is outside ``limits`` (``None``: :class:`InputLimits`' defaults) is refused before any sample is read.
    """
    from spectro.features.audio import read_audio
    from spectro.features.logmel import db_to_pixels, log_mel

    try:
        y = read_audio(path, channel=settings.channel, sr=settings.sr, limits=limits)
    except SpectroError as exc:
        raise SpectroError(f"{path}: {exc}") from None
    rows, frames = span_shape
    window = window or frames
    n = len(y)
    if settings.frames_for(n) < window:
        need = (window - 1) * settings.hop_length / settings.sr
        raise SpectroError(f"{path}: recording too short: {n / settings.sr:.2f} s, the model needs at least "
                           f"{need:.2f} s ({window} frames)")
    if settings.frames_for(n) <= frames:
        bounds = [(0, n)]
        frames = settings.frames_for(n)
    else:
        seg = settings.segment_samples
        span = seg if seg and settings.frames_for(seg) == frames else (frames - 1) * settings.hop_length
        if hop_seconds:
            hop = int(round(hop_seconds * settings.sr))
        elif settings.segment_hop_seconds:
            hop = settings.segment_hop_samples
        else:
            hop = span // 2
        bounds = [(s, s + span) for s in window_starts(n, span, max(1, hop))]
    images = []
    for start, stop in bounds:
        pixels = db_to_pixels(log_mel(y[start:stop], settings), settings)
        if pixels.shape != (rows, frames):
            raise SpectroError(f"{path}: rendered to {pixels.shape[0]}x{pixels.shape[1]} pixels, the model takes "
                               f"{rows}x{frames}; its config.json features do not match its image shape")
        images.append(pixels)
    modulation = None
    if settings.modulation_hz is not None:
        from spectro.features.render import modulation_of

        modulation = np.stack([modulation_of(y[start:stop], settings) for start, stop in bounds])
    return Windows(path, "audio", np.stack(images), [a / settings.sr for a, _ in bounds],
                   [b / settings.sr for _, b in bounds], modulation)


def load_windows(path: Path, settings: FeatureSettings, span_shape: tuple[int, int], *, window: int | None = None,
                 hop_seconds: float | None = None, limits: InputLimits | None = None) -> Windows:
    """A PNG's or a recording's clip-sized spans (:func:`png_windows`, :func:`audio_windows`), each checked against
    ``limits`` (``None``: :class:`InputLimits`' defaults) before it is decoded."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return png_windows(path, settings, span_shape, window=window, hop_seconds=hop_seconds, limits=limits)
    return audio_windows(path, settings, span_shape, window=window, hop_seconds=hop_seconds, limits=limits)
