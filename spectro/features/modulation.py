"""A recording's modulation spectrum: how its loudness wobbles, 0 to ``modulation_hz`` Hz.

A log-mel image has 31 frames per second and 128 ms frames: a rotating machine's shaft-rate wobble (an
unbalanced fan's loudness rising and falling 20–50 times a second) is averaged away before the image exists.
The modulation spectrum keeps it: the loudness envelope (log energy of 16 ms frames every 4 ms, 250 per
second at any sample rate) minus its mean, its magnitude spectrum averaged into 1 Hz bins from 0 to
``modulation_hz``, in log units. A gain changes the envelope by a constant, which the mean removes: the
spectrum does not depend on how loud the recording is.

``spectro images`` stores it in every PNG (:mod:`spectro.features.png`), ``classify`` computes it from a
recording with the model's settings; normal-only runs score it (:mod:`spectro.model.references`).
"""

from __future__ import annotations

import math

import numpy as np

from spectro.errors import SpectroError

FRAME_SECONDS = 0.016
HOP_SECONDS = 0.004
_FLOOR = 1e-10  # energy floor of a silent frame
_SPECTRUM_FLOOR = 1e-6


def envelope_rate(sr: int) -> float:
    """Envelope frames per second at sample rate ``sr`` (about 250)."""
    return sr / max(1, round(HOP_SECONDS * sr))


def max_modulation_hz(sr: int) -> int:
    """The highest ``modulation_hz`` the envelope's frame rate can show at ``sr`` (below its Nyquist rate)."""
    return max(0, math.ceil(envelope_rate(sr) / 2) - 1)


def modulation_spectrum(y: np.ndarray, *, sr: int, modulation_hz: int) -> np.ndarray:
    """The modulation spectrum of signal ``y``: ``modulation_hz`` values (float32), bin ``i`` the mean magnitude
    from ``i`` to ``i + 1`` Hz of the spectrum of the log-energy envelope, in natural log.

    The envelope is zero-padded to at least one second, so every 1 Hz bin holds a frequency even for a short
    clip; the magnitudes are divided by the envelope's length, so clips of different lengths compare.

    Raises
    ------
    SpectroError
        A signal shorter than one envelope frame, or ``modulation_hz`` outside 1 … :func:`max_modulation_hz`.
    """
    from spectro.features.logmel import power_spectrogram  # librosa's framing, without importing librosa

    y = np.asarray(y, dtype=np.float32)
    n_fft, hop = max(2, round(FRAME_SECONDS * sr)), max(1, round(HOP_SECONDS * sr))
    if not 1 <= modulation_hz <= max_modulation_hz(sr):
        raise SpectroError(f"modulation_hz must be from 1 to {max_modulation_hz(sr)} at {sr} Hz, got {modulation_hz}")
    if y.ndim != 1 or len(y) < n_fft:
        raise SpectroError(f"a modulation spectrum needs a signal of at least {n_fft} samples, got shape {y.shape}")
    energy = power_spectrogram(y, n_fft=n_fft, hop_length=hop).sum(axis=1)
    envelope = np.log(energy + _FLOOR)
    rate = sr / hop
    n = max(len(envelope), math.ceil(rate))
    magnitude = np.abs(np.fft.rfft(envelope - envelope.mean(), n)) / len(envelope)
    bins = np.floor(np.fft.rfftfreq(n, 1.0 / rate)).astype(int)
    keep = bins < modulation_hz
    sums = np.bincount(bins[keep], weights=magnitude[keep], minlength=modulation_hz)
    counts = np.bincount(bins[keep], minlength=modulation_hz)
    return np.log(sums / counts + _SPECTRUM_FLOOR).astype(np.float32)


def encode(values: np.ndarray) -> str:
    """The text a PNG chunk stores (4 decimals; space-separated)."""
    return " ".join(f"{v:.4f}" for v in np.asarray(values, dtype=np.float64))


def decode(text: str, *, expected: int, where: str) -> np.ndarray:
    """Values of :func:`encode`; ``expected`` of them, else a one-line error naming ``where``."""
    try:
        values = np.array([float(v) for v in text.split()], dtype=np.float32)
    except ValueError:
        raise SpectroError(f"{where}: its modulation spectrum is not a list of numbers; render it again with "
                           "'spectro images'") from None
    if len(values) != expected or not np.isfinite(values).all():
        raise SpectroError(f"{where}: its modulation spectrum has {len(values)} finite values, its settings say "
                           f"{expected}; render it again with 'spectro images'")
    return values
