"""Where training runs: one device, several (``tf.distribute.MirroredStrategy``) or several machines
(``tf.distribute.MultiWorkerMirroredStrategy``, configured the standard way by ``TF_CONFIG``).

``--devices N`` uses N GPUs when the machine has them. On a machine without GPUs it splits the CPU into N
logical devices, so the multi-device path runs (and is tested) anywhere; that shows correctness, not
speed. The batch size is per device: the global batch is ``batch_size × replicas``, and the learning
rates are scaled by the number of replicas (the linear scaling rule of Goyal et al. 2017, "Accurate,
Large Minibatch SGD"), so one step over a global batch moves the weights about as far as ``replicas``
single-device steps would.

Mixed precision (``mixed_float16``) is for GPUs only; the model's softmax head stays float32.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from spectro.errors import SpectroError

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class DistributeSettings:
    """Devices and precision of training (stored in ``config.json`` under ``distribute``).

    Parameters
    ----------
    devices : str
        ``"1"`` (default), a number of devices, or ``"all"`` (every GPU; the CPU alone without GPUs).
        Ignored when ``TF_CONFIG`` describes a multi-worker cluster: each worker then uses its own devices.
    mixed_precision : bool
        Train in ``mixed_float16`` (GPUs only).
    """

    devices: str = "1"
    mixed_precision: bool = False

    def __post_init__(self) -> None:
        if self.devices != "all" and not (str(self.devices).isdigit() and int(self.devices) >= 1):
            raise SpectroError(f"--devices takes a number >= 1 or 'all', got {self.devices!r}")


@dataclass
class Placement:
    """The strategy chosen and what ``config.json`` records of it."""

    strategy: object
    name: str
    replicas: int
    workers: int
    chief: bool  # this process writes the run folder

    def prepare(self, model) -> None:
        """Make ``model`` trainable by Keras ``fit`` under this strategy (see :func:`_multi_worker_fixes`)."""
        if self.name == "MultiWorkerMirroredStrategy":
            _multi_worker_fixes(model)

    def barrier(self) -> None:
        """Wait until every worker of a cluster gets here (one tiny all-reduce), so none leaves early."""
        if self.workers > 1:
            import tensorflow as tf

            self.strategy.reduce("SUM", self.strategy.run(lambda: tf.constant(1.0)), axis=None)

    def to_dict(self, batch_size: int) -> dict:
        return {"strategy": self.name, "replicas": self.replicas, "workers": self.workers,
                "batch_size_per_replica": batch_size, "global_batch_size": batch_size * self.replicas}


def cluster() -> dict | None:
    """The ``TF_CONFIG`` cluster description, or ``None`` when training on this machine alone."""
    text = os.environ.get(TF_CONFIG, "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpectroError(f"{TF_CONFIG} is not valid JSON ({exc}); expected "
                           '{"cluster": {"worker": ["host:port", ...]}, '
                           '"task": {"type": "worker", "index": 0}}') from None
    workers = config.get("cluster", {}).get("worker", []) + config.get("cluster", {}).get("chief", [])
    task = config.get("task", {})
    if not workers or "type" not in task or "index" not in task:
        raise SpectroError(f"{TF_CONFIG} needs cluster.worker (a list of host:port) and task.type/task.index, "
                           f"found {text[:200]}")
    return config


def place(settings: DistributeSettings) -> Placement:
    """Choose the strategy; call before TensorFlow runs any operation (logical devices are fixed then).

    Raises
    ------
    SpectroError
        Mixed precision without a GPU, more devices than the machine has GPUs, or a bad ``TF_CONFIG``.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if settings.mixed_precision and not gpus:
        raise SpectroError("--mixed-precision needs a GPU (mixed_float16 is slower than float32 on a CPU); "
                           "this machine has none: train without it")
    config = cluster()
    if config is not None:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        task = config["task"]
        workers = len(config["cluster"].get("worker", [])) + len(config["cluster"].get("chief", []))
        chief = task["type"] == "chief" or (task["type"] == "worker" and int(task["index"]) == 0
                                            and "chief" not in config["cluster"])
        return Placement(strategy, "MultiWorkerMirroredStrategy", int(strategy.num_replicas_in_sync), workers, chief)
    if gpus:
        count = len(gpus) if settings.devices == "all" else int(settings.devices)
        if count > len(gpus):
            raise SpectroError(f"--devices {count} asks for more GPUs than this machine has ({len(gpus)})")
        names = [f"/gpu:{i}" for i in range(count)]
    else:
        count = 1 if settings.devices == "all" else int(settings.devices)
        if count > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            try:
                tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
            except RuntimeError:
                if len(tf.config.list_logical_devices("CPU")) < count:
                    raise SpectroError(f"--devices {count}: TensorFlow already started with fewer CPU devices; "
                                       "start a new process to split the CPU") from None
        names = [f"/cpu:{i}" for i in range(count)]
    if count == 1:
        strategy = tf.distribute.get_strategy()  # the default: no distribution
        return Placement(strategy, "default", 1, 1, True)
    strategy = tf.distribute.MirroredStrategy(devices=names)
    return Placement(strategy, "MirroredStrategy", count, 1, True)


def _multi_worker_fixes(model) -> None:
    """Work around two places where Keras 3's TensorFlow trainer mishandles ``MultiWorkerMirroredStrategy``
    (keras-team/keras#20585: ``fit`` fails at its first step). Both are reductions of per-replica values:

    * before the first step, ``fit`` averages a whole input batch across workers only to learn its shapes;
      the model is built here from this worker's own part of the batch instead;
    * every step's logs (scalars) are averaged across workers along axis 0, which a scalar does not have;
      scalars are averaged over the replicas alone.
    Neither changes what is computed: the gradients are all-reduced by the strategy as usual.
    """
    import types

    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    def symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(symbolic_build, model)
    if getattr(trainer.reduce_per_replica, "_spectro", False):
        return
    keras_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            def mean(v):
                if not trainer._is_per_replica_instance(v):
                    return v
                scalar = strategy.experimental_local_results(v)[0].shape.rank == 0
                return strategy.reduce("MEAN", v, axis=None if scalar else 0)

            return tf.nest.map_structure(mean, values)
        return keras_reduce(values, strategy, reduction)

    reduce_per_replica._spectro = True
    trainer.reduce_per_replica = reduce_per_replica
