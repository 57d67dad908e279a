"""A held-out dataset family (issue 18): the default CNN against the mel-statistics baseline and the RMS
level threshold on synthetic machines that no default of spectro was chosen on.

The family is the built-in generator with another seed (so other machine parameters), other SNRs and shorter
clips. Every clip is tested once: ``StratifiedKFold`` by clip over the fine classes and machine ids, within a
fold every 5th training clip validates (early stopping), and AUC / pAUC are computed over the pooled
out-of-fold clip scores, so each machine type is judged on all of its clips rather than on the few of one
test split. The CNN is ``ModelSettings(weights="none")`` with ``TrainSettings()`` (``qat_steps=0``,
``check_learning=False``: every model is scored, one that did not learn is marked); the baselines fit on the
fold's training clips.
"""

from __future__ import annotations

import numpy as np

from bench.data import Images, auc, by_machine, cell, held_out_images, met
from bench.models import CNN, MEL, Trainer, defaults_line, out_of_fold

TITLE = "A held-out dataset family: machines no default was chosen on (issue 18)"


def run(ctx) -> str:
    """The default CNN against the baselines on the held-out family, every clip scored out of fold; the section's
    target. Returns the section's Markdown."""
    from spectro.model.backbones import ModelSettings

    trainer = Trainer(ctx)
    images, sizes = held_out_images(ctx)
    data = Images.read(images)
    n_clips = len(data.rows)
    oof, folds, train_sizes = out_of_fold(trainer, data, CNN, ModelSettings(weights="none"))
    methods, n_folds = tuple(oof), len(folds)

    everything = np.ones(n_clips, bool)
    truth, groups = data.abnormal, by_machine(data, everything)
    lines = [defaults_line(trainer), "",
             f"The family: the synthetic generator with `{', '.join(f'{k}={v}' for k, v in sizes.items())}` (another "
             f"seed, so other machine parameters; other SNRs; shorter clips), {n_clips} clips rendered with the "
             f"default feature settings. {n_folds}-fold `StratifiedKFold` by clip over machine, id and label "
             f"(shuffled, random_state 0): every clip is tested once; within a fold every 5th training clip "
             f"validates ({min(train_sizes)}–{max(train_sizes)} clips train); the baselines fit on the fold's "
             "training clips. AUC / pAUC (0.1) over the pooled out-of-fold clip scores.", "",
             "| machine | clips (abn.) | " + " | ".join(f"{m} AUC / pAUC" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for name, mask in groups.items():
        cells = [cell(truth[mask], oof[m][mask], m) for m in methods]
        lines.append(f"| {name} | {int(mask.sum())} ({int(truth[mask].sum())}) | " + " | ".join(cells) + " |")
    per_fold = [auc(truth[test], oof[CNN][test])[0] for _, test in folds]
    per_fold_mel = [auc(truth[test], oof[MEL][test])[0] for _, test in folds]
    every = {m: (auc(truth[g], oof[CNN][g])[0], auc(truth[g], oof[MEL][g])[0])
             for m, g in groups.items() if m != "all"}
    text = ", ".join(f"{m} {c:.3f} vs {b:.3f}" for m, (c, b) in every.items())
    lines += ["", "AUC of each fold's test clips (all machines): CNN "
              + ", ".join(f"{a:.3f}" for a in per_fold) + "; baseline " + ", ".join(f"{a:.3f}" for a in per_fold_mel)
              + ".", "", "Target of issue 18 (this section):", "",
              f"- CNN ≥ baseline on every machine type of the held-out family: {text} → "
              f"{met(all(c >= b for c, b in every.values()))}", ""]
    lines += trainer.notes_and_cost()
    return "\n".join(lines) + "\n"
