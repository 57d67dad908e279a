"""``spectro synth``: the built-in synthetic machine-sound dataset (MIMII layout).

Physically motivated signals, mixed with non-stationary factory background noise at a chosen SNR:

* **fan** — shaft rate with slow speed drift, blade-pass harmonics, aerodynamic broadband noise shaped
  by the housing's resonances. ``unbalance``: amplitude modulation at shaft rate and a stronger 1x
  tone; ``bearing``: periodic high-frequency impacts at the bearing defect rate (load-zone modulated).
* **pump** — vane-pass pulsation harmonics, flow noise through pipe resonances, modulated by the
  pulsation. ``leakage``: band-limited hiss with a slowly varying level; ``clogging``: pipe
  resonances shift up and sharpen, pulsation gets harsher.
* **slider** — strokes (smooth position profile) with a servo whine that follows the speed, rolling
  noise and end-stop impacts. ``rail_damage``: an impact each time the carriage passes the damaged
  position (so its time depends on speed and direction); ``no_grease``: a wandering stick-slip squeal.
* **valve** — open/close cycles with click transients and flow noise while open.
  ``contamination``: random crackle while open and a bouncing close; ``leakage``: hiss while closed.

Every clip varies (speed, phase, resonance jitter, level); machine ids differ in their base
parameters. Loudness does not give failures away: failure components are modest (their RMS is
0.25–0.45 of the normal machine sound) and each clip gets a random overall gain (±5 dB), so an RMS
threshold scores near chance. The SNR is defined on RMS: ``20 log10(rms(machine) / rms(noise))``.

Each clip's random numbers come from ``(seed, machine, id, label, snr, index)`` only, so the output is
the same bytes whatever ``--jobs`` is; the machine ids' base parameters come from
``(seed, machine, id)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from spectro.data.layout import NORMAL_LABEL
from spectro.errors import SpectroError
from spectro.paths import SYNTH_DIR

log = logging.getLogger(__name__)  # progress lines: spectro.cli shows them, the library never prints

FAILURES: dict[str, tuple[str, ...]] = {
    "fan": ("unbalance", "bearing"),
    "pump": ("leakage", "clogging"),
    "slider": ("rail_damage", "no_grease"),
    "valve": ("contamination", "leakage"),
}
MACHINES = tuple(FAILURES)
SPEC_NAME = "synth.json"

MACHINE_LEVEL_DB = -48.0  # RMS of a normal machine sound (dBFS) before per-id and per-clip gain
CLIP_GAIN_DB = 5.0  # per-clip overall gain, uniform in +-CLIP_GAIN_DB
ID_LEVEL_DB = 3.0  # per-id level offset, uniform in +-ID_LEVEL_DB
FAILURE_RATIO = (0.25, 0.45)  # RMS of an added failure component relative to the normal machine sound


@dataclasses.dataclass(frozen=True)
class SynthSettings:
    """What the synthetic dataset holds.

    Parameters
    ----------
    machines : tuple of str
        Machine types, some of ``fan pump slider valve``.
    ids : int
        Machine ids per type, named like MIMII's ``id_00, id_02, ...``.
    snrs : tuple of float
        Signal-to-noise ratios in dB (machine RMS vs background RMS); one folder each.
    clips_per_class : int
        Clips per failure label per (machine, id, snr).
    normal_clips : int or None
        Normal clips per (machine, id, snr); ``None``: as many as all failure clips together.
    seconds, sr, channels
        Clip length, sample rate, channels (1, or 8 like MIMII's microphone array).
    """

    machines: tuple[str, ...] = MACHINES
    ids: int = 2
    snrs: tuple[float, ...] = (6.0, 0.0, -6.0)
    clips_per_class: int = 10
    normal_clips: int | None = None
    seconds: float = 10.0
    sr: int = 16000
    channels: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "machines", tuple(self.machines))
        object.__setattr__(self, "snrs", tuple(float(s) for s in self.snrs))
        problems = []
        unknown = [m for m in self.machines if m not in FAILURES]
        if unknown or not self.machines:
            problems.append(f"machines must be some of {', '.join(MACHINES)}, got {list(self.machines)}")
        if len(set(self.machines)) != len(self.machines):
            problems.append(f"machines repeat: {list(self.machines)}")
        if not 1 <= self.ids <= 50:
            problems.append(f"ids must be 1..50, got {self.ids}")
        if not self.snrs or len(set(self.snrs)) != len(self.snrs) or not all(-40 <= s <= 40 for s in self.snrs):
            problems.append(f"snrs must be distinct values in -40..40 dB, got {list(self.snrs)}")
        if self.clips_per_class < 1:
            problems.append(f"clips_per_class must be >= 1, got {self.clips_per_class}")
        if self.normal_clips is not None and self.normal_clips < 1:
            problems.append(f"normal_clips must be >= 1, got {self.normal_clips}")
        if not 0.5 <= self.seconds <= 60:
            problems.append(f"seconds must be 0.5..60, got {self.seconds}")
        if not 8000 <= self.sr <= 48000:
            problems.append(f"sr must be 8000..48000 Hz, got {self.sr}")
        if self.channels not in (1, 8):
            problems.append(f"channels must be 1 or 8, got {self.channels}")
        if problems:
            raise SpectroError("invalid synth settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "machines": list(self.machines), "snrs": list(self.snrs)}

    def clips(self) -> list[ClipSpec]:
        """Every clip of the dataset, in a fixed order."""
        out = []
        for snr in self.snrs:
            for machine in self.machines:
                for i in range(self.ids):
                    machine_id = f"id_{2 * i:02d}"
                    failures = FAILURES[machine]
                    n_normal = self.normal_clips or self.clips_per_class * len(failures)
                    for label, n in [(NORMAL_LABEL, n_normal)] + [(f, self.clips_per_class) for f in failures]:
                        out.extend(ClipSpec(machine, machine_id, label, snr, index) for index in range(n))
        return out


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    machine: str
    machine_id: str
    label: str
    snr: float
    index: int

    @property
    def relpath(self) -> str:
        folder = f"{snr_name(self.snr)}_dB_{self.machine}"
        return f"{folder}/{self.machine}/{self.machine_id}/{self.label}/{self.index:08d}.wav"


@dataclasses.dataclass(frozen=True)
class ClipParts:
    """The two parts of one clip: the file holds ``gain * (machine + noise)`` (channel 0)."""

    machine: np.ndarray
    noise: np.ndarray
    gain: float

    @property
    def mixture(self) -> np.ndarray:
        return (self.gain * (self.machine + self.noise)).astype(np.float32)


def snr_name(snr: float) -> str:
    """Folder spelling of an SNR: ``6``, ``0``, ``-6``, ``1.5``."""
    return f"{snr:g}"


# -- random numbers ----------------------------------------------------------------------------------
def _rng(*key) -> np.random.Generator:
    digest = hashlib.sha256("|".join(str(k) for k in key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y), dtype=np.float64)) + 1e-12)


def _unit(y: np.ndarray) -> np.ndarray:
    return y / _rms(y)


# -- signal building blocks --------------------------------------------------------------------------
def _slow(rng: np.random.Generator, n: int, sr: int, rate_hz: float, *, db: float | None = None) -> np.ndarray:
    """A smooth random process (about unit std) that changes ``rate_hz`` times per second.

    With ``db``: a gain ``10 ** (db * process / 20)`` instead (computed on the knots, then interpolated).
    """
    step = max(1, int(sr / rate_hz))
    knots = rng.standard_normal(n // step + 2)
    if db is not None:
        knots = 10 ** (db * knots / 20)
    return np.interp(np.arange(n, dtype=np.float32), np.arange(len(knots)) * step, knots).astype(np.float32)


def _shaped_noise(rng: np.random.Generator, n: int, sr: int, gain_fn) -> np.ndarray:
    """Gaussian noise with amplitude spectrum ``gain_fn(freqs)``, unit RMS (drawn in the frequency domain)."""
    m = n // 2 + 1
    spec = rng.standard_normal(m, dtype=np.float32) + 1j * rng.standard_normal(m, dtype=np.float32)
    spec *= gain_fn(np.fft.rfftfreq(n, 1 / sr).astype(np.float32))
    return _unit(np.fft.irfft(spec, n))


def _bumps(f: np.ndarray, centers, widths, gains) -> np.ndarray:
    out = np.zeros_like(f)
    for c, w, g in zip(centers, widths, gains):
        out += g * np.exp(-0.5 * ((f - c) / w) ** 2)
    return out


def _tilt(f: np.ndarray, corner: float, slope: float) -> np.ndarray:
    """Amplitude falling as ``f**-slope`` above ``corner`` Hz (pink-ish for slope 0.5)."""
    return (1 + f / corner) ** -slope


def _band(f: np.ndarray, lo: float, hi: float, edge: float = 150.0) -> np.ndarray:
    """Band-pass amplitude with smooth edges."""
    return 1 / (1 + np.exp(-(f - lo) / edge)) / (1 + np.exp((f - hi) / edge))


def _phase(f0: float, n: int, sr: int, rng: np.random.Generator, *, drift: float, rate_hz: float = 0.5):
    """Instantaneous phase (radians, wrapped to 0..2pi) of a rotation at ``f0`` Hz with slow speed drift."""
    f = f0 * (1 + drift * _slow(rng, n, sr, rate_hz).astype(np.float64))
    return _wrap(2 * np.pi * np.cumsum(f) / sr + rng.uniform(0, 2 * np.pi))


def _wrap(phase: np.ndarray) -> np.ndarray:
    return np.mod(phase, 2 * np.pi).astype(np.float32)


def _partials(phase: np.ndarray, orders, amps, rng: np.random.Generator) -> np.ndarray:
    """Sum of ``amps[i] * sin(orders[i] * phase + random)``; ``phase`` wrapped, orders integer."""
    out = np.zeros(len(phase), dtype=np.float32)
    for k, a in zip(orders, amps):
        out += np.float32(a) * np.sin(np.float32(k) * phase + np.float32(rng.uniform(0, 2 * np.pi)))
    return out


def _ring(impulses: np.ndarray, sr: int, freq: float, decay_s: float) -> np.ndarray:
    """Each impulse rings a damped resonance at ``freq`` Hz (decaying sinusoid, e-folding ``decay_s``).

    Impulse trains are sparse, so the kernel is added at each impulse (overlap-add) rather than convolved.
    """
    n = len(impulses)
    length = min(n, int(8 * decay_s * sr) + 1)
    k = np.arange(length)
    kernel = (np.exp(-k / (decay_s * sr)) * np.sin(2 * np.pi * min(freq, 0.45 * sr) / sr * k)).astype(np.float32)
    out = np.zeros(n, dtype=np.float32)
    for i in np.flatnonzero(impulses):
        m = min(length, n - i)
        out[i:i + m] += impulses[i] * kernel[:m]
    return out


def _impulses(times: np.ndarray, amps: np.ndarray, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n)
    idx = np.rint(np.asarray(times) * sr).astype(np.int64)
    keep = (idx >= 0) & (idx < n)
    np.add.at(out, idx[keep], np.asarray(amps, dtype=float)[keep])
    return out


def _periodic_times(rate_hz: float, seconds: float, rng: np.random.Generator, jitter: float) -> np.ndarray:
    period = 1 / rate_hz
    t = np.arange(rng.uniform(0, period), seconds, period)
    return t + jitter * period * rng.standard_normal(len(t))


# -- per-id base parameters --------------------------------------------------------------------------
def machine_params(machine: str, machine_id: str, *, seed: int = 0) -> dict:
    """Base parameters of one machine id (speed, resonances, level, ...); stable for a seed."""
    if machine not in FAILURES:
        raise SpectroError(f"unknown machine {machine!r}: expected one of {', '.join(MACHINES)}")
    rng = _rng("id", seed, machine, machine_id)
    p: dict = {"level_db": rng.uniform(-ID_LEVEL_DB, ID_LEVEL_DB)}
    if machine == "fan":
        p.update(shaft_hz=rng.uniform(18, 30), blades=int(rng.integers(5, 10)), bearing_ratio=rng.uniform(3.0, 4.2),
                 bearing_res=rng.uniform(2500, 5000), res=rng.uniform(300, 2500, 3), tonal=rng.uniform(0.5, 0.9),
                 slope=rng.uniform(0.8, 1.0))
    elif machine == "pump":
        p.update(shaft_hz=rng.uniform(24, 48), vanes=int(rng.integers(5, 8)), res=rng.uniform(250, 1800, 3),
                 res_width=rng.uniform(40, 120), hiss_hz=rng.uniform(3000, 5500), hiss_bw=rng.uniform(600, 1200),
                 pulse=rng.uniform(0.5, 0.9))
    elif machine == "slider":
        p.update(period_s=rng.uniform(1.0, 2.0), whine_hz=rng.uniform(300, 700), roll=rng.uniform(800, 2500),
                 stop_res=rng.uniform(600, 1500), damage_pos=rng.uniform(0.25, 0.75),
                 damage_res=rng.uniform(2200, 4000), squeal_hz=rng.uniform(1800, 3500))
    else:  # valve
        p.update(period_s=rng.uniform(1.2, 2.5), open_frac=rng.uniform(0.3, 0.6), click_res=rng.uniform(1000, 4000),
                 body_res=rng.uniform(300, 900), flow=rng.uniform(600, 2500), hiss_hz=rng.uniform(2500, 5000))
    return p


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average (same length), via a cumulative sum."""
    c = np.concatenate([np.zeros(width // 2 + 1), np.cumsum(x, dtype=np.float64), np.full(width, x.sum())])
    idx = np.arange(len(x))
    return ((c[idx + width] - c[idx]) / width).astype(np.float32)


def _jit(rng: np.random.Generator, value: float, rel: float) -> float:
    return value * (1 + rng.uniform(-rel, rel))


# -- machines: each returns (normal part, failure part) ----------------------------------------------
def _fan(p, label, n, sr, rng):
    seconds = n / sr
    shaft = _jit(rng, p["shaft_hz"], 0.03)
    phase = _phase(shaft, n, sr, rng, drift=rng.uniform(0.003, 0.008))
    nb = p["blades"]
    tones = _partials(phase, [1, 2, 3, nb, 2 * nb, 3 * nb, 4 * nb],
                      np.array([0.1, 0.05, 0.03, 1.0, 0.5, 0.3, 0.15]) * rng.uniform(0.8, 1.2, 7), rng)
    res = [_jit(rng, c, 0.04) for c in p["res"]]
    slope = p["slope"]
    air = _shaped_noise(rng, n, sr, lambda f: _tilt(f, 150, slope) * (1 + _bumps(f, res, [120, 200, 300], [2, 1.5, 1])))
    air *= 1 + 0.15 * np.sin(nb * phase)
    normal = p["tonal"] * _unit(tones) + _unit(air)
    failure = np.zeros(n)
    if label == "unbalance":
        depth = rng.uniform(0.25, 0.5)
        one_x = np.sin(phase + rng.uniform(0, 2 * np.pi))
        failure = depth * normal * one_x + rng.uniform(0.2, 0.4) * _rms(normal) * one_x
    elif label == "bearing":
        rate = shaft * _jit(rng, p["bearing_ratio"], 0.01)
        times = _periodic_times(rate, seconds, rng, 0.01)
        at = np.clip((times * sr).astype(np.int64), 0, n - 1)
        load = 1 + 0.6 * np.sin(phase[at])  # load zone: modulated at shaft rate
        amps = load * rng.lognormal(0, 0.3, len(times))
        imp = _impulses(times, amps, n, sr)
        fc = _jit(rng, p["bearing_res"], 0.05)
        failure = _ring(imp, sr, fc, 0.0015) + 0.5 * _ring(imp, sr, 1.6 * fc, 0.001)
        failure = _unit(failure) * rng.uniform(*FAILURE_RATIO) * _rms(normal)
    return normal, failure


def _pump(p, label, n, sr, rng):
    shaft = _jit(rng, p["shaft_hz"], 0.03) * (0.97 if label == "clogging" else 1.0)
    phase = _phase(shaft, n, sr, rng, drift=rng.uniform(0.002, 0.006))
    vp = p["vanes"]
    decay = 0.55 if label != "clogging" else 0.8  # clogging: harsher, richer pulsation
    orders = [vp * k for k in range(1, 8)] + [1, 2]
    amps = np.array([decay ** k for k in range(7)] + [0.1, 0.08]) * rng.uniform(0.8, 1.2, 9)
    pulse = _partials(phase, orders, amps, rng)
    shift, width = (rng.uniform(1.12, 1.25), 0.5) if label == "clogging" else (1.0, 1.0)
    res = [_jit(rng, c, 0.03) * shift for c in p["res"]]
    w = p["res_width"] * width
    flow = _shaped_noise(rng, n, sr, lambda f: _tilt(f, 200, 0.9) * (0.3 + _bumps(f, res, [w, w, w], [3, 2, 1.5])))
    flow *= 1 + 0.3 * np.sin(vp * phase)
    normal = p["pulse"] * _unit(pulse) + _unit(flow)
    failure = np.zeros(n)
    if label == "leakage":
        hiss_hz = _jit(rng, p["hiss_hz"], 0.05)
        hiss = _shaped_noise(rng, n, sr, lambda f: _band(f, hiss_hz - p["hiss_bw"] / 2, hiss_hz + p["hiss_bw"] / 2))
        hiss *= np.clip(1 + 0.3 * _slow(rng, n, sr, 1.0), 0.2, None)
        failure = _unit(hiss) * rng.uniform(*FAILURE_RATIO) * _rms(normal)
    return normal, failure


def _stroke_profile(n, sr, period, rng):
    """Cycle phase (0..1), speed (0..1), position (0..1) and stroke-end times of a slide rail."""
    t = np.arange(n) / sr
    offset = rng.uniform(0, 1)
    u = (t / period + offset) % 1.0
    fwd = u < 0.4
    back = (u >= 0.5) & (u < 0.9)
    s = np.where(fwd, u / 0.4, np.where(back, (u - 0.5) / 0.4, 0.0))
    smooth = 3 * s**2 - 2 * s**3
    pos = np.where(fwd, smooth, np.where(back, 1 - smooth, np.where(u < 0.5, 1.0, 0.0)))
    speed = np.where(fwd | back, 6 * s * (1 - s) / 1.5, 0.0)
    cycles = np.arange(-1, n / sr / period + 2)
    ends = np.concatenate([(cycles + 0.4 - offset) * period, (cycles + 0.9 - offset) * period])
    return u, speed, pos, offset, ends


def _slider(p, label, n, sr, rng):
    seconds = n / sr
    period = _jit(rng, p["period_s"], 0.05)
    u, speed, pos, offset, ends = _stroke_profile(n, sr, period, rng)
    whine_f = _jit(rng, p["whine_hz"], 0.03) * (0.2 + speed)
    ph = _wrap(2 * np.pi * np.cumsum(whine_f, dtype=np.float64) / sr)
    whine = speed * (np.sin(ph) + 0.4 * np.sin(2 * ph + 1.0) + 0.2 * np.sin(3 * ph + 2.0))
    roll_c = _jit(rng, p["roll"], 0.05)
    roll = speed * _shaped_noise(rng, n, sr, lambda f: _tilt(f, 300, 0.8) * (0.4 + _bumps(f, [roll_c], [400], [2])))
    inside = (ends > 0) & (ends < seconds)
    ends = ends[inside] + 0.004 * rng.standard_normal(np.count_nonzero(inside))
    stops = _ring(_impulses(ends, rng.uniform(0.7, 1.3, len(ends)), n, sr), sr, _jit(rng, p["stop_res"], 0.05), 0.02)
    normal = 0.8 * _unit(whine) + _unit(roll) + 0.6 * _unit(stops)
    failure = np.zeros(n)
    if label == "rail_damage":
        grid = np.linspace(0, 1, 2001)
        smooth = 3 * grid**2 - 2 * grid**3
        x = p["damage_pos"]
        s_fwd, s_back = np.interp(x, smooth, grid), np.interp(1 - x, smooth, grid)
        cycles = np.arange(-1, seconds / period + 2)
        times = np.concatenate([(cycles + 0.4 * s_fwd - offset) * period,
                                (cycles + 0.5 + 0.4 * s_back - offset) * period])
        times = times[(times > 0) & (times < seconds)]
        sp = 6 * s_fwd * (1 - s_fwd) / 1.5  # the impact is harder at higher speed
        amps = sp * rng.lognormal(0, 0.25, len(times))
        imp = _impulses(times + 0.002 * rng.standard_normal(len(times)), amps, n, sr)
        fc = _jit(rng, p["damage_res"], 0.05)
        failure = _ring(imp, sr, fc, 0.004) + 0.6 * _ring(imp, sr, 0.55 * fc, 0.006)
        failure = _unit(failure) * rng.uniform(*FAILURE_RATIO) * _rms(normal)
    elif label == "no_grease":
        f = _jit(rng, p["squeal_hz"], 0.05) * (1 + 0.03 * _slow(rng, n, sr, 3.0))
        ph = _wrap(2 * np.pi * np.cumsum(f, dtype=np.float64) / sr)
        rough = np.clip(1 + 0.6 * _slow(rng, n, sr, 30.0), 0, None)
        squeal = speed * rough * (np.sin(ph) + 0.3 * np.sin(2 * ph))
        grit = speed * _shaped_noise(rng, n, sr, lambda fr: _band(fr, 4000, 7000, 300))
        failure = _unit(_unit(squeal) + 0.7 * _unit(grit)) * rng.uniform(*FAILURE_RATIO) * _rms(normal)
    return normal, failure


def _valve(p, label, n, sr, rng):
    seconds = n / sr
    period = _jit(rng, p["period_s"], 0.05)
    open_frac = _jit(rng, p["open_frac"], 0.1)
    starts = np.arange(-rng.uniform(0, period), seconds, period)
    opens = starts + 0.03 * rng.standard_normal(len(starts))
    closes = starts + open_frac * period + 0.03 * rng.standard_normal(len(starts))
    is_open = np.zeros(n, dtype=bool)
    for a, b in zip(opens, closes):
        is_open[max(0, int(a * sr)):max(0, int(b * sr))] = True
    env = _moving_average(is_open.astype(np.float32), int(0.01 * sr))  # 10 ms ramps
    click_f, body_f = _jit(rng, p["click_res"], 0.05), _jit(rng, p["body_res"], 0.05)
    closes_amp = rng.uniform(1.0, 1.5, len(closes))
    imp_open = _impulses(opens, rng.uniform(0.5, 0.8, len(opens)), n, sr)
    imp_close = _impulses(closes, closes_amp, n, sr)
    clicks = _ring(imp_open + imp_close, sr, click_f, 0.003) + 0.8 * _ring(imp_open + imp_close, sr, body_f, 0.012)
    flow_c = _jit(rng, p["flow"], 0.05)
    flow = env * _shaped_noise(rng, n, sr, lambda f: _tilt(f, 400, 0.8) * (0.3 + _bumps(f, [flow_c], [500], [2])))
    normal = _unit(clicks) + 0.5 * _unit(flow)
    failure = np.zeros(n)
    if label == "contamination":
        n_crackle = rng.poisson(rng.uniform(30, 80) * seconds)
        times = rng.uniform(0, seconds, n_crackle)
        times = times[is_open[np.minimum((times * sr).astype(int), n - 1)]]
        amps = rng.pareto(2.5, len(times)) * rng.choice([-1, 1], len(times))
        crackle = _ring(_impulses(times, amps, n, sr), sr, rng.uniform(3000, 6000), 0.0008)
        bounce = _impulses(closes + rng.uniform(0.015, 0.04), 0.4 * closes_amp, n, sr)
        bounce = _ring(bounce, sr, click_f, 0.003) + 0.8 * _ring(bounce, sr, body_f, 0.012)
        failure = _unit(crackle) + 0.5 * bounce / _rms(clicks)
        failure = _unit(failure) * rng.uniform(*FAILURE_RATIO) * _rms(normal)
    elif label == "leakage":
        hiss_hz = _jit(rng, p["hiss_hz"], 0.05)
        hiss = (1 - env) * _shaped_noise(rng, n, sr, lambda f: _band(f, hiss_hz - 700, hiss_hz + 700))
        failure = _unit(hiss) * rng.uniform(*FAILURE_RATIO) * _rms(normal)
    return normal, failure


_MACHINE_FN = {"fan": _fan, "pump": _pump, "slider": _slider, "valve": _valve}


def factory_noise(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Non-stationary factory background, unit RMS: shaped noise with slow level changes, hum of other
    machines and mains, and distant impacts."""
    seconds = n / sr
    bumps_c = rng.uniform(100, 3000, 3)
    slope = rng.uniform(0.6, 0.9)
    corner, bump_gain = rng.uniform(60, 120), rng.uniform(0.3, 1.2, 3)
    rumble, air = rng.uniform(1.5, 3.0), rng.uniform(0.03, 0.1)
    base = _shaped_noise(rng, n, sr,
                         lambda f: _tilt(f, corner, slope) * (1 + _bumps(f, bumps_c, bumps_c * 0.3, bump_gain))
                         + rumble * np.exp(-0.5 * (f / 45) ** 2)  # building rumble below ~60 Hz
                         + air * _band(f, 1500, 8000, 400))  # compressed air, tools: broadband hiss
    base *= _slow(rng, n, sr, 0.4, db=rng.uniform(1.5, 4))  # slow level changes of a few dB
    other = _phase(rng.uniform(60, 400), n, sr, rng, drift=0.005)
    hum = _partials(other, [1, 2, 3, 4], rng.uniform(0.2, 1, 4), rng)
    hum *= np.clip(1 + 0.5 * _slow(rng, n, sr, 0.2), 0, None)
    mains = _partials(_wrap(2 * np.pi * 50 * np.arange(n) / sr), [1, 2, 3], [1, 0.5, 0.3], rng)
    n_hits = rng.poisson(rng.uniform(0.3, 1.5) * seconds)
    hits = _impulses(rng.uniform(0, seconds, n_hits), rng.lognormal(0, 0.5, n_hits), n, sr)
    hits = _ring(hits, sr, rng.uniform(150, 1200), rng.uniform(0.04, 0.15))
    out = _unit(base) + rng.uniform(0.2, 0.5) * _unit(hum) + rng.uniform(0.05, 0.2) * _unit(mains)
    if n_hits:
        out += rng.uniform(0.3, 0.8) * hits / max(_rms(hits), 1e-12) * min(1.0, n_hits / (2 * seconds))
    return _unit(out)


def clip_parts(machine: str, machine_id: str, label: str, *, snr: float, index: int, seed: int = 0,
               seconds: float = 10.0, sr: int = 16000) -> ClipParts:
    """The machine and background parts of one clip, before 16-bit quantisation.

    ``rms(machine) / rms(noise)`` is exactly ``10 ** (snr / 20)``; the written file holds
    ``gain * (machine + noise)``.

    Raises
    ------
    SpectroError
        Unknown machine or a label that is neither ``normal`` nor one of the machine's failures.
    """
    if machine not in FAILURES:
        raise SpectroError(f"unknown machine {machine!r}: expected one of {', '.join(MACHINES)}")
    if label != NORMAL_LABEL and label not in FAILURES[machine]:
        raise SpectroError(f"unknown label {label!r} for {machine}: expected normal or one of "
                           f"{', '.join(FAILURES[machine])}")
    n = int(round(seconds * sr))
    key = (seed, machine, machine_id, label, snr_name(float(snr)), index)
    params = machine_params(machine, machine_id, seed=seed)
    normal, failure = _MACHINE_FN[machine](params, label, n, sr, _rng("machine", *key))
    scale = 1 / _rms(normal)
    machine_part = ((normal + failure) * scale).astype(np.float32)
    noise = factory_noise(n, sr, _rng("noise", *key))
    noise *= _rms(machine_part) / 10 ** (snr / 20)
    level_rng = _rng("level", *key)
    gain_db = MACHINE_LEVEL_DB + params["level_db"] + level_rng.uniform(-CLIP_GAIN_DB, CLIP_GAIN_DB)
    return ClipParts(machine=machine_part, noise=noise, gain=float(10 ** (gain_db / 20)))


def render_clip(spec: ClipSpec, *, seed: int = 0, seconds: float = 10.0, sr: int = 16000,
                channels: int = 1) -> np.ndarray:
    """One clip as float32, shape ``(n,)`` or ``(n, channels)``; channel 0 is the mono clip.

    Other channels hear the machine with small per-microphone delays and gains, and the background
    partly correlated with channel 0 (a rough model of MIMII's circular 8-microphone array).
    """
    parts = clip_parts(spec.machine, spec.machine_id, spec.label, snr=spec.snr, index=spec.index, seed=seed,
                       seconds=seconds, sr=sr)
    mono = parts.mixture
    if channels == 1:
        return mono
    rng = _rng("array", seed, spec.machine, spec.machine_id, spec.label, snr_name(spec.snr), spec.index)
    n = len(mono)
    out = np.empty((n, channels), dtype=np.float32)
    out[:, 0] = mono
    for c in range(1, channels):
        delay = int(rng.integers(0, 8))
        m = np.roll(parts.machine, delay)
        # the common background arrives a little later, plus a decorrelated part with the same spectrum
        near, far = int(rng.integers(0, 30)), int(rng.integers(sr // 10, sr // 2))
        noise = 0.8 * np.roll(parts.noise, near) + 0.6 * np.roll(parts.noise, far)
        out[:, c] = parts.gain * (rng.uniform(0.85, 1.15) * m + noise)
    return out


def _write_one(task) -> str:
    import soundfile as sf

    spec, out, seed, seconds, sr, channels = task
    y = render_clip(spec, seed=seed, seconds=seconds, sr=sr, channels=channels)
    path = Path(out) / spec.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(str(tmp), np.clip(y, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
    tmp.replace(path)
    return str(path)


def generate(out: str | Path = SYNTH_DIR, *, seed: int = 0, progress: bool = True, jobs: int = 0,
             force: bool = False, **sizes) -> list[Path]:
    """Write the synthetic dataset below ``out`` and return the paths of its WAV files.

    Parameters
    ----------
    out : path
        Dataset root; gets ``<snr>_dB_<machine>/<machine>/id_XX/<label>/NNNNNNNN.wav`` and ``synth.json``.
    seed : int
        Same seed, same settings: the same bytes (whatever ``jobs``).
    progress : bool
        Show a tqdm bar.
    jobs : int
        Worker processes; 0 means all cores.
    force : bool
        Replace a dataset that ``out`` holds from other settings (otherwise that is an error).
    **sizes
        Fields of :class:`SynthSettings`: ``machines, ids, snrs, clips_per_class, normal_clips, seconds,
        sr, channels``.

    Raises
    ------
    SpectroError
        Invalid settings, or ``out`` holds a synthetic dataset made with other settings (without ``force``).
    """
    from tqdm import tqdm

    try:
        settings = SynthSettings(**sizes)
    except TypeError as exc:
        raise SpectroError(f"unknown synth option: {exc}") from None
    out = Path(out)
    spec_doc = {"seed": int(seed), **settings.to_dict()}
    clips = settings.clips()
    paths = [out / c.relpath for c in clips]
    spec_path = out / SPEC_NAME
    if spec_path.is_file():
        try:
            old = json.loads(spec_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old == spec_doc and all(p.is_file() for p in paths):
            if progress:
                log.info(f"{out}: synthetic dataset already complete ({len(paths)} clips); nothing to do")
            return paths
        if old != spec_doc and old is not None:
            if not force:
                raise SpectroError(f"{out} holds a synthetic dataset made with other settings ({spec_path}); "
                                   "pass --force to replace it, or choose another --out")
            _remove_old(out, old)
    out.mkdir(parents=True, exist_ok=True)
    spec_path.unlink(missing_ok=True)  # written last: its presence means "complete"
    jobs = jobs or os.cpu_count() or 1
    tasks = [(c, str(out), int(seed), settings.seconds, settings.sr, settings.channels) for c in clips]
    bar = tqdm(total=len(tasks), desc="synth", unit="clip", disable=not progress)
    try:
        if jobs == 1:
            for task in tasks:
                _write_one(task)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for _ in pool.map(_write_one, tasks, chunksize=4):
                    bar.update()
    finally:
        bar.close()
    tmp = spec_path.with_name(f".{SPEC_NAME}.tmp")
    tmp.write_text(json.dumps(spec_doc, indent=2) + "\n")
    tmp.replace(spec_path)
    return paths


def _remove_old(out: Path, old: dict) -> None:
    """Remove the ``<snr>_dB_<machine>`` folders a previous synth run listed in its synth.json."""
    for snr in old.get("snrs", []):
        for machine in old.get("machines", []):
            if machine in FAILURES:
                folder = out / f"{snr_name(float(snr))}_dB_{machine}"
                if folder.is_dir():
                    shutil.rmtree(folder)


# -- CLI -------------------------------------------------------------------------------------------
