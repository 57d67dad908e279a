"""``spectro classify`` (spectro/commands/classify.py): its options, the call to
:func:`spectro.inference.classify.classify_paths` (a recorder: no model is loaded), the text, JSON and CSV it
writes of the results, and its exit status when a file could not be scored. Classifying itself is tested in
tests/inference/test_classify.py."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest

from spectro.features.limits import DEFAULT_MAX_SECONDS, InputLimits
from spectro.paths import MODELS_DIR
from spectro.runs import LATEST

from .kit import call, help_text, one_line_error, record, usage_error

CLASSES = ("fan/normal", "fan/bearing")
PREDICTOR = SimpleNamespace(labels=SimpleNamespace(classes=CLASSES))


def verdict(path="a.wav", score=0.8, threshold=0.5, **extra) -> dict:
    """One file's result as classify_paths gives it (a supervised run's probability)."""
    abnormal, rest = score >= threshold, round(1 - score, 6)
    return {"path": path, "verdict": "ABNORMAL" if abnormal else "normal", "anomaly_score": score,
            "threshold": threshold, "failure_type": "bearing" if abnormal else None,
            "predicted": "fan/bearing" if abnormal else "fan/normal",
            "top_k": [["fan/bearing", score], ["fan/normal", rest]],
            "probabilities": {"fan/normal": rest, "fan/bearing": score}, **extra}


def error(path="bad.wav") -> dict:
    return {"path": path, "verdict": "ERROR", "error": "not a readable audio file"}


def windows(*scores, threshold=0.5) -> list[dict]:
    return [{"index": i, "start_s": 0.5 * i, "end_s": 0.5 * i + 1.0, "anomaly_score": s,
             "over_threshold": s >= threshold} for i, s in enumerate(scores)]


# -- options -----------------------------------------------------------------------------------------------------

def test_help_lists_its_options_and_defaults(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "classify")
    assert "--top-k TOP_K how many classes to list per file (default: 3)" in text
    assert f"(default: {DEFAULT_MAX_SECONDS})" in text


def test_it_calls_classify_paths_with_its_arguments(tmp_path, capsys, monkeypatch):
    classify = record(monkeypatch, "classify", "classify_paths", result=([], PREDICTOR))
    assert call(capsys, "classify", "a.wav", tmp_path, "--model", tmp_path / "run", "--top-k", "2", "--threshold",
                "1.5", "--window-hop", "0.25", "--machine", "fan/id_02", "--max-seconds", "60") == (0, "", "")
    assert classify.call == ((["a.wav", str(tmp_path)], str(tmp_path / "run")),
                             dict(threshold=1.5, top_k=2, hop_seconds=0.25, machine="fan/id_02",
                                  limits=InputLimits(max_seconds=60.0)))


def test_without_options_it_asks_the_latest_run_for_the_run_s_threshold(capsys, monkeypatch):
    classify = record(monkeypatch, "classify", "classify_paths", result=([], PREDICTOR))
    assert call(capsys, "classify", "a.wav")[0] == 0
    assert classify.call == ((["a.wav"], str(MODELS_DIR / LATEST)),
                             dict(threshold=None, top_k=3, hop_seconds=None, machine=None, limits=InputLimits()))


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: PATH"),
    (["a.wav", "--top-k", "all"], "argument --top-k: invalid int value: 'all'"),
    (["a.wav", "--threshold", "high"], "argument --threshold: invalid float value: 'high'"),
])
def test_a_bad_value_is_a_usage_error_before_any_work(argv, message, capsys, monkeypatch):
    classify = record(monkeypatch, "classify", "classify_paths")
    assert message in usage_error(capsys, "classify", *argv)
    assert classify.calls == []


@pytest.mark.parametrize("bad", ["inf", "0", "-3"])
def test_a_bad_max_seconds_is_a_one_line_error_before_any_work(bad, capsys, monkeypatch):
    classify = record(monkeypatch, "classify", "classify_paths")
    assert "max_seconds must be a finite number > 0" in one_line_error(capsys, "classify", "a.wav", "--max-seconds",
                                                                       bad)
    assert classify.calls == []


# -- what it prints --------------------------------------------------------------------------------------------------

def test_text_json_and_csv_of_the_results(tmp_path, capsys, monkeypatch):
    results = [verdict("a.wav", 0.8), verdict("b.wav", 0.25)]
    record(monkeypatch, "classify", "classify_paths", result=(results, PREDICTOR))
    code, out, err = call(capsys, "classify", "a.wav", "b.wav", "--csv", tmp_path / "out" / "verdicts.csv")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["a.wav: ABNORMAL  anomaly score 0.800 (threshold 0.500)  failure type bearing",
                                "  top: fan/bearing 0.800  fan/normal 0.200",
                                "b.wav: normal  anomaly score 0.250 (threshold 0.500)",
                                "  top: fan/bearing 0.250  fan/normal 0.750",
                                f"wrote {tmp_path / 'out' / 'verdicts.csv'} (2 rows)"]
    with (tmp_path / "out" / "verdicts.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["path", "verdict", "anomaly_score", "threshold", "failure_type", "predicted", "windows",
                     "windows_over_threshold", "p_fan/normal", "p_fan/bearing"],
                    ["a.wav", "ABNORMAL", "0.8", "0.5", "bearing", "fan/bearing", "1", "1", "0.2", "0.8"],
                    ["b.wav", "normal", "0.25", "0.5", "", "fan/normal", "1", "0", "0.75", "0.25"]]
    code, out, err = call(capsys, "classify", "a.wav", "b.wav", "--json", "--csv", tmp_path / "again.csv")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == results  # stdout is JSON lines only
    assert err == f"wrote {tmp_path / 'again.csv'} (2 rows)\n"


def test_a_file_that_could_not_be_scored_is_an_error_line_and_exit_1(tmp_path, capsys, monkeypatch):
    record(monkeypatch, "classify", "classify_paths", result=([verdict("a.wav"), error("bad.wav")], PREDICTOR))
    code, out, err = call(capsys, "classify", "a.wav", "bad.wav", "--csv", tmp_path / "v.csv")
    assert code == 1
    assert "bad.wav: ERROR not a readable audio file" in out.splitlines()
    assert err == "1 of 2 files could not be scored\n"
    with (tmp_path / "v.csv").open(newline="") as handle:
        assert list(csv.reader(handle))[2] == ["bad.wav", "ERROR", "", "", "not a readable audio file", "", "0", "0",
                                               "", ""]


def test_a_normal_only_result_names_its_machine_and_scores():
    from spectro.commands.classify import format_text

    result = verdict(score=2.5, threshold=1.95, machine="fan/id_00", reference="its path", scorer="first",
                     scores={"first": 2.5, "second": 0.25}, few_references=True, reference_clips=2)
    lines = format_text(result).splitlines()
    assert lines[0].startswith("a.wav: ABNORMAL  anomaly score 2.500 (threshold 1.950)")
    assert lines[1] == "  machine fan/id_00 (from its path); first score; first 2.500, second 0.250"
    assert lines[2].startswith("  few references: 2 normal clip(s) of this machine")
    assert lines[-1].startswith("  top: ")


def test_a_fused_result_names_its_machine_type_and_the_cnn_probability():
    from spectro.commands.classify import format_text

    result = verdict(score=1.0, threshold=0.0, machine_type="fan", machine_type_from="its folder",
                     scores={"cnn": 0.9, "modulation": 3.25})
    line = format_text(result).splitlines()[1]
    assert line.startswith("  scored as a fan (from its folder): CNN probability 0.900, spectrum 3.25")


def test_an_unknown_machine_is_flagged():
    from spectro.commands.classify import format_text

    known = {"known": False, "nearest": "pump/id_04", "distance": 3.5}
    lines = format_text(verdict(known_machine=known)).splitlines()
    assert lines[0].endswith("failure type bearing  UNKNOWN MACHINE")
    assert lines[1].startswith("  unlike every machine the model knows: nearest pump/id_04 at 3.50x the farthest")
    assert "UNKNOWN" not in format_text(verdict(known_machine={**known, "known": True}))


def test_a_long_recording_shows_its_windows():
    from spectro.commands.classify import format_text, sparkline

    scores = [0.1, 0.9, 0.2, 0.6]
    text = format_text(verdict("long.wav", 0.9, windows=windows(*scores)), max_listed=1).splitlines()
    assert text[0].endswith("[max over 4 windows]")
    assert text[-2] == f"  score over time 0.0-2.5 s: {sparkline(scores)}"
    assert text[-1] == "  windows over threshold: 2 of 4: #1 0.5-1.5 s (0.90), and 1 more"
    quiet = format_text(verdict("long.wav", 0.2, windows=windows(0.1, 0.2))).splitlines()
    assert quiet[-1] == "  windows over threshold: 0 of 2"


def test_the_sparkline_max_pools_to_its_width():
    from spectro.commands.classify import SPARK, sparkline

    assert sparkline([0.0, 0.5, 1.0, 2.0, -1.0]) == SPARK[0] + SPARK[4] + SPARK[-1] + SPARK[-1] + SPARK[0]
    assert sparkline([0.0] * 9 + [1.0], width=5) == SPARK[0] * 4 + SPARK[-1]
def test_the_text_output_prints_a_score_just_below_zero_as_zero():
    from spectro.commands.classify import format_text

    result = {"path": "a.wav", "verdict": "normal", "anomaly_score": -0.0004, "threshold": 1.95,
              "failure_type": None, "top_k": [["fan/normal", 0.9]]}
    assert format_text(result).splitlines()[0] == "a.wav: normal  anomaly score 0.000 (threshold 1.950)"
    assert "anomaly score -0.012" in format_text({**result, "anomaly_score": -0.0123})


def test_the_sparkline_puts_any_threshold_half_way_up():
    """A positive threshold (a standard score) spans 0 to twice it; a log-odds threshold of 0 sits in the middle of
    the scores' widest distance from it, so a calibrated score's windows below 0 are drawn low, not clipped away."""
    from spectro.commands.classify import around, format_text, sparkline

    assert around([0.0, 1.95, 3.9, 5.0], 1.95) == pytest.approx([0.0, 0.5, 1.0, 0.5 + 0.5 * 3.05 / 1.95])
    assert around([-8.0, -2.0, 0.0, 4.0], 0.0) == pytest.approx([0.0, 0.375, 0.5, 0.75])
    assert around([-1.0, -0.5], -2.0) == pytest.approx([0.5 + 0.5 / 1.5, 1.0])  # the farther one at the top
    windows = [{"index": i, "start_s": float(i), "end_s": i + 1.0, "anomaly_score": s, "over_threshold": s >= 0}
               for i, s in enumerate([-8.0, -6.0, -2.0, 0.5, 4.0])]
    result = {"path": "long.wav", "verdict": "ABNORMAL", "anomaly_score": 4.0, "threshold": 0.0, "failure_type": None,
              "top_k": [["fan/normal", 0.9]], "scores": {"cnn": 0.9}, "windows": windows}
    line = next(x for x in format_text(result).splitlines() if "score over time" in x)
    assert line.endswith(sparkline([0.0, 0.125, 0.375, 0.53125, 0.75]))  # -8 farthest from 0: the bottom
    assert len(set(line.split(": ")[-1])) == 5  # five different heights, none lost to a division by 0

