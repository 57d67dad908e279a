"""The fine-class label space: each task's grouping, anomaly score and failure type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spectro.errors import SpectroError
from spectro.model.labels import LabelSpace

PAIRS = [("fan", "normal"), ("fan", "bearing"), ("pump", "normal"), ("pump", "leak"), ("fan", "unbalance")]
FINE = ("fan/bearing", "fan/normal", "fan/unbalance", "pump/leak", "pump/normal")


@pytest.mark.parametrize("task, groups, mapping", [
    ("failure", FINE, {c: c for c in FINE}),
    ("anomaly", ("normal", "abnormal"),
     {"fan/bearing": "abnormal", "fan/normal": "normal", "fan/unbalance": "abnormal", "pump/leak": "abnormal",
      "pump/normal": "normal"}),
    ("machine", ("fan", "pump"),
     {"fan/bearing": "fan", "fan/normal": "fan", "fan/unbalance": "fan", "pump/leak": "pump", "pump/normal": "pump"}),
])
def test_each_task_maps_fine_classes_to_its_groups(task, groups, mapping):
    labels = LabelSpace.from_pairs(PAIRS, task=task)
    assert labels.classes == FINE
    assert labels.task_classes == groups
    matrix = labels.group_matrix
    assert matrix.shape == (len(FINE), len(groups))
    np.testing.assert_array_equal(matrix.sum(axis=1), 1.0)  # every fine class in exactly one group
    for i, fine in enumerate(FINE):
        assert groups[int(matrix[i].argmax())] == mapping[fine]


def test_answers_are_sums_of_fine_probabilities():
    labels = LabelSpace.from_pairs(PAIRS, task="anomaly")
    probs = np.array([[0.1, 0.5, 0.1, 0.2, 0.1],    # fan/normal most likely, but abnormal mass 0.4
                      [0.05, 0.1, 0.05, 0.6, 0.2]])  # pump/leak
    np.testing.assert_allclose(labels.anomaly_score(probs), [0.4, 0.7])
    np.testing.assert_allclose(labels.task_probs(probs), [[0.6, 0.4], [0.3, 0.7]], rtol=1e-6)
    assert labels.predicted(probs) == ["normal", "abnormal"]
    assert labels.failure_type(probs) == ["pump/leak", "pump/leak"]
    machine = LabelSpace.from_pairs(PAIRS, task="machine")
    assert machine.predicted(probs) == ["fan", "pump"]


def test_labels_json_round_trip(tmp_path):
    labels = LabelSpace.from_pairs(PAIRS, task="machine")
    labels.save(tmp_path)
    assert LabelSpace.load(tmp_path) == labels


@pytest.mark.parametrize("task, classes", [("colour", ("fan/normal",)), ("failure", ()), ("failure", ("fan",))])
def test_bad_label_spaces_raise(task, classes):
    with pytest.raises(SpectroError):
        LabelSpace(task=task, classes=classes)


def test_normal_only_classes_are_machine_ids_of_normal_rows_and_none_is_abnormal():
    from spectro.data.manifest import ImageRow
    from spectro.model.labels import machine_key

    rows = [ImageRow(Path(f"/{i}.png"), "", m, mid, label, "") for i, (m, mid, label) in enumerate(
        [("fan", "id_00", "normal"), ("fan", "id_02", "normal"), ("fan", "id_00", "bearing"), ("pump", "", "normal"),
         ("valve", "id_04", "stuck")])]
    labels = LabelSpace.from_rows(rows, "normal-only")
    assert labels.classes == ("fan/id_00", "fan/id_02", "pump")  # valve has no normal clip: no class
    assert not labels.abnormal_mask.any() and labels.task_classes == labels.classes
    assert [labels.class_of(r) for r in rows[:4]] == ["fan/id_00", "fan/id_02", "fan/id_00", "pump"]
    assert labels.row_index(rows[2]) == 0 and machine_key("fan") == "fan"
    assert labels.anomaly_score(np.array([[0.2, 0.3, 0.5]]))[0] == 0.0 and labels.failure_type([[1, 0, 0]]) == [""]
    with pytest.raises(SpectroError, match="'valve/id_04' is not one the model knows"):
        labels.row_index(rows[4])
    assert LabelSpace.from_rows(rows, "failure").classes[0] == "fan/bearing"
