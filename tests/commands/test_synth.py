"""``spectro synth`` (spectro/commands/synth.py): its options, the call to :func:`spectro.data.synth.generate`
they make, and the line it prints."""

from __future__ import annotations

import pytest

from spectro.data.layout import discover
from spectro.data.synth import MACHINES, SynthSettings
from spectro.paths import SYNTH_DIR

from .kit import call, help_text, record, usage_error


def test_help_lists_its_options_and_defaults(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "synth")
    assert "--seed SEED random seed (same seed, same files) (default: 0)" in text
    assert f"--ids IDS machine ids per machine type (default: {SynthSettings.ids})" in text
    assert "--channels {1,8}" in text


def test_it_calls_generate_with_its_arguments(tmp_path, capsys, monkeypatch):
    generate = record(monkeypatch, "synth", "generate", result=[tmp_path / f"{i}.wav" for i in range(3)])
    code, out, err = call(capsys, "synth", "--out", tmp_path, "--seed", "7", "--machines", "pump", "fan", "--ids", "2",
                          "--snr", "-6", "6", "--clips-per-class", "1", "--normal-clips", "4", "--seconds", "0.5",
                          "--sr", "8000", "--channels", "8", "--jobs", "1", "--force")
    assert (code, err) == (0, "")
    assert generate.call == ((tmp_path,), dict(seed=7, jobs=1, force=True, machines=("pump", "fan"), ids=2,
                                                snrs=(-6.0, 6.0), clips_per_class=1, normal_clips=4, seconds=0.5,
                                                sr=8000, channels=8))
    assert out == f"3 clips in {tmp_path}\n"


def test_without_options_it_asks_for_the_default_dataset(capsys, monkeypatch):
    generate = record(monkeypatch, "synth", "generate", result=[])
    assert call(capsys, "synth")[:2] == (0, f"0 clips in {SYNTH_DIR}\n")
    assert generate.call == ((SYNTH_DIR,), dict(seed=0, jobs=0, force=False, machines=tuple(MACHINES),
                                                 ids=SynthSettings.ids, snrs=tuple(SynthSettings.snrs),
                                                 clips_per_class=SynthSettings.clips_per_class, normal_clips=None,
                                                 seconds=SynthSettings.seconds, sr=SynthSettings.sr, channels=1))


@pytest.mark.parametrize("argv, message", [
    (["--channels", "2"], "argument --channels: invalid choice: 2"),
    (["--machines", "drill"], "argument --machines: invalid choice: 'drill'"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--snr", "loud"], "argument --snr: invalid float value: 'loud'"),
])
def test_a_bad_value_is_a_usage_error_before_any_work(argv, message, capsys, monkeypatch):
    generate = record(monkeypatch, "synth", "generate")
    assert message in usage_error(capsys, "synth", *argv)
    assert generate.calls == []


def test_cli_writes_the_dataset(tmp_path, capsys):
    code, out, _ = call(capsys, "synth", "--out", tmp_path, "--machines", "pump", "--ids", "1", "--snr", "-6",
                        "--clips-per-class", "1", "--normal-clips", "2", "--seconds", "0.5", "--jobs", "1")
    assert code == 0
    assert "4 clips in" in out
    clips, _ = discover(tmp_path)
    assert sorted((c.label, c.snr) for c in clips) == [("clogging", "-6dB"), ("leakage", "-6dB"),
                                                        ("normal", "-6dB"), ("normal", "-6dB")]
