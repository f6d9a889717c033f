"""HTTP semantics both front ends must share, checked with a general-purpose client (httpx) and raw bytes.

The native front end once differed here from the standard (and from granian): a body in responses to HEAD,
HTTP/1.0 keep-alive kept but not acknowledged. These tests keep both front ends in step.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .conftest import Gateway
from .helpers import RawClient, assert_serves, http_request

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10.0) as c:
        yield c


def test_keepalive_connection_reused_by_httpx(http: httpx.Client, gateway: Gateway) -> None:
    for _ in range(5):
        assert http.get("/healthz").status_code == 200
        assert http.post("/v1/chat/completions", json={
            "model": "chat-model", "messages": [{"role": "user", "content": "hi"}],
        }).status_code == 200


def test_head_then_get_on_one_connection(http: httpx.Client) -> None:
    head = http.head("/healthz")
    assert head.status_code in (200, 405)
    assert head.content == b""
    resp = http.get("/readyz")  # same pooled connection
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready"}


def test_http10_keepalive_is_acknowledged(gateway: Gateway) -> None:
    with RawClient(gateway.port) as c:
        c.send(http_request("GET", "/v1/models", version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
        resp = c.read_response()
        assert resp.status == 200
        assert (resp.header("connection") or "").lower() == "keep-alive"
    assert_serves(gateway.port)


def test_sse_content_type_and_no_buffering_headers(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions", json={
        "model": "chat-model", "stream": True, "messages": [{"role": "user", "content": "!mock chunks=3"}],
    }) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers.get("cache-control") == "no-cache"
        assert "content-length" not in resp.headers
        lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) == 5  # 3 content events, the finish event, [DONE]
