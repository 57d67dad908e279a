"""``spectro classify``: verdicts for spectrograms and recordings (:func:`spectro.inference.classify.classify_paths`).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from spectro.features.limits import DEFAULT_MAX_SECONDS, InputLimits
from spectro.inference.classify import classify_paths
from spectro.paths import MODELS_DIR
from spectro.runs import LATEST, MODEL_RULE

HELP = ("Classify spectrogram PNGs (written by 'spectro images') or recordings (WAV/FLAC/OGG, rendered with the "
        "model's own feature settings), or folders of either (searched recursively). Prints per file the verdict "
        "(normal / ABNORMAL: anomaly score >= threshold), the anomaly score, the most likely failure type and the "
        "top-k classes. A recording longer than the model's input is scored window by window: the score over time "
        "is shown, windows over the threshold are flagged, and the file's score is the maximum over its windows. A "
        "recording unlike every machine the run was trained or enrolled on is flagged UNKNOWN MACHINE. Of several "
        "files, one that cannot be read or scored (a bad file, a machine without normal references) is reported as "
        "ERROR with its reason and the others are scored; the exit status is then 1.")


SPARK = "▁▂▃▄▅▆▇█"


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="PNG spectrograms, recordings or folders")
    parser.add_argument("--model", default=str(MODELS_DIR / LATEST),
                        help=f"a run folder, a .keras file or a .tflite file: {MODEL_RULE}")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes to list per file")
    parser.add_argument("--threshold", type=float, default=None,
                        help="anomaly-score threshold; when not given, the one 'spectro evaluate' stored in the run's "
                             "config.json (before evaluation 0.5 for a probability, 0 for a run's calibrated fused "
                             "score, 2.12 for an uncalibrated one)")
    parser.add_argument("--window-hop", type=float, default=None, metavar="SECONDS",
                        help="hop between windows of a long recording; when not given, the model's segment hop "
                             "if it was trained on segments with one, else half a window")
    parser.add_argument("--machine", default=None, metavar="MACHINE/ID",
                        help="normal-only runs: score every file as this machine (fan/id_02), against its enrolled "
                             "normal clips; default: the machine id in each file's path, else the nearest enrolled "
                             "machine. Supervised runs with a fused anomaly score: score every file as this machine "
                             "type (fan, or fan/id_02); default: the folder of its path named like one of the run's "
                             "types, else the type the model hears")
    bounds = InputLimits()
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, metavar="SECONDS",
                        help="refuse, from its header and before decoding it, a recording longer than this or a PNG "
                             "wider than this many seconds render to (a recording must also declare "
                             f"{bounds.min_sr / 1000:g}-{bounds.max_sr / 1000:g} kHz and at most {bounds.max_channels} "
                             "channels, a PNG the model's mel bands)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file instead of text")
    parser.add_argument("--csv", type=Path, default=None, metavar="OUT", help="also write one row per file to OUT")


def sparkline(values: list[float], *, width: int = 80) -> str:
    """Scores in [0, 1] as block characters; more than ``width`` values are max-pooled to ``width``."""
    v = np.clip(np.asarray(values, dtype=float), 0, 1)
    if len(v) > width:
        edges = np.linspace(0, len(v), width + 1).astype(int)
        v = np.array([v[a:b].max() for a, b in zip(edges[:-1], edges[1:])])
    return "".join(SPARK[min(len(SPARK) - 1, int(x * len(SPARK)))] for x in v)


def around(scores: list[float], threshold: float) -> list[float]:
    """Scores that are not probabilities (normal-only distances, fused scores: both come with their parts in
    ``scores``) moved onto [0, 1] for :func:`sparkline` with the threshold half-way up: a positive threshold's
    0 at the bottom and twice it at the top; a threshold of 0 or below (a log-odds) in the middle of the
    scores' widest distance from it."""
    values = np.asarray(scores, dtype=float)
    width = threshold if threshold > 0 else max(float(np.max(np.abs(values - threshold))), 1e-12)
    return list(0.5 + 0.5 * (values - threshold) / width)


def format_text(result: dict[str, Any], *, max_listed: int = 8) -> str:
    """The human-readable lines for one result."""
    if result["verdict"] == "ERROR":  # a file of a batch that could not be read or scored
        return f"{result['path']}: ERROR {result['error']}"
    score = round(result["anomaly_score"], 3) + 0.0  # + 0.0: a score just below 0 prints 0.000, not -0.000
    lines = [f"{result['path']}: {result['verdict']}  anomaly score {score:.3f} "
             f"(threshold {result['threshold']:.3f})"
             + (f"  failure type {result['failure_type']}" if result["failure_type"] else "")]
    if "machine" in result:  # a normal-only run: which machine's normal references the file was scored against
        lines.append(f"  machine {result['machine']} (from {result['reference']}); {result['scorer']} score; "
                     + ", ".join(f"{name} {v:.3f}" for name, v in result["scores"].items()))
        if result.get("few_references"):
            lines.append(f"  few references: {result['reference_clips']} normal clip(s) of this machine; its threshold "
                         "is on the pooled scale of the run's machines")
    if "machine_type" in result:  # a fused supervised run: the type whose normal clips set the scales
        parts = result["scores"]
        lines.append(f"  scored as a {result['machine_type']} (from {result['machine_type_from']}): CNN probability "
                     f"{parts['cnn']:.3f}" + (f", spectrum {parts['modulation']:.2f}" if "modulation" in parts else "")
                     + (f", mel statistics {parts['melstats']:.2f}" if "melstats" in parts else ""))
    known = result.get("known_machine")
    if known is not None and not known["known"]:
        lines[0] += "  UNKNOWN MACHINE"
        what = ("unlike the normal sound of every machine the model knows (a strong anomaly, or a machine it does "
                "not know)" if "machine" in result else "unlike every machine the model knows")
        lines.append(f"  {what}: nearest {known['nearest']} at {known['distance']:.2f}x the farthest of its own "
                     "clips; if it is another machine, the verdict above says little (enroll or train on it)")
    lines.append("  top: " + "  ".join(f"{c} {p:.3f}" for c, p in result["top_k"]))
    windows = result.get("windows")
    if windows:
        flagged = [w for w in windows if w["over_threshold"]]
        scores = [w["anomaly_score"] for w in windows]
        lines[0] += f"  [max over {len(windows)} windows]"
        lines.append(f"  score over time {windows[0]['start_s']:.1f}-{windows[-1]['end_s']:.1f} s: "
                     f"{sparkline(scores if 'scores' not in result else around(scores, result['threshold']))}")
        listed = ", ".join(f"#{w['index']} {w['start_s']:.1f}-{w['end_s']:.1f} s ({w['anomaly_score']:.2f})"
                           for w in flagged[:max_listed])
        more = f", and {len(flagged) - max_listed} more" if len(flagged) > max_listed else ""
        lines.append(f"  windows over threshold: {len(flagged)} of {len(windows)}"
                     + (f": {listed}{more}" if flagged else ""))
    return "\n".join(lines)


def write_csv(path: Path, results: list[dict[str, Any]], classes: tuple[str, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "verdict", "anomaly_score", "threshold", "failure_type", "predicted", "windows",
                         "windows_over_threshold"] + [f"p_{c}" for c in classes])
        for r in results:
            if r["verdict"] == "ERROR":
                writer.writerow([r["path"], "ERROR", "", "", r["error"], "", 0, 0] + [""] * len(classes))
                continue
            windows = r.get("windows", [])
            writer.writerow([r["path"], r["verdict"], r["anomaly_score"], r["threshold"], r["failure_type"],
                             r["predicted"], max(1, len(windows)),
                             sum(w["over_threshold"] for w in windows) if windows else int(r["verdict"] == "ABNORMAL")]
                            + [r["probabilities"][c] for c in classes])
    return path


def main(args) -> int:
    results, predictor = classify_paths(args.paths, args.model, threshold=args.threshold, top_k=args.top_k,
                                        hop_seconds=args.window_hop, machine=args.machine,
                                        limits=InputLimits(max_seconds=args.max_seconds))
    for result in results:
        print(json.dumps(result) if args.json else format_text(result))
    if args.csv is not None:
        write_csv(args.csv, results, predictor.labels.classes)
        print(f"wrote {args.csv} ({len(results)} rows)", file=sys.stderr if args.json else sys.stdout)
    failed = sum(r["verdict"] == "ERROR" for r in results)
    if failed:
        print(f"{failed} of {len(results)} files could not be scored", file=sys.stderr)
    return 1 if failed else 0
