"""spectro.evaluation.learning: a model that learned nothing is caught and said in plain words; one that learned
is not."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_tree

from spectro.data.manifest import ImageRow, read_manifest, write_manifest
from spectro.errors import SpectroError
from spectro.evaluation.learning import (
    MAX_P_VALUE,
    MIN_CLIPS,
    MIN_EMBEDDING_SPREAD,
    check_learning,
    check_normal_only,
    embedding_spread,
    warning_for,
)


def _rows(abnormal: list[bool]) -> list[ImageRow]:
    return [ImageRow(Path(f"/x/{i}.png"), f"/x/{i}.wav", "fan", "id_00", "bearing" if a else "normal", "")
            for i, a in enumerate(abnormal)]


def test_constant_scores_are_caught():
    rows = _rows([False] * 10 + [True] * 10)
    check = check_learning(rows, np.full(20, 0.499) + np.linspace(0, 0.001, 20), split="val")
    assert not check.learned and check.judged
    assert "hardly vary" in check.message() and "0.499" in check.message()
    assert "what to try" in check.message()


def test_a_ranking_no_better_than_chance_is_caught_with_its_figures():
    rng = np.random.default_rng(0)
    y = np.array([False] * 20 + [True] * 20)
    scores = rng.uniform(0.2, 0.8, 40)  # unrelated to the labels
    check = check_learning(_rows(list(y)), scores, split="val")
    assert not check.learned and check.judged
    assert check.p_value > MAX_P_VALUE or check.auc <= 0.5
    assert f"{check.auc:.3f}" in check.message() and "(20 normal, 20 abnormal)" in check.message()


def test_a_separating_model_passes_with_its_figures():
    y = [False] * 8 + [True] * 8
    scores = np.r_[np.linspace(0.05, 0.4, 8), np.linspace(0.6, 0.95, 8)]
    check = check_learning(_rows(y), scores, split="val")
    assert check.learned and check.judged and check.problems == () and check.warning() is None
    assert check.auc == 1.0
    # the p-value is scipy's exact one-sided Mann-Whitney: 1 / C(16, 8) for a perfect separation
    assert check.p_value == pytest.approx(1 / 12870)
    assert (check.n_normal, check.n_abnormal, check.score_min, check.score_max) == (8, 8, 0.05, 0.95)


def test_the_check_judges_the_score_it_is_given_on_any_scale():
    """A fused score (a log-odds, or a standard score) is judged as it is: it is what users get."""
    y = [False] * 5 + [True] * 5
    fused = np.r_[np.linspace(-6.0, -2.0, 5), np.linspace(1.0, 9.0, 5)]
    assert check_learning(_rows(y), fused, split="val").learned
    assert not check_learning(_rows(y), -fused, split="val").learned  # the same clips, ranked the wrong way


@pytest.mark.parametrize("abnormal", [[False] * 2 + [True] * 2, [False] * 12 + [True] * 2, [False] * 12, []])
def test_a_split_too_small_to_judge_keeps_the_run_with_a_warning(abnormal):
    """Fewer than MIN_CLIPS clips of either class: not judged (even by a constant or reversed score), said."""
    scores = np.r_[np.zeros(abnormal.count(False)), -np.ones(abnormal.count(True))]  # would fail if judged
    check = check_learning(_rows(abnormal), scores, split="val")
    assert check.learned and not check.judged and check.problems == () and check.p_value is None
    warning = check.warning()
    assert f"{abnormal.count(False)} normal and {abnormal.count(True)} abnormal" in warning
    assert f"at least {MIN_CLIPS} of each" in warning and "the run is kept" in warning and "\n" not in warning


def test_the_smallest_split_judged_refuses_a_chance_level_score():
    y = [False] * MIN_CLIPS + [True] * MIN_CLIPS
    check = check_learning(_rows(y), np.array([0.1, 0.5, 0.9, 0.2, 0.6, 0.8]), split="val")
    assert check.judged and not check.learned and check.auc == pytest.approx(5 / 9)
    assert "within chance" in check.message()
    assert check_learning(_rows(y), np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), split="val").learned


def test_the_stored_check_gives_the_warning_of_a_failed_run():
    y = [False] * 3 + [True] * 3
    failed = check_learning(_rows(y), np.full(6, 0.5), split="val")
    config = {"training": {"learning": json.loads(json.dumps(failed.to_dict()))}}
    assert "did not learn" in warning_for(config) and "hardly vary" in warning_for(config)
    passed = check_learning(_rows(y), np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), split="val")
    assert warning_for({"training": {"learning": passed.to_dict()}}) is None
    assert warning_for({"training": {}}) is None  # trained with the check switched off


def test_embedding_spread_against_a_hand_computed_example():
    # mean (1, 1); squared distances to it 1 + 1 -> rms 1; squared norms 0 and 4 -> rms sqrt(2)
    assert embedding_spread(np.array([[0.0, 0.0], [2.0, 2.0]])) == pytest.approx(1 / np.sqrt(2))
    assert embedding_spread(np.ones((5, 3))) == 0.0
    assert embedding_spread(np.zeros((5, 3))) == 0.0  # all zero: nothing learned, not a division by zero


def _normal_only_rows(abnormal: list[bool]) -> list[ImageRow]:
    return [ImageRow(Path(f"/x/{i}.png"), f"/x/{i}.wav", "fan", f"id_0{i % 2}", "abnormal" if a else "normal", "")
            for i, a in enumerate(abnormal)]


def test_normal_only_references_all_alike_are_refused_whatever_the_distances_rank():
    """Distances to references of no variance are float rounding magnified: they may spread widely and even rank
    abnormal clips first; the check must say what is wrong instead of judging them."""
    rows = _normal_only_rows([False] * 6 + [True] * 6)
    distances = np.r_[np.linspace(0.0, 0.3, 6), np.linspace(0.4, 0.9, 6)]  # a perfect ranking, by chance
    rng = np.random.default_rng(0)
    alike = 1.0 + rng.normal(0, 1e-7, (40, 8))  # every window the same, up to float32 rounding
    check = check_normal_only(rows, distances, split="val", references=alike)
    assert not check.learned and check.auc == 1.0 and check.p_value is None
    assert "all alike" in check.message() and "40 training windows" in check.message()
    assert f"less than {MIN_EMBEDDING_SPREAD:g}" in check.message()
    varied = 1.0 + rng.normal(0, 0.1, (40, 8))
    check = check_normal_only(rows, distances, split="val", references=varied)
    assert check.learned and check.problems == ()
    # however few the clips: no validation clip is needed to see that
    assert not check_normal_only(rows[:2], distances[:2], split="val", references=alike).learned


def test_a_normal_only_run_without_abnormal_validation_clips_is_kept_with_a_warning_not_judged_by_machine_ids():
    """Normal validation clips only (the usual normal-only split): the distances cannot be judged against chance,
    and the machine-id accuracy says nothing of them: the run is kept and says so."""
    rows = _normal_only_rows([False] * 12)
    check = check_normal_only(rows, np.linspace(1.0, 2.0, 12), split="val",
                              references=np.random.default_rng(1).normal(0, 1, (40, 8)))
    assert check.learned and not check.judged and "12 normal and 0 abnormal" in check.warning()


def test_a_normal_only_run_is_judged_by_the_scores_it_is_given_where_the_split_has_both_classes():
    rows = _normal_only_rows([False] * 4 + [True] * 4 + [False])
    scores = np.r_[np.linspace(2.0, 1.0, 4), np.linspace(0.5, 0.1, 4), np.nan]  # the failures nearest: reversed
    check = check_normal_only(rows, scores, split="val")
    assert check.judged and not check.learned and check.n_images == 8  # the clip without references left out
    assert "no higher than normal ones (anomaly AUC 0.000" in check.message()


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    """Images whose labels are shuffled across the classes: nothing to learn."""
    root = tmp_path_factory.mktemp("shuffled")
    make_image_tree(root, per_class=12)
    rows = read_manifest(root)
    labels = [(r.machine, r.label) for r in rows]
    random.Random(0).shuffle(labels)
    moved = []
    for row, (machine, label) in zip(rows, labels):
        path = root / "shuffled" / machine / label / f"{len(moved):03d}_{row.path.name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        row.path.rename(path)
        moved.append(ImageRow(path, row.source, machine, row.machine_id, label, row.snr, row.segment,
                              row.settings_hash))
    write_manifest(root / "manifest.csv", moved)
    return root


def _train(images, out, **kwargs):
    from spectro.model.backbones import ModelSettings
    from spectro.training.loop import TrainSettings, train

    return train(images, out, name="shuffled", progress=False,
                 settings=TrainSettings(steps=9, eval_every=3, qat_steps=0, batch_size=8, seed=0, val_fraction=0.3),
                 model_settings=ModelSettings(alpha=0.35, image_size=32, weights="none"), **kwargs)


@pytest.mark.slow
def test_training_on_shuffled_labels_is_refused_and_the_run_removed(shuffled, tmp_path):
    with pytest.raises(SpectroError, match="the model did not learn") as caught:
        _train(shuffled, tmp_path)
    assert "\n" not in str(caught.value) and "what to try" in str(caught.value)
    assert "removed (--keep-failed keeps it" in str(caught.value)
    assert not (tmp_path / "shuffled").exists() and not (tmp_path / "latest").exists()


@pytest.mark.slow
def test_keep_failed_keeps_the_run_with_the_check_recorded_and_evaluate_warns(shuffled, tmp_path):
    from spectro.evaluation.evaluate import evaluate_run
    from spectro.runs import load_config

    with pytest.raises(SpectroError, match="kept in"):
        _train(shuffled, tmp_path, keep_failed=True)
    run = tmp_path / "shuffled"
    learning = load_config(run)["training"]["learning"]
    assert learning["learned"] is False and learning["split"] == "val" and learning["problems"]
    assert not (tmp_path / "latest").exists()  # a failed run never becomes the latest
    with pytest.warns(UserWarning, match="did not learn"):
        result = evaluate_run(run)
    assert "did not learn" in result["learning_warning"]
