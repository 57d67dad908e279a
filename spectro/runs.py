"""Run folders: where a trained model and everything about it live (``models/<run-name>/``).

Contract (written by ``spectro train``, extended by ``evaluate``/``export``):

``model.keras``   input: raw PNG pixels, float32 of shape ``(n_mels, window, 1)`` valued 0…255 (a window of
                  a clip's image, :mod:`spectro.model.windows`); output: softmax over the fine classes
                  of ``labels.json``
``checkpoint.keras``  the best epoch so far, written by ``ModelCheckpoint`` during training
``labels.json``   :class:`spectro.model.labels.LabelSpace`
``config.json``   ``format`` (:data:`FORMAT`), ``features`` (FeatureSettings dict), ``input_shape`` (the model's:
                  ``[n_mels, window]``), ``image_shape`` (the training images': ``[n_mels, frames]``), ``task``,
                  ``model`` (backbone, alpha, image_size, window_seconds, embedding, weights requested/used),
                  ``seed``, ``split``, ``training``,
                  ``metrics``, ``scorer_files`` (the files its score reads beside the model: :func:`scorer_files`),
                  ``warnings`` (what training could not do, one line each), and after ``evaluate`` a ``threshold``
                  block ``{"value", "method", ...}``
``splits.csv``    image (absolute PNG path), source, machine, machine_id, label, snr, segment,
                  split (train/val/test)
``config.json``'s ``images`` holds the absolute path of the image folder trained on.

Normal-only runs (``--task normal-only``) also hold their normal references, written by ``spectro train`` and
extended by ``spectro enroll`` (:class:`spectro.scoring.references.References` reads and writes them):

``references.npz``   ``embeddings`` (float16, one row per window of a normal clip), ``keys`` (its machine) and
                     ``clips`` (its clip number within the machine); per clip its mel ``statistics`` and, where the
                     images carry them, its ``modulation`` spectrum (with ``statistics_keys``, ``modulation_keys``)
``references.json``  scorers, default scorer, ``k``, ``max_fpr``, and per machine its clips, sources,
                     thresholds and where they came from

Every run holds ``known_machines.npz``: per machine key, its training (and enrolled) clips' mel statistics and
their Gaussian and bound (:mod:`spectro.scoring.known`); a supervised run whose score is fused holds ``fusion.npz``
(:mod:`spectro.scoring.fusion`).

A run of another :data:`FORMAT` (written by an older spectro) is refused by every reader with one line saying to
retrain it; so is a run folder that lacks a file its score reads (:func:`scorer_files`), when it is resolved.

A run is whole or absent: ``spectro train`` writes it into a hidden folder beside its final one
(:func:`staging_folder`) and renames it when it is complete (:func:`finish_run`); ``models/latest`` only ever
points at a whole run. Every reader checks what it reads: :func:`load_config` refuses a ``config.json`` whose keys
have the wrong types or another format, and :func:`resolve_run` the run folders that lack a file the reader or the
run's score needs, each in one line.
Which model file a run means is one rule, :data:`MODEL_RULE` (:func:`spectro.inference.predictors.find_model`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from statistics import NormalDist
from typing import Any

from spectro.data.manifest import ImageRow, read_csv_rows
from spectro.errors import SpectroError
from spectro.features.settings import FeatureSettings
from spectro.model.labels import LABELS_NAME, NORMAL_ONLY, TASKS
from spectro.paths import MODELS_DIR

CONFIG_NAME = "config.json"
# the run folder's format, in every config.json: a run of another format is refused (its files meant other things);
# raise it when a file of the run changes meaning, and retrain
FORMAT = 2  # 2: the views of the mel statistics in fusion.npz and references.npz
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
KNOWN_NAME = "known_machines.npz"  # the known-machine check's profiles (spectro.scoring.known)
FUSION_NAME = "fusion.npz"  # a supervised run's fused anomaly score (spectro.scoring.fusion)
# ``spectro export --quantize MODE`` writes these names, so all three variants live side by side
TFLITE_NAMES = {"none": "model.tflite", "dynamic": "model_dynamic.tflite", "int8": "model_int8.tflite"}
# which model file classify, serve, evaluate and export use (spectro.inference.predictors.find_model): said in
# each command's --help and in serve's GET /api/model
MODEL_RULE = (f"a run folder means its {MODEL_NAME} (the model that training, evaluation, the threshold and the "
              "report describe); a .tflite file is used only when named, e.g. RUN/model_int8.tflite")
# what each file of a run is, for the one-line refusal of a run folder that lacks one its reader needs
RUN_FILES = {MODEL_NAME: "the Keras model", LABELS_NAME: "the class labels", SPLITS_NAME: "the image splits",
             CONFIG_NAME: "the run's settings", KNOWN_NAME: "the known-machine profiles",
             FUSION_NAME: "the fused anomaly score", REFERENCES_NAME: "the normal references",
             REFERENCES_INFO: "the normal references' thresholds"}
# the files a run's score reads beside its model (config.json's scorer_files names those of the run)
SCORER_FILES = (KNOWN_NAME, FUSION_NAME, REFERENCES_NAME, REFERENCES_INFO)
# what every run written by ``spectro train`` holds: a reader of the whole run (the report) needs them all
WHOLE_RUN = (MODEL_NAME, LABELS_NAME, SPLITS_NAME)
LATEST = "latest"
DEFAULT_THRESHOLD = 0.5
# a fused score (spectro.scoring.fusion): the 95th percentile of the larger of three independent standard normal
# scores (the fusion's parts: cnn, modulation, melstats)
DEFAULT_FUSED_THRESHOLD = NormalDist().inv_cdf(0.95 ** (1 / 3))
# a calibrated fused score (spectro.scoring.fusion): a log-odds, 0 where a clip is as like its type's failures as its
# normal clips
DEFAULT_CALIBRATED_THRESHOLD = 0.0


def resolve_run(path: str | Path | None = None, *, needs: Iterable[str] = ()) -> Path:
    """The run folder for ``path``: a run folder, ``models/latest``, or a model file inside a run; its
    ``config.json`` checked (:func:`load_config`), the files its reader ``needs`` there, and the files its score
    reads (:func:`scorer_files`).

    Raises
    ------
    SpectroError
        When nothing there looks like a run (no ``config.json``), its ``config.json`` is damaged or of another
        format, or one of ``needs`` or of its scorer files is missing.
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
    config = load_config(path)
    for name in needs:
        if not (path / name).is_file():
            what = RUN_FILES.get(name, name)
            raise SpectroError(f"{path}: no {name} ({what}); expected a whole run written by 'spectro train' "
                               "(train it again)")
    for name in scorer_files(config):
        if not (path / name).is_file():
            raise SpectroError(f"{path}: no {name} ({RUN_FILES[name]}), which this run's anomaly score reads; the "
                               "run folder is incomplete (copy the whole run folder, or train it again)")
    return path


def scorer_files(config: dict[str, Any]) -> list[str]:
    """The files a run's score reads beside its model: those its ``config.json`` names (``scorer_files``) and,
    whatever it names, every run's known-machine profiles, a fused run's ``fusion.npz`` and a normal-only run's
    references."""
    implied = [KNOWN_NAME, *([FUSION_NAME] if fused(config) else []),
               *([REFERENCES_NAME, REFERENCES_INFO] if config.get("task") == NORMAL_ONLY else [])]
    return [name for name in SCORER_FILES if name in implied or name in config.get("scorer_files", ())]


def load_config(run: str | Path) -> dict[str, Any]:
    """The run's ``config.json``, checked (:func:`check_config`).

    Raises
    ------
    SpectroError
        Missing, not JSON, or a key of the wrong type, in one line naming the file and the key.
    """
    path = Path(run) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpectroError(f"{path}: missing (expected a run folder written by 'spectro train')") from None
    except json.JSONDecodeError as exc:
        raise SpectroError(f"{path}: not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise SpectroError(f"{path}: cannot be read ({reason})") from None
    return check_config(config, path)


def _found(value: Any) -> str:
    """What a JSON value is, for an error message: its type and, when short, the value."""
    kind = {dict: "an object", list: "a list", str: "a text", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
    shown = json.dumps(value, default=str)
    return f"{kind} ({shown})" if len(shown) <= 40 else kind


def _shape(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# the blocks every reader may open: each must be an object when present
_OBJECTS = ("model", "training", "split", "metrics", "anomaly_score", "normal_only", "distribute", "export")


def check_config(config: Any, path: str | Path = CONFIG_NAME) -> dict[str, Any]:
    """``config`` (a run's ``config.json``, read from ``path``) when it is of this :data:`FORMAT` and every key a
    reader uses has the type it expects: ``features`` valid feature settings, ``input_shape`` and ``image_shape``
    two positive integers with the features' mel bands first, ``task`` one of the tasks, ``model.embedding`` a text,
    ``threshold`` an object whose ``value`` is a number (``null``: per machine), ``scorer_files`` names of
    :data:`SCORER_FILES`, ``warnings`` texts, the other blocks objects.

    Raises
    ------
    SpectroError
        One line: a run of another format (retrain it), or the file, the key, what was expected and what was found.
    """
    def bad(key: str, expected: str, found: Any) -> SpectroError:
        return SpectroError(f"{path}: '{key}' should be {expected}, found {_found(found)}; the run's config is "
                            "damaged (train the run again, or restore its config.json)")

    if not isinstance(config, dict):
        raise SpectroError(f"{path}: should be a JSON object of the run's settings, found {_found(config)}")
    run = Path(path).parent if Path(path).name == CONFIG_NAME else Path(path)
    found = config.get("format", 0)
    if not isinstance(found, int) or isinstance(found, bool):
        raise bad("format", "a whole number (the run folder's format)", found)
    if found < FORMAT:
        raise SpectroError(f"{run}: written by an older spectro (format {found}); retrain it with this version")
    if found > FORMAT:
        raise SpectroError(f"{run}: written by a newer spectro (format {found}; this version reads format "
                           f"{FORMAT}); use that version, or retrain it with this one")
    for key in ("features", "input_shape", "image_shape", "task", "model"):
        if key not in config:
            raise SpectroError(f"{path}: no '{key}' (every run written by 'spectro train' has one); the run's config "
                               "is damaged")
    if not isinstance(config["features"], dict):
        raise bad("features", "an object of feature settings", config["features"])
    try:
        features = FeatureSettings.from_dict(config["features"])
    except (SpectroError, TypeError, ValueError) as exc:
        raise SpectroError(f"{path}: 'features' are not valid feature settings ({str(exc).splitlines()[0]})") from None
    for key in ("input_shape", "image_shape"):
        if not _shape(config[key]):
            raise bad(key, "two positive integers [mel bands, frames]", config[key])
        if config[key][0] != features.n_mels:
            raise bad(key, f"{features.n_mels} mel bands first (the features' n_mels)", config[key])
    if config["task"] not in TASKS:
        raise bad("task", f"one of {', '.join(TASKS)}", config["task"])
    for key in _OBJECTS:
        if key in config and not isinstance(config[key], dict):
            raise bad(key, "an object", config[key])
    block = config.get("threshold")
    if block is not None:
        if not isinstance(block, dict):
            raise bad("threshold", "an object with a 'value'", block)
        if block.get("value") is not None and not _number(block["value"]):
            raise bad("threshold.value", "a number (or null: per machine)", block["value"])
    score = config.get("anomaly_score") or {}
    if "kind" in score and not isinstance(score["kind"], str):
        raise bad("anomaly_score.kind", "a text", score["kind"])
    if not isinstance(config["model"].get("embedding"), str):
        raise bad("model.embedding", "a text", config["model"].get("embedding"))
    files = config.get("scorer_files", [])
    if not isinstance(files, list) or any(name not in SCORER_FILES for name in files):
        raise bad("scorer_files", f"a list of the run's scorer files (of {', '.join(SCORER_FILES)})", files)
    notes = config.get("warnings", [])
    if not isinstance(notes, list) or not all(isinstance(note, str) for note in notes):
        raise bad("warnings", "a list of texts", notes)
    for key in ("images", "created", "exported_from"):
        if key in config and not isinstance(config[key], str):
            raise bad(key, "a text", config[key])
    return config


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
    """The shape of the images the model was trained on, the span it scores as one clip."""
    return tuple(int(v) for v in config["image_shape"][:2])


def embedding_of(config: dict[str, Any]) -> str:
    """The embedding a run's model gives (``model.embedding``,
    :attr:`spectro.model.backbones.ModelSettings.embedding`)."""
    return str(config["model"]["embedding"])


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
    """Whether the run's anomaly score is fused (:mod:`spectro.scoring.fusion`): a log-odds where it is calibrated,
    else a standard score; not a probability either way."""
    return (config.get("anomaly_score") or {}).get("kind") == "fused"


def default_threshold(config: dict[str, Any]) -> float:
    """The anomaly-score threshold before ``evaluate`` chooses one: 0.5 for the CNN's probability,
    :data:`DEFAULT_CALIBRATED_THRESHOLD` for a calibrated fused score, :data:`DEFAULT_FUSED_THRESHOLD` for a fused
    one that is not (trained without failure clips in its validation split to calibrate on)."""
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


def staging_folder(final: str | Path) -> Path:
    """Where ``spectro train`` writes the run ``final`` until it is whole: a hidden folder beside it, named for this
    process (``.<name>.partial-<pid>``), so no reader and no listing of the runs ever sees half a run."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


def finish_run(staging: str | Path, final: str | Path) -> Path:
    """Rename the whole run ``staging`` to ``final`` (an empty folder there is replaced) and return ``final``.

    Raises
    ------
    SpectroError
        ``final`` appeared meanwhile and is not empty.
    """
    final = Path(final)
    try:
        os.replace(staging, final)
    except OSError as exc:
        raise SpectroError(f"{final}: cannot put the finished run there ({exc.strerror}); choose another "
                           "--name") from None
    return final.resolve()


def point_latest(models_dir: str | Path, run: str | Path) -> Path:
    """Make ``models_dir/latest`` a relative symlink to ``run`` (replacing an old one atomically)."""
    models_dir, run = Path(models_dir), Path(run)
    link = models_dir / LATEST
    tmp = models_dir / f".{LATEST}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(run, models_dir), tmp)
    os.replace(tmp, link)
    return link
