"""Did the model learn anything? The check ``spectro train`` runs on the validation split before it hands a
model back.

It judges **the score users get**: a supervised run's anomaly score (its fused score where it has one), a
normal-only run's default scorer. A score that ranks abnormal clips no higher than normal ones, or gives every clip
nearly the same value, has learned nothing a user can rely on, whatever the training loss did. Small data makes
this common (tens of clips, a few optimizer steps), so it is checked, said in plain words and recorded in the
run's ``config.json`` (``training.learning``); ``evaluate``, ``report`` and ``export`` repeat the warning.

The test against chance is the one-sided Mann–Whitney U test of "abnormal scores above normal ones" (the AUC's
own test), at :data:`MAX_P_VALUE`. It needs :data:`MIN_CLIPS` clips of each class in the split: with fewer (a
normal-only run's validation split often has no abnormal clip at all) the score cannot be judged, and the check
says so (``judged`` false, :meth:`LearningCheck.warning`) and keeps the run; it never stands in another figure
(a normal-only run's machine-id accuracy says nothing of its distances). One failure needs no validation clip:
a normal-only run whose reference embeddings are all alike (:data:`MIN_EMBEDDING_SPREAD`) has distances that
are float rounding magnified (a Mahalanobis distance to references of no variance can spread widely and rank
anything), and is refused whatever they rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_SPREAD = 0.01  # anomaly scores must span at least this over the checked images
MIN_EMBEDDING_SPREAD = 1e-4  # a normal-only run's reference embeddings: spread relative to their size
MAX_P_VALUE = 0.1  # one-sided Mann–Whitney U p-value of the AUC
# normal and abnormal clips each that a split needs for its score to be judged: with 3 of each a perfect ranking
# has p = 1/20 (below MAX_P_VALUE), with 2 of each p = 1/6 could never show a ranking better than chance
MIN_CLIPS = 3

ADVICE = ("what to try: more recordings per class, more training steps (--steps), pretrained weights (--weights "
          "imagenet or --weights PATH), another window length (--window-seconds), "
          "and a look at the labels; 'spectro evaluate' shows whether the mel-statistics baseline does better")


@dataclass(frozen=True)
class LearningCheck:
    """The verdict and the figures it rests on."""

    learned: bool
    split: str
    n_images: int
    n_normal: int
    n_abnormal: int
    score_min: float
    score_max: float
    auc: float | None
    p_value: float | None
    problems: tuple[str, ...]
    judged: bool = True  # False: too few clips of a class to judge the score (the run is kept, with a warning)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = list(self.problems)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LearningCheck:
        return cls(**{**data, "problems": tuple(data.get("problems", ()))})

    def message(self) -> str:
        """One line in plain words: what is wrong, the figures, what to try."""
        return (f"the model did not learn: on the {self.n_images} {self.split} images ({self.n_normal} normal, "
                f"{self.n_abnormal} abnormal) {'; '.join(self.problems)}. {ADVICE}")

    def warning(self) -> str | None:
        """One line for a run whose score could not be judged (kept): why, and what would judge it."""
        if self.judged:
            return None
        return (f"whether the model learned was not checked: its {self.split} split has {self.n_normal} normal and "
                f"{self.n_abnormal} abnormal clips scored, and judging its anomaly score against chance needs at "
                f"least {MIN_CLIPS} of each; the run is kept. Check it with 'spectro evaluate RUN --images FOLDER' "
                "on labelled clips (normal and abnormal)")


def check_learning(rows: Sequence, scores: np.ndarray, *, split: str) -> LearningCheck:
    """Judge a supervised run by its anomaly ``scores`` of ``rows`` (ImageRow) of ``split``: the score users get
    (the fused score where the run has one, else the CNN's probability of abnormal).

    Parameters
    ----------
    rows : sequence of spectro.data.manifest.ImageRow
    scores : numpy.ndarray
        ``(n,)`` anomaly scores, higher = more abnormal.
    split : str
        The split's name, for the message.
    """
    return _judge(rows, np.asarray(scores, dtype=np.float64), split=split, spread=MIN_SPREAD,
                  spread_text=f"less than {MIN_SPREAD}")


def check_normal_only(rows: Sequence, scores: np.ndarray, *, split: str,
                      references: np.ndarray | None = None) -> LearningCheck:
    """Judge a normal-only run by its default scorer's ``scores`` of ``rows`` (distances; NaN for machines without
    references, left out): they must vary by at least :data:`MIN_SPREAD` of their median and rank abnormal clips
    above normal ones, where the split has :data:`MIN_CLIPS` of each.

    ``references`` (``(n_windows, d)``, every machine's reference embeddings together) must themselves vary by at
    least :data:`MIN_EMBEDDING_SPREAD` (:func:`embedding_spread`); when they do not, the distances measure float
    rounding and the verdict says so instead of judging them, however few the clips."""
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.flatnonzero(~np.isnan(scores))
    rows, scores = [rows[i] for i in keep], scores[keep]
    median = float(np.median(np.abs(scores))) if len(scores) else 0.0
    degenerate = None
    if references is not None and (spread := embedding_spread(references)) < MIN_EMBEDDING_SPREAD:
        degenerate = (f"its embeddings of the {len(references)} training windows are all alike (spread {spread:.1e} "
                      f"of their size, less than {MIN_EMBEDDING_SPREAD:g}), so every distance to them is float "
                      "rounding")
    return _judge(rows, scores, split=split, spread=MIN_SPREAD * max(median, 1e-12),
                  spread_text=f"less than {MIN_SPREAD:.0%} of their median", degenerate=degenerate)


def embedding_spread(embeddings: np.ndarray) -> float:
    """How much ``embeddings`` (``(n, d)``) vary, relative to their size: the root mean squared distance to
    their mean over their root mean squared norm (0 for embeddings all equal, or all zero)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) == 0:
        return 0.0
    size = float(np.sqrt(np.mean(np.sum(x * x, axis=1))))
    deviation = float(np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1))))
    return deviation / size if size > 0 else 0.0


def _judge(rows: Sequence, scores: np.ndarray, *, split: str, spread: float, spread_text: str,
           degenerate: str | None = None) -> LearningCheck:
    from scipy.stats import mannwhitneyu

    from spectro.evaluation.metrics import anomaly_auc

    y = np.array([r.is_abnormal for r in rows], dtype=bool)
    n_abnormal, n_normal = int(y.sum()), int((~y).sum())
    judged = min(n_abnormal, n_normal) >= MIN_CLIPS
    problems = [degenerate] if degenerate else []
    low, high = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 0.0)
    auc = p_value = None
    if n_abnormal and n_normal:
        auc = anomaly_auc(y, scores)  # recorded even where not judged: a figure, not a verdict
    if judged and not degenerate:
        if high - low < spread:
            problems.append(f"its anomaly scores hardly vary (from {low:.3f} to {high:.3f}, {spread_text})")
        p_value = float(mannwhitneyu(scores[y], scores[~y], alternative="greater").pvalue)
        if auc <= 0.5:
            problems.append(f"it ranks abnormal images no higher than normal ones (anomaly AUC {auc:.3f}; chance "
                            "is 0.5)")
        elif p_value > MAX_P_VALUE:
            problems.append(f"its anomaly AUC {auc:.3f} is within chance for this many images (one-sided "
                            f"Mann-Whitney p = {p_value:.2f} > {MAX_P_VALUE})")
    return LearningCheck(learned=not problems, split=split, n_images=len(rows), n_normal=n_normal,
                         n_abnormal=n_abnormal, score_min=low, score_max=high, auc=auc, p_value=p_value,
                         problems=tuple(problems),
                         judged=judged or bool(degenerate))


def stored_check(config: dict) -> LearningCheck | None:
    """The check a run's ``config.json`` records (``None`` for a run trained without it: ``check_learning``
    off)."""
    data = config.get("training", {}).get("learning")
    return LearningCheck.from_dict(data) if data else None


def warning_for(config: dict) -> str | None:
    """The one-line warning ``evaluate``, ``report`` and ``export`` show for a run that did not learn."""
    check = stored_check(config)
    if check is None or check.learned:
        return None
    return ("this run's model did not learn (it was kept with --keep-failed): " + "; ".join(check.problems)
            + f" on its {check.split} split")
