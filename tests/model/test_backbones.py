"""Backbones, in-model preprocessing, weights given by path, unfreezing the top of the base."""

from __future__ import annotations

import numpy as np
import pytest

from spectro.errors import SpectroError
from spectro.model.backbones import ModelSettings, build_model, load_backbone, load_keras_model, unfreeze_top

TINY = dict(alpha=0.35, image_size=32)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A weights file saved from a tiny randomly initialised backbone."""
    import keras

    keras.utils.set_random_seed(123)
    base, used = load_backbone(ModelSettings(weights="none", **TINY))
    assert used == "none"
    path = tmp_path_factory.mktemp("weights") / "w.weights.h5"
    base.save_weights(path)
    return path, [w.copy() for w in base.get_weights()]


def test_weights_given_by_path_are_loaded_and_base_frozen(weights_file):
    import keras

    path, expected = weights_file
    keras.utils.set_random_seed(7)  # a different init: only loading can make the weights equal
    model, base, used = build_model((16, 40), 3, ModelSettings(weights=str(path), **TINY))
    assert used == str(path)
    got = base.get_weights()
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert not base.trainable  # pretrained: frozen while the head trains
    assert model.output_shape == (None, 3)


IMAGENET_TINY = dict(alpha=0.35, image_size=96)  # a size Keras has ImageNet weights for: it looks for this file
CACHED_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache folder (``$KERAS_HOME``), where ``weights="imagenet"`` looks for its file first."""
    from keras.src.backend import config

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


def test_imagenet_weights_are_found_by_name_in_the_keras_cache(keras_home):
    """``--weights imagenet`` offline: the file put where Keras caches downloads is loaded, no network needed."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(11)
    saved, _ = load_backbone(ModelSettings(weights="none", **IMAGENET_TINY))
    (keras_home / "models").mkdir()
    with h5py.File(keras_home / "models" / CACHED_NAME, "w") as f:  # the format of Keras' own weight files
        legacy_h5_format.save_weights_to_hdf5_group(f, saved)
    keras.utils.set_random_seed(12)  # a different init: only loading can make the weights equal
    base, used = load_backbone(ModelSettings(weights="imagenet", **IMAGENET_TINY))
    assert used == "imagenet"
    for a, b in zip(base.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def offline(keras_home, monkeypatch):
    """No network: Keras' download fails as it does here; the list collects the file names Keras asked for."""
    from keras.src.utils import file_utils

    wanted = []

    def get_file(fname, origin=None, **kwargs):
        wanted.append(fname)
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno 101] Network is unreachable")

    monkeypatch.setattr(file_utils, "get_file", get_file)
    return wanted


def test_imagenet_weights_that_cannot_be_had_fall_back_to_random_init_with_one_warning(keras_home, offline):
    import warnings

    from spectro.errors import SpectroWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        base, used = load_backbone(ModelSettings(weights="imagenet", **IMAGENET_TINY))
    assert used == "none" and base.trainable
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and caught[0].category is SpectroWarning
    assert CACHED_NAME in messages[0]  # the reason names the file Keras wanted
    assert "--weights PATH" in messages[0] and f"{keras_home}/models/" in messages[0]
    assert "--weights none to silence" in messages[0]


def test_the_width_follows_the_weights_unless_given():
    from spectro.model.backbones import PRETRAINED_ALPHA, SCRATCH_ALPHA

    assert ModelSettings().alpha is None
    assert (PRETRAINED_ALPHA, SCRATCH_ALPHA) == (1.0, 0.75)
    assert ModelSettings().width(pretrained=True) == 1.0 and ModelSettings().width(pretrained=False) == 0.75
    assert ModelSettings(alpha=0.35).width(pretrained=True) == 0.35  # a width given is kept
    assert ModelSettings(weights="none").resolved("none").alpha == 0.75
    assert ModelSettings().resolved("imagenet").alpha == 1.0 and ModelSettings().resolved("/w.h5").alpha == 1.0
    base, used = load_backbone(ModelSettings(weights="none", image_size=32))
    assert used == "none" and base.name == "mobilenetv2_0.75_32"  # Keras names the model by its width and size


def test_imagenet_weights_that_cannot_be_had_build_the_random_initialisation_width(offline):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base, used = load_backbone(ModelSettings(weights="imagenet", image_size=96))
    # the pretrained width was asked for, and the fallback is the width random initialisation was measured at
    assert offline == ["mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"]
    assert used == "none" and base.name == "mobilenetv2_0.75_96"


@pytest.mark.parametrize("settings, message", [
    (dict(weights="/nonexistent/w.weights.h5"), "not found"),
    (dict(backbone="resnet"), "unknown backbone"),
    (dict(image_size=16), "image size"),
    (dict(alpha=0.0), "alpha"),
    (dict(embedding="final"), "unknown embedding"),
])
def test_bad_model_settings_raise(settings, message):
    with pytest.raises(SpectroError, match=message):
        build_model((16, 40), 3, ModelSettings(**{**TINY, **settings}))


def test_weights_file_for_another_backbone_is_a_clear_error(weights_file, tmp_path):
    import warnings

    path, _ = weights_file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SpectroError, match="cannot load weights"):
            load_backbone(ModelSettings(backbone="mobilenet_v2", alpha=1.0, image_size=32, weights=str(path)))
    # the error says it once: not also a Keras warning per layer that did not fit ("Skipping nested container ...")
    assert [str(w.message) for w in caught] == []


def test_warnings_of_a_load_that_succeeds_are_passed_on_once():
    import warnings

    from spectro.model.backbones import _quietly

    def noisy():
        warnings.warn("a note from Keras", UserWarning, stacklevel=1)
        return 7

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # once even so: loading the next model does not repeat Keras' notes
        assert _quietly(noisy) == 7 and _quietly(noisy) == 7
    assert [str(w.message) for w in caught] == ["a note from Keras"]


def test_mobilenet_v2_scales_pixels_to_plus_minus_one_in_steps_of_1_128_inside_the_model():
    import keras

    model, base, used = build_model((16, 40), 2, ModelSettings(weights="none", **TINY))
    assert used == "none" and base.trainable
    probe = keras.Model(model.input, model.get_layer("scale_to_pm1").output)
    x = np.stack([np.full((16, 40, 1), v) for v in (0.0, 128.0, 255.0)]).astype("float32")
    out = probe.predict(x, verbose=0)
    assert out.shape == (3, 32, 32, 3)  # resized, gray -> 3 channels
    # pixel p -> p / 128 - 1: exact int8 values on a 1/128 grid (see spectro.export.tflite.int8_graph)
    np.testing.assert_array_equal(out[0], -1.0)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(out[2], 127 / 128)


def test_resize_copies_whole_pixels_by_default_and_interpolates_on_request():
    import keras

    x = np.arange(16 * 40, dtype="float32").reshape(1, 16, 40, 1) % 256
    for resize in ("nearest", "bilinear"):
        model, _, _ = build_model((16, 40), 2, ModelSettings(weights="none", resize=resize, **TINY))
        out = keras.Model(model.input, model.get_layer("resize").output).predict(x, verbose=0)
        assert out.shape == (1, 32, 32, 1)
        whole = np.isin(out, x).all()  # every resized pixel is one of the image's pixels
        assert whole if resize == "nearest" else not whole
    assert ModelSettings().resize == "nearest"
    with pytest.raises(SpectroError, match="unknown resize method 'bicubic': expected one of nearest, bilinear"):
        ModelSettings(resize="bicubic")


def test_the_stage_embedding_is_the_stride_8_and_16_maps_averaged_over_time_in_the_same_pass():
    import keras

    from spectro.model.backbones import with_embeddings

    keras.utils.set_random_seed(3)
    model, base, _ = build_model((16, 40), 3, ModelSettings(weights="none", **TINY))
    x = np.random.default_rng(0).integers(0, 256, size=(5, 16, 40, 1)).astype("float32")
    embedding, probs = (np.asarray(a) for a in with_embeddings(model, "stages").predict(x, verbose=0))
    # by hand: MobileNetV2's stage ends at 32 px are block_5_add (4x4 after three stride-2 steps) and block_12_add
    # (2x2); each averaged over its columns (time), its rows (frequency) kept
    scaled = keras.Model(model.input, model.get_layer("scale_to_pm1").output)(x, training=False)
    maps = keras.Model(base.input, [base.get_layer("block_5_add").output, base.get_layer("block_12_add").output])(
        scaled, training=False)
    assert [m.shape[1:3] for m in maps] == [(4, 4), (2, 2)]
    expected = np.concatenate([np.asarray(m).mean(axis=2).reshape(5, -1) for m in maps], axis=1)
    np.testing.assert_allclose(embedding, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    pooled, same = (np.asarray(a) for a in with_embeddings(model, "pool").predict(x, verbose=0))
    np.testing.assert_allclose(pooled, keras.Model(model.input, model.get_layer("pool").output)(x, training=False),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(same, probs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"])
def test_every_backbone_has_stage_ends_at_1_8_and_1_16(backbone):
    from spectro.model.backbones import stage_ends, with_embeddings

    model, base, _ = build_model((16, 40), 2, ModelSettings(backbone=backbone, weights="none", **TINY))
    ends = stage_ends(base)
    assert [base.get_layer(name).output.shape[1] for name in ends] == [4, 2]
    embedding, _ = with_embeddings(model, "stages").predict(np.zeros((1, 16, 40, 1), "float32"), verbose=0)
    assert embedding.shape == (1, sum(rows * base.get_layer(name).output.shape[-1]
                                      for rows, name in zip((4, 2), ends)))


def test_a_run_names_its_embedding():
    from spectro.runs import embedding_of

    assert embedding_of({"model": {"embedding": "stages"}}) == "stages"


def test_mobilenet_v3_gets_no_second_scaling():
    model, _, _ = build_model((16, 40), 2, ModelSettings(backbone="mobilenet_v3_small", weights="none", **TINY))
    names = [layer.name for layer in model.layers]
    assert "scale_to_pm1" not in names  # MobileNetV3 rescales 0..255 itself
    probs = model.predict(np.full((1, 16, 40, 1), 128.0, "float32"), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_unfreeze_top_keeps_batchnorm_frozen():
    import keras

    _, base, _ = build_model((16, 40), 2, ModelSettings(weights="none", **TINY))
    count = unfreeze_top(base, 20)
    top = base.layers[-20:]
    assert count == sum(not isinstance(layer, keras.layers.BatchNormalization) for layer in top)
    assert all(not layer.trainable for layer in base.layers[:-20])
    assert all(layer.trainable != isinstance(layer, keras.layers.BatchNormalization) for layer in top)


def test_load_keras_model_missing_file(tmp_path):
    with pytest.raises(SpectroError, match="no such model file"):
        load_keras_model(tmp_path / "model.keras")
