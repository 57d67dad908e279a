"""A machine's normal sound as a Gaussian, and how far a clip lies from it on a scale set by normal clips the
Gaussian has not seen: the statistics every view of :mod:`spectro.scoring` is built on (no TensorFlow here).

:class:`NormalProfile` follows scikit-learn's outlier-detector contract (``sklearn.covariance.EllipticEnvelope``):
``fit`` on normal clips' features, ``score_samples`` a score per clip, ``offset_`` a threshold on it and
``decision_function = score_samples − offset_``. One difference: here a **higher** score is more abnormal (the
anomaly-detection convention every spectro score keeps), so a clip is flagged where ``decision_function ≥ 0``.

The score is a robust standard score of the log Mahalanobis distance: the log of a clip's distance to the Gaussian,
minus the median of the log distances of normal clips the Gaussian has not seen (each fold of the training clips,
up to :data:`FOLDS` folds by clip, measured against a Gaussian of the others), divided by :data:`MAD_TO_STD` times
their median absolute deviation. Distances are skewed, so their logs are compared; a handful of normal clips may
hold one outlier, so median and MAD rather than mean and standard deviation. The covariance is Ledoit–Wolf's
(scikit-learn): a few clips in many dimensions still give an invertible one.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from spectro.errors import SpectroError

# the median absolute deviation of normal data times this (1.4826…) estimates its standard deviation
MAD_TO_STD = 1.0 / NormalDist().inv_cdf(0.75)
FOLDS = 5  # the folds by clip that give the held-out distances
MIN_CLIPS = 3  # a profile needs this many normal clips: two give one held-out distance per clip and no spread
MIN_SD = 1e-9  # a robust standard deviation, at least


class Gaussian:
    """A Gaussian of reference rows with a Ledoit–Wolf covariance; :meth:`distance` is Mahalanobis'."""

    def __init__(self, reference: np.ndarray):
        from sklearn.covariance import LedoitWolf

        if len(reference) < 2:
            raise SpectroError(f"a Gaussian needs at least 2 reference rows, got {len(reference)}")
        reference = np.asarray(reference, dtype=np.float64)
        if not np.ptp(reference, axis=0).any():  # all alike: Ledoit-Wolf's shrinkage divides 0 by 0
            reference = reference + np.random.default_rng(0).normal(0.0, 1e-9, size=reference.shape)
        self.fit = LedoitWolf().fit(reference)

    def distance(self, queries: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(self.fit.mahalanobis(np.asarray(queries, dtype=np.float64)), 0.0))


def mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row of ``features`` from a Gaussian stored as its ``mean`` and ``precision``
    (numpy alone: what a fitted :class:`Gaussian` leaves in a file)."""
    centred = np.asarray(features, dtype=np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, precision, centred), 0.0))


def log(scores) -> np.ndarray:
    """The natural log of non-negative scores (distances), 1e-12 at least."""
    return np.log(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12))


def robust_scale(values) -> list[float]:
    """``[median, 1.4826 × median absolute deviation]`` of ``values``: their centre and a standard deviation that
    one outlier among a handful of normal clips does not inflate (:data:`MIN_SD` at least)."""
    values = np.asarray(values, dtype=np.float64)
    median = float(np.median(values))
    return [median, float(max(MAD_TO_STD * np.median(np.abs(values - median)), MIN_SD))]


def log_scales(held_out: np.ndarray) -> list[float]:
    """:func:`robust_scale` of the logs of normal clips' ``held_out`` distances: the scale a view is measured in."""
    return robust_scale(log(held_out))


def folds_of(n: int) -> np.ndarray:
    """The fold of each of ``n`` clips (clip ``i`` in fold ``i % FOLDS``; fewer folds for fewer clips)."""
    return np.arange(n) % max(1, min(FOLDS, n))


def held_out_distances(features: np.ndarray) -> np.ndarray:
    """Each normal clip's Mahalanobis distance to a Gaussian of the others, fold by fold (:func:`folds_of`)."""
    features = np.asarray(features, dtype=np.float64)
    folds = folds_of(len(features))
    held = np.zeros(len(features))
    for f in np.unique(folds):
        held[folds == f] = Gaussian(features[folds != f]).distance(features[folds == f])
    return held


def as_larger_of_k(z, k: float) -> np.ndarray:
    """Standard scores moved onto the scale of the larger of ``k`` independent ones: ``x`` with
    ``P(max(Z1, …, Zk) <= x) = P(Z <= z)`` for standard normal ``Z``, i.e. ``Φ(x)^k = Φ(z)`` (``k >= 1``, not
    necessarily whole: the larger of ``j`` parts goes onto the scale of the larger of ``K`` with ``k = K / j``).
    Monotone, so it keeps a type's ranking; computed from the lower tail below 0 and the upper tail above (exact to
    ``|z|`` of 35). Used by every view that takes the larger of its parts."""
    from scipy.special import log_ndtr, ndtr, ndtri

    if not k >= 1:
        raise SpectroError(f"k must be >= 1, got {k}")
    z = np.asarray(z, dtype=np.float64)
    clipped = np.clip(z, -35.0, 35.0)
    with np.errstate(divide="ignore"):
        upper = ndtr(-np.abs(clipped))  # P(Z >= |z|)
        high = -ndtri(-np.expm1(np.log1p(-upper) / k))  # 1 - (1 - q)^(1/k), without cancelling
        low = ndtri(np.exp(log_ndtr(clipped) / k))
    # beyond |z| of 35 shifted alike, so a far-out clip still ranks above a less far one
    return np.where(clipped > 0, high, low) + (z - clipped)


class NormalProfile:
    """A Gaussian of normal clips' features with its held-out scale (module docstring).

    Attributes set by :meth:`fit`: ``location_`` and ``precision_`` (the Gaussian), ``held_out_`` (the normal
    clips' held-out distances), ``scale_`` (``[median, robust sd]`` of their logs, :func:`log_scales`) and
    ``offset_`` (the threshold on :meth:`score_samples`: the ``1 − max_fpr`` quantile of the held-out scores).
    """

    def __init__(self, *, max_fpr: float = 0.05):
        if not 0 < max_fpr < 1:
            raise SpectroError(f"max_fpr must be in (0, 1), got {max_fpr}")
        self.max_fpr = max_fpr

    def fit(self, features: np.ndarray, *, unseen: np.ndarray | None = None) -> NormalProfile:
        """Fit on normal clips' ``features`` ``(n, d)``; ``unseen``: more normal clips the Gaussian is not fitted
        on, measured against it and added to the held-out scale (a validation split's)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < MIN_CLIPS:
            raise SpectroError(f"a normal profile needs at least {MIN_CLIPS} normal clips' features (n, d), got "
                               f"shape {features.shape}")
        gaussian = Gaussian(features)
        self.location_, self.precision_ = gaussian.fit.location_, gaussian.fit.precision_
        held = held_out_distances(features)
        if unseen is not None and len(unseen):
            held = np.r_[held, gaussian.distance(unseen)]
        self.held_out_ = held
        self.scale_ = log_scales(held)
        self.offset_ = float(np.quantile(self._standard(held), 1.0 - self.max_fpr))
        return self

    @classmethod
    def from_arrays(cls, location: np.ndarray, precision: np.ndarray, scale, *, offset: float = np.nan,
                    max_fpr: float = 0.05) -> NormalProfile:
        """A profile saved as arrays (:meth:`fit`'s attributes), scored with numpy alone."""
        profile = cls(max_fpr=max_fpr)
        profile.location_, profile.precision_ = np.asarray(location), np.asarray(precision)
        profile.scale_, profile.offset_ = [float(scale[0]), float(scale[1])], float(offset)
        return profile

    def _standard(self, distances: np.ndarray) -> np.ndarray:
        return (log(distances) - self.scale_[0]) / self.scale_[1]

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` to the Gaussian."""
        return mahalanobis(features, self.location_, self.precision_)

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        """The robust standard score of each clip's log distance (higher = more abnormal)."""
        return self._standard(self.distance(features))

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """``score_samples − offset_``: a clip is flagged where it is ``≥ 0``."""
        return self.score_samples(features) - self.offset_
