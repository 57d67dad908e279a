"""Calibration images for full-integer export: a seeded choice of training images with the pixel-range anchors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from spectro.errors import SpectroError
from spectro.export.calibration import model_input, representative_images
from spectro.features.png import read_pixels
from spectro.features.settings import FeatureSettings
from spectro.runs import read_splits, write_splits

pytestmark = pytest.mark.slow  # needs the tiny run


def _index_of(image: np.ndarray, pixels: list[np.ndarray], skip: tuple[int, int] = (0, 0)) -> list[int]:
    """Which of ``pixels`` equal ``image`` (outside a top-left and bottom-right block of size ``skip``)."""
    keep = np.ones(image.shape, bool)
    if skip != (0, 0):
        keep[:skip[0], :skip[1]] = keep[-skip[0]:, -skip[1]:] = False
    return [i for i, p in enumerate(pixels) if np.array_equal(image[keep], p[keep])]


def test_images_are_training_images_as_the_model_takes_them(tiny_run):
    train = [read_pixels(r.path) for r in read_splits(tiny_run, "train")]
    others = [read_pixels(r.path) for r in read_splits(tiny_run) if r.split != "train"]
    images = representative_images(tiny_run, 1000, input_shape=(32, 63), image_size=32)
    assert images.dtype == np.float32 and images.shape == (len(train), 32, 63, 1)  # all of them when fewer than n
    found = [_index_of(image[..., 0], train, skip=(4, 6) if k == 0 else (0, 0)) for k, image in enumerate(images)]
    assert all(len(f) == 1 for f in found) and sorted(f[0] for f in found) == list(range(len(train)))
    assert not any(_index_of(image[..., 0], others) for image in images[1:])


def test_the_first_image_spans_the_whole_pixel_range_in_blocks_that_survive_resizing(tiny_run):
    images = representative_images(tiny_run, 5, input_shape=(32, 63), image_size=32)
    first = images[0, ..., 0]
    # blocks of 2 * ceil(side / image_size) + 2 pixels, at least 4: 4 rows and 6 columns of the 32 x 63 image
    assert (first[:4, :6] == 0).all() and (first[-4:, -6:] == 255).all()
    assert first.min() == 0 and first.max() == 255


def test_the_choice_is_seeded(tiny_run):
    a = representative_images(tiny_run, 3, input_shape=(32, 63), seed=0)
    assert a.shape[0] == 3
    np.testing.assert_array_equal(a, representative_images(tiny_run, 3, input_shape=(32, 63), seed=0))
    assert not np.array_equal(a, representative_images(tiny_run, 3, input_shape=(32, 63), seed=1))


def test_refusals(tiny_run, tmp_path):
    other = FeatureSettings(n_mels=32, n_fft=512, hop_length=256, db_min=-90.0)
    with pytest.raises(SpectroError, match=r"db_min -80.0 \(image\) vs -90.0 \(model\)"):
        representative_images(tiny_run, 3, input_shape=(32, 63), features=other)
    with pytest.raises(SpectroError, match=r"image is 32x63 pixels \(bands x frames\), expected 64 bands"):
        representative_images(tiny_run, 3, input_shape=(64, 32), image_shape=(64, 63))  # not the run's bands
    with pytest.raises(SpectroError, match=r"63 frames wide is narrower than the model's window \(64 frames\)"):
        representative_images(tiny_run, 3, input_shape=(32, 64))
    run = shutil.copytree(tiny_run, tmp_path / "run")
    write_splits(run, read_splits(run, "test"))
    with pytest.raises(SpectroError, match="no 'train' rows to calibrate"):
        representative_images(run, 3, input_shape=(32, 63))


def test_model_input_is_float32_with_a_channel_axis():
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    x = model_input(pixels)
    assert x.dtype == np.float32 and x.shape == (2, 3, 4, 1)
    np.testing.assert_array_equal(x[..., 0], pixels)


def test_a_windowed_run_calibrates_on_windows_of_its_training_clips(tiny_window_run):
    from spectro.features.png import read_pixels
    from spectro.model.windows import cut

    images = representative_images(tiny_window_run, 10, input_shape=(32, 32), seed=0)
    assert images.shape == (10, 32, 32, 1)
    windows, _ = cut(np.stack([read_pixels(r.path) for r in read_splits(tiny_window_run, "train")]), 32)
    for image in images[1:]:  # the first carries the range anchors
        assert any(np.array_equal(image[..., 0], w) for w in windows.astype(np.float32))
