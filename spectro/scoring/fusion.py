"""A supervised run's anomaly score: the CNN's, fused per machine type with two views of the clip the CNN may miss,
its modulation spectrum and its level-normalised mel statistics (no TensorFlow here).

A spectrogram image has about 31 frames a second, so it cannot show a loudness wobble faster than about 15 Hz:
a fan's unbalance (amplitude modulation at its shaft rate) or a bearing's impacts leave the CNN little to see,
while the clip's modulation spectrum (:mod:`spectro.features.modulation`, stored in every PNG) shows them. And a CNN
trained on a few clips of a machine type may not learn what a few numbers per mel band already tell (a failure that
shifts the spectrum's shape): a logistic regression on those numbers, the mel-statistics baseline every evaluation
reports (:class:`spectro.evaluation.baselines.MelStatsLogistic`), sees it, so it is a view of the score itself and
the score is not behind its own baseline. So a supervised run whose images carry modulation spectra scores a clip by
the largest of up to three robust standard scores, per **machine type**: the clip's own where it is known (the
``machine`` of an image's row, ``--machine`` or the path for ``spectro classify``), else the one the CNN's classes
find most likely:

``cnn``         ``logit(p)`` of the CNN's anomaly probability ``p``
                (:meth:`spectro.model.labels.LabelSpace.anomaly_score`, pooled over the clip's windows), minus the
                median over the type's normal validation clips, divided by 1.4826 × their median absolute
                deviation (:data:`MIN_CNN_SD` at least; its training normals' when the validation split holds
                fewer than :data:`MIN_CLIPS` normal clips of the type; all types' normals together when it has
                fewer than that in both)
``modulation``  the log of the Mahalanobis distance of the clip's modulation spectrum to a Gaussian of the type's
                normal training clips' spectra (Ledoit–Wolf), minus the median of the logs of the distances of
                normal clips the Gaussian has not seen, divided by 1.4826 × their median absolute deviation: the
                type's normal validation clips measured against it, and its normal training clips, each fold of
                them (up to :data:`FOLDS` folds by clip) measured against a Gaussian of the others
``melstats``    the log-odds of "abnormal" of a logistic regression on the clip's level-normalised mel statistics
                (:func:`spectro.scoring.known.statistics`: per band, the mean minus the clip's mean dB, and the
                standard deviation; blind to the recording's gain), fitted on the type's normal and abnormal training
                clips with the baseline's recipe (standardised, ``C =`` :data:`MELSTATS_C`, classes weighed equally);
                minus the median of the log-odds of normal clips it has not trained on, divided by 1.4826 × their
                median absolute deviation (:data:`MIN_CNN_SD` at least): its training normals out of fold (each fold
                of the training clips, stratified, scored by a regression of the others) and the type's normal
                validation clips. A type with fewer than :data:`MIN_CLIPS` training clips of either class has none.

``fused = max(parts)`` — the rule of a normal-only run's ``combined`` (:mod:`spectro.scoring.references`): a clip far
out in any view is far out, and a view blind to a failure does not dilute one that sees it. A type with fewer than
:data:`MIN_CLIPS` normal training clips carrying spectra has no ``modulation`` part.

A view joins a type's score only where it **sees a failure** of the type's training split: the maximum takes each
part's false alarms too, so a part blind to every failure of a type (a pump's clogging and leakage change the
spectrum's shape, which the CNN sees, not its loudness wobble) would only add its chance outliers to the type's
normal clips. The spectrum part joins where some failure label (with :data:`MIN_CLIPS` clips or more) has abnormal
training clips it ranks above the type's normal training clips (each held out fold by fold, as in its scale) with an
AUC of :data:`MIN_MODULATION_AUC` or more; a type without failure labels to judge by keeps it (nothing recorded says
it is blind, and the CNN has seen none of the type's failures). The mel-statistics part joins where its out-of-fold
log-odds reach the same AUC, on all of the type's training failures together or on one failure label with
:data:`MIN_CLIPS` clips or more. The CNN is not judged this way: its training clips are the ones it learned.
docs/decisions/0003-scoring-contract.md and docs/benchmarks.md have the measurements.

Why validation clips in the spectrum part's scale: with few training clips the fold-by-fold distances alone
misjudge it. With 10 normal fan clips of the built-in set, a Gaussian of 8 of them put the other 2 closer and
tighter (median log distance 1.98, robust sd 0.10) than the Gaussian of all 10 puts the fan's unseen normal clips
(2.09, 0.15), and 40 % of those passed the default threshold instead of 5 %. Validation clips are measured exactly
as a new clip is; the training folds keep the scale steady where the validation split holds a handful of them.

**One scale for every type.** A type with ``j`` of the ``K = len(PARTS)`` parts takes the larger of its ``j`` onto
the scale of the larger of ``K`` (:func:`larger_of_parts`, :func:`as_larger_of_k` with ``k = K / j``):
``Φ(x)^K = Φ(largest)^j``, the score exactly as rare among normal clips when the parts are standard normal and
independent. So one threshold passes the same share of every type's normal clips, whichever parts the type has, and
the types' scores rank together.

**Calibrated per machine type.** The larger-of-parts score says how rare a clip is among its type's normal clips,
so every type's normal clips pass a threshold at the same rate; but a run's overall ranking (and one threshold for
every type) puts a type whose CNN is unsure (its failures close to its normal clips) among another type's failures.
Where the validation split holds both classes, each type's score is therefore mapped to the **log-odds of
"abnormal"** by a logistic regression on the type's validation clips (C = 1, the two classes weighed equally:
:data:`CALIBRATION_C`): ``score = slope × fused + intercept``. The map is increasing, so it keeps each type's
ranking; a type with fewer than :data:`MIN_CLIPS` validation clips of either class (or whose own fit does not
increase) takes the fit of all types' validation clips together, and a run whose validation split lacks that too is
not calibrated (every type keeps the standard score, so the types' scores stay comparable). Measured on models
trained at 10 clips per class and on the held-out family's folds (docs/decisions/0003-scoring-contract.md): the
types and the folds rank together better, and no type's own ranking changes.

The calibrated score is a log-odds: 0 (:data:`spectro.runs.DEFAULT_CALIBRATED_THRESHOLD`) is where a clip is as
like its type's validation failures as its normal clips. An uncalibrated fused score is a standard score: about
5 % of each type's normal clips score above :data:`DEFAULT_THRESHOLD` when its parts are standard normal and
independent. Either way ``spectro evaluate`` chooses the run's threshold on its validation split as for any score.

The file ``fusion.npz`` (:data:`spectro.runs.FUSION_NAME`) holds, per machine type, the CNN part's scale,
when fitted, the spectrum Gaussian's mean and precision and its scale, the mel-statistics regression's weights
(the standardisation folded in) and its scale, and the calibration, so scoring needs numpy alone (a ``.tflite``
model in ``spectro classify`` and ``spectro serve`` scores as the ``.keras`` one: the statistics come from the
pixels and the run's feature settings). A run trained on images without modulation spectra has none: its
``config.json`` has no fused ``anomaly_score`` and its score is the CNN's probability; a fused run without the file
is refused (:func:`spectro.runs.resolve_run`, :meth:`Fusion.load`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectro.errors import SpectroError
from spectro.runs import DEFAULT_FUSED_THRESHOLD as DEFAULT_THRESHOLD  # noqa: F401 - the score's default threshold
from spectro.runs import FUSION_NAME, save_arrays
from spectro.scoring.profile import (
    FOLDS,
    MIN_CLIPS,
    Gaussian,
    as_larger_of_k,
    held_out_distances,
    log_scales,
    mahalanobis,
    robust_scale,
)

# the CNN part's (and the mel-statistics part's) robust standard deviation in log-odds, at least: a model whose normal
# clips all get the same probability (saturated, or one that learned nothing) would otherwise make rounding noise a
# huge score
MIN_CNN_SD = 0.1
# the spectrum part joins a type's score where some failure label's training clips reach this AUC against its
# normal ones: a blind spectrum reaches it with 10 clips of each 3 times in 100, with 20 of each 3 in 1000; the
# fan's unbalance, which the CNN does not hear, reached 0.77 to 0.98 on three synthetic families
MIN_MODULATION_AUC = 0.75
# the calibration's logistic regression: C = 1 (the regularisation a probe of the fusion measured; 0.1 and 10 ranked
# within 0.003 of it), the classes weighed equally so that 0 does not follow the validation
# split's balance of normal and failure clips
CALIBRATION_C = 1.0
# the mel-statistics part's logistic regression: the recipe of the mel-statistics baseline every evaluation reports
# (spectro.evaluation.baselines.MelStatsLogistic): standardised features, C = 0.1, the classes weighed equally
MELSTATS_C = 0.1
MELSTATS_MAX_ITER = 5000
PARTS = ("cnn", "modulation", "melstats")
_EPS = 1e-7


def logit(p) -> np.ndarray:
    """``log(p / (1 − p))`` of probabilities, clipped to ``[1e-7, 1 − 1e-7]`` first."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass
class TypeFusion:
    """One machine type: the CNN part's scale, and the spectrum Gaussian with its scale (``None`` without)."""

    cnn_scale: list[float]  # [median, robust sd] of logit(p) of normal clips
    cnn_scale_from: str  # "validation" or "training"
    mean: np.ndarray | None = None
    precision: np.ndarray | None = None
    modulation_scale: list[float] | None = None  # [median, robust sd] of log distances, of normal clips it has not seen
    clips: int = 0  # normal training clips with spectra
    # the spectrum part's best AUC on a failure label of the training split (None: no label to judge by)
    modulation_auc: float | None = None
    calibration: list[float] | None = None  # [slope, intercept]: the fused score's log-odds of "abnormal"
    calibrated_from: str | None = None  # "the type" (its own validation clips) or "all types"
    # the mel-statistics part: logit = statistics @ weights + bias (the standardisation folded in); None without
    melstats_weights: np.ndarray | None = None
    melstats_bias: float = 0.0
    melstats_scale: list[float] | None = None  # [median, robust sd] of the logits of normal clips it has not seen
    melstats_clips: list[int] | None = None  # [normal, abnormal] training clips it was fitted on
    melstats_auc: float | None = None  # its out-of-fold AUC on the training split (the best failure label's or all's)

    @property
    def has_modulation(self) -> bool:
        return self.mean is not None

    @property
    def has_melstats(self) -> bool:
        return self.melstats_weights is not None

    @property
    def melstats_joins(self) -> bool:
        """Whether the mel-statistics part counts in the fused score (fitted, and its out-of-fold AUC on the training
        split :data:`MIN_MODULATION_AUC` or more)."""
        return self.has_melstats and self.melstats_auc is not None and self.melstats_auc >= MIN_MODULATION_AUC

    def melstats_logit(self, statistics: np.ndarray) -> np.ndarray:
        """The mel-statistics logistic regression's log-odds of "abnormal" for clips' statistics ``(n, d)``."""
        return np.asarray(statistics, dtype=np.float64) @ self.melstats_weights + self.melstats_bias

    @property
    def modulation_joins(self) -> bool:
        """Whether the spectrum part counts in the fused score (fitted, and not blind to the recorded failures)."""
        return self.has_modulation and (self.modulation_auc is None or self.modulation_auc >= MIN_MODULATION_AUC)

    def parts(self, probability: np.ndarray, modulation: np.ndarray | None,
              statistics: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Each part's standard score of clips (``modulation`` only with the spectra, a fitted Gaussian, and where
        it joins: :attr:`modulation_joins`; ``melstats`` only with the mel ``statistics`` and where it joins:
        :attr:`melstats_joins`)."""
        out = {"cnn": (logit(probability) - self.cnn_scale[0]) / self.cnn_scale[1]}
        if self.modulation_joins and modulation is not None:
            logs = np.log(np.maximum(mahalanobis(modulation, self.mean, self.precision), 1e-12))
            out["modulation"] = (logs - self.modulation_scale[0]) / self.modulation_scale[1]
        if self.melstats_joins and statistics is not None:
            out["melstats"] = (self.melstats_logit(statistics) - self.melstats_scale[0]) / self.melstats_scale[1]
        return out


def _melstats_model(statistics: np.ndarray, abnormal: np.ndarray) -> tuple[np.ndarray, float]:
    """The mel-statistics logistic regression of clips' ``statistics`` and ``abnormal`` flags (scikit-learn's
    ``StandardScaler`` then a balanced ``LogisticRegression(C=MELSTATS_C)``), as ``weights`` and ``bias`` of
    ``logit = statistics @ weights + bias``: the standardisation folded in, so scoring needs numpy alone."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=MELSTATS_C, class_weight="balanced",
                                                                  max_iter=MELSTATS_MAX_ITER))
    pipeline.fit(statistics, abnormal.astype(int))
    scaler, model = pipeline[0], pipeline[1]
    weights = model.coef_[0] / scaler.scale_
    return weights, float(model.intercept_[0] - weights @ scaler.mean_)


def _fit_melstats(fused: TypeFusion, normal: np.ndarray, abnormal: np.ndarray, labels: np.ndarray,
                  unseen: np.ndarray | None) -> None:
    """Fit ``fused``'s mel-statistics part from the type's training clips' statistics (``normal``, ``abnormal`` with
    their failure ``labels``) and the statistics of more normal clips it does not train on (``unseen``: the type's
    validation normals, or ``None``). Needs :data:`MIN_CLIPS` clips of each class, else the part is left out.

    Each fold of the training clips (stratified: clip ``i`` of each class in fold ``i % F``, ``F`` up to
    :data:`FOLDS`) is scored by a regression of the others: those out-of-fold logits judge whether the part joins
    (the AUC of all failures together or of the best failure label with :data:`MIN_CLIPS` clips or more), and the
    normal clips' among them, with the unseen clips' logits under the regression of every training clip, set its
    scale."""
    from sklearn.metrics import roc_auc_score

    if min(len(normal), len(abnormal)) < MIN_CLIPS:
        return
    x = np.concatenate([normal, abnormal]).astype(np.float64)
    y = np.r_[np.zeros(len(normal), bool), np.ones(len(abnormal), bool)]
    n_folds = min(FOLDS, len(normal), len(abnormal))
    folds = np.r_[np.arange(len(normal)) % n_folds, np.arange(len(abnormal)) % n_folds]
    held = np.zeros(len(x))
    for f in range(n_folds):
        weights, bias = _melstats_model(x[folds != f], y[folds != f])
        held[folds == f] = x[folds == f] @ weights + bias
    fused.melstats_weights, fused.melstats_bias = _melstats_model(x, y)
    logits = held[~y] if unseen is None or not len(unseen) else np.r_[held[~y], fused.melstats_logit(unseen)]
    median, sd = robust_scale(logits)
    fused.melstats_scale, fused.melstats_clips = [median, max(sd, MIN_CNN_SD)], [len(normal), len(abnormal)]
    aucs = [roc_auc_score(y, held), _best_failure_auc(held[~y], held[y], labels)]
    fused.melstats_auc = float(max(a for a in aucs if a is not None))


def _best_failure_auc(normal: np.ndarray, abnormal: np.ndarray, labels: np.ndarray) -> float | None:
    """The highest AUC of ``abnormal`` scores of one failure label against the ``normal`` ones, over the labels with
    at least :data:`MIN_CLIPS` clips (``None`` without such a label)."""
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(int((labels == label).sum()))],
                          np.r_[normal, abnormal[labels == label]])
            for label in sorted(set(labels.tolist())) if (labels == label).sum() >= MIN_CLIPS]
    return float(max(aucs)) if aucs else None


def larger_of_parts(parts: np.ndarray) -> np.ndarray:
    """The uncalibrated fused score of clips from their parts' standard scores ``(len(PARTS), n)`` (NaN where a part
    does not apply): the largest, on the scale of the larger of ``len(PARTS)`` independent standard scores
    (:func:`as_larger_of_k`: the larger of ``j`` parts with ``k = len(PARTS) / j``)."""
    parts = np.asarray(parts, dtype=np.float64)
    present = (~np.isnan(parts)).sum(axis=0)
    largest = np.max(np.where(np.isnan(parts), -np.inf, parts), axis=0, initial=-np.inf)
    out = largest.copy()
    for j in np.unique(present):
        sel = present == j
        if j == 0:
            out[sel] = np.nan
        elif j < len(parts):
            out[sel] = as_larger_of_k(largest[sel], len(parts) / j)
    return out


@dataclass
class Fusion:
    """A run's fusion, one :class:`TypeFusion` per machine type."""

    types: dict[str, TypeFusion]

    @classmethod
    def fit(cls, *, types, train_types, train_modulation: np.ndarray | None, train_probability: np.ndarray | None,
            val_types, val_probability: np.ndarray, val_modulation: np.ndarray | None = None, abnormal_types=(),
            abnormal_labels=(), abnormal_modulation: np.ndarray | None = None, val_abnormal=None,
            train_statistics: np.ndarray | None = None, abnormal_statistics: np.ndarray | None = None,
            val_statistics: np.ndarray | None = None) -> Fusion:
        """One entry for each machine type of ``types`` (every type the CNN can name) from the **normal** clips of
        the training split (their machine types, modulation spectra ``(n, bins)`` or ``None``, and the CNN's
        anomaly probabilities, needed only where a type has fewer than :data:`MIN_CLIPS` validation normals) and
        of the validation split (types, probabilities, and spectra when there are: they join the spectrum part's
        scale). A type without enough normal clips of its own takes the CNN scale of all types' normal clips
        together. The **abnormal** training clips (machine types, failure labels, spectra) decide where the spectrum
        part joins (:attr:`TypeFusion.modulation_joins`). ``val_abnormal`` (one flag per validation clip; ``None``:
        all normal) adds the validation split's failure clips: they calibrate the score (:meth:`calibrate`), and
        only its normal clips set the scales. ``train_statistics``, ``abnormal_statistics``, ``val_statistics``: the
        level-normalised mel statistics (:func:`spectro.scoring.known.statistics`) of the normal training, abnormal
        training and validation clips, for the mel-statistics part (``None``: no such part)."""
        abnormal_types = np.asarray(list(abnormal_types), dtype=str)
        abnormal_labels = np.asarray(list(abnormal_labels), dtype=str)
        if len(abnormal_labels) != len(abnormal_types) or (
                abnormal_modulation is not None and len(abnormal_modulation) != len(abnormal_types)):
            raise SpectroError(f"need one failure label and spectrum per abnormal training clip "
                               f"({len(abnormal_types)}), got {len(abnormal_labels)} and "
                               f"{'none' if abnormal_modulation is None else len(abnormal_modulation)}")
        train_types = np.asarray(list(train_types), dtype=str)
        val_types = np.asarray(list(val_types), dtype=str)
        val_probability = np.asarray(val_probability, dtype=np.float64)
        if len(val_types) != len(val_probability) or (
                train_probability is not None and len(train_probability) != len(train_types)):
            raise SpectroError("need one machine type per clip and probability")
        if train_modulation is not None and len(train_modulation) != len(train_types):
            raise SpectroError(f"need one modulation spectrum per training clip ({len(train_types)}), got "
                               f"{len(train_modulation)}")
        if val_modulation is not None and len(val_modulation) != len(val_types):
            raise SpectroError(f"need one modulation spectrum per validation clip ({len(val_types)}), got "
                               f"{len(val_modulation)}")
        for what, stats, clips in (("normal training", train_statistics, train_types),
                                   ("abnormal training", abnormal_statistics, abnormal_types),
                                   ("validation", val_statistics, val_types)):
            if stats is not None and len(stats) != len(clips):
                raise SpectroError(f"need the mel statistics of every {what} clip ({len(clips)}), got {len(stats)}")
        failed = np.zeros(len(val_types), bool) if val_abnormal is None else np.asarray(val_abnormal, dtype=bool)
        if len(failed) != len(val_types):
            raise SpectroError(f"need one abnormal flag per validation clip ({len(val_types)}), got {len(failed)}")
        # the whole split: what the calibration fits on
        labelled = (val_types, val_probability, val_modulation, val_statistics)
        val_types, val_probability = val_types[~failed], val_probability[~failed]  # the normal clips: the scales
        val_modulation = None if val_modulation is None else val_modulation[~failed]
        val_statistics = None if val_statistics is None else np.asarray(val_statistics, dtype=np.float64)[~failed]

        def floored(values) -> list[float]:
            median, sd = robust_scale(logit(values))
            return [median, max(sd, MIN_CNN_SD)]

        def cnn_scale(val_sel, train_sel) -> tuple[list[float], str] | None:
            if val_sel.sum() >= MIN_CLIPS:
                return floored(val_probability[val_sel]), "validation"
            if train_probability is not None and train_sel.sum() >= MIN_CLIPS:
                return floored(np.asarray(train_probability, dtype=np.float64)[train_sel]), "training"
            return None

        pooled = cnn_scale(np.ones(len(val_types), bool), np.ones(len(train_types), bool))
        out = {}
        for name in sorted(set(types)):
            scale = cnn_scale(val_types == name, train_types == name) or pooled
            if scale is None:
                raise SpectroError(f"need at least {MIN_CLIPS} normal clips to scale the anomaly score, got "
                                   f"{len(val_types)} validation and {len(train_types)} training normal clips")
            fused = TypeFusion(*scale)
            spectra = None if train_modulation is None else np.asarray(train_modulation[train_types == name],
                                                                         dtype=np.float64)
            if spectra is not None and len(spectra) >= MIN_CLIPS:
                held = held_out_distances(spectra)
                gaussian = Gaussian(spectra)
                fused.mean, fused.precision = gaussian.fit.location_, gaussian.fit.precision_
                unseen, own_val = held, val_types == name
                if val_modulation is not None and own_val.any():
                    unseen = np.r_[held, gaussian.distance(val_modulation[own_val])]
                fused.modulation_scale, fused.clips = log_scales(unseen), len(spectra)
                mine = abnormal_types == name
                if abnormal_modulation is not None and mine.any():
                    fused.modulation_auc = _best_failure_auc(
                        held, gaussian.distance(np.asarray(abnormal_modulation[mine], dtype=np.float64)),
                        abnormal_labels[mine])
            if train_statistics is not None and abnormal_statistics is not None:
                mine = abnormal_types == name
                _fit_melstats(fused, np.asarray(train_statistics, dtype=np.float64)[train_types == name],
                              np.asarray(abnormal_statistics, dtype=np.float64)[mine], abnormal_labels[mine],
                              None if val_statistics is None else val_statistics[val_types == name])
            out[name] = fused
        if not out:
            raise SpectroError("no machine types to fit the anomaly score for")
        fusion = cls(out)
        if failed.any():
            fusion.calibrate(*labelled[:3], statistics=labelled[3], abnormal=failed)
        return fusion

    def calibrate(self, types, probability: np.ndarray, modulation: np.ndarray | None, *, abnormal,
                  statistics: np.ndarray | None = None) -> None:
        """Fit each type's calibration on labelled clips (the validation split's: machine ``types``, the CNN's
        ``probability``, the ``modulation`` spectra, the mel ``statistics``, ``abnormal`` flags) from their
        uncalibrated fused score: a logistic regression on the type's own clips where they hold :data:`MIN_CLIPS` of
        each class and its slope is positive, else on all clips together; no type is calibrated when that fit is
        impossible too (:attr:`calibrated`)."""
        from sklearn.linear_model import LogisticRegression

        fused = self.parts(types, probability, modulation, statistics=statistics, calibrated=False)["fused"]
        types, abnormal = np.asarray(list(types), dtype=str), np.asarray(abnormal, dtype=bool)

        def fit(sel) -> list[float] | None:
            if min(int(abnormal[sel].sum()), int((~abnormal[sel]).sum())) < MIN_CLIPS:
                return None
            model = LogisticRegression(C=CALIBRATION_C, class_weight="balanced").fit(fused[sel, None], abnormal[sel])
            slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
            return [slope, intercept] if slope > 0 else None

        pooled = fit(np.ones(len(types), bool))
        for name, t in self.types.items():
            own = fit(types == name) if pooled is not None else None
            t.calibration = own or pooled
            t.calibrated_from = None if pooled is None else "the type" if own else "all types"

    @property
    def calibrated(self) -> bool:
        """Whether the score is calibrated (a log-odds of "abnormal" for every type), not a standard score."""
        return all(t.calibration is not None for t in self.types.values())

    def parts(self, types, probability: np.ndarray, modulation: np.ndarray | None, *,
              statistics: np.ndarray | None = None, calibrated: bool = True) -> dict[str, np.ndarray]:
        """Each part's score of clips of machine ``types`` (NaN where a part does not apply) and ``fused``: the
        run's anomaly score, calibrated where the run is (``calibrated=False``: the larger-of-parts score before).
        ``statistics``: the clips' mel statistics (:func:`spectro.scoring.known.statistics`), needed where a type's
        mel-statistics part joins."""
        types = np.asarray(list(types), dtype=str)
        probability = np.asarray(probability, dtype=np.float64)
        if len(types) != len(probability) or (modulation is not None and len(modulation) != len(types)) or (
                statistics is not None and len(statistics) != len(types)):
            raise SpectroError(f"need one machine type, probability, spectrum and mel statistics per clip, got "
                               f"{len(types)}, {len(probability)}, {'none' if modulation is None else len(modulation)}"
                               f" and {'none' if statistics is None else len(statistics)}")
        out = {name: np.full(len(types), np.nan) for name in PARTS}
        for name in sorted(set(types.tolist())):
            sel = types == name
            fused = self.types.get(name)
            if fused is None:
                raise SpectroError(f"machine type {name!r} has no anomaly-score scales (the run knows "
                                   f"{', '.join(sorted(self.types))})")
            if fused.melstats_joins and statistics is None:
                raise SpectroError(f"machine type {name!r}: the anomaly score needs each clip's mel statistics "
                                   "(spectro.scoring.known.statistics of its pixels), got none")
            for part, value in fused.parts(probability[sel], None if modulation is None else modulation[sel],
                                           None if statistics is None else statistics[sel]).items():
                out[part][sel] = value
        out["fused"] = larger_of_parts(np.stack([out[part] for part in PARTS]))
        if calibrated and self.calibrated:
            for name in sorted(set(types.tolist())):
                slope, intercept = self.types[name].calibration
                out["fused"][types == name] = slope * out["fused"][types == name] + intercept
        return out

    def score(self, types, probability: np.ndarray, modulation: np.ndarray | None, *,
              statistics: np.ndarray | None = None) -> np.ndarray:
        """The fused anomaly score of clips."""
        return self.parts(types, probability, modulation, statistics=statistics)["fused"]

    def of_probs(self, labels, probs: np.ndarray, modulation: np.ndarray | None,
                 types=None, *, statistics: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:meth:`parts` of clips from the CNN's pooled fine-class ``probs``. Each clip is scored as its machine
        type of ``types`` (one per clip, ``None`` where unknown) when the run knows that type, else as the one the
        CNN finds most likely (:meth:`~spectro.model.labels.LabelSpace.machine_type`)."""
        return self.parts(self.types_of(labels, probs, types), labels.anomaly_score(probs), modulation,
                          statistics=statistics)

    def types_of(self, labels, probs: np.ndarray, types=None) -> list[str]:
        """The machine type each clip is scored as (:meth:`of_probs`). A known type comes first because the
        scales differ widely between types (a pump's normal clips may sit at log-odds −6 and a fan's at −0.5):
        a pump failure the CNN half takes for a fan would be judged against the fan's normal clips."""
        named = labels.machine_type(probs)
        if types is None:
            return named
        types = list(types)
        if len(types) != len(named):
            raise SpectroError(f"need one machine type (or None) per clip, got {len(types)} for {len(named)} clips")
        return [t if t in self.types else n for t, n in zip(types, named)]

    # -- file --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """What ``config.json`` records of the fusion (the file holds the arrays)."""
        return {name: {"cnn_scale": t.cnn_scale, "cnn_scale_from": t.cnn_scale_from,
                       "modulation_scale": t.modulation_scale, "modulation_clips": t.clips,
                       "modulation_training_auc": t.modulation_auc, "modulation_joins": t.modulation_joins,
                       "melstats_scale": t.melstats_scale, "melstats_clips": t.melstats_clips,
                       "melstats_training_auc": t.melstats_auc, "melstats_joins": t.melstats_joins,
                       "calibration": t.calibration, "calibrated_from": t.calibrated_from}
                for name, t in sorted(self.types.items())}

    def save(self, folder: str | Path) -> Path:
        """Write ``fusion.npz`` into ``folder`` (atomically)."""
        names = sorted(self.types)
        fitted = [n for n in names if self.types[n].has_modulation]
        d = self.types[fitted[0]].mean.shape[0] if fitted else 1  # no spectra fitted: empty (0, 1) arrays
        learned = [n for n in names if self.types[n].has_melstats]
        arrays = {
            "types": np.array(names, dtype=str),
            "cnn_scales": np.array([self.types[n].cnn_scale for n in names], dtype=np.float64),
            "cnn_from": np.array([self.types[n].cnn_scale_from for n in names], dtype=str),
            "fitted": np.array(fitted, dtype=str).reshape(-1),
            "means": np.array([self.types[n].mean for n in fitted], dtype=np.float64).reshape(-1, d),
            "precisions": np.array([self.types[n].precision for n in fitted], dtype=np.float64).reshape(-1, d, d),
            "modulation_scales": np.array([self.types[n].modulation_scale for n in fitted],
                                          dtype=np.float64).reshape(-1, 2),
            "clips": np.array([self.types[n].clips for n in fitted], dtype=np.int64),
            # NaN: no failure label to judge the spectrum part by (it joins)
            "modulation_aucs": np.array([np.nan if (auc := self.types[n].modulation_auc) is None else auc
                                         for n in fitted], dtype=np.float64),
            # NaN: not calibrated (the score is the standard score)
            "calibrations": np.array([self.types[n].calibration or [np.nan, np.nan] for n in names],
                                     dtype=np.float64).reshape(-1, 2),
            "calibrated_from": np.array([self.types[n].calibrated_from or "" for n in names], dtype=str),
            # the mel-statistics part of the types that have one
            "melstats_types": np.array(learned, dtype=str).reshape(-1),
            "melstats_weights": np.array([self.types[n].melstats_weights for n in learned],
                                         dtype=np.float64).reshape(len(learned), -1 if learned else 0),
            "melstats_biases": np.array([self.types[n].melstats_bias for n in learned], dtype=np.float64),
            "melstats_scales": np.array([self.types[n].melstats_scale for n in learned],
                                        dtype=np.float64).reshape(-1, 2),
            "melstats_clips": np.array([self.types[n].melstats_clips for n in learned], dtype=np.int64).reshape(-1, 2),
            "melstats_aucs": np.array([self.types[n].melstats_auc for n in learned], dtype=np.float64),
        }
        return save_arrays(Path(folder) / FUSION_NAME, arrays)

    @classmethod
    def load(cls, folder: str | Path) -> Fusion:
        """A fused run's fusion (only a run whose ``config.json`` says its score is fused has one).

        Raises
        ------
        SpectroError
            No ``fusion.npz`` there, or one that cannot be read.
        """
        path = Path(folder) / FUSION_NAME
        if not path.is_file():
            raise SpectroError(f"{folder}: no {FUSION_NAME} (the fused anomaly score), which this run's anomaly score "
                               "reads; the run folder is incomplete (copy the whole run folder, or train it again)")
        try:
            with np.load(path) as data:
                types = {str(n): TypeFusion([float(a), float(b)], str(f))
                         for n, (a, b), f in zip(data["types"], data["cnn_scales"], data["cnn_from"])}
                for n, mean, precision, (a, b), clips, auc in zip(data["fitted"], data["means"], data["precisions"],
                                                                  data["modulation_scales"], data["clips"],
                                                                  data["modulation_aucs"]):
                    t = types[str(n)]
                    t.mean, t.precision, t.modulation_scale, t.clips = mean, precision, [float(a), float(b)], int(clips)
                    t.modulation_auc = None if np.isnan(auc) else float(auc)
                for n, (slope, intercept), source in zip(data["types"], data["calibrations"], data["calibrated_from"]):
                    if not np.isnan(slope):  # NaN: not calibrated (no validation failures to calibrate on)
                        types[str(n)].calibration = [float(slope), float(intercept)]
                        types[str(n)].calibrated_from = str(source)
                for n, weights, bias, (a, b), clips, auc in zip(
                        data["melstats_types"], data["melstats_weights"], data["melstats_biases"],
                        data["melstats_scales"], data["melstats_clips"], data["melstats_aucs"]):
                    t = types[str(n)]
                    t.melstats_weights, t.melstats_bias, t.melstats_scale = weights, float(bias), [float(a), float(b)]
                    t.melstats_clips, t.melstats_auc = [int(c) for c in clips], float(auc)
        except (OSError, ValueError, KeyError) as exc:
            raise SpectroError(f"{path}: unreadable anomaly-score fusion ({type(exc).__name__}: {exc})") from None
        if not types:
            raise SpectroError(f"{path}: no machine types in the anomaly-score fusion")
        return cls(types)
