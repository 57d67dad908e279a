"""Figures for ``evaluate`` and ``report``, drawn with matplotlib's object API on the Agg canvas.

Every function takes the data and a ``path`` and writes one PNG; none opens a window or touches
``pyplot`` state, so they are safe on headless machines and in threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

DPI = 100
NORMAL_COLOR = "tab:blue"
ABNORMAL_COLOR = "tab:red"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def confusion_matrix(path: str | Path, true: Sequence[str], predicted: Sequence[str], classes: Sequence[str], *,
                     title: str = "Confusion matrix (test)") -> Path:
    """Counts of true (rows) against predicted (columns) classes."""
    from sklearn.metrics import ConfusionMatrixDisplay

    classes = list(classes) + sorted((set(true) | set(predicted)) - set(classes))
    size = max(4.0, 1.0 + 0.7 * len(classes))
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    ConfusionMatrixDisplay.from_predictions(list(true), list(predicted), labels=classes, ax=ax, colorbar=False,
                                            cmap="Blues", xticks_rotation=45 if len(classes) > 2 else "horizontal")
    ax.set_title(title)
    return _save(fig, path)


def roc_curves(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], *,
               title: str = "Anomaly ROC per machine type (test)") -> Path:
    """One ROC curve per named group ``{name: (y_abnormal, scores)}``; single-class groups are listed as such."""
    from sklearn.metrics import roc_curve

    from spectro.evaluation.metrics import anomaly_auc

    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    for name, (y, s) in curves.items():
        y = np.asarray(y).astype(int)
        if len(np.unique(y)) < 2:
            ax.plot([], [], " ", label=f"{name}: one class only, no ROC")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, linewidth=2 if name == "all" else 1.5, label=f"{name}: AUC {anomaly_auc(y, s):.3f}",
                color="black" if name == "all" else None, linestyle="--" if name == "all" else "-")
    ax.set_xlabel("false positive rate (normal flagged)")
    ax.set_ylabel("true positive rate (abnormal caught)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def score_histograms(path: str | Path, groups: dict[str, tuple[np.ndarray, np.ndarray]], *,
                     threshold: float | dict[str, float] | None = None, title: str = "Anomaly score (test)") -> Path:
    """Histograms of the anomaly score, normal vs abnormal, one panel per group ``{name: (y_abnormal, scores)}``.

    ``threshold``: one for every panel, or one per group (a normal-only run's per-machine thresholds). Scores in
    [0, 1] (probabilities) share 20 bins over [0, 1]; others (distances) get 20 bins over their panel's range."""
    n = max(1, len(groups))
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = _figure(4.2 * cols, 3.2 * rows)
    for i, (name, (y, s)) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        y, s = np.asarray(y).astype(bool), np.asarray(s, dtype=float)
        limit = threshold.get(name) if isinstance(threshold, dict) else threshold
        span = np.append(s, [] if limit is None else [limit])
        low, high = (0.0, 1.0) if len(s) == 0 or (s.min() >= 0 and s.max() <= 1) else (span.min(), span.max())
        bins = np.linspace(low, high if high > low else low + 1.0, 21)
        ax.hist(s[~y], bins=bins, alpha=0.6, color=NORMAL_COLOR, label=f"normal ({(~y).sum()})")
        ax.hist(s[y], bins=bins, alpha=0.6, color=ABNORMAL_COLOR, label=f"abnormal ({y.sum()})")
        if limit is not None:
            ax.axvline(limit, color="black", linestyle="--", linewidth=1, label=f"threshold {limit:.3g}")
        ax.set_title(name)
        ax.set_xlabel("anomaly score")
        ax.set_ylabel("images")
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def image_grid(path: str | Path, images: Sequence[np.ndarray], captions: Sequence[str], *, title: str = "",
               cols: int = 4, colors: Sequence[str] | None = None, empty_note: str = "nothing to show") -> Path:
    """Spectrogram images (uint8, high band on top) in a grid with a caption under each."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig = _figure(3.2 * cols, 2.6 * rows + 0.4)
    if n == 0:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, empty_note, ha="center", va="center")
        ax.set_axis_off()
    for i, (pixels, caption) in enumerate(zip(images, captions)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(pixels, cmap="magma", vmin=0, vmax=255, aspect="auto", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(caption, fontsize="small", color=(colors[i] if colors else "black"))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def exploratory(path: str | Path, y: np.ndarray, sr: int, *, n_fft: int = 2048, hop_length: int = 512,
                n_mels: int = 64, title: str = "") -> Path:
    """The public notebooks' four views of one recording: waveform, linear STFT, log-frequency STFT, mel."""
    import librosa
    import librosa.display

    fig = _figure(11.0, 8.0)
    axes = fig.subplots(2, 2)
    librosa.display.waveshow(y, sr=sr, ax=axes[0, 0], color="tab:blue")
    axes[0, 0].set_title("waveform")
    stft_db = librosa.amplitude_to_db(np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop_length)), ref=np.max)
    for ax, scale in ((axes[0, 1], "linear"), (axes[1, 0], "log")):
        img = librosa.display.specshow(stft_db, sr=sr, hop_length=hop_length, x_axis="time", y_axis=scale, ax=ax,
                                       cmap="magma")
        ax.set_title(f"STFT spectrogram ({'linear' if scale == 'linear' else 'log'} frequency)")
        fig.colorbar(img, ax=ax, format="%+2.0f dB")
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
    img = librosa.display.specshow(librosa.power_to_db(mel, ref=np.max), sr=sr, hop_length=hop_length,
                                   x_axis="time", y_axis="mel", ax=axes[1, 1], cmap="magma")
    axes[1, 1].set_title(f"mel spectrogram ({n_mels} bands)")
    fig.colorbar(img, ax=axes[1, 1], format="%+2.0f dB")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def training_curves(path: str | Path, history: dict[str, Sequence[float]], *, phase_starts: Sequence[int] = (),
                    title: str = "Training", steps_per_epoch: int | None = None) -> Path:
    """Loss and metric curves from a Keras history (``{"loss": [...], "val_loss": [...], ...}``), training and
    validation in one panel per measure; dotted lines where a new training phase starts (0-based epochs). An
    epoch is ``steps_per_epoch`` optimizer steps when given (the x axis says so)."""
    from matplotlib.ticker import MaxNLocator

    names = sorted({k.removeprefix("val_") for k in history if k not in ("epoch", "lr", "learning_rate", "phase")})
    names = [n for n in names if n in history or f"val_{n}" in history] or ["loss"]
    fig = _figure(4.5 * max(1, len(names)), 3.5)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        for key, style, label in ((name, "-", "training"), (f"val_{name}", "--", "validation")):
            if key in history:
                values = np.asarray(history[key], dtype=float)
                ax.plot(np.arange(1, len(values) + 1), values, style, marker=".", label=label)
        for start in phase_starts:
            ax.axvline(start + 0.5, color="gray", linewidth=0.8, linestyle=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"validation (every {steps_per_epoch} steps)" if steps_per_epoch else "epoch")
        ax.set_title(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)
