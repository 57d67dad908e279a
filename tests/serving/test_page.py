"""spectro serve's page in a real headless Chromium (Playwright driving Debian's chromium): files uploaded through
the page's file input get their verdict, spectrogram, score over time and class bars; a bad file gets words.

Skips when chromium or playwright is absent (`.ci/run` installs chromium). The screenshot is kept in
reports/test-artifacts/serve_page.png.
"""

from __future__ import annotations

import contextlib
import json
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(run: Path, log: Path):
    """``spectro serve`` on ``run``'s int8 file, as a subprocess on 127.0.0.1: (base URL, log path)."""
    port = _free_port()
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "spectro", "serve", str(run), "--port", str(port)],
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
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
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
        finally:
            browser.close()
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert "Traceback" not in log.read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_page_scores_uploads_as_the_chosen_machine_on_a_standard_score_gauge(tiny_exports, tiny_images, tmp_path):
    """A run with a fused score: the page offers its machine types, sends the choice (classify's --machine), says
    which type a file was scored as, and draws the score (a standard score, not a probability) with the threshold
    inside the gauge."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from spectro.model.fusion import Fusion, TypeFusion
    from spectro.runs import DEFAULT_FUSED_THRESHOLD, load_config, save_config

    run = Path(shutil.copytree(tiny_exports["run"], tmp_path / "fused"))
    Fusion({"fan": TypeFusion([-4.0, 1.0], "validation"), "pump": TypeFusion([3.0, 0.5], "validation")}).save(run)
    config = load_config(run)
    config["anomaly_score"] = {"kind": "fused"}
    save_config(run, config)
    wav = write_wav(tmp_path / "clip.wav", tone_signal("bearing", 1.0, seed=7))
    with _serving(run, tmp_path / "server.log") as (base, log), sync_api.sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
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
            # fused threshold, about 1.95, at 195 %)
            tick, fill, gauge = (card.query_selector(f".gauge {s}" if s else ".gauge").bounding_box()
                                 for s in (".tick", ".fill", ""))
            assert gauge["x"] <= tick["x"] <= gauge["x"] + gauge["width"]
            assert fill["width"] <= gauge["width"] + 0.5
            assert (score >= DEFAULT_FUSED_THRESHOLD) == (fill["width"] >= tick["x"] - gauge["x"])
        finally:
            browser.close()
    assert "Traceback" not in log.read_text()
