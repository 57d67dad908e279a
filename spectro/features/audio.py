"""Reading recordings: one channel (or the channel mean) as float32 at the analysis sample rate.

16-bit PCM files (MIMII's format) are read as int16 and only the chosen channel is converted to float
(``sample / 32768``, exactly what libsndfile's float read gives), which is ten times faster than decoding
all eight channels to float. Other formats go through libsndfile's float32 read.

What happens to bad files (each raises :class:`~spectro.errors.SpectroError` with the reason):

* zero-byte, non-audio or unparsable files: "empty file" / "not a readable audio file: ...";
* truncated WAV files: libsndfile silently returns the samples that are present, so the ``data`` chunk
  size in the RIFF header is compared with what was read ("truncated recording: ...");
* a header with no samples: "empty recording";
* a header that declares a sample rate, channel count or duration outside the
  :class:`~spectro.features.limits.InputLimits` (refused before any sample is read);
* NaN/inf samples (float WAVs): "recording contains N NaN/inf sample(s)";
* ``channel`` beyond the file's channels: "channel 3 requested, but the file has 1 channel(s)".
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from spectro.errors import SpectroError, SpectroWarning
from spectro.features.limits import InputLimits

_INT16_SCALE = np.float32(1.0 / 32768.0)
_BLOCK_FRAMES = 1 << 16  # frames read at a time: at most 64 channels x 65536 x 4 bytes = 16 MB


def wav_declared_frames(path: str | Path) -> int | None:
    """Sample frames a RIFF/WAVE header announces (``data`` chunk size / block align).

    ``None`` when the file is not a plain RIFF WAVE file or the size is unknown (streamed WAVs write 0
    or 0xFFFFFFFF).
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            for _ in range(64):  # a WAV has a handful of chunks before 'data'
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if chunk_id == b"fmt ":
                    body = handle.read(size + (size & 1))
                    if len(body) >= 14:
                        block_align = struct.unpack("<H", body[12:14])[0]
                elif chunk_id == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    handle.seek(size + (size & 1), 1)
    except OSError:
        return None
    return None


def read_audio(path: str | Path, *, channel: str = "0", sr: int = 16000,
               limits: InputLimits | None = None) -> np.ndarray:
    """Read one channel of a recording as float32 in [-1, 1] at sample rate ``sr``.

    The header (sample rate, channels, frames) is checked against ``limits`` before any sample is read, so a
    file that declares a sample rate, channel count or duration outside them costs a header read. Samples are
    then read block by block, keeping the chosen channel only, and resampled as they come (soxr's stream,
    the same samples as ``librosa.resample(..., res_type="soxr_hq")``): memory is the output's size, whatever
    the file's channels and rate.

    Parameters
    ----------
    path : str or Path
        A WAV/FLAC/OGG file (8-channel WAVE_FORMAT_EXTENSIBLE as in MIMII is fine).
    channel : str
        ``"0"``, ``"1"``, … or ``"mean"`` for the average of all channels.
    sr : int
        Target sample rate; a file at another rate is resampled (soxr, high quality) with a
        :class:`SpectroWarning`.
    limits : InputLimits, optional
        Bounds on what the header may declare; ``None``: :class:`InputLimits`' defaults.

    Returns
    -------
    numpy.ndarray
        1-D float32 signal.

    Raises
    ------
    SpectroError
        Unreadable, empty, truncated or non-audio file; a header outside ``limits``; NaN/inf samples; a channel
        the file lacks.
    """
    path = Path(path)
    limits = InputLimits() if limits is None else limits
    channel = str(channel)
    if channel != "mean" and not channel.isdigit():
        raise SpectroError(f"channel must be a number >= 0 or 'mean', got {channel!r}")
    try:
        if path.stat().st_size == 0:
            raise SpectroError("empty file: 0 bytes")
        with sf.SoundFile(str(path)) as handle:
            file_sr, n_channels = handle.samplerate, handle.channels
            limits.check_audio(sr=file_sr, channels=n_channels, frames=handle.frames)
            if channel != "mean" and int(channel) >= n_channels:
                raise SpectroError(f"channel {channel} requested, but the file has {n_channels} channel(s) "
                                   f"(0..{n_channels - 1}); pass --channel 0..{n_channels - 1} or mean")
            if file_sr != sr:
                warnings.warn(f"{path.name}: resampling {file_sr} Hz -> {sr} Hz; record at {sr} Hz or pass --sr "
                              f"{file_sr} to silence this", SpectroWarning, stacklevel=2)
            y, n_frames, bad = _read_channel(handle, channel, resample_to=sr)
    except sf.LibsndfileError as exc:
        reason = str(exc).split(":", 1)[-1].strip().splitlines()[0] if str(exc) else type(exc).__name__
        raise SpectroError(f"not a readable audio file: {reason}") from None
    except (RuntimeError, TypeError, ValueError, EOFError) as exc:
        raise SpectroError(f"not a readable audio file: {str(exc).splitlines()[0] or type(exc).__name__}") from None
    except OSError as exc:
        raise SpectroError(f"cannot open file: {exc.strerror or exc}") from None
    declared = wav_declared_frames(path)
    if declared is not None and n_frames < declared:
        raise SpectroError(f"truncated recording: header announces {declared} samples, file holds {n_frames}")
    if n_frames == 0:
        raise SpectroError("empty recording: the file holds no samples")
    if bad:
        raise SpectroError(f"recording contains {bad} NaN/inf sample(s)")
    return y


def _read_channel(handle: sf.SoundFile, channel: str, *, resample_to: int) -> tuple[np.ndarray, int, int]:
    """The chosen channel (or the channel mean) of an open file, read block by block and resampled to
    ``resample_to`` as it comes: ``(signal, frames read, NaN/inf samples)``. Never reads past the frames the
    header declares (the bound :meth:`InputLimits.check_audio` checked)."""
    file_sr = handle.samplerate
    is_int16 = handle.subtype == "PCM_16"  # read as int16, scaled as libsndfile's float read would
    dtype = "int16" if is_int16 else "float32"
    column = None if channel == "mean" else int(channel)
    stream = None
    if file_sr != resample_to:
        import soxr  # what librosa.resample(res_type="soxr_hq") runs, as a stream

        stream = soxr.ResampleStream(file_sr, resample_to, 1, dtype="float32", quality="HQ")
        parts = []
    else:
        out = np.empty(handle.frames, dtype=np.float32)
    n_frames = bad = 0
    while n_frames < handle.frames:
        block = handle.read(min(_BLOCK_FRAMES, handle.frames - n_frames), dtype=dtype, always_2d=True)
        if not len(block):
            break
        y = block.mean(axis=1, dtype=np.float32) if column is None else block[:, column].astype(np.float32)
        if is_int16:
            y *= _INT16_SCALE
        else:
            bad += int(np.count_nonzero(~np.isfinite(y)))
        if stream is None:
            out[n_frames:n_frames + len(y)] = y
        elif not bad:
            parts.append(stream.resample_chunk(y, last=False))
        n_frames += len(y)
    if stream is None:
        return out[:n_frames], n_frames, bad
    parts.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    y = np.concatenate(parts).astype(np.float32, copy=False)
    n_out = int(np.ceil(n_frames * (float(resample_to) / file_sr)))  # librosa.resample's length
    if len(y) != n_out:
        y = np.pad(y, (0, n_out - len(y))) if len(y) < n_out else y[:n_out]
    return y, n_frames, bad


def segment_bounds(n_samples: int, *, segment: int | None, hop: int | None) -> list[tuple[int, int]]:
    """Sample ranges ``[(start, stop), ...]`` of the windows a recording is cut into.

    ``segment=None`` gives the whole recording. Windows are full length only; a recording shorter than
    one window gives a single window covering it all.
    """
    if segment is None or n_samples <= segment:
        return [(0, n_samples)]
    hop = hop or segment
    return [(start, start + segment) for start in range(0, n_samples - segment + 1, hop)]
