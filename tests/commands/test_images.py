"""``spectro images`` (spectro/commands/images.py): its options and the :class:`FeatureSettings` they make, the
call to :func:`spectro.features.render.render_folder`, the summary it prints, its exit status on failures
(``--strict``, nothing rendered), its one-line errors, and that it never imports TensorFlow. Rendering itself is
tested in tests/features/test_render.py."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tone_signal, write_wav

from spectro.data.manifest import ImageRow, read_manifest
from spectro.features.png import read_info
from spectro.features.render import ConvertSummary
from spectro.features.settings import FeatureSettings
from spectro.paths import IMAGES_DIR, RAW_DIR

from .kit import call, help_text, record, usage_error

MIMII_RELS = [
    "6_dB_fan/fan/id_00/normal/00000000.wav",
    "6_dB_fan/fan/id_00/abnormal/00000000.wav",
    "6_dB_fan/fan/id_02/normal/00000000.wav",
    "-6_dB_fan/fan/id_00/normal/00000000.wav",
    "pump/id_04/normal/00000000.wav",
]


def make_tree(root: Path, rels: list[str], seconds: float = 1.0) -> list[Path]:
    return [write_wav(root / rel, 0.1 * tone_signal("bearing" if "abnormal" in rel else "normal", seconds, seed=k))
            for k, rel in enumerate(rels)]


def errors_csv(out: Path) -> dict[str, str]:
    with (out / "errors.csv").open(newline="") as handle:
        return {Path(r["path"]).name: r["reason"] for r in csv.DictReader(handle)}


def summary(tmp_path: Path, **figures) -> ConvertSummary:
    """A :class:`ConvertSummary` as render_folder returns it: 4 recordings converted in 2 s unless told otherwise."""
    out = tmp_path / "img"
    rows = [ImageRow(out / f"fan/normal/{i}.png", f"/raw/{i}.wav", "fan", "id_00", "normal", "6dB", 0, "h")
            for i in range(figures.pop("images", 4))]
    base = dict(src=tmp_path / "raw", out=out, clips=4, converted=len(rows), elapsed=2.0, rows=rows)
    return ConvertSummary(**{**base, **figures})


# -- options -----------------------------------------------------------------------------------------------------

def test_help_lists_its_options_and_defaults(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "images")
    assert "(default: 2048)" in text and "(default: -80.0)" in text
    assert "features (stored in every PNG; a change re-renders)" in text


def test_it_calls_render_folder_with_the_settings_its_options_make(tmp_path, capsys, monkeypatch):
    render = record(monkeypatch, "images", "render_folder", result=summary(tmp_path))
    code, out, _ = call(capsys, "images", tmp_path / "raw", "--out", tmp_path / "img", "--sr", "22050", "--channel",
                        "mean", "--n-mels", "40", "--n-fft", "1024", "--hop-length", "256", "--power", "1", "--fmin",
                        "20", "--fmax", "7000", "--db-min", "-90", "--db-max", "10", "--segment-seconds", "2",
                        "--segment-hop-seconds", "1", "--modulation-hz", "30", "--jobs", "3", "--no-progress",
                        "--synth-if-empty", "--strict")
    assert code == 0
    settings = FeatureSettings(sr=22050, channel="mean", n_mels=40, n_fft=1024, hop_length=256, power=1.0, fmin=20.0,
                               fmax=7000.0, db_min=-90.0, db_max=10.0, segment_seconds=2.0, segment_hop_seconds=1.0,
                               modulation_hz=30)
    # --strict is the command's: the library renders everything and the command fails afterwards
    assert render.call == ((tmp_path / "raw", tmp_path / "img", settings),
                           dict(jobs=3, strict=False, progress=False, synth_if_empty=True))
    assert out.startswith(f"4 recording(s) in {tmp_path / 'raw'}: 4 image(s) converted")


def test_without_options_it_renders_the_default_folders(capsys, monkeypatch, tmp_path):
    render = record(monkeypatch, "images", "render_folder", result=summary(tmp_path))
    assert call(capsys, "images")[0] == 0
    d = FeatureSettings()
    assert render.call == ((RAW_DIR, IMAGES_DIR, FeatureSettings(modulation_hz=d.modulation_hz or None)),
                           dict(jobs=0, strict=False, progress=True, synth_if_empty=False))


@pytest.mark.parametrize("argv, message", [
    (["--n-mels", "many"], "argument --n-mels: invalid int value: 'many'"),
    (["--db-min", "low"], "argument --db-min: invalid float value: 'low'"),
    (["--jobs", "2.5"], "argument --jobs: invalid int value: '2.5'"),
])
def test_a_bad_value_is_a_usage_error_before_any_work(argv, message, capsys, monkeypatch):
    render = record(monkeypatch, "images", "render_folder")
    assert message in usage_error(capsys, "images", *argv)
    assert render.calls == []


# -- what it prints, and its exit status ---------------------------------------------------------------------------

def test_the_summary_lines(tmp_path, capsys, monkeypatch):
    failures = [(f"/raw/bad{i}.wav", "not a readable audio file") for i in range(7)]
    record(monkeypatch, "images", "render_folder",
           result=summary(tmp_path, skipped=2, failed=6, unmatched=1, failures=failures, silent=1, removed=3,
                          clipped_low=0.00125, clipped_high=0.5, synthesized=9))
    code, out, _ = call(capsys, "images", tmp_path / "raw", "--out", tmp_path / "img")
    assert code == 0
    raw, img = tmp_path / "raw", tmp_path / "img"
    assert out.splitlines() == [
        f"{raw} held no audio: created the built-in synthetic dataset in {raw / 'synthetic'} (9 recordings)",
        f"4 recording(s) in {raw}: 4 image(s) converted, 2 up to date (skipped), 6 recording(s) failed, 1 file(s) "
        "in no known layout; 2.0 s (2.0 recordings/s)",
        "clipped pixels: 0.125 % below the dB range, 50.000 % above it",
        f"wrote {img / 'manifest.csv'} (4 image(s))",
        "1 silent image(s), black because the recording lies below --db-min: flagged in the manifest's silent column",
        "removed 3 stale image(s) the manifest no longer lists (their recording was removed, renamed or failed, or "
        "the settings changed their name)",
        f"7 error(s), all listed in {img / 'errors.csv'}:",
        *[f"  /raw/bad{i}.wav: not a readable audio file" for i in range(5)],
        "  ... and 2 more",
    ]


def test_a_summary_of_nothing_new_is_two_lines(tmp_path, capsys, monkeypatch):
    record(monkeypatch, "images", "render_folder", result=summary(tmp_path, converted=0, skipped=4, elapsed=0.0))
    code, out, _ = call(capsys, "images", tmp_path / "raw", "--out", tmp_path / "img")
    assert code == 0
    assert out.splitlines() == [f"4 recording(s) in {tmp_path / 'raw'}: 0 image(s) converted, 4 up to date (skipped), "
                                "0 recording(s) failed, 0 file(s) in no known layout; 0.0 s (0.0 recordings/s)",
                                f"wrote {tmp_path / 'img' / 'manifest.csv'} (4 image(s))"]


def test_strict_fails_after_the_summary_is_printed(tmp_path, capsys, monkeypatch):
    record(monkeypatch, "images", "render_folder",
           result=summary(tmp_path, failed=1, failures=[("/raw/x.wav", "not a readable audio file")]))
    code, out, err = call(capsys, "images", tmp_path / "raw", "--out", tmp_path / "img", "--strict")
    assert code == 2 and "1 error(s), all listed in" in out
    assert err == (f"error: 1 file(s) failed or fit no layout and --strict is set (all in "
                   f"{tmp_path / 'img' / 'errors.csv'}); first: /raw/x.wav: not a readable audio file\n")
    assert call(capsys, "images", tmp_path / "raw", "--out", tmp_path / "img")[0] == 0  # without --strict: fine


def test_nothing_rendered_is_an_error(tmp_path, capsys, monkeypatch):
    record(monkeypatch, "images", "render_folder", result=summary(tmp_path, images=0, converted=0, failed=2,
                                                                   unmatched=1))
    code, _, err = call(capsys, "images", tmp_path / "raw", "--out", tmp_path / "img")
    assert code == 2
    assert err == (f"error: no image could be rendered from {tmp_path / 'raw'}: 2 recording(s) failed and 1 file(s) "
                   f"fit no layout (see {tmp_path / 'img' / 'errors.csv'})\n")


# -- end to end, with real recordings ----------------------------------------------------------------------------

def _cli(capsys, *argv) -> tuple[int, str, str]:
    return call(capsys, "images", *argv)


def test_cli_end_to_end(tmp_path, capsys):
    make_tree(tmp_path / "raw", MIMII_RELS)
    code, out, _ = _cli(capsys, tmp_path / "raw", "--out", tmp_path / "img", "--jobs", "1", "--no-progress",
                        "--n-mels", "40", "--n-fft", "1024", "--hop-length", "256", "--channel", "mean",
                        "--db-min", "-90", "--db-max", "10", "--fmin", "20", "--fmax", "7000", "--power", "1")
    assert code == 0
    assert "5 image(s) converted" in out and "wrote" in out
    info = read_info(next((tmp_path / "img").rglob("*.png")))
    assert info.settings == FeatureSettings(channel="mean", n_mels=40, n_fft=1024, hop_length=256, db_min=-90.0,
                                            db_max=10.0, fmin=20.0, fmax=7000.0, power=1.0)
    code, out, _ = _cli(capsys, tmp_path / "raw", "--out", tmp_path / "img", "--jobs", "1", "--no-progress",
                        "--n-mels", "40", "--n-fft", "1024", "--hop-length", "256", "--channel", "mean",
                        "--db-min", "-90", "--db-max", "10", "--fmin", "20", "--fmax", "7000", "--power", "1")
    assert code == 0 and "0 image(s) converted, 5 up to date" in out

def test_cli_bad_file_exit_codes(tmp_path, capsys):
    make_tree(tmp_path / "raw", MIMII_RELS[:2])
    (tmp_path / "raw" / "fan" / "normal").mkdir(parents=True)
    (tmp_path / "raw" / "fan" / "normal" / "bad.wav").write_bytes(b"nope")
    code, out, err = _cli(capsys, tmp_path / "raw", "--out", tmp_path / "img", "--jobs", "1", "--no-progress",
                          "--n-fft", "512")
    assert code == 0
    assert "1 recording(s) failed" in out and "bad.wav: not a readable audio file" in out
    code, out, err = _cli(capsys, tmp_path / "raw", "--out", tmp_path / "img", "--jobs", "1", "--no-progress",
                          "--n-fft", "512", "--strict")
    assert code == 2
    assert err.startswith("error: 1 file(s) failed") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["EMPTY"], "no audio files"),
    (["MISSING"], "no such folder"),
    (["ONLYBAD"], "no image could be rendered"),
    (["GOOD", "--channel", "left"], "channel must be a number"),
    (["GOOD", "--db-min", "10", "--db-max", "0"], "db_max must be above db_min"),
    (["GOOD", "--fmax", "9000"], "fmax <= sr/2"),
    (["GOOD", "--segment-seconds", "0.01"], "fewer than one FFT window"),
    (["GOOD", "--jobs", "-2"], "--jobs must be >= 0"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "EMPTY").mkdir()
    make_tree(tmp_path / "GOOD", MIMII_RELS[:1])
    (tmp_path / "ONLYBAD" / "fan" / "normal").mkdir(parents=True)
    (tmp_path / "ONLYBAD" / "fan" / "normal" / "x.wav").write_bytes(b"junk")
    argv = [str(tmp_path / argv[0]), "--out", str(tmp_path / "img"), "--jobs", "1", "--no-progress", *argv[1:]]
    code, _, err = _cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_synth_if_empty(tmp_path, capsys, monkeypatch):
    import spectro.data.synth

    def generate(out, *, seed=0, progress=True, **sizes):
        return make_tree(out, ["fan/id_00/normal/00000000.wav", "fan/id_00/abnormal/00000000.wav"])

    monkeypatch.setattr(spectro.data.synth, "generate", generate)
    code, out, _ = _cli(capsys, tmp_path / "raw", "--out", tmp_path / "img", "--jobs", "1", "--no-progress",
                        "--synth-if-empty", "--n-fft", "512")
    assert code == 0
    assert f"created the built-in synthetic dataset in {tmp_path / 'raw' / 'synthetic'} (2 recordings)" in out
    assert len(read_manifest(tmp_path / "img")) == 2
    # with audio present, the synthetic generator is not called again
    monkeypatch.setattr(spectro.data.synth, "generate", lambda *a, **k: pytest.fail("called"))
    code, out, _ = _cli(capsys, tmp_path / "raw", "--out", tmp_path / "img", "--jobs", "1", "--no-progress",
                        "--synth-if-empty", "--n-fft", "512")
    assert code == 0 and "created the built-in" not in out


def test_a_folder_of_broken_links_only_fails_with_every_link_listed(tmp_path, capsys):
    folder = tmp_path / "raw" / "fan" / "normal"
    folder.mkdir(parents=True)
    (folder / "a.wav").symlink_to("a.wav")
    (folder / "b.wav").symlink_to("missing.wav")
    code, _, err = _cli(capsys, tmp_path / "raw", "--out", tmp_path / "img", "--jobs", "1", "--no-progress")
    assert code == 2 and "no image could be rendered" in err and "2 recording(s) failed" in err
    assert set(errors_csv(tmp_path / "img")) == {"a.wav", "b.wav"}


def test_images_command_never_imports_tensorflow(tmp_path):
    make_tree(tmp_path / "raw", MIMII_RELS[:2])
    code = ("import sys; from spectro.cli import main; rc = main(['images', sys.argv[1], '--out', sys.argv[2], "
            "'--jobs', '2', '--no-progress']); heavy = {'tensorflow', 'keras'} & set(sys.modules); "
            "print('heavy:', sorted(heavy)); sys.exit(rc or (3 if heavy else 0))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "raw"), str(tmp_path / "img")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "heavy: []" in proc.stdout
