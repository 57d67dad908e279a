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


# -- sizes decided from the header, damaged text chunks (issue 44) --

def _no_pixel_decoding(monkeypatch):
    """Make decoding pixels fail loudly: a refusal must come from the header and the text chunks alone."""
    from PIL import ImageFile

    def refuse(self):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_a_small_png_of_64_by_2_million_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    from hostile import wide_png

    from spectro.features.png import read_info_and_shape
    from spectro.features.reader import read_image

    path = tmp_path / "wide.png"
    path.write_bytes(wide_png())  # about 125 KB
    assert path.stat().st_size < 130_000
    _no_pixel_decoding(monkeypatch)
    limit = r"image is 2000000 frames wide; the limit is 114376 frames \(3660 s\)"
    for read in (read_png, read_pixels, read_info_and_shape,
                 lambda p: read_image(p, settings=FeatureSettings(modulation_hz=None), bands=64)):
        with pytest.raises(SpectroError, match=f"wide.png: {limit}"):
            read(path)
    assert read_info(path).settings.n_mels == 64  # the text chunks alone are still readable


def test_max_seconds_sets_the_widest_png(tmp_path):
    from spectro.features.limits import InputLimits

    s = FeatureSettings(n_mels=8, modulation_hz=None)
    write_png(tmp_path / "a.png", np.zeros((8, 63), dtype=np.uint8), settings=s)  # 2 s: 1 + 32000 // 512 frames
    assert read_png(tmp_path / "a.png", limits=InputLimits(max_seconds=2.0))[0].shape == (8, 63)
    with pytest.raises(SpectroError, match=r"image is 63 frames wide; the limit is 32 frames \(1 s\)"):
        read_png(tmp_path / "a.png", limits=InputLimits(max_seconds=1.0))


def test_a_png_taller_than_its_bands_times_the_widest_is_refused_before_decoding(tmp_path, monkeypatch):
    from hostile import png_bytes, spectro_text

    path = tmp_path / "tall.png"  # 2,000,000 x 64: narrow enough, but 2,000,000 rows where 64 are expected
    path.write_bytes(png_bytes(width=64, height=2_000_000, text=spectro_text(), idat=b""))
    _no_pixel_decoding(monkeypatch)
    with pytest.raises(SpectroError, match=r"tall.png: image declares 2000000x64 pixels, more than 7320064 "
                                           r"\(its 64 bands over 3660 s\)"):
        read_pixels(path)


def test_a_decompression_bomb_is_a_one_line_error_before_pillow_sees_it(tmp_path, monkeypatch):
    from hostile import BOMB_SIDE, png_bytes, spectro_text
    from PIL import Image

    plain, spectro = tmp_path / "plain.png", tmp_path / "spectro.png"
    plain.write_bytes(png_bytes(width=BOMB_SIDE, height=BOMB_SIDE, idat=b""))
    spectro.write_bytes(png_bytes(width=BOMB_SIDE, height=BOMB_SIDE, text=spectro_text(), idat=b""))
    with pytest.raises(Image.DecompressionBombError):  # what Image.open makes of it
        Image.open(plain)
    _no_pixel_decoding(monkeypatch)
    with pytest.raises(SpectroError, match=r"plain.png: image declares 20000x20000 pixels, more than 89478485 "
                                           r"\(Pillow's bound"):
        read_pixels(plain)
    with pytest.raises(SpectroError, match=r"spectro.png: image declares 20000x20000 pixels, more than 7320064 "):
        read_png(spectro)


@pytest.mark.parametrize("settings_text, match", [
    ('{"sr": "abc"}', r"sr must be a whole number, got 'abc'"),
    ('[1, 2]', r"FeatureSettings must be a JSON object of settings, got list"),
    ('"x"', r"FeatureSettings must be a JSON object of settings, got str"),
    ('{"features": "x"}', r"unknown FeatureSettings keys \['features'\]"),
    ('{"n_mels": 64.5}', r"n_mels must be a whole number, got 64.5"),
    ('{"fmax": "high"}', r"fmax must be a finite number or null, got 'high'"),
    ('{"db_min": NaN}', r"db_min must be a finite number, got nan"),
    ('{"sr": -5}', r"invalid feature settings: sr must be > 0"),
    ("not json", r"feature settings are not valid JSON"),
    ("[" * 100_000, r"feature settings are not valid JSON"),
])
def test_settings_chunks_of_the_wrong_types_are_one_line_errors(tmp_path, settings_text, match):
    from hostile import png_bytes, spectro_text

    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(width=4, height=64, text=spectro_text(settings=settings_text)))
    for read in (read_info, read_png, read_pixels):
        with pytest.raises(SpectroError, match=match) as caught:
            read(path)
        assert "\n" not in str(caught.value) and "a.png: its 'spectro:settings' text chunk" in str(caught.value)


@pytest.mark.parametrize("text, match", [
    (dict(segment="abc"), r"'spectro:segment' text chunk should be a window index \(a whole number >= 0\), "
                          r"found 'abc'"),
    (dict(segment="-1"), r"found '-1'"),
    (dict(segment="1e5"), r"found '1e5'"),
    (dict(segment="\u0669"), r"window index"),  # an Arabic-Indic digit: str.isdigit, but not a number here
    (dict(segment="9" * 5000), r"window index"),
    (dict(modulation="x y z"), r"modulation spectrum is not a list of numbers"),
    (dict(modulation="1 2 3"), r"modulation spectrum has 3 finite values, its settings say 60"),
    (dict(modulation=" ".join(["nan"] * 60)), r"modulation spectrum has 60 finite values"),
])
def test_bad_segment_and_modulation_chunks_are_one_line_errors(tmp_path, text, match):
    from hostile import spectro_text

    from spectro.features.png import encode_png

    path = tmp_path / "a.png"  # spectro's own encoder: non-Latin-1 text goes into an iTXt chunk
    path.write_bytes(encode_png(np.zeros((64, 4), dtype=np.uint8), spectro_text(FeatureSettings(), **text)))
    with pytest.raises(SpectroError, match=match) as caught:
        read_png(path)
    assert "\n" not in str(caught.value)
