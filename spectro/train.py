"""``spectro train``: fine-tune a Keras backbone on the spectrogram PNGs into a run folder.

Steps: read ``manifest.csv`` and the PNGs (refusing mixed feature settings), split by source clip
(stratified by machine and label, seeded; ``--test-ids`` holds whole machine ids out), build the model
(:func:`spectro.model.build_model`), train with augmentation and balanced sample weights, then write the
run folder described in :mod:`spectro.runs` and print the test-split metrics.

The loss is the cross-entropy of the task's groups (``p_task = p_fine @ G``, see
:attr:`spectro.labels.LabelSpace.group_matrix`) plus, for tasks other than ``failure``, a lighter
fine-class cross-entropy so the failure type is still learned.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import math
import os
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spectro.augment import AugmentSettings, augment
from spectro.config import IMAGES_DIR, MODELS_DIR, NORMAL_LABEL, FeatureSettings
from spectro.dataset import MANIFEST_NAME, ManifestRow, read_manifest
from spectro.errors import SpectroError, SpectroWarning
from spectro.labels import TASKS, LabelSpace
from spectro.model import BACKBONES, RESIZE_METHODS, ModelSettings
from spectro.runs import MODEL_NAME, SPLITS_NAME, point_latest, save_config

HELP = ("Fine-tune a Keras image backbone (MobileNet by default) on the spectrogram PNGs of IMAGES "
        "(written by 'spectro images') and write a run folder to OUT/<run-name>/: model.keras, labels.json, "
        "config.json, splits.csv, history.csv and training.png; OUT/latest points at it. Images are split by "
        "source recording, stratified by machine and label. With pretrained weights the base is frozen while "
        "a new head trains, then its top layers are fine-tuned at a small learning rate; with random "
        "initialisation (--weights none, or ImageNet weights that cannot be had) the whole network trains "
        "in one phase. A last, quantisation-aware phase (--qat-epochs) trains the model to answer the same "
        "after the rounding of an int8 TFLite file. Whatever --task, the model gives an anomaly score (summed "
        "probability of the abnormal classes) and the most likely failure type.")

SPLITS = ("train", "val", "test")
LR_SCHEDULES = ("cosine", "constant")
HISTORY_NAME = "history.csv"
PLOT_NAME = "training.png"
SPLIT_COLUMNS = ["image", "source", "machine", "machine_id", "label", "snr", "segment", "split"]


@dataclass(frozen=True)
class TrainSettings:
    """How to split and train (stored in ``config.json`` under ``training``).

    Parameters
    ----------
    task : str
        ``failure``, ``anomaly`` or ``machine`` (see :mod:`spectro.labels`).
    epochs : int
        Epochs of the first phase (the head, or the whole network when training from scratch).
    fine_tune_epochs, fine_tune_layers, fine_tune_learning_rate
        Second phase with pretrained weights: the top ``fine_tune_layers`` of the base (0: all of it, as
        the keras-io guide does) are unfrozen (BatchNorm stays frozen) and trained at
        ``fine_tune_learning_rate``. Skipped from scratch. The whole base is the default (it did better
        than the top 60 layers on the real MIMII sample: see the README).
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
        Last phase: quantisation-aware fine-tuning (:mod:`spectro.qat`) of the best model so far, so that
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
    # README, "int8 and quantisation-aware fine-tuning": 16 epochs cut the int8 flips of two default models
    # over their 960 images from 35 and 26 to 7 and 8; 8 epochs had left a new default model at 97.9 %
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


# -- loading ----------------------------------------------------------------------------------------
@dataclass
class ImageSet:
    """The images of one folder, in memory."""

    folder: Path
    rows: list[ManifestRow]
    paths: list[Path]
    pixels: np.ndarray  # (n, n_mels, frames) uint8
    settings: FeatureSettings


def load_images(folder: str | Path, *, progress: bool = False) -> ImageSet:
    """Read ``manifest.csv`` and every PNG it lists into one uint8 array.

    Raises
    ------
    SpectroError
        No folder, no manifest, no images, images rendered with different feature settings, or images
        of different shapes.
    """
    from tqdm import tqdm

    from spectro.images import read_info, read_pixels

    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise SpectroError(f"{folder}: no such folder (expected the images written by 'spectro images')")
    if not (folder / MANIFEST_NAME).is_file():
        raise SpectroError(f"{folder}: no {MANIFEST_NAME} (expected a folder rendered by 'spectro images'; "
                           "render recordings with 'spectro images DATA --out FOLDER')")
    rows = read_manifest(folder / MANIFEST_NAME)
    if not rows:
        raise SpectroError(f"{folder / MANIFEST_NAME}: lists no images; render recordings with 'spectro images'")
    by_hash: dict[str, ManifestRow] = {}
    for row in rows:
        by_hash.setdefault(row.settings_hash, row)
    infos = {h: read_info(folder / r.image) for h, r in by_hash.items()}
    if len(infos) > 1:
        (h1, i1), (h2, i2) = list(infos.items())[:2]
        d1, d2 = i1.settings.to_dict(), i2.settings.to_dict()
        diff = ", ".join(f"{k}={d1[k]!r} vs {d2[k]!r}" for k in d1 if d1[k] != d2[k])
        raise SpectroError(f"{folder}: images rendered with {len(infos)} different feature settings "
                           f"({by_hash[h1].image}: {h1}, {by_hash[h2].image}: {h2}; {diff}); "
                           "re-render them all with one set of settings")
    settings = next(iter(infos.values())).settings
    paths = [folder / r.image for r in rows]
    first = read_pixels(paths[0])
    pixels = np.empty((len(rows), *first.shape), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc="reading images", unit="img", disable=not progress, leave=False)):
        image = first if i == 0 else read_pixels(path)
        if image.shape != first.shape:
            raise SpectroError(f"images of different shapes: {rows[0].image} is {first.shape}, {rows[i].image} "
                               f"is {image.shape}; expected one shape (re-render with fixed-length segments)")
        pixels[i] = image
    return ImageSet(folder=folder, rows=rows, paths=paths, pixels=pixels, settings=settings)


# -- splitting --------------------------------------------------------------------------------------
def _held_out(row: ManifestRow, test_ids: tuple[str, ...]) -> bool:
    return row.machine_id in test_ids or f"{row.machine}/{row.machine_id}" in test_ids


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for ``n`` source clips: rounded fractions, at least 1 each when ``n`` allows it."""
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n >= 3:
        n_test = max(n_test, 1) if test_fraction > 0 else 0
        n_val = max(n_val, 1) if val_fraction > 0 else 0
    elif n == 2:
        n_test, n_val = 0, int(val_fraction > 0)
    else:
        n_test = n_val = 0
    while n - n_val - n_test < 1:  # keep one clip for training
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def split_rows(rows: list[ManifestRow], *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
               test_ids: tuple[str, ...] | list[str] = ()) -> list[str]:
    """A split name (``train``/``val``/``test``) for each row.

    All segments of one source recording land in the same split; within each (machine, label) stratum
    the source clips are shuffled with ``seed`` and cut by the fractions (at least one clip in val and
    test when the stratum has three or more). With ``test_ids`` the rows of those machine ids are the
    test split and the rest is cut into train and val only.

    Raises
    ------
    SpectroError
        A test id that matches no image, or test ids that leave nothing to train on.
    """
    test_ids = tuple(test_ids)
    if test_ids:
        known = {r.machine_id for r in rows} | {f"{r.machine}/{r.machine_id}" for r in rows}
        unknown = [t for t in test_ids if t not in known]
        if unknown:
            ids = sorted({r.machine_id for r in rows if r.machine_id})
            raise SpectroError(f"test ids {unknown} match no image; the images have machine ids {ids or 'none'} "
                               "(give id_XX or <machine>/id_XX)")
        test_fraction = 0.0
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    split_of_source: dict[str, str] = {}
    for row in rows:
        key = row.source or row.image
        if test_ids and _held_out(row, test_ids):
            split_of_source[key] = "test"
        elif key not in strata[(row.machine, row.label)]:
            strata[(row.machine, row.label)].append(key)
    rng = np.random.default_rng(seed)
    for stratum in sorted(strata):
        sources = sorted(strata[stratum])
        rng.shuffle(sources)
        n_val, n_test = _split_counts(len(sources), val_fraction, test_fraction)
        for i, source in enumerate(sources):
            split_of_source[source] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    splits = [split_of_source[r.source or r.image] for r in rows]
    if "train" not in splits:
        raise SpectroError(f"nothing left to train on: test ids {list(test_ids)} hold out every image")
    return splits


def write_splits(path: str | Path, image_set: ImageSet, splits: list[str]) -> Path:
    """``splits.csv``: absolute image path, source, machine, machine_id, label, snr, segment, split."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPLIT_COLUMNS)
        for row, image, split in zip(image_set.rows, image_set.paths, splits):
            writer.writerow([str(image), row.source, row.machine, row.machine_id, row.label, row.snr, row.segment,
                             split])
    return path


def split_summary(rows: list[ManifestRow], splits: list[str]) -> dict:
    """Images and source clips per split and fine class."""
    summary: dict = {}
    for name in SPLITS:
        chosen = [r for r, s in zip(rows, splits) if s == name]
        summary[name] = {"images": len(chosen), "clips": len({r.source or r.image for r in chosen}),
                         "classes": dict(sorted(Counter(f"{r.machine}/{r.label}" for r in chosen).items()))}
    return summary


# -- loss and weights -------------------------------------------------------------------------------
def sample_weights(labels: LabelSpace, y: np.ndarray) -> np.ndarray:
    """Balanced weights for fine-class indices ``y``, mean 1.

    Every (machine, normal/abnormal) cell present gets the same total weight, shared equally among its
    fine classes: normal and abnormal count alike (MIMII has ~4× more normal clips), and so does each
    failure type within a machine.
    """
    y = np.asarray(y, dtype=int)
    counts = np.bincount(y, minlength=len(labels.classes)).astype(float)
    cell_of = [(c.split("/", 1)[0], bool(a)) for c, a in zip(labels.classes, labels.abnormal_mask)]
    present = [i for i in range(len(labels.classes)) if counts[i] > 0]
    cells = Counter(cell_of[i] for i in present)
    per_class = np.zeros(len(labels.classes))
    for i in present:
        per_class[i] = 1.0 / (len(cells) * cells[cell_of[i]] * counts[i])
    weights = per_class[y]
    return (weights / weights.mean()).astype(np.float32)


def make_loss(group_matrix: np.ndarray, *, fine_weight: float):
    """Cross-entropy on the task groups of the fine softmax, plus ``fine_weight`` × fine cross-entropy.

    ``y_true`` holds fine-class indices; with an identity ``group_matrix`` and ``fine_weight=0`` this is
    the ordinary sparse categorical cross-entropy.
    """
    from keras import ops

    matrix = np.asarray(group_matrix, dtype=np.float32)
    n_fine = matrix.shape[0]
    eps = 1e-7

    def spectro_task_loss(y_true, y_pred):
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), n_fine)
        task_true = ops.matmul(onehot, matrix)
        task_pred = ops.clip(ops.matmul(y_pred, matrix), eps, 1.0)
        loss = -ops.sum(task_true * ops.log(task_pred), axis=-1)
        if fine_weight:
            loss = loss + fine_weight * -ops.sum(onehot * ops.log(ops.clip(y_pred, eps, 1.0)), axis=-1)
        return loss

    return spectro_task_loss


def make_task_accuracy(group_matrix: np.ndarray):
    """Keras metric: accuracy of the task's groups (``argmax(p @ G)``) for fine-class targets."""
    from keras import ops

    matrix = np.asarray(group_matrix, dtype=np.float32)
    n_fine = matrix.shape[0]

    def task_accuracy(y_true, y_pred):
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), n_fine)
        truth = ops.argmax(ops.matmul(onehot, matrix), axis=-1)
        guess = ops.argmax(ops.matmul(y_pred, matrix), axis=-1)
        return ops.cast(ops.equal(truth, guess), "float32")

    return task_accuracy


# -- data feeding -----------------------------------------------------------------------------------
def epoch_images(pixels: np.ndarray, *, rng: np.random.Generator, augment_settings: AugmentSettings,
                 db_per_step: float, backgrounds: list | None = None, chunk: int = 1024) -> np.ndarray:
    """One epoch's augmented copy of the training images, float32 ``(n, n_mels, frames, 1)``.

    A whole epoch is augmented at once and handed to ``fit`` as an array: on 2 CPU cores this trains
    about twice as fast as a ``keras.utils.PyDataset`` (its generator thread fights TensorFlow's threads).
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


# -- metrics ----------------------------------------------------------------------------------------
def _auc(y_true: np.ndarray, score: np.ndarray) -> dict:
    """AUC and pAUC as :mod:`spectro.metrics` computes them; empty when only one class is present."""
    from spectro.metrics import anomaly_auc, anomaly_pauc

    auc = anomaly_auc(y_true, score)
    return {} if auc is None else {"anomaly_auc": auc, "anomaly_pauc": anomaly_pauc(y_true, score)}


def split_metrics(probs: np.ndarray, rows: list[ManifestRow], labels: LabelSpace) -> dict:
    """Task accuracy, balanced accuracy, fine accuracy, anomaly ROC AUC/pAUC (max FPR 0.1), per machine too.

    When images are segments of longer recordings, ``clip_anomaly_auc`` scores each recording as the
    mean anomaly score of its segments.
    """
    from sklearn.metrics import balanced_accuracy_score

    if not rows:
        return {}
    fine_true = [f"{r.machine}/{r.label}" for r in rows]
    task_true = [labels.group_of(c) for c in fine_true]
    task_pred = labels.predicted(probs)
    fine_pred = [labels.classes[i] for i in probs.argmax(axis=-1)]
    abnormal = np.array([r.label != NORMAL_LABEL for r in rows])
    score = labels.anomaly_score(probs)
    metrics = {"images": len(rows),
               "task_accuracy": float(np.mean([a == b for a, b in zip(task_true, task_pred)])),
               "task_balanced_accuracy": float(balanced_accuracy_score(task_true, task_pred)),
               "fine_accuracy": float(np.mean([a == b for a, b in zip(fine_true, fine_pred)])),
               **_auc(abnormal, score)}
    if abnormal.any():
        failure = labels.failure_type(probs[abnormal])
        metrics["failure_type_accuracy"] = float(np.mean([a == b for a, b in
                                                          zip(np.array(fine_true)[abnormal], failure)]))
    sources = [r.source or r.image for r in rows]
    if len(set(sources)) < len(sources):
        clip_score: dict[str, list[float]] = defaultdict(list)
        clip_truth = {}
        for s, v, a in zip(sources, score, abnormal):
            clip_score[s].append(float(v))
            clip_truth[s] = bool(a)
        keys = sorted(clip_score)
        clip = _auc(np.array([clip_truth[k] for k in keys]), np.array([np.mean(clip_score[k]) for k in keys]))
        metrics.update({f"clip_{k}": v for k, v in clip.items()})
    per_machine = {}
    for machine in sorted({r.machine for r in rows}):
        mask = np.array([r.machine == machine for r in rows])
        per_machine[machine] = _auc(abnormal[mask], score[mask])
    metrics["per_machine"] = per_machine
    return metrics


def format_metrics(name: str, metrics: dict) -> str:
    if not metrics:
        return f"{name}: no images"
    parts = [f"{name} ({metrics['images']} images): task accuracy {metrics['task_accuracy']:.3f}",
             f"balanced accuracy {metrics['task_balanced_accuracy']:.3f}"]
    if "anomaly_auc" in metrics:
        parts.append(f"anomaly ROC AUC {metrics['anomaly_auc']:.3f}, pAUC(0.1) {metrics['anomaly_pauc']:.3f}")
    if "failure_type_accuracy" in metrics:
        parts.append(f"failure type accuracy {metrics['failure_type_accuracy']:.3f}")
    return ", ".join(parts)


# -- plots ------------------------------------------------------------------------------------------
def plot_history(history_csv: str | Path, path: str | Path, *, phase_starts: list[int] = ()) -> Path:
    """``training.png``: loss and task accuracy per epoch, train and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Path(history_csv).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    epochs = np.arange(1, len(rows) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "task_accuracy", "task accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            column = prefix + key
            if rows and column in rows[0]:
                ax.plot(epochs, [float(r[column]) for r in rows], style, marker=".",
                        label="validation" if prefix else "training")
        for start in phase_starts:
            ax.axvline(start + 0.5, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


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
    """The model's int8 twin (:func:`spectro.qat.int8_twin`), calibrated on the images ``spectro export``
    calibrates on, with the base's BatchNorm frozen; also the BatchNorm layers' former ``trainable`` flags
    and the number of layer outputs the twin rounds."""
    import keras

    from spectro.export import ExportSettings, representative_images
    from spectro.qat import int8_twin, kept_layers

    bn_trainable = [(layer, layer.trainable) for layer in base.layers
                    if isinstance(layer, keras.layers.BatchNormalization)]
    for layer, _ in bn_trainable:
        layer.trainable = False
    calibration = representative_images(run, ExportSettings().representative, input_shape=input_shape,
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
        Bad images (see :func:`load_images`), fewer than two classes, a bad weights file.
    """
    import keras

    started = time.perf_counter()
    if model_settings.weights not in ("imagenet", "none") and not Path(model_settings.weights).is_file():
        raise SpectroError(f"weights file {model_settings.weights} not found: expected 'imagenet', 'none' or a "
                           "Keras .h5/.weights.h5 file")
    image_set = load_images(images, progress=progress)
    rows = image_set.rows
    if splits is None:
        splits = split_rows(rows, seed=settings.seed, val_fraction=settings.val_fraction,
                            test_fraction=settings.test_fraction, test_ids=settings.test_ids)
    elif len(splits) != len(rows) or not set(splits) <= set(SPLITS) or "train" not in splits:
        raise SpectroError(f"splits must name train/val/test for each of the {len(rows)} images, including some train")
    labels = LabelSpace.from_pairs([(r.machine, r.label) for r in rows], task=settings.task)
    train_rows = [r for r, s in zip(rows, splits) if s == "train"]
    trained_classes = {f"{r.machine}/{r.label}" for r in train_rows}
    if len(labels.classes) < 2:
        raise SpectroError(f"need at least 2 classes (<machine>/<label> folders) to train, found {list(labels.classes)}")
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
    from spectro.model import build_model, unfreeze_top

    y = np.array([labels.index(r.machine, r.label) for r in rows])
    idx = {s: np.flatnonzero(np.array(splits) == s) for s in SPLITS}
    input_shape = image_set.pixels.shape[1:3]
    model, base, weights_used = build_model(input_shape, len(labels.classes), model_settings)
    scratch = weights_used == "none"
    if scratch and settings.bn_momentum is not None:
        _set_bn_momentum(base, settings.bn_momentum)
    run.mkdir(parents=True, exist_ok=True)
    run = run.resolve()

    labels.save(run)
    write_splits(run / SPLITS_NAME, image_set, splits)
    config = {
        "features": image_set.settings.to_dict(), "input_shape": [int(v) for v in input_shape],
        "task": settings.task,
        "model": {**dataclasses.asdict(model_settings), "weights_requested": model_settings.weights,
                  "weights_used": weights_used},
        "seed": settings.seed, "images": str(image_set.folder),
        "split": {"test_ids": list(settings.test_ids), "val_fraction": settings.val_fraction,
                  "test_fraction": 0.0 if settings.test_ids else settings.test_fraction,
                  **split_summary(rows, splits)},
        "training": dataclasses.asdict(settings),
        "created": dt.datetime.now().isoformat(timespec="seconds"),
    }
    config["training"]["test_ids"] = list(settings.test_ids)
    save_config(run, config)

    x_train, y_train = image_set.pixels[idx["train"]], y[idx["train"]]
    w_train = sample_weights(labels, y_train)
    backgrounds = (_background_pools(x_train, labels, y_train) if settings.augment.mix_probability > 0 else None)
    has_val = len(idx["val"]) > 0
    validation = None
    if has_val:
        y_val = y[idx["val"]]
        validation = (image_set.pixels[idx["val"]][..., None].astype(np.float32), y_val,
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
            fitted, bn_trainable, rounded = _int8_twin(model, base, run, input_shape, image_set.settings,
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
                             db_per_step=image_set.settings.db_per_step, backgrounds=backgrounds)
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
    plot_history(run / HISTORY_NAME, run / "training.png", phase_starts=phase_starts[1:])

    metrics = {}
    for split in ("val", "test"):
        if len(idx[split]):
            probs = model.predict(image_set.pixels[idx[split]][..., None].astype(np.float32), batch_size=64,
                                  verbose=0)
            metrics[split] = split_metrics(probs, [rows[i] for i in idx[split]], labels)
    config["training"].update({"phases": [p[0] for p in phases], "epochs_run": epochs_run,
                               "best_" + monitor: keeper.best,
                               "epoch_seconds": [round(t, 2) for t in timer.seconds],
                               "images_per_second": _throughput(len(idx["train"]), timer.seconds),
                               "seconds": round(time.perf_counter() - started, 1)})
    config["metrics"] = metrics
    save_config(run, config)
    point_latest(out, run)
    for split in ("val", "test"):
        if split in metrics:
            print(format_metrics(split, metrics[split]))
    print(f"run: {run}")
    return run


# -- CLI --------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    d, m = TrainSettings(), ModelSettings()
    parser.add_argument("images", nargs="?", type=Path, default=IMAGES_DIR,
                        help="folder of spectrogram PNGs with the manifest.csv written by 'spectro images'")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="models folder; the run goes to OUT/<name>/")
    parser.add_argument("--name", default=None, help="run folder name (None: <date>-<time>-<task>-<backbone>)")
    parser.add_argument("--task", choices=TASKS, default=d.task,
                        help="training objective: fine classes <machine>/<label>, normal vs abnormal, or machine type")
    parser.add_argument("--backbone", choices=BACKBONES, default=m.backbone, help="Keras application backbone")
    parser.add_argument("--alpha", type=float, default=m.alpha, help="MobileNet width multiplier")
    parser.add_argument("--image-size", type=int, default=m.image_size,
                        help="square size the model resizes the spectrogram to (ImageNet weights: 96..224)")
    parser.add_argument("--resize", choices=RESIZE_METHODS, default=m.resize,
                        help="resizing inside the model: nearest copies whole pixels, so the int8 TFLite file "
                             "resizes exactly as Keras does; bilinear interpolates")
    parser.add_argument("--weights", default=m.weights,
                        help="'imagenet' (random initialisation, with a warning, when unavailable), 'none', "
                             "or a path to a Keras weights file for the backbone")
    parser.add_argument("--epochs", type=int, default=d.epochs,
                        help="epochs of the head (pretrained) or of the whole network (random initialisation)")
    parser.add_argument("--fine-tune-epochs", type=int, default=d.fine_tune_epochs,
                        help="epochs with the top of a pretrained base unfrozen (0: skip)")
    parser.add_argument("--fine-tune-layers", type=int, default=d.fine_tune_layers,
                        help="number of top base layers to unfreeze when fine-tuning (0: the whole base)")
    parser.add_argument("--qat-epochs", type=int, default=d.qat_epochs,
                        help="last phase: quantisation-aware fine-tuning, so the int8 TFLite file answers as the "
                             "model does (0: skip)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="images per training step")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate,
                        help="Adam learning rate of the first phase")
    parser.add_argument("--fine-tune-learning-rate", type=float, default=d.fine_tune_learning_rate,
                        help="Adam learning rate while fine-tuning")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                        help="learning rate over each phase: half-cosine decay to 2%% of its start, or constant")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed for the split, augmentation and weights")
    parser.add_argument("--test-ids", nargs="+", default=[], metavar="ID",
                        help="machine ids (id_06, or fan/id_06) held out as the test split")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of clips for validation")
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction,
                        help="share of clips for the test split (ignored with --test-ids)")
    parser.add_argument("--patience", type=int, default=d.patience,
                        help="epochs without validation-loss improvement before stopping")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--no-progress", action="store_true", help="one line per epoch instead of progress bars")


def main(args) -> int:
    settings = TrainSettings(
        task=args.task, epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs, qat_epochs=args.qat_epochs,
        fine_tune_layers=args.fine_tune_layers, batch_size=args.batch_size, learning_rate=args.learning_rate,
        fine_tune_learning_rate=args.fine_tune_learning_rate, lr_schedule=args.lr_schedule, patience=args.patience,
        seed=args.seed,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, test_ids=tuple(args.test_ids),
        augment=AugmentSettings.off() if args.no_augment else AugmentSettings())
    model_settings = ModelSettings(backbone=args.backbone, alpha=args.alpha, image_size=args.image_size,
                                   weights=args.weights, resize=args.resize)
    train(args.images, args.out, settings=settings, model_settings=model_settings, name=args.name,
          progress=not args.no_progress)
    return 0
