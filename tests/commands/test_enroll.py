"""``spectro enroll`` (spectro/commands/enroll.py): its arguments, the call to
:func:`spectro.scoring.normal.enroll` (a recorder: no model is loaded) and the line it prints per machine.
Enrolling itself is tested in tests/training/test_normal_only.py."""

from __future__ import annotations

from spectro.paths import MODELS_DIR
from spectro.runs import LATEST

from .kit import call, help_text, record, usage_error


def enrolled(*, new=True, added=3, clips=3, few=False, **thresholds) -> dict:
    """One machine's entry of what enroll returns."""
    return {"new": new, "added": added, "clips": clips, "few_references": few,
            "thresholds": thresholds or {"first": 1.23456, "second": 0.5}, "threshold_from": "its own clips"}


def test_help_lists_its_arguments(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "enroll")
    assert text.startswith("usage: spectro enroll [-h] [--machine MACHINE/ID] [--no-progress] [run] DIR")


def test_it_calls_enroll_with_its_arguments(tmp_path, capsys, monkeypatch):
    enroll = record(monkeypatch, "enroll", "enroll", result={})
    assert call(capsys, "enroll", tmp_path / "run", tmp_path / "in", "--machine", "fan/id_02", "--no-progress") \
        == (0, "", "")
    assert enroll.call == ((str(tmp_path / "run"), tmp_path / "in"), dict(machine="fan/id_02", progress=False))


def test_without_a_run_it_enrolls_into_the_latest(tmp_path, capsys, monkeypatch):
    enroll = record(monkeypatch, "enroll", "enroll", result={})
    assert call(capsys, "enroll", tmp_path / "in")[0] == 0
    assert enroll.call == ((str(MODELS_DIR / LATEST), tmp_path / "in"), dict(machine=None, progress=True))


def test_a_missing_folder_argument_is_a_usage_error(capsys, monkeypatch):
    enroll = record(monkeypatch, "enroll", "enroll")
    assert "the following arguments are required: DIR" in usage_error(capsys, "enroll")
    assert enroll.calls == []


def test_it_prints_a_line_per_machine(tmp_path, capsys, monkeypatch):
    record(monkeypatch, "enroll", "enroll", result={
        "gear/id_05": enrolled(),
        "fan/id_00": enrolled(new=False, added=2, clips=10),
        "pump/id_01": enrolled(added=2, clips=2, few=True, only=7.0),
    })
    code, out, _ = call(capsys, "enroll", tmp_path / "run", tmp_path / "in")
    assert code == 0
    assert out.splitlines() == [
        "enrolled new machine gear/id_05: 3 clip(s), 3 in all; thresholds first 1.235, second 0.5 (from its own clips)",
        "added to fan/id_00: 2 clip(s), 10 in all; thresholds first 1.235, second 0.5 (from its own clips)",
        "enrolled new machine pump/id_01: 2 clip(s), 2 in all; thresholds only 7 (from its own clips); few references: "
        "no modulation score, threshold on the pooled scale",
    ]
