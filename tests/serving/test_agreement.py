"""``spectro serve RUN`` and ``spectro classify --model RUN`` agree: one rule picks the run's model file (its
model.keras, even beside .tflite files), the server answers with the threshold the run had when it started, and
``POST /api/classify`` answers what ``classify --json`` prints, field for field but the path. A model the server
cannot load is its one-line error at start-up, nothing before it."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tone_signal, write_wav

from spectro.cli import main as cli
from spectro.errors import SpectroError

pytestmark = pytest.mark.slow

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from spectro.runs import MODEL_RULE, update_config  # noqa: E402
from spectro.serving.app import create_app  # noqa: E402

CHOSEN = {"value": 0.37, "method": "max_fpr", "max_fpr": 0.05}  # what 'spectro evaluate' stores, an odd value


def _same(got, want, where: str = "") -> None:
    """Equal structure, keys, texts and flags; numbers equal to 1e-5 (the server's model runs in a worker process
    whose TensorFlow has other threads, which may move a probability in its last rounded digit)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, got, want)
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (a, b) in enumerate(zip(got, want)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, abs=1e-5), where
    else:
        assert got == want and type(got) is type(want), (where, got, want)


def test_serve_and_classify_use_the_same_model_and_threshold_and_answer_alike(tiny_exports, tiny_images, tmp_path,
                                                                            capsys):
    # the tiny run with its three .tflite files beside model.keras (the case where serve once took the int8 file),
    # after 'spectro evaluate' chose a threshold
    run = Path(shutil.copytree(tiny_exports["run"], tmp_path / "run"))
    assert {p.name for p in run.glob("*.tflite")} == {"model.tflite", "model_dynamic.tflite", "model_int8.tflite"}
    update_config(run, threshold=CHOSEN)
    paths = [write_wav(tmp_path / "clip.wav", tone_signal("bearing", 1.0, seed=7)),
             Path(shutil.copy(tiny_images / "fan/normal/6dB_id_00_00000000.png", tmp_path / "image.png"))]

    capsys.readouterr()
    assert cli(["classify", *map(str, paths), "--model", str(run), "--json"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [e["threshold"] for e in expected] == [CHOSEN["value"]] * 2

    with TestClient(create_app(run, workers=1)) as client:
        model = client.get("/api/model").json()
        assert model["model"]["file"] == "model.keras" and model["model"]["format"] == "keras"
        assert model["model"]["rule"] == MODEL_RULE
        assert model["threshold"] == CHOSEN  # read when the server started
        handles = [p.open("rb") for p in paths]
        try:
            response = client.post("/api/classify", files=[("file", (p.name, h)) for p, h in zip(paths, handles)])
        finally:
            for h in handles:
                h.close()
    assert response.status_code == 200, response.text
    answers = response.json()
    assert [a["kind"] for a in answers] == ["audio", "png"]
    for got, want, path in zip(answers, expected, paths):
        assert got["path"] == path.name
        _same({k: v for k, v in got.items() if k != "path"}, {k: v for k, v in want.items() if k != "path"})
        assert got["verdict"] == want["verdict"] and got["threshold"] == CHOSEN["value"]


# -- a model the server cannot load ------------------------------------------------------------------------------
def _fails():
    raise SpectroError("model.keras: not a loadable Keras model")


@pytest.mark.parametrize("initializer", [_fails, dict])
def test_a_worker_whose_pool_was_closed_while_it_started_ends_quietly(initializer):
    """The server closes the pool when the first worker's start-up fails; another worker that finishes its start-up
    afterwards finds the pipe closed and ends without a traceback (it printed a BrokenPipeError before)."""
    from spectro.serving.workers import _worker_main

    mine, theirs = multiprocessing.Pipe(duplex=True)
    mine.close()
    assert _worker_main(theirs, initializer, ()) is None


def test_serve_with_a_damaged_model_prints_its_one_line_error_only(tiny_run, tmp_path):
    broken = Path(shutil.copytree(tiny_run, tmp_path / "broken", ignore=shutil.ignore_patterns("*.keras")))
    (broken / "model.keras").write_bytes(b"not a zip archive" * 20)
    done = subprocess.run([sys.executable, "-m", "spectro", "serve", str(broken), "--port", "0", "--workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {broken / 'model.keras'}: not a loadable Keras model (not a "
                                                ".keras zip archive: damaged or another format); train the run again "
                                                "or restore the file"]
