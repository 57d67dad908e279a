"""Property-based fuzzing (Hypothesis) of the recording and PNG readers against hostile input.

The property, for arbitrary bytes and for well-formed RIFF/PNG structures whose header fields and text chunks are
fuzzed within and beyond the limits: a reader returns a valid array whose size is within the
:class:`~spectro.features.limits.InputLimits`, or raises a :class:`~spectro.errors.SpectroError` with a one-line
message; never any other exception, and it never decodes more than the limits allow (checked by wrapping the
decoders: libsndfile's reads and Pillow's pixel load). Examples are bounded and derandomized, so the file runs in
seconds and the same way every time.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import soundfile as sf
from hostile import PNG_SIGNATURE, png_bytes, spectro_text, wav_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from spectro.errors import SpectroError
from spectro.features.audio import read_audio
from spectro.features.limits import InputLimits
from spectro.features.png import read_info, read_pixels, read_png
from spectro.features.reader import read_image
from spectro.features.settings import FeatureSettings

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
LIMITS = InputLimits(max_seconds=2.0, max_channels=8)
SR = 16000


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _one_line(exc: SpectroError) -> None:
    assert str(exc) and "\n" not in str(exc), repr(exc)


# -- recordings --

def _read_audio_within_limits(path: Path, limits: InputLimits = LIMITS) -> None:
    """read_audio under the property: a float32 signal no longer than the limits allow, or a SpectroError; and
    libsndfile is never asked for a sample of a file whose header is outside the limits, nor past its duration."""
    real_read = sf.SoundFile.read
    asked = []

    def read(self, frames=-1, *args, **kwargs):
        assert limits.min_sr <= self.samplerate <= limits.max_sr and 1 <= self.channels <= limits.max_channels
        asked.append(frames if frames >= 0 else self.frames)
        assert sum(asked) <= limits.max_seconds * self.samplerate, "read past the limit"
        return real_read(self, frames, *args, **kwargs)

    with mock.patch.object(sf.SoundFile, "read", read), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resampling warnings
        try:
            y = read_audio(path, sr=SR, limits=limits)
        except SpectroError as exc:
            _one_line(exc)
            return
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1
    assert 0 < len(y) <= math.ceil(limits.max_seconds * SR)
    assert np.isfinite(y).all()


@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_as_a_recording(work, data):
    path = work / "any.wav"
    path.write_bytes(data)
    _read_audio_within_limits(path)


@FUZZ
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_after_a_riff_header(work, data):
    path = work / "riff.wav"
    path.write_bytes(b"RIFF" + len(data).to_bytes(4, "little") + b"WAVE" + data)
    _read_audio_within_limits(path)


SAMPLE_RATES = st.one_of(st.sampled_from([0, 1, 999, 1000, 8000, 16000, 22050, 48000, 384000, 384001, 2 ** 31 - 1,
                                          2 ** 32 - 1]), st.integers(0, 2 ** 32 - 1))
WAV_FUZZED = {
    "sr": SAMPLE_RATES, "channels": st.one_of(st.integers(0, 10), st.sampled_from([64, 65, 1000, 65535])),
    "bits": st.sampled_from([0, 1, 8, 12, 24, 32, 64, 65535]), "format_tag": st.sampled_from([3, 6, 7, 0xFFFE, 0, 2]),
    "frames": st.integers(0, 4000), "data_size": st.integers(0, 2 ** 32 - 1),
    "block_align": st.integers(0, 70000), "byte_rate": st.integers(0, 2 ** 32 - 1), "noise": st.just(True),
}


@st.composite
def wav_fields(draw) -> dict:
    """A 16-bit PCM WAV within the limits, then none, one or a few of its header fields fuzzed, within and beyond
    the limits (the payload stays a few KB, whatever the header declares)."""
    fields = {"sr": draw(st.sampled_from([1000, 8000, 16000, 22050])), "channels": draw(st.integers(1, 2)),
              "bits": 16, "format_tag": 1, "frames": draw(st.integers(0, 2000)), "data_size": None,
              "block_align": None, "byte_rate": None, "noise": False}
    for name in draw(st.sets(st.sampled_from(sorted(WAV_FUZZED)), max_size=3)):
        fields[name] = draw(WAV_FUZZED[name])
    return fields


@FUZZ
@given(fields=wav_fields())
def test_wav_headers_within_and_beyond_the_limits(work, fields):
    frames, noise = fields.pop("frames"), fields.pop("noise")
    width = fields["channels"] * ((fields["bits"] + 7) // 8) if fields["block_align"] is None else fields["block_align"]
    size = min(frames * max(width, 1), 8192)  # at most 8 KB on disk, whatever the header declares
    payload = (np.random.default_rng(frames).integers(0, 256, size, dtype=np.uint8).tobytes() if noise
               else bytes(size))
    path = work / "header.wav"
    path.write_bytes(wav_bytes(payload=payload, **fields))
    _read_audio_within_limits(path)


@FUZZ
@given(sr=st.integers(1000, 48000), channels=st.integers(1, 3), seconds=st.floats(0.0, 3.0),
       subtype=st.sampled_from(["PCM_16", "PCM_24", "FLOAT"]), fmt=st.sampled_from(["WAV", "FLAC"]))
def test_real_recordings_are_read_or_refused_by_their_duration(work, sr, channels, seconds, subtype, fmt):
    if fmt == "FLAC" and subtype == "FLOAT":
        subtype = "PCM_16"
    n = int(seconds * sr)
    y = np.random.default_rng(n).uniform(-0.5, 0.5, (n, channels)).astype(np.float32)
    path = work / f"real.{fmt.lower()}"
    sf.write(str(path), y, sr, format=fmt, subtype=subtype)
    if n / sr > LIMITS.max_seconds:
        with pytest.raises(SpectroError, match="recording declares"):
            read_audio(path, sr=SR, limits=LIMITS)
    _read_audio_within_limits(path)


# -- PNG spectrograms --

MODEL = FeatureSettings(n_mels=8, modulation_hz=None)
PNG_LIMITS = InputLimits(max_seconds=1.0)
MODEL_FRAMES = PNG_LIMITS.max_frames(sr=MODEL.sr, hop_length=MODEL.hop_length)  # 32


def _read_png_within_limits(path: Path) -> None:
    """Each PNG reader under the property: pixels within the bounds, or a one-line SpectroError; and Pillow never
    decodes an image larger than the bounds (the model's, for read_image; Pillow's, whatever the file claims)."""
    real_load = ImageFile.ImageFile.load
    bound = {}

    def load(self):
        width, height = self.size
        assert width * height <= bound["pixels"], f"decoded {width}x{height}"
        if "frames" in bound:
            assert (height, width) <= (MODEL.n_mels, bound["frames"]) and height == MODEL.n_mels
        return real_load(self)

    readers = {
        "read_image": (lambda p: read_image(p, settings=MODEL, bands=MODEL.n_mels, limits=PNG_LIMITS),
                       {"pixels": MODEL.n_mels * MODEL_FRAMES, "frames": MODEL_FRAMES}),
        "read_png": (lambda p: read_png(p, limits=PNG_LIMITS)[0], {"pixels": Image.MAX_IMAGE_PIXELS}),
        "read_pixels": (lambda p: read_pixels(p, limits=PNG_LIMITS), {"pixels": Image.MAX_IMAGE_PIXELS}),
        "read_info": (read_info, {"pixels": 0}),  # text chunks only: never a pixel
    }
    with mock.patch.object(ImageFile.ImageFile, "load", load):
        for name, (read, limit) in readers.items():
            bound.clear()
            bound.update(limit)
            try:
                out = read(path)
            except SpectroError as exc:
                _one_line(exc)
                continue
            if name == "read_info":
                continue
            assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 2 and out.size > 0
            if name == "read_image":
                assert out.shape[0] == MODEL.n_mels and out.shape[1] <= MODEL_FRAMES


@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_as_a_png(work, data):
    path = work / "any.png"
    path.write_bytes(data)
    _read_png_within_limits(path)


@FUZZ
@given(data=st.binary(max_size=1024))
def test_arbitrary_bytes_after_a_png_signature(work, data):
    path = work / "sig.png"
    path.write_bytes(PNG_SIGNATURE + data)
    _read_png_within_limits(path)


SIDES = st.one_of(st.integers(0, 40), st.sampled_from([MODEL_FRAMES, MODEL_FRAMES + 1, 1000, 2_000_000, 20_000,
                                                       2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1]))
JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=6)
FIELDS = [name for name in FeatureSettings.__dataclass_fields__]


@st.composite
def settings_texts(draw) -> str:
    """The settings chunk: the model's own, one field of it fuzzed, any JSON, or any text."""
    kind = draw(st.sampled_from(["model", "field", "json", "text"]))
    if kind == "model":
        return MODEL.to_json()
    if kind == "field":
        data = MODEL.to_dict()
        data[draw(st.sampled_from(FIELDS + ["unknown"]))] = draw(JSON_VALUES)
        return json.dumps(data)
    if kind == "json":
        return json.dumps(draw(JSON_VALUES))
    return draw(st.text(max_size=40))


FUZZED = {
    "width": SIDES, "height": SIDES, "settings_text": settings_texts(), "segment": st.text(max_size=12),
    "modulation": st.text(max_size=40), "bit_depth": st.sampled_from([1, 2, 4, 16, 3, 0]),
    "color_type": st.sampled_from([2, 3, 4, 6, 5, 1]), "interlace": st.sampled_from([1, 2]),
    "idat": st.sampled_from(["random", "empty", "cut"]),
}


@st.composite
def png_fields(draw) -> dict:
    """A spectro PNG the model reads (a few frames wide, its settings, 8-bit grayscale), then none, one or a few
    of its fields fuzzed, within and beyond the limits: about a quarter of the examples are well-formed."""
    fields = {"width": draw(st.integers(1, MODEL_FRAMES + 2)), "height": MODEL.n_mels, "settings_text": MODEL.to_json(),
              "segment": "0", "modulation": None, "bit_depth": 8, "color_type": 0, "interlace": 0, "idat": "rows"}
    for name in draw(st.sets(st.sampled_from(sorted(FUZZED)), max_size=3)):
        fields[name] = draw(FUZZED[name])
    return fields


@FUZZ
@given(fields=png_fields(), seed=st.integers(0, 2 ** 16))
def test_png_headers_and_text_chunks_within_and_beyond_the_limits(work, fields, seed):
    width, height = fields["width"], fields["height"]
    text = spectro_text(MODEL, settings=fields["settings_text"], segment=fields["segment"])
    if fields["modulation"] is not None:
        text["spectro:modulation"] = fields["modulation"]
    text = {k: v.encode("latin-1", "replace").decode("latin-1") for k, v in text.items()}  # tEXt is Latin-1
    rng = np.random.default_rng(seed)
    small = (width + 1) * height <= 8192  # rows to compress: a few KB, whatever the header declares
    if fields["idat"] == "rows" and small:
        rows = np.zeros((height, width + 1), dtype=np.uint8)
        rows[:, 1:] = rng.integers(0, 256, (height, width), dtype=np.uint8)
        data = zlib.compress(rows.tobytes())
    elif fields["idat"] == "cut" and small:
        data = zlib.compress(bytes(height * (width + 1)))[:-3]
    elif fields["idat"] == "random":
        data = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
    else:
        data = b""
    path = work / "header.png"
    path.write_bytes(png_bytes(width=width, height=height, text=text, idat=data, bit_depth=fields["bit_depth"],
                               color_type=fields["color_type"], interlace=fields["interlace"]))
    _read_png_within_limits(path)


def test_a_well_formed_png_within_the_limits_is_read_by_every_reader(work):
    """The fuzzed properties above are not met by refusing everything: the model's own PNG passes each reader."""
    pixels = np.arange(8 * 20, dtype=np.uint8).reshape(8, 20)
    from spectro.features.png import write_png

    write_png(work / "good.png", pixels, settings=MODEL)
    _read_png_within_limits(work / "good.png")
    np.testing.assert_array_equal(read_image(work / "good.png", settings=MODEL, bands=8, limits=PNG_LIMITS), pixels)
    np.testing.assert_array_equal(read_png(work / "good.png", limits=PNG_LIMITS)[0], pixels)
