"""``spectro synth``: write the built-in synthetic dataset (:func:`spectro.data.synth.generate`)."""

from __future__ import annotations

from pathlib import Path

from spectro.data.synth import MACHINES, SynthSettings, generate
from spectro.paths import SYNTH_DIR

HELP = ("Write the built-in synthetic machine-sound dataset: four machine types (fan, pump, slider, valve), "
        "several machine ids each, normal clips and at least two named failures per machine, mixed with "
        "non-stationary factory noise at each SNR, as 16-bit WAVs in the MIMII layout "
        "<snr>_dB_<machine>/<machine>/id_XX/<label>/NNNNNNNN.wav. Deterministic by --seed. Re-running with the "
        "same settings skips the work.")


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, default=SYNTH_DIR, help="dataset root folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--machines", nargs="+", choices=MACHINES, default=list(MACHINES), metavar="MACHINE",
                        help=f"machine types ({' '.join(MACHINES)})")
    parser.add_argument("--ids", type=int, default=SynthSettings.ids, help="machine ids per machine type")
    parser.add_argument("--snr", type=float, nargs="+", default=list(SynthSettings.snrs), metavar="DB",
                        help="signal-to-noise ratios in dB (one folder each)")
    parser.add_argument("--clips-per-class", type=int, default=SynthSettings.clips_per_class,
                        help="clips per failure label per (machine, id, snr)")
    parser.add_argument("--normal-clips", type=int, default=None,
                        help="normal clips per (machine, id, snr); None: as many as all failure clips together")
    parser.add_argument("--seconds", type=float, default=SynthSettings.seconds, help="clip length")
    parser.add_argument("--sr", type=int, default=SynthSettings.sr, help="sample rate in Hz")
    parser.add_argument("--channels", type=int, choices=(1, 8), default=1, help="1 (mono) or 8 (MIMII-shaped)")
    parser.add_argument("--jobs", type=int, default=0, help="worker processes (0 = all cores)")
    parser.add_argument("--force", action="store_true", help="replace a dataset made with other settings in --out")


def main(args) -> int:
    paths = generate(args.out, seed=args.seed, jobs=args.jobs, force=args.force, machines=tuple(args.machines),
                     ids=args.ids, snrs=tuple(args.snr), clips_per_class=args.clips_per_class,
                     normal_clips=args.normal_clips, seconds=args.seconds, sr=args.sr, channels=args.channels)
    print(f"{len(paths)} clips in {args.out}")
    return 0
