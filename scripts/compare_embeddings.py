"""Compare what a normal-only run's embedding could be: each stage of the backbone, pooled globally or over time
only, and the two embeddings spectro offers (``ModelSettings.embedding``).

    python scripts/compare_embeddings.py RUN [RUN ...]

Each RUN is a normal-only run folder (``spectro train --task normal-only``) with abnormal clips in its test split.
For every candidate: the Mahalanobis score of spectro (a clip's mean embedding against a Ledoit-Wolf Gaussian of
its machine's training-normal windows), test AUC per machine id, then the mean over the run's machine ids; one
column per run and the mean of the columns (for the folds of one dataset). Candidates: the last residual block
at each resolution of the backbone and its output, each averaged over the whole map (``global``) or over time
only, every frequency row kept (``time``); and ``stages`` and ``pool`` exactly as spectro computes them
(:func:`spectro.model.backbones.with_embeddings`). docs/normal-only.md holds what it printed when the embedding
was chosen.
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from spectro.features.reader import read_images
from spectro.inference.predictors import KerasPredictor
from spectro.model.backbones import BASE_NAME, EMBEDDINGS, preprocessed, residual_ends
from spectro.model.references import Gaussian
from spectro.model.windows import cut
from spectro.runs import feature_settings, read_splits


def _key(row) -> str:
    return f"{row.machine}/{row.machine_id}"


def _candidates(model):
    """The names of the last residual block at each resolution and of the backbone's output, a model from the
    preprocessing's output to those maps, and the preprocessing itself."""
    import keras

    base = model.get_layer(BASE_NAME)
    names = [*residual_ends(base).values(), base.layers[-1].name]
    maps = keras.Model(base.input, [base.get_layer(n).output for n in names])
    return names, keras.Model(model.input, preprocessed(model)), maps


def _embed(predictor, pixels) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every candidate's embedding of every window of each clip, and the clip of each window."""
    names, pre, maps = _candidates(predictor.model)
    out: dict[str, list] = {}
    windows, owners = cut(pixels, predictor.input_shape[1])
    for start in range(0, len(windows), 64):
        x = windows[start:start + 64, ..., None].astype("float32")
        for name, m in zip(names, maps(pre(x, training=False), training=False)):
            m = np.asarray(m, dtype=np.float32)
            out.setdefault(f"{name} global", []).append(m.mean(axis=(1, 2)))
            out.setdefault(f"{name} time", []).append(m.mean(axis=2).reshape(len(m), -1))
    embeddings = {name: np.concatenate(parts) for name, parts in out.items()}
    for kind in EMBEDDINGS:
        predictor.embedding = kind
        embeddings[f"spectro {kind}"] = predictor.embed_clips(pixels)[0]
    return embeddings, owners


def _aucs(run: Path) -> dict[str, float]:
    predictor = KerasPredictor(run / "model.keras", run)
    rows, settings = read_splits(run), feature_settings(predictor.config)
    train = [r for r in rows if r.split == "train" and not r.is_abnormal]
    test = [r for r in rows if r.split == "test"]
    pixels = read_images(train + test, settings=settings, shape=predictor.image_shape)[0]
    embeddings, owners = _embed(predictor, pixels)
    keys = np.array([_key(r) for r in train + test])
    is_test = np.arange(len(keys)) >= len(train)
    y = np.array([r.is_abnormal for r in train + test])
    out = {}
    for name, e in embeddings.items():
        clips = np.zeros((len(keys), e.shape[1]))
        np.add.at(clips, owners, e)
        clips /= np.bincount(owners, minlength=len(keys))[:, None]
        aucs = []
        for key in sorted(set(keys[is_test])):
            chosen = is_test & (keys == key)
            gaussian = Gaussian(e[~is_test[owners] & (keys[owners] == key)])
            aucs.append(roc_auc_score(y[chosen], gaussian.distance(clips[chosen])))
        out[name] = float(np.mean(aucs))
    return out


def main(runs: list[Path]) -> None:
    table = {run.name: _aucs(run) for run in runs}
    names = list(next(iter(table.values())))
    print("| embedding | " + " | ".join(table) + " | mean |")
    print("|---|" + "---|" * (len(table) + 1))
    for name in names:
        values = [table[run][name] for run in table]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main([Path(a) for a in sys.argv[1:]])
