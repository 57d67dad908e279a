"""Scoring clips of a normal-only run against its normal references, and making those references.

Shared by ``spectro train --task normal-only`` (references from the training split, thresholds from the
validation normals), ``spectro evaluate``, ``spectro classify`` and ``spectro enroll``
(:mod:`spectro.scoring.references` holds the scorers).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from spectro.errors import SpectroError
from spectro.model.windows import pool
from spectro.scoring.references import EMBEDDING_SCORER, MODULATION_SCORERS, SCORERS, References, own_threshold_clips

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_ID = re.compile(r"^id_\d+$")


def parse_machine(text: str) -> str:
    """A machine key given by a user (``fan/id_02``, or ``fan`` for recordings without ids)."""
    if not _KEY.fullmatch(text or ""):
        raise SpectroError(f"--machine {text!r} does not parse: expected <machine>/<id> such as fan/id_02 (or a "
                           "machine alone such as fan), letters, digits, '_', '.' and '-' only")
    return text


def key_from_path(path) -> str | None:
    """The machine key a recording's path names (``…/<machine>/id_XX/<label>/file`` or ``…/<machine>/id_XX/file``),
    or ``None`` when it names none."""
    parts = list(path.parts[:-1])
    for i in range(len(parts) - 1, 0, -1):
        if _ID.fullmatch(parts[i]):
            return f"{parts[i - 1]}/{parts[i]}"
    return None


def named_path(path, names=None) -> tuple[object, str]:
    """The path that names a file's machine: a spectro PNG's source recording when that names one and the file's
    own path does not (the images stage writes ``<machine>/<label>/`` folders), else the file's own path; and which
    of the two. ``names(path)``: what a path names, ``None`` when nothing (default: its machine key,
    :func:`key_from_path`)."""
    from pathlib import Path

    names = names or key_from_path
    if path.suffix.lower() == ".png" and names(path) is None:
        from spectro.features.png import read_info

        try:
            source = Path(read_info(path).source)
        except SpectroError:
            return path, "the path"
        if names(source) is not None:
            return source, "the image's source recording"
    return path, "the path"


def _per_machine(keys: np.ndarray, owners: np.ndarray):
    """For each machine of ``keys`` (the machine of each clip): its clips, the mask of their windows among
    ``owners`` (the clip of each window) and each of those windows' clip number among the machine's clips."""
    for key in sorted(set(keys.tolist()), key=str):
        clips = np.flatnonzero(keys == key)
        windows = np.isin(owners, clips)
        yield key, clips, windows, np.searchsorted(clips, owners[windows])


def clip_statistics(predictor, pixels) -> np.ndarray:
    """The mel statistics (:func:`spectro.scoring.known.statistics`) of clips' ``pixels`` (a batch, or a list of
    clips of any widths) rendered with the feature settings of ``predictor``'s run: the ``melstats`` view's features
    (numpy alone)."""
    from spectro.runs import feature_settings
    from spectro.scoring.known import statistics

    return statistics(pixels, feature_settings(predictor.config))


def embed_and_score(predictor, references: References, keys: Sequence[str | None], pixels, *,
                    modulation: np.ndarray | None = None,
                    unknown: str = "raise") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every scorer's score of each clip of ``pixels`` against its machine's references, and the clips' pooled
    class probabilities.

    Parameters
    ----------
    keys : sequence of str
        The machine key of each clip.
    modulation : numpy.ndarray, optional
        The clips' modulation spectra ``(n, bins)`` (:func:`spectro.features.reader.read_modulation`), for the
        ``modulation`` and ``combined`` scorers.
    unknown : {"raise", "nan"}
        A clip whose machine has no references: an error, or NaN scores.

    Returns
    -------
    (dict, numpy.ndarray)
        ``{scorer: (n,) clip scores}`` (NaN where a scorer does not apply: ``id`` for a machine the model was
        not trained on) and ``(n, classes)`` probabilities.
    """
    embeddings, probs, owners = predictor.embed_clips(pixels)
    return (score_embedded(references, keys, embeddings, probs, owners, modulation=modulation,
                           statistics=clip_statistics(predictor, pixels) if len(keys) else None, unknown=unknown),
            pool(probs, owners, len(keys)))


def score_embedded(references: References, keys: Sequence[str | None], embeddings: np.ndarray, probs: np.ndarray,
                   owners: np.ndarray, *, modulation: np.ndarray | None = None, statistics: np.ndarray | None = None,
                   unknown: str = "raise") -> dict[str, np.ndarray]:
    """Every scorer's score of each clip against its machine's references, from its windows' ``embeddings`` and
    ``probs`` (``owners``: the clip of each window; ``keys``: the machine of each clip; ``modulation`` and
    ``unknown`` as in :func:`embed_and_score`; ``statistics``: the clips' mel statistics, :func:`clip_statistics`,
    for the ``melstats`` and ``combined`` scorers)."""
    keys = np.asarray(list(keys), dtype=object)
    if modulation is not None and len(modulation) != len(keys):
        raise SpectroError(f"need one modulation spectrum per clip ({len(keys)}), got {len(modulation)}")
    if statistics is not None and len(statistics) != len(keys):
        raise SpectroError(f"need one row of mel statistics per clip ({len(keys)}), got {len(statistics)}")
    out = {name: np.full(len(keys), np.nan) for name in SCORERS}
    for key, clips, windows, local in _per_machine(keys, owners):
        if key not in references.machines and unknown == "nan":
            continue
        for name, value in references.clip_scores(key, embeddings[windows], probs[windows], local, len(clips),
                                                  None if modulation is None else modulation[clips],
                                                  None if statistics is None else statistics[clips]).items():
            out[name][clips] = value
    return out


def window_scores(references: References, keys: Sequence[str], embeddings: np.ndarray, probs: np.ndarray,
                  scorer: str | None = None) -> np.ndarray:
    """The ``scorer`` score of single windows, each as a clip of its own, against the references of its machine
    ``keys[i]``; NaN for a machine without references. The default is the references' own, or ``mahalanobis`` when
    that needs modulation spectra: a window has none (they belong to whole clips and do not depend on the model)."""
    scores = score_embedded(references, keys, embeddings, probs, np.arange(len(embeddings)), unknown="nan")
    return scores[scorer or references.model_scorer]


def add_references(predictor, references: References, keys: Sequence[str], pixels, *, source: str,
                   class_of: dict[str, int], modulation: np.ndarray | None = None,
                   statistics: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Add the normal clips ``pixels`` (machine ``keys[i]``; their modulation spectra, when the images carry them,
    and their mel statistics, computed from ``pixels`` when not given) to ``references``; returns each machine's
    probabilities of its new windows (for its id threshold)."""
    keys = np.asarray(list(keys), dtype=object)
    embeddings, probs, owners = predictor.embed_clips(pixels)
    if statistics is None:
        statistics = clip_statistics(predictor, pixels)
    added = {}
    for key, clips, windows, local in _per_machine(keys, owners):
        references.add(key, embeddings[windows], local, class_index=class_of.get(key), source=source,
                       modulation=None if modulation is None else modulation[clips], statistics=statistics[clips])
        added[key] = probs[windows]
    return added


def calibrate_all(references: References, keys: Sequence[str], scores: dict[str, np.ndarray],
                  probs: dict[str, np.ndarray] | None = None) -> None:
    """Every machine's thresholds from the ``scores`` of its validation normal clips (``keys``: their machines);
    a machine with none, from its references fold by fold (``probs``: per machine, its reference windows'
    probabilities, for the id threshold)."""
    keys = np.asarray(list(keys), dtype=object)
    need = own_threshold_clips(references.max_fpr)
    # machines with clips enough for their own scales first: the pooled scale of the others is made of them
    order = sorted(references.machines, key=lambda k: references.machines[k].n_clips < need)
    for key in order:  # each machine's references scored fold by fold, once, the id scorer's too
        references.held_out(references.machines[key], (probs or {}).get(key))
    pooled = None
    for key in order:
        if pooled is None and references.machines[key].n_clips < need:
            pooled = references.pooled_offsets()
        mine = keys == key
        validation = ({name: v[mine] for name, v in scores.items() if not np.isnan(v[mine]).any()}
                      if mine.any() else None)
        references.calibrate(key, validation, probs=(probs or {}).get(key), pooled=pooled)


def fit_references(predictor, labels, train_rows, train_pixels, val_rows, val_pixels, *, max_fpr: float,
                   scorer: str, train_modulation: np.ndarray | None = None,
                   val_modulation: np.ndarray | None = None) -> tuple[References, dict[str, np.ndarray], np.ndarray]:
    """A normal-only run's references: every window of the training normals per machine, each clip's mel
    statistics (and its modulation spectrum, when the images carry them); thresholds from the validation normals of
    each machine (from the references themselves, fold by fold, when it has none).

    Returns the references and every validation clip's scores (NaN for machines without references) and pooled
    probabilities, so the validation split is embedded once.

    Raises
    ------
    SpectroError
        ``scorer`` needs modulation spectra and the images carry none.
    """
    if scorer in MODULATION_SCORERS and train_modulation is None:
        raise SpectroError(f"the {scorer} scorer needs modulation spectra and these images carry none (rendered "
                           f"without --modulation-hz); render them again with it or choose --scorer "
                           f"{EMBEDDING_SCORER}")
    references = References(max_fpr=max_fpr, default_scorer=scorer)
    class_of = {c: i for i, c in enumerate(labels.classes)}
    probs = add_references(predictor, references, [labels.class_of(r) for r in train_rows], train_pixels,
                           source="training split", class_of=class_of, modulation=train_modulation)
    val_keys = np.array([labels.class_of(r) for r in val_rows], dtype=object)
    val_scores, val_probs = ({name: np.zeros(0) for name in SCORERS}, np.zeros((0, len(labels.classes))))
    if len(val_rows):
        embeddings, window_probs, owners = predictor.embed_clips(val_pixels)
        val_probs = pool(window_probs, owners, len(val_rows))
        val_statistics = clip_statistics(predictor, val_pixels)

        def scored():
            return score_embedded(references, val_keys, embeddings, window_probs, owners, modulation=val_modulation,
                                  statistics=val_statistics, unknown="nan")

        val_scores = scored()
    normal = np.array([not r.is_abnormal for r in val_rows], dtype=bool)
    calibrate_all(references, val_keys[normal], {name: v[normal] for name, v in val_scores.items()}, probs)
    if len(val_rows):  # combined needs the scales calibrating has just set
        val_scores = scored()
    return references, val_scores, val_probs


def _identity(path, root, machine: str | None) -> tuple[str | None, str]:
    """The machine key and label folder a file's path names (``--machine`` overrides the key)."""
    from spectro.data.layout import parse_path
    from spectro.model.labels import machine_key

    named = named_path(path)[0]
    key, label = key_from_path(named), ""
    if key is not None:
        parts = named.parts[:-1]
        at = max(i for i, part in enumerate(parts) if _ID.fullmatch(part))
        label = parts[at + 1] if at + 1 < len(parts) else ""
    else:
        try:
            clip = parse_path(path, root)
            key, label = machine_key(clip.machine), clip.label
        except SpectroError:
            pass
    if machine is not None:
        return machine, "abnormal" if "abnormal" in path.relative_to(root).parts[:-1] else label
    return key, label


def enroll(run, folder, *, machine: str | None = None, progress: bool = False) -> dict[str, dict]:
    """Add the normal recordings (or spectro PNGs) below ``folder`` to the normal references of normal-only run
    ``run``, without retraining: each file rendered with the run's feature settings, every window embedded, and
    each machine's thresholds set again from its references fold by fold. The machine of each file comes from
    ``machine`` or its path (``…/<machine>/id_XX/normal/…`` or ``<machine>/normal/…`` below ``folder``).

    Returns ``{machine key: {"clips", "added", "new", "few_references", "thresholds", "threshold_from"}}``. The
    run folder is written only once everything has been read and scored: on any error it is unchanged.

    Raises
    ------
    SpectroError
        Not a normal-only run, its files missing; ``folder`` empty, missing, or holding abnormal recordings,
        files of other feature settings or too short; a machine that cannot be told; a bad ``machine``.
    """
    from pathlib import Path

    from tqdm import tqdm

    from spectro.data.layout import NORMAL_LABEL
    from spectro.inference.predictors import KerasPredictor
    from spectro.inference.windows import expand_inputs, load_windows
    from spectro.runs import MODEL_NAME, feature_settings, resolve_run
    from spectro.scoring.known import KnownMachines, statistics

    run, folder = resolve_run(run), Path(folder)
    if machine is not None:
        machine = parse_machine(machine)
    if not (run / MODEL_NAME).is_file():
        raise SpectroError(f"{run}: no {MODEL_NAME} (enrolling needs the run's Keras model)")
    references = References.load(run)
    predictor = KerasPredictor(run / MODEL_NAME, run)
    if not predictor.labels.normal_only:
        raise SpectroError(f"{run}: a {predictor.labels.task} run; enrolling needs a run trained with --task "
                           "normal-only")
    if not folder.is_dir():
        raise SpectroError(f"{folder}: no such folder (expected a folder of normal recordings)")
    files = expand_inputs([folder])
    identities = [_identity(f, folder, machine) for f in files]
    unknown = [f for f, (key, _) in zip(files, identities) if key is None]
    if unknown:
        raise SpectroError(f"{unknown[0]}: cannot tell which machine it is from its path (expected "
                           ".../<machine>/id_XX/normal/<file> or <machine>/normal/<file> below the folder); pass "
                           "--machine, e.g. --machine fan/id_02")
    abnormal = [f for f, (_, label) in zip(files, identities) if label not in ("", NORMAL_LABEL)]
    if abnormal:
        raise SpectroError(f"enroll takes normal recordings only: {len(abnormal)} of the {len(files)} files lie in "
                           f"label folders other than '{NORMAL_LABEL}' (first: {abnormal[0]})")
    settings = feature_settings(predictor.config)
    spans, keys, modulation = [], [], []
    for f, (key, _) in zip(tqdm(files, desc="reading", unit="file", disable=not progress, leave=False), identities):
        w = load_windows(f, settings, predictor.image_shape, window=predictor.input_shape[1])
        spans.extend(w.pixels)
        keys.extend([key] * len(w.pixels))
        if w.modulation is not None:
            modulation.extend(w.modulation)
    before = {key: references.machines[key].n_clips if key in references.machines else 0 for key in set(keys)}
    class_of = {c: i for i, c in enumerate(predictor.labels.classes)}
    features = statistics(spans, settings)  # the melstats view's and the known-machine check's
    probs = add_references(predictor, references, keys, spans, source=str(folder.resolve()), class_of=class_of,
                           modulation=np.stack(modulation) if modulation else None, statistics=features)
    summary = {}
    for key in sorted(probs):
        m = references.calibrate(key, None, probs=probs[key] if before[key] == 0 else None)
        summary[key] = {"clips": m.n_clips, "added": m.n_clips - before[key], "new": before[key] == 0,
                        "few_references": m.few_references, "thresholds": dict(m.thresholds),
                        "threshold_from": m.threshold_from}
    known = KnownMachines.load(run)
    if known is not None:  # the known-machine check learns the enrolled machines too
        keys = np.asarray(keys)
        for key in sorted(set(keys.tolist())):
            known.add(key, features[keys == key])
    references.save(run)
    if known is not None:
        known.save(run)
    return summary
