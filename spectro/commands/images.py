"""``spectro images``: recordings -> log-mel spectrogram PNGs (:func:`spectro.features.render.render_folder`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spectro.data.manifest import ERRORS_NAME, MANIFEST_NAME
from spectro.errors import SpectroError
from spectro.features.render import ConvertSummary, render_folder, strict_error
from spectro.features.settings import FeatureSettings
from spectro.paths import IMAGES_DIR, RAW_DIR

HELP = ("Render recordings to 8-bit grayscale log-mel spectrogram PNGs on a fixed dB scale, one per recording "
        "(or per window with --segment-seconds), in OUT/<machine>/<label>/, with OUT/manifest.csv listing every "
        "image (a silent column flags images black below --db-min) and OUT/errors.csv every file that failed, "
        "cannot be opened (a dangling or looping link) or fits no layout; stale PNGs it wrote that the manifest no "
        "longer lists are removed. Accepts the MIMII layout "
        "([<snr>_<machine>/]<machine>/id_XX/<label>/*.wav) and a plain <machine>/<label>/*.wav layout. "
        "Runs in parallel, skips images already rendered with the same settings, and keeps going past bad "
        "files (--strict makes any failure fatal).")

MAX_ERRORS_SHOWN = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FeatureSettings()
    parser.add_argument("src", nargs="?", type=Path, default=RAW_DIR, metavar="SRC",
                        help="folder of recordings (MIMII or <machine>/<label>/ layout), searched recursively")
    parser.add_argument("--out", metavar="DIR", type=Path, default=IMAGES_DIR, help="image folder")
    f = parser.add_argument_group("features (stored in every PNG; a change re-renders)")
    f.add_argument("--sr", metavar="HZ", type=int, default=d.sr, help="analysis sample rate in Hz (other rates are "
                                                                      "resampled)")
    f.add_argument("--channel", metavar="N|mean", default=d.channel, help="microphone channel N (0 = first) or 'mean' "
                                                                          "of all")
    f.add_argument("--n-mels", metavar="N", type=int, default=d.n_mels, help="mel bands = image height")
    f.add_argument("--n-fft", metavar="N", type=int, default=d.n_fft, help="FFT window length in samples")
    f.add_argument("--hop-length", metavar="N", type=int, default=d.hop_length, help="samples between frames")
    f.add_argument("--power", metavar="P", type=float, default=d.power, help="exponent of the magnitude (2 = power)")
    f.add_argument("--fmin", metavar="HZ", type=float, default=d.fmin, help="lowest mel frequency in Hz")
    f.add_argument("--fmax", metavar="HZ", type=float, default=d.fmax, help="highest mel frequency in Hz (None = sr/2)")
    f.add_argument("--db-min", metavar="DB", type=float, default=d.db_min, help="dB mapped to pixel 0 (lower is "
                                                                                "clipped)")
    f.add_argument("--db-max", metavar="DB", type=float, default=d.db_max, help="dB mapped to pixel 255 (higher is "
                                                                                "clipped)")
    f.add_argument("--segment-seconds", metavar="S", type=float, default=d.segment_seconds,
                   help="cut recordings into windows of this length, one image each (None = whole recording)")
    f.add_argument("--segment-hop-seconds", metavar="S", type=float, default=d.segment_hop_seconds,
                   help="hop between windows (None = the window length)")
    f.add_argument("--modulation-hz", metavar="HZ", type=int, default=d.modulation_hz,
                   help="also store each image's modulation spectrum (how the loudness wobbles), 0 to HZ Hz in 1 Hz "
                        "bins; normal-only runs score it (0 = none)")
    parser.add_argument("--jobs", metavar="N", type=int, default=0, help="worker processes (0 = all cores, 1 = no "
                                                                         "workers)")
    parser.add_argument("--strict", action="store_true", help="fail (exit 2) if any file fails or fits no layout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--synth-if-empty", action="store_true",
                        help="if SRC holds no audio, first write the built-in synthetic dataset to SRC/synthetic")


def settings_from_args(args: argparse.Namespace) -> FeatureSettings:
    """The :class:`FeatureSettings` the command-line options describe."""
    return FeatureSettings(sr=args.sr, channel=str(args.channel), n_fft=args.n_fft, hop_length=args.hop_length,
                           n_mels=args.n_mels, power=args.power, fmin=args.fmin, fmax=args.fmax,
                           db_min=args.db_min, db_max=args.db_max, segment_seconds=args.segment_seconds,
                           segment_hop_seconds=args.segment_hop_seconds, modulation_hz=args.modulation_hz or None)


def summary_lines(summary: ConvertSummary, src: Path, max_errors: int = MAX_ERRORS_SHOWN) -> list[str]:
    """The end-of-run summary as text lines."""
    rate = summary.clips / summary.elapsed if summary.elapsed > 0 else 0.0
    lines = []
    if summary.synthesized:
        lines.append(f"{src} held no audio: created the built-in synthetic dataset in {src / 'synthetic'} "
                     f"({summary.synthesized} recordings)")
    lines.append(f"{summary.clips} recording(s) in {summary.src}: {summary.converted} image(s) converted, "
                 f"{summary.skipped} up to date (skipped), {summary.failed} recording(s) failed, "
                 f"{summary.unmatched} file(s) in no known layout; {summary.elapsed:.1f} s ({rate:.1f} recordings/s)")
    if summary.converted:
        lines.append(f"clipped pixels: {100 * summary.clipped_low:.3f} % below the dB range, "
                     f"{100 * summary.clipped_high:.3f} % above it")
    lines.append(f"wrote {summary.out / MANIFEST_NAME} ({len(summary.rows)} image(s))")
    if summary.silent:
        lines.append(f"{summary.silent} silent image(s), black because the recording lies below --db-min: flagged "
                     "in the manifest's silent column")
    if summary.removed:
        lines.append(f"removed {summary.removed} stale image(s) the manifest no longer lists (their recording was "
                     "removed, renamed or failed, or the settings changed their name)")
    if summary.failures:
        lines.append(f"{len(summary.failures)} error(s), all listed in {summary.out / ERRORS_NAME}:")
        lines += [f"  {path}: {reason}" for path, reason in summary.failures[:max_errors]]
        if len(summary.failures) > max_errors:
            lines.append(f"  ... and {len(summary.failures) - max_errors} more")
    return lines


def main(args: argparse.Namespace) -> int:
    src: Path = args.src
    summary = render_folder(src, args.out, settings_from_args(args), jobs=args.jobs, strict=False,
                            progress=not args.no_progress, synth_if_empty=args.synth_if_empty)
    print("\n".join(summary_lines(summary, src)), flush=True)
    if args.strict and summary.failures:
        raise strict_error(summary)
    if summary.images == 0:
        raise SpectroError(f"no image could be rendered from {src}: {summary.failed} recording(s) failed and "
                           f"{summary.unmatched} file(s) fit no layout (see {args.out / ERRORS_NAME})")
    return 0
