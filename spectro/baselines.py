"""Baselines the CNN is measured against (benchmarks only; nothing in the CLI depends on them).

* :class:`LevelThreshold`: a loudness (RMS) threshold. The level of a spectrogram is the mean mel power
  in dB, which for a full-band signal is its RMS level; on the real MIMII fan sample it already
  separates normal from abnormal perfectly (FIELD-NOTES), on other machines it does not.
* :class:`DenseAutoencoder`: the unsupervised baseline of the DCASE task-2 challenges and public
  notebooks: a dense autoencoder on 5 stacked log-mel frames, trained on normal clips only; the anomaly
  score of an image is its mean reconstruction error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spectro.errors import SpectroError


def pixels_to_db_batch(pixels: np.ndarray, *, db_min: float, db_per_step: float) -> np.ndarray:
    """dB values of pixels on the fixed scale (row order kept: top row = highest band)."""
    return np.asarray(pixels, dtype=np.float64) * db_per_step + db_min


def level_db(db: np.ndarray) -> np.ndarray:
    """Level of each spectrogram in a batch ``(n, n_mels, frames)`` of dB values: ``10·log10(mean power)``."""
    db = np.asarray(db, dtype=np.float64)
    if db.ndim != 3:
        raise SpectroError(f"expected a batch of dB spectrograms (n, n_mels, frames), got shape {db.shape}")
    top = db.max(axis=(1, 2), keepdims=True)
    mean = np.mean(10.0 ** ((db - top) / 10.0), axis=(1, 2))
    return top[:, 0, 0] + 10.0 * np.log10(mean)


@dataclass
class LevelThreshold:
    """Anomaly score = level in dB, with the sign learned from labelled training clips.

    ``fit`` sets ``direction`` (+1 when abnormal clips are louder on average, else -1) and the
    ``threshold`` on the signed score that maximises balanced accuracy on the training clips.
    """

    direction: float = 1.0
    threshold: float = 0.0

    def fit(self, levels: np.ndarray, abnormal: np.ndarray) -> "LevelThreshold":
        levels, abnormal = np.asarray(levels, dtype=float), np.asarray(abnormal, dtype=bool)
        if abnormal.all() or not abnormal.any():
            raise SpectroError("the level threshold needs both normal and abnormal training clips")
        self.direction = 1.0 if levels[abnormal].mean() >= levels[~abnormal].mean() else -1.0
        score = self.direction * levels
        candidates = np.unique(score)
        best, best_acc = candidates[0], -1.0
        for t in candidates:
            guess = score >= t
            acc = 0.5 * (guess[abnormal].mean() + (~guess[~abnormal]).mean())
            if acc > best_acc:
                best, best_acc = t, acc
        self.threshold = float(best)
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

    def fit(self, specs, *, verbose: int = 0) -> "DenseAutoencoder":
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
