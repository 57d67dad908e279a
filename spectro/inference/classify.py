"""Verdicts for PNG spectrograms, recordings, or folders of either, from a trained model.

A recording is rendered with exactly the feature settings stored in the model's ``config.json``. A clip
is scored as training scored it: the mean of the probabilities of its windows (:mod:`spectro.model.windows`).
One longer than the clips the model was trained on is scored span by span, each a clip's length
(:mod:`spectro.inference.windows`; the ``windows`` of the ``--json`` output); its overall anomaly score is
the **maximum** over spans, and its probabilities and failure type are those of that span. TensorFlow is
never imported here: a ``.tflite`` model runs through LiteRT.

A normal-only run (``--task normal-only``) scores a clip against the normal references of its machine
(:mod:`spectro.scoring.references`) with that machine's threshold. The machine comes from ``--machine``, else from
the path (``…/<machine>/id_XX/…``), else it is the only enrolled machine, else the nearest enrolled one; the
output's ``machine`` and ``reference`` say which and how. The ``--json`` objects have the supervised keys
(``failure_type`` empty, ``predicted`` the most likely machine id) plus ``machine``, ``reference``, ``scorer``
and ``scores`` (every scorer).

A supervised run whose anomaly score is fused (:mod:`spectro.scoring.fusion`) scores each clip or span by the
largest of the CNN's, its modulation spectrum's and its mel statistics' standard scores, calibrated into a log-odds
of a failure where the run is, for the file's machine type: ``--machine``'s,
else the last folder of its path (a PNG's: or of its source recording's) named like one of the run's types, else
the one the CNN names. Its objects add ``scores`` (``cnn``: the CNN's probability, ``modulation``: the spectrum's
standard score, ``melstats``: the mel statistics', each where it joins the type's score), ``machine_type`` and
``machine_type_from`` (``--machine``, ``the path``, ``the image's source recording`` or ``the model``).

A batch need not stop at one file: with ``errors="report"`` (``spectro classify`` on more than one file) a file
that cannot be read, or whose machine has no normal references, is one result ``{"path", "verdict": "ERROR",
"error"}`` (its one-line message) and the others are scored; with ``errors="raise"`` (one file, and ``spectro
serve``, whose bad uploads are a 4xx) it is the error of the whole call.

Every result has ``known_machine``: the known-machine check (:mod:`spectro.scoring.known`), ``{"known", "nearest",
"distance"}``: ``known`` is false for a recording unlike every machine the run was trained on or enrolled with,
whose verdict then says little; ``null`` for a run without the check's profiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spectro.errors import SpectroError
from spectro.features.limits import InputLimits
from spectro.inference.windows import expand_inputs, load_windows
from spectro.model.windows import predict_pooled
from spectro.runs import feature_settings, fused
from spectro.runs import threshold as stored_threshold


def classify_files(files: list[Path], predictor, *, threshold: float | None, top_k: int = 3,
                   hop_seconds: float | None = None, progress: bool = False,
                   machine: str | None = None, limits: InputLimits | None = None,
                   errors: str = "raise") -> list[dict[str, Any]]:
    """One result dict per file (the ``--json`` objects).

    Parameters
    ----------
    files : list of Path
        PNGs and recordings (see :func:`expand_inputs`).
    predictor : spectro.inference.predictors.Predictor
        From :func:`spectro.inference.predictors.load_predictor`.
    threshold : float or None
        A file is ``ABNORMAL`` when its anomaly score is >= ``threshold``; ``None``: the run's (a normal-only
        run's: its machine's).
    machine : str, optional
        A normal-only run: the machine key every file is scored as; a fused supervised run: the machine type
        (``fan`` or ``fan/id_02``).
    limits : InputLimits, optional
        What a file's header may declare (sample rate, channels, duration, PNG size), checked before it is decoded;
        ``None``: :class:`InputLimits`' defaults.
    errors : {"raise", "report"}
        A file that cannot be read or scored (module docstring): the error of the call, or its own result with
        verdict ``ERROR`` and the ``error`` message, the other files scored.

    Raises
    ------
    SpectroError
        With ``errors="raise"``: the first file that is bad or outside ``limits``, in one line naming it.
    """
    if errors not in ("raise", "report"):
        raise SpectroError(f"errors must be 'raise' or 'report', got {errors!r}")
    settings = feature_settings(predictor.config)
    window = int(predictor.input_shape[1])
    labels = predictor.labels
    from tqdm import tqdm

    failed: dict[int, dict[str, Any]] = {}  # position of a file that failed: its result

    def attempt(i: int, path: Path, make):
        if errors == "raise":
            return make()
        try:
            return make()
        except SpectroError as exc:
            failed[i] = {"path": str(path), "verdict": "ERROR", "error": str(exc)}
            return None

    read = [attempt(i, f, lambda f=f: load_windows(f, settings, predictor.image_shape, window=window,
                                                     hop_seconds=hop_seconds, limits=limits))
            for i, f in enumerate(tqdm(files, desc="reading", unit="file", disable=not progress, leave=False))]
    if labels.normal_only:
        from spectro.scoring.known import statistics

        def normal_only(w) -> dict[str, Any]:
            stats = statistics(w.pixels, settings)  # once: the melstats scorer's and the known-machine check's
            return {**_normal_only(w, predictor, references=predictor.references, threshold=threshold, top_k=top_k,
                                   machine=machine, statistics=stats),
                    "known_machine": _known(w, predictor, settings, stats)}

        return [failed.get(i) or attempt(i, w.path, lambda w=w: normal_only(w)) or failed[i]
                for i, w in enumerate(read)]
    all_windows = [w for w in read if w is not None]
    if not all_windows:
        return [failed[i] for i in range(len(files))]
    if threshold is None:
        threshold = stored_threshold(predictor.config)
    spans = [span for w in all_windows for span in w.pixels]  # widths may differ between files
    probs = predict_pooled(predictor.predict, spans, window)
    modulation, types, named = None, None, []
    if predictor.fusion is not None:
        if any(w.modulation is None for w in all_windows):
            bad = next(w.path for w in all_windows if w.modulation is None)
            raise SpectroError(f"{bad}: this run's anomaly score needs the clip's modulation spectrum and the image "
                               "carries none; classify the recording, or render it with 'spectro images'")
        modulation = np.concatenate([w.modulation for w in all_windows])
        named = [_machine_type(w.path, predictor.fusion.types, machine) for w in all_windows]
        types = predictor.fusion.types_of(labels, probs, [t for (t, _), w in zip(named, all_windows)
                                                          for _ in w.pixels])
    from spectro.scoring.known import statistics

    # each span's mel statistics, once: the known-machine check's and the fused score's
    stats = [statistics(w.pixels, settings) for w in all_windows]
    parts = predictor.anomaly_parts(probs, modulation, types, statistics=np.concatenate(stats))
    scores = parts["score"]
    failures = labels.failure_type(probs)
    predicted = labels.predicted(probs)
    results, at = [], 0
    for k, w in enumerate(all_windows):
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
            "known_machine": _known(w, predictor, settings, stats[k]),
        }
        if predictor.fusion is not None:  # the parts of the fused score, and the machine type it was scored as
            result["scores"] = {k: round(float(v[best]), 6) for k, v in parts.items()
                                if k != "score" and not np.isnan(v[best])}
            result["machine_type"], result["machine_type_from"] = types[best], named[k][1]
        if n > 1:
            result["score"] = "max over windows"
            result["windows"] = [
                {"index": i, "start_s": round(w.starts[i], 3), "end_s": round(w.ends[i], 3),
                 "anomaly_score": round(float(scores[at - n + i]), 6),
                 "over_threshold": bool(scores[at - n + i] >= threshold), "failure_type": failures[at - n + i]}
                for i in range(n)]
        results.append(result)
    scored = iter(results)
    return [failed[i] if i in failed else next(scored) for i in range(len(files))]


def checked_machine(predictor, machine: str | None) -> str | None:
    """``--machine`` (or ``spectro serve``'s ``machine``) checked against the run: a machine key for a normal-only
    run (:func:`spectro.scoring.normal.parse_machine`), a machine type the run scores for a fused one, refused
    for a run scored by the CNN's probability alone; ``None`` and ``""`` stay ``None``."""
    if not machine:
        return None
    if predictor.labels.normal_only:
        from spectro.scoring.normal import parse_machine

        return parse_machine(machine)
    if predictor.fusion is None:
        raise SpectroError("--machine is for normal-only runs (trained with --task normal-only) and runs with a "
                           f"fused anomaly score; this run's task is {predictor.labels.task} and its score the "
                           "CNN's probability")
    _given_type(machine, predictor.fusion.types)  # a type the run does not score: refused here
    return machine


def machine_choices(predictor) -> list[str]:
    """What ``--machine`` accepts for the run: its enrolled machines (normal-only), the machine types of its fused
    score, or nothing (a run scored by the CNN's probability alone)."""
    if predictor.labels.normal_only:
        return sorted(predictor.references.machines)
    return sorted(predictor.fusion.types) if predictor.fusion is not None else []


def _given_type(machine: str, types) -> str:
    """The machine type of ``--machine`` (``fan`` or ``fan/id_02``), refused when the run does not score it."""
    name = machine.strip("/").split("/")[0]
    if name not in types:
        raise SpectroError(f"--machine {machine}: this run scores the machine types {', '.join(sorted(types))}; "
                           f"got {name!r}")
    return name


def _machine_type(path: Path, types, machine: str | None) -> tuple[str | None, str]:
    """The machine type a fused run scores a file as, and where it came from: ``--machine``'s (``fan`` or
    ``fan/id_02``), else the last folder of the file's path that names one of the run's machine ``types``, else,
    for a PNG, of its source recording's path; ``(None, …)``: the type the CNN finds most likely."""
    if machine:
        return _given_type(machine, types), "--machine"
    from spectro.scoring.normal import named_path

    def folder(p: Path) -> str | None:  # the last folder of a path named like one of the run's types
        return next((part for part in reversed(p.parts[:-1]) if part in types), None)

    named, how = named_path(path, folder)
    found = folder(named)
    return (found, how) if found is not None else (None, "the model")


def _known(w, predictor, settings, stats: np.ndarray | None = None) -> dict[str, Any] | None:
    """The known-machine check of one file (:mod:`spectro.scoring.known`; ``stats``: its spans' mel statistics when
    the caller has them); ``None`` when the run has no profiles."""
    from spectro.scoring.known import statistics

    known = predictor.known
    if known is None:
        return None
    check = known.check(statistics(w.pixels, settings) if stats is None else stats)
    return check.to_dict() if check is not None else None


def _normal_only(w, predictor, *, references, threshold: float | None, top_k: int,
                 machine: str | None, statistics: np.ndarray) -> dict[str, Any]:
    """The result of one file of a normal-only run (module docstring); ``statistics``: its spans' mel statistics."""
    from spectro.model.windows import pool
    from spectro.scoring.normal import key_from_path, named_path, score_embedded

    labels = predictor.labels
    embeddings, window_probs, owners = predictor.embed_clips(w.pixels)  # once, for the machine and its scores
    if machine:
        key, how = machine, "--machine"
    else:
        named, how = named_path(w.path)
        key = key_from_path(named)
    if key is None:
        if len(references.machines) == 1:
            key, how = next(iter(references.machines)), "the only enrolled machine"
        else:
            key, _ = references.nearest(embeddings)
            how = "the nearest enrolled machine (the path names no machine id; pass --machine to choose)"
    scorer = references.scorer_for(key)
    scores = score_embedded(references, [key] * len(w.pixels), embeddings, window_probs, owners,
                            modulation=w.modulation, statistics=statistics)
    probs = pool(window_probs, owners, len(w.pixels))
    limit = float(threshold) if threshold is not None else references.threshold(key, scorer)
    main = scores[scorer]
    best = int(np.argmax(main))
    p = probs[best]
    order = np.argsort(-p)[:max(1, top_k)]
    result: dict[str, Any] = {
        "path": str(w.path), "kind": w.kind, "verdict": "ABNORMAL" if main[best] >= limit else "normal",
        "anomaly_score": round(float(main[best]), 6), "threshold": limit, "failure_type": "",
        "predicted": labels.classes[int(np.argmax(p))],
        "probabilities": {c: round(float(v), 6) for c, v in zip(labels.classes, p)},
        "top_k": [[labels.classes[i], round(float(p[i]), 6)] for i in order],
        "machine": key, "reference": how, "scorer": scorer,
        "few_references": references.machine(key).few_references, "reference_clips": references.machine(key).n_clips,
        "scores": {name: round(float(v[best]), 6) for name, v in scores.items() if not np.isnan(v[best])},
    }
    if len(w.pixels) > 1:
        result["score"] = "max over windows"
        result["windows"] = [
            {"index": i, "start_s": round(w.starts[i], 3), "end_s": round(w.ends[i], 3),
             "anomaly_score": round(float(main[i]), 6), "over_threshold": bool(main[i] >= limit), "failure_type": ""}
            for i in range(len(w.pixels))]
    return result


def classify_paths(paths: list[str | Path], model: str | Path, *, threshold: float | None = None, top_k: int = 3,
                   hop_seconds: float | None = None, progress: bool | None = None, machine: str | None = None,
                   limits: InputLimits | None = None):
    """Classify files and folders with a model: ``(results, predictor)``; more than one file: a file that cannot
    be read or scored is its own ``ERROR`` result and the others are scored (:func:`classify_files`).

    Parameters
    ----------
    paths : list of path
        PNGs, recordings or folders of either (:func:`spectro.inference.windows.expand_inputs`).
    model : path
        A run folder, a ``.keras`` or a ``.tflite`` file.
    threshold : float, optional
        Anomaly-score threshold; default: the one stored in the run's ``config.json``. In [0, 1] where the score
        is the CNN's probability; any number for a fused score (a log-odds or a standard score) and for a
        normal-only run's scores, which can be negative.
    progress : bool, optional
        Show a progress bar; default: for 20 files or more.
    limits : InputLimits, optional
        What each file's header may declare (:func:`classify_files`); ``None``: the defaults.

    Raises
    ------
    SpectroError
        Bad options, missing inputs or model, and every bad-input case of a single file.
    """
    from spectro.inference.predictors import load_predictor

    if top_k < 1:
        raise SpectroError(f"--top-k must be >= 1, got {top_k}")
    if threshold is not None and not np.isfinite(threshold):
        raise SpectroError(f"--threshold must be a finite number, got {threshold}")
    if hop_seconds is not None and not hop_seconds > 0:
        raise SpectroError(f"--window-hop must be > 0 seconds, got {hop_seconds}")
    files = expand_inputs(paths)
    model = Path(model)
    if not model.exists():
        raise SpectroError(f"{model}: no such model (expected a run folder, a .keras or a .tflite file; "
                           "train one with 'spectro train')")
    predictor = load_predictor(model)
    if (threshold is not None and not 0 <= threshold <= 1 and not predictor.labels.normal_only
            and not fused(predictor.config)):
        raise SpectroError(f"--threshold must be in [0, 1] (an anomaly probability), got {threshold}")
    machine = checked_machine(predictor, machine)
    results = classify_files(files, predictor, threshold=threshold, top_k=top_k, hop_seconds=hop_seconds,
                             progress=len(files) >= 20 if progress is None else progress, machine=machine,
                             limits=limits, errors="report" if len(files) > 1 else "raise")
    return results, predictor
