"""The known-machine check: Mahalanobis distances against scipy's on scikit-learn's Ledoit–Wolf covariance, bounds from
held-out folds computed by hand, known and unknown clips, enrolment and the file round trip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf

from spectro.errors import SpectroError
from spectro.features.settings import FeatureSettings
from spectro.features.statistics import mel_statistics_of_pixels
from spectro.runs import KNOWN_NAME
from spectro.scoring.known import KnownMachines, Profile, statistics
from spectro.scoring.profile import FOLDS


def _clips(n: int, d: int = 6, *, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * np.linspace(1, 2, d) + shift).astype(np.float32)


def test_distance_is_scipys_mahalanobis_over_the_bound_from_held_out_folds():
    x = _clips(12)
    profile = Profile.fit(x)
    folds = np.arange(12) % FOLDS
    held = []
    for f in range(FOLDS):
        fit = LedoitWolf().fit(x[folds != f].astype(np.float64))
        held += [mahalanobis(row, fit.location_, fit.precision_) for row in x[folds == f].astype(np.float64)]
    assert profile.bound == pytest.approx(max(held), rel=1e-6)
    fit = LedoitWolf().fit(x.astype(np.float64))
    query = _clips(3, seed=9)
    expected = [mahalanobis(q, fit.location_, fit.precision_) / max(held) for q in query.astype(np.float64)]
    np.testing.assert_allclose(profile.distance(query), expected, rtol=1e-6)


def test_clips_like_a_machines_own_are_known_and_others_unknown():
    known = KnownMachines.fit(["fan/id_00"] * 40 + ["pump/id_00"] * 40,
                              np.concatenate([_clips(40, seed=1), _clips(40, shift=6.0, seed=2)]))
    like_pump = known.check(_clips(1, shift=6.0, seed=3))
    assert like_pump.known and like_pump.nearest == "pump/id_00" and like_pump.distance <= 1
    far = known.check(_clips(2, shift=40.0, seed=4))  # a recording of two spans, far from both machines
    assert not far.known and far.distance > 1
    assert far.to_dict() == {"known": False, "nearest": far.nearest, "distance": round(far.distance, 4)}


def test_a_machine_with_too_few_clips_gets_no_bound_and_enrolling_more_gives_it_one():
    known = KnownMachines.fit(["gear"] * 2, _clips(2))
    assert known.profiles["gear"].bound is None and known.check(_clips(1)) is None
    known.add("gear", _clips(6, seed=5))
    assert len(known.profiles["gear"].features) == 8 and known.profiles["gear"].bound is not None
    assert known.check(_clips(1, seed=6)) is not None
    with pytest.raises(SpectroError, match="do not match"):
        known.add("gear", _clips(3, d=4))


def test_the_file_round_trip_keeps_every_profile(tmp_path):
    known = KnownMachines.fit(["a"] * 10 + ["b"] * 2, np.concatenate([_clips(10), _clips(2, seed=7)]))
    known.save(tmp_path)
    again = KnownMachines.load(tmp_path)
    assert set(again.profiles) == {"a", "b"} and again.profiles["b"].bound is None
    assert again.profiles["a"].bound == pytest.approx(known.profiles["a"].bound)
    query = _clips(3, seed=8)
    np.testing.assert_allclose(again.profiles["a"].distance(query), known.profiles["a"].distance(query), rtol=1e-6)
    with pytest.raises(SpectroError, match=r"nothing: no known_machines.npz \(the known-machine profiles every run "
                                           r"has\)"):
        KnownMachines.load(tmp_path / "nothing")
    (tmp_path / KNOWN_NAME).write_bytes(b"garbage")
    with pytest.raises(SpectroError, match="unreadable known-machine profiles"):
        KnownMachines.load(tmp_path)


def test_statistics_are_the_mel_statistics_of_each_image_whatever_its_width():
    settings = FeatureSettings(n_mels=8)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, width), dtype=np.uint8) for width in (10, 17)]
    expected = np.concatenate([mel_statistics_of_pixels(i[None], db_min=settings.db_min,
                                                        db_per_step=settings.db_per_step) for i in images])
    np.testing.assert_allclose(statistics(images, settings), expected)
    np.testing.assert_allclose(statistics(np.stack([images[0]] * 2), settings), expected[[0, 0]])
