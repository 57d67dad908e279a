"""Augmentation of spectrogram batches: each transform on its own, in pixel and dB terms."""

from __future__ import annotations

import numpy as np
import pytest

from spectro.errors import SpectroError
from spectro.training.augment import (
    AugmentSettings,
    apply_gain,
    augment,
    bin_noise,
    mix_background,
    random_gain,
    spec_augment,
    time_shift,
)


def _batch(n=4, rows=16, cols=50, seed=0):
    return np.random.default_rng(seed).integers(60, 200, size=(n, rows, cols)).astype(np.uint8)


def test_augment_off_changes_nothing_and_keeps_shape():
    x = _batch()
    out = augment(x, rng=np.random.default_rng(0), settings=AugmentSettings.off(), db_per_step=100 / 255)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, x)


def test_time_shift_is_a_roll_along_time_only():
    x = _batch()
    out = time_shift(x, rng=np.random.default_rng(1), max_fraction=0.5)
    for a, b in zip(x, out):
        shifts = [k for k in range(x.shape[-1]) if np.array_equal(np.roll(a, k, axis=-1), b)]
        assert shifts, "each image is its input rolled in time (never flipped)"


def test_spec_augment_masks_bands_to_the_image_mean():
    x = _batch(n=8)
    out = spec_augment(x, rng=np.random.default_rng(2), time_masks=1, time_mask_width=0.2, freq_masks=1,
                       freq_mask_width=0.25)
    for a, b in zip(x, out):
        fill = a.astype(np.float32).mean()
        masked_cols = np.flatnonzero(np.all(b == fill, axis=0))
        masked_rows = np.flatnonzero(np.all(b == fill, axis=1))
        assert 1 <= len(masked_cols) <= 10 and np.all(np.diff(masked_cols) == 1)
        assert 1 <= len(masked_rows) <= 4 and np.all(np.diff(masked_rows) == 1)
        keep = np.ones_like(b, bool)
        keep[masked_rows, :] = False
        keep[:, masked_cols] = False
        np.testing.assert_array_equal(b[keep], a[keep])


def test_random_gain_shifts_each_image_by_a_constant_within_the_range():
    x = _batch(n=16)
    step = 100 / 255
    out = random_gain(x, rng=np.random.default_rng(3), gain_db=6.0, db_per_step=step)
    delta = (out - x.astype(np.float32)).reshape(len(x), -1)
    np.testing.assert_allclose(delta, delta[:, :1] * np.ones_like(delta), atol=1e-4)  # constant per image
    gains_db = delta[:, 0] * step
    assert np.all(np.abs(gains_db) <= 6.0 + 1e-4) and gains_db.std() > 1.0
    clipped = random_gain(np.full((1, 2, 2), 250, np.uint8), rng=np.random.default_rng(0), gain_db=50, db_per_step=step)
    assert clipped.min() >= 0 and clipped.max() <= 255


def test_apply_gain_moves_each_image_by_its_own_gain_in_db_and_clips():
    step = 100 / 255
    x = np.array([[[10, 254]], [[10, 254]], [[3, 128]]], dtype=np.uint8)
    out = apply_gain(x, np.array([3 * step, -2 * step, -5 * step]), db_per_step=step)
    np.testing.assert_allclose(out, [[[13, 255]], [[8, 252]], [[0, 123]]], atol=1e-4)
    assert out.dtype == np.float32


def test_bin_noise_has_the_asked_spread_in_db_and_stays_in_range():
    rng = np.random.default_rng(0)
    x = np.full((4, 64, 300), 128.0, np.float32)
    db_per_step = 100 / 255
    noisy = bin_noise(x, rng=rng, noise_db=0.5, db_per_step=db_per_step)
    assert abs(float(np.std(noisy - x)) * db_per_step - 0.5) < 0.01
    assert abs(float(np.mean(noisy - x))) < 0.05
    edge = bin_noise(np.zeros((2, 8, 8), np.float32), rng=rng, noise_db=3.0, db_per_step=db_per_step)
    assert edge.min() == 0.0 and edge.max() > 0  # clipped at the scale's floor
    np.testing.assert_array_equal(bin_noise(x, rng=rng, noise_db=0.0, db_per_step=db_per_step), x)


def test_mixing_a_copy_at_zero_db_adds_three_db():
    x = _batch(n=2).astype(np.float32)
    step = 100 / 255
    out = mix_background(x, x, level_db=np.zeros(2), db_per_step=step)
    np.testing.assert_allclose(out, x + 10 * np.log10(2) / step, rtol=1e-5)
    quiet = mix_background(x, x, level_db=np.full(2, -60.0), db_per_step=step)
    np.testing.assert_allclose(quiet, x, atol=0.01)


@pytest.mark.parametrize("kwargs", [dict(time_shift=1.5), dict(gain_db=-1), dict(mix_db=(0, -10)),
                                    dict(time_masks=-1), dict(noise_db=-0.1)])
def test_bad_augment_settings_raise(kwargs):
    with pytest.raises(SpectroError, match="augmentation"):
        AugmentSettings(**kwargs)
