"""Run folders: splits.csv, history.csv, config.json, resolving a run and the ``latest`` link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spectro.data.manifest import ImageRow
from spectro.errors import SpectroError
from spectro.runs import (
    CONFIG_NAME,
    DEFAULT_CALIBRATED_THRESHOLD,
    DEFAULT_FUSED_THRESHOLD,
    DEFAULT_THRESHOLD,
    HISTORY_NAME,
    LATEST,
    MODEL_NAME,
    SPLITS_NAME,
    load_config,
    point_latest,
    read_history,
    read_splits,
    resolve_run,
    save_config,
    threshold,
    update_config,
    write_splits,
)

# resolve_run() without a path looks for models/latest below the working directory, unless $SPECTRO_HOME is set
HOME_SET = pytest.mark.skipif(bool(os.environ.get("SPECTRO_HOME")), reason="$SPECTRO_HOME is set")


def _rows(folder: Path) -> list[ImageRow]:
    return [ImageRow(folder / "fan/normal/a_s000.png", "/raw/fan/a.wav", "fan", "id_00", "normal", "6dB", 0,
                     split="train"),
            ImageRow(folder / "fan/normal/a_s001.png", "/raw/fan/a.wav", "fan", "id_00", "normal", "6dB", 1,
                     split="train"),
            ImageRow(folder / "pump/leak, odd.png", "/raw/pump/b, \"odd\".wav", "pump", "", "leak", "", 0, split="val"),
            ImageRow(folder / "pump/normal/c.png", "", "pump", "", "normal", "", 0, split="test")]


def test_splits_round_trip(tmp_path):
    rows = _rows(tmp_path / "images")
    path = write_splits(tmp_path, rows)
    assert path == tmp_path / SPLITS_NAME
    assert read_splits(tmp_path) == rows  # in order, absolute paths, splits kept (settings hashes are not stored)
    assert read_splits(tmp_path, "train") == rows[:2]
    assert read_splits(tmp_path, "val") == rows[2:3] and read_splits(tmp_path, "nope") == []


def test_splits_store_absolute_image_paths(tmp_path):
    write_splits(tmp_path, _rows(tmp_path / "images"))
    header, first = (tmp_path / SPLITS_NAME).read_text().splitlines()[:2]
    assert header == "image,source,machine,machine_id,label,snr,segment,split"
    assert first.startswith(str(tmp_path / "images" / "fan/normal/a_s000.png") + ",")


@pytest.mark.parametrize("text, match", [(None, "splits.csv: missing"),
                                         ("image,split\nx.png,train\n", "lacks columns")])
def test_read_splits_refusals(tmp_path, text, match):
    if text is not None:
        (tmp_path / SPLITS_NAME).write_text(text)
    with pytest.raises(SpectroError, match=match):
        read_splits(tmp_path)


def test_read_history_gives_the_numeric_columns_per_epoch(tmp_path):
    assert read_history(tmp_path) == {}
    (tmp_path / HISTORY_NAME).write_text("epoch,loss,val_loss,note\n0,1.5,1.6,a\n1,1.0,1.2,b\n")
    assert read_history(tmp_path) == {"loss": [1.5, 1.0], "val_loss": [1.6, 1.2]}


def test_config_save_update_and_threshold(tmp_path):
    save_config(tmp_path, {"task": "failure", "input_shape": [32, 63]})
    assert load_config(tmp_path) == {"task": "failure", "input_shape": [32, 63]}
    assert threshold(load_config(tmp_path)) == DEFAULT_THRESHOLD
    config = update_config(tmp_path, threshold={"value": 0.3, "method": "youden"})
    assert config == load_config(tmp_path) and threshold(config) == 0.3
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_NAME]  # written atomically, no temp file left
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(SpectroError, match="not valid JSON"):
        load_config(tmp_path)


def test_the_default_threshold_follows_what_the_score_is():
    """0.5 for the CNN's probability, 0 for a calibrated fused score (a log-odds), 1.95 for a fused standard score
    (a run trained before the calibration, or without failure clips to calibrate on); a chosen one wins."""
    assert threshold({}) == DEFAULT_THRESHOLD == 0.5
    assert threshold({"anomaly_score": {"kind": "fused", "calibrated": True}}) == DEFAULT_CALIBRATED_THRESHOLD == 0.0
    for uncalibrated in ({"kind": "fused"}, {"kind": "fused", "calibrated": False}):
        assert threshold({"anomaly_score": uncalibrated}) == pytest.approx(DEFAULT_FUSED_THRESHOLD)
    assert DEFAULT_FUSED_THRESHOLD == pytest.approx(1.954, abs=1e-3)
    assert threshold({"anomaly_score": {"kind": "fused", "calibrated": True}, "threshold": {"value": 1.2}}) == 1.2


@HOME_SET
def test_resolve_run_takes_a_folder_a_file_in_it_or_latest(tmp_path, monkeypatch):
    run = tmp_path / "models" / "r1"
    run.mkdir(parents=True)
    save_config(run, {})
    (run / MODEL_NAME).write_bytes(b"")
    assert resolve_run(run) == run.resolve() and resolve_run(run / MODEL_NAME) == run.resolve()
    link = point_latest(tmp_path / "models", run)
    assert link == tmp_path / "models" / LATEST and os.readlink(link) == "r1"  # relative: the folder can move
    point_latest(tmp_path / "models", run)  # replacing the link is fine
    monkeypatch.chdir(tmp_path)
    assert resolve_run() == run.resolve()  # models/latest below the working directory


@HOME_SET
@pytest.mark.parametrize("case, match", [
    ("missing", "no such run folder"),
    ("no latest", r"no such run folder \(train one with 'spectro train'"),
    ("no config", "not a spectro run folder"),
])
def test_resolve_run_refusals(tmp_path, monkeypatch, case, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpectroError, match=match):
        resolve_run(None if case == "no latest" else tmp_path / "nope" if case == "missing" else tmp_path)
