"""Normal references: what a machine's normal sound looks like to a model, and the anomaly scores that compare a
clip with it (normal-only runs; no TensorFlow here).

A run's references hold, per **machine key** (``<machine>/<id>``, :func:`spectro.model.labels.machine_key`),
the embeddings of every window of its normal clips (the backbone's pooled features, before the head), each clip's
level-normalised mel statistics and modulation spectrum and, per scorer, a decision threshold taken from normal
clips alone. ``spectro train --task normal-only`` writes them from the training split; ``spectro enroll`` adds a
machine (or more clips of one) without retraining.

The scores of a clip (higher = more abnormal), from its **embedding**, the mean of its windows' embeddings:

``knn``          mean cosine distance to its ``k`` nearest reference windows of the machine
``mahalanobis``  Mahalanobis distance to a Gaussian of the machine's reference windows (Ledoit–Wolf shrinkage
                 covariance, scikit-learn), so a few clips in 1280 dimensions still give an invertible covariance
``id``           −log p(machine key) of the model's softmax, the mean over the clip's windows; only for machines
                 the model was trained on
``modulation``   Mahalanobis distance of the clip's modulation spectrum (:mod:`spectro.features.modulation`, how its
                 loudness wobbles; not the model's) to a Gaussian of the machine's reference clips' spectra
``melstats``     a diagonal standard score of the clip's mel statistics (:func:`spectro.scoring.known.statistics`:
                 per band its mean dB minus the clip's mean level, and its standard deviation over time; the
                 known-machine check's features, from the pixels alone, so with a ``.tflite`` model too) against
                 the machine's reference clips': per dimension ``(x − mean) / (std + 0.5 dB)``, the root mean
                 square over the dimensions (:func:`melstats_distance`). Blind to a gain on the recording; it sees
                 failures in the spectral shape that a CNN trained on a few machines maps close to normal. Why not
                 a Mahalanobis distance (a full covariance) of the same features: with the few to a few dozen
                 clips a machine has, a covariance of 128 dimensions is mostly shrinkage, and on the real slide
                 rail the diagonal score ranked failures clearly better from 3 to 40 clips. The floor
                 (:data:`MELSTATS_FLOOR_DB`) keeps a band that barely moved among the references from turning a
                 fraction of a dB into a failure, and scores a machine of one or two clips.
``combined``     the larger of ``mahalanobis``, ``modulation`` and ``melstats``, those the machine has, each as a
                 robust standard score of its log: the log of the clip's score minus the median of the log scores
                 of the machine's normal reference clips, divided by 1.4826 × their median absolute deviation (those
                 clips scored fold by fold against the others, :attr:`Machine.scales`). What the model sees, how
                 the sound wobbles and the shape of its spectrum, one number: a clip far out in any view is far
                 out. Distances are skewed, so their logs are compared; a handful of reference clips may hold one
                 outlier, so median and MAD rather than mean and standard deviation; the larger rather than the
                 sum, so a view that does not see a failure does not dilute the one that does. A view that cannot
                 be fitted is left out (``modulation``: images without modulation spectra, or fewer than
                 :data:`MIN_THRESHOLD_CLIPS` clips; ``melstats``: fewer than :data:`MIN_MELSTATS_CLIPS`), and the
                 larger of fewer parts is put on the scale of the larger of all three (:func:`as_larger_of`: as
                 rare among normal clips), so machines with different parts share one pooled scale. The default.

Thresholds: per machine and scorer, the ``1 − max_fpr`` quantile of normal clips' scores, from clips that are not among
the references: the run's validation normals (fewer than ``1 / max_fpr`` of them: together with the references scored
fold by fold, so that the quantile is not one of a handful of scores), otherwise the references themselves scored fold
by fold against the others (up to :data:`THRESHOLD_FOLDS` folds by clip), which is how an enrolled machine gets its
threshold. That quantile is the machine's own only when it has at least :func:`own_threshold_clips` such scores
(:data:`MIN_THRESHOLD_CLIPS`); from fewer it is one of two scores or less, and on real machines with two or three normal
clips such thresholds flagged about half of the other normal clips. Such a machine's threshold comes from a **pooled
scale** instead: every machine with at least :data:`MIN_THRESHOLD_CLIPS` reference clips has its held-out scores put on
one scale (the log of the score minus the median of the machine's logs; ``combined``, a standard score already, minus
its median), and the pooled ``1 − max_fpr`` quantile of that is added to the machine's own median
(:meth:`References.pooled_offsets`). How far normal clips spread around their machine's centre is shared between
machines far better than the centre itself is, which each machine keeps. With fewer than ``1 / max_fpr`` pooled scores
(no machine with enough clips) the offset is :data:`DEFAULT_OFFSET`, on the conservative side. A machine with a single
clip has no other clip to score it against: its windows are scored fold by fold as clips of their own. ``combined``'s
scales are pooled alike: a machine with fewer than :func:`own_threshold_clips` clips keeps its own median per part and
takes the pooled spread (a part no machine pools is left out; with none left, no ``combined``: the machine is judged by
``mahalanobis``). A machine with fewer than :data:`MIN_THRESHOLD_CLIPS` clips has no modulation Gaussian and is marked
``few_references``; its ``combined`` is made of ``mahalanobis`` and, from two clips, ``melstats``.

Files in the run folder: ``references.npz`` (``embeddings`` float16 ``(n_windows, d)``, ``keys`` and ``clips``
per window; ``modulation`` float32 ``(n_clips, bins)`` and ``modulation_keys`` per clip, when the run's images
carry modulation spectra; ``statistics`` float32 ``(n_clips, 2 · n_mels)`` and ``statistics_keys`` per clip) and
``references.json`` (the scorers, ``k``, ``max_fpr``, the default scorer and per machine its clips, ``few_references``,
sources, thresholds and where they came from, and the scales of ``combined``, ``log_scales``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spectro.errors import SpectroError
from spectro.runs import REFERENCES_INFO, REFERENCES_NAME, save_arrays
from spectro.scoring.profile import MIN_CLIPS, Gaussian, as_larger_of_k, log, log_scales, robust_scale

SCORERS = ("knn", "mahalanobis", "id", "modulation", "melstats", "combined")
# need the clips' modulation spectra (images rendered with modulation_hz)
MODULATION_SCORERS = ("modulation",)
# need whole clips (a model's window has neither a modulation spectrum nor a clip's mel statistics)
CLIP_SCORERS = ("modulation", "melstats", "combined")
COMBINED_PARTS = ("mahalanobis", "modulation", "melstats")
# combined: the default of every run (the parts its images and clips allow, module docstring)
DEFAULT_SCORER = "combined"
# melstats: the floor added to every band statistic's standard deviation among the reference clips, in dB
MELSTATS_FLOOR_DB = 0.5
MIN_MELSTATS_CLIPS = 2  # a melstats threshold needs a held-out score: one clip against another
EMBEDDING_SCORER = "mahalanobis"
DEFAULT_K = 5
MIN_THRESHOLD_CLIPS = MIN_CLIPS
# the offset above a machine's median, on the pooled scale, when no machine has enough clips for a pooled one: a
# log distance twice the median distance; ``combined`` 3 standard units (one normal clip in 740 over it)
DEFAULT_OFFSET = {"combined": 3.0}
DEFAULT_LOG_OFFSET = float(np.log(2.0))
THRESHOLD_FOLDS = 5
_CHUNK = 2048  # query windows compared with the references at a time


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_distance(queries: np.ndarray, reference: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Mean cosine distance of each query row to its ``k`` nearest rows of ``reference`` (all of them when there
    are fewer)."""
    if len(reference) == 0:
        raise SpectroError("no reference embeddings to compare with")
    k = max(1, min(int(k), len(reference)))
    ref = _unit(reference)
    out = []
    for start in range(0, len(queries), _CHUNK):
        distance = np.maximum(1.0 - _unit(queries[start:start + _CHUNK]) @ ref.T, 0.0)  # no -0.0 from rounding
        out.append(np.partition(distance, k - 1, axis=1)[:, :k].mean(axis=1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def own_threshold_clips(max_fpr: float) -> int:  # noqa: ARG001 - the rule may come to depend on it
    """How many normal scores a machine needs for a threshold and scale of its own: :data:`MIN_THRESHOLD_CLIPS`.
    Requiring ``1 / max_fpr`` of them (so that the ``1 − max_fpr`` quantile is not simply their largest) was tried
    on the real slide rail enrolled with 3 clips and did not bring its false alarms near ``max_fpr`` (the
    modulation Gaussian of 2–3 spectra misplaces the centre, not the spread), so machines with 3 clips or more
    keep their own threshold as before and only 1–2-clip machines take the pooled scale."""
    return MIN_THRESHOLD_CLIPS


def _common(name: str, scores) -> np.ndarray:
    """Scores on the pooled scale's units: logs of distances; ``combined`` is one already."""
    return np.asarray(scores, dtype=np.float64) if name == "combined" else log(scores)


def _from_common(name: str, value: float) -> float:
    return float(value) if name == "combined" else float(np.exp(value))


def melstats_distance(queries: np.ndarray, reference: np.ndarray, floor: float = MELSTATS_FLOOR_DB) -> np.ndarray:
    """The ``melstats`` score of each row of ``queries`` against the ``reference`` rows (clips' mel statistics, in
    dB): the root mean square over the dimensions of ``(x − mean) / (std + floor)``, the reference rows' mean and
    standard deviation per dimension."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim != 2 or len(reference) == 0:
        raise SpectroError(f"melstats needs reference clips' statistics (n, d), got shape {reference.shape}")
    queries = np.asarray(queries, dtype=np.float64)
    if queries.ndim != 2 or queries.shape[1] != reference.shape[1]:
        raise SpectroError(f"expected mel statistics of {reference.shape[1]} values per clip, got shape "
                           f"{queries.shape}")
    z = (queries - reference.mean(axis=0)) / (reference.std(axis=0) + floor)
    return np.sqrt(np.mean(z * z, axis=1))


def as_larger_of(z, parts: int, of: int = len(COMBINED_PARTS)) -> np.ndarray:
    """The larger of ``parts`` standard scores ``z`` moved onto the scale of the larger of ``of``: ``x`` with
    ``Φ(x)^of = Φ(z)^parts`` (:func:`spectro.scoring.profile.as_larger_of_k` with ``k = of / parts``); the identity
    when ``parts == of``."""
    z = np.asarray(z, dtype=np.float64)
    return z if parts == of else as_larger_of_k(z, of / parts)


def combine(scores: dict[str, np.ndarray], scales: dict[str, list[float]]) -> np.ndarray | None:
    """``combined`` of clips from their ``scores`` of the parts in ``scales`` (``{part: [median, robust sd]}`` of
    its log scores, :func:`log_scales`), or ``None`` when ``scales`` is empty or a part's score is missing: the
    larger of the parts' robust standard scores, on the scale of the larger of all :data:`COMBINED_PARTS`
    (:func:`as_larger_of`)."""
    if not scales or not all(p in scores for p in scales):
        return None
    parts = [p for p in COMBINED_PARTS if p in scales]
    larger = np.max([(log(scores[p]) - scales[p][0]) / scales[p][1] for p in parts], axis=0)
    return as_larger_of(larger, len(parts))


def id_score(probs: np.ndarray, index: int) -> np.ndarray:
    """−log p of class ``index`` for each row of softmax ``probs``."""
    return -np.log(np.clip(np.asarray(probs, dtype=np.float64)[:, index], 1e-12, 1.0))


def clip_mean(window_scores: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """Mean of window scores per clip (``owners[i]``: the clip of window ``i``, ``0 … n-1``)."""
    owners = np.asarray(owners, dtype=int)
    counts = np.bincount(owners, minlength=n)
    if (counts == 0).any():
        raise SpectroError("every clip needs at least one window")
    return np.bincount(owners, weights=np.asarray(window_scores, dtype=np.float64), minlength=n) / counts


def normal_threshold(scores: np.ndarray, max_fpr: float) -> float:
    """The ``1 − max_fpr`` quantile of normal clips' scores: about ``max_fpr`` of normal clips score at or above
    it."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        raise SpectroError("no normal scores to take a threshold from")
    return float(np.quantile(scores, 1.0 - max_fpr))


@dataclass
class Machine:
    """One machine's references: its windows' embeddings, the clip of each, thresholds and where they came from."""

    key: str
    embeddings: np.ndarray  # (n_windows, d)
    clips: np.ndarray  # (n_windows,) clip number within this machine, 0 …
    class_index: int | None = None  # the model's class for the machine (the id scorer), None when not trained on
    thresholds: dict[str, float] = field(default_factory=dict)
    threshold_from: str = ""
    sources: list[str] = field(default_factory=list)
    enrolled: str = ""
    # (n_clips, bins): row i the modulation spectrum of the i-th smallest clip number; None without them
    modulation: np.ndarray | None = None
    # {scorer of COMBINED_PARTS: [median, 1.4826 × median absolute deviation]} of the logs of the normal reference
    # clips' held-out scores (:func:`log_scales`): the parts of its combined score
    scales: dict[str, list[float]] = field(default_factory=dict)
    # (n_clips, 2 · n_mels): row i the mel statistics (:func:`spectro.scoring.known.statistics`) of the i-th clip
    statistics: np.ndarray | None = None
    _gaussian: Gaussian | None = field(default=None, repr=False)
    _modulation_gaussian: Gaussian | None = field(default=None, repr=False)
    _held: dict[str, np.ndarray] | None = field(default=None, repr=False)  # held_out_scores, once

    @property
    def n_clips(self) -> int:
        return int(len(np.unique(self.clips)))

    @property
    def few_references(self) -> bool:
        """Fewer than :data:`MIN_THRESHOLD_CLIPS` reference clips: no modulation Gaussian, a pooled threshold."""
        return self.n_clips < MIN_THRESHOLD_CLIPS

    @property
    def has_modulation(self) -> bool:
        """Whether the references hold enough clips' modulation spectra for the scorers that need them."""
        return self.modulation is not None and len(self.modulation) >= MIN_THRESHOLD_CLIPS

    @property
    def has_statistics(self) -> bool:
        """Whether the references hold enough clips' mel statistics for the ``melstats`` scorer's threshold."""
        return self.statistics is not None and len(self.statistics) >= MIN_MELSTATS_CLIPS

    @property
    def scorers(self) -> tuple[str, ...]:
        parts = [s for s in SCORERS if (s != "id" or self.class_index is not None)
                 and (s != "modulation" or self.has_modulation) and (s != "melstats" or self.has_statistics)
                 and s != "combined"]
        combined = bool(self.scales) and all(p in parts for p in self.scales)
        return (*parts, "combined") if combined else tuple(parts)

    def gaussian(self) -> Gaussian:
        if self._gaussian is None:
            self._gaussian = Gaussian(self.embeddings)
        return self._gaussian

    def modulation_gaussian(self) -> Gaussian:
        if self._modulation_gaussian is None:
            self._modulation_gaussian = Gaussian(self.modulation)
        return self._modulation_gaussian

    def combine(self, scores: dict[str, np.ndarray]) -> np.ndarray | None:
        """``combined`` of clips from their ``scores`` of the parts the machine has scales for (:attr:`scales`), or
        ``None`` when it has none or a part's score is missing: the larger of the parts' robust standard scores,
        on the scale of the larger of all :data:`COMBINED_PARTS` (:func:`as_larger_of`)."""
        return combine(scores, self.scales)

    def clip_scores(self, embeddings: np.ndarray, probs: np.ndarray | None, owners: np.ndarray, n: int, *,
                    k: int, modulation: np.ndarray | None = None,
                    statistics: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every scorer's score of ``n`` clips from their windows' ``embeddings`` and the model's ``probs`` of the
        same windows (``owners``: the clip of each window, ``0 … n-1``): ``knn`` and ``mahalanobis`` of each clip's
        embedding (the mean of its windows'), ``id`` the mean over its windows; ``modulation`` of the clips'
        spectra ``(n, bins)`` and ``melstats`` of their mel statistics ``(n, 2 · n_mels)`` when both they and the
        references have them, and ``combined`` once the machine has its scales."""
        owners = np.asarray(owners, dtype=int)
        counts = np.bincount(owners, minlength=n)
        if (counts == 0).any():
            raise SpectroError("every clip needs at least one window")
        clips = np.zeros((n, embeddings.shape[1]), dtype=np.float64)
        np.add.at(clips, owners, embeddings)
        clips /= counts[:, None]
        out = {"knn": knn_distance(clips, self.embeddings, k), "mahalanobis": self.gaussian().distance(clips)}
        if self.class_index is not None and probs is not None:
            out["id"] = clip_mean(id_score(probs, self.class_index), owners, n)
        if self.modulation is not None and len(self.modulation) >= 2 and modulation is not None:
            modulation = np.asarray(modulation, dtype=np.float64)
            if modulation.shape != (n, self.modulation.shape[1]):
                raise SpectroError(f"{self.key}: expected modulation spectra of shape {(n, self.modulation.shape[1])}"
                                   f" (one per clip), got {modulation.shape}")
            out["modulation"] = self.modulation_gaussian().distance(modulation)
        if self.statistics is not None and statistics is not None:
            statistics = np.asarray(statistics, dtype=np.float64)
            if statistics.shape != (n, self.statistics.shape[1]):
                raise SpectroError(f"{self.key}: expected mel statistics of shape {(n, self.statistics.shape[1])}"
                                   f" (one row per clip), got {statistics.shape}")
            out["melstats"] = melstats_distance(statistics, self.statistics)
        combined = self.combine(out)
        if combined is not None:
            out["combined"] = combined
        return out

    def held_out_scores(self, probs: np.ndarray | None, *, k: int) -> dict[str, np.ndarray]:
        """Scores of the machine's own reference clips, each fold of clips scored against the other folds
        (``probs``: the model's probabilities of the reference windows, for the id scorer). A machine of one clip:
        its windows, each as a clip of its own (it needs two)."""
        clip_ids = np.unique(self.clips)
        if len(clip_ids) < 2:
            if len(self.clips) < 2:
                raise SpectroError(f"{self.key}: a threshold from the references needs at least 2 normal clips or "
                                   f"2 windows of one, got {len(self.clips)} window")
            return Machine(self.key, self.embeddings, np.arange(len(self.clips)), self.class_index
                           ).held_out_scores(probs, k=k)
        folds = np.arange(len(clip_ids)) % min(THRESHOLD_FOLDS, len(clip_ids))
        scores = {s: np.zeros(len(clip_ids)) for s in self.scorers if s != "combined"}
        for f in np.unique(folds):
            held = clip_ids[folds == f]
            inside = np.isin(self.clips, held)
            mod = None if self.modulation is None else self.modulation[folds != f]
            stats = None if self.statistics is None else self.statistics[folds != f]
            rest = Machine(self.key, self.embeddings[~inside], self.clips[~inside], self.class_index, modulation=mod,
                           statistics=stats)
            local = np.searchsorted(held, self.clips[inside])
            for name, value in rest.clip_scores(self.embeddings[inside], None if probs is None else probs[inside],
                                                local, len(held), k=k,
                                                modulation=None if mod is None else self.modulation[folds == f],
                                                statistics=None if stats is None else self.statistics[folds == f]
                                                ).items():
                if name in scores:
                    scores[name][folds == f] = value
        return {name: value for name, value in scores.items() if name != "id" or probs is not None}


@dataclass
class References:
    """A run's normal references, one :class:`Machine` per machine key."""

    machines: dict[str, Machine] = field(default_factory=dict)
    k: int = DEFAULT_K
    max_fpr: float = 0.05
    default_scorer: str = DEFAULT_SCORER

    def __post_init__(self) -> None:
        if self.default_scorer not in SCORERS:
            raise SpectroError(f"unknown scorer {self.default_scorer!r}: expected one of {', '.join(SCORERS)}")
        if not 0 < self.max_fpr < 1:
            raise SpectroError(f"max_fpr must be in (0, 1), got {self.max_fpr}")
        if self.k < 1:
            raise SpectroError(f"k must be >= 1, got {self.k}")

    def machine(self, key: str) -> Machine:
        try:
            return self.machines[key]
        except KeyError:
            known = ", ".join(sorted(self.machines)) or "none"
            raise SpectroError(f"machine {key!r} has no enrolled normal clips (enrolled: {known}); enroll its normal "
                               f"recordings with 'spectro enroll RUN DIR --machine {key}'") from None

    def add(self, key: str, embeddings: np.ndarray, owners: np.ndarray, *, class_index: int | None,
            source: str, modulation: np.ndarray | None = None, statistics: np.ndarray | None = None) -> Machine:
        """Add windows of normal clips (``owners``: clip number of each window, ``0 … n-1``) to machine ``key``,
        new or known, with the clips' modulation spectra ``(n, bins)`` when the images carry them and their mel
        statistics ``(n, 2 · n_mels)``; :meth:`calibrate` then sets its thresholds."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        owners = np.asarray(owners, dtype=int)
        if embeddings.ndim != 2 or len(embeddings) != len(owners) or len(owners) == 0:
            raise SpectroError(f"{key}: need one clip number per embedding row, got {embeddings.shape} and "
                               f"{owners.shape}")
        if not np.array_equal(np.unique(owners), np.arange(owners.max() + 1)):
            raise SpectroError(f"{key}: clip numbers must run from 0 without gaps")
        if modulation is not None:
            modulation = np.asarray(modulation, dtype=np.float32)
            if modulation.ndim != 2 or len(modulation) != owners.max() + 1:
                raise SpectroError(f"{key}: need one modulation spectrum per clip ({owners.max() + 1}), got shape "
                                   f"{modulation.shape}")
        if statistics is not None:
            statistics = np.asarray(statistics, dtype=np.float32)
            if statistics.ndim != 2 or len(statistics) != owners.max() + 1:
                raise SpectroError(f"{key}: need one row of mel statistics per clip ({owners.max() + 1}), got shape "
                                   f"{statistics.shape}")
        old = self.machines.get(key)
        sources, thresholds = [source], {}
        if old is not None:
            if old.embeddings.shape[1] != embeddings.shape[1]:
                raise SpectroError(f"{key}: embeddings of {embeddings.shape[1]} values do not match the "
                                   f"{old.embeddings.shape[1]} of its references")
            if (old.modulation is None) != (modulation is None) or (
                    modulation is not None and old.modulation.shape[1] != modulation.shape[1]):
                raise SpectroError(f"{key}: the new clips' modulation spectra "
                                   f"({'none' if modulation is None else modulation.shape[1]}) do not match its "
                                   f"references' ({'none' if old.modulation is None else old.modulation.shape[1]})")
            if (old.statistics is None) != (statistics is None) or (
                    statistics is not None and old.statistics.shape[1] != statistics.shape[1]):
                raise SpectroError(f"{key}: the new clips' mel statistics "
                                   f"({'none' if statistics is None else statistics.shape[1]}) do not match its "
                                   f"references' ({'none' if old.statistics is None else old.statistics.shape[1]})")
            embeddings = np.concatenate([old.embeddings, embeddings])
            owners = np.concatenate([old.clips, owners + int(old.clips.max()) + 1])
            if modulation is not None:
                modulation = np.concatenate([old.modulation, modulation])
            if statistics is not None:
                statistics = np.concatenate([old.statistics, statistics])
            sources, thresholds = [*old.sources, source], dict(old.thresholds)
            class_index = old.class_index if class_index is None else class_index
        machine = Machine(key, embeddings, owners, class_index, thresholds=thresholds, sources=sources,
                          enrolled=dt.datetime.now().isoformat(timespec="seconds"), modulation=modulation,
                          statistics=statistics)
        self.machines[key] = machine
        return machine

    def held_out(self, machine: Machine, probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``machine``'s :meth:`Machine.held_out_scores`, computed once (``probs``: for the id scorer)."""
        if machine._held is None or (probs is not None and "id" not in machine._held):
            machine._held = machine.held_out_scores(probs, k=self.k)
        return machine._held

    def pooled_offsets(self) -> dict[str, np.ndarray]:
        """Per scorer, the held-out scores of every machine with at least :data:`MIN_THRESHOLD_CLIPS` reference
        clips on one scale: each on the pooled scale's units minus its machine's median (module docstring)."""
        machines = [m for m in self.machines.values() if m.n_clips >= MIN_THRESHOLD_CLIPS]
        pooled: dict[str, list[np.ndarray]] = {}
        for machine in machines:
            for name, value in self.held_out(machine).items():
                value = _common(name, value)
                pooled.setdefault(name, []).append(value - np.median(value))
        parts = {name: np.concatenate(values) for name, values in pooled.items()}
        for machine in machines:  # combined, with the scales calibrate gives (or gave) the machine
            held = self.held_out(machine)
            value = combine(held, machine.scales or self._scales(machine, held, parts))
            if value is not None:
                pooled.setdefault("combined", []).append(value - np.median(value))
        return {name: np.concatenate(values) for name, values in pooled.items()}

    def _scales(self, machine: Machine, held: dict[str, np.ndarray],
                pooled: dict[str, np.ndarray] | None) -> dict[str, list[float]]:
        """``combined``'s scales of ``machine`` from its ``held`` out scores of the :data:`COMBINED_PARTS` it has: its
        own median per part, and its own spread when it has :func:`own_threshold_clips` clips, else the ``pooled``
        one (:meth:`pooled_offsets`); a part with neither is left out (two clips' held-out ``melstats`` scores are
        one distance twice: no spread at all)."""
        own = machine.n_clips >= own_threshold_clips(self.max_fpr)
        pooled = pooled or {}
        return {p: log_scales(held[p]) if own else [log_scales(held[p])[0], robust_scale(pooled[p])[1]]
                for p in COMBINED_PARTS if p in held and (own or p in pooled)}

    def calibrate(self, key: str, validation: dict[str, np.ndarray] | None = None,
                  probs: np.ndarray | None = None, pooled: dict[str, np.ndarray] | None = None) -> Machine:
        """Set machine ``key``'s thresholds (and ``combined``'s scales) from the normal ``validation`` clip scores
        (not among its references) when there are :func:`own_threshold_clips` of them (fewer than ``1 / max_fpr``:
        together with its references' held-out scores, when it has that many references), else from its references
        scored fold by fold when they are that many, else on the pooled scale around the median of those
        (``pooled``: :meth:`pooled_offsets`, computed here when not given). ``probs``: the model's probabilities
        of every reference window, for the id scorer; without them an id threshold set before stays."""
        machine = self.machine(key)
        need = own_threshold_clips(self.max_fpr)
        n_val = 0 if not validation else min(len(v) for v in validation.values())
        held = self.held_out(machine, probs)
        if machine.n_clips < need and n_val < need and pooled is None:
            pooled = self.pooled_offsets()
        machine.scales = self._scales(machine, held, pooled)
        folds = (f"the {machine.n_clips} reference clips, {min(THRESHOLD_FOLDS, machine.n_clips)} folds each scored "
                 "against the rest")
        if n_val >= need and (n_val >= round(1 / self.max_fpr) or machine.n_clips < need):
            scores, machine.threshold_from = dict(validation), f"{n_val} validation normal clips"
        elif n_val >= need:  # too few for a quantile of their own: with the references' held-out scores
            scores = {name: np.r_[value, held[name]] if name in held else value
                      for name, value in validation.items()}
            machine.threshold_from = f"{n_val} validation normal clips and {folds}"
        else:
            scores, machine.threshold_from = dict(held), folds
        combined = machine.combine(scores)
        if combined is not None:
            scores["combined"] = combined
        scores = {name: value for name, value in scores.items() if name in machine.scorers}
        if n_val >= need or machine.n_clips >= need:
            machine.thresholds.update({name: normal_threshold(value, self.max_fpr) for name, value in scores.items()})
            return machine
        enough = {name: len(v) >= need for name, v in (pooled or {}).items()}
        for name, value in scores.items():
            centre = float(np.median(_common(name, value)))
            offset = (normal_threshold(pooled[name], self.max_fpr) if enough.get(name)
                      else DEFAULT_OFFSET.get(name, DEFAULT_LOG_OFFSET))
            machine.thresholds[name] = _from_common(name, centre + offset)
        default = [name for name in scores if not enough.get(name)]
        how = ("a default offset" if len(default) == len(scores) else f"the pooled scale of the machines with at "
               f"least {MIN_THRESHOLD_CLIPS} clips" + (f" ({', '.join(default)}: a default offset)" if default else ""))
        machine.threshold_from = (f"its {machine.n_clips} reference clip{'s' if machine.n_clips != 1 else ''}' "
                                  f"median score and {how} (fewer than {need} clips of its own)")
        return machine

    def clip_scores(self, key: str, embeddings: np.ndarray, probs: np.ndarray | None, owners: np.ndarray,
                    n: int, modulation: np.ndarray | None = None,
                    statistics: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every scorer's score of ``n`` clips of machine ``key`` from their windows (``owners``: clip of each),
        their modulation spectra and their mel statistics."""
        return self.machine(key).clip_scores(embeddings, probs, owners, n, k=self.k, modulation=modulation,
                                             statistics=statistics)

    @property
    def model_scorer(self) -> str:
        """The default scorer's part that depends on the model: the default itself, or ``mahalanobis`` when the
        default needs whole clips (a window has no modulation spectrum or clip statistics, and they do not show
        whether the model learned)."""
        return EMBEDDING_SCORER if self.default_scorer in CLIP_SCORERS else self.default_scorer

    def scorer_for(self, key: str) -> str:
        """The scorer a clip of machine ``key`` is judged by: the default, or ``mahalanobis`` for a machine the
        default does not apply to (one without its scales, or ``modulation`` and ``melstats`` for a machine with too
        few clips of them)."""
        machine = self.machine(key)
        return self.default_scorer if self.default_scorer in machine.scorers else EMBEDDING_SCORER

    def default_scores(self, keys, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Each clip's score by the scorer its machine ``keys[i]`` is judged by (:meth:`scorer_for`), from every
        scorer's ``scores``; NaN for a machine without references."""
        out = np.full(len(keys), np.nan)
        for i, key in enumerate(keys):
            if key in self.machines:
                out[i] = scores[self.scorer_for(key)][i]
        return out

    def threshold(self, key: str, scorer: str | None = None) -> float:
        machine = self.machine(key)
        scorer = scorer or self.scorer_for(key)
        if scorer not in machine.thresholds:
            raise SpectroError(f"{key} has no {scorer} threshold (scorers for it: {', '.join(machine.thresholds)})")
        return machine.thresholds[scorer]

    def nearest(self, embeddings: np.ndarray) -> tuple[str, float]:
        """The machine whose references are nearest to these windows' mean embedding (knn distance), and that
        distance."""
        if not self.machines:
            raise SpectroError("no enrolled machines: enroll normal recordings with 'spectro enroll RUN DIR'")
        clip = np.asarray(embeddings, dtype=np.float64).mean(axis=0, keepdims=True)
        distances = {key: float(knn_distance(clip, m.embeddings, self.k)[0]) for key, m in self.machines.items()}
        key = min(distances, key=distances.get)
        return key, distances[key]

    # -- files -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"scorers": list(SCORERS), "default_scorer": self.default_scorer, "k": self.k, "max_fpr": self.max_fpr,
                "machines": {key: {"clips": m.n_clips, "few_references": m.few_references,
                                   "windows": int(len(m.clips)), "class_index": m.class_index,
                                   "thresholds": m.thresholds, "threshold_from": m.threshold_from,
                                   "sources": m.sources, "enrolled": m.enrolled, "log_scales": m.scales}
                             for key, m in sorted(self.machines.items())}}

    @property
    def embeddings(self) -> np.ndarray:
        """Every machine's reference windows together, ``(n_windows, d)``, in the order of the machine keys."""
        return np.concatenate([self.machines[k].embeddings for k in sorted(self.machines)])

    def save(self, folder: str | Path) -> None:
        """Write ``references.npz`` and ``references.json`` into ``folder`` (each atomically)."""
        folder = Path(folder)
        keys = sorted(self.machines)
        arrays = {"embeddings": self.embeddings.astype(np.float16),
                  "keys": np.concatenate([[k] * len(self.machines[k].clips) for k in keys]).astype(str),
                  "clips": np.concatenate([self.machines[k].clips for k in keys]).astype(np.int32)}
        with_modulation = [k for k in keys if self.machines[k].modulation is not None]
        if with_modulation:
            arrays["modulation"] = np.concatenate([self.machines[k].modulation for k in with_modulation])
            arrays["modulation_keys"] = np.concatenate(
                [[k] * len(self.machines[k].modulation) for k in with_modulation]).astype(str)
        with_statistics = [k for k in keys if self.machines[k].statistics is not None]
        if with_statistics:
            arrays["statistics"] = np.concatenate([self.machines[k].statistics for k in with_statistics])
            arrays["statistics_keys"] = np.concatenate(
                [[k] * len(self.machines[k].statistics) for k in with_statistics]).astype(str)
        save_arrays(folder / REFERENCES_NAME, arrays)
        tmp = folder / f".{REFERENCES_INFO}.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, folder / REFERENCES_INFO)

    @classmethod
    def load(cls, folder: str | Path) -> References:
        folder = Path(folder)
        info_path, arrays_path = folder / REFERENCES_INFO, folder / REFERENCES_NAME
        if not info_path.is_file() or not arrays_path.is_file():
            raise SpectroError(f"{folder}: no normal references ({REFERENCES_NAME} and {REFERENCES_INFO}); a run "
                               "trained with --task normal-only has them")
        try:
            info = json.loads(info_path.read_text())
            with np.load(arrays_path) as data:
                embeddings, keys, clips = data["embeddings"].astype(np.float32), data["keys"], data["clips"]
                modulation = data["modulation"] if "modulation" in data else np.zeros((0, 0), np.float32)
                modulation_keys = data["modulation_keys"] if "modulation" in data else np.zeros(0, str)
                statistics = data["statistics"] if "statistics" in data else np.zeros((0, 0), np.float32)
                statistics_keys = data["statistics_keys"] if "statistics" in data else np.zeros(0, str)
            refs = cls(k=int(info["k"]), max_fpr=float(info["max_fpr"]), default_scorer=info["default_scorer"])
            for key, meta in info["machines"].items():
                sel, mine, stats = keys == key, modulation_keys == key, statistics_keys == key
                refs.machines[key] = Machine(key, embeddings[sel], clips[sel].astype(int), meta["class_index"],
                                             thresholds={k: float(v) for k, v in meta["thresholds"].items()},
                                             threshold_from=meta["threshold_from"], sources=list(meta["sources"]),
                                             enrolled=meta["enrolled"],
                                             modulation=modulation[mine] if mine.any() else None,
                                             statistics=statistics[stats] if stats.any() else None,
                                             scales={k: [float(a), float(b)]
                                                     for k, (a, b) in meta["log_scales"].items()})
                if not sel.any():
                    raise KeyError(f"no embeddings for {key}")
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise SpectroError(f"{folder}: unreadable normal references ({type(exc).__name__}: {exc})") from None
        return refs
