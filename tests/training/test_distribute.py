"""spectro.training.distribute: device and cluster choice; a 2-device run and a 2-worker localhost run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from spectro.errors import SpectroError
from spectro.training.distribute import DistributeSettings, cluster, place

TINY = ["--weights", "none", "--alpha", "0.35", "--image-size", "32", "--steps", "6", "--eval-every", "3",
        "--qat-steps", "0",
        "--batch-size", "8", "--no-progress", "--no-learning-check", "--window-seconds", "0.5"]


@pytest.mark.parametrize("devices", ["0", "-1", "two", "1.5"])
def test_bad_device_counts_are_refused(devices):
    with pytest.raises(SpectroError, match="--devices"):
        DistributeSettings(devices=devices)


def test_mixed_precision_is_refused_without_a_gpu():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(SpectroError, match="needs a GPU"):
        place(DistributeSettings(mixed_precision=True))


def test_one_device_is_no_distribution():
    placement = place(DistributeSettings())
    assert (placement.name, placement.replicas, placement.chief) == ("default", 1, True)


def test_tf_config_is_read_and_checked(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster() is None
    config = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert cluster() == config
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(SpectroError, match="TF_CONFIG is not valid JSON"):
        cluster()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {}}))
    with pytest.raises(SpectroError, match="cluster.worker"):
        cluster()


def _reloads_and_predicts(run, tiny_images):
    from spectro.data.manifest import read_manifest
    from spectro.features.reader import read_images
    from spectro.inference.predictors import load_predictor

    predictor = load_predictor(run)
    assert predictor.input_shape == (32, 32) and predictor.image_shape == (32, 63)  # 0.5 s windows of 1 s clips
    pixels, _ = read_images(read_manifest(tiny_images)[:4])
    probs = predictor.predict_clips(pixels)
    assert probs.shape == (4, len(predictor.labels.classes))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def _spectro(args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "spectro", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, **kwargs)


@pytest.mark.slow
def test_a_two_device_run_writes_a_run_that_reloads_and_predicts(tiny_images, tmp_path):
    process = _spectro(["train", str(tiny_images), "--out", str(tmp_path), "--name", "two", "--devices", "2", *TINY])
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    run = tmp_path / "two"
    config = json.loads((run / "config.json").read_text())
    assert config["distribute"]["strategy"] == "MirroredStrategy"
    assert config["distribute"]["replicas"] == 2
    assert config["distribute"]["global_batch_size"] == 16
    _reloads_and_predicts(run, tiny_images)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_a_two_worker_localhost_cluster_trains_one_run(tiny_images, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(_spectro(["train", str(tiny_images), "--out", str(tmp_path / f"out{index}"), "--name", "mw",
                                   *TINY], env={"TF_CONFIG": json.dumps(config), "CUDA_VISIBLE_DEVICES": ""}))
    try:
        results = [p.communicate(timeout=600) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, err) in zip(processes, results):
        assert p.returncode == 0, err[-3000:]
    run = tmp_path / "out0" / "mw"  # the chief (worker 0) writes the run; the other worker keeps nothing
    assert not (tmp_path / "out1" / "mw").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["distribute"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert config["distribute"]["workers"] == 2
    _reloads_and_predicts(run, tiny_images)
