"""Quantisation-aware fine-tuning: a twin of a model that rounds its tensors the way the int8 file will.

A full-integer TFLite file rounds the resized image to whole pixels (a bilinear resize's; a nearest resize
copies whole pixels) and every tensor it keeps to one of 256 steps of that tensor's calibrated range. A
model trained in float alone answers differently after that rounding on the images it finds hardest
(docs/decisions/0005-int8-design.md). The twin built here shares the model's layers, and so its
weights, and adds a :class:`FakeQuant` after each layer whose output the int8 file keeps: round to the
step, with the straight-through gradient of Jacob et al. (2018), "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference"; in training the rounding is stochastic (see
:class:`FakeQuant`).
Training the twin trains the model to answer the same with and without that rounding. The twin is never
saved; the model stays plain Keras.

The twin models the file's rounding noise; it is not a bit-exact copy of the file. Its weights stay float
and TFLite's kernels round in their own order, so on an image it lands about as far from the file as the
float model does. What it gives is a model trained to be insensitive to noise of that kind and size.

Which outputs the int8 file keeps: every layer's, except the layers whose every consumer the converter
fuses into them (a convolution followed by BatchNormalization, a BatchNormalization followed by its
activation), the model's input and output, dropout, and nested models (their own layers count instead).
Ranges are the min/max over calibration images, as the converter takes them.
"""

from __future__ import annotations

import numpy as np

FUSED_CONSUMERS = ("BatchNormalization", "ReLU", "Activation")
NOT_KEPT = ("InputLayer", "Dropout", "Functional", "Sequential", "Model")


def _layers(model) -> list:
    """Every layer of ``model``, nested models' layers included (after their model)."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_layers(layer))
    return out


def layer_graph(model) -> tuple[list, dict[int, list]]:
    """The layers an int8 file is made of (:func:`_layers` without :data:`NOT_KEPT`) and, by ``id`` of each
    tensor, the layers among them that read it."""
    from keras import tree

    layers = [layer for layer in _layers(model) if type(layer).__name__ not in NOT_KEPT]
    readers: dict[int, list] = {}
    for layer in layers:
        for tensor in tree.flatten(layer.input):
            readers.setdefault(id(tensor), []).append(layer)
    return layers, readers


def kept_layers(model) -> list[str]:
    """Names of the layers whose outputs an int8 file of ``model`` keeps as int8 tensors (module docstring)."""
    from keras import tree

    layers, readers = layer_graph(model)
    output_ids = {id(t) for t in tree.flatten(model.output)}
    kept = []
    for layer in layers:
        if id(layer.output) in output_ids:
            continue
        uses = [type(reader).__name__ for reader in readers.get(id(layer.output), [])]
        if uses and all(use in FUSED_CONSUMERS for use in uses):
            continue
        kept.append(layer.name)
    return kept


def _make_layers():
    import keras
    from keras import ops

    class RangeObserver(keras.layers.Layer):
        """Identity that records, when called eagerly, the min and max of what passes through it and, with
        ``means``, its mean over the batch axis (``mean``: one map of the tensor's shape without the batch)."""

        def __init__(self, means: bool = False, **kwargs):
            super().__init__(**kwargs)
            self.low, self.high = 0.0, 0.0  # the converter's ranges always include 0
            self.means, self.total, self.count = means, None, 0

        def call(self, x):
            if not isinstance(x, keras.KerasTensor) and ops.is_tensor(x) and hasattr(x, "numpy"):
                values = ops.convert_to_numpy(x)
                self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
                if self.means:
                    batch = values.sum(axis=0, dtype=np.float64)
                    self.total = batch if self.total is None else self.total + batch
                    self.count += len(values)
            return x

        @property
        def mean(self) -> np.ndarray:
            return self.total / max(self.count, 1)

        def compute_output_shape(self, input_shape):
            return input_shape

    class FakeQuant(keras.layers.Layer):
        """Round to one of 256 steps of ``[low, high]`` (int8, asymmetric); straight-through gradient.

        In training the rounding is stochastic (to the step below or above, with probabilities by distance:
        unbiased), so the model learns to shrug off any rounding of that size, not one particular rounding.
        """

        def __init__(self, low: float, high: float, seed: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.scale = max(high - low, 1e-8) / 255.0
            self.zero_point = float(np.round(-128.0 - low / self.scale))
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=None):
            steps = x / self.scale
            if training:
                steps = steps + keras.random.uniform(ops.shape(x), -0.5, 0.5, seed=self.seed_generator)
            q = ops.clip(ops.round(steps) + self.zero_point, -128.0, 127.0)
            rounded = (q - self.zero_point) * self.scale
            return x + ops.stop_gradient(rounded - x)

        def compute_output_shape(self, input_shape):
            return input_shape

    return RangeObserver, FakeQuant


def _clone_with(model, names: set[str], make, *, inputs: bool = False):
    """A copy of ``model`` that shares its layers and passes each named layer's output (its input, with
    ``inputs``) through ``make(name)``."""
    import keras

    def call(layer, *args, **kwargs):
        if layer.name not in names:
            return layer(*args, **kwargs)
        if inputs:
            return layer(make(layer.name)(args[0]), *args[1:], **kwargs)
        return make(layer.name)(layer(*args, **kwargs))

    # clone_model recompiles a compiled model's copy from its compile config, which cannot rebuild a loss
    # that is a closure (spectro.model.losses.make_loss); the caller compiles the copy itself
    compiled, model.compiled = model.compiled, False
    try:
        return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call,
                                        recursive=True)
    finally:
        model.compiled = compiled


def observe(model, names: set[str], calibration: np.ndarray, *, inputs: bool = False, means: bool = False,
            batch_size: int = 32) -> dict:
    """Run ``calibration`` through ``model`` (inference mode) and record what the named layers give out
    (what they take in, with ``inputs``).

    Returns
    -------
    dict
        Layer name -> observer with ``low`` and ``high`` (over everything, 0 included) and, with ``means``,
        ``mean`` (over the calibration images, one value per position and channel).
    """
    RangeObserver, _ = _make_layers()
    observers = {}

    def make(name):
        observers[name] = RangeObserver(means=means, name=f"{name}_{'in' if inputs else 'out'}_range")
        return observers[name]

    probe = _clone_with(model, set(names), make, inputs=inputs)
    for start in range(0, len(calibration), batch_size):
        probe(np.asarray(calibration[start:start + batch_size], dtype=np.float32), training=False)
    return observers


def int8_twin(model, calibration: np.ndarray, *, batch_size: int = 32, seed: int = 0):
    """The model's quantisation-aware twin (shared weights), with ranges taken on ``calibration`` images.

    Parameters
    ----------
    model : keras.Model
        Pixels in (the model's own input), probabilities out.
    calibration : ndarray
        Images as the model takes them, e.g. a couple of hundred training images.
    seed : int
        Seed of the stochastic rounding in training.

    Returns
    -------
    keras.Model
        Same input and output as ``model``; training it updates ``model``'s weights.
    """
    _, FakeQuant = _make_layers()
    names = set(kept_layers(model))
    observers = observe(model, names, calibration, batch_size=batch_size)
    order = {name: i for i, name in enumerate(sorted(names))}
    return _clone_with(model, names, lambda name: FakeQuant(observers[name].low, observers[name].high,
                                                            seed=seed + order[name], name=f"{name}_int8"))
