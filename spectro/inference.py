"""One way to run any spectro model on pixel batches: ``.keras`` through Keras, ``.tflite`` through LiteRT.

:func:`load_predictor` takes a run folder, a ``.keras`` or a ``.tflite`` file. The LiteRT path imports
``ai_edge_litert`` only — never TensorFlow — so classification on a device starts fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spectro.errors import SpectroError
from spectro.labels import LabelSpace
from spectro.runs import MODEL_NAME, TFLITE_NAME, load_config, resolve_run


class Predictor:
    """Fine-class probabilities for a batch of raw pixels ``(n, n_mels, frames)`` or ``(n, n_mels, frames, 1)``."""

    path: Path
    run: Path
    labels: LabelSpace
    config: dict
    input_shape: tuple[int, int]

    def _setup(self, path: Path, run: Path) -> None:
        self.path, self.run = path, run
        self.config = load_config(run)
        self.labels = LabelSpace.load(path.parent if (path.parent / "labels.json").is_file() else run)
        self.input_shape = tuple(self.config["input_shape"][:2])

    def _check(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels)
        if pixels.ndim == 3:
            pixels = pixels[..., None]
        if pixels.shape[1:3] != self.input_shape:
            raise SpectroError(f"image shape {pixels.shape[1:3]} does not match the model's input {self.input_shape}")
        return pixels.astype(np.float32, copy=False)

    def predict(self, pixels: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class KerasPredictor(Predictor):
    def __init__(self, path: Path, run: Path, batch_size: int = 32):
        from spectro.model import load_keras_model

        self._setup(path, run)
        self.model = load_keras_model(path)
        self.batch_size = batch_size

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        pixels = self._check(pixels)
        if len(pixels) == 0:
            return np.zeros((0, len(self.labels.classes)), dtype=np.float32)
        return np.asarray(self.model.predict(pixels, batch_size=self.batch_size, verbose=0), dtype=np.float32)


class LiteRTPredictor(Predictor):
    """A ``.tflite`` model through ``ai_edge_litert`` (quantised int8 input/output handled)."""

    def __init__(self, path: Path, run: Path, num_threads: int = 1):
        self._setup(path, run)
        raise SpectroError("TFLite inference is not implemented yet (issue 6)")

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        raise SpectroError("TFLite inference is not implemented yet (issue 6)")


def load_predictor(model: str | Path | None = None) -> Predictor:
    """A predictor for a run folder (its ``model.keras``), a ``.keras`` file or a ``.tflite`` file.

    Raises
    ------
    SpectroError
        Nothing loadable there.
    """
    path = Path(model) if model is not None else None
    if path is not None and path.suffix in (".keras", ".tflite"):
        if not path.is_file():
            raise SpectroError(f"{path}: no such model file")
        run = resolve_run(path.parent)
        return LiteRTPredictor(path, run) if path.suffix == ".tflite" else KerasPredictor(path, run)
    run = resolve_run(path)
    keras_path = run / MODEL_NAME
    if keras_path.is_file():
        return KerasPredictor(keras_path, run)
    if (run / TFLITE_NAME).is_file():
        return LiteRTPredictor(run / TFLITE_NAME, run)
    raise SpectroError(f"{run}: no {MODEL_NAME} or {TFLITE_NAME} in the run folder (train with 'spectro train')")
