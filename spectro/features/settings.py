"""The frozen feature settings that travel with every image and every model.

:class:`FeatureSettings` is the contract between rendering and inference: it is written into each PNG's text
chunks, into ``manifest.csv`` (as a hash) and into each model's ``config.json``, so a recording is always rendered
at inference exactly as the training images were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

from spectro.errors import SpectroError

_KINDS = {"int": "a whole number", "float": "a finite number", "str": "text", "None": "null"}


def _short(value: Any, width: int = 40) -> str:
    """``repr(value)`` cut to ``width`` characters: a hostile settings text can hold a megabyte."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _fits(kind: str, value: Any) -> bool:
    if kind == "None":
        return value is None
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, str) if kind == "str" else True


def _settings_from_dict(cls, data: Any):
    """Build a settings dataclass from a dict, refusing anything but a dict, unknown keys and values of the wrong
    type (the field's annotation: ``int``, ``float``, ``str``, ``… | None``) with a one-line message."""
    if not isinstance(data, dict):
        raise SpectroError(f"{cls.__name__} must be a JSON object of settings, got {type(data).__name__} "
                           f"{_short(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(_short(k) for k in set(data) - names)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise SpectroError(f"unknown {cls.__name__} keys [{shown}]; expected some of {sorted(names)}")
    problems = []
    for f in dataclasses.fields(cls):
        kinds = [k.strip() for k in str(f.type).split("|")]
        if f.name in data and not any(_fits(kind, data[f.name]) for kind in kinds):
            expected = " or ".join(_KINDS.get(kind, kind) for kind in kinds)
            problems.append(f"{f.name} must be {expected}, got {_short(data[f.name])}")
    if problems:
        raise SpectroError(f"invalid {cls.__name__}: " + "; ".join(problems))
    return cls(**data)


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """How a recording becomes a spectrogram image.

    Parameters
    ----------
    sr : int
        Sample rate the audio is analysed at (files at other rates are resampled, with a warning).
    channel : str
        ``"0"``, ``"1"``, … (one microphone of a multi-channel file) or ``"mean"`` (their average).
    n_fft, hop_length, n_mels, power, fmin, fmax
        Mel spectrogram parameters (librosa's meaning). ``fmax=None`` means ``sr / 2``.
    db_min, db_max : float
        The **fixed** dB range mapped to pixel values 0…255 (power in dB relative to a full-scale
        amplitude of 1.0). Fixed, not per image, so loudness survives into the image. The default
        [-80, +20] dB holds the real MIMII fan sample (-58…+4 dB) with no clipping.
    segment_seconds, segment_hop_seconds : float or None
        Cut recordings into windows of this length (and hop; default: the length) — one image each.
        ``None``: one image per recording.
    modulation_hz : int or None
        Also compute each image's **modulation spectrum** (:mod:`spectro.features.modulation`: the spectrum of
        the recording's loudness envelope, one value per 1 Hz bin from 0 to ``modulation_hz``) and store it in
        the PNG. It carries what a 31 frames/s image cannot: a shaft-rate wobble of the sound, the signature
        of an unbalanced fan. ``None``: not computed (settings written before it existed read as ``None``).
    """

    sr: int = 16000
    channel: str = "0"
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 64
    power: float = 2.0
    fmin: float = 0.0
    fmax: float | None = None
    db_min: float = -80.0
    db_max: float = 20.0
    segment_seconds: float | None = None
    segment_hop_seconds: float | None = None
    modulation_hz: int | None = 60

    def __post_init__(self) -> None:
        problems = []
        if self.sr <= 0:
            problems.append(f"sr must be > 0, got {self.sr}")
        if self.channel != "mean" and not str(self.channel).isdigit():
            problems.append(f"channel must be a number >= 0 or 'mean', got {self.channel!r}")
        if self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            problems.append("n_fft, hop_length and n_mels must be > 0, got "
                            f"{self.n_fft}, {self.hop_length}, {self.n_mels}")
        if self.power <= 0:
            problems.append(f"power must be > 0, got {self.power}")
        if not self.db_max > self.db_min:
            problems.append(f"db_max must be above db_min, got {self.db_min}..{self.db_max}")
        nyquist = self.sr / 2
        top = nyquist if self.fmax is None else self.fmax
        if not 0 <= self.fmin < top <= nyquist:
            problems.append(f"need 0 <= fmin < fmax <= sr/2 = {nyquist:g}, got fmin={self.fmin}, fmax={self.fmax}")
        if self.segment_seconds is not None and not (self.segment_seconds > 0 and math.isfinite(self.segment_seconds)):
            problems.append(f"segment_seconds must be > 0, got {self.segment_seconds}")
        if self.segment_hop_seconds is not None:
            if self.segment_seconds is None:
                problems.append("segment_hop_seconds needs segment_seconds")
            elif not self.segment_hop_seconds > 0:
                problems.append(f"segment_hop_seconds must be > 0, got {self.segment_hop_seconds}")
        if self.modulation_hz is not None:
            from spectro.features.modulation import max_modulation_hz

            top = max_modulation_hz(self.sr)
            if isinstance(self.modulation_hz, bool) or not isinstance(self.modulation_hz, int) \
                    or not 1 <= self.modulation_hz <= top:
                problems.append(f"modulation_hz must be a whole number from 1 to {top} (or none), got "
                                f"{self.modulation_hz!r}")
        if problems:
            raise SpectroError("invalid feature settings: " + "; ".join(problems))

    @property
    def db_per_step(self) -> float:
        """dB represented by one 8-bit pixel step."""
        return (self.db_max - self.db_min) / 255.0

    @property
    def segment_samples(self) -> int | None:
        return None if self.segment_seconds is None else int(round(self.segment_seconds * self.sr))

    @property
    def segment_hop_samples(self) -> int | None:
        if self.segment_seconds is None:
            return None
        hop = self.segment_hop_seconds or self.segment_seconds
        return int(round(hop * self.sr))

    def frames_for(self, n_samples: int) -> int:
        """Number of spectrogram frames librosa (``center=True``) gives for ``n_samples`` samples."""
        return 1 + n_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSettings:
        """Settings from a dict; one written before ``modulation_hz`` existed has no modulation spectrum.

        Raises
        ------
        SpectroError
            ``data`` is not a dict, has unknown keys, values of the wrong type (``sr: "abc"``) or out of range.
        """
        if not isinstance(data, dict):
            return _settings_from_dict(cls, data)  # refused there, with what was found
        return _settings_from_dict(cls, {"modulation_hz": None, **data})

    @classmethod
    def from_json(cls, text: str) -> FeatureSettings:
        """Settings from :meth:`to_json`'s text; anything else is a one-line :class:`SpectroError`."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise SpectroError(f"feature settings are not valid JSON: {str(exc).splitlines()[0]}") from None
        except RecursionError:
            raise SpectroError("feature settings are not valid JSON: nested too deeply") from None
        return cls.from_dict(data)

    def hash(self) -> str:
        """Short stable hash of the settings (12 hex digits), stored per image in the manifest."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]
