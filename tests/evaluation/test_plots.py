"""Figures written as PNG files: one panel per measure for the training curves."""

from __future__ import annotations

import numpy as np
from PIL import Image

from spectro.evaluation.plots import DPI, training_curves


def test_training_curves_draw_one_panel_per_measure(tmp_path):
    history = {"loss": [1.4, 1.1, 0.9, 0.8], "val_loss": [1.3, 1.2, 1.1, 1.15], "task_accuracy": [0.3, 0.5, 0.6, 0.7],
               "val_task_accuracy": [0.25, 0.4, 0.5, 0.5], "learning_rate": [1e-3, 1e-3, 1e-4, 1e-4]}
    path = training_curves(tmp_path / "sub" / "training.png", history, phase_starts=[2], title="tiny")
    assert path == tmp_path / "sub" / "training.png"
    with Image.open(path) as image:
        assert image.size == (int(2 * 4.5 * DPI), int(3.5 * DPI))  # loss and task accuracy; the rate is no panel
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # drawn, not blank
    with Image.open(training_curves(tmp_path / "one.png", {"loss": [1.0, 0.5]})) as image:
        assert image.size == (int(4.5 * DPI), int(3.5 * DPI))
