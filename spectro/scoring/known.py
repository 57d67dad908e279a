"""Is a recording of a machine the model knows? The known-machine check of every run (no TensorFlow here).

A model answers for any input: given a machine it never heard, a classifier still names one of its classes
and a normal-only run still scores the clip against some machine's normals. So every run keeps, per **machine
key** (``<machine>/<id>``, :func:`spectro.model.labels.machine_key`), the level-normalised per-band mel
statistics of its training clips (:func:`spectro.features.statistics.mel_statistics`, every label: an abnormal
clip of a known machine is still a known machine) and a Gaussian of them (Ledoit–Wolf shrinkage covariance,
scikit-learn). A clip's **distance** to a machine is its Mahalanobis distance to that Gaussian divided by the
machine's **bound**, the largest distance of the machine's own clips when each fold of them is measured against a
Gaussian of the others (:class:`spectro.scoring.profile.NormalProfile`'s held-out distances). A clip farther than 1
from every machine is an **unknown machine**: unlike every clip the model was trained on or enrolled with.

Why mel statistics and not the CNN's embedding: a CNN trained to tell a few machines apart maps a machine it
never heard close to one it knows (a real MIMII fan lies among the built-in synthetic fans' embeddings), while
the spectral shape tells them apart; and the statistics need no model, so the check runs the same with a
``.tflite`` file and in ``spectro serve`` (docs/decisions/0003-scoring-contract.md has the measurement).

The file ``known_machines.npz`` (:data:`spectro.runs.KNOWN_NAME`) holds every clip's statistics and machine
key and, per machine, the Gaussian's mean and precision and the bound, so checking needs numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spectro.errors import SpectroError
from spectro.runs import KNOWN_NAME, save_arrays
from spectro.scoring.profile import MIN_CLIPS, NormalProfile, mahalanobis


@dataclass(frozen=True)
class Check:
    """The known-machine check of one clip (or one recording: its spans' mean distance)."""

    known: bool
    nearest: str  # the machine at the smallest distance
    distance: float  # Mahalanobis distance / the machine's bound: above 1, unlike all of its clips

    def to_dict(self) -> dict:
        return {"known": self.known, "nearest": self.nearest, "distance": round(self.distance, 4)}


@dataclass
class Profile:
    """One machine: its clips' statistics, the Gaussian of them and its bound (``None`` with too few clips)."""

    features: np.ndarray  # (n_clips, 2 * n_mels)
    mean: np.ndarray = field(default=None, repr=False)
    precision: np.ndarray = field(default=None, repr=False)
    bound: float | None = None

    @classmethod
    def fit(cls, features: np.ndarray) -> Profile:
        features = np.asarray(features, dtype=np.float32)
        if len(features) < MIN_CLIPS:
            return cls(features)
        profile = NormalProfile().fit(features)
        return cls(features, profile.location_, profile.precision_, float(max(profile.held_out_.max(), 1e-12)))

    def distance(self, features: np.ndarray) -> np.ndarray:
        return mahalanobis(features, self.mean, self.precision) / self.bound


def statistics(pixels, settings) -> np.ndarray:
    """The check's features of clips' pixels (a batch, or a list of images of any widths) rendered with feature
    ``settings``: :func:`spectro.features.statistics.mel_statistics` on the fixed dB scale."""
    from spectro.features.statistics import mel_statistics_of_pixels

    def of(batch):
        return mel_statistics_of_pixels(batch, db_min=settings.db_min, db_per_step=settings.db_per_step)

    if isinstance(pixels, np.ndarray):
        return of(pixels)
    return np.concatenate([of(np.asarray(p)[None]) for p in pixels]) if len(pixels) else np.zeros((0, 0))


@dataclass
class KnownMachines:
    """The known-machine profiles of a run, one :class:`Profile` per machine key."""

    profiles: dict[str, Profile] = field(default_factory=dict)

    @classmethod
    def fit(cls, keys, features: np.ndarray) -> KnownMachines:
        """Profiles from clips' statistics ``features`` and the machine key of each clip."""
        keys = np.asarray(list(keys), dtype=str)
        features = np.asarray(features, dtype=np.float32)
        if len(keys) != len(features):
            raise SpectroError(f"need one machine key per clip, got {len(keys)} keys for {len(features)} clips")
        return cls({key: Profile.fit(features[keys == key]) for key in sorted(set(keys.tolist()))})

    def add(self, key: str, features: np.ndarray) -> None:
        """Add clips of machine ``key`` (new or known) and fit its profile again."""
        old = self.profiles.get(key)
        features = np.asarray(features, dtype=np.float32)
        if old is not None:
            if old.features.shape[1] != features.shape[1]:
                raise SpectroError(f"{key}: statistics of {features.shape[1]} values do not match the "
                                   f"{old.features.shape[1]} of its known clips")
            features = np.concatenate([old.features, features])
        self.profiles[key] = Profile.fit(features)

    @property
    def usable(self) -> dict[str, Profile]:
        """The profiles with a bound (at least :data:`MIN_CLIPS` clips)."""
        return {key: p for key, p in self.profiles.items() if p.bound is not None}

    def check(self, features: np.ndarray) -> Check | None:
        """The check of one recording from the statistics of its spans ``(n_spans, d)``: the machine with the
        smallest mean distance over the spans, and whether that is at most 1. ``None`` when no machine has
        enough clips for a bound."""
        usable = self.usable
        if not usable:
            return None
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        distances = {key: float(p.distance(features).mean()) for key, p in usable.items()}
        nearest = min(distances, key=distances.get)
        return Check(distances[nearest] <= 1.0, nearest, distances[nearest])

    # -- file --------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``known_machines.npz`` into ``folder`` (atomically)."""
        keys = sorted(self.profiles)
        if not keys:
            raise SpectroError("no known machines to save")
        usable = [k for k in keys if self.profiles[k].bound is not None]
        d = self.profiles[keys[0]].features.shape[1]
        arrays = {
            "features": np.concatenate([self.profiles[k].features for k in keys]).astype(np.float32),
            "keys": np.concatenate([[k] * len(self.profiles[k].features) for k in keys]).astype(str),
            "fitted": np.array(usable, dtype=str).reshape(-1),
            "means": np.array([self.profiles[k].mean for k in usable], dtype=np.float64).reshape(-1, d),
            "precisions": np.array([self.profiles[k].precision for k in usable], dtype=np.float64).reshape(-1, d, d),
            "bounds": np.array([self.profiles[k].bound for k in usable], dtype=np.float64),
        }
        return save_arrays(Path(folder) / KNOWN_NAME, arrays)

    @classmethod
    def load(cls, folder: str | Path) -> KnownMachines:
        """A run's profiles (every run has them).

        Raises
        ------
        SpectroError
            No ``known_machines.npz`` there, or one that cannot be read.
        """
        path = Path(folder) / KNOWN_NAME
        if not path.is_file():
            raise SpectroError(f"{folder}: no {KNOWN_NAME} (the known-machine profiles every run has); the run folder "
                               "is incomplete (copy the whole run folder, or train it again)")
        try:
            with np.load(path) as data:
                keys, features = data["keys"], data["features"]
                fitted = {str(k): (m, p, float(b)) for k, m, p, b in
                          zip(data["fitted"], data["means"], data["precisions"], data["bounds"])}
        except (OSError, ValueError, KeyError) as exc:
            raise SpectroError(f"{path}: unreadable known-machine profiles ({type(exc).__name__}: {exc})") from None
        profiles = {}
        for key in sorted(set(keys.tolist())):
            mean, precision, bound = fitted.get(key, (None, None, None))
            profiles[key] = Profile(features[keys == key], mean, precision, bound)
        return cls(profiles)
