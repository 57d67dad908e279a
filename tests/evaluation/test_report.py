"""spectro report: a self-contained page with every section, checked in a real headless browser when there is one."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import tone_signal, write_wav

from spectro.cli import main as cli
from spectro.evaluation.report import REPORT_NAME, SECTIONS
from spectro.runs import read_splits, write_splits

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_with_audio(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run whose splits point some rows at real recordings, with a history.csv."""
    tmp_path = tmp_path_factory.mktemp("report")
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    rows = read_splits(run)
    for i, row in enumerate(rows):
        if i % 4 == 0:
            kind = {"bearing": "bearing", "leak": "leak"}.get(row.label, "normal")
            rows[i] = replace(row, source=str(write_wav(tmp_path / "audio" / f"{row.machine}_{row.label}_{i}.wav",
                                                        tone_signal(kind, 1.0, seed=i))))
    write_splits(run, rows)
    (run / "history.csv").write_text("epoch,loss,accuracy,val_loss,val_accuracy\n"
                                     "0,1.4,0.30,1.30,0.25\n1,1.1,0.45,1.20,0.35\n2,0.9,0.60,1.10,0.45\n")
    return run


@pytest.fixture(scope="module")
def report(run_with_audio) -> tuple[Path, int, str]:
    """The report of ``run_with_audio``, written once through the CLI: (page, exit status, stdout)."""
    import contextlib
    import io

    had_metrics = (run_with_audio / "metrics.json").exists()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli(["report", str(run_with_audio)])
    assert not had_metrics
    return run_with_audio / REPORT_NAME, status, out.getvalue()


def _headings(page: str) -> list[str]:
    return re.findall(r"<h2>([^<]+)</h2>", page)


def _external_refs(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="(?!data:|#)([^"]*)"', page) + re.findall(r"url\((?!data:)", page)


def test_report_has_every_section(run_with_audio, report):
    path, status, stdout = report
    assert status == 0 and "report.html" in stdout
    assert (run_with_audio / "metrics.json").is_file()  # evaluate ran first
    page = path.read_text()
    assert _headings(page) == list(SECTIONS)
    assert _external_refs(page) == []
    images = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="([^"]+)"', page)
    # 4 evaluation plots, 2 machines' examples, normal + abnormal exploratory views, training curves
    assert len(images) == 9, images
    assert {"normal exploratory views", "abnormal exploratory views", "training curves",
            "example spectrograms of fan", "example spectrograms of pump"} <= set(images)
    # data summary: 32 images of 32 recordings; a row per machine/id/SNR/label
    assert "32 images from 32 recordings" in page
    assert page.count("<td class=\"l\">fan</td>") == 4 and page.count("<td class=\"l\">pump</td>") == 4
    assert "Not evaluated yet" not in page and "No training.png" not in page
    assert "&quot;n_mels&quot;: 32" in page  # the settings, config.json verbatim


def test_report_without_metrics_or_audio_says_so(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    assert cli(["report", str(run), "--no-evaluate", "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert _headings(page) == list(SECTIONS)
    assert "Not evaluated yet: no metrics.json" in page
    assert "No normal source recording found on disk" in page and "No abnormal source recording" in page
    assert "No training.png or history.csv" in page
    assert not (run / "metrics.json").exists()


def test_report_errors(tmp_path, capsys):
    assert cli(["report", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no such run folder" in err[0]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    path, status, _ = report
    assert status == 0
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
                    path.resolve().as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 0
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (3000, 1200)
    # text, tables and embedded plots: many colours, not a blank or single-colour page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


def test_report_notes_a_failed_evaluation(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    write_splits(run, [r.with_split("train") if r.split == "test" else r for r in read_splits(run)])
    assert cli(["report", str(run)]) == 0
    page = (run / REPORT_NAME).read_text()
    assert "evaluate&#x27; failed: " in page and "has no test images" in page
    assert _headings(page) == list(SECTIONS)
