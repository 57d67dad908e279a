"""Spectrogram PNGs that describe themselves: 8-bit grayscale, settings in PNG text chunks.

Written by a small encoder here (zlib, one filter for all rows: 3x faster than Pillow), read with Pillow.

Reading is in two steps, so a hostile file costs a header read: the header and the text chunks (Pillow reads them
lazily, before any pixel), then the size check (:func:`check_size`: the settings' mel bands and at most the frames
:class:`~spectro.features.limits.InputLimits` ``max_seconds`` renders to), and only then the pixels. Damaged text
chunks (settings of the wrong types, a window index that is not a number, a bad modulation spectrum) are one-line
:class:`~spectro.errors.SpectroError` errors.

Text chunks written (all ``tEXt``, before the image data so reading them does not decode pixels):

``spectro:settings``  the :class:`~spectro.features.settings.FeatureSettings` as JSON
``spectro:hash``      their short hash (what ``manifest.csv`` stores)
``spectro:source``    the recording's path
``spectro:segment``   the window index (0 for a whole recording)
``spectro:modulation`` the image's modulation spectrum (:mod:`spectro.features.modulation`), when its settings
                      ask for one
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from spectro.errors import SpectroError
from spectro.features.limits import InputLimits
from spectro.features.settings import FeatureSettings

KEY_SETTINGS = "spectro:settings"
KEY_HASH = "spectro:hash"
KEY_SOURCE = "spectro:source"
KEY_SEGMENT = "spectro:segment"
KEY_MODULATION = "spectro:modulation"

_TEMP_COUNTER = itertools.count()


@dataclass(frozen=True)
class ImageInfo:
    """What a spectro PNG says about itself."""

    settings: FeatureSettings
    settings_hash: str
    source: str
    segment: int
    modulation: tuple[float, ...] | None = None  # settings.modulation_hz values, when the settings ask for them


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _text_chunk(key: str, value: str) -> bytes:
    try:  # tEXt is Latin-1; anything else (a non-Latin-1 source path) goes into an iTXt chunk as UTF-8
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def encode_png(pixels: np.ndarray, text: dict[str, str], *, compress_level: int = 1) -> bytes:
    """An 8-bit grayscale PNG of ``pixels`` with ``text`` chunks before the image data.

    Every row uses PNG's *Sub* filter (difference to the left neighbour: spectrogram rows are smooth in
    time) and zlib at ``compress_level``: about as small as Pillow's adaptive filtering, three times
    faster. Any PNG reader (Pillow included) reads it.
    """
    height, width = pixels.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 1  # filter type Sub
    rows[:, 1] = pixels[:, 0]
    np.subtract(pixels[:, 1:], pixels[:, :-1], out=rows[:, 2:])  # uint8 arithmetic wraps modulo 256
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale, no interlace
    return b"".join([PNG_SIGNATURE, _chunk(b"IHDR", header), *(_text_chunk(k, v) for k, v in text.items()),
                     _chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)), _chunk(b"IEND", b"")])


@functools.lru_cache(maxsize=8)
def _settings_text(settings: FeatureSettings) -> tuple[str, str]:
    return settings.to_json(), settings.hash()


def write_png(path: str | Path, pixels: np.ndarray, *, settings: FeatureSettings, source: str = "",
              segment: int = 0, compress_level: int = 1, modulation: np.ndarray | None = None) -> None:
    """Write ``pixels`` (uint8, 2-D) atomically: a temp file in the same folder, then a rename.

    ``modulation``: the image's modulation spectrum, required when ``settings.modulation_hz`` is set.

    An interrupted write leaves no half-written PNG under ``path`` (the temp file is removed; one left
    by a killed process is named ``.<stem>.<pid>.<n>.tmp``).
    """
    path = Path(path)
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or 0 in pixels.shape:
        raise SpectroError(f"expected a non-empty 2-D uint8 pixel array, got {pixels.dtype} with shape {pixels.shape}")
    settings_json, settings_hash = _settings_text(settings)
    text = {KEY_SETTINGS: settings_json, KEY_HASH: settings_hash, KEY_SOURCE: str(source),
            KEY_SEGMENT: str(int(segment))}
    if settings.modulation_hz is not None:
        from spectro.features.modulation import encode

        if modulation is None or np.shape(modulation) != (settings.modulation_hz,):
            raise SpectroError(f"expected a modulation spectrum of {settings.modulation_hz} values, got "
                               f"{None if modulation is None else np.shape(modulation)}")
        text[KEY_MODULATION] = encode(modulation)
    data = encode_png(pixels, text, compress_level=compress_level)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{next(_TEMP_COUNTER)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except FileExistsError:  # left by a killed process with the same pid
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _open(path: Path) -> PngImagePlugin.PngImageFile:
    """The PNG's header and the chunks before its image data (the text chunks); no pixel is decoded.

    Opened as a PNG directly rather than with ``Image.open``: Pillow's decompression-bomb check there is one bound
    for every image of the process (``Image.MAX_IMAGE_PIXELS``, a warning, then an error at twice it); here the
    bound comes from the image's settings and the :class:`~spectro.features.limits.InputLimits` (:func:`check_size`),
    and is checked by every reader before any pixel is decoded.
    """
    try:
        return PngImagePlugin.PngImageFile(path)
    except FileNotFoundError:
        raise SpectroError(f"{path}: no such file") from None
    except Image.DecompressionBombError as exc:  # a text chunk that inflates past Pillow's bounds
        raise SpectroError(f"{path}: refused ({_first_line(exc)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
            zlib.error) as exc:  # Pillow's words for "not a PNG" or a damaged header
        raise SpectroError(f"{path}: not an image ({exc.__class__.__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException, width: int = 120) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:width] if text else "") or type(exc).__name__


def check_size(path: str | Path, height: int, width: int, *, settings: FeatureSettings | None,
               bands: int | None = None, limits: InputLimits | None = None) -> None:
    """Refuse, from the header alone, an image larger than ``limits`` let a spectrogram be.

    * ``bands`` given (a model's mel bands, with the model's ``settings``): exactly ``bands`` rows and at most
      :meth:`InputLimits.max_frames` columns at the settings' sample rate and hop;
    * ``settings`` alone (the image's own): at most that many columns, and at most ``settings.n_mels`` times as many
      pixels, never more than Pillow's ``Image.MAX_IMAGE_PIXELS`` (its settings are the file's word only);
    * neither (a PNG spectro did not write): at most Pillow's ``Image.MAX_IMAGE_PIXELS`` pixels.

    Raises
    ------
    SpectroError
        One line naming ``path``, what the header declares and the bound.
    """
    limits = InputLimits() if limits is None else limits
    cap, what = Image.MAX_IMAGE_PIXELS, "Pillow's bound for an image without spectro settings"
    try:
        if settings is not None:
            limits.check_image(height=height, width=width, bands=bands, sr=settings.sr, hop_length=settings.hop_length)
            own = settings.n_mels * limits.max_frames(sr=settings.sr, hop_length=settings.hop_length)
            if cap is None or own < cap:
                cap, what = own, f"its {settings.n_mels} bands over {limits.max_seconds:g} s"
        if bands is None and cap is not None and height * width > cap:
            raise SpectroError(f"image declares {height}x{width} pixels, more than {cap} ({what})")
    except SpectroError as exc:
        raise SpectroError(f"{path}: {exc}") from None


def _info(image: Image.Image, path: Path) -> ImageInfo:
    # tEXt chunks before the image data are in .info after open; .text would decode the pixels
    text = {k: v for k, v in image.info.items() if isinstance(v, str)}
    if KEY_SETTINGS not in text:
        raise SpectroError(f"{path}: not a spectro spectrogram (no '{KEY_SETTINGS}' PNG text chunk before its image "
                           "data); render it with 'spectro images'")
    try:
        settings = FeatureSettings.from_json(text[KEY_SETTINGS])
    except SpectroError as exc:
        raise SpectroError(f"{path}: its '{KEY_SETTINGS}' text chunk: {exc}") from None
    modulation = None
    if settings.modulation_hz is not None:
        from spectro.features.modulation import decode

        if KEY_MODULATION not in text:
            raise SpectroError(f"{path}: its settings ask for a modulation spectrum and it has none (no "
                               f"'{KEY_MODULATION}' PNG text chunk); render it again with 'spectro images'")
        modulation = tuple(decode(text[KEY_MODULATION], expected=settings.modulation_hz, where=str(path)).tolist())
    segment = text.get(KEY_SEGMENT, "0").strip() or "0"
    if not (segment.isascii() and segment.isdigit() and len(segment) <= 9):
        raise SpectroError(f"{path}: its '{KEY_SEGMENT}' text chunk should be a window index (a whole number >= 0), "
                           f"found {segment[:20]!r}; render it again with 'spectro images'")
    return ImageInfo(settings=settings, settings_hash=text.get(KEY_HASH, settings.hash()),
                     source=text.get(KEY_SOURCE, ""), segment=int(segment), modulation=modulation)


def _own_settings(image: Image.Image) -> FeatureSettings | None:
    """The settings a PNG carries, ``None`` when it carries none (a PNG spectro did not write)."""
    text = image.info.get(KEY_SETTINGS)
    return FeatureSettings.from_json(text) if isinstance(text, str) else None


def decode_pixels(image: Image.Image, path: str | Path) -> np.ndarray:
    """An opened PNG's pixels as a 2-D uint8 array; check its size (:func:`check_size`) first."""
    if image.mode != "L":
        raise SpectroError(f"{path}: expected an 8-bit grayscale PNG, found mode {image.mode}")
    try:
        return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
            zlib.error) as exc:  # Pillow's words for a truncated or corrupt image
        raise SpectroError(f"{path}: damaged image ({_first_line(exc)}); render it again with 'spectro images'") \
            from None


@contextlib.contextmanager
def open_png(path: str | Path) -> Iterator[tuple[Image.Image, ImageInfo]]:
    """A spectro PNG opened (header and text chunks, no pixel decoded) and what it says about itself; check what
    the caller expects and :func:`check_size`, then :func:`decode_pixels`. The file is closed on leaving."""
    path = Path(path)
    with _open(path) as image:
        yield image, _info(image, path)


def read_info(path: str | Path) -> ImageInfo:
    """Read a spectro PNG's text chunks without decoding its pixels.

    Raises
    ------
    SpectroError
        Not an image, or an image spectro did not write (no settings chunk), or one whose text chunks are damaged.
    """
    with open_png(path) as (_, info):
        return info


def read_pixels(path: str | Path, *, limits: InputLimits | None = None) -> np.ndarray:
    """The PNG's pixels as a 2-D uint8 array (rows: high band first, as displayed), refused before decoding
    when larger than its own settings and ``limits`` allow (:func:`check_size`)."""
    path = Path(path)
    with _open(path) as image:
        try:
            settings = _own_settings(image)
        except SpectroError as exc:
            raise SpectroError(f"{path}: its '{KEY_SETTINGS}' text chunk: {exc}") from None
        check_size(path, image.height, image.width, settings=settings, limits=limits)
        return decode_pixels(image, path)


def read_png(path: str | Path, *, limits: InputLimits | None = None) -> tuple[np.ndarray, ImageInfo]:
    """A spectro PNG's pixels and what it says about itself, from one opening of the file; refused before
    decoding when larger than its own settings and ``limits`` allow (:func:`check_size`)."""
    path = Path(path)
    with open_png(path) as (image, info):
        check_size(path, image.height, image.width, settings=info.settings, limits=limits)
        return decode_pixels(image, path), info


def read_info_and_shape(path: str | Path, *, limits: InputLimits | None = None) -> tuple[ImageInfo, tuple[int, int]]:
    """What a spectro PNG says about itself and its ``(rows, columns)``, without decoding its pixels; refused
    when larger than its own settings and ``limits`` allow (:func:`check_size`), so a reader that decodes it later
    (training's ``tf.data``) never meets one."""
    path = Path(path)
    with open_png(path) as (image, info):
        check_size(path, image.height, image.width, settings=info.settings, limits=limits)
        return info, (image.height, image.width)
