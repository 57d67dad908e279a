"""What every command's tests share: run ``spectro <command>`` in this process, read its help, and stand a
:class:`Recorder` in for the one library function the command calls (so no training, no TensorFlow)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from spectro.cli import COMMANDS, main


def call(capsys, *argv) -> tuple[int, str, str]:
    """``spectro *argv`` in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class _Options:
    """Stands in for the parser a command module's ``add_arguments`` fills: records the options it adds."""

    def __init__(self):
        self.options: list[str] = []

    def add_argument(self, *names, **_):
        self.options += [n for n in names if n.startswith("--")]

    def add_argument_group(self, *_, **__):
        return self

    def add_mutually_exclusive_group(self, *_, **__):
        return self


def declared_options(command: str) -> list[str]:
    """The ``--options`` the command module's ``add_arguments`` declares."""
    recorder = _Options()
    importlib.import_module(COMMANDS[command]).add_arguments(recorder)
    return recorder.options


def help_text(capsys, monkeypatch, command: str) -> str:
    """``spectro <command> --help``, checked: exit 0, the command's usage, every option it declares; returned with
    its whitespace collapsed (so a phrase the help wraps still matches)."""
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: spectro {command}")
    options = declared_options(command)
    assert options, f"{command} takes no options"
    for option in options:
        assert option in out, option
    return " ".join(out.split())


def usage_error(capsys, *argv) -> str:
    """A value argparse refuses: exit status 2, no traceback, one ``error:`` line (the last, after the usage);
    returns it. (Arguments no parser knows are refused by the top-level one: ``spectro: error: unrecognized ...``.)"""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: spectro ")
    assert [line for line in lines if "error:" in line] == lines[-1:]
    assert lines[-1].startswith((f"spectro {argv[0]}: error: ", "spectro: error: unrecognized arguments: "))
    return lines[-1]


def one_line_error(capsys, *argv) -> str:
    """A value the command or its library refuses (a SpectroError): exit status 2, stderr one ``error: ...`` line,
    no traceback; returns it."""
    code, _, err = call(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


class Recorder:
    """Stands in for a library function: records every call's arguments and answers ``result`` (or, when
    ``result`` is callable, what it returns for the same arguments)."""

    def __init__(self, result: Any = None):
        self.result = result
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result(*args, **kwargs) if callable(self.result) else self.result

    @property
    def call(self) -> tuple[tuple, dict]:
        """The one call's ``(args, kwargs)``; fails unless there was exactly one."""
        assert len(self.calls) == 1, f"called {len(self.calls)} times"
        return self.calls[0]


def record(monkeypatch, command: str, name: str, result: Any = None) -> Recorder:
    """Replace ``name`` in the command's module (the library function it imported) by a :class:`Recorder`."""
    module = importlib.import_module(COMMANDS[command])
    assert callable(getattr(module, name)), name
    recorder = Recorder(result)
    monkeypatch.setattr(module, name, recorder)
    return recorder
