"""The label space shared by training, evaluation, classification and export.

Every spectro model has **one** softmax output over the *fine* classes ``<machine>/<label>`` (e.g.
``fan/normal``, ``fan/bearing``, ``pump/leakage``; on MIMII ``fan/abnormal``). Every task is a
grouping of those classes, and every answer is a sum of their probabilities:

* ``failure``: the groups are the fine classes themselves;
* ``anomaly``: ``normal`` vs ``abnormal`` (every label other than ``normal``);
* ``machine``: the machine type.

So whatever the task a model was trained for, it yields for each image

* an **anomaly score** = the summed probability of all abnormal fine classes, and
* a **failure type** = the most likely abnormal fine class.

``--task`` chooses the training objective (cross-entropy on the task's groups, plus a lighter
cross-entropy on the fine classes so the failure type is still learned) and the reported prediction.

``normal-only`` is the other way to use spectro (the DCASE setting): the classes are **machine keys**
``<machine>/<machine id>`` (``fan/id_00``; ``fan`` alone for a recording without an id), learnt from normal
images only. No class is abnormal: the anomaly score comes from comparing a clip's embedding with its
machine's normal references (:mod:`spectro.scoring.references`), and there is no failure type.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectro.data.layout import NORMAL_LABEL
from spectro.errors import SpectroError

NORMAL_ONLY = "normal-only"
TASKS = ("failure", "anomaly", "machine", NORMAL_ONLY)
LABELS_NAME = "labels.json"


def fine_name(machine: str, label: str) -> str:
    return f"{machine}/{label}"


def machine_key(machine: str, machine_id: str = "") -> str:
    """``<machine>/<machine id>``, or the machine alone when the recording has no id (plain layout)."""
    return f"{machine}/{machine_id}" if machine_id else machine


@dataclass(frozen=True)
class LabelSpace:
    """Fine classes and the task's grouping of them."""

    task: str
    classes: tuple[str, ...]  # fine classes, "<machine>/<label>", sorted

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise SpectroError(f"unknown task {self.task!r}: expected one of {', '.join(TASKS)}")
        if not self.classes:
            raise SpectroError("no classes: expected at least one <machine>/<label> class")
        if self.task != NORMAL_ONLY and any("/" not in c for c in self.classes):
            raise SpectroError(f"classes must read <machine>/<label>, got {list(self.classes)}")

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], task: str) -> LabelSpace:
        return cls(task=task, classes=tuple(sorted({fine_name(machine, label) for machine, label in pairs})))

    @classmethod
    def from_rows(cls, rows, task: str) -> LabelSpace:
        """The classes of image rows: ``<machine>/<label>``, or for ``normal-only`` the machine keys of the
        normal rows."""
        if task == NORMAL_ONLY:
            return cls(task=task, classes=tuple(sorted({machine_key(r.machine, r.machine_id) for r in rows
                                                        if not r.is_abnormal})))
        return cls.from_pairs([(r.machine, r.label) for r in rows], task=task)

    @property
    def normal_only(self) -> bool:
        return self.task == NORMAL_ONLY

    def class_of(self, row) -> str:
        """The class of an image row: its fine class, or for ``normal-only`` its machine key."""
        return machine_key(row.machine, row.machine_id) if self.normal_only else fine_name(row.machine, row.label)

    def row_index(self, row) -> int:
        return self._position(self.class_of(row))

    def _position(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise SpectroError(f"class {name!r} is not one the model knows: {list(self.classes)}") from None

    # -- fine classes ---------------------------------------------------------------------------
    @property
    def abnormal_mask(self) -> np.ndarray:
        if self.normal_only:
            return np.zeros(len(self.classes), dtype=bool)
        return np.array([c.split("/", 1)[1] != NORMAL_LABEL for c in self.classes])

    def index(self, machine: str, label: str) -> int:
        return self._position(fine_name(machine, label))

    # -- task groups -----------------------------------------------------------------------------
    def group_of(self, fine: str) -> str:
        if self.task in ("failure", NORMAL_ONLY):
            return fine
        machine, label = fine.split("/", 1)
        if self.task == "anomaly":
            return NORMAL_LABEL if label == NORMAL_LABEL else "abnormal"
        return machine

    @property
    def task_classes(self) -> tuple[str, ...]:
        if self.task == "anomaly":
            return (NORMAL_LABEL, "abnormal")
        return tuple(sorted({self.group_of(c) for c in self.classes}))

    @property
    def group_matrix(self) -> np.ndarray:
        """``(n_fine, n_task)`` 0/1 matrix: ``fine_probs @ group_matrix`` gives the task's probabilities."""
        groups = self.task_classes
        matrix = np.zeros((len(self.classes), len(groups)), dtype=np.float32)
        for i, fine in enumerate(self.classes):
            matrix[i, groups.index(self.group_of(fine))] = 1.0
        return matrix

    # -- answers from fine probabilities ---------------------------------------------------------
    def task_probs(self, fine_probs: np.ndarray) -> np.ndarray:
        return np.asarray(fine_probs, dtype=np.float32) @ self.group_matrix

    def predicted(self, fine_probs: np.ndarray) -> list[str]:
        """The task's predicted class for each row."""
        groups = self.task_classes
        return [groups[i] for i in self.task_probs(fine_probs).argmax(axis=-1)]

    def anomaly_score(self, fine_probs: np.ndarray) -> np.ndarray:
        """Probability of abnormal: the summed probability of all abnormal fine classes."""
        return np.clip(np.asarray(fine_probs, dtype=np.float64)[..., self.abnormal_mask].sum(axis=-1), 0.0, 1.0)

    @property
    def machine_types(self) -> list[str]:
        """The machine types the classes name (``<machine>/…``), sorted."""
        return sorted({c.split("/")[0] for c in self.classes})

    def machine_type(self, fine_probs: np.ndarray) -> list[str]:
        """The machine type each row most likely is: the largest summed probability of the type's classes
        (``<machine>/…``)."""
        types = self.machine_types
        of = np.array([types.index(c.split("/")[0]) for c in self.classes])
        mass = np.asarray(fine_probs, dtype=np.float64) @ (of[:, None] == np.arange(len(types))[None, :])
        return [types[i] for i in mass.argmax(axis=-1)]

    def failure_type(self, fine_probs: np.ndarray) -> list[str]:
        """The most likely abnormal fine class for each row ("" when the model knows no abnormal class)."""
        mask = self.abnormal_mask
        if not mask.any():
            return [""] * len(fine_probs)
        names = [c for c, m in zip(self.classes, mask) if m]
        return [names[i] for i in np.asarray(fine_probs)[..., mask].argmax(axis=-1)]

    # -- labels.json -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"task": self.task, "classes": list(self.classes), "task_classes": list(self.task_classes),
                "abnormal": [bool(x) for x in self.abnormal_mask]}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / LABELS_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LabelSpace:
        path = Path(path)
        if path.is_dir():
            path = path / LABELS_NAME
        if not path.is_file():
            raise SpectroError(f"{path}: no labels file (every spectro model has {LABELS_NAME} beside it)")
        try:
            data = json.loads(path.read_text())
            return cls(task=data["task"], classes=tuple(data["classes"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SpectroError(f"{path}: not a spectro labels file ({exc.__class__.__name__}: {exc})") from None
