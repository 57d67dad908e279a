"""Small data with ImageNet weights (issue 18): the learning curve's built-in set at n clips per class, the CNN
initialised from ImageNet (what ``--weights imagenet`` gives a user with internet), against the mel-statistics
baseline fitted on the same clips; every figure measured here.

The curve section measures the defaults as a user without internet gets them (random initialisation); this one
trains the same clips (:func:`bench.data.curve_splits`, validation and test splits unchanged) from the ImageNet
weights file in ``../shared/weights`` (MobileNetV2 α 1.0 at 96 px, :func:`bench.models.pretrained_settings`), once
per seed of ``SPECTRO_BENCH_CURVE_SEEDS`` (default ``0,1,2``), with the small-data section's training settings (the
defaults without the quantisation-aware phase). ``SPECTRO_BENCH_PRETRAINED_NS`` (default ``10``) sets the n; ``""``
skips that part.

Part 2: the held-out family of the heldout section (its folds, :func:`bench.models.out_of_fold`), the same
ImageNet-initialised CNN against the baselines fitted on each fold's training clips;
``SPECTRO_BENCH_PRETRAINED_HELDOUT=0`` skips it. Skipped when the weights file is absent. About 8 minutes a
training on 2 cores: 3 + 5 with the defaults.
"""

from __future__ import annotations

import os

import numpy as np

from bench.data import (
    Images,
    auc,
    by_machine,
    cell,
    curve_splits,
    held_out_images,
    mean_cell,
    met,
    synthetic_images,
    synthetic_split,
)
from bench.models import IMAGENET, MEL, PRETRAINED, Trainer, alone, curve_seeds, out_of_fold, pretrained_settings

TITLE = "Small data with ImageNet weights (issue 18)"


def _heldout(trainer: Trainer, settings) -> tuple[list[str], str]:
    images, _ = held_out_images(trainer.ctx)
    data = Images.read(images)
    oof, folds, train_sizes = out_of_fold(trainer, data, IMAGENET, settings, tag="heldout-imagenet")
    truth, groups = data.abnormal, by_machine(data, np.ones(len(data.rows), bool))
    lines = [f"**The held-out family** (`{images}`: the heldout section's images and its {len(folds)} folds by clip, "
             f"{min(train_sizes)}–{max(train_sizes)} training clips each; AUC / pAUC (0.1) over the pooled "
             "out-of-fold scores; the baselines fit on each fold's training clips)", "",
             "| machine | clips (abn.) | " + " | ".join(f"{m} AUC / pAUC" for m in oof) + " |",
             "|---|---|" + "---|" * len(oof)]
    for name, mask in groups.items():
        lines.append(f"| {name} | {int(mask.sum())} ({int(truth[mask].sum())}) | "
                     + " | ".join(cell(truth[mask], oof[m][mask], m) for m in oof) + " |")
    every = {m: (auc(truth[g], oof[IMAGENET][g])[0], auc(truth[g], oof[MEL][g])[0])
             for m, g in groups.items() if m != "all"}
    text = ", ".join(f"{m} {c:.3f} vs {b:.3f}" for m, (c, b) in every.items())
    return [*lines, ""], (f"- held-out family, CNN (ImageNet) ≥ baseline on every machine type: {text} → "
                          f"{met(all(c >= b for c, b in every.values()))}")


def _synthetic(trainer: Trainer, settings, ns: list) -> tuple[list[str], list[str]]:
    images = synthetic_images(trainer.ctx)
    data = Images.read(images)
    base = synthetic_split(data)
    test = base == "test"
    fine = np.array([r.fine_class for r in data.rows])
    truth, groups = data.abnormal[test], by_machine(data, test)
    seeds = curve_seeds(trainer.ctx)
    lines = [f"**The built-in synthetic set** (`{images}`): the curve section's n training clips per fine class, "
             "validation and test splits unchanged; the CNN trains once per seed "
             f"({', '.join(map(str, seeds))}) on the same clips, each cell the mean test AUC (lowest–highest); the "
             "baseline fits on the same n training clips.", ""]
    targets = []
    for n in ns:
        splits = curve_splits(base, fine, n)
        if splits is None:
            lines += [f"{n} per class: n/a (fewer than {n} clips in some class).", ""]
            continue
        fused, cnn, mel = [], [], None
        for seed in seeds:
            scores = trainer.scores([data], splits, f"synth-pretrained{n}-seed{seed}", {IMAGENET: settings},
                                    fit=("train",), seed=seed)
            fused.append(scores[IMAGENET][0])
            cnn.append(scores.get(alone(IMAGENET), scores[IMAGENET])[0])
            mel = scores[MEL][0]
        lines += [f"**{n} clips per class**", "", "| machine | test clips (abn.) | CNN (ImageNet) | CNN (ImageNet) "
                  "alone, without the spectrum | mel-statistics baseline |", "|---|---|---|---|---|"]
        for name, mask in groups.items():
            lines.append(f"| {name} | {int(mask.sum())} ({int(truth[mask].sum())}) | "
                         f"{mean_cell(truth[mask], [s[mask] for s in fused], IMAGENET)} | "
                         f"{mean_cell(truth[mask], [s[mask] for s in cnn], IMAGENET)} | "
                         f"{auc(truth[mask], mel[mask])[0]:.3f} |")
        lines.append("")
        mean = float(np.mean([auc(truth, s)[0] for s in fused]))
        base_auc = auc(truth, mel)[0]
        every = all(np.mean([auc(truth[m], s[m])[0] for s in fused]) >= auc(truth[m], mel[m])[0]
                    for k, m in groups.items() if k != "all")
        targets.append(f"- {n} per class, overall (mean over seeds): {mean:.3f} vs {base_auc:.3f} → "
                       f"{met(mean >= base_auc)}; every machine type above the baseline: {met(every)}")
    return lines, targets


def run(ctx) -> str:
    """The ImageNet-initialised CNN against the baseline at n clips per class on the built-in set and on the held-out
    family's folds; skipped when the weights file is absent. Returns the section's Markdown."""
    ns = [5] if ctx.quick else [int(n) for n in os.environ.get("SPECTRO_BENCH_PRETRAINED_NS", "10").split(",") if n]
    heldout = os.environ.get("SPECTRO_BENCH_PRETRAINED_HELDOUT", "1") != "0"
    if not ns and not heldout:
        return ("**Not run in this run** (`SPECTRO_BENCH_PRETRAINED_NS` empty and "
                "`SPECTRO_BENCH_PRETRAINED_HELDOUT=0`).\n")
    settings = pretrained_settings(ctx)
    if settings is None:
        return f"ImageNet weights (`{PRETRAINED}`) absent from `../shared/weights`: the section is skipped.\n"
    trainer = Trainer(ctx)
    lines = [f"MobileNetV2 α {settings.alpha} at {settings.image_size} px from `{PRETRAINED}` (the ImageNet weights "
             "`--weights imagenet` downloads with internet; here `--weights PATH`), the curve section's training "
             "settings otherwise. The CNN's figure is its run's fused score; *alone*: its probability without the "
             "spectrum.", ""]
    targets = []
    if ns:
        part, more = _synthetic(trainer, settings, ns)
        lines += part
        targets += more
    if heldout:
        part, target = _heldout(trainer, settings)
        lines += part
        targets.append(target)
    lines += ["Targets of issue 18 with ImageNet weights (the curve's: the CNN matches the baseline from 10 clips "
              "per class; the held-out family's: the CNN ≥ the baseline on every machine type):", "", *targets, ""]
    lines += trainer.notes_and_cost()
    return "\n".join(lines) + "\n"
