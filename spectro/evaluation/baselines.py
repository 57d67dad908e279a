"""Baselines the CNN is measured against.

* :class:`MelStatsLogistic`: a logistic regression on level-normalised per-band mel statistics
  (:func:`mel_statistics`). It is a strong baseline on small data, so ``spectro evaluate`` fits it on every
  run's training split and reports it beside the CNN: a CNN that does not beat it has learned nothing a
  few summary numbers per band would not tell.
* :class:`LevelThreshold`: a loudness (RMS) threshold. The level of a spectrogram is the mean mel power
  in dB, which for a full-band signal is its RMS level; on the real MIMII fan sample it already
  separates normal from abnormal perfectly (FIELD-NOTES), on other machines it does not (benchmarks).
* :class:`DenseAutoencoder`: the unsupervised baseline of the DCASE task-2 challenges and public
  notebooks: a dense autoencoder on 5 stacked log-mel frames, trained on normal clips only; the anomaly
  score of an image is its mean reconstruction error (benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from spectro.errors import SpectroError


@dataclass
class MelStatsLogistic:
    """Anomaly score = P(abnormal) of a logistic regression on :func:`mel_statistics` features.

    The features are standardised with the training mean and standard deviation
    (``make_pipeline(StandardScaler(), LogisticRegression(...))``). ``class_weight="balanced"`` weighs
    normal and abnormal training images equally, however many of each there are, and the strong L2
    penalty (small ``C``) keeps 2 · n_mels coefficients from fitting the noise of a small training split.

    Parameters
    ----------
    C : float
        Inverse L2 regularisation strength of the logistic regression.
    max_iter : int
        Iterations the solver may take.
    """

    name: ClassVar[str] = "logistic regression on level-normalised mel statistics"

    C: float = 0.1
    max_iter: int = 5000
    pipeline: Any = field(default=None, init=False, repr=False)

    def fit(self, features: np.ndarray, abnormal: np.ndarray) -> MelStatsLogistic:
        """Fit on training features ``(n, d)`` (from :func:`mel_statistics`) and labels (1/True = abnormal).

        Raises
        ------
        SpectroError
            Shapes that do not match, non-finite features, or only one class among the labels.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = self._check(features)
        y = np.asarray(abnormal).astype(bool).ravel()
        if len(y) != len(x):
            raise SpectroError(f"need one label per feature row, got {len(x)} rows and {len(y)} labels")
        if y.all() or not y.any():
            raise SpectroError(f"the mel-statistics baseline needs normal and abnormal training images, got "
                               f"{int((~y).sum())} normal and {int(y.sum())} abnormal")
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(
            C=self.C, class_weight="balanced", max_iter=self.max_iter))
        self.pipeline.fit(x, y.astype(int))
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """The probability of *abnormal* for each row of ``features`` ``(n, d)``."""
        if self.pipeline is None:
            raise SpectroError("fit the mel-statistics baseline before scoring")
        x = self._check(features)
        column = list(self.pipeline.classes_).index(1)
        return self.pipeline.predict_proba(x)[:, column]

    @staticmethod
    def _check(features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise SpectroError(f"expected features (n, d) from mel_statistics, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise SpectroError("the mel statistics contain NaN or inf")
        return x


@dataclass
class LevelThreshold:
    """Anomaly score = level in dB, with the sign learned from labelled training clips.

    ``fit`` sets ``direction`` (+1 when abnormal clips are louder on average, else -1) and the
    ``threshold`` on the signed score that maximises balanced accuracy on the training clips (Youden's J,
    :func:`spectro.evaluation.metrics.choose_threshold`).
    """

    direction: float = 1.0
    threshold: float = 0.0

    def fit(self, levels: np.ndarray, abnormal: np.ndarray) -> LevelThreshold:
        from spectro.evaluation.metrics import choose_threshold

        levels, abnormal = np.asarray(levels, dtype=float), np.asarray(abnormal, dtype=bool)
        if abnormal.all() or not abnormal.any():
            raise SpectroError("the level threshold needs both normal and abnormal training clips")
        self.direction = 1.0 if levels[abnormal].mean() >= levels[~abnormal].mean() else -1.0
        # the best balanced accuracy is the best Youden's J (J = 2 * balanced accuracy - 1)
        self.threshold = choose_threshold(abnormal, self.score(levels), method="youden").value
        return self

    def score(self, levels: np.ndarray) -> np.ndarray:
        return self.direction * np.asarray(levels, dtype=float)

    def predict(self, levels: np.ndarray) -> np.ndarray:
        return self.score(levels) >= self.threshold


def stack_frames(spec: np.ndarray, *, frames: int = 5, hop: int = 1) -> np.ndarray:
    """Vectors of ``frames`` consecutive columns of ``spec`` (n_mels, T), shape ``(k, frames·n_mels)``.

    Vector ``j`` is columns ``j·hop … j·hop+frames-1`` concatenated (column after column), as in the
    DCASE baseline.
    """
    spec = np.asarray(spec)
    n_mels, total = spec.shape
    if total < frames:
        raise SpectroError(f"spectrogram has {total} frames, need at least {frames} to stack")
    starts = np.arange(0, total - frames + 1, hop)
    cols = starts[:, None] + np.arange(frames)[None, :]  # (k, frames)
    return spec.T[cols].reshape(len(starts), frames * n_mels)


@dataclass(frozen=True)
class AutoencoderSettings:
    """DCASE-style dense autoencoder (their 2020 baseline: 640 inputs, 4×128 units, bottleneck 8)."""

    frames: int = 5
    hidden: int = 128
    layers: int = 3
    bottleneck: int = 8
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    hop: int = 1
    seed: int = 0


class DenseAutoencoder:
    """Trained on normal spectrograms only; score = mean squared reconstruction error of an image's vectors.

    Inputs are dB spectrograms ``(n_mels, frames)``; vectors are standardised with the training mean and
    standard deviation per dimension.
    """

    def __init__(self, settings: AutoencoderSettings = AutoencoderSettings()):
        self.settings = settings
        self.model = None
        self.mean = self.std = None

    def _vectors(self, specs) -> list[np.ndarray]:
        s = self.settings
        return [stack_frames(spec, frames=s.frames, hop=s.hop) for spec in specs]

    def fit(self, specs, *, verbose: int = 0) -> DenseAutoencoder:
        import keras

        s = self.settings
        if len(specs) == 0:
            raise SpectroError("the autoencoder needs at least one normal training spectrogram")
        x = np.concatenate(self._vectors(specs)).astype(np.float32)
        self.mean = x.mean(axis=0)
        self.std = x.std(axis=0) + 1e-3
        x = (x - self.mean) / self.std
        keras.utils.set_random_seed(s.seed)
        inputs = keras.Input(shape=(x.shape[1],))
        h = inputs
        for _ in range(s.layers):
            h = keras.layers.Dense(s.hidden, activation="relu")(h)
        h = keras.layers.Dense(s.bottleneck, activation="relu")(h)
        for _ in range(s.layers):
            h = keras.layers.Dense(s.hidden, activation="relu")(h)
        outputs = keras.layers.Dense(x.shape[1])(h)
        self.model = keras.Model(inputs, outputs, name="dense_autoencoder")
        self.model.compile(optimizer=keras.optimizers.Adam(s.learning_rate), loss="mse")
        self.model.fit(x, x, epochs=s.epochs, batch_size=s.batch_size, shuffle=True, verbose=verbose)
        return self

    def score(self, specs) -> np.ndarray:
        """Mean squared reconstruction error (standardised units) of each spectrogram."""
        if self.model is None:
            raise SpectroError("fit the autoencoder before scoring")
        vectors = self._vectors(specs)
        x = (np.concatenate(vectors).astype(np.float32) - self.mean) / self.std
        error = np.mean((self.model.predict(x, batch_size=4096, verbose=0) - x) ** 2, axis=1)
        bounds = np.cumsum([0] + [len(v) for v in vectors])
        return np.array([error[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
