"""Compare ways to combine a normal-only run's two distances (``mahalanobis``, the model's; ``modulation``, the
clips' spectra) into one score, per machine id.

    python scripts/compare_combinations.py RUN [RUN ...]

Each RUN is a normal-only run folder (``spectro train --task normal-only``) whose images carry modulation spectra.
No retraining: the run's references score its test clips (as ``spectro evaluate`` does), and each machine's
reference clips, scored fold by fold against the others, give the scales. A rule turns each part into a
standard score against those held-out reference scores (plain: median and standard deviation; ``mad``: median
and 1.4826 × median absolute deviation; ``log``: the same of the logs; ``ratio``: the score over the median)
and combines the two (``sum``, ``max``, or ``fisher``: −log of the normal tail probabilities, added). Prints each
run's AUC per rule (the mean over machine ids and per machine type) and, with several runs, the mean over runs.
docs/normal-only.md holds what it printed when ``combined`` took its form.
"""

import sys
from pathlib import Path

import numpy as np
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from spectro.features.reader import read_images, read_modulation
from spectro.inference.normal import embed_and_score
from spectro.inference.predictors import load_predictor
from spectro.model.labels import machine_key
from spectro.model.references import COMBINED_PARTS, MAD_TO_STD, References, log_scales
from spectro.runs import feature_settings, read_splits


def _standard(scores, held, how):
    if how == "logmad":  # what spectro's combined measures each part in
        centre, spread = log_scales(held)
        return (np.log(scores) - centre) / spread
    if how.startswith("log"):
        scores, held = np.log(scores), np.log(held)
        how = how[3:] or "std"
    centre = np.median(held)
    if how == "ratio":
        return scores / centre
    spread = np.std(held) if how == "std" else MAD_TO_STD * np.median(np.abs(held - centre))
    return (scores - centre) / spread


RULES = {f"{combine} of {scale}": (combine, scale) for scale in ("std", "mad", "logstd", "logmad", "ratio")
         for combine in ("sum", "max")}
RULES.update({"fisher of std": ("fisher", "std"), "fisher of logstd": ("fisher", "logstd")})


def _combine(parts, combine):
    if combine == "sum":
        return parts[0] + parts[1]
    if combine == "max":
        return np.maximum(parts[0], parts[1])
    return -norm.logsf(parts[0]) - norm.logsf(parts[1])


def scores_by_rule(run: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The run's test clips' machine keys, truth and score under each rule (and each part alone)."""
    predictor = load_predictor(run)
    references = References.load(run)
    settings = feature_settings(predictor.config)
    test = read_splits(run, "test")
    keys = np.array([machine_key(r.machine, r.machine_id) for r in test])
    pixels = read_images(test, settings=settings, shape=predictor.image_shape)[0]
    modulation = read_modulation(test, settings=settings)
    if modulation is None:
        raise SystemExit(f"{run}: its images carry no modulation spectra")
    parts = embed_and_score(predictor, references, keys, pixels, modulation=modulation)[0]
    out = {part: np.asarray(parts[part], dtype=np.float64) for part in COMBINED_PARTS}
    out.update({rule: np.zeros(len(keys)) for rule in RULES})
    for key in sorted(set(keys)):
        chosen = keys == key
        held = references.machine(key).held_out_scores(None, k=references.k)
        for rule, (combine, scale) in RULES.items():
            standard = [_standard(out[p][chosen], held[p], scale) for p in COMBINED_PARTS]
            out[rule][chosen] = _combine(standard, combine)
    return keys, np.array([r.is_abnormal for r in test]), out


def main(runs: list[Path]) -> None:
    means = {}
    for run in runs:
        keys, truth, scores = scores_by_rule(run)
        types = np.array([k.split("/")[0] for k in keys])
        print(f"\n{run.name}: AUC, mean over machine ids | per machine type ({', '.join(sorted(set(types)))})")
        for rule, score in scores.items():
            by_id = np.mean([roc_auc_score(truth[keys == k], score[keys == k]) for k in sorted(set(keys))])
            by_type = [roc_auc_score(truth[types == t], score[types == t]) for t in sorted(set(types))]
            means.setdefault(rule, []).append(by_id)
            print(f"  {rule:18s} {by_id:.3f} | " + " ".join(f"{a:.3f}" for a in by_type))
    if len(runs) > 1:
        print(f"\nmean over the {len(runs)} runs:")
        for rule, values in means.items():
            print(f"  {rule:18s} {np.mean(values):.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main([Path(a) for a in sys.argv[1:]])
