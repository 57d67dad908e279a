"""The one image reader: pixels of spectro PNGs, with the feature-settings and shape checks in one place."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import make_image_tree, tone_signal

from spectro.errors import SpectroError
from spectro.features.logmel import db_to_pixels, log_mel
from spectro.features.png import read_pixels, write_png
from spectro.features.reader import read_image, read_images, settings_differences
from spectro.features.render import modulation_of
from spectro.features.settings import FeatureSettings

S = FeatureSettings(n_mels=32, n_fft=512, hop_length=256)  # make_image_tree's default
OTHER_DB = FeatureSettings(n_mels=32, n_fft=512, hop_length=256, db_min=-90.0)  # same shape, other pixel meaning


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    return make_image_tree(root / "a", per_class=1), make_image_tree(root / "b", per_class=1, settings=OTHER_DB)


def test_reads_every_row_and_returns_the_images_settings(trees):
    rows, _ = trees
    pixels, settings = read_images(rows)
    assert settings == S
    assert pixels.dtype == np.uint8 and pixels.shape == (len(rows), 32, 63)
    for row, image in zip(rows, pixels):
        np.testing.assert_array_equal(image, read_pixels(row.path))
    same, given = read_images(rows, settings=S, shape=(32, 63))
    np.testing.assert_array_equal(same, pixels)
    assert given == S


def test_refuses_images_rendered_with_other_settings_than_the_model(trees):
    _, other = trees
    with pytest.raises(SpectroError, match=r"rendered with other feature settings than the model's "
                                           r"\(db_min -90.0 \(image\) vs -80.0 \(model\)\)"):
        read_images(other, settings=S)


def test_refuses_mixed_settings_when_none_are_given(trees):
    rows, other = trees
    with pytest.raises(SpectroError, match="images rendered with different feature settings") as error:
        read_images(rows + other)
    assert "db_min -90.0" in str(error.value) and "vs -80.0" in str(error.value)
    assert str(other[0].path) in str(error.value)


def test_refuses_images_of_another_shape(trees, tmp_path):
    rows, _ = trees
    with pytest.raises(SpectroError, match="image is 32x63 pixels, the model takes 32x80"):
        read_images(rows, settings=S, shape=(32, 80))
    short = tmp_path / "short.png"
    y = tone_signal("normal", 0.5)
    write_png(short, db_to_pixels(log_mel(y, S), S), settings=S, modulation=modulation_of(y, S))
    mixed = rows[:1] + [replace(rows[1], path=short)]
    with pytest.raises(SpectroError, match=r"short.png: image is 32x32 pixels \(bands x frames\), expected 32x63"):
        read_images(mixed)


def test_refuses_missing_files_before_reading_any(trees, tmp_path):
    rows, _ = trees
    gone = replace(rows[0], path=tmp_path / "gone.png")
    with pytest.raises(SpectroError, match=r"1 of 3 images are missing, e.g. .*gone.png"):
        read_images([rows[1], gone, rows[2]])
    with pytest.raises(SpectroError, match="no images to read"):
        read_images([])


def test_segmenting_is_not_a_settings_difference_for_a_model(tmp_path):
    segmented = FeatureSettings(n_mels=32, n_fft=512, hop_length=256, segment_seconds=1.0)
    y = tone_signal("normal", 1.0)
    pixels = db_to_pixels(log_mel(y, segmented), segmented)
    write_png(tmp_path / "s.png", pixels, settings=segmented, modulation=modulation_of(y, segmented))
    np.testing.assert_array_equal(read_image(tmp_path / "s.png", settings=S), pixels)
    assert settings_differences(segmented, S) == []
    assert settings_differences(segmented, S, segmenting=True) == ["segment_seconds 1.0 (image) vs None (model)"]


def test_read_image_checks_bands_and_minimum_frames(trees):
    rows, other = trees
    path = rows[0].path
    np.testing.assert_array_equal(read_image(path, settings=S, bands=32, min_frames=40), read_pixels(path))
    for bands, min_frames in ((64, None), (None, 64)):
        with pytest.raises(SpectroError, match="image is 32x63 pixels"):
            read_image(path, settings=S, bands=bands, min_frames=min_frames)
    with pytest.raises(SpectroError, match="db_min -90.0 \\(image\\) vs -80.0 \\(model\\)"):
        read_image(other[0].path, settings=S)
