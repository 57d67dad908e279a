"""spectro evaluate on the hand-built tiny run: every file, the threshold, the refusals."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_tree
from PIL import Image

from spectro.cli import main as cli
from spectro.runs import METRICS_NAME, PLOT_NAMES, PREDICTIONS_NAME, read_splits, write_splits

pytestmark = pytest.mark.slow


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A private copy: evaluate writes into the run folder and its config."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def _predictions(run: Path) -> list[dict]:
    with (run / PREDICTIONS_NAME).open(newline="") as handle:
        return list(csv.DictReader(handle))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_evaluate_writes_every_file_and_the_threshold(run, capsys):
    from sklearn.metrics import accuracy_score, roc_auc_score

    assert cli(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "anomaly AUC" in out and "threshold" in out

    for name in [METRICS_NAME, PREDICTIONS_NAME, *PLOT_NAMES.values()]:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for name in PLOT_NAMES.values():
        with Image.open(run / name) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, name  # a real plot, not a blank canvas

    test_rows = read_splits(run, "test")
    labels = json.loads((run / "labels.json").read_text())
    rows = _predictions(run)
    assert [r["path"] for r in rows] == [str(r.path) for r in test_rows]
    head = ["path", "source", "machine", "machine_id", "label", "snr", "predicted", "anomaly_score", "failure_type"]
    assert list(rows[0])[:len(head)] == head
    assert list(rows[0])[-len(labels["classes"]):] == [f"p_{c}" for c in labels["classes"]]
    probs = np.array([[float(r[f"p_{c}"]) for c in labels["classes"]] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    abnormal = np.array(labels["abnormal"])
    scores = np.array([float(r["anomaly_score"]) for r in rows])
    np.testing.assert_allclose(scores, probs[:, abnormal].sum(axis=1), atol=1e-5)
    assert [r["predicted"] for r in rows] == [labels["classes"][i] for i in probs.argmax(axis=1)]  # failure task

    m = json.loads((run / METRICS_NAME).read_text())
    y = [int(r["label"] != "normal") for r in rows]
    true = [f"{r['machine']}/{r['label']}" for r in rows]
    assert m["n_images"] == len(test_rows)
    assert m["overall"]["accuracy"] == pytest.approx(accuracy_score(true, [r["predicted"] for r in rows]))
    assert m["overall"]["auc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-5)
    assert m["overall"]["pauc"] == pytest.approx(roc_auc_score(y, scores, max_fpr=0.1), abs=1e-5)
    assert sorted(m["by_machine"]) == ["fan", "pump"]
    assert sorted(m["by_machine_id"]) == ["fan/id_00", "fan/id_01", "pump/id_00", "pump/id_01"]
    assert sorted(m["by_snr"]) == ["6dB"]
    for group in m["by_machine"].values():
        assert set(group) >= {"accuracy", "balanced_accuracy", "auc", "pauc", "report"}

    config = json.loads((run / "config.json").read_text())
    thr = config["threshold"]
    assert thr["method"] == "max_fpr" and thr["max_fpr"] == 0.05
    assert m["threshold"]["value"] == thr["value"]
    _check_threshold_against_validation(run, thr)


def _check_threshold_against_validation(run: Path, thr: dict) -> None:
    """Recompute the val threshold by brute force: best TPR with FPR <= max_fpr, the largest such score."""
    from spectro.features.png import read_pixels
    from spectro.inference.predictors import load_predictor

    val = read_splits(run, "val")
    predictor = load_predictor(run)
    probs = predictor.predict(np.stack([read_pixels(r.path) for r in val]))
    scores = probs[:, predictor.labels.abnormal_mask].sum(axis=1)
    y = np.array([r.label != "normal" for r in val])
    best = None
    # candidates: every observed score, and just above the highest (nothing flagged, FPR 0)
    for t in [float(np.nextafter(scores.max(), np.inf)), *sorted(set(scores.tolist()), reverse=True)]:
        fpr, tpr = (scores[~y] >= t).mean(), (scores[y] >= t).mean()
        if fpr <= thr["max_fpr"] and (best is None or tpr > best[2]):
            best = (t, fpr, tpr)
    assert best is not None
    assert thr["value"] == pytest.approx(best[0], abs=1e-6)
    assert (thr["val_fpr"], thr["val_tpr"]) == (pytest.approx(best[1]), pytest.approx(best[2]))


def test_youden_and_other_images(run, tiny_images):
    assert cli(["evaluate", str(run), "--youden", "--images", str(tiny_images)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["threshold"]["method"] == "youden" and config["threshold"]["max_fpr"] is None
    m = json.loads((run / METRICS_NAME).read_text())
    assert m["n_images"] == 32 and "images of" in m["evaluated"]
    assert len(_predictions(run)) == 32


def _other_settings_tree(root: Path) -> Path:
    from spectro.features.settings import FeatureSettings

    # same shape as the tiny run's images, another dB scale: the pixels mean something else
    make_image_tree(root, per_class=1, settings=FeatureSettings(n_mels=32, n_fft=512, hop_length=256, db_min=-90.0))
    return root


@pytest.mark.parametrize("case, match", [
    ("missing run", "no such run folder"),
    ("not a run", "not a spectro run folder"),
    ("no splits", "splits.csv: missing"),
    ("bad max fpr", "max-fpr must be in"),
    ("other settings", "db_min -90.0 (image) vs -80.0 (model)"),
    ("missing image", "images are missing"),
])
def test_evaluate_errors(case, match, run, tmp_path, capsys):
    args = ["evaluate", str(run)]
    if case == "missing run":
        args = ["evaluate", str(tmp_path / "nope")]
    elif case == "not a run":
        args = ["evaluate", str(tmp_path)]
    elif case == "no splits":
        (run / "splits.csv").unlink()
    elif case == "bad max fpr":
        args += ["--max-fpr", "2"]
    elif case == "other settings":
        args += ["--images", str(_other_settings_tree(tmp_path / "other"))]
    elif case == "missing image":
        rows = read_splits(run)
        write_splits(run, [replace(rows[0], path=tmp_path / "gone.png"), *rows[1:]])
    assert cli(args) == 2
    assert match in _one_line_error(capsys)
    assert not (run / METRICS_NAME).exists()


def test_segments_are_also_scored_per_recording(run):
    from sklearn.metrics import roc_auc_score

    # pretend each class's images are segments of one recording per machine
    write_splits(run, [replace(r, source=f"/virtual/{r.machine}/{r.label}.wav") for r in read_splits(run)])
    assert cli(["evaluate", str(run)]) == 0
    clips = json.loads((run / METRICS_NAME).read_text())["clips"]
    per_source: dict[str, list[float]] = {}
    truth = {}
    for p in _predictions(run):
        per_source.setdefault(p["source"], []).append(float(p["anomaly_score"]))
        truth[p["source"]] = p["label"] != "normal"
    keys = sorted(per_source)
    assert clips["n"] == len(keys) == 4
    expected = roc_auc_score([truth[k] for k in keys], [np.mean(per_source[k]) for k in keys])
    assert clips["auc"] == pytest.approx(expected, abs=1e-5)
