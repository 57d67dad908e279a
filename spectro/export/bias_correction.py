"""Bias correction for int8 export: cancel the mean shift that rounding the weights to int8 causes.

A full-integer TFLite file folds each BatchNormalization into the convolution before it and stores every
convolution's and dense layer's weights as int8 with one scale per output channel (symmetric:
``max |w| / 127``). Rounding moves each weight by up to half a step. Over real inputs the error this adds
to an output channel does not average out: its mean is the rounding error's response to the mean input,
``E[conv(x, W_q - W)] = conv(E[x], W_q - W)``. Some networks are very sensitive to such shifts: ImageNet
weights hold large, nearly cancelling edge filters whose rounding moves every output of their channel
(docs/decisions/0005-int8-design.md has the measurements).

:func:`correct_biases` measures ``E[x]`` at every such layer's input on calibration images, computes the
shift its int8 weights will cause and subtracts it from the bias the converter folds in (the
BatchNormalization's ``beta``, or the layer's own bias). The float model then differs from the original by
exactly the opposite of the mean rounding error, so the int8 file's mean output is the original's. This is
the empirical bias correction of Nagel et al. (2019), "Data-Free Quantization Through Weight Equalization
and Bias Correction", section 4.2, and of Finkelstein et al. (2019), "Fighting Quantization Bias With Bias".
It is applied to a copy of the model at export (:func:`spectro.export.tflite.int8_graph`), never to ``model.keras``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WEIGHTED = ("Conv2D", "DepthwiseConv2D", "Dense")  # what the int8 file quantises per output channel
INT8_MAX = 127


@dataclass(frozen=True)
class Target:
    """A layer whose int8 weights shift its output, and where that shift is corrected."""

    layer: object  # Conv2D, DepthwiseConv2D or Dense
    batch_norm: object | None  # the BatchNormalization the converter folds into it, if any


def targets(model) -> list[Target]:
    """The weighted layers of ``model`` (nested models included) whose mean shift can be corrected.

    A layer qualifies when it has a bias to correct: a BatchNormalization that is its output's only reader
    (folded into it by the converter, corrected through ``beta``), or its own bias. Grouped convolutions
    are left out.
    """
    from spectro.training.qat import layer_graph

    layers, readers = layer_graph(model)
    found = []
    for layer in layers:
        if type(layer).__name__ not in WEIGHTED or getattr(layer, "groups", 1) != 1:
            continue
        uses = readers.get(id(layer.output), [])
        bn = uses[0] if len(uses) == 1 and type(uses[0]).__name__ == "BatchNormalization" else None
        if bn is not None and bn.center:
            found.append(Target(layer, bn))
        elif bn is None and layer.use_bias:
            found.append(Target(layer, None))
    return found


def folded_kernel(layer, batch_norm=None) -> np.ndarray:
    """The layer's kernel with ``batch_norm``'s scale folded in, as the converter quantises it (float64)."""
    kernel = np.asarray(layer.kernel, dtype=np.float64)
    if batch_norm is None:
        return kernel
    variance = np.asarray(batch_norm.moving_variance, dtype=np.float64)
    gamma = np.asarray(batch_norm.gamma, dtype=np.float64) if batch_norm.scale else 1.0
    scale = gamma / np.sqrt(variance + batch_norm.epsilon)  # per output channel
    if type(layer).__name__ == "DepthwiseConv2D":  # (kh, kw, channels, multiplier): output channel c*m + j
        return kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    return kernel * scale  # output channels last


def rounding_error(kernel: np.ndarray, kind: str) -> np.ndarray:
    """``W_q - W`` for a (folded) kernel rounded to int8 with one symmetric scale per output channel."""
    if kind == "DepthwiseConv2D":
        rows = np.moveaxis(kernel, (2, 3), (0, 1)).reshape(-1, kernel.shape[0] * kernel.shape[1])
    else:
        rows = kernel.reshape(-1, kernel.shape[-1]).T
    scale = np.abs(rows).max(axis=1, keepdims=True) / INT8_MAX
    scale = np.where(scale > 0, scale, 1.0)
    error = np.clip(np.round(rows / scale), -INT8_MAX, INT8_MAX) * scale - rows
    if kind == "DepthwiseConv2D":
        return np.moveaxis(error.reshape(kernel.shape[2], kernel.shape[3], *kernel.shape[:2]), (0, 1), (2, 3))
    return error.T.reshape(kernel.shape)


def mean_shift(layer, kernel_error: np.ndarray, mean_input: np.ndarray) -> np.ndarray:
    """Per output channel: the mean over positions of ``layer``'s operation with ``kernel_error`` on ``mean_input``.

    ``mean_input`` is the layer's input averaged over images (one map, no batch axis; channels last, as
    every spectro model is). The operation is linear, so this is the mean of what the kernel error adds to
    the output.
    """
    from keras import ops

    kind = type(layer).__name__
    if kind == "Dense":
        return mean_input.reshape(-1, kernel_error.shape[0]).mean(axis=0) @ kernel_error
    x = ops.convert_to_tensor(mean_input[None].astype(np.float32))
    kernel = ops.convert_to_tensor(kernel_error.astype(np.float32))
    common = dict(strides=layer.strides, padding=layer.padding, dilation_rate=layer.dilation_rate)
    out = ops.depthwise_conv(x, kernel, **common) if kind == "DepthwiseConv2D" else ops.conv(x, kernel, **common)
    out = ops.convert_to_numpy(out).astype(np.float64)
    return out.reshape(-1, out.shape[-1]).mean(axis=0)


def correct_biases(model, calibration: np.ndarray, *, batch_size: int = 32) -> None:
    """Subtract from each target's bias the mean shift its int8 weights will cause (in place).

    Parameters
    ----------
    model : keras.Model
        A copy to change: its function changes by the opposite of the int8 rounding's mean error.
    calibration : ndarray
        Images as the model takes them (the export's representative images).
    """
    from spectro.training.qat import observe

    found = targets(model)
    seen = observe(model, {t.layer.name for t in found}, calibration, inputs=True, means=True, batch_size=batch_size)
    for target in found:
        layer, bn = target.layer, target.batch_norm
        # the folded kernel's error is the layer's own error times the BatchNorm's per-channel scale, so its
        # shift is already in the units of what the BatchNorm adds beta to
        shift = mean_shift(layer, rounding_error(folded_kernel(layer, bn), type(layer).__name__),
                           seen[layer.name].mean)
        bias = bn.beta if bn is not None else layer.bias
        bias.assign((np.asarray(bias, dtype=np.float64) - shift).astype(np.float32))
