"""Where the spectrum part's scale comes from (issue 18): per machine type, the part's robust scale and what it does
to clips it was not fitted on, with the scale taken from the training normals fold by fold alone (as before) and
with the validation normals beside them (as :class:`spectro.model.fusion.Fusion` fits it). No network is trained:
the spectra are in the PNGs. Every type's spectrum part is scored, whether or not it joins the fused score.

    python scripts/probe_spectrum_scale.py data/images --builtin   # the bench's split: all clips and 10 per class
    python scripts/probe_spectrum_scale.py FOLDER                  # 5 folds by clip, every 5th training clip validates

Prints, per set and scale: the scale (median, robust sd of log distances), the share of other normal clips above
the default threshold (one standard normal part passes 2.6 % of them), and the AUC pooled over the folds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _spectrum_part(data, train: np.ndarray, val: np.ndarray, test: np.ndarray, with_val: bool):
    """The spectrum part of the test clips, fitted on the normal training clips (and scaled with the validation
    normals when ``with_val``), and each type's scale."""
    from spectro.model.fusion import Fusion

    normal, val_normal = train & ~data.abnormal, val & ~data.abnormal
    fusion = Fusion.fit(types=sorted(set(data.machines)), train_types=data.machines[normal],
                        train_modulation=data.modulation[normal], train_probability=None,
                        val_types=data.machines[val_normal], val_probability=np.full(val_normal.sum(), 0.5),
                        val_modulation=data.modulation[val_normal] if with_val else None)
    return (fusion.parts(data.machines[test], np.full(test.sum(), 0.5), data.modulation[test])["modulation"],
            {name: t.modulation_scale for name, t in fusion.types.items()})


def _report(data, splits: list, tag: str) -> None:
    """``splits``: (train, val, test) masks, one per fold; the test masks cover each clip at most once."""
    from sklearn.metrics import roc_auc_score

    from spectro.model.fusion import DEFAULT_THRESHOLD

    types = sorted(set(data.machines))
    for with_val, scale in ((False, "training folds"), (True, "+ validation")):
        score, scales = np.full(len(data.rows), np.nan), {t: [] for t in types}
        for train, val, test in splits:
            score[test], fitted = _spectrum_part(data, train, val, test, with_val)
            for t in types:
                scales[t].append(fitted[t])
        tested = ~np.isnan(score)
        cells = []
        for t in types:
            sel = tested & (data.machines == t)
            normals = score[sel & ~data.abnormal]
            medians, sds = zip(*scales[t])
            auc = roc_auc_score(data.abnormal[sel], score[sel])
            cells.append(f"{t} {min(medians):.2f}–{max(medians):.2f}/{min(sds):.2f}–{max(sds):.2f} "
                         f"{np.mean(normals > DEFAULT_THRESHOLD):.2f} {auc:.3f}")
        print(f"{tag:<9} {scale:<15} | " + " | ".join(cells))


def main() -> None:
    from bench_curve import curve_splits
    from bench_heldout import fold_splits
    from bench_small import _Images, synthetic_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="an image folder whose PNGs carry modulation spectra")
    parser.add_argument("--builtin", action="store_true",
                        help="the built-in set's bench split (all training clips, and the curve's 10 per class)")
    args = parser.parse_args()
    data = _Images.read(args.images)
    print("per type: scale median (min–max over folds) / robust sd (min–max), share of other normal clips above the "
          "default threshold, AUC")
    if args.builtin:
        base = synthetic_split(data)
        chosen = curve_splits(base, np.array([r.fine_class for r in data.rows]), 10)
        for tag, splits in (("all", base), ("10/class", chosen)):
            _report(data, [(splits == "train", base == "val", base == "test")], tag)
        return
    _report(data, [(s == "train", s == "val", s == "test") for s, _ in fold_splits(data, 5)], "5 folds")

if __name__ == "__main__":
    main()
