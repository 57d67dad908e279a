"""spectro serve's API docs work offline: ``/docs`` is Swagger UI with its script and style sheet served by the
server itself (from the fastapi-offline package), under a policy that lets the page load nothing from elsewhere."""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urljoin

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from spectro.serving.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(tiny_exports):
    with TestClient(create_app(tiny_exports["files"]["int8"], workers=1)) as client:
        yield client


def _policy(response) -> dict[str, list[str]]:
    return {name: values for name, *values in
            (part.split() for part in response.headers["content-security-policy"].split(";") if part.strip())}


def test_docs_reference_nothing_outside_the_server_and_every_asset_answers(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    html = docs.text
    assert re.findall(r"https?://", html) == []  # no CDN, no absolute URL of any host
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert len(refs) == 3  # Swagger UI's script, style sheet and icon
    bodies = {}
    for ref in refs:
        answer = client.get(urljoin("http://testserver/docs", ref))
        assert answer.status_code == 200, ref
        bodies[ref.rsplit(".", 1)[-1]] = answer
    assert "javascript" in bodies["js"].headers["content-type"] and "SwaggerUIBundle" in bodies["js"].text
    assert bodies["css"].headers["content-type"].startswith("text/css") and ".swagger-ui" in bodies["css"].text
    assert bodies["png"].headers["content-type"] == "image/png" and bodies["png"].content[:4] == b"\x89PNG"
    # the description Swagger UI is told to load is this server's, relative to the page
    [spec] = re.findall(r"url: '([^']+)'", html)
    schema = client.get(urljoin("http://testserver/docs", spec))
    assert schema.status_code == 200 and "/api/classify" in schema.json()["paths"]


def test_docs_policy_allows_this_server_and_the_one_inline_script_only(client):
    docs = client.get("/docs")
    policy = _policy(docs)
    assert policy["default-src"] == ["'self'"] and policy["connect-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"] and policy["object-src"] == ["'none'"]
    assert not any("http" in value or value == "*" for values in policy.values() for value in values)
    inline = re.findall(r"<script>(.*?)</script>", docs.text, flags=re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert policy["script-src"] == ["'self'", f"'sha256-{digest}'"]  # never 'unsafe-inline'
    # the page keeps its own stricter policy: no inline script at all
    assert "sha256-" not in client.get("/").headers["content-security-policy"]


def test_no_docs_page_is_left_that_needs_a_cdn(client):
    redoc = client.get("/redoc")  # FastAPI's ReDoc page loads its script from a CDN: not served
    assert redoc.status_code == 404 and redoc.json() == {"error": "not found: /redoc"}
    missing = client.get("/docs-assets/no-such-file.js")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
