"""Finding recordings in the accepted folder layouts.

Accepted layouts below a root folder (searched recursively):

* MIMII: ``[<snr>_<machine>/]<machine>/id_XX/<label>/<file>.wav``, e.g.
  ``-6_dB_valve/valve/id_02/abnormal/00000007.wav`` (the label may name a failure: ``bearing``).
* plain: ``<machine>/<label>/<file>.wav`` for a user's own recordings.

Any label other than ``normal`` is abnormal everywhere in spectro.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from spectro.errors import SpectroError

NORMAL_LABEL = "normal"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

_ID_RE = re.compile(r"^id_\d+$")
_SNR_RE = re.compile(r"^(-?\d+(?:\.\d+)?)_dB_(.+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


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
    Every other audio path is returned, even one that cannot be opened (a dangling or self-looping symbolic
    link, a FIFO): whoever reads it reports why (:func:`open_problem`), so nothing is dropped silently.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpectroError(f"{root}: no such folder (expected a folder of recordings)")
    clips: list[Clip] = []
    unmatched: list[Unmatched] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        try:
            clips.append(parse_path(path, root))
        except SpectroError as exc:
            unmatched.append(Unmatched(path=path, reason=str(exc)))
    return clips, unmatched


def has_audio(root: str | Path) -> bool:
    """Whether any audio path (by extension, a broken link included: it is reported, not ignored) lies below
    ``root``."""
    root = Path(root)
    return root.is_dir() and any(p.suffix.lower() in AUDIO_EXTENSIONS and not p.is_dir() for p in root.rglob("*"))


def open_problem(path: str | Path) -> str | None:
    """Why the recording at ``path`` cannot be opened, in one line, or ``None`` when it can.

    Looks without opening (a FIFO would block): a symbolic link loop, a dangling link, a missing file,
    something that is not a regular file, or a file this process may not read.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symbolic link loop: following {path.name} -> {_link_target(path)} never reaches a file"
        if path.is_symlink():
            return f"dangling symbolic link: its target {_link_target(path)} does not exist"
        return f"cannot open file: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a FIFO, socket or device): expected an audio file"
    if not os.access(path, os.R_OK):
        return "cannot open file: permission denied"
    return None


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        return f"(unreadable: {exc.strerror or exc})"
