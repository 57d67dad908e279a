"""``spectro report`` (spectro/commands/report.py): its options, the call to
:func:`spectro.evaluation.report.build_report` (a recorder: no model is loaded) and the line it prints. The page
itself is tested in tests/evaluation/test_report.py."""

from __future__ import annotations

import pytest

from spectro.paths import MODELS_DIR
from spectro.runs import LATEST

from .kit import call, help_text, record, usage_error


def test_help_lists_its_options(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "report")
    assert text.startswith("usage: spectro report [-h] [--no-evaluate] [--out OUT] [run]")


def test_it_calls_build_report_and_prints_where_and_how_big(tmp_path, capsys, monkeypatch):
    page = tmp_path / "r.html"
    page.write_bytes(b"x" * 1_260_000)
    build = record(monkeypatch, "report", "build_report", result=page)
    assert call(capsys, "report", tmp_path / "run", "--no-evaluate", "--out", page) \
        == (0, f"wrote {page} (1.3 MB)\n", "")
    assert build.call == ((str(tmp_path / "run"),), dict(evaluate=False, out=page))


def test_without_options_it_reports_the_latest_run_evaluating_it_when_needed(tmp_path, capsys, monkeypatch):
    page = tmp_path / "report.html"
    page.write_bytes(b"")
    build = record(monkeypatch, "report", "build_report", result=page)
    assert call(capsys, "report")[:2] == (0, f"wrote {page} (0.0 MB)\n")
    assert build.call == ((str(MODELS_DIR / LATEST),), dict(evaluate=True, out=None))


@pytest.mark.parametrize("argv, message", [
    (["run", "other"], "unrecognized arguments: other"),
    (["--evaluate"], "unrecognized arguments: --evaluate"),
])
def test_a_bad_argument_is_a_usage_error(argv, message, capsys, monkeypatch):
    build = record(monkeypatch, "report", "build_report")
    assert message in usage_error(capsys, "report", *argv)
    assert build.calls == []
