"""The model behind ``spectro serve``: loaded once, run by a pool of workers.

The model runs in worker **processes** (:mod:`spectro.serving.workers`), each loading it once when it starts:
a single-threaded LiteRT interpreter for a ``.tflite`` file, a Keras model with TensorFlow held to its share
of the cores (cores / workers threads) for a ``.keras`` one. Threads would share one interpreter lock (the
GIL) with the server's event loop: LiteRT, TensorFlow and the FFTs release it, but the Python around them
(windowing, the predictor's loop, Keras' call overhead, the web framework) does not, so threads leave a core
idle under concurrent load; and a Keras model in threads spreads every call over all cores, so one request
already takes most of them and more clients add little (``make bench`` measures both ways). The price of a
``.keras`` server: each worker imports TensorFlow (seconds at start-up, hundreds of MB each); the server process
itself only reads the run's config and labels (:func:`spectro.inference.predictors.model_info`) and waits for the
first worker to load the model, so a file Keras cannot load is an error at start-up.

Every request runs :func:`spectro.inference.classify.classify_files`, the function behind
``spectro classify``, so the server answers exactly what the command prints.

Every request is bounded before and while it runs (:class:`ServeLimits`): the readers refuse a file whose header
declares more than the :class:`~spectro.features.limits.InputLimits` allow (a 1 Hz WAV, a PNG two million frames
wide) before decoding it, and a request still running at its deadline is answered 503 while the worker doing its
work is killed and replaced (a worker in the middle of a numpy or LiteRT call cannot be interrupted), so the
requests behind it are not held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from spectro.errors import SpectroError
from spectro.features.limits import InputLimits
from spectro.paths import usable_cores
from spectro.runs import (
    CONFIG_NAME,
    METRICS_NAME,
    MODEL_RULE,
    feature_settings,
    load_config,
)
from spectro.runs import threshold as stored_threshold
from spectro.serving.uploads import DEFAULT_MAX_FILES, DEFAULT_READ_TIMEOUT, RequestError, Upload
from spectro.serving.workers import DeadlineExceeded, WorkerDied, WorkerProcesses

# how long a .keras server waits for its first worker process to import TensorFlow and load the model
WORKER_START_SECONDS = 300.0


DEFAULT_MAX_UPLOAD_MB = 50.0
DEFAULT_TIMEOUT = 60.0  # seconds of compute a request may take, waiting for a worker included


def _positive(name: str, value, *, integer: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (integer and int(value) != value):
        raise SpectroError(f"{name} must be a finite {'whole ' if integer else ''}number > 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """What one request may cost, decided before the work: each a ``spectro serve`` option.

    Parameters
    ----------
    inputs : InputLimits
        Per file, from its header: duration (``--max-seconds``; also the widest PNG), sample rate, channels.
    max_upload_mb : float
        The whole request body, in MiB (``--max-upload-mb``).
    max_files : int
        Files per request (``--max-files``), counted while the body streams in.
    timeout : float
        Seconds a request's work may take, waiting for a free worker included (``--timeout``); past it the answer
        is a 503 and the worker doing the work is replaced.
    read_timeout : float
        Seconds a request body may stall (``--read-timeout``); past it the upload is dropped (408) and its files
        removed.

    Raises
    ------
    SpectroError
        A limit that is not a finite number > 0 (``inf``, ``nan``, 0), in one line.
    """

    inputs: InputLimits = InputLimits()
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_files: int = DEFAULT_MAX_FILES
    timeout: float = DEFAULT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT

    def __post_init__(self) -> None:
        _positive("--max-upload-mb", self.max_upload_mb)
        _positive("--max-files", self.max_files, integer=True)
        _positive("--timeout", self.timeout)
        _positive("--read-timeout", self.read_timeout)

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def describe(self, settings=None) -> dict[str, Any]:
        """The ``limits`` object of ``GET /api/model``; with the model's feature settings, the widest PNG too."""
        inputs = self.inputs
        out = {"max_upload_mb": self.max_upload_mb, "max_files": int(self.max_files),
               "max_seconds": inputs.max_seconds, "sample_rate_hz": [inputs.min_sr, inputs.max_sr],
               "max_channels": inputs.max_channels, "timeout_s": self.timeout, "read_timeout_s": self.read_timeout}
        if settings is not None:
            out["max_png_frames"] = inputs.max_frames(sr=settings.sr, hop_length=settings.hop_length)
        return out

    def text(self) -> str:
        """One sentence for the API docs."""
        inputs = self.inputs
        return (f"Limits, checked before the work: a request body of at most {self.max_upload_mb:g} MiB with at most "
                f"{int(self.max_files)} files (413 past either); a recording declaring {inputs.min_sr}–"
                f"{inputs.max_sr} Hz, at most {inputs.max_channels} channels and {inputs.max_seconds:g} s, and a PNG "
                f"no wider than that many seconds render to (422 otherwise, from the file's header, before "
                f"decoding); a body that stalls for {self.read_timeout:g} s is dropped (408); a request still "
                f"working after {self.timeout:g} s is answered 503 and its worker replaced. `GET /api/model` "
                "lists them as `limits`.")


def default_workers() -> int:
    """One worker per core this process may run on."""
    return usable_cores()


def serve_model_path(model: str | Path | None = None) -> Path:
    """The model file to serve, the one ``spectro classify --model`` uses (:data:`spectro.runs.MODEL_RULE`):
    ``model`` itself when it is a ``.keras`` or ``.tflite`` file, else the run folder's ``model.keras``
    (``models/latest`` when ``None``), so a server answers what the command prints.

    Raises
    ------
    SpectroError
        No such file, not a run folder, a damaged run, or a run folder without ``model.keras``.
    """
    from spectro.inference.predictors import find_model

    return find_model(model)[0].resolve()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


# -- the work, done in a worker process (or a worker thread: processes=False) --------------------------------

_WORKER: dict[str, Any] = {}  # in a worker process: its predictor


def _start_worker(path: str, threads: int = 1) -> None:
    """A worker process's initializer: load the model (once), warm it up, compute the mel filterbank.

    ``threads``: TensorFlow's threads in this worker (a ``.keras`` model), its share of the cores, set before
    TensorFlow runs anything (a spawned process imports it afresh, its start-up lines kept off the terminal).
    """
    from threadpoolctl import threadpool_limits

    from spectro.features.logmel import settings_filters
    from spectro.inference.predictors import load_predictor

    threadpool_limits(limits=1, user_api="blas")  # one core per worker: the processes are the parallelism
    if not path.endswith(".tflite"):
        from spectro import quiet

        quiet.install()
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    predictor = load_predictor(path)
    predictor.predict(np.zeros((1, *predictor.input_shape), dtype=np.uint8))
    settings_filters(feature_settings(predictor.config))  # imports librosa once, here rather than in a request
    predictor.known  # noqa: B018 - reads the known-machine profiles once, here rather than in a request
    _WORKER["predictor"] = predictor


def _tensorflow_threads() -> tuple[int, int] | None:
    """This worker's TensorFlow (intra-op, inter-op) threads; ``None`` where TensorFlow was never imported."""
    import sys

    if "tensorflow" not in sys.modules:
        return None
    import tensorflow as tf

    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


def _classify(paths: list[str], threshold: float | None, machine: str | None = None,
              limits: InputLimits | None = None, predictor=None) -> list[dict[str, Any]]:
    """``classify_files`` on server-written files with this worker's predictor (or ``predictor``), every file
    scored as ``machine`` when given (checked by :meth:`ModelService.checked_machine`), each file's header checked
    against ``limits`` before it is decoded."""
    from spectro.inference.classify import classify_files

    return classify_files([Path(p) for p in paths], predictor or _WORKER["predictor"], threshold=threshold,
                          machine=machine, limits=limits)


def _spectrogram(path: str, settings: dict[str, Any], bands: int, limits: InputLimits | None = None) -> str:
    """A PNG of a recording rendered whole with ``settings`` (no segmenting), as ``spectro images`` renders
    it, written beside it; a spectro PNG checked against ``settings``. The PNG's path (the file, not its
    bytes, goes back through the worker's pipe)."""
    from spectro.features.audio import read_audio
    from spectro.features.logmel import db_to_pixels
    from spectro.features.png import write_png
    from spectro.features.reader import read_image
    from spectro.features.render import render_segments
    from spectro.features.settings import FeatureSettings

    source, features = Path(path), FeatureSettings.from_dict(settings)
    if source.suffix == ".png":
        read_image(source, settings=features, bands=bands, limits=limits)
        return str(source)
    whole = dataclasses.replace(features, segment_seconds=None, segment_hop_seconds=None)
    y = read_audio(source, channel=whole.channel, sr=whole.sr, limits=limits)
    [(_, db, modulation)] = render_segments(y, whole)
    out = source.with_name(source.stem + ".spectrogram.png")
    write_png(out, db_to_pixels(db, whole), settings=features, modulation=modulation)
    return str(out)


class ModelService:
    """One model, loaded once, and the pool of workers that run it.

    Parameters
    ----------
    model : path, optional
        A run folder (see :func:`serve_model_path`), a ``.keras`` or a ``.tflite`` file.
    workers : int, optional
        Worker processes; default: one per core.
    processes : bool, optional
        Run the model in worker processes (default) or, with ``False``, in worker threads of this process
        (one LiteRT interpreter each, or one Keras model shared by all; for comparison). A thread past the
        deadline cannot be stopped: its request is answered 503 and the thread finishes in the background.
    limits : ServeLimits, optional
        Its ``inputs`` go to the readers, its ``timeout`` bounds every call.
    """

    def __init__(self, model: str | Path | None = None, *, workers: int | None = None,
                 processes: bool | None = None, limits: ServeLimits | None = None):
        from spectro.inference.predictors import LiteRTPredictor, load_predictor, model_info

        started = time.perf_counter()
        self.limits = limits or ServeLimits()
        self.path = serve_model_path(model)
        self.workers = int(workers) if workers else default_workers()
        if self.workers < 1:
            raise SpectroError(f"--workers must be >= 1, got {workers}")
        self.processes = processes is not False
        keras_in_workers = self.processes and self.path.suffix == ".keras"
        # a .tflite file is checked here, before any worker starts (LiteRT loads it in a fraction of a second);
        # a .keras one in worker processes is only described here: importing TensorFlow in this process, which
        # never runs the model, would cost seconds and memory; the first worker's start-up checks it instead
        predictor = model_info(self.path) if keras_in_workers else load_predictor(self.path)
        self.predictor = predictor
        self.run, self.config, self.labels = predictor.run, predictor.config, predictor.labels
        self.settings = feature_settings(predictor.config)
        # a normal-only run: each machine's own threshold (classify_files reads it from the references)
        self.threshold = None if predictor.labels.normal_only else stored_threshold(predictor.config)
        self.lite = isinstance(predictor, LiteRTPredictor)
        self._free: queue.SimpleQueue = queue.SimpleQueue()  # worker threads' predictors
        if self.processes:  # started now: each loads the model (a .tflite server answers meanwhile)
            threads = max(1, usable_cores() // self.workers)  # TensorFlow's share of the cores per worker
            self.pool: WorkerProcesses | ThreadPoolExecutor = WorkerProcesses(self.workers, _start_worker,
                                                                              (str(self.path), threads))
            if keras_in_workers:  # a file Keras cannot load: a one-line error now, not at the first request
                self.pool.wait_ready(WORKER_START_SECONDS)
        else:
            others = [load_predictor(self.path) if self.lite else predictor for _ in range(self.workers - 1)]
            for p in [predictor, *others]:
                self._free.put(p)
            predictor.predict(np.zeros((1, *predictor.input_shape), dtype=np.uint8))  # Keras traces its graph
            for p in [predictor, *others]:
                p.known  # noqa: B018 - the known-machine profiles, read once here rather than in a request
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="spectro-serve")
            from spectro.features.logmel import settings_filters

            self.pool.submit(settings_filters, self.settings)  # librosa's import, in the background
        self.identity = {"run": self.run.name, "file": self.path.name, "format": self.path.suffix.lstrip("."),
                         "sha256": _file_digest(self.path)}
        self.load_seconds = time.perf_counter() - started

    # -- describing the model -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What ``GET /api/model`` answers and the page's model panel shows."""
        from spectro.inference.classify import machine_choices

        labels = self.labels
        config, run = self.config, self.run
        origin = Path(str(config.get("exported_from", "")))
        if "created" not in config and config.get("exported_from") and (origin / CONFIG_NAME).is_file():
            # a device folder written by `spectro export --out`: the run it came from, when it is still there
            with contextlib.suppress(SpectroError):  # and whole: a damaged one is left out of the description
                config, run = load_config(origin), origin
        metrics, source = None, None
        if (run / METRICS_NAME).is_file():
            try:
                metrics, source = json.loads((run / METRICS_NAME).read_text()), METRICS_NAME
            except json.JSONDecodeError:
                metrics = None
        if metrics is None and (config.get("metrics") or {}).get("test"):
            metrics, source = config["metrics"]["test"], f"{CONFIG_NAME} (training, test split)"
        if source is not None and run != self.run:
            source = f"{source} of {run}"
        overall = (metrics or {}).get("overall", {})
        test_metrics = {k: v for k, v in overall.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "at_threshold" in overall:
            test_metrics.update({f"{k} at threshold": v for k, v in overall["at_threshold"].items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)})
        # the threshold this server answers with: the run's when the server started (a server started before
        # 'spectro evaluate' chose one keeps its own until it is restarted)
        threshold_block = {**(self.config.get("threshold") or {"method": "default (not evaluated)"}),
                           "value": self.threshold}
        model = {**self.identity, "rule": MODEL_RULE}
        model["size_bytes"] = self.path.stat().st_size
        if self.lite:
            model["input_dtype"] = str(self.predictor.input_dtype)
        rows, frames = (int(v) for v in self.predictor.input_shape)
        return {
            "model": model,
            "task": labels.task,
            "machines": sorted({c.split("/", 1)[0] for c in labels.classes}),
            "machine_choices": machine_choices(self.predictor),
            "classes": list(labels.classes),
            "abnormal_classes": [c for c, m in zip(labels.classes, labels.abnormal_mask) if m],
            "task_classes": list(labels.task_classes),
            "features": self.settings.to_dict(),
            "input_shape": [rows, frames],
            "window_seconds": round((frames - 1) * self.settings.hop_length / self.settings.sr, 3),
            "threshold": threshold_block,
            "created": config.get("created"),
            "backbone": self.config.get("model", {}),
            "test_metrics": test_metrics,
            "test_metrics_source": source,
        }

    # -- answering ------------------------------------------------------------------------------------
    async def _run(self, function, *args):
        """``function(*args)`` in a worker, awaited, within the deadline (``limits.timeout``); a worker thread lends
        it a predictor of its own."""
        timeout = self.limits.timeout
        if not self.processes:
            work = asyncio.get_running_loop().run_in_executor(self.pool, self._in_thread, function, args)
            try:
                return await asyncio.wait_for(work, timeout)
            except asyncio.TimeoutError:
                raise RequestError(_late(timeout, "a worker thread cannot be stopped: it finishes in the "
                                                  "background"), 503) from None
        try:
            return await self.pool.call(function, *args, timeout=timeout)
        except DeadlineExceeded as exc:
            raise RequestError(_late(timeout, str(exc)), 503) from None
        except WorkerDied as exc:
            raise RequestError(str(exc), 503) from None

    def _in_thread(self, function, args):
        if function is not _classify:
            return function(*args)
        predictor = self._free.get()  # one LiteRT interpreter serves one thread at a time
        try:
            return function(*args, predictor)
        finally:
            self._free.put(predictor)

    def checked_machine(self, machine: str | None) -> str | None:
        """The request's ``machine`` (what ``spectro classify --machine`` takes), checked against the model before
        any upload is read; a bad one is a 422 that says what the model accepts."""
        from spectro.inference.classify import checked_machine, machine_choices

        try:
            return checked_machine(self.predictor, machine)
        except SpectroError as exc:
            choices = machine_choices(self.predictor)
            accepted = f" (this model accepts: {', '.join(choices)})" if choices else ""
            raise RequestError(str(exc).replace("--machine", "machine") + accepted, 422) from None

    async def classify(self, uploads: list[Upload], machine: str | None = None) -> list[dict[str, Any]]:
        """The ``spectro classify --json`` objects of the uploads, ``path`` being each client's file name; every
        upload scored as ``machine`` when given (as ``spectro classify --machine``)."""
        with _request_errors(uploads):
            results = await self._run(_classify, [str(u.path) for u in uploads], self.threshold, machine,
                                      self.limits.inputs)
        for result, upload in zip(results, uploads):
            result["path"] = upload.name
        return results

    async def spectrogram(self, upload: Upload) -> bytes:
        """The upload's spectrogram as a PNG with the model's feature settings (see :func:`_spectrogram`)."""
        with _request_errors([upload]):
            png = await self._run(_spectrogram, str(upload.path), self.settings.to_dict(),
                                  int(self.predictor.input_shape[0]), self.limits.inputs)
            return Path(png).read_bytes()

    def close(self) -> None:
        if isinstance(self.pool, WorkerProcesses):
            self.pool.close()
        else:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _late(timeout: float, what: str) -> str:
    return (f"the request took longer than the server's --timeout of {timeout:g} s ({what}); send fewer or shorter "
            "files, or ask for a longer --timeout")


@contextlib.contextmanager
def _request_errors(uploads: list[Upload]) -> Iterator[None]:
    """Turn a :class:`SpectroError` about uploaded files into a :class:`RequestError` that names the client's
    files (never the server's paths); an ``OSError`` from decoding a damaged file, Pillow's decompression-bomb
    refusal and a file too big to decode in memory too (each a bad input, never a server fault)."""
    from PIL import Image

    try:
        yield
    except RequestError:
        raise
    except SpectroError as exc:
        raise RequestError(_client_message(str(exc), uploads), 422) from None
    except Image.DecompressionBombError as exc:
        raise RequestError(_client_message(f"image too large ({str(exc).splitlines()[0]})", uploads), 413) from None
    except MemoryError:
        raise RequestError(_client_message("too large to decode in the server's memory", uploads), 413) from None
    except OSError as exc:  # e.g. Pillow's "image file is truncated" while decoding a PNG's pixels
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RequestError(_client_message(f"damaged file ({reason})", uploads), 422) from None


def _client_message(message: str, uploads: list[Upload]) -> str:
    for upload in uploads:
        message = message.replace(str(upload.path), upload.name)
    if uploads:
        message = message.replace(str(uploads[0].path.parent), "<upload>")
        if len(uploads) == 1 and not message.startswith(f"{uploads[0].name}: "):
            message = f"{uploads[0].name}: {message}"
    return " ".join(message.split())
