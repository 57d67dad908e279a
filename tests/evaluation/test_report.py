"""spectro report: a self-contained page with every section, checked in a real headless browser when there is one."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import tone_signal, write_wav

from spectro.cli import main as cli
from spectro.evaluation.report import REPORT_NAME, SECTIONS, PathText, build_report, mistakes_caption, settings_section
from spectro.runs import read_splits, write_splits

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_report_shows_no_absolute_path_and_collapses_the_config(run_with_audio, report, tmp_path_factory):
    path, _, _ = report
    page = path.read_text()
    base = str(tmp_path_factory.getbasetemp())
    assert base in str(run_with_audio) and base not in page  # the run, its images and its audio all live there
    assert str(Path(base).resolve()) not in page
    # the run's images folder by its name, the exploratory views' recordings by their file names
    assert "&quot;images&quot;: &quot;tiny_images" in page
    assert re.search(r"<h3>Normal: fan_normal_\d+\.wav</h3>", page) or re.search(r"<h3>Normal: pump_normal_", page)
    # config.json is inside a collapsed <details> (closed: no 'open' attribute), in the Settings section
    details = re.findall(r"<details>(.*?)</details>", page, flags=re.S)
    assert len(details) == 1 and "<summary>config.json" in details[0] and "&quot;n_mels&quot;: 32" in details[0]
    settings = page.split('<section id="settings">', 1)[1]
    assert "<details>" in settings and "<details open" not in page
    assert page.count("&quot;n_mels&quot;") == 1  # only in the collapsed dump, not also spelt out elsewhere


@pytest.mark.slow
def test_mistakes_caption_matches_its_figure(run_with_audio, report, tmp_path):
    path, _, _ = report
    page = path.read_text()
    with (run_with_audio / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    wrong = sum(r["true"] != r["predicted"] for r in rows)
    assert wrong > 0  # the tiny run makes mistakes: the caption counts them
    assert f"The worst mistakes: {wrong} of {len(rows)} images wrong" in page
    # the same run with every prediction right: no "worst mistakes" over the closest calls
    run = Path(shutil.copytree(run_with_audio, tmp_path / "run"))
    for row in rows:
        row["predicted"] = row["true"]
    with (run / "predictions.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    page = build_report(run, evaluate=False).read_text()
    assert "worst mistakes" not in page.lower()
    assert f"No mistakes: all {len(rows)} images are predicted right" in page and "closest calls" in page


def _predictions(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    with (folder / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "anomaly_score"])
        writer.writerows([f"/img/{i}.png", *row] for i, row in enumerate(rows))
    return folder


@pytest.mark.parametrize("rows, expected", [
    ([("normal", "normal", "0.1"), ("abnormal", "normal", "0.4"), ("abnormal", "abnormal", "0.9")],
     "The worst mistakes: 1 of 3 images wrong"),
    ([("normal", "normal", "0.1"), ("abnormal", "abnormal", "0.9")], "No mistakes: all 2 images are predicted right"),
    # images without a score (a normal-only run's unknown machine) are not in the figure, nor in the count
    ([("normal", "normal", "0.1"), ("abnormal", "normal", "nan")], "No mistakes: all 1 images are predicted right"),
])
def test_mistakes_caption(tmp_path, rows, expected):
    caption = mistakes_caption(_predictions(tmp_path, rows))
    assert caption.startswith(expected)
    assert ("worst mistakes" in caption.lower()) == expected.startswith("The worst")


def test_mistakes_caption_without_predictions_claims_neither(tmp_path):
    caption = mistakes_caption(tmp_path)
    assert "the figure's title says which" in caption and "No mistakes" not in caption


def test_path_text_shows_paths_relative_to_the_run_or_the_images_or_by_name(tmp_path):
    run, images = tmp_path / "models" / "run1", tmp_path / "data" / "images"
    paths = PathText(run, str(images))
    assert paths.show(run / "model.keras") == "model.keras"
    assert paths.show(run / "tflite" / "int8.tflite") == "tflite/int8.tflite"
    assert paths.show(run) == "run1"
    assert paths.show(images / "fan" / "normal" / "a.png") == "images/fan/normal/a.png"
    assert paths.show(tmp_path / "raw" / "fan" / "normal" / "a.wav") == "a.wav"
    assert paths.show("relative/a.wav") == "relative/a.wav"
    message = (f"{run / 'config.json'}: bad; images of {images}; see {tmp_path / 'x' / 'y.wav'}, 31 frames/s, "
               "AUC / pAUC, https://example.org/a/b")
    assert paths.scrub(message) == ("config.json: bad; images of images; see y.wav, 31 frames/s, AUC / pAUC, "
                                    "https://example.org/a/b")
    config = {"images": str(images), "features": {"sr": 16000}, "sources": [str(tmp_path / "rec" / "a.wav")]}
    assert paths.scrub_json(config) == {"images": "images", "features": {"sr": 16000}, "sources": ["a.wav"]}
    assert str(tmp_path) not in settings_section(config, paths)
    assert "<details><summary>config.json" in settings_section(config, paths)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_report_notes_a_failed_evaluation(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    write_splits(run, [r.with_split("train") if r.split == "test" else r for r in read_splits(run)])
    assert cli(["report", str(run)]) == 0
    page = (run / REPORT_NAME).read_text()
    assert "evaluate&#x27; failed: " in page and "has no test images" in page
    assert _headings(page) == list(SECTIONS)
    assert str(tmp_path) not in page and str(tiny_run.parent) not in page
