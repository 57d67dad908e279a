"""The training objective: the task's cross-entropy on groups of the fine softmax, its accuracy, and
balanced sample weights.

The loss is the cross-entropy of the task's groups (``p_task = p_fine @ G``, see
:attr:`spectro.model.labels.LabelSpace.group_matrix`) plus, for tasks other than ``failure``, a lighter
fine-class cross-entropy so the failure type is still learned.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from spectro.model.labels import LabelSpace


def sample_weights(labels: LabelSpace, y: np.ndarray) -> np.ndarray:
    """Balanced weights for fine-class indices ``y``, mean 1.

    Every (machine, normal/abnormal) cell present gets the same total weight, shared equally among its
    fine classes: normal and abnormal count alike (MIMII has ~4× more normal clips), and so does each
    failure type within a machine.
    """
    y = np.asarray(y, dtype=int)
    counts = np.bincount(y, minlength=len(labels.classes)).astype(float)
    cell_of = [(c.split("/", 1)[0], bool(a)) for c, a in zip(labels.classes, labels.abnormal_mask)]
    present = [i for i in range(len(labels.classes)) if counts[i] > 0]
    cells = Counter(cell_of[i] for i in present)
    per_class = np.zeros(len(labels.classes))
    for i in present:
        per_class[i] = 1.0 / (len(cells) * cells[cell_of[i]] * counts[i])
    weights = per_class[y]
    return (weights / weights.mean()).astype(np.float32)


def make_loss(group_matrix: np.ndarray, *, fine_weight: float):
    """Cross-entropy on the task groups of the fine softmax, plus ``fine_weight`` × fine cross-entropy.

    ``y_true`` holds fine-class indices; with an identity ``group_matrix`` and ``fine_weight=0`` this is
    the ordinary sparse categorical cross-entropy.
    """
    from keras import ops

    matrix = np.asarray(group_matrix, dtype=np.float32)
    n_fine = matrix.shape[0]
    eps = 1e-7

    def spectro_task_loss(y_true, y_pred):
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), n_fine)
        task_true = ops.matmul(onehot, matrix)
        task_pred = ops.clip(ops.matmul(y_pred, matrix), eps, 1.0)
        loss = -ops.sum(task_true * ops.log(task_pred), axis=-1)
        if fine_weight:
            loss = loss + fine_weight * -ops.sum(onehot * ops.log(ops.clip(y_pred, eps, 1.0)), axis=-1)
        return loss

    return spectro_task_loss


def make_task_accuracy(group_matrix: np.ndarray):
    """Keras metric: accuracy of the task's groups (``argmax(p @ G)``) for fine-class targets."""
    from keras import ops

    matrix = np.asarray(group_matrix, dtype=np.float32)
    n_fine = matrix.shape[0]

    def task_accuracy(y_true, y_pred):
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), n_fine)
        truth = ops.argmax(ops.matmul(onehot, matrix), axis=-1)
        guess = ops.argmax(ops.matmul(y_pred, matrix), axis=-1)
        return ops.cast(ops.equal(truth, guess), "float32")

    return task_accuracy
