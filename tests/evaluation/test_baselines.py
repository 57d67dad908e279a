"""Baselines on tiny synthetic arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from spectro.errors import SpectroError
from spectro.evaluation.baselines import AutoencoderSettings, DenseAutoencoder, LevelThreshold, stack_frames
from spectro.features.settings import FeatureSettings
from spectro.features.statistics import level_db, pixels_to_db_batch


@pytest.mark.parametrize("pixel", [0, 100, 255])
def test_level_of_a_constant_image_is_its_db_value(pixel):
    s = FeatureSettings()
    db = pixels_to_db_batch(np.full((1, 4, 6), pixel, np.uint8), db_min=s.db_min, db_per_step=s.db_per_step)
    assert level_db(db)[0] == pytest.approx(s.db_min + pixel * (s.db_max - s.db_min) / 255)


def test_level_is_mean_power_in_db():
    # half the cells at -10 dB, half at -40 dB: mean power (0.1 + 0.0001) / 2
    db = np.concatenate([np.full((1, 2, 3), -10.0), np.full((1, 2, 3), -40.0)], axis=1)
    assert level_db(db)[0] == pytest.approx(10 * np.log10((0.1 + 1e-4) / 2))


@pytest.mark.parametrize("louder_abnormal", [True, False])
def test_level_threshold_learns_the_direction(louder_abnormal):
    rng = np.random.default_rng(0)
    normal = rng.normal(-30, 1, 20)
    abnormal = rng.normal(-24 if louder_abnormal else -36, 1, 10)
    levels = np.concatenate([normal, abnormal])
    truth = np.r_[np.zeros(20, bool), np.ones(10, bool)]
    model = LevelThreshold().fit(levels, truth)
    assert model.direction == (1.0 if louder_abnormal else -1.0)
    assert roc_auc_score(truth, model.score(levels)) == 1.0
    np.testing.assert_array_equal(model.predict(levels), truth)


def test_level_threshold_needs_both_classes():
    with pytest.raises(SpectroError, match="both normal and abnormal"):
        LevelThreshold().fit(np.zeros(3), np.zeros(3, bool))


def test_stack_frames_concatenates_consecutive_columns():
    spec = np.arange(3 * 8).reshape(3, 8)  # 3 mels, 8 frames
    vectors = stack_frames(spec, frames=5)
    assert vectors.shape == (4, 15)
    np.testing.assert_array_equal(vectors[0], spec[:, 0:5].T.ravel())
    np.testing.assert_array_equal(vectors[3], spec[:, 3:8].T.ravel())
    assert stack_frames(spec, frames=5, hop=2).shape == (2, 15)
    with pytest.raises(SpectroError, match="at least 5"):
        stack_frames(spec[:, :4], frames=5)


def test_autoencoder_scores_unseen_patterns_higher():
    rng = np.random.default_rng(0)
    mels, frames = 8, 40
    shape = np.linspace(-20, -60, mels)[:, None]
    normal = [shape + rng.normal(0, 1, (mels, frames)) for _ in range(12)]
    test_normal = [shape + rng.normal(0, 1, (mels, frames)) for _ in range(5)]
    anomalous = [shape + rng.normal(0, 1, (mels, frames)) for _ in range(5)]
    for spec in anomalous:
        spec[2, ::3] += 15.0  # periodic clicks in one band: a pattern normal data never shows
    ae = DenseAutoencoder(AutoencoderSettings(hidden=16, layers=2, bottleneck=4, epochs=25, batch_size=128))
    ae.fit(normal)
    scores = ae.score(test_normal + anomalous)
    assert scores.shape == (10,)
    assert roc_auc_score([0] * 5 + [1] * 5, scores) == 1.0
