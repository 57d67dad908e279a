"""``spectro enroll``: add a machine's normal recordings to a normal-only run
(:func:`spectro.scoring.normal.enroll`)."""

from __future__ import annotations

from pathlib import Path

from spectro.paths import MODELS_DIR
from spectro.runs import LATEST
from spectro.scoring.normal import enroll

HELP = ("Add the normal recordings in DIR (WAV/FLAC, or PNGs from 'spectro images' with the run's settings) to the "
        "normal references of RUN, a run trained with --task normal-only, without retraining: a machine the model "
        "never saw, or more normal sound of a known one. Each recording is rendered with the run's feature "
        "settings, its windows are embedded, and the machine's thresholds are set from its normal clips alone "
        "(each fold of them scored against the rest). The machine comes from each file's path "
        "(.../<machine>/id_XX/normal/<file>, or <machine>/normal/<file> below DIR) or --machine. 'spectro "
        "classify' then scores that machine's recordings against its own normals.")


def add_arguments(parser) -> None:
    parser.add_argument("run", nargs="?", default=str(MODELS_DIR / LATEST),
                        help="the normal-only run folder (its model.keras embeds the recordings)")
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder of normal recordings of the machine(s)")
    parser.add_argument("--machine", default=None, metavar="MACHINE/ID",
                        help="the machine every file in DIR is, e.g. fan/id_02; None: each file's path names it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args) -> int:
    summary = enroll(args.run, args.dir, machine=args.machine, progress=not args.no_progress)
    for key, s in summary.items():
        what = "enrolled new machine" if s["new"] else "added to"
        thresholds = ", ".join(f"{name} {value:.4g}" for name, value in s["thresholds"].items())
        few = "; few references: no modulation score, threshold on the pooled scale" if s["few_references"] else ""
        print(f"{what} {key}: {s['added']} clip(s), {s['clips']} in all; thresholds {thresholds} (from "
              f"{s['threshold_from']}){few}")
    return 0
