"""What every section shares: the run's context (:class:`BenchContext`) and the report's header (:func:`header`)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BenchContext:
    """One benchmark run: where it works, what it found, and what one section leaves for the next.

    ``state`` passes results between sections of the same run (e.g. the train section's run folder to the export
    and serve sections), so a later section re-uses them instead of training again.
    """

    root: Path
    work: Path  # scratch folder for datasets, images and runs made by the benchmarks
    shared: Path
    quick: bool = False
    state: dict = field(default_factory=dict)

    @property
    def mimii_sample(self) -> Path | None:
        """The real MIMII fan sample (``<shared>/mimii-sample``), or ``None`` when absent (its rows are skipped)."""
        path = self.shared / "mimii-sample"
        return path if path.is_dir() else None

    @property
    def weights_dir(self) -> Path | None:
        """The folder of ImageNet weight files (``<shared>/weights``), or ``None`` when absent."""
        path = self.shared / "weights"
        return path if path.is_dir() else None


def commit_info(root: Path = ROOT) -> str:
    """The commit benchmarked, marked when the working tree has changes."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()
        except OSError:  # no git on this machine
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_info() -> str:
    """CPU model, cores, memory, Python, numpy and OS: what a reader needs to compare figures across machines."""
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


def header(ctx: BenchContext, command: str, *, date: dt.datetime | None = None, commit: str | None = None,
           machine: str | None = None) -> list[str]:
    """The report's first lines: title, date, commit, machine, the command that wrote it and the inputs found.

    A report is written whole by one run, so one date and one commit hold for every section. ``date``, ``commit``
    and ``machine`` default to now, :func:`commit_info` and :func:`machine_info`.
    """
    date = date or dt.datetime.now()
    return [
        "# spectro benchmarks", "",
        f"- date: {date.isoformat(timespec='seconds')}",
        f"- commit: {commit if commit is not None else commit_info(ctx.root)}",
        f"- machine: {machine if machine is not None else machine_info()}",
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
