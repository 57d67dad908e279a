"""Splitting images by recording: stratified, seeded, whole machines held out on request."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from spectro.data.manifest import ImageRow
from spectro.errors import SpectroError
from spectro.training.splits import split_counts, split_rows, split_summary


def rows_with_segments(per_stratum=10, segments=3, ids=("id_00", "id_02")):
    rows = []
    for machine, label in [("fan", "normal"), ("fan", "bearing"), ("valve", "normal"), ("valve", "leakage")]:
        for i in range(per_stratum):
            machine_id = ids[i % len(ids)]
            source = f"/data/{machine}/{machine_id}/{label}/{i:08d}.wav"
            for s in range(segments):
                rows.append(ImageRow(path=Path(f"/img/{machine}/{label}/{machine_id}_{i}_s{s}.png"), source=source,
                                     machine=machine, machine_id=machine_id, label=label, snr="6dB", segment=s,
                                     settings_hash="abc"))
    return rows


def test_segments_of_one_recording_stay_together_and_strata_are_cut_alike():
    rows = rows_with_segments()
    splits = split_rows(rows, seed=3, val_fraction=0.2, test_fraction=0.2)
    by_source = defaultdict(set)
    for row, split in zip(rows, splits):
        by_source[row.source].add(split)
    assert all(len(s) == 1 for s in by_source.values())
    per_stratum = Counter((r.machine, r.label, s) for r, s in zip(rows, splits) if r.segment == 0)
    for machine, label in {(r.machine, r.label) for r in rows}:
        assert [per_stratum[(machine, label, s)] for s in ("train", "val", "test")] == [6, 2, 2]


def test_split_is_seeded():
    rows = rows_with_segments()
    assert split_rows(rows, seed=1) == split_rows(rows, seed=1)
    assert split_rows(rows, seed=1) != split_rows(rows, seed=2)


@pytest.mark.parametrize("test_ids, held", [
    (("id_02",), lambda r: r.machine_id == "id_02"),
    (("fan/id_02",), lambda r: r.machine == "fan" and r.machine_id == "id_02"),
    (("id_00", "valve/id_02"), lambda r: r.machine_id == "id_00" or (r.machine, r.machine_id) == ("valve", "id_02")),
])
def test_test_ids_hold_whole_machines_out(test_ids, held):
    rows = rows_with_segments()
    splits = split_rows(rows, seed=0, test_ids=test_ids)
    assert [s == "test" for s in splits] == [held(r) for r in rows]
    assert {"train", "val"} <= set(splits)


@pytest.mark.parametrize("test_ids, message", [(("id_09",), "match no image"),
                                               (("id_00", "id_02"), "nothing left to train")])
def test_bad_test_ids_raise(test_ids, message):
    with pytest.raises(SpectroError, match=message):
        split_rows(rows_with_segments(), test_ids=test_ids)


@pytest.mark.parametrize("n, expected", [(1, (0, 0)), (2, (1, 0)), (3, (1, 1)), (10, (2, 2)), (20, (3, 3)),
                                         (100, (15, 15))])
def test_tiny_strata_keep_training_clips(n, expected):
    assert split_counts(n, 0.15, 0.15) == expected


def test_split_summary_counts_images_and_recordings_per_split_and_class():
    rows = rows_with_segments(per_stratum=10, segments=3)
    splits = split_rows(rows, seed=0, val_fraction=0.2, test_fraction=0.2)
    summary = split_summary(rows, splits)
    assert list(summary) == ["train", "val", "test"]
    assert [summary[s]["clips"] for s in summary] == [24, 8, 8]  # 6/2/2 recordings in each of 4 strata
    assert [summary[s]["images"] for s in summary] == [72, 24, 24]  # three segments each
    assert summary["val"]["classes"] == {"fan/bearing": 6, "fan/normal": 6, "valve/leakage": 6, "valve/normal": 6}


def test_rows_without_a_source_are_split_by_image():
    rows = [ImageRow(path=Path(f"/img/fan/{label}/{i}.png"), source="", machine="fan", machine_id="", label=label,
                     snr="") for label in ("normal", "bearing") for i in range(10)]
    splits = split_rows(rows, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert Counter(splits) == Counter(train=12, val=4, test=4)
