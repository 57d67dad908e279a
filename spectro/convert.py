"""``spectro images``: recordings -> log-mel spectrogram PNGs in ``<machine>/<label>/`` folders.

Programmatic use::

    from spectro.config import FeatureSettings
    from spectro.convert import convert, render_recording
    summary = convert("data/raw", "data/images", FeatureSettings(), jobs=0)
    for segment, pixels in render_recording("clip.wav", FeatureSettings()):
        ...

Output, below ``out``:

``<machine>/<label>/<name>.png``  one per recording, or ``<name>_s003.png`` per window with
                                  ``--segment-seconds``; ``<name>`` is ``<snr>_<id>_<stem>`` in the
                                  MIMII layout (``0dB_id_00_00000001``), ``<stem>`` in the plain layout,
                                  plus ``_<8 hex digits of the source path's hash>`` if two sources
                                  would still share a name
``manifest.csv``                  every image of the current settings (converted and skipped)
``errors.csv``                    ``path, reason`` of every file that failed or fits no layout

Work runs in worker processes (``fork`` where available: they inherit the imported modules and the mel
filterbank, so start-up costs milliseconds), each limited to one BLAS/OpenMP thread. Workers ignore
Ctrl-C; the parent cancels what has not started and waits for the images being written, which are
written atomically anyway, so an interrupted run leaves whole PNGs only and a re-run finishes the job.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import itertools
import os
import signal
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spectro.audio import read_audio, segment_bounds
from spectro.config import IMAGES_DIR, RAW_DIR, FeatureSettings
from spectro.dataset import (ERRORS_NAME, MANIFEST_NAME, Clip, ManifestRow, discover, has_audio, write_manifest)
from spectro.errors import SpectroError, SpectroWarning
from spectro.features import db_to_pixels, log_mel, preload_filters, settings_filters
from spectro.images import read_info, write_png

HELP = ("Render recordings to 8-bit grayscale log-mel spectrogram PNGs on a fixed dB scale, one per recording "
        "(or per window with --segment-seconds), in OUT/<machine>/<label>/, with OUT/manifest.csv listing every "
        "image and OUT/errors.csv every file that failed or fits no layout. Accepts the MIMII layout "
        "([<snr>_<machine>/]<machine>/id_XX/<label>/*.wav) and a plain <machine>/<label>/*.wav layout. "
        "Runs in parallel, skips images already rendered with the same settings, and keeps going past bad "
        "files (--strict makes any failure fatal).")

MAX_ERRORS_SHOWN = 5
HIGH_CLIP_WARN = 0.01  # warn when more than 1 % of pixels saturate at db_max


# ----------------------------------------------------------------------------------------------- rendering

def render_db(y: np.ndarray, settings: FeatureSettings) -> list[tuple[int, np.ndarray]]:
    """The dB matrices ``[(segment index, (n_mels, frames) dB), ...]`` of a signal under ``settings``.

    Raises
    ------
    SpectroError
        The signal (or a window) is shorter than one FFT window.
    """
    bounds = segment_bounds(len(y), segment=settings.segment_samples, hop=settings.segment_hop_samples)
    return [(index, log_mel(y[start:stop], settings)) for index, (start, stop) in enumerate(bounds)]


def render_recording(path: str | Path, settings: FeatureSettings) -> list[tuple[int, np.ndarray]]:
    """Render one recording exactly as ``spectro images`` does: ``[(segment index, uint8 pixels), ...]``.

    Pixels are ``(n_mels, frames)``, high bands in the top row, as stored in the PNGs.

    Raises
    ------
    SpectroError
        Any bad-input case of :func:`spectro.audio.read_audio`, or a clip shorter than one FFT window.

    Examples
    --------
    >>> [(0, pixels)] = render_recording("fan/normal/00000000.wav", FeatureSettings())  # doctest: +SKIP
    """
    y = read_audio(path, channel=settings.channel, sr=settings.sr)
    return [(index, db_to_pixels(db, settings)) for index, db in render_db(y, settings)]


# ------------------------------------------------------------------------------------------ naming

def image_base(clip: Clip) -> str:
    """``<machine>/<label>/<name>`` (no extension) for a clip, before any collision suffix."""
    stem = clip.path.stem
    if clip.machine_id:
        name = "_".join(part for part in (clip.snr, clip.machine_id, stem) if part)
    else:
        name = stem
    return f"{clip.machine}/{clip.label}/{name}"


def image_bases(clips: list[Clip], root: Path) -> list[str]:
    """Collision-free :func:`image_base` for every clip (deterministic: colliding names get a path hash)."""
    bases = [image_base(clip) for clip in clips]
    groups: dict[str, list[int]] = defaultdict(list)
    for index, base in enumerate(bases):
        groups[base.lower()].append(index)  # case-insensitive file systems collide too
    for members in groups.values():
        if len(members) > 1:
            for index in members:
                rel = clips[index].path.relative_to(root).as_posix()
                bases[index] += "_" + hashlib.sha1(rel.encode()).hexdigest()[:8]
    return bases


def image_name(base: str, segment: int, settings: FeatureSettings) -> str:
    """The image's path relative to the output folder."""
    return f"{base}.png" if settings.segment_seconds is None else f"{base}_s{segment:03d}.png"


# ------------------------------------------------------------------------------------------ one clip

@dataclass(frozen=True)
class _Job:
    source: str  # absolute path of the recording
    base: str
    out: str


@dataclass
class _Result:
    source: str
    images: list[tuple[str, int, bool]] = field(default_factory=list)  # (rel path, segment, converted?)
    error: str | None = None
    low: int = 0
    high: int = 0
    total: int = 0
    warnings: list[str] = field(default_factory=list)


_SETTINGS: FeatureSettings | None = None


@functools.lru_cache(maxsize=8)
def _settings_hash(settings: FeatureSettings) -> str:
    return settings.hash()


def _up_to_date(job: _Job, settings: FeatureSettings) -> list[tuple[str, int, bool]] | None:
    """The job's images if all exist with the current settings hash and source; ``None`` otherwise."""
    if settings.segment_seconds is None:
        segments = [0]
    else:
        import soundfile as sf

        try:
            info = sf.info(job.source)
        except Exception:  # unreadable: let the render report why
            return None
        if info.samplerate != settings.sr:  # the resampled length is only known after resampling
            return None
        bounds = segment_bounds(info.frames, segment=settings.segment_samples, hop=settings.segment_hop_samples)
        segments = list(range(len(bounds)))
    images = []
    digest = _settings_hash(settings)
    for segment in segments:
        rel = image_name(job.base, segment, settings)
        path = Path(job.out) / rel
        if not path.is_file():
            return None
        try:
            info = read_info(path)
        except SpectroError:
            return None
        if info.settings_hash != digest or info.source != job.source or info.segment != segment:
            return None
        images.append((rel, segment, False))
    return images


def _process(job: _Job, settings: FeatureSettings | None = None) -> _Result:
    """Skip or render one recording; bad input becomes ``result.error``, never an exception."""
    settings = settings or _SETTINGS
    result = _Result(source=job.source)
    done = _up_to_date(job, settings)
    if done is not None:
        result.images = done
        return result
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SpectroWarning)
            y = read_audio(job.source, channel=settings.channel, sr=settings.sr)
        result.warnings = [str(w.message) for w in caught if issubclass(w.category, SpectroWarning)]
        for segment, db in render_db(y, settings):
            rel = image_name(job.base, segment, settings)
            write_png(Path(job.out) / rel, db_to_pixels(db, settings), settings=settings, source=job.source,
                      segment=segment)
            result.images.append((rel, segment, True))
            result.low += int(np.count_nonzero(db < settings.db_min))
            result.high += int(np.count_nonzero(db > settings.db_max))
            result.total += db.size
    except SpectroError as exc:
        result.error = str(exc)
    except OSError as exc:
        result.error = f"cannot write image: {exc}"
    except Exception as exc:  # never stop the batch; the reason goes to errors.csv
        result.error = f"unexpected {type(exc).__name__}: {exc}"
    return result


def _init_worker(settings: FeatureSettings, filters: np.ndarray) -> None:
    """Worker set-up: ignore Ctrl-C (the parent handles it), one BLAS thread, the parent's filters."""
    global _SETTINGS
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    _SETTINGS = settings
    preload_filters(settings, filters)


# ------------------------------------------------------------------------------------------ the batch

@dataclass
class ConvertSummary:
    """What :func:`convert` did. ``converted``/``skipped`` count images, ``failed`` recordings."""

    src: Path
    out: Path
    clips: int = 0
    converted: int = 0
    skipped: int = 0
    failed: int = 0
    unmatched: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), failed + unmatched
    clipped_low: float = 0.0  # fraction of rendered pixels below db_min
    clipped_high: float = 0.0  # ... and above db_max
    elapsed: float = 0.0
    rows: list[ManifestRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return self.converted + self.skipped

    def lines(self, max_errors: int = MAX_ERRORS_SHOWN) -> list[str]:
        """The end-of-run summary as text lines."""
        rate = self.clips / self.elapsed if self.elapsed > 0 else 0.0
        lines = [f"{self.clips} recording(s) in {self.src}: {self.converted} image(s) converted, "
                 f"{self.skipped} up to date (skipped), {self.failed} recording(s) failed, "
                 f"{self.unmatched} file(s) in no known layout; {self.elapsed:.1f} s ({rate:.1f} recordings/s)"]
        if self.converted:
            lines.append(f"clipped pixels: {100 * self.clipped_low:.3f} % below the dB range, "
                         f"{100 * self.clipped_high:.3f} % above it")
        lines.append(f"wrote {self.out / MANIFEST_NAME} ({len(self.rows)} image(s))")
        if self.failures:
            lines.append(f"{len(self.failures)} error(s), all listed in {self.out / ERRORS_NAME}:")
            lines += [f"  {path}: {reason}" for path, reason in self.failures[:max_errors]]
            if len(self.failures) > max_errors:
                lines.append(f"  ... and {len(self.failures) - max_errors} more")
        return lines


def _jobs(jobs: int) -> int:
    if jobs < 0:
        raise SpectroError(f"--jobs must be >= 0 (0 = all cores), got {jobs}")
    if jobs == 0:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)
    return jobs


def _remove_stale_temp_files(out: Path) -> None:
    """Temp files (``.<stem>.<pid>.<n>.tmp``) left by a killed run (SIGKILL, power loss)."""
    if out.is_dir():
        for path in out.rglob(".*.tmp"):
            path.unlink(missing_ok=True)


def _write_errors(path: Path, failures: list[tuple[str, str]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows(failures)
    tmp.replace(path)


def _process_chunk(jobs: list[_Job]) -> list[_Result]:
    return [_process(job) for job in jobs]


def _pool_context():
    import multiprocessing

    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)


def _run_jobs(jobs: list[_Job], settings: FeatureSettings, n_workers: int, progress: bool):
    """Yield a :class:`_Result` per job, in completion order."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    filters = settings_filters(settings)  # computed once here (imports librosa), handed to the workers
    if n_workers <= 1 or len(jobs) <= 1:
        with threadpool_limits(limits=1), tqdm(total=len(jobs), unit="rec", desc="images", disable=not progress) as bar:
            for job in jobs:
                yield _process(job, settings)
                bar.update()
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    executor = ProcessPoolExecutor(max_workers=min(n_workers, len(jobs)), mp_context=_pool_context(),
                                   initializer=_init_worker, initargs=(settings, filters))
    # small chunks: one future per recording costs the parent about 1 ms of IPC each (measured: 17 % more
    # CPU with 2 workers than with 1); a chunk of <= 16 keeps Ctrl-C prompt (unstarted chunks are dropped)
    size = max(1, min(16, len(jobs) // (4 * n_workers)))
    try:
        futures = [executor.submit(_process_chunk, jobs[i:i + size])  # workers fork here, before tqdm's thread
                   for i in range(0, len(jobs), size)]
        with tqdm(total=len(jobs), unit="rec", desc="images", disable=not progress) as bar:
            for future in as_completed(futures):
                for result in future.result():
                    yield result
                    bar.update()
    except BrokenProcessPool:
        raise SpectroError("a worker process died (out of memory or killed); images written so far are whole: "
                           "re-run to finish, or use --jobs 1") from None
    finally:  # on Ctrl-C: drop what has not started, wait for the images being written
        executor.shutdown(wait=True, cancel_futures=True)


def convert(src: str | Path, out: str | Path, settings: FeatureSettings, *, jobs: int = 0, strict: bool = False,
            progress: bool = True) -> ConvertSummary:
    """Render every recording below ``src`` to PNGs below ``out``; write ``manifest.csv`` and ``errors.csv``.

    Parameters
    ----------
    src : str or Path
        Folder of recordings in the MIMII or plain layout (searched recursively).
    out : str or Path
        Image folder (created).
    settings : FeatureSettings
    jobs : int
        Worker processes; 0 = all cores, 1 = this process.
    strict : bool
        Raise after the batch if any file failed or fits no layout.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    ConvertSummary

    Raises
    ------
    SpectroError
        ``src`` holds no audio; windows shorter than one FFT; with ``strict``, any failure.
    """
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    n_workers = _jobs(jobs)
    if not src.is_dir():
        raise SpectroError(f"{src}: no such folder (expected a folder of recordings); create it and put recordings "
                           "there, or pass --synth-if-empty for the built-in synthetic dataset")
    if not has_audio(src):
        raise SpectroError(f"{src}: no audio files (.wav, .flac, .ogg) found; put recordings there in the MIMII "
                           "layout (<machine>/id_XX/<label>/*.wav) or as <machine>/<label>/*.wav, "
                           "or pass --synth-if-empty for the built-in synthetic dataset")
    if settings.segment_samples is not None and settings.segment_samples < settings.n_fft:
        raise SpectroError(f"--segment-seconds {settings.segment_seconds} gives {settings.segment_samples} samples "
                           f"per window, fewer than one FFT window (--n-fft {settings.n_fft})")
    clips, unmatched = discover(src)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(out)
    bases = image_bases(clips, src)
    job_list = [_Job(source=os.path.abspath(clip.path), base=base, out=str(out)) for clip, base in zip(clips, bases)]

    # Leading up-to-date clips are settled here, so a re-run with nothing to do never imports librosa (2 s).
    settled: list[_Result] = []
    for job in job_list:
        done = _up_to_date(job, settings)
        if done is None:
            break
        settled.append(_Result(source=job.source, images=done))
    pending = job_list[len(settled):]
    running = _run_jobs(pending, settings, n_workers, progress) if pending else iter(())
    try:
        summary = _collect(itertools.chain(settled, running), src, out, settings, clips, unmatched)
    finally:  # an interrupt anywhere in the loop shuts the worker pool down now, not at exit
        getattr(running, "close", lambda: None)()
    summary.elapsed = time.perf_counter() - started
    _emit_warnings(summary, settings)
    if strict and summary.failures:
        raise _strict_error(summary)
    return summary


def _collect(results, src: Path, out: Path, settings: FeatureSettings, clips: list[Clip], unmatched) -> ConvertSummary:
    """Gather results into the summary; write ``manifest.csv`` and ``errors.csv``."""
    by_source = {os.path.abspath(clip.path): clip for clip in clips}
    summary = ConvertSummary(src=src, out=out, clips=len(clips), unmatched=len(unmatched))
    failed: list[tuple[str, str]] = []
    low = high = total = 0
    for result in results:
        clip = by_source[result.source]
        summary.warnings += result.warnings
        low, high, total = low + result.low, high + result.high, total + result.total
        if result.error is not None:
            failed.append((result.source, result.error))
        for rel, segment, converted in result.images:
            summary.converted += converted
            summary.skipped += not converted
            summary.rows.append(ManifestRow(image=rel, source=result.source, machine=clip.machine,
                                            machine_id=clip.machine_id, label=clip.label, snr=clip.snr,
                                            segment=segment, settings_hash=_settings_hash(settings)))
    summary.failed = len(failed)
    summary.failures = sorted(failed) + [(os.path.abspath(u.path), u.reason) for u in unmatched]
    summary.clipped_low = low / total if total else 0.0
    summary.clipped_high = high / total if total else 0.0
    summary.rows.sort(key=lambda row: row.image)
    write_manifest(out / MANIFEST_NAME, summary.rows)
    _write_errors(out / ERRORS_NAME, summary.failures)
    return summary


def _strict_error(summary: ConvertSummary) -> SpectroError:
    path, reason = summary.failures[0]
    return SpectroError(f"{len(summary.failures)} file(s) failed or fit no layout and --strict is set "
                        f"(all in {summary.out / ERRORS_NAME}); first: {path}: {reason}")


def _emit_warnings(summary: ConvertSummary, settings: FeatureSettings) -> None:
    if summary.warnings:
        more = f" (and {len(summary.warnings) - 1} more file(s) like it)" if len(summary.warnings) > 1 else ""
        warnings.warn(summary.warnings[0] + more, SpectroWarning, stacklevel=3)
    if summary.clipped_high > HIGH_CLIP_WARN:
        warnings.warn(f"{100 * summary.clipped_high:.1f} % of pixels are above --db-max {settings.db_max:g} dB and "
                      "saturate; raise --db-max to keep them", SpectroWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------ the CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FeatureSettings()
    parser.add_argument("src", nargs="?", type=Path, default=RAW_DIR, metavar="SRC",
                        help="folder of recordings (MIMII or <machine>/<label>/ layout), searched recursively")
    parser.add_argument("--out", metavar="DIR", type=Path, default=IMAGES_DIR, help="image folder")
    f = parser.add_argument_group("features (stored in every PNG; a change re-renders)")
    f.add_argument("--sr", metavar="HZ", type=int, default=d.sr, help="analysis sample rate in Hz (other rates are resampled)")
    f.add_argument("--channel", metavar="N|mean", default=d.channel, help="microphone channel N (0 = first) or 'mean' of all")
    f.add_argument("--n-mels", metavar="N", type=int, default=d.n_mels, help="mel bands = image height")
    f.add_argument("--n-fft", metavar="N", type=int, default=d.n_fft, help="FFT window length in samples")
    f.add_argument("--hop-length", metavar="N", type=int, default=d.hop_length, help="samples between frames")
    f.add_argument("--power", metavar="P", type=float, default=d.power, help="exponent of the magnitude (2 = power)")
    f.add_argument("--fmin", metavar="HZ", type=float, default=d.fmin, help="lowest mel frequency in Hz")
    f.add_argument("--fmax", metavar="HZ", type=float, default=d.fmax, help="highest mel frequency in Hz (None = sr/2)")
    f.add_argument("--db-min", metavar="DB", type=float, default=d.db_min, help="dB mapped to pixel 0 (lower is clipped)")
    f.add_argument("--db-max", metavar="DB", type=float, default=d.db_max, help="dB mapped to pixel 255 (higher is clipped)")
    f.add_argument("--segment-seconds", metavar="S", type=float, default=d.segment_seconds,
                   help="cut recordings into windows of this length, one image each (None = whole recording)")
    f.add_argument("--segment-hop-seconds", metavar="S", type=float, default=d.segment_hop_seconds,
                   help="hop between windows (None = the window length)")
    parser.add_argument("--jobs", metavar="N", type=int, default=0, help="worker processes (0 = all cores, 1 = no workers)")
    parser.add_argument("--strict", action="store_true", help="fail (exit 2) if any file fails or fits no layout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--synth-if-empty", action="store_true",
                        help="if SRC holds no audio, first write the built-in synthetic dataset to SRC/synthetic")


def settings_from_args(args: argparse.Namespace) -> FeatureSettings:
    """The :class:`FeatureSettings` the command-line options describe."""
    return FeatureSettings(sr=args.sr, channel=str(args.channel), n_fft=args.n_fft, hop_length=args.hop_length,
                           n_mels=args.n_mels, power=args.power, fmin=args.fmin, fmax=args.fmax,
                           db_min=args.db_min, db_max=args.db_max, segment_seconds=args.segment_seconds,
                           segment_hop_seconds=args.segment_hop_seconds)


def _synthesize(src: Path) -> None:
    import importlib

    try:
        generate = getattr(importlib.import_module("spectro.synth"), "generate", None)
    except ImportError:
        generate = None
    if generate is None:
        raise SpectroError(f"{src}: no audio files, and the built-in synthetic dataset is not available in this "
                           "version (spectro.synth.generate missing); put recordings in SRC")
    target = src / "synthetic"
    paths = generate(target)
    print(f"{src} held no audio: created the built-in synthetic dataset in {target} "
          f"({len(paths)} recordings)", flush=True)


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    src: Path = args.src
    if args.synth_if_empty and not has_audio(src):
        _synthesize(src)
    summary = convert(src, args.out, settings, jobs=args.jobs, strict=False, progress=not args.no_progress)
    print("\n".join(summary.lines()), flush=True)
    if args.strict and summary.failures:
        raise _strict_error(summary)
    if summary.images == 0:
        raise SpectroError(f"no image could be rendered from {src}: {summary.failed} recording(s) failed and "
                           f"{summary.unmatched} file(s) fit no layout (see {args.out / ERRORS_NAME})")
    return 0
