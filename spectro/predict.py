"""``spectro classify``: verdicts for PNG spectrograms, recordings, or folders of either, from a trained model.

A recording is rendered with exactly the feature settings stored in the model's ``config.json``. One
longer than the model's input is scored window by window (window = the model's input frames); its
overall anomaly score is the **maximum** over windows, and its probabilities and failure type are
those of that window. TensorFlow is never imported here: a ``.tflite`` model runs through LiteRT.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spectro.config import AUDIO_EXTENSIONS, MODELS_DIR, FeatureSettings
from spectro.errors import SpectroError

HELP = ("Classify spectrogram PNGs (written by 'spectro images') or recordings (WAV/FLAC/OGG, rendered with the "
        "model's own feature settings), or folders of either (searched recursively). Prints per file the verdict "
        "(normal / ABNORMAL: anomaly score >= threshold), the anomaly score, the most likely failure type and the "
        "top-k classes. A recording longer than the model's input is scored window by window: the score over time "
        "is shown, windows over the threshold are flagged, and the file's score is the maximum over its windows.")

IMAGE_EXTENSIONS = (".png",)
SEGMENT_KEYS = ("segment_seconds", "segment_hop_seconds")
SPARK = "▁▂▃▄▅▆▇█"


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="PNG spectrograms, recordings or folders")
    parser.add_argument("--model", default=str(MODELS_DIR / "latest"),
                        help="a run folder, a .keras file or a .tflite file")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes to list per file")
    parser.add_argument("--threshold", type=float, default=None,
                        help="anomaly-score threshold; when not given, the one 'spectro evaluate' stored in the run's "
                             "config.json (0.5 before evaluation)")
    parser.add_argument("--window-hop", type=float, default=None, metavar="SECONDS",
                        help="hop between windows of a long recording; when not given, the model's segment hop "
                             "if it was trained on segments with one, else half a window")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file instead of text")
    parser.add_argument("--csv", type=Path, default=None, metavar="OUT", help="also write one row per file to OUT")


# -- inputs ------------------------------------------------------------------------------------------
def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """The files to classify: given files as they are, folders searched recursively (hidden ones skipped).

    Raises
    ------
    SpectroError
        A path that does not exist, a file that is neither PNG nor audio, a folder holding neither.
    """
    known = IMAGE_EXTENSIONS + AUDIO_EXTENSIONS
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in known
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise SpectroError(f"{path}: no {', '.join(known)} files in this folder")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in known:
                raise SpectroError(f"{path}: not a spectrogram image or a recording (expected one of "
                                   f"{', '.join(known)}, found '{path.suffix or 'no extension'}')")
            files.append(path)
        else:
            raise SpectroError(f"{path}: no such file or folder")
    return files


def settings_differences(found: FeatureSettings, expected: FeatureSettings) -> list[str]:
    """The feature settings that differ, as ``"name found (image) vs expected (model)"``.

    Segmenting (``segment_seconds``, ``segment_hop_seconds``) is ignored: it decides how long an image
    is, which the shape check covers, not what its pixels mean.
    """
    a, b = found.to_dict(), expected.to_dict()
    return [f"{k} {a[k]} (image) vs {b[k]} (model)" for k in a if k not in SEGMENT_KEYS and a[k] != b[k]]


def check_image_settings(path: Path, found: FeatureSettings, expected: FeatureSettings) -> None:
    """Raise a one-line :class:`SpectroError` when an image was rendered with other settings than the model's."""
    diff = settings_differences(found, expected)
    if diff:
        raise SpectroError(f"{path}: rendered with other feature settings than the model's ({'; '.join(diff)}); "
                           "render it again with the model's settings, or classify the recording itself")


@dataclass
class Windows:
    """The model-sized pixel windows of one file and where they lie in it."""

    path: Path
    kind: str  # "png" or "audio"
    pixels: np.ndarray  # (n_windows, n_mels, frames) uint8
    starts: list[float] = field(default_factory=list)  # seconds
    ends: list[float] = field(default_factory=list)


def _window_starts(total: int, window: int, hop: int) -> list[int]:
    """Window starts covering ``total`` units (the last window is aligned to the end)."""
    if total <= window:
        return [0]
    starts = list(range(0, total - window + 1, hop))
    if starts[-1] + window < total:
        starts.append(total - window)
    return starts


def png_windows(path: Path, settings: FeatureSettings, input_shape: tuple[int, int], *,
                hop_seconds: float | None = None) -> Windows:
    """A spectro PNG as model-sized windows (one, unless the image is wider than the model's input)."""
    from spectro.images import read_info, read_pixels

    info = read_info(path)
    check_image_settings(path, info.settings, settings)
    pixels = read_pixels(path)
    rows, frames = input_shape
    if pixels.shape[0] != rows or pixels.shape[1] < frames:
        raise SpectroError(f"{path}: image is {pixels.shape[0]}x{pixels.shape[1]} pixels (bands x frames), the model "
                           f"takes {rows}x{frames}")
    hop = max(1, int(round(hop_seconds * settings.sr / settings.hop_length)) if hop_seconds else frames // 2)
    starts = _window_starts(pixels.shape[1], frames, hop)
    step = settings.hop_length / settings.sr
    return Windows(path, "png", np.stack([pixels[:, s:s + frames] for s in starts]),
                   [s * step for s in starts], [(s + frames) * step for s in starts])


def audio_windows(path: Path, settings: FeatureSettings, input_shape: tuple[int, int], *,
                  hop_seconds: float | None = None) -> Windows:
    """A recording rendered with the model's settings, cut into windows of the model's input length.

    The window is ``settings.segment_seconds`` when the model was trained on segments, else the longest
    span that renders to the model's input frames; the hop is ``hop_seconds``, else the settings'
    segment hop, else half a window. A recording that renders to exactly the input frames is one window.
    """
    from spectro.audio import read_audio
    from spectro.features import db_to_pixels, log_mel

    try:
        y = read_audio(path, channel=settings.channel, sr=settings.sr)
    except SpectroError as exc:
        raise SpectroError(f"{path}: {exc}") from None
    rows, frames = input_shape
    n = len(y)
    if settings.frames_for(n) < frames:
        need = (frames - 1) * settings.hop_length / settings.sr
        raise SpectroError(f"{path}: recording too short: {n / settings.sr:.2f} s, the model needs at least "
                           f"{need:.2f} s ({frames} frames)")
    if settings.frames_for(n) == frames:
        bounds = [(0, n)]
    else:
        seg = settings.segment_samples
        window = seg if seg and settings.frames_for(seg) == frames else (frames - 1) * settings.hop_length
        if hop_seconds:
            hop = int(round(hop_seconds * settings.sr))
        elif settings.segment_hop_seconds:
            hop = settings.segment_hop_samples
        else:
            hop = window // 2
        bounds = [(s, s + window) for s in _window_starts(n, window, max(1, hop))]
    images = []
    for start, stop in bounds:
        pixels = db_to_pixels(log_mel(y[start:stop], settings), settings)
        if pixels.shape != (rows, frames):
            raise SpectroError(f"{path}: rendered to {pixels.shape[0]}x{pixels.shape[1]} pixels, the model takes "
                               f"{rows}x{frames}; its config.json features do not match its input shape")
        images.append(pixels)
    return Windows(path, "audio", np.stack(images), [a / settings.sr for a, _ in bounds],
                   [b / settings.sr for _, b in bounds])


def load_windows(path: Path, settings: FeatureSettings, input_shape: tuple[int, int], *,
                 hop_seconds: float | None = None) -> Windows:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return png_windows(path, settings, input_shape, hop_seconds=hop_seconds)
    return audio_windows(path, settings, input_shape, hop_seconds=hop_seconds)


# -- classification ---------------------------------------------------------------------------------
def classify_files(files: list[Path], predictor, *, threshold: float, top_k: int = 3,
                   hop_seconds: float | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """One result dict per file (the ``--json`` objects).

    Parameters
    ----------
    files : list of Path
        PNGs and recordings (see :func:`expand_inputs`).
    predictor : spectro.inference.Predictor
        From :func:`spectro.inference.load_predictor`.
    threshold : float
        A file is ``ABNORMAL`` when its anomaly score is >= ``threshold``.
    """
    from spectro.runs import feature_settings

    settings = feature_settings(predictor.config)
    shape = tuple(int(v) for v in predictor.input_shape)
    labels = predictor.labels
    from tqdm import tqdm

    all_windows = [load_windows(f, settings, shape, hop_seconds=hop_seconds)
                   for f in tqdm(files, desc="reading", unit="file", disable=not progress, leave=False)]
    probs = predictor.predict(np.concatenate([w.pixels for w in all_windows]))
    scores = labels.anomaly_score(probs)
    failures = labels.failure_type(probs)
    predicted = labels.predicted(probs)
    results, at = [], 0
    for w in all_windows:
        n = len(w.pixels)
        sl = slice(at, at + n)
        at += n
        best = at - n + int(np.argmax(scores[sl]))
        p = probs[best]
        order = np.argsort(-p)[:max(1, top_k)]
        result: dict[str, Any] = {
            "path": str(w.path), "kind": w.kind,
            "verdict": "ABNORMAL" if scores[best] >= threshold else "normal",
            "anomaly_score": round(float(scores[best]), 6), "threshold": float(threshold),
            "failure_type": failures[best], "predicted": predicted[best],
            "probabilities": {c: round(float(v), 6) for c, v in zip(labels.classes, p)},
            "top_k": [[labels.classes[i], round(float(p[i]), 6)] for i in order],
        }
        if n > 1:
            result["score"] = "max over windows"
            result["windows"] = [
                {"index": i, "start_s": round(w.starts[i], 3), "end_s": round(w.ends[i], 3),
                 "anomaly_score": round(float(scores[at - n + i]), 6),
                 "over_threshold": bool(scores[at - n + i] >= threshold), "failure_type": failures[at - n + i]}
                for i in range(n)]
        results.append(result)
    return results


def sparkline(values: list[float], *, width: int = 80) -> str:
    """Scores in [0, 1] as block characters; more than ``width`` values are max-pooled to ``width``."""
    v = np.clip(np.asarray(values, dtype=float), 0, 1)
    if len(v) > width:
        edges = np.linspace(0, len(v), width + 1).astype(int)
        v = np.array([v[a:b].max() for a, b in zip(edges[:-1], edges[1:])])
    return "".join(SPARK[min(len(SPARK) - 1, int(x * len(SPARK)))] for x in v)


def format_text(result: dict[str, Any], *, max_listed: int = 8) -> str:
    """The human-readable lines for one result."""
    lines = [f"{result['path']}: {result['verdict']}  anomaly score {result['anomaly_score']:.3f} "
             f"(threshold {result['threshold']:.3f})"
             + (f"  failure type {result['failure_type']}" if result["failure_type"] else "")]
    lines.append("  top: " + "  ".join(f"{c} {p:.3f}" for c, p in result["top_k"]))
    windows = result.get("windows")
    if windows:
        flagged = [w for w in windows if w["over_threshold"]]
        lines[0] += f"  [max over {len(windows)} windows]"
        lines.append(f"  score over time {windows[0]['start_s']:.1f}-{windows[-1]['end_s']:.1f} s: "
                     f"{sparkline([w['anomaly_score'] for w in windows])}")
        listed = ", ".join(f"#{w['index']} {w['start_s']:.1f}-{w['end_s']:.1f} s ({w['anomaly_score']:.2f})"
                           for w in flagged[:max_listed])
        more = f", and {len(flagged) - max_listed} more" if len(flagged) > max_listed else ""
        lines.append(f"  windows over threshold: {len(flagged)} of {len(windows)}" + (f": {listed}{more}" if flagged else ""))
    return "\n".join(lines)


def write_csv(path: Path, results: list[dict[str, Any]], classes: tuple[str, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "verdict", "anomaly_score", "threshold", "failure_type", "predicted", "windows",
                         "windows_over_threshold"] + [f"p_{c}" for c in classes])
        for r in results:
            windows = r.get("windows", [])
            writer.writerow([r["path"], r["verdict"], r["anomaly_score"], r["threshold"], r["failure_type"],
                             r["predicted"], max(1, len(windows)),
                             sum(w["over_threshold"] for w in windows) if windows else int(r["verdict"] == "ABNORMAL")]
                            + [r["probabilities"][c] for c in classes])
    return path


def main(args) -> int:
    from spectro.inference import load_predictor
    from spectro.runs import threshold as stored_threshold

    if args.top_k < 1:
        raise SpectroError(f"--top-k must be >= 1, got {args.top_k}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise SpectroError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.window_hop is not None and not args.window_hop > 0:
        raise SpectroError(f"--window-hop must be > 0 seconds, got {args.window_hop}")
    files = expand_inputs(args.paths)
    model = Path(args.model)
    if not model.exists():
        raise SpectroError(f"{model}: no such model (expected a run folder, a .keras or a .tflite file; "
                           "train one with 'spectro train')")
    predictor = load_predictor(model)
    threshold = args.threshold if args.threshold is not None else stored_threshold(predictor.config)
    results = classify_files(files, predictor, threshold=threshold, top_k=args.top_k, hop_seconds=args.window_hop,
                             progress=len(files) >= 20)
    for result in results:
        print(json.dumps(result) if args.json else format_text(result))
    if args.csv is not None:
        write_csv(args.csv, results, predictor.labels.classes)
        print(f"wrote {args.csv} ({len(results)} rows)", file=sys.stderr if args.json else sys.stdout)
    return 0
