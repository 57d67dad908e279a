"""The CNN: a Keras application backbone behind in-model preprocessing, and a new softmax head.

The model takes a spectrogram PNG's raw pixels (float32 0…255, shape ``(n_mels, frames, 1)``) and does
its own preprocessing — resize to ``image_size`` square, gray → 3 channels, the backbone's own scaling
— so the ``.keras`` and ``.tflite`` files need nothing re-implemented around them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from spectro.errors import SpectroError, SpectroWarning

BACKBONES = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")
IMAGENET_SIZES = (96, 128, 160, 192, 224)
RESIZE_METHODS = ("nearest", "bilinear")
BASE_NAME = "backbone"
HEAD_NAME = "classes"
EMBEDDING_NAME = "pool"  # the pooled backbone features before the head (the "pool" embedding)
# What a normal-only run's scores compare (spectro.scoring.references), see ModelSettings.embedding
EMBEDDINGS = ("stages", "pool")
STAGE_STRIDES = (8, 16)
SCALE_NAME = "scale_to_pm1"
PRETRAINED_ALPHA = 1.0  # ModelSettings.alpha None: the width with pretrained weights
SCRATCH_ALPHA = 0.75  # and from random initialisation


@dataclass(frozen=True)
class ModelSettings:
    """Backbone choice and head shape (stored in the run's ``config.json`` under ``model``)."""

    backbone: str = "mobilenet_v2"
    # The width multiplier; None: by the weights (:meth:`width`), 1.0 for pretrained weights and 0.75 from random
    # initialisation. 0.75 at 96 px from scratch: wide enough to learn the synthetic set, small enough to train in
    # minutes on a laptop CPU and to give an int8 file under a third of float32's size. 1.0 pretrained: the
    # ImageNet width the benchmarks measured with few clips per class
    # (docs/decisions/0006-pretrained-weights-and-width.md).
    alpha: float | None = None
    image_size: int = 96
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    dropout: float = 0.2
    # How the spectrogram is resized to image_size. Nearest copies whole pixels, so the int8 file resizes
    # exactly as Keras does; bilinear interpolates, and the int8 file rounds each interpolated pixel to a
    # whole level (docs/decisions/0005-int8-design.md). Both are builtin TFLite ops.
    resize: str = "nearest"
    # The model's input: a window of this many seconds of a clip's image (spectro.model.windows); training
    # draws random windows, scoring pools over all of a clip's windows. None: the whole image. 2 s was the best
    # of 1, 2 and 4 s on the tuning data (docs/decisions/0002-windows-and-clip-scores.md).
    window_seconds: float | None = 2.0
    # A window's embedding, what normal-only scores compare: "stages", the feature maps at the end of the
    # backbone's stride-8 and stride-16 stages, each averaged over time only (every frequency row kept), or
    # "pool", the globally pooled features before the head. stages scored higher on the built-in set, the real
    # sample and a held-out synthetic family (docs/decisions/0004-normal-only-objective.md): global pooling
    # discards which frequencies changed, and the last stage is the most specialised in telling the trained
    # machines apart.
    embedding: str = "stages"

    def __post_init__(self) -> None:
        check_embedding(self.embedding)
        if self.window_seconds is not None and not self.window_seconds > 0:
            raise SpectroError(f"window must be > 0 seconds (or None for whole images), got {self.window_seconds}")
        if self.backbone not in BACKBONES:
            raise SpectroError(f"unknown backbone {self.backbone!r}: expected one of {', '.join(BACKBONES)}")
        if not 32 <= self.image_size <= 1024:
            raise SpectroError(f"image size must be 32..1024 pixels, got {self.image_size}")
        if self.alpha is not None and not self.alpha > 0:
            raise SpectroError(f"alpha must be > 0, got {self.alpha}")
        if self.resize not in RESIZE_METHODS:
            raise SpectroError(f"unknown resize method {self.resize!r}: expected one of {', '.join(RESIZE_METHODS)}")

    def width(self, pretrained: bool) -> float:
        """The width multiplier a backbone is built with: ``alpha``, or when it is None
        :data:`PRETRAINED_ALPHA` for pretrained weights and :data:`SCRATCH_ALPHA` from random initialisation."""
        if self.alpha is not None:
            return self.alpha
        return PRETRAINED_ALPHA if pretrained else SCRATCH_ALPHA

    def resolved(self, weights_used: str) -> ModelSettings:
        """These settings with the width the backbone was built with (what a run's ``config.json`` records)."""
        return dataclasses.replace(self, alpha=self.width(weights_used != "none"))


def check_embedding(name: str) -> None:
    if name not in EMBEDDINGS:
        raise SpectroError(f"unknown embedding {name!r}: expected one of {', '.join(EMBEDDINGS)}")


def _backbone(settings: ModelSettings, weights):
    """The backbone of ``settings`` (its width resolved for ``weights``: ``None`` is random initialisation)."""
    import keras

    alpha = settings.width(weights is not None)
    shape = (settings.image_size, settings.image_size, 3)
    apps = keras.applications
    common = dict(include_top=False, weights=weights, input_shape=shape, pooling=None)
    if settings.backbone == "mobilenet_v2":
        return apps.MobileNetV2(alpha=alpha, **common)
    if settings.backbone == "mobilenet_v3_small":
        return apps.MobileNetV3Small(alpha=alpha, include_preprocessing=True, **common)
    if settings.backbone == "mobilenet_v3_large":
        return apps.MobileNetV3Large(alpha=alpha, include_preprocessing=True, **common)
    return apps.EfficientNetB0(**common)


# MobileNetV2 expects pixels in [-1, 1]. Keras' own preprocessing divides by 127.5; dividing by 128 maps
# 0…255 to [-1, 0.992] instead (0.4 % narrower, immaterial to ImageNet weights) and makes every scaled pixel
# an exact int8 value (scale 1/128, zero point 0), so the int8 file scales without rounding (see
# spectro.export.int8_graph). With 127.5 each scaled pixel lies half a step between int8 values.
PM1_SCALE = 1.0 / 128.0


def _scaling_layers(backbone: str):
    """The input scaling a backbone expects from 0…255 pixels (v3 and EfficientNet scale themselves)."""
    import keras

    if backbone == "mobilenet_v2":
        return [keras.layers.Rescaling(PM1_SCALE, offset=-1.0, name=SCALE_NAME)]
    return []


def load_backbone(settings: ModelSettings):
    """The backbone with the requested weights, and which weights it really has.

    ``imagenet`` that cannot be had (no network and no cached file) falls back to random
    initialisation with a one-line :class:`SpectroWarning` saying how to supply the file.

    Returns
    -------
    (keras.Model, str)
        The backbone (named ``backbone``) and the weights used: ``"imagenet"``, ``"none"`` or the path.
    """
    requested = settings.weights
    if requested == "none":
        return _backbone(settings, None), "none"
    if requested == "imagenet":
        try:
            base = _quietly(_backbone, settings, "imagenet")
            return base, "imagenet"
        except Exception as exc:  # network failure, missing cache file, unsupported shape
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            keras_home = os.environ.get("KERAS_HOME", str(Path.home() / ".keras"))
            warnings.warn(f"ImageNet weights for {settings.backbone} unavailable ({reason}); training from random "
                          f"initialisation, which needs more recordings (pretrained weights matter most with tens "
                          f"of clips per class). Supply them with --weights PATH or put the Keras weight file in "
                          f"{keras_home}/models/ (or pass --weights none to silence this)", SpectroWarning,
                          stacklevel=2)
            return _backbone(settings, None), "none"
    path = Path(requested)
    if not path.is_file():
        raise SpectroError(f"weights file {path} not found: expected 'imagenet', 'none' or a Keras .h5/.weights.h5 "
                           f"file")
    try:
        base = _quietly(_backbone, settings, str(path))
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise SpectroError(f"cannot load weights {path} into {settings.backbone} (alpha {settings.width(True)}): "
                           f"{reason}; weights of another width need --alpha") from None
    return base, str(path)


# the warnings _quietly passed on, by (message, category, file, line): its own record, because warnings' registries
# are cleared whenever the filters change, which catch_warnings does on every exit
_PASSED_ON: set[tuple] = set()


def _quietly(fn, *args):
    """``fn(*args)`` without Keras' notes on input shapes; its other warnings are passed on only when it succeeds
    (a weights file that does not fit makes Keras warn once per layer before it raises: the error says it once),
    and each only once per process (loading the next model does not repeat them)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", message=".*input_shape.*")
            warnings.filterwarnings("ignore", message=".*is not one of.*")
            result = fn(*args)
    finally:
        logger.setLevel(level)
    for w in caught:
        key = (str(w.message), w.category, w.filename, w.lineno)
        if key not in _PASSED_ON:
            _PASSED_ON.add(key)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def build_model(input_shape: tuple[int, int], n_classes: int, settings: ModelSettings):
    """Pixels in, fine-class softmax out.

    Parameters
    ----------
    input_shape : (int, int)
        ``(n_mels, frames)`` of the training images.
    n_classes : int
        Number of fine classes (``len(LabelSpace.classes)``).
    settings : ModelSettings

    Returns
    -------
    (keras.Model, keras.Model, str)
        The full model, its backbone (a nested model named ``backbone``, initially frozen when pretrained
        weights were loaded, trainable otherwise) and the weights really used.
    """
    import keras

    if n_classes < 2:
        raise SpectroError(f"need at least 2 classes to train a classifier, found {n_classes}")
    base, weights_used = load_backbone(settings)
    base.name = BASE_NAME
    base.trainable = weights_used == "none"

    inputs = keras.Input(shape=(int(input_shape[0]), int(input_shape[1]), 1), name="pixels")
    x = keras.layers.Resizing(settings.image_size, settings.image_size, interpolation=settings.resize,
                                  name="resize")(inputs)
    x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    for layer in _scaling_layers(settings.backbone):
        x = layer(x)
    # training=False keeps BatchNorm in inference mode while the base is frozen and during fine-tuning
    # (keras-io transfer-learning guide). A randomly initialised base is trained normally.
    x = base(x, training=False) if weights_used != "none" else base(x)
    x = keras.layers.GlobalAveragePooling2D(name=EMBEDDING_NAME)(x)
    x = keras.layers.Dropout(settings.dropout, name="dropout")(x)
    # float32 whatever the global policy: under mixed precision the softmax stays exact
    outputs = keras.layers.Dense(n_classes, activation="softmax", name=HEAD_NAME, dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=f"spectro_{settings.backbone}")
    return model, base, weights_used


def residual_ends(base) -> dict[int, str]:
    """By rows of its output, the name of the backbone's last residual ``Add`` layer at that resolution (the end of
    a stage: MobileNet and EfficientNet blocks end in such an add)."""
    return {layer.output.shape[1]: layer.name for layer in base.layers
            if type(layer).__name__ == "Add" and len(layer.output.shape) == 4}


def stage_ends(base) -> list[str]:
    """Names of the last residual ``Add`` layer at 1/8 and at 1/16 of the backbone's input resolution (the end of
    its stride-8 and stride-16 stages), in that order."""
    size = int(base.input.shape[1])
    ends = residual_ends(base)
    for stride in STAGE_STRIDES:
        if -(-size // stride) not in ends:
            raise SpectroError(f"backbone {base.name!r} has no residual block at 1/{stride} of its {size}-pixel input "
                               "(use the 'pool' embedding)")
    return [ends[-(-size // stride)] for stride in STAGE_STRIDES]


def preprocessed(model):
    """The symbolic tensor the nested backbone of a model of :func:`build_model` reads: its preprocessing's output
    (the model is a chain, so the layer before the backbone)."""
    base = model.get_layer(BASE_NAME)
    return model.layers[model.layers.index(base) - 1].output


def with_embeddings(model, embedding: str):
    """``model`` with two outputs: a window's embedding (:attr:`ModelSettings.embedding`) and the class softmax.

    ``stages`` reads the nested backbone's stage ends (:func:`stage_ends`) in the same pass that gives the
    softmax; each map ``(rows, columns, channels)`` is averaged over its columns (time) and flattened, and the
    two are concatenated. Keras and TFLite builtin layers only, so the export carries it too.
    """
    import keras

    check_embedding(embedding)
    if embedding == "pool":
        return keras.Model(model.input, [model.get_layer(EMBEDDING_NAME).output, model.output],
                           name=f"{model.name}_embeddings")
    base = model.get_layer(BASE_NAME)
    ends = stage_ends(base)
    inner = keras.Model(base.input, [*(base.get_layer(name).output for name in ends), base.output],
                        name=f"{BASE_NAME}_stages")
    *maps, top = inner(preprocessed(model))
    rows = [keras.layers.Flatten(name=f"{name}_rows")(
        keras.layers.AveragePooling2D(pool_size=(1, int(m.shape[2])), name=f"{name}_time_mean")(m))
        for name, m in zip(ends, maps)]
    embedding_out = keras.layers.Concatenate(name="stage_embedding")(rows)
    probs = model.get_layer(HEAD_NAME)(model.get_layer(EMBEDDING_NAME)(top))  # dropout is off in inference
    return keras.Model(model.input, [embedding_out, probs], name=f"{model.name}_embeddings")


def unfreeze_top(base, n_layers: int) -> int:
    """Make the top ``n_layers`` of ``base`` trainable, keeping BatchNorm layers frozen.

    Returns the number of layers made trainable.
    """
    import keras

    base.trainable = True
    layers = base.layers
    cut = max(0, len(layers) - int(n_layers))
    count = 0
    for i, layer in enumerate(layers):
        trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        count += int(trainable)
    return count


def copy_model(model):
    """An independent copy of ``model`` (nested models too) with the same weights, to change without touching it."""
    import keras

    copy = keras.models.clone_model(model, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def load_keras_model(path: str | Path):
    """Load a ``.keras`` model for inference (no compile state needed)."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise SpectroError(f"{path}: no such model file (expected a .keras file written by 'spectro train')")
    import zipfile

    # Keras answers "File not found" for a file that is there but is no zip archive: say what is wrong instead
    if not zipfile.is_zipfile(path):
        raise SpectroError(f"{path}: not a loadable Keras model (not a .keras zip archive: damaged or another "
                           "format); train the run again or restore the file")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise SpectroError(f"{path}: not a loadable Keras model ({reason})") from None
