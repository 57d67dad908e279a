"""Benchmark section: ``spectro serve`` — requests per second and latency at 1 and 8 clients, start-up time.

``spectro serve`` runs as a subprocess on 127.0.0.1 (a free port). Clients are threads of this process, each with
its own keep-alive connection, sending 10 s WAVs to ``POST /api/classify`` (request bodies built beforehand).
Every answer is compared with the in-process :func:`spectro.inference.classify.classify_files` answer for the
same file, which is also the reference time per clip.

The *hostile mix* (issue 44): 16 clients on the default int8 server, one request in ten a small upload whose header
declares an expensive file (a WAV at 1 Hz, a PNG 2,000,000 frames wide, a decompression bomb); the good requests'
median latency against the same 16 clients sending good requests only, measured just before on the same server,
and the server's and its workers' peak memory against what the limits allow.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

from bench.models import train_default_run

TITLE = "Serving: spectro serve over HTTP"

CLIENTS = (1, 8)
SECONDS = 10.0
HOSTILE_CLIENTS = 16
HOSTILE_EVERY = 10  # one request in ten


def _post(conn, port: int, body: bytes, content_type: str, *, timeout: float):
    """POST one body to /api/classify: ``(conn, answer, data, seconds)``; on a connection error a fresh connection,
    ``None`` and the error's text."""
    start = time.perf_counter()
    try:
        conn.request("POST", "/api/classify", body, {"Content-Type": content_type})
        answer = conn.getresponse()
        data = answer.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout), None, f"{type(exc).__name__}: {exc}", 0.0
    return conn, answer, data, time.perf_counter() - start


def _run(ctx) -> tuple[Path, str]:
    """The train section's run, or one trained here as the export section trains its own."""
    run = ctx.state.get("synthetic_run")
    if run is not None:
        return Path(run), "the train section's synthetic run"
    return Path(train_default_run(ctx)), ("no run from the train section: trained one here as the export section "
                                          f"does{' (quick sizes)' if ctx.quick else ''}")


def _int8_file(ctx, run: Path) -> tuple[Path, str]:
    """The run's int8 ``.tflite``: the export section's, else exported here (written unverified if refused)."""
    from spectro.runs import TFLITE_NAMES

    for folder, note in ((ctx.work / "export" / run.name, "the export section's"), (run, "the run's")):
        if (folder / TFLITE_NAMES["int8"]).is_file() and (folder / "config.json").is_file():
            return folder / TFLITE_NAMES["int8"], note
    from spectro.errors import SpectroWarning
    from spectro.export.tflite import ExportSettings, export_run

    out = ctx.work / "serve_export" / run.name
    shutil.rmtree(out, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectroWarning)
        [result] = export_run(run, ExportSettings(quantize=("int8",), latency_runs=1), out=out, progress=False)
    if result.path is not None:
        return result.path, "exported here (verified)"
    from spectro.export.calibration import representative_images
    from spectro.export.tflite import convert
    from spectro.model.backbones import load_keras_model
    from spectro.runs import load_config

    config = load_config(run)
    images = representative_images(run, 200, input_shape=tuple(config["input_shape"]),
                                   image_size=config["model"]["image_size"], seed=0)
    path = out / TFLITE_NAMES["int8"]
    path.write_bytes(convert(load_keras_model(run / "model.keras"), "int8", images))
    return path, "exported here (missed the verification bounds, written anyway: speed does not depend on it)"


def _recordings(ctx, run: Path, n: int) -> list[Path]:
    """``n`` distinct 10 s synthetic recordings of the run's machines and labels."""
    import soundfile as sf

    from spectro.data.synth import ClipSpec, render_clip
    from spectro.model.labels import LabelSpace

    classes = LabelSpace.load(run).classes
    folder = ctx.work / "serve_clips"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        machine, label = classes[i % len(classes)].split("/", 1)
        y = render_clip(ClipSpec(machine, "id_00", label, snr=6.0, index=1000 + i), seed=0, seconds=SECONDS)
        path = folder / f"{i:02d}-{machine}-{label}.wav"
        sf.write(str(path), y, 16000, subtype="PCM_16")
        paths.append(path)
    return paths


def _multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, timeout: float = 2.0) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {answer.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


class _Server:
    """``spectro serve`` as a subprocess; measures the time from launch to the first /api/health answer."""

    def __init__(self, model: Path, log: Path, *, threads: bool = False):
        self.port = _free_port()
        self.log = log
        command = [sys.executable, "-m", "spectro", "serve", "--model", str(model), "--port", str(self.port)]
        if threads:  # the same server with worker threads instead of processes: serve(processes=False)
            command = [sys.executable, "-c", "import sys; from spectro.serving.app import serve; "
                       "serve(sys.argv[1], port=int(sys.argv[2]), processes=False)", str(model), str(self.port)]
        started = time.perf_counter()
        with log.open("w") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        deadline = started + 120
        while True:
            try:
                self.health = _get(self.port, "/api/health", timeout=1.0)
                break
            except (OSError, RuntimeError):
                if self.process.poll() is not None or time.perf_counter() > deadline:
                    self.stop()
                    raise RuntimeError(f"spectro serve did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.005)
        self.startup_s = time.perf_counter() - started

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _tree_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and every process below it (the server and its worker processes)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    tree, total, grew = {pid}, 0, True
    while grew:
        grew = False
        for p, (parent, _) in stats.items():
            if parent in tree and p not in tree:
                tree.add(p)
                grew = True
    for p in tree:
        total += stats.get(p, (0, 0))[1]
    return total


def _cpu(pid: int) -> tuple[float, float, float]:
    """CPU seconds so far: the whole machine (busy time), the server with its workers, this process."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4)) / tick  # all but idle, iowait
        server = _tree_ticks(pid) / tick
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan"), float("nan")
    own = os.times()
    return busy, server, own.user + own.system


def _wait_quiet(max_wait: float, *, limit: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until the machine's other processes use under ``limit`` cores; the last
    figure seen."""
    deadline = time.perf_counter() + max_wait
    while True:
        before, _, own_before = _cpu(os.getpid())
        time.sleep(1.0)
        after, _, own_after = _cpu(os.getpid())
        load = (after - before) - (own_after - own_before)
        if load < limit or time.perf_counter() > deadline or load != load:
            return load
        time.sleep(2.0)


def _answered(i: int, status: int, data: bytes, expected: list[dict], *, failed: list, wrong: list) -> bool:
    """Judge good request ``i``'s answer: not HTTP 200 is a failure (``False``); a 200 whose verdict is not the
    in-process one for its clip is also recorded in ``wrong``; ``True`` for every 200 (its latency counts)."""
    if status != 200:
        failed.append(f"request {i}: HTTP {status} {data[:200]!r}")
        return False
    if json.loads(data) != [expected[i % len(expected)]]:
        wrong.append(i)
    return True


def _load(port: int, bodies: list[tuple[bytes, str]], expected: list[dict], *, clients: int, requests: int,
          max_seconds: float, pid: int) -> dict:
    """``requests`` requests from ``clients`` threads (each its own connection), at most ``max_seconds``; with the
    cores the server, these clients and every other process on the machine used meanwhile."""
    lock = threading.Lock()
    next_index = [0]
    latencies, wrong, failed = [], [], []
    stop_at = time.perf_counter() + max_seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while time.perf_counter() < stop_at:
                with lock:
                    i = next_index[0]
                    if i >= requests:
                        return
                    next_index[0] += 1
                body, content_type = bodies[i % len(bodies)]
                conn, answer, data, elapsed = _post(conn, port, body, content_type, timeout=60)
                if answer is None:
                    failed.append(f"request {i}: {data}")
                    continue
                if _answered(i, answer.status, data, expected, failed=failed, wrong=wrong):
                    with lock:
                        latencies.append(elapsed)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    cpu_before = _cpu(pid)
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 120)
    wall = time.perf_counter() - started
    busy, server, own = (b - a for a, b in zip(cpu_before, _cpu(pid)))
    ms = sorted(1000 * x for x in latencies)
    return {"clients": clients, "sent": next_index[0], "answered": len(latencies), "wrong": len(wrong),
            "failed": failed, "wall_s": wall, "rps": len(latencies) / wall if wall else 0.0,
            "server_cores": server / wall, "client_cores": own / wall,
            "other_cores": max(0.0, busy - server - own) / wall,
            "p50_ms": statistics.median(ms) if ms else float("nan"),
            "p95_ms": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))] if ms else float("nan")}


def _paired_overhead_ms(port: int, bodies: list[tuple[bytes, str]], classify, n: int) -> float:
    """Median over ``n`` pairs of (one request's latency at 1 client) − (the same clip through ``classify``, in
    this process, right after): the server's overhead with the machine's drift in speed paired out."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    differences = []
    try:
        for i in range(n):
            body, content_type = bodies[i % len(bodies)]
            start = time.perf_counter()
            conn.request("POST", "/api/classify", body, {"Content-Type": content_type})
            conn.getresponse().read()
            served = time.perf_counter() - start
            start = time.perf_counter()
            classify(i % len(bodies))
            differences.append(served - (time.perf_counter() - start))
    finally:
        conn.close()
    return 1000 * statistics.median(differences)


def _in_process_ms(model: Path, paths: list[Path], repeats: int) -> tuple[float, list[dict], object]:
    """Median in-process ``classify_files`` time per clip (one clip per call, as one request), the answers, and
    a function classifying clip ``i`` the same way."""
    from spectro.inference.classify import classify_files
    from spectro.inference.predictors import load_predictor
    from spectro.runs import threshold

    predictor = load_predictor(model)
    thr = threshold(predictor.config)
    answers = [classify_files([p], predictor, threshold=thr)[0] for p in paths]  # also warms up
    times = []
    for _ in range(repeats):
        for p in paths:
            start = time.perf_counter()
            classify_files([p], predictor, threshold=thr)
            times.append(time.perf_counter() - start)
    for answer, p in zip(answers, paths):
        answer["path"] = p.name  # the server shows the client's file name
    return 1000 * statistics.median(times), answers, lambda i: classify_files([paths[i]], predictor, threshold=thr)


# -- the hostile mix ---------------------------------------------------------------------------------------------

def _png(width: int, height: int, text: dict[str, str], idat: bytes | None = None) -> bytes:
    """An 8-bit grayscale PNG of zeros compressed row by row (never held as pixels); ``idat`` replaces the data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    if idat is None:
        compressor, row = zlib.compressobj(9), bytes(width + 1)
        idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"".join([b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)),
                     *(chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1")) for k, v in text.items()),
                     chunk(b"IDAT", idat), chunk(b"IEND", b"")])


def _hostile_files(settings) -> dict[str, bytes]:
    """Small uploads that cost minutes and gigabytes where the header is not checked first (issue 44's probe)."""
    import io
    import struct

    import numpy as np
    import soundfile as sf

    from spectro.features import png as spectro_png

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(40_000, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    one_hz = bytearray(buffer.getvalue())  # 80 KB...
    one_hz[24:32] = struct.pack("<II", 1, 2)  # ...declared at 1 Hz: 40,000 s once resampled
    text = {spectro_png.KEY_SETTINGS: settings.to_json(), spectro_png.KEY_HASH: settings.hash(),
            spectro_png.KEY_SOURCE: "", spectro_png.KEY_SEGMENT: "0"}
    if settings.modulation_hz is not None:
        from spectro.features.modulation import encode

        text[spectro_png.KEY_MODULATION] = encode(np.zeros(settings.modulation_hz))
    import zlib

    return {"1 Hz WAV": bytes(one_hz), f"{settings.n_mels} x 2,000,000 PNG": _png(2_000_000, settings.n_mels, text),
            "decompression bomb PNG": _png(30_000, 30_000, text, idat=zlib.compress(bytes(1000)))}


def _multipart_bytes(name: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n".encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every process below it (shared pages counted in each: an upper figure)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grew = {pid}, True
    while grew:
        grew = False
        for p, parent in parents.items():
            if parent in tree and p not in tree:
                tree.add(p)
                grew = True
    total = 0
    for p in tree:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


class _PeakMemory:
    """Samples :func:`_tree_rss` every 20 ms in a thread while in use; ``peak`` in bytes."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(self.pid))
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def _mixed_load(port: int, bodies: list[tuple[bytes, str]], expected: list[dict], hostile: list[tuple[str, bytes, str]],
                *, clients: int, requests: int, every: int | None) -> dict:
    """``requests`` requests from ``clients`` threads (each its own keep-alive connection); with ``every``, request
    ``i`` with ``i % every == every - 1`` is the next hostile upload. Good answers are compared with ``expected``,
    hostile ones must be a 4xx JSON error."""
    lock = threading.Lock()
    next_index, good_ms, wrong, failed, refused, hostile_ms = [0], [], [], [], {}, []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while True:
                with lock:
                    i = next_index[0]
                    if i >= requests:
                        return
                    next_index[0] += 1
                is_hostile = every is not None and i % every == every - 1
                if is_hostile:
                    name, body, content_type = hostile[(i // every) % len(hostile)]
                else:
                    body, content_type = bodies[i % len(bodies)]
                conn, answer, data, elapsed = _post(conn, port, body, content_type, timeout=120)
                if answer is None:
                    failed.append(f"request {i}: {data}")
                    continue
                if answer.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                if is_hostile:
                    error = json.loads(data).get("error") if data.startswith(b"{") else None
                    if 400 <= answer.status < 500 and isinstance(error, str):
                        with lock:
                            refused[name] = (answer.status, error)
                            hostile_ms.append(1000 * elapsed)
                    else:
                        failed.append(f"hostile {name}: HTTP {answer.status} {data[:200]!r}")
                    continue
                if _answered(i, answer.status, data, expected, failed=failed, wrong=wrong):
                    with lock:
                        good_ms.append(1000 * elapsed)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    n_hostile = sum(1 for i in range(requests) if every is not None and i % every == every - 1)
    return {"sent": requests, "good_sent": requests - n_hostile, "good": len(good_ms), "hostile_sent": n_hostile,
            "hostile_refused": len(hostile_ms), "wrong": len(wrong), "failed": failed, "refused": refused,
            "wall_s": time.perf_counter() - started, "p50_ms": statistics.median(good_ms) if good_ms else float("nan"),
            "hostile_max_ms": max(hostile_ms) if hostile_ms else float("nan")}


def _hostile_mix(ctx, model: Path, bodies: list[tuple[bytes, str]], expected: list[dict]) -> list[str]:
    """The hostile-mix lines of the section (see the module's docstring)."""
    from spectro.features.limits import InputLimits
    from spectro.runs import feature_settings, load_config
    from spectro.serving.service import ServeLimits

    settings = feature_settings(load_config(model.parent))
    files = _hostile_files(settings)
    hostile = [(name, *_multipart_bytes(name.replace(" ", "_") + (".wav" if "WAV" in name else ".png"), content))
               for name, content in files.items()]
    sizes = ", ".join(f"{name} ({len(content) / 1e3:.0f} kB)" for name, content in files.items())
    requests = 80 if ctx.quick else 320
    server = _Server(model, ctx.work / "serve_hostile.log")
    try:
        workers = int(server.health["workers"])
        one = _mixed_load(server.port, bodies, expected, hostile, clients=1, requests=len(bodies), every=None)
        idle = _tree_rss(server.process.pid)
        _wait_quiet(30 if ctx.quick else 120)
        with _PeakMemory(server.process.pid) as good_memory:
            good = _mixed_load(server.port, bodies, expected, hostile, clients=HOSTILE_CLIENTS, requests=requests,
                               every=None)
        _wait_quiet(30 if ctx.quick else 120)
        with _PeakMemory(server.process.pid) as mixed_memory:
            mixed = _mixed_load(server.port, bodies, expected, hostile, clients=HOSTILE_CLIENTS, requests=requests,
                                every=HOSTILE_EVERY)
    finally:
        server.stop()
    limits, inputs = ServeLimits(), InputLimits()
    # what one request may make a worker hold, for 16-bit WAVs as here: S samples, S <= the upload limit / 2 bytes
    # and <= max_seconds at the model's rate; per sample 2 B (int16) + 4 B (its float32 channel), the STFT's
    # n_fft/2+1 complex64 bins per hop (8 B each) and their float32 power (4 B each)
    samples = min(limits.max_bytes // 2, int(inputs.max_seconds * settings.sr))
    per_sample = 6 + (settings.n_fft // 2 + 1) * 12 / settings.hop_length
    per_worker = samples * per_sample
    bound = idle + workers * per_worker
    lost = sum(r["good_sent"] - r["good"] for r in (one, good, mixed)) + mixed["hostile_sent"] - mixed[
        "hostile_refused"]
    wrong = sum(r["wrong"] for r in (one, good, mixed))
    ratio = mixed["p50_ms"] / good["p50_ms"] if good["p50_ms"] else float("nan")
    peak = max(good_memory.peak, mixed_memory.peak)
    mib = 2**20
    refused = "; ".join(f"{name}: HTTP {status} \"{error[:90]}…\"" for name, (status, error) in
                        sorted(mixed["refused"].items()))
    lines = [
        f"Hostile mix (issue 44): the `.tflite` int8 server with its default limits ({limits.max_upload_mb:g} MiB, "
        f"{limits.max_files} files, {inputs.max_seconds:g} s, {inputs.min_sr}–{inputs.max_sr} Hz, "
        f"≤ {inputs.max_channels} channels, --timeout {limits.timeout:g} s) and {workers} workers; "
        f"{HOSTILE_CLIENTS} clients, {requests} requests, one in {HOSTILE_EVERY} a hostile upload taken in turn "
        f"from: {sizes}."
        " *Unloaded* is the same server and clients sending good requests only, just before.",
        "",
        "| load | good answered/sent | hostile refused (4xx)/sent | good p50 latency (ms) | wrong answers | "
        "peak memory, server + workers (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| 1 client, good only | {one['good']}/{one['good_sent']} | – | {one['p50_ms']:.1f} | {one['wrong']} | – |",
        f"| {HOSTILE_CLIENTS} clients, good only (unloaded) | {good['good']}/{good['good_sent']} | – | "
        f"{good['p50_ms']:.1f} | {good['wrong']} | {good_memory.peak / mib:.0f} |",
        f"| {HOSTILE_CLIENTS} clients, 1 in {HOSTILE_EVERY} hostile | {mixed['good']}/{mixed['good_sent']} | "
        f"{mixed['hostile_refused']}/{mixed['hostile_sent']} | {mixed['p50_ms']:.1f} | {mixed['wrong']} | "
        f"{mixed_memory.peak / mib:.0f} |",
        "",
        f"- good requests' median latency under the hostile mix / unloaded: {ratio:.2f}× (target ≤ 2×) → "
        f"{'met' if ratio <= 2 else 'MISSED'}; lost {lost}, answered with another's result {wrong} (target 0, 0) → "
        f"{'met' if lost == 0 and wrong == 0 else 'MISSED'}; slowest refusal of a hostile upload "
        f"{mixed['hostile_max_ms']:.0f} ms",
        f"- peak memory of the server and its workers {peak / mib:.0f} MiB; bound from the limits "
        f"{bound / mib:.0f} MiB "
        f"→ {'met' if peak <= bound else 'MISSED'}. The bound: the idle server and workers ({idle / mib:.0f} MiB, "
        f"measured after the first requests) + {workers} workers × what one request may make a worker hold. For "
        f"16-bit WAVs like these that is S × {per_sample:.1f} B, S = min(upload limit / 2 B, --max-seconds × "
        f"{settings.sr} Hz) = {samples:,} samples: 2 B (int16) + 4 B (float32 channel) per sample, and "
        f"{settings.n_fft // 2 + 1} STFT bins per {settings.hop_length}-sample hop at 8 B (complex64) + 4 B (power) "
        f"= {per_worker / mib:.0f} MiB per worker (issue 44 measured the 1 Hz WAV, unchecked, at about 5 GB in one "
        "worker). The upload limit bounds the bytes, not the decoded length, of compressed FLAC/OGG: for "
        "those the header's duration × rate × channels is what the limits bound.",
        f"- refusals: {refused}",
    ]
    if mixed["failed"] or good["failed"] or one["failed"]:
        failures = mixed["failed"] + good["failed"] + one["failed"]
        lines.append(f"- {len(failures)} failed, e.g. {failures[0][:300]}")
    return lines


def run(ctx) -> str:
    """Start ``spectro serve`` on the train section's run (or one trained here) and measure start-up, requests per
    second and latency at 1 and 8 clients against in-process classification, then the hostile mix. Returns the
    section's Markdown."""
    from spectro.runs import MODEL_NAME, load_config

    run_dir, run_note = _run(ctx)
    int8, int8_note = _int8_file(ctx, run_dir)
    n_clips = 8 if ctx.quick else 16
    paths = _recordings(ctx, run_dir, n_clips)
    bodies = [_multipart(p) for p in paths]
    requests = {1: 30, 8: 80} if ctx.quick else {1: 100, 8: 300}
    max_seconds = 60 if ctx.quick else 120
    config = load_config(run_dir)
    info = config.get("model", {})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    rows, checks, notes, failures = [], [], [], []
    variants = [("`.tflite` int8", int8, False), ("`.tflite` int8, worker threads (not the default)", int8, True),
                ("`.keras`", run_dir / MODEL_NAME, False), ("`.keras`, worker threads (not the default)",
                                                            run_dir / MODEL_NAME, True)]
    reference: dict[Path, tuple[float, list[dict], object]] = {}
    for label, model, threads in variants:
        if model not in reference:
            _wait_quiet(30 if ctx.quick else 120)
            reference[model] = _in_process_ms(model, paths, repeats=2 if ctx.quick else 3)
        in_ms, expected, in_process = reference[model]
        distinct = len({json.dumps({k: v for k, v in e.items() if k != "path"}, sort_keys=True) for e in expected})
        log = ctx.work / f"serve_{model.suffix.lstrip('.')}{'_threads' if threads else ''}.log"
        server = _Server(model, log, threads=threads)
        try:
            first = time.perf_counter()
            first_r = _load(server.port, bodies[:1], expected[:1], clients=1, requests=1, max_seconds=60,
                            pid=server.process.pid)
            first_answer_s = server.startup_s + time.perf_counter() - first  # launch to the first verdict
            first = time.perf_counter()
            warm = _load(server.port, bodies, expected, clients=1, requests=len(bodies), max_seconds=60,
                         pid=server.process.pid)
            first_s = time.perf_counter() - first
            results = {}
            for c in CLIENTS:
                _wait_quiet(30 if ctx.quick else 120)  # other jobs on the machine would take cores from the server
                results[c] = _load(server.port, bodies, expected, clients=c, requests=requests[c],
                                   max_seconds=max_seconds, pid=server.process.pid)
            _wait_quiet(30 if ctx.quick else 120)
            paired = _paired_overhead_ms(server.port, bodies, in_process, n=requests[1])
        finally:
            server.stop()
        every = (first_r, warm, *results.values())
        failures += [(label, r) for r in every if r["failed"]]
        one, many = results[1], results[8]
        ratio = many["rps"] / one["rps"] if one["rps"] else float("nan")
        lost = sum(r["sent"] - r["answered"] for r in every)
        wrong = sum(r["wrong"] for r in every)
        for c in CLIENTS:
            r = results[c]
            rows.append(f"| {label} | {c} | {r['answered']}/{r['sent']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
                        f"{r['p95_ms']:.1f} | {in_ms:.1f} | {r['p50_ms'] - in_ms:+.1f} | {r['wrong']} | "
                        f"{r['server_cores']:.2f} / {r['client_cores']:.2f} / {r['other_cores']:.2f} |")
        if threads:
            notes.append(f"{label}: 8 clients / 1 client throughput {ratio:.2f}×, overhead {paired:+.1f} ms "
                         "paired")
            continue
        checks.append(f"- {label}: 8 clients / 1 client throughput {ratio:.2f}× (target ≥ 1.6×) → "
                      f"{'met' if ratio >= 1.6 else 'MISSED'}; overhead over in-process `classify` at 1 client "
                      f"{paired:+.1f} ms, paired (table: {one['p50_ms'] - in_ms:+.1f} ms) (target < 5 ms) → "
                      f"{'met' if paired < 5 else 'MISSED'}; start-up to the "
                      f"first `/api/health` answer {server.startup_s:.2f} s"
                      + (f" (target < 1 s → {'met' if server.startup_s < 1 else 'MISSED'})"
                         if model.suffix == ".tflite" else "")
                      + f", to the first verdict {first_answer_s:.2f} s, then {len(bodies)} requests (warm-up) in "
                      f"{first_s:.2f} s; requests lost {lost}, answered "
                      f"with another's result {wrong} → {'met' if lost == 0 and wrong == 0 else 'MISSED'}")
        notes.append(f"{label}: {distinct} distinct answers among the {len(paths)} clips")
    for label, r in failures:
        notes.append(f"{label}, {r['clients']} client(s): {len(r['failed'])} failed, e.g. {r['failed'][0]}")
    _wait_quiet(30 if ctx.quick else 120)
    hostile_lines = _hostile_mix(ctx, int8, bodies, reference[int8][1])

    lines = [
        f"Run `{run_dir.name}` ({run_note}): {info.get('backbone', '?')} α {info.get('alpha', '?')}, "
        f"{info.get('image_size', '?')} px, images {tuple(config['input_shape'])}; int8 file: {int8_note}. "
        f"{len(paths)} distinct synthetic {SECONDS:g} s WAVs (16 kHz, 16-bit, {bodies[0][0].__len__() / 1e3:.0f} kB "
        f"per request), sent round-robin; {cores} cores shared by the server and the client threads.",
        "",
        "Server: `spectro serve --model FILE` as a subprocess on 127.0.0.1, with its default workers (one per "
        "core, each a process: a single-threaded LiteRT interpreter, or Keras with TensorFlow on cores / workers "
        "threads); the *worker threads* rows are the same server with `serve(processes=False)` (one interpreter "
        "per thread; one Keras model shared by the threads, TensorFlow on every core), to show why the default is "
        "processes. In-process: "
        "`classify_files([clip], predictor)` in this process, one clip per call as one request "
        "makes, median over the clips; its answers are what every response is checked against. The overhead "
        f"target is judged *paired*: after the load runs, each of {requests[1]} requests at 1 client is followed "
        "at once by the same clip in process, and the median difference is taken (the table's column subtracts "
        "two medians measured minutes apart, so it carries the machine's drift in speed). Cores used: CPU "
        "seconds per wall second while the clients ran, from /proc (the server with its worker processes); "
        "*other processes* is everything else on the "
        "machine (a figure well above 0 means the measurement shared the cores).",
        "",
        "| model | clients | answered/sent | requests/s | p50 latency (ms) | p95 latency (ms) | in-process "
        "classify (ms/clip) | p50 − in-process (ms) | wrong answers | cores used: server / clients / other "
        "processes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Targets of issue 20:",
        "",
        *checks,
        "",
        "Notes: " + "; ".join(notes) + ".",
        "",
        *hostile_lines,
    ]
    return "\n".join(lines)
