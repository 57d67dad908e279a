"""spectro.scoring.fusion: a supervised run's fused anomaly score against an independent computation (scipy's
Mahalanobis with scikit-learn's Ledoit–Wolf covariance, scipy's normal-consistent MAD), where each scale comes
from, the machine type the CNN names, and the file."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from scipy.special import logit as scipy_logit
from scipy.stats import median_abs_deviation, norm
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from spectro.errors import SpectroError
from spectro.model.labels import LabelSpace
from spectro.scoring.fusion import (
    DEFAULT_THRESHOLD,
    FUSION_NAME,
    MIN_CNN_SD,
    MIN_MODULATION_AUC,
    Fusion,
    as_larger_of_k,
)


def _alone(z):
    """A one-part type's fused score: the larger-of-three score as likely as ``z`` (Φ(x)³ = Φ(z), scipy's normal)."""
    return norm.ppf(norm.cdf(z) ** (1 / 3))


def _two(largest):
    """A two-part type's fused score: the larger-of-three score as likely as the larger of its two
    (Φ(x)³ = Φ(largest)², scipy's normal)."""
    return norm.ppf(norm.cdf(largest) ** (2 / 3))


def _z(values, reference):
    return (values - np.median(reference)) / median_abs_deviation(reference, scale="normal")


def _spectra(n, seed, shift=0.0, d=6):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def _held_out_log_distances(spectra):
    """Each fold of clips (clip i in fold i % 5) measured against a Ledoit-Wolf Gaussian of the others."""
    folds = np.arange(len(spectra)) % 5
    out = np.zeros(len(spectra))
    for f in range(5):
        fit = LedoitWolf().fit(spectra[folds != f])
        inverse = np.linalg.inv(fit.covariance_)
        out[folds == f] = [scipy_mahalanobis(x, fit.location_, inverse) for x in spectra[folds == f]]
    return np.log(out)


def _fitted():
    rng = np.random.default_rng(0)
    fan_spectra, pump_spectra = _spectra(12, 1), _spectra(10, 2, shift=3.0)
    return Fusion.fit(types=["fan", "pump"], train_types=["fan"] * 12 + ["pump"] * 10,
                      train_modulation=np.concatenate([fan_spectra, pump_spectra]), train_probability=None,
                      val_types=["fan"] * 5 + ["pump"] * 4,
                      val_probability=np.concatenate([rng.uniform(0.01, 0.2, 5), rng.uniform(0.001, 0.05, 4)])
                      ), fan_spectra, pump_spectra


def test_fused_is_the_larger_of_the_cnns_and_the_spectrums_robust_standard_scores_per_machine_type():
    rng = np.random.default_rng(0)
    val_fan, val_pump = rng.uniform(0.01, 0.2, 5), rng.uniform(0.001, 0.05, 4)
    fusion, fan_spectra, _ = _fitted()
    probability, spectra = np.array([0.02, 0.9, 0.1]), np.stack([_spectra(1, 7)[0], _spectra(1, 8)[0],
                                                                 _spectra(1, 9, shift=4.0)[0]])
    parts = fusion.parts(["fan"] * 3, probability, spectra)
    # the CNN part: logit of the probability, scaled by the fan's validation normals
    cnn = _z(scipy_logit(probability), scipy_logit(val_fan))
    np.testing.assert_allclose(parts["cnn"], cnn, rtol=1e-9)
    # the spectrum part: log Mahalanobis to the fan's training normals, scaled by their held-out log distances
    fit = LedoitWolf().fit(fan_spectra)
    inverse = np.linalg.inv(fit.covariance_)
    distance = np.array([scipy_mahalanobis(x, fit.location_, inverse) for x in spectra])
    modulation = _z(np.log(distance), _held_out_log_distances(fan_spectra))
    np.testing.assert_allclose(parts["modulation"], modulation, rtol=1e-6)
    np.testing.assert_allclose(parts["fused"], _two(np.maximum(cnn, modulation)), rtol=1e-6)
    assert parts["fused"][1] == pytest.approx(_two(cnn[1]))  # a confident CNN decides
    assert parts["fused"][2] == pytest.approx(_two(modulation[2]))  # a spectrum far out decides, undiluted
    # the same clips as pumps are measured against the pumps' scales
    as_pump = fusion.parts(["pump"] * 3, probability, spectra)
    np.testing.assert_allclose(as_pump["cnn"], _z(scipy_logit(probability), scipy_logit(val_pump)), rtol=1e-9)


def test_a_type_with_few_validation_normals_takes_its_training_normals_scale_and_without_spectra_the_cnn_alone():
    train_p = np.array([0.01, 0.02, 0.03, 0.05, 0.04, 0.2, 0.3, 0.1])
    fusion = Fusion.fit(types=["fan", "pump", "valve"], train_types=["fan"] * 4 + ["pump"] * 4,
                        train_modulation=np.concatenate([_spectra(4, 1), _spectra(2, 2)[[0, 0, 1, 1]]])[:8],
                        train_probability=train_p, val_types=["fan", "fan"], val_probability=np.array([0.5, 0.6]))
    assert fusion.types["fan"].cnn_scale_from == "training"
    assert fusion.types["fan"].cnn_scale == pytest.approx(
        [np.median(scipy_logit(train_p[:4])), median_abs_deviation(scipy_logit(train_p[:4]), scale="normal")])
    # a type with no normal clip of its own: all types' normals together (the validation has fewer than 3)
    assert fusion.types["valve"].cnn_scale == pytest.approx(
        [np.median(scipy_logit(train_p)), median_abs_deviation(scipy_logit(train_p), scale="normal")])
    assert not fusion.types["valve"].has_modulation
    parts = fusion.parts(["valve", "fan"], np.array([0.4, 0.4]), _spectra(2, 5))
    assert np.isnan(parts["modulation"][0]) and parts["fused"][0] == pytest.approx(_alone(parts["cnn"][0]))
    assert parts["fused"][1] == pytest.approx(_two(max(parts["cnn"][1], parts["modulation"][1])))


def _gated(abnormal_modulation=True):
    """Fan: 12 normal training clips, 4 unbalance clips far out in the spectrum, 2 bearing clips (too few to judge
    by). Pump: 12 normals and 6 clogging clips drawn like its normals (a spectrum blind to them). Valve: normal
    clips only."""
    fan, pump, valve = _spectra(12, 1), _spectra(12, 2, shift=3.0), _spectra(8, 3, shift=-2.0)
    unbalance, bearing, clogging = _spectra(4, 4, shift=2.5), _spectra(2, 5), _spectra(6, 6, shift=3.0)
    fusion = Fusion.fit(types=["fan", "pump", "valve"], train_types=["fan"] * 12 + ["pump"] * 12 + ["valve"] * 8,
                        train_modulation=np.concatenate([fan, pump, valve]), train_probability=None,
                        val_types=["fan"] * 3 + ["pump"] * 3 + ["valve"] * 3,
                        val_probability=np.array([0.1, 0.2, 0.3] * 3),
                        abnormal_types=["fan"] * 6 + ["pump"] * 6,
                        abnormal_labels=["unbalance"] * 4 + ["bearing"] * 2 + ["clogging"] * 6,
                        abnormal_modulation=np.concatenate([unbalance, bearing, clogging])
                        if abnormal_modulation else None)
    return fusion, dict(fan=fan, pump=pump, unbalance=unbalance, clogging=clogging)


def _training_auc(normal, abnormal):
    """AUC of abnormal clips' Mahalanobis distance (to a Ledoit-Wolf Gaussian of every normal clip) against the
    normal clips' own, each held out fold by fold."""
    fit = LedoitWolf().fit(normal)
    inverse = np.linalg.inv(fit.covariance_)
    distance = np.log([scipy_mahalanobis(x, fit.location_, inverse) for x in abnormal])
    return roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(abnormal))],
                         np.r_[_held_out_log_distances(normal), distance])


def test_the_spectrum_part_joins_a_machine_type_only_where_it_sees_a_failure_of_the_training_split():
    fusion, spectra = _gated()
    fan, pump, valve = fusion.types["fan"], fusion.types["pump"], fusion.types["valve"]
    # the fan's best failure label is the unbalance (the bearing's 2 clips are too few to judge by)
    assert fan.modulation_auc == pytest.approx(_training_auc(spectra["fan"], spectra["unbalance"]))
    assert pump.modulation_auc == pytest.approx(_training_auc(spectra["pump"], spectra["clogging"]))
    assert fan.modulation_auc >= MIN_MODULATION_AUC > pump.modulation_auc
    assert valve.modulation_auc is None  # no failure recorded: nothing says the spectrum is blind
    assert (fan.modulation_joins, pump.modulation_joins, valve.modulation_joins) == (True, False, True)
    clips = np.concatenate([_spectra(2, 7), _spectra(2, 8, shift=9.0)])
    probability = np.array([0.2, 0.3, 0.2, 0.3])
    as_fan, as_pump = fusion.parts(["fan"] * 4, probability, clips), fusion.parts(["pump"] * 4, probability, clips)
    assert not np.isnan(as_fan["modulation"]).any() and as_fan["fused"][2] > as_fan["cnn"][2]
    assert np.isnan(as_pump["modulation"]).all()  # far out in the spectrum, and the pump's score ignores it
    np.testing.assert_allclose(as_pump["fused"], _alone(as_pump["cnn"]), rtol=1e-7)
    recorded = fusion.to_dict()
    assert recorded["pump"]["modulation_joins"] is False
    assert recorded["fan"]["modulation_training_auc"] == pytest.approx(fan.modulation_auc)
    # without abnormal training spectra the part is not judged, and joins wherever it is fitted (as before)
    unjudged, _ = _gated(abnormal_modulation=False)
    assert all(t.modulation_auc is None and t.modulation_joins for t in unjudged.types.values())


def test_where_the_spectrum_part_joins_survives_the_file_and_a_file_without_it_is_refused(tmp_path):
    fusion, _ = _gated()
    loaded = Fusion.load(fusion.save(tmp_path).parent)
    assert loaded.to_dict() == fusion.to_dict()
    clips = _spectra(3, 9, shift=5.0)
    for kind in ("fan", "pump", "valve"):
        np.testing.assert_equal(loaded.parts([kind] * 3, np.array([0.1, 0.5, 0.9]), clips)["modulation"],
                                fusion.parts([kind] * 3, np.array([0.1, 0.5, 0.9]), clips)["modulation"])
    # one format: a fusion.npz without the spectrum part's AUCs (an older spectro's) is not read as joining
    with np.load(tmp_path / FUSION_NAME) as data:
        older = {k: data[k] for k in data.files if k != "modulation_aucs"}
    np.savez(tmp_path / FUSION_NAME, **older)
    with pytest.raises(SpectroError, match="unreadable anomaly-score fusion .*modulation_aucs"):
        Fusion.load(tmp_path)


def test_a_wrong_number_of_abnormal_labels_or_spectra_is_refused():
    for labels, spectra in ((["leak"], _spectra(2, 1)), (["leak", "leak"], _spectra(1, 1))):
        with pytest.raises(SpectroError, match="one failure label and spectrum per abnormal training clip"):
            Fusion.fit(types=["fan"], train_types=["fan"] * 4, train_modulation=_spectra(4, 2),
                       train_probability=None, val_types=["fan"] * 3, val_probability=np.array([0.1, 0.2, 0.3]),
                       abnormal_types=["fan", "fan"], abnormal_labels=labels, abnormal_modulation=spectra)


def test_the_spectrum_parts_scale_takes_the_validation_normals_measured_against_the_gaussian_of_all_training_normals():
    fan, pump = _spectra(12, 1), _spectra(10, 2, shift=3.0)
    val_fan, val_pump = _spectra(6, 3, shift=0.7), _spectra(2, 4, shift=3.0)
    fusion = Fusion.fit(types=["fan", "pump"], train_types=["fan"] * 12 + ["pump"] * 10,
                        train_modulation=np.concatenate([fan, pump]), train_probability=None,
                        val_types=["fan"] * 6 + ["pump"] * 3, val_probability=np.full(9, 0.1),
                        val_modulation=np.concatenate([val_fan, val_pump, _spectra(1, 5, shift=3.0)]))
    fit = LedoitWolf().fit(fan)
    inverse = np.linalg.inv(fit.covariance_)
    unseen = np.r_[_held_out_log_distances(fan), np.log([scipy_mahalanobis(x, fit.location_, inverse)
                                                         for x in val_fan])]
    assert fusion.types["fan"].modulation_scale == pytest.approx(
        [np.median(unseen), median_abs_deviation(unseen, scale="normal")], rel=1e-6)
    # the validation clips, shifted from the training normals, move the scale from what the folds alone give
    alone = _held_out_log_distances(fan)
    assert fusion.types["fan"].modulation_scale[0] > np.median(alone) + 0.05
    # a type's own validation clips only
    fit = LedoitWolf().fit(pump)
    inverse = np.linalg.inv(fit.covariance_)
    unseen = np.r_[_held_out_log_distances(pump), np.log([scipy_mahalanobis(x, fit.location_, inverse)
                                                          for x in np.concatenate([val_pump,
                                                                                   _spectra(1, 5, shift=3.0)])])]
    assert fusion.types["pump"].modulation_scale[0] == pytest.approx(np.median(unseen), rel=1e-6)
    with pytest.raises(SpectroError, match="one modulation spectrum per validation clip"):
        Fusion.fit(types=["fan"], train_types=["fan"] * 4, train_modulation=_spectra(4, 2), train_probability=None,
                   val_types=["fan"] * 3, val_probability=np.array([0.1, 0.2, 0.3]), val_modulation=_spectra(2, 1))


def test_the_machine_type_is_the_one_the_cnn_finds_most_likely():
    labels = LabelSpace.from_pairs([("fan", "normal"), ("fan", "bearing"), ("pump", "normal"), ("pump", "leak")],
                                   task="failure")
    probs = np.zeros((2, 4))
    probs[0, [labels.index("fan", "normal"), labels.index("pump", "leak")]] = [0.3, 0.7]
    probs[1, [labels.index("fan", "normal"), labels.index("fan", "bearing"), labels.index("pump", "leak")]] = \
        [0.35, 0.3, 0.35]
    assert labels.machine_type(probs) == ["pump", "fan"]  # fan: 0.65 in all, though no fan class is the largest
    fusion, _, _ = _fitted()
    parts = fusion.of_probs(labels, probs, _spectra(2, 11))
    direct = fusion.parts(["pump", "fan"], labels.anomaly_score(probs), _spectra(2, 11))
    np.testing.assert_allclose(parts["fused"], direct["fused"])


def test_a_clips_own_machine_type_comes_before_the_one_the_cnn_names():
    """A pump failure the CNN half takes for a fan would be judged against the fan's normal clips: a known type is
    used; one the run does not know (or none) leaves the CNN's."""
    labels = LabelSpace.from_pairs([("fan", "normal"), ("fan", "bearing"), ("pump", "normal"), ("pump", "leak")],
                                   task="failure")
    probs = np.zeros((3, 4))
    probs[:, labels.index("fan", "normal")] = 0.6
    probs[:, labels.index("pump", "leak")] = 0.4  # the CNN names "fan" for all three
    fusion, _, _ = _fitted()
    assert fusion.types_of(labels, probs, ["pump", None, "turbine"]) == ["pump", "fan", "fan"]
    assert fusion.types_of(labels, probs) == ["fan"] * 3
    spectra = _spectra(3, 12)
    parts = fusion.of_probs(labels, probs, spectra, ["pump", None, "turbine"])
    direct = fusion.parts(["pump", "fan", "fan"], labels.anomaly_score(probs), spectra)
    np.testing.assert_allclose(parts["fused"], direct["fused"])
    assert parts["cnn"][0] > parts["cnn"][1]  # p = 0.4 is far out for a pump (normals ~0.02), not for a fan
    with pytest.raises(SpectroError, match="one machine type"):
        fusion.types_of(labels, probs, ["pump"])


def test_a_cnn_that_gives_every_normal_clip_the_same_probability_has_the_floor_for_its_scale():
    fusion = Fusion.fit(types=["fan"], train_types=[], train_modulation=None, train_probability=None,
                        val_types=["fan"] * 4, val_probability=np.full(4, 0.25))
    assert fusion.types["fan"].cnn_scale == pytest.approx([np.log(1 / 3), MIN_CNN_SD])
    parts = fusion.parts(["fan", "fan"], np.array([0.25, 0.2500001]), None)
    np.testing.assert_allclose(parts["cnn"], [0.0, 0.0], atol=1e-5)  # rounding noise stays noise
    np.testing.assert_allclose(parts["fused"], _alone([0.0, 0.0]), atol=1e-5)


def test_a_fusion_without_any_spectrum_gaussian_round_trips(tmp_path):
    """Every type with too few normal training clips for a spectrum Gaussian: the CNN scales alone are saved."""
    spectra = _spectra(2, 1, shift=0.0)
    fusion = Fusion.fit(types=["fan", "pump"], train_types=["fan", "pump"], train_modulation=spectra,
                        train_probability=np.array([0.1, 0.2]), val_types=["fan"] * 3 + ["pump"] * 3,
                        val_probability=np.array([0.1, 0.2, 0.3, 0.01, 0.02, 0.03]))
    assert not any(t.has_modulation for t in fusion.types.values())
    loaded = Fusion.load(fusion.save(tmp_path).parent)
    assert loaded.to_dict() == fusion.to_dict()
    parts = loaded.parts(["fan", "pump"], np.array([0.5, 0.5]), _spectra(2, 2, shift=0.0))
    np.testing.assert_allclose(parts["fused"], _alone(parts["cnn"]), rtol=1e-7)  # the CNN part alone
    assert np.isnan(parts["modulation"]).all()


def test_file_round_trip_and_errors(tmp_path):
    fusion, _, _ = _fitted()
    path = fusion.save(tmp_path)
    assert path.name == FUSION_NAME
    loaded = Fusion.load(tmp_path)
    spectra, probability = _spectra(4, 3, shift=1.0), np.array([0.1, 0.5, 0.01, 0.99])
    for kind in ("fan", "pump"):
        np.testing.assert_allclose(loaded.score([kind] * 4, probability, spectra),
                                   fusion.score([kind] * 4, probability, spectra))
    assert loaded.to_dict() == fusion.to_dict()
    with pytest.raises(SpectroError, match=r"nothing: no fusion.npz \(the fused anomaly score\), which this run's "
                                           "anomaly score reads"):
        Fusion.load(tmp_path / "nothing")
    (tmp_path / FUSION_NAME).write_bytes(b"not an npz")
    with pytest.raises(SpectroError, match="unreadable anomaly-score fusion"):
        Fusion.load(tmp_path)
    with pytest.raises(SpectroError, match="'valve' has no anomaly-score scales"):
        fusion.parts(["valve"], np.array([0.5]), None)
    with pytest.raises(SpectroError, match="at least 3 normal clips"):
        Fusion.fit(types=["fan"], train_types=["fan"], train_modulation=None, train_probability=None,
                   val_types=["fan"], val_probability=np.array([0.1]))


def test_the_default_threshold_passes_five_percent_of_three_independent_standard_normal_scores():
    rng = np.random.default_rng(0)
    fused = np.max(rng.normal(size=(3, 200_000)), axis=0)
    assert np.mean(fused >= DEFAULT_THRESHOLD) == pytest.approx(0.05, abs=0.002)


@pytest.mark.parametrize("k", [1.5, 2, 3])
def test_as_larger_of_k_is_the_score_as_rare_as_z_among_the_larger_of_k(k):
    """Φ(x)^k = Φ(z) (scipy's normal): one threshold serves every type, a one- or two-part type's normal clips pass it
    as often as a three-part type's."""
    z = np.array([-30.0, -8.0, -2.0, -0.5, 0.0, 0.7, NormalDist().inv_cdf(0.95), 3.0, 8.0, 30.0, 60.0])
    x = as_larger_of_k(z, k)
    moderate = np.abs(z) <= 5  # scipy's Φ(z) near 1 loses digits further out
    np.testing.assert_allclose(x[moderate], norm.ppf(norm.cdf(z[moderate]) ** (1 / k)), rtol=1e-7)
    # the far tails, where scipy's Φ rounds to 0 or 1: P(max >= x) = 1 - Φ(x)^k against P(Z >= z), in logs
    np.testing.assert_allclose(np.log(-np.expm1(k * norm.logcdf(x[-3:-1]))), norm.logsf(z[-3:-1]), rtol=1e-6)
    np.testing.assert_allclose(k * norm.logcdf(x[0]), norm.logcdf(z[0]), rtol=1e-6)
    assert np.isfinite(x).all() and (np.diff(x) > 0).all()  # monotone: a type's ranking is kept
    rng = np.random.default_rng(1)
    threshold = norm.ppf(0.95 ** (1 / k))  # the 95th percentile of the larger of k
    assert np.mean(as_larger_of_k(rng.normal(size=200_000), k) >= threshold) == pytest.approx(0.05, abs=0.002)
    assert as_larger_of_k(z[6], 3) == pytest.approx(DEFAULT_THRESHOLD)  # one part's 95th percentile: the default
    np.testing.assert_allclose(as_larger_of_k(z, 1), z, rtol=1e-9)  # beyond 35 shifted alike: still the identity
    with pytest.raises(SpectroError, match="k must be >= 1"):
        as_larger_of_k(z, 0.5)


def _calibration_set(rng, fan_failure_shift: float = 1.5):
    """Validation and test clips of two machine types, by their CNN log-odds: the fan's CNN is unsure (its
    failures ``fan_failure_shift`` robust sds above its normal clips), the pump's sure (8 above), and the pump's
    normal clips sit far lower (as a pump's do: −6 against −0.5)."""
    def clips(n_normal, n_abnormal):
        types = ["fan"] * (n_normal + n_abnormal) + ["pump"] * (n_normal + n_abnormal)
        abnormal = np.r_[np.zeros(n_normal), np.ones(n_abnormal), np.zeros(n_normal), np.ones(n_abnormal)] > 0
        log_odds = np.r_[rng.normal(-0.5, 1, n_normal), rng.normal(-0.5 + fan_failure_shift, 1, n_abnormal),
                         rng.normal(-6, 1, n_normal), rng.normal(2, 1, n_abnormal)]
        return np.array(types), abnormal, 1 / (1 + np.exp(-log_odds))
    return clips(20, 20), clips(200, 200)


def test_the_score_is_the_log_odds_of_a_logistic_regression_per_type_on_its_validation_clips():
    """Each type's score is scikit-learn's balanced logistic regression (C = 1) of "abnormal" on the standard
    score of its validation clips, whose normal clips alone set the scale; the types then rank together."""
    from sklearn.linear_model import LogisticRegression

    (val_types, val_abnormal, val_p), (types, abnormal, p) = _calibration_set(np.random.default_rng(3))
    fusion = Fusion.fit(types=["fan", "pump"], train_types=[], train_modulation=None, train_probability=None,
                        val_types=val_types, val_probability=val_p, val_abnormal=val_abnormal)
    assert fusion.calibrated
    # the standard score (tested against scipy above), here checked where scipy's Φ keeps its digits
    val_standard = fusion.parts(val_types, val_p, None, calibrated=False)["fused"]
    standard = fusion.parts(types, p, None, calibrated=False)["fused"]
    score = fusion.score(types, p, None)
    for kind in ("fan", "pump"):
        normal = scipy_logit(val_p[(val_types == kind) & ~val_abnormal])
        assert fusion.types[kind].cnn_scale == pytest.approx([np.median(normal),
                                                             median_abs_deviation(normal, scale="normal")])
        z = _z(scipy_logit(p[types == kind]), normal)
        np.testing.assert_allclose(standard[types == kind][np.abs(z) < 5], _alone(z[np.abs(z) < 5]), rtol=1e-6)
        own = val_types == kind
        fit = LogisticRegression(C=1.0, class_weight="balanced").fit(val_standard[own, None], val_abnormal[own])
        assert fusion.types[kind].calibration == pytest.approx([fit.coef_[0, 0], fit.intercept_[0]], rel=1e-4)
        assert fusion.types[kind].calibrated_from == "the type"
        np.testing.assert_allclose(score[types == kind], fit.decision_function(standard[types == kind, None]),
                                   rtol=1e-4, atol=1e-4)
        # each type's own ranking is kept
        assert roc_auc_score(abnormal[types == kind], score[types == kind]) == pytest.approx(
            roc_auc_score(abnormal[types == kind], standard[types == kind]))
    # the fan's unsure failures no longer sit above the pump's normal clips' chance outliers in one ranking
    assert roc_auc_score(abnormal, score) > roc_auc_score(abnormal, standard) + 0.01  # 0.940 -> 0.962


def test_a_type_without_its_own_calibration_takes_that_of_all_types_and_without_failures_none():
    from sklearn.linear_model import LogisticRegression

    (val_types, val_abnormal, val_p), _ = _calibration_set(np.random.default_rng(4))
    # valve: normal validation clips only, and two failures of it (fewer than three: not a fit of its own)
    val_types = np.r_[val_types, ["valve"] * 8]
    val_abnormal = np.r_[val_abnormal, np.zeros(6, bool), np.ones(2, bool)]
    val_p = np.r_[val_p, np.random.default_rng(5).uniform(0.05, 0.3, 8)]
    kwargs = dict(types=["fan", "pump", "valve"], train_types=[], train_modulation=None, train_probability=None,
                  val_types=val_types, val_probability=val_p)
    fusion = Fusion.fit(**kwargs, val_abnormal=val_abnormal)
    assert [fusion.types[k].calibrated_from for k in ("fan", "pump", "valve")] == ["the type", "the type", "all types"]
    standard = fusion.parts(val_types, val_p, None, calibrated=False)["fused"]
    pooled = LogisticRegression(C=1.0, class_weight="balanced").fit(standard[:, None], val_abnormal)
    assert fusion.types["valve"].calibration == pytest.approx([pooled.coef_[0, 0], pooled.intercept_[0]], rel=1e-4)
    assert fusion.to_dict()["valve"]["calibrated_from"] == "all types"
    # a type whose failures score below its normal clips (a decreasing fit would reverse its ranking): all types'
    flipped = val_abnormal.copy()
    flipped[val_types == "fan"] = ~val_abnormal[val_types == "fan"]
    assert Fusion.fit(**kwargs, val_abnormal=flipped).types["fan"].calibrated_from == "all types"
    # no failure clips in the validation split (or two): the standard score, for every type
    for few in (None, np.r_[np.zeros(len(val_types) - 2, bool), np.ones(2, bool)]):
        plain = Fusion.fit(**kwargs, val_abnormal=few)
        assert not plain.calibrated and all(t.calibration is None for t in plain.types.values())
        normal = ~np.zeros(len(val_types), bool) if few is None else ~few
        np.testing.assert_allclose(plain.score(val_types[normal], val_p[normal], None),
                                   plain.parts(val_types[normal], val_p[normal], None, calibrated=False)["fused"])
    with pytest.raises(SpectroError, match="one abnormal flag per validation clip"):
        Fusion.fit(**kwargs, val_abnormal=val_abnormal[:-1])


def test_a_calibration_round_trips_and_a_file_without_the_calibrations_is_refused(tmp_path):
    (val_types, val_abnormal, val_p), (types, _, p) = _calibration_set(np.random.default_rng(6))
    fusion = Fusion.fit(types=["fan", "pump"], train_types=[], train_modulation=None, train_probability=None,
                        val_types=val_types, val_probability=val_p, val_abnormal=val_abnormal)
    loaded = Fusion.load(fusion.save(tmp_path).parent)
    assert loaded.calibrated and loaded.to_dict() == fusion.to_dict()
    np.testing.assert_allclose(loaded.score(types, p, None), fusion.score(types, p, None))
    # one format: a file without calibrations (an older spectro's) is refused, not scored on another scale
    with np.load(tmp_path / FUSION_NAME) as data:
        old = {k: data[k] for k in data.files if k not in ("calibrations", "calibrated_from")}
    np.savez(tmp_path / FUSION_NAME, **old)
    with pytest.raises(SpectroError, match="unreadable anomaly-score fusion .*calibrations"):
        Fusion.load(tmp_path)


# -- the mel-statistics part -----------------------------------------------------------------------------------


def _statistics(n, seed, shift=0.0, d=8):
    """Clips' mel statistics: standard normal, the first three values moved by ``shift`` (a failure's)."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    x[:, :3] += shift
    return x


def _by_hand(x, y):
    """The baseline's recipe by hand: scikit-learn's StandardScaler and a balanced LogisticRegression, C = 0.1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000)).fit(x, y)


def _melstats_fusion(*, fan_failure_shift=1.5, fan_failures=9, valve_failures=0, **kwargs):
    """Fan: 15 normal training clips and ``fan_failure_shift``-moved unbalance clips; valve: 10 normals and
    ``valve_failures`` leak clips; validation: 5 normals and 3 failures of each (which calibrate the score); no
    modulation spectra."""
    normal = np.concatenate([_statistics(15, 1), _statistics(10, 2)])
    abnormal = np.concatenate([_statistics(fan_failures, 3, shift=fan_failure_shift),
                               _statistics(valve_failures, 4, shift=2.0)])
    val = np.concatenate([_statistics(5, 5), _statistics(3, 6, shift=fan_failure_shift), _statistics(5, 7),
                          _statistics(3, 8, shift=2.0)])
    val_types = ["fan"] * 8 + ["valve"] * 8
    val_abnormal = np.r_[np.zeros(5), np.ones(3), np.zeros(5), np.ones(3)] > 0
    val_p = np.random.default_rng(9).uniform(0.05, 0.3, 16)
    fusion = Fusion.fit(types=["fan", "valve"], train_types=["fan"] * 15 + ["valve"] * 10, train_modulation=None,
                        train_probability=None, val_types=val_types, val_probability=val_p,
                        abnormal_types=["fan"] * fan_failures + ["valve"] * valve_failures,
                        abnormal_labels=["unbalance"] * fan_failures + ["leak"] * valve_failures,
                        train_statistics=normal, abnormal_statistics=abnormal, val_statistics=val,
                        val_abnormal=val_abnormal, **kwargs)
    return fusion, dict(normal=normal[:15], abnormal=abnormal[:fan_failures], val=val[:5], val_p=val_p[:5])


def test_the_melstats_part_is_the_baselines_logistic_regression_scaled_by_normal_clips_it_did_not_train_on():
    from spectro.evaluation.baselines import MelStatsLogistic

    fusion, fan = _melstats_fusion()
    t = fusion.types["fan"]
    x = np.concatenate([fan["normal"], fan["abnormal"]])
    y = np.r_[np.zeros(15), np.ones(9)].astype(int)
    queries = np.concatenate([_statistics(3, 10), _statistics(3, 11, shift=3.0)])
    # the logit of a logistic regression fitted by hand on every training clip of the type, and the baseline's
    model = _by_hand(x, y)
    np.testing.assert_allclose(t.melstats_logit(queries), model.decision_function(queries), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(t.melstats_logit(queries),
                               scipy_logit(MelStatsLogistic().fit(x, y).score(queries)), rtol=1e-6, atol=1e-9)
    # its scale: the training normals out of fold (5 folds, clip i of each class in fold i % 5) and the validation
    # normals under the regression of all
    folds = np.r_[np.arange(15) % 5, np.arange(9) % 5]
    held = np.zeros(len(x))
    for f in range(5):
        held[folds == f] = _by_hand(x[folds != f], y[folds != f]).decision_function(x[folds == f])
    unseen = np.r_[held[:15], model.decision_function(fan["val"])]
    assert t.melstats_scale == pytest.approx([np.median(unseen), median_abs_deviation(unseen, scale="normal")],
                                             rel=1e-6)
    assert t.melstats_auc == pytest.approx(roc_auc_score(y, held)) and t.melstats_auc >= MIN_MODULATION_AUC
    assert t.melstats_clips == [15, 9] and t.melstats_joins
    parts = fusion.parts(["fan"] * 6, np.full(6, 0.1), None, statistics=queries, calibrated=False)
    melstats = _z(model.decision_function(queries), unseen)
    np.testing.assert_allclose(parts["melstats"], melstats, rtol=1e-6)
    assert np.isnan(parts["modulation"]).all()
    cnn = _z(scipy_logit(np.full(6, 0.1)), scipy_logit(fan["val_p"]))
    np.testing.assert_allclose(parts["fused"], _two(np.maximum(cnn, melstats)), rtol=1e-6)
    assert (parts["fused"][3:] > parts["fused"][:3].max()).all()  # the failures' statistics decide
    recorded = fusion.to_dict()["fan"]
    assert recorded["melstats_joins"] is True and recorded["melstats_training_auc"] == pytest.approx(t.melstats_auc)


def test_a_melstats_part_blind_to_the_failures_is_left_out():
    fusion, _ = _melstats_fusion(fan_failure_shift=0.0)  # the fan's failures' statistics drawn like its normals'
    t = fusion.types["fan"]
    assert t.has_melstats and t.melstats_auc < MIN_MODULATION_AUC and not t.melstats_joins
    assert fusion.to_dict()["fan"]["melstats_joins"] is False
    p = np.array([0.1, 0.2, 0.4])
    parts = fusion.parts(["fan"] * 3, p, None, statistics=_statistics(3, 12, shift=5.0), calibrated=False)
    assert np.isnan(parts["melstats"]).all()  # far out in the statistics, and the fan's score ignores it
    np.testing.assert_allclose(parts["fused"], _alone(parts["cnn"]), rtol=1e-7)
    # a blind part needs no statistics to score
    np.testing.assert_allclose(fusion.parts(["fan"] * 3, p, None, calibrated=False)["fused"], parts["fused"])


def test_a_type_without_failure_clips_has_no_melstats_part_and_still_scores():
    fusion, _ = _melstats_fusion()  # the valve: normal training clips only
    valve = fusion.types["valve"]
    assert not valve.has_melstats and valve.melstats_scale is None
    assert fusion.to_dict()["valve"]["melstats_joins"] is False
    p = np.array([0.1, 0.2, 0.4])
    parts = fusion.parts(["valve"] * 3, p, None, statistics=_statistics(3, 13, shift=5.0), calibrated=False)
    assert np.isnan(parts["melstats"]).all()
    np.testing.assert_allclose(parts["fused"], _alone(parts["cnn"]), rtol=1e-7)
    np.testing.assert_allclose(fusion.parts(["valve"] * 3, p, None, calibrated=False)["fused"], parts["fused"])
    # two failure clips of a type are too few for folds of both classes: no part, no error
    few, _ = _melstats_fusion(fan_failures=2)
    assert not few.types["fan"].has_melstats
    # where the part joins, scoring without the statistics is refused rather than scored on another scale
    with pytest.raises(SpectroError, match="'fan': the anomaly score needs each clip's mel statistics"):
        fusion.parts(["fan"], np.array([0.1]), None)
    with pytest.raises(SpectroError, match="mel statistics of every abnormal training clip"):
        Fusion.fit(types=["fan"], train_types=["fan"] * 4, train_modulation=None, train_probability=None,
                   val_types=["fan"] * 3, val_probability=np.array([0.1, 0.2, 0.3]), abnormal_types=["fan"] * 3,
                   abnormal_labels=["leak"] * 3, train_statistics=_statistics(4, 1),
                   abnormal_statistics=_statistics(2, 2))


def test_a_melstats_fusion_round_trips_with_identical_scores(tmp_path):
    fusion, _ = _melstats_fusion(valve_failures=6)
    assert fusion.calibrated and all(t.melstats_joins for t in fusion.types.values())
    loaded = Fusion.load(fusion.save(tmp_path).parent)
    assert loaded.to_dict() == fusion.to_dict()
    types, p = ["fan", "valve"] * 4, np.linspace(0.05, 0.9, 8)
    statistics = np.concatenate([_statistics(4, 14), _statistics(4, 15, shift=2.5)])
    for calibrated in (True, False):
        mine = fusion.parts(types, p, None, statistics=statistics, calibrated=calibrated)
        theirs = loaded.parts(types, p, None, statistics=statistics, calibrated=calibrated)
        for name in ("cnn", "melstats", "fused"):
            np.testing.assert_array_equal(theirs[name], mine[name])
    # one format: a file without the mel-statistics part (an older spectro's) is refused
    with np.load(tmp_path / FUSION_NAME) as data:
        older = {k: data[k] for k in data.files if not k.startswith("melstats")}
    np.savez(tmp_path / FUSION_NAME, **older)
    with pytest.raises(SpectroError, match="unreadable anomaly-score fusion .*melstats"):
        Fusion.load(tmp_path)


def test_a_6_db_gain_on_every_clip_changes_no_melstats_score():
    """The part sees level-normalised statistics of the pixels (spectro.scoring.known.statistics): 15 pixel steps of
    0.4 dB, +6 dB on every training and scored clip, change neither the fit nor a score."""
    from spectro.features.settings import FeatureSettings
    from spectro.scoring.known import statistics

    settings = FeatureSettings(db_min=-80.0, db_max=22.0)  # 102 dB over 255 steps: 0.4 dB a step
    steps = round(6.0 / settings.db_per_step)
    assert steps * settings.db_per_step == pytest.approx(6.0)
    rng = np.random.default_rng(0)

    def clips(n, failure):
        pixels = rng.integers(60, 180, size=(n, 8, 40))
        pixels[:, :2] += 20 * failure  # a failure: the top bands louder than the rest
        return pixels.astype(np.uint8)

    normal, abnormal, val = clips(12, 0), clips(8, 1), clips(3, 0)
    scored = np.concatenate([clips(3, 0), clips(3, 1)])

    def fitted(gain):
        def stats(pixels):
            return statistics(pixels + np.uint8(gain), settings)

        fusion = Fusion.fit(types=["fan"], train_types=["fan"] * 12, train_modulation=None, train_probability=None,
                            val_types=["fan"] * 3, val_probability=np.array([0.1, 0.2, 0.3]),
                            abnormal_types=["fan"] * 8, abnormal_labels=["unbalance"] * 8,
                            train_statistics=stats(normal), abnormal_statistics=stats(abnormal),
                            val_statistics=stats(val))
        return fusion.parts(["fan"] * 6, np.full(6, 0.2), None, statistics=stats(scored))

    quiet, loud = fitted(0), fitted(steps)
    assert not np.isnan(quiet["melstats"]).any()
    np.testing.assert_allclose(loud["melstats"], quiet["melstats"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(loud["fused"], quiet["fused"], rtol=1e-9, atol=1e-9)
