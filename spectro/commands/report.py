"""``spectro report``: one self-contained HTML page per run (:func:`spectro.evaluation.report.build_report`)."""

from __future__ import annotations

from pathlib import Path

from spectro.evaluation.report import build_report
from spectro.paths import MODELS_DIR
from spectro.runs import LATEST

HELP = ("Write report.html into a run folder: one self-contained page (images embedded) with the data summary "
        "(clips per machine, id, label and SNR from splits.csv), the evaluation metrics and plots (running "
        "'spectro evaluate' first when they are missing, unless --no-evaluate), example normal and abnormal "
        "spectrograms per machine, waveform / STFT / log-frequency / mel views of one normal and one abnormal "
        "recording, the training curves and the run's settings.")


def add_arguments(parser) -> None:
    parser.add_argument("run", nargs="?", default=str(MODELS_DIR / LATEST),
                        help="the run folder; a whole one (its model.keras, labels.json, splits.csv), whose "
                             "model.keras the report describes")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="do not run 'spectro evaluate' when metrics.json is missing (the page says so)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the page; when not given, "
                                                               "RUN/report.html")


def main(args) -> int:
    path = build_report(args.run, evaluate=not args.no_evaluate, out=args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
