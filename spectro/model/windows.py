"""Windows: the model sees a fixed span of time, and a clip is scored by pooling over its windows.

The images stage renders one image per clip. A model with a window (``ModelSettings.window_seconds``) takes
``window`` columns of such an image as its input: training draws a random window from a clip's image each time
it visits it (:mod:`spectro.training.pipeline`), so tens of clips still give thousands of different inputs.
Everything that *scores* a clip (validation metrics, ``spectro evaluate``, ``spectro classify``, the export's
verification) cuts the clip into windows at a hop of half a window, the last one aligned to the clip's end,
and averages the fine-class probabilities over them (:func:`pool`): one score per clip, from all of it.

A model without a window (trained before windows existed, or ``window_seconds=None``) takes the whole image:
one window per clip, and pooling changes nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from spectro.errors import SpectroError, SpectroWarning
from spectro.features.settings import FeatureSettings

CHUNK_IMAGES = 256  # images cut and predicted at a time by predict_pooled: bounds the windows held in memory


def window_frames(features: FeatureSettings, seconds: float | None, image_frames: int, *,
                  shorten: bool = True) -> int:
    """Columns of a ``seconds`` window of images rendered with ``features`` (``None``: the whole image, ``image_frames``
    wide).

    With ``shorten`` (images of one width), a window longer than the images is the whole image, with a warning
    (short recordings, or images cut into segments, meet the default window this way). Clips of different
    lengths (``shorten=False``) keep the window as asked: a clip narrower than it is the caller's to refuse
    (:meth:`spectro.features.reader.ImageSurvey.check_window`), since no one width could stand for them all.
    """
    if seconds is None:
        return int(image_frames)
    if not seconds > 0:
        raise SpectroError(f"window must be > 0 seconds, got {seconds}")
    frames = features.frames_for(int(round(seconds * features.sr)))
    if frames > image_frames and shorten:
        longest = (image_frames - 1) * features.hop_length / features.sr
        warnings.warn(f"a {seconds:g} s window is longer than the images ({longest:.2f} s): the model takes whole "
                      f"images. Pass --window-seconds {longest:.2f} or less (or 0 for whole images) to silence this",
                      SpectroWarning, stacklevel=2)
        return int(image_frames)
    return frames


def hop_frames(window: int) -> int:
    """The hop between the windows that score a clip: half a window."""
    return max(1, window // 2)


def window_starts(total: int, window: int, hop: int) -> list[int]:
    """Starts of windows of ``window`` units covering ``total`` units at ``hop``; the last window is aligned
    to the end. One window at 0 when ``total <= window``."""
    if total <= window:
        return [0]
    starts = list(range(0, total - window + 1, hop))
    if starts[-1] + window < total:
        starts.append(total - window)
    return starts


def window_columns(width: int, window: int | None, *, per_image: int | None = None) -> list[int]:
    """The window starts that score an image ``width`` columns wide (:func:`window_starts` at half a window, as
    :func:`cut` cuts), or ``per_image`` of them evenly spread (validation loss, verification on many images)."""
    if window is None or window >= width:
        return [0]
    starts = window_starts(width, window, hop_frames(window))
    if per_image is not None and per_image < len(starts):
        starts = [starts[i] for i in np.unique(np.linspace(0, len(starts) - 1, per_image).round().astype(int))]
    return starts


def cut(images: Sequence[np.ndarray] | np.ndarray, window: int, *,
        per_image: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every image ``(rows, frames_i)`` cut into its scoring windows (:func:`window_columns`; ``per_image`` of
    them evenly spread when given) ``(m, rows, window)``, and the index of the image each window comes from
    (``owners``, shape ``(m,)``). Images may differ in width; each must be ``window`` wide or wider."""
    windows, owners = [], []
    for i, image in enumerate(images):
        if image.shape[1] < window:
            raise SpectroError(f"an image {image.shape[1]} frames wide is narrower than the model's window "
                               f"({window} frames)")
        for s in window_columns(image.shape[1], window, per_image=per_image):
            windows.append(image[:, s:s + window])
            owners.append(i)
    if not windows:
        rows = images.shape[1] if isinstance(images, np.ndarray) and images.ndim == 3 else 0
        return np.zeros((0, rows, window), dtype=np.uint8), np.zeros(0, dtype=int)
    return np.stack(windows), np.array(owners, dtype=int)


def pool(probs: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """The mean of each image's window probabilities: ``(n, classes)`` from ``(m, classes)`` and ``owners``."""
    counts = np.bincount(owners, minlength=n).astype(np.float64)
    if (counts == 0).any():
        raise SpectroError(f"pooling: {int((counts == 0).sum())} image(s) have no window")
    sums = np.zeros((n, probs.shape[1]), dtype=np.float64)
    np.add.at(sums, owners, probs)
    return (sums / counts[:, None]).astype(np.float32)


def predict_pooled(predict: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray | Sequence[np.ndarray],
                   window: int) -> np.ndarray:
    """Clip probabilities: ``predict`` (windows ``(m, rows, window)`` uint8 -> ``(m, classes)``) run on every
    window of each image of ``pixels``, pooled by :func:`pool`; a few hundred images at a time."""
    out = []
    for start in range(0, len(pixels), CHUNK_IMAGES):
        chunk = pixels[start:start + CHUNK_IMAGES]
        windows, owners = cut(chunk, window)
        out.append(pool(np.asarray(predict(windows)), owners, len(chunk)))
    if not out:
        raise SpectroError("no images to predict")
    return np.concatenate(out)
