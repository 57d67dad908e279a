#!/usr/bin/env python
"""The runs that chose the defaults of issue 18 (docs/small-data.md): the real MIMII sample, 3-fold by clip, and
the built-in synthetic set, spectro train's own split (seed 0), for the configurations named on the command line.

    python scripts/tune_small.py w1-a35-s64 w2-a35-s64 whole-a35-s64 w1-a75-s96     # round 1 (600 steps)
    python scripts/tune_small.py --synthetic-only w1-a75-s96-1500 w2-a75-s96-1500 w4-a75-s96-1500   # round 2

Expects the synthetic images of `make bench` in reports/bench/synth_images; writes runs to /tmp/spectro-tune.
The held-out dataset family of the benchmark is never used here.
"""

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from spectro.data.manifest import read_manifest
from spectro.evaluation.baselines import MelStatsLogistic
from spectro.evaluation.metrics import anomaly_auc
from spectro.features.reader import read_images
from spectro.features.render import render_folder
from spectro.features.settings import FeatureSettings
from spectro.features.statistics import mel_statistics_of_pixels
from spectro.inference.predictors import load_predictor
from spectro.model.backbones import ModelSettings
from spectro.training.loop import TrainSettings, train

warnings.filterwarnings("ignore")
W = Path("/tmp/spectro-tune")
real = W / "real_images"
render_folder(
    Path(__file__).resolve().parents[2] / "shared" / "mimii-sample", real, FeatureSettings(), jobs=0, progress=False
)
synth = Path(__file__).resolve().parents[1] / "reports" / "bench" / "synth_images"


def auc(y, s):
    a = anomaly_auc(y, s)
    return float("nan") if a is None else a


def run_cfg(tag, images, splits, ms, ts, rows):
    t = time.perf_counter()
    try:
        run = train(
            images,
            W / "models",
            settings=ts,
            model_settings=ms,
            splits=splits,
            progress=False,
            name=f"{tag}-{time.time_ns()}",
        )
    except Exception as e:
        return None, str(e)[:100], time.perf_counter() - t
    p = load_predictor(run)
    test = [r for r, s in zip(rows, splits) if s == "test"]
    px, _ = read_images(test, settings=FeatureSettings(), shape=p.image_shape)
    score = p.labels.anomaly_score(p.predict_clips(px))
    return score, load_config_steps(run), time.perf_counter() - t


def load_config_steps(run):
    c = json.loads((run / "config.json").read_text())
    return c["training"]["steps_run"]


def real_cv(tag, ms, ts, folds=3):
    rows = read_manifest(real)
    y = np.array([r.is_abnormal for r in rows])
    scores = np.zeros(len(rows))
    base = np.zeros(len(rows))
    secs = 0
    steps = []
    fs = FeatureSettings()
    px, _ = read_images(rows, settings=fs)
    feats = mel_statistics_of_pixels(px, db_min=fs.db_min, db_per_step=fs.db_per_step)
    for k, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=0).split(rows, y)):
        tr = list(tr)
        val = set(tr[::5])
        splits = ["test" if i in set(te) else "val" if i in val else "train" for i in range(len(rows))]
        s, st, dt = run_cfg(tag + f"-real{k}", real, splits, ms, ts.__class__(**{**ts.__dict__, "seed": k}), rows)
        secs += dt
        steps.append(st)
        if s is None:
            print(tag, "FAILED", st, flush=True)
            return
        scores[te] = s
        fit = [i for i in range(len(rows)) if splits[i] != "test"]
        base[te] = MelStatsLogistic().fit(feats[fit], y[fit]).score(feats[te])
    print(
        f"{tag} REAL {folds}-fold AUC {auc(y, scores):.3f} (mel baseline {auc(y, base):.3f}) steps {steps} {secs:.0f}s",
        flush=True,
    )


def synth_split(tag, ms, ts):
    from spectro.training.splits import split_rows

    rows = read_manifest(synth)
    splits = split_rows(rows, seed=0, val_fraction=0.15, test_fraction=0.15)
    s, st, dt = run_cfg(tag + "-synth", synth, splits, ms, ts, rows)
    if s is None:
        print(tag, "FAILED", st, flush=True)
        return
    test = [r for r, sp in zip(rows, splits) if sp == "test"]
    y = np.array([r.is_abnormal for r in test])
    per = {
        m: auc(y[[r.machine == m for r in test]], s[[r.machine == m for r in test]])
        for m in sorted({r.machine for r in test})
    }
    print(
        f"{tag} SYNTH AUC {auc(y, s):.3f} per machine "
        + " ".join(f"{m} {v:.3f}" for m, v in per.items())
        + f" steps {st} {dt:.0f}s",
        flush=True,
    )


CONFIGS2 = {
    "w2-a75-s96-1500": (dict(window_seconds=2.0, alpha=0.75, image_size=96), {"steps": 1500}),
    "w4-a75-s96-1500": (dict(window_seconds=4.0, alpha=0.75, image_size=96), {"steps": 1500}),
    "w1-a75-s96-1500": (dict(window_seconds=1.0, alpha=0.75, image_size=96), {"steps": 1500}),
    "whole-a75-s96-1500": (dict(window_seconds=None, alpha=0.75, image_size=96), {"steps": 1500}),
}
CONFIGS = {
    "w1-a35-s64": (dict(window_seconds=1.0, alpha=0.35, image_size=64), {}),
    "w2-a35-s64": (dict(window_seconds=2.0, alpha=0.35, image_size=64), {}),
    "whole-a35-s64": (dict(window_seconds=None, alpha=0.35, image_size=64), {}),
    "w1-a75-s96": (dict(window_seconds=1.0, alpha=0.75, image_size=96), {}),
}
CONFIGS.update(CONFIGS2)
synthetic_only = "--synthetic-only" in sys.argv
which = [a for a in sys.argv[1:] if not a.startswith("--")] or list(CONFIGS)
if not synthetic_only:
    for name in which:
        m, t = CONFIGS[name]
        real_cv(
            name,
            ModelSettings(weights="none", **m),
            TrainSettings(**{"task": "anomaly", "steps": 600, "qat_steps": 0, "check_learning": False, **t}),
        )
for name in which:
    m, t = CONFIGS[name]
    ms = ModelSettings(weights="none", **m)
    synth_split(name, ms, TrainSettings(**{"steps": 600, "qat_steps": 0, "check_learning": False, **t}))
