"""What pretrained ImageNet features give a normal-only detector with no training at all (issue 19, a probe).

    python scripts/probe_pretrained.py WEIGHTS.h5 [--alpha 1.0] [--images DIR ...]

WEIGHTS is a Keras MobileNetV2 ImageNet weight file without top (``../shared/weights``). The backbone is built
as spectro builds it (``ModelSettings(weights=WEIGHTS)``: 96 px, the default 2 s windows, the model's own
preprocessing) and never trained. A window's embedding is a residual stage's map pooled three ways: the mean
over the map (``global``), over time only (``time``), and the mean and standard deviation over the map
(``global+std``); ``stage ends`` concatenates the two maps spectro's ``stages`` embedding reads (1/8 and 1/16 of
the input), each pooled that way (``stage ends time`` is ``stages`` itself). A clip is scored as spectro scores
it: Mahalanobis distance of its mean embedding to a Ledoit-Wolf Gaussian of its machine's reference windows.

- The real MIMII fan sample (``../shared/mimii-sample``): the benchmark's normal-only part 2 protocol, 5-fold
  ``KFold`` over the 20 normal clips (shuffled, random_state 0), references = the fold's training normals, test
  = its held-out normals and all 20 abnormal clips, at recorded levels and each test clip moved by a seeded gain
  in ±6 dB; mean of the fold AUCs.
- Each ``--images DIR`` (a rendered set with several machine ids, e.g. the benchmark's synthetic sets):
  ``split_rows(seed=0)``; references = the training split's normal clips, test = the test split's normal clips
  and every abnormal clip; mean AUC over machine ids.

docs/normal-only.md holds what it printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

POOLINGS = ("global", "time", "global+std")


def _network(weights: str, alpha: float, features):
    """A function from window pixels to each residual stage's maps, and the stage names."""
    import keras

    from spectro.model.backbones import BASE_NAME, ModelSettings, build_model, preprocessed, residual_ends, stage_ends
    from spectro.model.windows import window_frames

    settings = ModelSettings(weights=weights, alpha=alpha)
    frames = window_frames(features, settings.window_seconds, 10**9)
    model = build_model((features.n_mels, frames), 2, settings)[0]
    base = model.get_layer(BASE_NAME)
    names = list(residual_ends(base).values())
    pre = keras.Model(model.input, preprocessed(model))
    maps = keras.Model(base.input, [base.get_layer(n).output for n in names])
    return (lambda x: maps(pre(x, training=False), training=False)), names, stage_ends(base), frames


def _embed(net, names, ends, frames, pixels) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every (stage, pooling)'s embedding of each window, and the clip each window comes from."""
    from spectro.model.windows import cut

    windows, owners = cut(pixels, frames)
    out: dict[str, list] = {}
    for start in range(0, len(windows), 64):
        for name, m in zip(names, net(windows[start:start + 64, ..., None].astype("float32"))):
            m = np.asarray(m, dtype=np.float32)
            out.setdefault(f"{name} global", []).append(m.mean(axis=(1, 2)))
            out.setdefault(f"{name} time", []).append(m.mean(axis=2).reshape(len(m), -1))
            out.setdefault(f"{name} global+std", []).append(np.concatenate([m.mean(axis=(1, 2)), m.std(axis=(1, 2))],
                                                                           axis=1))
    embeddings = {k: np.concatenate(v) for k, v in out.items()}
    for pooling in POOLINGS:  # spectro's stage ends (1/8 and 1/16 of the input), concatenated
        embeddings[f"stage ends {pooling}"] = np.concatenate([embeddings[f"{n} {pooling}"] for n in ends], axis=1)
    return embeddings, owners


def _auc(reference: np.ndarray, embedding: np.ndarray, owners: np.ndarray, clips: np.ndarray, truth) -> float:
    """AUC of the Mahalanobis distance of each clip's mean window embedding to a Gaussian of ``reference`` windows."""
    from spectro.model.references import Gaussian

    means = np.stack([embedding[owners == c].mean(axis=0) for c in clips])
    return float(roc_auc_score(truth, Gaussian(reference).distance(means)))


def _real(net, names, ends, frames) -> dict[str, tuple[float, float]]:
    from bench_small import LEVEL_SHIFT_DB, _Images, _render
    from sklearn.model_selection import KFold

    sample = ROOT.parent / "shared" / "mimii-sample"
    data = _Images.read(_render(sample, ROOT / "reports" / "probe" / "mimii_images"))
    (recorded, owners), (moved, _) = [_embed(net, names, ends, frames, v.pixels)
                                      for v in (data, data.shifted(LEVEL_SHIFT_DB, seed=0))]
    normal = np.flatnonzero(~data.abnormal)
    out = {}
    for key in recorded:
        aucs = [[], []]
        for fit, _ in KFold(5, shuffle=True, random_state=0).split(normal):
            test = np.setdiff1d(np.arange(len(data.rows)), normal[fit])
            reference = recorded[key][np.isin(owners, normal[fit])]  # training clips keep their level
            for v, emb in enumerate((recorded, moved)):
                aucs[v].append(_auc(reference, emb[key], owners, test, data.abnormal[test]))
        out[key] = (float(np.mean(aucs[0])), float(np.mean(aucs[1])))
    return out


def _dataset(net, names, ends, frames, folder: Path) -> dict[str, float]:
    from bench_small import _Images, synthetic_split

    data = _Images.read(folder)
    splits = synthetic_split(data)
    keys = np.array([f"{r.machine}/{r.machine_id}" for r in data.rows])
    embeddings, owners = _embed(net, names, ends, frames, data.pixels)
    out = {}
    for name, emb in embeddings.items():
        aucs = []
        for key in sorted(set(keys)):
            reference = np.flatnonzero((keys == key) & (splits == "train") & ~data.abnormal)
            test = np.flatnonzero((keys == key) & (data.abnormal | ((splits == "test") & ~data.abnormal)))
            aucs.append(_auc(emb[np.isin(owners, reference)], emb, owners, test, data.abnormal[test]))
        out[name] = float(np.mean(aucs))
    return out


def main(argv=None) -> None:
    from spectro.features.settings import FeatureSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="a Keras MobileNetV2 ImageNet weight file without top (none: random "
                        "weights, the control)")
    parser.add_argument("--alpha", type=float, default=1.0, help="the width of the weight file's MobileNetV2")
    parser.add_argument("--images", type=Path, nargs="*", default=[], help="rendered sets with several machine ids")
    args = parser.parse_args(argv)
    net, names, ends, frames = _network(args.weights, args.alpha, FeatureSettings())
    real = _real(net, names, ends, frames)
    columns = {"real sample": {k: v[0] for k, v in real.items()},
               "real sample ±6 dB": {k: v[1] for k, v in real.items()}}
    for folder in args.images:
        columns[folder.name] = _dataset(net, names, ends, frames, folder)
    print("| stage, pooling | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for key in real:
        print(f"| {key} | " + " | ".join(f"{c[key]:.3f}" for c in columns.values()) + " |")


if __name__ == "__main__":
    main()
