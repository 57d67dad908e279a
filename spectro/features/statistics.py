"""Summary statistics of spectrogram images on the fixed dB scale: a clip's level and its level-normalised
per-band mel statistics.

Used by the classical baselines (:mod:`spectro.evaluation.baselines`) and by the known-machine check
(:mod:`spectro.scoring.known`), which needs them without TensorFlow.
"""

from __future__ import annotations

import numpy as np

from spectro.errors import SpectroError


def pixels_to_db_batch(pixels: np.ndarray, *, db_min: float, db_per_step: float) -> np.ndarray:
    """dB values of pixels on the fixed scale (row order kept: top row = highest band); clips of different widths
    (an object array, :func:`spectro.features.reader.stack_clips`) give one array per clip, in a list."""
    if isinstance(pixels, np.ndarray) and pixels.dtype == object:
        return [np.asarray(p, dtype=np.float64) * db_per_step + db_min for p in pixels]
    return np.asarray(pixels, dtype=np.float64) * db_per_step + db_min


def level_db(db: np.ndarray) -> np.ndarray:
    """Level of each spectrogram in a batch ``(n, n_mels, frames)`` of dB values: ``10·log10(mean power)``."""
    db = np.asarray(db, dtype=np.float64)
    if db.ndim != 3:
        raise SpectroError(f"expected a batch of dB spectrograms (n, n_mels, frames), got shape {db.shape}")
    top = db.max(axis=(1, 2), keepdims=True)
    mean = np.mean(10.0 ** ((db - top) / 10.0), axis=(1, 2))
    return top[:, 0, 0] + 10.0 * np.log10(mean)


def mel_statistics(db: np.ndarray) -> np.ndarray:
    """Level-normalised per-band statistics of a batch ``(n, n_mels, frames)`` of dB spectrograms.

    Each spectrogram gives ``2 · n_mels`` numbers: first the mean over time of every band minus the
    clip's overall mean dB, then the standard deviation over time of every band, both in the image's
    row order (top row = highest band). Subtracting the overall mean makes the features blind to the
    clip's loudness (a gain shifts every dB value alike), so the baseline must find the failure in the
    spectral shape and its fluctuation, not in how loud the recording happened to be.

    Returns
    -------
    numpy.ndarray
        ``(n, 2 · n_mels)`` float64.

    Raises
    ------
    SpectroError
        Not a 3-dimensional batch, or spectrograms without bands or frames.
    """
    db = np.asarray(db, dtype=np.float64)
    if db.ndim != 3 or db.shape[1] < 1 or db.shape[2] < 1:
        raise SpectroError(f"expected a batch of dB spectrograms (n, n_mels, frames), got shape {db.shape}")
    band_mean = db.mean(axis=2)
    level = band_mean.mean(axis=1, keepdims=True)  # every band has the same frames: the clip's mean dB
    return np.concatenate([band_mean - level, db.std(axis=2)], axis=1)


def mel_statistics_of_pixels(pixels: np.ndarray, *, db_min: float, db_per_step: float,
                             chunk: int = 256) -> np.ndarray:
    """:func:`mel_statistics` of a batch of PNG pixels ``(n, n_mels, frames)`` on the fixed dB scale.

    The pixels are turned into dB ``chunk`` images at a time, so a large split never exists in float64
    all at once. Clips of different widths (an object array of images, :func:`spectro.features.reader.stack_clips`)
    are taken one at a time: the statistics are over time, any clip's length gives them.
    """
    if isinstance(pixels, np.ndarray) and pixels.dtype == object:
        return (np.concatenate([mel_statistics_of_pixels(np.asarray(p)[None], db_min=db_min, db_per_step=db_per_step)
                                for p in pixels]) if len(pixels) else np.zeros((0, 0)))
    pixels = np.asarray(pixels)
    if pixels.ndim != 3:
        raise SpectroError(f"expected a batch of images (n, n_mels, frames), got shape {pixels.shape}")
    if chunk < 1:
        raise SpectroError(f"chunk must be >= 1, got {chunk}")
    out = np.empty((len(pixels), 2 * pixels.shape[1]), dtype=np.float64)
    for start in range(0, len(pixels), chunk):
        db = pixels_to_db_batch(pixels[start:start + chunk], db_min=db_min, db_per_step=db_per_step)
        out[start:start + chunk] = mel_statistics(db)
    return out
