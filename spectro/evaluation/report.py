"""``spectro report``: one self-contained HTML page per run (every image embedded as base64, no external URL).

Sections: data summary, evaluation (metrics tables and the ``evaluate`` plots), example spectrograms
per machine, the public notebooks' exploratory views of one normal and one abnormal clip, training
curves, and the run's settings (the feature and model settings as tables, the whole ``config.json`` in a
collapsed ``<details>``).

The page is meant to be shared: it shows no absolute path of the machine it was made on. A path inside the run
folder is shown relative to it, one inside the images folder as ``<images folder name>/...``, anything else by
its name (:class:`PathText`).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from spectro.data.layout import NORMAL_LABEL
from spectro.errors import SpectroError
from spectro.evaluation import plots
from spectro.evaluation.evaluate import evaluate_run
from spectro.evaluation.learning import warning_for
from spectro.evaluation.metrics import GROUPINGS
from spectro.features.audio import read_audio
from spectro.features.png import read_pixels
from spectro.runs import (
    HISTORY_NAME,
    METRICS_NAME,
    PLOT_NAMES,
    PREDICTIONS_NAME,
    REPORT_NAME,
    TRAINING_PLOT_NAME,
    WHOLE_RUN,
    feature_settings,
    load_config,
    read_history,
    read_splits,
    resolve_run,
)

SECTIONS = ("Data summary", "Evaluation", "Machines", "Example spectrograms", "Exploratory views", "Training curves",
            "Settings")
SPLITS_ORDER = ("train", "val", "test")

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
.note { background: #fff6d5; border-left: 4px solid #e0b000; padding: 0.4em 0.8em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 0.5em 0 1.5em; } figcaption { font-size: 0.9em; color: #555; }
details { margin: 0.5em 0 1em; } summary { cursor: pointer; font-weight: 600; }
"""

# an absolute POSIX path in free text: a '/' not preceded by a word character, '.' or '/', then path characters
_ABSOLUTE = re.compile(r"(?<![\w./:])/[^\s'\"<>,;()|]+")


class PathText:
    """How the report shows a path: relative to the run folder, ``<images folder name>/...`` inside the images
    folder, otherwise just its name, so no absolute path of this machine reaches the page."""

    def __init__(self, run: Path, images: str | Path | None = None):
        self.roots = [(Path(os.path.abspath(run)), "")]
        if images:
            folder = Path(os.path.abspath(images))
            self.roots.append((folder, folder.name))
        for root, label in list(self.roots):  # the same folders reached through symbolic links
            resolved = root.resolve()
            if resolved != root:
                self.roots.append((resolved, label))

    def show(self, path: str | Path) -> str:
        """``path`` as the page shows it (a relative path is kept as it is)."""
        text = str(path)
        if not os.path.isabs(text):
            return text
        absolute = Path(os.path.abspath(text))
        for root, label in self.roots:
            if absolute == root:
                return root.name
            if absolute.is_relative_to(root):
                rel = absolute.relative_to(root).as_posix()
                return f"{label}/{rel}" if label else rel
        return absolute.name or text

    def scrub(self, text: str) -> str:
        """Free text (an error message, a setting) with every absolute path in it shown by :meth:`show`."""
        return _ABSOLUTE.sub(lambda match: self.show(match.group(0)), str(text))

    def scrub_json(self, value: Any) -> Any:
        """A JSON value (``config.json``) with every string scrubbed."""
        if isinstance(value, dict):
            return {key: self.scrub_json(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.scrub_json(item) for item in value]
        return self.scrub(value) if isinstance(value, str) else value


# -- HTML helpers ------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(png: bytes | Path, alt: str, caption: str = "") -> str:
    data = png.read_bytes() if isinstance(png, Path) else png
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{_e(alt)}">{cap}</figure>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _table(header: list[str], rows: list[list[Any]], *, left: int = 1) -> str:
    def cell(tag, i, v):
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{_e(v)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# -- sections ----------------------------------------------------------------------------------------
def data_summary(rows) -> str:
    """Clips (distinct source recordings) per machine / id / SNR / label and split, and the images count."""
    if not rows:
        return _note("splits.csv lists no images.")
    clips: dict[tuple, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    images: Counter = Counter()
    splits = [s for s in SPLITS_ORDER if any(r.split == s for r in rows)]
    splits += sorted({r.split for r in rows} - set(splits))
    for r in rows:
        key = (r.machine, r.machine_id or "-", r.snr or "-", r.label)
        clips[key][r.split].add(r.source or str(r.path))
        images[key] += 1
    table_rows = []
    for key in sorted(clips):
        counts = [len(clips[key][s]) for s in splits]
        table_rows.append([*key, *counts, sum(counts), images[key]])
    totals = [sum(r[4 + i] for r in table_rows) for i in range(len(splits) + 2)]
    table_rows.append(["all", "", "", "", *totals])
    header = ["machine", "id", "SNR", "label", *[f"{s} clips" for s in splits], "clips", "images"]
    return (f"<p>{len(rows)} images from {totals[-2]} recordings (a recording cut into segments gives several "
            "images; all images of a recording share one split).</p>" + _table(header, table_rows, left=4))


def mistakes_caption(run: Path) -> str:
    """The caption of ``worst_mistakes.png``, which shows the most confident wrong predictions or, when there are
    none, the closest calls: which of the two, from ``predictions.csv`` (the images the figure was drawn from:
    those with a score)."""
    path = run / PREDICTIONS_NAME
    try:
        with path.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("anomaly_score", "") not in ("", "nan")]
        wrong = sum(r["true"] != r["predicted"] for r in rows)
    except (OSError, KeyError, csv.Error):
        return (f"The most confident wrong predictions, or the closest calls when there are none ({PREDICTIONS_NAME} "
                "is missing or unreadable: the figure's title says which)")
    if wrong:
        return f"The worst mistakes: {wrong} of {len(rows)} images wrong, the most confident wrong predictions first"
    return (f"No mistakes: all {len(rows)} images are predicted right. The figure shows the closest calls instead "
            "(the lowest probability of the true class)")


def evaluation(run: Path, metrics: dict | None, reason: str, paths: PathText | None = None) -> str:
    paths = paths or PathText(run)
    if metrics is None:
        return _note(paths.scrub(reason))
    o = metrics["overall"]
    t = metrics.get("threshold", {})
    evaluated = paths.scrub(metrics.get("evaluated", "test split"))
    parts = [f"<p>Evaluated on the {_e(evaluated)}: {o['n']} images "
             f"({o['n_normal']} normal, {o['n_abnormal']} abnormal), task <b>{_e(metrics.get('task'))}</b>. "
             f"Anomaly threshold {_fmt(t.get('value'))} ({_e(t.get('method', 'default'))}"
             + (f", target FPR {_fmt(t.get('max_fpr'))}" if t.get("max_fpr") is not None else "")
             + (f"; on validation FPR {_fmt(t.get('val_fpr'))}, TPR {_fmt(t.get('val_tpr'))}" if "val_fpr" in t else "")
             + ").</p>"]
    base = metrics.get("baseline") or {}
    fitted = "overall" in base
    if fitted:
        tr = base["train"]
        parts.append(f"<p>Baseline: {_e(base['name'])} ({_e(base.get('features', ''))}), fit on the run's "
                     f"{tr['n']} training images ({tr['n_normal']} normal, {tr['n_abnormal']} abnormal) and scored "
                     "on the same images as the CNN.</p>")
        if base.get("cnn_beats_baseline") is False and base["overall"]["auc"] > o["auc"]:
            parts.append(_note(f"The mel-statistics baseline beats the CNN on these images: anomaly AUC "
                               f"{_fmt(base['overall']['auc'])} vs {_fmt(o['auc'])}, pAUC "
                               f"{_fmt(base['overall']['pauc'])} vs {_fmt(o['pauc'])}."))
    elif base.get("skipped"):
        parts.append(_note(paths.scrub(f"Baseline ({base['name']}) skipped: {base['skipped']}.")))

    def figures(g: dict, b: dict | None) -> list[str]:
        cnn = [_fmt(g.get(c)) for c in ("n", "accuracy", "balanced_accuracy")]
        if not fitted:
            return [*cnn, _fmt(g.get("auc")), _fmt(g.get("pauc"))]
        b = b or {}
        return [*cnn, _fmt(g.get("auc")), _fmt(b.get("auc")), _fmt(g.get("pauc")), _fmt(b.get("pauc"))]

    header = ["group", "images", "accuracy", "balanced accuracy", "anomaly AUC",
              *(["baseline AUC"] if fitted else []), "pAUC (FPR ≤ 0.1)", *(["baseline pAUC"] if fitted else [])]
    rows = [["all", *figures(o, base.get("overall"))]]
    for name in GROUPINGS:
        for key, g in metrics.get(name, {}).items():
            rows.append([f"{name.removeprefix('by_').replace('_', ' ')} {key}",
                         *figures(g, base.get(name, {}).get(key))])
    parts.append(_table(header, rows))
    if "clips" in metrics:
        c = metrics["clips"]
        bc = base.get("clips") if fitted else None
        parts.append(f"<p>Per recording ({c['n']} recordings, score = {_e(c['score'])}): anomaly AUC {_fmt(c['auc'])}"
                     + (f" (baseline {_fmt(bc['auc'])})" if bc else "") + f", pAUC {_fmt(c['pauc'])}"
                     + (f" (baseline {_fmt(bc['pauc'])})" if bc else "") + ".</p>")
    if metrics.get("scorers"):  # every scorer (normal-only) or part (fused), overall and per machine type and id
        names = list(metrics["scorers"])
        groups = [("all", lambda f: f["overall"])] + [
            (f"{grouping.removeprefix('by_').replace('_', ' ')} {key}", lambda f, g=grouping, k=key: f[g].get(k, {}))
            for grouping in ("by_machine", "by_machine_id") for key in metrics["scorers"][names[0]].get(grouping, {})]

        def cell(figures: dict) -> str:
            return f"{_fmt(figures.get('auc'))} / {_fmt(figures.get('pauc'))}"

        table = [[label, *(cell(pick(metrics["scorers"][n])) for n in names)] for label, pick in groups]
        what = ("AUC / pAUC of the run's anomaly score, <b>fused</b>, and of its parts (cnn: the CNN's probability "
                "alone; modulation: the clip's modulation spectrum; melstats: its mel statistics; each for the "
                "machine types it joins)"
                if "fused" in names else
                f"AUC / pAUC of every normal-only scorer (the run's default: <b>{_e(t.get('scorer'))}</b>)")
        parts.append(f"<h3>Scorers</h3><p>{what}.</p>" + _table(["group", *names], table))
    if "failure_type_accuracy" in o:
        parts.append(f"<p>Failure type right on {_fmt(o['failure_type_accuracy'])} of the abnormal images.</p>")
    report = o.get("report", {})
    class_rows = [[name, _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["f1-score"]), _fmt(int(v["support"]))]
                  for name, v in report.items() if isinstance(v, dict)]
    if class_rows:
        parts.append("<h3>Per class</h3>" + _table(["class", "precision", "recall", "F1", "support"], class_rows))
    captions = {"confusion": "Confusion matrix", "roc": "Anomaly ROC per machine type",
                "histograms": "Anomaly-score histograms, normal vs abnormal", "mistakes": mistakes_caption(run)}
    for key, name in PLOT_NAMES.items():
        path = run / name
        parts.append(_img(path, captions[key], captions[key]) if path.is_file() else _note(f"{name} is missing"))
    return "".join(parts)


def machines(run: Path, paths: PathText | None = None) -> str:
    """The machines the run knows: its known-machine check's profiles and, for a normal-only run, the normal
    references each machine is scored against (trained on or enrolled), with their thresholds."""
    from spectro.scoring.known import KnownMachines
    from spectro.scoring.references import References

    paths = paths or PathText(run)
    parts = []
    try:
        known = KnownMachines.load(run)
    except SpectroError as exc:
        known, parts = None, [_note(paths.scrub(str(exc)))]
    if known is not None:
        parts.append("<p>The known-machine check: a recording farther than every machine's bound (distance &gt; 1) "
                     "is reported as an unknown machine.</p>" + _table(
                         ["machine", "clips", "bound (Mahalanobis)"],
                         [[key, len(p.features), _fmt(p.bound) if p.bound is not None else "too few clips"]
                          for key, p in sorted(known.profiles.items())]))
    try:
        references = References.load(run)
    except SpectroError:
        return "".join(parts)
    info = references.to_dict()
    parts.append(f"<h3>Normal references</h3><p>Default scorer <b>{_e(info['default_scorer'])}</b>, thresholds at "
                 f"the {1 - info['max_fpr']:g} quantile of normal clips' scores; a machine with few normal clips has "
                 "its threshold on the pooled scale of the machines with more, and one marked few references (under "
                 "3 clips) is judged by the views it can fit.</p>" + _table(
                     ["machine", "clips", "windows", *[f"{n} threshold" for n in info["scorers"]], "threshold from",
                      "sources", "enrolled"],
                     [[key, f"{m['clips']} (few references)" if m["few_references"] else m["clips"], m["windows"],
                       *[_fmt(m["thresholds"].get(n)) for n in info["scorers"]],
                       m["threshold_from"], "; ".join(paths.scrub(source) for source in m["sources"]), m["enrolled"]]
                      for key, m in info["machines"].items()]))
    return "".join(parts)


def examples(rows, tmp: Path, *, per_row: int = 4) -> str:
    """One normal and up to three abnormal spectrograms per machine, test images first."""
    order = {"test": 0, "val": 1, "train": 2}
    rows = sorted(rows, key=lambda r: (order.get(r.split, 3), str(r.path)))
    parts = []
    for machine in sorted({r.machine for r in rows}):
        chosen, seen = [], set()
        for want_normal in (True, False):
            for r in rows:
                if r.machine == machine and (r.label == NORMAL_LABEL) == want_normal and r.label not in seen \
                        and r.path.is_file() and len(chosen) < per_row:
                    chosen.append(r)
                    seen.add(r.label)
        if not chosen:
            continue
        kinds = {r.label == NORMAL_LABEL for r in chosen}
        title = (f"{machine}: normal vs abnormal" if kinds == {True, False} else
                 f"{machine}: normal only (no abnormal image)" if kinds == {True} else
                 f"{machine}: abnormal only (no normal image)")
        path = plots.image_grid(tmp / f"examples_{machine}.png", [read_pixels(r.path) for r in chosen],
                                [f"{r.label} ({r.machine_id or r.path.name})" for r in chosen], cols=per_row,
                                title=title, colors=[
                                    "tab:blue" if r.label == NORMAL_LABEL else "tab:red" for r in chosen])
        parts.append(_img(path, f"example spectrograms of {machine}"))
    return "".join(parts) or _note("No spectrogram images found on disk.")


def exploratory_views(rows, settings, tmp: Path, paths: PathText | None = None) -> str:
    """Waveform, linear and log-frequency STFT and mel spectrogram of one normal and one abnormal recording."""
    paths = paths or PathText(tmp)
    order = {"test": 0, "val": 1, "train": 2}
    rows = sorted(rows, key=lambda r: (order.get(r.split, 3), r.source))
    parts = []
    for kind, want_normal in (("normal", True), ("abnormal", False)):
        candidates = [r for r in rows if (r.label == NORMAL_LABEL) == want_normal]
        if not candidates:
            parts.append(_note(f"No {kind} recording in splits.csv."))
            continue
        present = next((r for r in candidates if r.source and Path(r.source).is_file()), None)
        if present is None:
            example = paths.show(candidates[0].source) if candidates[0].source else "no source"
            parts.append(_note(f"No {kind} source recording found on disk (e.g. {example}); exploratory views "
                               "need the original audio."))
            continue
        try:
            y = read_audio(present.source, channel=settings.channel, sr=settings.sr)
        except SpectroError as exc:
            parts.append(_note(paths.scrub(f"{paths.show(present.source)}: {exc}")))
            continue
        path = plots.exploratory(tmp / f"explore_{kind}.png", y, settings.sr, n_fft=settings.n_fft,
                                 hop_length=settings.hop_length, n_mels=settings.n_mels,
                                 title=f"{kind}: {present.machine} {present.machine_id} {present.label} — "
                                       f"{Path(present.source).name}")
        parts.append(f"<h3>{_e(kind.capitalize())}: {_e(paths.show(present.source))}</h3>"
                     + _img(path, f"{kind} exploratory views"))
    return "".join(parts)


def training_curves(run: Path, tmp: Path) -> str:
    """``training.png`` when ``spectro train`` wrote one, else a plot of ``history.csv``."""
    if (run / TRAINING_PLOT_NAME).is_file():
        return _img(run / TRAINING_PLOT_NAME, "training curves")
    if not (run / HISTORY_NAME).is_file():
        return _note(f"No {TRAINING_PLOT_NAME} or {HISTORY_NAME} in the run folder.")
    history = read_history(run)
    if not history:
        return _note(f"{HISTORY_NAME} holds no numeric columns.")
    return _img(plots.training_curves(tmp / TRAINING_PLOT_NAME, history), "training curves")


def settings_section(config: dict, paths: PathText | None = None) -> str:
    """The feature and model settings as tables, and the whole ``config.json`` collapsed (open it to read it)."""
    features = config.get("features", {})
    parts = []
    if features:
        parts.append("<h3>Features</h3>" + _table(["setting", "value"], [[k, _fmt(v)] for k, v in features.items()]))
    model = config.get("model", {})
    if isinstance(model, dict) and model:
        parts.append("<h3>Model</h3>" + _table(["setting", "value"], [[k, _fmt(v)] for k, v in model.items()]))
    shown = paths.scrub_json(config) if paths is not None else config
    parts.append("<details><summary>config.json: the run's whole configuration (click to open)</summary><pre>"
                 + _e(json.dumps(shown, indent=2, default=str)) + "</pre></details>")
    return "".join(parts)


# -- the page ----------------------------------------------------------------------------------------
def build_report(run: str | Path, *, evaluate: bool = True, out: str | Path | None = None) -> Path:
    """Write the run's HTML report and return its path.

    Parameters
    ----------
    run : path
        A run folder.
    evaluate : bool
        Run :func:`spectro.evaluation.evaluate.evaluate_run` first when ``metrics.json`` is missing.
    out : path, optional
        The HTML file (default ``<run>/report.html``).
    """
    run = resolve_run(run, needs=WHOLE_RUN)  # a run without its model is refused, evaluated or not
    out = Path(out) if out is not None else run / REPORT_NAME
    rows = read_splits(run)
    metrics = None
    reason = f"Not evaluated yet: no {METRICS_NAME} in the run folder. Run 'spectro evaluate RUN' on it first."
    if not (run / METRICS_NAME).is_file() and evaluate:
        try:
            evaluate_run(run)
        except SpectroError as exc:  # the rest of the report is still worth having
            reason = f"'spectro evaluate' failed: {exc}"
    if (run / METRICS_NAME).is_file():
        metrics = json.loads((run / METRICS_NAME).read_text())
    config = load_config(run)
    settings = feature_settings(config)
    paths = PathText(run, config.get("images") if isinstance(config.get("images"), str) else None)
    with tempfile.TemporaryDirectory(prefix="spectro-report-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = {
            "Data summary": data_summary(rows),
            "Evaluation": evaluation(run, metrics, reason, paths),
            "Machines": machines(run, paths),
            "Example spectrograms": examples(rows, tmp),
            "Exploratory views": exploratory_views(rows, settings, tmp, paths),
            "Training curves": training_curves(run, tmp),
            "Settings": settings_section(config, paths),
        }
    anchors = {name: name.lower().replace(" ", "-") for name in SECTIONS}
    toc = " · ".join(f'<a href="#{anchors[n]}">{_e(n)}</a>' for n in SECTIONS)
    sections = "".join(f'<section id="{anchors[n]}"><h2>{_e(n)}</h2>{bodies[n]}</section>' for n in SECTIONS)
    title = f"spectro run {run.name}"
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"
            f"<p>task {_e(config.get('task', '?'))} · {toc}</p>"
            + (_note(paths.scrub(warning_for(config))) if warning_for(config) else "") + f"{sections}</body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(page, encoding="utf-8")
    tmp_out.replace(out)
    return out
