"""spectro serve's page in a real headless Chromium (Playwright driving Debian's chromium): files uploaded through
the page's file input get their verdict, spectrogram, score over time and class bars; a bad file gets words.

Skips when chromium or playwright is absent (`.ci/run` installs chromium). The screenshot is kept in
reports/test-artifacts/serve_page.png.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import tone_signal, write_wav

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "reports" / "test-artifacts"
FAN_BEARING_0 = "fan/bearing/6dB_id_00_00000000.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(run: Path, log: Path):
    """``spectro serve`` on ``run``'s int8 file, as a subprocess on 127.0.0.1: (base URL, log path)."""
    port = _free_port()
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "spectro", "serve", str(run / "model_int8.tflite"),
                                    "--port", str(port)],
                                   stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=2) as answer:
                    health = json.loads(answer.read())
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "spectro serve did not answer within 60 s"
                time.sleep(0.1)
        assert health["model"]["file"] == "model_int8.tflite"
        yield base, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tiny_exports, tmp_path_factory):
    """``spectro serve`` on the tiny run's int8 file: (base URL, log path)."""
    with _serving(tiny_exports["run"], tmp_path_factory.mktemp("serve") / "server.log") as served:
        yield served


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"])

@contextlib.contextmanager
def _page(sync_api):
    """A fresh page (1280 x 1000) in headless chromium, closed with its browser."""
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1000})
        finally:
            browser.close()



def test_server_log_has_no_tensorflow_and_no_traceback(server):
    _, log = server
    with urllib.request.urlopen(server[0] + "/api/model", timeout=5) as answer:
        assert json.loads(answer.read())["model"]["format"] == "tflite"
    text = log.read_text()
    assert "serving " in text and "model_int8.tflite" in text and "Traceback" not in text
    assert "tensorflow" not in text.lower() and "oneDNN" not in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_page_classifies_uploads_in_headless_chromium(server, tiny_images, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, log = server
    long_wav = write_wav(tmp_path / "pump-7 bearing.wav",
                         np.concatenate([tone_signal("normal", 3.0, seed=4), tone_signal("bearing", 3.0, seed=5)]))
    png = Path(shutil.copy(tiny_images / "fan/bearing/6dB_id_00_00000000.png", tmp_path / "fan.png"))
    bad = tmp_path / "notes.txt"
    bad.write_text("not a recording\n")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve_page.png"
    shot.unlink(missing_ok=True)
    with _page(sync_api) as page:
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: problems.append(f"left the server: {r.url}")
                if not r.url.startswith((base, "blob:", "data:")) else None)
        page.goto(base + "/")
        page.wait_for_selector("#model-body table", timeout=20_000)
        panel = page.inner_text("#model-body")
        assert "fan/bearing" in panel and "pump/leak" in panel and "model_int8.tflite" in panel
        assert "512 / 256 samples" in panel  # the feature settings
        assert page.is_hidden("#machine-choice")  # scored by the CNN's probability: no machine to choose
        page.set_input_files("#files", [str(long_wav), str(png), str(bad)])
        page.wait_for_function("() => document.querySelectorAll('.card').length === 3 && ![...document."
                               "querySelectorAll('.card')].some(c => c.dataset.state === 'pending')",
                               timeout=30_000)
        cards = {page.evaluate("c => c.querySelector('.name').textContent", c): c
                 for c in page.query_selector_all(".card")}
        assert set(cards) == {"pump-7 bearing.wav", "fan.png", "notes.txt"}
        for name in ("pump-7 bearing.wav", "fan.png"):
            card = cards[name]
            assert card.get_attribute("data-state") == "done", card.inner_text()
            assert card.query_selector(".verdict").inner_text() in ("normal", "ABNORMAL")
            assert float(card.query_selector(".score").inner_text()) >= 0
            assert card.query_selector_all(".probs .bar")  # class probabilities as bars
            # the spectrogram was drawn: a canvas of the image's size with many colours
            size, colours = page.evaluate("""c => { const cv = c.querySelector('.spectrogram canvas');
                const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
                const seen = new Set(); for (let i = 0; i < d.length; i += 4) seen.add(d[i] * 65536 + d[i + 1] * 256
                + d[i + 2]); return [[cv.width, cv.height], seen.size]; }""", card)
            assert size[1] == 32 and size[0] >= 63 and colours > 20
        long_card = cards["pump-7 bearing.wav"]
        assert long_card.query_selector("svg.timeline")  # score over time of a long recording
        assert long_card.query_selector("svg.timeline circle")
        assert "windows over the threshold" in long_card.inner_text()
        error = cards["notes.txt"]
        assert error.get_attribute("data-state") == "error"
        text = error.inner_text()
        assert "Could not classify this file: notes.txt: not a recording or a spectrogram image" in text
        assert "Traceback" not in text and "{" not in text
        page.screenshot(path=str(shot), full_page=True)
        assert problems == [] or all("status of 415" in p for p in problems), problems
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert "Traceback" not in log.read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_page_scores_uploads_as_the_chosen_machine_on_a_standard_score_gauge(tiny_exports, tiny_images, tmp_path):
    """A run with a fused score: the page offers its machine types, sends the choice (classify's --machine), says
    which type a file was scored as, and draws the score (a standard score, not a probability) with the threshold
    inside the gauge."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from spectro.runs import DEFAULT_FUSED_THRESHOLD, load_config, save_config
    from spectro.scoring.fusion import Fusion, TypeFusion

    run = Path(shutil.copytree(tiny_exports["run"], tmp_path / "fused"))
    Fusion({"fan": TypeFusion([-4.0, 1.0], "validation"), "pump": TypeFusion([3.0, 0.5], "validation")}).save(run)
    config = load_config(run)
    config["anomaly_score"] = {"kind": "fused"}
    save_config(run, config)
    wav = write_wav(tmp_path / "clip.wav", tone_signal("bearing", 1.0, seed=7))
    with _serving(run, tmp_path / "server.log") as (base, log), _page(sync_api) as page:
        page.goto(base + "/")
        page.wait_for_selector("#machine-choice:not([hidden])", timeout=20_000)
        assert page.eval_on_selector_all("#machine option", "os => os.map(o => o.value)") == ["", "fan", "pump"]
        page.select_option("#machine", "pump")
        page.set_input_files("#files", [str(wav)])
        page.wait_for_function("() => [...document.querySelectorAll('.card')].some(c => c.dataset.state !== "
                               "'pending')", timeout=30_000)
        card = page.query_selector(".card")
        assert card.get_attribute("data-state") == "done", card.inner_text()
        assert card.query_selector(".scored-as").inner_text() == "a pump (from --machine)"
        score = float(card.query_selector(".score").inner_text())
        # the threshold's tick and the fill stay inside the gauge (a probability's scale would put the
        # fused threshold, about 2.1, at 210 %)
        tick, fill, gauge = (card.query_selector(f".gauge {s}" if s else ".gauge").bounding_box()
                             for s in (".tick", ".fill", ""))
        assert gauge["x"] <= tick["x"] <= gauge["x"] + gauge["width"]
        assert fill["width"] <= gauge["width"] + 0.5
        assert (score >= DEFAULT_FUSED_THRESHOLD) == (fill["width"] >= tick["x"] - gauge["x"])
    assert "Traceback" not in log.read_text()


# -- the gauge, the dots and the uploads (issue 44) --------------------------------------------------------------

def _result(verdict: str, score: float, threshold: float, **extra) -> dict:
    """An api/classify object for a page test: the fields the page reads."""
    return {"path": "clip.wav", "kind": "audio", "verdict": verdict, "anomaly_score": score, "threshold": threshold,
            "failure_type": "fan/bearing", "predicted": "fan/normal",
            "probabilities": {"fan/normal": 0.9, "fan/bearing": 0.1}, "top_k": [["fan/normal", 0.9]],
            "known_machine": {"known": True, "nearest": "fan/id_00", "distance": 0.4}, **extra}


FUSED = {"scores": {"cnn": -3.0, "modulation": -2.5}, "machine_type": "fan", "machine_type_from": "the model"}
KNN = {"scores": {"knn": 0.05}, "scorer": "knn", "machine": "fan/id_00", "reference": "the path's machine id"}
GAUGE_CASES = {  # file name: the api/classify object api/inspect answers for it
    "probability-normal.wav": _result("normal", 0.000012, 0.5),
    "probability-high-threshold.wav": _result("normal", 0.3, 0.97),
    "calibrated-normal.wav": _result("normal", -8.2, 0.0, **FUSED),  # a log-odds far below its threshold 0
    "fused-normal.wav": _result("normal", 0.4, 1.95, **FUSED),
    "fused-lower.wav": _result("normal", -0.1, 1.95, **FUSED),  # lower than fused-normal: drawn left of it
    "distance-normal.wav": _result("normal", 0.05, 0.12, **KNN),
    "distance-abnormal.wav": _result("ABNORMAL", 0.9, 0.12, **KNN),
    "calibrated-abnormal.wav": _result("ABNORMAL", 3.1, 0.0, **FUSED),
    "probability-abnormal.wav": _result("ABNORMAL", 0.99, 0.5),
}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_gauge_shows_the_score_against_the_threshold_for_every_clip(server, tiny_images, tmp_path):
    """Every card's gauge has a visible fill and its threshold tick well inside, the fill ending short of the tick for
    a normal clip and past it for an abnormal one, whatever the score's scale (the page is given these answers)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    base, _ = server
    picture = base64.b64encode((tiny_images / FAN_BEARING_0).read_bytes()).decode()
    answers = {name: json.dumps({"result": {**r, "path": name}, "spectrogram": picture})
               for name, r in GAUGE_CASES.items()}
    files = [write_wav(tmp_path / name, tone_signal("normal", 0.2, seed=1)) for name in GAUGE_CASES]
    sent = []

    def answer(route):
        name = route.request.post_data_buffer.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
        sent.append(name)
        route.fulfill(status=200, content_type="application/json", body=answers[name])

    with _page(sync_api) as page:
        page.route("**/api/inspect*", answer)
        page.goto(base + "/")
        page.wait_for_selector("#model-body table", timeout=20_000)
        page.set_input_files("#files", [str(f) for f in files])
        page.wait_for_function(f"() => [...document.querySelectorAll('.card')].filter(c => c.dataset.state === "
                               f"'done').length === {len(files)}", timeout=30_000)
        assert sorted(sent) == sorted(GAUGE_CASES)
        fills = {}
        for card in page.query_selector_all(".card"):
            name = card.query_selector(".name").inner_text()
            gauge, fill, tick = (card.query_selector(s).bounding_box() for s in
                                 (".gauge", ".gauge .fill", ".gauge .tick"))
            at = (tick["x"] + tick["width"] / 2 - gauge["x"]) / gauge["width"]
            assert 0.2 <= at <= 0.8, (name, at)  # the threshold is never at an edge
            assert fill["width"] >= 8, (name, fill)  # a normal clip's fill is seen too
            assert fill["width"] <= gauge["width"] + 0.5
            reaches = fill["x"] + fill["width"] >= tick["x"] + tick["width"] / 2
            assert reaches == (GAUGE_CASES[name]["verdict"] == "ABNORMAL"), (name, fill, tick)
            label = card.query_selector(".gauge").get_attribute("aria-label")
            assert ("at or over" in label) == (GAUGE_CASES[name]["verdict"] == "ABNORMAL")
            fills[name] = fill["width"]
        # one scale for a run's clips: a lower score never sits further right
        assert fills["fused-lower.wav"] < fills["fused-normal.wav"]
        page.screenshot(path=str(tmp_path / "gauges.png"), full_page=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_a_long_recording_gets_one_dot_per_window_each_seen(server, tmp_path):
    """3 s at 1 s spans: six windows, the last aligned to the end one frame after the fifth; six dots, none hidden
    under another."""
    sync_api = pytest.importorskip("playwright.sync_api")
    base, _ = server
    wav = write_wav(tmp_path / "three seconds.wav", np.concatenate([tone_signal("normal", 1.5, seed=8),
                                                                    tone_signal("bearing", 1.5, seed=9)]))
    with _page(sync_api) as page:
        page.goto(base + "/")
        page.set_input_files("#files", [str(wav)])
        page.wait_for_selector(".card[data-state=done]", timeout=30_000)
        card = page.query_selector(".card")
        caption = card.query_selector("svg.timeline").evaluate("s => s.closest('figure').textContent")
        n = int(re.search(r"of (\d+) windows", caption).group(1))
        assert n == 6 and f"maximum over {n} windows" in card.inner_text()
        dots = [d.bounding_box() for d in card.query_selector_all("svg.timeline circle")]
        assert len(dots) == n
        titles = card.eval_on_selector_all("svg.timeline circle title", "ts => ts.map(t => t.textContent)")
        assert len(set(titles)) == n  # each window's own span and score
        starts = [float(t.split("–")[0].rstrip(" s")) for t in titles]
        assert starts[-1] - starts[-2] < 0.05  # the case at hand: two windows a frame apart
        for a, b in zip(dots, dots[1:]):
            assert b["x"] >= a["x"] + a["width"] - 0.5, (a, b)  # side by side, not one over the other
        frame = card.query_selector("svg.timeline rect.frame").bounding_box()
        assert all(frame["x"] <= d["x"] and d["x"] + d["width"] <= frame["x"] + frame["width"] + 0.5 for d in dots)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_each_dropped_file_is_uploaded_once(server, tiny_images, tmp_path):
    """Files dropped on the zone: one POST each (api/inspect: verdict and spectrogram in one answer), and each card
    gets both."""
    sync_api = pytest.importorskip("playwright.sync_api")
    base, _ = server
    wav = write_wav(tmp_path / "clip.wav", tone_signal("bearing", 1.0, seed=2))
    png = tiny_images / FAN_BEARING_0
    payload = [{"name": f.name, "type": t, "data": base64.b64encode(f.read_bytes()).decode()}
               for f, t in ((wav, "audio/wav"), (png, "image/png"))]
    with _page(sync_api) as page:
        posts = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.goto(base + "/")
        page.wait_for_selector("#model-body table", timeout=20_000)
        dropped = page.evaluate_handle("""files => { const dt = new DataTransfer();
            for (const f of files) dt.items.add(new File([Uint8Array.from(atob(f.data), c => c.charCodeAt(0))],
                                                         f.name, { type: f.type }));
            return dt; }""", payload)
        page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
        page.wait_for_function("() => document.querySelectorAll('.card[data-state=done]').length === 2",
                               timeout=30_000)
        assert posts == [base + "/api/inspect"] * 2
        for card in page.query_selector_all(".card"):
            assert card.query_selector(".verdict") and card.query_selector(".spectrogram canvas")
            assert not card.query_selector(".error-text"), card.inner_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_api_docs_render_offline(server):
    """The page's "API docs" link: Swagger UI draws every route from this server alone, with no policy violation."""
    sync_api = pytest.importorskip("playwright.sync_api")
    base, _ = server
    with _page(sync_api) as page:
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: problems.append(f"left the server: {r.url}")
                if not r.url.startswith((base, "data:")) else None)
        page.goto(base + "/")
        page.click("text=API docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
        assert page.url == base + "/docs"
        routes = page.eval_on_selector_all(".opblock-summary-path", "ps => ps.map(p => p.textContent)")
        assert {"/api/classify", "/api/inspect", "/api/spectrogram", "/api/model", "/api/health"} <= {
            r.replace("\u200b", "") for r in routes}
        assert problems == [], problems


def test_inspect_answers_the_classify_object_and_the_spectrogram_of_one_upload(tiny_exports, tiny_images, tmp_path):
    """api/inspect, the page's one request per file: exactly api/classify's object and api/spectrogram's PNG."""
    from fastapi.testclient import TestClient

    from spectro.serving.app import create_app

    long_wav = write_wav(tmp_path / "long.wav", np.concatenate([tone_signal("normal", 1.5, seed=8),
                                                                tone_signal("bearing", 1.5, seed=9)]))
    png = tiny_images / FAN_BEARING_0

    def post(client, url, *paths):
        handles = [p.open("rb") for p in paths]
        try:
            return client.post(url, files=[("file", (p.name, h)) for p, h in zip(paths, handles)])
        finally:
            for h in handles:
                h.close()

    with TestClient(create_app(tiny_exports["files"]["int8"], workers=1)) as client:
        for path in (long_wav, png):
            answer = post(client, "/api/inspect", path)
            assert answer.status_code == 200 and set(answer.json()) == {"result", "spectrogram"}
            assert [answer.json()["result"]] == post(client, "/api/classify", path).json()
            picture = base64.b64decode(answer.json()["spectrogram"])
            assert picture == post(client, "/api/spectrogram", path).content and picture[:4] == b"\x89PNG"
        two = post(client, "/api/inspect", long_wav, png)
        assert two.status_code == 400 and "expected one file" in two.json()["error"]
        bad = client.post("/api/inspect?machine=toaster", files=[("file", ("a.png", png.read_bytes()))])
        assert bad.status_code == 422 and set(bad.json()) == {"error"}
