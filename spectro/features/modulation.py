"""A recording's modulation spectrum: how its loudness wobbles, 0 to ``modulation_hz`` Hz.

A log-mel image has 31 frames per second and 128 ms frames: a rotating machine's shaft-rate wobble (an
unbalanced fan's loudness rising and falling 20–50 times a second) is averaged away before the image exists.
The modulation spectrum keeps it: the loudness envelope (log energy of 16 ms frames every 4 ms, 250 per second
at any sample rate, centred as librosa centres frames, under a Hann² window in 4 ms steps) minus its mean, its
magnitude spectrum averaged into 1 Hz bins from 0 to ``modulation_hz``, in log units. A gain changes the
envelope by a constant, which the mean removes: the spectrum does not depend on how loud the recording is.

``spectro images`` stores it in every PNG (:mod:`spectro.features.png`), ``classify`` computes it from a
recording with the model's settings; normal-only runs score it (:mod:`spectro.scoring.references`).
"""

from __future__ import annotations

import math

import numpy as np

from spectro.errors import SpectroError

FRAME_SECONDS = 0.016
HOP_SECONDS = 0.004
_FLOOR = 1e-10  # energy floor of a silent frame
_SPECTRUM_FLOOR = 1e-6
_BLOCK = 4096  # envelope frames computed at a time: a long recording's frames never exist all at once


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
    y = np.asarray(y, dtype=np.float32)
    hop = max(1, round(HOP_SECONDS * sr))
    n_fft = hop * round(FRAME_SECONDS / HOP_SECONDS)  # a whole number of blocks
    if not 1 <= modulation_hz <= max_modulation_hz(sr):
        raise SpectroError(f"modulation_hz must be from 1 to {max_modulation_hz(sr)} at {sr} Hz, got {modulation_hz}")
    if y.ndim != 1 or len(y) < n_fft:
        raise SpectroError(f"a modulation spectrum needs a signal of at least {n_fft} samples, got shape {y.shape}")
    envelope = np.log(frame_energy(y, n_fft, hop) + _FLOOR)
    rate = sr / hop
    n = max(len(envelope), math.ceil(rate))
    magnitude = np.abs(np.fft.rfft(envelope - envelope.mean(), n)) / len(envelope)
    bins = np.floor(np.fft.rfftfreq(n, 1.0 / rate)).astype(int)
    keep = bins < modulation_hz
    sums = np.bincount(bins[keep], weights=magnitude[keep], minlength=modulation_hz)
    counts = np.bincount(bins[keep], minlength=modulation_hz)
    return np.log(sums / counts + _SPECTRUM_FLOOR).astype(np.float32)


def frame_energy(y: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Energy of each windowed frame of ``y`` (``n_fft`` samples every ``hop``, centred: ``n_fft // 2`` zeros padded
    at both ends, as librosa frames; ``1 + len(y) // hop`` frames), in the time domain and in O(samples): the
    squared signal summed in blocks of ``hop`` samples, then the ``n_fft / hop`` blocks of each frame weighted by
    :func:`block_weights` (a Hann² window in steps of ``hop`` samples). A tenth of the cost of an FFT per frame,
    so the images stage stays fast."""
    weights = block_weights(n_fft, hop)
    if (n_fft // 2) % hop:
        raise SpectroError(f"half the frame length {n_fft} is not a multiple of the hop {hop}")
    y = np.asarray(y, dtype=np.float32)
    squared = np.square(y)
    whole = len(y) // hop * hop
    blocks = squared[:whole].reshape(-1, hop).sum(axis=1, dtype=np.float64)
    if whole < len(y):
        blocks = np.append(blocks, squared[whole:].sum(dtype=np.float64))
    n_frames = 1 + len(y) // hop
    lead = n_fft // 2 // hop  # the centring zeros, in blocks
    padded = np.zeros(n_frames + len(weights) - 1)
    padded[lead:lead + len(blocks)] = blocks[:len(padded) - lead]
    return np.lib.stride_tricks.sliding_window_view(padded, len(weights)) @ weights


def block_weights(n_fft: int, hop: int) -> np.ndarray:
    """The weight of each ``hop``-sample block of a frame: the periodic Hann window squared, averaged over the
    block (``n_fft`` must be a multiple of ``hop``)."""
    if n_fft % hop:
        raise SpectroError(f"frame length {n_fft} is not a multiple of the hop {hop}")
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    return (hann ** 2).reshape(-1, hop).mean(axis=1)


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
