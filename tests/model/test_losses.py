"""The training loss, task accuracy and sample weights, against values written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from spectro.model.labels import LabelSpace
from spectro.model.losses import make_loss, make_task_accuracy, sample_weights


def test_sample_weights_balance_normal_abnormal_and_failure_types():
    labels = LabelSpace.from_pairs([("fan", "normal"), ("fan", "bearing"), ("fan", "unbalance"),
                                    ("pump", "normal"), ("pump", "leak")], task="anomaly")
    counts = {"fan/bearing": 5, "fan/normal": 40, "fan/unbalance": 10, "pump/leak": 8, "pump/normal": 30}
    y = np.concatenate([np.full(n, labels.classes.index(c)) for c, n in counts.items()])
    w = sample_weights(labels, y)
    assert w.mean() == pytest.approx(1.0)
    total = {c: w[y == labels.classes.index(c)].sum() for c in counts}
    cell = total["fan/normal"]  # every (machine, normal/abnormal) cell has the same total weight ...
    assert total["pump/normal"] == pytest.approx(cell)
    assert total["pump/leak"] == pytest.approx(cell)
    assert total["fan/bearing"] + total["fan/unbalance"] == pytest.approx(cell)
    assert total["fan/bearing"] == pytest.approx(total["fan/unbalance"])  # ... shared by its failure types


@pytest.mark.parametrize("task, fine_weight", [("failure", 0.0), ("anomaly", 0.3), ("machine", 0.3)])
def test_loss_is_group_cross_entropy_plus_lighter_fine_term(task, fine_weight):
    labels = LabelSpace.from_pairs([("fan", "normal"), ("fan", "bearing"), ("pump", "normal"), ("pump", "leak")],
                                   task=task)
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=6).astype("float32")
    y = np.array([0, 1, 2, 3, 1, 2])
    got = np.asarray(make_loss(labels.group_matrix, fine_weight=fine_weight)(y, probs))
    groups = [labels.group_of(c) for c in labels.classes]
    expected = []
    for p, t in zip(probs, y):
        p_group = sum(p[i] for i in range(4) if groups[i] == groups[t])
        expected.append(-np.log(p_group) - fine_weight * np.log(p[t]))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    acc = np.asarray(make_task_accuracy(labels.group_matrix)(y, probs))
    truth = [groups[t] for t in y]
    np.testing.assert_array_equal(acc, [a == b for a, b in zip(truth, labels.predicted(probs))])
