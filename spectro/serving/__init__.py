"""``spectro serve``: a web page and an HTTP API over one model (FastAPI + uvicorn)."""
