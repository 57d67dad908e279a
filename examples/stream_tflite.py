#!/usr/bin/env python
"""Score a long recording window by window with an exported ``.tflite`` model, the way a device would.

Reads the WAV in blocks (soundfile), renders each window with spectro's own feature code, runs the
LiteRT interpreter on one thread and prints, per window, its time span, the anomaly score and a flag.
Needs only numpy, soundfile, ai_edge_litert and ``spectro.features`` (librosa) — no TensorFlow.
The model folder must hold ``config.json`` and ``labels.json`` beside the model, as written by
``spectro export --out DIR`` (or a run folder).

Example::

    spectro export models/latest --quantize int8 --out device/
    python examples/stream_tflite.py long_recording.wav --model device/model_int8.tflite
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from spectro.features.logmel import db_to_pixels, log_mel
from spectro.features.settings import FeatureSettings


class Model:
    """A ``.tflite`` model with its labels and feature settings, run one window at a time."""

    def __init__(self, path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        folder = path.parent
        self.config = json.loads((folder / "config.json").read_text())
        labels = json.loads((folder / "labels.json").read_text())
        self.classes = labels["classes"]
        self.abnormal = np.array([c.split("/", 1)[1] != "normal" for c in self.classes])
        self.settings = FeatureSettings.from_dict(self.config["features"])
        self.input_shape = tuple(self.config["input_shape"][:2])
        self.threshold = float(self.config.get("threshold", {}).get("value", 0.5))
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]

    def window_samples(self) -> int:
        """Samples per window: the training segment, or exactly enough for the model's frame count."""
        if self.settings.segment_samples is not None:
            return self.settings.segment_samples
        return (self.input_shape[1] - 1) * self.settings.hop_length

    def probabilities(self, y: np.ndarray) -> np.ndarray:
        pixels = db_to_pixels(log_mel(y, self.settings), self.settings).astype(np.float32)
        if pixels.shape != self.input_shape:
            raise SystemExit(f"error: window gives a {pixels.shape} image, the model wants {self.input_shape}")
        x = pixels[None, :, :, None]
        if self.inp["dtype"] != np.float32:  # full-integer model: quantise the pixels
            scale, zero = self.inp["quantization"]
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.rint(x / scale + zero), info.min, info.max).astype(self.inp["dtype"])
        self.interpreter.set_tensor(self.inp["index"], x)
        self.interpreter.invoke()
        p = self.interpreter.get_tensor(self.out["index"])[0]
        if self.out["dtype"] != np.float32:
            scale, zero = self.out["quantization"]
            p = (p.astype(np.float32) - zero) * scale
        return p


def channel_of(block: np.ndarray, channel: str) -> np.ndarray:
    if channel == "mean":
        return block.mean(axis=1)
    index = int(channel)
    if index >= block.shape[1]:
        raise SystemExit(f"error: channel {index} requested, the recording has {block.shape[1]} channel(s)")
    return block[:, index]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("wav", type=Path, help="recording to score (at the model's sample rate)")
    parser.add_argument("--model", type=Path, required=True, help=".tflite file with config.json and labels.json "
                                                                  "beside it")
    parser.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                        help="seconds between window starts (default: the training segment hop, else the window "
                             "length)")
    parser.add_argument("--threshold", type=float, default=None, help="flag level (default: the model's stored "
                                                                      "threshold)")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads")
    args = parser.parse_args(argv)

    model = Model(args.model, threads=args.threads)
    settings = model.settings
    threshold = model.threshold if args.threshold is None else args.threshold
    info = sf.info(str(args.wav))
    if info.samplerate != settings.sr:
        raise SystemExit(f"error: {args.wav} is at {info.samplerate} Hz, the model was trained at {settings.sr} Hz")
    window = model.window_samples()
    hop_s = args.hop or settings.segment_hop_seconds or window / settings.sr
    hop = max(1, int(round(hop_s * settings.sr)))
    if hop > window:
        raise SystemExit(f"error: --hop {hop_s} s is longer than the window ({window / settings.sr:.3f} s)")
    print(f"{args.wav.name}: {info.frames / info.samplerate:.1f} s at {info.samplerate} Hz, windows of "
          f"{window / settings.sr:.3f} s every {hop / settings.sr:.3f} s, threshold {threshold:.3f}, "
          f"model {args.model.name} ({np.dtype(model.inp['dtype']).name} input)")
    start = time.perf_counter()
    model.probabilities(np.zeros(window, dtype=np.float32))  # first call loads librosa's FFT/mel code
    print(f"warm-up {time.perf_counter() - start:.2f} s")
    print(f"{'time (s)':>15}  {'score':>6}  {'flag':8}  {'failure type':20}  ms")
    scores, times = [], []
    blocks = sf.blocks(str(args.wav), blocksize=window, overlap=window - hop, dtype="float32", always_2d=True)
    for i, block in enumerate(blocks):
        if len(block) < window:  # the tail shorter than one window
            break
        start = time.perf_counter()
        p = model.probabilities(channel_of(block, settings.channel))
        elapsed = time.perf_counter() - start
        score = float(np.clip(p[model.abnormal].sum(), 0.0, 1.0))
        failure = ""
        if model.abnormal.any():
            failure = model.classes[int(np.flatnonzero(model.abnormal)[p[model.abnormal].argmax()])]
        flag = "ABNORMAL" if score >= threshold else "ok"
        t0 = i * hop / settings.sr
        span = f"{t0:.2f}-{t0 + window / settings.sr:.2f}"
        print(f"{span:>15}  {score:6.3f}  {flag:8}  {failure if flag != 'ok' else '':20}  "
              f"{1000 * elapsed:.1f}", flush=True)
        scores.append(score)
        times.append(elapsed)
    if not scores:
        raise SystemExit(f"error: {args.wav} is shorter than one window ({window / settings.sr:.3f} s)")
    flagged = sum(s >= threshold for s in scores)
    print(f"{len(scores)} windows, {flagged} flagged, max score {max(scores):.3f}; "
          f"median {1000 * float(np.median(times)):.1f} ms per window (features + inference)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
