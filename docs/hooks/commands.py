"""MkDocs hook: writes every command's ``spectro <command> --help`` into docs/commands.md at build time.

The page holds one ``<!-- spectro-help: NAME -->`` marker per command; the hook replaces each with the text
argparse prints, so the page never drifts from the options. It builds the parser the CLI builds
(:func:`spectro.cli.build_parser`), which imports the command modules only: no TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import re

MARKER = re.compile(r"<!-- spectro-help: ([a-z-]+) -->")


def _help_texts() -> dict[str, str]:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width: one width for every build
    from spectro.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = {}
    for name in COMMANDS:
        command = sub.choices[name]
        command.prog = f"spectro {name}"
        texts[name] = command.format_help().rstrip()
    return texts


def on_page_markdown(markdown, page, **kwargs):  # noqa: ARG001 (MkDocs passes config and files too)
    if not MARKER.search(markdown):
        return markdown
    texts = _help_texts()

    def block(match):
        name = match.group(1)
        if name not in texts:
            raise ValueError(f"docs/commands.md names an unknown command {name!r}")
        return f"```text\n{texts[name]}\n```"

    return MARKER.sub(block, markdown)
