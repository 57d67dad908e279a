"""spectro serve's limits: small hostile uploads (a 1 Hz WAV, a PNG two million frames wide, a decompression bomb,
metadata of the wrong types) answered with a fast 4xx, files per request, the compute deadline (503, the worker
replaced), a stalled request body (dropped, its files removed), and limits that must be finite numbers > 0."""

from __future__ import annotations

import asyncio
import io
import json
import math
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import SR, tone_signal

from spectro.cli import main as cli
from spectro.errors import SpectroError

pytestmark = pytest.mark.slow

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from spectro.serving import service as service_module  # noqa: E402
from spectro.serving.app import create_app  # noqa: E402

FAN_BEARING_0 = "fan/bearing/6dB_id_00_00000000.png"


def _hang(*args):
    """A worker's work that never ends (pickled by reference: the worker process imports this module)."""
    time.sleep(3600)


def wav_bytes(y: np.ndarray, sr: int = SR) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, y, sr, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, text: dict[str, str], *, idat: bytes | None = None) -> bytes:
    """An 8-bit grayscale PNG of zeros, ``width`` × ``height``, compressed row by row (a 64 × 2,000,000 image is
    about 125 KB and never held as pixels here); ``idat`` replaces the image data (a header-only bomb)."""
    if idat is None:
        compressor = zlib.compressobj(9)
        row = bytes(width + 1)
        idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    text_chunks = [_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1")) for k, v in text.items()]
    return b"".join([b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)),
                     *text_chunks, _chunk(b"IDAT", idat), _chunk(b"IEND", b"")])


def spectro_text(tiny_images: Path) -> dict[str, str]:
    """The text chunks of a real spectro PNG of the tiny run (its settings, hash, modulation spectrum)."""
    from PIL import Image

    with Image.open(tiny_images / FAN_BEARING_0) as image:
        return {k: v for k, v in image.info.items() if isinstance(v, str) and k.startswith("spectro:")}


def hostile_files(tiny_images: Path) -> dict[str, tuple[bytes, str]]:
    """Small uploads that cost a lot without header checks: case -> (content, file name)."""
    text = spectro_text(tiny_images)
    one_hz = bytearray(wav_bytes(np.zeros(40_000, dtype=np.float32)))  # 80 KB of 16-bit samples...
    one_hz[24:32] = struct.pack("<II", 1, 2)  # ...declared at 1 Hz: 40,000 s once resampled to 16 kHz
    settings = json.loads(text["spectro:settings"])
    return {
        "1 Hz wav": (bytes(one_hz), "one-hertz.wav"),
        "64 x 2,000,000 png": (png_bytes(2_000_000, settings["n_mels"], text), "wide.png"),
        "decompression bomb": (png_bytes(30_000, 30_000, text, idat=zlib.compress(bytes(1000))), "bomb.png"),
        "settings of the wrong types": (png_bytes(40, settings["n_mels"], {
            **text, "spectro:settings": json.dumps({**settings, "sr": "abc", "n_mels": [64]})}), "types.png"),
        "settings a list": (png_bytes(40, settings["n_mels"], {**text, "spectro:settings": "[1, 2]"}), "list.png"),
        "bad segment": (png_bytes(40, settings["n_mels"], {**text, "spectro:segment": "x"}), "segment.png"),
        "bad modulation": (png_bytes(40, settings["n_mels"], {**text, "spectro:modulation": "not numbers"}),
                           "modulation.png"),
    }


HOSTILE = ["1 Hz wav", "64 x 2,000,000 png", "decompression bomb", "settings of the wrong types", "settings a list",
           "bad segment", "bad modulation"]


def assert_error(response, low: int = 400, high: int = 499) -> str:
    assert low <= response.status_code <= high, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and "\n" not in body["error"]
    assert "Traceback" not in body["error"] and tempfile.gettempdir() not in body["error"]
    return body["error"]


@pytest.fixture(scope="module")
def run(tiny_exports) -> Path:
    return tiny_exports["files"]["int8"]  # named: a run folder means its model.keras (TensorFlow in the workers)


@pytest.fixture(scope="module")
def client(run):
    # a deadline no header check comes near: an expensive file that got through would answer 503, not 4xx
    with TestClient(create_app(run, workers=1, timeout=30)) as client:
        yield client


@pytest.fixture(scope="module")
def hostile(tiny_images) -> dict[str, tuple[bytes, str]]:
    return hostile_files(tiny_images)


# -- the limits, shown ------------------------------------------------------------------------------------------

def test_limits_are_in_api_docs_and_model_description(client):
    """(and in ``spectro serve --help``: tests/commands/test_serve.py)"""
    limits = client.get("/api/model").json()["limits"]
    assert limits == {"max_upload_mb": 50.0, "max_files": 16, "max_seconds": 3660.0, "sample_rate_hz": [1000, 384000],
                      "max_channels": 64, "timeout_s": 30.0, "read_timeout_s": 20.0,
                      "max_png_frames": limits["max_png_frames"]}
    settings = client.get("/api/model").json()["features"]
    assert limits["max_png_frames"] == 1 + int(3660 * settings["sr"]) // settings["hop_length"]
    description = client.get("/openapi.json").json()["info"]["description"]
    assert "16 files" in description and "3660 s" in description and "503" in description and "408" in description


@pytest.mark.parametrize("option, value", [("max_upload_mb", math.inf), ("max_upload_mb", math.nan),
                                           ("max_upload_mb", 0), ("max_files", 0), ("max_files", 2.5),
                                           ("timeout", math.inf), ("read_timeout", -1), ("max_seconds", math.inf)])
def test_a_limit_must_be_a_finite_number_above_zero(run, option, value):
    with pytest.raises(SpectroError, match=f"--{option.replace('_', '-')} must be a finite") as caught:
        create_app(run, workers=1, **{option: value})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("argument", [["--max-upload-mb", "inf"], ["--max-upload-mb", "nan"], ["--timeout", "0"],
                                      ["--max-seconds", "inf"], ["--max-files", "0"]])
def test_serve_with_a_bad_limit_is_a_one_line_error(run, argument, capsys):
    assert cli(["serve", str(run), "--port", "0", *argument]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"{argument[0]} must be a finite" in err[0]


# -- small hostile uploads: a 4xx from the header ---------------------------------------------------------------

@pytest.mark.parametrize("case", HOSTILE)
def test_small_hostile_uploads_get_a_fast_4xx(client, hostile, case):
    content, name = hostile[case]
    assert len(content) < 200_000
    for url in ("/api/classify", "/api/spectrogram"):
        started = time.perf_counter()
        error = assert_error(client.post(url, files={"file": (name, content)}))
        assert error.startswith(f"{name}: ")
        # refused from the header: nowhere near the deadline (30 s) the unchecked work would run into
        assert time.perf_counter() - started < 10


def test_the_png_width_limit_follows_max_seconds(run, tiny_images):
    """A spectro PNG of 4 s (126 frames) is classified under the default limits and refused with --max-seconds 2."""
    text = spectro_text(tiny_images)
    settings = json.loads(text["spectro:settings"])
    frames = 1 + 4 * settings["sr"] // settings["hop_length"]
    png = png_bytes(frames, settings["n_mels"], text)
    wav = wav_bytes(tone_signal("normal", 4.0))
    with TestClient(create_app(run, workers=1, max_seconds=2)) as client:
        assert "2 s" in assert_error(client.post("/api/classify", files={"file": ("long.png", png)}), 422, 422)
        assert_error(client.post("/api/classify", files={"file": ("long.wav", wav)}), 422, 422)
        short = wav_bytes(tone_signal("normal", 1.0))
        assert client.post("/api/classify", files={"file": ("short.wav", short)}).status_code == 200


# -- files per request -----------------------------------------------------------------------------------------

def test_more_files_than_max_files_is_a_4xx_before_anything_is_classified(client, monkeypatch):
    service = client.app.state.service
    wav = wav_bytes(tone_signal("normal", 1.0))
    answer = client.post("/api/classify", files=[("file", (f"{i}.wav", wav)) for i in range(16)])
    assert answer.status_code == 200 and [r["path"] for r in answer.json()] == [f"{i}.wav" for i in range(16)]

    async def never(*args, **kwargs):
        raise AssertionError("classified a request with too many files")

    monkeypatch.setattr(service, "classify", never)
    error = assert_error(client.post("/api/classify", files=[("file", (f"{i}.wav", wav)) for i in range(17)]),
                         413, 413)
    assert "more than 16" in error and "--max-files" in error


# -- the deadline ----------------------------------------------------------------------------------------------

def test_a_request_past_the_deadline_is_a_503_and_its_worker_is_replaced(run, monkeypatch):
    import dataclasses

    wav = wav_bytes(tone_signal("normal", 1.0))
    app = create_app(run, workers=1, timeout=120)  # the worker's start-up is no concern of this test
    service = app.state.service
    with TestClient(app) as client:
        assert client.post("/api/classify", files={"file": ("a.wav", wav)}).status_code == 200
        first = service.pool.workers[0].process
        service.limits = dataclasses.replace(service.limits, timeout=1.0)
        monkeypatch.setattr(service_module, "_classify", _hang)  # the work never ends
        error = assert_error(client.post("/api/classify", files={"file": ("slow.wav", wav)}), 503, 503)
        assert "--timeout of 1 s" in error
        assert not first.is_alive()  # killed, not left running the work nobody will read
        monkeypatch.undo()
        # the next request gets the new worker (whose start-up, again, is given time)
        service.limits = dataclasses.replace(service.limits, timeout=120.0)
        started = time.perf_counter()
        answer = client.post("/api/classify", files={"file": ("b.wav", wav)})
        assert answer.status_code == 200 and answer.json()[0]["path"] == "b.wav"
        assert time.perf_counter() - started < 60  # not behind the hour the hung work would have taken
        assert service.pool.workers[0].process is not first


def test_worker_faults_on_bad_input_are_4xx_in_threads_too(run, monkeypatch):
    """A file too big to decode in memory and Pillow's decompression-bomb refusal are bad input (4xx), and a
    worker thread past the deadline answers 503 (the thread cannot be stopped)."""
    import dataclasses

    from PIL import Image

    wav = wav_bytes(tone_signal("normal", 1.0))
    release = threading.Event()

    def raising(exc):
        def work(*args):
            raise exc
        return work

    def slow(*args):
        release.wait(60)
        return []

    app = create_app(run, workers=1, processes=False, timeout=120)  # the faults answer at once, however busy the host
    with TestClient(app) as client:
        monkeypatch.setattr(service_module, "_classify", raising(MemoryError()))
        assert "memory" in assert_error(client.post("/api/classify", files={"file": ("m.wav", wav)}), 413, 413)
        monkeypatch.setattr(service_module, "_classify", raising(Image.DecompressionBombError("Image size (9e8 "
                                                                                             "pixels) exceeds")))
        assert "too large" in assert_error(client.post("/api/classify", files={"file": ("b.png", wav)}), 413, 413)
        monkeypatch.setattr(service_module, "_classify", slow)  # held until released: past any deadline
        app.state.service.limits = dataclasses.replace(app.state.service.limits, timeout=0.5)
        try:
            assert "--timeout" in assert_error(client.post("/api/classify", files={"file": ("s.wav", wav)}), 503, 503)
        finally:
            release.set()


# -- a stalled request body --------------------------------------------------------------------------------------

def _multipart(name: str, content: bytes) -> tuple[bytes, bytes]:
    head = f'--b\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
    return head + content + b"\r\n--b--\r\n", b"multipart/form-data; boundary=b"


def test_a_stalled_body_is_dropped_and_its_files_removed_at_once(run, tmp_path, monkeypatch):
    """The client sends half its body and then nothing (it waits on an event that is never set): past the read
    timeout the answer is 408 and the request's folder is already gone when the answer starts."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    app = create_app(run, workers=1, read_timeout=0.2)
    body, content_type = _multipart("big.wav", wav_bytes(tone_signal("normal", 3.0)))
    seen_while_stalled, at_answer, messages = [], [], []

    async def scenario():
        stalled = asyncio.Event()
        parts = [body[: len(body) // 2]]

        async def receive():
            if parts:
                return {"type": "http.request", "body": parts.pop(), "more_body": True}
            seen_while_stalled.extend(p.name for p in tmp_path.rglob("*"))
            await stalled.wait()  # never set: the client stalls

        async def send(message):
            if message["type"] == "http.response.start":
                at_answer.extend(tmp_path.iterdir())
            messages.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/api/classify", "raw_path": b"/api/classify", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", content_type),
                                              (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
        await asyncio.wait_for(app(scope, receive, send), 30)

    try:
        asyncio.run(scenario())
    finally:
        app.state.service.close()
    assert "upload-0" in seen_while_stalled  # half the file was on disk while the client stalled
    assert at_answer == []  # and removed before the answer
    assert messages[0]["status"] == 408
    assert "stalled" in json.loads(messages[1]["body"])["error"]


def test_a_stalled_client_gets_408_and_its_connection_closed(run, tmp_path, monkeypatch):
    """The same through uvicorn on a real socket: the half-sent upload is answered 408 and the connection closed."""
    import socket

    import uvicorn

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    app = create_app(run, workers=1, read_timeout=0.3)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(3000):
            if server.started:
                break
            time.sleep(0.01)
        body, content_type = _multipart("big.wav", wav_bytes(tone_signal("normal", 3.0)))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST /api/classify HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type
                         + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
            answer = b""
            while chunk := conn.recv(65536):  # until the server closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b'"error":"upload stalled' in answer
        assert list(tmp_path.iterdir()) == []
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
