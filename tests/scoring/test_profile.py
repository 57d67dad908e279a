"""NormalProfile, the Gaussian with a held-out scale every view is built on: scikit-learn's outlier contract
(fit, score_samples, offset_, decision_function), with golden numbers from scikit-learn and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from scipy.stats import median_abs_deviation
from sklearn.covariance import LedoitWolf

from spectro.errors import SpectroError
from spectro.scoring.profile import FOLDS, MIN_CLIPS, NormalProfile, held_out_distances, robust_scale


def _normals(n: int, seed: int = 0, d: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _by_hand(train: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Held-out log distances of ``train`` (clip i in fold i % 5, against a Ledoit-Wolf Gaussian of the other folds)
    and the log distances of ``queries`` to the Gaussian of all of ``train``: scikit-learn and scipy alone."""
    folds = np.arange(len(train)) % 5
    held = np.zeros(len(train))
    for f in range(5):
        fit = LedoitWolf().fit(train[folds != f])
        inverse = np.linalg.inv(fit.covariance_)
        held[folds == f] = [scipy_mahalanobis(x, fit.location_, inverse) for x in train[folds == f]]
    fit = LedoitWolf().fit(train)
    inverse = np.linalg.inv(fit.covariance_)
    return np.log(held), np.log([scipy_mahalanobis(x, fit.location_, inverse) for x in queries])


def test_score_samples_is_the_robust_standard_score_of_the_log_distance_against_held_out_normals():
    train, queries = _normals(30), _normals(7, seed=1) * 2.0
    held, logs = _by_hand(train, queries)
    profile = NormalProfile(max_fpr=0.1).fit(train)
    expected = (logs - np.median(held)) / median_abs_deviation(held, scale="normal")
    np.testing.assert_allclose(profile.score_samples(queries), expected, rtol=1e-9)
    held_scores = (held - np.median(held)) / median_abs_deviation(held, scale="normal")
    assert profile.offset_ == pytest.approx(np.quantile(held_scores, 0.9))
    np.testing.assert_allclose(profile.decision_function(queries), expected - profile.offset_, rtol=1e-9)
    np.testing.assert_allclose(held_out_distances(train), np.exp(held), rtol=1e-9)


def test_unseen_normals_join_the_scale_measured_against_the_gaussian_of_all_training_clips():
    train, unseen = _normals(12), _normals(6, seed=2)
    held, unseen_logs = _by_hand(train, unseen)
    profile = NormalProfile().fit(train, unseen=unseen)
    assert profile.scale_ == pytest.approx(robust_scale(np.r_[held, unseen_logs]))


def test_the_offset_flags_about_max_fpr_of_new_normal_clips_and_most_clips_far_away():
    train = _normals(400, seed=3)
    profile = NormalProfile(max_fpr=0.05).fit(train)
    fresh = _normals(4000, seed=4)
    assert np.mean(profile.decision_function(fresh) >= 0) == pytest.approx(0.05, abs=0.025)
    assert np.mean(profile.decision_function(fresh + 3.0) >= 0) > 0.95


def test_a_profile_saved_as_arrays_decides_exactly_as_the_fitted_one():
    train, queries = _normals(20, seed=5), _normals(50, seed=6) * 1.5
    fitted = NormalProfile().fit(train)
    back = NormalProfile.from_arrays(fitted.location_, fitted.precision_, fitted.scale_, offset=fitted.offset_)
    np.testing.assert_array_equal(back.decision_function(queries), fitted.decision_function(queries))
    np.testing.assert_array_equal(back.decision_function(queries) >= 0, fitted.decision_function(queries) >= 0)


def test_fitting_twice_gives_identical_scores_and_all_alike_clips_still_fit():
    train, queries = _normals(9, seed=7), _normals(5, seed=8)
    np.testing.assert_array_equal(NormalProfile().fit(train).score_samples(queries),
                                  NormalProfile().fit(train).score_samples(queries))
    same = np.ones((MIN_CLIPS + 2, 5))  # Ledoit-Wolf alone divides 0 by 0 here
    assert np.isfinite(NormalProfile().fit(same).score_samples(queries)).all()


def test_too_few_clips_or_a_bad_max_fpr_are_one_line_errors():
    with pytest.raises(SpectroError, match=f"at least {MIN_CLIPS} normal clips' features"):
        NormalProfile().fit(_normals(MIN_CLIPS - 1))
    with pytest.raises(SpectroError, match=r"max_fpr must be in \(0, 1\), got 1.5"):
        NormalProfile(max_fpr=1.5)
    assert FOLDS == 5  # the folds by clip the golden numbers above are computed with
