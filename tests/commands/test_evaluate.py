"""``spectro evaluate`` (spectro/commands/evaluate.py): its options, the call to
:func:`spectro.evaluation.evaluate.evaluate_run` (a recorder: no model is loaded) and the summary it prints.
Evaluating itself is tested in tests/evaluation/test_evaluate.py."""

from __future__ import annotations

import pytest

from spectro.evaluation.metrics import DEFAULT_MAX_FPR
from spectro.paths import MODELS_DIR
from spectro.runs import LATEST, PLOT_NAMES

from .kit import call, help_text, record, usage_error


def group(n, accuracy, auc, pauc) -> dict:
    return {"n": n, "accuracy": accuracy, "auc": auc, "pauc": pauc}


def result(run, **changes) -> dict:
    """What evaluate_run returns, of a supervised run with two machine types, one machine id and one SNR."""
    figures = {
        "run": str(run), "evaluated": "test split", "task": "failure",
        "overall": {"n": 20, "n_normal": 12, "n_abnormal": 8, "accuracy": 0.9, "balanced_accuracy": 0.85, "auc": 0.95,
                    "pauc": 0.8, "failure_type_accuracy": 0.75, "at_threshold": {"tpr": 0.875, "fpr": 1 / 12}},
        "threshold": {"method": "max_fpr", "max_fpr": 0.05, "value": 0.4321, "val_fpr": 0.05, "val_tpr": 0.9},
        "by_machine": {"fan": group(10, 1.0, 1.0, 1.0), "pump": group(10, 0.8, None, None)},
        "by_machine_id": {"id_00": group(20, 0.9, 0.95, 0.8)},
        "by_snr": {"6dB": group(20, 0.9, 0.95, 0.8)},
    }
    return {**figures, **changes}


# -- options -----------------------------------------------------------------------------------------------------

def test_help_lists_its_options_and_defaults(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "evaluate")
    assert f"(default: {DEFAULT_MAX_FPR})" in text and "[--max-fpr MAX_FPR | --youden]" in text


def test_it_calls_evaluate_run_with_its_arguments(tmp_path, capsys, monkeypatch):
    evaluate = record(monkeypatch, "evaluate", "evaluate_run", result=result(tmp_path / "run"))
    code, out, err = call(capsys, "evaluate", tmp_path / "run", "--images", tmp_path / "img", "--max-fpr", "0.1",
                          "--batch-size", "8", "--out", tmp_path / "eval")
    assert (code, err) == (0, "")
    assert evaluate.call == ((str(tmp_path / "run"),), dict(images=str(tmp_path / "img"), max_fpr=0.1, youden=False,
                                                           batch_size=8, out=tmp_path / "eval", progress=False))
    assert out.splitlines()[-1] == (f"wrote metrics.json, predictions.csv and {len(PLOT_NAMES)} plots to "
                                    f"{tmp_path / 'eval'}")


def test_without_options_it_evaluates_the_latest_run_into_its_folder(tmp_path, capsys, monkeypatch):
    evaluate = record(monkeypatch, "evaluate", "evaluate_run", result=result(tmp_path / "run"))
    code, out, _ = call(capsys, "evaluate", "--youden")
    assert code == 0
    assert evaluate.call == ((str(MODELS_DIR / LATEST),), dict(images=None, max_fpr=DEFAULT_MAX_FPR, youden=True,
                                                              batch_size=32, out=None, progress=False))
    assert out.splitlines()[-1].endswith(f"plots to {tmp_path / 'run'}")  # the run evaluate_run resolved


@pytest.mark.parametrize("argv, message", [
    (["--max-fpr", "0.1", "--youden"], "argument --youden: not allowed with argument --max-fpr"),
    (["--max-fpr", "some"], "argument --max-fpr: invalid float value: 'some'"),
    (["--batch-size", "big"], "argument --batch-size: invalid int value: 'big'"),
])
def test_a_bad_value_is_a_usage_error_before_any_work(argv, message, capsys, monkeypatch):
    evaluate = record(monkeypatch, "evaluate", "evaluate_run")
    assert message in usage_error(capsys, "evaluate", *argv)
    assert evaluate.calls == []


# -- the summary ---------------------------------------------------------------------------------------------------

def summary(figures: dict) -> list[str]:
    from spectro.commands.evaluate import format_summary

    return format_summary(figures).splitlines()


def test_the_summary_of_a_supervised_run(tmp_path):
    assert summary(result(tmp_path)) == [
        "test split: 20 images (12 normal, 8 abnormal), task failure",
        "  accuracy 0.900  balanced accuracy 0.850  anomaly AUC 0.950  pAUC(0.1) 0.800  failure type 0.750",
        "  threshold 0.4321 (max_fpr <= 0.05, val FPR 0.050 TPR 0.900); on these images TPR 0.875 FPR 0.083",
        "  by machine:",
        "    fan                  n    10  acc 1.000  AUC 1.000  pAUC 1.000",
        "    pump                 n    10  acc 0.800  AUC   n/a  pAUC   n/a",
    ]  # one machine id, one SNR: no table of them


def test_the_baseline_stands_beside_every_figure_and_says_when_it_wins(tmp_path):
    baseline = {"name": "mel statistics logistic regression", "cnn_beats_baseline": False,
                "overall": {"auc": 0.97, "pauc": 0.9}, "train": {"n": 40, "n_normal": 24, "n_abnormal": 16},
                "clips": {"auc": 0.99, "pauc": 0.95}, "by_machine": {"fan": {"auc": 0.5, "pauc": 0.25}}}
    clips = {"n": 5, "score": "mean of windows", "auc": 0.96, "pauc": 0.85}
    lines = summary(result(tmp_path, baseline=baseline, clips=clips))
    assert lines[1].endswith("anomaly AUC 0.950 (baseline 0.970)  pAUC(0.1) 0.800 (baseline 0.900)  failure type 0.750")
    assert lines[2] == ("  per recording (5, mean of windows): AUC 0.960 (baseline 0.990)  pAUC(0.1) 0.850 "
                        "(baseline 0.950)")
    assert lines[3] == ("  baseline: mel statistics logistic regression, fit on 40 training images (24 normal, "
                        "16 abnormal)")
    assert lines[4] == ("  the mel-statistics baseline beats the CNN on these images: AUC 0.970 vs 0.950, "
                        "pAUC 0.900 vs 0.800")
    assert ("    fan                  n    10  acc 1.000  AUC 1.000 (baseline 0.500)  pAUC 1.000 "
            "(baseline 0.250)") in lines
    assert "    pump                 n    10  acc 0.800  AUC   n/a  pAUC   n/a" in lines  # the baseline has no pump
    skipped = summary(result(tmp_path, baseline={"name": "mel statistics", "skipped": "one class only"}))
    assert "  baseline (mel statistics) skipped: one class only" in skipped
    assert not any("(baseline" in line for line in skipped)


def test_the_summary_of_a_normal_only_run_lists_every_scorer(tmp_path):
    scorers = {name: {"overall": {"auc": auc, "pauc": auc / 2},
                      "by_machine_id": {"fan/id_00": {"auc": auc, "pauc": auc / 2}, "fan/id_02": {"auc": None,
                                                                                                 "pauc": None}}}
               for name, auc in (("first", 0.8), ("second", 0.5))}
    threshold = {"method": "per machine", "max_fpr": None, "value": None}
    lines = summary(result(tmp_path, scorers=scorers, threshold=threshold, unscored=3))
    assert "  threshold per machine (per machine); on these images TPR 0.875 FPR 0.083" in lines
    assert ("  3 clip(s) of machines without normal references not scored (enroll their normal recordings with "
            "'spectro enroll')") in lines
    rows = [line for line in lines if line.startswith("  scorer ")]
    assert rows == ["  scorer first        AUC 0.800  pAUC(0.1) 0.400   by machine id: fan/id_00 0.800/0.400, "
                    "fan/id_02   n/a/  n/a",
                    "  scorer second       AUC 0.500  pAUC(0.1) 0.250   by machine id: fan/id_00 0.500/0.250, "
                    "fan/id_02   n/a/  n/a"]


def test_it_prints_the_summary_then_where_it_wrote(tmp_path, capsys, monkeypatch):
    figures = result(tmp_path / "run")
    record(monkeypatch, "evaluate", "evaluate_run", result=figures)
    code, out, _ = call(capsys, "evaluate", tmp_path / "run")
    assert code == 0
    assert out.splitlines() == summary(figures) + [f"wrote metrics.json, predictions.csv and {len(PLOT_NAMES)} plots "
                                                   f"to {tmp_path / 'run'}"]
