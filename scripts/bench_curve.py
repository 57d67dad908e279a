"""Learning curves (issue 18): anomaly AUC against the number of training clips per class, the default CNN
against the mel-statistics baseline, the same test clips for every n; every figure measured here.

The CNNs and their settings are ``bench_small.py``'s (``ModelSettings(weights="none")``, ``TrainSettings()``
with ``qat_steps=0`` and ``check_learning=False``). ``SPECTRO_BENCH_CURVE_NS`` (default ``5,10,20``) sets the
n; ``""`` skips the section (over two hours on 2 cores with the default n and seeds: every one is a full training).

1. The real MIMII fan sample: the test clips of the first 2 of ``bench_small``'s 5 folds; n clips per class
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
from bench_small import (
    CNN,
    MEL,
    _auc,
    _Bench,
    _by_machine,
    _cell,
    _flag,
    _Images,
    _met,
    _render,
    _synthetic_images,
    defaults_line,
    n_real_folds,
    synthetic_split,
)

TITLE = "Learning curves: the CNN against the mel-statistics baseline (issue 18)"
CURVE_FOLDS = 2


def _subset(pool: np.ndarray, n: int, rng) -> np.ndarray | None:
    """``n`` of the indices ``pool``, sorted, or ``None`` when fewer are there."""
    return None if len(pool) < n else np.sort(rng.choice(pool, n, replace=False))


def curve_splits(base: np.ndarray, fine: np.ndarray, n: int) -> np.ndarray | None:
    """The built-in set's ``base`` splits with the training clips cut to ``n`` per fine class (seeded by ``n``; the
    others ``""``), or ``None`` when some class has fewer than ``n``."""
    rng, splits = np.random.default_rng(n), base.copy()
    splits[base == "train"] = ""
    chosen = [_subset(np.flatnonzero((base == "train") & (fine == c)), n, rng) for c in sorted(set(fine))]
    if any(c is None for c in chosen):
        return None
    splits[np.concatenate(chosen)] = "train"
    return splits


def _target(curve: dict) -> str:
    """``CNN >= baseline from 10 clips per class`` over the n of ``curve`` (n -> (CNN AUC, baseline AUC) or None)."""
    pairs = [(n, v) for n, v in curve.items() if v is not None and (n == "all" or n >= 10)]
    if not pairs:
        return "not measured (no n >= 10 available)"
    text = ", ".join(f"{n}: {c:.3f} vs {b:.3f}" for n, (c, b) in pairs)
    return f"{text} → {_met(all(c >= b for _, (c, b) in pairs))}"


def _real(bench: _Bench, ns: list) -> tuple[list[str], dict]:
    from sklearn.model_selection import StratifiedKFold

    from spectro.model.backbones import ModelSettings

    ctx = bench.ctx
    data = _Images.read(_render(ctx.mimii_sample, ctx.work / "mimii_images"))
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
                    chosen = _subset(train_idx[y[train_idx] == label], n, rng)
                    splits[chosen] = "train"
                    splits[chosen[::5]] = "val"  # every 5th of them validates: at least one per class
            scores = bench.scores([data], splits, f"mimii-curve{n}-fold{k}", {CNN: ModelSettings(weights="none")})
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
        cells = [_cell(truth, curve[n][method], method) if curve[n] else f"n/a ({available} available)"
                 for n in [*ns, "all"]]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines, {n: (_auc(truth, v[CNN])[0], _auc(truth, v[MEL])[0]) if v else None for n, v in curve.items()}


def _seeds(ctx) -> list[int]:
    """The training seeds of the synthetic curve's n (``SPECTRO_BENCH_CURVE_SEEDS``, default ``0,1,2``)."""
    if ctx.quick:
        return [0]
    return [int(s) for s in os.environ.get("SPECTRO_BENCH_CURVE_SEEDS", "0,1,2").split(",") if s] or [0]


def _mean_cell(truth, scores: list, method: str) -> str:
    """AUC of one model's scores, or of several (one per training seed): their mean (lowest–highest)."""
    if len(scores) == 1:
        return _cell(truth, scores[0], method, pauc=False)
    aucs = [_auc(truth, s)[0] for s in scores]
    flags = "".join(sorted({_flag(truth, s) for s in scores})) if method.startswith("CNN") else ""
    return f"{np.mean(aucs):.3f} ({min(aucs):.3f}–{max(aucs):.3f}){flags}"


def _synthetic(bench: _Bench, ns: list) -> tuple[list[str], dict]:
    from spectro.model.backbones import ModelSettings

    ctx = bench.ctx
    images = _synthetic_images(ctx)
    data = _Images.read(images)
    base = synthetic_split(data)
    test = base == "test"
    fine = np.array([r.fine_class for r in data.rows])
    counts = {c: int(((base == "train") & (fine == c)).sum()) for c in sorted(set(fine))}
    reused = "small_synth_all" in ctx.state
    seeds = _seeds(ctx)
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
            scores = bench.scores([data], splits, f"synth-curve{n}" + (f"-seed{seed}" if seed else ""),
                                  {CNN: ModelSettings(weights="none")}, fit=("train",), seed=seed)
            results[n][CNN].append(scores[CNN][0])
            results[n][MEL] = [scores[MEL][0]]  # the same for every seed
    truth, groups = data.abnormal[test], _by_machine(data, test)
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
        cells = [f"{_mean_cell(truth[mask], [s[mask] for s in r[CNN]], CNN)} / "
                 f"{_mean_cell(truth[mask], [s[mask] for s in r[MEL]], MEL)}"
                 if r else f"n/a (min {min(counts.values())})" for r in results.values()]
        lines.append(f"| {name} | {int(mask.sum())} ({int(truth[mask].sum())}) | " + " | ".join(cells) + " |")
    return lines, {n: (float(np.mean([_auc(truth, s)[0] for s in r[CNN]])), _auc(truth, r[MEL][0])[0]) if r else None
                   for n, r in results.items()}


def run(ctx) -> str:
    ns = [5, 20] if ctx.quick else [int(n) for n in os.environ.get("SPECTRO_BENCH_CURVE_NS", "5,10,20").split(",") if n]
    if not ns:
        return ("**Not run in this run** (`SPECTRO_BENCH_CURVE_NS` empty: every n and seed is a full training, over "
                "two hours on 2 cores).\n")
    bench = _Bench(ctx)
    lines = [defaults_line(bench), ""]
    targets = []
    if ctx.mimii_sample is not None:
        real, curve = _real(bench, ns)
        lines += [*real, ""]
        targets.append(f"- CNN ≥ baseline from 10 clips per class, real sample (AUC, CNN vs baseline): "
                       f"{_target(curve)}")
    else:
        lines += ["Real MIMII sample absent: part 1 is skipped.", ""]
    synth, curve = _synthetic(bench, ns)
    lines += [*synth, "", "Targets of issue 18 (this section):", "", *targets,
              f"- CNN ≥ baseline from 10 clips per class, synthetic set overall: {_target(curve)}", ""]
    if bench.notes:
        lines += ["Models that did not learn:", "", *[f"- {note}" for note in bench.notes], ""]
    lines.append(bench.cost())
    return "\n".join(lines) + "\n"
