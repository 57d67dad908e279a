"""spectro synth: layout, determinism, SNR mixing, loudness not giving failures away, and the physics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from spectro.data import synth
from spectro.data.layout import discover
from spectro.errors import SpectroError
from spectro.features.audio import read_audio

SR = 16000
TINY = dict(machines=("fan", "valve"), ids=1, snrs=(6.0,), clips_per_class=1, normal_clips=1, seconds=0.5)


def _bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


def _rms(y):
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def test_same_seed_same_bytes_whatever_the_jobs_and_other_seed_differs(tmp_path):
    a = synth.generate(tmp_path / "a", seed=0, progress=False, jobs=1, **TINY)
    synth.generate(tmp_path / "b", seed=0, progress=False, jobs=2, **TINY)
    synth.generate(tmp_path / "c", seed=1, progress=False, jobs=1, **TINY)
    first, second, other = _bytes(tmp_path / "a"), _bytes(tmp_path / "b"), _bytes(tmp_path / "c")
    assert len(a) == len(first) == 6  # 2 machines x (normal + 2 failures)
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first)


def test_layout_labels_and_format_as_discovered(tmp_path):
    paths = synth.generate(tmp_path, progress=False, jobs=1, machines=synth.MACHINES, ids=2, snrs=(6.0, -6.0),
                           clips_per_class=1, normal_clips=2, seconds=0.5)
    clips, unmatched = discover(tmp_path)
    assert unmatched == []
    assert sorted(c.path for c in clips) == sorted(paths)
    found = {(c.machine, c.machine_id, c.label, c.snr) for c in clips}
    expected = {(m, i, label, snr) for m, failures in synth.FAILURES.items() for i in ("id_00", "id_02")
                for label in ("normal",) + failures for snr in ("6dB", "-6dB")}
    assert found == expected
    assert all(len(failures) >= 2 for failures in synth.FAILURES.values())
    assert sum(c.label == "normal" for c in clips) == 4 * 2 * 2 * 2
    example = tmp_path / "-6_dB_fan/fan/id_00/bearing/00000000.wav"
    assert example in paths
    info = sf.info(str(example))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 1, "PCM_16", SR // 2)
    assert json.loads((tmp_path / "synth.json").read_text())["snrs"] == [6.0, -6.0]


def test_default_clip_is_ten_seconds_of_16_bit_16_khz(tmp_path):
    synth.generate(tmp_path, progress=False, jobs=1, machines=("pump",), ids=1, snrs=(0.0,), clips_per_class=1,
                   normal_clips=1)
    info = sf.info(str(tmp_path / "0_dB_pump/pump/id_00/normal/00000000.wav"))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 160000)


def test_eight_channels_readable_and_channel_0_is_the_mono_clip(tmp_path):
    options = dict(TINY, machines=("slider",))
    synth.generate(tmp_path / "mono", progress=False, jobs=1, **options)
    synth.generate(tmp_path / "array", progress=False, jobs=1, channels=8, **options)
    rel = "6_dB_slider/slider/id_00/rail_damage/00000000.wav"
    assert sf.info(str(tmp_path / "array" / rel)).channels == 8
    mono = read_audio(tmp_path / "mono" / rel)
    channels = [read_audio(tmp_path / "array" / rel, channel=str(c)) for c in range(8)]
    assert np.array_equal(channels[0], mono)
    assert all(len(c) == SR // 2 for c in channels)
    from spectro.features.logmel import log_mel
    from spectro.features.settings import FeatureSettings

    settings = FeatureSettings()
    reference = log_mel(mono, settings).mean(1)
    for c in channels[1:]:  # the same scene heard by other microphones: same spectrum, not the same samples
        assert not np.allclose(c, mono, atol=1e-3)
        assert np.abs(log_mel(c, settings).mean(1) - reference).max() < 4.0


@pytest.mark.parametrize("snr", [6.0, 0.0, -6.0, 12.5])
def test_snr_of_the_written_file(tmp_path, snr):
    spec = synth.ClipSpec("fan", "id_02", "bearing", snr, 3)
    parts = synth.clip_parts(spec.machine, spec.machine_id, spec.label, snr=snr, index=spec.index, seconds=2.0)
    root = tmp_path / "d"
    synth.generate(root, progress=False, jobs=1, machines=("fan",), ids=2, snrs=(snr,), clips_per_class=4,
                   normal_clips=1, seconds=2.0)
    y, sr = sf.read(str(root / spec.relpath), dtype="float64")
    assert sr == SR
    noise = y / parts.gain - parts.machine  # what is left of the file once the machine part is removed
    measured = 20 * np.log10(_rms(parts.machine) / _rms(noise))
    assert measured == pytest.approx(snr, abs=0.05)
    assert _rms(y - parts.gain * (parts.machine + parts.noise)) < 2 / 32768  # 16-bit quantisation only


def test_levels_sit_where_real_mimii_does(tmp_path):
    """Real MIMII fan (channel 0): about -58..+4 dB per mel bin on the default fixed scale."""
    from spectro.features.logmel import clipped_fraction, log_mel
    from spectro.features.settings import FeatureSettings

    settings = FeatureSettings()
    dbs = [log_mel(synth.render_clip(synth.ClipSpec(m, "id_00", "normal", snr, 0), seconds=2.0), settings)
           for m in synth.MACHINES for snr in (6.0, -6.0)]
    values = np.concatenate([d.ravel() for d in dbs])
    low, median, high = np.percentile(values, [0.1, 50, 99.9])
    assert -75 < low < -40 and -45 < median < -20 and -15 < high < 10
    assert clipped_fraction(values, settings) == (0.0, 0.0)


def test_loudness_does_not_give_failures_away():
    from sklearn.metrics import roc_auc_score

    for machine, failures in synth.FAILURES.items():
        rms, abnormal = [], []
        for machine_id in ("id_00", "id_02"):
            for label, n in [("normal", 8)] + [(f, 4) for f in failures]:
                for i in range(n):
                    y = synth.render_clip(synth.ClipSpec(machine, machine_id, label, 0.0, i), seconds=1.0)
                    rms.append(_rms(y))
                    abnormal.append(label != "normal")
        auc = roc_auc_score(abnormal, rms)
        assert max(auc, 1 - auc) < 0.72, f"{machine}: RMS threshold AUC {auc:.2f}"


def _band(y, lo, hi, sr=SR):
    spec = np.fft.rfft(y)
    f = np.fft.rfftfreq(len(y), 1 / sr)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, len(y))


def _band_fraction(y, lo, hi, sr=SR):
    power = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / sr)
    return power[(f >= lo) & (f <= hi)].sum() / power.sum()


def _envelope_peak(y, lo, hi, rate, tol=0.06, sr=SR):
    """Peak of the envelope spectrum of band lo..hi near ``rate`` Hz, over its median in 5..300 Hz."""
    from scipy.signal import hilbert

    env = np.abs(hilbert(_band(y, lo, hi, sr)))
    spec = np.abs(np.fft.rfft(env - env.mean()))
    f = np.fft.rfftfreq(len(env), 1 / sr)
    near = (f > rate * (1 - tol)) & (f < rate * (1 + tol))
    return spec[near].max() / np.median(spec[(f > 5) & (f < 300)])


def _kurtosis(y):
    y = y - y.mean()
    return float(np.mean(y**4) / np.mean(y**2) ** 2)


def _centroid(y, lo, hi, sr=SR):
    power = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / sr)
    keep = (f >= lo) & (f <= hi)
    return float((f[keep] * power[keep]).sum() / power[keep].sum())


# (machine, failure, feature of the noise-free machine sound, factor failure/normal must exceed)
PHYSICS = [
    ("fan", "bearing", lambda y, p: _envelope_peak(y, 2000, 7000, p["shaft_hz"] * p["bearing_ratio"]), 3.0),
    ("fan", "unbalance", lambda y, p: _envelope_peak(y, 100, 4000, p["shaft_hz"]), 3.0),
    ("pump", "leakage",
     lambda y, p: _band_fraction(y, p["hiss_hz"] - p["hiss_bw"] / 2, p["hiss_hz"] + p["hiss_bw"] / 2), 5.0),
    ("pump", "clogging", lambda y, p: _centroid(y, 150, 3000), 1.05),
    ("slider", "rail_damage", lambda y, p: _kurtosis(_band(y, p["damage_res"] - 400, p["damage_res"] + 400)), 2.0),
    ("slider", "no_grease", lambda y, p: _band_fraction(y, 0.9 * p["squeal_hz"], 1.1 * p["squeal_hz"])
     + _band_fraction(y, 4000, 7000), 2.0),
    ("valve", "contamination", lambda y, p: _kurtosis(_band(y, 4500, 8000)) * _band_fraction(y, 3000, 8000), 2.0),
    ("valve", "leakage", lambda y, p: _band_fraction(y, p["hiss_hz"] - 700, p["hiss_hz"] + 700), 3.0),
]


@pytest.mark.parametrize("machine, failure, feature, factor", PHYSICS, ids=[f"{m}-{f}" for m, f, _, _ in PHYSICS])
def test_each_failure_changes_the_physics(machine, failure, feature, factor):
    params = synth.machine_params(machine, "id_00")
    values = {}
    for label in ("normal", failure):
        values[label] = np.mean([feature(synth.clip_parts(machine, "id_00", label, snr=6.0, index=i,
                                                           seconds=4.0).machine, params) for i in range(3)])
    assert values[failure] > factor * values["normal"], values


def test_rail_damage_impacts_come_at_the_damaged_position():
    """Impacts in the damage band arrive when the carriage passes the same spot: twice per stroke cycle."""
    params = synth.machine_params("slider", "id_02")
    y = synth.clip_parts("slider", "id_02", "rail_damage", snr=6.0, index=0, seconds=8.0).machine
    band = _band(y, params["damage_res"] - 400, params["damage_res"] + 400)
    env = np.abs(band)
    frame = 160  # 10 ms
    energy = env[: len(env) // frame * frame].reshape(-1, frame).max(1)
    loud = np.flatnonzero(energy > 0.2 * energy.max())
    starts = loud[np.insert(np.diff(loud) > 5, 0, True)]  # first frame of each burst (bursts > 50 ms apart)
    intervals = np.diff(starts) * frame / SR
    period = params["period_s"]
    # intervals alternate between the forward->back and back->forward gaps; each pair adds up to one cycle
    pairs = intervals[: len(intervals) // 2 * 2].reshape(-1, 2).sum(1)
    assert len(starts) >= 8
    assert np.allclose(pairs, period, rtol=0.08)


def test_minus_6_db_is_harder_than_6_db():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from spectro.features.logmel import log_mel
    from spectro.features.settings import FeatureSettings

    settings = FeatureSettings()
    auc = {}
    for snr in (6.0, -6.0):
        x, abnormal = [], []
        for label, n in [("normal", 12), ("unbalance", 6), ("bearing", 6)]:
            for i in range(n):
                db = log_mel(synth.render_clip(synth.ClipSpec("fan", "id_00", label, snr, i), seconds=3.0), settings)
                x.append(np.concatenate([db.mean(1), db.std(1)]))
                abnormal.append(label != "normal")
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        p = cross_val_predict(model, np.array(x), np.array(abnormal), method="predict_proba",
                              cv=StratifiedKFold(4, shuffle=True, random_state=0))
        auc[snr] = roc_auc_score(abnormal, p[:, 1])
    assert auc[6.0] > 0.8
    assert auc[6.0] - auc[-6.0] > 0.1, auc


def test_rerun_with_same_settings_skips_and_other_settings_need_force(tmp_path):
    paths = synth.generate(tmp_path, progress=False, jobs=1, **TINY)
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert synth.generate(tmp_path, progress=False, jobs=1, **TINY) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    other = dict(TINY, snrs=(0.0,))
    with pytest.raises(SpectroError, match="other settings.*--force"):
        synth.generate(tmp_path, progress=False, jobs=1, **other)
    new = synth.generate(tmp_path, progress=False, jobs=1, force=True, **other)
    assert not (tmp_path / "6_dB_fan").exists()
    assert sorted(p for p in tmp_path.rglob("*.wav")) == sorted(new)


@pytest.mark.parametrize("options, message", [
    (dict(machines=("drill",)), "machines must be some of"),
    (dict(ids=0), "ids must be"),
    (dict(snrs=()), "snrs must be"),
    (dict(snrs=(6.0, 6.0)), "snrs must be"),
    (dict(clips_per_class=0), "clips_per_class"),
    (dict(seconds=0.1), "seconds"),
    (dict(channels=2), "channels must be 1 or 8"),
    (dict(colour="red"), "unknown synth option"),
])
def test_invalid_settings_raise(tmp_path, options, message):
    with pytest.raises(SpectroError, match=message):
        synth.generate(tmp_path, progress=False, **options)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("machine, label", [("fan", "leakage"), ("drill", "normal"), ("valve", "abnormal")])
def test_unknown_machine_or_label_raises(machine, label):
    with pytest.raises(SpectroError, match="unknown"):
        synth.clip_parts(machine, "id_00", label, snr=0.0, index=0, seconds=1.0)
