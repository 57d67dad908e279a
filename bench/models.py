"""The models the small-data sections train and score: the methods' names, the ImageNet-initialised settings, and
:class:`Trainer`, which trains the CNNs, scores them beside the baselines and keeps what each training cost."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.data import HELD_OUT_FOLDS, Images, auc, flag, fold_splits, synthetic_images

CNN, IMAGENET, MEL, RMS = "CNN (defaults)", "CNN (ImageNet)", "mel-statistics baseline", "RMS threshold"
PRETRAINED = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# the ImageNet-initialised model in the real sample's k-fold runs too (off: about 10 minutes a fold on 2 cores; the
# train section measures it on the synthetic set)
IMAGENET_FOLDS = os.environ.get("SPECTRO_BENCH_IMAGENET_FOLDS") == "1"


def alone(method: str) -> str:
    """The name of a CNN method's probability alone, beside its run's fused score (spectro.scoring.fusion)."""
    return f"{method} alone, without the spectrum"


def pretrained_settings(ctx):
    """The ImageNet-initialised model the benchmarks compare (MobileNetV2 α 1.0 at 96 px from ``PRETRAINED`` in
    ``../shared/weights``), or ``None`` when the file is not there."""
    from spectro.model.backbones import ModelSettings

    weights = ctx.weights_dir / PRETRAINED if ctx.weights_dir else None
    if weights is None or not weights.is_file():
        return None
    return ModelSettings(weights=str(weights), alpha=1.0, image_size=96)


def curve_seeds(ctx) -> list[int]:
    """The training seeds of a learning curve's n (``SPECTRO_BENCH_CURVE_SEEDS``, default ``0,1,2``; one when quick)."""
    if ctx.quick:
        return [0]
    return [int(s) for s in os.environ.get("SPECTRO_BENCH_CURVE_SEEDS", "0,1,2").split(",") if s] or [0]


@dataclass
class Trainer:
    """Trains a section's models and remembers what each cost and which did not learn."""

    ctx: object
    stamp: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S"))
    seconds: dict = field(default_factory=dict)  # method -> wall times of its trainings
    notes: list = field(default_factory=list)
    full_defaults: tuple | None = None  # (name, seconds) of the run trained with every default, QAT included

    def settings(self, *, full: bool = False, seed: int = 0):
        """The defaults; without the quantisation-aware phase unless ``full`` (what ``make train`` runs); ``seed``:
        the training's (its batches, augmentation and initial weights)."""
        from spectro.training.loop import TrainSettings

        quick = dict(steps=20, eval_every=10, fine_tune_steps=10, qat_steps=10) if self.ctx.quick else {}
        return TrainSettings(**{"check_learning": False, "seed": seed, **({} if full else {"qat_steps": 0}),
                                **quick})

    def train(self, rows, splits, name: str, method: str, model_settings, *, full: bool = False,
              seed: int = 0) -> Path:
        """Train on the rows whose split is not ``""`` (a manifest of them in a folder of its own)."""
        from spectro.data.manifest import MANIFEST_NAME, write_manifest
        from spectro.training.loop import train

        keep = [i for i, s in enumerate(splits) if s]
        folder = self.ctx.work / "small_sets" / name
        folder.mkdir(parents=True, exist_ok=True)
        write_manifest(folder / MANIFEST_NAME, [rows[i] for i in keep])
        started = time.perf_counter()
        run = train(folder, self.ctx.work / "models_small", settings=self.settings(full=full, seed=seed),
                    model_settings=model_settings, splits=[str(splits[i]) for i in keep], progress=False,
                    name=f"{self.stamp}-{name}-{'imagenet' if method == IMAGENET else 'none'}")
        self.seconds.setdefault(method, []).append(time.perf_counter() - started)
        if full:
            self.full_defaults = (name, time.perf_counter() - started)
        return run

    def scores(self, versions: list[Images], splits, name: str, models: dict, *, fit=("train", "val"),
               full: bool = False, seed: int = 0) -> dict:
        """Each method's scores of the test clips, one array per version of the images (recorded, shifted).

        The CNNs of ``models`` (method -> ModelSettings) train on ``versions[0]`` with ``splits`` (training seed
        ``seed``); the baselines fit on the clips whose split is in ``fit``; every version's test clips are scored
        by the same models.
        """
        import keras

        from spectro.evaluation.baselines import LevelThreshold, MelStatsLogistic
        from spectro.inference.predictors import load_predictor

        data, splits = versions[0], np.asarray(splits)
        test, train_mask = splits == "test", np.isin(splits, fit)
        out = {}
        for method, model_settings in models.items():
            predictor = load_predictor(self.train(data.rows, splits, name, method, model_settings, full=full,
                                                  seed=seed))
            probs = predictor.predict_clips(np.concatenate([v.pixels[test] for v in versions]))
            # the run's anomaly score (fused with the clips' modulation spectra when the run is), and its CNN alone
            parts = predictor.anomaly_parts(probs, np.concatenate([v.modulation[test] for v in versions])
                                            if predictor.fusion is not None else None,
                                            list(data.machines[test]) * len(versions),
                                            statistics=np.concatenate([v.mel[test] for v in versions]))
            out[method] = np.split(parts["score"], len(versions))
            if predictor.fusion is not None:
                out[alone(method)] = np.split(parts["cnn"], len(versions))
            del predictor
            keras.backend.clear_session()  # some twenty models in one process: keep Keras' state small
            if flag(data.abnormal[test], out[method][0]):
                value, _ = auc(data.abnormal[test], out[method][0])
                self.notes.append(f"**did not learn**: {method}, {name}: test AUC {value:.3f}, score range "
                                  f"{np.ptp(out[method][0]):.4f} ({int(test.sum())} test clips)")
        mel = MelStatsLogistic().fit(data.mel[train_mask], data.abnormal[train_mask])
        rms = LevelThreshold().fit(data.level[train_mask], data.abnormal[train_mask])
        out[MEL] = [mel.score(v.mel[test]) for v in versions]
        out[RMS] = [rms.score(v.level[test]) for v in versions]
        return out

    def cost(self) -> str:
        """One paragraph: how many trainings ran and how long they took, per method and in all."""
        every = [s for times in self.seconds.values() for s in times]
        if not every:
            return "No training ran."
        per = "; ".join(f"{m}: {len(t)} trainings, median {statistics.median(t):.0f} s"
                        for m, t in self.seconds.items())
        full = ("" if self.full_defaults is None else
                f" `make train` (every default, the quantisation-aware phase included, on the built-in set: "
                f"`{self.full_defaults[0]}`) took {self.full_defaults[1] / 60:.1f} min of training; the images "
                "section times the rendering.")
        return (f"Cost:{full} All: {len(every)} trainings in this section, {sum(every) / 60:.1f} min in all, median "
                f"{statistics.median(every):.0f} s per training (wall time of `train()`: loading, training, "
                f"validation and test metrics); {per}.")

    def notes_and_cost(self) -> list[str]:
        """The section's closing lines: the models that did not learn, then :meth:`cost`."""
        lines = ["Models that did not learn:", "", *[f"- {note}" for note in self.notes], ""] if self.notes else []
        return [*lines, self.cost()]


def defaults_line(trainer: Trainer) -> str:
    """What "the defaults" are in the small-data sections (small, curve, heldout)."""
    from spectro.model.backbones import ModelSettings

    model, settings = ModelSettings(weights="none"), trainer.settings()
    return (f"The defaults as a user without internet gets them: `ModelSettings(weights=\"none\")` "
            f"({model.backbone} α={model.width(pretrained=False)} at {model.image_size} px, "
            + (f"{model.window_seconds:g} s windows, a clip scored by the mean of its windows' probabilities"
               if model.window_seconds else "whole images")
            + f") and `TrainSettings()` (task {settings.task}, {settings.steps} steps of batch {settings.batch_size}, "
            f"validation every {settings.eval_every}, patience {settings.patience}, seed {settings.seed}; with "
            f"ImageNet weights then {settings.fine_tune_steps} fine-tuning steps) with `qat_steps=0` (float "
            "detection: no int8 twin is trained) and `check_learning=False` (every model is scored, learned or not; "
            "one that did not learn is marked **did not learn**). A CNN's figures are its run's anomaly score: with "
            "images that carry modulation spectra (the default), the larger of the CNN's and the spectrum's robust "
            "standard scores per machine type, the spectrum's only for types where it told a training failure from "
            "normal, calibrated per type on the validation clips into a log-odds of a failure "
            "(`spectro.scoring.fusion`); where a table shows the CNN's probability "
            "alone, it is marked *alone, without the spectrum*."
            + (" **--quick**: tiny sizes and steps, a smoke run whose figures mean nothing." if trainer.ctx.quick
               else ""))


def out_of_fold(trainer: Trainer, data: Images, method: str, settings, *, tag: str = "heldout"
                ) -> tuple[dict, list, list]:
    """Every clip's out-of-fold score by the CNN ``method`` (``settings``: its ModelSettings; fused, and ``alone``
    when the run's score is fused) and by the baselines, fitted on each fold's training clips; the folds
    (:func:`bench.data.fold_splits`, ``HELD_OUT_FOLDS`` of them, 2 in a quick run) and their training-set sizes.
    ``tag`` names the fold runs (``<tag>-fold<k>``)."""
    methods = (method, alone(method), MEL, RMS)  # alone: the CNN's probability, when the run's score is fused
    oof = {m: np.full(len(data.rows), np.nan) for m in methods}
    train_sizes = []
    folds = fold_splits(data, 2 if trainer.ctx.quick else HELD_OUT_FOLDS)
    for k, (splits, test_idx) in enumerate(folds):
        train_sizes.append(int((splits == "train").sum()))
        scores = trainer.scores([data], splits, f"{tag}-fold{k}", {method: settings}, fit=("train",))
        for m in methods:
            if m in scores:
                oof[m][test_idx] = scores[m][0]
    return {m: v for m, v in oof.items() if not np.isnan(v).all()}, folds, train_sizes


def train_default_run(ctx) -> Path:
    """A default run (the built-in set, the default MobileNetV2 from scratch, 400 steps; 20 with ``--quick``) for the
    export and serve sections when the train section's run is not there (``--only export``)."""
    from spectro.errors import SpectroError
    from spectro.model.backbones import ModelSettings
    from spectro.training.loop import TrainSettings, train

    images = synthetic_images(ctx)
    shutil.rmtree(ctx.work / "export_models" / "export-bench", ignore_errors=True)  # a rerun trains afresh
    settings = (TrainSettings(steps=20, eval_every=10, qat_steps=10, seed=0) if ctx.quick
                else TrainSettings(steps=400, seed=0))
    try:
        return train(images, ctx.work / "export_models", settings=settings,
                     model_settings=ModelSettings(weights="none"), progress=False, name="export-bench",
                     keep_failed=ctx.quick)
    except SpectroError:
        if not ctx.quick:
            raise
        # a smoke run's 20 steps may learn nothing; its sizes and speeds still say what the section measures
        return ctx.work / "export_models" / "export-bench"
