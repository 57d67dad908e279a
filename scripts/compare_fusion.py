"""Rescore trained supervised runs with and without the fused anomaly score (issue 18), without retraining.

For each run: the CNN's pooled probabilities of its training normals, validation and test clips, the clips'
modulation spectra, and :class:`spectro.model.fusion.Fusion` fitted from the run's own splits as ``spectro
train`` fits it (validation normals scale the CNN part; training normals give the spectrum's Gaussian). Prints
test AUC per machine type, pooled over the runs' test clips (several runs: the folds of one cross-validation):
the CNN's probability, the CNN part, the spectrum part, the fused standard score before the calibration, and the
run's score (``fused, calibrated``: calibrated per type on the run's validation clips, as ``spectro train`` does
since the calibration was built). The machine type of a clip is its
true one here (``spectro`` scores the type the CNN names; on these sets the two agree on nearly every clip).

``--images FOLDER``: read the modulation spectra from this image folder's PNGs (matched by
``<machine>/<label>/<file>``), for runs trained on images rendered before PNGs carried them. ``--folds-only``: scale
the spectrum part by the training normals fold by fold alone, without the validation normals (as runs trained before
the validation normals joined that scale were fitted).

    python scripts/compare_fusion.py models/20261203-080147-failure-mobilenet_v2 --images reports/bench/synth_images
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _scores(run: Path, images: Path | None, folds_only: bool = False) -> dict[str, np.ndarray]:
    from spectro.data.manifest import read_manifest
    from spectro.features.reader import read_images, read_modulation
    from spectro.inference.predictors import load_predictor
    from spectro.model.fusion import Fusion
    from spectro.runs import feature_settings, read_splits

    predictor = load_predictor(run)
    features = feature_settings(predictor.config)
    rows = list(read_splits(run))
    probability = predictor.labels.anomaly_score(
        predictor.predict_clips(read_images(rows, settings=features, shape=predictor.image_shape)[0]))
    spectra_rows, spectra_settings = rows, features
    if images is not None:
        by_name = {Path(r.path).parts[-3:]: r for r in read_manifest(images)}
        spectra_rows = [by_name[Path(r.path).parts[-3:]] for r in rows]
        spectra_settings = dataclasses.replace(features, modulation_hz=read_manifest_settings(images))
    modulation = read_modulation(spectra_rows, settings=spectra_settings)
    split = np.array([r.split for r in rows])
    abnormal = np.array([r.is_abnormal for r in rows])
    machine = np.array([r.machine for r in rows])
    train, val = (split == "train") & ~abnormal, (split == "val") & ~abnormal
    failed = (split == "train") & abnormal
    fusion = Fusion.fit(types=predictor.labels.machine_types, train_types=machine[train],
                        train_modulation=modulation[train], train_probability=probability[train],
                        val_types=machine[val], val_probability=probability[val],
                        val_modulation=None if folds_only else modulation[val], abnormal_types=machine[failed],
                        abnormal_labels=[r.label for r, f in zip(rows, failed) if f],
                        abnormal_modulation=modulation[failed])
    # the calibration as Fusion.fit makes it from the whole validation split, spectra included (also where
    # --folds-only keeps the validation normals out of the spectrum part's scale)
    checked = split == "val"
    fusion.calibrate(machine[checked], probability[checked], modulation[checked], abnormal=abnormal[checked])
    test = split == "test"
    parts = fusion.parts(machine[test], probability[test], modulation[test], calibrated=False)
    return {"machine": machine[test], "abnormal": abnormal[test], "CNN probability": probability[test],
            "CNN part": parts["cnn"], "spectrum part": parts["modulation"], "fused": parts["fused"],
            "fused, calibrated": fusion.score(machine[test], probability[test], modulation[test])}


def read_manifest_settings(images: Path) -> int | None:
    """The modulation bins of an image folder's PNGs (from its first image)."""
    from spectro.data.manifest import read_manifest
    from spectro.features.png import read_info

    return read_info(read_manifest(images)[0].path).settings.modulation_hz


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from spectro.model.fusion import DEFAULT_THRESHOLD
    from spectro.runs import DEFAULT_CALIBRATED_THRESHOLD

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="supervised run folders (the folds of one set)")
    parser.add_argument("--images", type=Path, help="image folder to read the modulation spectra from")
    parser.add_argument("--folds-only", action="store_true",
                        help="scale the spectrum part by the training normals fold by fold alone (the earlier rule)")
    args = parser.parse_args()
    pooled: dict[str, list] = {}
    for run in args.runs:
        for key, value in _scores(run, args.images, args.folds_only).items():
            pooled.setdefault(key, []).append(value)
    data = {k: np.concatenate(v) for k, v in pooled.items()}
    types = ["all", *sorted(set(data["machine"].tolist()))]
    chosen = {t: (data["machine"] == t) | (t == "all") for t in types}
    print(f"{len(args.runs)} run(s), {len(data['machine'])} test clips; test AUC (all: the types together), and the "
          f"share of normal test clips the fused score puts above {DEFAULT_THRESHOLD:.2f}, the calibrated above "
          f"{DEFAULT_CALIBRATED_THRESHOLD:.2f}")
    print(f"{'score':<16}" + "".join(f"{t:>9}" for t in types))
    for name in ("CNN probability", "CNN part", "spectrum part", "fused", "fused, calibrated"):
        cells = []
        for t in types:
            sel = chosen[t] & ~np.isnan(data[name])
            cells.append(f"{roc_auc_score(data['abnormal'][sel], data[name][sel]):9.3f}" if sel.any()
                         else f"{'n/a':>9}")
        print(f"{name:<16}" + "".join(cells))
    for name, limit in (("fused", DEFAULT_THRESHOLD), ("fused, calibrated", DEFAULT_CALIBRATED_THRESHOLD)):
        shares = [np.mean(data[name][chosen[t] & ~data["abnormal"]] > limit) for t in types]
        label = f"{name.split(',')[-1].strip()} > {limit:.2f}"
        print(f"{label:<16}" + "".join(f"{v:9.2f}" for v in shares))


if __name__ == "__main__":
    main()
