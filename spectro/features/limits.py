"""Limits on an input, decided from its header before any decoding.

The cost of reading a file is set by what its header declares, not by its size on disk: a WAV of 80 KB whose
header says 1 Hz becomes 40,000 s of 16 kHz audio when resampled, and a PNG of about 125 KB can hold 64 × 2,000,000
pixels. :class:`InputLimits` bounds both, and the readers (:func:`spectro.features.audio.read_audio`, the PNG readers
of :mod:`spectro.features.png` and :mod:`spectro.features.reader`) check the header against it first, so a file
outside the bounds costs a header read and a one-line :class:`~spectro.errors.SpectroError`.

The arithmetic: a recording is read block by block, one channel kept and resampled as it comes, so it costs at most
``max_seconds`` x the analysis rate x 4 bytes of memory (an hour at 16 kHz: 234 MB), and decoding at most
``max_seconds`` x ``max_sr`` samples in all channels together (:meth:`InputLimits.check_audio`; a FLAC of silence
holds about 5 s of 8-channel 384 kHz audio in 16 KB, so a small upload can declare hours of decoding). A PNG scored
by a model has the model's mel bands and at most :meth:`InputLimits.max_frames` columns (an hour at 16 kHz, hop
512: 64 x 114,376 pixels, 7.3 MB). Pillow's own decompression-bomb check (``Image.MAX_IMAGE_PIXELS``, one bound for
the whole process) is not relied on: the PNG readers open the file as a PNG directly, check this bound, and only
then decode; a PNG read without a model's settings is held to its own settings' bands x
:meth:`InputLimits.max_frames`, and never more than Pillow's bound.
"""

from __future__ import annotations

import dataclasses
import math

from spectro.errors import SpectroError

# an hour's recording, with room for a header that rounds up
DEFAULT_MAX_SECONDS = 3600.0 + 60.0


@dataclasses.dataclass(frozen=True)
class InputLimits:
    """Sane bounds for one recording or spectrogram, checked from its header before it is decoded.

    A recording may also declare at most ``max_seconds * max_sr`` samples in all its channels together: what it
    costs to decode (an hour of 8-channel 16 kHz audio is a third of it).

    Parameters
    ----------
    max_seconds : float
        Longest recording (its declared duration) and widest PNG (the frames that many seconds render to).
    min_sr, max_sr : int
        Sample rates a recording may declare, in Hz.
    max_channels : int
        Channels a recording may declare.
    """

    max_seconds: float = DEFAULT_MAX_SECONDS
    min_sr: int = 1000
    max_sr: int = 384000
    max_channels: int = 64

    def __post_init__(self) -> None:
        if not (isinstance(self.max_seconds, (int, float)) and not isinstance(self.max_seconds, bool)
                and math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise SpectroError(f"max_seconds must be a finite number > 0, got {self.max_seconds!r}")
        if not 0 < self.min_sr <= self.max_sr:
            raise SpectroError(f"need 0 < min_sr <= max_sr, got {self.min_sr}..{self.max_sr}")
        if not self.max_channels >= 1:
            raise SpectroError(f"max_channels must be >= 1, got {self.max_channels}")

    def check_audio(self, *, sr: int, channels: int, frames: int) -> None:
        """Refuse a recording whose header declares a sample rate, channel count or duration outside the bounds.

        Raises
        ------
        SpectroError
            Says which bound and what the header declares.
        """
        if not self.min_sr <= sr <= self.max_sr:
            raise SpectroError(f"sample rate {sr} Hz is outside {self.min_sr}..{self.max_sr} Hz")
        if not 1 <= channels <= self.max_channels:
            raise SpectroError(f"{channels} channels declared; expected 1..{self.max_channels}")
        seconds = frames / sr
        if seconds > self.max_seconds:
            raise SpectroError(f"recording declares {seconds:.6g} s; the limit is {self.max_seconds:g} s")
        budget = self.max_seconds * self.max_sr
        if frames * channels > budget:
            raise SpectroError(f"recording declares {frames * channels} samples ({channels} channels of "
                               f"{seconds:.6g} s at {sr} Hz); the limit is {budget:.0f} (max_seconds x max_sr)")

    def max_frames(self, *, sr: int, hop_length: int) -> int:
        """The widest spectrogram (frames) that :attr:`max_seconds` of audio renders to."""
        return 1 + int(self.max_seconds * sr) // hop_length

    def check_image(self, *, height: int, width: int, bands: int | None, sr: int, hop_length: int) -> None:
        """Refuse a spectrogram whose header declares other than ``bands`` rows (when given) or more columns than
        :attr:`max_seconds` renders to.

        Raises
        ------
        SpectroError
            Says what was expected and what the header declares.
        """
        if bands is not None and height != bands:
            raise SpectroError(f"image is {height} pixels high; expected {bands}, one row per mel band")
        widest = self.max_frames(sr=sr, hop_length=hop_length)
        if width > widest:
            raise SpectroError(f"image is {width} frames wide; the limit is {widest} frames "
                               f"({self.max_seconds:g} s)")
