"""Log-mel spectrograms on a fixed dB scale, and their 8-bit pixel encoding.

The dB matrix equals ``librosa.power_to_db(librosa.feature.melspectrogram(y, ...), ref=1.0, amin=1e-10,
top_db=None)`` (centred frames, zero padding, periodic Hann window, librosa's Slaney mel filters) to well
within one 8-bit step, but is computed on a faster path: a strided frame view, single-precision
``scipy.fft.rfft`` over blocks of frames, power as ``re² + im²`` and a float32 matrix product with the cached
filterbank. Pixels map ``[db_min, db_max]`` linearly onto 0…255 (clipped), with low frequencies at the
bottom row of the image.
"""

from __future__ import annotations

import numpy as np

from spectro.errors import SpectroError
from spectro.features.settings import FeatureSettings

AMIN = 1e-10  # power floor before log: a silent clip gives -100 dB, never -inf
FRAME_BLOCK = 64  # frames per FFT block (fits in L2 cache at n_fft 2048)
MEL_GROUPS = 4  # band groups for the mel product (see _band_groups)

_FILTERS: dict[tuple, np.ndarray] = {}
_WINDOWS: dict[int, np.ndarray] = {}


def _filter_key(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> tuple:
    return (int(sr), int(n_fft), int(n_mels), float(fmin), None if fmax is None else float(fmax))


def mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """librosa's (Slaney) mel filterbank, shape ``(n_mels, 1 + n_fft // 2)``, float32, cached per settings."""
    key = _filter_key(sr, n_fft, n_mels, fmin, fmax)
    if key not in _FILTERS:
        import librosa  # slow to import (numba): only where the filters are first needed

        _FILTERS[key] = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                                            fmax=fmax).astype(np.float32)
    return _FILTERS[key]


def settings_filters(settings: FeatureSettings) -> np.ndarray:
    """:func:`mel_filters` for ``settings``."""
    return mel_filters(settings.sr, settings.n_fft, settings.n_mels, settings.fmin, settings.fmax)


def preload_filters(settings: FeatureSettings, filters: np.ndarray) -> None:
    """Seed the filter cache (worker processes get the parent's filters and never import librosa)."""
    _FILTERS[_filter_key(settings.sr, settings.n_fft, settings.n_mels, settings.fmin, settings.fmax)] = filters


def _hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window("hann", n, fftbins=True)``), float32."""
    if n_fft not in _WINDOWS:
        n = np.arange(n_fft)
        _WINDOWS[n_fft] = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)
    return _WINDOWS[n_fft]


def _frames(y: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """librosa's centred framing (zero padding of ``n_fft // 2``) as a strided view, ``(frames, n_fft)``."""
    padded = np.pad(np.asarray(y, dtype=np.float32), n_fft // 2)
    return np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]


def _power(frames: np.ndarray, n_fft: int, power: float) -> np.ndarray:
    import scipy.fft

    spec = scipy.fft.rfft(frames * _hann(n_fft), axis=-1)  # float32 in -> complex64 out
    mag2 = spec.real * spec.real  # |z|^2 without the square root of np.abs
    mag2 += spec.imag * spec.imag
    if power == 2.0:
        return mag2
    if power == 1.0:
        return np.sqrt(mag2, out=mag2)
    return np.power(mag2, power / 2.0, out=mag2)


def power_spectrogram(y: np.ndarray, *, n_fft: int, hop_length: int, power: float = 2.0) -> np.ndarray:
    """``|STFT(y)| ** power`` with librosa's framing (centred, zero-padded), shape ``(frames, 1 + n_fft // 2)``.

    Note the layout: frames first (the transpose of librosa's), which keeps the FFT rows contiguous.
    """
    return _power(_frames(y, n_fft, hop_length), n_fft, power)


def mel_power(y: np.ndarray, settings: FeatureSettings, *, block: int = FRAME_BLOCK) -> np.ndarray:
    """Mel power spectrogram ``(n_mels, frames)`` float32, computed ``block`` frames at a time.

    Blocks keep the FFT's input and output in cache; on a 10 s clip this is several times faster than
    transforming all frames at once.
    """
    frames = _frames(y, settings.n_fft, settings.hop_length)
    filters = settings_filters(settings)
    groups = _band_groups(filters)
    out = np.empty((filters.shape[0], frames.shape[0]), dtype=np.float32)
    for start in range(0, frames.shape[0], block):
        spec = _power(frames[start:start + block], settings.n_fft, settings.power)
        for bands, bins, weights in groups:
            np.matmul(weights, spec[:, bins].T, out=out[bands, start:start + block])
    return out


_GROUPS: dict[int, list[tuple[slice, slice, np.ndarray]]] = {}


def _band_groups(filters: np.ndarray, n_groups: int = MEL_GROUPS) -> list[tuple[slice, slice, np.ndarray]]:
    """Split the filterbank into groups of adjacent bands, each with only the FFT bins it touches.

    Mel filters are zero outside a few bins, so four dense products over the bins each group uses do a
    quarter of the multiply-adds of one product over all bins, with the same result.
    """
    key = id(filters)
    if key not in _GROUPS:
        n_mels, n_bins = filters.shape
        nonzero = filters != 0
        groups = []
        edges = np.linspace(0, n_mels, min(n_groups, n_mels) + 1).round().astype(int)
        for a, b in zip(edges[:-1], edges[1:]):
            used = np.flatnonzero(nonzero[a:b].any(axis=0))
            lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
            groups.append((slice(a, b), slice(lo, hi), np.ascontiguousarray(filters[a:b, lo:hi])))
        _GROUPS[key] = groups
    return _GROUPS[key]


def log_mel(y: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Mel power spectrogram of ``y`` in dB, shape ``(n_mels, frames)``, float32, row 0 = lowest band.

    Parameters
    ----------
    y : numpy.ndarray
        1-D finite signal at ``settings.sr``, at least ``settings.n_fft`` samples long.
    settings : FeatureSettings

    Returns
    -------
    numpy.ndarray
        ``10 * log10(max(mel_power, 1e-10))``: a silent clip gives -100 dB everywhere, never -inf.

    Raises
    ------
    SpectroError
        If the signal is not 1-D or shorter than one FFT window.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise SpectroError(f"expected a 1-D signal, got shape {y.shape}")
    if len(y) < settings.n_fft:
        raise SpectroError(f"clip too short: {len(y)} samples ({len(y) / settings.sr:.3f} s), "
                           f"need at least one FFT window of {settings.n_fft} samples")
    mel = mel_power(y, settings)
    np.maximum(mel, AMIN, out=mel)
    np.log10(mel, out=mel)
    mel *= 10.0
    return mel


def db_to_pixels(db: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Map dB values onto uint8 pixels on the fixed scale; the image's top row is the highest band."""
    scaled = (db - settings.db_min) * (255.0 / (settings.db_max - settings.db_min))
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8)[::-1])


def pixels_to_db(pixels: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Inverse of :func:`db_to_pixels` (up to quantisation): rows back to low-band-first order."""
    return (pixels[::-1].astype(np.float32) * ((settings.db_max - settings.db_min) / 255.0) + settings.db_min)


def clipped_fraction(db: np.ndarray, settings: FeatureSettings) -> tuple[float, float]:
    """Fractions of values below ``db_min`` and above ``db_max``."""
    return float((db < settings.db_min).mean()), float((db > settings.db_max).mean())
