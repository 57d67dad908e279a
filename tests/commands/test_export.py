"""``spectro export`` (spectro/commands/export.py): its options and the :class:`ExportSettings` they make, the call to
:func:`spectro.export.tflite.export_run` (a recorder: nothing is converted), the table of figures it prints and
its one-line error when a file missed its bounds. Converting and verifying are tested in tests/export/."""

from __future__ import annotations

import re

import pytest

from spectro.export.tflite import ExportResult, ExportSettings, Verification
from spectro.paths import MODELS_DIR
from spectro.runs import LATEST

from .kit import call, help_text, one_line_error, record, usage_error


def verification(mode="int8", **changes) -> Verification:
    figures = dict(mode=mode, split="test", n_images=200, agreement=0.995, keras_auc=0.95, tflite_auc=0.945,
                   max_prob_diff=0.0123, auc_pairs=10000, size_bytes=600_000, keras_size_bytes=2_400_000,
                   latency_ms=0.91, input_dtype="uint8", input_quantization=(1.0, 0))
    return Verification(**{**figures, **changes})


def cells(table: str) -> list[list[str]]:
    """The table's rows (header first, the dashes line dropped), each cut into its cells."""
    lines = table.splitlines()
    assert set(lines[1].replace(" ", "")) == {"-"}
    return [re.split(r"\s{2,}", line) for line in lines[:1] + lines[2:]]


# -- options -----------------------------------------------------------------------------------------------------

def test_help_lists_its_options_and_defaults(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "export")
    assert "--quantize {none,dynamic,int8} [{none,dynamic,int8} ...]" in text and "(default: ['int8'])" in text
    assert f"(default: {ExportSettings.representative})" in text


def test_it_calls_export_run_with_the_settings_its_options_make(tmp_path, capsys, monkeypatch):
    export = record(monkeypatch, "export", "export_run", result=[])
    code, _, err = call(capsys, "export", tmp_path / "run", "--quantize", "int8", "none", "int8", "--out",
                        tmp_path / "device", "--representative", "50", "--no-bias-correction", "--no-verify")
    assert (code, err) == (0, "")
    settings = ExportSettings(quantize=("int8", "none"), representative=50, verify=False, bias_correction=False)
    assert export.call == ((str(tmp_path / "run"), settings), dict(out=tmp_path / "device"))


def test_without_options_it_exports_the_latest_run_to_int8_verified(capsys, monkeypatch):
    export = record(monkeypatch, "export", "export_run", result=[])
    assert call(capsys, "export")[0] == 0
    assert export.call == ((str(MODELS_DIR / LATEST), ExportSettings(quantize=("int8",))), dict(out=None))
    assert export.call[0][1].verify and export.call[0][1].bias_correction


@pytest.mark.parametrize("argv, message", [
    (["--quantize", "int4"], "argument --quantize: invalid choice: 'int4'"),
    (["--representative", "some"], "argument --representative: invalid int value: 'some'"),
])
def test_a_bad_value_is_a_usage_error_before_any_work(argv, message, capsys, monkeypatch):
    export = record(monkeypatch, "export", "export_run")
    assert message in usage_error(capsys, "export", *argv)
    assert export.calls == []


def test_a_bad_setting_is_a_one_line_error_before_any_work(capsys, monkeypatch):
    export = record(monkeypatch, "export", "export_run")
    assert "representative" in one_line_error(capsys, "export", "--representative", "0")
    assert export.calls == []


# -- what it prints --------------------------------------------------------------------------------------------------

def test_the_table_has_a_row_per_mode(tmp_path):
    from spectro.commands.export import format_table

    unverified = tmp_path / "model_dynamic.tflite"
    unverified.write_bytes(b"x" * 250_000)
    rows = cells(format_table([
        ExportResult("int8", tmp_path / "model_int8.tflite", verification()),
        ExportResult("none", None, verification("none", agreement=0.99, keras_auc=0.9, tflite_auc=0.9, auc_pairs=20),
                     failures=("top-1 agreement 99.0% < 99.5%",)),
        ExportResult("dynamic", unverified, None),
        ExportResult("int8", tmp_path / "model_int8.tflite", verification(keras_auc=None, tflite_auc=None)),
    ]))
    assert rows[0] == ["mode", "file", "size", "top-1 agree", "AUC keras", "AUC tflite", "AUC loss", "max |dp|",
                       "latency 1 thr", "verdict"]
    assert rows[1] == ["int8", "model_int8.tflite", "0.60 MB (25% of .keras)", "99.5% (199/200) >= 98.0%", "0.9500",
                       "0.9450", "+0.0050 <= 0.01", "0.0123", "0.91 ms", "ok"]
    assert rows[2] == ["none", "model.tflite (not written)", "0.60 MB (25% of .keras)", "99.0% (198/200) >= 99.5%",
                       "0.9000", "0.9000", "+0.0000 (not enforced, too few pairs)", "0.0123", "0.91 ms", "FAIL"]
    assert rows[3] == ["dynamic", "model_dynamic.tflite", "0.25 MB", "-", "-", "-", "-", "-", "-", "not verified"]
    assert rows[4][4:7] == ["n/a", "n/a", "n/a <= 0.01"]


def test_it_prints_the_split_the_table_and_the_files(tmp_path, capsys, monkeypatch):
    from spectro.commands.export import format_table

    results = [ExportResult("int8", tmp_path / "model_int8.tflite", verification()),
               ExportResult("none", tmp_path / "model.tflite", verification("none", agreement=1.0))]
    record(monkeypatch, "export", "export_run", result=results)
    code, out, err = call(capsys, "export", tmp_path, "--quantize", "int8", "none")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "verified on the test split (200 images) against model.keras; latency: median single image, 1 thread",
        *format_table(results).splitlines(),
        f"wrote {tmp_path / 'model_int8.tflite'}",
        f"wrote {tmp_path / 'model.tflite'}",
    ]


def test_a_file_that_missed_its_bounds_is_a_one_line_error_after_the_table(tmp_path, capsys, monkeypatch):
    results = [ExportResult("none", None, verification("none", agreement=0.99),
                            failures=("top-1 agreement 99.0% < 99.5%",)),
               ExportResult("int8", tmp_path / "model_int8.tflite", verification())]
    record(monkeypatch, "export", "export_run", result=results)
    code, out, err = call(capsys, "export", tmp_path, "--quantize", "none", "int8")
    assert code == 2
    assert "FAIL" in out and out.splitlines()[-1] == f"wrote {tmp_path / 'model_int8.tflite'}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: export missed its bounds, file(s) not written (none: top-1 "
                                                   "agreement 99.0% < 99.5%); rerun with --no-verify")


def test_an_unverified_export_prints_no_split(tmp_path, capsys, monkeypatch):
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(b"x")
    record(monkeypatch, "export", "export_run", result=[ExportResult("int8", path, None)])
    code, out, _ = call(capsys, "export", tmp_path, "--no-verify")
    assert code == 0 and not out.startswith("verified") and "not verified" in out
