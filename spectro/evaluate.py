"""``spectro evaluate``: metrics, plots, a decision threshold and ``predictions.csv`` for a trained run.

Predictions are made on the run's **test** split (``splits.csv``) or on any image folder / manifest
given with ``--images``. The anomaly-score threshold is always chosen on the run's **validation**
split and stored in ``config.json`` (``threshold``), where ``spectro classify`` reads it.

Files written (into the run folder, or ``--out``): ``metrics.json``, ``predictions.csv``,
``confusion_matrix.png``, ``roc.png``, ``score_histograms.png``, ``worst_mistakes.png``.
"""

from __future__ import annotations

import csv
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from spectro.errors import SpectroError, SpectroWarning
from spectro.runs import ImageRow, read_splits
from spectro.metrics import DEFAULT_MAX_FPR, PAUC_MAX_FPR

HELP = ("Evaluate a trained run on its test split (or on any image folder / manifest.csv given with --images): "
        "accuracy, balanced accuracy, per-class precision/recall/F1, anomaly ROC AUC and pAUC (max FPR 0.1), "
        "overall and per machine type, machine id and SNR; a confusion matrix, ROC curves, score histograms and the "
        "worst mistakes as PNGs; metrics.json and predictions.csv. The anomaly-score threshold is chosen on the "
        "validation split (largest threshold with the best TPR at FPR <= --max-fpr, or Youden's J) and stored in "
        "the run's config.json for 'spectro classify'.")

METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.csv"
PLOT_NAMES = {"confusion": "confusion_matrix.png", "roc": "roc.png", "histograms": "score_histograms.png",
              "mistakes": "worst_mistakes.png"}
GROUPINGS = {"by_machine": "machine", "by_machine_id": "machine_id", "by_snr": "snr"}
MAX_MISTAKES = 12


def add_arguments(parser) -> None:
    from spectro.config import MODELS_DIR

    parser.add_argument("run", nargs="?", default=str(MODELS_DIR / "latest"), help="the run folder")
    parser.add_argument("--images", default=None, metavar="DIR_OR_MANIFEST",
                        help="evaluate on this image folder (with its manifest.csv) or manifest instead of the "
                             "run's test split; its images must be rendered with the model's settings")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--max-fpr", type=float, default=DEFAULT_MAX_FPR,
                       help="target false-alarm rate on the validation split for the anomaly threshold")
    group.add_argument("--youden", action="store_true", help="choose the threshold by Youden's J instead")
    parser.add_argument("--batch-size", type=int, default=32, help="images per prediction batch")
    parser.add_argument("--out", type=Path, default=None, help="where to write metrics, predictions and plots; when not given, the run folder")


def rows_from_images(where: str | Path) -> list[ImageRow]:
    """The images of a ``spectro images`` folder or ``manifest.csv`` (split ``given``)."""
    from spectro.dataset import MANIFEST_NAME, read_manifest

    where = Path(where)
    if not where.exists():
        raise SpectroError(f"{where}: no such image folder or manifest")
    folder = where if where.is_dir() else where.parent
    rows = read_manifest(where if where.is_file() else where / MANIFEST_NAME)
    if not rows:
        raise SpectroError(f"{where}: the manifest lists no images")
    return [ImageRow(folder / r.image, r.source, r.machine, r.machine_id, r.label, r.snr, r.segment, "given")
            for r in rows]


def load_images(rows: list[ImageRow], settings, input_shape: tuple[int, int], *, progress: bool = False) -> np.ndarray:
    """Pixels ``(n, n_mels, frames)`` of ``rows``, refusing images rendered with other settings or of another shape."""
    from tqdm import tqdm

    from spectro.images import read_info, read_pixels
    from spectro.predict import check_image_settings

    missing = [r.path for r in rows if not r.path.is_file()]
    if missing:
        raise SpectroError(f"{len(missing)} of {len(rows)} images are missing, e.g. {missing[0]}; re-render them with "
                           "'spectro images' (spectro evaluate also takes --images)")
    out = np.empty((len(rows), *input_shape), dtype=np.uint8)
    for i, row in enumerate(tqdm(rows, desc="reading images", unit="img", disable=not progress, leave=False)):
        check_image_settings(row.path, read_info(row.path).settings, settings)
        pixels = read_pixels(row.path)
        if pixels.shape != tuple(input_shape):
            raise SpectroError(f"{row.path}: image is {pixels.shape[0]}x{pixels.shape[1]} pixels, the model takes "
                               f"{input_shape[0]}x{input_shape[1]}")
        out[i] = pixels
    return out


def _group_key(row: ImageRow, column: str) -> str:
    if column == "machine_id":
        return f"{row.machine}/{row.machine_id}" if row.machine_id else ""
    return getattr(row, column)


def pick_threshold(rows: list[ImageRow], scores: np.ndarray, *, max_fpr: float, youden: bool) -> dict[str, Any] | None:
    """The threshold block chosen on the validation rows, or ``None`` (with a warning) when impossible."""
    from spectro.config import NORMAL_LABEL
    from spectro.metrics import choose_threshold

    y = np.array([r.label != NORMAL_LABEL for r in rows], dtype=int)
    if len(rows) == 0 or y.min() == y.max():
        warnings.warn(f"the validation split holds {int((y == 0).sum())} normal and {int(y.sum())} abnormal image(s); "
                      "no threshold chosen, the stored one (or 0.5) stays. Train with a validation split holding both "
                      "to silence this", SpectroWarning, stacklevel=2)
        return None
    choice = choose_threshold(y, scores, max_fpr=max_fpr, method="youden" if youden else "max_fpr")
    return {**choice.to_dict(), "n_val": len(rows)}


def evaluate_run(run: str | Path, *, images: str | Path | None = None, max_fpr: float = DEFAULT_MAX_FPR,
                 youden: bool = False, batch_size: int = 32, out: str | Path | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Evaluate ``run`` and write every output file; returns the ``metrics.json`` content.

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
    from spectro import metrics
    from spectro.config import NORMAL_LABEL
    from spectro.inference import KerasPredictor, load_predictor
    from spectro.labels import fine_name
    from spectro.runs import feature_settings, load_config, resolve_run, threshold as stored_threshold, update_config

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
            raise SpectroError(f"{run}/splits.csv has no test images; evaluate on a folder with --images")
    val_rows = [r for r in split_rows if r.split == "val"]

    predictor = load_predictor(run)
    if isinstance(predictor, KerasPredictor):
        predictor.batch_size = batch_size
    settings = feature_settings(predictor.config)
    shape = tuple(int(v) for v in predictor.input_shape)
    labels = predictor.labels
    pixels = load_images(test_rows + val_rows, settings, shape, progress=progress)
    probs = predictor.predict(pixels)
    scores = labels.anomaly_score(probs)
    test_probs, test_scores = probs[:len(test_rows)], scores[:len(test_rows)]

    chosen = pick_threshold(val_rows, scores[len(test_rows):], max_fpr=max_fpr, youden=youden)
    if chosen is not None:
        update_config(run, threshold=chosen)
    config = load_config(run)
    thr = stored_threshold(config)
    threshold_block = config.get("threshold") or {"value": thr, "method": "default"}

    true = [labels.group_of(fine_name(r.machine, r.label)) for r in test_rows]
    predicted = labels.predicted(test_probs)
    failure = labels.failure_type(test_probs)
    y_abn = np.array([r.label != NORMAL_LABEL for r in test_rows], dtype=int)
    options = dict(classes=list(labels.task_classes), threshold=thr, max_fpr=PAUC_MAX_FPR)
    result: dict[str, Any] = {
        "run": str(run), "evaluated": what, "n_images": len(test_rows), "task": labels.task,
        "task_classes": list(labels.task_classes), "classes": list(labels.classes), "threshold": threshold_block,
        "overall": metrics.summarize(true, predicted, y_abn, test_scores, **options),
    }
    abnormal = y_abn == 1
    if abnormal.any():
        fine_true = np.array([fine_name(r.machine, r.label) for r in test_rows], dtype=object)
        result["overall"]["failure_type_accuracy"] = float(np.mean(np.asarray(failure, dtype=object)[abnormal]
                                                                   == fine_true[abnormal]))
    sources = [r.source or str(r.path) for r in test_rows]
    if len(set(sources)) < len(sources):  # segments of longer recordings: also score each recording
        _, y_clip, s_clip = metrics.clip_level(sources, y_abn, test_scores, how="mean")
        result["clips"] = {"n": len(y_clip), "score": "mean over segments", "auc": metrics.anomaly_auc(y_clip, s_clip),
                           "pauc": metrics.anomaly_pauc(y_clip, s_clip), **metrics.rates_at(y_clip, s_clip, thr)}
    for name, column in GROUPINGS.items():
        keys = [_group_key(r, column) for r in test_rows]
        result[name] = metrics.grouped(keys, true, predicted, y_abn, test_scores, **options)

    _write_predictions(out / PREDICTIONS_NAME, test_rows, predicted, test_scores, failure, test_probs, labels, thr, true)
    _write_plots(out, test_rows, pixels[:len(test_rows)], true, predicted, y_abn, test_scores, test_probs, labels, thr)
    result["files"] = {"predictions": PREDICTIONS_NAME, **PLOT_NAMES}
    (out / METRICS_NAME).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _write_predictions(path: Path, rows, predicted, scores, failure, probs, labels, thr: float, true) -> None:
    columns = ["path", "source", "machine", "machine_id", "label", "snr", "predicted", "anomaly_score",
               "failure_type", "segment", "split", "true", "verdict"] + [f"p_{c}" for c in labels.classes]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i, r in enumerate(rows):
            writer.writerow([str(r.path), r.source, r.machine, r.machine_id, r.label, r.snr, predicted[i],
                             f"{scores[i]:.6f}", failure[i], r.segment, r.split, true[i],
                             "ABNORMAL" if scores[i] >= thr else "normal"] + [f"{p:.6f}" for p in probs[i]])


def _write_plots(out: Path, rows, pixels, true, predicted, y_abn, scores, probs, labels, thr: float) -> None:
    from spectro import plots

    plots.confusion_matrix(out / PLOT_NAMES["confusion"], true, predicted, labels.task_classes,
                           title=f"Confusion matrix ({labels.task} task)")
    machines = sorted({r.machine for r in rows})
    curves = {}
    for m in machines:
        sel = np.array([r.machine == m for r in rows])
        curves[m] = (y_abn[sel], scores[sel])
    hist_groups = {"all": (y_abn, scores), **(curves if len(machines) > 1 else {})}
    plots.roc_curves(out / PLOT_NAMES["roc"], {**curves, **({"all": (y_abn, scores)} if len(machines) > 1 else {})})
    plots.score_histograms(out / PLOT_NAMES["histograms"], hist_groups, threshold=thr)

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


def format_summary(result: dict[str, Any]) -> str:
    """A short text table of the main figures."""
    def f(v):
        return "  n/a" if v is None else f"{v:.3f}"

    o = result["overall"]
    t = result["threshold"]
    lines = [f"{result['evaluated']}: {o['n']} images ({o['n_normal']} normal, {o['n_abnormal']} abnormal), "
             f"task {result['task']}",
             f"  accuracy {f(o['accuracy'])}  balanced accuracy {f(o['balanced_accuracy'])}  "
             f"anomaly AUC {f(o['auc'])}  pAUC(0.1) {f(o['pauc'])}"]
    if "failure_type_accuracy" in o:
        lines[-1] += f"  failure type {f(o['failure_type_accuracy'])}"
    if "clips" in result:
        c = result["clips"]
        lines.append(f"  per recording ({c['n']}, {c['score']}): AUC {f(c['auc'])}  pAUC(0.1) {f(c['pauc'])}")
    at = o.get("at_threshold", {})
    how = (f"{t['method']}" + (f" <= {t['max_fpr']}" if t.get("max_fpr") is not None else "")
           + (f", val FPR {f(t['val_fpr'])} TPR {f(t['val_tpr'])}" if "val_fpr" in t else ""))
    lines.append(f"  threshold {t['value']:.4f} ({how}); on these images TPR {f(at.get('tpr'))} FPR {f(at.get('fpr'))}")
    for name in GROUPINGS:
        if len(result[name]) > 1:
            lines.append(f"  {name.replace('_', ' ')}:")
            for key, g in result[name].items():
                lines.append(f"    {key:<20} n {g['n']:>5}  acc {f(g['accuracy'])}  AUC {f(g['auc'])}  "
                             f"pAUC {f(g['pauc'])}")
    return "\n".join(lines)


def main(args) -> int:
    result = evaluate_run(args.run, images=args.images, max_fpr=args.max_fpr, youden=args.youden,
                          batch_size=args.batch_size, out=args.out, progress=sys.stderr.isatty())
    print(format_summary(result))
    out = Path(args.out) if args.out is not None else Path(result["run"])
    print(f"wrote {METRICS_NAME}, {PREDICTIONS_NAME} and {len(PLOT_NAMES)} plots to {out}")
    return 0
