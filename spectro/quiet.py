"""Keep TensorFlow's C++ start-up lines (absl and oneDNN notices) off the user's terminal.

TensorFlow logs them straight to file descriptor 2 while it is imported, whatever ``TF_CPP_MIN_LOG_LEVEL``
says. :func:`install` puts an import hook in front of ``import tensorflow`` (done directly, or by Keras
or the TFLite converter) that runs that import with descriptor 2 pointed at ``/dev/null``; Python-level
errors still propagate. The CLI installs it before any command runs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator

QUIET_MODULES = ("tensorflow",)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ runtime logging) for the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports the modules of :data:`QUIET_MODULES` with descriptor 2 silenced, once each."""

    def __init__(self) -> None:
        self.specs: dict = {}

    def find_spec(self, fullname, path, target=None):
        if fullname not in QUIET_MODULES or fullname in sys.modules:
            return None
        sys.meta_path.remove(self)  # the real import below goes through the ordinary finders
        try:
            with quiet_stderr():
                module = importlib.import_module(fullname)
        finally:
            sys.meta_path.insert(0, self)
        self.specs[fullname] = module.__spec__
        return importlib.util.spec_from_loader(fullname, self, is_package=hasattr(module, "__path__"))

    def create_module(self, spec):
        return sys.modules[spec.name]  # imported above: hand the finished module back

    def exec_module(self, module) -> None:
        module.__spec__ = self.specs[module.__name__]  # the import system stamped ours on it


def install() -> None:
    """Install the hook (idempotent)."""
    if not any(isinstance(f, _QuietImporter) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImporter())
