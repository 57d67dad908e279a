"""One way to run any spectro model on pixel batches: ``.keras`` through Keras, ``.tflite`` through LiteRT.

:func:`load_predictor` takes a run folder, a ``.keras`` or a ``.tflite`` file; which file a run folder means is
one rule for every command (:func:`find_model`, :data:`spectro.runs.MODEL_RULE`). The LiteRT path imports
``ai_edge_litert`` only — never TensorFlow — so classification on a device starts fast.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from spectro.errors import SpectroError
from spectro.model.labels import LABELS_NAME, LabelSpace
from spectro.quiet import quiet_stderr
from spectro.runs import MODEL_NAME, embedding_of, fused, image_shape, input_shape, load_config, resolve_run


class Predictor:
    """Fine-class probabilities for a batch of raw pixels ``(n, n_mels, window)`` or ``(n, n_mels, window, 1)``
    (model inputs: windows of clips; :meth:`predict_clips` scores whole clips)."""

    path: Path
    run: Path
    labels: LabelSpace
    config: dict
    input_shape: tuple[int, int]  # the model's input: (n_mels, window frames)
    image_shape: tuple[int, int]  # the training images': a clip, scored by pooling over its windows
    embedding: str  # what embed gives (spectro.model.backbones.with_embeddings)

    def _setup(self, path: Path, run: Path) -> None:
        self.path, self.run = path, run
        self.config = load_config(run)
        self.embedding = embedding_of(self.config)
        self.labels = LabelSpace.load(path.parent if (path.parent / "labels.json").is_file() else run)
        self.input_shape, self.image_shape = input_shape(self.config), image_shape(self.config)

    def _check(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels)
        if pixels.ndim == 3:
            pixels = pixels[..., None]
        if pixels.shape[1:3] != self.input_shape:
            raise SpectroError(f"image shape {pixels.shape[1:3]} does not match the model's input {self.input_shape}")
        return pixels.astype(np.float32, copy=False)

    def predict(self, pixels: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_clips(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities of whole clips ``(n, n_mels, frames)``: the mean over each clip's windows
        (:func:`spectro.model.windows.predict_pooled`)."""
        from spectro.model.windows import predict_pooled

        return predict_pooled(self.predict, pixels, self.input_shape[1])

    @cached_property
    def references(self):
        """The run's normal references (:class:`spectro.scoring.references.References`), read once."""
        from spectro.scoring.references import References

        return References.load(self.run)

    @cached_property
    def known(self):
        """The run's known-machine profiles (:class:`spectro.scoring.known.KnownMachines`), read once."""
        from spectro.scoring.known import KnownMachines

        return KnownMachines.load(self.run)

    @cached_property
    def fusion(self):
        """The run's fused anomaly score (:class:`spectro.scoring.fusion.Fusion`), read once; ``None`` for a run
        scored by the CNN's probability alone (its ``config.json`` says which: :func:`spectro.runs.fused`)."""
        from spectro.scoring.fusion import Fusion

        return Fusion.load(self.run) if fused(self.config) else None

    def anomaly_parts(self, probs: np.ndarray, modulation: np.ndarray | None,
                      types=None, *, statistics: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """A supervised run's anomaly scores of clips from their pooled fine-class ``probs``, modulation spectra and
        mel ``statistics`` (:func:`spectro.scoring.known.statistics` of their pixels): ``{"score": the run's anomaly
        score, "cnn": the CNN's probability}`` and, for a fused run, its ``modulation`` and ``melstats`` parts (NaN
        where they do not apply). ``types``: each clip's machine type where known
        (:meth:`spectro.scoring.fusion.Fusion.of_probs`)."""
        cnn = self.labels.anomaly_score(probs)
        if self.fusion is None:
            return {"score": cnn, "cnn": cnn}
        if modulation is None:
            raise SpectroError(f"{self.run}: this run's anomaly score needs each clip's modulation spectrum, and the "
                               "images carry none; render them with the run's feature settings (spectro images)")
        parts = self.fusion.of_probs(self.labels, probs, modulation, types, statistics=statistics)
        return {"score": parts["fused"], "cnn": cnn, "modulation": parts["modulation"], "melstats": parts["melstats"]}

    def embed(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(n, d)`` and class probabilities ``(n, classes)`` of model inputs (windows); a model
        without an embedding output cannot give them."""
        raise SpectroError(f"{self.path}: this model gives no embeddings (only a normal-only run's model does)")

    def embed_clips(self, pixels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every window of each clip of ``pixels``: embeddings, probabilities and the clip of each window."""
        from spectro.model.windows import CHUNK_IMAGES, cut

        embeddings, probs, owners = [], [], []
        for start in range(0, len(pixels), CHUNK_IMAGES):
            windows, owner = cut(pixels[start:start + CHUNK_IMAGES], self.input_shape[1])
            e, p = self.embed(windows)
            embeddings.append(e)
            probs.append(p)
            owners.append(owner + start)
        if not embeddings:
            raise SpectroError("no images to embed")
        return np.concatenate(embeddings), np.concatenate(probs), np.concatenate(owners)


class KerasPredictor(Predictor):
    def __init__(self, path: Path, run: Path, batch_size: int = 32):
        from spectro.model.backbones import load_keras_model

        self._setup(path, run)
        self.model = load_keras_model(path)
        self.batch_size = batch_size
        self._embedders = {}  # by embedding: set .embedding to embed another way (scripts/compare_embeddings.py)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        pixels = self._check(pixels)
        if len(pixels) == 0:
            return np.zeros((0, len(self.labels.classes)), dtype=np.float32)
        # predict_on_batch skips fit-style machinery (data adapter, callbacks) that dominates small batches
        return np.concatenate([np.asarray(self.model.predict_on_batch(pixels[i:i + self.batch_size]), dtype=np.float32)
                               for i in range(0, len(pixels), self.batch_size)])

    def embed(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from spectro.model.backbones import with_embeddings

        pixels = self._check(pixels)
        if self.embedding not in self._embedders:
            self._embedders[self.embedding] = with_embeddings(self.model, self.embedding)
        embedder = self._embedders[self.embedding]
        pairs = [embedder.predict_on_batch(pixels[i:i + self.batch_size])
                 for i in range(0, len(pixels), self.batch_size)]
        return (np.concatenate([np.asarray(e, dtype=np.float32) for e, _ in pairs]),
                np.concatenate([np.asarray(p, dtype=np.float32) for _, p in pairs]))


class LiteRTPredictor(Predictor):
    """A ``.tflite`` model through ``ai_edge_litert``'s interpreter — no TensorFlow import.

    Float32, dynamic-range and full-integer models are all handled: a quantised (uint8/int8) input is
    fed ``round(pixels / scale + zero_point)`` and a quantised output is read back as
    ``(q - zero_point) * scale``. Images run one at a time (batch 1), as on a device.

    Raises
    ------
    SpectroError
        Not a loadable ``.tflite`` file, or its input/output shapes do not fit the run's config/labels.
    """

    def __init__(self, path: Path, run: Path, num_threads: int = 1):
        self._setup(path, run)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # pragma: no cover - ai-edge-litert is a dependency
            raise SpectroError("running .tflite models needs the ai-edge-litert package (pip install "
                               "ai-edge-litert)") from None
        try:
            with quiet_stderr():  # LiteRT logs "INFO: Created TensorFlow Lite XNNPACK delegate" on stderr
                self.interpreter = Interpreter(model_path=str(path), num_threads=int(num_threads))
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise SpectroError(f"{path}: not a loadable TFLite model ({reason})") from None
        self.num_threads = int(num_threads)
        self.input_detail = self.interpreter.get_input_details()[0]
        outputs = self.interpreter.get_output_details()
        self.embedding_detail = None
        if len(outputs) == 2:  # a normal-only export: (embedding, probabilities), the Keras outputs' order
            by_index = {d["index"]: d for d in outputs}
            named = self.interpreter.get_signature_runner().get_output_details()
            self.embedding_detail = by_index[named["output_0"]["index"]]
            self.output_detail = by_index[named["output_1"]["index"]]
        elif len(outputs) == 1:
            self.output_detail = outputs[0]
        else:
            raise SpectroError(f"{path}: model has {len(outputs)} outputs (expected the class probabilities, and the "
                               "embedding for a normal-only run)")
        shape = tuple(int(n) for n in self.input_detail["shape"])
        if len(shape) != 4 or shape[1:3] != self.input_shape or shape[3] != 1:
            raise SpectroError(f"{path}: model input {shape} does not fit the run's images "
                               f"(1, {self.input_shape[0]}, {self.input_shape[1]}, 1)")
        n_out = int(self.output_detail["shape"][-1])
        if n_out != len(self.labels.classes):
            raise SpectroError(f"{path}: model has {n_out} outputs but labels.json lists "
                               f"{len(self.labels.classes)} classes")
        self.input_dtype = np.dtype(self.input_detail["dtype"])
        self.input_quantization = tuple(self.input_detail["quantization"])  # (scale, zero_point)

    @property
    def quantized(self) -> bool:
        """True for integer input (a full-integer model)."""
        return self.input_dtype.kind in "ui"

    def _quantize(self, image: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return image[None].astype(self.input_dtype, copy=False)
        scale, zero_point = self.input_quantization
        info = np.iinfo(self.input_dtype)
        q = np.rint(image / scale + zero_point) if scale else np.rint(image)
        return np.clip(q, info.min, info.max).astype(self.input_dtype)[None]

    @staticmethod
    def _dequantize(output: np.ndarray, detail: dict) -> np.ndarray:
        if np.dtype(detail["dtype"]).kind not in "ui":
            return output.astype(np.float32, copy=False)
        scale, zero_point = detail["quantization"]
        return ((output.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def _run(self, pixels: np.ndarray, details: list[dict]) -> list[np.ndarray]:
        pixels = self._check(pixels)
        out = [np.zeros((len(pixels), int(d["shape"][-1])), dtype=np.float32) for d in details]
        index_in = self.input_detail["index"]
        for i, image in enumerate(pixels):
            self.interpreter.set_tensor(index_in, self._quantize(image))
            self.interpreter.invoke()
            for array, detail in zip(out, details):
                array[i] = self._dequantize(self.interpreter.get_tensor(detail["index"]), detail)[0]
        return out

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(pixels, [self.output_detail])[0]

    def embed(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.embedding_detail is None:
            return super().embed(pixels)
        embeddings, probs = self._run(pixels, [self.embedding_detail, self.output_detail])
        return embeddings, probs


def find_model(model: str | Path | None = None) -> tuple[Path, Path]:
    """The model file and its run folder for ``model``, by the one rule of :data:`spectro.runs.MODEL_RULE`: a
    ``.keras`` or ``.tflite`` file is itself; a run folder (``models/latest`` when ``None``) means its
    ``model.keras``, the model its training, evaluation, threshold and report describe, even when ``.tflite``
    files sit beside it (those are used only when named). The run's ``config.json`` and ``labels.json`` are
    checked too.

    Raises
    ------
    SpectroError
        No such file, not a run folder, a damaged ``config.json``, no ``labels.json``, or a folder without
        ``model.keras`` (the message names the ``.tflite`` files it holds, to be named instead).
    """
    path = Path(model) if model is not None else None
    if path is not None and path.suffix in (".keras", ".tflite"):
        if not path.is_file():
            raise SpectroError(f"{path}: no such model file")
        return path, resolve_run(path.parent, needs=(LABELS_NAME,))
    run = resolve_run(path, needs=(LABELS_NAME,))
    if (run / MODEL_NAME).is_file():
        return run / MODEL_NAME, run
    lite = sorted(p.name for p in run.glob("*.tflite"))
    if lite:
        raise SpectroError(f"{run}: no {MODEL_NAME} in the folder (a folder means its {MODEL_NAME}; a .tflite file is "
                           f"used only when named): name one of {', '.join(lite)}, e.g. {run / lite[0]}")
    raise SpectroError(f"{run}: no {MODEL_NAME} in the run folder; train one with 'spectro train'")


def load_predictor(model: str | Path | None = None) -> Predictor:
    """A predictor for a run folder, a ``.keras`` file or a ``.tflite`` file.

    A run folder gives its ``model.keras`` (:func:`find_model`). A ``.tflite`` file is run by
    :class:`LiteRTPredictor` without importing TensorFlow.

    Raises
    ------
    SpectroError
        Nothing loadable there.
    """
    path, run = find_model(model)
    return KerasPredictor(path, run) if path.suffix == ".keras" else LiteRTPredictor(path, run)


class ModelInfo(Predictor):
    """What a model file's run says of it (config, labels, input and image shapes) without loading the model:
    for a process that hands the model to others (``spectro serve``'s worker processes) and runs none itself."""

    def __init__(self, path: Path, run: Path):
        self._setup(path, run)


def model_info(model: str | Path | None = None) -> ModelInfo:
    """:class:`ModelInfo` of the file :func:`load_predictor` would load; no TensorFlow, no LiteRT.

    Raises
    ------
    SpectroError
        No model file there, or its run's config or labels are missing.
    """
    return ModelInfo(*find_model(model))
