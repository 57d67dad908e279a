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


# -- clips of different lengths ---------------------------------------------------------------------------------
def _clip(path, seconds, settings=S, seed=0):
    y = tone_signal("normal", seconds, seed=seed)
    pixels = db_to_pixels(log_mel(y, settings), settings)
    write_png(path, pixels, settings=settings, modulation=modulation_of(y, settings))
    return pixels


def test_images_of_one_height_and_different_widths_are_read_as_clips(trees, tmp_path):
    from spectro.features.statistics import mel_statistics_of_pixels

    rows, _ = trees
    longer = replace(rows[1], path=tmp_path / "longer.png")
    expected = _clip(longer.path, 1.25)
    pixels, settings = read_images([rows[0], longer], settings=S, bands=32, min_frames=32)
    assert settings == S and pixels.dtype == object and len(pixels) == 2
    np.testing.assert_array_equal(pixels[0], read_pixels(rows[0].path))
    np.testing.assert_array_equal(pixels[1], expected)
    assert [p.shape for p in pixels[np.array([False, True])]] == [(32, 79)]  # indexes like a batch
    same = read_images(rows, settings=S, bands=32)[0]  # one width: a plain batch, as with shape=
    assert same.dtype == np.uint8 and same.shape == (len(rows), 32, 63)
    stats = mel_statistics_of_pixels(pixels, db_min=S.db_min, db_per_step=S.db_per_step)
    np.testing.assert_allclose(stats[1], mel_statistics_of_pixels(expected[None], db_min=S.db_min,
                                                                  db_per_step=S.db_per_step)[0])
    with pytest.raises(SpectroError, match=r"longer.png: image is 32x79 pixels \(bands x frames\), expected 64 bands$"):
        read_images([longer], settings=S, bands=64)
    with pytest.raises(SpectroError, match=r"image is 32x63 pixels \(bands x frames\), expected 32 bands and at least "
                                           r"70 frames \(a window of the model\)"):
        read_images([longer, rows[0]], settings=S, bands=32, min_frames=70)


def test_the_survey_takes_any_widths_and_a_clip_is_the_most_common_width(tmp_path):
    from spectro.data.manifest import ImageRow
    from spectro.features.reader import survey_images

    def row(name, seconds):
        _clip(tmp_path / name, seconds)
        return ImageRow(path=tmp_path / name, source=name, machine="fan", machine_id="id_00", label="normal", snr="")

    rows = [row("a.png", 1.0), row("b.png", 1.25), row("c.png", 1.25), row("d.png", 1.5)]
    survey = survey_images(rows)
    assert survey.settings == S and survey.bands == 32 and not survey.uniform
    assert survey.widths == {str(tmp_path / n): w for n, w in (("a.png", 63), ("b.png", 79), ("c.png", 79),
                                                                ("d.png", 94))}
    assert survey.shape == (32, 79)  # the most common
    assert survey_images(rows[:2] + rows[3:]).shape == (32, 63)  # among equally common: the narrowest
    survey.check_window(32, seconds=0.5)
    with pytest.raises(SpectroError, match=r"^[^\n]*a.png: image is 63 frames wide, expected at least the model's "
                                           r"window of 64 frames \(1.01 s\)"):
        survey.check_window(64, seconds=1.01)
    with pytest.raises(SpectroError, match=r"a.png: image is 63 frames wide and .*d.png 94: a model of whole images"):
        survey.check_window(79, seconds=None)
    survey_images(rows[:1]).check_window(63, seconds=None)  # one width: whole images are fine


def test_the_survey_refuses_another_height_as_other_feature_settings(trees, tmp_path):
    from spectro.features.reader import survey_images

    rows, _ = trees
    taller = FeatureSettings(n_mels=40, n_fft=512, hop_length=256)
    other = replace(rows[1], path=tmp_path / "tall.png")
    _clip(other.path, 1.0, settings=taller)
    with pytest.raises(SpectroError, match="images rendered with different feature settings"):
        survey_images([rows[0], other])
