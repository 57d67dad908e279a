"""Did the model learn anything? The check ``spectro train`` runs on the validation split before it hands a
model back.

A model that gives every clip nearly the same anomaly score, or ranks abnormal clips no higher than
normal ones, has learned nothing a user can rely on, whatever its training loss did. Small data makes this
common (tens of clips, a few optimizer steps), so it is checked, said in plain words and recorded in the
run's ``config.json`` (``training.learning``); ``evaluate``, ``report`` and ``export`` repeat the warning.

The test against chance is the one-sided Mann–Whitney U test of "abnormal scores above normal ones" (the
AUC's own test), at :data:`MAX_P_VALUE`; a split too small to ever reach that level is judged by its AUC
alone. Without both normal and abnormal images the task's balanced accuracy is compared with chance. A
normal-only run is judged the same way on its default scorer's distances (:func:`check_normal_only`), its
machine-id classification standing for the task, and first by its reference embeddings: when every training
window embeds alike, the distances of clips to them are float rounding magnified (a Mahalanobis distance to
references of no variance can spread widely and rank anything), so they are not judged at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from math import comb
from typing import Any

import numpy as np

MIN_SPREAD = 0.01  # anomaly scores must span at least this over the checked images
MIN_EMBEDDING_SPREAD = 1e-4  # a normal-only run's reference embeddings: spread relative to their size
MAX_P_VALUE = 0.1  # one-sided Mann–Whitney U p-value of the AUC

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
    balanced_accuracy: float | None
    chance: float
    problems: tuple[str, ...]

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


def _best_p_value(n_abnormal: int, n_normal: int) -> float:
    """The smallest one-sided Mann–Whitney p-value a split of this size can give (every abnormal above every
    normal image): ``1 / C(n, n_abnormal)``."""
    return 1.0 / comb(n_abnormal + n_normal, n_abnormal)


def check_learning(rows: Sequence, probs: np.ndarray, labels, *, split: str) -> LearningCheck:
    """Judge a model by its fine-class probabilities ``probs`` on ``rows`` (ImageRow) of ``split``.

    Parameters
    ----------
    rows : sequence of spectro.data.manifest.ImageRow
    probs : numpy.ndarray
        ``(n, n_fine)`` probabilities.
    labels : spectro.model.labels.LabelSpace
    split : str
        The split's name, for the message.
    """
    probs = np.asarray(probs, dtype=np.float64)
    true = [labels.group_of(r.fine_class) for r in rows]
    return _judge(rows, labels.anomaly_score(probs), true, labels.predicted(probs), split=split, spread=MIN_SPREAD,
                  spread_text=f"less than {MIN_SPREAD}")


def check_normal_only(rows: Sequence, scores: np.ndarray, probs: np.ndarray, labels, *, split: str,
                      references: np.ndarray | None = None) -> LearningCheck:
    """Judge a normal-only run by its default scorer's ``scores`` of ``rows`` (distances; NaN for machines without
    references, left out) and its machine-id probabilities ``probs``: the scores must vary by at least
    :data:`MIN_SPREAD` of their median, rank abnormal clips above normal ones when the split has both, and the
    machine ids must be told apart better than chance when it holds more than one.

    ``references`` (``(n_windows, d)``, every machine's reference embeddings together) must themselves vary by at
    least :data:`MIN_EMBEDDING_SPREAD` (:func:`embedding_spread`); when they do not, the distances measure float
    rounding and the verdict says so instead of judging them."""
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.flatnonzero(~np.isnan(scores))
    rows, scores, probs = [rows[i] for i in keep], scores[keep], np.asarray(probs, dtype=np.float64)[keep]
    median = float(np.median(np.abs(scores))) if len(scores) else 0.0
    degenerate = None
    if references is not None and (spread := embedding_spread(references)) < MIN_EMBEDDING_SPREAD:
        degenerate = (f"its embeddings of the {len(references)} training windows are all alike (spread {spread:.1e} "
                      f"of their size, less than {MIN_EMBEDDING_SPREAD:g}), so every distance to them is float "
                      "rounding")
    return _judge(rows, scores, [labels.class_of(r) for r in rows], list(labels.predicted(probs)), split=split,
                  spread=MIN_SPREAD * max(median, 1e-12), spread_text=f"less than {MIN_SPREAD:.0%} of their median",
                  degenerate=degenerate)


def embedding_spread(embeddings: np.ndarray) -> float:
    """How much ``embeddings`` (``(n, d)``) vary, relative to their size: the root mean squared distance to
    their mean over their root mean squared norm (0 for embeddings all equal, or all zero)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) == 0:
        return 0.0
    size = float(np.sqrt(np.mean(np.sum(x * x, axis=1))))
    deviation = float(np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1))))
    return deviation / size if size > 0 else 0.0


def _judge(rows: Sequence, scores: np.ndarray, true: list, predicted: list, *, split: str, spread: float,
           spread_text: str, degenerate: str | None = None) -> LearningCheck:
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import balanced_accuracy_score

    from spectro.evaluation.metrics import anomaly_auc

    y = np.array([r.is_abnormal for r in rows], dtype=bool)
    n_abnormal, n_normal = int(y.sum()), int((~y).sum())
    problems = [degenerate] if degenerate else []
    low, high = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 0.0)
    if high - low < spread and not degenerate:
        problems.append(f"its anomaly scores hardly vary (from {low:.3f} to {high:.3f}, {spread_text})")
    auc = p_value = None
    if n_abnormal and n_normal:
        auc = anomaly_auc(y, scores)  # with degenerate references recorded, not judged: a ranking of float rounding
    if auc is not None and not degenerate:
        p_value = float(mannwhitneyu(scores[y], scores[~y], alternative="greater").pvalue)
        if auc <= 0.5:
            problems.append(f"it ranks abnormal images no higher than normal ones (anomaly AUC {auc:.3f}; chance "
                            "is 0.5)")
        elif p_value > MAX_P_VALUE and _best_p_value(n_abnormal, n_normal) <= MAX_P_VALUE:
            problems.append(f"its anomaly AUC {auc:.3f} is within chance for this many images (one-sided "
                            f"Mann-Whitney p = {p_value:.2f} > {MAX_P_VALUE})")
    present = sorted(set(true))
    chance = 1.0 / max(1, len(present))
    balanced = float(balanced_accuracy_score(true, predicted)) if len(present) > 1 else None
    if not (n_abnormal and n_normal) and balanced is not None and balanced <= chance:
        problems.append(f"its balanced accuracy {balanced:.3f} is no better than chance ({chance:.3f})")
    return LearningCheck(learned=not problems, split=split, n_images=len(rows), n_normal=n_normal,
                         n_abnormal=n_abnormal, score_min=low, score_max=high, auc=auc, p_value=p_value,
                         balanced_accuracy=balanced, chance=chance, problems=tuple(problems))


def stored_check(config: dict) -> LearningCheck | None:
    """The check a run's ``config.json`` records (``None`` for runs trained before it existed)."""
    data = config.get("training", {}).get("learning")
    return LearningCheck.from_dict(data) if data else None


def warning_for(config: dict) -> str | None:
    """The one-line warning ``evaluate``, ``report`` and ``export`` show for a run that did not learn."""
    check = stored_check(config)
    if check is None or check.learned:
        return None
    return ("this run's model did not learn (it was kept with --keep-failed): " + "; ".join(check.problems)
            + f" on its {check.split} split")
