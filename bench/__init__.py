"""spectro's benchmarks: ``python -m bench`` (``make bench``) runs every section and writes ``docs/benchmarks.md``.

Each section is a module of this package (:data:`SECTIONS`, in the order they run) with ``TITLE`` and a documented
``run(ctx) -> str`` that returns the section's Markdown. Sections share the run's :class:`bench.common.BenchContext`
(``ctx.state`` passes e.g. a trained run from one section to the next) and their helpers through
:mod:`bench.data` (data sets, splits, AUC cells) and :mod:`bench.models` (the methods compared and the trainer).
Every speed figure is a ratio against a reference measured in the same run. The package is not part of the
installed ``spectro`` wheel; it runs from a checkout with spectro installed.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SECTIONS = ("images", "train", "small", "heldout", "curve", "pretrained", "normal", "scale", "export", "serve")


def section(name: str) -> ModuleType:
    """The section module ``bench.<name>`` (one of :data:`SECTIONS`)."""
    if name not in SECTIONS:
        raise ValueError(f"expected a section among {', '.join(SECTIONS)}; found {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
