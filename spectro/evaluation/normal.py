"""Figures and ``spectro evaluate`` for normal-only runs (``--task normal-only``).

A normal-only run scores a clip by comparing its embedding with its machine's normal references
(:mod:`spectro.model.references`); each machine has its own threshold, from normal clips alone. The figures are
those of :func:`spectro.evaluation.metrics.model_metrics` with the run's default scorer as the anomaly score and
the machine-id classification as the task, plus ``scorers`` (AUC and pAUC of every scorer per machine type, id
and SNR) and ``unscored`` (clips of machines without references). The baseline beside it is the DCASE 2020
dense autoencoder (:class:`spectro.evaluation.baselines.DenseAutoencoder`), fit on the run's training normals:
the supervised mel-statistics baseline needs abnormal training clips, which a normal-only run never has.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from spectro.data.manifest import ImageRow
from spectro.errors import SpectroWarning
from spectro.evaluation import metrics
from spectro.evaluation.learning import warning_for
from spectro.model.references import References
from spectro.runs import METRICS_NAME, PLOT_NAMES, PREDICTIONS_NAME, feature_settings

AUTOENCODER = "DCASE 2020 dense autoencoder (fit on the training normals)"


def normal_only_scores(predictor, references: References, labels, rows: list[ImageRow], pixels,
                       modulation: np.ndarray | None = None):
    """Every scorer's clip scores (NaN for machines without references), pooled probabilities, and each clip's
    threshold (NaN likewise); ``modulation``: the clips' modulation spectra, when the images carry them."""
    from spectro.inference.normal import embed_and_score

    keys = [labels.class_of(r) for r in rows]
    scores, probs = embed_and_score(predictor, references, keys, pixels, modulation=modulation, unknown="nan")
    return scores, probs, thresholds_of(references, keys)


def thresholds_of(references: References, keys) -> np.ndarray:
    """Each clip's threshold: its machine's for the scorer it is judged by (NaN for a machine without
    references)."""
    return np.array([references.threshold(k) if k in references.machines else np.nan for k in keys])


def normal_only_figures(rows: list[ImageRow], scores: dict[str, np.ndarray], probs: np.ndarray,
                        thresholds: np.ndarray, labels, main: np.ndarray) -> dict[str, Any]:
    """:func:`~spectro.evaluation.metrics.model_metrics` of the clips of machines with references, ``main`` the
    anomaly score of each clip (:meth:`References.default_scores`)."""
    known = ~np.isnan(main)
    if not known.any():
        return {"unscored": len(rows)}
    kept = [r for r, k in zip(rows, known) if k]
    figures = metrics.model_metrics(kept, probs[known], labels, threshold=thresholds[known],
                                    scores=main[known],
                                    scorers={name: value[known] for name, value in scores.items()
                                             if not np.isnan(value[known]).any()})
    figures["unscored"] = int((~known).sum())
    return figures


def recalibrate(predictor, references: References, labels, val_rows: list[ImageRow], pixels,
                max_fpr: float, modulation: np.ndarray | None = None) -> None:
    """Thresholds again at ``max_fpr``: from each machine's validation normals, or its references fold by fold."""
    from spectro.inference.normal import calibrate_all, embed_and_score

    references.max_fpr = max_fpr
    keys = [labels.class_of(r) for r in val_rows]
    calibrate_all(references, keys, embed_and_score(predictor, references, keys, pixels, modulation=modulation,
                                                    unknown="nan")[0] if val_rows else {})


def autoencoder_baseline(train_rows: list[ImageRow], rows: list[ImageRow], pixels: np.ndarray, *, settings,
                         shape, max_fpr: float, progress: bool) -> tuple[dict[str, Any], np.ndarray | None]:
    """The DCASE autoencoder fit on ``train_rows`` (normal clips) and its scores of ``rows``."""
    from spectro.errors import SpectroError
    from spectro.evaluation.baselines import DenseAutoencoder
    from spectro.features.reader import read_images
    from spectro.features.statistics import pixels_to_db_batch

    block: dict[str, Any] = {"name": AUTOENCODER, "features": "5 stacked frames of the dB mel spectrogram",
                             "train": {"n": len(train_rows), "n_normal": len(train_rows), "n_abnormal": 0}}
    if not train_rows:
        return {**block, "skipped": "no normal training clips", "cnn_beats_baseline": None}, None
    try:
        train_pixels = read_images(train_rows, settings=settings, bands=shape[0], progress=progress)[0]
    except SpectroError as exc:
        return {**block, "skipped": f"cannot read the training images: {exc}", "cnn_beats_baseline": None}, None

    def db(x):
        return pixels_to_db_batch(x, db_min=settings.db_min, db_per_step=settings.db_per_step)

    scores = DenseAutoencoder().fit(db(train_pixels)).score(db(pixels))
    y = np.array([r.is_abnormal for r in rows], dtype=int)
    by_group = metrics.score_figures(rows, y, scores, max_fpr=metrics.PAUC_MAX_FPR)
    block["overall"] = {**by_group.pop("overall"), "pauc_max_fpr": metrics.PAUC_MAX_FPR}
    block.update(by_group)
    return block, scores


def evaluate_normal_only(run: Path, predictor, split_rows: list[ImageRow], test_rows: list[ImageRow], what: str, *,
                         max_fpr: float, out: Path, progress: bool) -> dict[str, Any]:
    """``spectro evaluate`` of a normal-only run (see :func:`spectro.evaluation.evaluate.evaluate_run`)."""
    from spectro.evaluation.evaluate import write_plots, write_predictions
    from spectro.features.reader import read_images, read_modulation

    settings, shape, labels = feature_settings(predictor.config), predictor.image_shape, predictor.labels
    references = References.load(run)
    val_rows = [r for r in split_rows if r.split == "val" and not r.is_abnormal
                and labels.class_of(r) in references.machines]
    pixels = read_images(test_rows + val_rows, settings=settings, bands=shape[0], min_frames=predictor.input_shape[1],
                         progress=progress)[0]  # clips of any length at least a window wide
    modulation = read_modulation(test_rows + val_rows, settings=settings)
    n = len(test_rows)
    if 0 < max_fpr < 1:
        recalibrate(predictor, references, labels, val_rows, pixels[n:], max_fpr,
                    None if modulation is None else modulation[n:])
        references.save(run)
    pixels = pixels[:n]
    scores, probs, thresholds = normal_only_scores(predictor, references, labels, test_rows, pixels,
                                                   None if modulation is None else modulation[:n])
    scorer = references.default_scorer
    true = [labels.class_of(r) for r in test_rows]
    score = references.default_scores(true, scores)  # NaN for clips of machines without references
    figures = normal_only_figures(test_rows, scores, probs, thresholds, labels, score)
    train_rows = [r for r in split_rows if r.split == "train" and not r.is_abnormal]
    baseline, baseline_scores = autoencoder_baseline(train_rows, test_rows, pixels, settings=settings, shape=shape,
                                                     max_fpr=max_fpr, progress=progress)
    cnn_auc, base_auc = figures.get("overall", {}).get("auc"), baseline.get("overall", {}).get("auc")
    baseline["cnn_beats_baseline"] = None if cnn_auc is None or base_auc is None else bool(cnn_auc > base_auc)
    info = references.to_dict()
    learning_warning = warning_for(predictor.config)
    if learning_warning:
        warnings.warn(learning_warning + "; train it again as the message at its end advised to silence this",
                      SpectroWarning, stacklevel=2)
    result: dict[str, Any] = {
        "learning_warning": learning_warning, "run": str(run), "evaluated": what, "n_images": len(test_rows),
        "task": labels.task, "task_classes": list(labels.task_classes), "classes": list(labels.classes),
        "threshold": {"value": None, "method": f"per machine: the {1 - max_fpr:g} quantile of its normal clips' "
                                                f"{scorer} scores", "max_fpr": max_fpr, "scorer": scorer,
                      "by_machine": {k: m["thresholds"] for k, m in info["machines"].items()}},
        "references": {k: {key: m[key] for key in ("clips", "sources", "threshold_from")}
                       for k, m in info["machines"].items()},
        **figures, "baseline": baseline,
    }
    known = ~np.isnan(score)
    predicted = labels.predicted(probs)
    write_predictions(out / PREDICTIONS_NAME, test_rows, predicted, score, [""] * len(test_rows), probs, labels,
                      thresholds, true, baseline_scores, extra=scores)
    if known.any():
        sel = np.flatnonzero(known)
        y_abn = np.array([test_rows[i].is_abnormal for i in sel], dtype=int)
        write_plots(out, [test_rows[i] for i in sel], pixels[sel], [true[i] for i in sel],
                    [predicted[i] for i in sel], y_abn, score[sel], probs[sel], labels, np.asarray(thresholds)[sel])
    result["files"] = {"predictions": PREDICTIONS_NAME, **PLOT_NAMES}
    (out / METRICS_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result
