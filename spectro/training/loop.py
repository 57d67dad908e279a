"""The training loop: fine-tune a Keras backbone on the spectrogram PNGs into a run folder.

Steps: read ``manifest.csv`` and the PNGs (:func:`spectro.features.reader.read_images`, refusing mixed
feature settings), split by recording (:mod:`spectro.training.splits`), build the model
(:func:`spectro.model.backbones.build_model`), train in phases with augmentation
(:mod:`spectro.training.augment`) and balanced sample weights (:mod:`spectro.model.losses`), end with the
quantisation-aware phase (:mod:`spectro.training.qat`), then write the run folder described in
:mod:`spectro.runs` with the validation and test metrics (:func:`spectro.evaluation.metrics.model_metrics`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spectro.data.layout import NORMAL_LABEL
from spectro.data.manifest import MANIFEST_NAME, ImageRow, read_manifest
from spectro.errors import SpectroError, SpectroWarning
from spectro.evaluation import plots
from spectro.evaluation.metrics import model_metrics
from spectro.export.calibration import model_input
from spectro.features.reader import read_images
from spectro.features.settings import FeatureSettings
from spectro.model.backbones import ModelSettings
from spectro.model.labels import TASKS, LabelSpace
from spectro.model.losses import make_loss, make_task_accuracy, sample_weights
from spectro.paths import IMAGES_DIR, MODELS_DIR
from spectro.runs import (
    DEFAULT_THRESHOLD,
    HISTORY_NAME,
    MODEL_NAME,
    SPLITS,
    TRAINING_PLOT_NAME,
    point_latest,
    read_history,
    save_config,
    write_splits,
)
from spectro.training.augment import AugmentSettings, augment
from spectro.training.splits import split_rows, split_summary

LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainSettings:
    """How to split and train (stored in ``config.json`` under ``training``).

    Parameters
    ----------
    task : str
        ``failure``, ``anomaly`` or ``machine`` (see :mod:`spectro.model.labels`).
    epochs : int
        Epochs of the first phase (the head, or the whole network when training from scratch).
    fine_tune_epochs, fine_tune_layers, fine_tune_learning_rate
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
    qat_epochs : int
        Last phase: quantisation-aware fine-tuning (:mod:`spectro.training.qat`) of the best model so far, so that
        its int8 TFLite file answers as it does. It trains the model's int8 twin at
        ``fine_tune_learning_rate``, decaying along a half cosine whatever ``lr_schedule``, with BatchNorm
        frozen, and keeps the epoch with the twin's best validation loss. 0 skips it.
    """

    task: str = "failure"
    epochs: int = 40
    fine_tune_epochs: int = 10
    fine_tune_layers: int = 0
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    patience: int = 6
    fine_weight: float = 0.3
    bn_momentum: float | None = 0.9
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    test_ids: tuple[str, ...] = ()
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    lr_schedule: str = "constant"
    # the default length of the quantisation-aware phase is chosen in docs/quantization.md
    qat_epochs: int = 16

    def __post_init__(self) -> None:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.epochs < 1 or self.fine_tune_epochs < 0 or self.qat_epochs < 0:
            problems.append(f"need epochs >= 1 and fine-tune and QAT epochs >= 0, got {self.epochs}, "
                            f"{self.fine_tune_epochs}, {self.qat_epochs}")
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
        if self.patience < 1:
            problems.append(f"patience must be >= 1, got {self.patience}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum < 1:
            problems.append(f"bn_momentum must be in (0, 1), got {self.bn_momentum}")
        if problems:
            raise SpectroError("invalid training settings: " + "; ".join(problems))


# -- data feeding -----------------------------------------------------------------------------------
def epoch_images(pixels: np.ndarray, *, rng: np.random.Generator, augment_settings: AugmentSettings,
                 db_per_step: float, backgrounds: list | None = None, chunk: int = 1024) -> np.ndarray:
    """One epoch's augmented copy of the training images, float32 ``(n, n_mels, frames, 1)``.

    A whole epoch is augmented at once and handed to ``fit`` as an array: on 2 CPU cores this trains
    faster than a ``keras.utils.PyDataset`` (its generator thread competes with TensorFlow's threads).
    ``chunk`` bounds the augmentation's temporaries on large training sets.
    """
    out = np.empty((*pixels.shape, 1), dtype=np.float32)
    for start in range(0, len(pixels), chunk):
        part = slice(start, start + chunk)
        pools = None if backgrounds is None else backgrounds[part]
        out[part, ..., 0] = augment(pixels[part], rng=rng, settings=augment_settings, db_per_step=db_per_step,
                                    backgrounds=pools)
    return out


def cosine_rate(rate: float, step: int, steps: int, *, floor: float = 0.02) -> float:
    """Cosine decay of ``rate`` over ``steps`` epochs (epoch ``step``, from 0), ending at ``floor * rate``."""
    if steps <= 1:
        return rate
    return rate * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * step / (steps - 1))))


def _background_pools(pixels: np.ndarray, labels: LabelSpace, y: np.ndarray, limit: int = 64) -> list:
    """For each training image, a pool of normal images of the same machine (its own class excluded)."""
    pools_by_machine = {}
    for c, cls in enumerate(labels.classes):
        machine, label = cls.split("/", 1)
        if label == NORMAL_LABEL:
            idx = np.flatnonzero(y == c)[:limit]
            if len(idx):
                pools_by_machine[machine] = pixels[idx]
    return [pools_by_machine.get(labels.classes[c].split("/", 1)[0]) for c in y]


# -- training ---------------------------------------------------------------------------------------
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

        def on_epoch_begin(self, epoch, logs=None):
            self._start = self._last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self._last = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(self._last - self._start)

    return EpochTimer()


def _one_epoch(rate: float):
    """A callback that ends ``fit`` after one epoch (each epoch gets freshly augmented arrays) and adds
    the epoch's ``learning_rate`` to its logs (so ``history.csv`` shows the schedule)."""
    import keras

    class OneEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = rate
            self.model.stop_training = True

    return OneEpoch()


class _BestKeeper:
    """Early stopping with the best weights restored, and a checkpoint of the best model on disk.

    Keras' EarlyStopping and ModelCheckpoint reset with every ``fit`` call, and training calls ``fit``
    once per epoch, so their job is done here across calls: the model of the best monitored epoch is
    saved to ``path`` (over all phases), and a phase stops after ``patience`` epochs without improvement.
    """

    def __init__(self, path: Path, *, monitor: str, patience: int):
        self.path, self.monitor, self.patience = path, monitor, patience
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_weights = None
        self.monitored, self.wait = False, 0

    def start_phase(self, monitored: bool, *, fresh: bool = False) -> None:
        """Start a phase; ``fresh`` forgets the best so far (a phase monitored by another measure)."""
        self.monitored, self.wait = monitored, 0
        if fresh:
            self.best = self.best_epoch = self.best_weights = None

    def update(self, model, epoch: int, value: float) -> bool:
        """Record epoch ``epoch``'s monitored ``value``; True when the phase should stop."""
        if not self.monitored:
            return False
        if self.best is None or value < self.best:
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            self.best_weights = model.get_weights()
            tmp = self.path.with_name(".tmp." + self.path.name)
            model.save(tmp)
            os.replace(tmp, self.path)
            return False
        self.wait += 1
        if self.wait >= self.patience:
            print(f"early stopping: {self.monitor} has not improved for {self.patience} epochs "
                  f"(best {self.best:.4f} at epoch {self.best_epoch + 1})")
            return True
        return False

    def restore(self, model) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)


def _int8_twin(model, base, run: Path, input_shape, features: FeatureSettings, seed: int, image_size: int):
    """The model's int8 twin (:func:`spectro.training.qat.int8_twin`), calibrated on the images ``spectro export``
    calibrates on, with the base's BatchNorm frozen; also the BatchNorm layers' former ``trainable`` flags
    and the number of layer outputs the twin rounds."""
    import keras

    from spectro.export.calibration import DEFAULT_CALIBRATION_IMAGES, representative_images
    from spectro.training.qat import int8_twin, kept_layers

    bn_trainable = [(layer, layer.trainable) for layer in base.layers
                    if isinstance(layer, keras.layers.BatchNormalization)]
    for layer, _ in bn_trainable:
        layer.trainable = False
    calibration = representative_images(run, DEFAULT_CALIBRATION_IMAGES, input_shape=input_shape,
                                         image_size=image_size, seed=seed, features=features)
    return int8_twin(model, calibration, seed=seed), bn_trainable, len(kept_layers(model))


def _throughput(n_images: int, seconds: list[float]) -> float:
    """Training images per second, leaving out the first epoch (graph tracing) when there are more."""
    steady = seconds[1:] or seconds
    return round(n_images * len(steady) / max(sum(steady), 1e-9), 1)


def _save_clean(model, path: Path) -> None:
    """Save ``model`` without compile state, so it loads anywhere with plain Keras."""
    import keras

    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    tmp = path.with_name(".tmp." + path.name)
    clean.save(tmp)
    os.replace(tmp, path)


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


def train(images: str | Path = IMAGES_DIR, out: str | Path = MODELS_DIR, *, settings: TrainSettings = TrainSettings(),
          model_settings: ModelSettings = ModelSettings(), name: str | None = None, progress: bool = True,
          splits: list[str] | None = None) -> Path:
    """Train a model on the images in ``images`` and write a run folder below ``out``.

    Parameters
    ----------
    splits : list of str, optional
        A given split (``train``/``val``/``test`` per manifest row, e.g. for cross-validation) instead
        of :func:`split_rows`.

    Returns
    -------
    Path
        The run folder (``out/<name>``); ``out/latest`` points at it.

    Raises
    ------
    SpectroError
        Bad images (see :func:`spectro.features.reader.read_images`), fewer than two classes, a bad weights file.
    """
    import keras

    started = time.perf_counter()
    if model_settings.weights not in ("imagenet", "none") and not Path(model_settings.weights).is_file():
        raise SpectroError(f"weights file {model_settings.weights} not found: expected 'imagenet', 'none' or a "
                           "Keras .h5/.weights.h5 file")
    folder, rows = _manifest_rows(images)
    pixels, features = read_images(rows, progress=progress)
    if splits is None:
        splits = split_rows(rows, seed=settings.seed, val_fraction=settings.val_fraction,
                            test_fraction=settings.test_fraction, test_ids=settings.test_ids)
    elif len(splits) != len(rows) or not set(splits) <= set(SPLITS) or "train" not in splits:
        raise SpectroError(f"splits must name train/val/test for each of the {len(rows)} images, including some train")
    labels = LabelSpace.from_pairs([(r.machine, r.label) for r in rows], task=settings.task)
    train_rows = [r for r, s in zip(rows, splits) if s == "train"]
    trained_classes = {f"{r.machine}/{r.label}" for r in train_rows}
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
    run = out / (name or _run_name(out, settings.task, model_settings.backbone))
    if run.exists() and any(run.iterdir()):
        raise SpectroError(f"{run}: run folder exists and is not empty; choose another --name")

    keras.utils.set_random_seed(settings.seed)
    from spectro.model.backbones import build_model, unfreeze_top

    y = np.array([labels.index(r.machine, r.label) for r in rows])
    idx = {s: np.flatnonzero(np.array(splits) == s) for s in SPLITS}
    input_shape = pixels.shape[1:3]
    model, base, weights_used = build_model(input_shape, len(labels.classes), model_settings)
    scratch = weights_used == "none"
    if scratch and settings.bn_momentum is not None:
        _set_bn_momentum(base, settings.bn_momentum)
    run.mkdir(parents=True, exist_ok=True)
    run = run.resolve()

    labels.save(run)
    rows = [r.with_split(split) for r, split in zip(rows, splits)]
    write_splits(run, rows)
    config = {
        "features": features.to_dict(), "input_shape": [int(v) for v in input_shape],
        "task": settings.task,
        "model": {**dataclasses.asdict(model_settings), "weights_requested": model_settings.weights,
                  "weights_used": weights_used},
        "seed": settings.seed, "images": str(folder),
        "split": {"test_ids": list(settings.test_ids), "val_fraction": settings.val_fraction,
                  "test_fraction": 0.0 if settings.test_ids else settings.test_fraction,
                  **split_summary(rows, splits)},
        "training": dataclasses.asdict(settings),
        "created": dt.datetime.now().isoformat(timespec="seconds"),
    }
    config["training"]["test_ids"] = list(settings.test_ids)
    save_config(run, config)

    x_train, y_train = pixels[idx["train"]], y[idx["train"]]
    w_train = sample_weights(labels, y_train)
    backgrounds = (_background_pools(x_train, labels, y_train) if settings.augment.mix_probability > 0 else None)
    has_val = len(idx["val"]) > 0
    validation = None
    if has_val:
        y_val = y[idx["val"]]
        validation = (model_input(pixels[idx["val"]]), y_val,
                      sample_weights(labels, y_val))
    monitor = "val_loss" if has_val else "loss"
    loss = make_loss(labels.group_matrix, fine_weight=0.0 if settings.task == "failure" else settings.fine_weight)
    metric = make_task_accuracy(labels.group_matrix)
    verbose = 1 if progress else 2

    # (name, epochs, learning rate, monitored). From scratch the first third of the epochs is a warm-up
    # without early stopping or checkpoints: while the BatchNorm statistics of a random network settle, its
    # inference-mode validation loss says little, and "best" would otherwise be an untrained epoch.
    phases = []
    if scratch:
        warmup = min(settings.epochs - 1, settings.epochs // 3)
        if warmup:
            phases.append(("warmup", warmup, settings.learning_rate, False))
        phases.append(("full", settings.epochs - warmup, settings.learning_rate, True))
    else:
        phases.append(("head", settings.epochs, settings.learning_rate, True))
        if settings.fine_tune_epochs > 0:
            phases.append(("fine_tune", settings.fine_tune_epochs, settings.fine_tune_learning_rate, True))
    if settings.qat_epochs > 0:
        phases.append(("qat", settings.qat_epochs, settings.fine_tune_learning_rate, True))
    rng = np.random.default_rng(settings.seed)
    keeper = _BestKeeper(run / MODEL_NAME, monitor=monitor, patience=settings.patience)
    epochs_run, phase_starts, timer = 0, [], _timer()
    total_epochs = sum(phase[1] for phase in phases)
    fitted = model  # what fit() trains: the model, or in the QAT phase its int8 twin (same weights)
    for phase, epochs, lr, monitored in phases:
        if phase == "fine_tune":
            top = settings.fine_tune_layers or len(base.layers)  # 0: the whole base
            unfrozen = unfreeze_top(base, top)
            print(f"fine-tuning the top {top} layers of the base "
                  f"({unfrozen} trainable, BatchNorm frozen) at learning rate {lr:g}")
        if phase == "qat":
            fitted, bn_trainable, rounded = _int8_twin(model, base, run, input_shape, features,
                                                       settings.seed, model_settings.image_size)
            print(f"quantisation-aware fine-tuning: {rounded} layer outputs round as the int8 file's will, "
                  f"BatchNorm frozen, learning rate {lr:g} with cosine decay")
        if not (phase == "full" and phase_starts):  # "full" after the warm-up keeps the optimizer state
            fitted.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, weighted_metrics=[metric])
        phase_starts.append(epochs_run)
        # one learning-rate schedule per phase; from scratch, warm-up and full training share one
        span_start, span = (0, settings.epochs) if phase in ("warmup", "full") else (epochs_run, epochs)
        cosine = settings.lr_schedule == "cosine" or phase == "qat"
        # the twin's validation loss is another measure than the float model's: its phase keeps its own best
        keeper.start_phase(monitored, fresh=phase == "qat")
        for epoch in range(epochs_run, epochs_run + epochs):
            rate = cosine_rate(lr, epoch - span_start, span) if cosine else lr
            fitted.optimizer.learning_rate.assign(rate)
            x = epoch_images(x_train, rng=rng, augment_settings=settings.augment,
                             db_per_step=features.db_per_step, backgrounds=backgrounds)
            # epochs=<all phases' epochs> with a one-epoch stop keeps Keras' "Epoch k/N" display right
            history = fitted.fit(x, y_train, sample_weight=w_train, batch_size=settings.batch_size, shuffle=True,
                                 validation_data=validation, initial_epoch=epoch, epochs=total_epochs,
                                 callbacks=[_one_epoch(rate), timer,
                                            keras.callbacks.CSVLogger(run / HISTORY_NAME, append=epoch > 0)],
                                 verbose=verbose)
            del x
            if keeper.update(model, epoch, history.history[monitor][-1]):
                break
        epochs_run = epoch + 1
        keeper.restore(model)  # the next phase (and the saved model) start from this phase's best epoch
        if phase == "qat":
            for layer, trainable in bn_trainable:
                layer.trainable = trainable
    _save_clean(model, run / MODEL_NAME)
    plots.training_curves(run / TRAINING_PLOT_NAME, read_history(run), phase_starts=phase_starts[1:])

    metrics = {}
    for split in ("val", "test"):
        if len(idx[split]):
            probs = model.predict(model_input(pixels[idx[split]]), batch_size=64, verbose=0)
            metrics[split] = model_metrics([rows[i] for i in idx[split]], probs, labels, threshold=DEFAULT_THRESHOLD)
    config["training"].update({"phases": [p[0] for p in phases], "epochs_run": epochs_run,
                               "best_" + monitor: keeper.best,
                               "epoch_seconds": [round(t, 2) for t in timer.seconds],
                               "images_per_second": _throughput(len(idx["train"]), timer.seconds),
                               "seconds": round(time.perf_counter() - started, 1)})
    config["metrics"] = metrics
    save_config(run, config)
    point_latest(out, run)
    return run


# -- CLI --------------------------------------------------------------------------------------------
