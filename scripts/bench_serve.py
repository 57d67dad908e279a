"""Benchmark section: ``spectro serve`` — requests per second and latency at 1 and 8 clients, start-up time.

``spectro serve`` runs as a subprocess on 127.0.0.1 (a free port). Clients are threads of this process, each with
its own keep-alive connection, sending 10 s WAVs to ``POST /api/classify`` (request bodies built beforehand).
Every answer is compared with the in-process :func:`spectro.inference.classify.classify_files` answer for the
same file, which is also the reference time per clip.
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

TITLE = "Serving: spectro serve over HTTP"

CLIENTS = (1, 8)
SECONDS = 10.0


def _run(ctx) -> tuple[Path, str]:
    """The train section's run, or one trained here as the export section trains its own."""
    run = ctx.state.get("synthetic_run")
    if run is not None:
        return Path(run), "the train section's synthetic run"
    import bench_export

    return Path(bench_export._own_run(ctx)), ("no run from the train section: trained one here as the export section "
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
                start = time.perf_counter()
                try:
                    conn.request("POST", "/api/classify", body, {"Content-Type": content_type})
                    answer = conn.getresponse()
                    data = answer.read()
                except (OSError, http.client.HTTPException) as exc:
                    failed.append(f"request {i}: {type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                elapsed = time.perf_counter() - start
                if answer.status != 200:
                    failed.append(f"request {i}: HTTP {answer.status} {data[:200]!r}")
                    continue
                if json.loads(data) != [expected[i % len(expected)]]:
                    wrong.append(i)
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


def run(ctx) -> str:
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
    ]
    return "\n".join(lines)
