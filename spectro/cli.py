"""``spectro <command>``: one entry point for every stage.

Each command lives in its own module, ``spectro/commands/<command>.py``, which provides ``HELP`` (one
line), ``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported only for the command that
runs, so ``spectro images`` never pays for importing TensorFlow, and :func:`spectro.quiet.install` keeps
TensorFlow's start-up lines off the terminal for the commands that do.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from spectro import __version__, quiet
from spectro.errors import SpectroError

# command -> module; order is the order of `spectro --help`
COMMANDS = {name: f"spectro.commands.{name}"
            for name in ("synth", "download", "images", "train", "enroll", "evaluate", "classify", "report",
                         "export", "serve")}

# one-line help shown by `spectro --help` without importing the command modules
SUMMARIES = {
    "synth": "write the built-in synthetic machine-sound dataset (MIMII layout)",
    "download": "download MIMII archives from zenodo, verify their MD5 and extract them",
    "images": "render recordings to log-mel spectrogram PNGs in <machine>/<label>/ folders",
    "train": "fine-tune a pretrained CNN on the spectrogram images",
    "enroll": "add a machine's normal recordings to a normal-only run, without retraining",
    "evaluate": "metrics, plots, threshold and predictions.csv for a trained run",
    "classify": "classify PNG spectrograms or WAV recordings with a trained model",
    "report": "write a self-contained HTML report of a run",
    "export": "export a run to TFLite (float32, dynamic-range or int8) and verify it",
    "serve": "serve a model over HTTP: a page to drop recordings on, and a JSON API",
}


def _format_warning(message, category, filename, lineno, line=None):  # noqa: ARG001
    return f"warning: {message}\n"


class _Lines(logging.Handler):
    """The library's progress lines (``logging`` records of the ``spectro`` loggers at INFO and above) as plain lines
    on the terminal: standard output, or standard error for a record logged with ``extra={"stream": "stderr"}``
    (a command whose standard output is its result). The stream is looked up at each line, so a redirected
    ``sys.stdout`` gets them."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if getattr(record, "stream", None) == "stderr" else sys.stdout
        print(self.format(record), file=stream, flush=True)


def _show_library_lines() -> None:
    logger = logging.getLogger("spectro")
    if not any(isinstance(h, _Lines) for h in logger.handlers):
        logger.addHandler(_Lines())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (all of them when ``None``)."""
    parser = argparse.ArgumentParser(
        prog="spectro",
        description="Hear when an industrial machine is about to fail: recordings -> log-mel spectrogram "
                    "PNGs -> a fine-tuned image CNN -> verdicts, reports and TFLite models.",
        epilog="Run 'spectro <command> --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"spectro {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, module_name in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=SUMMARIES[name])
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=SUMMARIES[name], description=getattr(module, "HELP", SUMMARIES[name]),
                           formatter_class=_DefaultsFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except ``None``: an option without one says in its help what happens."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet.install()
    warnings.formatwarning = _format_warning
    _show_library_lines()
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args._module.main(args) or 0)
    except SpectroError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
