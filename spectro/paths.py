"""Default folders, relative to the working directory (or to ``$SPECTRO_HOME`` when it is set).

Never relative to the package's own location: an installed ``spectro`` works in the folder it is run
from, as ``make`` does in the repository (cookiecutter-data-science layout: ``data/raw`` is never
modified, everything below it is derived).
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_VARIABLE = "SPECTRO_HOME"
HOME = Path(os.environ.get(HOME_VARIABLE) or ".")
DATA_DIR = HOME / "data"
RAW_DIR = DATA_DIR / "raw"
SYNTH_DIR = RAW_DIR / "synthetic"
IMAGES_DIR = DATA_DIR / "images"
MODELS_DIR = HOME / "models"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
