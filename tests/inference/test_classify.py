"""spectro classify: PNGs, recordings, folders, long recordings window by window, and every error case."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SR, make_image_tree, tone_signal, write_wav

from spectro.cli import main as cli

pytestmark = pytest.mark.slow

# the tiny images were rendered from tone_signal("bearing", 1.0, seed=1000 + i) for fan/bearing image i
FAN_BEARING_0 = "fan/bearing/6dB_id_00_00000000.png"


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.strip().splitlines()]


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert captured.out == ""  # nothing printed before the error
    return err[0]


def test_png_json(tiny_run, tiny_images, capsys):
    from spectro.features.png import read_pixels
    from spectro.inference.predictors import load_predictor

    png = tiny_images / FAN_BEARING_0
    assert cli(["classify", str(png), "--model", str(tiny_run), "--json", "--top-k", "2"]) == 0
    (result,) = _json_lines(capsys.readouterr().out)
    assert set(result) >= {"path", "verdict", "anomaly_score", "failure_type", "probabilities"}
    assert "windows" not in result
    labels = json.loads((tiny_run / "labels.json").read_text())
    assert list(result["probabilities"]) == labels["classes"]
    probs = load_predictor(tiny_run).predict(read_pixels(png)[None])[0]
    np.testing.assert_allclose(list(result["probabilities"].values()), probs, atol=1e-5)
    expected_score = probs[np.array(labels["abnormal"])].sum()
    assert result["anomaly_score"] == pytest.approx(expected_score, abs=1e-5)
    assert result["verdict"] == ("ABNORMAL" if result["anomaly_score"] >= 0.5 else "normal")  # no threshold stored
    abnormal = [c for c, a in zip(labels["classes"], labels["abnormal"]) if a]
    assert result["failure_type"] == max(abnormal, key=lambda c: result["probabilities"][c])
    assert [c for c, _ in result["top_k"]] == [labels["classes"][i] for i in np.argsort(-probs)[:2]]


def test_wav_is_rendered_like_the_training_images(tiny_run, tiny_images, tmp_path, capsys):
    # the same samples as the PNG (float WAV: no quantisation), so the same pixels and the same answer
    wav = write_wav(tmp_path / "clip.wav", tone_signal("bearing", 1.0, seed=1000), subtype="FLOAT")
    assert cli(["classify", str(wav), str(tiny_images / FAN_BEARING_0), "--model", str(tiny_run), "--json"]) == 0
    from_wav, from_png = _json_lines(capsys.readouterr().out)
    assert from_wav["kind"] == "audio" and from_png["kind"] == "png"
    assert from_wav["probabilities"] == pytest.approx(from_png["probabilities"], abs=1e-5)


def test_folder_text_and_csv(tiny_run, tiny_images, tmp_path, capsys):
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(tiny_images / FAN_BEARING_0, folder / "a.png")
    shutil.copy(tiny_images / "pump/normal/6dB_id_00_00000000.png", folder / "sub" / "b.png")
    write_wav(folder / "sub" / "c.wav", tone_signal("normal", 1.0, seed=4))
    (folder / "README.txt").write_text("not a clip")  # ignored inside a folder
    out_csv = tmp_path / "out" / "verdicts.csv"
    assert cli(["classify", str(folder), "--model", str(tiny_run), "--csv", str(out_csv), "--threshold", "0"]) == 0
    text = capsys.readouterr().out
    assert text.count("ABNORMAL") == 3  # threshold 0: every score is >= 0
    for name in ("a.png", "b.png", "c.wav"):
        assert name in text
    with out_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.png", "c.wav"]
    assert {r["verdict"] for r in rows} == {"ABNORMAL"}
    labels = json.loads((tiny_run / "labels.json").read_text())
    for r in rows:
        probs = np.array([float(r[f"p_{c}"]) for c in labels["classes"]])
        assert probs.sum() == pytest.approx(1.0, abs=1e-4)
        assert float(r["anomaly_score"]) == pytest.approx(probs[np.array(labels["abnormal"])].sum(), abs=1e-5)


@pytest.fixture
def loudness_run(tiny_run, tmp_path) -> tuple[Path, float]:
    """A run whose model calls an image abnormal when its mean pixel exceeds a level ``c`` (no training).

    pixels -> mean -> softmax(a * (mean - c), 0, -30, -30): the anomaly score is sigmoid(a * (mean - c)).
    """
    import keras

    from spectro.features.logmel import db_to_pixels, log_mel
    from spectro.features.settings import FeatureSettings

    run = Path(shutil.copytree(tiny_run, tmp_path / "loud_run"))
    config = json.loads((run / "config.json").read_text())
    settings = FeatureSettings.from_dict(config["features"])
    quiet = db_to_pixels(log_mel(0.05 * tone_signal("normal", 1.0, seed=1), settings), settings).mean()
    loud = db_to_pixels(log_mel(tone_signal("normal", 1.0, seed=2), settings), settings).mean()
    assert loud - quiet > 20
    c, a = (quiet + loud) / 2, 0.5
    inputs = keras.Input(shape=(*config["input_shape"], 1))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(4, activation="softmax")
    model = keras.Model(inputs, dense(x))
    # classes: fan/bearing (abnormal), fan/normal, pump/leak, pump/normal
    dense.set_weights([np.array([[a, 0, 0, 0]], dtype="float32"), np.array([-a * c, 0, -30, -30], dtype="float32")])
    model.save(run / "model.keras")
    return run, c


def test_long_recording_window_by_window(loudness_run, tmp_path, capsys):
    run, _ = loudness_run
    # 2 s quiet, 2 s loud, 2 s quiet; windows are 62 hops = 0.992 s long, hop half a window
    y = np.concatenate([0.05 * tone_signal("normal", 2.0, seed=1), tone_signal("normal", 2.0, seed=2),
                        0.05 * tone_signal("normal", 2.0, seed=3)])
    wav = write_wav(tmp_path / "long.wav", y)
    assert cli(["classify", str(wav), "--model", str(run), "--json"]) == 0
    (result,) = _json_lines(capsys.readouterr().out)
    windows = result["windows"]
    window_s = 62 * 256 / SR
    assert windows[0]["start_s"] == 0.0 and windows[-1]["end_s"] == pytest.approx(6.0)
    for w in windows:
        assert w["end_s"] - w["start_s"] == pytest.approx(window_s, abs=1e-3)
        assert w["over_threshold"] == (w["anomaly_score"] >= 0.5)
        inside_loud = w["start_s"] >= 2.0 and w["end_s"] <= 4.0
        inside_quiet = w["end_s"] <= 2.0 or w["start_s"] >= 4.0
        if inside_loud:
            assert w["over_threshold"], w
        if inside_quiet:
            assert not w["over_threshold"], w
    starts = [w["start_s"] for w in windows[:-1]]
    np.testing.assert_allclose(np.diff(starts), window_s / 2, atol=1e-3)
    assert sum(w["over_threshold"] for w in windows) >= 3
    assert result["anomaly_score"] == pytest.approx(max(w["anomaly_score"] for w in windows))
    assert result["verdict"] == "ABNORMAL" and result["score"] == "max over windows"

    assert cli(["classify", str(wav), "--model", str(run)]) == 0
    text = capsys.readouterr().out
    flagged = sum(w["over_threshold"] for w in windows)
    assert f"windows over threshold: {flagged} of {len(windows)}" in text
    assert f"max over {len(windows)} windows" in text
    spark = next(line for line in text.splitlines() if "score over time" in line).split(": ")[-1]
    assert len(spark) == len(windows) and spark[0] == "▁" and "█" in spark


def test_classify_modules_do_not_import_tensorflow():
    code = ("import sys, spectro.commands.classify, spectro.inference.classify, spectro.inference.windows, "
            "spectro.inference.predictors, spectro.evaluation.metrics; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_classify_paths_uses_the_stored_threshold_unless_given_one(tiny_run, tiny_images, tmp_path):
    from spectro.inference.classify import classify_paths
    from spectro.inference.predictors import KerasPredictor
    from spectro.runs import update_config

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    update_config(run, threshold={"value": 0.25, "method": "max_fpr"})  # as 'spectro evaluate' stores it
    folder = tmp_path / "inbox"
    folder.mkdir()
    shutil.copy(tiny_images / FAN_BEARING_0, folder / "a.png")
    write_wav(folder / "b.wav", tone_signal("normal", 1.0, seed=4))
    results, predictor = classify_paths([folder], run, top_k=2)
    assert isinstance(predictor, KerasPredictor) and predictor.run == run.resolve()
    assert [(Path(r["path"]).name, r["kind"], len(r["top_k"])) for r in results] == [("a.png", "png", 2),
                                                                                    ("b.wav", "audio", 2)]
    assert all(r["threshold"] == 0.25 and r["verdict"] == ("ABNORMAL" if r["anomaly_score"] >= 0.25 else "normal")
               for r in results)
    (given,), _ = classify_paths([folder / "a.png"], run, threshold=0.9)
    # the same clip, scored in another batch: equal up to float rounding (oneDNN kernels depend on the batch)
    assert given["threshold"] == 0.9 and given["anomaly_score"] == pytest.approx(results[0]["anomaly_score"], abs=1e-5)
    assert given["verdict"] == ("ABNORMAL" if given["anomaly_score"] >= 0.9 else "normal")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case, match", [
    ("missing model", "no such model"),
    ("missing file", "no such file or folder"),
    ("other settings", "rendered with other feature settings than the model's (db_min -90.0 (image) vs -80.0"),
    ("text file", "not a spectrogram image or a recording"),
    ("png not an image", "not an image"),
    ("png not from spectro", "not a spectro spectrogram"),
    ("wrong image shape", "the model takes 32x63"),
    ("unreadable recording", "not a readable audio file"),
    ("short recording", "recording too short"),
    ("empty folder", "no .png, .wav"),
    ("bad top-k", "--top-k must be >= 1"),
    ("bad threshold", "--threshold must be in [0, 1]"),
    ("negative probability threshold", "--threshold must be in [0, 1] (an anomaly probability), got -0.1"),
    ("nan threshold", "--threshold must be a finite number, got nan"),
])
def test_classify_errors(case, match, tiny_run, tiny_images, tmp_path, capsys):
    from PIL import Image

    from spectro.features.logmel import db_to_pixels, log_mel
    from spectro.features.png import write_png
    from spectro.features.render import modulation_of
    from spectro.features.settings import FeatureSettings

    target = tiny_images / FAN_BEARING_0
    extra: list[str] = []
    model = str(tiny_run)
    if case == "missing model":
        model = str(tmp_path / "models" / "latest")
    elif case == "missing file":
        target = tmp_path / "nope.wav"
    elif case == "other settings":
        make_image_tree(tmp_path / "other", per_class=1,
                        settings=FeatureSettings(n_mels=32, n_fft=512, hop_length=256, db_min=-90.0))
        target = tmp_path / "other" / FAN_BEARING_0
    elif case == "text file":
        target = _write(tmp_path / "notes.txt", b"hello")
    elif case == "png not an image":
        target = _write(tmp_path / "fake.png", b"this is not a PNG")
    elif case == "png not from spectro":
        target = tmp_path / "photo.png"
        Image.fromarray(np.zeros((32, 63), dtype=np.uint8)).save(target)
    elif case == "wrong image shape":
        settings = FeatureSettings(n_mels=32, n_fft=512, hop_length=256)
        target = tmp_path / "half.png"
        y = tone_signal("normal", 0.5)
        write_png(target, db_to_pixels(log_mel(y, settings), settings), settings=settings,
                  modulation=modulation_of(y, settings))
    elif case == "unreadable recording":
        target = _write(tmp_path / "broken.wav", b"RIFF0000WAVEjunk" * 10)
    elif case == "short recording":
        target = write_wav(tmp_path / "short.wav", tone_signal("normal", 0.5))
    elif case == "empty folder":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "bad top-k":
        extra = ["--top-k", "0"]
    elif case == "bad threshold":
        extra = ["--threshold", "1.5"]
    elif case == "negative probability threshold":
        extra = ["--threshold", "-0.1"]
    elif case == "nan threshold":
        extra = ["--threshold", "nan"]
    assert cli(["classify", str(target), "--model", model, *extra]) == 2
    assert match in _one_line_error(capsys)


def test_tflite_model_classifies_without_tensorflow(tiny_run, tiny_images, tmp_path, capsys):
    """``--model x.tflite`` runs through LiteRT in a fresh interpreter that never imports TensorFlow."""
    import keras
    import tensorflow as tf

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.saving.load_model(run / "model.keras", compile=False))
    (run / "model.tflite").write_bytes(converter.convert())
    png = tiny_images / FAN_BEARING_0
    code = ("import json, sys; from spectro.cli import main; "
            f"rc = main(['classify', {str(png)!r}, '--model', {str(run / 'model.tflite')!r}, '--json']); "
            "print(json.dumps({'rc': rc, 'tf': [m for m in ('tensorflow', 'keras') if m in sys.modules]}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    result, status = _json_lines(proc.stdout)
    assert status == {"rc": 0, "tf": []}, proc.stderr
    capsys.readouterr()
    assert cli(["classify", str(png), "--model", str(run / "model.keras"), "--json"]) == 0
    (from_keras,) = _json_lines(capsys.readouterr().out)
    assert result["probabilities"] == pytest.approx(from_keras["probabilities"], abs=1e-4)
    assert result["verdict"] == from_keras["verdict"]


# -- a model that takes windows of a clip ---------------------------------------------------------------
def test_a_windowed_model_scores_a_clip_by_the_mean_of_its_windows(tiny_window_run, tiny_images, capsys):
    from spectro.features.png import read_pixels
    from spectro.inference.predictors import load_predictor

    png = tiny_images / FAN_BEARING_0
    assert cli(["classify", str(png), "--model", str(tiny_window_run), "--json"]) == 0
    (result,) = _json_lines(capsys.readouterr().out)
    predictor = load_predictor(tiny_window_run)
    pixels = read_pixels(png)
    assert pixels.shape == (32, 63) and predictor.input_shape == (32, 32)
    # windows of 32 frames at a hop of 16, the last aligned to the end of the 63 frames
    windows = np.stack([pixels[:, s:s + 32] for s in (0, 16, 31)])
    mean = predictor.predict(windows).mean(axis=0, keepdims=True)
    assert result["anomaly_score"] == pytest.approx(float(predictor.labels.anomaly_score(mean)[0]), abs=2e-6)
    assert "windows" not in result  # one clip: one span


def test_a_windowed_model_scores_recordings_shorter_than_a_clip_down_to_one_window(tiny_window_run, tmp_path,
                                                                                   capsys):
    short = write_wav(tmp_path / "short.wav", tone_signal("bearing", 0.7, seed=5))
    assert cli(["classify", str(short), "--model", str(tiny_window_run), "--json"]) == 0
    (result,) = _json_lines(capsys.readouterr().out)
    assert result["verdict"] in ("normal", "ABNORMAL") and "windows" not in result
    tiny = write_wav(tmp_path / "tiny.wav", tone_signal("bearing", 0.3, seed=5))
    assert cli(["classify", str(tiny), "--model", str(tiny_window_run)]) == 2
    assert "recording too short: 0.30 s, the model needs at least 0.50 s (32 frames)" in _one_line_error(capsys)


def test_evaluate_and_classify_score_a_windowed_run_alike(tiny_window_run, tmp_path, capsys):
    from spectro.evaluation.evaluate import evaluate_run

    run = Path(shutil.copytree(tiny_window_run, tmp_path / "run"))
    evaluate_run(run, out=tmp_path / "eval")
    with (tmp_path / "eval" / "predictions.csv").open() as handle:
        predicted = {row["path"]: float(row["anomaly_score"]) for row in csv.DictReader(handle)}
    assert cli(["classify", *predicted, "--model", str(run), "--json"]) == 0
    for result in _json_lines(capsys.readouterr().out):
        assert result["anomaly_score"] == pytest.approx(predicted[result["path"]], abs=2e-6)


# -- hostile files: one-line errors, never a traceback, decided from the header (issue 44) --

RUN_SETTINGS = dict(n_mels=32, n_fft=512, hop_length=256)  # the tiny run's feature settings


def _hostile(case: str, tmp_path: Path) -> Path:
    from hostile import BOMB_SIDE, one_hz_wav, png_bytes, spectro_text, wav_bytes, wide_png

    from spectro.features.settings import FeatureSettings

    run = FeatureSettings(**RUN_SETTINGS)
    path = tmp_path / ("x.wav" if "wav" in case else "x.png")
    if case == "1 Hz wav":
        path.write_bytes(one_hz_wav())
    elif case == "65-channel wav":
        path.write_bytes(wav_bytes(channels=65, frames=100))
    elif case == "384 kHz+ wav":
        path.write_bytes(wav_bytes(sr=400_000, frames=100))
    elif case == "64 x 2,000,000 png":
        path.write_bytes(wide_png(bands=32, settings=run))
    elif case == "decompression bomb png":
        path.write_bytes(png_bytes(width=BOMB_SIDE, height=BOMB_SIDE, text=spectro_text(run), idat=b""))
    elif case.startswith("settings "):
        path.write_bytes(png_bytes(width=63, height=32, text=spectro_text(run, settings=case[len("settings "):])))
    elif case == "bad segment png":
        path.write_bytes(png_bytes(width=63, height=32, text=spectro_text(run, segment="seven")))
    elif case == "bad modulation png":
        path.write_bytes(png_bytes(width=63, height=32, text=spectro_text(run, modulation="1 2 three")))
    return path


@pytest.mark.parametrize("case, match", [
    ("1 Hz wav", r"x.wav: sample rate 1 Hz is outside 1000..384000 Hz"),
    ("65-channel wav", r"x.wav: 65 channels declared; expected 1..64"),
    ("384 kHz+ wav", r"x.wav: sample rate 400000 Hz is outside"),
    ("64 x 2,000,000 png", r"x.png: image is 2000000 frames wide; the limit is 228751 frames (3660 s)"),
    ("decompression bomb png", r"x.png: image is 20000x20000 pixels (bands x frames), the model takes 32x63"),
    ('settings {"sr": "abc"}', r"x.png: its 'spectro:settings' text chunk: invalid FeatureSettings: sr must be a whole "
                               r"number, got 'abc'"),
    ("settings [1, 2]", r"FeatureSettings must be a JSON object of settings, got list"),
    ('settings {"features": "x"}', r"unknown FeatureSettings keys ['features']"),
    ("bad segment png", r"x.png: its 'spectro:segment' text chunk should be a window index"),
    ("bad modulation png", r"x.png: its modulation spectrum is not a list of numbers"),
])
def test_hostile_files_are_one_line_errors(case, match, tiny_run, tmp_path, capsys):
    path = _hostile(case, tmp_path)
    assert cli(["classify", str(path), "--model", str(tiny_run)]) == 2
    assert match in _one_line_error(capsys)


def test_max_seconds_bounds_recordings_and_pngs(tiny_run, tiny_images, tmp_path, capsys):
    wav = write_wav(tmp_path / "one.wav", tone_signal("normal", 1.0))
    png = tiny_images / FAN_BEARING_0  # 1 s: 63 frames
    assert cli(["classify", str(wav), str(png), "--model", str(tiny_run), "--max-seconds", "1", "--json"]) == 0
    assert len(_json_lines(capsys.readouterr().out)) == 2
    assert cli(["classify", str(wav), "--model", str(tiny_run), "--max-seconds", "0.5"]) == 2
    assert "one.wav: recording declares 1 s; the limit is 0.5 s" in _one_line_error(capsys)
    assert cli(["classify", str(png), "--model", str(tiny_run), "--max-seconds", "0.5"]) == 2
    assert "image is 63 frames wide; the limit is 32 frames (0.5 s)" in _one_line_error(capsys)
    for bad in ("inf", "nan", "0", "-3"):
        assert cli(["classify", str(wav), "--model", str(tiny_run), "--max-seconds", bad]) == 2
        assert f"max_seconds must be a finite number > 0, got {float(bad)}" in _one_line_error(capsys)


def test_classify_files_takes_limits(tiny_run, tmp_path):
    from spectro.errors import SpectroError
    from spectro.features.limits import InputLimits
    from spectro.inference.classify import classify_files
    from spectro.inference.predictors import load_predictor

    predictor = load_predictor(tiny_run)
    wav = write_wav(tmp_path / "two.wav", tone_signal("normal", 2.0))
    assert len(classify_files([wav], predictor, threshold=None, limits=InputLimits(max_seconds=2.0))) == 1
    with pytest.raises(SpectroError, match="two.wav: recording declares 2 s; the limit is 1.5 s"):
        classify_files([wav], predictor, threshold=None, limits=InputLimits(max_seconds=1.5))


def test_a_bad_file_among_good_ones_is_its_own_error_result_and_the_others_are_scored(tiny_run, tiny_images,
                                                                                        tmp_path, capsys):
    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy(tiny_images / FAN_BEARING_0, folder / "a.png")
    _write(folder / "b.wav", b"RIFF0000WAVEjunk" * 10)
    assert cli(["classify", str(folder), "--model", str(tiny_run), "--json"]) == 1
    captured = capsys.readouterr()
    results = {Path(r["path"]).name: r for r in _json_lines(captured.out)}
    assert results["a.png"]["verdict"] in ("normal", "ABNORMAL") and "error" not in results["a.png"]
    assert results["b.wav"]["verdict"] == "ERROR" and "not a readable audio file" in results["b.wav"]["error"]
    assert "1 of 2 files could not be scored" in captured.err
    assert cli(["classify", str(folder), "--model", str(tiny_run), "--csv", str(tmp_path / "out.csv")]) == 1
    text = capsys.readouterr().out
    assert "b.wav: ERROR " in text and "a.png: " in text
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["verdict"] for r in rows if r["path"].endswith("b.wav")] == ["ERROR"]
    # one file alone: its error is the command's, as before
    assert cli(["classify", str(folder / "b.wav"), "--model", str(tiny_run)]) == 2
    assert "not a readable audio file" in _one_line_error(capsys)
