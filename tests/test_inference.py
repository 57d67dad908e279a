"""load_predictor and the TF-free LiteRT predictor (float32 and quantised models)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spectro.errors import SpectroError
from spectro.inference import KerasPredictor, LiteRTPredictor, load_predictor

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _split_images(run, split="test"):
    from PIL import Image

    with (run / "splits.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == split]
    return rows, np.stack([np.asarray(Image.open(r["image"]), dtype=np.uint8) for r in rows])


@pytest.fixture(scope="module")
def keras_probs(tiny_exports):
    import keras

    run = tiny_exports["run"]
    _, x = _split_images(run)
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
    # how far quantisation may move this tiny model is the export bounds' business (test_export); here: the
    # predictor's (de)quantisation equals a bare interpreter's with the scale/zero point applied by hand
    from test_export import _raw_tflite_probs

    np.testing.assert_allclose(probs, _raw_tflite_probs(tiny_exports["run"] / name, x[..., None].astype(np.float32)),
                               atol=1e-6)
    if mode == "dynamic":  # int8 rounding may flip close calls of this tiny model; dynamic-range does not
        np.testing.assert_array_equal(probs.argmax(1), expected.argmax(1))


def test_int8_input_quantisation_is_applied(tiny_exports):
    """Pixels above 255 clip like a uint8 image would; quantised input equals the uint8 pixels."""
    predictor = load_predictor(tiny_exports["run"] / "model_int8.tflite")
    _, x = _split_images(tiny_exports["run"])
    image = x[0].astype(np.float32)
    assert predictor._quantize(image).dtype == np.uint8
    np.testing.assert_array_equal(predictor._quantize(image)[0], x[0])
    brighter = np.clip(image + 300.0, 0, None)
    np.testing.assert_array_equal(predictor._quantize(brighter)[0], np.full_like(x[0], 255))


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


def test_run_folder_prefers_keras_then_tflite(tiny_exports, tmp_path):
    assert isinstance(load_predictor(tiny_exports["run"]), KerasPredictor)
    device = tmp_path / "device"
    device.mkdir()
    for name in ("config.json", "labels.json", "model_int8.tflite", "model_dynamic.tflite"):
        shutil.copy(tiny_exports["run"] / name, device / name)
    predictor = load_predictor(device)
    assert isinstance(predictor, LiteRTPredictor) and predictor.path.name == "model_int8.tflite"


@pytest.mark.parametrize("case, message", [
    ("garbage", "not a loadable TFLite model"),
    ("missing", "no such model file"),
    ("labels_mismatch", "labels.json lists 3 classes"),
    ("shape_mismatch", "does not fit the run's images"),
    ("no_model", "no model in the run folder"),
])
def test_bad_tflite_gives_clear_error(tiny_exports, tmp_path, case, message):
    run = tiny_exports["run"]
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(run / "config.json", device)
    shutil.copy(run / "labels.json", device)
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
        config["input_shape"] = [64, 63]
        (device / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpectroError, match=message):
        load_predictor(device if case == "no_model" else target)


_SCRIPT = """
import sys, time
start = time.perf_counter()
import numpy as np
from spectro.inference import load_predictor
from spectro.images import read_pixels
p = load_predictor(sys.argv[1])
probs = p.predict(read_pixels(sys.argv[2])[None])
print(repr(p.labels.predicted(probs)[0]), f"{float(p.labels.anomaly_score(probs)[0]):.3f}",
      "tensorflow" in sys.modules, "keras" in sys.modules, f"{time.perf_counter() - start:.3f}")
"""


def _classify_subprocess(model, image):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(model), str(image)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    label, score, tf_loaded, keras_loaded, _ = done.stdout.split()
    return label, float(score), tf_loaded == "True", keras_loaded == "True", wall


def test_tflite_path_never_imports_tensorflow(tiny_exports):
    run = tiny_exports["run"]
    rows, _ = _split_images(run)
    label, score, tf_loaded, keras_loaded, _ = _classify_subprocess(run / "model_int8.tflite", rows[0]["image"])
    assert tf_loaded is False and keras_loaded is False
    assert 0.0 <= score <= 1.0


def _classify_cli_ready() -> bool:
    import spectro.predict

    return "not implemented" not in getattr(spectro.predict, "HELP", "not implemented")


_CLI = """
import sys
from spectro.cli import main
rc = main(sys.argv[1:])
print("tensorflow loaded:", "tensorflow" in sys.modules, file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.skipif(not _classify_cli_ready(), reason="spectro classify (issue 5) not implemented yet")
def test_classify_cli_same_verdicts_tflite_and_keras(tiny_exports):
    """``spectro classify --model x.tflite`` vs ``x.keras``: same verdicts, no TF, faster start-up."""
    run = tiny_exports["run"]
    rows, _ = _split_images(run)
    results, walls = {}, {}
    for name in ("model.keras", "model.tflite"):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _CLI, "classify", *(r["image"] for r in rows), "--json",
                               "--model", str(run / name)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        walls[name] = time.perf_counter() - start
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"tensorflow loaded: {name.endswith('.keras')}" in done.stderr
        results[name] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results["model.keras"]) == len(rows)
    for key in ("path", "verdict", "predicted", "failure_type"):
        assert [r[key] for r in results["model.tflite"]] == [r[key] for r in results["model.keras"]]
    print(f"\nspectro classify start-up, subprocess wall for {len(rows)} PNGs: "
          f".tflite {walls['model.tflite']:.2f} s, .keras {walls['model.keras']:.2f} s")
    assert walls["model.tflite"] < walls["model.keras"]


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
    from conftest import tone_signal, write_wav

    y = np.concatenate([tone_signal("normal", 2.0, seed=1), tone_signal("bearing", 2.0, seed=2)])
    wav = write_wav(tmp_path / "long.wav", y)
    run = tiny_exports["run"]
    done = subprocess.run([sys.executable, "-c", _STREAM, str(ROOT / "scripts" / "stream_tflite.py"), str(wav),
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
