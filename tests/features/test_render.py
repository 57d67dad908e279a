"""Rendering recordings to PNGs (``spectro images``) end to end: the pixels against librosa, naming,
manifest/errors.csv, bad input in a batch, incremental runs, interrupt-and-resume (Ctrl-C included), segments,
parallel workers, and the real MIMII clips. The command's own tests are in tests/commands/test_images.py."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import MIMII_SAMPLE, SR, librosa_db, tone_signal, write_wav

from spectro.cli import main as cli_main
from spectro.commands.images import summary_lines
from spectro.data.manifest import read_manifest
from spectro.errors import SpectroError, SpectroWarning
from spectro.features.logmel import db_to_pixels, log_mel, pixels_to_db
from spectro.features.png import read_info, read_pixels
from spectro.features.render import render_folder, render_recording
from spectro.features.settings import FeatureSettings

S = FeatureSettings(n_mels=32, n_fft=512, hop_length=256)  # small and fast; defaults are covered elsewhere

MIMII_RELS = [
    "6_dB_fan/fan/id_00/normal/00000000.wav",
    "6_dB_fan/fan/id_00/abnormal/00000000.wav",
    "6_dB_fan/fan/id_02/normal/00000000.wav",  # same stem, other id
    "-6_dB_fan/fan/id_00/normal/00000000.wav",  # same stem and id, other SNR
    "pump/id_04/normal/00000000.wav",  # MIMII without SNR folder
]


def make_tree(root: Path, rels: list[str], seconds: float = 1.0) -> list[Path]:
    paths = []
    for k, rel in enumerate(rels):
        kind = "bearing" if "abnormal" in rel else "normal"
        paths.append(write_wav(root / rel, 0.1 * tone_signal(kind, seconds, seed=k)))  # inside the dB range
    return paths


def rel(row, out: Path) -> str:
    """An image row's path relative to the image folder ``out``."""
    return Path(row.path).resolve().relative_to(out.resolve()).as_posix()


def errors_csv(out: Path) -> dict[str, str]:
    with (out / "errors.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {Path(r["path"]).name: r["reason"] for r in rows}


GOLDEN = [
    # (id, settings, channels, file sample rate, WAV subtype)
    ("defaults", FeatureSettings(), 1, SR, "PCM_16"),
    ("non-default, channel mean", FeatureSettings(channel="mean", n_fft=1024, hop_length=256, n_mels=40, power=1.0,
                                                  fmin=50.0, fmax=7000.0, db_min=-60.0, db_max=10.0), 3, SR, "FLOAT"),
    ("channel 1 of 2", FeatureSettings(channel="1", n_mels=32), 2, SR, "PCM_24"),
    ("resampled 22050 Hz", FeatureSettings(), 1, 22050, "FLOAT"),
]


@pytest.mark.parametrize("settings, channels, file_sr, subtype", [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_png_db_matches_librosa_within_one_step(tmp_path, settings, channels, file_sr, subtype):
    import librosa

    signals = [tone_signal(kind, 1.5, seed=k, sr=file_sr) * (0.5 + 0.4 * k)
               for k, kind in enumerate(["normal", "bearing", "leak"][:channels])]
    data = np.stack(signals, axis=1) if channels > 1 else signals[0]
    write_wav(tmp_path / "raw" / "fan" / "normal" / "clip.wav", data, sr=file_sr, subtype=subtype)
    if file_sr != settings.sr:
        with pytest.warns(SpectroWarning, match="resampling"):
            summary = render_folder(tmp_path / "raw", tmp_path / "img", settings, jobs=1, progress=False)
    else:
        summary = render_folder(tmp_path / "raw", tmp_path / "img", settings, jobs=1, progress=False)
    assert summary.converted == 1 and summary.failed == 0

    # independent reference: soundfile decodes, librosa mixes/resamples and computes the spectrogram
    y, _ = sf.read(str(tmp_path / "raw" / "fan" / "normal" / "clip.wav"), dtype="float32", always_2d=True)
    y = y.mean(axis=1) if settings.channel == "mean" else y[:, int(settings.channel)]
    if file_sr != settings.sr:
        y = librosa.resample(y, orig_sr=file_sr, target_sr=settings.sr, res_type="soxr_hq")
    expected = librosa_db(y, settings)

    png = summary.rows[0].path
    got = pixels_to_db(read_pixels(png), settings)
    assert got.shape == expected.shape == (settings.n_mels, 1 + len(y) // settings.hop_length)
    inside = (expected >= settings.db_min) & (expected <= settings.db_max)
    assert inside.mean() > 0.5  # the comparison covers most of the image
    assert np.abs(got - expected)[inside].max() <= settings.db_per_step
    # outside the range the image saturates at the matching end
    assert (got[expected < settings.db_min] == settings.db_min).all()
    assert np.isclose(got[expected > settings.db_max], settings.db_max).all()
    assert read_info(png).settings == settings


def test_mimii_names_never_collide(tmp_path):
    make_tree(tmp_path / "raw", MIMII_RELS)
    summary = render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)
    assert (summary.converted, summary.skipped, summary.failed, summary.unmatched) == (5, 0, 0, 0)
    images = sorted(p.relative_to(tmp_path / "img").as_posix() for p in (tmp_path / "img").rglob("*.png"))
    assert images == ["fan/abnormal/6dB_id_00_00000000.png", "fan/normal/-6dB_id_00_00000000.png",
                      "fan/normal/6dB_id_00_00000000.png", "fan/normal/6dB_id_02_00000000.png",
                      "pump/normal/id_04_00000000.png"]
    rows = read_manifest(tmp_path / "img")
    assert [rel(r, tmp_path / "img") for r in rows] == images
    assert all(r.path.is_absolute() and r.path.is_file() for r in rows)
    row = rows[1]
    assert (row.machine, row.machine_id, row.label, row.snr, row.segment, row.settings_hash) == (
        "fan", "id_00", "normal", "-6dB", 0, S.hash())
    assert Path(row.source) == (tmp_path / "raw" / MIMII_RELS[3]).resolve()
    info = read_info(row.path)
    assert info.source == row.source and info.settings == S
    assert errors_csv(tmp_path / "img") == {}


def test_plain_layout_collisions_get_stable_suffixes(tmp_path):
    make_tree(tmp_path / "raw", ["site-a/fan/normal/rec.wav", "site-b/fan/normal/rec.wav", "fan/normal/other.wav"])
    sf.write(str(tmp_path / "raw" / "site-b/fan/normal/rec.flac"), tone_signal("normal", 1.0), SR)
    first = render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)
    names = sorted(rel(r, tmp_path / "img") for r in first.rows)
    assert len(names) == len(set(names)) == 4
    assert "fan/normal/other.png" in names
    suffixed = [n for n in names if n != "fan/normal/other.png"]
    assert all(len(Path(n).stem) == len("rec_") + 8 for n in suffixed)
    again = render_folder(tmp_path / "raw", tmp_path / "img2", S, jobs=1, progress=False)
    assert sorted(rel(r, tmp_path / "img2") for r in again.rows) == names  # deterministic
    sources = {r.source for r in first.rows}
    assert len(sources) == 4


def _bad_files(raw: Path) -> dict[str, str]:
    """Write one file per bad-input case of the issue into ``raw``; returns file name -> expected reason."""
    d = raw / "fan" / "normal"
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_bytes(b"definitely not audio\n" * 20)
    write_wav(d / "truncated.wav", tone_signal("normal", 1.0))
    data = (d / "truncated.wav").read_bytes()
    (d / "truncated.wav").write_bytes(data[: len(data) // 3])
    y = tone_signal("normal", 1.0)
    y[5] = np.nan
    sf.write(str(d / "nan.wav"), y, SR, subtype="FLOAT")
    write_wav(d / "short.wav", tone_signal("normal", 0.01))  # 160 samples < n_fft 512
    (raw / "stray.wav").write_bytes(b"")  # fits no layout
    return {"empty.wav": "empty file", "text.wav": "not a readable audio file", "truncated.wav": "truncated recording",
            "nan.wav": "NaN/inf", "short.wav": "clip too short", "stray.wav": "fits no layout"}


def test_bad_input_is_listed_and_never_stops_the_batch(tmp_path):
    raw = tmp_path / "raw"
    make_tree(raw, MIMII_RELS[:2])
    write_wav(raw / "fan" / "normal" / "silent.wav", np.zeros(SR, dtype=np.float32))
    expected = _bad_files(raw)
    with pytest.warns(SpectroWarning, match=r"1 image\(s\) are silent"):
        summary = render_folder(raw, tmp_path / "img", S, jobs=1, progress=False)
    assert (summary.converted, summary.failed, summary.unmatched) == (3, 5, 1)
    listed = errors_csv(tmp_path / "img")
    assert set(listed) == set(expected)
    for name, reason in expected.items():
        assert reason in listed[name], (name, listed[name])
    assert [Path(p).name for p, _ in summary.failures] == sorted(set(expected) - {"stray.wav"}) + ["stray.wav"]
    silent = read_pixels(tmp_path / "img" / "fan" / "normal" / "silent.png")
    assert silent.shape == (S.n_mels, 1 + SR // S.hop_length) and (silent == 0).all()
    assert len(read_manifest(tmp_path / "img")) == 3
    assert summary.clipped_low > 0  # the silent clip is below the range everywhere
    assert any("truncated.wav: truncated recording" in line for line in summary_lines(summary, raw, max_errors=10))


@pytest.mark.parametrize("kind, reason", [
    ("loop", "symbolic link loop: following loop.wav -> loop.wav never reaches a file"),
    ("dangling", "dangling symbolic link: its target gone.wav does not exist"),
    ("fifo", "not a regular file (a FIFO, socket or device): expected an audio file"),
])
def test_unopenable_paths_are_listed_never_dropped(tmp_path, kind, reason):
    raw = tmp_path / "raw"
    make_tree(raw, MIMII_RELS[:1])
    folder = raw / "fan" / "normal"
    folder.mkdir(parents=True)
    if kind == "loop":
        (folder / "loop.wav").symlink_to("loop.wav")
    elif kind == "dangling":
        (folder / "dangling.wav").symlink_to("gone.wav")
    else:
        os.mkfifo(folder / "fifo.wav")  # reading it would block: it must be refused without opening
    summary = render_folder(raw, tmp_path / "img", S, jobs=1, progress=False)
    assert (summary.converted, summary.failed) == (1, 1)
    assert errors_csv(tmp_path / "img") == {f"{kind}.wav": reason}
    assert any(f"{kind}.wav: {reason}" in line for line in summary_lines(summary, raw))


def test_a_link_that_breaks_after_rendering_is_listed_and_its_image_removed(tmp_path):
    raw = tmp_path / "raw"
    make_tree(raw, MIMII_RELS[:1])
    target = write_wav(tmp_path / "elsewhere" / "clip.wav", 0.1 * tone_signal("normal", 1.0))
    (raw / "fan" / "normal").mkdir(parents=True)
    (raw / "fan" / "normal" / "linked.wav").symlink_to(target)
    first = render_folder(raw, tmp_path / "img", S, jobs=1, progress=False)
    assert (first.converted, first.failed) == (2, 0)
    target.unlink()
    again = render_folder(raw, tmp_path / "img", S, jobs=1, progress=False)
    assert (again.skipped, again.failed, again.removed) == (1, 1, 1)
    assert "dangling symbolic link" in errors_csv(tmp_path / "img")["linked.wav"]
    assert not (tmp_path / "img" / "fan" / "normal" / "linked.png").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_silent_clips_are_flagged_in_the_manifest_and_the_summary(tmp_path, jobs):
    raw = tmp_path / "raw"
    make_tree(raw, MIMII_RELS[:2])
    write_wav(raw / "fan" / "normal" / "zeros.wav", np.zeros(SR, dtype=np.float32))
    # white noise at 1e-6 of full scale: about -120 dB per mel band, far below --db-min -80
    quiet = 1e-6 * np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    write_wav(raw / "fan" / "normal" / "faint.wav", quiet, subtype="FLOAT")
    with pytest.warns(SpectroWarning, match=r"2 image\(s\) are silent.*--db-min -80 dB"):
        summary = render_folder(raw, tmp_path / "img", S, jobs=jobs, progress=False)
    assert (summary.converted, summary.silent) == (4, 2)
    rows = {Path(r.source).name: r.silent for r in read_manifest(tmp_path / "img")}
    assert rows == {"faint.wav": True, "zeros.wav": True, "00000000.wav": False}  # the two tones share a stem
    assert sum(r.silent for r in read_manifest(tmp_path / "img")) == 2
    assert any(line.startswith("2 silent image(s)") for line in summary_lines(summary, raw))
    # a re-run skips every image and still flags them (from the manifest), also when the manifest is an old one
    with pytest.warns(SpectroWarning, match=r"2 image\(s\) are silent"):
        again = render_folder(raw, tmp_path / "img", S, jobs=jobs, progress=False)
    assert (again.skipped, again.silent) == (4, 2)
    manifest = tmp_path / "img" / "manifest.csv"
    with manifest.open(newline="") as handle:
        old = [row[:-1] for row in csv.reader(handle)]  # without the silent column
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows(old)
    assert not any(r.silent for r in read_manifest(tmp_path / "img"))  # an old manifest still reads
    with pytest.warns(SpectroWarning, match=r"2 image\(s\) are silent"):
        third = render_folder(raw, tmp_path / "img", S, jobs=jobs, progress=False)
    assert (third.skipped, third.silent) == (4, 2)  # decoded from the PNGs
    assert sum(r.silent for r in read_manifest(tmp_path / "img")) == 2


def test_a_clip_with_sound_in_part_of_it_is_not_silent(tmp_path):
    y = np.zeros(SR, dtype=np.float32)
    y[: SR // 4] = 0.1 * tone_signal("normal", 0.25)
    write_wav(tmp_path / "raw" / "fan" / "normal" / "burst.wav", y)
    summary = render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)
    assert summary.silent == 0 and not read_manifest(tmp_path / "img")[0].silent


def test_no_stale_png_survives_a_rename_or_a_collision(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "img"
    make_tree(raw, ["site-a/fan/normal/rec.wav", "fan/normal/other.wav"])
    first = render_folder(raw, out, S, jobs=1, progress=False)
    assert sorted(rel(r, out) for r in first.rows) == ["fan/normal/other.png", "fan/normal/rec.png"]
    foreign = out / "fan" / "normal" / "mine.png"  # a PNG spectro did not write is left alone
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(foreign)
    # a second rec.wav makes both names collide (each gets a hash suffix); other.wav is renamed
    make_tree(raw, ["site-b/fan/normal/rec.wav"])
    (raw / "fan" / "normal" / "other.wav").rename(raw / "fan" / "normal" / "renamed.wav")
    again = render_folder(raw, out, S, jobs=1, progress=False)
    listed = sorted(rel(r, out) for r in read_manifest(out))
    assert len(listed) == 3 and "fan/normal/renamed.png" in listed and "fan/normal/rec.png" not in listed
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert on_disk == sorted([*listed, "fan/normal/mine.png"])
    assert again.removed == 2
    assert any("removed 2 stale image(s)" in line for line in summary_lines(again, raw))
    assert (render_folder(raw, out, S, jobs=1, progress=False).removed) == 0


def test_changing_segments_removes_the_whole_recording_images(tmp_path):
    make_tree(tmp_path / "raw", MIMII_RELS[:1], seconds=2.0)
    out = tmp_path / "img"
    render_folder(tmp_path / "raw", out, S, jobs=1, progress=False)
    segmented = FeatureSettings(n_mels=32, n_fft=512, hop_length=256, segment_seconds=1.0)
    summary = render_folder(tmp_path / "raw", out, segmented, jobs=1, progress=False)
    assert summary.removed == 1
    assert sorted(p.name for p in out.rglob("*.png")) == ["6dB_id_00_00000000_s000.png", "6dB_id_00_00000000_s001.png"]


def test_wrong_channel_is_a_listed_failure(tmp_path):
    write_wav(tmp_path / "raw" / "fan" / "normal" / "mono.wav", tone_signal("normal", 1.0))
    summary = render_folder(tmp_path / "raw", tmp_path / "img", FeatureSettings(channel="2", n_fft=512), jobs=1,
                      progress=False)
    assert summary.images == 0 and summary.failed == 1
    assert "channel 2 requested, but the file has 1 channel" in errors_csv(tmp_path / "img")["mono.wav"]


def test_strict_raises_after_writing_everything(tmp_path):
    make_tree(tmp_path / "raw", MIMII_RELS[:1])
    (tmp_path / "raw" / "fan" / "normal").mkdir(parents=True)
    (tmp_path / "raw" / "fan" / "normal" / "bad.wav").write_bytes(b"nope")
    with pytest.raises(SpectroError, match=r"1 file\(s\) failed .* --strict.*bad.wav: not a readable audio file"):
        render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, strict=True, progress=False)
    assert len(read_manifest(tmp_path / "img")) == 1
    assert "bad.wav" in errors_csv(tmp_path / "img")


def test_incremental_skip_and_rerender_on_new_settings(tmp_path):
    make_tree(tmp_path / "raw", MIMII_RELS)
    first = render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)
    png = first.rows[0].path
    stamp = png.stat().st_mtime_ns
    second = render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)
    assert (second.converted, second.skipped) == (0, 5)
    assert png.stat().st_mtime_ns == stamp
    assert second.rows == first.rows
    changed = FeatureSettings(n_mels=32, n_fft=512, hop_length=256, db_max=0.0)
    third = render_folder(tmp_path / "raw", tmp_path / "img", changed, jobs=1, progress=False)
    assert (third.converted, third.skipped) == (5, 0)
    assert read_info(png).settings == changed
    assert {r.settings_hash for r in read_manifest(tmp_path / "img")} == {changed.hash()}


def test_partly_done_run_renders_only_the_rest(tmp_path):
    make_tree(tmp_path / "raw", MIMII_RELS)
    first = render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)
    first.rows[2].path.unlink()
    again = render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)
    assert (again.converted, again.skipped) == (1, 4)


def test_interrupt_leaves_whole_pngs_and_resume_finishes(tmp_path, monkeypatch):
    make_tree(tmp_path / "raw", MIMII_RELS)
    real_replace = os.replace
    calls = []

    def replace(src, dst):  # the 3rd image write is interrupted after its temp file is complete
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    out = tmp_path / "img"
    assert [p for p in out.rglob("*") if p.is_file() and p.suffix != ".png"] == []  # no temp files, no manifest
    assert len(list(out.rglob("*.png"))) == 2
    for png in out.rglob("*.png"):
        assert read_pixels(png).shape[0] == S.n_mels
    resumed = render_folder(tmp_path / "raw", out, S, jobs=1, progress=False)
    assert (resumed.converted, resumed.skipped) == (3, 2)


def test_stale_temp_files_are_removed(tmp_path):
    make_tree(tmp_path / "raw", MIMII_RELS[:1])
    stale = tmp_path / "img" / "fan" / "normal" / ".6dB_id_00_00000000.123.0.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a png")
    render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)
    assert not stale.exists()


@pytest.mark.parametrize("seconds, hop, count", [(1.0, None, 3), (1.0, 0.5, 5), (2.0, None, 1), (5.0, None, 1)])
def test_segments(tmp_path, seconds, hop, count):
    make_tree(tmp_path / "raw", MIMII_RELS[:1], seconds=3.0)
    s = FeatureSettings(n_mels=32, n_fft=512, hop_length=256, segment_seconds=seconds, segment_hop_seconds=hop)
    summary = render_folder(tmp_path / "raw", tmp_path / "img", s, jobs=1, progress=False)
    assert summary.converted == count
    window = min(int(seconds * SR), 3 * SR)
    assert [r.segment for r in summary.rows] == list(range(count))
    assert [r.path.name for r in summary.rows] == [f"6dB_id_00_00000000_s{i:03d}.png" for i in range(count)]
    y, _ = sf.read(str(tmp_path / "raw" / MIMII_RELS[0]), dtype="float32")
    step = int((hop or seconds) * SR)
    for row in summary.rows:
        pixels = read_pixels(row.path)
        assert pixels.shape == (32, 1 + window // 256)
        start = row.segment * step
        np.testing.assert_array_equal(pixels, db_to_pixels(log_mel(y[start:start + window], s), s))
        assert read_info(row.path).segment == row.segment
    again = render_folder(tmp_path / "raw", tmp_path / "img", s, jobs=1, progress=False)
    assert (again.converted, again.skipped) == (0, count)


def test_segment_shorter_than_fft_is_rejected(tmp_path):
    make_tree(tmp_path / "raw", MIMII_RELS[:1])
    with pytest.raises(SpectroError, match="fewer than one FFT window"):
        render_folder(tmp_path / "raw", tmp_path / "img", FeatureSettings(segment_seconds=0.1), jobs=1, progress=False)


def test_render_recording_matches_the_png(tmp_path):
    paths = make_tree(tmp_path / "raw", MIMII_RELS[:1])
    summary = render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)
    [(segment, pixels)] = render_recording(paths[0], S)
    assert segment == 0
    np.testing.assert_array_equal(pixels, read_pixels(summary.rows[0].path))


def test_parallel_equals_serial(tmp_path):
    make_tree(tmp_path / "raw", MIMII_RELS + ["pump/normal/a.wav", "pump/normal/b.wav"])
    (tmp_path / "raw" / "pump" / "normal" / "c.wav").write_bytes(b"bad")
    serial = render_folder(tmp_path / "raw", tmp_path / "one", S, jobs=1, progress=False)
    parallel = render_folder(tmp_path / "raw", tmp_path / "two", S, jobs=2, progress=False)
    assert [rel(r, tmp_path / "two") for r in parallel.rows] == [rel(r, tmp_path / "one") for r in serial.rows]
    assert parallel.failures == serial.failures and parallel.failed == 1
    for one, two in zip(serial.rows, parallel.rows):
        np.testing.assert_array_equal(read_pixels(one.path), read_pixels(two.path))


def test_no_audio_is_an_error(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "README.txt").write_text("nothing here")
    with pytest.raises(SpectroError, match="no audio files .* --synth-if-empty"):
        render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=1, progress=False)


def test_negative_jobs_rejected(tmp_path):
    make_tree(tmp_path / "raw", MIMII_RELS[:1])
    with pytest.raises(SpectroError, match="--jobs must be >= 0"):
        render_folder(tmp_path / "raw", tmp_path / "img", S, jobs=-1, progress=False)


def test_ctrl_c_with_workers_then_resume(tmp_path, capsys, monkeypatch):
    """A real SIGINT to a ``spectro images --jobs 2`` run, raised in this process once the third image is in and
    the rest are still to come (so it always lands mid-run): exit 130, no manifest, whole PNGs only, the worker
    processes gone, and a re-run completes the set."""
    import multiprocessing

    import spectro.features.render as render

    n = 16
    make_tree(tmp_path / "raw", [f"fan/id_00/normal/{i:08d}.wav" for i in range(n)])
    out = tmp_path / "img"
    real_run_jobs = render._run_jobs

    def ctrl_c_after_three(*args, **kwargs):
        results = real_run_jobs(*args, **kwargs)
        try:
            for i, result in enumerate(results):
                yield result
                if i == 2:  # asked for the 4th result: Ctrl-C instead
                    signal.raise_signal(signal.SIGINT)
        finally:
            results.close()

    monkeypatch.setattr(render, "_run_jobs", ctrl_c_after_three)
    children = set(multiprocessing.active_children())
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # what a terminal's Ctrl-C meets
    try:
        code = cli_main(["images", str(tmp_path / "raw"), "--out", str(out), "--jobs", "2", "--no-progress"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert set(multiprocessing.active_children()) == children  # the pool was shut down, not left to exit
    done = list(out.rglob("*.png"))
    assert 3 <= len(done) <= n
    assert [p for p in out.rglob("*") if p.is_file() and p.suffix != ".png"] == []  # no temp files, no manifest
    for png in done:
        assert read_pixels(png).shape == (64, 1 + SR // 512)
    monkeypatch.undo()
    resumed = render_folder(tmp_path / "raw", out, FeatureSettings(), jobs=1, progress=False)
    assert (resumed.skipped, resumed.converted) == (len(done), n - len(done))


@pytest.mark.real
@pytest.mark.skipif(not MIMII_SAMPLE.is_dir(), reason="../shared/mimii-sample absent")
def test_real_mimii_clips(tmp_path):
    summary = render_folder(MIMII_SAMPLE, tmp_path / "img", FeatureSettings(), jobs=2, progress=False)
    assert (summary.converted, summary.failed, summary.unmatched) == (40, 0, 0)
    rows = read_manifest(tmp_path / "img")
    assert len(rows) == 40 and {(r.machine, r.snr, r.machine_id) for r in rows} == {("fan", "0dB", "id_00")}
    assert {r.label for r in rows} == {"normal", "abnormal"}
    for row in rows:
        assert read_pixels(row.path).shape == (64, 313)
    assert summary.clipped_low < 0.001 and summary.clipped_high < 0.001


def test_recordings_outside_the_input_limits_are_listed_with_their_reason(tmp_path, monkeypatch):
    """spectro images reads with the default InputLimits: a small file whose header declares 1 Hz, or more than an
    hour, lands in errors.csv with its one-line reason, refused before a sample is read (issue 44)."""
    from hostile import one_hz_wav, wav_bytes

    raw = tmp_path / "raw"
    make_tree(raw, MIMII_RELS[:1])
    folder = raw / "fan" / "normal"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "one_hz.wav").write_bytes(one_hz_wav())
    (folder / "long.wav").write_bytes(wav_bytes(sr=1000, frames=3_700_000))  # 3,700 s of 1 kHz mono: 7.4 MB
    summary = render_folder(raw, tmp_path / "img", S, jobs=1, progress=False)
    assert (summary.converted, summary.failed) == (1, 2)
    assert errors_csv(tmp_path / "img") == {"one_hz.wav": "sample rate 1 Hz is outside 1000..384000 Hz",
                                            "long.wav": "recording declares 3700 s; the limit is 3660 s"}
