"""Spectrogram PNGs that describe themselves: 8-bit grayscale, settings in PNG text chunks.

Text chunks written (all ``tEXt``, before the image data so reading them does not decode pixels):

``spectro:settings``  the :class:`~spectro.config.FeatureSettings` as JSON
``spectro:hash``      their short hash (what ``manifest.csv`` stores)
``spectro:source``    the recording's path
``spectro:segment``   the window index (0 for a whole recording)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from spectro.config import FeatureSettings
from spectro.errors import SpectroError

KEY_SETTINGS = "spectro:settings"
KEY_HASH = "spectro:hash"
KEY_SOURCE = "spectro:source"
KEY_SEGMENT = "spectro:segment"


@dataclass(frozen=True)
class ImageInfo:
    """What a spectro PNG says about itself."""

    settings: FeatureSettings
    settings_hash: str
    source: str
    segment: int


def write_png(path: str | Path, pixels: np.ndarray, *, settings: FeatureSettings, source: str = "",
              segment: int = 0, compress_level: int = 1) -> None:
    """Write ``pixels`` (uint8, 2-D) atomically: a temp file in the same folder, then a rename.

    An interrupted write leaves no half-written PNG under ``path``.
    """
    path = Path(path)
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise SpectroError(f"expected a 2-D uint8 pixel array, got {pixels.dtype} with shape {pixels.shape}")
    info = PngImagePlugin.PngInfo()
    info.add_text(KEY_SETTINGS, settings.to_json())
    info.add_text(KEY_HASH, settings.hash())
    info.add_text(KEY_SOURCE, str(source))
    info.add_text(KEY_SEGMENT, str(int(segment)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(pixels, mode="L").save(handle, format="PNG", pnginfo=info, compress_level=compress_level)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise SpectroError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise SpectroError(f"{path}: not an image ({exc.__class__.__name__})") from None


def read_info(path: str | Path) -> ImageInfo:
    """Read a spectro PNG's text chunks without decoding its pixels.

    Raises
    ------
    SpectroError
        Not an image, or an image spectro did not write (no settings chunk).
    """
    path = Path(path)
    with _open(path) as image:
        text = dict(getattr(image, "text", {}) or {})
    if KEY_SETTINGS not in text:
        raise SpectroError(f"{path}: not a spectro spectrogram (no '{KEY_SETTINGS}' PNG text chunk); "
                           "render it with 'spectro images'")
    settings = FeatureSettings.from_json(text[KEY_SETTINGS])
    return ImageInfo(settings=settings, settings_hash=text.get(KEY_HASH, settings.hash()),
                     source=text.get(KEY_SOURCE, ""), segment=int(text.get(KEY_SEGMENT, "0") or 0))


def read_pixels(path: str | Path) -> np.ndarray:
    """The PNG's pixels as a 2-D uint8 array (rows: high band first, as displayed)."""
    path = Path(path)
    with _open(path) as image:
        if image.mode != "L":
            raise SpectroError(f"{path}: expected an 8-bit grayscale PNG, found mode {image.mode}")
        return np.asarray(image, dtype=np.uint8).copy()
