"""Evaluation metrics as pure functions on arrays (scikit-learn underneath).

Conventions: ``y_abnormal`` is 1 for an abnormal image and 0 for a normal one; ``scores`` are anomaly
scores (higher = more abnormal); an image is called abnormal when ``score >= threshold``. A metric
that is undefined for the data (ROC AUC of a group holding one class only) is ``None``, never an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from spectro.errors import SpectroError

PAUC_MAX_FPR = 0.1  # DCASE task 2 convention: roc_auc_score(y, s, max_fpr=0.1)
DEFAULT_MAX_FPR = 0.05


def _binary(y_abnormal: Sequence, scores: Sequence) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_abnormal).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise SpectroError(f"need one score per label, got {len(y)} labels and {len(s)} scores")
    if not np.isin(y, (0, 1)).all():
        raise SpectroError("anomaly labels must be 0 (normal) or 1 (abnormal)")
    if not np.isfinite(s).all():
        raise SpectroError("anomaly scores contain NaN or inf")
    return y, s


def anomaly_auc(y_abnormal: Sequence, scores: Sequence) -> float | None:
    """ROC AUC of the anomaly score; ``None`` when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y, s = _binary(y_abnormal, scores)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, s))


def anomaly_pauc(y_abnormal: Sequence, scores: Sequence, *, max_fpr: float = PAUC_MAX_FPR) -> float | None:
    """Partial ROC AUC up to ``max_fpr`` (McClish-standardised, as ``roc_auc_score(max_fpr=...)``).

    ``None`` when only one class is present.
    """
    from sklearn.metrics import roc_auc_score

    y, s = _binary(y_abnormal, scores)
    if not 0 < max_fpr <= 1:
        raise SpectroError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


def rates_at(y_abnormal: Sequence, scores: Sequence, threshold) -> dict[str, float | None]:
    """True and false positive rates, precision and the count flagged when calling ``score >= threshold``
    (one threshold, or one per image)."""
    y, s = _binary(y_abnormal, scores)
    flagged = s >= threshold
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    tp, fp = int((flagged & (y == 1)).sum()), int((flagged & (y == 0)).sum())
    shown = float(threshold) if np.ndim(threshold) == 0 else "per machine"
    return {"threshold": shown, "tpr": tp / n_pos if n_pos else None, "fpr": fp / n_neg if n_neg else None,
            "precision": tp / (tp + fp) if tp + fp else None, "flagged": int(flagged.sum())}


@dataclass(frozen=True)
class ThresholdChoice:
    """A decision threshold on the anomaly score and how it was chosen (stored in ``config.json``)."""

    value: float
    method: str  # "max_fpr" or "youden"
    max_fpr: float | None
    val_fpr: float
    val_tpr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(y_abnormal: Sequence, scores: Sequence, *, max_fpr: float | None = DEFAULT_MAX_FPR,
                     method: str = "max_fpr") -> ThresholdChoice:
    """Pick the anomaly-score threshold on validation data.

    Parameters
    ----------
    y_abnormal, scores
        Validation labels (1 = abnormal) and anomaly scores; both classes must be present.
    max_fpr : float
        ``method="max_fpr"``: the target false-alarm rate. The threshold is the one with the highest
        validation TPR among those whose FPR (share of normal images with ``score >= threshold``) is at
        most ``max_fpr``; among equals the largest such threshold, which is an observed score.
    method : {"max_fpr", "youden"}
        ``"youden"`` maximises Youden's J = TPR - FPR (ties: the largest threshold).

    Returns
    -------
    ThresholdChoice

    Raises
    ------
    SpectroError
        One class missing, or a bad ``method`` / ``max_fpr``.
    """
    from sklearn.metrics import roc_curve

    y, s = _binary(y_abnormal, scores)
    if method not in ("max_fpr", "youden"):
        raise SpectroError(f"unknown threshold method {method!r}: expected 'max_fpr' or 'youden'")
    if method == "max_fpr" and (max_fpr is None or not 0 <= max_fpr <= 1):
        raise SpectroError(f"max_fpr must be in [0, 1], got {max_fpr}")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise SpectroError(f"cannot choose a threshold: the validation images hold {n_neg} normal and {n_pos} "
                           "abnormal one(s); both are needed")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # thresholds are decreasing; index 0 is +inf (nothing flagged): keep only real scores
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if method == "youden":
        j = tpr - fpr
        best = int(np.flatnonzero(j == j.max())[0])
    else:
        ok = np.flatnonzero(fpr <= max_fpr + 1e-12)
        if len(ok) == 0:  # even the highest score lets too many normals through: flag only above it
            return ThresholdChoice(value=float(np.nextafter(s.max(), np.inf)), method=method, max_fpr=max_fpr,
                                   val_fpr=0.0, val_tpr=0.0)
        best_tpr = tpr[ok].max()
        best = int(ok[tpr[ok] == best_tpr][0])
    return ThresholdChoice(value=float(thresholds[best]), method=method,
                           max_fpr=max_fpr if method == "max_fpr" else None,
                           val_fpr=float(fpr[best]), val_tpr=float(tpr[best]))


def summarize(true: Sequence[str], predicted: Sequence[str], y_abnormal: Sequence, scores: Sequence, *,
              classes: Sequence[str] | None = None, threshold: float | None = None,
              max_fpr: float = PAUC_MAX_FPR) -> dict[str, Any]:
    """Every metric for one set of images.

    Parameters
    ----------
    true, predicted : sequences of str
        True and predicted class names (the task's classes).
    y_abnormal, scores
        Anomaly labels (1 = abnormal) and anomaly scores.
    classes : sequence of str, optional
        Class order for the report (default: sorted union of ``true`` and ``predicted``).
    threshold : float, optional
        Adds TPR/FPR/precision of ``score >= threshold``.

    Returns
    -------
    dict
        ``n``, ``n_normal``, ``n_abnormal``, ``accuracy``, ``balanced_accuracy``, ``auc``, ``pauc``,
        ``report`` (sklearn ``classification_report`` as a dict) and, with a threshold, ``at_threshold``.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, classification_report

    true, predicted = [str(t) for t in true], [str(p) for p in predicted]
    y, s = _binary(y_abnormal, scores)
    if len(true) != len(predicted) or len(true) != len(y):
        raise SpectroError(f"need as many predictions as labels, got {len(true)} labels, {len(predicted)} "
                           f"predictions, {len(y)} scores")
    out: dict[str, Any] = {"n": len(true), "n_normal": int((y == 0).sum()), "n_abnormal": int((y == 1).sum())}
    if not true:
        return {**out, "accuracy": None, "balanced_accuracy": None, "auc": None, "pauc": None, "report": {}}
    labels = list(classes) if classes is not None else sorted(set(true) | set(predicted))
    labels += sorted((set(true) | set(predicted)) - set(labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" and friends
        out["accuracy"] = float(accuracy_score(true, predicted))
        out["balanced_accuracy"] = float(balanced_accuracy_score(true, predicted))
        out["report"] = classification_report(true, predicted, labels=labels, output_dict=True, zero_division=0)
    out["auc"] = anomaly_auc(y, s)
    out["pauc"] = anomaly_pauc(y, s, max_fpr=max_fpr)
    out["pauc_max_fpr"] = max_fpr
    if threshold is not None:
        out["at_threshold"] = rates_at(y, s, threshold)
    return out


def grouped(keys: Iterable[str], true: Sequence[str], predicted: Sequence[str], y_abnormal: Sequence,
            scores: Sequence, **options: Any) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per group: ``keys[i]`` names the group of image ``i`` (empty keys are skipped)."""
    keys = np.asarray([str(k) for k in keys], dtype=object)
    true, predicted = np.asarray(true, dtype=object), np.asarray(predicted, dtype=object)
    y, s = _binary(y_abnormal, scores)
    out = {}
    threshold = options.get("threshold")
    for key in sorted(set(keys) - {""}):
        sel = keys == key
        per_image = {"threshold": np.asarray(threshold)[sel]} if np.ndim(threshold) else {}
        out[key] = summarize(true[sel], predicted[sel], y[sel], s[sel], **{**options, **per_image})
    return out


def clip_level(sources: Sequence[str], y_abnormal: Sequence, scores: Sequence, *,
               how: str = "mean") -> tuple[list[str], np.ndarray, np.ndarray]:
    """One anomaly label and score per recording from the scores of its segments.

    Parameters
    ----------
    sources : sequence of str
        The recording each image was cut from.
    how : {"mean", "max"}
        How segment scores combine (``spectro train`` reports the mean).

    Returns
    -------
    (list of str, numpy.ndarray, numpy.ndarray)
        Sorted recordings, their labels (abnormal if any segment is) and their scores.
    """
    if how not in ("mean", "max"):
        raise SpectroError(f"unknown aggregation {how!r}: expected 'mean' or 'max'")
    y, s = _binary(y_abnormal, scores)
    if len(sources) != len(y):
        raise SpectroError(f"need one source per score, got {len(sources)} sources and {len(y)} scores")
    keys = sorted(set(map(str, sources)))
    index = {k: i for i, k in enumerate(keys)}
    rows = np.array([index[str(k)] for k in sources], dtype=int)
    labels = np.zeros(len(keys), dtype=int)
    np.maximum.at(labels, rows, y)
    if how == "max":
        out = np.full(len(keys), -np.inf)
        np.maximum.at(out, rows, s)
    else:
        out = np.bincount(rows, weights=s, minlength=len(keys)) / np.bincount(rows, minlength=len(keys))
    return keys, labels, out


GROUPINGS = {"by_machine": "machine", "by_machine_id": "machine_id", "by_snr": "snr"}


def group_key(row, column: str) -> str:
    if column == "machine_id":
        return f"{row.machine}/{row.machine_id}" if row.machine_id else ""
    return getattr(row, column)


def model_metrics(rows: Sequence, probs: np.ndarray, labels, *, threshold=None, max_fpr: float = PAUC_MAX_FPR,
                  scores: np.ndarray | None = None, scorers: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Every figure of a model's fine-class probabilities on a set of images: the one metrics function.

    ``spectro train`` stores it per split in ``config.json`` (``metrics.val``, ``metrics.test``) and
    ``spectro evaluate`` writes it into ``metrics.json``, with the same keys.

    Parameters
    ----------
    rows : sequence of spectro.data.manifest.ImageRow
        The images, with their machine, id, label, SNR and recording.
    probs : numpy.ndarray
        ``(n, n_fine)`` fine-class probabilities.
    labels : spectro.model.labels.LabelSpace
    threshold : float or numpy.ndarray, optional
        Adds the rates of ``score >= threshold`` (one threshold, or one per image: a normal-only run's per
        machine).
    scores : numpy.ndarray, optional
        The anomaly scores (default: :meth:`~spectro.model.labels.LabelSpace.anomaly_score` of ``probs``); a
        normal-only run's come from its default scorer.
    scorers : dict, optional
        Named anomaly scores of every scorer of a normal-only run: adds ``scorers``, each
        ``{"overall", "by_machine", "by_machine_id", "by_snr"}`` of ``{"n", "auc", "pauc"}``.

    Returns
    -------
    dict
        ``overall`` (:func:`summarize` of the task's classes, plus ``fine_accuracy`` and, with abnormal
        images, ``failure_type_accuracy``), ``clips`` (when images are segments of longer recordings: each
        recording scored by the mean over its segments) and ``by_machine``, ``by_machine_id``, ``by_snr``.
    """
    probs = np.asarray(probs)
    if len(rows) != len(probs):
        raise SpectroError(f"need one probability row per image, got {len(rows)} images and {len(probs)} rows")
    scores = labels.anomaly_score(probs) if scores is None else np.asarray(scores, dtype=np.float64)
    fine_true = np.array([labels.class_of(r) for r in rows], dtype=object)
    true = [labels.group_of(c) for c in fine_true]
    predicted = labels.predicted(probs)
    y = np.array([r.is_abnormal for r in rows], dtype=int)
    options = dict(classes=list(labels.task_classes), threshold=threshold, max_fpr=max_fpr)
    overall = summarize(true, predicted, y, scores, **options)
    if len(rows):
        fine_pred = np.array([labels.classes[i] for i in probs.argmax(axis=-1)], dtype=object)
        overall["fine_accuracy"] = float(np.mean(fine_pred == fine_true))
    if y.any() and labels.abnormal_mask.any():
        failure = np.asarray(labels.failure_type(probs), dtype=object)
        overall["failure_type_accuracy"] = float(np.mean(failure[y == 1] == fine_true[y == 1]))
    out: dict[str, Any] = {"overall": overall}
    recordings = [r.recording for r in rows]
    if len(set(recordings)) < len(recordings):  # segments of longer recordings: also score each recording
        _, y_clip, s_clip = clip_level(recordings, y, scores, how="mean")
        out["clips"] = {"n": len(y_clip), "score": "mean over segments", "auc": anomaly_auc(y_clip, s_clip),
                        "pauc": anomaly_pauc(y_clip, s_clip, max_fpr=max_fpr),
                        **(rates_at(y_clip, s_clip, threshold) if np.ndim(threshold) == 0 and threshold is not None
                           else {})}
    for name, column in GROUPINGS.items():
        out[name] = grouped([group_key(r, column) for r in rows], true, predicted, y, scores, **options)
    if scorers:
        out["scorers"] = {name: score_figures(rows, y, value, max_fpr=max_fpr) for name, value in scorers.items()}
    return out


def score_figures(rows: Sequence, y_abnormal: np.ndarray, scores: np.ndarray, *,
                  max_fpr: float = PAUC_MAX_FPR) -> dict[str, Any]:
    """AUC and pAUC of one anomaly score over all images and per machine, machine id and SNR:
    ``{"overall": {"n", "auc", "pauc"}, "by_machine": {group: {...}}, ...}``. A NaN score is a clip the scorer
    does not apply to (a fused run's spectrum part for a machine type it does not join): such clips are left out,
    and ``n`` counts the others."""
    scores, y_abnormal = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(y_abnormal).ravel()
    if not len(rows) == len(y_abnormal) == len(scores):
        raise SpectroError(f"need one label and score per row, got {len(rows)} rows, {len(y_abnormal)} labels and "
                           f"{len(scores)} scores")
    applies = ~np.isnan(scores)
    rows = [r for r, keep in zip(rows, applies) if keep]
    y, s = _binary(y_abnormal[applies], scores[applies])

    def figures(sel: np.ndarray) -> dict[str, Any]:
        return {"n": int(sel.sum()), "auc": anomaly_auc(y[sel], s[sel]),
                "pauc": anomaly_pauc(y[sel], s[sel], max_fpr=max_fpr)}

    out: dict[str, Any] = {"overall": figures(np.ones(len(y), bool))}
    for name, column in GROUPINGS.items():
        keys = np.array([group_key(r, column) for r in rows], dtype=object)
        out[name] = {key: figures(keys == key) for key in sorted(set(keys) - {""})}
    return out
