"""load_predictor and the TF-free LiteRT predictor (float32 and quantised models)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import raw_tflite_probs, split_pixels, tone_signal, write_wav

from spectro.errors import SpectroError
from spectro.inference.predictors import KerasPredictor, LiteRTPredictor, find_model, load_predictor

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keras_probs(tiny_exports):
    import keras

    run = tiny_exports["run"]
    _, x = split_pixels(run)
    model = keras.saving.load_model(run / "model.keras", compile=False)
    return x, model.predict(x[..., None].astype("float32"), verbose=0)


def test_float_tflite_matches_keras(tiny_exports, keras_probs):
    x, expected = keras_probs
    predictor = load_predictor(tiny_exports["run"] / "model.tflite")
    assert isinstance(predictor, LiteRTPredictor) and not predictor.quantized
    np.testing.assert_allclose(predictor.predict(x), expected, atol=1e-4)
    # (n, h, w) and (n, h, w, 1), uint8 or float: the same answer
    np.testing.assert_allclose(predictor.predict(x[..., None].astype(np.float32)), expected, atol=1e-4)


@pytest.mark.parametrize("mode, name", [("int8", "model_int8.tflite"), ("dynamic", "model_dynamic.tflite")])
def test_quantised_tflite_dequantises_output(tiny_exports, keras_probs, mode, name):
    x, expected = keras_probs
    predictor = load_predictor(tiny_exports["run"] / name)
    assert predictor.quantized == (mode == "int8")
    probs = predictor.predict(x)
    assert probs.dtype == np.float32 and probs.shape == expected.shape
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.02)  # real probabilities, not raw uint8
    # how far quantisation may move this tiny model is the export bounds' business (export/test_tflite.py); here:
    # the predictor's (de)quantisation equals a bare interpreter's with the scale/zero point applied by hand
    np.testing.assert_allclose(probs, raw_tflite_probs(tiny_exports["run"] / name, x[..., None].astype(np.float32)),
                               atol=1e-6)
    if mode == "dynamic":  # int8 rounding may flip close calls of this tiny model; dynamic-range does not
        np.testing.assert_array_equal(probs.argmax(1), expected.argmax(1))


def test_int8_input_takes_pixels_unchanged_and_clips_like_uint8(tiny_exports):
    """Float pixels give what their uint8 image gives; pixels above 255 answer like 255."""
    predictor = load_predictor(tiny_exports["run"] / "model_int8.tflite")
    assert predictor.quantized and predictor.input_dtype == np.uint8
    assert predictor.input_quantization == (pytest.approx(1.0), 0)  # uint8 = the pixel value
    _, x = split_pixels(tiny_exports["run"])
    np.testing.assert_array_equal(predictor.predict(x.astype(np.float32)), predictor.predict(x))
    brighter = x[:2].astype(np.float32) + 300.0
    np.testing.assert_array_equal(predictor.predict(brighter), predictor.predict(np.full_like(x[:2], 255)))


@pytest.mark.parametrize("shape", [(0, 32, 63), (1, 32, 63), (3, 32, 63, 1)])
def test_batch_shapes(tiny_exports, shape):
    predictor = load_predictor(tiny_exports["run"] / "model.tflite")
    probs = predictor.predict(np.full(shape, 128, dtype=np.uint8))
    assert probs.shape == (shape[0], len(predictor.labels.classes))
    if shape[0] > 1:
        np.testing.assert_allclose(probs, probs[:1].repeat(shape[0], axis=0), atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 32, 62), (1, 64, 63), (2, 63, 32, 1)])
def test_wrong_image_shape_is_refused(tiny_exports, shape):
    predictor = load_predictor(tiny_exports["run"] / "model_int8.tflite")
    with pytest.raises(SpectroError, match="does not match the model's input"):
        predictor.predict(np.zeros(shape, dtype=np.uint8))


def test_a_run_folder_means_its_keras_model_and_a_tflite_file_is_used_only_when_named(tiny_exports, tmp_path):
    run = tiny_exports["run"]  # model.keras beside three .tflite files
    assert {p.name for p in run.glob("*.tflite")} == {"model.tflite", "model_dynamic.tflite", "model_int8.tflite"}
    assert find_model(run) == (run / "model.keras", run)
    assert isinstance(load_predictor(run), KerasPredictor)
    named = load_predictor(run / "model_int8.tflite")
    assert isinstance(named, LiteRTPredictor) and named.path.name == "model_int8.tflite"
    # a folder of .tflite files only (spectro export --out): refused in one line that names them to choose from
    device = tmp_path / "device"
    device.mkdir()
    for name in ("config.json", "labels.json", "known_machines.npz", "model_int8.tflite", "model_dynamic.tflite"):
        shutil.copy(run / name, device / name)
    with pytest.raises(SpectroError, match=r"no model.keras in the folder .*name one of model_dynamic.tflite, "
                                           r"model_int8.tflite, e.g. .*device/model_dynamic.tflite") as refused:
        load_predictor(device)
    assert "\n" not in str(refused.value)
    assert load_predictor(device / "model_int8.tflite").path == device / "model_int8.tflite"


@pytest.mark.parametrize("content", [b"not a zip archive" * 20, b"PK\x03\x04 a zip header and nothing more"])
def test_a_damaged_keras_file_is_not_a_loadable_keras_model(tiny_run, tmp_path, content):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("*.keras")))
    (run / "model.keras").write_bytes(content)
    with pytest.raises(SpectroError, match=r"model.keras: not a loadable Keras model \(") as refused:
        load_predictor(run)
    assert "File not found" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_run_without_labels_or_with_a_damaged_config_is_refused_before_loading_the_model(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run / "labels.json").unlink()
    with pytest.raises(SpectroError, match=r"run: no labels.json \(the class labels\)"):
        find_model(run)
    shutil.copy(tiny_run / "labels.json", run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "input_shape": [32, "63"]}))
    with pytest.raises(SpectroError, match=r"config.json: 'input_shape' should be two positive integers"):
        find_model(run / "model.keras")


@pytest.mark.parametrize("case, message", [
    ("garbage", "not a loadable TFLite model"),
    ("missing", "no such model file"),
    ("labels_mismatch", "labels.json lists 3 classes"),
    ("shape_mismatch", "does not fit the run's images"),
    ("no_model", "no model.keras in the run folder"),
])
def test_bad_tflite_gives_clear_error(tiny_exports, tmp_path, case, message):
    run = tiny_exports["run"]
    device = tmp_path / "device"
    device.mkdir()
    for name in ("config.json", "labels.json", "known_machines.npz"):
        shutil.copy(run / name, device)
    target = device / "model.tflite"
    if case == "garbage":
        target.write_bytes(b"not a flatbuffer at all" * 10)
    elif case != "missing" and case != "no_model":
        shutil.copy(run / "model.tflite", target)
    if case == "labels_mismatch":
        labels = json.loads((device / "labels.json").read_text())
        labels["classes"] = labels["classes"][:3]
        (device / "labels.json").write_text(json.dumps(labels))
    if case == "shape_mismatch":
        config = json.loads((device / "config.json").read_text())
        config["input_shape"] = [32, 40]
        (device / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpectroError, match=message):
        load_predictor(device if case == "no_model" else target)


_SCRIPT = """
import sys
import numpy as np
from spectro.inference.predictors import load_predictor
from spectro.features.png import read_pixels
p = load_predictor(sys.argv[1])
probs = p.predict(read_pixels(sys.argv[2])[None])
print(repr(p.labels.predicted(probs)[0]), f"{float(p.labels.anomaly_score(probs)[0]):.3f}",
      "tensorflow" in sys.modules, "keras" in sys.modules)
"""


def test_tflite_path_never_imports_tensorflow(tiny_exports):
    run = tiny_exports["run"]
    rows, _ = split_pixels(run)
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(run / "model_int8.tflite"), str(rows[0].path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _, score, tf_loaded, keras_loaded = done.stdout.split()
    assert (tf_loaded, keras_loaded) == ("False", "False")
    assert 0.0 <= float(score) <= 1.0


_CLI = """
import sys
from spectro.cli import main
rc = main(sys.argv[1:])
print("tensorflow loaded:", "tensorflow" in sys.modules, file=sys.stderr)
sys.exit(rc)
"""


def test_classify_cli_same_verdicts_tflite_and_keras(tiny_exports):
    """``spectro classify --model x.tflite`` vs ``x.keras``: same verdicts, and no TensorFlow for the .tflite."""
    run = tiny_exports["run"]
    rows, _ = split_pixels(run)
    results = {}
    for name in ("model.keras", "model.tflite"):
        done = subprocess.run([sys.executable, "-c", _CLI, "classify", *(str(r.path) for r in rows), "--json",
                               "--model", str(run / name)], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"tensorflow loaded: {name.endswith('.keras')}" in done.stderr
        results[name] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results["model.keras"]) == len(rows)
    for key in ("path", "verdict", "predicted", "failure_type"):
        assert [r[key] for r in results["model.tflite"]] == [r[key] for r in results["model.keras"]]


_STREAM = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("tensorflow loaded:", "tensorflow" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


def test_stream_script_scores_every_window_without_tensorflow(tiny_exports, tmp_path):
    y = np.concatenate([tone_signal("normal", 2.0, seed=1), tone_signal("bearing", 2.0, seed=2)])
    wav = write_wav(tmp_path / "long.wav", y)
    run = tiny_exports["run"]
    done = subprocess.run([sys.executable, "-c", _STREAM, str(ROOT / "examples" / "stream_tflite.py"), str(wav),
                           "--model", str(run / "model_int8.tflite"), "--hop", "0.5", "--threshold", "0.6"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tensorflow loaded: False" in done.stderr
    # windows of 62 hops (0.992 s) every 0.5 s over 4 s: starts 0, 0.5, ..., 3.0
    settings = json.loads((run / "config.json").read_text())["features"]
    window = (json.loads((run / "config.json").read_text())["input_shape"][1] - 1) * settings["hop_length"]
    expected = 1 + (len(y) - window) // 8000
    lines = [line for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]
    window_lines = [line for line in lines if "-" in line.split()[0]]
    assert len(window_lines) == expected
    scores = [float(line.split()[1]) for line in window_lines]
    flags = [line.split()[2] for line in window_lines]
    assert flags == ["ABNORMAL" if s >= 0.6 else "ok" for s in scores]
    assert f"{expected} windows" in done.stdout
