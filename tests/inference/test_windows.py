"""Files to model-sized pixel windows: which files, how PNGs and recordings are cut, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SR, tone_signal, write_wav

from spectro.errors import SpectroError
from spectro.features.audio import read_audio
from spectro.features.logmel import db_to_pixels, log_mel
from spectro.features.png import write_png
from spectro.features.render import modulation_of
from spectro.features.settings import FeatureSettings
from spectro.inference.windows import audio_windows, expand_inputs, load_windows, png_windows

S = FeatureSettings(n_mels=32, n_fft=512, hop_length=256)
SHAPE = (32, 63)  # one second at S: 1 + 16000 // 256 frames
STEP = S.hop_length / S.sr  # seconds per frame


def _png(path: Path, seconds: float, settings: FeatureSettings = S) -> np.ndarray:
    y = tone_signal("bearing", seconds, seed=3)
    pixels = db_to_pixels(log_mel(y, settings), settings)
    write_png(path, pixels, settings=settings, modulation=modulation_of(y, settings))
    return pixels


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_expand_inputs_takes_files_as_given_and_searches_folders(tmp_path):
    wanted = [_touch(tmp_path / "in" / "a.png"), _touch(tmp_path / "in" / "sub" / "b.WAV"),
              _touch(tmp_path / "in" / "sub" / "c.flac")]
    _touch(tmp_path / "in" / "notes.txt")  # not an input: skipped inside a folder
    _touch(tmp_path / "in" / ".hidden" / "d.wav")  # hidden: skipped
    _touch(tmp_path / "in" / ".e.png")
    single = _touch(tmp_path / "z.ogg")
    assert expand_inputs([single, tmp_path / "in"]) == [single, *wanted]


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "nope.wav", "no such file or folder"),
    (lambda p: _touch(p / "notes.txt"), "not a spectrogram image or a recording"),
    (lambda p: _touch(p / "empty" / "notes.txt").parent, "no .png, .wav, .flac, .ogg files in this folder"),
])
def test_expand_inputs_refusals(tmp_path, make, match):
    with pytest.raises(SpectroError, match=match):
        expand_inputs([make(tmp_path)])


def test_png_of_the_models_size_is_one_window(tmp_path):
    pixels = _png(tmp_path / "a.png", 1.0)
    windows = png_windows(tmp_path / "a.png", S, SHAPE)
    assert windows.kind == "png" and windows.pixels.shape == (1, *SHAPE)
    np.testing.assert_array_equal(windows.pixels[0], pixels)
    assert windows.starts == [0.0] and windows.ends == pytest.approx([63 * STEP])


def test_wider_png_is_cut_every_half_window_and_the_last_window_ends_with_the_image(tmp_path):
    pixels = _png(tmp_path / "a.png", 3.0)
    assert pixels.shape == (32, 188)
    windows = png_windows(tmp_path / "a.png", S, SHAPE)
    starts = [0, 31, 62, 93, 124, 125]  # hop 63 // 2 frames; the last aligned to the end
    assert windows.starts == pytest.approx([s * STEP for s in starts])
    assert windows.ends == pytest.approx([(s + 63) * STEP for s in starts])
    for start, window in zip(starts, windows.pixels):
        np.testing.assert_array_equal(window, pixels[:, start:start + 63])
    hop_one_second = png_windows(tmp_path / "a.png", S, SHAPE, hop_seconds=1.0)
    assert hop_one_second.starts == pytest.approx([s * STEP for s in (0, 62, 124, 125)])  # round(1 s / STEP) = 62


@pytest.mark.parametrize("seconds, settings, match", [
    (0.5, S, r"image is 32x32 pixels \(bands x frames\), the model takes 32x63"),
    (1.0, FeatureSettings(n_mels=32, n_fft=512, hop_length=256, db_max=0.0),
     r"rendered with other feature settings than the model's \(db_max 0.0 \(image\) vs 20.0 \(model\)\)"),
])
def test_png_refusals(tmp_path, seconds, settings, match):
    _png(tmp_path / "a.png", seconds, settings)
    with pytest.raises(SpectroError, match=match):
        png_windows(tmp_path / "a.png", S, SHAPE)


def test_recording_of_the_models_length_is_one_window_rendered_with_its_settings(tmp_path):
    wav = write_wav(tmp_path / "a.wav", tone_signal("leak", 1.0, seed=5))
    windows = audio_windows(wav, S, SHAPE)
    assert windows.kind == "audio" and windows.pixels.shape == (1, *SHAPE)
    np.testing.assert_array_equal(windows.pixels[0], db_to_pixels(log_mel(read_audio(wav), S), S))
    assert (windows.starts, windows.ends) == ([0.0], [1.0])


@pytest.mark.parametrize("settings, hop_seconds, window, starts", [
    # the longest span that renders to 63 frames (62 hops), every half of it; the last aligned to the end
    (S, None, 62 * 256, [0, 7936, 15872, 23808, 31744, 48000 - 62 * 256]),
    (S, 1.0, 62 * 256, [0, 16000, 32000, 48000 - 62 * 256]),
    # a model trained on 1 s segments with a 0.5 s hop: windows are its segments
    (FeatureSettings(n_mels=32, n_fft=512, hop_length=256, segment_seconds=1.0, segment_hop_seconds=0.5), None,
     SR, [0, 8000, 16000, 24000, 32000]),
])
def test_long_recording_is_cut_into_windows_of_the_models_input(tmp_path, settings, hop_seconds, window, starts):
    wav = write_wav(tmp_path / "long.wav", tone_signal("bearing", 3.0, seed=6))
    y = read_audio(wav)
    windows = audio_windows(wav, settings, SHAPE, hop_seconds=hop_seconds)
    assert windows.starts == pytest.approx([s / SR for s in starts])
    assert windows.ends == pytest.approx([(s + window) / SR for s in starts])
    assert windows.pixels.shape == (len(starts), *SHAPE)
    for start, pixels in zip(starts, windows.pixels):
        np.testing.assert_array_equal(pixels, db_to_pixels(log_mel(y[start:start + window], settings), settings))


@pytest.mark.parametrize("seconds, shape, match", [
    (0.5, SHAPE, r"recording too short: 0.50 s, the model needs at least 0.99 s \(63 frames\)"),
    (1.0, (64, 63), "rendered to 32x63 pixels, the model takes 64x63"),
])
def test_recording_refusals(tmp_path, seconds, shape, match):
    wav = write_wav(tmp_path / "a.wav", tone_signal("normal", seconds))
    with pytest.raises(SpectroError, match=match):
        audio_windows(wav, S, shape)


def test_load_windows_goes_by_the_file_suffix(tmp_path):
    _png(tmp_path / "a.png", 1.0)
    wav = write_wav(tmp_path / "b.wav", tone_signal("normal", 1.0))
    assert load_windows(tmp_path / "a.png", S, SHAPE).kind == "png"
    assert load_windows(wav, S, SHAPE).kind == "audio"


# -- limits from the header, before decoding (issue 44) --

def test_a_png_wider_than_the_limits_is_refused_before_decoding(tmp_path, monkeypatch):
    from hostile import wide_png
    from PIL import ImageFile

    (tmp_path / "wide.png").write_bytes(wide_png(bands=32, settings=S))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
    with pytest.raises(SpectroError, match=r"wide.png: image is 2000000 frames wide; the limit is 228751 frames"):
        load_windows(tmp_path / "wide.png", S, SHAPE)


def test_limits_travel_down_to_the_png_and_audio_readers(tmp_path):
    from spectro.features.limits import InputLimits

    _png(tmp_path / "a.png", 3.0)  # 188 frames
    wav = write_wav(tmp_path / "a.wav", tone_signal("normal", 3.0))
    for path in (tmp_path / "a.png", wav):  # at the limit: the same spans as with the defaults
        np.testing.assert_array_equal(load_windows(path, S, SHAPE, limits=InputLimits(max_seconds=3.0)).pixels,
                                      load_windows(path, S, SHAPE).pixels)
    short = InputLimits(max_seconds=2.5)
    with pytest.raises(SpectroError, match=r"a.png: image is 188 frames wide; the limit is 157 frames \(2.5 s\)"):
        load_windows(tmp_path / "a.png", S, SHAPE, limits=short)
    with pytest.raises(SpectroError, match=r"a.wav: recording declares 3 s; the limit is 2.5 s"):
        load_windows(wav, S, SHAPE, limits=short)


def test_a_recording_outside_the_limits_is_refused_with_its_path(tmp_path, monkeypatch):
    from hostile import one_hz_wav

    (tmp_path / "one_hz.wav").write_bytes(one_hz_wav())
    monkeypatch.setattr("soundfile.SoundFile.read", lambda *a, **k: pytest.fail("samples were read"))
    with pytest.raises(SpectroError, match=r"one_hz.wav: sample rate 1 Hz is outside 1000\.\.384000 Hz"):
        audio_windows(tmp_path / "one_hz.wav", S, SHAPE)
