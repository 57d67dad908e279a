"""Conversion speed: spectro vs a notebook-style reference pipeline, ``--jobs 2`` vs ``--jobs 1``, clipping.

The reference is what public MIMII notebooks do per clip: ``librosa.load(sr=None, mono=False)`` -> channel 0
-> ``librosa.feature.melspectrogram`` -> ``librosa.power_to_db(ref=np.max)`` -> min-max to uint8 -> PIL save.
Both run on the same clips, in this process, alternating, best of a few repeats. The target compares like with
like: the reference against ``spectro images --modulation-hz 0`` (the images alone). spectro's default also
stores each clip's modulation spectrum; it is timed too, beside the reference with the same spectrum computed
the notebook way (``librosa.stft`` of 16 ms frames every 4 ms, the energy's log, ``np.fft.rfft``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

TITLE = "Conversion speed (spectro images)"


def _clips(ctx) -> tuple[Path, list[Path], str]:
    """The real MIMII clips, or synthetic 8-channel 10 s WAVs of the same shape when they are absent."""
    from spectro.data.layout import discover

    if ctx.mimii_sample is not None:
        clips, _ = discover(ctx.mimii_sample)
        return ctx.mimii_sample, [c.path for c in clips], f"the {len(clips)} real MIMII clips in `{ctx.mimii_sample}`"
    import soundfile as sf

    root = ctx.work / "images_synth"
    rng = np.random.default_rng(0)
    n = 10 if ctx.quick else 40
    t = np.arange(160000) / 16000
    for i in range(n):
        label = "abnormal" if i % 2 else "normal"
        path = root / "0_dB_fan" / "fan" / "id_00" / label / f"{i:08d}.wav"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            y = 0.02 * rng.standard_normal((len(t), 8)) + 0.05 * np.sin(2 * np.pi * 120 * t)[:, None]
            sf.write(str(path), y.astype(np.float32), 16000, subtype="PCM_16")
    clips, _ = discover(root)
    return root, [c.path for c in clips], (f"**real clips absent**: {len(clips)} synthetic 8-channel 16-bit 10 s "
                                           "WAVs (same shape as MIMII)")


def _reference(paths: list[Path], out: Path, modulation: bool = False) -> None:
    import librosa
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        y, sr = librosa.load(path, sr=None, mono=False)
        y = y[0] if y.ndim > 1 else y
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=64, power=2.0)
        db = librosa.power_to_db(mel, ref=np.max)
        pixels = ((db - db.min()) / max(float(db.max() - db.min()), 1e-9) * 255).astype(np.uint8)
        image = Image.fromarray(pixels[::-1])
        if modulation:  # the loudness envelope's spectrum, 0-60 Hz, the notebook way
            from PIL import PngImagePlugin

            envelope = np.log((np.abs(librosa.stft(y, n_fft=256, hop_length=64)) ** 2).sum(axis=0) + 1e-10)
            spectrum = np.abs(np.fft.rfft(envelope - envelope.mean()))[: len(envelope) * 60 // 250]
            meta = PngImagePlugin.PngInfo()
            meta.add_text("modulation", " ".join(f"{v:.4f}" for v in np.log(spectrum + 1e-6)))
            image.save(out / f"{i:05d}.png", pnginfo=meta)
        else:
            image.save(out / f"{i:05d}.png")


def _spectro(src: Path, out: Path, jobs: int, modulation: bool = True):
    from spectro.features.render import render_folder
    from spectro.features.settings import FeatureSettings

    shutil.rmtree(out, ignore_errors=True)
    settings = FeatureSettings() if modulation else FeatureSettings(modulation_hz=None)
    return render_folder(src, out, settings, jobs=jobs, progress=False)


def _timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (the pool's workers)."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def _linked_copies(paths: list[Path], root: Path, dest: Path, copies: int) -> Path:
    """``copies`` hard-linked (or symlinked) copies of the clip tree, so the pool has enough work."""
    shutil.rmtree(dest, ignore_errors=True)
    for k in range(copies):
        for path in paths:
            target = dest / f"copy{k:02d}" / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                target.symlink_to(path)
    return dest


def run(ctx) -> str:
    """Time ``spectro images`` against the notebook-style reference on the same clips (the real sample, or synthetic
    clips of its shape), at ``--jobs 1`` and ``--jobs 2``. Returns the section's Markdown."""
    from threadpoolctl import threadpool_limits

    from spectro.features.audio import read_audio
    from spectro.features.logmel import log_mel, settings_filters
    from spectro.features.settings import FeatureSettings

    work = ctx.work / "images"
    work.mkdir(parents=True, exist_ok=True)
    root, paths, what = _clips(ctx)
    repeats = 1 if ctx.quick else 3
    settings_filters(FeatureSettings())  # import librosa once, outside the timings (the reference needs it too)
    _reference(paths[:1], work / "warm")

    # 1. single process, the same clips for both (the set hard-linked `copies` times, so spectro's per-run
    # fixed costs -- discovery, manifest -- are spread as over a real dataset), alternating, best of `repeats`
    copies = 2 if ctx.quick else 10
    batch = _linked_copies(paths, root, work / "batch", copies)
    batch_paths = sorted(p for p in batch.rglob("*.wav"))
    ref_default, ref_one, ours, ref_modulation, ours_modulation = [], [], [], [], []
    for _ in range(repeats):
        ref_default.append(_timed(_reference, batch_paths, work / "ref")[0])
        with threadpool_limits(limits=1):
            ref_one.append(_timed(_reference, batch_paths, work / "ref")[0])
        elapsed, summary = _timed(_spectro, batch, work / "spectro", 1, False)
        assert summary.converted == len(batch_paths), summary.lines()
        ours.append(elapsed)
        ref_modulation.append(_timed(_reference, batch_paths, work / "ref", True)[0])
        elapsed, summary = _timed(_spectro, batch, work / "spectro", 1)
        assert summary.converted == len(batch_paths), summary.lines()
        ours_modulation.append(elapsed)
    n = len(batch_paths)
    best_ref, best_ref1, best_ours = min(ref_default), min(ref_one), min(ours)
    best_ref_mod, best_ours_mod = min(ref_modulation), min(ours_modulation)

    # 2. --jobs 2 vs --jobs 1 on a dataset-sized batch, so pool start-up does not dominate
    copies = 4 if ctx.quick else 50
    many = _linked_copies(paths, root, work / "many", copies)
    n_many = len(paths) * copies
    one, two, cpu_one, cpu_two = [], [], [], []
    for _ in range(max(1, repeats - 1)):
        cpu = _cpu_seconds()
        one.append(_timed(_spectro, many, work / "jobs1", 1)[0])
        cpu_one.append(_cpu_seconds() - cpu)
        cpu = _cpu_seconds()
        elapsed, summary = _timed(_spectro, many, work / "jobs2", 2)
        cpu_two.append(_cpu_seconds() - cpu)
        assert summary.converted == n_many, summary.lines()
        two.append(elapsed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # 3. clipping and the dB range of the data, default settings
    settings = FeatureSettings()
    clipped = _spectro(root, work / "default", 0)
    ctx.state["images_real" if ctx.mimii_sample else "images_synthetic"] = work / "default"
    db = np.concatenate([log_mel(read_audio(p), settings).ravel() for p in paths])
    lo, hi = np.percentile(db, [0.1, 99.9])

    speedup = best_ref / best_ours
    lines = [
        f"Clips: {what}, hard-linked into a batch of {n} files that both pipelines convert; {repeats} repeat(s), "
        "best taken; spectro runs through `render_folder(..., jobs=N)` (discovery, PNG writes, manifest included) with "
        "default settings (64 mels, n_fft 2048, hop 512), the images alone (`--modulation-hz 0`) against the "
        "reference, and as by default (each PNG also stores the clip's modulation spectrum) against the reference "
        "computing that spectrum too (`librosa.stft` of 16 ms frames every 4 ms). The parallel runs below use the "
        "default.",
        "Other processes may share the CPU while this runs: absolute times are noisy, ratios less so.",
        "",
        "| pipeline (single process) | ms / clip | clips / s | spectro speed-up |",
        "|---|---:|---:|---:|",
        f"| reference (librosa.load → melspectrogram → power_to_db → PIL), default BLAS threads "
        f"| {1000 * best_ref / n:.1f} | {n / best_ref:.1f} | **{speedup:.2f}×** (target ≥ 3×) |",
        f"| reference, BLAS limited to 1 thread | {1000 * best_ref1 / n:.1f} | {n / best_ref1:.1f} "
        f"| {best_ref1 / best_ours:.2f}× |",
        f"| spectro `--jobs 1 --modulation-hz 0` | {1000 * best_ours / n:.1f} | {n / best_ours:.1f} | 1 |",
        f"| reference with the modulation spectrum | {1000 * best_ref_mod / n:.1f} | {n / best_ref_mod:.1f} "
        f"| {best_ref_mod / best_ours_mod:.2f}× |",
        f"| spectro `--jobs 1` (default: with the modulation spectrum) | {1000 * best_ours_mod / n:.1f} "
        f"| {n / best_ours_mod:.1f} | 1 (the plain reference: {best_ref / best_ours_mod:.2f}×) |",
        "",
        f"Parallel: {n_many} clips ({copies} hard-linked copies of the set), best of {len(one)}:",
        "",
        "| run | wall s | clips / s | speed-up | CPU s (all processes) |",
        "|---|---:|---:|---:|---:|",
        f"| spectro `--jobs 1` | {min(one):.2f} | {n_many / min(one):.1f} | 1 | {min(cpu_one):.2f} |",
        f"| spectro `--jobs 2` | {min(two):.2f} | {n_many / min(two):.1f} | **{min(one) / min(two):.2f}×** "
        f"(target ≥ 1.7×) | {min(cpu_two):.2f} |",
        "",
        f"{os.cpu_count()} CPU(s), 1-minute load average {load:.1f} at the end of this measurement. The CPU column is "
        "load-independent: if `--jobs 2` spends about the CPU time `--jobs 1` does, the workers neither "
        "oversubscribe nor duplicate work, and the wall-clock speed-up is limited only by free cores.",
        "",
        f"Default dB range [{settings.db_min:g}, {settings.db_max:g}] dB: "
        f"{100 * clipped.clipped_low:.4f} % of pixels clipped below, {100 * clipped.clipped_high:.4f} % above "
        f"({clipped.converted} images); the data's 0.1st–99.9th percentile is {lo:.1f} … {hi:.1f} dB "
        f"(min {db.min():.1f}, max {db.max():.1f}).",
    ]
    return "\n".join(lines)
