"""Spectrogram PNGs that describe themselves, checked against Pillow (an independent reader)."""

from __future__ import annotations

import numpy as np
import pytest

from spectro.errors import SpectroError
from spectro.features.png import encode_png, read_info, read_pixels, read_png, write_png
from spectro.features.settings import FeatureSettings


@pytest.mark.parametrize("shape", [(64, 313), (1, 1), (3, 700)])
def test_png_round_trips_through_pillow(tmp_path, shape):
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    s = FeatureSettings(n_mels=32)
    write_png(tmp_path / "a.png", pixels, settings=s, source="/data/fan/normal/é€ clip.wav", segment=7,
              modulation=np.linspace(-9.5, 2.25, 60))
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode == "L" and image.size == (shape[1], shape[0])
        image.verify()  # CRCs and structure
    np.testing.assert_array_equal(read_pixels(tmp_path / "a.png"), pixels)
    info = read_info(tmp_path / "a.png")
    assert (info.settings, info.settings_hash, info.source, info.segment) == (s, s.hash(),
                                                                               "/data/fan/normal/é€ clip.wav", 7)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temp file left
    np.testing.assert_allclose(info.modulation, np.linspace(-9.5, 2.25, 60), atol=5e-5)  # 4 decimals kept


def test_modulation_spectrum_is_required_when_the_settings_ask_for_it_and_checked_when_read(tmp_path):
    from spectro.features.png import KEY_HASH, KEY_MODULATION, KEY_SETTINGS

    s = FeatureSettings(modulation_hz=4)
    with pytest.raises(SpectroError, match="expected a modulation spectrum of 4 values, got None"):
        write_png(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8), settings=s)
    for text, message in [({}, "settings ask for a modulation spectrum and it has none"),
                          ({KEY_MODULATION: "1 2 x 4"}, "not a list of numbers"),
                          ({KEY_MODULATION: "1 2 3"}, "has 3 finite values, its settings say 4")]:
        (tmp_path / "b.png").write_bytes(encode_png(np.zeros((2, 2), dtype=np.uint8),
                                                    {KEY_SETTINGS: s.to_json(), KEY_HASH: s.hash(), **text}))
        with pytest.raises(SpectroError, match=message):
            read_info(tmp_path / "b.png")


def test_png_text_before_image_data():
    data = encode_png(np.zeros((2, 2), dtype=np.uint8), {"spectro:hash": "abc"})
    assert data.index(b"tEXt") < data.index(b"IDAT")


@pytest.mark.parametrize("pixels", [np.zeros((4, 4), dtype=np.float32), np.zeros(4, dtype=np.uint8),
                                    np.zeros((0, 4), dtype=np.uint8)])
def test_write_png_rejects(tmp_path, pixels):
    with pytest.raises(SpectroError, match="expected a non-empty 2-D uint8"):
        write_png(tmp_path / "a.png", pixels, settings=FeatureSettings(modulation_hz=None))


def test_write_png_failure_leaves_no_temp(tmp_path, monkeypatch):
    import os

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_png(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8), settings=FeatureSettings(modulation_hz=None))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"junk"), "not an image"),
    (lambda p: None, "no such file"),
])
def test_read_rejects(tmp_path, make, match):
    make(tmp_path / "a.png")
    with pytest.raises(SpectroError, match=match):
        read_info(tmp_path / "a.png")


def test_read_info_rejects_foreign_png(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(SpectroError, match="not a spectro spectrogram"):
        read_info(tmp_path / "a.png")


def test_read_png_gives_pixels_and_info_from_one_opening(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, size=(8, 21), dtype=np.uint8)
    s = FeatureSettings(n_mels=8, segment_seconds=1.0, modulation_hz=None)
    write_png(tmp_path / "a.png", pixels, settings=s, source="/raw/a.wav", segment=3)
    got, info = read_png(tmp_path / "a.png")
    np.testing.assert_array_equal(got, pixels)
    assert got.dtype == np.uint8
    assert info == read_info(tmp_path / "a.png")
    assert (info.settings, info.source, info.segment) == (s, "/raw/a.wav", 3)


def test_read_png_refuses_colour_images(tmp_path):
    from PIL import Image, PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("spectro:settings", FeatureSettings(modulation_hz=None).to_json())
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png", pnginfo=meta)
    with pytest.raises(SpectroError, match="expected an 8-bit grayscale PNG, found mode RGB"):
        read_png(tmp_path / "rgb.png")


def test_a_truncated_png_is_a_one_line_error(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, size=(64, 300), dtype=np.uint8)
    write_png(tmp_path / "a.png", pixels, settings=FeatureSettings(modulation_hz=None))
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(SpectroError, match="cut.png: damaged image"):
        read_png(tmp_path / "cut.png")
