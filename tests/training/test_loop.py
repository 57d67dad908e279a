"""spectro train: settings, the loop's pieces, errors, one tiny end-to-end run checked concern by concern,
early stopping, and a pretrained run."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from conftest import make_image_tree

from spectro.cli import main as cli_main
from spectro.data.manifest import read_manifest, write_manifest
from spectro.errors import SpectroError
from spectro.features.png import read_pixels
from spectro.features.settings import FeatureSettings
from spectro.model.labels import LabelSpace
from spectro.runs import (
    CHECKPOINT_NAME,
    HISTORY_NAME,
    LATEST,
    MODEL_NAME,
    SPLITS_NAME,
    TRAINING_PLOT_NAME,
    load_config,
    read_history,
    read_splits,
)
from spectro.scoring.fusion import MIN_MODULATION_AUC
from spectro.training.loop import TrainSettings, cosine_rate, phases

TINY = ["--alpha", "0.35", "--image-size", "32", "--weights", "none", "--no-progress", "--no-learning-check",
        "--window-seconds", "1"]  # the tiny images are 1 s long: whole images unless a test asks for windows


def test_cosine_rate_falls_from_the_rate_to_its_floor_along_a_half_cosine():
    rates = [cosine_rate(1e-3, step, 11, floor=0.02) for step in range(11)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(2e-5)
    assert rates[5] == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5))  # the middle: cos(pi/2) = 0
    assert rates[2] == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * 0.2))))
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert cosine_rate(1e-3, 0, 1) == 1e-3  # a one-epoch phase keeps its rate


def test_the_step_budget_becomes_validations_and_early_stopping_cannot_fire_in_a_phases_first_third():
    plan = phases(TrainSettings(steps=1000, eval_every=100, qat_steps=250), pretrained=False)
    assert [(p.name, p.epochs, p.steps_per_epoch, p.monitored) for p in plan] == [
        ("warmup", 3, 100, False), ("full", 7, 100, True), ("qat", 3, 100, True)]
    plan = phases(TrainSettings(steps=1000, eval_every=100, fine_tune_steps=300, qat_steps=0), pretrained=True)
    assert [(p.name, p.steps, p.start_from) for p in plan] == [("head", 1000, 3), ("fine_tune", 300, 1)]
    # a budget below one validation interval: one validation, at its end
    (only,) = phases(TrainSettings(steps=20, eval_every=100, fine_tune_steps=0, qat_steps=0), pretrained=True)
    assert (only.epochs, only.steps_per_epoch) == (1, 20)


def test_negative_qat_steps_are_refused():
    with pytest.raises(SpectroError, match="QAT steps >= 0"):
        TrainSettings(qat_steps=-1)


def test_bad_lr_schedule_is_refused():
    with pytest.raises(SpectroError, match="lr_schedule must be one of cosine, constant"):
        TrainSettings(lr_schedule="step")


def test_negative_fine_tune_layers_are_refused():
    assert TrainSettings().fine_tune_layers == 0  # the default: the whole base
    with pytest.raises(SpectroError, match=r"fine-tune layers must be >= 0 \(0: the whole base\), got -1"):
        TrainSettings(fine_tune_layers=-1)


# -- errors through the CLI -------------------------------------------------------------------------
def _cli_error(capsys, argv):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    rows = make_image_tree(root / "a", per_class=2)
    other = FeatureSettings(n_mels=32, n_fft=512, hop_length=128)
    rows2 = make_image_tree(root / "b", per_class=2, settings=other)
    write_manifest(root / "manifest.csv", rows + rows2)
    return root


def test_errors_are_one_line(capsys, tmp_path, tiny_images, mixed_images):
    (tmp_path / "empty").mkdir()
    assert "no manifest.csv" in _cli_error(capsys, ["train", str(tmp_path / "empty"), "--out", str(tmp_path)])
    assert "no such folder" in _cli_error(capsys, ["train", str(tmp_path / "nope"), "--out", str(tmp_path)])
    line = _cli_error(capsys, ["train", str(mixed_images), "--out", str(tmp_path), *TINY])
    assert "images rendered with different feature settings" in line and "hop_length 128" in line and "vs 256" in line
    missing = tmp_path / "missing.weights.h5"
    line = _cli_error(capsys, ["train", str(tiny_images), "--out", str(tmp_path), *TINY[:4], "--weights", str(missing),
                                   "--no-progress"])
    assert "not found" in line and str(missing) in line
    assert "match no image" in _cli_error(capsys, ["train", str(tiny_images), "--out", str(tmp_path), *TINY,
                                                   "--test-ids", "id_07"])
    assert not any(p.name != "empty" for p in tmp_path.iterdir())  # no half-made run folders


def test_one_class_is_refused(capsys, tmp_path):
    rows = make_image_tree(tmp_path / "img", per_class=2)
    write_manifest(tmp_path / "img" / "manifest.csv", [r for r in rows if r.machine == "fan" and r.label == "normal"])
    assert "at least 2 classes" in _cli_error(capsys, ["train", str(tmp_path / "img"), "--out", str(tmp_path), *TINY])


# -- a tiny end-to-end run --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_images, tmp_path_factory):
    """``spectro train`` from scratch on 0.5 s windows of the 1 s images: 9 steps validated every 3 (1 warm-up
    validation, 2 full) with a cosine schedule, then 6 steps (2 validations) of QAT."""
    out = tmp_path_factory.mktemp("models")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        # without --no-progress: the output is not a terminal, so no progress bars either
        assert cli_main(["train", str(tiny_images), "--out", str(out), *[a for a in TINY if a != "--no-progress"],
                         "--steps", "9", "--eval-every", "3",
                         "--batch-size", "8", "--window-seconds", "0.5", "--seed", "1", "--name", "tiny",
                         "--lr-schedule", "cosine", "--qat-steps", "6",
                         "--resize", "bilinear"]) == 0
    return out, out / "tiny", log.getvalue()


@pytest.mark.slow
def test_run_folder_holds_every_file_and_latest_points_at_it(trained):
    out, run, _ = trained
    for name in (MODEL_NAME, "labels.json", "config.json", SPLITS_NAME, HISTORY_NAME, TRAINING_PLOT_NAME):
        assert (run / name).is_file(), name
    assert (out / LATEST).resolve() == run.resolve()
    # this format, and the files its score reads (a reader refuses the run without them)
    from spectro.runs import FORMAT

    config = load_config(run)
    assert config["format"] == FORMAT and config["scorer_files"] == ["known_machines.npz", "fusion.npz"]
    assert all((run / name).is_file() for name in config["scorer_files"])


@pytest.mark.slow
def test_the_known_machine_check_knows_the_training_machines_and_flags_another(trained, tmp_path, capsys):
    """Every training clip's machine gets a profile; a clip of the run's own machines is known, a recording unlike
    them all (a loud 5 kHz whistle over a rising sweep, nothing like the tiny set's 120 Hz hums) is flagged in the
    JSON and the text output."""
    from conftest import write_wav

    from spectro.scoring.known import KnownMachines

    _, run, _ = trained
    known = KnownMachines.load(run)
    assert set(known.profiles) == {f"{r.machine}/{r.machine_id}" for r in read_splits(run, "train")}
    assert sum(len(p.features) for p in known.profiles.values()) == len(read_splits(run, "train"))
    image = read_splits(run, "test")[0].path
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["classify", str(image), "--model", str(run), "--json"]) == 0
    check = json.loads(out.getvalue())["known_machine"]
    assert check["known"] and check["distance"] <= 1 and check["nearest"] in known.profiles
    t = np.arange(16000) / 16000
    whistle = 0.5 * np.sin(2 * np.pi * 5000 * t) + 0.3 * np.sin(2 * np.pi * (200 + 3000 * t) * t)
    wav = write_wav(tmp_path / "whistle.wav", whistle.astype(np.float32))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["classify", str(wav), "--model", str(run)]) == 0
        assert cli_main(["classify", str(wav), "--model", str(run), "--json"]) == 0
    text = out.getvalue()
    check = json.loads(text.strip().splitlines()[-1])["known_machine"]
    assert not check["known"] and check["distance"] > 1
    assert "UNKNOWN MACHINE" in text and "unlike every machine the model knows" in text


@pytest.mark.slow
def test_config_records_the_images_model_and_features(trained, tiny_images):
    _, run, _ = trained
    config = load_config(run)
    assert config["model"]["weights_used"] == "none" and config["model"]["weights_requested"] == "none"
    assert config["images"] == str(tiny_images.resolve())
    assert config["task"] == "failure" and config["seed"] == 1
    image = list(read_pixels(read_manifest(tiny_images)[0].path).shape)
    assert config["image_shape"] == image == [32, 63]
    # a 0.5 s window at 16 kHz, hop 256: 1 + 8000 // 256 frames
    assert config["input_shape"] == [32, 32] and config["model"]["window_frames"] == 32
    assert config["model"]["window_seconds"] == 0.5
    assert FeatureSettings.from_dict(config["features"]) == FeatureSettings(n_mels=32, n_fft=512, hop_length=256)


@pytest.mark.slow
def test_phases_run_in_order_and_the_epoch_counter_continues_across_them(trained):
    _, run, log = trained
    training = load_config(run)["training"]
    assert training["phases"] == ["warmup", "full", "qat"] and training["epochs_run"] == 5
    assert training["steps_run"] == 15 and training["steps_per_epoch"] == [3, 3, 3]
    # one fit per phase, each starting where the last ended ("Epoch 2/3", "Epoch 3/3", "Epoch 4/5", "Epoch 5/5";
    # Keras prints no counter for the one-epoch warm-up)
    counters = [(int(epoch), int(total)) for epoch, total in re.findall(r"Epoch (\d+)/(\d+)", log)]
    assert counters == [(2, 3), (3, 3), (4, 5), (5, 5)]
    # output that is not a terminal (here a StringIO; a log file) gets one line per validation, no progress bars
    assert "━" not in log and "\r" not in log
    assert len(re.findall(r"^3/3 - .*val_loss", log, flags=re.M)) == 5


@pytest.mark.slow
def test_history_has_one_row_per_validation_and_the_cosine_schedule(trained):
    _, run, _ = trained
    training = load_config(run)["training"]
    history = read_history(run)
    assert {"loss", "val_loss", "task_accuracy", "val_task_accuracy", "learning_rate"} <= set(history)
    assert len(history["loss"]) == training["epochs_run"]
    assert training["lr_schedule"] == "cosine"
    # one cosine over warm-up and full training, one over QAT
    assert history["learning_rate"] == pytest.approx(
        [cosine_rate(training["learning_rate"], e, 3) for e in range(3)]
        + [cosine_rate(training["fine_tune_learning_rate"], e, 2) for e in range(2)])


@pytest.mark.slow
def test_resize_method_is_recorded_and_built_into_the_model(trained):
    from spectro.model.backbones import load_keras_model

    _, run, _ = trained
    assert load_config(run)["model"]["resize"] == "bilinear"
    assert load_keras_model(run / MODEL_NAME).get_layer("resize").interpolation == "bilinear"


@pytest.mark.slow
def test_qat_froze_batchnorm_only_while_it_ran(trained):
    import keras

    from spectro.model.backbones import load_keras_model

    _, run, _ = trained
    base = load_keras_model(run / MODEL_NAME).get_layer("backbone")
    assert all(layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))


@pytest.mark.slow
def test_splits_list_every_image_by_absolute_path_split_by_recording(trained, tiny_images):
    _, run, _ = trained
    rows = read_splits(run)
    assert sorted(r.path for r in rows) == sorted(r.path for r in read_manifest(tiny_images))
    assert all(r.path.is_absolute() and r.path.is_file() for r in rows)
    assert Counter(r.split for r in rows) == Counter(train=24, val=4, test=4)
    assert LabelSpace.load(run).classes == ("fan/bearing", "fan/normal", "pump/leak", "pump/normal")


@pytest.mark.slow
def test_config_metrics_have_the_keys_and_figures_of_metrics_json(trained, tmp_path):
    import shutil

    from spectro.evaluation.evaluate import evaluate_run
    from spectro.evaluation.metrics import GROUPINGS

    _, run, _ = trained
    stored = load_config(run)["metrics"]
    assert set(stored) == {"val", "test"}
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    evaluated = evaluate_run(copy)  # metrics.json of the same model on the same test split
    blocks = {"overall", "clips", "scorers", *GROUPINGS}
    for split in ("val", "test"):
        assert set(stored[split]) == {k for k in evaluated if k in blocks}
        assert set(stored[split]["overall"]) == set(evaluated["overall"])
        ids = {f"{r.machine}/{r.machine_id}" for r in read_splits(run, split)}
        assert sorted(stored[split]["by_machine_id"]) == sorted(ids)  # "<machine>/id_XX"
    test = stored["test"]["overall"]
    for key in ("n", "accuracy", "balanced_accuracy", "auc", "pauc", "fine_accuracy", "failure_type_accuracy"):
        assert test[key] == pytest.approx(evaluated["overall"][key], abs=1e-6), key
    # the images carry modulation spectra: the score is fused, and train knows no threshold but the default one
    assert load_config(run)["anomaly_score"]["kind"] == "fused"
    assert test["at_threshold"]["threshold"] == pytest.approx(NormalDist().inv_cdf(0.95 ** (1 / 3)))
    # each type's spectrum part was judged on its abnormal training clips (3 or more of fan/bearing, of pump/leak),
    # and its figures count the test clips of the types it joins
    judged = load_config(run)["anomaly_score"]["types"]
    assert all(t["modulation_training_auc"] is not None for t in judged.values())
    joins = {n for n, t in judged.items() if t["modulation_training_auc"] >= MIN_MODULATION_AUC}
    assert joins == {n for n, t in judged.items() if t["modulation_joins"]}
    assert stored["test"]["scorers"]["modulation"]["overall"]["n"] == sum(
        r.machine in joins for r in read_splits(run, "test"))
    # the mel-statistics part: fitted where a type has 3 or more training clips of each class, judged out of fold
    assert all(t["melstats_training_auc"] is not None for t in judged.values())
    learned = {n for n, t in judged.items() if t["melstats_training_auc"] >= MIN_MODULATION_AUC}
    assert learned == {n for n, t in judged.items() if t["melstats_joins"]}
    assert stored["test"]["scorers"]["melstats"]["overall"]["n"] == sum(
        r.machine in learned for r in read_splits(run, "test"))
    for name in ("cnn", "modulation", "melstats", "fused"):
        assert stored["test"]["scorers"][name]["overall"]["auc"] == pytest.approx(
            evaluated["scorers"][name]["overall"]["auc"], abs=1e-6), name


def _fused(cnn: float, *others) -> float:
    """The largest of the parts a clip has (the CNN's and those of ``others`` not ``None``), on the scale of the larger
    of three (Φ(x)³ = Φ(largest)^j for j parts)."""
    from scipy.stats import norm

    parts = [cnn] + [float(v) for v in others if v is not None]
    # P(larger of three >= x) = 1 - Φ(largest)^(j/3), from scipy's log Φ so that far tails keep their digits
    return float(norm.isf(-np.expm1(len(parts) / 3 * norm.logcdf(max(parts)))))


def _calibrated(fusion, machine_type: str, fused: float) -> float:
    """The fused score through the type's calibration (``slope × fused + intercept``) when the run has one."""
    if not fusion.calibrated:
        return fused
    slope, intercept = fusion.types[machine_type].calibration
    return slope * fused + intercept


def test_evaluate_and_classify_score_a_supervised_run_by_the_fused_score_alike(trained, tmp_path):
    import csv
    import shutil

    from scipy.special import logit

    from spectro.commands.train import format_metrics
    from spectro.evaluation.evaluate import evaluate_run
    from spectro.inference.classify import classify_paths
    from spectro.scoring.fusion import Fusion

    _, run, _ = trained
    line = format_metrics("test", load_config(run)["metrics"]["test"])
    assert "task accuracy" in line and "the CNN alone" in line and "machine id" not in line
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    assert evaluate_run(copy)["anomaly_score"] == "fused"
    with (copy / "predictions.csv").open() as handle:
        predicted = list(csv.DictReader(handle))
    fusion = Fusion.load(copy)
    assert load_config(copy)["anomaly_score"]["calibrated"] == fusion.calibrated
    results, _ = classify_paths([p["path"] for p in predicted], copy, threshold=2.5)  # not a probability: allowed
    for row, result in zip(predicted, results):
        assert result["anomaly_score"] == pytest.approx(float(row["anomaly_score"]), abs=1e-5)
        cnn = float(row["score_cnn"])
        assert 0 <= cnn <= 1 and result["scores"]["cnn"] == pytest.approx(cnn, abs=1e-5)
        assert result["verdict"] == ("ABNORMAL" if result["anomaly_score"] >= 2.5 else "normal")
        # the CNN's part on the scale of the clip's own machine type (its row's; classify: the image's folder),
        # the larger of it and the spectrum's
        assert (result["machine_type"], result["machine_type_from"]) == (row["machine"], "the path")
        median, sd = fusion.types[row["machine"]].cnn_scale
        standard = _fused((logit(np.clip(cnn, 1e-7, 1 - 1e-7)) - median) / sd, row["score_modulation"] or None,
                          row["score_melstats"] or None)
        assert result["scores"].get("melstats") == pytest.approx(float(row["score_melstats"]) if row["score_melstats"]
                                                                 else None, abs=1e-5)
        expected = _calibrated(fusion, row["machine"], standard)
        assert float(row["anomaly_score"]) == pytest.approx(expected, rel=1e-3, abs=1e-3)
    # a fused score is a log-odds or a standard score, not a probability: a threshold below 0 is allowed too
    low, _ = classify_paths([p["path"] for p in predicted[:4]], copy, threshold=-1.0)
    assert [r["threshold"] for r in low] == [-1.0] * 4
    assert [r["verdict"] for r in low] == ["ABNORMAL" if r["anomaly_score"] >= -1.0 else "normal" for r in low]
    # --machine names the type for every file; one the run does not know is refused
    other = next(t for t in fusion.types if t != predicted[0]["machine"])
    forced, _ = classify_paths([predicted[0]["path"]], copy, machine=f"{other}/id_09")
    assert (forced[0]["machine_type"], forced[0]["machine_type_from"]) == (other, "--machine")
    median, sd = fusion.types[other].cnn_scale
    cnn = logit(np.clip(forced[0]["scores"]["cnn"], 1e-7, 1 - 1e-7))
    assert forced[0]["anomaly_score"] == pytest.approx(
        _calibrated(fusion, other, _fused((cnn - median) / sd, forced[0]["scores"].get("modulation"),
                                          forced[0]["scores"].get("melstats"))),
        rel=1e-3, abs=1e-3)
    with pytest.raises(SpectroError, match="machine types"):
        classify_paths([predicted[0]["path"]], copy, machine="turbine")


def test_the_fused_score_is_calibrated_on_the_validation_splits_failures(trained, tmp_path):
    """Training's fusion takes the validation split's failure clips: given one that holds three or more of each
    class (the tiny run's validation and test clips together), every type is calibrated, with the normal clips
    alone setting its scales; the tiny run's own validation split holds too few failures, so its score stays
    the standard score."""
    import shutil

    from spectro.features.reader import read_images, read_modulation
    from spectro.inference.predictors import load_predictor
    from spectro.runs import default_threshold, feature_settings
    from spectro.scoring.fusion import Fusion
    from spectro.scoring.known import statistics
    from spectro.training.loop import _fit_fusion

    _, run, _ = trained
    config = load_config(run)
    assert config["anomaly_score"]["calibrated"] is False
    assert default_threshold(config) == pytest.approx(2.121, abs=1e-3)
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    by_split = {"train": read_splits(run, "train"), "val": read_splits(run, "val") + read_splits(run, "test")}
    predictor, features = load_predictor(copy), feature_settings(config)
    labels = predictor.labels
    probs = {"val": predictor.predict_clips(read_images(by_split["val"], settings=features,
                                                        shape=predictor.image_shape)[0])}
    spectra = {"val": read_modulation(by_split["val"], settings=features)}
    train_statistics = statistics(read_images(by_split["train"], settings=features, shape=predictor.image_shape)[0],
                                  features)
    fusion, stats = _fit_fusion(copy, labels, by_split, probs, spectra, train_statistics, features,
                                predictor.image_shape, False)
    assert stats["val"] == pytest.approx(statistics(read_images(by_split["val"], settings=features,
                                                                shape=predictor.image_shape)[0], features))
    assert Counter(r.is_abnormal for r in by_split["val"]) == {True: 4, False: 4}
    assert fusion.calibrated and Fusion.load(copy).to_dict() == fusion.to_dict()
    for name, t in fusion.types.items():  # two clips of each class per type: all types' fit
        assert Counter(r.is_abnormal for r in by_split["val"] if r.machine == name) == {True: 2, False: 2}
        assert t.calibrated_from == "all types"
    normal = [r for r in by_split["val"] if not r.is_abnormal]
    scales_of_normals = Fusion.fit(
        types=labels.machine_types, train_types=[r.machine for r in by_split["train"] if not r.is_abnormal],
        train_modulation=None, train_probability=None, val_types=[r.machine for r in normal],
        val_probability=labels.anomaly_score(probs["val"][[not r.is_abnormal for r in by_split["val"]]]))
    for name, t in fusion.types.items():
        # training scores validation clips in its own batches: float32 sums in another order
        assert t.cnn_scale == pytest.approx(scales_of_normals.types[name].cnn_scale, rel=1e-5)


def test_an_exported_fused_run_scores_through_litert_as_through_keras(trained, tmp_path):
    from spectro.export.tflite import ExportSettings, export_run
    from spectro.inference.classify import classify_paths
    from spectro.runs import FUSION_NAME, default_threshold

    _, run, _ = trained
    device = tmp_path / "device"
    export_run(run, ExportSettings(quantize=("none",), verify=False, latency_runs=1), out=device, progress=False)
    assert (device / FUSION_NAME).is_file()
    assert load_config(device)["threshold"]["value"] == pytest.approx(default_threshold(load_config(run)))
    assert load_config(device)["anomaly_score"] == load_config(run)["anomaly_score"]
    pngs = [r.path for r in read_splits(run, "test")]
    lite, _ = classify_paths(pngs, device / "model.tflite")
    keras_results, _ = classify_paths(pngs, run)
    for a, b in zip(lite, keras_results):
        assert set(a["scores"]) == set(b["scores"]) and "cnn" in a["scores"]  # and the spectrum where it joins
        assert a["scores"].get("modulation") == pytest.approx(b["scores"].get("modulation"), rel=1e-5)
        assert a["scores"].get("melstats") == pytest.approx(b["scores"].get("melstats"), rel=1e-9)  # pixels alone
        assert a["scores"]["cnn"] == pytest.approx(b["scores"]["cnn"], abs=1e-3)
        assert a["anomaly_score"] == pytest.approx(b["anomaly_score"], abs=0.05)


@pytest.mark.slow
def test_saved_model_reloads_in_a_fresh_process_with_the_same_predictions(trained, tmp_path):
    from spectro.inference.predictors import load_predictor
    from spectro.model.windows import cut, pool

    _, run, _ = trained
    rows = read_splits(run)
    windows, owners = cut(np.stack([read_pixels(r.path) for r in rows]), 32)  # the model takes 0.5 s windows
    x = windows.astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, keras\n"
            "m = keras.saving.load_model(sys.argv[1])\n"  # plain Keras: nothing spectro-specific imported
            "assert not any(k.startswith('spectro') for k in sys.modules)\n"
            "np.save(sys.argv[3], m.predict(np.load(sys.argv[2])[..., None], verbose=0))\n")
    result = subprocess.run([sys.executable, "-c", code, str(run / MODEL_NAME), str(tmp_path / "x.npy"),
                             str(tmp_path / "p.npy")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    fresh = np.load(tmp_path / "p.npy")
    here = load_predictor(run).predict(x)
    np.testing.assert_allclose(fresh, here, rtol=1e-5, atol=1e-6)
    # the saved model is the one the metrics in config.json were computed with, each clip pooled over its windows
    labels = LabelSpace.load(run)
    clips = pool(fresh, owners, len(rows))
    test = np.array([r.split == "test" for r in rows])
    truth = [r.fine_class for r, t in zip(rows, test) if t]
    accuracy = np.mean([labels.classes[i] == c for i, c in zip(clips[test].argmax(axis=1), truth)])
    assert load_config(run)["metrics"]["test"]["overall"]["accuracy"] == pytest.approx(accuracy)


# -- early stopping ---------------------------------------------------------------------------------
PATIENCE = 1


@pytest.fixture(scope="module")
def early(tiny_images, tmp_path_factory):
    """A run from scratch with patience 1: 2 warm-up epochs (never monitored), then up to 4 monitored ones."""
    from spectro.model.backbones import ModelSettings
    from spectro.training.loop import train

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        run = train(tiny_images, tmp_path_factory.mktemp("early"), name="early", progress=False,
                    settings=TrainSettings(steps=18, eval_every=3, qat_steps=0, patience=PATIENCE, batch_size=8, seed=2,
                                           learning_rate=3e-3, check_learning=False),
                    model_settings=ModelSettings(alpha=0.35, image_size=32, weights="none"))
    return run, log.getvalue()


def _val_loss(run: Path, name: str = MODEL_NAME) -> float:
    """The weighted task loss of the run's saved model on its validation split, computed here."""
    from spectro.export.calibration import model_input
    from spectro.features.reader import read_images
    from spectro.model.backbones import load_keras_model
    from spectro.model.losses import make_loss, sample_weights
    from spectro.runs import feature_settings

    rows = read_splits(run, "val")
    labels = LabelSpace.load(run)
    pixels, _ = read_images(rows, settings=feature_settings(load_config(run)))
    y = np.array([labels.index(r.machine, r.label) for r in rows])
    probs = load_keras_model(run / name).predict(model_input(pixels), verbose=0)
    losses = np.asarray(make_loss(labels.group_matrix, fine_weight=0.0)(y, probs))
    return float(np.sum(losses * sample_weights(labels, y)) / len(y))


@pytest.mark.slow
def test_early_stopping_keeps_the_best_monitored_epoch(early):
    run, log = early
    training = load_config(run)["training"]
    val_loss = read_history(run)["val_loss"]
    assert training["phases"] == ["warmup", "full"] and len(val_loss) == training["epochs_run"]
    warmup = 6 // 3
    best = warmup + int(np.argmin(val_loss[warmup:]))  # the warm-up's epochs never count as best
    assert training["best_val_loss"] == pytest.approx(val_loss[best], rel=1e-5)
    stopped = re.search(r"Epoch \d+: early stopping", log) is not None
    # a phase stops after PATIENCE epochs without improvement; a run that did not stop ended on its best epoch
    assert training["epochs_run"] - 1 - best == (PATIENCE if stopped else 0)
    assert stopped or training["epochs_run"] == 6
    # the model saved is the best epoch's, not the last one's
    assert f"Restoring model weights from the end of the best epoch: {best + 1}." in log
    assert _val_loss(run) == pytest.approx(val_loss[best], rel=1e-4)


@pytest.mark.slow
def test_the_checkpoint_holds_the_best_epoch(early):
    run, _ = early
    val_loss = read_history(run)["val_loss"]
    best = 6 // 3 + int(np.argmin(val_loss[6 // 3:]))
    assert _val_loss(run, CHECKPOINT_NAME) == pytest.approx(val_loss[best], rel=1e-4)


# -- a run is whole or absent ------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_interrupted_or_failed_run_leaves_nothing_behind_and_its_name_trains_afterwards(tiny_images, tmp_path,
                                                                                           monkeypatch, capsys):
    import os

    import spectro.training.loop as loop
    from spectro.runs import point_latest

    out = tmp_path / "models"
    (out / "old").mkdir(parents=True)
    point_latest(out, out / "old")
    argv = ["train", str(tiny_images), "--out", str(out), *TINY, "--steps", "2", "--eval-every", "2", "--qat-steps",
            "0", "--batch-size", "8", "--name", "again"]
    staged = []  # what the run's (hidden) folder held when the run was stopped

    def stop(exception):
        def stopped(*args, **kwargs):
            [folder] = [p for p in out.iterdir() if p.name.startswith(".again.partial-")]
            staged.append(sorted(p.name for p in folder.iterdir()))
            raise exception
        return stopped

    # Ctrl-C once config.json, labels.json and splits.csv are written, before any model (what `kill -INT` left)
    monkeypatch.setattr(loop, "training_dataset", stop(KeyboardInterrupt()))
    assert cli_main(argv) == 130 and "interrupted" in capsys.readouterr().err
    assert staged[0] == ["config.json", "labels.json", SPLITS_NAME]
    assert sorted(p.name for p in out.iterdir()) == ["latest", "old"] and os.readlink(out / LATEST) == "old"
    monkeypatch.undo()
    # an error after the model is written: the folder goes too, and latest stays where it was
    monkeypatch.setattr(loop.plots, "training_curves", stop(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        cli_main(argv)
    assert MODEL_NAME in staged[1] and HISTORY_NAME in staged[1]
    assert sorted(p.name for p in out.iterdir()) == ["latest", "old"] and os.readlink(out / LATEST) == "old"
    monkeypatch.undo()
    # the same name trains afterwards, and only then does latest move
    assert cli_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["again", "latest", "old"] and os.readlink(out / LATEST) == "again"
    assert {MODEL_NAME, "config.json", "labels.json", SPLITS_NAME, HISTORY_NAME} <= {p.name for p in
                                                                                    (out / "again").iterdir()}


@pytest.mark.slow
def test_a_run_records_the_width_its_backbone_was_built_with(tiny_images, tmp_path):
    import keras

    from spectro.model.backbones import ModelSettings, load_keras_model
    from spectro.training.loop import train

    run = train(tiny_images, tmp_path, name="width", progress=False,
                settings=TrainSettings(steps=2, eval_every=2, qat_steps=0, batch_size=8, check_learning=False),
                model_settings=ModelSettings(image_size=32, weights="none"))  # no width given
    assert load_config(run)["model"]["alpha"] == 0.75
    expected = keras.applications.MobileNetV2(alpha=0.75, input_shape=(32, 32, 3), include_top=False, weights=None)
    base = load_keras_model(run / MODEL_NAME).get_layer("backbone")
    assert base.count_params() == expected.count_params()


@pytest.mark.slow
def test_pretrained_run_trains_the_head_then_fine_tunes_the_whole_base(tiny_images, tmp_path):
    import keras

    from spectro.model.backbones import ModelSettings, load_backbone, load_keras_model

    base, _ = load_backbone(ModelSettings(weights="none", alpha=0.35, image_size=32))
    weights = tmp_path / "tiny.weights.h5"
    base.save_weights(weights)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert cli_main(["train", str(tiny_images), "--out", str(tmp_path / "models"), *TINY[:4], "--weights",
                         str(weights), "--no-progress", "--no-learning-check", "--steps", "3",
                         "--fine-tune-steps", "3", "--batch-size", "8", "--name", "pre", "--qat-steps", "0"]) == 0
    config = json.loads((tmp_path / "models" / "pre" / "config.json").read_text())
    assert config["model"]["weights_used"] == str(weights)
    assert config["training"]["phases"] == ["head", "fine_tune"] and config["training"]["fine_tune_layers"] == 0
    # 0 = every layer of the base: all but BatchNorm were unfrozen, as the log says
    n_layers = len(base.layers)
    n_trainable = sum(not isinstance(layer, keras.layers.BatchNormalization) for layer in base.layers)
    expected = f"fine-tuning the top {n_layers} layers of the base ({n_trainable} trainable, BatchNorm frozen)"
    assert expected in log.getvalue()
    assert load_keras_model(tmp_path / "models" / "pre" / "model.keras").output_shape == (None, 4)


# -- clips of different lengths ---------------------------------------------------------------------------------
def _two_lengths(root: Path, *, per_class: int = 6, short: dict | None = None) -> Path:
    """A two-machine image folder whose clips are 1 s (63 frames) or, two in three, 1.25 s long (79 frames);
    ``short`` maps a clip's index in a class to other lengths in seconds."""
    from conftest import tone_signal

    from spectro.data.manifest import ImageRow
    from spectro.features.logmel import db_to_pixels, log_mel
    from spectro.features.png import write_png
    from spectro.features.render import modulation_of

    settings = FeatureSettings(n_mels=32, n_fft=512, hop_length=256)
    rows = []
    for c, (machine, label) in enumerate([("fan", "normal"), ("fan", "bearing"), ("pump", "normal"), ("pump", "leak")]):
        for i in range(per_class):
            seconds = (short or {}).get(i, 1.0 if i % 3 == 0 else 1.25)
            y = tone_signal(label, seconds, seed=1000 * c + i)
            path, source = root / machine / label / f"{i:03d}.png", f"/virtual/{machine}/id_0{i % 2}/{label}/{i}.wav"
            write_png(path, db_to_pixels(log_mel(y, settings), settings), settings=settings, source=source,
                      modulation=modulation_of(y, settings))
            rows.append(ImageRow(path=path, source=source,
                                 machine=machine, machine_id=f"id_0{i % 2}", label=label, snr="", segment=0,
                                 settings_hash=settings.hash()))
    write_manifest(root / "manifest.csv", rows)
    return root


TWO_LENGTHS = [*TINY[:-1], "0.5", "--steps", "3", "--eval-every", "3", "--qat-steps", "0", "--batch-size", "8",
               "--seed", "2"]  # 0.5 s windows (32 frames) of 1 s and 1.25 s clips


@pytest.mark.slow
def test_clips_of_two_lengths_train_evaluate_classify_and_calibrate(tmp_path):
    import csv

    from spectro.evaluation.evaluate import evaluate_run
    from spectro.export.calibration import representative_images
    from spectro.inference.classify import classify_paths
    from spectro.inference.predictors import load_predictor

    images = _two_lengths(tmp_path / "images")
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_main(["train", str(images), "--out", str(tmp_path / "models"), *TWO_LENGTHS, "--name", "mixed"]) == 0
    run = tmp_path / "models" / "mixed"
    config = load_config(run)
    # a clip is the most common length (1.25 s); the model takes 0.5 s windows of any clip
    assert config["image_shape"] == [32, 79] and config["input_shape"] == [32, 32]
    assert set(config["metrics"]) == {"val", "test"}

    result = evaluate_run(run)
    with (run / "predictions.csv").open() as handle:
        predicted = list(csv.DictReader(handle))
    widths = {read_pixels(p["path"]).shape[1] for p in predicted}
    assert widths == {63, 79}, "the test split holds clips of both lengths"
    assert result["n_images"] == len(predicted)
    # each clip pooled over the windows of its own length, as a clip read alone is
    predictor = load_predictor(run)
    labels = predictor.labels
    for row in predicted:
        probs = predictor.predict_clips(read_pixels(row["path"])[None])[0]
        np.testing.assert_allclose([float(row[f"p_{c}"]) for c in labels.classes], probs, atol=1e-5)
    results, _ = classify_paths([p["path"] for p in predicted], run)
    for row, res in zip(predicted, results):
        assert res["anomaly_score"] == pytest.approx(float(row["anomaly_score"]), abs=1e-4)

    windows = representative_images(run, 10, input_shape=(32, 32), image_size=32)  # export's int8 calibration
    assert windows.shape == (10, 32, 32, 1)


def test_a_clip_narrower_than_a_window_is_refused_before_training(capsys, tmp_path):
    images = _two_lengths(tmp_path / "images", per_class=3, short={1: 0.3})  # 0.3 s: 19 frames
    line = _cli_error(capsys, ["train", str(images), "--out", str(tmp_path / "models"), *TWO_LENGTHS])
    assert re.search(r"/images/\w+/\w+/001.png: image is 19 frames wide, expected at least the model's window of 32 "
                     r"frames \(0.5 s\)", line), line
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    # whole images (--window-seconds 0) need one length
    line = _cli_error(capsys, ["train", str(images), "--out", str(tmp_path / "models"), *TINY[:-1], "0"])
    assert "a model of whole images (--window-seconds 0) needs clips of one length" in line
