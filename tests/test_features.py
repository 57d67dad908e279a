"""Log-mel features and PNG encoding, checked against librosa and Pillow (independent implementations)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import SR, tone_signal, write_wav
from spectro.config import FeatureSettings
from spectro.convert import convert
from spectro.errors import SpectroError, SpectroWarning
from spectro.features import db_to_pixels, log_mel, pixels_to_db
from spectro.images import encode_png, read_info, read_pixels, write_png


def librosa_db(y: np.ndarray, s: FeatureSettings) -> np.ndarray:
    """The reference: librosa's own mel spectrogram in dB re 1.0, no top_db clamp."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=s.sr, n_fft=s.n_fft, hop_length=s.hop_length, n_mels=s.n_mels,
                                         power=s.power, fmin=s.fmin, fmax=s.fmax)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


GOLDEN = [
    # (id, settings, channels, file sample rate, WAV subtype)
    ("defaults", FeatureSettings(), 1, SR, "PCM_16"),
    ("non-default, channel mean", FeatureSettings(channel="mean", n_fft=1024, hop_length=256, n_mels=40, power=1.0,
                                                  fmin=50.0, fmax=7000.0, db_min=-60.0, db_max=10.0), 3, SR, "FLOAT"),
    ("channel 1 of 2", FeatureSettings(channel="1", n_mels=32), 2, SR, "PCM_24"),
    ("resampled 22050 Hz", FeatureSettings(), 1, 22050, "FLOAT"),
]


@pytest.mark.parametrize("settings, channels, file_sr, subtype", [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_png_db_matches_librosa_within_one_step(tmp_path, settings, channels, file_sr, subtype):
    import librosa

    signals = [tone_signal(kind, 1.5, seed=k, sr=file_sr) * (0.5 + 0.4 * k)
               for k, kind in enumerate(["normal", "bearing", "leak"][:channels])]
    data = np.stack(signals, axis=1) if channels > 1 else signals[0]
    write_wav(tmp_path / "raw" / "fan" / "normal" / "clip.wav", data, sr=file_sr, subtype=subtype)
    if file_sr != settings.sr:
        with pytest.warns(SpectroWarning, match="resampling"):
            summary = convert(tmp_path / "raw", tmp_path / "img", settings, jobs=1, progress=False)
    else:
        summary = convert(tmp_path / "raw", tmp_path / "img", settings, jobs=1, progress=False)
    assert summary.converted == 1 and summary.failed == 0

    # independent reference: soundfile decodes, librosa mixes/resamples and computes the spectrogram
    y, _ = sf.read(str(tmp_path / "raw" / "fan" / "normal" / "clip.wav"), dtype="float32", always_2d=True)
    y = y.mean(axis=1) if settings.channel == "mean" else y[:, int(settings.channel)]
    if file_sr != settings.sr:
        y = librosa.resample(y, orig_sr=file_sr, target_sr=settings.sr, res_type="soxr_hq")
    expected = librosa_db(y, settings)

    png = tmp_path / "img" / summary.rows[0].image
    got = pixels_to_db(read_pixels(png), settings)
    assert got.shape == expected.shape == (settings.n_mels, 1 + len(y) // settings.hop_length)
    inside = (expected >= settings.db_min) & (expected <= settings.db_max)
    assert inside.mean() > 0.5  # the comparison covers most of the image
    assert np.abs(got - expected)[inside].max() <= settings.db_per_step
    # outside the range the image saturates at the matching end
    assert (got[expected < settings.db_min] == settings.db_min).all()
    assert np.isclose(got[expected > settings.db_max], settings.db_max).all()
    assert read_info(png).settings == settings


def test_log_mel_matches_librosa_closely():
    """Before quantisation the fast path agrees with librosa to far below one 8-bit step."""
    y = tone_signal("bearing", 2.0, seed=3)
    for s in (FeatureSettings(), FeatureSettings(n_fft=512, hop_length=128, n_mels=24, power=1.5)):
        assert np.abs(log_mel(y, s) - librosa_db(y, s)).max() < 0.01


def test_silence_gives_finite_floor():
    import librosa

    s = FeatureSettings()
    db = log_mel(np.zeros(SR, dtype=np.float32), s)
    # float32 log10 is not correctly rounded on every CPU (AVX-512 gives -100.00001 for 1e-10)
    assert np.isfinite(db).all()
    np.testing.assert_allclose(db, librosa.power_to_db(np.zeros((1, 1)), amin=1e-10, top_db=None)[0, 0],
                               rtol=0, atol=1e-4)
    assert (db_to_pixels(db, s) == 0).all()


@pytest.mark.parametrize("y, match", [
    (np.zeros(100, dtype=np.float32), "clip too short: 100 samples"),
    (np.zeros(2047, dtype=np.float32), "need at least one FFT window of 2048"),
    (np.zeros((2, 4096), dtype=np.float32), "expected a 1-D signal"),
])
def test_log_mel_rejects(y, match):
    with pytest.raises(SpectroError, match=match):
        log_mel(y, FeatureSettings())


def test_low_frequencies_at_the_bottom():
    s = FeatureSettings()
    t = np.arange(SR) / SR
    pixels = db_to_pixels(log_mel((0.5 * np.sin(2 * np.pi * 100 * t)).astype(np.float32), s), s)
    row_energy = pixels.astype(float).mean(axis=1)
    assert row_energy.argmax() >= s.n_mels - 4  # a 100 Hz tone lights the bottom rows
    assert row_energy[-1] > row_energy[0] + 50


@pytest.mark.parametrize("db, pixel", [(-80.0, 0), (-200.0, 0), (20.0, 255), (50.0, 255), (-30.2, 127), (-29.8, 128), (-79.9, 0)])
def test_db_to_pixels_fixed_scale(db, pixel):
    s = FeatureSettings()
    assert db_to_pixels(np.full((1, 1), db), s)[0, 0] == pixel


def test_pixels_round_trip_within_half_step():
    s = FeatureSettings()
    db = np.random.default_rng(0).uniform(s.db_min, s.db_max, size=(64, 50)).astype(np.float32)
    assert np.abs(pixels_to_db(db_to_pixels(db, s), s) - db).max() <= s.db_per_step / 2 + 1e-4


# ------------------------------------------------------------------------------------------- PNG

@pytest.mark.parametrize("shape", [(64, 313), (1, 1), (3, 700)])
def test_png_round_trips_through_pillow(tmp_path, shape):
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    s = FeatureSettings(n_mels=32)
    write_png(tmp_path / "a.png", pixels, settings=s, source="/data/fan/normal/é€ clip.wav", segment=7)
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode == "L" and image.size == (shape[1], shape[0])
        image.verify()  # CRCs and structure
    np.testing.assert_array_equal(read_pixels(tmp_path / "a.png"), pixels)
    info = read_info(tmp_path / "a.png")
    assert (info.settings, info.settings_hash, info.source, info.segment) == (s, s.hash(),
                                                                               "/data/fan/normal/é€ clip.wav", 7)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temp file left


def test_png_text_before_image_data():
    data = encode_png(np.zeros((2, 2), dtype=np.uint8), {"spectro:hash": "abc"})
    assert data.index(b"tEXt") < data.index(b"IDAT")


@pytest.mark.parametrize("pixels", [np.zeros((4, 4), dtype=np.float32), np.zeros(4, dtype=np.uint8),
                                    np.zeros((0, 4), dtype=np.uint8)])
def test_write_png_rejects(tmp_path, pixels):
    with pytest.raises(SpectroError, match="expected a non-empty 2-D uint8"):
        write_png(tmp_path / "a.png", pixels, settings=FeatureSettings())


def test_write_png_failure_leaves_no_temp(tmp_path, monkeypatch):
    import os

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_png(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8), settings=FeatureSettings())
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
