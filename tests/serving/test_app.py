"""spectro serve's HTTP API through FastAPI's test client: every endpoint, the same answers as classify --json,
every bad-input case, clean-up of uploads, and concurrent requests each getting their own answer."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import SR, tone_signal, write_wav

from spectro.cli import main as cli

pytestmark = pytest.mark.slow

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from spectro.paths import usable_cores  # noqa: E402
from spectro.serving.app import create_app  # noqa: E402
from spectro.serving.service import _tensorflow_threads, serve_model_path  # noqa: E402

# the tiny images were rendered from tone_signal("bearing", 1.0, seed=1000 + i) for fan/bearing image i
FAN_BEARING_0 = "fan/bearing/6dB_id_00_00000000.png"


@pytest.fixture(scope="module")
def files(tiny_images, tmp_path_factory) -> dict[str, Path]:
    """A few inputs of every kind: short recordings, a long one (scored window by window), a PNG."""
    folder = tmp_path_factory.mktemp("serve_files")
    return {
        "normal.wav": write_wav(folder / "normal.wav", tone_signal("normal", 1.0, seed=3)),
        "bearing.wav": write_wav(folder / "bearing.wav", tone_signal("bearing", 1.0, seed=1001)),
        "long.flac": write_wav(folder / "long.flac", np.concatenate([tone_signal("normal", 2.0, seed=4),
                                                                     tone_signal("bearing", 2.0, seed=5)])),
        "image.png": Path(shutil.copy(tiny_images / FAN_BEARING_0, folder / "image.png")),
    }


@pytest.fixture(scope="module")
def lite_client(tiny_exports):
    with TestClient(create_app(tiny_exports["files"]["int8"], workers=2)) as client:
        yield client


def _post(client, paths: list[Path], *, url: str = "/api/classify", names: list[str] | None = None):
    handles = [p.open("rb") for p in paths]
    names = names or [p.name for p in paths]
    try:
        return client.post(url, files=[("file", (name, handle)) for name, handle in zip(names, handles)])
    finally:
        for handle in handles:
            handle.close()


def _cli_json(paths: list[Path], model: Path, capsys) -> list[dict]:
    capsys.readouterr()
    assert cli(["classify", *map(str, paths), "--model", str(model), "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def _same_as_cli(answer: list[dict], expected: list[dict], names: list[str]) -> None:
    """Every key and value of classify --json, ``path`` being the client's file name."""
    assert len(answer) == len(expected)
    for got, want, name in zip(answer, expected, names):
        assert got == {**want, "path": name}


# -- which model, and start-up ---------------------------------------------------------------------------------

def test_a_run_folder_serves_its_keras_model_and_a_named_tflite_file_runs_without_tensorflow(tiny_exports):
    # one rule with classify: a run folder means its model.keras even beside .tflite files, which are named
    assert serve_model_path(tiny_exports["run"]) == tiny_exports["run"] / "model.keras"
    assert serve_model_path(tiny_exports["files"]["int8"]) == tiny_exports["run"] / "model_int8.tflite"
    code = ("import sys, json; from spectro.serving.app import create_app; app = create_app(sys.argv[1]); "
            "print(json.dumps([app.state.service.identity, 'tensorflow' in sys.modules, 'keras' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code, str(tiny_exports["files"]["int8"])], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    identity, tensorflow, keras = json.loads(done.stdout.strip().splitlines()[-1])
    assert identity["file"] == "model_int8.tflite" and identity["format"] == "tflite"
    assert not tensorflow and not keras


def test_a_keras_model_is_loaded_by_the_workers_only_and_checked_at_start_up(tiny_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken, ignore=shutil.ignore_patterns("*.keras", "*.tflite"))
    (broken / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    code = ("import sys, json; from spectro.serving.app import create_app; from spectro.errors import SpectroError\n"
            "app = create_app(sys.argv[1], workers=1); service = app.state.service\n"
            "answer = [service.identity['file'], 'tensorflow' in sys.modules, service.pool.workers[0].ready]\n"
            "service.close()\n"
            "try:\n    create_app(sys.argv[2], workers=1)\nexcept SpectroError as exc:\n    answer.append(str(exc))\n"
            "print(json.dumps(answer))")
    done = subprocess.run([sys.executable, "-c", code, str(tiny_run), str(broken)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    file, tensorflow, ready, error = json.loads(done.stdout.strip().splitlines()[-1])
    # the server process describes the model from its run and never imports TensorFlow; its first worker has
    # loaded the model before create_app returns
    assert file == "model.keras" and not tensorflow and ready
    # a file Keras cannot load is a one-line error at start-up
    assert "not a loadable Keras model" in error and str(broken / "model.keras") in error and "\n" not in error


# -- the answers -----------------------------------------------------------------------------------------------

def test_classify_answers_what_classify_json_prints(lite_client, files, tiny_exports, capsys):
    paths = list(files.values())
    expected = _cli_json(paths, tiny_exports["files"]["int8"], capsys)
    response = _post(lite_client, paths)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    _same_as_cli(response.json(), expected, list(files))
    long = response.json()[2]
    assert long["kind"] == "audio" and len(long["windows"]) > 1  # scored window by window
    # one file per request gives the same objects
    for path, want in zip(paths, expected):
        _same_as_cli(_post(lite_client, [path]).json(), [want], [path.name])


def test_classify_with_the_keras_model(tiny_run, files, capfd):
    paths = list(files.values())
    expected = _cli_json(paths, tiny_run, capfd)
    app = create_app(tiny_run, workers=2)
    with TestClient(app) as client:
        assert client.get("/api/health").json()["model"]["file"] == "model.keras"
        _same_as_cli(_post(client, paths).json(), expected, list(files))
        # each worker process holds TensorFlow to its share of the cores (idle workers are taken in turn)
        pool = app.state.service.pool
        share = max(1, usable_cores() // 2)
        assert [client.portal.call(pool.call, _tensorflow_threads) for _ in range(2)] == [(share, 1)] * 2
    assert "oneDNN" not in capfd.readouterr().err  # the workers' TensorFlow start-up stays quiet


def test_the_client_file_name_is_shown_never_used_as_a_path(tiny_exports, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the server's request folders go
    (tmp_path / "tmp").mkdir()
    expected = _cli_json([files["normal.wav"]], tiny_exports["files"]["int8"], capsys)
    with TestClient(create_app(tiny_exports["files"]["int8"], workers=1)) as client:
        response = _post(client, [files["normal.wav"]], names=["../../escape.wav"])
        assert response.status_code == 200
        assert response.json()[0]["path"] == "escape.wav"
        assert {k: v for k, v in response.json()[0].items() if k != "path"} == \
            {k: v for k, v in expected[0].items() if k != "path"}
        names = ["C:\\recordings\\pump 7.wav", "", "..", "/etc/passwd"]
        shown = [r["path"] for r in _post(client, [files["normal.wav"]] * 4, names=names).json()]
        assert shown == ["pump 7.wav", "upload-2", "upload-3", "passwd"]
        # control characters (sent raw: a browser would escape them) are dropped from the name shown
        wav = files["normal.wav"].read_bytes()
        body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a\tb\x7fc.wav"\r\n\r\n' + wav
                + b"\r\n--b--\r\n")
        raw = client.post("/api/classify", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
        assert [r["path"] for r in raw.json()] == ["abc.wav"]
        assert _post(client, [files["normal.wav"]], names=["x.txt"]).status_code == 200  # content decides
    assert not (tmp_path / "escape.wav").exists() and not (tmp_path.parent / "escape.wav").exists()
    assert list((tmp_path / "tmp").iterdir()) == []  # every request's folder removed


def test_spectrogram_is_rendered_with_the_model_settings(lite_client, files, tiny_exports, tmp_path):
    from spectro.features.png import read_png
    from spectro.features.render import render_recording
    from spectro.runs import feature_settings, load_config

    settings = feature_settings(load_config(tiny_exports["run"]))
    response = _post(lite_client, [files["long.flac"]], url="/api/spectrogram")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    (tmp_path / "s.png").write_bytes(response.content)
    pixels, info = read_png(tmp_path / "s.png")
    assert info.settings == settings
    [(_, want)] = render_recording(files["long.flac"], settings)
    assert pixels.shape == (settings.n_mels, settings.frames_for(4 * SR)) and np.array_equal(pixels, want)
    png = _post(lite_client, [files["image.png"]], url="/api/spectrogram")
    assert png.status_code == 200 and png.content == files["image.png"].read_bytes()
    two = _post(lite_client, [files["normal.wav"], files["bearing.wav"]], url="/api/spectrogram")
    assert two.status_code == 400 and "expected one file" in two.json()["error"]


def test_model_description_and_health(lite_client, tiny_exports):
    from spectro.runs import load_config

    config = load_config(tiny_exports["run"])
    model = lite_client.get("/api/model").json()
    assert model["machines"] == ["fan", "pump"]
    assert model["classes"] == ["fan/bearing", "fan/normal", "pump/leak", "pump/normal"]
    assert model["abnormal_classes"] == ["fan/bearing", "pump/leak"]
    assert model["features"] == config["features"] and model["input_shape"] == config["input_shape"]
    assert model["threshold"]["value"] == 0.5 and model["task"] == "failure"
    assert model["max_upload_mb"] == 50
    assert model["machine_choices"] == []  # scored by the CNN's probability: no machine to choose
    assert model["model"]["file"] == "model_int8.tflite" and model["model"]["input_dtype"] == "uint8"
    assert model["backbone"]["alpha"] == 0.35
    health = lite_client.get("/api/health").json()
    assert health["status"] == "ok" and health["workers"] == 2 and health["version"]
    digest = hashlib.sha256((tiny_exports["run"] / "model_int8.tflite").read_bytes()).hexdigest()[:12]
    assert health["model"] == {"run": tiny_exports["run"].name, "file": "model_int8.tflite", "format": "tflite",
                               "sha256": digest}


def test_the_machine_parameter_is_classify_machine(tiny_exports, files, tmp_path, capsys):
    """``?machine=`` scores every upload as that machine type, the objects ``classify --machine --json`` prints;
    a type the run does not score, or a machine for a run scored by the CNN's probability, is a 422 before any
    upload is read."""
    from spectro.runs import load_config, save_config
    from spectro.scoring.fusion import Fusion, TypeFusion

    run = Path(shutil.copytree(tiny_exports["run"], tmp_path / "fused"))
    # a fused score whose two types sit far apart: which one a file is scored as shows in its score
    Fusion({"fan": TypeFusion([-4.0, 1.0], "validation"), "pump": TypeFusion([3.0, 0.5], "validation")}).save(run)
    config = load_config(run)
    config["anomaly_score"] = {"kind": "fused"}
    save_config(run, config)
    paths = [files["normal.wav"], files["image.png"]]
    with TestClient(create_app(run / "model_int8.tflite", workers=1)) as client:
        assert client.get("/api/model").json()["machine_choices"] == ["fan", "pump"]
        answers = {}
        for machine in ("pump", "fan/id_07"):
            capsys.readouterr()
            assert cli(["classify", *map(str, paths), "--model", str(run / "model_int8.tflite"), "--json",
                        "--machine", machine]) == 0
            expected = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
            assert {(r["machine_type"], r["machine_type_from"]) for r in expected} == {
                (machine.split("/")[0], "--machine")}
            response = client.post(f"/api/classify?machine={machine}",
                                   files=[("file", (p.name, p.read_bytes())) for p in paths])
            assert response.status_code == 200, response.text
            _same_as_cli(response.json(), expected, [p.name for p in paths])
            answers[machine.split("/")[0]] = response.json()
        for fan, pump in zip(answers["fan"], answers["pump"]):  # each on its own type's scale
            assert fan["anomaly_score"] != pytest.approx(pump["anomaly_score"], abs=0.1)
        # without it: the recording's server-side path names no type, so the type the model finds most likely
        assert _post(client, paths[:1]).json()[0]["machine_type_from"] == "the model"
        bad = client.post("/api/classify?machine=turbine", files=[("file", ("a.wav", paths[0].read_bytes()))])
        assert bad.status_code == 422
        assert bad.json() == {"error": "machine turbine: this run scores the machine types fan, pump; got 'turbine' "
                                       "(this model accepts: fan, pump)"}
    with TestClient(create_app(tiny_exports["files"]["int8"], workers=1)) as client:
        answer = client.post("/api/classify?machine=pump", files=[("file", ("a.wav", paths[0].read_bytes()))])
        assert answer.status_code == 422 and answer.json()["error"].startswith("machine is for normal-only runs")


def test_model_description_has_the_evaluated_threshold_and_metrics(tiny_exports, tmp_path):
    from spectro.runs import METRICS_NAME, update_config

    run = Path(shutil.copytree(tiny_exports["run"], tmp_path / "run"))
    update_config(run, threshold={"value": 0.42, "method": "max_fpr", "max_fpr": 0.05}, created="2026-12-01T10:00:00")
    (run / METRICS_NAME).write_text(json.dumps({"overall": {"auc": 0.875, "accuracy": 0.75, "n": 8, "report": {},
                                                            "at_threshold": {"fpr": 0.25}}}))
    with TestClient(create_app(run / "model.tflite", workers=1)) as client:
        model = client.get("/api/model").json()
        assert model["threshold"] == {"value": 0.42, "method": "max_fpr", "max_fpr": 0.05}
        assert model["created"] == "2026-12-01T10:00:00" and model["model"]["file"] == "model.tflite"
        assert model["test_metrics"] == {"auc": 0.875, "accuracy": 0.75, "n": 8, "fpr at threshold": 0.25}
        assert model["test_metrics_source"] == "metrics.json"
        wav = _wav_bytes(tone_signal("normal", 1.0))
        (result,) = client.post("/api/classify", files={"file": ("a.wav", wav)}).json()
        assert result["threshold"] == 0.42 and result["verdict"] == ("ABNORMAL" if result["anomaly_score"] >= 0.42
                                                                     else "normal")
    # a device folder (`spectro export --out`: the model, labels.json and part of config.json) names its run,
    # whose training date and metrics the description shows while that run is still there
    device = tmp_path / "device"
    device.mkdir()
    for name in ("model_int8.tflite", "labels.json", "known_machines.npz"):
        shutil.copy(run / name, device / name)
    config = json.loads((run / "config.json").read_text())
    kept = {k: config[k] for k in ("format", "features", "input_shape", "image_shape", "task", "model", "seed",
                                   "threshold")}
    (device / "config.json").write_text(json.dumps({**kept, "exported_from": str(run)}))
    with TestClient(create_app(device / "model_int8.tflite", workers=1)) as client:
        model = client.get("/api/model").json()
        assert model["created"] == "2026-12-01T10:00:00" and model["test_metrics"]["auc"] == 0.875
        assert model["test_metrics_source"] == f"metrics.json of {run}"
        assert model["model"]["run"] == "device" and model["threshold"]["value"] == 0.42


def test_page_docs_and_assets(lite_client):
    import re

    page = lite_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert 'id="files"' in html and 'type="file"' in html and "multiple" in html
    refs = re.findall(r'(?:src|href)="(?!data:)([^"]*)"', html)
    assert set(refs) == {"page.css", "page.js", "docs"}  # nothing from another host
    js = lite_client.get("/page.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert re.findall(r"https?://[^\s\"']+", js.text) == ["http://www.w3.org/2000/svg"]  # a namespace, not a fetch
    assert "api/inspect" in js.text and "api/model" in js.text  # one upload per file: verdict and spectrogram
    css = lite_client.get("/page.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"] and "url(" not in css.text
    assert lite_client.get("/docs").status_code == 200
    schema = lite_client.get("/openapi.json").json()
    assert {"/api/classify", "/api/spectrogram", "/api/model", "/api/health"} <= set(schema["paths"])
    body = schema["paths"]["/api/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["type"] == "array"


def test_packaged_page_files_are_declared():
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    import fnmatch

    for name in ("page.html", "page.js", "page.css"):
        assert (root / "spectro" / "serving" / name).is_file()
        assert any(fnmatch.fnmatch(name, pattern) for pattern in data["spectro.serving"])


# -- bad input -------------------------------------------------------------------------------------------------

def _wav_bytes(y: np.ndarray, sr: int = SR) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, y, sr, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _png_bytes(tiny_images, **changed) -> bytes:
    """A spectro PNG of a tiny-run image, rendered with other feature settings when ``changed`` says so."""
    import dataclasses

    from spectro.features.png import read_png, write_png

    pixels, info = read_png(tiny_images / FAN_BEARING_0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.png"
        write_png(path, pixels, settings=dataclasses.replace(info.settings, **changed),
                  modulation=np.asarray(info.modulation))
        return path.read_bytes()


def _bad_inputs(tiny_images) -> dict[str, tuple[bytes, str, int, str]]:
    """case -> (content, client file name, expected status, words the error must hold)."""
    wav = _wav_bytes(tone_signal("normal", 1.0))
    png = (tiny_images / FAN_BEARING_0).read_bytes()
    plain_png = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((32, 63), dtype=np.uint8)).save(plain_png, format="PNG")
    return {
        "text": (b"temperature,42\n" * 20, "readings.csv", 415, "not a recording or a spectrogram image"),
        "jpeg named .wav": (b"\xff\xd8\xff\xe0" + bytes(200), "clip.wav", 415, "not a recording or a spectrogram"),
        "wav header, garbage": (b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(40), "clip.wav", 422, "not a readable audio"),
        "other settings": (_png_bytes(tiny_images, n_fft=1024), "image.png", 422, "other feature settings"),
        "not a spectro png": (plain_png.getvalue(), "photo.png", 422, "not a spectro spectrogram"),
        "empty": (b"", "clip.wav", 422, "empty file"),
        "truncated wav": (wav[: len(wav) // 2], "clip.wav", 422, "truncated recording"),
        "truncated png": (png[: len(png) // 2], "image.png", 422, "damaged image"),
        "shorter than one fft window": (_wav_bytes(tone_signal("normal", 0.01)), "click.wav", 422, "too short"),
    }


BAD = ["text", "jpeg named .wav", "wav header, garbage", "other settings", "not a spectro png", "empty",
       "truncated wav", "truncated png", "shorter than one fft window"]


def _assert_error(response, status: int, words: str = "") -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert "\n" not in response.text.strip()
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and words in body["error"]
    assert "Traceback" not in body["error"] and "spectro-serve-" not in body["error"]
    assert tempfile.gettempdir() not in body["error"]  # the server's folders are never named
    return body["error"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_a_4xx_with_a_one_line_error(lite_client, tiny_images, case):
    content, name, status, words = _bad_inputs(tiny_images)[case]
    for url in ("/api/classify", "/api/spectrogram"):
        error = _assert_error(lite_client.post(url, files={"file": (name, content)}), status)
        assert error.startswith(f"{name}: ")  # the file is named as the client named it
        if url == "/api/classify":
            assert words in error


def test_one_bad_file_among_good_ones_names_it(lite_client, files):
    good = files["normal.wav"].read_bytes()
    response = lite_client.post("/api/classify", files=[("file", ("good.wav", good)), ("file", ("bad.wav", b"nope"))])
    assert _assert_error(response, 415).startswith("bad.wav: ")


def test_request_shape_errors(lite_client, files):
    _assert_error(lite_client.post("/api/classify", json={"file": "clip.wav"}), 415, "expected a multipart/form-data")
    _assert_error(lite_client.post("/api/classify", files={"audio": ("a.wav", b"RIFF")}), 400,
                  "no file in the upload")
    _assert_error(lite_client.post("/api/classify", content=b"--x\r\nbroken", headers={
        "content-type": "multipart/form-data; boundary=x"}), 400)
    _assert_error(lite_client.get("/api/nothing"), 404, "not found: /api/nothing")
    _assert_error(lite_client.get("/api/classify"), 405)


def test_uploads_over_the_size_limit_are_refused(tiny_exports, files, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    big = _wav_bytes(tone_signal("normal", 3.0))  # 96 kB
    assert len(big) > 64 * 1024
    with TestClient(create_app(tiny_exports["files"]["int8"], max_upload_mb=64 / 1024, workers=1)) as client:
        _assert_error(client.post("/api/classify", files={"file": ("big.wav", big)}), 413, "over the server's limit")
        # without a Content-Length (chunked): counted as it arrives, refused before it is all stored

        def chunks():
            body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n\r\n" + big
                    + b"\r\n--b--\r\n")
            for i in range(0, len(body), 8192):
                yield body[i:i + 8192]

        response = client.post("/api/classify", content=chunks(), headers={
            "content-type": "multipart/form-data; boundary=b"})
        _assert_error(response, 413, "over the server's limit")
        small = client.post("/api/classify", files={"file": ("ok.wav", files["normal.wav"].read_bytes())})
        assert small.status_code == 200
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(Exception, match="max-upload-mb"):
        create_app(tiny_exports["files"]["int8"], max_upload_mb=0)


# -- concurrency -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tflite", "tflite in threads", "keras"])
def test_concurrent_requests_each_get_their_own_answer(kind, tiny_exports, tiny_run, tmp_path):
    from spectro.inference.classify import classify_files
    from spectro.inference.predictors import load_predictor

    model = tiny_exports["files"]["int8"] if kind.startswith("tflite") else tiny_run / "model.keras"
    # distinct recordings: three kinds, different seeds and lengths (1 to 1.47 s: one or two windows); 32 of
    # them, 12 for Keras (whose predict() costs ~0.1 s a call here)
    n = 12 if kind == "keras" else 32
    kinds = ["normal", "bearing", "leak"]
    paths = [write_wav(tmp_path / f"clip{i:02d}.wav", tone_signal(kinds[i % 3], 1.0 + 0.015 * i, seed=i))
             for i in range(n)]
    predictor = load_predictor(model)
    expected = [classify_files([p], predictor, threshold=0.5)[0] for p in paths]
    # every answer tells its file apart (scores and windows: the last window ends where the recording does)
    assert len({json.dumps({k: v for k, v in e.items() if k != "path"}) for e in expected}) == n

    children = set(multiprocessing.active_children())
    app = create_app(model, workers=2, processes=kind != "tflite in threads")
    service = app.state.service
    assert service.processes == (kind != "tflite in threads")
    running, most, calls = [0], [0], [0]
    if not service.processes:  # count the threads working at once
        inner, lock = service._in_thread, threading.Lock()
        both_in = threading.Barrier(2)  # the first two calls wait for each other: both threads work at once

        def counting(function, args):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
                calls[0] += 1
                first_two = calls[0] <= 2
            try:
                if first_two:
                    both_in.wait(timeout=60)  # broken (a 500) if a second thread never comes
                return inner(function, args)
            finally:
                with lock:
                    running[0] -= 1

        service._in_thread = counting
    with TestClient(app) as client, ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda p: client.post("/api/classify", files={"file": (p.name, p.read_bytes())}),
                                paths, timeout=120))
        workers = set(multiprocessing.active_children()) - children
        assert len(workers) == (2 if service.processes else 0)  # worker processes of its own, or none
    assert [a.status_code for a in answers] == [200] * n
    for answer, path, want in zip(answers, paths, expected):
        assert answer.json() == [{**want, "path": path.name}]
    if not service.processes:
        assert most[0] == 2  # both workers busy at once, never more than the pool


# -- the command -----------------------------------------------------------------------------------------------

def test_serve_errors_are_one_line(tmp_path, tiny_exports, capsys):
    assert cli(["serve", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no such run folder" in err[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli(["serve", str(tiny_exports["run"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0]
    assert cli(["serve", "--model", str(tmp_path / "m.tflite"), "--port", "0"]) == 2
    assert "no such model file" in capsys.readouterr().err
