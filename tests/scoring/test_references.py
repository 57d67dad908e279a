"""spectro.scoring.references: the scorers against independent computations (scikit-learn's NearestNeighbors, scipy's
Mahalanobis), thresholds from normal clips alone, adding a machine, and the files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from scipy.stats import median_abs_deviation
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import NearestNeighbors

from spectro.errors import SpectroError
from spectro.scoring.references import (
    REFERENCES_INFO,
    REFERENCES_NAME,
    Machine,
    References,
    clip_mean,
    id_score,
    knn_distance,
    normal_threshold,
)

RNG = np.random.default_rng(0)


def _cloud(n: int, d: int = 12, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) + shift).astype(np.float32)


def test_knn_is_the_mean_cosine_distance_to_the_k_nearest_as_scikit_learn_finds_them():
    reference, queries = _cloud(40, seed=1) + 0.5, _cloud(7, seed=2)
    expected = NearestNeighbors(n_neighbors=5, metric="cosine").fit(reference).kneighbors(queries)[0].mean(axis=1)
    np.testing.assert_allclose(knn_distance(queries, reference, 5), expected, rtol=1e-5, atol=1e-6)
    # fewer references than k: all of them
    np.testing.assert_allclose(knn_distance(queries, reference[:3], 5),
                               NearestNeighbors(n_neighbors=3, metric="cosine").fit(reference[:3])
                               .kneighbors(queries)[0].mean(axis=1), rtol=1e-5, atol=1e-6)


def test_mahalanobis_is_scipys_with_the_ledoit_wolf_covariance():
    reference, queries = _cloud(30, d=8, seed=3), _cloud(5, d=8, shift=1.0, seed=4)
    fit = LedoitWolf().fit(reference.astype(np.float64))
    inverse = np.linalg.inv(fit.covariance_)
    expected = [scipy_mahalanobis(q, fit.location_, inverse) for q in queries.astype(np.float64)]
    machine = Machine("fan/id_00", reference, np.arange(30))
    np.testing.assert_allclose(machine.gaussian().distance(queries), expected, rtol=1e-6)


def test_id_score_is_minus_log_of_the_machines_probability_and_clip_scores_are_window_means():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.25, 0.75]])
    np.testing.assert_allclose(id_score(probs, 1), [np.log(2), -np.log(0.1), -np.log(0.75)])
    np.testing.assert_allclose(clip_mean(np.array([1.0, 3.0, 10.0, 4.0]), np.array([0, 0, 1, 1]), 2), [2.0, 7.0])
    with pytest.raises(SpectroError, match="at least one window"):
        clip_mean(np.array([1.0]), np.array([1]), 2)


def test_the_threshold_lets_about_max_fpr_of_normal_clips_through():
    normal = np.arange(1, 101, dtype=float)  # 1 … 100
    threshold = normal_threshold(normal, 0.05)
    assert threshold == pytest.approx(np.quantile(normal, 0.95))
    assert np.mean(normal >= threshold) == pytest.approx(0.05)
    with pytest.raises(SpectroError, match="no normal scores"):
        normal_threshold(np.array([]), 0.05)


def _references(**machines) -> References:
    refs = References(k=3)
    for key, (embeddings, clips) in machines.items():
        refs.add(key.replace("__", "/"), embeddings, clips, class_index=None, source="test")
    return refs


def test_thresholds_come_from_validation_normals_or_else_from_the_references_fold_by_fold():
    embeddings = _cloud(80, seed=5)
    clips = np.repeat(np.arange(20), 4)  # 20 clips of 4 windows: 1 / max_fpr, enough for a threshold of its own
    refs = _references(fan__id_00=(embeddings, clips))
    validation = {"knn": np.linspace(0.1, 0.5, 20), "mahalanobis": np.linspace(1, 5, 20)}
    machine = refs.calibrate("fan/id_00", validation)
    assert {name: machine.thresholds[name] for name in validation} == {
        name: pytest.approx(np.quantile(v, 0.95)) for name, v in validation.items()}
    assert machine.threshold_from == "20 validation normal clips"
    # too few validation clips: folds of the references; by hand for knn
    machine = refs.calibrate("fan/id_00", {"knn": np.array([0.1, 0.2])})
    fold = np.arange(20) % 5  # clip c is in fold c % 5; its score: its mean embedding against the other folds
    per_clip = [knn_distance(embeddings[clips == c].mean(axis=0, keepdims=True), embeddings[fold[clips] != c % 5], 3)[0]
                for c in range(20)]
    assert machine.thresholds["knn"] == pytest.approx(np.quantile(per_clip, 0.95))
    assert "20 reference clips, 5 folds" in machine.threshold_from
    # validation normals, but fewer than 1 / max_fpr: their quantile together with the references' held-out scores
    few = {"knn": np.linspace(0.1, 0.5, 5), "mahalanobis": np.linspace(1, 5, 5)}
    machine = refs.calibrate("fan/id_00", few)
    assert machine.thresholds["knn"] == pytest.approx(np.quantile(np.r_[few["knn"], per_clip], 0.95))
    assert machine.threshold_from.startswith("5 validation normal clips and the 20 reference clips")


def test_a_clip_is_scored_by_its_mean_embedding_and_id_by_the_mean_over_its_windows():
    reference, windows = _cloud(30, d=8, seed=14), _cloud(6, d=8, seed=15) + 0.5
    machine = Machine("fan/id_00", reference, np.repeat(np.arange(10), 3), class_index=1)
    probs = np.array([[0.5, 0.5], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]])
    owners = np.array([0, 0, 0, 1, 1, 1])
    scores = machine.clip_scores(windows, probs, owners, 2, k=4)
    clips = np.stack([windows[:3].mean(axis=0), windows[3:].mean(axis=0)])
    np.testing.assert_allclose(scores["knn"], NearestNeighbors(n_neighbors=4, metric="cosine").fit(reference)
                               .kneighbors(clips)[0].mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores["mahalanobis"], machine.gaussian().distance(clips))
    np.testing.assert_allclose(scores["id"], [-np.mean(np.log([0.5, 0.2, 0.9])), -np.mean(np.log([0.7, 0.4, 0.1]))])


def test_scores_grow_away_from_the_machines_normals():
    normal = _cloud(60, seed=6) + 3.0
    refs = _references(fan__id_00=(normal, np.repeat(np.arange(15), 4)))
    near, far = _cloud(8, seed=7) + 3.0, _cloud(8, seed=8) * 3.0 - 3.0
    scores = refs.clip_scores("fan/id_00", np.concatenate([near, far]), None, np.repeat([0, 1], 8), 2)
    assert set(scores) == {"knn", "mahalanobis"}  # no id scorer for a machine the model was not trained on
    assert scores["knn"][1] > scores["knn"][0] and scores["mahalanobis"][1] > scores["mahalanobis"][0]


def test_adding_a_machine_leaves_the_others_untouched_and_more_clips_extend_one():
    a, b = _cloud(20, seed=9), _cloud(12, seed=10) + 2
    refs = _references(fan__id_00=(a, np.repeat(np.arange(5), 4)))
    refs.calibrate("fan/id_00")
    before = dict(refs.machines["fan/id_00"].thresholds)
    query = _cloud(4, seed=11)
    scores_before = refs.clip_scores("fan/id_00", query, None, np.zeros(4, int), 1)
    refs.add("pump/id_02", b, np.repeat(np.arange(3), 4), class_index=None, source="new")
    refs.calibrate("pump/id_02")
    assert refs.machines["fan/id_00"].thresholds == before
    after = refs.clip_scores("fan/id_00", query, None, np.zeros(4, int), 1)
    assert all(np.array_equal(scores_before[k], after[k]) for k in scores_before)
    refs.add("pump/id_02", b[:4] + 1, np.zeros(4, int), class_index=None, source="more")
    m = refs.machines["pump/id_02"]
    assert (m.n_clips, len(m.embeddings), m.sources) == (4, 16, ["new", "more"])


def test_files_round_trip_and_unknown_machines_are_a_clear_error(tmp_path):
    refs = _references(fan__id_00=(_cloud(12, seed=12), np.repeat(np.arange(3), 4)),
                       pump=(_cloud(8, seed=13), np.repeat(np.arange(2), 4)))
    for key in refs.machines:
        refs.calibrate(key)
    refs.save(tmp_path)
    info = json.loads((tmp_path / REFERENCES_INFO).read_text())
    assert sorted(info["machines"]) == ["fan/id_00", "pump"] and info["default_scorer"] == "combined"
    # without modulation spectra or mel statistics, combined is made of the embedding's view alone
    assert refs.scorer_for("pump") == "combined" and list(refs.machines["pump"].scales) == ["mahalanobis"]
    back = References.load(tmp_path)
    for key, m in refs.machines.items():
        np.testing.assert_allclose(back.machines[key].embeddings, m.embeddings, rtol=1e-3, atol=1e-3)  # float16
        assert back.machines[key].thresholds == pytest.approx(m.thresholds)
        np.testing.assert_array_equal(back.machines[key].clips, m.clips)
    with pytest.raises(SpectroError, match="'valve/id_04' has no enrolled normal clips.*spectro enroll"):
        back.machine("valve/id_04")
    (tmp_path / REFERENCES_NAME).unlink()
    with pytest.raises(SpectroError, match="no normal references"):
        References.load(tmp_path)
    assert refs.nearest(_cloud(4, seed=12))[0] == "fan/id_00"


def _with_spectra(n_clips: int = 12, bins: int = 6, seed: int = 20, statistics: bool = False) -> References:
    refs = References(k=3)
    refs.add("fan/id_00", _cloud(4 * n_clips, seed=seed), np.repeat(np.arange(n_clips), 4), class_index=None,
             source="test", modulation=_cloud(n_clips, d=bins, seed=seed + 1),
             statistics=_cloud(n_clips, d=10, seed=seed + 2) if statistics else None)
    return refs


def test_the_modulation_scorer_is_scipys_mahalanobis_of_the_clips_spectra():
    refs = _with_spectra()
    spectra = refs.machines["fan/id_00"].modulation.astype(np.float64)
    fit = LedoitWolf().fit(spectra)
    inverse = np.linalg.inv(fit.covariance_)
    queries = _cloud(3, d=6, shift=1.5, seed=30)
    expected = [scipy_mahalanobis(q, fit.location_, inverse) for q in queries.astype(np.float64)]
    scores = refs.clip_scores("fan/id_00", _cloud(6, seed=31), None, np.repeat(np.arange(3), 2), 3, queries)
    np.testing.assert_allclose(scores["modulation"], expected, rtol=1e-6)
    assert "combined" not in scores  # no scales before the machine is calibrated
    with pytest.raises(SpectroError, match=r"expected modulation spectra of shape \(3, 6\)"):
        refs.clip_scores("fan/id_00", _cloud(6, seed=31), None, np.repeat(np.arange(3), 2), 3, queries[:2])


def _robust_z(scores, held):
    """Independent of spectro: scipy's normal-consistent MAD of the logs."""
    logs = np.log(held)
    return (np.log(scores) - np.median(logs)) / median_abs_deviation(logs, scale="normal")


def test_combined_is_the_larger_robust_standard_score_of_the_parts_logs_scaled_by_the_references_fold_by_fold():
    parts = ("mahalanobis", "modulation", "melstats")
    refs = _with_spectra(20, statistics=True)  # clips enough for scales and a threshold of its own
    machine = refs.calibrate("fan/id_00")
    held = machine.held_out_scores(None, k=3)
    for part in parts:
        logs = np.log(held[part])
        assert machine.scales[part] == pytest.approx([np.median(logs), median_abs_deviation(logs, scale="normal")])
    combined = np.max([_robust_z(held[p], held[p]) for p in parts], axis=0)
    assert machine.thresholds["combined"] == pytest.approx(np.quantile(combined, 0.95))
    queries, spectra, stats = _cloud(8, seed=32), _cloud(2, d=6, seed=33) * 3, _cloud(2, d=10, seed=34)
    scores = refs.clip_scores("fan/id_00", queries, None, np.repeat([0, 1], 4), 2, spectra, stats)
    z = [_robust_z(scores[p], held[p]) for p in parts]
    np.testing.assert_allclose(scores["combined"], np.max(z, axis=0))
    assert (z[1] > z[0]).all()  # spectra far out, embeddings not: the spectra's score, undiluted
    assert refs.scorer_for("fan/id_00") == "combined"
    # a clip without its statistics has no combined score (never one of fewer parts than its machine's)
    assert "combined" not in refs.clip_scores("fan/id_00", queries, None, np.repeat([0, 1], 4), 2, spectra)


def _melstats_by_hand(queries, reference, floor=0.5):
    """Independent of spectro: loops over clips and dimensions, the population standard deviation."""
    out = []
    for q in np.asarray(queries, dtype=np.float64):
        z2 = []
        for j in range(reference.shape[1]):
            column = [float(r[j]) for r in reference]
            mean = sum(column) / len(column)
            sd = (sum((c - mean) ** 2 for c in column) / len(column)) ** 0.5
            z2.append(((q[j] - mean) / (sd + floor)) ** 2)
        out.append((sum(z2) / len(z2)) ** 0.5)
    return np.array(out)


def test_melstats_is_the_root_mean_square_of_floored_standard_scores_of_the_clips_statistics():
    from spectro.scoring.references import MELSTATS_FLOOR_DB, melstats_distance

    assert MELSTATS_FLOOR_DB == 0.5
    reference, queries = _cloud(6, d=5, seed=60).astype(np.float64), _cloud(3, d=5, shift=1.0, seed=61)
    np.testing.assert_allclose(melstats_distance(queries, reference), _melstats_by_hand(queries, reference))
    # one reference clip: no spread, the floor alone (|x - x0| / 0.5, its RMS)
    np.testing.assert_allclose(melstats_distance(queries, reference[:1]),
                               np.sqrt(np.mean(((queries - reference[0]) / 0.5) ** 2, axis=1)), rtol=1e-6)
    machine = Machine("fan/id_00", _cloud(12, seed=62), np.repeat(np.arange(6), 2), statistics=reference)
    scores = machine.clip_scores(_cloud(6, seed=63), None, np.repeat(np.arange(3), 2), 3, k=3, statistics=queries)
    np.testing.assert_allclose(scores["melstats"], _melstats_by_hand(queries, reference.astype(np.float32)))
    with pytest.raises(SpectroError, match=r"expected mel statistics of shape \(3, 5\)"):
        machine.clip_scores(_cloud(6, seed=63), None, np.repeat(np.arange(3), 2), 3, k=3, statistics=queries[:, :4])


def test_larger_of_fewer_parts_is_as_rare_as_the_larger_of_three():
    from scipy.stats import norm

    from spectro.scoring.references import as_larger_of

    z = np.linspace(-4.0, 8.0, 49)
    for parts in (1, 2):
        x = as_larger_of(z, parts)
        np.testing.assert_allclose(norm.cdf(x) ** 3, norm.cdf(z) ** parts, rtol=1e-9, atol=1e-300)
        # the upper tail, where Φ rounds to 1: P(larger of three >= x) = P(larger of `parts` >= z)
        np.testing.assert_allclose(-np.expm1(3 * norm.logcdf(x)), -np.expm1(parts * norm.logcdf(z)), rtol=1e-6)
        assert (np.diff(x) > 0).all() and (x > z)[z > 0].all()  # monotone; the larger of three sits higher
    np.testing.assert_array_equal(as_larger_of(z, 3), z)
    far = as_larger_of(np.array([-50.0, -40.0, 40.0, 50.0]), 1)
    assert np.isfinite(far).all() and (np.diff(far) > 0).all()  # far out still ranks


def _pixels(n: int, seed: int, frames: int = 40) -> np.ndarray:
    """Spectrogram pixels with a per-band shape, well inside the 0-255 range (a 6 dB shift clips none)."""
    rng = np.random.default_rng(seed)
    shape = np.linspace(80, 160, 16)[:, None]
    return shape + rng.normal(0.0, 6.0, size=(n, 16, frames))


def test_a_gain_on_every_clip_changes_no_melstats_score_nor_any_combined_verdict():
    """+6 dB on every recording shifts every pixel by 6 / db_per_step: the level-normalised view is blind to it."""
    from spectro.features.settings import FeatureSettings
    from spectro.scoring.known import statistics

    settings = FeatureSettings(n_mels=16)
    embeddings, owners = _cloud(40, seed=64), np.repeat(np.arange(10), 4)
    queries = np.concatenate([_pixels(4, seed=66), _pixels(4, seed=67) * 1.3 - 30])  # 4 normal, 4 unlike them

    def run(gain_db: float):
        shift = gain_db / settings.db_per_step
        refs = References(k=3)
        refs.add("fan/id_00", embeddings, owners, class_index=None, source="t",
                 statistics=statistics(_pixels(10, seed=65) + shift, settings))
        machine = refs.calibrate("fan/id_00")
        scores = refs.clip_scores("fan/id_00", _cloud(8, seed=68), None, np.arange(8), 8,
                                  statistics=statistics(queries + shift, settings))
        return scores, machine.thresholds

    (quiet, quiet_thresholds), (loud, loud_thresholds) = run(0.0), run(6.0)
    np.testing.assert_allclose(loud["melstats"], quiet["melstats"], rtol=1e-5)
    assert loud_thresholds == pytest.approx(quiet_thresholds, rel=1e-5)
    np.testing.assert_array_equal(loud["combined"] >= loud_thresholds["combined"],
                                  quiet["combined"] >= quiet_thresholds["combined"])
    assert (quiet["melstats"][4:] > quiet["melstats"][:4].max()).all()


def test_machines_of_one_and_two_clips_are_scored_with_the_views_they_can_fit():
    """One clip: no held-out melstats score, so combined is the embedding's view alone; two clips: melstats joins."""
    refs = References(k=3)
    for key, n, seed in (("fan/id_00", 12, 70), ("fan/id_02", 2, 71), ("fan/id_04", 1, 72)):
        refs.add(key, _cloud(4 * n, seed=seed), np.repeat(np.arange(n), 4), class_index=None, source="t",
                 statistics=_cloud(n, d=10, seed=seed + 10))
    for key in ("fan/id_00", "fan/id_02", "fan/id_04"):
        refs.calibrate(key)
    parts = {key: list(m.scales) for key, m in refs.machines.items()}
    assert parts == {"fan/id_00": ["mahalanobis", "melstats"], "fan/id_02": ["mahalanobis", "melstats"],
                     "fan/id_04": ["mahalanobis"]}
    for key in ("fan/id_02", "fan/id_04"):
        m = refs.machines[key]
        assert m.few_references and refs.scorer_for(key) == "combined" and "pooled scale" in m.threshold_from
        scores = refs.clip_scores(key, _cloud(8, seed=73), None, np.repeat([0, 1], 4), 2,
                                  statistics=_cloud(2, d=10, seed=74))
        assert np.isfinite(scores["combined"]).all() and np.isfinite(refs.threshold(key))
    assert "melstats" in refs.machines["fan/id_02"].scorers and "melstats" not in refs.machines["fan/id_04"].scorers


def test_references_without_their_combined_scales_are_refused_in_one_line(tmp_path):
    """One format: a references.json without ``log_scales`` (what an older spectro wrote) is not read as another
    scorer's references."""
    refs = _with_spectra()
    refs.calibrate("fan/id_00")
    refs.save(tmp_path)
    info = json.loads((tmp_path / REFERENCES_INFO).read_text())
    meta = info["machines"]["fan/id_00"]
    meta["scales"] = meta.pop("log_scales")
    (tmp_path / REFERENCES_INFO).write_text(json.dumps(info))
    with pytest.raises(SpectroError, match=r"unreadable normal references \(KeyError: 'log_scales'\)"):
        References.load(tmp_path)


def test_modulation_spectra_and_scales_round_trip_and_must_match_when_clips_are_added(tmp_path):
    refs = _with_spectra(statistics=True)
    refs.calibrate("fan/id_00")
    refs.add("pump/id_00", _cloud(8, seed=40), np.repeat(np.arange(2), 4), class_index=None, source="test")
    refs.save(tmp_path)
    back = References.load(tmp_path)
    np.testing.assert_array_equal(back.machines["fan/id_00"].modulation, refs.machines["fan/id_00"].modulation)
    np.testing.assert_array_equal(back.machines["fan/id_00"].statistics, refs.machines["fan/id_00"].statistics)
    assert back.machines["fan/id_00"].scales == refs.machines["fan/id_00"].scales
    assert back.machines["pump/id_00"].modulation is None and back.machines["pump/id_00"].statistics is None
    queries = (_cloud(8, seed=45), None, np.repeat([0, 1], 4), 2, _cloud(2, d=6, seed=46), _cloud(2, d=10, seed=47))
    before, after = refs.clip_scores("fan/id_00", *queries), back.clip_scores("fan/id_00", *queries)
    assert set(after) == set(before) >= {"melstats", "combined"}
    for name in ("modulation", "melstats", "combined"):  # stored exactly; the embeddings as float16
        np.testing.assert_array_equal(after[name] if name != "combined" else after["melstats"],
                                      before[name] if name != "combined" else before["melstats"])
    np.testing.assert_allclose(after["combined"], before["combined"], rtol=1e-3)
    with pytest.raises(SpectroError, match="modulation spectra \\(none\\) do not match its references' \\(6\\)"):
        back.add("fan/id_00", _cloud(4, seed=41), np.zeros(4, int), class_index=None, source="more")
    with pytest.raises(SpectroError, match="mel statistics \\(none\\) do not match its references' \\(10\\)"):
        back.add("fan/id_00", _cloud(4, seed=41), np.zeros(4, int), class_index=None, source="more",
                 modulation=_cloud(1, d=6))
    with pytest.raises(SpectroError, match="one modulation spectrum per clip \\(2\\)"):
        back.add("valve/id_00", _cloud(8, seed=42), np.repeat(np.arange(2), 4), class_index=None, source="x",
                 modulation=_cloud(3, d=6))
    back.add("fan/id_00", _cloud(8, seed=43), np.repeat(np.arange(2), 4), class_index=None, source="more",
             modulation=_cloud(2, d=6, seed=44), statistics=_cloud(2, d=10, seed=48))
    assert back.machines["fan/id_00"].modulation.shape == (14, 6) and back.machines["fan/id_00"].n_clips == 14
    assert back.machines["fan/id_00"].statistics.shape == (14, 10)


def test_a_machine_with_few_clips_gets_its_threshold_on_the_pooled_scale_around_its_own_median():
    """Two machines of 12 clips make the pool (24 held-out scores >= 1 / max_fpr); a 2-clip and a 1-clip machine
    take its 0.95 quantile of log score minus machine median, added to their own median log score."""
    from spectro.scoring.references import MIN_THRESHOLD_CLIPS, own_threshold_clips

    assert own_threshold_clips(0.05) == MIN_THRESHOLD_CLIPS and own_threshold_clips(0.5) == MIN_THRESHOLD_CLIPS
    refs = _references(fan__id_00=(_cloud(48, seed=50), np.repeat(np.arange(12), 4)),
                       fan__id_02=(_cloud(48, seed=51) + 1.0, np.repeat(np.arange(12), 4)),
                       pump__id_00=(_cloud(8, seed=52), np.repeat(np.arange(2), 4)),
                       valve__id_00=(_cloud(4, seed=53), np.zeros(4, int)))
    pooled = []
    for key in ("fan/id_00", "fan/id_02"):
        logs = np.log(refs.machines[key].held_out_scores(None, k=3)["mahalanobis"])
        pooled.append(logs - np.median(logs))
    offset = np.quantile(np.concatenate(pooled), 0.95)
    for key, n in (("pump/id_00", 2), ("valve/id_00", 1)):
        machine = refs.calibrate(key)  # never an error, not even for a single clip
        own = np.log(machine.held_out_scores(None, k=3)["mahalanobis"])
        assert len(own) == (2 if n == 2 else 4)  # one clip: its 4 windows, each as a clip of its own
        assert machine.thresholds["mahalanobis"] == pytest.approx(np.exp(np.median(own) + offset))
        assert machine.few_references and machine.n_clips == n and "pooled scale" in machine.threshold_from
        assert refs.scorer_for(key) == "combined"
    assert not refs.machines["fan/id_00"].few_references
    info = refs.to_dict()["machines"]
    assert info["valve/id_00"]["few_references"] is True and info["valve/id_00"]["clips"] == 1
    assert info["fan/id_00"]["few_references"] is False


def test_without_a_pool_a_few_clip_machine_gets_the_default_offset():
    from spectro.scoring.references import DEFAULT_LOG_OFFSET

    refs = References(k=3)
    refs.add("pump/id_00", _cloud(8, seed=54), np.repeat(np.arange(2), 4), class_index=None, source="t",
             statistics=_cloud(2, d=10, seed=55))
    machine = refs.calibrate("pump/id_00")
    own = np.log(machine.held_out_scores(None, k=3)["knn"])
    assert machine.thresholds["knn"] == pytest.approx(np.exp(np.median(own) + DEFAULT_LOG_OFFSET))
    assert "a default offset" in machine.threshold_from
    # no spread of its own (two clips' melstats are one distance twice) nor a pooled one: no combined score, the
    # model's view judges it
    held = machine.held_out_scores(None, k=3)["melstats"]
    assert held[0] == pytest.approx(held[1]) and machine.scales == {} and refs.scorer_for("pump/id_00") == "mahalanobis"
