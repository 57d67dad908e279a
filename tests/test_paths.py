"""Default folders: relative to the working directory, or to $SPECTRO_HOME when it is set; never to the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NAMES = ("RAW_DIR", "SYNTH_DIR", "IMAGES_DIR", "MODELS_DIR")
EXPECTED = ("data/raw", "data/raw/synthetic", "data/images", "models")


def _run(code_or_args: list[str], cwd: Path, home: str | None) -> subprocess.CompletedProcess:
    """A fresh interpreter (spectro.paths reads the environment once, at import) in ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k != "SPECTRO_HOME"}
    if home is not None:
        env["SPECTRO_HOME"] = home
    return subprocess.run([sys.executable, *code_or_args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def _defaults(cwd: Path, home: str | None = None) -> list[Path]:
    code = f"from spectro import paths; print(*(getattr(paths, n).resolve() for n in {NAMES!r}), sep='\\n')"
    done = _run(["-c", code], cwd, home)
    assert done.returncode == 0, done.stderr
    return [Path(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("home, base", [(None, "."), ("", "."), ("project", "project")])
def test_defaults_are_relative_to_the_working_directory(tmp_path, home, base):
    assert _defaults(tmp_path, home) == [(tmp_path / base / rel).resolve() for rel in EXPECTED]


def test_spectro_home_moves_every_default(tmp_path):
    home = tmp_path / "home"
    assert _defaults(tmp_path / "..", str(home)) == [(home / rel).resolve() for rel in EXPECTED]


def test_commands_look_for_models_latest_below_the_default_folder(tmp_path):
    (tmp_path / "work").mkdir()
    here = _run(["-m", "spectro", "evaluate"], tmp_path / "work", None)
    assert here.returncode == 2 and "error: models/latest: no such run folder" in here.stderr
    moved = _run(["-m", "spectro", "evaluate"], tmp_path / "work", str(tmp_path / "home"))
    latest = tmp_path / "home" / "models" / "latest"
    assert moved.returncode == 2 and f"error: {latest}: no such run folder" in moved.stderr
