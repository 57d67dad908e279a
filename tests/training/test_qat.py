"""spectro.training.qat: which outputs an int8 file keeps, the twin's rounding, and its shared weights."""

from __future__ import annotations

import numpy as np
import pytest

from spectro.training.qat import int8_twin, kept_layers


def _small_model():
    """conv -> BN -> ReLU6 (kept) -> conv -> BN (kept, a linear bottleneck) -> add (kept) -> pool (kept) -> softmax."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 2), name="x")
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(6.0, name="relu1")(h)
    p = keras.layers.Conv2D(4, 1, name="conv2")(h)
    p = keras.layers.BatchNormalization(name="bn2")(p)
    h = keras.layers.Add(name="add")([h, p])
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    h = keras.layers.Dropout(0.1, name="drop")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(h)
    return keras.Model(inputs, outputs)


def test_kept_layers_leave_out_what_the_converter_fuses_and_the_ends():
    assert kept_layers(_small_model()) == ["relu1", "bn2", "add", "pool"]


def test_kept_layers_look_inside_a_nested_backbone():
    from spectro.model.backbones import ModelSettings, build_model

    model, base, _ = build_model((16, 40), 3, ModelSettings(alpha=0.35, image_size=32, weights="none"))
    kept = kept_layers(model)
    assert kept[:3] == ["resize", "gray_to_rgb", "scale_to_pm1"] and kept[-1] == "pool"
    assert {"Conv1_relu", "block_1_expand_relu", "block_1_depthwise_relu", "block_1_project_BN", "block_2_add",
            "out_relu"} <= set(kept)
    # convolutions and the BatchNorms before a ReLU6 are fused; the backbone itself is no tensor of its own
    assert not {"Conv1", "bn_Conv1", "block_1_expand", "block_1_expand_BN", "block_1_project", "backbone",
                "classes", "dropout"} & set(kept)


def test_twin_rounds_each_kept_output_to_256_steps_of_its_calibrated_range():
    model = _small_model()
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(16, 8, 8, 2)).astype("float32")
    x = rng.normal(size=(5, 8, 8, 2)).astype("float32")
    twin = int8_twin(model, calibration, batch_size=4)

    # the same computation by hand in numpy, from the model's own weights, rounding where int8 does
    def conv(h, layer):
        import keras

        return keras.ops.convert_to_numpy(layer(h))

    def bn(h, layer):
        gamma, beta, mean, var = layer.get_weights()
        return gamma * (h - mean) / np.sqrt(var + layer.epsilon) + beta

    def forward(images, ranges=None):
        outs = {}

        def keep(name, value):
            outs[name] = value
            if ranges is None:
                return value
            low, high = ranges[name]
            scale = (high - low) / 255.0
            zero = np.round(-128.0 - low / scale)
            return (np.clip(np.round(value / scale) + zero, -128, 127) - zero) * scale

        h = keep("relu1", np.clip(bn(conv(images, model.get_layer("conv1")), model.get_layer("bn1")), 0, 6))
        p = keep("bn2", bn(conv(h, model.get_layer("conv2")), model.get_layer("bn2")))
        a = keep("add", h + p)
        pooled = keep("pool", a.mean(axis=(1, 2)))
        w, b = model.get_layer("out").get_weights()
        logits = pooled @ w + b
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True), outs

    _, calibrated = forward(calibration)
    ranges = {name: (min(0.0, float(v.min())), max(0.0, float(v.max()))) for name, v in calibrated.items()}
    expected, _ = forward(x, ranges)
    float_probs = model.predict(x, verbose=0)
    twin_probs = twin.predict(x, verbose=0)
    np.testing.assert_allclose(twin_probs, expected, atol=2e-5)
    assert np.abs(twin_probs - float_probs).max() > 1e-4  # it does round


def test_training_the_twin_trains_the_model_and_gradients_pass_the_rounding():
    import keras

    model = _small_model()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 8, 8, 2)).astype("float32")
    y = rng.integers(0, 3, size=32)
    twin = int8_twin(model, x)
    before = [w.copy() for w in model.get_weights()]
    twin.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    twin.fit(x, y, epochs=1, batch_size=32, verbose=0)
    conv1_before = before[0]
    assert not np.allclose(model.get_layer("conv1").get_weights()[0], conv1_before)  # below three roundings
    for mine, shared in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(mine, shared)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"])
def test_every_backbone_gets_a_twin_that_rounds_and_trains(backbone):
    import keras

    from spectro.model.backbones import ModelSettings, build_model

    model, _, _ = build_model((16, 40), 3, ModelSettings(backbone=backbone, alpha=1.0, image_size=32, weights="none"))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(8, 16, 40, 1)).astype("float32")
    twin = int8_twin(model, x)
    kept = kept_layers(model)
    assert len(kept) > 20 and "resize" in kept
    np.testing.assert_allclose(twin.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.05)  # same function
    twin.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    assert np.isfinite(twin.fit(x, rng.integers(0, 3, size=8), epochs=1, verbose=0).history["loss"][0])


def _pass_through_model():
    """pixels -> linear activation (its output is kept, so rounded) -> Dense(1) identity as the output."""
    import keras

    inputs = keras.Input((1,))
    kept = keras.layers.Activation("linear", name="act")(inputs)
    head = keras.layers.Dense(1, name="out")
    model = keras.Model(inputs, head(kept))
    head.set_weights([np.ones((1, 1), "float32"), np.zeros(1, "float32")])
    return model


def test_rounding_is_stochastic_and_unbiased_in_training_only():
    model = _pass_through_model()
    assert kept_layers(model) == ["act"]
    twin = int8_twin(model, np.array([[-1.0], [1.0]], dtype="float32"), seed=3)  # range [-1, 1]: steps of 2/255
    step = 2.0 / 255.0
    x = np.full((20000, 1), 0.3, dtype="float32")  # 38.25 steps: between step 38 and step 39
    trained = np.asarray(twin(x, training=True))[:, 0]
    assert set(np.round(trained / step).astype(int)) == {38, 39}
    assert abs(trained.mean() - 0.3) < 2e-4  # unbiased: 39 with probability 0.25
    assert abs(np.mean(np.round(trained / step) == 39) - 0.25) < 0.02
    inferred = np.asarray(twin(x, training=False))[:, 0]
    np.testing.assert_allclose(inferred, 38 * step, rtol=1e-6)  # nearest step, the same every time
    np.testing.assert_allclose(model.predict(x[:3], verbose=0), 0.3, rtol=1e-6)  # the model itself does not round
