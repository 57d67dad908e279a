"""Compare ways to score a normal-only run's test clips against its training normals, per machine id.

    python scripts/compare_scorers.py RUN

RUN is a normal-only run folder (``spectro train --task normal-only``). For every machine id of its test split, the
AUC of: the run's scorers as spectro computes them (each clip's mean embedding against the machine's reference
windows), the same window by window (knn with k 5 and 1, mahalanobis, then the mean over a clip's windows),
variants (standardised or euclidean knn, clip embeddings on both sides, max over windows) and two scorers on the
mel-statistics features of :mod:`spectro.evaluation.baselines` (no CNN at all). Prints the mean AUC over machine ids
and per machine type. docs/normal-only.md holds what it printed when the default scorer was chosen.
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from spectro.features.reader import read_images
from spectro.features.statistics import mel_statistics_of_pixels
from spectro.inference.predictors import KerasPredictor
from spectro.model.references import Gaussian, knn_distance
from spectro.runs import feature_settings, read_splits


def _key(row) -> str:
    return f"{row.machine}/{row.machine_id}"


def _clip_mean(values, owners, n):
    return np.bincount(owners, weights=values, minlength=n) / np.bincount(owners, minlength=n)


def _euclid(reference, queries, k=5):
    distance = np.linalg.norm(queries[:, None] - reference[None], axis=2)
    return np.sort(distance, 1)[:, :k].mean(1)


def _standardised_knn(reference, queries, k=5):
    mu, sd = reference.mean(0), reference.std(0) + 1e-3
    return knn_distance((queries - mu) / sd, (reference - mu) / sd, k)


def main(run: Path) -> None:
    predictor = KerasPredictor(run / "model.keras", run)
    rows, settings = read_splits(run), feature_settings(predictor.config)
    train = [r for r in rows if r.split == "train" and not r.is_abnormal]
    test = [r for r in rows if r.split == "test"]
    px_train = read_images(train, settings=settings, shape=predictor.image_shape)[0]
    px_test = read_images(test, settings=settings, shape=predictor.image_shape)[0]
    e_train, _, o_train = predictor.embed_clips(px_train)
    e_test, _, o_test = predictor.embed_clips(px_test)
    k_train, k_test = np.array([_key(r) for r in train]), np.array([_key(r) for r in test])
    y = np.array([r.is_abnormal for r in test])
    mel_train = mel_statistics_of_pixels(px_train, db_min=settings.db_min, db_per_step=settings.db_per_step)
    mel_test = mel_statistics_of_pixels(px_test, db_min=settings.db_min, db_per_step=settings.db_per_step)

    def report(name, score):
        aucs = {k: roc_auc_score(y[k_test == k], score(np.flatnonzero(k_train == k), np.flatnonzero(k_test == k)))
                for k in sorted(set(k_test))}
        types = {}
        for k, v in aucs.items():
            types.setdefault(k.split("/")[0], []).append(v)
        print(f"{name:28s} mean {np.mean(list(aucs.values())):.3f} | "
              + " ".join(f"{t} {np.mean(v):.3f}" for t, v in types.items()), flush=True)

    def windows(fn, pool="mean"):
        def score(a, b):
            sa, sb = np.isin(o_train, a), np.isin(o_test, b)
            values, owners = fn(e_train[sa], e_test[sb]), np.searchsorted(b, o_test[sb])
            if pool == "mean":
                return _clip_mean(values, owners, len(b))
            out = np.full(len(b), -np.inf)
            np.maximum.at(out, owners, values)
            return out
        return score

    def clip_embeddings(fn):
        def score(a, b):
            return fn(np.stack([e_train[o_train == i].mean(0) for i in a]),
                      np.stack([e_test[o_test == i].mean(0) for i in b]))
        return score

    def clip_queries(fn):  # what spectro does: each clip's mean embedding against the reference windows
        def score(a, b):
            return fn(e_train[np.isin(o_train, a)], np.stack([e_test[o_test == i].mean(0) for i in b]))
        return score

    report("maha clip emb vs windows", clip_queries(lambda r, q: Gaussian(r).distance(q)))
    report("knn5 clip emb vs windows", clip_queries(lambda r, q: knn_distance(q, r, 5)))
    report("knn5 cos windows", windows(lambda r, q: knn_distance(q, r, 5)))
    report("knn1 cos windows", windows(lambda r, q: knn_distance(q, r, 1)))
    report("maha windows", windows(lambda r, q: Gaussian(r).distance(q)))
    report("knn5 cos standardized", windows(_standardised_knn))
    report("knn5 euclid windows", windows(_euclid))
    report("maha clip-mean emb", clip_embeddings(lambda r, q: Gaussian(r).distance(q)))
    report("knn5 cos clip-mean emb", clip_embeddings(lambda r, q: knn_distance(q, r, 5)))
    report("knn1 cos clip-mean emb", clip_embeddings(lambda r, q: knn_distance(q, r, 1)))
    report("mel maha", lambda a, b: Gaussian(mel_train[a]).distance(mel_test[b]))
    report("mel knn5 euclid", lambda a, b: _euclid(mel_train[a], mel_test[b]))
    report("maha windows max", windows(lambda r, q: Gaussian(r).distance(q), pool="max"))

    rng = np.random.default_rng(0)

    def five_clips(clip_means):  # 5 reference clips per machine, as after enrolling from 5 clips
        def score(a, b):
            a = np.sort(rng.choice(a, 5, replace=False))
            queries = np.stack([e_test[o_test == i].mean(0) for i in b])
            reference = (np.stack([e_train[o_train == i].mean(0) for i in a]) if clip_means
                         else e_train[np.isin(o_train, a)])
            return Gaussian(reference).distance(queries)
        return score

    report("5 clips: maha vs windows", five_clips(False))
    report("5 clips: maha vs clip means", five_clips(True))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
