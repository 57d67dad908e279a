"""Calibration images for full-integer export (and for the quantisation-aware training phase, which
calibrates on the same images): a seeded choice of the run's training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spectro.errors import SpectroError
from spectro.features.reader import read_images
from spectro.features.settings import FeatureSettings
from spectro.runs import SPLITS_NAME, feature_settings, load_config, read_splits
from spectro.runs import image_shape as stored_image_shape

DEFAULT_CALIBRATION_IMAGES = 200


def representative_images(run: Path, n: int, *, input_shape: tuple[int, int],
                          image_shape: tuple[int, int] | None = None, image_size: int | None = None, seed: int = 0,
                          features: FeatureSettings | None = None) -> np.ndarray:
    """Up to ``n`` model inputs from the training images (a seeded random choice of images, then of their
    windows when the model takes windows), the first carrying the 0/255 range anchors.

    ``input_shape`` is the model's input, ``image_shape`` a training clip's (default: the run's ``config.json``;
    its bands are checked, and clips of any width at least a window wide are cut, as training's may differ in
    length); ``image_size`` is the backbone's input size (the anchors are sized to survive resizing to it);
    ``features`` the run's feature settings (read from its config.json when not given).
    """
    from spectro.model.windows import cut

    rows = read_splits(run, "train")
    if not rows:
        raise SpectroError(f"{run / SPLITS_NAME}: no 'train' rows to calibrate int8 quantisation on")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))[:n]
    config = load_config(run) if features is None or image_shape is None else None
    features = features or feature_settings(config)
    image_shape = image_shape or stored_image_shape(config)
    pixels = read_images([rows[i] for i in order], settings=features, bands=image_shape[0])[0]
    if pixels.dtype == object or pixels.shape[1:] != tuple(input_shape):  # windows of the images: n, seeded
        windows, _ = cut(pixels, int(input_shape[1]))
        pixels = windows[np.sort(rng.permutation(len(windows))[:n])]
    images = model_input(pixels)
    _anchor_range(images[0], image_size=image_size)
    return images


def model_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels ``(n, n_mels, frames)`` as the model's input: float32 ``(n, n_mels, frames, 1)``."""
    return pixels[..., None].astype(np.float32)


def _anchor_range(image: np.ndarray, *, image_size: int | None) -> None:
    """Put a block of 0 and one of 255 pixels in opposite corners of ``image`` (in place).

    TFLite gives the resize op's input the quantisation of its output, so the blocks are large enough
    to survive resizing to the backbone's size unblurred; then the uint8 input spans 0…255 exactly.
    """
    h, w = image.shape[:2]
    size = image_size or 32
    bh = min(h, max(4, 2 * int(np.ceil(h / size)) + 2))
    bw = min(w, max(4, 2 * int(np.ceil(w / size)) + 2))
    image[:bh, :bw] = 0.0
    image[-bh:, -bw:] = 255.0
