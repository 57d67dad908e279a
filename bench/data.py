"""The data sets the sections share, their splits, and the figures they print (AUC cells, targets).

A section that needs the built-in synthetic set, the held-out family or the real sample's images asks here, so one
run makes each of them once (``ctx.state`` remembers the folders) and every section splits them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the test clips moved by a seeded random gain uniform in ± this many dB (the microphone a little nearer or farther)
LEVEL_SHIFT_DB = 6.0
# the held-out family: the built-in generator with another seed (other machine parameters), other SNRs, shorter clips
HELD_OUT = dict(seed=1, ids=2, snrs=(3.0, -3.0), clips_per_class=6, seconds=5.0)
HELD_OUT_FOLDS = 5


def auc(truth, score) -> tuple[float, float]:
    """AUC and pAUC(0.1) as spectro.evaluation.metrics computes them; NaN where only one class is present."""
    from spectro.evaluation.metrics import anomaly_auc, anomaly_pauc

    value, pauc = anomaly_auc(truth, score), anomaly_pauc(truth, score)
    return (float("nan"), float("nan")) if value is None else (value, pauc)


def to_db(pixels: np.ndarray, features) -> np.ndarray:
    """dB values of a batch of pixel images on the feature settings' fixed scale."""
    from spectro.features.statistics import pixels_to_db_batch

    return pixels_to_db_batch(pixels, db_min=features.db_min, db_per_step=features.db_per_step)


@dataclass
class Images:
    """A rendered image folder, one image per clip: rows, pixels, labels and what the baselines read."""

    rows: list
    pixels: np.ndarray
    features: object
    modulation: np.ndarray | None = None  # each clip's modulation spectrum, when the images carry them

    def __post_init__(self):
        from spectro.features.statistics import level_db, mel_statistics_of_pixels

        if len({r.recording for r in self.rows}) != len(self.rows):
            raise RuntimeError("expected one image per clip (whole clips)")
        f = self.features
        self.abnormal = np.array([r.is_abnormal for r in self.rows])
        self.machines = np.array([r.machine for r in self.rows])
        self.mel = mel_statistics_of_pixels(self.pixels, db_min=f.db_min, db_per_step=f.db_per_step)
        self.level = np.concatenate([level_db(to_db(self.pixels[i:i + 256], f))
                                     for i in range(0, len(self.rows), 256)])

    @classmethod
    def read(cls, folder: Path) -> Images:
        """The images of ``folder``'s manifest, with their feature settings and modulation spectra."""
        from spectro.data.manifest import read_manifest
        from spectro.features.reader import read_images, read_modulation

        rows = read_manifest(folder)
        pixels, features = read_images(rows)
        return cls(rows, pixels, features, read_modulation(rows, settings=features))

    def shifted(self, db: float, *, seed: int) -> Images:
        """Every clip moved by one seeded gain uniform in ±``db`` dB (whole pixels, as a PNG holds); the modulation
        spectra stay: a gain does not change them (tests/features/test_modulation.py)."""
        from spectro.training.augment import apply_gain

        gains = np.random.default_rng(seed).uniform(-db, db, size=len(self.rows))
        moved = apply_gain(self.pixels, gains, db_per_step=self.features.db_per_step)
        return Images(self.rows, np.rint(moved).astype(self.pixels.dtype), self.features, self.modulation)


def render(src: Path, out: Path) -> Path:
    """Render the audio folder ``src`` into ``out`` with the default feature settings; returns ``out``."""
    from spectro.features.render import render_folder
    from spectro.features.settings import FeatureSettings

    render_folder(src, out, FeatureSettings(), jobs=0, progress=False)
    return out


def synthetic_sizes(ctx) -> dict:
    """The generator's sizes for the built-in set: its defaults, or tiny ones with ``--quick``."""
    return dict(clips_per_class=4, ids=2, snrs=(6.0, -6.0), seconds=5.0) if ctx.quick else {}


def synthetic_images(ctx) -> Path:
    """The built-in synthetic set (seed 0) rendered with the default feature settings, made once per run."""
    if "synthetic_images" in ctx.state:
        return Path(ctx.state["synthetic_images"])
    from spectro.data.synth import generate

    data = ctx.work / ("synth_quick" if ctx.quick else "synth")
    generate(data, seed=0, progress=False, force=True, **synthetic_sizes(ctx))
    ctx.state["synthetic_images"] = render(data, ctx.work / ("synth_quick_images" if ctx.quick else "synth_images"))
    return ctx.state["synthetic_images"]


def synthetic_split(data: Images) -> np.ndarray:
    """The built-in set's split for the small-data sections: ``split_rows(seed=0)``, 15 % validation and test."""
    from spectro.training.splits import split_rows

    return np.array(split_rows(data.rows, seed=0, val_fraction=0.15, test_fraction=0.15), dtype=object)


def subset(pool: np.ndarray, n: int, rng) -> np.ndarray | None:
    """``n`` of the indices ``pool``, sorted, or ``None`` when fewer are there."""
    return None if len(pool) < n else np.sort(rng.choice(pool, n, replace=False))


def curve_splits(base: np.ndarray, fine: np.ndarray, n: int) -> np.ndarray | None:
    """The built-in set's ``base`` splits with the training clips cut to ``n`` per fine class (seeded by ``n``; the
    others ``""``), or ``None`` when some class has fewer than ``n``."""
    rng, splits = np.random.default_rng(n), base.copy()
    splits[base == "train"] = ""
    chosen = [subset(np.flatnonzero((base == "train") & (fine == c)), n, rng) for c in sorted(set(fine))]
    if any(c is None for c in chosen):
        return None
    splits[np.concatenate(chosen)] = "train"
    return splits


def n_real_folds(ctx) -> int:
    """How many folds the small-data section cuts the real sample into (the curves reuse its first ones)."""
    return 2 if ctx.quick else 5


def by_machine(data: Images, test: np.ndarray) -> dict[str, np.ndarray]:
    """Masks over the ``test`` clips: ``all``, then one per machine type."""
    machines = data.machines[test]
    return {"all": np.ones(len(machines), bool), **{m: machines == m for m in sorted(set(machines))}}


def held_out_images(ctx) -> tuple[Path, dict]:
    """The held-out family's images (made once per benchmark run) and the generator's arguments."""
    from spectro.data.synth import generate

    sizes = {**HELD_OUT, **(dict(ids=1, clips_per_class=3) if ctx.quick else {})}
    if "held_out_images" not in ctx.state:
        data_dir = ctx.work / ("heldout_seed1_quick" if ctx.quick else "heldout_seed1")
        generate(data_dir, progress=False, force=True, **sizes)
        ctx.state["held_out_images"] = render(data_dir, data_dir.with_name(data_dir.name + "_images"))
    return Path(ctx.state["held_out_images"]), sizes


def fold_splits(data: Images, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
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


def flag(truth, score) -> str:
    """A loud mark for a model that did not learn: constant scores or an AUC near chance."""
    value, _ = auc(truth, score)
    return " **did not learn**" if np.ptp(score) < 0.01 or abs(value - 0.5) < 0.05 else ""


def cell(truth, score, method: str, *, pauc: bool = True) -> str:
    """AUC / pAUC (0.1), or AUC alone; a CNN that did not learn is marked."""
    value, p = auc(truth, score)
    mark = flag(truth, score) if method.startswith("CNN") else ""
    return (f"{value:.3f} / {p:.3f}" if pauc else f"{value:.3f}") + mark


def mean_cell(truth, scores: list, method: str) -> str:
    """AUC of one model's scores, or of several (one per training seed): their mean (lowest–highest)."""
    if len(scores) == 1:
        return cell(truth, scores[0], method, pauc=False)
    aucs = [auc(truth, s)[0] for s in scores]
    flags = "".join(sorted({flag(truth, s) for s in scores})) if method.startswith("CNN") else ""
    return f"{np.mean(aucs):.3f} ({min(aucs):.3f}–{max(aucs):.3f}){flags}"


def met(ok: bool) -> str:
    """A target's verdict as the report prints it."""
    return "met" if ok else "MISSED"
