"""spectro train: splits, weights, loss, augmentation, errors, and one tiny end-to-end run."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from spectro.augment import (AugmentSettings, apply_gain, augment, bin_noise, mix_background, random_gain,
                             spec_augment, time_shift)
from spectro.cli import main as cli_main
from spectro.config import FeatureSettings
from spectro.dataset import ManifestRow, read_manifest, write_manifest
from spectro.errors import SpectroError
from spectro.labels import LabelSpace
from spectro.train import TrainSettings, _BestKeeper, _split_counts, cosine_rate, epoch_images, sample_weights, split_rows

from conftest import make_image_tree

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--alpha", "0.35", "--image-size", "32", "--weights", "none", "--no-progress"]


def rows_with_segments(per_stratum=10, segments=3, ids=("id_00", "id_02")):
    rows = []
    for machine, label in [("fan", "normal"), ("fan", "bearing"), ("valve", "normal"), ("valve", "leakage")]:
        for i in range(per_stratum):
            machine_id = ids[i % len(ids)]
            source = f"/data/{machine}/{machine_id}/{label}/{i:08d}.wav"
            for s in range(segments):
                rows.append(ManifestRow(image=f"{machine}/{label}/{machine_id}_{i}_s{s}.png", source=source,
                                        machine=machine, machine_id=machine_id, label=label, snr="6dB", segment=s,
                                        settings_hash="abc"))
    return rows


# -- splitting --------------------------------------------------------------------------------------
def test_segments_of_one_recording_stay_together_and_strata_are_cut_alike():
    rows = rows_with_segments()
    splits = split_rows(rows, seed=3, val_fraction=0.2, test_fraction=0.2)
    by_source = defaultdict(set)
    for row, split in zip(rows, splits):
        by_source[row.source].add(split)
    assert all(len(s) == 1 for s in by_source.values())
    per_stratum = Counter((r.machine, r.label, s) for r, s in zip(rows, splits) if r.segment == 0)
    for machine, label in {(r.machine, r.label) for r in rows}:
        assert [per_stratum[(machine, label, s)] for s in ("train", "val", "test")] == [6, 2, 2]


def test_split_is_seeded():
    rows = rows_with_segments()
    assert split_rows(rows, seed=1) == split_rows(rows, seed=1)
    assert split_rows(rows, seed=1) != split_rows(rows, seed=2)


@pytest.mark.parametrize("test_ids, held", [
    (("id_02",), lambda r: r.machine_id == "id_02"),
    (("fan/id_02",), lambda r: r.machine == "fan" and r.machine_id == "id_02"),
    (("id_00", "valve/id_02"), lambda r: r.machine_id == "id_00" or (r.machine, r.machine_id) == ("valve", "id_02")),
])
def test_test_ids_hold_whole_machines_out(test_ids, held):
    rows = rows_with_segments()
    splits = split_rows(rows, seed=0, test_ids=test_ids)
    assert [s == "test" for s in splits] == [held(r) for r in rows]
    assert {"train", "val"} <= set(splits)


@pytest.mark.parametrize("test_ids, message", [(("id_09",), "match no image"),
                                               (("id_00", "id_02"), "nothing left to train")])
def test_bad_test_ids_raise(test_ids, message):
    with pytest.raises(SpectroError, match=message):
        split_rows(rows_with_segments(), test_ids=test_ids)


@pytest.mark.parametrize("n, expected", [(1, (0, 0)), (2, (1, 0)), (3, (1, 1)), (10, (2, 2)), (20, (3, 3)),
                                         (100, (15, 15))])
def test_tiny_strata_keep_training_clips(n, expected):
    assert _split_counts(n, 0.15, 0.15) == expected


# -- weights and loss -------------------------------------------------------------------------------
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
    from spectro.train import make_loss, make_task_accuracy

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


# -- augmentation -----------------------------------------------------------------------------------
def _batch(n=4, rows=16, cols=50, seed=0):
    return np.random.default_rng(seed).integers(60, 200, size=(n, rows, cols)).astype(np.uint8)


def test_augment_off_changes_nothing_and_keeps_shape():
    x = _batch()
    out = augment(x, rng=np.random.default_rng(0), settings=AugmentSettings.off(), db_per_step=100 / 255)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, x)


def test_time_shift_is_a_roll_along_time_only():
    x = _batch()
    out = time_shift(x, rng=np.random.default_rng(1), max_fraction=0.5)
    for a, b in zip(x, out):
        shifts = [k for k in range(x.shape[-1]) if np.array_equal(np.roll(a, k, axis=-1), b)]
        assert shifts, "each image is its input rolled in time (never flipped)"


def test_spec_augment_masks_bands_to_the_image_mean():
    x = _batch(n=8)
    out = spec_augment(x, rng=np.random.default_rng(2), time_masks=1, time_mask_width=0.2, freq_masks=1,
                       freq_mask_width=0.25)
    for a, b in zip(x, out):
        fill = a.astype(np.float32).mean()
        masked_cols = np.flatnonzero(np.all(b == fill, axis=0))
        masked_rows = np.flatnonzero(np.all(b == fill, axis=1))
        assert 1 <= len(masked_cols) <= 10 and np.all(np.diff(masked_cols) == 1)
        assert 1 <= len(masked_rows) <= 4 and np.all(np.diff(masked_rows) == 1)
        keep = np.ones_like(b, bool)
        keep[masked_rows, :] = False
        keep[:, masked_cols] = False
        np.testing.assert_array_equal(b[keep], a[keep])


def test_random_gain_shifts_each_image_by_a_constant_within_the_range():
    x = _batch(n=16)
    step = 100 / 255
    out = random_gain(x, rng=np.random.default_rng(3), gain_db=6.0, db_per_step=step)
    delta = (out - x.astype(np.float32)).reshape(len(x), -1)
    np.testing.assert_allclose(delta, delta[:, :1] * np.ones_like(delta), atol=1e-4)  # constant per image
    gains_db = delta[:, 0] * step
    assert np.all(np.abs(gains_db) <= 6.0 + 1e-4) and gains_db.std() > 1.0
    clipped = random_gain(np.full((1, 2, 2), 250, np.uint8), rng=np.random.default_rng(0), gain_db=50, db_per_step=step)
    assert clipped.min() >= 0 and clipped.max() <= 255


def test_apply_gain_moves_each_image_by_its_own_gain_in_db_and_clips():
    step = 100 / 255
    x = np.array([[[10, 254]], [[10, 254]], [[3, 128]]], dtype=np.uint8)
    out = apply_gain(x, np.array([3 * step, -2 * step, -5 * step]), db_per_step=step)
    np.testing.assert_allclose(out, [[[13, 255]], [[8, 252]], [[0, 123]]], atol=1e-4)
    assert out.dtype == np.float32


def test_bin_noise_has_the_asked_spread_in_db_and_stays_in_range():
    rng = np.random.default_rng(0)
    x = np.full((4, 64, 300), 128.0, np.float32)
    db_per_step = 100 / 255
    noisy = bin_noise(x, rng=rng, noise_db=0.5, db_per_step=db_per_step)
    assert abs(float(np.std(noisy - x)) * db_per_step - 0.5) < 0.01
    assert abs(float(np.mean(noisy - x))) < 0.05
    edge = bin_noise(np.zeros((2, 8, 8), np.float32), rng=rng, noise_db=3.0, db_per_step=db_per_step)
    assert edge.min() == 0.0 and edge.max() > 0  # clipped at the scale's floor
    np.testing.assert_array_equal(bin_noise(x, rng=rng, noise_db=0.0, db_per_step=db_per_step), x)


def test_mixing_a_copy_at_zero_db_adds_three_db():
    x = _batch(n=2).astype(np.float32)
    step = 100 / 255
    out = mix_background(x, x, level_db=np.zeros(2), db_per_step=step)
    np.testing.assert_allclose(out, x + 10 * np.log10(2) / step, rtol=1e-5)
    quiet = mix_background(x, x, level_db=np.full(2, -60.0), db_per_step=step)
    np.testing.assert_allclose(quiet, x, atol=0.01)


@pytest.mark.parametrize("kwargs", [dict(time_shift=1.5), dict(gain_db=-1), dict(mix_db=(0, -10)),
                                    dict(time_masks=-1), dict(noise_db=-0.1)])
def test_bad_augment_settings_raise(kwargs):
    with pytest.raises(SpectroError, match="augmentation"):
        AugmentSettings(**kwargs)


# -- the training loop's pieces ----------------------------------------------------------------------
def test_cosine_rate_falls_from_the_rate_to_its_floor_along_a_half_cosine():
    rates = [cosine_rate(1e-3, step, 11, floor=0.02) for step in range(11)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(2e-5)
    assert rates[5] == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5))  # the middle: cos(pi/2) = 0
    assert rates[2] == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * 0.2))))
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert cosine_rate(1e-3, 0, 1) == 1e-3  # a one-epoch phase keeps its rate


def test_epoch_images_are_the_augmented_training_set_in_chunks():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (10, 16, 40)).astype(np.uint8)
    same = epoch_images(pixels, rng=rng, augment_settings=AugmentSettings.off(), db_per_step=100 / 255, chunk=3)
    assert same.shape == (10, 16, 40, 1) and same.dtype == np.float32
    np.testing.assert_array_equal(same[..., 0], pixels)
    settings = AugmentSettings(mix_probability=0.0)
    a = epoch_images(pixels, rng=np.random.default_rng(5), augment_settings=settings, db_per_step=100 / 255, chunk=4)
    b = epoch_images(pixels, rng=np.random.default_rng(5), augment_settings=settings, db_per_step=100 / 255, chunk=4)
    np.testing.assert_array_equal(a, b)  # seeded
    assert not np.array_equal(a[..., 0], pixels) and a.min() >= 0 and a.max() <= 255


def test_negative_qat_epochs_are_refused():
    with pytest.raises(SpectroError, match="QAT epochs >= 0"):
        TrainSettings(qat_epochs=-1)


def test_bad_lr_schedule_is_refused():
    with pytest.raises(SpectroError, match="lr_schedule must be one of cosine, constant"):
        TrainSettings(lr_schedule="step")


def test_negative_fine_tune_layers_are_refused():
    assert TrainSettings().fine_tune_layers == 0  # the default: the whole base
    with pytest.raises(SpectroError, match=r"fine-tune layers must be >= 0 \(0: the whole base\), got -1"):
        TrainSettings(fine_tune_layers=-1)


def test_best_keeper_saves_the_best_epoch_stops_after_patience_and_restores(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    keeper = _BestKeeper(tmp_path / "model.keras", monitor="val_loss", patience=2)
    keeper.start_phase(monitored=False)  # a warm-up: nothing kept, never stops
    assert not keeper.update(model, 0, 0.1) and keeper.best is None and not (tmp_path / "model.keras").exists()
    keeper.start_phase(monitored=True)
    assert not keeper.update(model, 1, 3.0)
    best = [w.copy() for w in model.get_weights()]
    assert (tmp_path / "model.keras").is_file() and keeper.best == 3.0 and keeper.best_epoch == 1
    model.set_weights([w + 1 for w in best])
    assert not keeper.update(model, 2, 3.5)  # worse: one epoch of patience used
    assert keeper.update(model, 3, 3.2)  # worse again: stop
    keeper.restore(model)
    for got, want in zip(model.get_weights(), best):
        np.testing.assert_array_equal(got, want)
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(reloaded.get_weights()[0], best[0])


# -- errors through the CLI -------------------------------------------------------------------------
def _cli_error(capsys, argv):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    rows = make_image_tree(root / "a", per_class=2)
    other = FeatureSettings(n_mels=32, n_fft=512, hop_length=128)
    rows2 = make_image_tree(root / "b", per_class=2, settings=other)
    merged = [ManifestRow(**{**r.__dict__, "image": f"{sub}/{r.image}"}) for sub, rs in (("a", rows), ("b", rows2))
              for r in rs]
    write_manifest(root / "manifest.csv", merged)
    return root


def test_errors_are_one_line(capsys, tmp_path, tiny_images, mixed_images):
    (tmp_path / "empty").mkdir()
    assert "no manifest.csv" in _cli_error(capsys, ["train", str(tmp_path / "empty"), "--out", str(tmp_path)])
    assert "no such folder" in _cli_error(capsys, ["train", str(tmp_path / "nope"), "--out", str(tmp_path)])
    line = _cli_error(capsys, ["train", str(mixed_images), "--out", str(tmp_path), *TINY])
    assert "2 different feature settings" in line and "hop_length=256 vs 128" in line
    missing = tmp_path / "missing.weights.h5"
    line = _cli_error(capsys, ["train", str(tiny_images), "--out", str(tmp_path), *TINY[:4], "--weights", str(missing),
                                   "--no-progress"])
    assert "not found" in line and str(missing) in line
    assert "match no image" in _cli_error(capsys, ["train", str(tiny_images), "--out", str(tmp_path), *TINY,
                                                   "--test-ids", "id_07"])
    assert not any(p.name != "empty" for p in tmp_path.iterdir())  # no half-made run folders


def test_one_class_is_refused(capsys, tmp_path):
    rows = make_image_tree(tmp_path / "img", per_class=2)
    write_manifest(tmp_path / "img" / "manifest.csv", [r for r in rows if r.machine == "fan" and r.label == "normal"])
    assert "at least 2 classes" in _cli_error(capsys, ["train", str(tmp_path / "img"), "--out", str(tmp_path), *TINY])


# -- a tiny end-to-end run --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert cli_main(["train", str(tiny_images), "--out", str(out), *TINY, "--epochs", "3", "--batch-size", "8",
                         "--seed", "1", "--name", "tiny", "--lr-schedule", "cosine", "--qat-epochs", "2",
                         "--resize", "bilinear"]) == 0
    return out, out / "tiny", log.getvalue()


@pytest.mark.slow
def test_end_to_end_run_writes_every_output(trained, tiny_images):
    import keras

    from spectro.model import load_keras_model

    out, run, log = trained
    for name in ("model.keras", "labels.json", "config.json", "splits.csv", "history.csv", "training.png"):
        assert (run / name).is_file(), name
    assert (out / "latest").resolve() == run.resolve()
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["weights_used"] == "none" and config["model"]["weights_requested"] == "none"
    assert config["images"] == str(tiny_images.resolve())
    assert config["task"] == "failure" and config["seed"] == 1
    assert config["input_shape"] == list(read_manifest_shape(tiny_images))
    assert FeatureSettings.from_dict(config["features"]) == FeatureSettings(n_mels=32, n_fft=512, hop_length=256)
    assert config["training"]["phases"] == ["warmup", "full", "qat"] and config["training"]["epochs_run"] == 5
    # the epoch counter runs over all phases: "Epoch 1/5", "Epoch 2/5", … (not 1/1 for the warm-up)
    counters = re.findall(r"Epoch (\d+)/(\d+)", log)
    assert counters[:2] == [("1", "5"), ("2", "5")] and {total for _, total in counters} == {"5"}
    assert "quantisation-aware fine-tuning: 70 layer outputs round" in log
    assert {"task_accuracy", "task_balanced_accuracy", "anomaly_auc", "anomaly_pauc"} <= set(config["metrics"]["test"])
    with (run / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == config["training"]["epochs_run"]
    assert {"loss", "val_loss", "task_accuracy", "val_task_accuracy", "learning_rate"} <= set(history[0])
    assert config["training"]["lr_schedule"] == "cosine"
    rates = [float(r["learning_rate"]) for r in history]  # one cosine over warm-up and full training, one over QAT
    training = config["training"]
    assert rates == pytest.approx([cosine_rate(training["learning_rate"], e, 3) for e in range(3)]
                                  + [cosine_rate(training["fine_tune_learning_rate"], e, 2) for e in range(2)])
    model = load_keras_model(run / "model.keras")
    assert config["model"]["resize"] == "bilinear" and model.get_layer("resize").interpolation == "bilinear"
    base = model.get_layer("backbone")  # QAT froze BatchNorm only while it ran
    assert all(layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))
    with (run / "splits.csv").open() as handle:
        splits = list(csv.DictReader(handle))
    assert len(splits) == 32 and all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in splits)
    assert Counter(r["split"] for r in splits) == Counter(train=24, val=4, test=4)
    assert LabelSpace.load(run).classes == ("fan/bearing", "fan/normal", "pump/leak", "pump/normal")


def read_manifest_shape(folder):
    from spectro.images import read_pixels

    return read_pixels(folder / read_manifest(folder)[0].image).shape


@pytest.mark.slow
def test_saved_model_reloads_in_a_fresh_process_with_the_same_predictions(trained, tmp_path):
    from spectro.images import read_pixels
    from spectro.inference import load_predictor

    _, run, _ = trained
    with (run / "splits.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    x = np.stack([read_pixels(r["image"]) for r in rows]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, keras\n"
            "m = keras.saving.load_model(sys.argv[1])\n"  # plain Keras: nothing spectro-specific imported
            "assert not any(k.startswith('spectro') for k in sys.modules)\n"
            "np.save(sys.argv[3], m.predict(np.load(sys.argv[2])[..., None], verbose=0))\n")
    result = subprocess.run([sys.executable, "-c", code, str(run / "model.keras"), str(tmp_path / "x.npy"),
                             str(tmp_path / "p.npy")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    fresh = np.load(tmp_path / "p.npy")
    here = load_predictor(run).predict(x)
    np.testing.assert_allclose(fresh, here, rtol=1e-5, atol=1e-6)
    # the saved model is the one the metrics in config.json were computed with
    labels = LabelSpace.load(run)
    test = np.array([r["split"] == "test" for r in rows])
    truth = [f"{r['machine']}/{r['label']}" for r, t in zip(rows, test) if t]
    accuracy = np.mean([labels.classes[i] == c for i, c in zip(fresh[test].argmax(axis=1), truth)])
    config = json.loads((run / "config.json").read_text())
    assert config["metrics"]["test"]["task_accuracy"] == pytest.approx(accuracy)


@pytest.mark.slow
def test_pretrained_run_trains_the_head_then_fine_tunes_the_whole_base(tiny_images, tmp_path):
    import keras

    from spectro.model import ModelSettings, load_backbone, load_keras_model

    base, _ = load_backbone(ModelSettings(weights="none", alpha=0.35, image_size=32))
    weights = tmp_path / "tiny.weights.h5"
    base.save_weights(weights)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert cli_main(["train", str(tiny_images), "--out", str(tmp_path / "models"), *TINY[:4], "--weights",
                         str(weights), "--no-progress", "--epochs", "1", "--fine-tune-epochs", "1",
                         "--batch-size", "8", "--name", "pre", "--qat-epochs", "0"]) == 0
    config = json.loads((tmp_path / "models" / "pre" / "config.json").read_text())
    assert config["model"]["weights_used"] == str(weights)
    assert config["training"]["phases"] == ["head", "fine_tune"] and config["training"]["fine_tune_layers"] == 0
    # 0 = every layer of the base: all but BatchNorm were unfrozen, as the log says
    n_layers = len(base.layers)
    n_trainable = sum(not isinstance(layer, keras.layers.BatchNormalization) for layer in base.layers)
    assert f"fine-tuning the top {n_layers} layers of the base ({n_trainable} trainable, BatchNorm frozen)" in log.getvalue()
    assert load_keras_model(tmp_path / "models" / "pre" / "model.keras").output_shape == (None, 4)
