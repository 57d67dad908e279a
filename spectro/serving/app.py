"""``spectro serve``: a web page to drop recordings or spectrograms on, and an HTTP API, for one model.

Routes
------
``GET /``                 the page (``page.html``, ``page.js``, ``page.css`` from this package; no CDN)
``POST /api/classify``    multipart, one or more files in the field ``file``: a JSON list of exactly the
                          objects ``spectro classify --json`` prints for the same files, in order; ``path``
                          is the file name the client gave (shown, never used as a path). The query
                          parameter ``machine`` is ``classify``'s ``--machine`` (``?machine=pump``; what the
                          model accepts is ``/api/model``'s ``machine_choices``). A ``Server-Timing`` header says
                          how long the upload and the classification took
``POST /api/spectrogram`` multipart, one file: its spectrogram as a PNG, with the model's feature settings
``GET /api/model``        the model: machines, classes, feature settings, threshold, training date, metrics
``POST /api/inspect``     multipart, one file: what the page shows of it from one upload, ``{"result": the object
                          /api/classify answers, "spectrogram": the PNG /api/spectrogram answers, base64}``
``GET /api/health``       liveness, with the model's identity
``GET /docs``             the API docs (Swagger UI), its script and style sheet served from this server (the
                          ``fastapi-offline`` package ships them under ``/docs-assets/``), so they work offline;
                          ``/openapi.json`` is the description they show

Every error is a one-line JSON ``{"error": "..."}`` with a 4xx status for bad input (5xx for a server
fault, whose traceback goes to the server's log only; 503 for a request past its deadline). What one request may
cost is decided before the work (:class:`~spectro.serving.service.ServeLimits`: body size, files per request,
each file's declared duration, sample rate and channels, a compute deadline, a read timeout for the body), listed
in the API docs and ``GET /api/model``'s ``limits``. Uploads are streamed into a temporary folder of
the request's own, under server-chosen names, and the folder is removed when the answer is sent.
Inference runs in a pool of worker processes (:class:`~spectro.serving.service.ModelService`), so requests
are answered concurrently on every core; the model is loaded once per worker, when the app is made, never
per request.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import re
import tempfile
import time
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from spectro import __version__
from spectro.errors import SpectroError
from spectro.features.limits import DEFAULT_MAX_SECONDS, InputLimits
from spectro.serving.service import DEFAULT_MAX_UPLOAD_MB, DEFAULT_TIMEOUT, ModelService, ServeLimits
from spectro.serving.uploads import DEFAULT_MAX_FILES, DEFAULT_READ_TIMEOUT, FIELD, RequestError, receive_files

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
ASSETS = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}
# the page loads nothing from elsewhere: scripts, styles and images come from this server (or blob: URLs)
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
# Swagger UI's script, style sheet and icon: the copies the fastapi-offline package ships, served under this path
DOCS_ASSETS = "docs-assets"

MACHINE_HELP = ("score every file as this machine, as `spectro classify --machine` does: a machine type (pump) for "
                "a run with a fused anomaly score, an enrolled machine (fan/id_02) for a normal-only run; "
                "`GET /api/model` lists them as `machine_choices`. Default: the machine the model finds most "
                "likely")


class ErrorBody(BaseModel):
    error: str


def _upload_body(description: str, many: bool) -> dict:
    """OpenAPI request body for a multipart upload in :data:`FIELD` (the route reads the stream itself)."""
    item = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": item} if many else item
    return {"requestBody": {"required": True, "description": description, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": {FIELD: schema}, "required": [FIELD]}}}}}


ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (400, "no file, or a malformed multipart body"), (408, "the request body stalled past the read timeout"),
    (413, "over the upload size limit or the files-per-request limit"),
    (415, "not multipart, or a file that is neither a recording nor a PNG"),
    (422, "a file that cannot be classified: empty, truncated, too short, rendered with other settings, or whose "
          "header declares a duration, sample rate, channel count or PNG size outside the limits"),
    (503, "the request's work passed the deadline (--timeout); its worker was replaced"))}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split()) or "error"}, status_code=status)


def _docs_page(title: str) -> HTMLResponse:
    """``/docs``: FastAPI's Swagger UI page with its assets on this server (FastAPI's self-hosting recipe), under a
    policy that lets it load nothing from elsewhere; its one inline script (Swagger UI's start) is allowed by
    hash. URLs are relative, as the page's are, so the docs work behind a proxy's path prefix too."""
    html = get_swagger_ui_html(openapi_url="openapi.json", title=title,
                               swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png").body.decode()
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
                      for script in re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL))
    policy = (f"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self' {hashes}; "
              "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
    return HTMLResponse(html, headers={"Content-Security-Policy": policy, "Cache-Control": "no-cache"})


def _asset_route(content: bytes, media_type: str):
    async def asset() -> Response:
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})
    return asset


def create_app(model: str | Path | None = None, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_seconds: float = DEFAULT_MAX_SECONDS, max_files: int = DEFAULT_MAX_FILES,
               timeout: float = DEFAULT_TIMEOUT, read_timeout: float = DEFAULT_READ_TIMEOUT,
               workers: int | None = None, processes: bool | None = None) -> FastAPI:
    """The web app for one model, loaded now (once).

    Parameters
    ----------
    model : path, optional
        A run folder (its ``model.keras``: :data:`spectro.runs.MODEL_RULE`, as ``spectro classify``), a ``.keras``
        or a ``.tflite`` file; default ``models/latest``.
    max_upload_mb : float
        Limit on one request's body, in MiB.
    max_seconds : float
        Longest recording a file's header may declare, and widest PNG (the frames that many seconds make).
    max_files : int
        Files per request.
    timeout : float
        Seconds a request's work may take (waiting for a worker included); past it: 503, the worker replaced.
    read_timeout : float
        Seconds a request body may stall; past it the upload is dropped (408) and its files removed.
    workers : int, optional
        Inference worker processes; default one per core (see :class:`~spectro.serving.service.ModelService`).
    processes : bool, optional
        ``False`` runs the model in threads instead of processes (for comparison).

    Raises
    ------
    SpectroError
        No loadable model there, or a bad limit.
    """
    limits = serve_limits(max_upload_mb=max_upload_mb, max_seconds=max_seconds, max_files=max_files,
                          timeout=timeout, read_timeout=read_timeout)
    service = ModelService(model, workers=workers, processes=processes, limits=limits)
    upload_limits = {"max_bytes": limits.max_bytes, "max_files": int(limits.max_files),
                     "read_timeout": limits.read_timeout}
    package = resources.files("spectro.serving")
    page = (package / "page.html").read_text(encoding="utf-8")
    assets = {name: (package / name).read_bytes() for name in ASSETS}
    started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ARG001
        yield
        service.close()

    app = FastAPI(title="spectro serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Verdicts for machine-sound recordings and spectrogram images from one spectro model: "
                              f"{service.identity['run']}/{service.identity['file']}. Every error is a JSON "
                              "`{\"error\": \"...\"}`. " + limits.text())
    app.state.service = service

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):  # noqa: ARG001
        return _error(exc.status, str(exc))

    @app.exception_handler(SpectroError)
    async def spectro_error(request: Request, exc: SpectroError):  # noqa: ARG001
        return _error(422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        text = {404: f"not found: {request.url.path}", 405: f"method {request.method} not allowed here"}
        return _error(exc.status_code, text.get(exc.status_code, exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):  # noqa: ARG001
        return _error(422, "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # noqa: ARG001 - the server logs the traceback
        return _error(500, f"internal server error ({type(exc).__name__}); the server's log has the details")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"})

    for name, media_type in ASSETS.items():
        app.add_api_route(f"/{name}", _asset_route(assets[name], media_type), methods=["GET"], include_in_schema=False)

    docs = _docs_page(f"{app.title} - API docs")

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return docs

    app.mount(f"/{DOCS_ASSETS}", StaticFiles(packages=[("fastapi_offline", "static")]), name=DOCS_ASSETS)

    @app.post("/api/classify", responses=ERRORS, openapi_extra=_upload_body(
        "one or more PNG spectrograms or WAV/FLAC/OGG recordings", many=True))
    async def classify(request: Request, machine: str | None = Query(None, description=MACHINE_HELP)) -> list[dict]:
        """Verdict, anomaly score, failure type and class probabilities per file: the objects that
        `spectro classify --json` prints, in the order sent, with `path` the file name the client gave."""
        started = time.perf_counter()
        machine = service.checked_machine(machine)
        with tempfile.TemporaryDirectory(prefix="spectro-serve-") as folder:
            uploads = await receive_files(request, Path(folder), **upload_limits)
            received = time.perf_counter()
            results = await service.classify(uploads, machine)
            done = time.perf_counter()
        timing = (f"upload;dur={1000 * (received - started):.2f}, classify;dur={1000 * (done - received):.2f}, "
                  f"total;dur={1000 * (time.perf_counter() - started):.2f}")
        return JSONResponse(results, headers={"Server-Timing": timing})

    @app.post("/api/spectrogram", responses={**ERRORS, 200: {"content": {"image/png": {}},
                                                             "description": "an 8-bit grayscale spectro PNG"}},
              response_class=Response, openapi_extra=_upload_body("one PNG spectrogram or recording", many=False))
    async def spectrogram(request: Request) -> Response:
        """The file's spectrogram as a grayscale PNG rendered with the model's feature settings (a whole
        recording as one image); a spectro PNG is checked against them and sent back."""
        with tempfile.TemporaryDirectory(prefix="spectro-serve-") as folder:
            uploads = await receive_files(request, Path(folder), **upload_limits)
            if len(uploads) != 1:
                raise RequestError(f"expected one file in the field '{FIELD}', found {len(uploads)}", 400)
            return Response(await service.spectrogram(uploads[0]), media_type="image/png")

    @app.post("/api/inspect", responses=ERRORS, openapi_extra=_upload_body("one PNG spectrogram or recording",
                                                                            many=False))
    async def inspect_file(request: Request, machine: str | None = Query(None, description=MACHINE_HELP)) -> dict:
        """What the page shows of one file, from one upload: `result`, the object `POST /api/classify` answers for
        it, and `spectrogram`, the PNG `POST /api/spectrogram` answers, base64-encoded."""
        machine = service.checked_machine(machine)
        with tempfile.TemporaryDirectory(prefix="spectro-serve-") as folder:
            uploads = await receive_files(request, Path(folder), **upload_limits)
            if len(uploads) != 1:
                raise RequestError(f"expected one file in the field '{FIELD}', found {len(uploads)}", 400)
            [result] = await service.classify(uploads, machine)
            png = await service.spectrogram(uploads[0])
        return {"result": result, "spectrogram": base64.b64encode(png).decode("ascii")}

    @app.get("/api/model")
    async def model_description() -> dict:
        """The model: machines and classes it knows, feature settings, threshold, training date, test metrics."""
        return {**service.describe(), "max_upload_mb": max_upload_mb, "limits": limits.describe(service.settings)}

    @app.get("/api/health")
    async def health() -> dict:
        """Liveness, with the model's identity (run, file, format, SHA-256 prefix)."""
        return {"status": "ok", "model": service.identity, "workers": service.workers, "version": __version__,
                "uptime_s": round(time.time() - started, 3)}

    return app


def serve_limits(*, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_seconds: float = DEFAULT_MAX_SECONDS,
                 max_files: int = DEFAULT_MAX_FILES, timeout: float = DEFAULT_TIMEOUT,
                 read_timeout: float = DEFAULT_READ_TIMEOUT) -> ServeLimits:
    """The :class:`ServeLimits` of ``spectro serve``'s options, checked (one-line :class:`SpectroError`)."""
    if not (isinstance(max_seconds, (int, float)) and math.isfinite(max_seconds) and max_seconds > 0):
        raise SpectroError(f"--max-seconds must be a finite number > 0, got {max_seconds!r}")
    return ServeLimits(inputs=InputLimits(max_seconds=float(max_seconds)), max_upload_mb=max_upload_mb,
                       max_files=max_files, timeout=timeout, read_timeout=read_timeout)


def serve(model: str | Path | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_seconds: float = DEFAULT_MAX_SECONDS,
          max_files: int = DEFAULT_MAX_FILES, timeout: float = DEFAULT_TIMEOUT,
          read_timeout: float = DEFAULT_READ_TIMEOUT, workers: int | None = None, processes: bool | None = None,
          log_level: str = "info") -> None:
    """Load the model, listen on ``host:port`` and answer until interrupted (Ctrl-C); the limits are
    :func:`create_app`'s.

    Raises
    ------
    SpectroError
        No model, a bad limit, or the address cannot be listened on (port in use, unknown host).
    """
    import socket

    import uvicorn

    limits = dict(max_upload_mb=max_upload_mb, max_seconds=max_seconds, max_files=max_files, timeout=timeout,
                  read_timeout=read_timeout)
    serve_limits(**limits)  # a bad limit is a one-line error before anything is bound or loaded
    if not 0 <= int(port) <= 65535:
        raise SpectroError(f"--port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SpectroError(f"--host {host}: not an address this machine can listen on ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SpectroError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server there? "
                           "choose another --port") from None
    try:
        from threadpoolctl import threadpool_limits

        # parallelism comes from the workers: numpy (BLAS) work in this process stays on one core
        threadpool_limits(limits=1, user_api="blas")
        app = create_app(model, **limits, workers=workers, processes=processes)
        service: ModelService = app.state.service
        shown = f"[{host}]" if ":" in host else host
        bound_port = sock.getsockname()[1]
        uvicorn_log = logging.getLogger("uvicorn.error")
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        # uvicorn.Config set up uvicorn's loggers: the lines below are printed as its own
        kind = "processes" if service.processes else "threads"
        uvicorn_log.info(f"serving {service.path} ({service.identity['format']}, run {service.identity['run']}, "
                         f"{service.workers} worker {kind}, loaded in {service.load_seconds:.2f} s)")
        uvicorn_log.info(f"page: http://{shown}:{bound_port}/  API docs: http://{shown}:{bound_port}/docs")
        if host not in ("127.0.0.1", "localhost", "::1"):
            uvicorn_log.warning(f"listening on {host}: every machine that can reach this one can use the page and the "
                                "API (no authentication); the default --host 127.0.0.1 answers this machine only")
        server.run(sockets=[sock])
    finally:
        sock.close()
