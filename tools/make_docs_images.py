#!/usr/bin/env python
"""Render one normal and one abnormal spectrogram per machine type into ``docs/`` for the documentation's examples.

The clips come from a small ``spectro synth`` run in a temporary folder (seed 0, 6 dB, id_00); the
images are the log-mel spectrograms spectro trains on (default FeatureSettings, fixed -80..+20 dB
scale), drawn with matplotlib. ``docs/index.md`` shows them ("The built-in dataset"); the tool prints its
Markdown table (image paths relative to ``--out``). Run it from a checkout with spectro installed (``make venv``):

    .venv/bin/python tools/make_docs_images.py [--out docs] [--snr 6]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from spectro.data import synth
from spectro.features.audio import read_audio
from spectro.features.logmel import log_mel
from spectro.features.settings import FeatureSettings

ROOT = Path(__file__).resolve().parents[1]

# the failure shown per machine: the one whose physics shows best in a small picture
SHOWN = {"fan": "bearing", "pump": "leakage", "slider": "rail_damage", "valve": "contamination"}


def render(wav: Path, png: Path, title: str, settings: FeatureSettings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    db = log_mel(read_audio(wav, channel=settings.channel, sr=settings.sr), settings)
    seconds = len(read_audio(wav)) / settings.sr
    fig, ax = plt.subplots(figsize=(3.6, 1.9), dpi=90)
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=settings.db_min, vmax=settings.db_max,
              extent=(0, seconds, 0, settings.n_mels), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("time (s)", fontsize=7)
    ax.set_ylabel("mel band", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.tight_layout(pad=0.3)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--snr", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = FeatureSettings()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(tmp, seed=args.seed, progress=False, machines=synth.MACHINES, ids=1, snrs=(args.snr,),
                       clips_per_class=1, normal_clips=1)
        for machine, failure in SHOWN.items():
            cells = []
            for label in ("normal", failure):
                spec = synth.ClipSpec(machine, "id_00", label, args.snr, 0)
                png = args.out / f"{machine}_{label}.png"
                render(Path(tmp) / spec.relpath, png, f"{machine} / {label} ({synth.snr_name(args.snr)} dB)", settings)
                size = png.stat().st_size
                print(f"wrote {png} ({size / 1024:.0f} KB)", file=sys.stderr)
                cells.append(f"![{machine} {label}]({png.name})")
            rows.append(f"| {machine} | {cells[0]} | {cells[1]} |")
    print("| machine | normal | abnormal |")
    print("|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
