"""Normal-only runs end to end on the tiny images: training never sees an abnormal clip, references and thresholds,
evaluate's scorers recomputed by hand, classify, enroll and its bad inputs, outlier exposure for one machine."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_tree, tone_signal, write_wav
from sklearn.neighbors import NearestNeighbors

from spectro.cli import main as cli_main
from spectro.features.settings import FeatureSettings
from spectro.model.labels import LabelSpace
from spectro.runs import load_config, read_splits
from spectro.scoring.known import KnownMachines
from spectro.scoring.references import REFERENCES_INFO, REFERENCES_NAME, References

TINY = ["--alpha", "0.35", "--image-size", "32", "--weights", "none", "--no-progress", "--window-seconds", "0.5",
        "--steps", "30", "--eval-every", "10", "--batch-size", "8", "--qat-steps", "0", "--task", "normal-only"]


def _cli(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def failed_run(tiny_images, tmp_path_factory) -> tuple[Path, int, str]:
    """The tiny images made blank (every pixel of every image the same, settings and sources kept): whatever the
    network does with them, every clip embeds alike and scores alike, so the learning check must refuse the run;
    ``--keep-failed`` keeps it, and the tests below read its references and files all the same."""
    from spectro.data.manifest import read_manifest
    from spectro.features.png import read_info, read_pixels, write_png

    blank = tmp_path_factory.mktemp("blank_images")
    shutil.copytree(tiny_images, blank, dirs_exist_ok=True)
    for row in read_manifest(blank):
        info = read_info(row.path)
        write_png(row.path, np.full_like(read_pixels(row.path), 128), settings=info.settings, source=row.source,
                  modulation=np.full(len(info.modulation), -5.0))
    out = tmp_path_factory.mktemp("models")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code, _ = _cli(["train", str(blank), "--out", str(out), "--name", "normal", *TINY, "--keep-failed"])
    return out / "normal", code, err.getvalue()


@pytest.fixture(scope="module")
def normal_run(failed_run) -> Path:
    return failed_run[0]


def test_a_normal_only_model_that_learned_nothing_is_refused_in_plain_words(failed_run):
    run, code, err = failed_run
    assert code == 2 and err.startswith("error: the model did not learn: on the 8 val images (2 normal, 6 abnormal)")
    assert "kept in" in err and "\n" not in err.strip()
    learning = load_config(run)["training"]["learning"]
    # the blank windows embed alike (up to float rounding, which a Mahalanobis distance to them magnifies): the
    # check says so, whatever the distances happen to rank
    assert learning["learned"] is False and learning["split"] == "val"
    assert "training windows are all alike" in learning["problems"][0] and "all alike" in err
    assert not (run.parent / "latest").exists()


def test_a_normal_only_model_that_learned_passes_the_check(scored_run):
    """The check on ``scored_run``'s validation clips, scored as training scores them."""
    from spectro.evaluation.learning import check_normal_only
    from spectro.features.reader import read_images, read_modulation
    from spectro.inference.predictors import KerasPredictor
    from spectro.runs import feature_settings
    from spectro.scoring.normal import embed_and_score

    predictor = KerasPredictor(scored_run / "model.keras", scored_run)
    val = read_splits(scored_run, "val")
    pixels = read_images(val, settings=feature_settings(predictor.config), shape=predictor.image_shape)[0]
    keys = [predictor.labels.class_of(r) for r in val]
    references = References.load(scored_run)
    modulation = read_modulation(val, settings=feature_settings(predictor.config))
    scores, probs = embed_and_score(predictor, references, keys, pixels, modulation=modulation, unknown="nan")
    default = references.default_scores(keys, scores)  # the score users get
    check = check_normal_only(val, default, split="val", references=references.embeddings)
    assert check.learned and check.problems == () and check.auc > 0.5 and check.n_abnormal > 0
    constant = check_normal_only(val, np.full(len(val), 3.0), split="val")
    assert not constant.learned and "hardly vary" in constant.problems[0]


@pytest.fixture(scope="module")
def scored_run(tiny_window_run, tmp_path_factory) -> Path:
    """A normal-only run with a model whose embeddings vary from clip to clip (``normal_run`` trained on blank
    images): ``tiny_window_run``'s model, its four outputs read as the four machine ids, references fit on its
    training normals as ``spectro train`` fits them, and with its validation normal too, so that each machine has
    the three reference clips its spectra's scales and thresholds need (splits.csv is left as it is)."""
    from spectro.features.reader import read_images, read_modulation
    from spectro.inference.predictors import KerasPredictor
    from spectro.runs import feature_settings, save_config, write_splits
    from spectro.scoring.normal import fit_references

    run = tmp_path_factory.mktemp("runs") / "scored"
    shutil.copytree(tiny_window_run, run)
    labels = LabelSpace("normal-only", ("fan/id_00", "fan/id_01", "pump/id_00", "pump/id_01"))
    labels.save(run)
    config = load_config(run)
    save_config(run, {**config, "task": labels.task})
    rows = [r.with_split("val" if r.split == "train" and r.is_abnormal else r.split) for r in read_splits(run)]
    write_splits(run, rows)
    predictor = KerasPredictor(run / "model.keras", run)
    train = [r for r in rows if r.split == "train" or (r.split == "val" and not r.is_abnormal)]
    val = [r for r in rows if r.split == "val"]
    settings = feature_settings(config)
    shape = predictor.image_shape
    fit_references(predictor, labels, train, read_images(train, settings=settings, shape=shape)[0], val,
                   read_images(val, settings=settings, shape=shape)[0], max_fpr=0.05, scorer="combined",
                   train_modulation=read_modulation(train, settings=settings),
                   val_modulation=read_modulation(val, settings=settings))[0].save(run)
    from spectro.scoring.known import KnownMachines, statistics

    pixels = read_images(train, settings=settings, shape=shape)[0]  # the known-machine check, as training fits it
    KnownMachines.fit([labels.class_of(r) for r in train], statistics(pixels, settings)).save(run)
    return run


def _files(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()}


def test_labels_are_machine_ids_and_no_abnormal_clip_is_trained_on(normal_run):
    rows = read_splits(normal_run)
    assert not [r for r in rows if r.split == "train" and r.is_abnormal]
    assert {r.split for r in rows if r.is_abnormal} <= {"val", "test"}
    labels = LabelSpace.load(normal_run)
    assert labels.task == "normal-only" and labels.classes == ("fan/id_00", "fan/id_01", "pump/id_00", "pump/id_01")
    assert not labels.abnormal_mask.any()
    block = load_config(normal_run)["normal_only"]
    assert block["abnormal_trained_on"] == 0 and block["objective"].startswith("machine id classification of 4")
    assert block["abnormal_moved_out_of_training"] > 0


def test_references_hold_every_window_of_the_training_normals_with_thresholds(normal_run):
    refs = References.load(normal_run)
    train = [r for r in read_splits(normal_run, "train")]
    assert sorted(refs.machines) == sorted({f"{r.machine}/{r.machine_id}" for r in train})
    config = load_config(normal_run)
    windows_per_clip = len(range(0, config["image_shape"][1] - config["input_shape"][1] + 1, 16)) + 1  # + the end
    for key, m in refs.machines.items():
        clips = sum(f"{r.machine}/{r.machine_id}" == key for r in train)
        assert m.n_clips == clips and len(m.embeddings) == clips * windows_per_clip
        assert m.modulation.shape == (clips, 60)  # every clip's spectrum, from its PNG
        assert m.statistics.shape == (clips, 2 * config["image_shape"][0])  # and its mel statistics
        # fewer than three reference clips are too few to scale and threshold the spectra fold by fold, fewer than
        # two the mel statistics: combined is made of the views that can be fitted
        views = {name for name, least in (("modulation", 3), ("melstats", 2)) if clips >= least}
        assert set(m.thresholds) == {"knn", "mahalanobis", "id", "combined"} | views and m.class_index is not None
        assert set(m.scales) == {"mahalanobis"} | views and refs.scorer_for(key) == "combined"
    info = json.loads((normal_run / REFERENCES_INFO).read_text())
    assert info["max_fpr"] == 0.05 and info["default_scorer"] == "combined"


@pytest.fixture(scope="module")
def evaluated(scored_run):
    code, text = _cli(["evaluate", str(scored_run)])
    assert code == 0
    return json.loads((scored_run / "metrics.json").read_text()), text


def test_evaluate_reports_every_scorer_and_the_autoencoder_beside_them(evaluated, scored_run):
    result, text = evaluated
    assert set(result["scorers"]) == {"knn", "mahalanobis", "id", "modulation", "melstats", "combined"}
    for figures in result["scorers"].values():
        assert set(figures) == {"overall", "by_machine", "by_machine_id", "by_snr"}
    assert result["baseline"]["name"].startswith("DCASE 2020 dense autoencoder")
    assert result["threshold"]["value"] is None and set(result["threshold"]["by_machine"]) == set(
        References.load(scored_run).machines)
    assert "scorer knn" in text and "threshold per machine" in text


def test_predictions_keep_their_columns_and_the_knn_score_is_recomputed_by_hand(evaluated, scored_run):
    import keras

    from spectro.features.png import read_pixels
    from spectro.model.windows import cut

    with (scored_run / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"anomaly_score", "failure_type", "verdict", "score_knn", "score_mahalanobis", "score_id",
            "score_modulation", "score_melstats", "score_combined"} <= set(rows[0])
    assert all(r["failure_type"] == "" and r["anomaly_score"] == r["score_combined"] for r in rows)
    # the knn score of one test clip: each window's embedding computed here from the backbone's layers (the ends
    # of MobileNetV2's stride-8 and stride-16 stages, averaged over time), scikit-learn's neighbours
    model = keras.saving.load_model(scored_run / "model.keras", compile=False)
    base = model.get_layer("backbone")
    stages = keras.Model(base.input, [base.get_layer("block_5_add").output, base.get_layer("block_12_add").output])
    scaled = keras.Model(model.inputs, model.get_layer("scale_to_pm1").output)

    def embed(x):
        maps = stages(scaled([x], training=False), training=False)
        return np.concatenate([np.asarray(m).mean(axis=2).reshape(len(x), -1) for m in maps], axis=1)

    window = load_config(scored_run)["input_shape"][1]
    data = np.load(scored_run / REFERENCES_NAME)
    row = rows[0]
    key = f"{row['machine']}/{row['machine_id']}"
    windows, _ = cut([read_pixels(row["path"])], window)
    e = embed(windows[..., None].astype("float32")).mean(axis=0, keepdims=True)
    reference = data["embeddings"][data["keys"] == key].astype(np.float32)
    distances = NearestNeighbors(n_neighbors=5, metric="cosine").fit(reference).kneighbors(e)[0]
    assert float(row["score_knn"]) == pytest.approx(distances.mean(), abs=2e-3)  # references are float16
    assert len({r["score_knn"] for r in rows}) > len(rows) // 2  # the scores do depend on the clip
    machine = References.load(scored_run).machines[key]
    score = float(row["score_combined"])
    if abs(score - machine.thresholds["combined"]) > 1e-5:  # the file rounds to 6 decimals
        assert row["verdict"] == ("ABNORMAL" if score >= machine.thresholds["combined"] else "normal")


def test_the_modulation_melstats_and_combined_scores_are_recomputed_by_hand(evaluated, scored_run):
    """modulation: scipy's Mahalanobis distance of the clip's spectrum (its PNG's text chunk) to a Ledoit-Wolf
    Gaussian of the training normals' spectra (their PNGs'); melstats: the RMS of the clip's per-band level-free
    means and standard deviations of its PNG's dB values as standard scores against the training normals' (their
    standard deviation + 0.5 dB); combined: the larger of the three views' logs as robust standard scores, by the
    references' scales."""
    from scipy.spatial.distance import mahalanobis
    from sklearn.covariance import LedoitWolf

    from spectro.features.png import read_info, read_pixels

    with (scored_run / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    row = rows[0]
    key = f"{row['machine']}/{row['machine_id']}"
    train = [r for r in read_splits(scored_run) if f"{r.machine}/{r.machine_id}" == key and not r.is_abnormal
             and r.split in ("train", "val")]  # the fixture's references: training and validation normals
    spectra = np.array([read_info(r.path).modulation for r in train], dtype=np.float64)
    fit = LedoitWolf().fit(spectra)
    expected = mahalanobis(np.array(read_info(row["path"]).modulation), fit.location_, np.linalg.inv(fit.covariance_))
    assert float(row["score_modulation"]) == pytest.approx(expected, rel=1e-4)
    settings = FeatureSettings.from_dict(load_config(scored_run)["features"])

    def stats(path):
        db = read_pixels(path).astype(np.float64) * settings.db_per_step + settings.db_min
        return np.r_[db.mean(axis=1) - db.mean(), db.std(axis=1)]

    reference = np.array([stats(r.path) for r in train])
    z = (stats(row["path"]) - reference.mean(axis=0)) / (reference.std(axis=0) + 0.5)
    assert float(row["score_melstats"]) == pytest.approx(np.sqrt(np.mean(z ** 2)), rel=1e-4)
    scales = References.load(scored_run).machines[key].scales
    assert set(scales) == {"mahalanobis", "modulation", "melstats"}  # all three: no change of scale
    combined = max((np.log(float(row[f"score_{p}"])) - scales[p][0]) / scales[p][1]
                   for p in ("mahalanobis", "modulation", "melstats"))
    assert float(row["score_combined"]) == pytest.approx(combined, abs=1e-4)


def test_report_shows_every_scorer_the_references_and_the_known_machines(evaluated, scored_run, tmp_path):
    import re

    result, _ = evaluated
    assert _cli(["report", str(scored_run), "--out", str(tmp_path / "report.html")])[0] == 0
    page = (tmp_path / "report.html").read_text()
    assert "<h3>Scorers</h3>" in page and "<h3>Normal references</h3>" in page
    auc = result["scorers"]["knn"]["overall"]["auc"]
    assert re.search(r"<td class=\"l\">all</td>.*?" + f"{auc:.3f}", page, re.S)
    for key in References.load(scored_run).machines:  # a row in the references table and one in the known machines
        assert page.count(f"<td class=\"l\">{key}</td>") >= 2
    assert "The known-machine check" in page


def test_classify_scores_an_image_against_its_machine(evaluated, scored_run, capsys):
    with (scored_run / "predictions.csv").open() as handle:
        row = next(csv.DictReader(handle))
    code, text = _cli(["classify", row["path"], "--model", str(scored_run), "--json"])
    result = json.loads(text)
    key = f"{row['machine']}/{row['machine_id']}"
    assert code == 0 and result["machine"] == key and result["reference"] == "the image's source recording"
    assert result["anomaly_score"] == pytest.approx(float(row["score_combined"]), abs=1e-5)
    assert result["failure_type"] == "" and result["scorer"] == "combined"
    assert set(result["scores"]) == {"knn", "mahalanobis", "id", "modulation", "melstats", "combined"}
    other = next(k for k in References.load(scored_run).machines if k != key)
    code, text = _cli(["classify", row["path"], "--model", str(scored_run), "--json", "--machine", other])
    assert json.loads(text)["machine"] == other and json.loads(text)["reference"] == "--machine"
    assert cli_main(["classify", row["path"], "--model", str(scored_run), "--machine", "valve/id_04"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: machine 'valve/id_04' has no enrolled normal clips") and "\n" not in err


def _wavs(folder: Path, n: int, *, seed: int) -> Path:
    for i in range(n):
        write_wav(folder / f"{i:08d}.wav", tone_signal("normal", 1.0, seed=seed + i) * 0.5)
    return folder


def test_enroll_adds_a_machine_without_retraining_and_changes_only_its_references(scored_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(scored_run, run)
    before = References.load(run)
    model = (run / "model.keras").read_bytes()
    _wavs(tmp_path / "new" / "gear" / "id_05" / "normal", 4, seed=500)
    code, text = _cli(["enroll", str(run), str(tmp_path / "new"), "--no-progress"])
    assert code == 0 and "enrolled new machine gear/id_05: 4 clip(s)" in text
    after = References.load(run)
    assert set(after.machines) == set(before.machines) | {"gear/id_05"}
    for key, m in before.machines.items():
        assert after.machines[key].thresholds == pytest.approx(m.thresholds)
        np.testing.assert_array_equal(after.machines[key].embeddings, m.embeddings)
    gear = after.machines["gear/id_05"]
    assert gear.class_index is None and set(gear.thresholds) == {"knn", "mahalanobis", "modulation", "melstats",
                                                                 "combined"}
    assert gear.modulation.shape == (4, 60) and gear.statistics.shape == (4, 2 * load_config(run)["image_shape"][0])
    assert (run / "model.keras").read_bytes() == model
    known_before, known_after = KnownMachines.load(scored_run), KnownMachines.load(run)
    assert set(known_after.profiles) == set(known_before.profiles) | {"gear/id_05"}
    assert len(known_after.profiles["gear/id_05"].features) == 4 and known_after.profiles["gear/id_05"].bound
    for key, profile in known_before.profiles.items():
        np.testing.assert_array_equal(known_after.profiles[key].features, profile.features)
    wav = tmp_path / "new" / "gear" / "id_05" / "normal" / "00000000.wav"
    code, text = _cli(["classify", str(wav), "--model", str(run), "--json"])
    result = json.loads(text)
    assert result["machine"] == "gear/id_05" and result["threshold"] == pytest.approx(gear.thresholds["combined"])
    assert result["known_machine"]["known"] and result["known_machine"]["nearest"] == "gear/id_05"
    # more normal clips of a known machine, named with --machine
    _wavs(tmp_path / "more", 2, seed=600)
    code, text = _cli(["enroll", str(run), str(tmp_path / "more"), "--machine", "gear/id_05", "--no-progress"])
    assert code == 0 and References.load(run).machines["gear/id_05"].n_clips == 6


@pytest.mark.parametrize("case", ["empty", "abnormal", "other-settings", "bad-machine", "no-machine", "missing-run"])
def test_bad_enrollments_are_one_line_errors_and_leave_the_run_unchanged(normal_run, tmp_path, capsys, case):
    run = tmp_path / "run"
    shutil.copytree(normal_run, run)
    folder = tmp_path / "in"
    folder.mkdir()
    args, expected = [], ""
    if case == "empty":
        expected = "no .png"
    elif case == "abnormal":
        _wavs(folder / "fan" / "id_00" / "normal", 2, seed=1)
        write_wav(folder / "fan" / "id_00" / "abnormal" / "x.wav", tone_signal("bearing", 1.0, seed=3))
        expected = "enroll takes normal recordings only: 1 of the 3 files"
    elif case == "other-settings":
        make_image_tree(folder, per_class=1, settings=FeatureSettings(n_mels=16, n_fft=512, hop_length=256))
        (folder / "manifest.csv").unlink()
        for label in ("fan/bearing", "pump/leak"):
            shutil.rmtree(folder / label)
        args = ["--machine", "fan/id_00"]
        expected = "settings"
    elif case == "bad-machine":
        _wavs(folder, 2, seed=1)
        args, expected = ["--machine", "fan/id_00/extra"], "--machine 'fan/id_00/extra' does not parse"
    elif case == "no-machine":
        _wavs(folder, 2, seed=1)
        expected = "cannot tell which machine it is from its path"
    else:
        _wavs(folder / "fan" / "id_00" / "normal", 2, seed=1)
        (run / REFERENCES_NAME).unlink()  # refused as the run is resolved, before any recording is read
        expected = f"run: no {REFERENCES_NAME} (the normal references), which this run's anomaly score reads"
    before = _files(run)
    assert cli_main(["enroll", str(run), str(folder), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err and "Traceback" not in err
    assert _files(run) == before


def test_a_single_machine_trains_against_the_synthetic_machines(tmp_path):
    rows = make_image_tree(tmp_path / "img", per_class=12)
    from spectro.data.manifest import write_manifest

    one = [r for r in rows if r.machine == "fan" and r.machine_id == "id_00"]
    write_manifest(tmp_path / "img" / "manifest.csv", one)
    code, text = _cli(["train", str(tmp_path / "img"), "--out", str(tmp_path / "m"), "--name", "one", *TINY,
                       "--no-learning-check"])
    assert code == 0 and "outlier exposure" in text
    run = tmp_path / "m" / "one"
    config = load_config(run)
    assert config["normal_only"]["objective"].startswith("outlier exposure: the machine's normal clips against 96")
    classes = LabelSpace.load(run).classes
    assert "fan/id_00" in classes and len(classes) == 9
    assert all(c.startswith("synthetic-") for c in classes if c != "fan/id_00")
    assert list(References.load(run).machines) == ["fan/id_00"]  # the outliers are never references
    assert {r.machine for r in read_splits(run)} == {"fan"}  # nor in the run's splits


def test_export_writes_embedding_files_that_classify_as_keras_does_without_tensorflow(scored_run, tmp_path):
    from spectro.inference.classify import classify_paths
    from spectro.inference.predictors import LiteRTPredictor

    run = tmp_path / "run"
    shutil.copytree(scored_run, run)
    out = tmp_path / "device"
    code, text = _cli(["export", str(run), "--quantize", "none", "--out", str(out)])
    assert code == 0, text
    figures = load_config(out)["export"]["none"]  # verified: agreement and the mahalanobis AUC of single windows
    assert figures["passed"] and figures["agreement"] >= 0.995
    assert figures["tflite_auc"] == pytest.approx(figures["keras_auc"], abs=0.005) and figures["keras_auc"] > 0.5
    # the quantised files of a model this small miss their bounds (as a supervised one's may): structure only
    assert _cli(["export", str(run), "--quantize", "int8", "--no-verify", "--out", str(out)])[0] == 0
    names = {p.name for p in out.iterdir()}
    assert {"references.npz", "references.json", "known_machines.npz", "model.tflite", "model_int8.tflite"} <= names
    image = next(r.path for r in read_splits(run, "test"))
    keras = classify_paths([image], run)[0][0]
    for name, tolerance in (("model.tflite", 1e-3), ("model_int8.tflite", None)):
        assert LiteRTPredictor(out / name, out).embedding_detail is not None
        result = classify_paths([image], out / name)[0][0]
        assert set(result) == set(keras) and result["machine"] == keras["machine"]
        assert result["threshold"] == keras["threshold"] and np.isfinite(result["anomaly_score"])
        assert result["known_machine"] == keras["known_machine"]  # the profiles travelled along
        if tolerance is not None:
            assert result["anomaly_score"] == pytest.approx(keras["anomaly_score"], rel=tolerance)


def test_serve_answers_as_classify_on_a_normal_only_run(scored_run, tmp_path):
    fastapi = pytest.importorskip("fastapi")
    assert fastapi
    from fastapi.testclient import TestClient

    from spectro.serving.app import create_app

    wav = _wavs(tmp_path / "plain", 1, seed=700) / "00000000.wav"  # no machine id in the path: the nearest machine
    code, text = _cli(["classify", str(wav), "--model", str(scored_run), "--json"])
    expected = json.loads(text)
    assert code == 0 and expected["reference"].startswith("the nearest enrolled machine")
    with TestClient(create_app(scored_run, workers=1)) as client, wav.open("rb") as handle:
        answer = client.post("/api/classify", files=[("file", ("clip.wav", handle))]).json()
    assert len(answer) == 1 and answer[0]["path"] == "clip.wav"
    assert {k: v for k, v in answer[0].items() if k != "path"} == {k: v for k, v in expected.items() if k != "path"}


def _add_machine(root: Path, rows: list, machine: str, n: int, *, seed: int) -> list:
    """``n`` normal clips of a machine ``<machine>/id_00`` rendered into the image tree at ``root``."""
    from spectro.data.manifest import ImageRow
    from spectro.features.logmel import db_to_pixels, log_mel
    from spectro.features.png import write_png
    from spectro.features.render import modulation_of

    settings = FeatureSettings(n_mels=32, n_fft=512, hop_length=256)
    for i in range(n):
        y = tone_signal("normal", 1.0, seed=seed + i)
        y = np.clip(y + 0.2 * np.sin(2 * np.pi * (200 + seed % 97) * np.arange(len(y)) / 16000), -1, 1)
        rel = f"{machine}/normal/6dB_id_00_{i:08d}.png"
        source = f"/virtual/6_dB_{machine}/{machine}/id_00/normal/{i}.wav"
        write_png(root / rel, db_to_pixels(log_mel(y.astype(np.float32), settings), settings), settings=settings,
                  source=source, modulation=modulation_of(y.astype(np.float32), settings))
        rows.append(ImageRow(path=root / rel, source=source, machine=machine, machine_id="id_00", label="normal",
                             snr="6dB", segment=0, settings_hash=settings.hash()))
    return rows


def test_machines_with_one_and_two_normal_clips_train_enroll_and_score_and_a_batch_flags_an_unknown_one(tmp_path):
    """A 1-clip machine (gear) and a 2-clip machine (valve: one clip lands in validation) are enrolled, marked few
    references, and scored; classify of a folder holding a clip of a machine without references scores the others
    and gives that one an ERROR result, with exit status 1."""
    from spectro.data.manifest import write_manifest

    rows = make_image_tree(tmp_path / "img", per_class=16)  # 6 training normals per fan and pump id: a pool of 24
    rows = _add_machine(tmp_path / "img", rows, "gear", 1, seed=700)
    rows = _add_machine(tmp_path / "img", rows, "valve", 2, seed=800)
    write_manifest(tmp_path / "img" / "manifest.csv", rows)
    code, _ = _cli(["train", str(tmp_path / "img"), "--out", str(tmp_path / "m"), "--name", "few", *TINY,
                    "--no-learning-check"])
    assert code == 0
    run = tmp_path / "m" / "few"
    refs = References.load(run)
    info = json.loads((run / REFERENCES_INFO).read_text())["machines"]
    for key in ("gear/id_00", "valve/id_00"):
        assert refs.machines[key].few_references and info[key]["few_references"] is True
        assert "pooled scale" in info[key]["threshold_from"] and refs.scorer_for(key) == "combined"
        assert np.isfinite(info[key]["thresholds"]["combined"])
    assert info["gear/id_00"]["clips"] == 1
    batch = tmp_path / "batch"
    for machine, name in (("gear", "g.png"), ("valve", "v.png"), ("drill", "d.png")):
        (batch / machine / "id_00").mkdir(parents=True)
        shutil.copy(tmp_path / "img" / ("gear" if machine == "drill" else machine) / "normal" /
                    "6dB_id_00_00000000.png", batch / machine / "id_00" / name)
    code, text = _cli(["classify", str(batch), "--model", str(run), "--json"])
    results = {Path(r["path"]).parent.parent.name: r for r in map(json.loads, text.splitlines())}
    assert code == 1 and set(results) == {"gear", "valve", "drill"}
    assert results["drill"]["verdict"] == "ERROR" and "'drill/id_00' has no enrolled normal clips" in results[
        "drill"]["error"]
    for machine in ("gear", "valve"):
        r = results[machine]
        assert r["verdict"] in ("normal", "ABNORMAL") and r["few_references"] is True and r["scorer"] == "combined"
        assert r["threshold"] == pytest.approx(refs.threshold(f"{machine}/id_00"))
    assert results["gear"]["reference_clips"] == 1
    code, text = _cli(["classify", str(batch), "--model", str(run)])
    assert code == 1 and "d.png: ERROR machine 'drill/id_00' has no enrolled normal clips" in text
    assert "few references: 1 normal clip(s) of this machine" in text
