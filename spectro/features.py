"""Log-mel spectrograms on a fixed dB scale, and their 8-bit pixel encoding.

The dB matrix is ``librosa.power_to_db(melspectrogram(y), ref=1.0, amin=1e-10, top_db=None)``
with librosa's own mel filters; pixels map ``[db_min, db_max]`` linearly onto 0…255 (clipped), with
low frequencies at the bottom row of the image.
"""

from __future__ import annotations

import functools

import numpy as np

from spectro.config import FeatureSettings
from spectro.errors import SpectroError

AMIN = 1e-10  # power floor before log: a silent clip gives -100 dB, never -inf


@functools.lru_cache(maxsize=16)
def mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """librosa's (Slaney) mel filterbank as float32, cached per settings."""
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float32)


def log_mel(y: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Mel power spectrogram of ``y`` in dB, shape ``(n_mels, frames)``, float32, row 0 = lowest band.

    Raises
    ------
    SpectroError
        If the signal is shorter than one FFT window.
    """
    import librosa

    if y.ndim != 1:
        raise SpectroError(f"expected a 1-D signal, got shape {y.shape}")
    if len(y) < settings.n_fft:
        raise SpectroError(f"clip too short: {len(y)} samples ({len(y) / settings.sr:.3f} s), "
                           f"need at least one FFT window of {settings.n_fft} samples")
    stft = librosa.stft(y.astype(np.float32, copy=False), n_fft=settings.n_fft, hop_length=settings.hop_length,
                        dtype=np.complex64)
    magnitude = np.abs(stft)
    spec = magnitude**2 if settings.power == 2.0 else magnitude**settings.power
    mel = mel_filters(settings.sr, settings.n_fft, settings.n_mels, settings.fmin, settings.fmax) @ spec
    return librosa.power_to_db(mel, ref=1.0, amin=AMIN, top_db=None).astype(np.float32)


def db_to_pixels(db: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Map dB values onto uint8 pixels on the fixed scale; the image's top row is the highest band."""
    scaled = (db - settings.db_min) * (255.0 / (settings.db_max - settings.db_min))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)[::-1]


def pixels_to_db(pixels: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Inverse of :func:`db_to_pixels` (up to quantisation): rows back to low-band-first order."""
    return (pixels[::-1].astype(np.float32) * ((settings.db_max - settings.db_min) / 255.0) + settings.db_min)


def clipped_fraction(db: np.ndarray, settings: FeatureSettings) -> tuple[float, float]:
    """Fractions of values below ``db_min`` and above ``db_max``."""
    return float((db < settings.db_min).mean()), float((db > settings.db_max).mean())
