"""Bias correction for int8 export: the rounding it models is the converter's, the shift it removes is the
mean error of Keras forward passes with that rounding, and a file that needs it gets it.

The references are independent of the code under test: the int8 weights TFLite itself writes, and Keras
forward passes with the rounded weights put in.
"""

from __future__ import annotations

import numpy as np
import pytest

from spectro.export.bias_correction import correct_biases, folded_kernel, rounding_error, targets
from spectro.model.backbones import copy_model

pytestmark = pytest.mark.slow


def _calibration(run, n):
    from spectro.export.calibration import representative_images
    from spectro.runs import load_config

    config = load_config(run)
    return representative_images(run, n, input_shape=tuple(config["input_shape"]),
                                 image_size=config["model"]["image_size"])


@pytest.fixture(scope="module")
def tiny_model(tiny_run):
    from spectro.model.backbones import load_keras_model

    return load_keras_model(tiny_run / "model.keras")


def _file_weights(flatbuffer: bytes) -> list[np.ndarray]:
    """Every per-channel int8 weight tensor in a .tflite file, dequantised (TFLite's own layout)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    weights = []
    for detail in interpreter.get_tensor_details():
        params = detail["quantization_parameters"]
        if detail["dtype"] != np.int8 or len(params["scales"]) < 2:
            continue
        q = interpreter.get_tensor(detail["index"]).astype(np.float64)
        shape = [1] * q.ndim
        shape[params["quantized_dimension"]] = len(params["scales"])
        weights.append(q * np.asarray(params["scales"]).reshape(shape))
    return weights


def _tflite_layout(kernel: np.ndarray, kind: str) -> np.ndarray:
    if kind == "Conv2D":  # (kh, kw, in, out) -> (out, kh, kw, in)
        return np.transpose(kernel, (3, 0, 1, 2))
    if kind == "DepthwiseConv2D":  # (kh, kw, c, m) -> (1, kh, kw, c * m)
        return kernel.reshape(1, kernel.shape[0], kernel.shape[1], -1)
    return kernel.T  # Dense (in, out) -> (out, in)


def test_targets_are_every_weighted_layer_with_its_folded_batchnorm(tiny_model):
    found = {t.layer.name: (t.batch_norm.name if t.batch_norm is not None else None) for t in targets(tiny_model)}
    # MobileNetV2: Conv1, 17 blocks (16 with an expansion) of depthwise + project, Conv_1, then the head
    assert len(found) == 1 + 16 + 2 * 17 + 1 + 1
    assert found["Conv1"] == "bn_Conv1"
    assert found["expanded_conv_depthwise"] == "expanded_conv_depthwise_BN"
    assert found["block_16_project"] == "block_16_project_BN"
    assert found["classes"] is None  # the head has its own bias


def test_rounding_is_the_converters(tiny_run, tiny_model):
    """Folded weights + modelled rounding error == the int8 weights TFLite writes, for every target."""
    from spectro.export.tflite import convert

    written = _file_weights(convert(tiny_model, "int8", _calibration(tiny_run, 50), bias_correction=False))
    for target in targets(tiny_model):
        kind = type(target.layer).__name__
        kernel = folded_kernel(target.layer, target.batch_norm)
        expected = _tflite_layout(kernel + rounding_error(kernel, kind), kind)
        same = [w for w in written if w.shape == expected.shape and np.allclose(w, expected, rtol=0,
                                                                                   atol=1e-6 * np.abs(expected).max())]
        assert same, f"{target.layer.name}: no weight tensor in the int8 file matches the modelled rounding"


@pytest.mark.parametrize("name", ["expanded_conv_depthwise", "block_1_project", "Conv1"])
def test_shift_removed_is_the_mean_error_of_the_rounded_layer(tiny_run, tiny_model, name):
    """Put the rounded weights into the layer and run Keras: the mean change of the BatchNorm's output over
    the calibration images is the correction, with the opposite sign."""
    import keras

    calibration = _calibration(tiny_run, 40)
    corrected = copy_model(tiny_model)
    correct_biases(corrected, calibration)
    base = tiny_model.get_layer("backbone")
    layer, bn = base.get_layer(name), base.get_layer(f"{name}_BN" if name != "Conv1" else "bn_Conv1")
    removed = np.asarray(corrected.get_layer("backbone").get_layer(bn.name).beta) - np.asarray(bn.beta)

    # training=False throughout: a training-mode call would use (and update) batch statistics
    scaled = keras.Model(tiny_model.input, tiny_model.get_layer("scale_to_pm1").output)(calibration, training=False)
    probe = keras.Model(base.input, bn.output)
    before = np.asarray(probe(scaled, training=False), dtype=np.float64)
    kernel = np.asarray(layer.kernel, dtype=np.float64)
    k = np.asarray(bn.gamma, dtype=np.float64) / np.sqrt(np.asarray(bn.moving_variance, dtype=np.float64) + bn.epsilon)
    kind = type(layer).__name__
    k = k[None, None, :, None] if kind == "DepthwiseConv2D" else k  # BatchNorm scales the output channels
    folded = kernel * k
    layer.kernel.assign(((folded + rounding_error(folded, kind)) / k).astype(np.float32))
    try:
        after = np.asarray(probe(scaled, training=False), dtype=np.float64)
    finally:
        layer.kernel.assign(kernel)
    mean_error = (after - before).reshape(-1, after.shape[-1]).mean(axis=0)
    assert np.abs(mean_error).max() > 1e-4  # there is a shift to remove
    np.testing.assert_allclose(removed, -mean_error, atol=2e-5 + 1e-3 * np.abs(mean_error).max())


def test_head_shift_is_the_mean_logit_error(tiny_run, tiny_model):
    import keras

    calibration = _calibration(tiny_run, 40)
    corrected = copy_model(tiny_model)
    correct_biases(corrected, calibration)
    head = tiny_model.get_layer("classes")
    pooled = np.asarray(keras.Model(tiny_model.input, tiny_model.get_layer("pool").output)(calibration, training=False),
                        dtype=np.float64)
    kernel = np.asarray(head.kernel, dtype=np.float64)
    mean_error = (pooled @ rounding_error(kernel, "Dense")).mean(axis=0)
    removed = np.asarray(corrected.get_layer("classes").bias) - np.asarray(head.bias)
    np.testing.assert_allclose(removed, -mean_error, atol=1e-6 + 1e-4 * np.abs(mean_error).max())


def test_correction_leaves_the_model_it_was_given_to_the_caller(tiny_run, tiny_model):
    """spectro export corrects a copy: the model it verifies against keeps its weights."""
    from spectro.export.tflite import int8_graph

    before = [np.asarray(w).copy() for w in tiny_model.weights]
    int8_graph(tiny_model, _calibration(tiny_run, 20))
    for old, new in zip(before, tiny_model.weights):
        np.testing.assert_array_equal(old, np.asarray(new))


def _edge_filter_model(seed: int = 0):
    """Pixels -> 3x3 convolution with large, nearly cancelling taps -> BatchNorm -> mean per channel.

    Such filters (ImageNet's first depthwise layer has them) barely respond to smooth images, but rounding
    their big taps to int8 moves each filter's sum and so shifts every output of the channel.
    """
    import keras

    rng = np.random.default_rng(seed)
    taps = rng.normal(size=(3, 3, 1, 6))
    taps -= taps.mean(axis=(0, 1), keepdims=True)
    taps = 40.0 * taps / np.abs(taps).max(axis=(0, 1), keepdims=True) + rng.normal(0, 0.1, size=taps.shape)
    inputs = keras.Input((24, 24, 1))
    conv = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)
    bn = keras.layers.BatchNormalization()
    outputs = keras.layers.GlobalAveragePooling2D()(bn(conv(inputs), training=False))
    model = keras.Model(inputs, outputs)
    conv.kernel.assign(taps.astype(np.float32))
    bn.moving_variance.assign(np.full(6, 4.0, dtype=np.float32))
    bn.beta.assign(np.full(6, 3.0, dtype=np.float32))
    return model


def _smooth_images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    level = rng.uniform(60, 200, size=(n, 1, 1, 1))
    ramp = np.linspace(-20, 20, 24)[None, :, None, None] * rng.uniform(-1, 1, size=(n, 1, 1, 1))
    return np.clip(level + ramp + rng.normal(0, 2, size=(n, 24, 24, 1)), 0, 255).astype(np.float32)


def _run_tflite(flatbuffer: bytes, x: np.ndarray) -> tuple[np.ndarray, float]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
    values = []
    for image in x:
        quantised = np.clip(np.rint(image[None] / in_scale + in_zero), 0, 255).astype(np.uint8)
        interpreter.set_tensor(inp["index"], quantised)
        interpreter.invoke()
        values.append((interpreter.get_tensor(out["index"])[0].astype(np.float64) - out_zero) * out_scale)
    return np.array(values), out_scale


def test_bias_correction_removes_the_shift_from_the_int8_file():
    from spectro.export.tflite import convert

    model = _edge_filter_model()
    calibration, x = _smooth_images(64, seed=1), _smooth_images(64, seed=2)
    keras_out = model.predict(x, verbose=0)
    shifts = {}
    for corrected in (False, True):
        out, step = _run_tflite(convert(model, "int8", calibration, bias_correction=corrected), x)
        shifts[corrected] = np.abs((out - keras_out).mean(axis=0))
    print(f"mean shift of the int8 file's outputs: {shifts[False].round(3)} uncorrected, "
          f"{shifts[True].round(3)} corrected (output step {step:.3f})")
    assert shifts[False].max() > 10 * step  # rounding the taps shifts the outputs by many steps
    assert shifts[True].max() < 2 * step  # corrected, what is left is the output's own rounding
