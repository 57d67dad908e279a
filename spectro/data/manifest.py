"""The one row type for an image, and the image folder's ``manifest.csv``.

:class:`ImageRow` describes one spectrogram PNG: where it is, the recording it came from and what the
recording's path says (machine, id, label, SNR). ``manifest.csv`` (written by ``spectro images``) and a
run's ``splits.csv`` (:mod:`spectro.runs`) are both lists of these rows.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path

from spectro.data.layout import NORMAL_LABEL
from spectro.errors import SpectroError

MANIFEST_NAME = "manifest.csv"
ERRORS_NAME = "errors.csv"
MANIFEST_COLUMNS = ["image", "source", "machine", "machine_id", "label", "snr", "segment", "settings_hash", "silent"]
REQUIRED_COLUMNS = MANIFEST_COLUMNS[:-1]  # manifests written before the ``silent`` column still read


@dataclass(frozen=True)
class ImageRow:
    """One spectrogram image.

    ``path`` is the PNG (absolute once read from a manifest or ``splits.csv``); ``source`` the recording;
    ``segment`` the window index within it (0 for a whole recording); ``settings_hash`` the short hash of
    its :class:`~spectro.features.settings.FeatureSettings`; ``split`` its split in a run (``train``,
    ``val``, ``test``), or ``""`` outside one; ``silent`` whether the image is black but for specks (the
    recording lies below the dB range's floor: silence or a dead microphone), as ``spectro images`` flags it.
    """

    path: Path
    source: str
    machine: str
    machine_id: str
    label: str
    snr: str
    segment: int = 0
    settings_hash: str = ""
    split: str = ""
    silent: bool = False

    @property
    def is_abnormal(self) -> bool:
        return self.label != NORMAL_LABEL

    @property
    def fine_class(self) -> str:
        """``<machine>/<label>``, the model's class for this image."""
        return f"{self.machine}/{self.label}"

    @property
    def recording(self) -> str:
        """The recording this image belongs to (its path when the source is unknown)."""
        return self.source or str(self.path)

    def with_split(self, split: str) -> ImageRow:
        return replace(self, split=split)


def write_manifest(path: str | Path, rows: list[ImageRow]) -> None:
    """Write ``manifest.csv`` (atomically: temp file + rename); image paths relative to its folder."""
    path = Path(path)
    folder = path.parent
    records = sorted(([Path(os.path.relpath(r.path, folder)).as_posix(), r] for r in rows), key=lambda item: item[0])
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for image, r in records:
            writer.writerow([image, r.source, r.machine, r.machine_id, r.label, r.snr, r.segment, r.settings_hash,
                             int(r.silent)])
    tmp.replace(path)


def read_manifest(path: str | Path) -> list[ImageRow]:
    """The rows of a ``manifest.csv`` written by ``spectro images`` (or of the one in folder ``path``).

    Image paths come back absolute. A manifest without the ``silent`` column (an older one) reads as no image
    silent.

    Raises
    ------
    SpectroError
        Missing file or columns.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise SpectroError(f"{path}: no manifest (expected the {MANIFEST_NAME} that 'spectro images' writes)")
    folder = path.resolve().parent
    return [ImageRow(folder / r["image"], r["source"], r["machine"], r["machine_id"], r["label"], r["snr"],
                     int(r["segment"] or 0), r["settings_hash"], silent=_flag(r.get("silent"), path))
            for r in read_csv_rows(path, REQUIRED_COLUMNS)]


def _flag(value: str | None, path: Path) -> bool:
    """A ``0``/``1`` column; empty or absent reads as 0."""
    if value in (None, "", "0"):
        return False
    if value == "1":
        return True
    raise SpectroError(f"{path}: column silent must be 0 or 1, found {value!r}")


def read_csv_rows(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """The rows of a CSV file that must have ``columns`` (a clear error names the missing ones)."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SpectroError(f"{path}: lacks columns {missing}; found {reader.fieldnames}")
        return list(reader)
