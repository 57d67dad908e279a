"""Reading recordings: one channel (or the channel mean) as float32 at the analysis sample rate."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from spectro.errors import SpectroError, SpectroWarning


def read_audio(path: str | Path, *, channel: str = "0", sr: int = 16000) -> np.ndarray:
    """Read one channel of a recording as float32 in [-1, 1] at sample rate ``sr``.

    Parameters
    ----------
    path : str or Path
        A WAV/FLAC/OGG file (8-channel WAVE_FORMAT_EXTENSIBLE as in MIMII is fine).
    channel : str
        ``"0"``, ``"1"``, … or ``"mean"`` for the average of all channels.
    sr : int
        Target sample rate; a file at another rate is resampled (soxr) with a :class:`SpectroWarning`.

    Returns
    -------
    numpy.ndarray
        1-D float32 signal.

    Raises
    ------
    SpectroError
        Unreadable, empty, truncated or non-audio file; NaN/inf samples; a channel the file lacks.
    """
    path = Path(path)
    try:
        info = sf.info(str(path))
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpectroError(f"not a readable audio file: {reason}") from None
    except OSError as exc:
        raise SpectroError(f"cannot open file: {exc.strerror or exc}") from None
    n_frames, n_channels = data.shape
    if n_frames == 0:
        raise SpectroError("empty recording: the file holds no samples")
    if info.frames > 0 and n_frames < info.frames:
        raise SpectroError(f"truncated recording: header announces {info.frames} samples, file holds {n_frames}")
    if channel == "mean":
        y = data.mean(axis=1)
    else:
        index = int(channel)
        if index >= n_channels:
            raise SpectroError(f"channel {index} requested, but the file has {n_channels} channel(s) (0..{n_channels - 1})")
        y = data[:, index]
    y = np.ascontiguousarray(y, dtype=np.float32)
    if not np.isfinite(y).all():
        bad = int((~np.isfinite(y)).sum())
        raise SpectroError(f"recording contains {bad} NaN/inf sample(s)")
    if file_sr != sr:
        warnings.warn(f"{path.name}: resampling {file_sr} Hz -> {sr} Hz; record at {sr} Hz or pass --sr {file_sr} "
                      "to silence this", SpectroWarning, stacklevel=2)
        import librosa

        y = librosa.resample(y, orig_sr=file_sr, target_sr=sr, res_type="soxr_hq").astype(np.float32)
    return y


def segment_bounds(n_samples: int, *, segment: int | None, hop: int | None) -> list[tuple[int, int]]:
    """Sample ranges ``[(start, stop), ...]`` of the windows a recording is cut into.

    ``segment=None`` gives the whole recording. Windows are full length only; a recording shorter than
    one window gives a single window covering it all.
    """
    if segment is None or n_samples <= segment:
        return [(0, n_samples)]
    hop = hop or segment
    return [(start, start + segment) for start in range(0, n_samples - segment + 1, hop)]
