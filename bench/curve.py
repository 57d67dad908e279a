"""Learning curves (issue 18): anomaly AUC against the number of training clips per class, the default CNN
against the mel-statistics baseline, the same test clips for every n; every figure measured here.

The CNNs and their settings are the small-data section's (``ModelSettings(weights="none")``, ``TrainSettings()``
with ``qat_steps=0`` and ``check_learning=False``). ``SPECTRO_BENCH_CURVE_NS`` (default ``5,10,20``) sets the
n; ``""`` skips the section (over two hours on 2 cores with the default n and seeds: every one is a full training).

1. The real MIMII fan sample: the test clips of the first 2 of the small-data section's 5 folds; n clips per class
   drawn (seeded) from each fold's training clips. "all": the small-data section's fold models when it ran in
   the same ``make bench``, otherwise the same fold models trained here.
2. The built-in synthetic set, its ``split_rows(seed=0)`` split: n training clips per fine class
   (``<machine>/<label>``), validation and test splits unchanged, AUC overall and per machine type; below "all"
   the CNN trains once per seed of ``SPECTRO_BENCH_CURVE_SEEDS`` (default ``0,1,2``) and the mean counts. "all": the
   small-data section's ``make train`` run when it ran in the same ``make bench``, otherwise one trained here
   (without the quantisation-aware phase).
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
    mean_cell,
    met,
    n_real_folds,
    render,
    subset,
    synthetic_images,
    synthetic_split,
)
from bench.models import CNN, MEL, Trainer, curve_seeds, defaults_line

TITLE = "Learning curves: the CNN against the mel-statistics baseline (issue 18)"
CURVE_FOLDS = 2


def _target(curve: dict) -> str:
    """``CNN >= baseline from 10 clips per class`` over the n of ``curve`` (n -> (CNN AUC, baseline AUC) or None)."""
    pairs = [(n, v) for n, v in curve.items() if v is not None and (n == "all" or n >= 10)]
    if not pairs:
        return "not measured (no n >= 10 available)"
    text = ", ".join(f"{n}: {c:.3f} vs {b:.3f}" for n, (c, b) in pairs)
    return f"{text} → {met(all(c >= b for _, (c, b) in pairs))}"


def _real(trainer: Trainer, ns: list) -> tuple[list[str], dict]:
    from sklearn.model_selection import StratifiedKFold

    from spectro.model.backbones import ModelSettings

    ctx = trainer.ctx
    data = Images.read(render(ctx.mimii_sample, ctx.work / "mimii_images"))
    y, n_clips = data.abnormal, len(data.rows)
    folds = list(StratifiedKFold(n_real_folds(ctx), shuffle=True, random_state=0).split(np.zeros(n_clips), y))
    curve_folds = 1 if ctx.quick else CURVE_FOLDS
    test = np.sort(np.concatenate([folds[k][1] for k in range(curve_folds)]))
    available = min(int((y[folds[k][0]] == c).sum()) for k in range(curve_folds) for c in (False, True))
    reused = "small_real_oof" in ctx.state
    curve = {}
    for n in [*ns, "all"]:
        if n == "all" and reused:
            curve[n] = {m: s[test] for m, s in ctx.state["small_real_oof"].items()}
            continue
        if n != "all" and n > available:
            curve[n] = None
            continue
        pooled = {CNN: np.full(n_clips, np.nan), MEL: np.full(n_clips, np.nan)}
        for k in range(curve_folds):
            train_idx, test_idx = folds[k]
            splits = np.full(n_clips, "", dtype=object)
            splits[test_idx] = "test"
            if n == "all":  # as the small-data section's folds: every 5th training clip validates
                splits[train_idx] = "train"
                splits[train_idx[::5]] = "val"
            else:
                rng = np.random.default_rng(100 * k + n)
                for label in (False, True):
                    chosen = subset(train_idx[y[train_idx] == label], n, rng)
                    splits[chosen] = "train"
                    splits[chosen[::5]] = "val"  # every 5th of them validates: at least one per class
            scores = trainer.scores([data], splits, f"mimii-curve{n}-fold{k}", {CNN: ModelSettings(weights="none")})
            for method in pooled:
                pooled[method][test_idx] = scores[method][0]
        curve[n] = {m: s[test] for m, s in pooled.items()}
    truth = y[test]
    head = [f"{n} per class" for n in ns] + [
        f"all ({available} per class, " + ("the small-data section's fold models)" if reused else "trained here)")]
    lines = [f"**1. Real MIMII fan sample** (`{ctx.mimii_sample}`): the {len(test)} test clips of the first "
             f"{curve_folds} of the small-data section's {len(folds)} folds (AUC / pAUC (0.1) pooled over them, the "
             f"same clips for every n); n clips per class drawn (seeded) from each fold's {2 * available} training "
             "clips, every 5th of them validating, the baseline fit on the same n per class; n/a: fewer than n per "
             "class available.", "", "| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for method in (CNN, MEL):
        cells = [cell(truth, curve[n][method], method) if curve[n] else f"n/a ({available} available)"
                 for n in [*ns, "all"]]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines, {n: (auc(truth, v[CNN])[0], auc(truth, v[MEL])[0]) if v else None for n, v in curve.items()}


def _synthetic(trainer: Trainer, ns: list) -> tuple[list[str], dict]:
    from spectro.model.backbones import ModelSettings

    ctx = trainer.ctx
    images = synthetic_images(ctx)
    data = Images.read(images)
    base = synthetic_split(data)
    test = base == "test"
    fine = np.array([r.fine_class for r in data.rows])
    counts = {c: int(((base == "train") & (fine == c)).sum()) for c in sorted(set(fine))}
    reused = "small_synth_all" in ctx.state
    seeds = curve_seeds(ctx)
    results = {}
    for n in [*ns, "all"]:
        if n == "all" and reused:
            results[n] = {m: [s] for m, s in ctx.state["small_synth_all"].items()}
            continue
        splits = base.copy() if n == "all" else curve_splits(base, fine, n)
        if splits is None:
            results[n] = None
            continue
        # the baselines fit on the training clips only: the validation split is the same for every n; the CNN
        # trains once per seed (the same clips), since one training at 10 clips per class is a draw
        results[n] = {CNN: [], MEL: []}
        for seed in seeds if n != "all" else [0]:
            scores = trainer.scores([data], splits, f"synth-curve{n}" + (f"-seed{seed}" if seed else ""),
                                    {CNN: ModelSettings(weights="none")}, fit=("train",), seed=seed)
            results[n][CNN].append(scores[CNN][0])
            results[n][MEL] = [scores[MEL][0]]  # the same for every seed
    truth, groups = data.abnormal[test], by_machine(data, test)
    every = int((base == "train").sum())
    head = [f"{n} per class: CNN / mel" for n in ns] + [
        f"all ({every} clips{', `make train`' if reused else ''}): CNN / mel"]
    several = (f" Below `all`, the CNN trains once per training seed ({', '.join(map(str, seeds))}) on the same "
               "clips: its cell is the mean AUC (lowest–highest); the target is judged on the mean."
               if len(seeds) > 1 else "")
    lines = [f"**2. The built-in synthetic set** (`{images}`; {len(data.rows)} clips, split by `split_rows(seed=0)`: "
             f"{every} train / {int((base == 'val').sum())} val / {int(test.sum())} test): n training clips per fine "
             f"class (<machine>/<label>, seeded; between {min(counts.values())} and {max(counts.values())} "
             "available), validation and test splits unchanged; the baseline fits on the same n training clips. AUC "
             f"on the test split; n/a: fewer than n clips in some class.{several}", "",
             "| machine | test clips (abn.) | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for name, mask in groups.items():
        cells = [f"{mean_cell(truth[mask], [s[mask] for s in r[CNN]], CNN)} / "
                 f"{mean_cell(truth[mask], [s[mask] for s in r[MEL]], MEL)}"
                 if r else f"n/a (min {min(counts.values())})" for r in results.values()]
        lines.append(f"| {name} | {int(mask.sum())} ({int(truth[mask].sum())}) | " + " | ".join(cells) + " |")
    return lines, {n: (float(np.mean([auc(truth, s)[0] for s in r[CNN]])), auc(truth, r[MEL][0])[0]) if r else None
                   for n, r in results.items()}


def run(ctx) -> str:
    """The learning curves of the module's docstring (the real sample when present, then the built-in set) and the
    section's targets; a short note when ``SPECTRO_BENCH_CURVE_NS`` is empty. Returns the section's Markdown."""
    ns = [5, 20] if ctx.quick else [int(n) for n in os.environ.get("SPECTRO_BENCH_CURVE_NS", "5,10,20").split(",") if n]
    if not ns:
        return ("**Not run in this run** (`SPECTRO_BENCH_CURVE_NS` empty: every n and seed is a full training, over "
                "two hours on 2 cores).\n")
    trainer = Trainer(ctx)
    lines = [defaults_line(trainer), ""]
    targets = []
    if ctx.mimii_sample is not None:
        real, curve = _real(trainer, ns)
        lines += [*real, ""]
        targets.append(f"- CNN ≥ baseline from 10 clips per class, real sample (AUC, CNN vs baseline): "
                       f"{_target(curve)}")
    else:
        lines += ["Real MIMII sample absent: part 1 is skipped.", ""]
    synth, curve = _synthetic(trainer, ns)
    lines += [*synth, "", "Targets of issue 18 (this section):", "", *targets,
              f"- CNN ≥ baseline from 10 clips per class, synthetic set overall: {_target(curve)}", ""]
    lines += trainer.notes_and_cost()
    return "\n".join(lines) + "\n"
