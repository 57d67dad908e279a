"""Benchmark section: TFLite export — file sizes, single-thread latency, fidelity, classify start-up."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from bench.models import train_default_run

TITLE = "Edge export: size, latency, fidelity"

# Keras timings run in a fresh interpreter so TensorFlow can be pinned to one thread before it starts
_KERAS_TIMER = """
import json, sys, time, statistics
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import keras
model = keras.saving.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2]).astype("float32")
runs = int(sys.argv[3])
def median_ms(fn, n):
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)
one = x[:1]
batch = np.concatenate([x] * (32 // len(x) + 1))[:32]
print(json.dumps({
    "predict_1": median_ms(lambda: model.predict(one, verbose=0), runs),
    "call_1": median_ms(lambda: model(one, training=False), runs),
    "predict_32_per_image": median_ms(lambda: model.predict(batch, batch_size=32, verbose=0), max(3, runs // 4)) / 32,
}))
"""


def _default_backbone(ctx, x_train, x_test, runs: int) -> list[str]:
    """Size and latency only (they do not depend on training) for MobileNetV2 alpha 1.0 at 96 px."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from spectro.export.calibration import _anchor_range
    from spectro.export.tflite import convert
    from spectro.model.backbones import ModelSettings, build_model

    weights = None
    if ctx.weights_dir:
        weights = ctx.weights_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    settings = ModelSettings(alpha=1.0, image_size=96,
                             weights=str(weights) if weights is not None and weights.is_file() else "none")
    model, _, used = build_model(x_test.shape[1:3], 12, settings)
    folder = ctx.work / "export_default_backbone"
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    calibration = x_train[:50].copy()
    _anchor_range(calibration[0], image_size=settings.image_size)
    sizes, latency = {}, {}
    for mode in ("none", "int8"):
        path = folder / f"{mode}.tflite"
        path.write_bytes(convert(model, mode, calibration))
        sizes[mode] = path.stat().st_size
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
        image = x_test[:1].astype(inp["dtype"])  # pixels 0..255: exact for uint8 input with scale 1
        interpreter.set_tensor(inp["index"], image)
        interpreter.invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            interpreter.set_tensor(inp["index"], image)
            interpreter.invoke()
            times.append(time.perf_counter() - start)
        latency[mode] = 1000 * statistics.median(times)
    sample = folder / "images.npy"
    np.save(sample, x_test[:32])
    keras_ms = _keras_times(folder / "model.keras", sample, runs)
    keras_size = (folder / "model.keras").stat().st_size
    return [
        "", f"The ImageNet-weights configuration at the Makefile's image size — MobileNetV2 α 1.0, 96 px (weights "
        f"{Path(used).name}; size and latency do not depend on training, so this model is not trained; int8 "
        "calibrated on 50 training images):", "",
        "| model | file size | size vs float32 | latency / image (1 thread) | vs Keras `predict` (1 image) |",
        "|---|---:|---:|---:|---:|",
        f"| Keras `.keras`, `predict` on 1 image | {keras_size / 1e6:.2f} MB | – | {keras_ms['predict_1']:.1f} ms "
        "| 1 |",
        f"| Keras, `predict` on a batch of 32 (per image) | | | {keras_ms['predict_32_per_image']:.2f} ms | "
        f"{keras_ms['predict_32_per_image'] / keras_ms['predict_1']:.3f} |",
        f"| TFLite float32 | {sizes['none'] / 1e6:.2f} MB | 1.00 | {latency['none']:.2f} ms | "
        f"{latency['none'] / keras_ms['predict_1']:.4f} |",
        f"| TFLite int8 | {sizes['int8'] / 1e6:.2f} MB | {sizes['int8'] / sizes['none']:.2f} "
        f"({'≤' if sizes['int8'] <= sizes['none'] / 3 else '>'} 1/3) | {latency['int8']:.2f} ms | "
        f"{latency['int8'] / keras_ms['predict_1']:.4f} "
        f"({'≤' if latency['int8'] <= keras_ms['predict_1'] / 10 else '>'} 1/10) |",
    ]


def _bias_correction(ctx, default_run: Path, default_int8) -> list[str]:
    """int8 fidelity with and without bias correction, for the default run and the ImageNet-initialised one."""
    import warnings

    from spectro.errors import SpectroWarning
    from spectro.export.tflite import BOUNDS, ExportSettings, export_run
    from spectro.runs import load_config

    def int8(run: Path, corrected: bool):
        out = ctx.work / "export_bias" / f"{run.name}-{'corrected' if corrected else 'plain'}"
        shutil.rmtree(out, ignore_errors=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SpectroWarning)
            settings = ExportSettings(quantize=("int8",), bias_correction=corrected, latency_runs=1)  # not shown
            return export_run(run, settings, out=out, progress=False)[0]

    cases = [("default (weights none)", default_run, {True: default_int8, False: int8(default_run, False)})]
    pretrained = ctx.state.get("pretrained_run")
    if pretrained is not None:
        cases.append((f"ImageNet-initialised (α {load_config(pretrained)['model']['alpha']})", Path(pretrained),
                      {True: int8(Path(pretrained), True), False: int8(Path(pretrained), False)}))
    lines = ["", "int8 with and without bias correction (`spectro export --no-bias-correction`): the same "
             "conversion, with or without the biases of a copy of the model corrected for the mean shift of "
             "rounding its weights to int8 (`spectro/bias_correction.py`); test split:", "",
             "| run | bias correction | top-1 agreement | anomaly AUC Keras / int8 | AUC loss | max abs(dp) | result |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, run, results in cases:
        for corrected in (False, True):
            v, failures = results[corrected].verification, results[corrected].failures
            loss = "n/a" if v.auc_loss is None else f"{v.auc_loss:+.4f}"
            lines.append(f"| {name} `{run.name}` | {'on (default)' if corrected else 'off'} | {v.agreement:.1%} "
                         f"({round(v.agreement * v.n_images)}/{v.n_images}) | {_auc(v.keras_auc)} / "
                         f"{_auc(v.tflite_auc)} | {loss} | {v.max_prob_diff:.3f} | "
                         f"{'ok' if not failures else 'FAILED: ' + '; '.join(failures)} |")
    if pretrained is None:
        lines += ["", "(No ImageNet-initialised run: the train section found no weights in ../shared/weights, or "
                  "`--only export` was run without `--pretrained-run`.)"]
    lines += ["", f"The int8 bound is top-1 agreement ≥ {BOUNDS['int8'].min_agreement:.0%}."]
    return lines


def _keras_times(model_path: Path, sample: Path, runs: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _KERAS_TIMER, str(model_path), str(sample), str(runs)],
                          capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if done.returncode != 0:
        raise RuntimeError(f"Keras timing failed: {done.stderr[-1000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {done.stderr[-500:]}")
    return time.perf_counter() - start


def run(ctx) -> str:
    """Export the train section's run (or one trained here) to TFLite (float32, dynamic range, int8) and measure
    file size, single-thread latency against Keras, fidelity and ``spectro classify`` start-up. Returns the
    section's Markdown."""
    import numpy as np

    from spectro.errors import SpectroWarning
    from spectro.export.calibration import model_input
    from spectro.export.tflite import BOUNDS, ExportSettings, export_run, verification_rows
    from spectro.features.reader import read_images
    from spectro.model.backbones import ModelSettings
    from spectro.runs import TFLITE_NAMES, feature_settings, load_config, read_splits

    lines = []
    run_dir = ctx.state.get("synthetic_run")
    own = run_dir is None
    run_dir = Path(train_default_run(ctx) if own else run_dir)
    config = load_config(run_dir)
    if own:
        training = config["training"]
        lines.append(f"No run from the train section (e.g. `--only export`): trained one here on the synthetic "
                     f"dataset{' (quick sizes)' if ctx.quick else ''}, the default MobileNetV2 "
                     f"(α {ModelSettings().width(pretrained=False)}, "
                     f"{ModelSettings().image_size} px), weights none, {training['steps']} steps and "
                     f"{training['qat_steps']} of quantisation-aware fine-tuning.")
    model_info = config.get("model", {})
    out = ctx.work / "export" / run_dir.name
    shutil.rmtree(out, ignore_errors=True)
    runs = 20 if ctx.quick else 100

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SpectroWarning)
        results = {r.mode: r for r in export_run(run_dir, ExportSettings(quantize=("none", "dynamic", "int8"),
                                                                         latency_runs=runs), out=out, progress=False)}
    export_seconds = time.perf_counter() - started

    split, rows = verification_rows(run_dir)
    features = feature_settings(config)
    from spectro.model.windows import cut
    from spectro.runs import image_shape, input_shape

    window = input_shape(config)[1]  # the model's inputs: windows of the clips
    x = model_input(cut(read_images(rows, settings=features, shape=image_shape(config))[0], window)[0])
    sample = ctx.work / "export_bench_images.npy"
    np.save(sample, x[:32])
    keras_ms = _keras_times(run_dir / "model.keras", sample, runs)

    keras_size = (run_dir / "model.keras").stat().st_size
    v = {m: r.verification for m, r in results.items()}
    lines += [
        f"Run `{run_dir.name}`: {model_info.get('backbone', '?')} α {model_info.get('alpha', '?')}, "
        f"{model_info.get('image_size', '?')} px backbone input, windows {tuple(config['input_shape'])} of images "
        f"{tuple(config.get('image_shape', config['input_shape']))}, weights {model_info.get('weights_used', '?')}; "
        f"verification on the {split} split ({v['none'].n_images} windows of its clips, "
        f"{v['none'].auc_pairs} normal×abnormal pairs). All three conversions + verification: {export_seconds:.0f} s.",
        "",
        "Latency: median over repeated single-image calls on **one thread** — TFLite through "
        "`ai_edge_litert` (`num_threads=1`, including input quantisation); Keras in a fresh subprocess with "
        "`tf.config.threading.set_intra_op_parallelism_threads(1)` and `..._inter_op_...(1)` set before any op. "
        "Machine shared with other jobs while measured: absolute times are noisy, ratios less so.",
        "",
        "| model | file size | size vs float32 | latency / image | vs Keras `predict` (1 image) | "
        "top-1 agreement | anomaly AUC | AUC loss | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| Keras `.keras`, `predict` on 1 image | {keras_size / 1e6:.2f} MB | – | {keras_ms['predict_1']:.1f} ms "
        f"| 1 | – | "
        f"{_auc(v['none'].keras_auc)} | – | reference |",
        f"| Keras, `predict` on a batch of 32 (per image) | | | {keras_ms['predict_32_per_image']:.2f} ms | "
        f"{keras_ms['predict_32_per_image'] / keras_ms['predict_1']:.3f} | | | | |",
        f"| Keras, `model(x)` on 1 image (no `predict` overhead) | | | {keras_ms['call_1']:.1f} ms | "
        f"{keras_ms['call_1'] / keras_ms['predict_1']:.3f} | | | | |",
    ]
    float_size = v["none"].size_bytes
    for mode in ("none", "dynamic", "int8"):
        r, f = results[mode], v[mode]
        name = {"none": "float32", "dynamic": "dynamic-range", "int8": "int8 (uint8 in/out)"}[mode]
        loss = "n/a" if f.auc_loss is None else f"{f.auc_loss:+.4f}"
        verdict = "ok" if not r.failures else "FAILED: " + "; ".join(r.failures)
        lines.append(f"| TFLite {name} `{TFLITE_NAMES[mode]}` | {f.size_bytes / 1e6:.2f} MB | "
                     f"{f.size_bytes / float_size:.2f} | "
                     f"{f.latency_ms:.2f} ms | {f.latency_ms / keras_ms['predict_1']:.4f} | {f.agreement:.1%} | "
                     f"{_auc(f.tflite_auc)} | {loss} | {verdict} |")

    i8 = v["int8"]
    size_ratio = i8.size_bytes / float_size
    speed_ratio = i8.latency_ms / keras_ms["predict_1"]
    lines += ["", "Targets of issue 6:", "",
              f"- int8 top-1 agreement with Keras ≥ {BOUNDS['int8'].min_agreement:.0%}: {i8.agreement:.1%} "
              f"({round(i8.agreement * i8.n_images)}/{i8.n_images}) → "
              f"{'met' if i8.agreement >= BOUNDS['int8'].min_agreement else 'MISSED'}",
              f"- int8 file ≤ 1/3 of float32: {size_ratio:.2f} → {'met' if size_ratio <= 1 / 3 else 'MISSED'}",
              f"- int8 single-image latency ≤ 1/10 of Keras single-image `predict`: {speed_ratio:.4f} → "
              f"{'met' if speed_ratio <= 0.1 else 'MISSED'} (vs `model(x)`: {i8.latency_ms / keras_ms['call_1']:.3f})",
              "- anomaly AUC loss ≤ 0.01: "
              + ("n/a (one class in the split)" if i8.auc_loss is None else f"{i8.auc_loss:+.4f}")
              + ("" if i8.auc_loss is None
                 else f" → {'met' if i8.auc_loss <= BOUNDS['int8'].max_auc_loss else 'MISSED'}")
              + ("" if i8.auc_enforced(BOUNDS["int8"]) or i8.auc_loss is None
                 else f" (split too small to test 0.01: {i8.auc_pairs} pairs)")]

    # classify start-up: a fresh `spectro classify` on one PNG, wall time of the subprocess
    png = rows[0].path
    repeats = 1 if ctx.quick else 3
    walls = {}
    lite_mode = next(m for m in ("int8", "dynamic", "none") if results[m].path is not None)  # a file that was kept
    models = {f"`.tflite` ({lite_mode})": out / TFLITE_NAMES[lite_mode], "`.keras`": run_dir / "model.keras"}
    for label, model in models.items():
        command = [sys.executable, "-m", "spectro", "classify", png, "--model", str(model)]
        walls[label] = statistics.median(_wall(command) for _ in range(repeats))
    (lite, lite_s), (heavy, heavy_s) = walls.items()
    lines += ["", f"`spectro classify one.png --model …` start-up (subprocess wall time, median of {repeats}): "
              f"{lite} {lite_s:.2f} s, {heavy} {heavy_s:.2f} s — ratio {lite_s / heavy_s:.3f}."]
    lines += _bias_correction(ctx, run_dir, results["int8"])
    x_train = model_input(cut(read_images(read_splits(run_dir, "train")[:50], settings=features,
                                          shape=image_shape(config))[0], window)[0][:50])
    lines += _default_backbone(ctx, x_train, x, runs)
    if caught:
        lines += ["", "Warnings: " + "; ".join(str(w.message) for w in caught)]
    return "\n".join(lines)


def _auc(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
