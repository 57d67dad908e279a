"""The mel-statistics baseline: its features by hand, known answers on constructed spectrograms, and its block
in ``spectro evaluate``'s outputs."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from spectro.errors import SpectroError
from spectro.evaluation.baselines import MelStatsLogistic
from spectro.features.settings import FeatureSettings
from spectro.features.statistics import mel_statistics, mel_statistics_of_pixels, pixels_to_db_batch

N_MELS, FRAMES = 16, 40


# -- features ----------------------------------------------------------------------------------------
def test_features_match_a_hand_computation():
    # band 0 (top row): 0, 3, 6 dB -> mean 3, std sqrt(6); band 1: -10 dB throughout -> mean -10, std 0;
    # the clip's mean dB is (3 - 10) / 2 = -3.5
    db = np.array([[[0.0, 3.0, 6.0], [-10.0, -10.0, -10.0]]])
    np.testing.assert_allclose(mel_statistics(db), [[6.5, -6.5, np.sqrt(6.0), 0.0]])


def test_features_ignore_gain_and_keep_row_order():
    rng = np.random.default_rng(1)
    db = rng.normal(-40, 8, (3, N_MELS, FRAMES))
    x = mel_statistics(db)
    assert x.shape == (3, 2 * N_MELS)
    np.testing.assert_allclose(mel_statistics(db + 17.0), x, atol=1e-9)
    # each feature belongs to its own row: flipping the bands flips both halves
    flipped = mel_statistics(db[:, ::-1])
    np.testing.assert_allclose(flipped[:, :N_MELS], x[:, N_MELS - 1::-1], atol=1e-9)
    np.testing.assert_allclose(flipped[:, N_MELS:], x[:, :N_MELS - 1:-1], atol=1e-9)


def test_features_of_pixels_use_the_fixed_db_scale_in_chunks():
    s = FeatureSettings()
    pixels = np.random.default_rng(2).integers(0, 256, (7, 8, 5), dtype=np.uint8)
    expected = mel_statistics(pixels.astype(float) * s.db_per_step + s.db_min)
    got = mel_statistics_of_pixels(pixels, db_min=s.db_min, db_per_step=s.db_per_step, chunk=3)
    np.testing.assert_allclose(got, expected)
    np.testing.assert_allclose(got, mel_statistics(pixels_to_db_batch(pixels, db_min=s.db_min,
                                                                      db_per_step=s.db_per_step)))


@pytest.mark.parametrize("shape", [(4, 5), (2, 0, 5), (2, 4, 0), (1, 2, 3, 4)])
def test_features_refuse_other_shapes(shape):
    with pytest.raises(SpectroError, match="expected a batch"):
        mel_statistics(np.zeros(shape))


# -- known answers -----------------------------------------------------------------------------------
def _clips(rng, n: int, *, band_raise: float = 0.0, gain: float = 0.0) -> np.ndarray:
    """``n`` dB spectrograms: one spectral profile, 1 dB noise per cell, a random gain of ±10 dB each.

    ``band_raise`` lifts band 5 by that many dB and lowers all bands alike so that the clip's mean dB is
    unchanged; ``gain`` adds that many dB to every cell.
    """
    profile = np.linspace(-20.0, -50.0, N_MELS)[None, :, None]
    db = profile + rng.normal(0, 1, (n, N_MELS, FRAMES)) + rng.uniform(-10, 10, (n, 1, 1)) + gain
    db[:, 5] += band_raise
    return db - band_raise / N_MELS


def _hand_features(db: np.ndarray) -> np.ndarray:
    """The features, written out clip by clip and band by band (independent of mel_statistics)."""
    out = []
    for clip in db:
        level = sum(v for band in clip for v in band) / clip.size
        means = [sum(band) / len(band) - level for band in clip]
        stds = [np.sqrt(sum((v - sum(band) / len(band)) ** 2 for v in band) / len(band)) for band in clip]
        out.append(means + stds)
    return np.array(out)


def _train_and_test(rng, **abnormal):
    train = np.concatenate([_clips(rng, 40), _clips(rng, 20, **abnormal)])
    test = np.concatenate([_clips(rng, 30), _clips(rng, 30, **abnormal)])
    return train, np.r_[np.zeros(40), np.ones(20)], test, np.r_[np.zeros(30), np.ones(30)]


def test_a_raised_band_at_equal_loudness_is_separated_perfectly():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, y_train, test, y_test = _train_and_test(np.random.default_rng(3), band_raise=6.0)
    model = MelStatsLogistic().fit(mel_statistics(train), y_train)
    scores = model.score(mel_statistics(test))
    assert ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc_score(y_test, scores) == 1.0
    # loudness alone does not tell them apart
    assert 0.3 < roc_auc_score(y_test, test.mean(axis=(1, 2))) < 0.7
    # the same pipeline written out with scikit-learn on hand-computed features gives the same scores
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000))
    reference.fit(_hand_features(train), y_train)
    np.testing.assert_allclose(scores, reference.predict_proba(_hand_features(test))[:, 1], atol=1e-6)


def test_a_gain_alone_is_invisible_after_level_normalisation():
    train, y_train, test, y_test = _train_and_test(np.random.default_rng(4), gain=25.0)
    # the abnormal clips are far louder: the level separates them perfectly ...
    assert roc_auc_score(y_test, test.mean(axis=(1, 2))) == 1.0
    # ... and the baseline, which never sees the level, is at chance
    scores = MelStatsLogistic().fit(mel_statistics(train), y_train).score(mel_statistics(test))
    assert abs(roc_auc_score(y_test, scores) - 0.5) < 0.2
    # the abnormal test clips are the normal ones made louder: each gets the score of its twin
    normal = test[:30]
    twins = MelStatsLogistic().fit(mel_statistics(train), y_train).score(mel_statistics(normal + 25.0))
    np.testing.assert_allclose(twins, MelStatsLogistic().fit(mel_statistics(train), y_train)
                               .score(mel_statistics(normal)), atol=1e-9)
    assert roc_auc_score(np.r_[np.zeros(30), np.ones(30)], np.r_[scores[:30], twins]) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("labels", [np.zeros(6), np.ones(6)])
def test_one_class_cannot_be_fit(labels):
    with pytest.raises(SpectroError, match="needs normal and abnormal"):
        MelStatsLogistic().fit(np.random.default_rng(0).normal(size=(6, 4)), labels)


def test_scoring_needs_a_fit_and_matching_shapes():
    with pytest.raises(SpectroError, match="fit the mel-statistics baseline"):
        MelStatsLogistic().score(np.zeros((2, 4)))
    with pytest.raises(SpectroError, match="one label per feature row"):
        MelStatsLogistic().fit(np.zeros((3, 4)), [0, 1])
    with pytest.raises(SpectroError, match=r"features \(n, d\)"):
        MelStatsLogistic().fit(np.zeros((3, 4, 2)), [0, 1, 1])


# -- in spectro evaluate -----------------------------------------------------------------------------
def _rows_and_pixels(tiny_images):
    from spectro.data.manifest import read_manifest
    from spectro.features.reader import read_images

    rows = read_manifest(tiny_images)
    pixels, settings = read_images(rows)
    return rows, pixels, settings


def test_segments_are_also_scored_per_recording(tiny_images):
    from spectro.evaluation.evaluate import mel_baseline
    from spectro.evaluation.metrics import clip_level

    rows, pixels, settings = _rows_and_pixels(tiny_images)
    train = [i for i in range(len(rows)) if i % 4 >= 2]
    test = [i for i in range(len(rows)) if i % 4 < 2]
    # pretend each pair of test images is two segments of one recording
    test_rows = [replace(rows[i], source=rows[test[2 * (k // 2)]].source, segment=k % 2) for k, i in enumerate(test)]
    block, scores = mel_baseline([rows[i] for i in train], test_rows, pixels[test], settings=settings,
                                 shape=pixels.shape[1:], cnn_auc=0.0)
    y = np.array([r.is_abnormal for r in test_rows], dtype=int)
    assert block["overall"]["auc"] == pytest.approx(roc_auc_score(y, scores))
    assert block["overall"]["pauc"] == pytest.approx(roc_auc_score(y, scores, max_fpr=0.1))
    _, y_clip, s_clip = clip_level([r.recording for r in test_rows], y, scores)
    assert block["clips"]["n"] == len(test) // 2
    assert block["clips"]["auc"] == pytest.approx(roc_auc_score(y_clip, s_clip))
    assert block["cnn_beats_baseline"] is False
    assert block["train"] == {"n": len(train), "n_normal": len(train) // 2, "n_abnormal": len(train) // 2}


def test_one_class_in_training_skips_the_baseline(tiny_images):
    from spectro.evaluation.evaluate import mel_baseline

    rows, pixels, settings = _rows_and_pixels(tiny_images)
    normal = [r for r in rows if not r.is_abnormal]
    block, scores = mel_baseline(normal, rows, pixels, settings=settings, shape=pixels.shape[1:], cnn_auc=0.9)
    assert scores is None
    assert "overall" not in block and block["cnn_beats_baseline"] is None
    assert block["skipped"] == f"the training split holds {len(normal)} normal and 0 abnormal image(s); the " \
                               "baseline needs both"


@pytest.mark.slow
def test_evaluate_writes_the_baseline_beside_the_cnn(tiny_run, tmp_path, capsys):
    from spectro.cli import main as cli
    from spectro.runs import METRICS_NAME, PREDICTIONS_NAME

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    assert cli(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    m = json.loads((run / METRICS_NAME).read_text())
    base = m["baseline"]
    assert base["name"] == "logistic regression on level-normalised mel statistics"
    assert "skipped" not in base and "clips" not in base  # whole recordings: no per-recording block
    assert base["train"]["n"] == sum(1 for line in (run / "splits.csv").read_text().splitlines() if
                                     line.endswith(",train"))
    with (run / PREDICTIONS_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert "baseline_score" in rows[0]
    scores = np.array([float(r["baseline_score"]) for r in rows])
    assert ((scores >= 0) & (scores <= 1)).all()
    y = np.array([int(r["label"] != "normal") for r in rows])
    assert base["overall"]["n"] == len(rows)
    assert base["overall"]["auc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-5)
    assert base["overall"]["pauc"] == pytest.approx(roc_auc_score(y, scores, max_fpr=0.1), abs=1e-5)
    assert sorted(base["by_machine"]) == sorted(m["by_machine"]) == ["fan", "pump"]
    assert sorted(base["by_machine_id"]) == sorted(m["by_machine_id"])
    for machine, figures in base["by_machine"].items():
        sel = np.array([r["machine"] == machine for r in rows])
        assert figures["n"] == sel.sum()
        assert figures["auc"] == pytest.approx(roc_auc_score(y[sel], scores[sel]), abs=1e-5)
    assert base["cnn_beats_baseline"] == (m["overall"]["auc"] > base["overall"]["auc"])

    assert f"(baseline {base['overall']['auc']:.3f})" in out
    assert f"(baseline {base['by_machine']['fan']['auc']:.3f})" in out
    beaten = "the mel-statistics baseline beats the CNN on these images" in out
    assert beaten == (base["overall"]["auc"] > m["overall"]["auc"])

    from spectro.evaluation.report import evaluation

    section = evaluation(run, m, "")
    assert "<th>baseline AUC</th>" in section and "<th>baseline pAUC</th>" in section
    assert f"<td>{base['by_machine']['pump']['auc']:.3f}</td>" in section
