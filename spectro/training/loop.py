"""The training loop: fine-tune a Keras backbone on the spectrogram PNGs into a run folder.

Steps: read ``manifest.csv`` and check the PNGs' settings and sizes without decoding them
(:func:`spectro.features.reader.survey_images`), split by recording (:mod:`spectro.training.splits`), choose
the devices (:mod:`spectro.training.distribute`), build the model (:func:`spectro.model.backbones.build_model`)
and train it in phases, each one Keras ``fit`` over a streaming, augmented ``tf.data`` pipeline
(:mod:`spectro.training.pipeline`) with Keras' own callbacks (``EarlyStopping`` restoring the best epoch,
``ModelCheckpoint``, ``CSVLogger``, ``LearningRateScheduler``), balanced sample weights and the task's loss
(:mod:`spectro.model.losses`), ending with the quantisation-aware phase (:mod:`spectro.training.qat`). The
run folder (:mod:`spectro.runs`) gets the validation and test metrics
(:func:`spectro.evaluation.metrics.model_metrics`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spectro.data.manifest import MANIFEST_NAME, ImageRow, read_manifest
from spectro.errors import SpectroError, SpectroWarning
from spectro.evaluation import plots
from spectro.evaluation.learning import LearningCheck, check_learning, check_normal_only
from spectro.evaluation.metrics import model_metrics
from spectro.features.reader import read_modulation, survey_images
from spectro.features.settings import FeatureSettings
from spectro.model.backbones import ModelSettings
from spectro.model.labels import NORMAL_ONLY, TASKS, LabelSpace, machine_key
from spectro.model.losses import make_loss, make_task_accuracy, sample_weights
from spectro.model.windows import pool, window_frames
from spectro.paths import IMAGES_DIR, MODELS_DIR
from spectro.runs import (
    CHECKPOINT_NAME,
    FORMAT,
    HISTORY_NAME,
    MODEL_NAME,
    SPLITS,
    TRAINING_PLOT_NAME,
    default_threshold,
    finish_run,
    point_latest,
    read_history,
    save_config,
    scorer_files,
    staging_folder,
    write_splits,
)
from spectro.scoring.fusion import MIN_CLIPS as FUSION_MIN_CLIPS
from spectro.scoring.fusion import Fusion
from spectro.scoring.references import DEFAULT_SCORER, SCORERS
from spectro.training.augment import AugmentSettings
from spectro.training.distribute import DistributeSettings, place
from spectro.training.pipeline import Examples, evaluation_dataset, training_dataset, window_counts
from spectro.training.splits import split_rows, split_summary

log = logging.getLogger(__name__)  # progress lines: spectro.cli shows them, the library never prints

LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainSettings:
    """How to split and train (stored in ``config.json`` under ``training``).

    Parameters
    ----------
    task : str
        ``failure``, ``anomaly`` or ``machine`` (see :mod:`spectro.model.labels`).
    steps : int
        The training budget in optimizer steps (batches) of the first phase: the head, or the whole network
        when training from scratch. Steps, not epochs: with random windows an epoch means little, and a small
        dataset gets as many updates as a large one (early stopping ends it sooner when it has learned).
    eval_every : int
        Steps between validations; Keras' epochs are this long, and ``history.csv`` has one row per
        validation. Validation loss is judged on many windows of every validation clip (up to
        :data:`VAL_WINDOWS` in all), so it is steady even on a handful of clips.
    fine_tune_steps, fine_tune_layers, fine_tune_learning_rate
        Second phase with pretrained weights: the top ``fine_tune_layers`` of the base (0: all of it, as
        the keras-io guide does) are unfrozen (BatchNorm stays frozen) and trained at
        ``fine_tune_learning_rate``. Skipped from scratch.
    fine_weight : float
        Weight of the fine-class cross-entropy added for tasks other than ``failure``.
    bn_momentum : float or None
        BatchNorm momentum used when the base trains from random initialisation (Keras' MobileNet uses
        0.999, far too slow for a few hundred steps); ``None`` keeps the backbone's own.
    test_ids : tuple of str
        Machine ids (``id_06``, or ``fan/id_06`` for one machine type) held out as the whole test split.
    lr_schedule : str
        ``cosine``: each phase's learning rate decays along a half cosine to 2% of its start (from
        scratch, warm-up and full training share one); ``constant``: it stays put.
    check_learning : bool
        After training, check the model against chance on the validation split
        (:func:`spectro.evaluation.learning.check_learning`) and refuse a model that learned nothing.
    patience : int
        Validations without improvement of the validation loss before a phase stops. Early stopping cannot
        fire in the first third of a phase (from scratch, that third is the warm-up).
    qat_steps : int
        Last phase: quantisation-aware fine-tuning (:mod:`spectro.training.qat`) of the best model so far, so that
        its int8 TFLite file answers as it does. It trains the model's int8 twin at
        ``fine_tune_learning_rate``, decaying along a half cosine whatever ``lr_schedule``, with BatchNorm
        frozen, and keeps the validation with the twin's best loss. 0 skips it.
    """

    task: str = "failure"
    steps: int = 1500  # enough for the built-in set's 16 classes (docs/decisions/0002-windows-and-clip-scores.md)
    eval_every: int = 100
    fine_tune_steps: int = 500
    fine_tune_layers: int = 0
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    patience: int = 4
    fine_weight: float = 0.3
    bn_momentum: float | None = 0.9
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    test_ids: tuple[str, ...] = ()
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    lr_schedule: str = "constant"
    # the quantisation-aware phase: about as many steps as docs/decisions/0005-int8-design.md found enough
    qat_steps: int = 300
    check_learning: bool = True
    # normal-only runs: the false-alarm rate their per-machine thresholds aim at, and the default scorer
    # (combined: the parts the images allow, spectro.scoring.references)
    max_fpr: float = 0.05
    scorer: str = DEFAULT_SCORER

    def __post_init__(self) -> None:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.steps < 1 or self.fine_tune_steps < 0 or self.qat_steps < 0:
            problems.append(f"need steps >= 1 and fine-tune and QAT steps >= 0, got {self.steps}, "
                            f"{self.fine_tune_steps}, {self.qat_steps}")
        if self.eval_every < 1:
            problems.append(f"eval_every must be >= 1 step, got {self.eval_every}")
        if self.fine_tune_layers < 0:
            problems.append(f"fine-tune layers must be >= 0 (0: the whole base), got {self.fine_tune_layers}")
        if self.batch_size < 1:
            problems.append(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and self.fine_tune_learning_rate > 0):
            problems.append("learning rates must be > 0, got "
                            f"{self.learning_rate}, {self.fine_tune_learning_rate}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            problems.append("val and test fractions must be in 0..1 with a sum below 1, got "
                            f"{self.val_fraction}, {self.test_fraction}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 < self.max_fpr < 1:
            problems.append(f"max_fpr must be in (0, 1), got {self.max_fpr}")
        if self.scorer not in SCORERS:
            problems.append(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        if self.patience < 1:
            problems.append(f"patience must be >= 1, got {self.patience}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum < 1:
            problems.append(f"bn_momentum must be in (0, 1), got {self.bn_momentum}")
        if problems:
            raise SpectroError("invalid training settings: " + "; ".join(problems))


VAL_WINDOWS = 512  # validation loss is judged on about this many windows, spread evenly over the validation clips


def cosine_rate(rate: float, step: int, steps: int, *, floor: float = 0.02) -> float:
    """Cosine decay of ``rate`` over ``steps`` epochs (epoch ``step``, from 0), ending at ``floor * rate``."""
    if steps <= 1:
        return rate
    return rate * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * step / (steps - 1))))


@dataclass(frozen=True)
class Phase:
    """One ``fit`` of the training: its name, its length (``epochs`` validations, ``steps_per_epoch`` optimizer
    steps apart), learning rate, whether it is monitored, and the validations before early stopping may fire."""

    name: str
    epochs: int
    steps_per_epoch: int
    learning_rate: float
    monitored: bool
    start_from: int = 0

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def _split_steps(steps: int, every: int) -> tuple[int, int]:
    """``steps`` as (validations, steps between them): every ``every`` steps, rounded up to whole validations."""
    per = max(1, min(every, steps))
    return max(1, -(-steps // per)), per


def phases(settings: TrainSettings, *, pretrained: bool) -> list[Phase]:
    """The phases of a training run.

    From scratch the first third of the steps is a warm-up without early stopping or checkpoints: while
    the BatchNorm statistics of a random network settle, its inference-mode validation loss says little,
    and "best" would otherwise be an untrained network. With pretrained weights the head trains first,
    then the base is fine-tuned; neither may stop in its first third. The quantisation-aware phase comes last.
    """
    out = []
    n, per = _split_steps(settings.steps, settings.eval_every)
    if not pretrained:
        warmup = min(n - 1, n // 3)
        if warmup:
            out.append(Phase("warmup", warmup, per, settings.learning_rate, False))
        out.append(Phase("full", n - warmup, per, settings.learning_rate, True))
    else:
        out.append(Phase("head", n, per, settings.learning_rate, True, start_from=n // 3))
        if settings.fine_tune_steps > 0:
            m, per_ft = _split_steps(settings.fine_tune_steps, settings.eval_every)
            out.append(Phase("fine_tune", m, per_ft, settings.fine_tune_learning_rate, True, start_from=m // 3))
    if settings.qat_steps > 0:
        q, per_q = _split_steps(settings.qat_steps, settings.eval_every)
        out.append(Phase("qat", q, per_q, settings.fine_tune_learning_rate, True))
    return out


def _run_name(out: Path, task: str, backbone: str) -> str:
    base = f"{dt.datetime.now():%Y%m%d-%H%M%S}-{task}-{backbone}"
    name, n = base, 2
    while (out / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


def _set_bn_momentum(base, momentum: float) -> None:
    import keras

    for layer in base._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def _timer():
    """A callback timing the training batches of each epoch (validation excluded)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.batches: list[int] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = self._last = time.perf_counter()
            self._batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self._last = time.perf_counter()
            self._batches += 1

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(self._last - self._start)
            self.batches.append(self._batches)

    return EpochTimer()


def _int8_twin(model, base, run: Path, input_shape, image_shape, features: FeatureSettings, seed: int,
               image_size: int):
    """The model's int8 twin (:func:`spectro.training.qat.int8_twin`), calibrated on the images
    ``spectro export`` calibrates on, with the base's BatchNorm frozen; also the BatchNorm layers' former
    ``trainable`` flags and the number of layer outputs the twin rounds."""
    import keras

    from spectro.export.calibration import DEFAULT_CALIBRATION_IMAGES, representative_images
    from spectro.training.qat import int8_twin, kept_layers

    bn_trainable = [(layer, layer.trainable) for layer in base.layers
                    if isinstance(layer, keras.layers.BatchNormalization)]
    for layer, _ in bn_trainable:
        layer.trainable = False
    calibration = representative_images(run, DEFAULT_CALIBRATION_IMAGES, input_shape=input_shape,
                                         image_shape=image_shape, image_size=image_size, seed=seed, features=features)
    return int8_twin(model, calibration, seed=seed), bn_trainable, len(kept_layers(model))


def _throughput(batch_size: int, batches: list[int], seconds: list[float]) -> float:
    """Training images (windows) per second, leaving out the first epoch (graph tracing) when there are more."""
    first = 1 if len(seconds) > 1 else 0
    return round(batch_size * sum(batches[first:]) / max(sum(seconds[first:]), 1e-9), 1)


def _float32(config):
    """A Keras config with every mixed-precision dtype policy set back to float32."""
    if isinstance(config, dict):
        name = str(config.get("config", {}).get("name", "")) if config.get("class_name") == "DTypePolicy" else ""
        if name.startswith("mixed"):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32(value) for value in config]
    return config


def _save_clean(model, path: Path):
    """Save ``model`` without compile state and in float32, so it loads anywhere with plain Keras; return
    that copy (built outside any distribution strategy)."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    clean = keras.Model.from_config(_float32(model.get_config()))
    clean.set_weights(model.get_weights())
    tmp = path.with_name(".tmp." + path.name)
    clean.save(tmp)
    os.replace(tmp, path)
    return clean


def _manifest_rows(images: str | Path) -> tuple[Path, list[ImageRow]]:
    """The image folder (absolute) and the rows of its ``manifest.csv``."""
    folder = Path(images).resolve()
    if not folder.is_dir():
        raise SpectroError(f"{folder}: no such folder (expected the images written by 'spectro images')")
    if not (folder / MANIFEST_NAME).is_file():
        raise SpectroError(f"{folder}: no {MANIFEST_NAME} (expected a folder rendered by 'spectro images'; "
                           "render recordings with 'spectro images DATA --out FOLDER')")
    rows = read_manifest(folder)
    if not rows:
        raise SpectroError(f"{folder / MANIFEST_NAME}: lists no images; render recordings with 'spectro images'")
    return folder, rows


def _examples(rows: list[ImageRow], labels: LabelSpace, widths: dict[str, int]) -> Examples:
    """The pipeline's examples of ``rows``, each image's width from ``widths`` (frames by path, the survey's)."""
    y = np.array([labels.row_index(r) for r in rows], dtype=int)
    machines = sorted({r.machine for r in rows})
    return Examples(paths=[str(r.path) for r in rows], labels=y, weights=sample_weights(labels, y),
                    machines=np.array([machines.index(r.machine) for r in rows]),
                    normal=np.array([not r.is_abnormal for r in rows]),
                    widths=np.array([widths[str(r.path)] for r in rows], dtype=np.int64))


def _abnormal_out_of_training(rows: list[ImageRow], splits: list[str],
                              settings: TrainSettings) -> tuple[list[str], int]:
    """The splits with every abnormal training clip moved to validation or test (in the ratio of their fractions,
    seeded), and how many moved."""
    rng = np.random.default_rng(settings.seed)
    val_share = settings.val_fraction / max(settings.val_fraction + settings.test_fraction, 1e-9)
    out, moved = list(splits), 0
    for i, row in enumerate(rows):
        if row.is_abnormal and out[i] == "train":
            out[i], moved = ("val" if rng.random() < val_share else "test"), moved + 1
    return out, moved


def _objective(by_split: dict[str, list[ImageRow]], settings: TrainSettings, features: FeatureSettings,
               image_shape, outlier_folder, progress: bool) -> tuple[LabelSpace, dict[str, list[ImageRow]], str]:
    """The label space, the rows the network trains and validates on, and the objective in words.

    Supervised tasks: every row. Normal-only: the normal rows, classified by machine key; with a single machine
    key, also the synthetic machines' normal clips as other classes (outlier exposure,
    :mod:`spectro.training.outliers`), a quarter of them validating."""
    if settings.task != NORMAL_ONLY:
        rows = [r for split in SPLITS for r in by_split[split]]
        return LabelSpace.from_rows(rows, settings.task), by_split, f"{settings.task} classification"
    labels = LabelSpace.from_rows(by_split["train"], NORMAL_ONLY)
    fitted = {s: [r for r in by_split[s] if not r.is_abnormal and labels.class_of(r) in labels.classes]
              for s in SPLITS}
    if len(labels.classes) >= 2:
        return labels, fitted, f"machine id classification of {len(labels.classes)} machine ids, normal clips only"
    from spectro.training.outliers import outlier_rows

    log.info(f"one machine id in the training split ({labels.classes[0]}): outlier exposure, the built-in synthetic "
             "machines' normal clips as other classes")
    outliers = outlier_rows(features, image_shape, Path(outlier_folder.name), seed=settings.seed, progress=progress)
    fitted["train"] = fitted["train"] + [r for i, r in enumerate(outliers) if i % 4]
    fitted["val"] = fitted["val"] + [r for i, r in enumerate(outliers) if not i % 4]
    labels = LabelSpace.from_rows(fitted["train"], NORMAL_ONLY)
    return labels, fitted, (f"outlier exposure: the machine's normal clips against {len(outliers)} normal clips of "
                            f"{len(labels.classes) - 1} built-in synthetic machine ids")


KNOWN_CHUNK = 256  # training images read at a time for the known-machine profiles


def _statistics_of(rows: list[ImageRow], features: FeatureSettings, image_shape, progress: bool,
                   desc: str = "mel statistics") -> np.ndarray:
    """The level-normalised mel statistics (:func:`spectro.scoring.known.statistics`) of ``rows``' images, read a
    chunk at a time (training streams its images, and so does this)."""
    from tqdm import tqdm

    from spectro.features.reader import read_images
    from spectro.scoring.known import statistics

    chunks = range(0, len(rows), KNOWN_CHUNK)
    stats = [statistics(read_images(rows[i:i + KNOWN_CHUNK], settings=features, bands=image_shape[0])[0], features)
             for i in tqdm(chunks, desc=desc, unit="chunk", disable=not progress, leave=False)]
    return np.concatenate(stats) if stats else np.zeros((0, 2 * image_shape[0]))


def _fit_known_machines(run: Path, rows: list[ImageRow], features: FeatureSettings, image_shape, progress: bool,
                        pixels: np.ndarray | None = None) -> np.ndarray:
    """The known-machine check's profiles from every training clip (:mod:`spectro.scoring.known`): from ``pixels``
    when the caller has them in memory already, else read a chunk at a time; returns the clips' statistics (a
    supervised run's fusion reuses them)."""
    from spectro.scoring.known import KnownMachines, statistics

    stats = (statistics(pixels, features) if pixels is not None
             else _statistics_of(rows, features, image_shape, progress, desc="known machines"))
    KnownMachines.fit([machine_key(r.machine, r.machine_id) for r in rows], stats).save(run)
    return stats


def _fit_fusion(run: Path, labels: LabelSpace, by_split, probs: dict, spectra: dict, train_statistics: np.ndarray,
                features, image_shape, progress: bool) -> tuple[Fusion | None, dict[str, np.ndarray]]:
    """Fit and write a supervised run's fused anomaly score (:mod:`spectro.scoring.fusion`) from its training and
    validation clips (probabilities, spectra and mel statistics; its abnormal training clips judge where the
    spectrum part joins and fit the mel-statistics part, its abnormal validation clips calibrate it), or ``None``
    when the images carry no modulation spectra (the score stays the CNN's probability). ``probs``, ``spectra``: the
    pooled probabilities and the modulation spectra of the validation and test clips (when there are any);
    ``train_statistics``: the mel statistics of every training clip (``by_split["train"]``'s order). Also returns
    the mel statistics of the splits of ``probs`` (the fused score of their clips needs them)."""
    from spectro.features.reader import read_images
    from spectro.inference.predictors import KerasPredictor

    train = [r for r in by_split["train"] if not r.is_abnormal]
    if not train or features.modulation_hz is None or not labels.abnormal_mask.any():
        return None, {}
    statistics = {split: _statistics_of(by_split[split], features, image_shape, progress) for split in probs}
    val = by_split["val"] if "val" in probs else []
    val_types = [r.machine for r in val]
    normal_types = [r.machine for r in val if not r.is_abnormal]
    types = labels.machine_types
    train_p = None
    if any(normal_types.count(t) < FUSION_MIN_CLIPS for t in types):  # some type's CNN scale needs training normals
        predictor = KerasPredictor(run / MODEL_NAME, run)
        train_p = labels.anomaly_score(predictor.predict_clips(read_images(train, settings=features,
                                                                           bands=image_shape[0])[0]))
    abnormal = [r for r in by_split["train"] if r.is_abnormal]
    failed = np.array([r.is_abnormal for r in by_split["train"]], dtype=bool)
    fusion = Fusion.fit(types=types, train_types=[r.machine for r in train],
                        train_modulation=read_modulation(train, settings=features), train_probability=train_p,
                        val_types=val_types,
                        val_probability=labels.anomaly_score(probs["val"]) if val else np.zeros(0),
                        val_modulation=spectra["val"] if val else None, val_abnormal=[r.is_abnormal for r in val],
                        abnormal_types=[r.machine for r in abnormal], abnormal_labels=[r.label for r in abnormal],
                        abnormal_modulation=read_modulation(abnormal, settings=features) if abnormal else None,
                        train_statistics=train_statistics[~failed], abnormal_statistics=train_statistics[failed],
                        val_statistics=statistics["val"] if val else None)
    fusion.save(run)
    return fusion, statistics


def _normal_only_metrics(run: Path, labels: LabelSpace, by_split, settings: TrainSettings, features, image_shape,
                         progress: bool) -> tuple[dict, LearningCheck | None]:
    """Write the run's normal references (training normals; thresholds from validation normals) and return the
    validation and test figures of every scorer, and the learning check on the validation split (``None`` when
    switched off or without validation clips)."""
    from spectro.evaluation.evaluate import normal_only_figures, normal_only_scores, thresholds_of
    from spectro.features.reader import read_images, read_modulation
    from spectro.inference.predictors import KerasPredictor
    from spectro.scoring.normal import fit_references

    predictor = KerasPredictor(run / MODEL_NAME, run)
    train_rows = [r for r in by_split["train"] if not r.is_abnormal]
    pixels = {s: read_images(rows, settings=features, bands=image_shape[0], progress=progress)[0] if rows else None
              for s, rows in (("train", train_rows), ("val", by_split["val"]), ("test", by_split["test"]))}
    splits = (("train", train_rows), ("val", by_split["val"]), ("test", by_split["test"]))
    modulation = {s: read_modulation(rows, settings=features) if rows else None for s, rows in splits}
    scorer = settings.scorer
    references, val_scores, val_probs = fit_references(predictor, labels, train_rows, pixels["train"],
                                                       by_split["val"], pixels["val"], max_fpr=settings.max_fpr,
                                                       scorer=scorer, train_modulation=modulation["train"],
                                                       val_modulation=modulation["val"])
    references.save(run)
    # a normal-only run trains on its normal clips only: its known-machine profiles come from the same pixels
    _fit_known_machines(run, train_rows, features, image_shape, progress, pixels=pixels["train"])
    metrics = {}
    for split in ("val", "test"):
        rows = by_split[split]
        if not rows:
            continue
        if split == "val":  # scored while fitting the references
            scores, probs = val_scores, val_probs
            thresholds = thresholds_of(references, [labels.class_of(r) for r in rows])
        else:
            scores, probs, thresholds = normal_only_scores(predictor, references, labels, rows, pixels[split],
                                                           modulation[split])
        main = references.default_scores([labels.class_of(r) for r in rows], scores)
        metrics[split] = normal_only_figures(rows, scores, probs, thresholds, labels, main)
    learning = None
    if settings.check_learning:  # the score users get: the default scorer's, on the validation clips
        val = by_split["val"]
        learning = check_normal_only(val, references.default_scores([labels.class_of(r) for r in val], val_scores)
                                     if val else np.zeros(0), split="val", references=references.embeddings)
    return metrics, learning


def train(images: str | Path = IMAGES_DIR, out: str | Path = MODELS_DIR, *, settings: TrainSettings = TrainSettings(),
          model_settings: ModelSettings = ModelSettings(), distribute: DistributeSettings = DistributeSettings(),
          name: str | None = None, progress: bool = True, splits: list[str] | None = None,
          keep_failed: bool = False) -> Path | None:
    """Train a model on the images in ``images`` and write a run folder below ``out``.

    The run is whole or absent: it is written into a hidden folder beside ``out/<name>``
    (:func:`spectro.runs.staging_folder`) and renamed to ``out/<name>`` only when it is complete; an error or an
    interruption (Ctrl-C) removes that folder, so the same ``name`` can be trained again, and ``out/latest`` only
    ever points at a whole run.

    Parameters
    ----------
    splits : list of str, optional
        A given split (``train``/``val``/``test`` per manifest row, e.g. for cross-validation) instead
        of :func:`spectro.training.splits.split_rows`.
    keep_failed : bool
        Keep the run folder of a model that did not learn (for inspection; it is never linked as latest).
    distribute : DistributeSettings
        Devices and precision (:mod:`spectro.training.distribute`). With ``TF_CONFIG`` set, every worker
        of the cluster runs this function; the chief writes the run folder, the others a temporary one.

    Returns
    -------
    Path or None
        The run folder (``out/<name>``); ``out/latest`` points at it. ``None`` on the workers of a cluster
        other than the chief.

    Raises
    ------
    SpectroError
        Bad images (see :func:`spectro.features.reader.survey_images`), fewer than two classes, a bad
        weights file, devices that cannot be had; a model that did not learn (``settings.check_learning``):
        the message says so with the figures and what to try, and the run is removed unless ``keep_failed``.
    """
    staging: list[Path] = []  # the folders this call writes into: removed unless the run is finished
    try:
        return _train(images, out, settings=settings, model_settings=model_settings, distribute=distribute,
                      name=name, progress=progress, splits=splits, keep_failed=keep_failed, staging=staging)
    except BaseException:  # an error, or Ctrl-C (KeyboardInterrupt): no half-written run is left behind
        for folder in staging:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _train(images: str | Path, out: str | Path, *, settings: TrainSettings, model_settings: ModelSettings,
           distribute: DistributeSettings, name: str | None, progress: bool, splits: list[str] | None,
           keep_failed: bool, staging: list[Path]) -> Path | None:
    """:func:`train`'s work; each folder it writes into joins ``staging`` as soon as it exists, and the chief's is
    renamed to the run folder at the end."""
    import keras

    started = time.perf_counter()
    if model_settings.weights not in ("imagenet", "none") and not Path(model_settings.weights).is_file():
        raise SpectroError(f"weights file {model_settings.weights} not found: expected 'imagenet', 'none' or a "
                           "Keras .h5/.weights.h5 file")
    placement = place(distribute)  # before TensorFlow runs anything: it may split the CPU into devices
    folder, rows = _manifest_rows(images)
    # the PNG headers alone, before anything trains: one set of settings, one height, every clip a window wide
    survey = survey_images(rows, progress=progress)
    features, image_shape = survey.settings, survey.shape  # a clip's shape: the most common width (ImageSurvey)
    window = window_frames(features, model_settings.window_seconds, image_shape[1], shorten=survey.uniform)
    survey.check_window(window, seconds=model_settings.window_seconds)
    input_shape = (image_shape[0], window)
    if splits is None:
        splits = split_rows(rows, seed=settings.seed, val_fraction=settings.val_fraction,
                            test_fraction=settings.test_fraction, test_ids=settings.test_ids)
    elif len(splits) != len(rows) or not set(splits) <= set(SPLITS) or "train" not in splits:
        raise SpectroError(f"splits must name train/val/test for each of the {len(rows)} images, including some train")
    normal_only = settings.task == NORMAL_ONLY
    moved = 0
    if normal_only:  # abnormal clips only ever measure: none is trained on
        splits, moved = _abnormal_out_of_training(rows, splits, settings)
    rows = [r.with_split(split) for r, split in zip(rows, splits)]
    by_split = {s: [r for r in rows if r.split == s] for s in SPLITS}
    outlier_folder = tempfile.TemporaryDirectory(prefix="spectro-outliers-") if normal_only else None
    labels, fitted_rows, objective = _objective(by_split, settings, features, image_shape, outlier_folder, progress)
    widths = dict(survey.widths)
    extra = [r for s in SPLITS for r in fitted_rows[s] if str(r.path) not in widths]  # outlier exposure's clips
    if extra:
        widths.update(survey_images(extra).widths)
    trained_classes = {labels.class_of(r) for r in fitted_rows["train"]}
    if len(labels.classes) < 2:
        raise SpectroError(f"need at least 2 classes (<machine>/<label> folders) to train, found "
                           f"{list(labels.classes)}")
    task_groups = {labels.group_of(c) for c in trained_classes}
    if len(task_groups) < 2:
        raise SpectroError(f"task {settings.task!r} needs at least 2 of its classes {list(labels.task_classes)} in the "
                           f"training split, found {sorted(task_groups)}")
    untrained = sorted(set(labels.classes) - trained_classes)
    if untrained:
        warnings.warn(f"classes {untrained} have no training images (all held out); the model cannot predict "
                      "them. Choose other --test-ids to silence this", SpectroWarning, stacklevel=2)

    out = Path(out)
    final = out / (name or _run_name(out, settings.task, model_settings.backbone))
    if placement.chief and final.exists() and any(final.iterdir()):
        raise SpectroError(f"{final}: run folder exists and is not empty; choose another --name")
    # every worker of a cluster trains; only the chief keeps what it writes, first in a hidden folder beside the
    # run's final one, renamed to it when the run is whole
    scratch_dir = None if placement.chief else tempfile.TemporaryDirectory(prefix="spectro-worker-")
    run = staging_folder(final) if placement.chief else Path(scratch_dir.name) / final.name

    keras.utils.set_random_seed(settings.seed)
    if distribute.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    from spectro.model.backbones import build_model, unfreeze_top

    with placement.strategy.scope():
        model, base, weights_used = build_model(input_shape, len(labels.classes), model_settings)
    scratch = weights_used == "none"
    if scratch and settings.bn_momentum is not None:
        _set_bn_momentum(base, settings.bn_momentum)
    if placement.chief:  # a folder of this name is left only by a killed process that had this one's id
        shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True, exist_ok=True)
    run = run.resolve()
    staging.append(run)

    labels.save(run)
    write_splits(run, rows)
    config = {
        "format": FORMAT, "features": features.to_dict(), "input_shape": [int(v) for v in input_shape],
        "image_shape": [int(v) for v in image_shape], "task": settings.task,
        **({"normal_only": {"objective": objective, "abnormal_trained_on": 0,
                            "abnormal_moved_out_of_training": moved}} if normal_only else {}),
        "model": {**dataclasses.asdict(model_settings.resolved(weights_used)), "window_frames": int(window),
                  "weights_requested": model_settings.weights, "weights_used": weights_used},
        "seed": settings.seed, "images": str(folder),
        "split": {"test_ids": list(settings.test_ids), "val_fraction": settings.val_fraction,
                  "test_fraction": 0.0 if settings.test_ids else settings.test_fraction,
                  **split_summary(rows, splits)},
        "training": dataclasses.asdict(settings),
        "distribute": {**dataclasses.asdict(distribute), **placement.to_dict(settings.batch_size),
                       "learning_rate_scale": placement.replicas},
        "created": dt.datetime.now().isoformat(timespec="seconds"),
    }
    config["training"]["test_ids"] = list(settings.test_ids)
    save_config(run, config)

    examples = {s: _examples(fitted_rows[s], labels, widths) for s in SPLITS}
    global_batch = settings.batch_size * placement.replicas
    train_data = training_dataset(examples["train"], shape=image_shape, batch_size=global_batch, seed=settings.seed,
                                  settings=settings.augment, db_per_step=features.db_per_step, window=window)
    has_val = len(examples["val"]) > 0
    val_per_clip = -(-VAL_WINDOWS // max(1, len(examples["val"])))  # windows of each clip, spread evenly
    val_windows = max(window_counts(examples["val"], image_shape, window, per_image=val_per_clip), default=0)
    validation = (evaluation_dataset(examples["val"], shape=image_shape, batch_size=global_batch,
                                     replicas=placement.replicas, window=window, per_image=val_per_clip)
                  if has_val else None)
    monitor = "val_loss" if has_val else "loss"
    loss = make_loss(labels.group_matrix, fine_weight=0.0 if settings.task == "failure" else settings.fine_weight)
    metric = make_task_accuracy(labels.group_matrix)
    verbose = 1 if progress else 2

    plan = phases(settings, pretrained=not scratch)
    epochs_run, steps_run, phase_starts, timer = 0, 0, [], _timer()
    best, best_weights = None, None  # over the float phases: the QAT phase keeps its own best
    fitted = model  # what fit() trains: the model, or in the QAT phase its int8 twin (same weights)
    for phase in plan:
        if phase.name == "fine_tune":
            top = settings.fine_tune_layers or len(base.layers)  # 0: the whole base
            unfrozen = unfreeze_top(base, top)
            log.info(f"fine-tuning the top {top} layers of the base "
                     f"({unfrozen} trainable, BatchNorm frozen) at learning rate {phase.learning_rate:g}")
        if phase.name == "qat":
            with placement.strategy.scope():
                fitted, bn_trainable, rounded = _int8_twin(model, base, run, input_shape, image_shape, features,
                                                           settings.seed, model_settings.image_size)
            log.info(f"quantisation-aware fine-tuning: {rounded} layer outputs round as the int8 file's will, "
                     f"BatchNorm frozen, learning rate {phase.learning_rate:g} with cosine decay")
        if phase.name != "full" or not phase_starts:  # "full" after the warm-up keeps the optimizer state
            with placement.strategy.scope():
                fitted.compile(optimizer=keras.optimizers.Adam(phase.learning_rate * placement.replicas),
                               loss=loss, weighted_metrics=[metric])
                _build_state(fitted, train_data)
            placement.prepare(fitted)
        phase_starts.append(epochs_run)
        callbacks = [keras.callbacks.LearningRateScheduler(_schedule(settings, phase, epochs_run, placement.replicas)),
                     timer, keras.callbacks.CSVLogger(run / HISTORY_NAME, append=epochs_run > 0)]
        stopper = None
        if phase.monitored:
            stopper = keras.callbacks.EarlyStopping(monitor, patience=settings.patience, restore_best_weights=True,
                                                    start_from_epoch=epochs_run + phase.start_from, verbose=1)
            callbacks.insert(1, stopper)
            if phase.name != "qat":  # the twin is never saved: model.keras stays plain Keras
                callbacks.insert(2, keras.callbacks.ModelCheckpoint(run / CHECKPOINT_NAME, monitor=monitor,
                                                                    save_best_only=True, initial_value_threshold=best))
        history = fitted.fit(train_data, steps_per_epoch=phase.steps_per_epoch, validation_data=validation,
                             initial_epoch=epochs_run,
                             epochs=epochs_run + phase.epochs, callbacks=callbacks, verbose=verbose,
                             shuffle=False)  # the pipeline shuffles
        epochs_run += len(history.epoch)
        steps_run += len(history.epoch) * phase.steps_per_epoch
        if phase.name == "qat":
            best = stopper.best if stopper is not None else best
            for layer, trainable in bn_trainable:
                layer.trainable = trainable
        elif stopper is not None and stopper.best is not None:
            if best is None or stopper.best < best:  # this phase did best: its best epoch is restored
                best, best_weights = float(stopper.best), model.get_weights()
            else:  # an earlier phase did better: start again from there
                model.set_weights(best_weights)
    clean = _save_clean(model, run / MODEL_NAME)
    plots.training_curves(run / TRAINING_PLOT_NAME, read_history(run), phase_starts=phase_starts[1:],
                          steps_per_epoch=settings.eval_every)

    if outlier_folder is not None:
        outlier_folder.cleanup()
    train_statistics = None  # every training clip's mel statistics: the known machines' and the fusion's
    if placement.chief and not normal_only:  # a normal-only run fits them with its references
        train_statistics = _fit_known_machines(run, by_split["train"], features, image_shape, progress)
    metrics, probs, learning = {}, {}, None
    if normal_only:
        metrics, learning = _normal_only_metrics(run, labels, by_split, settings, features, image_shape, progress)
    for split in ("val", "test") if not normal_only else ():
        if len(examples[split]):
            # the saved model, on this process alone: predictions in the rows' order whatever the strategy
            # every window of each clip, pooled: a clip's probabilities as evaluate and classify compute them
            data = evaluation_dataset(examples[split], shape=image_shape, batch_size=global_batch, window=window)
            per_clip = window_counts(examples[split], image_shape, window)  # each clip's, at its own width
            windows = clean.predict(data.map(lambda x, y, w: x), verbose=0)
            probs[split] = pool(windows, np.repeat(np.arange(len(examples[split])), per_clip), len(examples[split]))
    fusion, statistics = None, {}
    if placement.chief and not normal_only:
        spectra = {split: read_modulation(by_split[split], settings=features) for split in probs}
        fusion, statistics = _fit_fusion(run, labels, by_split, probs, spectra, train_statistics, features,
                                         image_shape, progress)
    if fusion is not None:
        config["anomaly_score"] = {"kind": "fused", "calibrated": fusion.calibrated, "types": fusion.to_dict()}
    scores = {}  # each split's anomaly score: the one users get (a fused run's fused score)
    for split in probs:
        fused = {}  # a fused run: its score, and each part's beside it (the CNN's as its probability)
        if fusion is not None:
            parts = fusion.of_probs(labels, probs[split], spectra[split], [r.machine for r in by_split[split]],
                                    statistics=statistics[split])
            fused = {"scores": parts["fused"], "scorers": {"cnn": labels.anomaly_score(probs[split]),
                                                         **{k: v for k, v in parts.items() if k != "cnn"}}}
        metrics[split] = model_metrics(by_split[split], probs[split], labels, threshold=default_threshold(config),
                                       **fused)
        scores[split] = fused["scores"] if fused else labels.anomaly_score(probs[split])
    checked = next((split for split in ("val", "test") if split in probs), "val")
    if settings.check_learning and not normal_only:
        learning = check_learning(by_split[checked] if checked in scores else [], scores.get(checked, np.zeros(0)),
                                  split=checked)
    if learning is not None:
        config["training"]["learning"] = learning.to_dict()
        if learning.warning():  # too few clips to judge: the run is kept, and says so
            warnings.warn(learning.warning(), SpectroWarning, stacklevel=2)
            config.setdefault("warnings", []).append(learning.warning())
    config["training"].update({"phases": [p.name for p in plan], "epochs_run": epochs_run, "steps_run": steps_run,
                               "steps_per_epoch": [p.steps_per_epoch for p in plan], "best_" + monitor: best,
                               "val_windows_per_clip": val_windows, "epoch_seconds": [round(t, 2) for t in
                                                                                          timer.seconds],
                               "images_per_second": _throughput(global_batch, timer.batches, timer.seconds),
                               "seconds": round(time.perf_counter() - started, 1)})
    config["metrics"] = metrics
    config["scorer_files"] = scorer_files(config)  # written above: a reader refuses the run without them
    save_config(run, config)
    placement.barrier()
    if not placement.chief:
        scratch_dir.cleanup()
        return None
    if learning is not None and not learning.learned:
        if not keep_failed:  # train() removes the folder
            raise SpectroError(f"{learning.message()}. The run was removed (--keep-failed keeps it for inspection)")
        final = finish_run(run, final)
        raise SpectroError(f"{learning.message()}. The run is kept in {final} for inspection, not linked as latest")
    final = finish_run(run, final)
    point_latest(out, final)
    return final


def _build_state(model, data) -> None:
    """Create the optimizer's slots and the loss and metric state of a compiled ``model`` now, from ``data``'s
    element spec, rather than in fit's first step: variables created while TensorFlow traces the training
    step make it trace the whole step a second time (seconds for a MobileNet, in every phase). Keras does
    this itself (``_symbolic_build``, which :mod:`spectro.training.distribute` calls too) only under a
    distribution strategy other than the default one."""
    model._symbolic_build(data_batch=data.element_spec)


def _schedule(settings: TrainSettings, phase: Phase, start: int, scale: int):
    """The learning rate of each epoch of ``phase`` (which starts at epoch ``start``), for
    ``keras.callbacks.LearningRateScheduler``: cosine decay over the phase (from scratch, warm-up and
    full training share one span) or constant; the QAT phase always decays."""
    span_start, span = ((0, _split_steps(settings.steps, settings.eval_every)[0]) if phase.name in ("warmup", "full")
                        else (start, phase.epochs))
    cosine = settings.lr_schedule == "cosine" or phase.name == "qat"
    rate = phase.learning_rate * scale

    def schedule(epoch: int, current: float) -> float:
        return cosine_rate(rate, epoch - span_start, span) if cosine else rate

    return schedule
