"""TensorFlow's C++ start-up lines (absl and oneDNN notices) stay off the terminal of every command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # needs the tiny run

NOISE = ("oneDNN", "absl")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as in a user's shell
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_a_command_that_imports_tensorflow_prints_no_start_up_lines(tiny_run, tiny_images):
    # a bare `python -c "import tensorflow"` prints "WARNING: All log messages before absl::InitializeLog() ..."
    # and "... oneDNN custom operations are on ..." on stderr, whatever TF_CPP_MIN_LOG_LEVEL says
    png = next(tiny_images.rglob("*.png"))
    done = _run(["-m", "spectro", "classify", str(png), "--model", str(tiny_run)])  # Keras, so TensorFlow
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{png}: " in done.stdout
    noisy = [line for line in done.stderr.splitlines() if any(word in line for word in NOISE)]
    assert noisy == []
