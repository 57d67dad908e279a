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

from pathlib import Path

import numpy as np
from bench_small import CNN, MEL, RMS, _auc, _Bench, _by_machine, _cell, _Images, _met, _render, alone, defaults_line

TITLE = "A held-out dataset family: machines no default was chosen on (issue 18)"

HELD_OUT = dict(seed=1, ids=2, snrs=(3.0, -3.0), clips_per_class=6, seconds=5.0)
FOLDS = 5


def held_out_images(ctx) -> tuple[Path, dict]:
    """The family's images (made once per benchmark run) and the generator's arguments."""
    from spectro.data.synth import generate

    sizes = {**HELD_OUT, **(dict(ids=1, clips_per_class=3) if ctx.quick else {})}
    if "held_out_images" not in ctx.state:
        data_dir = ctx.work / ("heldout_seed1_quick" if ctx.quick else "heldout_seed1")
        generate(data_dir, progress=False, force=True, **sizes)
        ctx.state["held_out_images"] = _render(data_dir, data_dir.with_name(data_dir.name + "_images"))
    return Path(ctx.state["held_out_images"]), sizes


def fold_splits(data: _Images, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each fold's splits (``train``, ``val``: every 5th training clip, ``test``) and its test indices:
    ``StratifiedKFold`` by clip over machine, id and label (shuffled, random_state 0)."""
    from sklearn.model_selection import StratifiedKFold

    strata = np.array([f"{r.machine}/{r.machine_id}/{r.label}" for r in data.rows])
    out = []
    for train_idx, test_idx in StratifiedKFold(n_folds, shuffle=True, random_state=0).split(strata, strata):
        splits = np.full(len(strata), "test", dtype=object)
        splits[train_idx] = "train"
        splits[train_idx[::5]] = "val"  # every 5th training clip validates (early stopping)
        out.append((splits, test_idx))
    return out


def out_of_fold(bench: _Bench, data: _Images, method: str, settings, *, tag: str = "heldout"
                ) -> tuple[dict, list, list]:
    """Every clip's out-of-fold score by the CNN ``method`` (``settings``: its ModelSettings; fused, and ``alone``
    when the run's score is fused) and by the baselines, fitted on each fold's training clips; the folds
    (:func:`fold_splits`, :data:`FOLDS` of them, 2 in a quick run) and their training-set sizes. ``tag`` names the
    fold runs (``<tag>-fold<k>``)."""
    methods = (method, alone(method), MEL, RMS)  # alone: the CNN's probability, when the run's score is fused
    oof = {m: np.full(len(data.rows), np.nan) for m in methods}
    train_sizes = []
    folds = fold_splits(data, 2 if bench.ctx.quick else FOLDS)
    for k, (splits, test_idx) in enumerate(folds):
        train_sizes.append(int((splits == "train").sum()))
        scores = bench.scores([data], splits, f"{tag}-fold{k}", {method: settings}, fit=("train",))
        for m in methods:
            if m in scores:
                oof[m][test_idx] = scores[m][0]
    return {m: v for m, v in oof.items() if not np.isnan(v).all()}, folds, train_sizes


def run(ctx) -> str:
    from spectro.model.backbones import ModelSettings

    bench = _Bench(ctx)
    images, sizes = held_out_images(ctx)
    data = _Images.read(images)
    n_clips = len(data.rows)
    oof, folds, train_sizes = out_of_fold(bench, data, CNN, ModelSettings(weights="none"))
    methods, n_folds = tuple(oof), len(folds)

    everything = np.ones(n_clips, bool)
    truth, groups = data.abnormal, _by_machine(data, everything)
    lines = [defaults_line(bench), "",
             f"The family: the synthetic generator with `{', '.join(f'{k}={v}' for k, v in sizes.items())}` (another "
             f"seed, so other machine parameters; other SNRs; shorter clips), {n_clips} clips rendered with the "
             f"default feature settings. {n_folds}-fold `StratifiedKFold` by clip over machine, id and label "
             f"(shuffled, random_state 0): every clip is tested once; within a fold every 5th training clip "
             f"validates ({min(train_sizes)}–{max(train_sizes)} clips train); the baselines fit on the fold's "
             "training clips. AUC / pAUC (0.1) over the pooled out-of-fold clip scores.", "",
             "| machine | clips (abn.) | " + " | ".join(f"{m} AUC / pAUC" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for name, mask in groups.items():
        cells = [_cell(truth[mask], oof[m][mask], m) for m in methods]
        lines.append(f"| {name} | {int(mask.sum())} ({int(truth[mask].sum())}) | " + " | ".join(cells) + " |")
    per_fold = [_auc(truth[test], oof[CNN][test])[0] for _, test in folds]
    per_fold_mel = [_auc(truth[test], oof[MEL][test])[0] for _, test in folds]
    every = {m: (_auc(truth[g], oof[CNN][g])[0], _auc(truth[g], oof[MEL][g])[0])
             for m, g in groups.items() if m != "all"}
    text = ", ".join(f"{m} {c:.3f} vs {b:.3f}" for m, (c, b) in every.items())
    lines += ["", "AUC of each fold's test clips (all machines): CNN "
              + ", ".join(f"{a:.3f}" for a in per_fold) + "; baseline " + ", ".join(f"{a:.3f}" for a in per_fold_mel)
              + ".", "", "Target of issue 18 (this section):", "",
              f"- CNN ≥ baseline on every machine type of the held-out family: {text} → "
              f"{_met(all(c >= b for c, b in every.values()))}", ""]
    if bench.notes:
        lines += ["Models that did not learn:", "", *[f"- {note}" for note in bench.notes], ""]
    lines.append(bench.cost())
    return "\n".join(lines) + "\n"
