"""``spectro download`` (spectro/commands/download.py): its options (an SNR such as ``-6dB`` is a value, not an
option), the SNR spellings it accepts, the call to :func:`spectro.data.download.download` and the line it prints.
The download itself is tested against a loopback server in tests/data/test_download.py."""

from __future__ import annotations

import pytest

from spectro.data.download import API_URL, BASE_URL, MACHINES, SNRS
from spectro.paths import RAW_DIR

from .kit import call, help_text, one_line_error, record, usage_error


def test_help_lists_its_options_and_defaults(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "download")
    assert f"--machines MACHINE [MACHINE ...] machine types ({' '.join(MACHINES)})" in text
    assert "(default: 30.0)" in text and "(default: 5)" in text


def test_it_calls_download_with_its_arguments(tmp_path, capsys, monkeypatch):
    download = record(monkeypatch, "download", "download", result=[tmp_path / "-6_dB_fan", tmp_path / "6_dB_fan"])
    code, out, err = call(capsys, "download", "--machines", "fan", "--snrs", "-6dB", "6", "--out", tmp_path,
                          "--base-url", "http://127.0.0.1:9/files", "--api-url", "http://127.0.0.1:9/api", "--keep-zip",
                          "--timeout", "2.5", "--retries", "1")
    assert (code, err) == (0, "")
    assert download.call == ((["fan"], ["-6dB", "6dB"]),
                             dict(out=tmp_path, base_url="http://127.0.0.1:9/files", api_url="http://127.0.0.1:9/api",
                                  keep_zip=True, timeout=2.5, retries=1))
    assert out == f"2 archive(s) ready under {tmp_path}\n"


def test_without_options_it_asks_for_the_whole_record(capsys, monkeypatch):
    download = record(monkeypatch, "download", "download", result=[])
    assert call(capsys, "download")[:2] == (0, f"0 archive(s) ready under {RAW_DIR}\n")
    assert download.call == ((list(MACHINES), list(SNRS)), dict(out=RAW_DIR, base_url=BASE_URL, api_url=API_URL,
                                                                keep_zip=False, timeout=30.0, retries=5))


@pytest.mark.parametrize("spelling, snr", [("-6dB", "-6dB"), ("-6", "-6dB"), ("-6_dB", "-6dB"), ("min6dB", "-6dB"),
                                           ("0", "0dB"), ("6_dB", "6dB")])
def test_a_negative_snr_is_a_value_and_every_spelling_is_normalised(spelling, snr, tmp_path, capsys, monkeypatch):
    download = record(monkeypatch, "download", "download", result=[])
    assert call(capsys, "download", "--snrs", spelling, "--machines", "fan", "--out", tmp_path)[0] == 0
    assert download.call[0] == (["fan"], [snr])


def test_an_unknown_snr_is_a_one_line_error_before_any_download(capsys, monkeypatch):
    download = record(monkeypatch, "download", "download")
    assert "unknown SNR" in one_line_error(capsys, "download", "--snrs", "6dB", "3dB")
    assert download.calls == []


@pytest.mark.parametrize("argv, message", [
    (["--machines", "drill"], "argument --machines: invalid choice: 'drill'"),
    (["--timeout", "soon"], "argument --timeout: invalid float value: 'soon'"),
    (["--retries", "1.5"], "argument --retries: invalid int value: '1.5'"),
])
def test_a_bad_value_is_a_usage_error_before_any_download(argv, message, capsys, monkeypatch):
    download = record(monkeypatch, "download", "download")
    assert message in usage_error(capsys, "download", *argv)
    assert download.calls == []
