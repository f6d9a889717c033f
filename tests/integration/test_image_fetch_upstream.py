"""Image URLs through real gateways: never fetched without the operator's ``fetch_images``; with it, never
from a loopback address unless ``[images] allow_private`` (tests only) says so; fetched images reach the
upstream inline.

Real processes: two ``gateway serve`` (``allow_private`` off and on) in front of upstreams in this process
that record what they get (an Anthropic-shaped one and an OpenAI-shaped one, standing for a local server
that takes base64 images only), and an image server on 127.0.0.1 that records each GET.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, RawClient, assert_openai_error, http_request
from .tiny_upstream import TinyUpstream

pytestmark = pytest.mark.timeout(90)

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def _upstream_answer(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    if path.endswith("/messages"):
        return 200, "application/json", json.dumps({
            "id": "msg_rec", "type": "message", "role": "assistant", "model": "claude-rec",
            "content": [{"type": "text", "text": "a pixel"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 2},
        }).encode()
    return 200, "application/json", json.dumps({
        "id": "chatcmpl-rec", "object": "chat.completion", "created": 1, "model": "local",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a pixel"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }).encode()


def _image_answer(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    if path == "/pixel.png":
        return 200, "image/png", PNG
    if path == "/page":
        return 200, "text/html", b"<html></html>"
    return 404, "text/plain", b"no"


def _config(up: int, allow_private: bool) -> str:
    base = f'base_url = "http://{HOST}:{up}/v1"\napi_key = "env:MOCK_KEY"\n'
    return f"""
[server]
drain_timeout = 2.0

[images]
allow_private = {str(allow_private).lower()}
timeout = 5.0

[providers.claude-fetch]
type = "anthropic"
{base}fetch_images = true

[providers.claude-url]
type = "anthropic"
{base}
[providers.local]
type = "openai"
{base}fetch_images = true

[models.claude-fetch]
provider = "claude-fetch"
upstream_model = "m-fetch"

[models.claude-url]
provider = "claude-url"
upstream_model = "m-url"

[models.local]
provider = "local"
upstream_model = "m-local"

[models.front]
provider = "claude-url"
upstream_model = "m-front"
fallbacks = ["local"]
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[TinyUpstream]:
    up = TinyUpstream(_upstream_answer)
    try:
        yield up
    finally:
        up.close()


@pytest.fixture(scope="module")
def images() -> Iterator[TinyUpstream]:
    server = TinyUpstream(_image_answer)
    try:
        yield server
    finally:
        server.close()


def _gateway(name: str, upstream: TinyUpstream, allow_private: bool, logs_dir: Path,
             request: pytest.FixtureRequest) -> Iterator[Gateway]:
    gw = _launch(name, logs_dir, config_text=_config(upstream.port, allow_private), workers=1, frontend="native")
    failed = request.session.testsfailed
    try:
        yield gw
    finally:
        _stop(gw.process, request, failed)


@pytest.fixture(scope="module")
def strict(upstream: TinyUpstream, logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    yield from _gateway("gateway-images-strict", upstream, False, logs_dir, request)


@pytest.fixture(scope="module")
def loose(upstream: TinyUpstream, logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    yield from _gateway("gateway-images-loose", upstream, True, logs_dir, request)


def _ask(gw: Gateway, model: str, url: str, request_id: str):  # type: ignore[no-untyped-def]
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}]}).encode()
    with RawClient(gw.port) as c:
        return c.request(http_request("POST", "/v1/chat/completions", body, headers=[("X-Request-Id", request_id)]))


def _sent(upstream: TinyUpstream, request_id: str) -> list[dict[str, Any]]:
    return [json.loads(b) for _, h, b in upstream.seen if h.get("x-request-id") == request_id]


def test_without_the_opt_in_the_url_goes_upstream_unfetched(strict: Gateway, loose: Gateway,
                                                            upstream: TinyUpstream, images: TinyUpstream) -> None:
    url = f"http://{HOST}:{images.port}/pixel.png"
    for gw in (strict, loose):
        rid = f"img-url-{gw.port}"
        resp = _ask(gw, "claude-url", url, rid)
        assert resp.status == 200, resp
        (sent,) = _sent(upstream, rid)
        assert sent["messages"][0]["content"][1] == {"type": "image", "source": {"type": "url", "url": url}}
    assert images.seen == []


def test_loopback_is_refused_even_when_opted_in(strict: Gateway, upstream: TinyUpstream,
                                                images: TinyUpstream) -> None:
    for model in ("claude-fetch", "local", "front"):
        for host in (HOST, "localhost"):
            rid = f"img-refused-{model}-{host}"
            resp = _ask(strict, model, f"http://{host}:{images.port}/pixel.png", rid)
            err = assert_openai_error(resp, 400, "invalid_image_url")
            assert "non-public address" in err["message"]
            assert _sent(upstream, rid) == []  # nothing went upstream
    assert images.seen == []  # and nothing was fetched


def test_opted_in_images_reach_the_upstream_inline(loose: Gateway, upstream: TinyUpstream,
                                                   images: TinyUpstream) -> None:
    url = f"http://{HOST}:{images.port}/pixel.png"
    resp = _ask(loose, "claude-fetch", url, "img-anthropic")
    assert resp.status == 200, resp
    (sent,) = _sent(upstream, "img-anthropic")
    source = sent["messages"][0]["content"][1]["source"]
    assert source == {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()}
    # an OpenAI-compatible upstream gets a data: URL
    assert _ask(loose, "local", url, "img-local").status == 200
    (sent,) = _sent(upstream, "img-local")
    assert sent["messages"][0]["content"][1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(
        PNG).decode()
    # a model whose fallback sits on a fetching provider is inlined for every deployment
    assert _ask(loose, "front", url, "img-front").status == 200
    (sent,) = _sent(upstream, "img-front")
    assert sent["messages"][0]["content"][1]["source"]["type"] == "base64"
    assert [p for p, _, _ in images.seen] == ["/pixel.png"] * 3


def test_a_bad_image_is_the_clients_400(loose: Gateway, upstream: TinyUpstream, images: TinyUpstream) -> None:
    for path, why in (("/page", "content type text/html"), ("/gone.png", "answered 404")):
        rid = f"img-bad-{path}"
        err = assert_openai_error(_ask(loose, "claude-fetch", f"http://{HOST}:{images.port}{path}", rid), 400,
                                  "invalid_image_url")
        assert why in err["message"]
        assert _sent(upstream, rid) == []
