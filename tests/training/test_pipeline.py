"""spectro.training.pipeline: streamed batches, deterministic by seed, augmented within bounds, validation untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from spectro.data.manifest import read_manifest
from spectro.features.png import read_pixels, write_png
from spectro.features.settings import FeatureSettings
from spectro.training.augment import AugmentSettings
from spectro.training.pipeline import Examples, augment_batch, evaluation_dataset, steps_per_epoch, training_dataset

OFF = AugmentSettings.off()
DB_PER_STEP = FeatureSettings().db_per_step


def _examples(rows) -> Examples:
    machines = sorted({r.machine for r in rows})
    return Examples([str(r.path) for r in rows], np.arange(len(rows)) % 3, np.ones(len(rows)),
                    np.array([machines.index(r.machine) for r in rows]), np.array([not r.is_abnormal for r in rows]))


def _batches(examples, shape, *, seed, settings=AugmentSettings(), n=3):
    data = training_dataset(examples, shape=shape, batch_size=8, seed=seed, settings=settings,
                            db_per_step=DB_PER_STEP)
    return [(x.numpy(), y.numpy(), w.numpy()) for x, y, w in data.take(n)]


@pytest.fixture(scope="module")
def examples(tiny_images):
    rows = read_manifest(tiny_images)
    return _examples(rows), read_pixels(rows[0].path).shape


def test_the_same_seed_gives_the_same_batches(examples):
    ex, shape = examples
    first, again = _batches(ex, shape, seed=3), _batches(ex, shape, seed=3)
    for (x1, y1, _), (x2, y2, _) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_another_seed_gives_other_batches(examples):
    ex, shape = examples
    assert not np.array_equal(_batches(ex, shape, seed=3)[0][0], _batches(ex, shape, seed=4)[0][0])


def test_batches_have_the_model_input_shape_and_stay_in_the_pixel_range(examples):
    ex, shape = examples
    for x, y, w in _batches(ex, shape, seed=0, n=4):
        assert x.shape == (8, *shape, 1) and x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 255.0
        assert y.shape == (8,) and w.shape == (8,)


def test_every_image_is_seen_once_per_pass_without_augmentation(examples):
    ex, shape = examples
    n = len(ex)
    batches = _batches(ex, shape, seed=0, settings=OFF, n=steps_per_epoch(n, 8))
    seen = np.concatenate([x[..., 0] for x, _, _ in batches])[:n]
    originals = np.stack([read_pixels(p) for p in ex.paths]).astype(np.float32)
    # a shuffled permutation of the originals, pixel for pixel
    order = [int(np.flatnonzero((originals == image).all(axis=(1, 2)))[0]) for image in seen]
    assert sorted(order) == list(range(n))


def test_validation_batches_are_the_images_unchanged_in_order(examples):
    ex, shape = examples
    data = evaluation_dataset(ex, shape=shape, batch_size=8)
    x = np.concatenate([b.numpy() for b, _, _ in data])[..., 0]
    np.testing.assert_array_equal(x, np.stack([read_pixels(p) for p in ex.paths]).astype(np.float32))


def test_training_draws_a_random_window_of_each_image_each_time(examples):
    ex, shape = examples
    originals = np.stack([read_pixels(p) for p in ex.paths]).astype(np.float32)
    data = training_dataset(ex, shape=shape, batch_size=8, seed=0, settings=OFF, db_per_step=DB_PER_STEP, window=20)
    starts = []
    for x, _, _ in [(x.numpy(), y, w) for x, y, w in data.take(12)]:
        assert x.shape == (8, shape[0], 20, 1)
        for window in x[..., 0]:  # each is 20 consecutive columns of one original image
            found = [(i, s) for i in range(len(originals)) for s in range(shape[1] - 19)
                     if np.array_equal(originals[i][:, s:s + 20], window)]
            assert found, "a training window is not a slice of any image"
            starts.append(found[0][1])
    assert len(set(starts)) > 20  # windows start all over the image, not at one place


def test_validation_windows_are_the_scoring_windows_of_each_image_in_order(examples):
    from spectro.model.windows import cut

    ex, shape = examples
    data = evaluation_dataset(ex, shape=shape, batch_size=8, window=20)
    x = np.concatenate([b.numpy() for b, _, _ in data])[..., 0]
    windows, _ = cut(np.stack([read_pixels(p) for p in ex.paths]), 20)
    np.testing.assert_array_equal(x, windows.astype(np.float32))
    few = evaluation_dataset(ex, shape=shape, batch_size=8, window=20, starts=[0, 43])
    x = np.concatenate([b.numpy() for b, _, _ in few])[..., 0]
    first = read_pixels(ex.paths[0]).astype(np.float32)
    assert x.shape == (2 * len(ex), shape[0], 20)
    np.testing.assert_array_equal(x[0], first[:, 0:20])
    np.testing.assert_array_equal(x[1], first[:, 43:63])


def _random_batch(n=6, h=32, w=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(40, 215, size=(n, h, w)).astype(np.float32)


def _augment(x, settings, machines=None, normal=None, seed=(1, 2)):
    import tensorflow as tf

    n = len(x)
    machines = np.zeros(n, np.int32) if machines is None else machines
    normal = np.ones(n, bool) if normal is None else normal
    return augment_batch(tf.constant(x), tf.constant(machines), tf.constant(normal), tf.constant(seed, tf.int32),
                         settings=settings, db_per_step=DB_PER_STEP).numpy()


def test_time_shift_rolls_each_image_by_at_most_its_limit():
    x = _random_batch()
    settings = dataclasses.replace(OFF, time_shift=0.25)
    out = _augment(x, settings)
    limit = round(0.25 * x.shape[2])
    for before, after in zip(x, out):
        shifts = [k for k in range(-limit, limit + 1) if np.array_equal(np.roll(before, k, axis=1), after)]
        assert shifts, "not a roll within the limit"


def test_gain_adds_one_constant_per_image_within_the_range():
    x = _random_batch()
    out = _augment(x, dataclasses.replace(OFF, gain_db=6.0))
    for before, after in zip(x, out):
        step = after - before
        assert np.allclose(step, step.flat[0], atol=1e-4)
        assert abs(step.flat[0]) <= 6.0 / DB_PER_STEP + 1e-4


@pytest.mark.parametrize("masks, width", [(1, 0.1), (2, 0.1), (3, 0.2)])
def test_masks_cover_whole_bands_within_their_bounds_filled_with_the_image_mean(masks, width):
    x = _random_batch(seed=masks)
    settings = dataclasses.replace(OFF, time_masks=masks, time_mask_width=width, freq_masks=masks,
                                   freq_mask_width=width)
    out = _augment(x, settings)
    h, w = x.shape[1:]
    for before, after in zip(x, out):
        fill = before.mean()
        changed = ~np.isclose(after, before)
        assert np.allclose(after[changed], fill, atol=1e-3)
        columns = np.flatnonzero(np.isclose(after, fill, atol=1e-3).all(axis=0))
        rows = np.flatnonzero(np.isclose(after, fill, atol=1e-3).all(axis=1))
        assert 1 <= len(columns) <= masks * int(width * w)
        assert 1 <= len(rows) <= masks * int(width * h)
        # every changed pixel lies in a masked row or column
        assert changed[np.ix_(np.setdiff1d(np.arange(h), rows), np.setdiff1d(np.arange(w), columns))].sum() == 0


def test_background_mixing_only_adds_a_normal_image_of_the_same_machine():
    # constant images: machine 0 normal = 100, machine 0 abnormal = 180, machine 1 normal = 60 (alone)
    x = np.stack([np.full((16, 20), v, np.float32) for v in (100, 100, 180, 60)])
    machines, normal = np.array([0, 0, 0, 1], np.int32), np.array([True, True, False, True])
    settings = dataclasses.replace(OFF, mix_probability=1.0, mix_db=(-6.0, -6.0))
    out = _augment(x, settings, machines, normal)

    def mixed(a, b):
        s = DB_PER_STEP
        return 10 * np.log10(10 ** (a * s / 10) + 10 ** ((b * s - 6.0) / 10)) / s

    assert np.allclose(out[0], mixed(100, 100), atol=1e-3)  # its partner: the other normal of machine 0
    assert np.allclose(out[2], mixed(180, 100), atol=1e-3)  # an abnormal image gets a normal background
    np.testing.assert_array_equal(out[3], x[3])  # machine 1 has no other normal image: unchanged


def test_the_augmentations_together_keep_pixels_in_range():
    x = np.concatenate([np.zeros((2, 16, 24)), np.full((2, 16, 24), 255.0), _random_batch(2, 16, 24)])
    x = x.astype(np.float32)
    out = _augment(x, AugmentSettings(gain_db=20.0, noise_db=3.0, mix_probability=1.0))
    assert out.min() >= 0.0 and out.max() <= 255.0


def test_steps_per_epoch_covers_every_image():
    assert steps_per_epoch(100, 32) == 4
    assert steps_per_epoch(96, 32) == 3
    assert steps_per_epoch(5, 32) == 1


def test_training_streams_a_folder_larger_than_the_memory_budget(tiny_images, tmp_path):
    """One epoch over 3,000 images (hard links), 120 MB decoded, raises peak memory less than 80 MB above the
    same training on 300 images: the folder is never loaded whole."""
    import json
    import os
    import subprocess
    import sys
    import textwrap

    from spectro.data.manifest import write_manifest

    rows = read_manifest(tiny_images)
    big = np.random.default_rng(0).integers(0, 256, size=(64, 626), dtype=np.uint8)  # 40 KB decoded
    settings = FeatureSettings(n_mels=64, n_fft=512, hop_length=256)
    template = tmp_path / "template.png"
    write_png(template, big, settings=settings, modulation=np.zeros(settings.modulation_hz))

    def folder(n):
        root = tmp_path / f"images_{n}"
        out = []
        for i in range(n):
            r = rows[i % len(rows)]
            path = root / r.machine / r.label / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(template, path)
            out.append(dataclasses.replace(r, path=path, source=f"{r.source}#{i}", settings_hash=settings.hash()))
        write_manifest(root / "manifest.csv", out)
        return root

    script = textwrap.dedent("""
        import json, sys
        from spectro.model.backbones import ModelSettings
        from spectro.training.loop import TrainSettings, train
        train(sys.argv[1], sys.argv[2], progress=False, name="run",
              settings=TrainSettings(steps=5, eval_every=5, qat_steps=0, batch_size=64, val_fraction=0.02,
                                     test_fraction=0.02, check_learning=False),
              model_settings=ModelSettings(weights="none", alpha=0.35, image_size=32))
        peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        print(json.dumps({"peak_kib": peak}))
    """)
    peaks = {}
    for n in (300, 3000):
        done = subprocess.run([sys.executable, "-c", script, str(folder(n)), str(tmp_path / f"models_{n}")],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[n] = json.loads(done.stdout.strip().splitlines()[-1])["peak_kib"] / 1024
    decoded = 3000 * big.size / 2**20
    assert decoded > 100
    assert peaks[3000] - peaks[300] < 80, (peaks, decoded)


# -- clips of different lengths ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_lengths(tmp_path_factory):
    """Six images of two widths (1 s and 1.25 s of audio: 63 and 79 frames) and their examples with those widths."""
    from conftest import tone_signal

    from spectro.features.logmel import db_to_pixels, log_mel
    from spectro.features.render import modulation_of

    settings = FeatureSettings(n_mels=32, n_fft=512, hop_length=256)
    root = tmp_path_factory.mktemp("two_lengths")
    images = []
    for i in range(6):
        y = tone_signal("normal", 1.25 if i % 2 else 1.0, seed=i)
        pixels = db_to_pixels(log_mel(y, settings), settings)
        write_png(root / f"{i}.png", pixels, settings=settings, modulation=modulation_of(y, settings))
        images.append(pixels)
    ex = Examples([str(root / f"{i}.png") for i in range(6)], np.arange(6) % 3, np.ones(6), np.zeros(6, int),
                  np.ones(6, bool), widths=np.array([p.shape[1] for p in images]))
    return ex, images


def test_clips_of_two_widths_train_on_windows_of_one_shape_each_a_slice_of_its_clip(two_lengths):
    ex, images = two_lengths
    assert sorted(set(ex.widths.tolist())) == [63, 79]
    data = training_dataset(ex, shape=(32, 63), batch_size=4, seed=0, settings=OFF, db_per_step=DB_PER_STEP,
                            window=20)
    starts = {63: set(), 79: set()}
    for x, y, _ in data.take(9):
        x, y = x.numpy(), y.numpy()
        assert x.shape[1:] == (32, 20, 1)
        for window in x[..., 0]:
            found = [(i, s) for i, image in enumerate(images) for s in range(image.shape[1] - 19)
                     if np.array_equal(image[:, s:s + 20].astype(np.float32), window)]
            assert found, "a training window is not a slice of any clip"
            starts[images[found[0][0]].shape[1]].add(found[0][1])
    assert max(starts[79]) > 43  # the longer clips' windows reach past the shorter clips' last start


def test_validation_gives_every_scoring_window_of_each_clip_at_its_own_width(two_lengths):
    from spectro.model.windows import cut
    from spectro.training.pipeline import window_counts

    ex, images = two_lengths
    data = evaluation_dataset(ex, shape=(32, 63), batch_size=4, window=20)
    x = np.concatenate([b.numpy() for b, _, _ in data])[..., 0]
    windows, owners = cut(images, 20)
    np.testing.assert_array_equal(x, windows.astype(np.float32))
    assert int(data.cardinality()) == -(-len(windows) // 4)  # known to Keras: it counts the validation batches
    counts = window_counts(ex, (32, 63), 20)
    assert counts == np.bincount(owners).tolist() and counts[0] < counts[1]  # 1.25 s clips give more windows
    few = evaluation_dataset(ex, shape=(32, 63), batch_size=4, window=20, per_image=2, replicas=4)
    y = np.concatenate([labels.numpy() for _, labels, _ in few])
    assert window_counts(ex, (32, 63), 20, per_image=2) == [2] * 6 and len(y) == 2 * 8  # padded to 8 clips
    np.testing.assert_array_equal(y[:12], np.repeat(ex.labels, 2))


def test_a_clip_narrower_than_the_window_or_of_another_width_for_whole_images_is_refused(two_lengths):
    from spectro.errors import SpectroError

    ex, _ = two_lengths
    with pytest.raises(SpectroError, match=r"0.png: image is 63 frames wide, expected at least 70$"):
        training_dataset(ex, shape=(32, 63), batch_size=4, seed=0, settings=OFF, db_per_step=DB_PER_STEP, window=70)
    with pytest.raises(SpectroError, match=r"1.png: image is 79 frames wide, expected 63 \(whole images need one"):
        evaluation_dataset(ex, shape=(32, 63), batch_size=4)
