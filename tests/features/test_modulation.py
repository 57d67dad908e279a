"""The modulation spectrum (spectro.features.modulation) against librosa on the same signal, and its properties."""

from __future__ import annotations

import numpy as np
import pytest

from spectro.errors import SpectroError
from spectro.features.modulation import max_modulation_hz, modulation_spectrum
from spectro.features.settings import FeatureSettings

SR = 16000


def _wobbling_noise(seconds: float, rate_hz: float, depth: float = 0.5, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.1 * (1 + depth * np.sin(2 * np.pi * rate_hz * t)) * noise).astype(np.float32)


def _librosa_reference(y: np.ndarray, bins: int) -> np.ndarray:
    """The definition, computed frame by frame with librosa's framing and scipy's window: log energy of 16 ms frames
    every 4 ms (centred) under the Hann² window held constant over each 4 ms quarter (its mean there), the
    envelope's spectrum (padded to 1 s at least, divided by the frame count), the mean magnitude in each 1 Hz bin,
    natural log."""
    import librosa
    import scipy.signal

    frames = librosa.util.frame(np.pad(y.astype(np.float64), 128), frame_length=256, hop_length=64)
    steps = np.repeat((scipy.signal.get_window("hann", 256) ** 2).reshape(4, 64).mean(axis=1), 64)
    energy = (frames ** 2 * steps[:, None]).sum(axis=0)
    envelope = np.log(energy + 1e-10)
    n = max(len(envelope), 250)
    magnitude = np.abs(np.fft.rfft(envelope - envelope.mean(), n)) / len(envelope)
    freqs = np.fft.rfftfreq(n, 1 / 250)
    return np.log(np.array([magnitude[(freqs >= b) & (freqs < b + 1)].mean() for b in range(bins)]) + 1e-6)


@pytest.mark.parametrize("seconds", [10.0, 2.5023, 0.5])  # 2.5023 s: a last block of 36 samples
def test_modulation_spectrum_matches_librosa(seconds):
    y = _wobbling_noise(seconds, 23.0)
    ours = modulation_spectrum(y, sr=SR, modulation_hz=60)
    assert ours.shape == (60,) and ours.dtype == np.float32
    # bin 0 holds the removed mean's rounding (float32 here, float64 there) beside the slowest wobble
    np.testing.assert_allclose(ours[1:], _librosa_reference(y, 60)[1:], atol=2e-3)
    assert abs(ours[0] - _librosa_reference(y, 60)[0]) < 0.2


def test_a_wobble_shows_at_its_rate_and_gain_does_not_matter():
    y = _wobbling_noise(10.0, 23.5)
    spectrum = modulation_spectrum(y, sr=SR, modulation_hz=60)
    assert int(np.argmax(spectrum[2:])) + 2 == 23  # the bin from 23 to 24 Hz
    steady = modulation_spectrum(_wobbling_noise(10.0, 23.5, depth=0.0), sr=SR, modulation_hz=60)
    assert spectrum[23] - steady[23] > 2.0  # the wobble is far above what noise alone gives there
    np.testing.assert_allclose(modulation_spectrum(4.0 * y, sr=SR, modulation_hz=60), spectrum, atol=1e-4)


def test_bad_input_is_a_one_line_error():
    with pytest.raises(SpectroError, match="at least 256 samples"):
        modulation_spectrum(np.zeros(100, dtype=np.float32), sr=SR, modulation_hz=60)
    with pytest.raises(SpectroError, match="modulation_hz must be from 1 to 124 at 16000 Hz"):
        modulation_spectrum(np.zeros(SR, dtype=np.float32), sr=SR, modulation_hz=125)
    assert max_modulation_hz(SR) == 124


@pytest.mark.parametrize("value", [0, 125, 2.5, True])
def test_settings_refuse_a_modulation_range_the_envelope_cannot_show(value):
    with pytest.raises(SpectroError, match="modulation_hz must be a whole number from 1 to 124"):
        FeatureSettings(modulation_hz=value)


def test_settings_written_before_modulation_spectra_existed_read_as_none():
    old = FeatureSettings(modulation_hz=None).to_dict()
    del old["modulation_hz"]
    assert FeatureSettings.from_dict(old) == FeatureSettings(modulation_hz=None)
    assert FeatureSettings().modulation_hz == 60
