"""Run folders: splits.csv, history.csv, config.json and its checks (its format among them), resolving a run, the
files a reader and the run's score need, a run written whole (staging folder, rename) and the ``latest`` link."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spectro.data.manifest import ImageRow
from spectro.errors import SpectroError
from spectro.features.settings import FeatureSettings
from spectro.runs import (
    CONFIG_NAME,
    DEFAULT_CALIBRATED_THRESHOLD,
    DEFAULT_FUSED_THRESHOLD,
    DEFAULT_THRESHOLD,
    FORMAT,
    FUSION_NAME,
    HISTORY_NAME,
    KNOWN_NAME,
    LATEST,
    MODEL_NAME,
    REFERENCES_INFO,
    REFERENCES_NAME,
    SPLITS_NAME,
    WHOLE_RUN,
    check_config,
    finish_run,
    load_config,
    point_latest,
    read_history,
    read_splits,
    resolve_run,
    save_config,
    scorer_files,
    staging_folder,
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


def _config(**keys) -> dict:
    """The smallest config.json every reader accepts, with ``keys`` set."""
    return {"format": FORMAT, "features": FeatureSettings(n_mels=32, n_fft=512, hop_length=256).to_dict(),
            "input_shape": [32, 63], "image_shape": [32, 63], "task": "failure", "model": {"embedding": "pool"},
            **keys}


def _without(key: str, **keys) -> dict:
    return {k: v for k, v in _config(**keys).items() if k != key}


def test_config_save_update_and_threshold(tmp_path):
    save_config(tmp_path, _config())
    assert load_config(tmp_path) == _config()
    assert threshold(load_config(tmp_path)) == DEFAULT_THRESHOLD
    config = update_config(tmp_path, threshold={"value": 0.3, "method": "youden"})
    assert config == load_config(tmp_path) and threshold(config) == 0.3
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_NAME]  # written atomically, no temp file left
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(SpectroError, match="not valid JSON"):
        load_config(tmp_path)


def test_the_default_threshold_follows_what_the_score_is():
    """0.5 for the CNN's probability, 0 for a calibrated fused score (a log-odds), 2.12 for a fused standard score
    (a run trained before the calibration, or without failure clips to calibrate on); a chosen one wins."""
    assert threshold({}) == DEFAULT_THRESHOLD == 0.5
    assert threshold({"anomaly_score": {"kind": "fused", "calibrated": True}}) == DEFAULT_CALIBRATED_THRESHOLD == 0.0
    for uncalibrated in ({"kind": "fused"}, {"kind": "fused", "calibrated": False}):
        assert threshold({"anomaly_score": uncalibrated}) == pytest.approx(DEFAULT_FUSED_THRESHOLD)
    assert DEFAULT_FUSED_THRESHOLD == pytest.approx(2.121, abs=1e-3)  # the larger of three standard scores
    assert threshold({"anomaly_score": {"kind": "fused", "calibrated": True}, "threshold": {"value": 1.2}}) == 1.2


@HOME_SET
def test_resolve_run_takes_a_folder_a_file_in_it_or_latest(tmp_path, monkeypatch):
    run = tmp_path / "models" / "r1"
    run.mkdir(parents=True)
    save_config(run, _config())
    (run / MODEL_NAME).write_bytes(b"")
    (run / KNOWN_NAME).write_bytes(b"")  # what every run's score reads beside its model
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


# -- config.json is checked by every reader (load_config) ------------------------------------------------------
def _features(**keys) -> dict:
    return {**_config()["features"], **keys}


@pytest.mark.parametrize("config, match", [
    ([_config()], r"should be a JSON object of the run's settings, found a list"),
    ("text", r"should be a JSON object of the run's settings, found a text"),
    (_config(features="x"), "'features' should be an object of feature settings, found a text " r'\("x"\)'),
    (_config(features=_features(sr="abc")), r"'features' are not valid feature settings \(.*sr"),
    (_config(features=_features(n_mels=[64])), r"'features' are not valid feature settings \(.*n_mels"),
    (_config(threshold={"value": "0.3", "method": "youden"}),
     r"'threshold.value' should be a number \(or null: per machine\), found a text " r'\("0.3"\)'),
    (_config(threshold={"value": True}), r"'threshold.value' should be a number .*found a boolean"),
    (_config(threshold=0.3), r"'threshold' should be an object with a 'value', found a number \(0.3\)"),
    (_without("features"), r"no 'features' \(every run written by"),
    (_without("input_shape"), r"no 'input_shape'"),
    (_without("image_shape"), r"no 'image_shape'"),
    (_without("task"), r"no 'task'"),
    (_without("model"), r"no 'model'"),
    (_config(format="1"), r"'format' should be a whole number \(the run folder's format\), found a text"),
    (_config(format=True), r"'format' should be a whole number"),
    (_config(input_shape=[32]), r"'input_shape' should be two positive integers \[mel bands, frames\], found a "
                                r"list \(\[32\]\)"),
    (_config(input_shape=[32, 0]), r"'input_shape' should be two positive integers"),
    (_config(input_shape=[32, "63"]), r"'input_shape' should be two positive integers"),
    (_config(input_shape=[32.0, 63]), r"'input_shape' should be two positive integers"),
    (_config(input_shape=[64, 63]), r"'input_shape' should be 32 mel bands first \(the features' n_mels\)"),
    (_config(image_shape="32x63"), r"'image_shape' should be two positive integers"),
    (_config(task="anomalies"), r"'task' should be one of failure, anomaly, machine, normal-only, found a text"),
    (_config(model=["mobilenet"]), r"'model' should be an object, found a list"),
    (_config(training="x"), r"'training' should be an object"),
    (_config(anomaly_score={"kind": 1}), r"'anomaly_score.kind' should be a text, found a number \(1\)"),
    (_config(model={"embedding": None}), r"'model.embedding' should be a text, found null"),
    (_config(model={}), r"'model.embedding' should be a text, found null"),
    (_config(scorer_files="fusion.npz"), r"'scorer_files' should be a list of the run's scorer files"),
    (_config(scorer_files=["model.keras"]), r"'scorer_files' should be a list of the run's scorer files \(of "
                                            r"known_machines.npz, fusion.npz"),
    (_config(warnings=["ok", 3]), r"'warnings' should be a list of texts"),
    (_config(images=3), r"'images' should be a text"),
])
def test_a_damaged_config_is_one_line_naming_the_file_the_key_and_what_was_found(tmp_path, config, match):
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(SpectroError, match=match) as refused:
        load_config(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / CONFIG_NAME}: ") and "\n" not in message
    (tmp_path / MODEL_NAME).write_bytes(b"")
    with pytest.raises(SpectroError, match=match):  # resolving the run checks it too, before any reader goes on
        resolve_run(tmp_path)


def test_a_config_with_every_block_a_reader_opens_passes_unchanged(tmp_path):
    config = _config(image_shape=[32, 126], threshold={"value": None, "method": "per machine"},
                     anomaly_score={"kind": "fused", "calibrated": True}, model={"embedding": "pool"}, training={},
                     metrics={}, split={}, images="/data/images", created="2026-12-01T10:00:00", seed=0,
                     scorer_files=[KNOWN_NAME, FUSION_NAME], warnings=["one line"])
    assert check_config(config) is config
    assert check_config(_config(threshold={"value": -1.5})) and threshold(_config(threshold={"value": -1.5})) == -1.5


def test_a_run_folder_missing_a_file_its_reader_needs_is_refused_in_one_line(tmp_path):
    save_config(tmp_path, _config())
    (tmp_path / KNOWN_NAME).write_bytes(b"")
    assert resolve_run(tmp_path) == tmp_path.resolve()  # a reader that needs nothing more
    for name in WHOLE_RUN[:2]:
        (tmp_path / name).write_text("{}")
    with pytest.raises(SpectroError, match=rf"{tmp_path}: no {SPLITS_NAME} \(the image splits\); expected a whole "
                                           "run written by 'spectro train'"):
        resolve_run(tmp_path, needs=WHOLE_RUN)
    write_splits(tmp_path, _rows(tmp_path / "images"))
    assert resolve_run(tmp_path, needs=WHOLE_RUN) == tmp_path.resolve()


# -- a run is written whole or not at all ------------------------------------------------------------------------
def test_a_run_is_staged_in_a_hidden_folder_beside_its_own_and_renamed_when_whole(tmp_path):
    final = tmp_path / "models" / "r1"
    staging = staging_folder(final)
    assert staging.parent == final.parent and staging.name == f".r1.partial-{os.getpid()}"
    staging.mkdir(parents=True)
    save_config(staging, _config())
    assert finish_run(staging, final) == final.resolve()
    assert sorted(p.name for p in final.parent.iterdir()) == ["r1"] and (final / CONFIG_NAME).is_file()
    # an empty folder of the run's name (made by hand) is replaced; a non-empty one is refused in one line
    again = staging_folder(tmp_path / "models" / "r2")
    again.mkdir()
    (tmp_path / "models" / "r2").mkdir()
    finish_run(again, tmp_path / "models" / "r2")
    third = staging_folder(final)
    third.mkdir()
    (third / "x").write_text("x")
    with pytest.raises(SpectroError, match="r1: cannot put the finished run there .*choose another --name"):
        finish_run(third, final)


# -- every reader of a run checks it, through the CLI ------------------------------------------------------------
def _whole_run_but_the_model(folder: Path, **config) -> Path:
    from spectro.model.labels import LabelSpace

    folder.mkdir(parents=True)
    save_config(folder, _config(**config))
    (folder / KNOWN_NAME).write_bytes(b"")
    LabelSpace.from_pairs([("fan", "normal"), ("fan", "bearing")], task="failure").save(folder)
    write_splits(folder, _rows(folder / "images"))
    return folder


@pytest.mark.parametrize("command", ["classify", "serve", "evaluate", "export", "report", "enroll"])
def test_every_reader_refuses_a_damaged_config_in_one_line(tmp_path, capsys, command):
    from spectro.cli import main as cli

    run = _whole_run_but_the_model(tmp_path / "run", features=_features(sr="abc"))
    (run / MODEL_NAME).write_bytes(b"")  # never reached: the config is refused first
    (tmp_path / "in" / "fan" / "normal").mkdir(parents=True)
    (tmp_path / "in" / "fan" / "normal" / "a.png").write_bytes(b"")
    argv = {"classify": ["classify", str(tmp_path / "in"), "--model", str(run)],
            "serve": ["serve", str(run), "--port", "0"], "evaluate": ["evaluate", str(run)],
            "export": ["export", str(run)], "report": ["report", str(run), "--no-evaluate"],
            "enroll": ["enroll", str(run), str(tmp_path / "in")]}[command]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run / CONFIG_NAME}: 'features' are not valid feature "
                                               "settings (") and "sr" in err[0]


@pytest.mark.parametrize("evaluate", [False, True])
def test_report_refuses_a_run_without_its_model_evaluated_or_not(tmp_path, capsys, evaluate):
    from spectro.cli import main as cli

    run = _whole_run_but_the_model(tmp_path / "run")
    assert cli(["report", str(run), *([] if evaluate else ["--no-evaluate"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {run}: no {MODEL_NAME} (the Keras model); expected a whole run written by 'spectro "
                   "train' (train it again)"]
    assert not (run / "report.html").exists()


# -- one run format; the files a run's score reads -------------------------------------------------------------
@pytest.mark.parametrize("command", ["classify", "evaluate", "serve", "report"])
@pytest.mark.parametrize("found", [None, 0])
def test_a_run_of_an_older_format_is_refused_by_every_reader_with_the_retrain_message(tmp_path, capsys, command,
                                                                                      found):
    """A config.json without ``format`` (every run written before it existed) or of an older one is refused in one
    line before any of its files is read, whatever else it holds."""
    from spectro.cli import main as cli

    run = _whole_run_but_the_model(tmp_path / "run", format=found)
    if found is None:
        save_config(run, _without("format"))
    (run / MODEL_NAME).write_bytes(b"")  # never reached
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"")
    argv = {"classify": ["classify", str(tmp_path / "in"), "--model", str(run)],
            "serve": ["serve", str(run), "--port", "0"], "evaluate": ["evaluate", str(run)],
            "report": ["report", str(run), "--no-evaluate"]}[command]
    assert cli(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {run}: written by an older spectro (format 0); retrain it with this version"]


def test_a_run_of_a_newer_format_is_refused_too(tmp_path):
    save_config(tmp_path, _config(format=FORMAT + 1))
    with pytest.raises(SpectroError, match=rf"{tmp_path}: written by a newer spectro \(format {FORMAT + 1}; this "
                                           rf"version reads format {FORMAT}\); use that version, or retrain"):
        load_config(tmp_path)


@pytest.mark.parametrize("config, missing", [
    # the measured failure: a fused run without fusion.npz was scored by the CNN's probability against the fused
    # threshold, so no clip could ever be ABNORMAL
    (_config(anomaly_score={"kind": "fused", "calibrated": True}, scorer_files=[KNOWN_NAME, FUSION_NAME]),
     FUSION_NAME),
    (_config(anomaly_score={"kind": "fused"}), FUSION_NAME),  # implied by the kind, even where not listed
    (_config(task="normal-only", scorer_files=[KNOWN_NAME, REFERENCES_NAME, REFERENCES_INFO]), REFERENCES_NAME),
    (_config(task="normal-only"), REFERENCES_INFO),
    (_config(), KNOWN_NAME),  # every run
])
def test_a_run_missing_a_file_its_score_reads_is_refused_at_load_in_one_line(tmp_path, config, missing):
    save_config(tmp_path, config)
    for name in scorer_files(config):
        if name != missing:
            (tmp_path / name).write_bytes(b"")
    with pytest.raises(SpectroError) as refused:
        resolve_run(tmp_path)
    assert str(refused.value).startswith(f"{tmp_path}: no {missing} (") and "\n" not in str(refused.value)
    assert "which this run's anomaly score reads; the run folder is incomplete" in str(refused.value)
    (tmp_path / missing).write_bytes(b"")
    assert resolve_run(tmp_path) == tmp_path.resolve()


def test_scorer_files_are_what_the_config_lists_and_what_its_score_implies():
    assert scorer_files(_config()) == [KNOWN_NAME]
    assert scorer_files(_config(anomaly_score={"kind": "fused"})) == [KNOWN_NAME, FUSION_NAME]
    assert scorer_files(_config(task="normal-only")) == [KNOWN_NAME, REFERENCES_NAME, REFERENCES_INFO]
    assert scorer_files(_config(scorer_files=[FUSION_NAME])) == [KNOWN_NAME, FUSION_NAME]


def test_a_fused_run_without_its_fusion_is_refused_by_classify_not_scored_by_the_probability(tmp_path, capsys):
    from spectro.cli import main as cli

    run = _whole_run_but_the_model(tmp_path / "run", anomaly_score={"kind": "fused", "calibrated": True},
                                   scorer_files=[KNOWN_NAME, FUSION_NAME], threshold={"value": 3.746})
    (run / MODEL_NAME).write_bytes(b"")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"")
    assert cli(["classify", str(tmp_path / "in"), "--model", str(run)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {run}: no {FUSION_NAME} (the fused anomaly score), which this run's anomaly score reads; the run "
        "folder is incomplete (copy the whole run folder, or train it again)"]
