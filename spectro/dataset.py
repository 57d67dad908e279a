"""Finding recordings in the accepted folder layouts, and the image manifest.

Accepted layouts below a root folder (searched recursively):

* MIMII: ``[<snr>_<machine>/]<machine>/id_XX/<label>/<file>.wav``, e.g.
  ``-6_dB_valve/valve/id_02/abnormal/00000007.wav`` (the label may name a failure: ``bearing``).
* plain: ``<machine>/<label>/<file>.wav`` for a user's own recordings.

Any label other than ``normal`` is abnormal everywhere in spectro.
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from spectro.config import AUDIO_EXTENSIONS, NORMAL_LABEL
from spectro.errors import SpectroError

_ID_RE = re.compile(r"^id_\d+$")
_SNR_RE = re.compile(r"^(-?\d+(?:\.\d+)?)_dB_(.+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

MANIFEST_NAME = "manifest.csv"
ERRORS_NAME = "errors.csv"


@dataclass(frozen=True)
class Clip:
    """One recording and what its path says about it."""

    path: Path
    machine: str
    label: str
    machine_id: str = ""
    snr: str = ""  # e.g. "6dB", "-6dB"; "" when the layout does not say

    @property
    def is_abnormal(self) -> bool:
        return self.label != NORMAL_LABEL


@dataclass(frozen=True)
class Unmatched:
    """A file under the root whose path fits no layout."""

    path: Path
    reason: str


def parse_path(path: Path, root: Path) -> Clip:
    """Read machine, machine id, label and SNR from ``path`` (a file below ``root``).

    Raises
    ------
    SpectroError
        When the path fits neither layout; the message says which layout was expected.
    """
    parts = path.relative_to(root).parts
    folders = parts[:-1]
    if len(folders) >= 3 and _ID_RE.match(folders[-2]):
        machine, machine_id, label = folders[-3], folders[-2], folders[-1]
        snr = ""
        if len(folders) >= 4:
            match = _SNR_RE.match(folders[-4])
            if match and match.group(2) == machine:
                snr = f"{float(match.group(1)):g}dB"
        return _checked(Clip(path=path, machine=machine, machine_id=machine_id, label=label, snr=snr))
    if len(folders) >= 2 and not _ID_RE.match(folders[-1]) and not _ID_RE.match(folders[-2]):
        return _checked(Clip(path=path, machine=folders[-2], label=folders[-1]))
    raise SpectroError("path fits no layout: expected [<snr>_<machine>/]<machine>/id_XX/<label>/<file> (MIMII) "
                       "or <machine>/<label>/<file>")


def _checked(clip: Clip) -> Clip:
    for what, value in (("machine", clip.machine), ("label", clip.label)):
        if not _NAME_RE.match(value):
            raise SpectroError(f"{what} folder name {value!r} is not usable: expected letters, digits, '_', '-', '.'")
    if clip.label.startswith("id_") and _ID_RE.match(clip.label):
        raise SpectroError(f"label folder {clip.label!r} looks like a machine id: expected <machine>/id_XX/<label>/")
    return clip


def discover(root: str | Path) -> tuple[list[Clip], list[Unmatched]]:
    """All recordings below ``root`` (sorted by path), and the audio files whose path fits no layout.

    Files that are not audio by extension (README, .png, …) are ignored; hidden files and folders too.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpectroError(f"{root}: no such folder (expected a folder of recordings)")
    clips: list[Clip] = []
    unmatched: list[Unmatched] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        try:
            clips.append(parse_path(path, root))
        except SpectroError as exc:
            unmatched.append(Unmatched(path=path, reason=str(exc)))
    return clips, unmatched


def has_audio(root: str | Path) -> bool:
    """Whether any audio file (by extension) lies below ``root``."""
    root = Path(root)
    return root.is_dir() and any(p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() for p in root.rglob("*"))


@dataclass(frozen=True)
class ManifestRow:
    """One image of ``manifest.csv``; ``image`` is relative to the manifest's folder."""

    image: str
    source: str
    machine: str
    machine_id: str
    label: str
    snr: str
    segment: int
    settings_hash: str


MANIFEST_COLUMNS = [f.name for f in fields(ManifestRow)]


def write_manifest(path: str | Path, rows: list[ManifestRow]) -> None:
    """Write ``manifest.csv`` (atomically: temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r.image):
            writer.writerow(asdict(row))
    tmp.replace(path)


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read a ``manifest.csv`` written by ``spectro images``.

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
    return [ManifestRow(**{**{c: row[c] for c in MANIFEST_COLUMNS}, "segment": int(row["segment"] or 0)})
            for row in read_csv_rows(path, MANIFEST_COLUMNS)]


def read_csv_rows(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """The rows of a CSV file that must have ``columns`` (a clear error names the missing ones)."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SpectroError(f"{path}: lacks columns {missing}; found {reader.fieldnames}")
        return list(reader)
