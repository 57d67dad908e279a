"""The one image reader: spectrogram PNGs in, pixels out, with the settings and shape checks in one place.

Training, evaluation, export and ``classify`` all read images here, so an image rendered with other
feature settings, or of another size, is refused the same way everywhere. Every check is made from the PNG's
header and text chunks, before its pixels are decoded: a file that declares more pixels than
:class:`~spectro.features.limits.InputLimits` let a spectrogram have costs a header read.

Clips may differ in length: the model takes a window of a clip (:mod:`spectro.model.windows`), so a split's images
need one height (the mel bands) and a width of at least one window, not one width. Read that way
(``bands=``/``min_frames=``), images of different widths come back as a one-dimensional object array of
``(bands, frames_i)`` images (:func:`stack_clips`), which indexes, slices and iterates like a batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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


def stack_clips(images: Sequence[np.ndarray]) -> np.ndarray:
    """Images ``(bands, frames_i)`` as one array: a batch ``(n, bands, frames)`` when their widths agree, else a
    one-dimensional object array of the images (indexing, slicing and iterating work on both alike)."""
    if len({image.shape for image in images}) <= 1:
        return np.stack(images) if len(images) else np.zeros((0, 0, 0), dtype=np.uint8)
    out = np.empty(len(images), dtype=object)
    for i, image in enumerate(images):
        out[i] = image
    return out


def read_images(rows: Sequence[ImageRow], *, settings: FeatureSettings | None = None,
                shape: tuple[int, int] | None = None, bands: int | None = None, min_frames: int | None = None,
                progress: bool = False, limits: InputLimits | None = None) -> tuple[np.ndarray, FeatureSettings]:
    """The pixels of the rows' PNGs, and their feature settings.

    Parameters
    ----------
    rows : sequence of ImageRow
    settings : FeatureSettings, optional
        A model's settings: every image must have been rendered with them (segmenting aside). ``None``:
        every image must share one set of settings, the first image's, which are returned.
    shape : (int, int), optional
        The ``(n_mels, frames)`` every image must have; ``None`` (and no ``bands``): the first image's.
    bands, min_frames : int, optional
        Instead of one ``shape``: every image ``bands`` rows tall and at least ``min_frames`` columns wide (a
        model's window), of any width beyond (clips of different lengths).
    progress : bool
        Show a progress bar.
    limits : InputLimits, optional
        Bounds an image's width (:func:`spectro.features.png.check_size`); ``None``: the defaults.

    Returns
    -------
    (numpy.ndarray, FeatureSettings)
        ``(n, n_mels, frames)`` uint8 when every image has one width, else (only with ``bands``) an object array of
        ``n`` images ``(n_mels, frames_i)`` (:func:`stack_clips`).

    Raises
    ------
    SpectroError
        No rows, missing files, images rendered with other (or mixed) settings, of another shape (or height, or
        narrower than ``min_frames``), or larger than ``limits`` allow (all found before decoding).
    """
    from tqdm import tqdm

    _check_present(rows)
    images = []
    first = None
    for row in tqdm(rows, desc="reading images", unit="img", disable=not progress, leave=False):
        with open_png(row.path) as (image, info):
            if settings is not None:
                check_image_settings(row.path, info.settings, settings)
            elif first is None:
                first = (row, info.settings)
            elif info.settings != first[1]:
                raise _mixed(first[0].path, first[1], row.path, info.settings)
            found = (image.height, image.width)
            check_size(row.path, *found, settings=settings or info.settings, limits=limits)
            if bands is not None and shape is None:
                _check_clip(row.path, found, bands, min_frames)
            else:
                shape = tuple(shape) if shape is not None else found
                if found != shape:
                    raise SpectroError(f"{row.path}: image is {found[0]}x{found[1]} pixels (bands x frames), "
                                       f"expected {shape[0]}x{shape[1]} like the others (re-render with fixed-length "
                                       "segments)" if settings is None else
                                       f"{row.path}: image is {found[0]}x{found[1]} pixels, the model takes "
                                       f"{shape[0]}x{shape[1]}")
            images.append(decode_pixels(image, row.path))
    return stack_clips(images), settings if settings is not None else first[1]


def _check_clip(path, found: tuple[int, int], bands: int, min_frames: int | None) -> None:
    """Refuse a clip that is not ``bands`` rows tall or narrower than ``min_frames`` columns (a model's window)."""
    if found[0] != bands or (min_frames is not None and found[1] < min_frames):
        wide = f" and at least {min_frames} frames (a window of the model)" if min_frames is not None else ""
        raise SpectroError(f"{path}: image is {found[0]}x{found[1]} pixels (bands x frames), expected {bands} "
                           f"bands{wide}")


@dataclass(frozen=True)
class ImageSurvey:
    """What the PNG headers of a set of images say: their common feature settings and mel bands, and each
    image's width (frames), by path."""

    settings: FeatureSettings
    bands: int
    widths: dict[str, int]

    @property
    def clip_frames(self) -> int:
        """The width of *a clip* of this set: the most common one (the narrowest among the most common).

        This is the ``image_shape`` a run records, the span ``classify`` scores as one clip and cuts longer
        recordings into. Clips of different lengths train together (the model sees windows), so one width has
        to stand for them: the most common is the length users' recordings usually have, so a typical recording
        is scored whole, as one clip, as training and evaluation scored it; among equally common widths the
        narrowest, so that no span is longer than most clips."""
        counts = Counter(self.widths.values())
        return min(counts, key=lambda w: (-counts[w], w))

    @property
    def shape(self) -> tuple[int, int]:
        """``(bands, clip_frames)``: a clip's image shape (see :attr:`clip_frames`)."""
        return self.bands, self.clip_frames

    @property
    def uniform(self) -> bool:
        """Whether every image has one width."""
        return len(set(self.widths.values())) <= 1

    def narrowest(self) -> tuple[str, int]:
        """The path and width of the narrowest image (the first in order among equals)."""
        path = min(self.widths, key=self.widths.get)
        return path, self.widths[path]

    def check_window(self, window: int, *, seconds: float | None) -> None:
        """Refuse, naming a file, what a model with a ``window`` (frames) of ``seconds`` cannot train on: images
        narrower than the window, or, for a model of whole images (``seconds`` None), images of different widths.
        """
        path, frames = self.narrowest()
        if seconds is None and not self.uniform:
            widest = max(self.widths, key=self.widths.get)
            raise SpectroError(f"{path}: image is {frames} frames wide and {widest} {self.widths[widest]}: a model of "
                               "whole images (--window-seconds 0) needs clips of one length; train on windows "
                               "(--window-seconds) to mix lengths")
        if frames < window:
            raise SpectroError(f"{path}: image is {frames} frames wide, expected at least the model's window of "
                               f"{window} frames ({seconds:g} s); leave out clips that short, or train on a shorter "
                               "--window-seconds")


def survey_images(rows: Sequence[ImageRow], *, progress: bool = False) -> ImageSurvey:
    """The feature settings and mel bands shared by every image of ``rows``, and each image's width, read from
    the PNG headers alone (no pixel is decoded, so it costs little on any number of images). Widths may differ
    (clips of different lengths); :meth:`ImageSurvey.check_window` refuses the ones narrower than a window.

    Raises
    ------
    SpectroError
        No rows, missing files, images rendered with different settings or of different heights, an image
        larger than its settings allow or without the modulation spectrum its settings ask for.
    """
    from tqdm import tqdm

    from spectro.features.png import read_info_and_shape

    _check_present(rows)
    first = None
    widths: dict[str, int] = {}
    for row in tqdm(rows, desc="checking images", unit="img", disable=not progress, leave=False):
        info, shape = read_info_and_shape(row.path)
        widths[str(row.path)] = int(shape[1])
        if first is None:
            first = (row, info.settings, shape)
            continue
        if info.settings != first[1]:
            raise _mixed(first[0].path, first[1], row.path, info.settings)
        if shape[0] != first[2][0]:
            raise SpectroError(f"{row.path}: image is {shape[0]}x{shape[1]} pixels (bands x frames), expected "
                               f"{first[2][0]} bands like the others ({first[0].path}); re-render them all with one "
                               "set of settings")
    return ImageSurvey(settings=first[1], bands=int(first[2][0]), widths=widths)


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
