"""``spectro serve`` (spectro/commands/serve.py): its options (where it listens, the limits of a request) and the
call to :func:`spectro.serving.app.serve` they make (a recorder: no server starts). Serving itself is tested in
tests/serving/."""

from __future__ import annotations

import pytest

from spectro.features.limits import InputLimits
from spectro.paths import MODELS_DIR
from spectro.runs import LATEST
from spectro.serving.app import DEFAULT_HOST, DEFAULT_PORT
from spectro.serving.service import ServeLimits

from .kit import call, help_text, record, usage_error


def test_serve_help_says_where_it_listens(capsys, monkeypatch):
    out = help_text(capsys, monkeypatch, "serve")
    assert "127.0.0.1" in out and "--host 0.0.0.0" in out and "no authentication" in out
    assert "--max-upload-mb" in out and "--model" in out and "--port" in out
    assert "limits (each request's cost, decided before the work)" in out
    for option in ("--max-upload-mb", "--max-files", "--max-seconds", "--timeout", "--read-timeout"):
        assert option in out
    assert "1000-384000 Hz" in out and "64 channels" in out  # the input limits a recording's header must keep


def test_it_calls_serve_with_its_arguments(tmp_path, capsys, monkeypatch):
    serve = record(monkeypatch, "serve", "serve")
    assert call(capsys, "serve", tmp_path / "run", "--host", "0.0.0.0", "--port", "9000", "--max-upload-mb", "2.5",
                "--max-files", "3", "--max-seconds", "30", "--timeout", "7", "--read-timeout", "1.5", "--workers",
                "2") == (0, "", "")
    assert serve.call == ((str(tmp_path / "run"),), dict(host="0.0.0.0", port=9000, max_upload_mb=2.5, max_files=3,
                                                         max_seconds=30.0, timeout=7.0, read_timeout=1.5, workers=2))


def test_model_wins_over_the_run(tmp_path, capsys, monkeypatch):
    serve = record(monkeypatch, "serve", "serve")
    assert call(capsys, "serve", tmp_path / "run", "--model", tmp_path / "m.tflite")[0] == 0
    assert serve.call[0] == (str(tmp_path / "m.tflite"),)


def test_without_options_it_serves_the_latest_run_on_this_machine_only(capsys, monkeypatch):
    serve = record(monkeypatch, "serve", "serve")
    assert call(capsys, "serve")[0] == 0
    limits = ServeLimits()
    assert serve.call == ((str(MODELS_DIR / LATEST),),
                          dict(host=DEFAULT_HOST, port=DEFAULT_PORT, max_upload_mb=limits.max_upload_mb,
                               max_files=limits.max_files, max_seconds=InputLimits().max_seconds,
                               timeout=limits.timeout, read_timeout=limits.read_timeout, workers=None))
    assert DEFAULT_HOST == "127.0.0.1"


@pytest.mark.parametrize("argv, message", [
    (["--port", "http"], "argument --port: invalid int value: 'http'"),
    (["--workers", "many"], "argument --workers: invalid int value: 'many'"),
    (["--timeout", "never"], "argument --timeout: invalid float value: 'never'"),
])
def test_a_bad_value_is_a_usage_error_before_anything_starts(argv, message, capsys, monkeypatch):
    serve = record(monkeypatch, "serve", "serve")
    assert message in usage_error(capsys, "serve", *argv)
    assert serve.calls == []
