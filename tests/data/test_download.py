"""spectro download against a loopback HTTP server of the test's own (never the internet)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from spectro.cli import main as cli_main
from spectro.data import download as dl
from spectro.errors import SpectroError

NAME = "6_dB_fan.zip"
MEMBERS = {f"fan/id_00/normal/{i:08d}.wav": bytes([i]) * (3000 + 500 * i) for i in range(4)}


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


class FakeZenodo:
    """Serves /files/<name> (with Range) and /api (records JSON) on 127.0.0.1."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.api: dict = {"files": []}
        self.cut_next = 0  # how many full-body answers to cut off halfway
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                if path == "/api":
                    body = json.dumps(server.api).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                name = path.removeprefix("/files/")
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_next and start == 0:
                    server.cut_next -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def publish(self, name: str, data: bytes, md5: str | None = None):
        self.files[name] = data
        self.api["files"].append({"key": name, "size": len(data),
                                  "checksum": f"md5:{md5 or hashlib.md5(data).hexdigest()}"})

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def zenodo():
    server = FakeZenodo()
    yield server
    server.close()


def run(zenodo, out: Path, **kwargs):
    options = dict(out=out, base_url=f"{zenodo.url}/files", api_url=f"{zenodo.url}/api", timeout=5.0, retries=3,
                   progress=False, known_md5={})
    options.update(kwargs)
    return dl.download(["fan"], ["6dB"], **options)


def test_happy_path_extracts_mimii_layout_and_checks_md5_from_api(zenodo, tmp_path):
    data = make_zip(MEMBERS)
    zenodo.publish(NAME, data)
    dirs = run(zenodo, tmp_path)
    assert dirs == [tmp_path / "6_dB_fan"]
    for name, content in MEMBERS.items():
        assert (tmp_path / "6_dB_fan" / name).read_bytes() == content
    assert not (tmp_path / ".downloads" / NAME).exists()  # zip removed without --keep-zip
    assert not (tmp_path / ".downloads" / f"{NAME}.part").exists()
    assert json.loads((tmp_path / ".downloads" / f"{NAME}.done").read_text())["md5"] == hashlib.md5(data).hexdigest()
    # the extracted tree is what `spectro images` discovers
    from spectro.data.layout import discover

    clips, unmatched = discover(tmp_path)
    assert [(c.machine, c.machine_id, c.label, c.snr) for c in clips] == [("fan", "id_00", "normal", "6dB")] * 4
    assert unmatched == []


def test_archive_already_prefixed_with_its_stem_is_not_nested(zenodo, tmp_path):
    zenodo.publish(NAME, make_zip({"6_dB_fan/fan/id_00/normal/00000000.wav": b"abc"}))
    run(zenodo, tmp_path)
    assert (tmp_path / "6_dB_fan/fan/id_00/normal/00000000.wav").read_bytes() == b"abc"


def test_resumes_with_range_after_a_cut_connection(zenodo, tmp_path):
    data = make_zip(MEMBERS)
    zenodo.publish(NAME, data)
    zenodo.cut_next = 1
    run(zenodo, tmp_path)
    file_requests = [r for r in zenodo.requests if r[0].startswith("/files/")]
    assert len(file_requests) == 2
    assert file_requests[0][1] is None
    resumed_from = int(re.match(r"bytes=(\d+)-", file_requests[1][1]).group(1))
    assert resumed_from == len(data) // 2  # asked only for the missing part
    for name, content in MEMBERS.items():
        assert (tmp_path / "6_dB_fan" / name).read_bytes() == content


@pytest.mark.parametrize("fraction", [0.3, 1.0])
def test_resumes_a_part_file_left_by_an_earlier_run(zenodo, tmp_path, fraction):
    data = make_zip(MEMBERS)
    zenodo.publish(NAME, data)
    part = tmp_path / ".downloads" / f"{NAME}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: int(len(data) * fraction)])
    run(zenodo, tmp_path, keep_zip=True)
    assert [r[1] for r in zenodo.requests if r[0].startswith("/files/")] == [f"bytes={int(len(data) * fraction)}-"]
    assert (tmp_path / ".downloads" / NAME).read_bytes() == data
    assert (tmp_path / "6_dB_fan/fan/id_00/normal/00000000.wav").is_file()


def test_server_ignoring_range_restarts_the_file(zenodo, tmp_path):
    data = make_zip(MEMBERS)
    zenodo.publish(NAME, data)
    zenodo.cut_next, zenodo.ignore_range = 1, True
    run(zenodo, tmp_path, keep_zip=True)
    assert (tmp_path / ".downloads" / NAME).read_bytes() == data


def test_gives_up_after_bounded_retries(zenodo, tmp_path):
    zenodo.publish(NAME, make_zip(MEMBERS))
    zenodo.cut_next, zenodo.ignore_range = 10, True  # every answer is cut and never resumable
    with pytest.raises(SpectroError, match="incomplete after 2 retries"):
        run(zenodo, tmp_path, retries=2)
    assert len([r for r in zenodo.requests if r[0].startswith("/files/")]) == 3


def test_wrong_checksum_deletes_the_file(zenodo, tmp_path):
    data = make_zip(MEMBERS)
    zenodo.publish(NAME, data, md5="0" * 32)
    with pytest.raises(SpectroError, match="MD5 mismatch.*deleted"):
        run(zenodo, tmp_path)
    assert not any((tmp_path / ".downloads").glob("6_dB_fan.zip*"))
    assert not (tmp_path / "6_dB_fan").exists()


def test_unknown_checksum_is_refused_before_downloading(zenodo, tmp_path):
    zenodo.files[NAME] = make_zip(MEMBERS)  # served, but not listed in the records API
    with pytest.raises(SpectroError, match="no published MD5"):
        run(zenodo, tmp_path)
    assert not [r for r in zenodo.requests if r[0].startswith("/files/")]


def test_builtin_table_is_used_without_asking_the_api(zenodo, tmp_path):
    data = make_zip(MEMBERS)
    zenodo.files[NAME] = data
    run(zenodo, tmp_path, known_md5={NAME: hashlib.md5(data).hexdigest()})
    assert ("/api", None) not in zenodo.requests
    assert (tmp_path / "6_dB_fan/fan/id_00/normal/00000003.wav").is_file()


@pytest.mark.parametrize("member", ["../evil.wav", "/tmp/evil.wav", "fan/../../evil.wav", "C:/evil.wav",
                                    "fan/id_00/..\\..\\evil.wav"])
def test_malicious_member_extracts_nothing(zenodo, tmp_path, member):
    out = tmp_path / "raw"
    zenodo.publish(NAME, make_zip({"fan/id_00/normal/00000000.wav": b"ok", member: b"evil"}))
    with pytest.raises(SpectroError, match="refusing to extract.*nothing was extracted"):
        run(zenodo, out)
    assert not (out / "6_dB_fan").exists()
    assert not list(tmp_path.rglob("evil.wav"))
    assert not (out / ".downloads" / f"{NAME}.done").exists()


def test_already_downloaded_archive_is_skipped(zenodo, tmp_path):
    zenodo.publish(NAME, make_zip(MEMBERS))
    run(zenodo, tmp_path)
    zenodo.requests.clear()
    assert run(zenodo, tmp_path) == [tmp_path / "6_dB_fan"]
    assert zenodo.requests == []


def test_offline_fails_at_once_with_one_line(tmp_path, capsys, monkeypatch):
    """A refused connection is not retried: one request, no pause, and one line saying how to get the data."""
    import urllib.error
    import urllib.request

    base = "http://127.0.0.1:9"
    asked = []

    def refused(request, timeout):
        asked.append(request.full_url)
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", refused)
    monkeypatch.setattr(dl.time, "sleep", lambda seconds: pytest.fail(f"paused {seconds} s before failing"))
    code = cli_main(["download", "--machines", "fan", "--snrs", "-6dB", "--out", str(tmp_path),
                     "--base-url", f"{base}/files", "--api-url", f"{base}/api", "--timeout", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert asked == [f"{base}/files/-6_dB_fan.zip?download=1"]  # the checksum is known: the archive, once
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach 127.0.0.1")
    assert "Connection refused" in lines[0]
    assert f"{base}/files/-6_dB_fan.zip?download=1" in lines[0]
    assert f"unzip each <snr>_dB_<machine>.zip into {tmp_path}/<snr>_dB_<machine>/" in lines[0]


def test_offline_while_fetching_an_archive_with_a_known_checksum(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SpectroError, match="cannot reach 127.0.0.1.*by hand"):
        dl.download(["fan"], ["6dB"], out=tmp_path, base_url=f"http://127.0.0.1:{port}/files",
                    api_url=f"http://127.0.0.1:{port}/api", timeout=5, progress=False)


@pytest.mark.parametrize("text, expected", [("6dB", "6dB"), ("6", "6dB"), ("0_dB", "0dB"), ("-6dB", "-6dB"),
                                            ("min6dB", "-6dB"), ("-6", "-6dB"), ("3dB", SpectroError),
                                            ("six", SpectroError), ("12dB", SpectroError), ("-0dB", "0dB")])
def test_normalise_snr(text, expected):
    if expected is SpectroError:
        with pytest.raises(SpectroError, match="unknown SNR"):
            dl.normalise_snr(text)
    else:
        assert dl.normalise_snr(text) == expected


@pytest.mark.parametrize("machine, snr, name", [("fan", "6dB", "6_dB_fan.zip"), ("valve", "-6dB", "-6_dB_valve.zip"),
                                                ("slider", "0dB", "0_dB_slider.zip")])
def test_archive_names_are_all_in_the_checksum_table(machine, snr, name):
    assert dl.archive_name(machine, snr) == name
    assert re.fullmatch(r"[0-9a-f]{32}", dl.KNOWN_MD5[name])


def test_builtin_table_covers_the_whole_record_and_matches_the_issue():
    assert len(dl.KNOWN_MD5) == 12 and len(set(dl.KNOWN_MD5.values())) == 12
    assert dl.KNOWN_MD5["6_dB_fan.zip"] == "0890f7d3c2fd8448634e69ff1d66dd47"


def test_records_api_parsing(zenodo):
    zenodo.api = {"files": [{"key": "a.zip", "checksum": "md5:" + "a" * 32},
                            {"key": "b.zip", "checksum": "sha256:" + "b" * 64},
                            {"filename": "c.zip", "checksum": "md5:" + "C" * 32}]}
    assert dl.fetch_checksums(f"{zenodo.url}/api", timeout=5) == {"a.zip": "a" * 32, "c.zip": "c" * 32}
