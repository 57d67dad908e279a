"""Log-mel features on the fixed dB scale, checked against librosa (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SR, librosa_db, tone_signal

from spectro.errors import SpectroError
from spectro.features.logmel import db_to_pixels, log_mel, pixels_to_db
from spectro.features.settings import FeatureSettings


def test_log_mel_matches_librosa_closely():
    """Before quantisation the fast path agrees with librosa to far below one 8-bit step."""
    y = tone_signal("bearing", 2.0, seed=3)
    for s in (FeatureSettings(), FeatureSettings(n_fft=512, hop_length=128, n_mels=24, power=1.5)):
        assert np.abs(log_mel(y, s) - librosa_db(y, s)).max() < 0.01


def test_silence_gives_finite_floor():
    import librosa

    s = FeatureSettings()
    db = log_mel(np.zeros(SR, dtype=np.float32), s)
    # float32 log10 is not correctly rounded on every CPU (AVX-512 gives -100.00001 for 1e-10)
    assert np.isfinite(db).all()
    np.testing.assert_allclose(db, librosa.power_to_db(np.zeros((1, 1)), amin=1e-10, top_db=None)[0, 0],
                               rtol=0, atol=1e-4)
    assert (db_to_pixels(db, s) == 0).all()


@pytest.mark.parametrize("y, match", [
    (np.zeros(100, dtype=np.float32), "clip too short: 100 samples"),
    (np.zeros(2047, dtype=np.float32), "need at least one FFT window of 2048"),
    (np.zeros((2, 4096), dtype=np.float32), "expected a 1-D signal"),
])
def test_log_mel_rejects(y, match):
    with pytest.raises(SpectroError, match=match):
        log_mel(y, FeatureSettings())


def test_low_frequencies_at_the_bottom():
    s = FeatureSettings()
    t = np.arange(SR) / SR
    pixels = db_to_pixels(log_mel((0.5 * np.sin(2 * np.pi * 100 * t)).astype(np.float32), s), s)
    row_energy = pixels.astype(float).mean(axis=1)
    assert row_energy.argmax() >= s.n_mels - 4  # a 100 Hz tone lights the bottom rows
    assert row_energy[-1] > row_energy[0] + 50


@pytest.mark.parametrize("db, pixel", [(-80.0, 0), (-200.0, 0), (20.0, 255), (50.0, 255), (-30.2, 127), (-29.8, 128),
                                       (-79.9, 0)])
def test_db_to_pixels_fixed_scale(db, pixel):
    s = FeatureSettings()
    assert db_to_pixels(np.full((1, 1), db), s)[0, 0] == pixel


def test_pixels_round_trip_within_half_step():
    s = FeatureSettings()
    db = np.random.default_rng(0).uniform(s.db_min, s.db_max, size=(64, 50)).astype(np.float32)
    assert np.abs(pixels_to_db(db_to_pixels(db, s), s) - db).max() <= s.db_per_step / 2 + 1e-4
