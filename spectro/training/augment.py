"""Training-time augmentation of spectrogram pixels that respects what a spectrogram is: its settings, and
its definition in numpy.

``spectro train`` applies these operations as TensorFlow ops on every batch of its streaming pipeline
(:func:`spectro.training.pipeline.augment_batch`, same settings, same order, same distributions). The numpy
functions here define them on raw pixel batches ``(n, n_mels, frames)`` (uint8 or float, 0…255, top row =
highest band), returning float32 0…255; ``make bench`` uses them for the in-memory reference it measures
the pipeline against, and :func:`apply_gain` plays test clips back at another level. Nothing here flips or
rotates: low and high frequencies, and past and future, are not interchangeable.

* **time shift**: roll along the time axis (machine sounds are stationary, so the wrap-around is harmless);
* **SpecAugment**: time masks (columns) and frequency masks (rows) set to the image's mean;
* **random gain**: add a constant in dB (= a constant in pixels on the fixed dB scale), clipped to
  0…255, so the model cannot rely on absolute loudness alone (FIELD-NOTES: on other machines abnormal
  clips can be quieter than normal ones);
* **background mixing**: add, in the power domain, another *normal* clip of the same machine at a
  lower level;
* **bin noise**: independent Gaussian jitter of each time-frequency bin's level (a fraction of a dB), so
  that decisions do not hinge on sub-pixel details (without it a model's top class can flip under noise
  of half a pixel). It does not make int8 exports faithful: 1 dB gave lower int8 agreement than 0.5 dB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spectro.errors import SpectroError


@dataclass(frozen=True)
class AugmentSettings:
    """How strongly to augment (stored in the run's ``config.json`` under ``training.augment``).

    Parameters
    ----------
    time_shift : float
        Largest roll as a fraction of the image width (0 disables).
    time_masks, time_mask_width : int, float
        Number of time masks per image and the largest width of each, as a fraction of the width.
    freq_masks, freq_mask_width : int, float
        Number of frequency masks per image and the largest height of each, as a fraction of the height.
    gain_db : float
        Random gain drawn uniformly from ``[-gain_db, +gain_db]`` dB (0 disables).
    mix_probability : float
        Probability that an image gets another normal clip's background mixed in.
    mix_db : (float, float)
        Level of the mixed-in background relative to its original level, drawn uniformly in dB.
    noise_db : float
        Standard deviation, in dB, of the Gaussian jitter added to every pixel (0 disables).
    """

    time_shift: float = 0.5
    time_masks: int = 2
    time_mask_width: float = 0.1
    freq_masks: int = 2
    freq_mask_width: float = 0.1
    gain_db: float = 6.0
    mix_probability: float = 0.2
    mix_db: tuple[float, float] = (-20.0, -6.0)
    noise_db: float = 0.5

    def __post_init__(self) -> None:
        problems = []
        for name in ("time_shift", "time_mask_width", "freq_mask_width", "mix_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in 0..1, got {value}")
        if self.time_masks < 0 or self.freq_masks < 0:
            problems.append(f"mask counts must be >= 0, got {self.time_masks}, {self.freq_masks}")
        if self.gain_db < 0:
            problems.append(f"gain_db must be >= 0, got {self.gain_db}")
        if self.noise_db < 0:
            problems.append(f"noise_db must be >= 0, got {self.noise_db}")
        if len(self.mix_db) != 2 or self.mix_db[0] > self.mix_db[1]:
            problems.append(f"mix_db must be (low, high) with low <= high, got {self.mix_db}")
        if problems:
            raise SpectroError("invalid augmentation settings: " + "; ".join(problems))

    @classmethod
    def off(cls) -> AugmentSettings:
        """Settings that leave every image unchanged."""
        return cls(time_shift=0.0, time_masks=0, freq_masks=0, gain_db=0.0, mix_probability=0.0, noise_db=0.0)


def time_shift(x: np.ndarray, *, rng: np.random.Generator, max_fraction: float) -> np.ndarray:
    """Roll each image of ``x`` (n, rows, cols) along time by up to ``max_fraction`` of its width."""
    out = np.array(x, dtype=np.float32, copy=True)
    limit = int(round(max_fraction * out.shape[-1]))
    if limit == 0:
        return out
    for i, shift in enumerate(rng.integers(-limit, limit + 1, size=len(out))):
        out[i] = np.roll(out[i], int(shift), axis=-1)
    return out


def _masks(out: np.ndarray, fills: np.ndarray, *, rng: np.random.Generator, count: int, max_fraction: float,
           axis: int) -> None:
    size = out.shape[axis]
    widest = int(max_fraction * size)
    if count == 0 or widest < 1:
        return
    for i, fill in enumerate(fills):
        for _ in range(count):
            width = int(rng.integers(1, widest + 1))
            start = int(rng.integers(0, size - width + 1))
            if axis == 1:
                out[i, start:start + width, :] = fill
            else:
                out[i, :, start:start + width] = fill


def spec_augment(x: np.ndarray, *, rng: np.random.Generator, time_masks: int = 2, time_mask_width: float = 0.1,
                 freq_masks: int = 2, freq_mask_width: float = 0.1) -> np.ndarray:
    """SpecAugment masks: ``time_masks`` column bands and ``freq_masks`` row bands set to each image's mean."""
    out = np.array(x, dtype=np.float32, copy=True)
    fills = out.mean(axis=(1, 2))
    _masks(out, fills, rng=rng, count=time_masks, max_fraction=time_mask_width, axis=2)
    _masks(out, fills, rng=rng, count=freq_masks, max_fraction=freq_mask_width, axis=1)
    return out


def random_gain(x: np.ndarray, *, rng: np.random.Generator, gain_db: float, db_per_step: float) -> np.ndarray:
    """Add one random gain per image, uniform in ``[-gain_db, gain_db]`` dB, clipped to 0…255.

    ``db_per_step`` is :attr:`spectro.features.settings.FeatureSettings.db_per_step` (dB per pixel value).
    """
    if gain_db <= 0:
        return np.array(x, dtype=np.float32, copy=True)
    return apply_gain(x, rng.uniform(-gain_db, gain_db, size=len(x)), db_per_step=db_per_step)  # a new array


def apply_gain(x: np.ndarray, gains_db: np.ndarray, *, db_per_step: float) -> np.ndarray:
    """Add ``gains_db[i]`` dB to image ``i`` of a batch of pixel images ``(n, n_mels, frames)``, clipped to 0…255."""
    steps = np.asarray(gains_db, dtype=np.float64) / db_per_step
    return np.clip(np.asarray(x, dtype=np.float32) + steps[:, None, None].astype(np.float32), 0.0, 255.0)


def bin_noise(x: np.ndarray, *, rng: np.random.Generator, noise_db: float, db_per_step: float) -> np.ndarray:
    """Add Gaussian noise of standard deviation ``noise_db`` dB to every pixel, clipped to 0…255."""
    out = np.array(x, dtype=np.float32, copy=True)
    if noise_db <= 0:
        return out
    out += rng.normal(0.0, noise_db / db_per_step, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 255.0, out=out)


def mix_background(x: np.ndarray, background: np.ndarray, *, level_db: np.ndarray, db_per_step: float) -> np.ndarray:
    """Add ``background`` images to ``x`` in the power domain, each ``level_db`` dB below its own level.

    Pixels are dB on a fixed scale, so ``p_out = 10·log10(10^(p·s/10) + 10^((b·s + level)/10)) / s``
    with ``s = db_per_step`` (the scale's offset cancels); the result is clipped to 0…255.
    """
    s = float(db_per_step)
    a = np.asarray(x, dtype=np.float64) * s
    b = np.asarray(background, dtype=np.float64) * s + np.asarray(level_db, dtype=np.float64)[:, None, None]
    top = np.maximum(a, b)
    db = top + 10.0 * np.log10(10.0 ** ((a - top) / 10.0) + 10.0 ** ((b - top) / 10.0))
    return np.clip(db / s, 0.0, 255.0).astype(np.float32)


def augment(x: np.ndarray, *, rng: np.random.Generator, settings: AugmentSettings, db_per_step: float,
            backgrounds: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Apply every enabled augmentation to a batch ``(n, rows, cols)``; returns float32 0…255.

    Parameters
    ----------
    backgrounds : list of arrays or None, optional
        For each image, a pool ``(k, rows, cols)`` of normal images it may be mixed with (``None`` or
        empty: not mixed). Used only when ``settings.mix_probability > 0``.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise SpectroError(f"expected a batch of 2-D images (n, rows, cols), got shape {x.shape}")
    out = x.astype(np.float32)
    if settings.mix_probability > 0 and backgrounds is not None:
        chosen = [i for i in range(len(out)) if backgrounds[i] is not None and len(backgrounds[i])
                  and rng.random() < settings.mix_probability]
        if chosen:
            picks = np.stack([backgrounds[i][rng.integers(len(backgrounds[i]))] for i in chosen])
            picks = time_shift(picks, rng=rng, max_fraction=1.0)
            level = rng.uniform(*settings.mix_db, size=len(chosen))
            out[chosen] = mix_background(out[chosen], picks, level_db=level, db_per_step=db_per_step)
    out = time_shift(out, rng=rng, max_fraction=settings.time_shift)
    out = random_gain(out, rng=rng, gain_db=settings.gain_db, db_per_step=db_per_step)
    out = bin_noise(out, rng=rng, noise_db=settings.noise_db, db_per_step=db_per_step)
    return spec_augment(out, rng=rng, time_masks=settings.time_masks, time_mask_width=settings.time_mask_width,
                        freq_masks=settings.freq_masks, freq_mask_width=settings.freq_mask_width)
