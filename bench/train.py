"""Anomaly detection quality: spectro's CNN vs a loudness (RMS) threshold vs the DCASE dense autoencoder.

1. Synthetic dataset (``spectro.data.synth.generate``, default sizes; smaller with ``--quick``), rendered with the
   default feature settings. One split (``spectro train``'s own, seeded); every method is scored on its test
   split: the CNN (``--weights none``, and ImageNet MobileNetV2 α=1.0 from ``../shared/weights`` when
   present), the level threshold (direction and threshold fit on the training split) and the autoencoder
   (one per machine type, trained on that type's normal training images only).

The real MIMII sample is measured in the small-data section (:mod:`bench.small`: whole clips, the defaults).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.data import auc, synthetic_images, synthetic_sizes, to_db
from bench.models import PRETRAINED, pretrained_settings

TITLE = "Anomaly detection quality (spectro train)"


def _baseline_scores(db, rows, train_mask, test_mask, *, quick: bool,
                     variants: tuple = ()) -> list[dict[str, np.ndarray]]:
    """Level threshold and per-machine autoencoder scores for the test images.

    ``db`` holds the images in dB (:func:`bench.data.to_db`). The baselines learn from its training rows; the test
    rows of ``db`` and of each of ``variants`` (same shape, e.g. the test clips at another level) are
    scored, one dict per version.
    """
    from spectro.evaluation.baselines import AutoencoderSettings, DenseAutoencoder, LevelThreshold
    from spectro.features.statistics import level_db

    tests = [db[test_mask]] + [v[test_mask] for v in variants]
    abnormal = np.array([r.is_abnormal for r in rows])
    threshold = LevelThreshold().fit(level_db(db[train_mask]), abnormal[train_mask])
    results = [{"RMS threshold": threshold.score(level_db(t)), "dense autoencoder": np.zeros(len(t))} for t in tests]
    machines = np.array([r.machine for r in rows])
    test_machines = machines[test_mask]
    settings = AutoencoderSettings(epochs=10 if quick else 30, hop=2)
    for machine in sorted(set(test_machines)):
        fit = np.flatnonzero(train_mask & ~abnormal & (machines == machine))
        ae = DenseAutoencoder(settings).fit([db[i][::-1] for i in fit])
        chosen = np.flatnonzero(test_machines == machine)
        for t, result in zip(tests, results):
            result["dense autoencoder"][chosen] = ae.score([t[i][::-1] for i in chosen])
    return results


def _cnn_scores(run: Path, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Clip anomaly scores (pooled over each clip's windows) and inference windows/s of a run's model."""
    from spectro.inference.predictors import load_predictor
    from spectro.model.windows import window_columns

    predictor = load_predictor(run)
    predictor.predict_clips(pixels[:2])  # warm-up (graph tracing)
    t0 = time.perf_counter()
    probs = predictor.predict_clips(pixels)
    windows = len(pixels) * len(window_columns(pixels.shape[2], predictor.input_shape[1]))
    return predictor.labels.anomaly_score(probs), windows / (time.perf_counter() - t0)


def _mel_scores(pixels, rows, train_mask, test_mask, features) -> np.ndarray:
    """The mel-statistics logistic regression (spectro evaluate's baseline), fit on the training rows."""
    from spectro.evaluation.baselines import MelStatsLogistic
    from spectro.features.statistics import mel_statistics_of_pixels

    x = mel_statistics_of_pixels(pixels, db_min=features.db_min, db_per_step=features.db_per_step)
    y = np.array([r.is_abnormal for r in rows], dtype=int)
    return MelStatsLogistic().fit(x[train_mask], y[train_mask]).score(x[test_mask])


def _table(groups: dict[str, np.ndarray], truth: np.ndarray, scores: dict[str, np.ndarray], what: str) -> list[str]:
    methods = list(scores)
    lines = [f"| {what} | clips (abn.) | " + " | ".join(f"{m} AUC / pAUC" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for name, mask in groups.items():
        cells = []
        for m in methods:
            value, pauc = auc(truth[mask], scores[m][mask])
            cells.append(f"{value:.3f} / {pauc:.3f}")
        lines.append(f"| {name} | {int(mask.sum())} ({int(truth[mask].sum())}) | " + " | ".join(cells) + " |")
    return lines


def _synthetic(ctx) -> list[str]:
    from spectro.features.reader import read_images
    from spectro.model.backbones import ModelSettings
    from spectro.runs import feature_settings, load_config, read_splits
    from spectro.training.loop import TrainSettings, train

    sizes = synthetic_sizes(ctx)
    images = synthetic_images(ctx)  # made here, the first section to need it; later sections re-use it
    models = ctx.work / "models"
    # make train's defaults (smaller with --quick)
    settings = TrainSettings(steps=20, eval_every=10, qat_steps=10, seed=0) if ctx.quick else TrainSettings(seed=0)
    runs = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs["CNN (weights none)"] = train(images, models, settings=settings, progress=False, name=f"{stamp}-none",
                                       model_settings=ModelSettings(weights="none"))
    ctx.state["synthetic_run"] = runs["CNN (weights none)"]
    imagenet = pretrained_settings(ctx)
    pretrained = (TrainSettings(steps=20, eval_every=10, fine_tune_steps=10, qat_steps=10, seed=0) if ctx.quick
                  else settings)
    if imagenet is not None:
        runs["CNN (ImageNet)"] = train(images, models, name=f"{stamp}-imagenet", progress=False, settings=pretrained,
                                       model_settings=imagenet)
        ctx.state["pretrained_run"] = runs["CNN (ImageNet)"]

    first = next(iter(runs.values()))
    rows = read_splits(first)
    pixels, _ = read_images(rows)
    split = np.array([r.split for r in rows])
    train_mask, test_mask = split == "train", split == "test"
    features = feature_settings(load_config(first))
    scores = {}
    speed = []
    for name, run in runs.items():
        assert read_splits(run) == rows  # same split
        scores[name], infer = _cnn_scores(run, pixels[test_mask])
        training = load_config(run)["training"]
        train_speed = training["images_per_second"]
        speed.append(f"| {name} | {training['steps_run']} | {training['seconds']:.0f} | {train_speed:.1f} | "
                     f"{infer:.1f} | {train_speed / infer:.2f} |")
    scores.update(_baseline_scores(to_db(pixels, features), rows, train_mask, test_mask, quick=ctx.quick)[0])
    scores["mel-statistics baseline"] = _mel_scores(pixels, rows, train_mask, test_mask, features)
    test_rows = [r for r in rows if r.split == "test"]
    truth = np.array([r.is_abnormal for r in test_rows])
    by_machine = {m: np.array([r.machine == m for r in test_rows]) for m in sorted({r.machine for r in test_rows})}
    by_snr = {s: np.array([r.snr == s for r in test_rows]) for s in sorted({r.snr for r in test_rows})}
    metrics = load_config(first)["metrics"]["test"]["overall"]
    lines = [f"Synthetic dataset ({'quick sizes ' + str(sizes) if ctx.quick else 'default sizes'}): "
             f"{len(rows)} images, {int(train_mask.sum())} train / {int((split == 'val').sum())} val / "
             f"{int(test_mask.sum())} test (split by clip, stratified, seed 0). CNN: the default MobileNetV2 "
             f"(α={ModelSettings().width(pretrained=False)}, {ModelSettings().image_size} px, "
             f"{ModelSettings().window_seconds} s "
             "windows, a clip scored by the mean over its windows), "
             f"`TrainSettings(steps={settings.steps})` defaults otherwise; its failure-type accuracy on abnormal "
             f"test images: {metrics.get('failure_type_accuracy', float('nan')):.3f}, task accuracy "
             f"{metrics['accuracy']:.3f}."
             + (f" CNN (ImageNet): MobileNetV2 α 1.0 at 96 px with `{PRETRAINED}`, the head for up to "
                f"{pretrained.steps} steps, then "
                + (f"the top {pretrained.fine_tune_layers} layers of the base" if pretrained.fine_tune_layers
                   else "the whole base (BatchNorm frozen)")
                + f" fine-tuned for up to {pretrained.fine_tune_steps} steps." if "CNN (ImageNet)" in runs else ""),
             "", "The mel-statistics baseline is the logistic regression `spectro evaluate` reports (fit on the "
             "training split).", "",
             *_table({"all": np.ones(len(test_rows), bool), **by_machine}, truth, scores, "machine"), "",
             *_table(by_snr, truth, scores, "SNR"), "",
             "Training: optimizer steps run, wall time of the whole `train()` call (loading, training, test "
             "metrics; the limit of issue 4 is about 10 minutes), and speed (windows/s, first validation interval "
             "left out) as a ratio to the same model's inference speed (windows/s) measured in this run:", "",
             "| model | steps run | training s | train windows/s | inference windows/s | ratio |",
             "|---|---:|---:|---:|---:|---:|", *speed]
    return lines


def run(ctx) -> str:
    """Train the default CNN (and the ImageNet-initialised one when its weights are there) on the built-in set and
    score it beside the baselines; leaves ``synthetic_images``, ``synthetic_run`` and ``pretrained_run`` in
    ``ctx.state`` for the later sections. Returns the section's Markdown."""
    lines = _synthetic(ctx)
    lines += ["", "The real MIMII sample is measured in the section \"Small data and data the defaults were not tuned "
                  "on\" (whole clips, the defaults), so it is not trained twice."]
    return "\n".join(lines) + "\n"
