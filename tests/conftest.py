"""Shared fixtures and helpers: small signals, a small image tree, and a small hand-built run folder.

Test modules in the subfolders import the helpers with ``from conftest import ...`` (pytest puts this
folder on ``sys.path`` when it loads this file).

``tiny_run`` builds a run folder exactly as the run-folder contract in ``spectro/runs.py`` describes (this
format's ``config.json``, and the known-machine profiles every run holds),
without going through ``spectro train``, so the downstream stages (evaluate, classify, export) are
tested on their own. It trains a real (tiny) Keras model for a few epochs on clearly separable
images, so its predictions are meaningful.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(__file__).resolve().parents[2] / "shared"
MIMII_SAMPLE = SHARED / "mimii-sample"
WEIGHTS_DIR = SHARED / "weights"

SR = 16000


def tone_signal(kind: str, seconds: float = 1.0, *, seed: int = 0, sr: int = SR) -> np.ndarray:
    """A small machine-like test signal: a hum in noise; ``bearing`` adds 3 kHz clicks, ``leak`` hiss."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.05 * rng.standard_normal(len(t)) + 0.2 * np.sin(2 * np.pi * (120 + 5 * seed % 7) * t)
    if kind == "bearing":
        clicks = np.zeros_like(t)
        clicks[:: sr // 25] = 1.0
        burst = np.sin(2 * np.pi * 3000 * np.arange(80) / sr) * np.hanning(80)
        y = y + 0.6 * np.convolve(clicks, burst, mode="same")
    elif kind == "leak":
        hiss = rng.standard_normal(len(t))
        spectrum = np.fft.rfft(hiss)
        freqs = np.fft.rfftfreq(len(t), 1 / sr)
        spectrum[(freqs < 4000) | (freqs > 6000)] = 0
        y = y + 0.3 * np.fft.irfft(spectrum, len(t)) / np.std(np.fft.irfft(spectrum, len(t)))
    return np.clip(y, -1, 1).astype(np.float32)


def write_wav(path: Path, y: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, sr, subtype=subtype)
    return path


def librosa_db(y: np.ndarray, s) -> np.ndarray:
    """The log-mel reference: librosa's own mel spectrogram in dB re 1.0, no top_db clamp."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=s.sr, n_fft=s.n_fft, hop_length=s.hop_length, n_mels=s.n_mels,
                                         power=s.power, fmin=s.fmin, fmax=s.fmax)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


def make_image_tree(root: Path, *, per_class: int = 8, seconds: float = 1.0, settings=None):
    """Render a tiny two-machine dataset to ``root`` (PNGs + manifest.csv) with spectro's own functions.

    Returns the list of :class:`spectro.data.manifest.ImageRow` (absolute paths), as ``read_manifest`` gives them.
    """
    from spectro.data.manifest import ImageRow, write_manifest
    from spectro.features.logmel import db_to_pixels, log_mel
    from spectro.features.png import write_png
    from spectro.features.render import modulation_of
    from spectro.features.settings import FeatureSettings

    settings = settings or FeatureSettings(n_mels=32, n_fft=512, hop_length=256)
    rows = []
    classes = [("fan", "normal"), ("fan", "bearing"), ("pump", "normal"), ("pump", "leak")]
    for machine, label in classes:
        for i in range(per_class):
            seed = 1000 * classes.index((machine, label)) + i
            y = tone_signal(label, seconds, seed=seed)
            if machine == "pump":
                y = np.clip(y + 0.1 * np.sin(2 * np.pi * 60 * np.arange(len(y)) / SR), -1, 1).astype(np.float32)
            machine_id = f"id_0{i % 2}"
            name = f"6dB_{machine_id}_{i:08d}"
            rel = f"{machine}/{label}/{name}.png"
            source = f"/virtual/6_dB_{machine}/{machine}/{machine_id}/{label}/{i:08d}.wav"
            write_png(root / rel, db_to_pixels(log_mel(y, settings), settings), settings=settings, source=source,
                      modulation=modulation_of(y, settings))
            rows.append(ImageRow(path=root / rel, source=source, machine=machine, machine_id=machine_id, label=label,
                                 snr="6dB", segment=0, settings_hash=settings.hash()))
    write_manifest(root / "manifest.csv", rows)
    return rows


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_images")
    make_image_tree(root)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_images, tmp_path_factory) -> Path:
    """A run folder per the contract in spectro/runs.py, trained by hand (not by spectro train)."""
    import keras

    from spectro.data.manifest import read_manifest
    from spectro.features.png import read_info, read_pixels
    from spectro.model.backbones import ModelSettings, build_model
    from spectro.model.labels import LabelSpace
    from spectro.runs import FORMAT, KNOWN_NAME, MODEL_NAME, save_config, write_splits

    keras.utils.set_random_seed(0)
    run = tmp_path_factory.mktemp("runs") / "tiny"
    run.mkdir()
    rows = read_manifest(tiny_images)
    labels = LabelSpace.from_pairs([(r.machine, r.label) for r in rows], task="failure")
    x = np.stack([read_pixels(r.path) for r in rows])[..., None].astype("float32")
    y = np.array([labels.index(r.machine, r.label) for r in rows])
    # every 4th image of each class is test, the next val, the rest train
    split = ["test" if i % 4 == 0 else "val" if i % 4 == 1 else "train" for i in range(len(rows))]
    settings = ModelSettings(alpha=0.35, image_size=32, weights="none")
    model, base, used = build_model(x.shape[1:3], len(labels.classes), settings)
    for layer in base.layers:  # MobileNet's BatchNorm momentum 0.999 needs ~1000s of steps; this run has ~30
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    train = np.array([s == "train" for s in split])
    model.fit(x[train], y[train], epochs=20, batch_size=8, verbose=0)
    # re-estimate the BatchNorm moving statistics on the training images (forward passes in training mode),
    # so inference-mode predictions depend on the image: test AUC about 0.8 rather than a constant score
    for _ in range(30):
        model(x[train], training=True)
    model.save(run / MODEL_NAME)
    labels.save(run)
    features = read_info(rows[0].path).settings
    save_config(run, {
        "format": FORMAT, "features": features.to_dict(), "input_shape": list(x.shape[1:3]),
        "image_shape": list(x.shape[1:3]), "task": labels.task,
        "model": {"backbone": settings.backbone, "alpha": settings.alpha, "image_size": settings.image_size,
                  "embedding": settings.embedding, "weights_requested": settings.weights, "weights_used": used},
        "seed": 0, "images": str(tiny_images), "scorer_files": [KNOWN_NAME],
    })
    write_splits(run, [r.with_split(s) for r, s in zip(rows, split)])
    fit_known_machines(run, [r for r, s in zip(rows, split) if s == "train"], x[train, ..., 0], features)
    return run


def fit_known_machines(run: Path, rows, pixels: np.ndarray, features) -> None:
    """The known-machine profiles every run holds, of its training clips, as ``spectro train`` fits them."""
    from spectro.model.labels import machine_key
    from spectro.scoring.known import KnownMachines, statistics

    KnownMachines.fit([machine_key(r.machine, r.machine_id) for r in rows], statistics(pixels, features)).save(run)


WINDOW = 32  # frames: 0.5 s of the tiny images (1 + 8000 // 256), which are 63 frames wide


@pytest.fixture(scope="session")
def tiny_window_run(tiny_images, tmp_path_factory) -> Path:
    """A run folder whose model takes 0.5 s windows of the 1 s tiny images, trained by hand on every window
    of the training images (not by spectro train); split as ``tiny_run``."""
    import keras

    from spectro.data.manifest import read_manifest
    from spectro.features.png import read_info, read_pixels
    from spectro.model.backbones import ModelSettings, build_model
    from spectro.model.labels import LabelSpace
    from spectro.model.windows import cut
    from spectro.runs import FORMAT, KNOWN_NAME, MODEL_NAME, save_config, write_splits

    keras.utils.set_random_seed(0)
    run = tmp_path_factory.mktemp("runs") / "tiny_window"
    run.mkdir()
    rows = read_manifest(tiny_images)
    labels = LabelSpace.from_pairs([(r.machine, r.label) for r in rows], task="failure")
    images = np.stack([read_pixels(r.path) for r in rows])
    y = np.array([labels.index(r.machine, r.label) for r in rows])
    split = ["test" if i % 4 == 0 else "val" if i % 4 == 1 else "train" for i in range(len(rows))]
    train = np.flatnonzero([s == "train" for s in split])
    windows, owners = cut(images[train], WINDOW)
    settings = ModelSettings(alpha=0.35, image_size=32, weights="none", window_seconds=0.5)
    model, base, used = build_model((images.shape[1], WINDOW), len(labels.classes), settings)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    x = windows[..., None].astype("float32")
    model.fit(x, y[train][owners], epochs=10, batch_size=16, verbose=0)
    for _ in range(30):
        model(x, training=True)
    model.save(run / MODEL_NAME)
    labels.save(run)
    features = read_info(rows[0].path).settings
    save_config(run, {
        "format": FORMAT, "features": features.to_dict(), "input_shape": [images.shape[1], WINDOW],
        "image_shape": list(images.shape[1:3]), "task": labels.task, "scorer_files": [KNOWN_NAME],
        "model": {"backbone": settings.backbone, "alpha": settings.alpha, "image_size": settings.image_size,
                  "window_seconds": 0.5, "window_frames": WINDOW, "embedding": settings.embedding,
                  "weights_requested": settings.weights,
                  "weights_used": used},
        "seed": 0, "images": str(tiny_images),
    })
    write_splits(run, [r.with_split(s) for r, s in zip(rows, split)])
    fit_known_machines(run, [rows[i] for i in train], images[train], features)
    return run


@pytest.fixture(scope="session")
def tiny_exports(tiny_run, tmp_path_factory) -> dict:
    """A copy of ``tiny_run`` exported by ``spectro export`` in all three modes (verified).

    Returns ``{"run": Path of the copy, "results": {mode: ExportResult}, "files": {mode: Path}}``. Tests may
    add files to the copy but never to ``tiny_run`` itself.
    """
    import shutil
    import warnings

    from spectro.errors import SpectroWarning
    from spectro.export.tflite import ExportSettings, export_run

    run = tmp_path_factory.mktemp("exported") / "tiny"
    shutil.copytree(tiny_run, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectroWarning)  # the tiny test split is too small for the AUC bound
        results = {r.mode: r for r in export_run(run, ExportSettings(quantize=("none", "dynamic", "int8"),
                                                                     latency_runs=5), progress=False)}
    files = {mode: r.path for mode, r in results.items()}
    if results["int8"].path is None:
        # int8 of this tiny model misses its top-1 agreement bound (one flip in 8 test images), so the export
        # refused it — tests check that decision against the figures. Tests that need a quantised file get
        # the same conversion written unverified.
        from spectro.export.calibration import representative_images
        from spectro.export.tflite import convert
        from spectro.model.backbones import load_keras_model
        from spectro.runs import TFLITE_NAMES, load_config

        config = load_config(run)
        images = representative_images(run, 200, input_shape=tuple(config["input_shape"]),
                                       image_size=config["model"]["image_size"], seed=0)
        files["int8"] = run / TFLITE_NAMES["int8"]
        files["int8"].write_bytes(convert(load_keras_model(run / "model.keras"), "int8", images))
    return {"run": run, "results": results, "files": files}


def raw_tflite_probs(path, x: np.ndarray) -> np.ndarray:
    """Run a .tflite file with the bare LiteRT interpreter, (de)quantising by hand (not spectro's predictor)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    probs = []
    for image in x:
        value = image[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            value = np.clip(np.round(value / scale + zero), 0, 255).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        probs.append(y)
    return np.array(probs)


def split_pixels(run: Path, split: str = "test") -> tuple[list, np.ndarray]:
    """The rows of one split of a run and their pixels ``(n, n_mels, frames)`` uint8, read with Pillow."""
    from PIL import Image

    from spectro.runs import read_splits

    rows = read_splits(run, split)
    return rows, np.stack([np.asarray(Image.open(r.path), dtype=np.uint8) for r in rows])
