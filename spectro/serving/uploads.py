"""Uploaded files: a multipart body streamed into a temporary folder, under names the server chooses.

The client's file name is kept for display only (:attr:`Upload.name`): files are written as
``upload-<n><suffix>``, the suffix chosen from the file's first bytes (PNG, WAV, FLAC or OGG), so nothing
the client sends decides where anything is written. The size limit counts every byte of the request
body as it arrives, so an oversized upload is refused before it is stored; the file-count limit is checked as
each part's headers arrive, so a request with too many files is refused before anything is classified; and a
body that stops arriving for longer than the read timeout is dropped (408), its files removed with the
request's folder at once rather than when the client gives up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from spectro.errors import SpectroError

FIELD = "file"
DEFAULT_MAX_FILES = 16  # per request
DEFAULT_READ_TIMEOUT = 20.0  # seconds a request body may stall between two chunks
EXPECTED = "a WAV, FLAC or OGG recording or a spectro PNG spectrogram"


class RequestError(SpectroError):
    """A bad request, with the HTTP status to answer it with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    name: str  # the client's file name, sanitised: shown to people, never used as a path
    path: Path  # where the server wrote the file
    size: int


def sniff_suffix(head: bytes) -> str | None:
    """The file suffix matching a file's first bytes, or ``None`` when they are no PNG, WAV, FLAC or OGG."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return ".wav"
    if head.startswith(b"fLaC"):
        return ".flac"
    if head.startswith(b"OggS"):
        return ".ogg"
    return None


def display_name(raw: str, index: int) -> str:
    """The last component of a client's file name, printable characters only (``upload-<n>`` when none)."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:200]
    return name if name not in ("", ".", "..") else f"upload-{index + 1}"


class _Receiver:
    """python-multipart callbacks writing each part of :data:`FIELD` to its own file in ``folder``."""

    def __init__(self, folder: Path, field: str, max_files: int):
        self.folder, self.field, self.max_files = folder, field, max_files
        self.uploads: list[Upload] = []
        self._header_name = self._header_value = b""
        self._disposition = b""
        self._handle = None

    def on_part_begin(self) -> None:
        self._disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        if options.get(b"name", b"").decode("utf-8", "replace") != self.field:
            return  # other form fields are read past, not stored
        if len(self.uploads) >= self.max_files:
            raise RequestError(f"too many files in one request: more than {self.max_files} (the server's "
                               "--max-files); send them in several requests", 413)
        index = len(self.uploads)
        path = self.folder / f"upload-{index}"
        self._handle = path.open("xb")
        self.uploads.append(Upload(display_name(options.get(b"filename", b"").decode("utf-8", "replace"), index),
                                   path, 0))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._handle is not None:
            self._handle.write(data[start:end])
            self.uploads[-1].size += end - start

    def on_part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in ("on_part_begin", "on_header_field", "on_header_value",
                                                       "on_header_end", "on_headers_finished", "on_part_data",
                                                       "on_part_end")}


def _too_large(max_bytes: int) -> RequestError:
    return RequestError(f"upload too large: over the server's limit of {max_bytes / 2**20:g} MB "
                        "(start the server with a larger --max-upload-mb, or send fewer files at a time)", 413)


async def receive_files(request, folder: Path, *, max_bytes: int, max_files: int = DEFAULT_MAX_FILES,
                        read_timeout: float = DEFAULT_READ_TIMEOUT, field: str = FIELD) -> list[Upload]:
    """Stream a multipart request's files in ``field`` into ``folder``; check each one's type.

    Parameters
    ----------
    request : starlette.requests.Request
    folder : Path
        A temporary folder of this request's own; the files are ``upload-<n>.<png|wav|flac|ogg>``.
    max_bytes : int
        Limit on the whole request body.
    max_files : int
        Limit on the files in ``field``, checked as each part begins.
    read_timeout : float
        Seconds the body may stall between two chunks; past it the upload is dropped.

    Raises
    ------
    RequestError
        Not a multipart body (415), over ``max_bytes`` or ``max_files`` (413), malformed (400), stalled (408), no
        file (400), an empty file (422) or a file that is neither a recording nor a PNG (415).
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.requests import ClientDisconnect

    content_type = request.headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise RequestError(f"expected a multipart/form-data upload with files in the field '{field}', found "
                           f"content type '{content_type or 'none'}'", 415)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise _too_large(max_bytes)
    receiver = _Receiver(folder, field, max_files)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())
    received = 0
    chunks = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), read_timeout)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise RequestError(f"upload stalled: no data for {read_timeout:g} s (the server's read timeout); "
                                   "the upload was dropped", 408) from None
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise RequestError(f"malformed multipart body ({str(exc).splitlines()[0] if str(exc) else 'no reason'}); "
                           f"expected files in the field '{field}'", 400) from None
    except ClientDisconnect:
        raise RequestError("upload interrupted: the client closed the connection", 400) from None
    finally:
        receiver.close()
    if not receiver.uploads:
        raise RequestError(f"no file in the upload: expected one or more files in the multipart field '{field}'", 400)
    for upload in receiver.uploads:
        if upload.size == 0:
            raise RequestError(f"{upload.name}: empty file (0 bytes); expected {EXPECTED}", 422)
        with upload.path.open("rb") as handle:
            head = handle.read(16)
        suffix = sniff_suffix(head)
        if suffix is None:
            found = f"a '{Path(upload.name).suffix}' file" if Path(upload.name).suffix else "a file"
            raise RequestError(f"{upload.name}: not a recording or a spectrogram image (expected {EXPECTED}; found "
                               f"{found} whose first bytes are none of these)", 415)
        upload.path = upload.path.rename(upload.path.with_name(upload.path.name + suffix))
    return receiver.uploads
