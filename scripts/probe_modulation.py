#!/usr/bin/env python
"""Why the fan is the CNN's weak machine type (docs/small-data.md, "Where the CNN still falls short"): can a
fan's *unbalance* be told from its normal sound by what a log-mel image shows, and by what it does not?

    python scripts/probe_modulation.py [RAW_DIR] [--real DIR]
    # RAW_DIR: default data/raw/synthetic (make images writes it); --real: default ../shared/mimii-sample

Part 1 reads the fan's normal and unbalance clips (channel 0) and scores, by 5-fold cross-validated logistic regression
(AUC, normal vs unbalance), the level-normalised per-band mean and standard deviation of log-mel spectrograms at
several resolutions, and the spectrum of the clip's loudness envelope from 0 to 60 Hz (frames of 16 ms). Unbalance
is amplitude modulation at the shaft rate (18-30 Hz in the generator, as in a real fan): a 128 ms frame
averages it away and 31 frames/s cannot show it, the envelope spectrum sees it. librosa computes every feature,
independently of spectro's own renderer.

Part 2 asks the same of the real MIMII fan sample without any abnormal clip in training (issue 19's setting):
5-fold ``KFold`` over its normal clips (shuffled, random_state 0), a Gaussian of the training normals' features
(scikit-learn ``LedoitWolf``), Mahalanobis distance as the score, tested on the held-out normals and all abnormal
clips; mean AUC over folds, at recorded levels and with each test clip at a seeded random gain within +-6 dB;
the envelope spectrum also split into 0-15, 15-30 and 30-60 Hz.
"""

import argparse
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MEL_CONFIGS = [  # (n_fft, hop_length, n_mels, fmax): spectro's default first
    (2048, 512, 64, None), (2048, 512, 128, None), (2048, 128, 64, None), (4096, 1024, 64, 1000),
    (8192, 1024, 64, 500),
]


def _audio(raw: Path, abnormal: str) -> tuple[list[np.ndarray], np.ndarray, int]:
    clips = [(f, 0) for f in sorted(raw.glob("*fan/fan/*/normal/*.wav"))]
    clips += [(f, 1) for f in sorted(raw.glob(f"*fan/fan/*/{abnormal}/*.wav"))]
    if not clips:
        raise SystemExit(f"no fan normal/{abnormal} clips under {raw} (expected <snr>_fan/fan/id_XX/<label>/*.wav)")
    audio = []
    for path, _ in clips:
        y, sr = sf.read(path, dtype="float32", always_2d=True)
        audio.append(y[:, 0])
    return audio, np.array([label for _, label in clips]), sr


def _auc(features: np.ndarray, labels: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    scores = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, scores))


def mel_statistics(audio, sr, n_fft, hop_length, n_mels, fmax) -> np.ndarray:
    rows = []
    for y in audio:
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, fmax=fmax)
        db = librosa.power_to_db(mel + 1e-10)
        db -= db.mean()  # level-normalised: the clip's gain says nothing
        rows.append(np.concatenate([db.mean(axis=1), db.std(axis=1)]))
    return np.array(rows)


def envelope_spectrum(audio, sr, top_hz: float = 60.0, bins: int = 60, hop: int = 64) -> np.ndarray:
    rows = []
    for y in audio:
        power = np.abs(librosa.stft(y, n_fft=256, hop_length=hop)) ** 2
        envelope = np.log(power.sum(axis=0) + 1e-10)
        spectrum = np.abs(np.fft.rfft(envelope - envelope.mean()))
        frame_rate = sr / hop
        spectrum = spectrum[: int(len(envelope) * top_hz / frame_rate)]
        spectrum = spectrum[: len(spectrum) // bins * bins].reshape(bins, -1).mean(axis=1)
        rows.append(np.log(spectrum + 1e-6))
    return np.array(rows)


def normal_only_auc(features_of, audio, labels, sr, shift_db: float = 0.0) -> float:
    """Mean over 5 folds of the normal clips: Mahalanobis distance to the training normals, AUC on the rest."""
    clean = features_of(audio, sr)
    gains = 10 ** (np.random.default_rng(0).uniform(-shift_db, shift_db, len(audio)) / 20)
    shifted = features_of([y * g for y, g in zip(audio, gains)], sr) if shift_db else clean
    normal, abnormal = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    aucs = []
    for train, test in KFold(5, shuffle=True, random_state=0).split(normal):
        gaussian = LedoitWolf().fit(clean[normal[train]])
        test = np.concatenate([normal[test], abnormal])
        aucs.append(roc_auc_score(labels[test], gaussian.mahalanobis(shifted[test])))
    return float(np.mean(aucs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", nargs="?", type=Path, default=Path("data/raw/synthetic"))
    parser.add_argument("--real", type=Path, default=Path("../shared/mimii-sample"))
    args = parser.parse_args()
    audio, labels, sr = _audio(args.raw, "unbalance")
    print(f"1. {args.raw}: {int((labels == 0).sum())} normal, {int((labels == 1).sum())} unbalance fan clips\n")
    print("| features | AUC normal vs unbalance (5-fold logistic regression) |\n|---|---:|")
    for n_fft, hop, n_mels, fmax in MEL_CONFIGS:
        name = f"log-mel band mean + std, n_fft {n_fft}, hop {hop}, {n_mels} mels, fmax {fmax or sr // 2}"
        print(f"| {name} | {_auc(mel_statistics(audio, sr, n_fft, hop, n_mels, fmax), labels):.3f} |", flush=True)
    print(f"| loudness-envelope spectrum 0-60 Hz (16 ms frames) | {_auc(envelope_spectrum(audio, sr), labels):.3f} |")
    if not args.real.is_dir():
        print(f"\n2. skipped: {args.real} absent")
        return
    audio, labels, sr = _audio(args.real, "abnormal")
    print(f"\n2. {args.real}: {int((labels == 0).sum())} normal, {int((labels == 1).sum())} abnormal clips, "
          "normal-only\n")
    print("| features | recorded levels | +-6 dB |\n|---|---:|---:|")  # envelope bins: 1 Hz each
    default_mel = lambda a, rate: mel_statistics(a, rate, *MEL_CONFIGS[0])  # noqa: E731
    mel_means = lambda a, rate: default_mel(a, rate)[:, :MEL_CONFIGS[0][2]]  # noqa: E731
    for name, features_of in [("log-mel band mean + std (spectro's default resolution)", default_mel),
                              ("log-mel band means", mel_means),
                              ("loudness-envelope spectrum 0-60 Hz", envelope_spectrum),
                              *[(f"the same, {lo}-{hi} Hz only", lambda a, rate, lo=lo, hi=hi:
                                 envelope_spectrum(a, rate)[:, lo:hi]) for lo, hi in ((0, 15), (15, 30), (30, 60))]]:
        print(f"| {name} | {normal_only_auc(features_of, audio, labels, sr):.3f} | "
              f"{normal_only_auc(features_of, audio, labels, sr, 6.0):.3f} |", flush=True)


if __name__ == "__main__":
    main()
