"""The one image row type and the image folder's manifest.csv."""

from __future__ import annotations

from pathlib import Path

import pytest

from spectro.data.manifest import MANIFEST_NAME, ImageRow, read_manifest, write_manifest
from spectro.errors import SpectroError


def _rows(folder: Path) -> list[ImageRow]:
    return [ImageRow(path=folder / "pump/normal/b.png", source="/x/b.wav", machine="pump", machine_id="",
                     label="normal", snr="", segment=2, settings_hash="abc"),
            ImageRow(path=folder / "fan/normal/6dB_id_00_a.png", source="/x/a, \"quoted\".wav", machine="fan",
                     machine_id="id_00", label="normal", snr="6dB", segment=0, settings_hash="abc", silent=True)]


def test_manifest_round_trip(tmp_path):
    rows = _rows(tmp_path)
    write_manifest(tmp_path / MANIFEST_NAME, rows)
    assert read_manifest(tmp_path) == sorted(rows, key=lambda r: str(r.path))
    assert read_manifest(tmp_path / MANIFEST_NAME) == read_manifest(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # no temp file left


def test_manifest_stores_paths_relative_to_its_folder_and_reads_them_back_absolute(tmp_path, monkeypatch):
    (tmp_path / "images").mkdir()
    write_manifest(tmp_path / "images" / MANIFEST_NAME, _rows(tmp_path / "images"))
    text = (tmp_path / "images" / MANIFEST_NAME).read_text()
    assert "fan/normal/6dB_id_00_a.png," in text and str(tmp_path) not in text
    moved = tmp_path / "elsewhere"
    (tmp_path / "images").rename(moved)  # a moved image folder keeps a valid manifest
    monkeypatch.chdir(tmp_path)
    rows = read_manifest(Path("elsewhere"))
    assert [r.path for r in rows] == [moved.resolve() / "fan/normal/6dB_id_00_a.png",
                                      moved.resolve() / "pump/normal/b.png"]


def test_manifest_keeps_the_silent_flag_and_reads_an_older_manifest_without_it(tmp_path):
    write_manifest(tmp_path / MANIFEST_NAME, _rows(tmp_path))
    lines = (tmp_path / MANIFEST_NAME).read_text().splitlines()
    assert lines[0].endswith(",settings_hash,silent") and lines[1].endswith(",abc,1") and lines[2].endswith(",abc,0")
    assert [r.silent for r in read_manifest(tmp_path)] == [True, False]
    (tmp_path / MANIFEST_NAME).write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    old = read_manifest(tmp_path)
    assert [r.silent for r in old] == [False, False]
    assert [r.path for r in old] == [r.path for r in sorted(_rows(tmp_path), key=lambda r: str(r.path))]


@pytest.mark.parametrize("text, match", [
    (None, "no manifest"),
    ("image,source\nx.png,y.wav\n", "lacks columns"),
    ("image,source,machine,machine_id,label,snr,segment,settings_hash,silent\nx.png,y.wav,fan,,normal,,0,abc,yes\n",
     "column silent must be 0 or 1, found 'yes'"),
])
def test_read_manifest_rejects(tmp_path, text, match):
    if text is not None:
        (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(SpectroError, match=match):
        read_manifest(tmp_path / MANIFEST_NAME)


def test_row_properties_and_split():
    row = ImageRow(path=Path("/img/fan/bearing/a_s001.png"), source="/raw/a.wav", machine="fan", machine_id="id_00",
                   label="bearing", snr="6dB", segment=1)
    assert row.is_abnormal and row.fine_class == "fan/bearing" and row.recording == "/raw/a.wav"
    assert not ImageRow(Path("/img/fan/normal/b.png"), "", "fan", "", "normal", "").is_abnormal
    assert ImageRow(Path("/img/fan/normal/b.png"), "", "fan", "", "normal", "").recording == "/img/fan/normal/b.png"
    test = row.with_split("test")
    assert test.split == "test" and row.split == ""  # a copy: rows are frozen
    assert (test.path, test.source, test.segment) == (row.path, row.source, row.segment)
