"""Where a fused run's spectrum part joins (issue 18): per machine type, the AUC of the spectrum part on each
failure label of the training split (held-out normals against the label's clips), the decision
:class:`spectro.model.fusion.Fusion` takes from them, and the spectrum part's AUC on the clips it was not fitted on.
No network is trained: the spectra are in the PNGs.

    python scripts/probe_fusion_gate.py data/images --builtin     # the bench's split: all clips and 10 per class
    python scripts/probe_fusion_gate.py FOLDER                     # 5 folds by clip (held-out family, real sample)
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


def _probe(data, train: np.ndarray, test: np.ndarray, tag: str) -> None:
    from sklearn.metrics import roc_auc_score

    from spectro.model.fusion import Fusion, held_out_distances
    from spectro.model.references import Gaussian

    labels = np.array([r.label for r in data.rows])
    normal, failed = train & ~data.abnormal, train & data.abnormal
    fusion = Fusion.fit(types=sorted(set(data.machines)), train_types=data.machines[normal],
                        train_modulation=data.modulation[normal], train_probability=np.full(normal.sum(), 0.5),
                        val_types=[], val_probability=np.zeros(0), abnormal_types=data.machines[failed],
                        abnormal_labels=labels[failed], abnormal_modulation=data.modulation[failed])
    for name, fused in sorted(fusion.types.items()):
        spectra = data.modulation[normal & (data.machines == name)]
        held, gaussian = held_out_distances(spectra), Gaussian(spectra)
        cells = []
        for label in sorted(set(labels[failed & (data.machines == name)])):
            mine = failed & (data.machines == name) & (labels == label)
            truth = np.r_[np.zeros(len(held)), np.ones(mine.sum())]
            cells.append(f"{label} {roc_auc_score(truth, np.r_[held, gaussian.distance(data.modulation[mine])]):.2f}")
        held_out = test & (data.machines == name)
        auc = roc_auc_score(data.abnormal[held_out], gaussian.distance(data.modulation[held_out]))
        print(f"{tag:<9} {name:<8} {len(held):>6} | {', '.join(cells):<40} | "
              f"{'joins' if fused.modulation_joins else 'left out':<8} | {auc:.3f}")


def main() -> None:
    from bench_curve import curve_splits
    from bench_small import _Images, synthetic_split
    from sklearn.model_selection import StratifiedKFold

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="an image folder whose PNGs carry modulation spectra")
    parser.add_argument("--builtin", action="store_true",
                        help="the built-in set's bench split (all training clips, and the curve's 10 per class)")
    args = parser.parse_args()
    data = _Images.read(args.images)
    print("training clips: normal ones (held out fold by fold) against each failure label's; other clips: the test "
          "split (--builtin) or the fold's held-out clips")
    print(f"{'set':<9} {'type':<8} {'normal':>6} | {'AUC per failure label, training clips':<40} | decision | "
          "spectrum AUC, other clips")
    if args.builtin:
        base = synthetic_split(data)
        fine = np.array([r.fine_class for r in data.rows])
        _probe(data, base == "train", base == "test", "all")
        _probe(data, curve_splits(base, fine, 10) == "train", base == "test", "10/class")
        return
    fine = np.array([r.fine_class for r in data.rows])
    for k, (train, _) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(fine, fine)):
        mask = np.zeros(len(fine), bool)
        mask[train] = True
        _probe(data, mask, ~mask, f"fold {k}")


if __name__ == "__main__":
    main()
