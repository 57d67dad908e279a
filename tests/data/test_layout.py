"""Finding recordings: the MIMII layout (with and without the SNR folder) and the plain layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from spectro.data.layout import discover, has_audio, open_problem, parse_path
from spectro.errors import SpectroError


@pytest.mark.parametrize("rel, machine, machine_id, label, snr", [
    ("-6_dB_valve/valve/id_02/abnormal/00000007.wav", "valve", "id_02", "abnormal", "-6dB"),
    ("6_dB_fan/fan/id_00/normal/00000001.wav", "fan", "id_00", "normal", "6dB"),
    ("0_dB_pump/pump/id_04/normal/x.wav", "pump", "id_04", "normal", "0dB"),
    ("downloads/0_dB_pump/pump/id_04/normal/x.wav", "pump", "id_04", "normal", "0dB"),
    ("fan/id_00/normal/00000001.wav", "fan", "id_00", "normal", ""),  # MIMII without the SNR folder
    ("6_dB_fan/pump/id_00/normal/1.wav", "pump", "id_00", "normal", ""),  # SNR folder of another machine
    ("fan/normal/my recording.wav", "fan", "", "normal", ""),  # plain layout
    ("site-a/pump/bearing/2024-01-01.flac", "pump", "", "bearing", ""),
])
def test_parse_path(rel, machine, machine_id, label, snr):
    root = Path("/data")
    clip = parse_path(root / rel, root)
    assert (clip.machine, clip.machine_id, clip.label, clip.snr) == (machine, machine_id, label, snr)
    assert clip.is_abnormal == (label != "normal")


@pytest.mark.parametrize("rel, match", [
    ("x.wav", "fits no layout"),
    ("fan/x.wav", "fits no layout"),
    ("fan/id_00/x.wav", "fits no layout"),
    ("id_00/normal/x.wav", "fits no layout"),
    ("fan/id_00/id_01/x.wav", "looks like a machine id"),
    ("my fan/normal/x.wav", "machine folder name 'my fan' is not usable"),
    ("fan/_normal/x.wav", "label folder name '_normal' is not usable"),
])
def test_parse_path_rejects(rel, match):
    root = Path("/data")
    with pytest.raises(SpectroError, match=match):
        parse_path(root / rel, root)


def _touch(root: Path, rels: list[str]) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


def test_discover_mixed_tree(tmp_path):
    _touch(tmp_path, [
        "6_dB_fan/fan/id_00/normal/00000000.wav",
        "6_dB_fan/fan/id_00/abnormal/00000000.wav",
        "-6_dB_fan/fan/id_02/normal/00000000.wav",
        "mine/pump/normal/a.WAV",
        "mine/pump/normal/notes.txt",  # not audio: ignored
        "mine/pump/normal/.hidden.wav",  # hidden: ignored
        ".cache/fan/normal/x.wav",  # hidden folder: ignored
        "stray.wav",  # fits no layout: reported
        "fan/id_03/orphan.wav",  # fits no layout: reported
    ])
    clips, unmatched = discover(tmp_path)
    got = [(c.path.relative_to(tmp_path).as_posix(), c.machine, c.machine_id, c.label, c.snr) for c in clips]
    assert got == [
        ("-6_dB_fan/fan/id_02/normal/00000000.wav", "fan", "id_02", "normal", "-6dB"),
        ("6_dB_fan/fan/id_00/abnormal/00000000.wav", "fan", "id_00", "abnormal", "6dB"),
        ("6_dB_fan/fan/id_00/normal/00000000.wav", "fan", "id_00", "normal", "6dB"),
        ("mine/pump/normal/a.WAV", "pump", "", "normal", ""),
    ]
    assert sorted(u.path.relative_to(tmp_path).as_posix() for u in unmatched) == ["fan/id_03/orphan.wav", "stray.wav"]
    assert all("fits no layout" in u.reason for u in unmatched)


def test_discover_missing_root(tmp_path):
    with pytest.raises(SpectroError, match="no such folder"):
        discover(tmp_path / "nope")


@pytest.mark.parametrize("rels, expected", [
    ([], False),
    (["readme.txt", "fan/normal/x.png"], False),
    (["fan/normal/x.ogg"], True),
    (["deep/er/still/x.wav"], True),
])
def test_has_audio(tmp_path, rels, expected):
    _touch(tmp_path, rels)
    assert has_audio(tmp_path) is expected


def test_has_audio_missing_folder(tmp_path):
    assert has_audio(tmp_path / "nope") is False


def test_discover_lists_links_it_cannot_open_and_open_problem_says_why(tmp_path):
    _touch(tmp_path, ["fan/normal/good.wav"])
    folder = tmp_path / "fan" / "normal"
    (folder / "loop.wav").symlink_to("loop.wav")
    (folder / "ping.wav").symlink_to("pong.wav")
    (folder / "pong.wav").symlink_to("ping.wav")
    (folder / "dangling.wav").symlink_to("../nowhere/x.wav")
    (folder / "link.wav").symlink_to("good.wav")
    (folder / "dir.wav").mkdir()  # a folder named like audio is a folder, not a recording
    clips, unmatched = discover(tmp_path)
    assert [c.path.name for c in clips] == ["dangling.wav", "good.wav", "link.wav", "loop.wav", "ping.wav",
                                             "pong.wav"]
    assert unmatched == []
    problems = {c.path.name: open_problem(c.path) for c in clips}
    assert problems["good.wav"] is None and problems["link.wav"] is None
    assert problems["loop.wav"] == "symbolic link loop: following loop.wav -> loop.wav never reaches a file"
    assert problems["ping.wav"] == "symbolic link loop: following ping.wav -> pong.wav never reaches a file"
    assert problems["dangling.wav"] == "dangling symbolic link: its target ../nowhere/x.wav does not exist"
    assert open_problem(tmp_path / "missing.wav") == "cannot open file: No such file or directory"


def test_has_audio_counts_a_broken_link(tmp_path):
    (tmp_path / "fan" / "normal").mkdir(parents=True)
    (tmp_path / "fan" / "normal" / "x.wav").symlink_to("gone.wav")
    assert has_audio(tmp_path) is True
