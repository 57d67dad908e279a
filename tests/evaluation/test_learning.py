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
    MIN_EMBEDDING_SPREAD,
    check_learning,
    check_normal_only,
    embedding_spread,
    warning_for,
)
from spectro.model.labels import LabelSpace

LABELS = LabelSpace.from_pairs([("fan", "normal"), ("fan", "bearing")], task="failure")


def _rows(abnormal: list[bool]) -> list[ImageRow]:
    return [ImageRow(Path(f"/x/{i}.png"), f"/x/{i}.wav", "fan", "id_00", "bearing" if a else "normal", "")
            for i, a in enumerate(abnormal)]


def _probs(scores) -> np.ndarray:
    """Fine-class probabilities whose anomaly score (p of fan/bearing) is ``scores``."""
    scores = np.asarray(scores, dtype=float)
    order = list(LABELS.classes)
    out = np.zeros((len(scores), 2))
    out[:, order.index("fan/bearing")] = scores
    out[:, order.index("fan/normal")] = 1 - scores
    return out


def test_constant_scores_are_caught():
    rows = _rows([False] * 10 + [True] * 10)
    check = check_learning(rows, _probs(np.full(20, 0.499) + np.linspace(0, 0.001, 20)), LABELS, split="val")
    assert not check.learned
    assert "hardly vary" in check.message() and "0.499" in check.message()
    assert "what to try" in check.message()


def test_a_ranking_no_better_than_chance_is_caught():
    rng = np.random.default_rng(0)
    y = np.array([False] * 20 + [True] * 20)
    scores = rng.uniform(0.2, 0.8, 40)  # unrelated to the labels
    check = check_learning(_rows(list(y)), _probs(scores), LABELS, split="val")
    assert not check.learned
    assert check.p_value > MAX_P_VALUE or check.auc <= 0.5


def test_a_separating_model_passes_with_its_figures():
    y = [False] * 8 + [True] * 8
    scores = np.r_[np.linspace(0.05, 0.4, 8), np.linspace(0.6, 0.95, 8)]
    check = check_learning(_rows(y), _probs(scores), LABELS, split="val")
    assert check.learned and check.problems == ()
    assert check.auc == 1.0
    # the p-value is scipy's exact one-sided Mann-Whitney: 1 / C(16, 8) for a perfect separation
    assert check.p_value == pytest.approx(1 / 12870)
    assert (check.n_normal, check.n_abnormal, check.score_min, check.score_max) == (8, 8, 0.05, 0.95)


def test_a_split_too_small_for_the_test_is_judged_by_its_auc():
    # 2 + 2 images: even a perfect ranking has p = 1/6 > 0.1, so an AUC above 0.5 is enough
    check = check_learning(_rows([False, False, True, True]), _probs([0.1, 0.5, 0.4, 0.9]), LABELS, split="val")
    assert check.learned and check.auc == 0.75


def test_the_stored_check_gives_the_warning_of_a_failed_run():
    failed = check_learning(_rows([False, True]), _probs([0.5, 0.5]), LABELS, split="val")
    config = {"training": {"learning": json.loads(json.dumps(failed.to_dict()))}}
    assert "did not learn" in warning_for(config) and "hardly vary" in warning_for(config)
    passed = check_learning(_rows([False, True]), _probs([0.1, 0.9]), LABELS, split="val")
    assert warning_for({"training": {"learning": passed.to_dict()}}) is None
    assert warning_for({"training": {}}) is None  # runs trained before the check existed


def test_embedding_spread_against_a_hand_computed_example():
    # mean (1, 1); squared distances to it 1 + 1 -> rms 1; squared norms 0 and 4 -> rms sqrt(2)
    assert embedding_spread(np.array([[0.0, 0.0], [2.0, 2.0]])) == pytest.approx(1 / np.sqrt(2))
    assert embedding_spread(np.ones((5, 3))) == 0.0
    assert embedding_spread(np.zeros((5, 3))) == 0.0  # all zero: nothing learned, not a division by zero


NORMAL_ONLY = LabelSpace("normal-only", ("fan/id_00", "fan/id_01"))


def _normal_only_rows(abnormal: list[bool]) -> list[ImageRow]:
    return [ImageRow(Path(f"/x/{i}.png"), f"/x/{i}.wav", "fan", f"id_0{i % 2}", "abnormal" if a else "normal", "")
            for i, a in enumerate(abnormal)]


def test_normal_only_references_all_alike_are_refused_whatever_the_distances_rank():
    """Distances to references of no variance are float rounding magnified: they may spread widely and even rank
    abnormal clips first; the check must say what is wrong instead of judging them."""
    rows = _normal_only_rows([False] * 6 + [True] * 6)
    distances = np.r_[np.linspace(0.0, 0.3, 6), np.linspace(0.4, 0.9, 6)]  # a perfect ranking, by chance
    probs = np.tile([0.5, 0.5], (12, 1))
    rng = np.random.default_rng(0)
    alike = 1.0 + rng.normal(0, 1e-7, (40, 8))  # every window the same, up to float32 rounding
    check = check_normal_only(rows, distances, probs, NORMAL_ONLY, split="val", references=alike)
    assert not check.learned and check.auc == 1.0 and check.p_value is None
    assert "all alike" in check.message() and "40 training windows" in check.message()
    assert f"less than {MIN_EMBEDDING_SPREAD:g}" in check.message()
    varied = 1.0 + rng.normal(0, 0.1, (40, 8))
    check = check_normal_only(rows, distances, probs, NORMAL_ONLY, split="val", references=varied)
    assert check.learned and check.problems == ()


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
