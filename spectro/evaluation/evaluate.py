"""``spectro evaluate``: metrics, plots, a decision threshold and ``predictions.csv`` for a trained run.

Predictions are made on the run's **test** split (``splits.csv``) or on any image folder / manifest
given with ``--images``. The anomaly-score threshold is always chosen on the run's **validation**
split and stored in ``config.json`` (``threshold``), where ``spectro classify`` reads it.

A run whose anomaly score is fused (:mod:`spectro.scoring.fusion`: the CNN's, the clips' modulation spectra and
their mel statistics, per machine type) is scored by it: ``anomaly_score`` of ``metrics.json`` says ``fused`` (else
``cnn``), its ``scorers`` hold the figures of each part (``cnn``: the CNN's probability alone; ``modulation``;
``melstats``; ``fused``), and ``predictions.csv`` has their scores in ``score_cnn``, ``score_modulation`` and
``score_melstats`` (empty where a part does not join the clip's machine type).

Every evaluation also scores a classical baseline on the same images, so a reader sees at once whether
the CNN beats it: :class:`spectro.evaluation.baselines.MelStatsLogistic`, a logistic regression on
level-normalised per-band mel statistics, fit on the run's **training** split. ``metrics.json`` holds it
under ``baseline``:

``name``                the baseline, in words
``features``            what it sees of each image
``train``               ``n``, ``n_normal``, ``n_abnormal``: the training images it was fit on
``overall``             ``n``, ``auc``, ``pauc`` (max FPR ``pauc_max_fpr``) on the evaluated images
``clips``               the same per recording (score = mean over its segments), only when the images are
                        segments of longer recordings, like the CNN's ``clips``
``by_machine``, ``by_machine_id``, ``by_snr``   ``{group: {"n", "auc", "pauc"}}``, the CNN's groups
``cnn_beats_baseline``  ``true`` when the CNN's overall AUC is above the baseline's, ``false`` when it is
                        not, ``null`` when either is undefined (one class only) or the baseline was skipped
``skipped``             only when the baseline could not be fit (no training images of both classes, or
                        training images that cannot be read): why; the blocks above are then absent

A metric that is undefined for a group (one class only) is ``null``, as for the CNN. ``predictions.csv``
has the baseline's score of every image in ``baseline_score`` (empty when skipped).

Files written (into the run folder, or ``--out``): ``metrics.json``, ``predictions.csv``,
``confusion_matrix.png``, ``roc.png``, ``score_histograms.png``, ``worst_mistakes.png``.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from spectro.data.manifest import ImageRow, read_manifest
from spectro.errors import SpectroError, SpectroWarning
from spectro.evaluation import metrics
from spectro.evaluation.baselines import MelStatsLogistic
from spectro.evaluation.learning import warning_for
from spectro.evaluation.metrics import DEFAULT_MAX_FPR, PAUC_MAX_FPR
from spectro.features.settings import FeatureSettings
from spectro.features.statistics import mel_statistics_of_pixels
from spectro.runs import (
    METRICS_NAME,
    PLOT_NAMES,
    PREDICTIONS_NAME,
    SPLITS_NAME,
    feature_settings,
    load_config,
    read_splits,
    resolve_run,
    update_config,
)
from spectro.runs import threshold as stored_threshold
from spectro.scoring.references import References

MAX_MISTAKES = 12


def rows_from_images(where: str | Path) -> list[ImageRow]:
    """The images of a ``spectro images`` folder or ``manifest.csv`` (split ``given``)."""
    where = Path(where)
    if not where.exists():
        raise SpectroError(f"{where}: no such image folder or manifest")
    rows = read_manifest(where)
    if not rows:
        raise SpectroError(f"{where}: the manifest lists no images")
    return [r.with_split("given") for r in rows]


def pick_threshold(rows: list[ImageRow], scores: np.ndarray, *, max_fpr: float, youden: bool) -> dict[str, Any] | None:
    """The threshold block chosen on the validation rows, or ``None`` (with a warning) when impossible."""
    y = np.array([r.is_abnormal for r in rows], dtype=int)
    if len(rows) == 0 or y.min() == y.max():
        warnings.warn(f"the validation split holds {int((y == 0).sum())} normal and {int(y.sum())} abnormal image(s); "
                      "no threshold chosen, the stored one (or 0.5) stays. Train with a validation split holding both "
                      "to silence this", SpectroWarning, stacklevel=2)
        return None
    choice = metrics.choose_threshold(y, scores, max_fpr=max_fpr, method="youden" if youden else "max_fpr")
    return {**choice.to_dict(), "n_val": len(rows)}


BASELINE_FEATURES = ("per mel band: mean over time minus the clip's mean dB, and standard deviation over time "
                     "(dB of the PNG's fixed scale)")


def mel_baseline(train_rows: list[ImageRow], rows: list[ImageRow], pixels: np.ndarray, *,
                 settings: FeatureSettings, shape: tuple[int, int], cnn_auc: float | None,
                 max_fpr: float = PAUC_MAX_FPR, progress: bool = False,
                 statistics: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
    """Fit the mel-statistics baseline on ``train_rows`` and score the evaluated images.

    Parameters
    ----------
    train_rows : list of ImageRow
        The run's training split; read with the model's ``settings`` and bands (``shape[0]``; any width).
    rows, pixels
        The evaluated images and their pixels ``(n, n_mels, frames)``.
    cnn_auc : float or None
        The CNN's overall AUC on ``rows``, for ``cnn_beats_baseline``.
    statistics : numpy.ndarray, optional
        The evaluated images' mel statistics when the caller has them already (else computed from ``pixels``).

    Returns
    -------
    (dict, numpy.ndarray or None)
        The ``baseline`` block of ``metrics.json`` (keys in the module docstring) and the baseline's score
        per evaluated image; ``None`` scores and a ``skipped`` reason when it cannot be fit.
    """
    from spectro.features.reader import read_images

    block: dict[str, Any] = {"name": MelStatsLogistic.name, "features": BASELINE_FEATURES}
    y_train = np.array([r.is_abnormal for r in train_rows], dtype=int)
    n_abnormal = int(y_train.sum())
    block["train"] = {"n": len(train_rows), "n_normal": len(train_rows) - n_abnormal, "n_abnormal": n_abnormal}
    if n_abnormal == 0 or n_abnormal == len(train_rows):
        block.update(skipped=f"the training split holds {len(train_rows) - n_abnormal} normal and {n_abnormal} "
                             "abnormal image(s); the baseline needs both", cnn_beats_baseline=None)
        return block, None
    try:
        train_pixels, _ = read_images(train_rows, settings=settings, bands=shape[0], progress=progress)
    except SpectroError as exc:
        warnings.warn(f"the mel-statistics baseline is skipped: cannot read the run's training images ({exc}); "
                      "make the images of the run's splits.csv readable to compare the CNN with it", SpectroWarning,
                      stacklevel=2)
        block.update(skipped=f"cannot read the training images: {exc}", cnn_beats_baseline=None)
        return block, None

    def features(x: np.ndarray) -> np.ndarray:
        return mel_statistics_of_pixels(x, db_min=settings.db_min, db_per_step=settings.db_per_step)

    model = MelStatsLogistic().fit(features(train_pixels), y_train)
    del train_pixels
    scores = model.score(features(pixels) if statistics is None else statistics)
    y = np.array([r.is_abnormal for r in rows], dtype=int)

    def figures(y_abnormal: np.ndarray, s: np.ndarray) -> dict[str, Any]:
        return {"n": len(y_abnormal), "auc": metrics.anomaly_auc(y_abnormal, s),
                "pauc": metrics.anomaly_pauc(y_abnormal, s, max_fpr=max_fpr)}

    by_group = metrics.score_figures(rows, y, scores, max_fpr=max_fpr)
    block["overall"] = {**by_group.pop("overall"), "pauc_max_fpr": max_fpr}
    recordings = [r.recording for r in rows]
    if len(set(recordings)) < len(recordings):  # segments of longer recordings, as model_metrics decides
        _, y_clip, s_clip = metrics.clip_level(recordings, y, scores, how="mean")
        block["clips"] = {**figures(y_clip, s_clip), "score": "mean over segments"}
    block.update(by_group)
    base_auc = block["overall"]["auc"]
    block["cnn_beats_baseline"] = None if cnn_auc is None or base_auc is None else bool(cnn_auc > base_auc)
    return block, scores


def evaluate_run(run: str | Path, *, images: str | Path | None = None, max_fpr: float = DEFAULT_MAX_FPR,
                 youden: bool = False, batch_size: int = 32, out: str | Path | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Evaluate ``run`` and write every output file; returns the ``metrics.json`` content.

    The CNN's figures come from :func:`spectro.evaluation.metrics.model_metrics`; the mel-statistics
    baseline (:func:`mel_baseline`, fit on the run's training split) is scored on the same images.

    Parameters
    ----------
    run : path
        A run folder (``models/latest`` …).
    images : path, optional
        An image folder / manifest to evaluate instead of the test split.
    max_fpr, youden
        How the threshold is chosen on the validation split.
    out : path, optional
        Output folder (default: the run folder).
    """
    from spectro.features.reader import read_images, read_modulation
    from spectro.inference.predictors import KerasPredictor, load_predictor

    if not 0 <= max_fpr <= 1:
        raise SpectroError(f"--max-fpr must be in [0, 1], got {max_fpr}")
    if batch_size < 1:
        raise SpectroError(f"--batch-size must be >= 1, got {batch_size}")
    run = resolve_run(run)
    out = Path(out) if out is not None else run
    out.mkdir(parents=True, exist_ok=True)
    split_rows = read_splits(run)
    if images is not None:
        test_rows = rows_from_images(images)
        what = f"images of {Path(images).resolve()}"
    else:
        test_rows = [r for r in split_rows if r.split == "test"]
        what = "test split"
        if not test_rows:
            raise SpectroError(f"{run / SPLITS_NAME} has no test images; evaluate on a folder with --images")
    val_rows = [r for r in split_rows if r.split == "val"]

    predictor = load_predictor(run)
    if isinstance(predictor, KerasPredictor):
        predictor.batch_size = batch_size
    settings = feature_settings(predictor.config)
    shape = predictor.image_shape
    labels = predictor.labels
    if labels.normal_only:
        return evaluate_normal_only(run, predictor, split_rows, test_rows, what, max_fpr=max_fpr, out=out,
                                    progress=progress)
    # clips of any length at least a window wide (training's may differ too), scored as training scored them
    pixels, _ = read_images(test_rows + val_rows, settings=settings, bands=shape[0],
                            min_frames=predictor.input_shape[1], progress=progress)
    probs = predictor.predict_clips(pixels)  # each image scored as training scored it: pooled over its windows
    stats = mel_statistics_of_pixels(pixels, db_min=settings.db_min, db_per_step=settings.db_per_step)
    parts = predictor.anomaly_parts(probs, read_modulation(test_rows + val_rows, settings=settings)
                                    if predictor.fusion is not None else None,
                                    [r.machine for r in test_rows + val_rows], statistics=stats)
    scores = parts["score"]
    test_probs, test_scores = probs[:len(test_rows)], scores[:len(test_rows)]
    # a fused run: each part's figures beside the fused score's (the CNN's alone among them)
    extra = {k: v[:len(test_rows)] for k, v in parts.items() if k != "score"} if predictor.fusion else None
    scorers = {**extra, "fused": test_scores} if extra else None

    chosen = pick_threshold(val_rows, scores[len(test_rows):], max_fpr=max_fpr, youden=youden)
    if chosen is not None:
        update_config(run, threshold=chosen)
    config = load_config(run)
    thr = stored_threshold(config)
    threshold_block = config.get("threshold") or {"value": thr, "method": "default"}

    learning_warning = warning_for(config)
    if learning_warning:
        warnings.warn(learning_warning + "; train it again as the message at its end advised to silence this",
                      SpectroWarning, stacklevel=2)
    result: dict[str, Any] = {
        "learning_warning": learning_warning,
        "run": str(run), "evaluated": what, "n_images": len(test_rows), "task": labels.task,
        "task_classes": list(labels.task_classes), "classes": list(labels.classes), "threshold": threshold_block,
        "anomaly_score": "fused" if scorers else "cnn",
        **metrics.model_metrics(test_rows, test_probs, labels, threshold=thr, scores=test_scores, scorers=scorers),
    }
    train_rows = [r for r in split_rows if r.split == "train"]
    result["baseline"], baseline_scores = mel_baseline(
        train_rows, test_rows, pixels[:len(test_rows)], settings=settings, shape=shape,
        cnn_auc=result["overall"]["auc"], progress=progress, statistics=stats[:len(test_rows)])
    true = [labels.group_of(r.fine_class) for r in test_rows]
    predicted = labels.predicted(test_probs)
    failure = labels.failure_type(test_probs)
    y_abn = np.array([r.is_abnormal for r in test_rows], dtype=int)
    write_predictions(out / PREDICTIONS_NAME, test_rows, predicted, test_scores, failure, test_probs, labels, thr,
                       true, baseline_scores, extra=extra)
    write_plots(out, test_rows, pixels[:len(test_rows)], true, predicted, y_abn, test_scores, test_probs, labels, thr)
    result["files"] = {"predictions": PREDICTIONS_NAME, **PLOT_NAMES}
    (out / METRICS_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result


def write_predictions(path: Path, rows, predicted, scores, failure, probs, labels, thr, true,
                      baseline_scores, extra: dict[str, np.ndarray] | None = None) -> None:
    """``predictions.csv``: one row per evaluated image; ``thr`` one threshold or one per image; ``extra`` adds
    a ``score_<name>`` column per named score (a normal-only run's scorers)."""
    extra = extra or {}
    thr = np.broadcast_to(np.asarray(thr, dtype=np.float64), (len(rows),))
    columns = ["path", "source", "machine", "machine_id", "label", "snr", "predicted", "anomaly_score",
               "failure_type", "segment", "split", "true", "verdict", "baseline_score"]
    columns += [f"p_{c}" for c in labels.classes] + [f"score_{name}" for name in extra]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i, r in enumerate(rows):
            writer.writerow([str(r.path), r.source, r.machine, r.machine_id, r.label, r.snr, predicted[i],
                             f"{scores[i]:.6f}", failure[i], r.segment, r.split, true[i],
                             "" if np.isnan(scores[i]) else "ABNORMAL" if scores[i] >= thr[i] else "normal",
                             "" if baseline_scores is None else f"{baseline_scores[i]:.6f}"]
                            + [f"{p:.6f}" for p in probs[i]]
                            + ["" if np.isnan(v[i]) else f"{v[i]:.6f}" for v in extra.values()])


def write_plots(out: Path, rows, pixels, true, predicted, y_abn, scores, probs, labels,
                thr: float | np.ndarray | None) -> None:
    """The evaluation's figures (``thr``: the threshold, or each image's: a normal-only run's, per machine id,
    whose score histograms are then drawn per machine id, each with its own threshold)."""
    from spectro.evaluation import plots

    plots.confusion_matrix(out / PLOT_NAMES["confusion"], true, predicted, labels.task_classes,
                           title=f"Confusion matrix ({labels.task} task)")
    machines = sorted({r.machine for r in rows})
    curves = {}
    for m in machines:
        sel = np.array([r.machine == m for r in rows])
        curves[m] = (y_abn[sel], scores[sel])
    hist_groups = {"all": (y_abn, scores), **(curves if len(machines) > 1 else {})}
    plots.roc_curves(out / PLOT_NAMES["roc"], {**curves, **({"all": (y_abn, scores)} if len(machines) > 1 else {})})
    hist_thr = thr
    if np.ndim(thr):  # one threshold per machine id: one panel per machine id
        keys = np.array([labels.class_of(r) for r in rows], dtype=object)
        hist_groups = {k: (y_abn[keys == k], scores[keys == k]) for k in sorted(set(keys.tolist()))}
        hist_thr = {k: float(np.asarray(thr)[keys == k][0]) for k in hist_groups}
    plots.score_histograms(out / PLOT_NAMES["histograms"], hist_groups, threshold=hist_thr,
                           title="Anomaly score (test)" if not np.ndim(thr) else "Anomaly score per machine id (test)")

    task_p = labels.task_probs(probs)
    groups = list(labels.task_classes)
    pred_p = np.array([task_p[i, groups.index(p)] for i, p in enumerate(predicted)])
    true_p = np.array([task_p[i, groups.index(t)] if t in groups else 0.0 for i, t in enumerate(true)])
    wrong = np.flatnonzero(np.asarray(true, dtype=object) != np.asarray(predicted, dtype=object))
    if len(wrong):
        pick = wrong[np.argsort(-pred_p[wrong], kind="stable")][:MAX_MISTAKES]
        title = f"Worst mistakes: {len(wrong)} of {len(rows)} wrong, most confident first"
        colors = ["tab:red"] * len(pick)
    else:
        pick = np.argsort(true_p, kind="stable")[:MAX_MISTAKES]
        title = f"No mistakes in {len(rows)} images: the closest calls (lowest probability of the true class)"
        colors = ["black"] * len(pick)
    captions = [f"{Path(rows[i].path).name}\ntrue {true[i]}\npred {predicted[i]} ({pred_p[i]:.2f}), "
                f"score {scores[i]:.2f}" for i in pick]
    plots.image_grid(out / PLOT_NAMES["mistakes"], [pixels[i] for i in pick], captions, title=title, colors=colors)

# -- normal-only runs ------------------------------------------------------------------------------------------
# Figures and ``spectro evaluate`` for normal-only runs (``--task normal-only``).
#
# A normal-only run scores a clip by comparing its embedding with its machine's normal references
# (:mod:`spectro.scoring.references`); each machine has its own threshold, from normal clips alone. The figures are
# those of :func:`spectro.evaluation.metrics.model_metrics` with the run's default scorer as the anomaly score and
# the machine-id classification as the task, plus ``scorers`` (AUC and pAUC of every scorer per machine type, id
# and SNR) and ``unscored`` (clips of machines without references). The baseline beside it is the DCASE 2020
# dense autoencoder (:class:`spectro.evaluation.baselines.DenseAutoencoder`), fit on the run's training normals:
# the supervised mel-statistics baseline needs abnormal training clips, which a normal-only run never has.

AUTOENCODER = "DCASE 2020 dense autoencoder (fit on the training normals)"


def normal_only_scores(predictor, references: References, labels, rows: list[ImageRow], pixels,
                       modulation: np.ndarray | None = None):
    """Every scorer's clip scores (NaN for machines without references), pooled probabilities, and each clip's
    threshold (NaN likewise); ``modulation``: the clips' modulation spectra, when the images carry them."""
    from spectro.scoring.normal import embed_and_score

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
    from spectro.scoring.normal import calibrate_all, embed_and_score

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
