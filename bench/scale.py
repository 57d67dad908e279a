"""Training at scale: the streaming input pipeline against the in-memory path, memory against dataset size,
and one against two devices.

1. Images/s of ``spectro train``'s streaming ``tf.data`` pipeline (PNG decoding and batch augmentation in the
   graph) against the in-memory path spectro used before it (every image decoded into one array, each
   epoch augmented with numpy and handed to ``fit`` as an array), same model, same images, same run,
   epochs timed whole (input preparation included), the first epoch of each left out.
2. Peak resident memory of a process that trains one epoch on 5,000 and on 50,000 images (hard links to
   the synthetic set's PNGs, so the disk holds them once), tiny model so the epoch is short.
3. The default dataset trained with ``--devices 1`` and ``--devices 2`` (the CPU split into two logical
   devices: this shows that the distributed path is correct, not that it is faster on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from bench.data import synthetic_images

TITLE = "Training at scale (spectro train: streaming pipeline, memory, devices)"


def _throughput(ctx, images: Path, epochs: int) -> list[str]:
    """Images/s of both input paths on the default model, measured in this process."""
    import keras

    from spectro.data.manifest import read_manifest
    from spectro.features.reader import read_images
    from spectro.model.backbones import ModelSettings, build_model
    from spectro.model.labels import LabelSpace
    from spectro.model.losses import make_loss, sample_weights
    from spectro.model.windows import window_frames
    from spectro.training.augment import AugmentSettings, augment
    from spectro.training.pipeline import Examples, steps_per_epoch, training_dataset

    rows = read_manifest(images)
    labels = LabelSpace.from_pairs([(r.machine, r.label) for r in rows], task="failure")
    y = np.array([labels.index(r.machine, r.label) for r in rows])
    w = sample_weights(labels, y)
    machines = sorted({r.machine for r in rows})
    examples = Examples([str(r.path) for r in rows], y, w, np.array([machines.index(r.machine) for r in rows]),
                        np.array([not r.is_abnormal for r in rows]))
    pixels, features = read_images(rows)
    shape = pixels.shape[1:]
    window = window_frames(features, ModelSettings().window_seconds, shape[1])
    settings = AugmentSettings()

    def model():
        keras.utils.set_random_seed(0)
        m, _, _ = build_model((shape[0], window), len(labels.classes), ModelSettings(weights="none"))
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss(labels.group_matrix, fine_weight=0.0))
        return m

    rates = {}
    # in memory: numpy augmentation of the whole set per epoch, then fit on the array (spectro before streaming)
    m = model()
    rng = np.random.default_rng(0)
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        x = augment(pixels, rng=rng, settings=settings, db_per_step=features.db_per_step)
        starts = rng.integers(0, shape[1] - window + 1, size=len(x))  # one random window of each image
        x = np.stack([image[:, s:s + window] for image, s in zip(x, starts)])[..., None]
        m.fit(x, y, sample_weight=w, batch_size=32, epochs=1, shuffle=True, verbose=0)
        times.append(time.perf_counter() - start)
    rates["in memory (numpy augmentation, arrays)"] = len(rows) * epochs / sum(times[1:])
    # streaming: the pipeline spectro train uses
    m = model()
    data = training_dataset(examples, shape=shape, batch_size=32, seed=0, settings=settings,
                            db_per_step=features.db_per_step, window=window)
    steps = steps_per_epoch(len(rows), 32)
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        m.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
    rates["streaming (tf.data, PNG decoding, graph augmentation)"] = steps * 32 * epochs / sum(times[1:])
    memory, stream = rates.values()
    ratio = stream / memory
    scratch = ModelSettings(weights="none")
    lines = [f"Default model (MobileNetV2 α {scratch.width(pretrained=False)}, {scratch.image_size} px, weights none), "
             f"{len(rows)} images of {shape[0]}×{shape[1]} pixels, one random {window}-frame window of each per "
             f"epoch, batch 32, {epochs} timed epochs each (whole epochs: input preparation and training):", "",
             "| input path | images/s |", "|---|---:|"]
    lines += [f"| {name} | {rate:.1f} |" for name, rate in rates.items()]
    lines += ["", f"Streaming vs in memory: **{ratio:.2f}×** (target ≥ 0.9×: {'met' if ratio >= 0.9 else 'MISSED'})."]
    return lines


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    from spectro import quiet
    quiet.install()
    from spectro.model.backbones import ModelSettings
    from spectro.training.augment import AugmentSettings
    from spectro.training.loop import TrainSettings, train
    run = train(sys.argv[1], sys.argv[2], name="rss", progress=False,
                settings=TrainSettings(steps=int(sys.argv[3]), eval_every=int(sys.argv[3]), qat_steps=0,
                                       val_fraction=0.05, test_fraction=0.05, check_learning=False),
                model_settings=ModelSettings(weights="none", alpha=0.35, image_size=32))
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    config = json.load(open(run / "config.json"))
    print(json.dumps({"peak_kib": peak, "images": config["split"]["train"]["images"],
                      "seconds": config["training"]["seconds"]}))
""")


def _linked_folder(source: Path, dest: Path, n: int) -> Path:
    """``n`` images: hard links to the PNGs of ``source`` (cycled), with their manifest."""
    from spectro.data.manifest import read_manifest, write_manifest

    if (dest / "manifest.csv").is_file() and len(read_manifest(dest)) == n:
        return dest
    rows = read_manifest(source)
    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        path = dest / row.machine / row.label / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.link(row.path, path)
        out.append(type(row)(path, f"{row.source}#{i}", row.machine, row.machine_id, row.label, row.snr, row.segment,
                             row.settings_hash))
    write_manifest(dest / "manifest.csv", out)
    return dest


def _peak_memory(ctx, images: Path) -> list[str]:
    from spectro.training.pipeline import steps_per_epoch

    sizes = (500, 5000) if ctx.quick else (5000, 50000)
    results = {}
    for n in sizes:
        folder = _linked_folder(images, ctx.work / f"linked_{n}", n)
        models = ctx.work / f"rss_models_{n}"
        subprocess.run(["rm", "-rf", str(models)], check=True)
        one_pass = steps_per_epoch(int(0.9 * n), 32)  # each training image once, on average
        done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(folder), str(models), str(one_pass)],
                              capture_output=True,
                              text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        results[n] = json.loads(done.stdout.strip().splitlines()[-1])
    (small, a), (large, b) = results.items()
    ratio = b["peak_kib"] / a["peak_kib"]
    decoded = large * 64 * 313 / 2**20
    return ["", "Peak resident memory (VmHWM) of a process that trains one pass over its training images "
            "(MobileNetV2 α 0.35 at 32 px, weights none, no QAT) on hard-linked copies of the synthetic PNGs:", "",
            "| images | training images | peak RSS | run, s |", "|---:|---:|---:|---:|",
            *[f"| {n} | {r['images']} | {r['peak_kib'] / 1024:.0f} MiB | {r['seconds']:.0f} |" for n,
              r in results.items()],
            "", f"{large} vs {small} images: **{ratio:.2f}×** the peak memory (target ≤ 1.5×: "
            f"{'met' if ratio <= 1.5 else 'MISSED'}); decoded, the {large} images alone would take {decoded:.0f} MiB."]


def _devices(ctx, images: Path) -> list[str]:
    steps = 60 if ctx.quick else 400
    script = textwrap.dedent("""
        import json, sys
        from spectro import quiet
        quiet.install()
        from spectro.model.backbones import ModelSettings
        from spectro.training.distribute import DistributeSettings
        from spectro.training.loop import TrainSettings, train
        run = train(sys.argv[1], sys.argv[2], name="devices-" + sys.argv[3], progress=False,
                    settings=TrainSettings(steps=int(sys.argv[4]), qat_steps=0, seed=0),
                    model_settings=ModelSettings(weights="none"), distribute=DistributeSettings(devices=sys.argv[3]))
        config = json.load(open(run / "config.json"))
        print(json.dumps({"auc": config["metrics"]["test"]["overall"]["auc"], "seconds": config["training"]["seconds"],
                          "replicas": config["distribute"]["replicas"],
                          "global_batch": config["distribute"]["global_batch_size"]}))
    """)
    rows = []
    models = ctx.work / "devices_models"
    subprocess.run(["rm", "-rf", str(models)], check=True)
    results = {}
    for devices in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", script, str(images), str(models), devices, str(steps)],
                              capture_output=True, text=True, check=True)
        results[devices] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[devices]
        rows.append(f"| {devices} | {r['replicas']} | {r['global_batch']} | {r['auc']:.3f} | {r['seconds']:.0f} |")
    gap = abs(results["1"]["auc"] - results["2"]["auc"])
    return ["", f"The synthetic set trained for {steps} steps (no QAT, seed 0) on one device and on the CPU split "
            "into two logical devices (`--devices 2`: batch 32 per device, learning rate × 2):", "",
            "| --devices | replicas | global batch | test anomaly AUC | training s |", "|---:|---:|---:|---:|---:|",
            *rows, "", f"AUC difference {gap:.3f}. No GPU on this machine: GPU images/s are not measured here."]


def run(ctx) -> str:
    """Parts 1 to 3 of the module's docstring on the built-in set's images: input pipeline speed, peak memory
    against dataset size, one against two devices. Returns the section's Markdown."""
    images = synthetic_images(ctx)
    lines = _throughput(ctx, images, epochs=2 if ctx.quick else 4)
    lines += _peak_memory(ctx, images)
    lines += _devices(ctx, images)
    return "\n".join(lines)
