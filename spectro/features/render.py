"""The images stage: recordings -> log-mel spectrogram PNGs in ``<machine>/<label>/`` folders.

Programmatic use::

    from spectro.features.settings import FeatureSettings
    from spectro.features.render import render_folder, render_recording
    summary = render_folder("data/raw", "data/images", FeatureSettings(), jobs=0)
    for segment, pixels in render_recording("clip.wav", FeatureSettings()):
        ...

Output, below ``out``:

``<machine>/<label>/<name>.png``  one per recording, or ``<name>_s003.png`` per window with
                                  ``--segment-seconds``; ``<name>`` is ``<snr>_<id>_<stem>`` in the
                                  MIMII layout (``0dB_id_00_00000001``), ``<stem>`` in the plain layout,
                                  plus ``_<8 hex digits of the source path's hash>`` if two sources
                                  would still share a name
``manifest.csv``                  every image of the current settings (converted and skipped), with a
                                  ``silent`` flag for images that are black but for specks (see
                                  :func:`is_silent`)
``errors.csv``                    ``path, reason`` of every file that failed, cannot be opened (a dangling
                                  or looping symbolic link) or fits no layout

After a whole run, every PNG below ``out`` that spectro wrote and the manifest does not list (its recording
was removed, renamed or failed, a name collision renamed it, or the settings changed its name) is removed,
so the folder holds exactly what the manifest lists; PNGs spectro did not write are left alone.

Work runs in worker processes (``fork`` where available: they inherit the imported modules and the mel
filterbank, so start-up costs milliseconds), each limited to one BLAS/OpenMP thread. Workers ignore
Ctrl-C; the parent cancels what has not started and waits for the images being written, which are
written atomically anyway, so an interrupted run leaves whole PNGs only and a re-run finishes the job.
"""

from __future__ import annotations

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

from spectro.data.layout import Clip, discover, has_audio, open_problem
from spectro.data.manifest import ERRORS_NAME, MANIFEST_NAME, ImageRow, read_manifest, write_manifest
from spectro.errors import SpectroError, SpectroWarning
from spectro.features.audio import read_audio, segment_bounds
from spectro.features.logmel import db_to_pixels, log_mel, preload_filters, settings_filters
from spectro.features.modulation import modulation_spectrum
from spectro.features.png import read_info, read_pixels, write_png
from spectro.features.settings import FeatureSettings
from spectro.paths import usable_cores

HIGH_CLIP_WARN = 0.01  # warn when more than 1 % of pixels saturate at db_max
SILENT_FRACTION = 0.01  # an image with at most 1 % of its pixels above db_min (pixel 0) is silent


def is_silent(pixels: np.ndarray) -> bool:
    """Whether an image is black but for specks: at most :data:`SILENT_FRACTION` of its pixels lie above pixel 0,
    the dB range's floor (``db_min``; real recordings' quietest bands lie well above its default). A digitally
    silent clip, a dead microphone or a recording far too quiet for the dB range gives such an image, which tells
    a model nothing."""
    return int(np.count_nonzero(pixels)) <= SILENT_FRACTION * pixels.size


# ----------------------------------------------------------------------------------------------- rendering

def render_db(y: np.ndarray, settings: FeatureSettings) -> list[tuple[int, np.ndarray]]:
    """The dB matrices ``[(segment index, (n_mels, frames) dB), ...]`` of a signal under ``settings``.

    Raises
    ------
    SpectroError
        The signal (or a window) is shorter than one FFT window.
    """
    return [(index, db) for index, db, _ in render_segments(y, settings)]


def render_segments(y: np.ndarray, settings: FeatureSettings) -> list[tuple[int, np.ndarray, np.ndarray | None]]:
    """``[(segment index, (n_mels, frames) dB, modulation spectrum or None), ...]`` of a signal: what each image
    of it holds (the modulation spectrum when ``settings.modulation_hz`` asks for one)."""
    bounds = segment_bounds(len(y), segment=settings.segment_samples, hop=settings.segment_hop_samples)
    return [(index, log_mel(y[start:stop], settings), modulation_of(y[start:stop], settings))
            for index, (start, stop) in enumerate(bounds)]


def modulation_of(y: np.ndarray, settings: FeatureSettings) -> np.ndarray | None:
    """The modulation spectrum ``settings`` ask for of signal ``y``, or ``None`` when they ask for none."""
    if settings.modulation_hz is None:
        return None
    return modulation_spectrum(y, sr=settings.sr, modulation_hz=settings.modulation_hz)


def render_recording(path: str | Path, settings: FeatureSettings) -> list[tuple[int, np.ndarray]]:
    """Render one recording exactly as ``spectro images`` does: ``[(segment index, uint8 pixels), ...]``.

    Pixels are ``(n_mels, frames)``, high bands in the top row, as stored in the PNGs.

    Raises
    ------
    SpectroError
        Any bad-input case of :func:`spectro.features.audio.read_audio`, or a clip shorter than one FFT window.

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
    # (rel path, segment, converted?, silent? (None: not known here, an up-to-date image))
    images: list[tuple[str, int, bool, bool | None]] = field(default_factory=list)
    error: str | None = None
    low: int = 0
    high: int = 0
    total: int = 0
    warnings: list[str] = field(default_factory=list)


_SETTINGS: FeatureSettings | None = None


@functools.lru_cache(maxsize=8)
def _settings_hash(settings: FeatureSettings) -> str:
    return settings.hash()


def _up_to_date(job: _Job, settings: FeatureSettings) -> list[tuple[str, int, bool, bool | None]] | None:
    """The job's images if the source can be opened and all images exist with the current settings hash and
    source; ``None`` otherwise."""
    if open_problem(job.source) is not None:  # e.g. a link left dangling since: the render says why
        return None
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
        images.append((rel, segment, False, None))
    return images


def _process(job: _Job, settings: FeatureSettings | None = None) -> _Result:
    """Skip or render one recording; bad input becomes ``result.error``, never an exception."""
    settings = settings or _SETTINGS
    result = _Result(source=job.source)
    done = _up_to_date(job, settings)
    if done is not None:
        result.images = done
        return result
    problem = open_problem(job.source)
    if problem is not None:
        result.error = problem
        return result
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SpectroWarning)
            y = read_audio(job.source, channel=settings.channel, sr=settings.sr)
        result.warnings = [str(w.message) for w in caught if issubclass(w.category, SpectroWarning)]
        for segment, db, modulation in render_segments(y, settings):
            rel = image_name(job.base, segment, settings)
            pixels = db_to_pixels(db, settings)
            write_png(Path(job.out) / rel, pixels, settings=settings, source=job.source, segment=segment,
                      modulation=modulation)
            result.images.append((rel, segment, True, is_silent(pixels)))
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
    """What :func:`render_folder` did. ``converted``/``skipped``/``silent`` count images, ``failed`` recordings,
    ``removed`` stale PNGs deleted because the manifest no longer lists them."""

    src: Path
    out: Path
    clips: int = 0
    converted: int = 0
    skipped: int = 0
    failed: int = 0
    unmatched: int = 0
    silent: int = 0  # images flagged silent (:func:`is_silent`), converted and skipped
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), failed + unmatched
    clipped_low: float = 0.0  # fraction of rendered pixels below db_min
    clipped_high: float = 0.0  # ... and above db_max
    elapsed: float = 0.0
    rows: list[ImageRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    synthesized: int = 0  # recordings of the built-in synthetic dataset written first (``synth_if_empty``)

    @property
    def images(self) -> int:
        return self.converted + self.skipped


def _jobs(jobs: int) -> int:
    if jobs < 0:
        raise SpectroError(f"--jobs must be >= 0 (0 = all cores), got {jobs}")
    return usable_cores() if jobs == 0 else jobs


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
    # small chunks: one future per recording costs the parent a millisecond of IPC each; a chunk of <= 16
    # keeps Ctrl-C prompt (unstarted chunks are dropped)
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


def render_folder(src: str | Path, out: str | Path, settings: FeatureSettings, *, jobs: int = 0, strict: bool = False,
                  progress: bool = True, synth_if_empty: bool = False) -> ConvertSummary:
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
    synth_if_empty : bool
        When ``src`` holds no audio, first write the built-in synthetic dataset to ``src/synthetic``
        (:func:`spectro.data.synth.generate`).
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
    synthesized = 0
    if synth_if_empty and not has_audio(src):
        from spectro.data.synth import generate

        synthesized = len(generate(src / "synthetic", progress=progress))
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
    known_silent = _silent_in_manifest(out, settings)
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
        summary = _collect(itertools.chain(settled, running), src, out, settings, clips, unmatched, known_silent)
    finally:  # an interrupt anywhere in the loop shuts the worker pool down now, not at exit
        getattr(running, "close", lambda: None)()
    summary.elapsed = time.perf_counter() - started
    summary.synthesized = synthesized
    _emit_warnings(summary, settings)
    if strict and summary.failures:
        raise strict_error(summary)
    return summary


def _silent_in_manifest(out: Path, settings: FeatureSettings) -> dict[tuple[str, str], bool]:
    """``{(image path relative to out, source): silent}`` of the images of ``settings`` that ``out``'s manifest
    lists (so an up-to-date image need not be decoded again); empty when there is no readable manifest or it is
    one written before the ``silent`` column."""
    try:
        with (out / MANIFEST_NAME).open(newline="") as handle:
            if "silent" not in next(csv.reader(handle), []):
                return {}
        rows = read_manifest(out / MANIFEST_NAME)
    except (SpectroError, ValueError, KeyError, OSError, csv.Error):  # none, or damaged: it is rewritten anyway
        return {}
    folder, digest = (out / MANIFEST_NAME).resolve().parent, _settings_hash(settings)
    return {(Path(os.path.relpath(r.path, folder)).as_posix(), r.source): r.silent
            for r in rows if r.settings_hash == digest}


def _silent(path: Path) -> bool:
    """:func:`is_silent` of the image at ``path`` (an image the manifest did not flag yet)."""
    try:
        return is_silent(read_pixels(path))
    except SpectroError:
        return False


def _remove_orphans(out: Path, listed: set[str]) -> int:
    """Delete every PNG below ``out`` that spectro wrote (it carries spectro's metadata) and ``listed`` (paths
    relative to ``out``) does not hold; return how many. Hidden folders and PNGs of others are left alone."""
    removed = 0
    for path in out.rglob("*.png"):
        rel = path.relative_to(out)
        if rel.as_posix() in listed or any(part.startswith(".") for part in rel.parts) or path.is_symlink() \
                or not path.is_file():
            continue
        try:
            read_info(path)
        except Exception:  # not an image spectro wrote (or not one it can read as its own): not ours to remove
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _collect(results, src: Path, out: Path, settings: FeatureSettings, clips: list[Clip], unmatched,
             known_silent: dict[tuple[str, str], bool]) -> ConvertSummary:
    """Gather results into the summary; write ``manifest.csv`` and ``errors.csv``; remove the PNGs that the
    manifest no longer lists."""
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
        for rel, segment, converted, silent in result.images:
            summary.converted += converted
            summary.skipped += not converted
            if silent is None:
                silent = known_silent.get((rel, result.source))
                silent = _silent(out / rel) if silent is None else silent
            summary.silent += silent
            summary.rows.append(ImageRow(out / rel, result.source, clip.machine, clip.machine_id, clip.label,
                                         clip.snr, segment, _settings_hash(settings), silent=silent))
    summary.failed = len(failed)
    summary.failures = sorted(failed) + [(os.path.abspath(u.path), u.reason) for u in unmatched]
    summary.clipped_low = low / total if total else 0.0
    summary.clipped_high = high / total if total else 0.0
    summary.rows.sort(key=lambda row: str(row.path))
    write_manifest(out / MANIFEST_NAME, summary.rows)
    _write_errors(out / ERRORS_NAME, summary.failures)
    summary.removed = _remove_orphans(out, {Path(os.path.relpath(r.path, out)).as_posix() for r in summary.rows})
    return summary


def strict_error(summary: ConvertSummary) -> SpectroError:
    path, reason = summary.failures[0]
    return SpectroError(f"{len(summary.failures)} file(s) failed or fit no layout and --strict is set "
                        f"(all in {summary.out / ERRORS_NAME}); first: {path}: {reason}")


def _emit_warnings(summary: ConvertSummary, settings: FeatureSettings) -> None:
    if summary.warnings:
        more = f" (and {len(summary.warnings) - 1} more file(s) like it)" if len(summary.warnings) > 1 else ""
        warnings.warn(summary.warnings[0] + more, SpectroWarning, stacklevel=3)
    if summary.silent:
        first = next(row for row in summary.rows if row.silent)
        warnings.warn(f"{summary.silent} image(s) are silent, black but for specks (the recording lies below "
                      f"--db-min {settings.db_min:g} dB: silence, a dead microphone or a level far too low), e.g. "
                      f"{Path(first.source).name}; flagged in {MANIFEST_NAME}'s silent column: check those "
                      "recordings or lower --db-min", SpectroWarning, stacklevel=3)
    if summary.clipped_high > HIGH_CLIP_WARN:
        warnings.warn(f"{100 * summary.clipped_high:.1f} % of pixels are above --db-max {settings.db_max:g} dB and "
                      "saturate; raise --db-max to keep them", SpectroWarning, stacklevel=3)
