"""The benchmark package (``bench/``, ``python -m bench``): its sections, command line, header and report, without
running a benchmark (no training, no data)."""

from __future__ import annotations

import datetime as dt
import inspect
import subprocess
import sys
import types
from pathlib import Path

import pytest

import bench
from bench import __main__ as entry
from bench.common import BenchContext, commit_info, header

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", bench.SECTIONS)
def test_every_section_has_a_title_and_a_documented_run(name):
    module = bench.section(name)
    assert module.__name__ == f"bench.{name}"
    assert isinstance(module.TITLE, str) and module.TITLE.strip()
    assert list(inspect.signature(module.run).parameters) == ["ctx"]
    assert inspect.getdoc(module.run)


def test_section_refuses_a_name_outside_the_list():
    with pytest.raises(ValueError, match="expected a section among images, train"):
        bench.section("probe_fusion")


def test_section_titles_are_distinct():
    titles = [bench.section(name).TITLE for name in bench.SECTIONS]
    assert len(set(titles)) == len(titles)


def test_importing_every_section_starts_no_tensorflow():
    # a fresh interpreter: --help and this file stay fast only while sections import TensorFlow lazily
    code = ("import sys, bench\nfor name in bench.SECTIONS:\n    bench.section(name)\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_names_the_sections_and_where_reports_go():
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "--only SECTION" in text and "--quick" in text and "--out" in text and "--work" in text
    assert " ".join(bench.SECTIONS) in text
    assert "not to docs/benchmarks.md" in text and "reports/bench/benchmarks.md with --only or --quick" in text


@pytest.mark.parametrize("argv, expected", [
    ([], entry.PUBLISHED),
    (["--only", "serve", "normal"], entry.SCRATCH),
    (["--quick"], entry.SCRATCH),
    (["--only", "images", "--out", "elsewhere.md"], Path("elsewhere.md")),
])
def test_only_and_quick_runs_never_write_the_committed_report_by_default(argv, expected):
    assert entry.report_path(entry.parser().parse_args(argv)) == expected


def test_header_has_date_commit_machine_and_command(tmp_path):
    ctx = BenchContext(root=tmp_path, work=tmp_path / "work", shared=tmp_path / "shared")
    lines = header(ctx, "python -m bench --only images", date=dt.datetime(2026, 12, 7, 23, 5, 1),
                   commit="abc1234", machine="a CPU, 2 cores")
    assert lines[0] == "# spectro benchmarks"
    assert lines[2:6] == ["- date: 2026-12-07T23:05:01", "- commit: abc1234", "- machine: a CPU, 2 cores",
                          "- command: `python -m bench --only images`"]
    assert "- real MIMII sample: absent (real-data rows skipped)" in lines
    assert "- ImageNet weights: absent (pretrained rows skipped)" in lines
    assert not any("re-run" in line for line in lines)


def test_header_finds_commit_and_machine_itself(tmp_path):
    (tmp_path / "shared" / "mimii-sample").mkdir(parents=True)
    ctx = BenchContext(root=tmp_path, work=tmp_path / "work", shared=tmp_path / "shared")
    lines = header(ctx, "python -m bench")
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines if line.startswith("- ")}
    dt.datetime.fromisoformat(fields["- date"])
    assert fields["- commit"] == "unknown (not a git checkout)"  # tmp_path is no git checkout
    assert " cores" in fields["- machine"] and "Python " in fields["- machine"]
    assert fields["- real MIMII sample"] == f"found at {tmp_path / 'shared' / 'mimii-sample'}"


def test_commit_info_names_this_checkouts_commit():
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert commit_info(ROOT).startswith(head)


def test_command_line_shows_the_benchmark_variables_set():
    environ = {"SPECTRO_BENCH_CURVE_NS": "10", "HOME": "/root", "SPECTRO_BENCH_NORMAL_FOLDS": "2"}
    assert (entry.command_line(["--only", "curve", "--out", "a b.md"], environ)
            == "SPECTRO_BENCH_CURVE_NS=10 SPECTRO_BENCH_NORMAL_FOLDS=2 python -m bench --only curve --out 'a b.md'")


def test_a_run_writes_only_the_chosen_sections_and_reports_a_failed_one(tmp_path, monkeypatch, capsys):
    def fake(name, body):
        def run(ctx):
            if body is None:
                raise RuntimeError("broken on purpose")
            return body
        return types.SimpleNamespace(TITLE=f"The {name} section", run=run)

    fakes = {"images": fake("images", "images body"), "train": fake("train", None), "serve": fake("serve", "serve")}
    monkeypatch.setattr(entry, "section", fakes.__getitem__)
    monkeypatch.setattr("spectro.quiet.install", lambda: None)
    out = tmp_path / "report.md"
    out.write_text("# an earlier report\n\n## The normal section\n\nkept?\n")

    code = entry.main(["--only", "serve", "train", "images", "--out", str(out), "--work", str(tmp_path / "w")])

    text = out.read_text()
    assert code == 1
    assert "earlier report" not in text and "normal section" not in text  # written whole, nothing merged
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    assert titles == ["## The images section", "## The train section", "## The serve section"]  # SECTIONS' order
    assert "**section failed:**" in text and "RuntimeError: broken on purpose" in text
    assert "- command: `python -m bench --only serve train images --out" in text
    assert "failed sections: train" in capsys.readouterr().out
