"""Run folders: where a trained model and everything about it live (``models/<run-name>/``).

Contract (written by ``spectro train``, extended by ``evaluate``/``export``):

``model.keras``   input: raw PNG pixels, float32 of shape ``(n_mels, window, 1)`` valued 0…255 (a window of
                  a clip's image, :mod:`spectro.model.windows`); output: softmax over the fine classes
                  of ``labels.json``
``checkpoint.keras``  the best epoch so far, written by ``ModelCheckpoint`` during training
``labels.json``   :class:`spectro.model.labels.LabelSpace`
``config.json``   ``features`` (FeatureSettings dict), ``input_shape`` (the model's: ``[n_mels, window]``),
                  ``image_shape`` (the training images': ``[n_mels, frames]``), ``task``, ``model`` (backbone,
                  alpha, image_size, window_seconds, weights requested/used), ``seed``, ``split``, ``training``,
                  ``metrics``, and after ``evaluate`` a ``threshold`` block ``{"value", "method", ...}``
``splits.csv``    image (absolute PNG path), source, machine, machine_id, label, snr, segment,
                  split (train/val/test)
``config.json``'s ``images`` holds the absolute path of the image folder trained on.

Normal-only runs (``--task normal-only``) also hold their normal references, written by ``spectro train`` and
extended by ``spectro enroll`` (:class:`spectro.model.references.References` reads and writes them):

``references.npz``   ``embeddings`` (float16, one row per window of a normal clip), ``keys`` (its machine) and
                     ``clips`` (its clip number within the machine)
``references.json``  scorers, default scorer, ``k``, ``max_fpr``, and per machine its clips, sources,
                     thresholds and where they came from

Every run trained since the known-machine check exists also holds ``known_machines.npz``: per machine key, its
training (and enrolled) clips' mel statistics and their Gaussian and bound (:mod:`spectro.model.known`).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from statistics import NormalDist
from typing import Any

from spectro.data.manifest import ImageRow, read_csv_rows
from spectro.errors import SpectroError
from spectro.features.settings import FeatureSettings
from spectro.paths import MODELS_DIR

CONFIG_NAME = "config.json"
MODEL_NAME = "model.keras"
# the best epoch of the float phases, written by Keras' ModelCheckpoint while training runs (model.keras is
# written when training ends: the best weights, compile state stripped)
CHECKPOINT_NAME = "checkpoint.keras"
SPLITS_NAME = "splits.csv"
HISTORY_NAME = "history.csv"
TRAINING_PLOT_NAME = "training.png"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.csv"
PLOT_NAMES = {"confusion": "confusion_matrix.png", "roc": "roc.png", "histograms": "score_histograms.png",
              "mistakes": "worst_mistakes.png"}
REPORT_NAME = "report.html"
REFERENCES_NAME = "references.npz"
REFERENCES_INFO = "references.json"
KNOWN_NAME = "known_machines.npz"  # the known-machine check's profiles (spectro.model.known)
FUSION_NAME = "fusion.npz"  # a supervised run's fused anomaly score (spectro.model.fusion)
# ``spectro export --quantize MODE`` writes these names, so all three variants live side by side
TFLITE_NAMES = {"none": "model.tflite", "dynamic": "model_dynamic.tflite", "int8": "model_int8.tflite"}
# what a run folder given without a file name resolves to, in this order
MODEL_SEARCH_ORDER = (MODEL_NAME, TFLITE_NAMES["none"], TFLITE_NAMES["int8"], TFLITE_NAMES["dynamic"])
LATEST = "latest"
DEFAULT_THRESHOLD = 0.5
# a fused score (spectro.model.fusion): the 95th percentile of the larger of two independent standard normal scores
DEFAULT_FUSED_THRESHOLD = NormalDist().inv_cdf(0.95 ** 0.5)
# a calibrated fused score (spectro.model.fusion): a log-odds, 0 where a clip is as like its type's failures as its
# normal clips
DEFAULT_CALIBRATED_THRESHOLD = 0.0


def resolve_run(path: str | Path | None = None) -> Path:
    """The run folder for ``path``: a run folder, ``models/latest``, or a model file inside a run.

    Raises
    ------
    SpectroError
        When nothing there looks like a run (no ``config.json``).
    """
    path = Path(path) if path is not None else MODELS_DIR / LATEST
    if path.is_file():
        path = path.parent
    if not path.exists():
        hint = " (train one with 'spectro train' / 'make train')" if path.name == LATEST else ""
        raise SpectroError(f"{path}: no such run folder{hint}")
    path = path.resolve()
    if not (path / CONFIG_NAME).is_file():
        raise SpectroError(f"{path}: not a spectro run folder (no {CONFIG_NAME}); expected a folder written by "
                           f"'spectro train'")
    return path


def load_config(run: str | Path) -> dict[str, Any]:
    path = Path(run) / CONFIG_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SpectroError(f"{path}: missing (expected a run folder written by 'spectro train')") from None
    except json.JSONDecodeError as exc:
        raise SpectroError(f"{path}: not valid JSON ({exc})") from None


def save_config(run: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config.json`` atomically."""
    path = Path(run) / CONFIG_NAME
    tmp = path.with_name(f".{CONFIG_NAME}.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def update_config(run: str | Path, **sections: Any) -> dict[str, Any]:
    """Merge top-level ``sections`` into the run's ``config.json`` and save it."""
    config = load_config(run)
    config.update(sections)
    save_config(run, config)
    return config


def feature_settings(config: dict[str, Any]) -> FeatureSettings:
    try:
        return FeatureSettings.from_dict(config["features"])
    except KeyError:
        raise SpectroError("run config has no 'features' block (expected one written by 'spectro train')") from None


def input_shape(config: dict[str, Any]) -> tuple[int, int]:
    """The model's input: ``(n_mels, window frames)``."""
    return tuple(int(v) for v in config["input_shape"][:2])


def image_shape(config: dict[str, Any]) -> tuple[int, int]:
    """The shape of the images the model was trained on, the span it scores as one clip (runs from before
    windows existed: the input shape)."""
    return tuple(int(v) for v in config.get("image_shape", config["input_shape"])[:2])


def embedding_of(config: dict[str, Any]) -> str:
    """The embedding a run's model gives (``model.embedding``, :attr:`spectro.model.backbones.ModelSettings.embedding`;
    runs written before there was a choice used ``pool``)."""
    return str(config.get("model", {}).get("embedding", "pool"))


def save_arrays(path: str | Path, arrays: dict[str, Any]) -> Path:
    """Write ``arrays`` to the ``.npz`` file ``path`` atomically (a temporary file beside it, then renamed), so a
    reader never sees half a file."""
    import numpy as np

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def fused(config: dict[str, Any]) -> bool:
    """Whether the run's anomaly score is fused (:mod:`spectro.model.fusion`): a log-odds where it is calibrated,
    else a standard score; not a probability either way."""
    return (config.get("anomaly_score") or {}).get("kind") == "fused"


def default_threshold(config: dict[str, Any]) -> float:
    """The anomaly-score threshold before ``evaluate`` chooses one: 0.5 for the CNN's probability,
    :data:`DEFAULT_CALIBRATED_THRESHOLD` for a calibrated fused score, :data:`DEFAULT_FUSED_THRESHOLD` for a fused
    one that is not (trained before the calibration, or without failure clips to calibrate on)."""
    if not fused(config):
        return DEFAULT_THRESHOLD
    return DEFAULT_CALIBRATED_THRESHOLD if config["anomaly_score"].get("calibrated") else DEFAULT_FUSED_THRESHOLD


def threshold(config: dict[str, Any]) -> float:
    """The anomaly-score decision threshold stored by ``evaluate``; before evaluation :func:`default_threshold`."""
    return float((config.get("threshold") or {}).get("value", default_threshold(config)))


SPLITS = ("train", "val", "test")
SPLITS_COLUMNS = ["image", "source", "machine", "machine_id", "label", "snr", "segment", "split"]


def write_splits(run: str | Path, rows: list[ImageRow]) -> Path:
    """``splits.csv``: one row per image with its absolute path and its split."""
    path = Path(run) / SPLITS_NAME
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPLITS_COLUMNS)
        for r in rows:
            writer.writerow([str(r.path), r.source, r.machine, r.machine_id, r.label, r.snr, r.segment, r.split])
    return path


def read_splits(run: str | Path, split: str | None = None) -> list[ImageRow]:
    """The rows of the run's ``splits.csv`` (only those of ``split`` when given).

    Raises
    ------
    SpectroError
        Missing file or columns.
    """
    path = Path(run) / SPLITS_NAME
    if not path.is_file():
        raise SpectroError(f"{path}: missing (expected the {SPLITS_NAME} that 'spectro train' writes)")
    rows = [ImageRow(Path(r["image"]), r["source"], r["machine"], r["machine_id"], r["label"], r["snr"],
                     int(r["segment"] or 0), split=r["split"]) for r in read_csv_rows(path, SPLITS_COLUMNS)]
    return rows if split is None else [r for r in rows if r.split == split]


def read_history(run: str | Path) -> dict[str, list[float]]:
    """The numeric columns of the run's ``history.csv`` (``epoch`` aside), one value per epoch; ``{}`` without it."""
    path = Path(run) / HISTORY_NAME
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    history: dict[str, list[float]] = {}
    for key in (records[0].keys() if records else []):
        try:
            values = [float(rec[key]) for rec in records]
        except (TypeError, ValueError):
            continue
        if key != "epoch":
            history[key] = values
    return history


def point_latest(models_dir: str | Path, run: str | Path) -> Path:
    """Make ``models_dir/latest`` a relative symlink to ``run`` (replacing an old one atomically)."""
    models_dir, run = Path(models_dir), Path(run)
    link = models_dir / LATEST
    tmp = models_dir / f".{LATEST}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(run, models_dir), tmp)
    os.replace(tmp, link)
    return link
