"""Outlier exposure for normal-only training on a single machine.

A machine-id classifier needs at least two machines to tell apart. With the normal clips of one machine only,
``spectro train --task normal-only`` adds the normal clips of the built-in synthetic machines
(:mod:`spectro.data.synth`), rendered with the run's own feature settings and clip length, as other classes: the
model learns what sets the user's machine apart from other machine sounds, and its embeddings describe that
machine's normal sound. The outlier images live in a temporary folder for the training only; they are never
references, never validated on and never tested on.
"""

from __future__ import annotations

from pathlib import Path

from spectro.data.manifest import ImageRow, read_manifest
from spectro.features.settings import FeatureSettings

OUTLIER_PREFIX = "synthetic-"  # outlier classes read synthetic-<machine>/<id>
OUTLIER_CLIPS = 12  # normal clips per synthetic machine id (4 machine types x 2 ids)


def outlier_rows(features: FeatureSettings, image_shape: tuple[int, int], folder: Path, *, seed: int,
                 clips: int = OUTLIER_CLIPS, progress: bool = False) -> list[ImageRow]:
    """Normal clips of the synthetic machines as image rows, each image ``image_shape`` like the training images,
    their machines named ``synthetic-<machine>``."""
    from spectro.data.synth import generate
    from spectro.features.render import render_folder

    if features.segment_seconds is not None:
        seconds = features.segment_seconds
    else:  # as many samples as give the training images' frames (librosa, center=True)
        seconds = ((image_shape[1] - 1) * features.hop_length + features.hop_length / 2) / features.sr
    audio, images = folder / "audio", folder / "images"
    generate(audio, seed=seed + 1, progress=False, force=True, snrs=(6.0,), clips_per_class=1, normal_clips=clips,
             seconds=seconds, sr=features.sr)
    for wav in list(audio.rglob("*.wav")):  # only the normal clips
        if wav.parent.name != "normal":
            wav.unlink()
    render_folder(audio, images, features, jobs=0, strict=True, progress=progress)
    return [ImageRow(r.path, r.source, OUTLIER_PREFIX + r.machine, r.machine_id, r.label, r.snr, r.segment,
                     r.settings_hash) for r in read_manifest(images)]
