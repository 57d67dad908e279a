"""The training input pipeline: images streamed from disk with ``tf.data``, augmented per batch in the graph.

Training and validation never hold the image folder in memory: each element is a PNG path (and its
labels), decoded by TensorFlow in parallel, shuffled through a bounded buffer, batched and prefetched.
Memory is bounded by the shuffle buffer and the batches in flight, whatever the number of images.

Clips may differ in length (``Examples.widths``): every image is cut to windows of one width before batching
(training: one random window each time a clip is drawn; validation: the windows that score each clip, as many
as its width gives), so a batch always holds windows of one shape.

Augmentation (:class:`~spectro.training.augment.AugmentSettings`) runs on whole batches as TensorFlow ops,
in the order :func:`spectro.training.augment.augment` applies them: background mixing (another *normal*
image of the same machine from the same batch, added in the power domain), time shift, gain in dB, bin
jitter, then SpecAugment time and frequency masks filled with the image's mean. Every random draw is a
stateless op seeded by ``(seed, batch number)``, so a seed gives the same batches run after run;
validation batches are never augmented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spectro.model.windows import window_columns
from spectro.training.augment import AugmentSettings

SHUFFLE_BUFFER = 2048  # images held for shuffling (uint8): a few tens of MB at the default image size


@dataclass(frozen=True)
class Examples:
    """What the pipeline reads: one entry per image."""

    paths: list[str]
    labels: np.ndarray  # fine-class index
    weights: np.ndarray  # sample weight
    machines: np.ndarray  # machine index (background mixing pairs images of one machine)
    normal: np.ndarray  # bool: a normal image (only those are mixed in as background)
    widths: np.ndarray | None = None  # frames of each image (from the PNG headers); None: all the shape's frames

    def __len__(self) -> int:
        return len(self.paths)

    def frames(self, shape: tuple[int, int]) -> np.ndarray:
        """Each image's width in frames: :attr:`widths`, or ``shape[1]`` for every image when not given."""
        if self.widths is None:
            return np.full(len(self), int(shape[1]), dtype=np.int64)
        return np.asarray(self.widths, dtype=np.int64)


def _decode(path, shape: tuple[int, int | None]):
    import tensorflow as tf

    return tf.ensure_shape(tf.io.decode_png(tf.io.read_file(path), channels=1), (*shape, 1))


def _check_widths(examples: Examples, shape: tuple[int, int], window: int | None) -> np.ndarray:
    """The examples' widths; refused when a model of whole images (``window`` None) meets images of other widths
    than ``shape``'s, or an image is narrower than the window (training checks both before it starts)."""
    from spectro.errors import SpectroError

    frames = examples.frames(shape)
    narrow = np.flatnonzero(frames < (window if window is not None else shape[1]))
    wide = np.flatnonzero(frames != shape[1]) if window is None else np.zeros(0, dtype=int)
    if len(narrow) or len(wide):
        i = int((narrow if len(narrow) else wide)[0])
        need = f"at least {window}" if window is not None else f"{shape[1]} (whole images need one width)"
        raise SpectroError(f"{examples.paths[i]}: image is {int(frames[i])} frames wide, expected {need}")
    return frames


def window_counts(examples: Examples, shape: tuple[int, int], window: int | None, *,
                  per_image: int | None = None) -> list[int]:
    """How many windows :func:`evaluation_dataset` gives each image (the scoring windows of its width, or
    ``per_image`` of them evenly spread): the owners to pool its predictions by."""
    return [len(window_columns(int(w), window, per_image=per_image)) for w in examples.frames(shape)]


def _roll_rows(x, shifts):
    """Roll every image of ``x`` (b, h, w) along its last axis by its own ``shifts[i]`` columns."""
    import tensorflow as tf

    width = tf.shape(x)[2]
    columns = (tf.range(width)[None, :] - shifts[:, None]) % width  # (b, w): source column of each column
    return tf.gather(x, columns, axis=2, batch_dims=1)


def _integers(seed, batch, low, high):
    """One uniform integer in ``low..high`` (inclusive; tensors of shape (b,) or scalars) per image."""
    import tensorflow as tf

    span = tf.cast(high - low + 1, tf.float32)
    return tf.cast(tf.floor(tf.random.stateless_uniform((batch,), seed) * span), tf.int32) + low


def _bands(seed, count: int, widest: int, size: int, batch):
    """A (b, size) mask of ``count`` random bands per image, each 1..``widest`` wide, wholly inside."""
    import tensorflow as tf

    mask = tf.zeros((batch, size), dtype=tf.bool)
    positions = tf.range(size)[None, :]
    draws = tf.random.experimental.stateless_split(seed, 2 * count)
    for k in range(count):
        width = _integers(draws[2 * k], batch, 1, widest)
        start = _integers(draws[2 * k + 1], batch, 0, size - width)
        mask |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
    return mask


def augment_batch(x, machines, normal, seed, *, settings: AugmentSettings, db_per_step: float):
    """Augment a batch of pixel images ``x`` (b, h, w) float32 0…255 with TensorFlow ops; returns the same shape.

    ``machines`` (b,) and ``normal`` (b,) say which images may serve as another's background; ``seed``
    is a stateless seed (2,) int32.
    """
    import tensorflow as tf

    s = float(db_per_step)
    batch = tf.shape(x)[0]
    height, width = int(x.shape[1]), int(x.shape[2])  # static: the pipeline fixes the image shape
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 9))
    if settings.mix_probability > 0:
        same = (machines[:, None] == machines[None, :]) & normal[None, :] & ~tf.eye(batch, dtype=tf.bool)
        noise = tf.random.stateless_uniform((batch, batch), seeds[0])
        partner = tf.argmax(tf.where(same, noise, -1.0), axis=1, output_type=tf.int32)
        drawn = tf.random.stateless_uniform((batch,), seeds[1]) < settings.mix_probability
        mixed = tf.reduce_any(same, axis=1) & drawn
        background = _roll_rows(tf.gather(x, partner), _integers(seeds[2], batch, -width, width))
        level = tf.random.stateless_uniform((batch,), seeds[3], *settings.mix_db)
        a, b = x * s, background * s + level[:, None, None]
        top = tf.maximum(a, b)
        power = top + 10.0 * (tf.math.log(10.0 ** ((a - top) / 10.0) + 10.0 ** ((b - top) / 10.0)) / np.log(10.0))
        x = tf.where(mixed[:, None, None], tf.clip_by_value(power / s, 0.0, 255.0), x)
    most = int(round(settings.time_shift * width))
    if most:
        x = _roll_rows(x, _integers(seeds[4], batch, -most, most))
    if settings.gain_db > 0:
        gain = tf.random.stateless_uniform((batch,), seeds[5], -settings.gain_db, settings.gain_db) / s
        x = tf.clip_by_value(x + gain[:, None, None], 0.0, 255.0)
    if settings.noise_db > 0:
        x = tf.clip_by_value(x + tf.random.stateless_normal(tf.shape(x), seeds[6], stddev=settings.noise_db / s),
                             0.0, 255.0)
    if settings.time_masks or settings.freq_masks:
        fill = tf.reduce_mean(x, axis=(1, 2))[:, None, None]
        masked = tf.zeros_like(x, dtype=tf.bool)
        widest_t, widest_f = int(settings.time_mask_width * width), int(settings.freq_mask_width * height)
        if settings.time_masks and widest_t >= 1:
            masked |= _bands(seeds[7], settings.time_masks, widest_t, width, batch)[:, None, :]
        if settings.freq_masks and widest_f >= 1:
            masked |= _bands(seeds[8], settings.freq_masks, widest_f, height, batch)[:, :, None]
        x = tf.where(masked, fill, x)
    return x


def _crop(x, seed, window: int):
    """One random window of ``window`` columns of an image ``x`` (h, w, 1) of any width ``w >= window``, seeded
    statelessly."""
    import tensorflow as tf

    start = _integers(seed, 1, 0, tf.maximum(tf.shape(x)[1] - window, 0))[0]
    return x[:, start:start + window]


def training_dataset(examples: Examples, *, shape: tuple[int, int], batch_size: int, seed: int,
                     settings: AugmentSettings, db_per_step: float, window: int | None = None,
                     shuffle_buffer: int = SHUFFLE_BUFFER):
    """An endless, shuffled, augmented ``tf.data.Dataset`` of ``(pixels (b, h, window, 1), label, weight)``
    batches: each time an image is drawn, a random window of ``window`` columns of it (the whole image when
    ``None``: every image must then be ``shape`` wide), then augmented. Images may differ in width
    (``examples.widths``), each at least a window wide.

    The same ``seed`` gives the same batches. Fit it with a number of steps per epoch.
    """
    import tensorflow as tf

    _check_widths(examples, shape, window)
    data = tf.data.Dataset.from_tensor_slices((np.asarray(examples.paths), examples.labels.astype(np.int32),
                                               examples.weights.astype(np.float32),
                                               examples.machines.astype(np.int32), examples.normal.astype(bool)))
    data = data.shuffle(min(shuffle_buffer, len(examples)), seed=seed, reshuffle_each_iteration=True).repeat()
    data = tf.data.Dataset.zip((data, tf.data.Dataset.counter()))

    def stateless(index):
        return tf.cast(tf.stack([tf.cast(seed, tf.int64), index]) % (2 ** 31 - 1), tf.int32)

    def load(element, index):  # each image drawn: one random window of it, before batching (widths may differ)
        p, y, w, m, n = element
        if window is None:
            return _decode(p, shape), y, w, m, n
        x = _crop(_decode(p, (shape[0], None)), tf.random.experimental.stateless_fold_in(stateless(index), 1),
                  window)
        return tf.ensure_shape(x, (shape[0], window, 1)), y, w, m, n

    data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    data = data.batch(batch_size, drop_remainder=False)
    data = tf.data.Dataset.zip((data, tf.data.Dataset.counter()))

    def augment(batch, step):
        pixels, y, w, m, n = batch
        x = tf.cast(pixels[..., 0], tf.float32)
        x = augment_batch(x, m, n, stateless(step), settings=settings, db_per_step=db_per_step)
        return x[..., None], y, w

    data = data.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(data)


def evaluation_dataset(examples: Examples, *, shape: tuple[int, int], batch_size: int, replicas: int = 1,
                       window: int | None = None, starts: list[int] | None = None, per_image: int | None = None):
    """Batches ``(pixels (b, h, window, 1), label, weight)`` of the examples in order, never augmented.

    With a ``window``, each image gives the windows at ``starts`` (default: every window that scores it at its
    own width, :func:`window_columns`, or ``per_image`` of them evenly spread), one after another: predictions
    come image by image, :func:`window_counts` of them each, ready for :func:`spectro.model.windows.pool`.
    Images may differ in width (``examples.widths``), each at least a window wide; without a window every image
    must be ``shape`` wide.

    With several replicas the examples are padded, with weight 0, to a multiple of ``replicas`` so that
    the last batch splits evenly across them (Keras cannot give a replica an empty batch); the padding
    is at the end, so predictions past ``len(examples)`` are dropped. Weighted metrics are unaffected; the
    loss, averaged per example, is scaled by ``n / (n + padding)``, at most ``replicas - 1`` examples.
    """
    import tensorflow as tf

    frames = _check_widths(examples, shape, window)
    paths, labels, weights = list(examples.paths), examples.labels.astype(np.int32), examples.weights.astype(np.float32)
    padding = -len(paths) % replicas
    if padding:
        paths += paths[-1:] * padding
        labels = np.concatenate([labels, np.repeat(labels[-1:], padding)])
        weights = np.concatenate([weights, np.zeros(padding, np.float32)])
        frames = np.concatenate([frames, np.repeat(frames[-1:], padding)])
    if window is None or (window >= shape[1] and (frames == shape[1]).all()):  # one window: the whole image
        data = tf.data.Dataset.from_tensor_slices((np.asarray(paths), labels, weights))
        data = data.map(lambda p, y, w: (tf.cast(_decode(p, shape), tf.float32), y, w),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _finish(data.batch(batch_size))
    # each image's window starts, padded with -1 to one length (an image's own count beside them)
    each = [starts if starts is not None else window_columns(int(f), window, per_image=per_image) for f in frames]
    table = np.full((len(each), max(len(s) for s in each)), -1, dtype=np.int32)
    for i, s in enumerate(each):
        table[i, :len(s)] = s
    counts = np.array([len(s) for s in each], dtype=np.int32)
    data = tf.data.Dataset.from_tensor_slices((np.asarray(paths), labels, weights, table, counts))

    def windows(p, y, w, s, k):
        x = tf.cast(_decode(p, (shape[0], None)), tf.float32)
        columns = s[:k, None] + tf.range(window)[None, :]  # (k, window)
        cut = tf.ensure_shape(tf.transpose(tf.gather(x, columns, axis=1), (1, 0, 2, 3)), (None, shape[0], window, 1))
        return cut, tf.repeat(y, k), tf.repeat(w, k)

    data = data.map(windows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    # the number of windows is known: said, so Keras counts the batches (no "ran out of data" at the end)
    data = data.apply(tf.data.experimental.assert_cardinality(int(counts.sum())))
    return _finish(data.batch(batch_size))


def _finish(data):
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True
    # one thread per pipeline op: the parallel map already runs several, and ops that also spread over
    # every core fight the training step for them (make bench measures the pipeline against arrays)
    options.threading.max_intra_op_parallelism = 1
    return data.with_options(options).prefetch(2)


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimizer steps that show every training image once, on average."""
    return max(1, -(-n_images // batch_size))
