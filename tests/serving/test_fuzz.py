"""Property-based fuzzing of ``POST /api/classify`` with Hypothesis: arbitrary bytes as files, mutated WAVs and
PNGs, headers declaring values within and beyond the limits, hostile multipart headers and file names, and more
files than a request may carry. The property: a 200 with one verdict per file, in order, or a 4xx with a one-line
JSON ``{"error"}``; never a 500, never longer than the deadline. Bounded and derandomized: seconds, the same
examples every run."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from conftest import tone_signal
from test_limits import hostile_files, png_bytes, spectro_text, wav_bytes

pytestmark = pytest.mark.slow

hypothesis = pytest.importorskip("hypothesis")
fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spectro.serving.app import create_app  # noqa: E402

DEADLINE = 20.0  # the app's --timeout: no answer may take longer
MAX_FILES = 4
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def client(tiny_exports):
    with TestClient(create_app(tiny_exports["files"]["int8"], workers=1, timeout=DEADLINE, max_files=MAX_FILES,
                               max_seconds=30)) as client:
        yield client


@pytest.fixture(scope="module")
def seeds(tiny_images) -> dict[str, bytes]:
    """Valid files to mutate and hostile ones to mix in."""
    text = spectro_text(tiny_images)
    return {"wav": wav_bytes(tone_signal("normal", 1.0, seed=7)),
            "png": (tiny_images / "fan/bearing/6dB_id_00_00000000.png").read_bytes(),
            "wide png": png_bytes(1000, 32, text),
            **{name: content for name, (content, _) in hostile_files(tiny_images).items()}}


def _wav_with_header(seed: bytes, sr: int, channels: int, bits: int, data_size: int | None) -> bytes:
    """``seed`` (a 16-bit mono WAV) with its fmt chunk and data size declaring other values."""
    out = bytearray(seed)
    out[22:24] = struct.pack("<H", channels % 65536)
    out[24:28] = struct.pack("<I", sr % 2**32)
    out[34:36] = struct.pack("<H", bits % 65536)
    if data_size is not None:
        out[40:44] = struct.pack("<I", data_size % 2**32)
    return bytes(out)


def _mutated(seed: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(seed)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


@st.composite
def contents(draw, seeds: dict[str, bytes]) -> bytes:
    kind = draw(st.sampled_from(["bytes", "magic", "wav header", "mutated", "hostile"]))
    if kind == "bytes":
        return draw(st.binary(max_size=3000))
    if kind == "magic":  # the first bytes of a known format, then anything
        magic = draw(st.sampled_from([b"RIFF\x00\x00\x00\x00WAVE", b"RF64\xff\xff\xff\xffWAVE", b"fLaC", b"OggS",
                                      b"\x89PNG\r\n\x1a\n"]))
        return magic + draw(st.binary(max_size=2000))
    if kind == "wav header":  # sample rates, channels and lengths within and beyond the limits
        sr = draw(st.one_of(st.sampled_from([0, 1, 999, 1000, 16000, 384000, 384001, 2**31, 2**32 - 1]),
                            st.integers(0, 2**32 - 1)))
        channels = draw(st.one_of(st.sampled_from([0, 1, 2, 64, 65, 65535]), st.integers(0, 65535)))
        bits = draw(st.sampled_from([0, 8, 16, 24, 32, 7, 64]))
        size = draw(st.one_of(st.none(), st.integers(0, 2**32 - 1)))
        return _wav_with_header(seeds["wav"], sr, channels, bits, size)
    if kind == "mutated":
        seed = seeds[draw(st.sampled_from(["wav", "png", "wide png"]))]
        edits = draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8))
        cut = draw(st.one_of(st.none(), st.integers(0, len(seed))))
        return _mutated(seed, edits, cut)
    return seeds[draw(st.sampled_from(sorted(k for k in seeds if k not in ("wav", "png"))))]


names = st.one_of(st.text(max_size=300), st.sampled_from(["../../etc/passwd", "a\x00b.wav", "<script>.png", "",
                                                          "x" * 5000, "C:\\x\\y.wav", "\"quoted\".wav"]))


def _quote(name: str) -> bytes:
    return name.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8", "surrogatepass")


@st.composite
def parts(draw, seeds: dict[str, bytes]) -> tuple[bytes, bool]:
    """One multipart part: (its bytes, whether it is a file in the field 'file')."""
    content = draw(contents(seeds))
    field = draw(st.sampled_from(["file", "file", "file", "other", "", "FILE"]))
    headers = [b'Content-Disposition: form-data; name="' + field.encode() + b'"; filename="'
               + _quote(draw(names)) + b'"']
    if draw(st.booleans()):
        headers.append(b"Content-Type: " + draw(st.sampled_from([b"audio/wav", b"image/png", b"x/\xff\xfe", b""])))
    if draw(st.booleans()):  # any header at all
        headers.append(draw(st.binary(min_size=1, max_size=80).filter(lambda h: b"\r\n" not in h)))
    return b"\r\n".join(headers) + b"\r\n\r\n" + content, field == "file"


@st.composite
def bodies(draw, seeds: dict[str, bytes]) -> tuple[bytes, str, int]:
    """A multipart body, its content type and how many files it carries in 'file' (None: malformed on purpose)."""
    boundary = draw(st.sampled_from(["b", "----x7", "a" * 70]))
    chosen = draw(st.lists(parts(seeds), max_size=MAX_FILES + 2))
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part, _ in chosen)
    body += b"--" + boundary.encode() + b"--\r\n"
    if draw(st.booleans()):  # damaged framing: cut anywhere, or bytes spliced in
        position = draw(st.integers(0, len(body)))
        body = body[:position] + draw(st.binary(max_size=40))
    content_type = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}",
                                         f"multipart/form-data; boundary=\"{boundary}\"", "multipart/form-data",
                                         "application/octet-stream", f"multipart/mixed; boundary={boundary}"]))
    return body, content_type, sum(is_file for _, is_file in chosen)


def _check(response, elapsed: float, files: int | None) -> None:
    assert elapsed < DEADLINE, f"answered after {elapsed:.1f} s"
    assert response.status_code < 500, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    if response.status_code == 200:
        assert isinstance(body, list) and all(r["verdict"] in ("normal", "ABNORMAL") for r in body)
        if files is not None:
            assert len(body) == files
    else:
        assert 400 <= response.status_code < 500
        assert list(body) == ["error"] and isinstance(body["error"], str) and "\n" not in body["error"]
        assert "Traceback" not in body["error"]


def test_fuzzed_files_get_a_verdict_or_a_4xx(client, seeds):
    """Files through the ordinary client (well-formed multipart): contents and names anything. Both outcomes
    occur among the examples (the property is not met by refusing everything)."""
    statuses = set()

    @FUZZ
    @given(st.lists(st.tuples(names, contents(seeds)), min_size=1, max_size=MAX_FILES + 1))
    def check(files):
        started = time.perf_counter()
        response = client.post("/api/classify", files=[("file", (name.encode("utf-8", "surrogatepass")
                                                                 .decode("utf-8", "replace"), content))
                                                       for name, content in files])
        _check(response, time.perf_counter() - started, len(files))
        statuses.add(response.status_code)
        if len(files) > MAX_FILES:  # 413, or a 4xx for a part the parser refused before the count was reached
            assert response.status_code != 200

    check()
    assert 200 in statuses and {413, 415, 422} <= statuses


def test_fuzzed_multipart_bodies_get_a_verdict_or_a_4xx(client, seeds):
    """Raw bodies: hostile part headers, other fields, damaged framing, other content types."""

    @FUZZ
    @given(bodies(seeds))
    def check(drawn):
        body, content_type, _ = drawn
        started = time.perf_counter()
        response = client.post("/api/classify", content=body, headers={"content-type": content_type})
        _check(response, time.perf_counter() - started, None)

    check()


def test_a_good_file_still_gets_its_verdict_after_the_fuzzing(client, seeds):
    response = client.post("/api/classify", files={"file": ("after.wav", seeds["wav"])})
    assert response.status_code == 200 and response.json()[0]["path"] == "after.wav"
    assert np.isfinite(response.json()[0]["anomaly_score"])
