"""Splitting images into train, validation and test by recording: stratified, seeded, machines held out on request."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from spectro.data.manifest import ImageRow
from spectro.errors import SpectroError
from spectro.runs import SPLITS


def _held_out(row: ImageRow, test_ids: tuple[str, ...]) -> bool:
    return row.machine_id in test_ids or f"{row.machine}/{row.machine_id}" in test_ids


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for ``n`` source clips: rounded fractions, at least 1 each when ``n`` allows it."""
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n >= 3:
        n_test = max(n_test, 1) if test_fraction > 0 else 0
        n_val = max(n_val, 1) if val_fraction > 0 else 0
    elif n == 2:
        n_test, n_val = 0, int(val_fraction > 0)
    else:
        n_test = n_val = 0
    while n - n_val - n_test < 1:  # keep one clip for training
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def split_rows(rows: list[ImageRow], *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
               test_ids: tuple[str, ...] | list[str] = ()) -> list[str]:
    """A split name (``train``/``val``/``test``) for each row.

    All segments of one source recording land in the same split; within each (machine, label) stratum
    the source clips are shuffled with ``seed`` and cut by the fractions (at least one clip in val and
    test when the stratum has three or more). With ``test_ids`` the rows of those machine ids are the
    test split and the rest is cut into train and val only.

    Raises
    ------
    SpectroError
        A test id that matches no image, or test ids that leave nothing to train on.
    """
    test_ids = tuple(test_ids)
    if test_ids:
        known = {r.machine_id for r in rows} | {f"{r.machine}/{r.machine_id}" for r in rows}
        unknown = [t for t in test_ids if t not in known]
        if unknown:
            ids = sorted({r.machine_id for r in rows if r.machine_id})
            raise SpectroError(f"test ids {unknown} match no image; the images have machine ids {ids or 'none'} "
                               "(give id_XX or <machine>/id_XX)")
        test_fraction = 0.0
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    split_of_source: dict[str, str] = {}
    for row in rows:
        key = row.recording
        if test_ids and _held_out(row, test_ids):
            split_of_source[key] = "test"
        elif key not in strata[(row.machine, row.label)]:
            strata[(row.machine, row.label)].append(key)
    rng = np.random.default_rng(seed)
    for stratum in sorted(strata):
        sources = sorted(strata[stratum])
        rng.shuffle(sources)
        n_val, n_test = split_counts(len(sources), val_fraction, test_fraction)
        for i, source in enumerate(sources):
            split_of_source[source] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    splits = [split_of_source[r.recording] for r in rows]
    if "train" not in splits:
        raise SpectroError(f"nothing left to train on: test ids {list(test_ids)} hold out every image")
    return splits


def split_summary(rows: list[ImageRow], splits: list[str]) -> dict:
    """Images and source clips per split and fine class."""
    summary: dict = {}
    for name in SPLITS:
        chosen = [r for r, s in zip(rows, splits) if s == name]
        summary[name] = {"images": len(chosen), "clips": len({r.recording for r in chosen}),
                         "classes": dict(sorted(Counter(f"{r.machine}/{r.label}" for r in chosen).items()))}
    return summary
