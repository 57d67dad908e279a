#!/usr/bin/env python
"""``make bench``: run every benchmark section and write ``docs/benchmarks.md`` (committed).

Each section is a module ``scripts/bench_<name>.py`` with ``TITLE`` and ``run(ctx) -> str`` (Markdown).
Sections run in order and share ``ctx`` (``ctx.state`` passes e.g. a trained run from one section to
the next). Every speed figure is a ratio against a reference measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SECTIONS = ["images", "train", "small", "heldout", "curve", "pretrained", "normal", "scale", "export", "serve"]


@dataclass
class BenchContext:
    root: Path
    work: Path  # scratch folder for datasets, images and runs made by the benchmarks
    shared: Path
    quick: bool = False
    state: dict = field(default_factory=dict)

    @property
    def mimii_sample(self) -> Path | None:
        path = self.shared / "mimii-sample"
        return path if path.is_dir() else None

    @property
    def weights_dir(self) -> Path | None:
        path = self.shared / "weights"
        return path if path.is_dir() else None


def commit_info() -> str:
    """The commit benchmarked, marked when the working tree has changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_info() -> str:
    import numpy

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}, numpy {numpy.__version__}; "
            f"{platform.system()} {platform.release()}")


def _sections(path: Path) -> dict[str, str]:
    """The ``## TITLE`` sections of an earlier benchmarks file, by title (re-used by ``--only``)."""
    if not path.is_file():
        return {}
    sections, title, body = {}, None, []
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            if title:
                sections[title] = "\n".join(body).rstrip()
            title, body = line[3:].strip(), [line]
        elif title:
            body.append(line)
    if title:
        sections[title] = "\n".join(body).rstrip()
    return sections


def main(argv=None) -> int:
    from spectro import quiet

    quiet.install()  # TensorFlow's C++ start-up lines stay out of the log, as they stay off the CLI's terminal
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections (in order)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--work", type=Path, default=ROOT / "reports" / "bench")
    parser.add_argument("--synthetic-run", type=Path,
                        help="with --only export, serve or normal: the run folder the train section made "
                             "(normal: its supervised comparison, a run trained on the built-in set)")
    parser.add_argument("--pretrained-run", type=Path,
                        help="with --only export: the ImageNet-initialised run folder the train section made")
    args = parser.parse_args(argv)
    ctx = BenchContext(root=ROOT, work=args.work, shared=ROOT.parent / "shared", quick=args.quick)
    if args.synthetic_run:
        ctx.state["synthetic_run"] = args.synthetic_run.resolve()
    if args.pretrained_run:
        ctx.state["pretrained_run"] = args.pretrained_run.resolve()
    ctx.work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "make bench" if not (args.only or args.quick) else "python scripts/bench.py " + " ".join(
        (["--only", *args.only] if args.only else []) + (["--quick"] if args.quick else [])
        + ([f"--synthetic-run {args.synthetic_run}"] if args.synthetic_run else [])
        + ([f"--pretrained-run {args.pretrained_run}"] if args.pretrained_run else []))
    header = [
        "# spectro benchmarks", "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- commit: {commit_info()}",
        f"- machine: {machine_info()}",
        f"- command: `{command}`",
        "- real MIMII sample: "
        + (f"found at {ctx.mimii_sample}" if ctx.mimii_sample else "absent (real-data rows skipped)"),
        "- ImageNet weights: "
        + (f"found at {ctx.weights_dir}" if ctx.weights_dir else "absent (pretrained rows skipped)"),
        "",
        "Speed figures are ratios against a reference measured in the same run; absolute times on shared machines "
        "are noisy.",
        "",
    ]
    kept = _sections(args.out) if args.only else {}  # --only: the other sections of the file stay
    if kept:  # and so do the date and commit they were measured at; this re-run is added to the command line
        earlier = {line.split(":", 1)[0]: line for line in args.out.read_text().splitlines()
                   if line.startswith(("- date:", "- commit:", "- command:"))}
        header[2] = earlier.get("- date", header[2])
        header[3] = earlier.get("- commit", header[3])
        header[5] = (earlier.get("- command", "- command: `make bench`")
                     + f"; the sections {', '.join(args.only)} re-run with `{command}` "
                     f"at {dt.datetime.now().isoformat(timespec='seconds')} (commit {commit_info()})")
    parts = list(header)
    failed = []
    for name in SECTIONS:
        module = importlib.import_module(f"bench_{name}")
        if args.only and name not in args.only:
            if module.TITLE in kept:
                parts += [kept[module.TITLE], ""]
            continue
        print(f"== {module.TITLE}", flush=True)
        started = time.perf_counter()
        try:
            body = module.run(ctx)
        except Exception:  # a broken section is reported, the others still run
            failed.append(name)
            body = "**section failed:**\n\n```\n" + traceback.format_exc() + "```\n"
            print(body, file=sys.stderr)
        parts += [f"## {module.TITLE}", "", body.strip(), "", f"_section time: {time.perf_counter() - started:.0f} s_",
                  ""]
        args.out.write_text("\n".join(parts))
    args.out.write_text("\n".join(parts))  # also the sections kept from an earlier run after the last one run
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
