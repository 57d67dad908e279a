"""Reading recordings: channel choice, resampling, and every bad-input case of issue 2."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, tone_signal, write_wav

from spectro.errors import SpectroError, SpectroWarning
from spectro.features.audio import read_audio, segment_bounds, wav_declared_frames
from spectro.features.limits import InputLimits


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


# -- limits decided from the header, before any sample is read (issue 44) --

def _no_decoding(monkeypatch):
    """Make reading samples or resampling fail loudly: a refusal must come from the header alone."""
    import soxr

    def refuse(*args, **kwargs):
        raise AssertionError("samples were decoded or resampled")

    monkeypatch.setattr(sf.SoundFile, "read", refuse)
    monkeypatch.setattr(sf.SoundFile, "blocks", refuse)
    monkeypatch.setattr(soxr, "ResampleStream", refuse)
    monkeypatch.setattr(soxr, "resample", refuse)


def test_a_small_wav_declaring_1_hz_is_refused_before_decoding(tmp_path, monkeypatch):
    from hostile import one_hz_wav

    path = tmp_path / "one_hz.wav"
    path.write_bytes(one_hz_wav())  # 80 KB that would resample to 40,000 s at 16 kHz (5 GB)
    _no_decoding(monkeypatch)
    with pytest.raises(SpectroError, match=r"^sample rate 1 Hz is outside 1000\.\.384000 Hz$"):
        read_audio(path, sr=SR)


@pytest.mark.parametrize("header, limits, match", [
    (dict(sr=999), InputLimits(), r"sample rate 999 Hz is outside 1000\.\.384000 Hz"),
    (dict(sr=384_001), InputLimits(), r"sample rate 384001 Hz is outside"),
    (dict(sr=8000), InputLimits(min_sr=11025), r"sample rate 8000 Hz is outside 11025\.\.384000 Hz"),
    (dict(channels=65), InputLimits(), r"65 channels declared; expected 1\.\.64"),
    (dict(channels=3), InputLimits(max_channels=2), r"3 channels declared; expected 1\.\.2"),
    (dict(sr=1000, frames=2001), InputLimits(max_seconds=2.0), r"recording declares 2\.001 s; the limit is 2 s"),
    (dict(sr=16000, frames=16000 * 5), InputLimits(max_seconds=4.0), r"declares 5 s; the limit is 4 s"),
    (dict(sr=48000, channels=8, frames=48000), InputLimits(max_seconds=2.0, max_sr=96000),
     r"recording declares 384000 samples \(8 channels of 1 s at 48000 Hz\); the limit is 192000 \(max_seconds x "
     r"max_sr\)"),
])
def test_headers_outside_the_limits_are_refused_before_decoding(tmp_path, monkeypatch, header, limits, match):
    from hostile import wav_bytes

    path = tmp_path / "x.wav"
    path.write_bytes(wav_bytes(**header))
    _no_decoding(monkeypatch)
    with pytest.raises(SpectroError, match=match):
        read_audio(path, sr=SR, limits=limits)


def test_a_recording_at_the_limits_is_read(tmp_path):
    path = write_wav(tmp_path / "x.wav", tone_signal("normal", 2.0, sr=1000), sr=1000)
    with pytest.warns(SpectroWarning, match="resampling 1000 Hz"):
        y = read_audio(path, sr=SR, limits=InputLimits(max_seconds=2.0, max_channels=1))
    assert y.shape == (2 * SR,)


def test_the_default_limits_hold_an_hour(tmp_path):
    limits = InputLimits()
    limits.check_audio(sr=16000, channels=8, frames=3600 * 16000)  # a one-hour MIMII-like recording: no error
    limits.check_audio(sr=384000, channels=1, frames=3600 * 384000)  # an hour at the top rate
    with pytest.raises(SpectroError, match=r"recording declares 2764800000 samples \(2 channels of 3600 s"):
        limits.check_audio(sr=384000, channels=2, frames=3600 * 384000)
    with pytest.raises(SpectroError, match="recording declares 3661 s"):
        limits.check_audio(sr=16000, channels=8, frames=3661 * 16000)


@pytest.mark.parametrize("max_seconds", [0, -1.0, float("inf"), float("nan"), "10"])
def test_limits_refuse_meaningless_bounds(max_seconds):
    with pytest.raises(SpectroError, match="max_seconds must be a finite number > 0"):
        InputLimits(max_seconds=max_seconds)


@pytest.mark.parametrize("subtype, channel", [("PCM_16", "1"), ("PCM_16", "mean"), ("FLOAT", "mean"),
                                              ("PCM_24", "0")])
def test_block_reading_and_streamed_resampling_match_a_whole_read_and_librosa(tmp_path, subtype, channel):
    """More than one block (65,536 frames) at 22,050 Hz: the same samples as reading the whole file at once and
    resampling it with librosa."""
    import librosa

    y = _multichannel(3, 4.0)
    path = write_wav(tmp_path / "x.wav", y, sr=22050, subtype=subtype)
    full, _ = sf.read(str(path), dtype="float32", always_2d=True)
    one = full.mean(axis=1, dtype=np.float32) if channel == "mean" else full[:, int(channel)]
    with pytest.warns(SpectroWarning):
        got = read_audio(path, channel=channel, sr=SR)
    expected = librosa.resample(one, orig_sr=22050, target_sr=SR, res_type="soxr_hq")
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_nan_samples_are_counted_over_every_block(tmp_path):
    y = tone_signal("normal", 10.0).astype(np.float32)  # 160,000 frames: three blocks
    y[[5, 70_000, 150_000]] = np.nan
    sf.write(str(tmp_path / "x.wav"), y, SR, subtype="FLOAT")
    with pytest.raises(SpectroError, match="recording contains 3 NaN/inf sample"):
        read_audio(tmp_path / "x.wav")
