"""The one image reader: spectrogram PNGs in, pixels out, with the settings and shape checks in one place.

Training, evaluation, export and ``classify`` all read images here, so an image rendered with other
feature settings, or of another size, is refused the same way everywhere. Every check is made from the PNG's
header and text chunks, before its pixels are decoded: a file that declares more pixels than
:class:`~spectro.features.limits.InputLimits` let a spectrogram have costs a header read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spectro.data.manifest import ImageRow
from spectro.errors import SpectroError
from spectro.features.limits import InputLimits
from spectro.features.png import check_size, decode_pixels, open_png
from spectro.features.settings import FeatureSettings

# segmenting decides how long an image is (the shape check covers it), not what its pixels mean
SEGMENT_KEYS = ("segment_seconds", "segment_hop_seconds")


def settings_differences(found: FeatureSettings, expected: FeatureSettings, *,
                         names: tuple[str, str] = ("image", "model"), segmenting: bool = False) -> list[str]:
    """The feature settings that differ, as ``"name <found> (image) vs <expected> (model)"``.

    Segmenting (``segment_seconds``, ``segment_hop_seconds``) counts only with ``segmenting=True``.
    """
    a, b = found.to_dict(), expected.to_dict()
    return [f"{k} {a[k]} ({names[0]}) vs {b[k]} ({names[1]})" for k in a
            if (segmenting or k not in SEGMENT_KEYS) and a[k] != b[k]]


def check_image_settings(path: Path, found: FeatureSettings, expected: FeatureSettings) -> None:
    """Raise a one-line :class:`SpectroError` when an image was rendered with other settings than the model's."""
    diff = settings_differences(found, expected)
    if diff:
        raise SpectroError(f"{path}: rendered with other feature settings than the model's ({'; '.join(diff)}); "
                           "render it again with the model's settings, or classify the recording itself")


def _check_present(rows: Sequence[ImageRow]) -> None:
    if not rows:
        raise SpectroError("no images to read")
    missing = [r.path for r in rows if not Path(r.path).is_file()]
    if missing:
        raise SpectroError(f"{len(missing)} of {len(rows)} images are missing, e.g. {missing[0]}; re-render them with "
                           "'spectro images'")


def _mixed(first: Path, first_settings: FeatureSettings, other: Path, settings: FeatureSettings) -> SpectroError:
    """The error for images of one folder rendered with different settings."""
    diff = "; ".join(settings_differences(settings, first_settings, names=(str(other), str(first)), segmenting=True))
    return SpectroError(f"images rendered with different feature settings ({first}: {first_settings.hash()}, "
                        f"{other}: {settings.hash()}; {diff}); re-render them all with one set of settings")


def read_image(path: str | Path, *, settings: FeatureSettings, bands: int | None = None,
               min_frames: int | None = None, limits: InputLimits | None = None) -> np.ndarray:
    """One spectro PNG's pixels ``(n_mels, frames)``, refused when rendered with other ``settings``
    (segmenting aside), when it has not ``bands`` rows and at least ``min_frames`` columns, or more columns than
    ``limits.max_seconds`` renders to (``None``: :class:`InputLimits`' defaults); all of it before decoding."""
    return read_image_and_info(path, settings=settings, bands=bands, min_frames=min_frames, limits=limits)[0]


def read_image_and_info(path: str | Path, *, settings: FeatureSettings, bands: int | None = None,
                        min_frames: int | None = None, limits: InputLimits | None = None):
    """:func:`read_image`'s pixels and what the PNG says about itself (its modulation spectrum among it), from one
    opening of the file."""
    path = Path(path)
    with open_png(path) as (image, info):
        check_image_settings(path, info.settings, settings)
        if (bands is not None and image.height != bands) or (min_frames is not None and image.width < min_frames):
            raise SpectroError(f"{path}: image is {image.height}x{image.width} pixels (bands x frames), the model "
                               f"takes {bands}x{min_frames}")
        check_size(path, image.height, image.width, settings=settings, bands=bands, limits=limits)
        return decode_pixels(image, path), info


def read_images(rows: Sequence[ImageRow], *, settings: FeatureSettings | None = None,
                shape: tuple[int, int] | None = None, progress: bool = False,
                limits: InputLimits | None = None) -> tuple[np.ndarray, FeatureSettings]:
    """The pixels ``(n, n_mels, frames)`` uint8 of the rows' PNGs, and their feature settings.

    Parameters
    ----------
    rows : sequence of ImageRow
    settings : FeatureSettings, optional
        A model's settings: every image must have been rendered with them (segmenting aside). ``None``:
        every image must share one set of settings, the first image's, which are returned.
    shape : (int, int), optional
        The ``(n_mels, frames)`` every image must have; ``None``: the first image's.
    progress : bool
        Show a progress bar.
    limits : InputLimits, optional
        Bounds an image's width (:func:`spectro.features.png.check_size`); ``None``: the defaults.

    Raises
    ------
    SpectroError
        No rows, missing files, images rendered with other (or mixed) settings, of another shape, or larger than
        ``limits`` allow (all found before decoding).
    """
    from tqdm import tqdm

    _check_present(rows)
    out = None
    first = None
    for i, row in enumerate(tqdm(rows, desc="reading images", unit="img", disable=not progress, leave=False)):
        with open_png(row.path) as (image, info):
            if settings is not None:
                check_image_settings(row.path, info.settings, settings)
            elif first is None:
                first = (row, info.settings)
            elif info.settings != first[1]:
                raise _mixed(first[0].path, first[1], row.path, info.settings)
            found = (image.height, image.width)
            check_size(row.path, *found, settings=settings or info.settings, limits=limits)
            if out is None:
                shape = tuple(shape) if shape is not None else found
                out = np.empty((len(rows), *shape), dtype=np.uint8)
            if found != shape:
                raise SpectroError(f"{row.path}: image is {found[0]}x{found[1]} pixels (bands x frames), "
                                   f"expected {shape[0]}x{shape[1]} like the others (re-render with fixed-length "
                                   "segments)" if settings is None else
                                   f"{row.path}: image is {found[0]}x{found[1]} pixels, the model takes "
                                   f"{shape[0]}x{shape[1]}")
            out[i] = decode_pixels(image, row.path)
    return out, settings if settings is not None else first[1]


def survey_images(rows: Sequence[ImageRow], *, progress: bool = False) -> tuple[FeatureSettings, tuple[int, int]]:
    """The feature settings and ``(n_mels, frames)`` shared by every image of ``rows``, read from the PNG
    headers alone (no pixel is decoded, so it costs little on any number of images).

    Raises
    ------
    SpectroError
        No rows, missing files, images rendered with different settings or of different shapes.
    """
    from tqdm import tqdm

    from spectro.features.png import read_info_and_shape

    _check_present(rows)
    first = None
    for row in tqdm(rows, desc="checking images", unit="img", disable=not progress, leave=False):
        info, shape = read_info_and_shape(row.path)
        if first is None:
            first = (row, info.settings, shape)
            continue
        if info.settings != first[1]:
            raise _mixed(first[0].path, first[1], row.path, info.settings)
        if shape != first[2]:
            raise SpectroError(f"{row.path}: image is {shape[0]}x{shape[1]} pixels (bands x frames), expected "
                               f"{first[2][0]}x{first[2][1]} like the others (re-render with fixed-length segments)")
    return first[1], first[2]


def read_modulation(rows: Sequence[ImageRow], *, settings: FeatureSettings) -> np.ndarray | None:
    """The modulation spectra ``(n, settings.modulation_hz)`` float32 the rows' PNGs carry (text chunks only: no
    pixel is decoded), or ``None`` when ``settings`` ask for none.

    Raises
    ------
    SpectroError
        No rows, missing files, images rendered with other settings, or without their modulation spectrum.
    """
    from spectro.features.png import read_info

    if settings.modulation_hz is None:
        return None
    _check_present(rows)
    out = np.empty((len(rows), settings.modulation_hz), dtype=np.float32)
    for i, row in enumerate(rows):
        info = read_info(row.path)
        check_image_settings(Path(row.path), info.settings, settings)
        out[i] = info.modulation
    return out
