"""spectro.evaluation.metrics against values computed by hand (pair counting, ROC areas written out)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from spectro.errors import SpectroError
from spectro.evaluation import metrics

# six images: three normal, three abnormal
Y6 = [0, 0, 0, 1, 1, 1]
S6 = [0.1, 0.4, 0.35, 0.8, 0.3, 0.9]


def auc_by_pairs(y, s) -> float:
    """Share of (abnormal, normal) pairs ranked right; ties count one half."""
    pos = [v for v, t in zip(s, y) if t == 1]
    neg = [v for v, t in zip(s, y) if t == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def mcclish_pauc(y, s, max_fpr) -> float:
    """sklearn's standardised partial AUC, written out: area under ROC up to max_fpr, McClish-corrected."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    stop = np.searchsorted(fpr, max_fpr, side="right")
    x = np.concatenate([fpr[:stop], [max_fpr]])
    y_interp = np.concatenate([tpr[:stop], [np.interp(max_fpr, fpr, tpr)]])
    partial = float(np.sum(np.diff(x) * (y_interp[1:] + y_interp[:-1]) / 2))
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    return 0.5 * (1 + (partial - min_area) / (max_area - min_area))


@pytest.mark.parametrize("y, s, expected", [
    (Y6, S6, 7 / 9),                                  # 0.8 and 0.9 beat all three normals, 0.3 beats one
    ([0, 1, 0, 1], [0.2, 0.2, 0.1, 0.5], 3.5 / 4),    # one tie counts 1/2
    ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),
    ([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1], 0.0),
])
def test_auc_hand_computed(y, s, expected):
    assert metrics.anomaly_auc(y, s) == pytest.approx(expected)
    assert auc_by_pairs(y, s) == pytest.approx(expected)


def test_auc_matches_pair_count_on_random_scores():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40), 1)  # rounded: plenty of ties
    assert metrics.anomaly_auc(y, s) == pytest.approx(auc_by_pairs(y, s))


def test_pauc_hand_computed():
    # ROC of S6 starts (0,0) -> (0,1/3) -> (0,2/3) -> (1/3,2/3): up to FPR 0.1 the curve sits at TPR 2/3
    partial = 0.1 * 2 / 3
    expected = 0.5 * (1 + (partial - 0.5 * 0.1**2) / (0.1 - 0.5 * 0.1**2))
    assert expected == pytest.approx(0.8245614, abs=1e-6)
    assert metrics.anomaly_pauc(Y6, S6, max_fpr=0.1) == pytest.approx(expected)


@pytest.mark.parametrize("max_fpr", [0.05, 0.1, 0.3, 0.5])
def test_pauc_matches_mcclish_definition(max_fpr):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 60)
    s = rng.random(60) + 0.3 * y
    assert metrics.anomaly_pauc(y, s, max_fpr=max_fpr) == pytest.approx(mcclish_pauc(y, s, max_fpr))


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1]])
def test_one_class_gives_none(y):
    s = np.linspace(0, 1, len(y))
    assert metrics.anomaly_auc(y, s) is None
    assert metrics.anomaly_pauc(y, s) is None


def test_rates_at_threshold():
    # flagged (>= 0.35): 0.4, 0.35 (normal) and 0.8, 0.9 (abnormal)
    r = metrics.rates_at(Y6, S6, 0.35)
    assert r == {"threshold": 0.35, "tpr": 2 / 3, "fpr": 2 / 3, "precision": 0.5, "flagged": 4}


VAL_Y = [0, 0, 0, 0, 1, 1, 1, 1]
VAL_S = [0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9]


@pytest.mark.parametrize("max_fpr, method, value, fpr, tpr", [
    (0.05, "max_fpr", 0.7, 0.0, 0.75),   # 0.6 is normal: any lower threshold lets a normal through
    (0.0, "max_fpr", 0.7, 0.0, 0.75),
    (0.25, "max_fpr", 0.5, 0.25, 1.0),   # one normal of four flagged is allowed: all abnormal caught
    (0.3, "max_fpr", 0.5, 0.25, 1.0),
    (None, "youden", 0.7, 0.0, 0.75),    # J = 0.75 at 0.7 and at 0.5: the larger threshold wins
])
def test_choose_threshold_by_hand(max_fpr, method, value, fpr, tpr):
    choice = metrics.choose_threshold(VAL_Y, VAL_S, max_fpr=max_fpr, method=method)
    assert (choice.value, choice.val_fpr, choice.val_tpr, choice.method) == (pytest.approx(value), fpr, tpr, method)


def test_youden_picks_best_j():
    # J = TPR - FPR: t=0.9 1/3, t=0.8 2/3, t=0.6 2/3-1/3, t=0.4 2/3-2/3, t=0.3 1-2/3, t=0.1 0: best 0.8
    choice = metrics.choose_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.4, 0.6, 0.9, 0.8, 0.3], method="youden")
    assert choice.value == pytest.approx(0.8)
    assert (choice.val_tpr, choice.val_fpr) == (pytest.approx(2 / 3), 0.0)


def test_threshold_above_every_score_when_no_threshold_is_quiet_enough():
    choice = metrics.choose_threshold([0, 1], [0.95, 0.5], max_fpr=0.0)
    assert choice.value > 0.95 and (choice.val_fpr, choice.val_tpr) == (0.0, 0.0)


@pytest.mark.parametrize("y, s, kwargs, match", [
    ([0, 0, 0], [0.1, 0.2, 0.3], {}, "both are needed"),
    ([1, 1], [0.1, 0.2], {}, "both are needed"),
    (VAL_Y, VAL_S, {"method": "f1"}, "unknown threshold method"),
    (VAL_Y, VAL_S, {"max_fpr": 1.5}, "max_fpr must be"),
    ([0, 1], [0.1], {}, "one score per label"),
    ([0, 2], [0.1, 0.2], {}, "must be 0"),
    ([0, 1], [0.1, float("nan")], {}, "NaN"),
])
def test_choose_threshold_rejects(y, s, kwargs, match):
    with pytest.raises(SpectroError, match=match):
        metrics.choose_threshold(y, s, **kwargs)


def test_summarize_hand_computed():
    true = ["fan/normal", "fan/normal", "fan/normal", "fan/bearing"]
    pred = ["fan/normal", "fan/normal", "fan/bearing", "fan/bearing"]
    y = [0, 0, 0, 1]
    s = [0.1, 0.2, 0.7, 0.9]
    out = metrics.summarize(true, pred, y, s, threshold=0.5)
    assert out["n"] == 4 and (out["n_normal"], out["n_abnormal"]) == (3, 1)
    assert out["accuracy"] == pytest.approx(3 / 4)
    assert out["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["report"]["fan/normal"]["precision"] == pytest.approx(1.0)
    assert out["report"]["fan/normal"]["recall"] == pytest.approx(2 / 3)
    assert out["report"]["fan/bearing"]["precision"] == pytest.approx(0.5)
    assert out["auc"] == pytest.approx(1.0)
    assert out["at_threshold"]["fpr"] == pytest.approx(1 / 3) and out["at_threshold"]["tpr"] == 1.0


def test_grouped_with_one_class_group_gives_none():
    keys = ["fan", "fan", "pump", "pump", ""]
    true = ["n", "a", "n", "n", "a"]
    pred = ["n", "a", "a", "n", "a"]
    y = [0, 1, 0, 0, 1]
    s = [0.2, 0.9, 0.6, 0.1, 0.8]
    out = metrics.grouped(keys, true, pred, y, s)
    assert sorted(out) == ["fan", "pump"]  # the empty key is skipped
    assert out["fan"]["auc"] == 1.0 and out["fan"]["accuracy"] == 1.0
    assert out["pump"]["auc"] is None and out["pump"]["pauc"] is None
    assert out["pump"]["accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("how, expected", [("mean", [0.3, 0.5, 0.9]), ("max", [0.4, 0.5, 0.9])])
def test_clip_level_by_hand(how, expected):
    sources = ["b.wav", "a.wav", "a.wav", "c.wav", "b.wav"]
    y = [1, 0, 0, 1, 1]
    s = [0.5, 0.2, 0.4, 0.9, 0.5]
    keys, labels, scores = metrics.clip_level(sources, y, s, how=how)
    assert keys == ["a.wav", "b.wav", "c.wav"]
    assert labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(scores, expected)


def test_clip_level_rejects_unknown_aggregation():
    with pytest.raises(SpectroError, match="unknown aggregation"):
        metrics.clip_level(["a"], [0], [0.1], how="median")


# -- model_metrics: every figure of a model on a set of images -------------------------------------------------
def _model_case(sources=None):
    """Six images of an anomaly-task model with hand-written probabilities (classes fan/bearing, fan/normal,
    pump/leak, pump/normal)."""
    from spectro.data.manifest import ImageRow
    from spectro.model.labels import LabelSpace

    labels = LabelSpace.from_pairs([("fan", "normal"), ("fan", "bearing"), ("pump", "normal"), ("pump", "leak")],
                                   task="anomaly")
    table = [  # machine, id, label, snr, probabilities
        ("fan", "id_00", "normal", "6dB", [0.1, 0.8, 0.05, 0.05]),    # score 0.15: right
        ("fan", "id_00", "bearing", "6dB", [0.7, 0.2, 0.05, 0.05]),   # score 0.75: right
        ("fan", "id_02", "bearing", "-6dB", [0.3, 0.6, 0.05, 0.05]),  # score 0.35: called normal, fine class wrong
        ("pump", "id_00", "normal", "6dB", [0.05, 0.05, 0.3, 0.6]),   # score 0.35: right
        ("pump", "id_00", "leak", "-6dB", [0.05, 0.05, 0.6, 0.3]),    # score 0.65: right
        ("pump", "id_04", "leak", "6dB", [0.4, 0.1, 0.3, 0.2]),       # score 0.70: right, fine and failure type wrong
    ]
    sources = sources or [f"/raw/{i}.wav" for i in range(len(table))]
    rows = [ImageRow(Path(f"/img/{m}/{label}/{i}.png"), sources[i], m, mid, label, snr, segment=0)
            for i, (m, mid, label, snr, _) in enumerate(table)]
    return rows, np.array([p for *_, p in table]), labels


OVERALL_KEYS = {"n", "n_normal", "n_abnormal", "accuracy", "balanced_accuracy", "auc", "pauc", "pauc_max_fpr",
                "report", "at_threshold", "fine_accuracy", "failure_type_accuracy"}


def test_model_metrics_by_hand():
    rows, probs, labels = _model_case()
    out = metrics.model_metrics(rows, probs, labels, threshold=0.5)
    assert set(out) == {"overall", *metrics.GROUPINGS}  # one image per recording: no "clips" block
    overall = out["overall"]
    assert set(overall) == OVERALL_KEYS
    assert (overall["n"], overall["n_normal"], overall["n_abnormal"]) == (6, 2, 4)
    assert overall["accuracy"] == pytest.approx(5 / 6)  # the task's (normal/abnormal) accuracy
    assert overall["fine_accuracy"] == pytest.approx(4 / 6)
    assert overall["failure_type_accuracy"] == pytest.approx(3 / 4)  # over the abnormal images only
    assert overall["auc"] == pytest.approx(7.5 / 8)  # 0.35 vs 0.35 is a tie
    assert overall["at_threshold"] == {"threshold": 0.5, "tpr": 0.75, "fpr": 0.0, "precision": 1.0, "flagged": 3}
    assert list(overall["report"])[:2] == ["normal", "abnormal"]
    assert sorted(out["by_machine"]) == ["fan", "pump"]
    assert out["by_machine"]["fan"]["accuracy"] == pytest.approx(2 / 3)
    assert sorted(out["by_machine_id"]) == ["fan/id_00", "fan/id_02", "pump/id_00", "pump/id_04"]
    assert out["by_machine_id"]["fan/id_02"]["n"] == 1 and out["by_machine_id"]["fan/id_02"]["auc"] is None
    assert sorted(out["by_snr"]) == ["-6dB", "6dB"]
    assert "at_threshold" not in metrics.model_metrics(rows, probs, labels)["overall"]


def test_model_metrics_scores_recordings_when_images_are_segments():
    sources = ["/raw/a.wav", "/raw/b.wav", "/raw/b.wav", "/raw/c.wav", "/raw/d.wav", "/raw/d.wav"]
    rows, probs, labels = _model_case(sources)
    clips = metrics.model_metrics(rows, probs, labels, threshold=0.5)["clips"]
    # recordings a (0.15, normal), b (mean 0.55, abnormal), c (0.35, normal), d (mean 0.675, abnormal)
    assert clips["n"] == 4 and clips["score"] == "mean over segments"
    assert clips["auc"] == pytest.approx(1.0)
    assert (clips["tpr"], clips["fpr"], clips["flagged"]) == (1.0, 0.0, 2)


def test_model_metrics_groups_only_rows_that_name_a_machine_id():
    rows, probs, labels = _model_case()
    rows[3] = replace(rows[3], machine_id="")  # a recording of the plain layout
    out = metrics.model_metrics(rows, probs, labels)
    assert out["by_machine"]["pump"]["n"] == 3
    assert sum(g["n"] for g in out["by_machine_id"].values()) == 5


def test_model_metrics_needs_one_probability_row_per_image():
    rows, probs, labels = _model_case()
    with pytest.raises(SpectroError, match="one probability row per image"):
        metrics.model_metrics(rows, probs[:5], labels)


def test_model_metrics_of_a_normal_only_run_by_hand():
    """Machine ids as classes, given anomaly scores, a threshold per image, and every scorer's figures."""
    from spectro.model.labels import LabelSpace

    rows, _, _ = _model_case()
    labels = LabelSpace.from_rows([r for r in rows if not r.is_abnormal], "normal-only")
    assert labels.classes == ("fan/id_00", "pump/id_00")
    probs = np.array([[0.9, 0.1]] * 3 + [[0.2, 0.8]] * 3)  # fan, fan, fan (fan/id_02 is unknown), pump x 3
    scores = np.array([1.0, 3.0, 2.0, 1.5, 2.5, 0.5])
    thresholds = np.array([2.0, 2.0, 2.0, 1.0, 1.0, 1.0])  # per machine: fan 2.0, pump 1.0
    other = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    out = metrics.model_metrics(rows, probs, labels, threshold=thresholds, scores=scores,
                                scorers={"main": scores, "other": other})
    overall = out["overall"]
    # abnormal rows 1, 2, 4, 5 flagged where score >= own threshold: rows 1 (3 >= 2), 2 (2 >= 2), 4 (2.5 >= 1);
    # normal rows 0 (1 < 2) and 3 (1.5 >= 1: a false alarm)
    assert overall["at_threshold"] == {"threshold": "per machine", "tpr": 0.75, "fpr": 0.5, "precision": 0.75,
                                       "flagged": 4}
    assert overall["accuracy"] == pytest.approx(4 / 6)  # machine ids: fan/id_02 and pump/id_04 are unknown to it
    assert "failure_type_accuracy" not in overall  # no class is abnormal
    assert out["by_machine"]["pump"]["at_threshold"]["fpr"] == 1.0  # thresholds follow their rows into groups
    assert out["scorers"]["other"]["overall"]["auc"] == pytest.approx(metrics.anomaly_auc(
        [r.is_abnormal for r in rows], other))
    assert out["scorers"]["main"]["by_machine_id"]["pump/id_00"]["auc"] == pytest.approx(1.0)  # 1.5 normal < 2.5


def test_a_scorer_is_judged_on_the_clips_it_applies_to():
    """A fused run's spectrum part joins some machine types only: NaN marks a clip it does not score, and the
    figures count the others (a NaN in the run's own score is still refused)."""
    rows, _, _ = _model_case()
    part = np.array([0.1, 0.9, 0.2, np.nan, np.nan, np.nan])  # the fans' scores only
    figures = metrics.score_figures(rows, [r.is_abnormal for r in rows], part)
    assert figures["overall"]["n"] == 3
    assert figures["overall"]["auc"] == pytest.approx(1.0)  # normal 0.1 below bearing 0.9 and 0.2
    assert set(figures["by_machine"]) == {"fan"}
    assert figures["by_machine_id"]["fan/id_00"]["auc"] == pytest.approx(1.0)
    nowhere = metrics.score_figures(rows, [r.is_abnormal for r in rows], np.full(6, np.nan))
    assert nowhere["overall"] == {"n": 0, "auc": None, "pauc": None} and nowhere["by_machine"] == {}
    with pytest.raises(SpectroError, match="one label and score per row"):
        metrics.score_figures(rows, [r.is_abnormal for r in rows], part[:5])
    with pytest.raises(SpectroError, match="NaN or inf"):
        metrics.anomaly_auc([r.is_abnormal for r in rows], part)
