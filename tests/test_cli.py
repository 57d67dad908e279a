"""The entry point: help for every command, a test module per command, `python -m spectro`, cheap imports, make help."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spectro.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_every_command_has_its_own_test_module():
    """Each spectro/commands/<name>.py is tested in tests/commands/test_<name>.py (its options, the library call it
    makes, what it prints); a new command brings its module."""
    modules = {p.stem for p in (ROOT / "spectro" / "commands").glob("*.py")} - {"__init__"}
    assert modules == set(COMMANDS)
    tested = {p.stem.removeprefix("test_") for p in (ROOT / "tests" / "commands").glob("test_*.py")}
    assert modules <= tested, sorted(modules - tested)


def test_no_command_prints_help_and_unknown_command_fails(capsys):
    assert main([]) == 0
    assert "<command>" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_python_dash_m_and_version():
    result = subprocess.run([sys.executable, "-m", "spectro", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    assert result.stdout.startswith("spectro ")


@pytest.mark.parametrize("command", ["images", "synth", "download"])
def test_audio_commands_do_not_import_tensorflow(command):
    code = ("import sys\nfrom spectro.cli import build_parser\n"
            f"build_parser({command!r})\n"
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_help_lists_targets():
    result = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    listed = {line.split()[0] for line in plain.splitlines() if line.startswith("  ") and line.split()}
    for target in ("images", "train", "evaluate", "classify", "report", "export", "bench", "test", "clean", "download"):
        assert target in listed, target
