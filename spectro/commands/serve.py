"""``spectro serve``: a web page and an HTTP API for one model (:func:`spectro.serving.app.serve`)."""

from __future__ import annotations

from spectro.paths import MODELS_DIR
from spectro.runs import LATEST
from spectro.serving.app import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, serve

HELP = ("Serve one model over HTTP: a page at / to drop recordings (WAV/FLAC/OGG) or spectrogram PNGs on and see "
        "their verdicts, and an API (POST /api/classify answers what 'spectro classify --json' prints; GET /api/model, "
        "GET /api/health; docs at /docs). A run's .tflite file is served when it has one (no TensorFlow import), "
        "else its model.keras. Listens on 127.0.0.1 only unless --host says otherwise.")


def add_arguments(parser) -> None:
    parser.add_argument("run", nargs="?", default=str(MODELS_DIR / LATEST), metavar="RUN",
                        help="the run folder to serve (its model_int8.tflite, model.tflite, model_dynamic.tflite or "
                             "model.keras, the first found)")
    parser.add_argument("--model", default=None,
                        help="a run folder, a .keras file or a .tflite file to serve instead of RUN's default")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on. The default answers this machine only; --host 0.0.0.0 lets every "
                             "machine that can reach this one use the page and the API, with no authentication: "
                             "choose it only on a network you trust")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port to listen on")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                        help="largest request body accepted (MiB); larger uploads get HTTP 413")
    parser.add_argument("--workers", type=int, default=None,
                        help="inference worker processes, each loading the model once (a .keras model: each "
                             "imports TensorFlow and uses cores/workers threads); default: one per CPU core")


def main(args) -> int:
    serve(args.model or args.run, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          workers=args.workers)
    return 0
