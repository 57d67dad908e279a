"""``spectro serve``: a web page and an HTTP API for one model (:func:`spectro.serving.app.serve`)."""

from __future__ import annotations

from spectro.features.limits import InputLimits
from spectro.paths import MODELS_DIR
from spectro.runs import LATEST, MODEL_RULE
from spectro.serving.app import DEFAULT_HOST, DEFAULT_PORT, serve
from spectro.serving.service import ServeLimits

HELP = ("Serve one model over HTTP: a page at / to drop recordings (WAV/FLAC/OGG) or spectrogram PNGs on and see "
        "their verdicts, and an API (POST /api/classify answers what 'spectro classify --json' prints; GET /api/model, "
        "GET /api/health; docs at /docs). The model file is the one 'spectro classify --model' uses: "
        f"{MODEL_RULE} (a .tflite file is served without importing TensorFlow). Listens on 127.0.0.1 only unless "
        "--host says otherwise. What one request may cost is "
        "bounded before the work (the limits below; GET /api/model lists them): a file whose header declares more is "
        "refused with a 4xx, and a request past --timeout is answered 503 and its worker replaced.")

_LIMITS, _INPUTS = ServeLimits(), InputLimits()


def add_arguments(parser) -> None:
    parser.add_argument("run", nargs="?", default=str(MODELS_DIR / LATEST), metavar="RUN",
                        help="the run folder to serve (its model.keras), a .keras or a .tflite file")
    parser.add_argument("--model", default=None,
                        help="a run folder, a .keras file or a .tflite file to serve instead of RUN")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on. The default answers this machine only; --host 0.0.0.0 lets every "
                             "machine that can reach this one use the page and the API, with no authentication: "
                             "choose it only on a network you trust")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port to listen on")
    limits = parser.add_argument_group("limits (each request's cost, decided before the work)")
    limits.add_argument("--max-upload-mb", type=float, default=_LIMITS.max_upload_mb, metavar="MB",
                        help="largest request body accepted (MiB, a finite number > 0); larger uploads get HTTP 413 "
                             "(default: %(default)g)")
    limits.add_argument("--max-files", type=int, default=_LIMITS.max_files, metavar="N",
                        help="files per request; more get HTTP 413, decided while the body arrives, before anything "
                             "is classified (default: %(default)d)")
    limits.add_argument("--max-seconds", type=float, default=_INPUTS.max_seconds, metavar="S",
                        help="longest recording a file's header may declare, and widest PNG (the frames S seconds "
                             "render to); longer ones get HTTP 422 from the header, before decoding (default: "
                             f"%(default)g, an hour's recording). Recordings must also declare {_INPUTS.min_sr}-"
                             f"{_INPUTS.max_sr} Hz and at most {_INPUTS.max_channels} channels")
    limits.add_argument("--timeout", type=float, default=_LIMITS.timeout, metavar="S",
                        help="seconds a request's work may take, waiting for a free worker included; past it the "
                             "answer is HTTP 503 and the worker doing the work is killed and replaced, so later "
                             "requests are not held up (default: %(default)g)")
    limits.add_argument("--read-timeout", type=float, default=_LIMITS.read_timeout, metavar="S",
                        help="seconds a request body may stall; past it the upload is dropped (HTTP 408, the "
                             "connection closed) and its temporary files removed (default: %(default)g)")
    parser.add_argument("--workers", type=int, default=None,
                        help="inference worker processes, each loading the model once (a .keras model: each "
                             "imports TensorFlow and uses cores/workers threads); default: one per CPU core")


def main(args) -> int:
    serve(args.model or args.run, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          max_files=args.max_files, max_seconds=args.max_seconds, timeout=args.timeout,
          read_timeout=args.read_timeout, workers=args.workers)
    return 0
