"""A run's Keras model to TFLite (float32, dynamic-range or full int8), verified.

Each mode writes its own file so all three can live side by side (see
:data:`spectro.runs.TFLITE_NAMES`): ``model.tflite`` (float32), ``model_dynamic.tflite``
(dynamic-range: int8 weights, float activations) and ``model_int8.tflite`` (full integer, uint8 input
and output). Only builtin TFLite ops are allowed, so the files run on any LiteRT runtime.

Full-integer calibration draws images from the run's **training** split. The first calibration image
gets a small block of 0 and one of 255 pixels so that the quantised input covers the whole pixel
range: the uint8 input then has scale 1 and zero point 0, i.e. a PNG's pixels go in unchanged. Before
an int8 conversion the biases of a copy of the model are corrected for the mean shift that rounding the
weights to int8 causes (:mod:`spectro.export.bias_correction`; ``--no-bias-correction`` converts as is).

After conversion each file is verified against the Keras model on the run's test split (top-1
agreement of the fine class, anomaly AUC of each, the largest probability difference, file size,
median single-image latency on one thread); a file that misses :data:`BOUNDS` is not written and the
export fails with the figures, unless verification is switched off.

A normal-only run's files have two outputs, the embedding and the softmax (its scores compare embeddings with
the run's normal references), and its anomaly AUC is that of its default scorer on single windows. The files
the run's classify reads beside its model (normal references, known-machine profiles) are copied to ``--out``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from spectro.data.manifest import ImageRow
from spectro.errors import SpectroError, SpectroWarning
from spectro.evaluation import metrics
from spectro.evaluation.learning import warning_for
from spectro.export.calibration import DEFAULT_CALIBRATION_IMAGES, model_input, representative_images
from spectro.features.reader import read_images
from spectro.inference.predictors import LiteRTPredictor
from spectro.model.labels import LabelSpace
from spectro.model.windows import cut
from spectro.runs import (
    FUSION_NAME,
    KNOWN_NAME,
    MODEL_NAME,
    REFERENCES_INFO,
    REFERENCES_NAME,
    SPLITS_NAME,
    TFLITE_NAMES,
    embedding_of,
    feature_settings,
    load_config,
    read_splits,
    resolve_run,
    save_config,
    update_config,
)
from spectro.runs import image_shape as stored_image_shape
from spectro.runs import input_shape as stored_input_shape
from spectro.runs import threshold as stored_threshold

log = logging.getLogger(__name__)  # progress lines: spectro.cli shows them, the library never prints

QUANTIZE_MODES = ("none", "dynamic", "int8")
VERIFY_WINDOWS = 1024  # model inputs verified: windows spread evenly over the verification clips


@dataclass(frozen=True)
class Bounds:
    """What a converted model must achieve against its Keras original on the test split."""

    min_agreement: float  # fraction of test images with the same top-1 fine class
    max_auc_loss: float  # Keras anomaly AUC minus TFLite anomaly AUC


# float32 and int8 are the bounds; dynamic-range (int8 weights, float activations) sits between
BOUNDS = {"none": Bounds(0.995, 0.005), "dynamic": Bounds(0.99, 0.01), "int8": Bounds(0.98, 0.01)}


@dataclass(frozen=True)
class ExportSettings:
    """Options of one export.

    Parameters
    ----------
    quantize : tuple of str
        Modes to write, each of :data:`QUANTIZE_MODES`.
    representative : int
        Training images used to calibrate full-integer quantisation (all of them when fewer).
    verify : bool
        Verify each file on the test split and refuse files that miss :data:`BOUNDS`.
    bias_correction : bool
        int8: correct the biases for the mean shift of weight rounding (:mod:`spectro.export.bias_correction`).
    latency_runs : int
        Timed single-image invocations for the median latency.
    """

    quantize: tuple[str, ...] = ("int8",)
    representative: int = DEFAULT_CALIBRATION_IMAGES
    verify: bool = True
    bias_correction: bool = True
    latency_runs: int = 50

    def __post_init__(self) -> None:
        bad = [m for m in self.quantize if m not in QUANTIZE_MODES]
        if bad or not self.quantize:
            raise SpectroError(f"--quantize takes {', '.join(QUANTIZE_MODES)}; got {list(self.quantize)}")
        if self.representative < 1:
            raise SpectroError(f"--representative must be >= 1 image, got {self.representative}")
        if self.latency_runs < 1:
            raise SpectroError(f"latency_runs must be >= 1, got {self.latency_runs}")


@dataclass(frozen=True)
class Verification:
    """Figures of one converted model against the Keras model on the verification images."""

    mode: str
    split: str
    n_images: int
    agreement: float
    keras_auc: float | None  # None when the split holds only one of normal/abnormal
    tflite_auc: float | None
    max_prob_diff: float
    auc_pairs: int  # normal x abnormal image pairs: one swapped pair moves the AUC by 1 / auc_pairs
    size_bytes: int
    keras_size_bytes: int
    latency_ms: float
    input_dtype: str
    input_quantization: tuple[float, int]

    @property
    def auc_loss(self) -> float | None:
        if self.keras_auc is None or self.tflite_auc is None:
            return None
        return self.keras_auc - self.tflite_auc

    def auc_enforced(self, bounds: Bounds) -> bool:
        """Whether the split can test the AUC bound: one swapped pair must not cost more than the bound."""
        return self.auc_loss is not None and self.auc_pairs >= math.ceil(1.0 / bounds.max_auc_loss - 1e-9)

    def failures(self, bounds: Bounds) -> list[str]:
        """Human-readable reasons this model misses ``bounds`` (empty when it passes).

        The AUC bound counts only when :meth:`auc_enforced`: on a split with fewer normal x abnormal
        pairs than ``1 / max_auc_loss`` a single swapped pair of near-equal scores would exceed it.
        """
        problems = []
        if self.agreement < bounds.min_agreement:
            problems.append(f"top-1 agreement {self.agreement:.1%} < {bounds.min_agreement:.1%}")
        loss = self.auc_loss
        if loss is not None and loss > bounds.max_auc_loss and self.auc_enforced(bounds):
            problems.append(f"anomaly AUC {self.tflite_auc:.4f} vs Keras {self.keras_auc:.4f}: "
                            f"loss {loss:.4f} > {bounds.max_auc_loss}")
        return problems

    def to_dict(self) -> dict:
        data = asdict(self)
        data["auc_loss"] = self.auc_loss
        data["input_quantization"] = list(self.input_quantization)
        return data


@dataclass(frozen=True)
class ExportResult:
    mode: str
    path: Path | None  # None when the file was refused
    verification: Verification | None
    failures: tuple[str, ...] = ()


# -- reading the run ---------------------------------------------------------------------------------


def verification_rows(run: Path) -> tuple[str, list[ImageRow]]:
    """The test split's rows (the validation split's, with a warning, when there is no test split)."""
    rows = read_splits(run, "test")
    if rows:
        return "test", rows
    rows = read_splits(run, "val")
    if rows:
        warnings.warn(f"{run / SPLITS_NAME} has no test rows; verifying on the {len(rows)} validation images "
                      "(train with a test split, or pass --no-verify, to silence this)", SpectroWarning, stacklevel=2)
        return "val", rows
    raise SpectroError(f"{run / SPLITS_NAME}: no test or val images to verify the export on; "
                       "pass --no-verify to export without checking")


# -- conversion ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_fds() -> Iterator[Path]:
    """Send this process's stdout/stderr (including C++ logging) to a temp file for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    log = tempfile.NamedTemporaryFile(prefix="spectro-export-", suffix=".log", delete=False)
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        with contextlib.redirect_stdout(sys.stderr):
            yield Path(log.name)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        log.close()


def int8_graph(model, calibration: np.ndarray | None = None):
    """``model`` as the int8 converter should see it: its input scaling in one op and, given ``calibration``
    images, its biases corrected for the mean shift of int8 weight rounding
    (:func:`spectro.export.bias_correction.correct_biases`, on a copy: ``model`` is left as it is).

    The converter turns MobileNetV2's ``Rescaling`` (``x / 128 - 1``) into MUL then ADD and gives the
    MUL's output the union of both ranges, [-1, 2]: the scaled pixels are rounded to a grid of 1.5
    pixel levels and then again to the ADD's grid. A 1x1 depthwise convolution with the scale as kernel
    and the offset as bias is the same float function and quantises in one step; with scale 1/128 and
    offset -1 that step is exact (output scale 1/128, zero point 0), so the int8 file sees the pixels
    the Keras model sees (docs/decisions/0005-int8-design.md). Models without the layer keep their own scaling.
    """
    import keras

    from spectro.model.backbones import SCALE_NAME, copy_model

    if calibration is not None:
        from spectro.export.bias_correction import correct_biases

        model = copy_model(model)
        correct_biases(model, calibration)
    layer = next((lay for lay in model.layers if lay.name == SCALE_NAME), None)
    if not isinstance(layer, keras.layers.Rescaling) or np.ndim(layer.scale) or np.ndim(layer.offset):
        return model
    conv = keras.layers.DepthwiseConv2D(
        1, depthwise_initializer=keras.initializers.Constant(float(layer.scale)),
        bias_initializer=keras.initializers.Constant(float(layer.offset)), name=SCALE_NAME)
    return keras.models.clone_model(model, clone_function=lambda lay: conv if lay is layer else lay)


def convert(model, mode: str, representative: np.ndarray | None = None, *, bias_correction: bool = True,
            embedding: str | None = None) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer, builtin ops only.

    Parameters
    ----------
    model : keras.Model
        Pixels in (float32 0…255), fine-class softmax out.
    mode : {"none", "dynamic", "int8"}
    representative : numpy.ndarray, optional
        ``(n, n_mels, frames, 1)`` calibration images; required for ``int8``, which converts
        :func:`int8_graph` of the model.
    bias_correction : bool
        For ``int8``: correct the biases for the mean shift of weight rounding, measured on the
        calibration images (docs/decisions/0005-int8-design.md).
    embedding : str, optional
        Two outputs, this embedding (``config.json``'s ``model.embedding``) then the softmax
        (:func:`spectro.model.backbones.with_embeddings`): what a normal-only run's scores need.

    Raises
    ------
    SpectroError
        Conversion failed (the converter's last log lines are in the message).
    """
    import tensorflow as tf

    if mode not in QUANTIZE_MODES:
        raise SpectroError(f"unknown quantisation {mode!r}: expected one of {', '.join(QUANTIZE_MODES)}")
    if mode == "int8":
        if representative is None or len(representative) == 0:
            raise SpectroError("int8 export needs representative images (the run's training split)")
    if embedding is not None:
        from spectro.model.backbones import with_embeddings

        model = with_embeddings(model, embedding)
    if mode == "int8":
        model = int8_graph(model, representative if bias_correction else None)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":

        def dataset():
            for image in representative:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with _quiet_fds() as log, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Statistics for quantized inputs.*")
        try:
            flatbuffer = converter.convert()
        except Exception as exc:  # the converter raises many types; report them all as one line
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-3:]
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise SpectroError(f"TFLite conversion ({mode}) failed: {detail}" +
                               (f" | {' | '.join(lines)}" if lines else "")) from None
    log.unlink(missing_ok=True)
    return flatbuffer


def tflite_ops(model: str | Path | bytes) -> list[str]:
    """Sorted names of the operators a ``.tflite`` file uses (custom ops as ``CUSTOM:<name>``), TF-free."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = Path(model).read_bytes() if isinstance(model, (str, Path)) else bytes(model)
    try:
        root = schema.Model.GetRootAsModel(buffer, 0)
        codes = [root.OperatorCodes(i) for i in range(root.OperatorCodesLength())]
    except Exception as exc:  # flatbuffers raises struct/index errors on garbage
        raise SpectroError(f"not a TFLite flatbuffer ({type(exc).__name__})") from None
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = set()
    for code in codes:
        if code.CustomCode() is not None:
            ops.add(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            ops.add(names.get(builtin, f"BUILTIN_{builtin}"))
    return sorted(ops)


def check_builtin_ops(ops: list[str], *, mode: str) -> None:
    """Refuse Flex (Select TF) and other custom ops: the file must run on any LiteRT runtime."""
    custom = [op for op in ops if op.startswith("CUSTOM:")]
    if custom:
        raise SpectroError(f"{mode} model uses non-builtin ops {custom}; only builtin TFLite ops are allowed")


# -- verification ------------------------------------------------------------------------------------
AUC_RESOLUTION = 1e-3  # anomaly scores are compared on this grid (see anomaly_auc)


def anomaly_auc(labels: LabelSpace, fine_probs: np.ndarray, abnormal: np.ndarray) -> float | None:
    """ROC AUC of the anomaly score against the true abnormal flags (None with only one class present).

    Scores are rounded to :data:`AUC_RESOLUTION` first: a model whose scores differ by less (an
    untrained one gives nearly equal scores to every image) would otherwise have its ranking, and so its
    AUC, decided by float rounding noise, and Keras and a float32 TFLite file could differ by 0.3.
    """
    return _auc(labels.anomaly_score(fine_probs), abnormal)


def _auc(scores: np.ndarray, abnormal: np.ndarray) -> float | None:
    """ROC AUC of scores on the :data:`AUC_RESOLUTION` grid (see :func:`anomaly_auc`); NaN scores left out (a
    normal-only run's windows of machines without references)."""
    scores, abnormal = np.asarray(scores, dtype=np.float64), np.asarray(abnormal, dtype=bool)
    keep = ~np.isnan(scores)
    return metrics.anomaly_auc(abnormal[keep], np.round(scores[keep] / AUC_RESOLUTION) * AUC_RESOLUTION)


def median_latency_ms(predictor, images: np.ndarray, runs: int) -> float:
    """Median wall time of ``predictor.predict`` on one image (cycling through ``images``), in ms."""
    for image in images[:3]:  # warm-up
        predictor.predict(image[None])
    times = []
    for i in range(runs):
        image = images[i % len(images)][None]
        start = time.perf_counter()
        predictor.predict(image)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def verify(path: Path, run: Path, *, mode: str, split: str, images: np.ndarray, abnormal: np.ndarray,
           keras_probs: np.ndarray, keras_size: int, latency_runs: int = 50, score=None,
           keras_scores: np.ndarray | None = None) -> Verification:
    """Compare the ``.tflite`` at ``path`` with the Keras model's probabilities on ``images``.

    A normal-only run's anomaly scores come from embeddings: ``score(embeddings, probs)`` gives the window scores
    of the file's outputs, ``keras_scores`` the Keras model's."""
    predictor = LiteRTPredictor(path, run, num_threads=1)
    labels = predictor.labels
    if score is None:
        probs = predictor.predict(images)
        keras_auc, tflite_auc = anomaly_auc(labels, keras_probs, abnormal), anomaly_auc(labels, probs, abnormal)
    else:
        embeddings, probs = predictor.embed(images)
        keras_auc, tflite_auc = _auc(keras_scores, abnormal), _auc(score(embeddings, probs), abnormal)
    agreement = float(np.mean(probs.argmax(axis=1) == keras_probs.argmax(axis=1)))
    return Verification(
        mode=mode, split=split, n_images=len(images), agreement=agreement,
        keras_auc=keras_auc, tflite_auc=tflite_auc,
        max_prob_diff=float(np.abs(probs - keras_probs).max()),
        auc_pairs=int(np.sum(abnormal)) * int(np.sum(~np.asarray(abnormal,
                                                                 dtype=bool))), size_bytes=path.stat().st_size,
        keras_size_bytes=keras_size, latency_ms=median_latency_ms(predictor, images, latency_runs),
        input_dtype=predictor.input_dtype.name,
        input_quantization=(float(predictor.input_quantization[0]), int(predictor.input_quantization[1])))


# -- the export ---------------------------------------------------------------------------------------
def _device_config(config: dict, run: Path) -> dict:
    """The part of a run's config a device needs beside the model."""
    keep = {k: config[k] for k in ("format", "features", "input_shape", "image_shape", "task", "model", "seed",
                                   "anomaly_score", "scorer_files") if k in config}
    keep["threshold"] = config.get("threshold") or {"value": stored_threshold(config),
                                                    "method": "default (run not evaluated)"}
    keep["exported_from"] = str(run)
    return keep


def export_run(run: str | Path | None, settings: ExportSettings = ExportSettings(), *,
               out: str | Path | None = None, progress: bool = True) -> list[ExportResult]:
    """Convert, check and write a run's model in each of ``settings.quantize``'s modes.

    Parameters
    ----------
    run : str, Path or None
        A run folder (``None``: ``models/latest``).
    settings : ExportSettings
    out : str or Path, optional
        Folder for the files; gets ``labels.json`` and ``config.json`` too. Default: the run folder.
    progress : bool
        Print a line per step to stderr.

    Returns
    -------
    list of ExportResult
        One per mode, in the order given.

    Raises
    ------
    SpectroError
        No Keras model in the run, no images to calibrate or verify on, conversion failure, non-builtin
        ops. A model that misses :data:`BOUNDS` does not raise here: its result has ``failures`` and
        ``path=None`` (the file is not written); :func:`main` turns that into an error.
    """
    from spectro.model.backbones import load_keras_model

    run = resolve_run(run)
    keras_path = run / MODEL_NAME
    if not keras_path.is_file():
        raise SpectroError(f"{run}: no {MODEL_NAME} to export (export needs the Keras model written by "
                           "'spectro train')")
    config = load_config(run)
    if warning_for(config):
        warnings.warn(warning_for(config) + "; its TFLite files answer no better. Train it again to silence this",
                      SpectroWarning, stacklevel=2)
    labels = LabelSpace.load(run)
    references, embedding = None, None
    if labels.normal_only:  # its files give the embedding too, and its references travel with them
        from spectro.scoring.references import References

        references, embedding = References.load(run), embedding_of(config)
    input_shape, image_shape = stored_input_shape(config), stored_image_shape(config)
    features = feature_settings(config)
    dest = Path(out).resolve() if out is not None else run
    dest.mkdir(parents=True, exist_ok=True)
    if dest != run:
        labels.save(dest)
        save_config(dest, _device_config(config, run))
        for name in (REFERENCES_NAME, REFERENCES_INFO, KNOWN_NAME, FUSION_NAME):  # what classify reads beside it
            if (run / name).is_file():
                shutil.copyfile(run / name, dest / name)

    def say(message: str) -> None:
        if progress:
            log.info(message, extra={"stream": "stderr"})

    model = load_keras_model(keras_path)
    representative = None
    if "int8" in settings.quantize:
        image_size = int(config.get("model", {}).get("image_size", 0)) or None
        representative = representative_images(run, settings.representative, input_shape=input_shape,
                                               image_shape=image_shape, image_size=image_size,
                                               seed=int(config.get("seed", 0) or 0), features=features)
    if settings.verify:
        split, rows = verification_rows(run)
        # the model's inputs: windows of the clips, up to VERIFY_WINDOWS spread evenly over them
        pixels = read_images(rows, settings=features, bands=image_shape[0])[0]  # clips may differ in length
        windows, owners = cut(pixels, input_shape[1], per_image=-(-VERIFY_WINDOWS // len(rows)))
        images = model_input(windows)
        abnormal = np.array([row.is_abnormal for row in rows])[owners]
        score, keras_scores = None, None
        if references is None:
            keras_probs = np.asarray(model.predict(images, batch_size=32, verbose=0), dtype=np.float32)
        else:
            from spectro.model.backbones import with_embeddings
            from spectro.scoring.normal import window_scores

            keys = np.array([labels.class_of(row) for row in rows], dtype=object)[owners]

            def score(embeddings, probs):
                return window_scores(references, keys, embeddings, probs)

            keras_embeddings, keras_probs = (np.asarray(a, dtype=np.float32) for a in
                                             with_embeddings(model, embedding).predict(images, batch_size=32,
                                                                                       verbose=0))
            keras_scores = score(keras_embeddings, keras_probs)

    results = []
    for mode in settings.quantize:
        final = dest / TFLITE_NAMES[mode]
        say(f"converting {run.name} -> {final.name} ({mode}) ...")
        flatbuffer = convert(model, mode, representative, bias_correction=settings.bias_correction,
                             embedding=embedding)
        check_builtin_ops(tflite_ops(flatbuffer), mode=mode)
        tmp = final.with_name(f".{final.name}.tmp")
        tmp.write_bytes(flatbuffer)
        verification, failures = None, ()
        try:
            if settings.verify:
                verification = verify(tmp, dest, mode=mode, split=split, images=images, abnormal=abnormal,
                                      keras_probs=keras_probs, keras_size=keras_path.stat().st_size,
                                      latency_runs=settings.latency_runs, score=score, keras_scores=keras_scores)
                failures = tuple(verification.failures(BOUNDS[mode]))
                if verification.auc_loss is not None and not verification.auc_enforced(BOUNDS[mode]):
                    warnings.warn(f"{mode}: anomaly AUC bound not enforced: the {split} split has only "
                                  f"{verification.auc_pairs} normal x abnormal pairs, so one swapped pair moves "
                                  f"the AUC by {1 / verification.auc_pairs:.3f} > {BOUNDS[mode].max_auc_loss}; "
                                  "use a test split with more images to enforce it and silence this",
                                  SpectroWarning, stacklevel=2)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if failures:
            tmp.unlink(missing_ok=True)
            results.append(ExportResult(mode, None, verification, failures))
        else:
            tmp.replace(final)
            results.append(ExportResult(mode, final, verification))

    # the figures go into the config.json beside the files (the run's, or the --out folder's)
    figures = {r.mode: _figures(r, settings) for r in results}
    update_config(dest, export={**load_config(dest).get("export", {}), **figures})
    return results


def _figures(result: ExportResult, settings: ExportSettings) -> dict:
    data = {"file": str(result.path) if result.path else None, "passed": not result.failures,
            "bounds": asdict(BOUNDS[result.mode]), "failures": list(result.failures)}
    if result.mode == "int8":
        data["bias_correction"] = settings.bias_correction
    if result.verification is not None:
        data.update(result.verification.to_dict())
    else:
        data["verified"] = False
        if result.path is not None:
            data["size_bytes"] = result.path.stat().st_size
    return data
