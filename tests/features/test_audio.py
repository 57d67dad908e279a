"""Reading recordings: channel choice, resampling, and every bad-input case of issue 2."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, tone_signal, write_wav

from spectro.errors import SpectroError, SpectroWarning
from spectro.features.audio import read_audio, segment_bounds, wav_declared_frames


def _multichannel(n_channels: int, seconds: float = 0.5) -> np.ndarray:
    """Channels that differ: channel k is a tone of 200 * (k + 1) Hz with amplitude 0.1 * (k + 1)."""
    t = np.arange(int(seconds * SR)) / SR
    return np.stack([0.1 * (k + 1) * np.sin(2 * np.pi * 200 * (k + 1) * t) for k in range(n_channels)], axis=1)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
@pytest.mark.parametrize("channel", ["0", "2", "7", "mean"])
def test_channel_matches_soundfile_float_read(tmp_path, subtype, channel):
    path = write_wav(tmp_path / "x.wav", _multichannel(8), subtype=subtype)
    full, _ = sf.read(str(path), dtype="float64", always_2d=True)  # independent: soundfile's own float decoding
    expected = full.mean(axis=1) if channel == "mean" else full[:, int(channel)]
    y = read_audio(path, channel=channel, sr=SR)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_flac_is_read(tmp_path):
    y = tone_signal("normal", 0.5)
    path = tmp_path / "x.flac"
    sf.write(str(path), y, SR, format="FLAC", subtype="PCM_16")
    np.testing.assert_allclose(read_audio(path), y, atol=1.0 / 32768 + 1e-7)


def test_resampling_warns_and_matches_librosa(tmp_path):
    import librosa

    y = tone_signal("normal", 1.0, sr=22050)
    path = write_wav(tmp_path / "x.wav", y, sr=22050, subtype="FLOAT")
    with pytest.warns(SpectroWarning, match=r"resampling 22050 Hz -> 16000 Hz.*--sr 22050"):
        out = read_audio(path, sr=SR)
    expected = librosa.resample(y, orig_sr=22050, target_sr=SR, res_type="soxr_hq")
    assert len(out) == len(expected) == 16000
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_soundfile_silently_shortens_truncated_wavs(tmp_path):
    """The fact read_audio works around: libsndfile returns what is there, with no error."""
    path = write_wav(tmp_path / "x.wav", _multichannel(2, 1.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with sf.SoundFile(str(path)) as handle:
        assert 0 < handle.frames < SR
        assert len(handle.read()) == handle.frames
    assert wav_declared_frames(path) == SR


def _truncated(path):
    write_wav(path, _multichannel(2, 1.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 3])  # also cut mid-frame


def _header_only(path):
    write_wav(path, _multichannel(2, 1.0))
    path.write_bytes(path.read_bytes()[:44])  # the header promises 16000 frames, the file holds none


def _no_samples(path):
    sf.write(str(path), np.zeros((0, 1), dtype=np.float32), SR)  # a valid WAV that holds nothing


def _float_with(value):
    def make(path):
        y = tone_signal("normal", 0.5).astype(np.float32)
        y[100:103] = value
        sf.write(str(path), y, SR, subtype="FLOAT")
    return make


BAD_INPUT = [
    ("empty file", lambda p: p.write_bytes(b""), r"empty file: 0 bytes"),
    ("not audio", lambda p: p.write_bytes(b"this is not a recording\n" * 50), r"not a readable audio file"),
    ("riff without data", lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt "), r"not a readable audio file"),
    ("truncated", _truncated, r"truncated recording: header announces 16000 samples, file holds \d+"),
    ("header only", _header_only, r"truncated recording: header announces 16000 samples, file holds 0"),
    ("no samples", _no_samples, r"empty recording"),
    ("nan samples", _float_with(np.nan), r"3 NaN/inf sample"),
    ("inf samples", _float_with(np.inf), r"3 NaN/inf sample"),
    ("missing channel", lambda p: write_wav(p, tone_signal("normal", 0.5)), r"channel 3 requested, but the file has 1"),
    ("missing file", lambda p: None, r"cannot open file"),
]


@pytest.mark.parametrize("make, reason", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_raises_with_reason(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(SpectroError, match=reason):
        read_audio(path, channel="3" if "channel" in reason else "0")


@pytest.mark.parametrize("channel", ["left", "-1", "1.5"])
def test_bad_channel_option(tmp_path, channel):
    path = write_wav(tmp_path / "x.wav", tone_signal("normal", 0.2))
    with pytest.raises(SpectroError, match="channel must be"):
        read_audio(path, channel=channel)


def test_silent_recording_reads_as_zeros(tmp_path):
    path = write_wav(tmp_path / "x.wav", np.zeros(SR, dtype=np.float32))
    y = read_audio(path)
    assert y.shape == (SR,) and not y.any()


@pytest.mark.parametrize("n, segment, hop, expected", [
    (100, None, None, [(0, 100)]),
    (100, 40, None, [(0, 40), (40, 80)]),
    (100, 40, 20, [(0, 40), (20, 60), (40, 80), (60, 100)]),
    (100, 100, None, [(0, 100)]),
    (30, 40, None, [(0, 30)]),
])
def test_segment_bounds(n, segment, hop, expected):
    assert segment_bounds(n, segment=segment, hop=hop) == expected


@pytest.mark.parametrize("content, expected", [
    (b"", None),
    (b"not a wav file at all", None),
    (b"RIFF\x00\x00\x00\x00WAVE", None),
])
def test_wav_declared_frames_unknown(tmp_path, content, expected):
    path = tmp_path / "x.wav"
    path.write_bytes(content)
    assert wav_declared_frames(path) is expected
