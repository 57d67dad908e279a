"""spectro export: TFLite files in three modes, builtin ops only, verified against Keras.

Golden figures come from Keras itself (``keras.saving.load_model(...).predict``) and from the raw
``ai_edge_litert`` interpreter driven here, not from spectro's predictor classes.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from conftest import raw_tflite_probs, split_pixels

from spectro import cli
from spectro.errors import SpectroError, SpectroWarning
from spectro.export.tflite import (
    BOUNDS,
    Bounds,
    ExportSettings,
    Verification,
    export_run,
    tflite_ops,
    verification_rows,
)
from spectro.runs import TFLITE_NAMES, read_splits, write_splits

pytestmark = pytest.mark.slow
MODES = ("none", "dynamic", "int8")
# largest |p_tflite - p_keras| accepted for float32, the same computation up to rounding. The quantised
# files are judged by the export's bounds (top-1 agreement, AUC): a 32 px tiny model's dynamic-range file
# moves some probability by 0.07-0.28 depending only on the training seed (either input scaling).
FLOAT_PROB_TOLERANCE = 1e-4


def _test_split(run):
    """The test rows and their pixels as the models take them: float32 ``(n, n_mels, frames, 1)``."""
    rows, pixels = split_pixels(run, "test")
    return rows, pixels.astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def keras_test_probs(tiny_exports):
    import keras

    run = tiny_exports["run"]
    rows, x = _test_split(run)
    model = keras.saving.load_model(run / "model.keras", compile=False)
    return x, model.predict(x, verbose=0)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_writes_its_own_file_exactly_when_it_keeps_its_bounds(tiny_exports, mode):
    result = tiny_exports["results"][mode]
    figures = json.loads((tiny_exports["run"] / "config.json").read_text())["export"][mode]
    assert figures["passed"] is (result.path is not None) is (not result.failures)
    # the tiny test split has 4 x 4 normal/abnormal pairs, too few for the AUC bound: agreement decides
    assert figures["auc_pairs"] < 1 / BOUNDS[mode].max_auc_loss
    assert figures["passed"] is bool(figures["agreement"] >= BOUNDS[mode].min_agreement)
    if result.path is not None:
        assert result.path == tiny_exports["run"] / TFLITE_NAMES[mode] and result.path.is_file()
    if mode != "int8":  # float32 and dynamic-range keep their bounds; int8 of the tiny model may not
        assert result.path is not None
    assert len({TFLITE_NAMES[m] for m in MODES}) == 3  # all three can coexist


@pytest.mark.parametrize("mode", MODES)
def test_only_builtin_ops(tiny_exports, mode):
    from ai_edge_litert.interpreter import Interpreter

    path = tiny_exports["files"][mode]
    interpreter = Interpreter(model_path=str(path))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert ops and not [op for op in ops if "flex" in op.lower() or "custom" in op.lower()]
    assert set(tflite_ops(path)) == ops  # spectro's TF-free flatbuffer reader sees the same ops
    assert "CONV_2D" in ops and "SOFTMAX" in ops


@pytest.mark.parametrize("mode", MODES)
def test_tflite_agrees_with_keras_within_bounds(tiny_exports, keras_test_probs, mode):
    x, keras_probs = keras_test_probs
    path = tiny_exports["files"][mode]
    probs = raw_tflite_probs(path, x)
    agreement = np.mean(probs.argmax(1) == keras_probs.argmax(1))
    if mode != "int8":
        assert agreement >= BOUNDS[mode].min_agreement
    if mode == "none":
        assert np.abs(probs - keras_probs).max() <= FLOAT_PROB_TOLERANCE
    # the figures stored in config.json are the ones computed here, and decide whether the file was kept
    figures = json.loads((tiny_exports["run"] / "config.json").read_text())["export"][mode]
    assert figures["passed"] is bool(agreement >= BOUNDS[mode].min_agreement)
    assert figures["split"] == "test" and figures["n_images"] == len(x)
    assert figures["agreement"] == pytest.approx(agreement)
    assert figures["size_bytes"] == path.stat().st_size
    assert figures["max_prob_diff"] == pytest.approx(np.abs(probs - keras_probs).max(), abs=1e-6)
    assert figures["latency_ms"] > 0


def test_int8_has_exact_uint8_input_and_uint8_output(tiny_exports):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tiny_exports["files"]["int8"]))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and out["dtype"] == np.uint8
    scale, zero = inp["quantization"]
    assert scale == pytest.approx(1.0) and zero == 0  # a PNG's pixels go in unchanged


def test_int8_graph_is_the_same_function_with_its_scaling_as_one_convolution(tiny_run):
    import keras

    from spectro.export.tflite import int8_graph
    from spectro.model.backbones import ModelSettings, build_model, load_keras_model

    model = load_keras_model(tiny_run / "model.keras")
    graph = int8_graph(model)
    assert [layer.name for layer in graph.layers] == [layer.name for layer in model.layers]
    assert isinstance(graph.get_layer("scale_to_pm1"), keras.layers.DepthwiseConv2D)
    assert graph.get_layer("backbone") is model.get_layer("backbone")  # shared, not copied
    x = np.random.default_rng(0).integers(0, 256, (6, *model.input_shape[1:])).astype(np.float32)
    np.testing.assert_array_equal(graph.predict(x, verbose=0), model.predict(x, verbose=0))
    v3, _, _ = build_model((16, 40), 2, ModelSettings(backbone="mobilenet_v3_small", alpha=0.75, image_size=32,
                                                      weights="none"))
    assert int8_graph(v3) is v3  # scales itself: nothing to replace


def test_int8_file_resizes_and_scales_pixels_without_rounding(tiny_exports):
    """The int8 file's resized image is Keras' resized image, and its scaled image exactly pixel / 128 - 1."""
    import keras
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from spectro.model.backbones import load_keras_model

    interpreter = Interpreter(model_path=str(tiny_exports["files"]["int8"]), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    names = [op["op_name"] for op in ops]
    first_conv = names.index("CONV_2D")
    assert names[:first_conv] == ["QUANTIZE", "RESIZE_NEAREST_NEIGHBOR", "CONCATENATION", "DEPTHWISE_CONV_2D"]
    resized, scaled = (tensors[ops[i]["outputs"][0]] for i in (1, 3))
    assert scaled["quantization"] == (1 / 128, 0)
    _, x = _test_split(tiny_exports["run"])
    model = load_keras_model(tiny_exports["run"] / "model.keras")
    keras_resized = keras.Model(model.input, model.get_layer("resize").output).predict(x[:3], verbose=0)
    inp = interpreter.get_input_details()[0]
    for image, expected in zip(x[:3], keras_resized):
        interpreter.set_tensor(inp["index"], image[None].astype(np.uint8))
        interpreter.invoke()
        scale, zero = resized["quantization"]
        pixels = (interpreter.get_tensor(resized["index"]).astype(np.float64) - zero) * scale
        np.testing.assert_array_equal(pixels[0], expected)
        value = interpreter.get_tensor(scaled["index"]).astype(np.float64) / 128
        np.testing.assert_array_equal(value, np.repeat(pixels, 3, axis=-1) / 128 - 1)


def test_quantised_files_are_smaller(tiny_exports):
    sizes = {m: tiny_exports["files"][m].stat().st_size for m in MODES}
    assert sizes["int8"] < 0.5 * sizes["none"]
    assert sizes["dynamic"] < 0.5 * sizes["none"]


def _copy_run(src, dst, *, drop=(), split_filter=None):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.tflite"))
    for name in drop:
        (dst / name).unlink()
    if split_filter is not None:
        write_splits(dst, [r for r in read_splits(src) if split_filter(r.split)])
    return dst


@pytest.mark.parametrize("case, message", [
    ("no_model", "no model.keras to export"),
    ("no_config", "not a spectro run folder"),
    ("missing", "no such run folder"),
    ("no_train_split", "no 'train' rows"),
    ("no_test_or_val", "no test or val images"),
])
def test_bad_run_folders_give_clear_errors(tiny_run, tmp_path, case, message):
    run = tmp_path / "run"
    if case == "no_model":
        _copy_run(tiny_run, run, drop=["model.keras"])
    elif case == "no_config":
        _copy_run(tiny_run, run, drop=["config.json"])
    elif case == "no_train_split":
        _copy_run(tiny_run, run, split_filter=lambda s: s != "train")
    elif case == "no_test_or_val":
        _copy_run(tiny_run, run, split_filter=lambda s: s == "train")
    with pytest.raises(SpectroError, match=message):
        export_run(run, ExportSettings(quantize=("int8",)), progress=False)
    if run.exists():
        assert not list(run.glob("*.tflite"))


def test_cli_error_is_one_line_exit_2(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path / "run", drop=["model.keras"])
    assert cli.main(["export", str(run), "--quantize", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.keras" in err and "Traceback" not in err


def test_verification_falls_back_to_val_with_a_warning(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "run", split_filter=lambda s: s != "test")
    with pytest.warns(SpectroWarning, match="no test rows"):
        split, rows = verification_rows(run)
    assert split == "val" and rows and all(r.split == "val" for r in rows)


def _reuse_conversion(monkeypatch, run):
    """Skip the TF converter (tested by ``tiny_exports``): hand back the session's converted bytes."""
    import spectro.export.tflite as export

    monkeypatch.setattr(export, "convert", lambda model, mode, representative=None, **options:
                        (run / TFLITE_NAMES[mode]).read_bytes())


def test_cli_out_dir_is_self_contained(tiny_exports, tmp_path, capsys, monkeypatch):
    from spectro.inference.predictors import load_predictor

    run, out = tiny_exports["run"], tmp_path / "device"
    _reuse_conversion(monkeypatch, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectroWarning)
        assert cli.main(["export", str(run), "--quantize", "none", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agree" in printed and "model.tflite" in printed
    # with the known-machine profiles every run's score reads
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "known_machines.npz", "labels.json", "model.tflite"]
    assert json.loads((out / "labels.json").read_text()) == json.loads((run / "labels.json").read_text())
    run_config, device_config = (json.loads((d / "config.json").read_text()) for d in (run, out))
    assert device_config["features"] == run_config["features"]
    assert device_config["input_shape"] == run_config["input_shape"]
    assert device_config["threshold"]["value"] == 0.5  # the run was never evaluated
    assert device_config["export"]["none"]["passed"] is True
    # the folder alone is enough to classify with
    _, x = _test_split(run)
    probs = load_predictor(out / "model.tflite").predict(x)
    np.testing.assert_allclose(probs, raw_tflite_probs(out / "model.tflite", x), atol=1e-6)


def test_cli_bias_correction_is_on_unless_switched_off_and_recorded(tiny_exports, tmp_path, monkeypatch):
    import spectro.export.tflite as export

    asked = []

    def conversion(model, mode, representative=None, *, bias_correction=True, embedding=None):
        asked.append(bias_correction)
        return tiny_exports["files"]["int8"].read_bytes()

    monkeypatch.setattr(export, "convert", conversion)
    run = tiny_exports["run"]
    for flags, folder in (([], "corrected"), (["--no-bias-correction"], "plain")):
        assert cli.main(["export", str(run), "--quantize", "int8", "--no-verify", "--out", str(tmp_path / folder),
                         *flags]) == 0
    assert asked == [True, False]
    recorded = [json.loads((tmp_path / f / "config.json").read_text())["export"]["int8"]["bias_correction"]
                for f in ("corrected", "plain")]
    assert recorded == [True, False]


def test_model_missing_its_bounds_is_not_written(tiny_exports, tmp_path, monkeypatch, capsys):
    import spectro.export.tflite as export

    monkeypatch.setitem(export.BOUNDS, "none", Bounds(min_agreement=1.01, max_auc_loss=0.005))
    _reuse_conversion(monkeypatch, tiny_exports["run"])
    out = tmp_path / "device"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectroWarning)
        assert cli.main(["export", str(tiny_exports["run"]), "--quantize", "none", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "missed its bounds" in captured.err and "top-1 agreement 100.0% < 101.0%" in captured.err
    assert "FAIL" in captured.out
    assert not (out / "model.tflite").exists() and not list(out.glob(".*tmp"))
    assert json.loads((out / "config.json").read_text())["export"]["none"]["passed"] is False


def _verification(**changes):
    base = dict(mode="int8", split="test", n_images=200, agreement=1.0, keras_auc=0.95, tflite_auc=0.95,
                max_prob_diff=0.01, auc_pairs=10000, size_bytes=1, keras_size_bytes=3, latency_ms=1.0,
                input_dtype="uint8", input_quantization=(1.0, 0))
    base.update(changes)
    return Verification(**base)


@pytest.mark.parametrize("changes, bounds, expected", [
    ({}, Bounds(0.98, 0.01), []),
    ({"agreement": 0.975}, Bounds(0.98, 0.01), ["top-1 agreement"]),
    ({"agreement": 0.98}, Bounds(0.98, 0.01), []),
    ({"tflite_auc": 0.939}, Bounds(0.98, 0.01), ["anomaly AUC"]),
    ({"tflite_auc": 0.9405}, Bounds(0.98, 0.01), []),
    ({"tflite_auc": 0.97}, Bounds(0.98, 0.01), []),  # a gain is not a loss
    ({"agreement": 0.5, "tflite_auc": 0.5}, Bounds(0.98, 0.01), ["top-1 agreement", "anomaly AUC"]),
    ({"keras_auc": None, "tflite_auc": None}, Bounds(0.98, 0.01), []),  # one class only: AUC n/a
    ({"tflite_auc": 0.5, "auc_pairs": 99}, Bounds(0.98, 0.01), []),  # too few pairs to test 0.01
    ({"tflite_auc": 0.5, "auc_pairs": 100}, Bounds(0.98, 0.01), ["anomaly AUC"]),
    ({"agreement": 0.994}, BOUNDS["none"], ["top-1 agreement"]),
    ({"agreement": 0.995}, BOUNDS["none"], []),
])
def test_verification_bounds(changes, bounds, expected):
    failures = _verification(**changes).failures(bounds)
    assert len(failures) == len(expected)
    for failure, start in zip(failures, expected):
        assert failure.startswith(start)


@pytest.mark.parametrize("kwargs, message", [
    ({"quantize": ()}, "--quantize takes"),
    ({"quantize": ("int4",)}, "--quantize takes"),
    ({"representative": 0}, "--representative"),
])
def test_export_settings_validate(kwargs, message):
    with pytest.raises(SpectroError, match=message):
        ExportSettings(**kwargs)


@pytest.mark.slow
def test_a_windowed_model_is_verified_on_windows_and_classifies_through_litert(tiny_window_run, tiny_images,
                                                                              tmp_path):
    from spectro.inference.classify import classify_paths

    run = shutil.copytree(tiny_window_run, tmp_path / "run")
    (result,) = export_run(run, ExportSettings(quantize=("none",), latency_runs=2), progress=False)
    assert result.path is not None and not result.failures
    test = read_splits(run, "test")
    assert result.verification.n_images == 3 * len(test)  # every window of each test clip: 0, 16, 31
    paths = [r.path for r in test]
    keras_results, _ = classify_paths(paths, run / "model.keras")
    lite_results, _ = classify_paths(paths, result.path)
    np.testing.assert_allclose([r["anomaly_score"] for r in lite_results],
                               [r["anomaly_score"] for r in keras_results], atol=1e-4)
