"""``spectro evaluate``: metrics, plots and the threshold of a run (:func:`spectro.evaluation.evaluate.evaluate_run`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from spectro.evaluation.evaluate import evaluate_run
from spectro.evaluation.metrics import DEFAULT_MAX_FPR, GROUPINGS
from spectro.paths import MODELS_DIR
from spectro.runs import LATEST, METRICS_NAME, PLOT_NAMES, PREDICTIONS_NAME

HELP = ("Evaluate a trained run on its test split (or on any image folder / manifest.csv given with --images): "
        "accuracy, balanced accuracy, per-class precision/recall/F1, anomaly ROC AUC and pAUC (max FPR 0.1), "
        "overall and per machine type, machine id and SNR; a confusion matrix, ROC curves, score histograms and the "
        "worst mistakes as PNGs; metrics.json and predictions.csv. Beside every AUC and pAUC stands the one of a "
        "baseline, a logistic regression on level-normalised per-band mel statistics fit on the run's training "
        "split, so you see whether the CNN beats it. The anomaly-score threshold is chosen on the "
        "validation split (largest threshold with the best TPR at FPR <= --max-fpr, or Youden's J) and stored in "
        "the run's config.json for 'spectro classify'.")


def add_arguments(parser) -> None:
    parser.add_argument("run", nargs="?", default=str(MODELS_DIR / LATEST),
                        help="the run folder; its model.keras is evaluated (the model classify and serve use for a "
                             "run folder; a .tflite file is checked by 'spectro export')")
    parser.add_argument("--images", default=None, metavar="DIR_OR_MANIFEST",
                        help="evaluate on this image folder (with its manifest.csv) or manifest instead of the "
                             "run's test split; its images must be rendered with the model's settings")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--max-fpr", type=float, default=DEFAULT_MAX_FPR,
                       help="target false-alarm rate on the validation split for the anomaly threshold")
    group.add_argument("--youden", action="store_true", help="choose the threshold by Youden's J instead")
    parser.add_argument("--batch-size", type=int, default=32, help="images per prediction batch")
    parser.add_argument("--out", type=Path, default=None, help="where to write metrics, predictions and plots; when "
                                                               "not given, the run folder")


def format_summary(result: dict[str, Any]) -> str:
    """A short text table of the main figures, the baseline's AUC and pAUC beside the CNN's."""
    def f(v):
        return "  n/a" if v is None else f"{v:.3f}"

    base = result.get("baseline") or {}
    fitted = "overall" in base

    def vs(group: dict | None, key: str) -> str:  # " (baseline 0.870)" when the baseline has this figure
        return f" (baseline {f(group.get(key))})" if fitted and group is not None else ""

    o = result["overall"]
    t = result["threshold"]
    lines = [f"{result['evaluated']}: {o['n']} images ({o['n_normal']} normal, {o['n_abnormal']} abnormal), "
             f"task {result['task']}",
             f"  accuracy {f(o['accuracy'])}  balanced accuracy {f(o['balanced_accuracy'])}  "
             f"anomaly AUC {f(o['auc'])}{vs(base.get('overall'), 'auc')}  "
             f"pAUC(0.1) {f(o['pauc'])}{vs(base.get('overall'), 'pauc')}"]
    if "failure_type_accuracy" in o:
        lines[-1] += f"  failure type {f(o['failure_type_accuracy'])}"
    if "clips" in result:
        c = result["clips"]
        lines.append(f"  per recording ({c['n']}, {c['score']}): AUC {f(c['auc'])}{vs(base.get('clips'), 'auc')}  "
                     f"pAUC(0.1) {f(c['pauc'])}{vs(base.get('clips'), 'pauc')}")
    if fitted:
        tr = base["train"]
        lines.append(f"  baseline: {base['name']}, fit on {tr['n']} training images ({tr['n_normal']} normal, "
                     f"{tr['n_abnormal']} abnormal)")
        if base.get("cnn_beats_baseline") is False and base["overall"]["auc"] > o["auc"]:
            who = "mel-statistics" if "mel statistics" in base["name"] else "autoencoder"
            lines.append(f"  the {who} baseline beats the CNN on these images: AUC {f(base['overall']['auc'])}"
                         f" vs {f(o['auc'])}, pAUC {f(base['overall']['pauc'])} vs {f(o['pauc'])}")
    elif base.get("skipped"):
        lines.append(f"  baseline ({base['name']}) skipped: {base['skipped']}")
    at = o.get("at_threshold", {})
    how = (f"{t['method']}" + (f" <= {t['max_fpr']}" if t.get("max_fpr") is not None else "")
           + (f", val FPR {f(t['val_fpr'])} TPR {f(t['val_tpr'])}" if "val_fpr" in t else ""))
    value = "per machine" if t["value"] is None else f"{t['value']:.4f}"
    lines.append(f"  threshold {value} ({how}); on these images TPR {f(at.get('tpr'))} FPR {f(at.get('fpr'))}")
    if result.get("unscored"):
        lines.append(f"  {result['unscored']} clip(s) of machines without normal references not scored (enroll "
                     "their normal recordings with 'spectro enroll')")
    for scorer, figures in result.get("scorers", {}).items():  # every scorer (normal-only) or part (fused)
        lines.append(f"  scorer {scorer:<12} AUC {f(figures['overall']['auc'])}  pAUC(0.1) "
                     f"{f(figures['overall']['pauc'])}   by machine id: "
                     + ", ".join(f"{key} {f(g['auc'])}/{f(g['pauc'])}" for key, g in figures["by_machine_id"].items()))
    for name in GROUPINGS:
        if len(result[name]) > 1:
            lines.append(f"  {name.replace('_', ' ')}:")
            for key, g in result[name].items():
                b = base.get(name, {}).get(key) if fitted else None
                lines.append(f"    {key:<20} n {g['n']:>5}  acc {f(g['accuracy'])}  AUC {f(g['auc'])}{vs(b, 'auc')}  "
                             f"pAUC {f(g['pauc'])}{vs(b, 'pauc')}")
    return "\n".join(lines)


def main(args) -> int:
    result = evaluate_run(args.run, images=args.images, max_fpr=args.max_fpr, youden=args.youden,
                          batch_size=args.batch_size, out=args.out, progress=sys.stderr.isatty())
    print(format_summary(result))
    out = Path(args.out) if args.out is not None else Path(result["run"])
    print(f"wrote {METRICS_NAME}, {PREDICTIONS_NAME} and {len(PLOT_NAMES)} plots to {out}")
    return 0
