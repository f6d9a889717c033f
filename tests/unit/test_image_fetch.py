"""The image fetcher's rules (``gateway.image_fetch``): which addresses are refused, and every bound.

The fetcher is driven against a small HTTP server in this process on 127.0.0.1. Tests may only use
loopback, so the address rule is the injectable seam: ``allowed`` stands in for ``address_allowed``
(here: 127.0.0.1 plays a public address) and ``resolve`` for DNS (``public.test`` → 127.0.0.1,
``internal.test`` → a private address, ``rebind.test`` → both).
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config import ImagesConfig
from gateway.errors import BadRequest
from gateway.image_fetch import ImageFetcher, address_allowed, inline_images

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True), ("8.8.8.8", True), ("2606:4700:4700::1111", True),
        ("127.0.0.1", False), ("127.8.9.10", False), ("::1", False),
        ("10.1.2.3", False), ("172.16.0.1", False), ("172.31.255.255", False), ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata (link-local)
        ("fe80::1", False), ("fe80::1%eth0", False), ("fc00::1", False),
        ("fd00:ec2::254", False),  # AWS metadata over IPv6 (unique local)
        ("100.64.0.1", False), ("100.100.100.200", False),  # shared address space (Alibaba metadata)
        ("0.0.0.0", False), ("::", False), ("224.0.0.1", False), ("ff02::1", False), ("240.0.0.1", False),
        ("255.255.255.255", False), ("198.18.0.1", False),
        ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False), ("::ffff:8.8.8.8", True),
        ("2002:7f00:0001::", False),  # 6to4 of 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo whose client is 127.0.0.1
        ("not-an-address", False),
    ],
)
def test_address_allowed(address: str, allowed: bool) -> None:
    assert address_allowed(address) is allowed


class _Server:
    """GET paths answered from a table; ``hits`` holds (path, Host header) of each request."""

    def __init__(self) -> None:
        hits: list[tuple[str, str]] = []
        self.hits = hits
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hits.append((self.path, self.headers.get("host", "")))
                status, headers, body = server.answer(self.path)
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if not any(k == "content-length" for k, _ in headers):
                    self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        p = self.port
        table: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {
            "/img.png": (200, [("content-type", "image/png")], PNG),
            "/typed.png": (200, [("content-type", "image/png; charset=binary")], PNG),
            "/fake.png": (200, [("content-type", "image/png")], b"<html>not an image</html>"),
            "/page": (200, [("content-type", "text/html")], b"<html></html>"),
            "/big.png": (200, [("content-type", "image/png")], PNG + b"\0" * 4096),
            "/missing.png": (404, [("content-type", "text/plain")], b"no"),
            "/redirect": (302, [("location", "/img.png")], b""),
            "/loop": (302, [("location", "/loop")], b""),
            "/to-internal": (302, [("location", f"http://internal.test:{p}/img.png")], b""),
            "/to-file": (302, [("location", "file:///etc/passwd")], b""),
        }
        return table.get(path, (404, [], b""))

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    s = _Server()
    try:
        yield s
    finally:
        s.close()


class _DNS:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return {"public.test": ["127.0.0.1"], "internal.test": ["10.0.0.7"],
                "rebind.test": ["127.0.0.1", "169.254.169.254"]}.get(host, [])


def _fetcher(dns: _DNS, **config: Any) -> ImageFetcher:
    return ImageFetcher(ImagesConfig(**config), resolve=dns, allowed=lambda a: a == "127.0.0.1")


def _fetch(fetcher: ImageFetcher, url: str) -> tuple[str, bytes]:
    return asyncio.run(fetcher.fetch(url))


def _refused(fetcher: ImageFetcher, url: str) -> str:
    with pytest.raises(BadRequest) as info:
        _fetch(fetcher, url)
    assert info.value.code == "invalid_image_url" and info.value.status == 400
    return info.value.message


def test_fetches_from_the_checked_address_with_the_urls_host(server: _Server) -> None:
    dns = _DNS()
    assert _fetch(_fetcher(dns), f"http://public.test:{server.port}/img.png") == ("image/png", PNG)
    assert dns.asked == ["public.test"]  # resolved once; the connection went to that address
    assert server.hits[-1] == ("/img.png", f"public.test:{server.port}")
    assert _fetch(_fetcher(dns), f"http://public.test:{server.port}/typed.png") == ("image/png", PNG)


def test_non_public_addresses_are_refused_before_any_connection(server: _Server) -> None:
    dns = _DNS()
    before = len(server.hits)
    assert "non-public" in _refused(_fetcher(dns), f"http://internal.test:{server.port}/img.png")
    # one address of several is enough to refuse (a name that also resolves inside: DNS rebinding)
    assert "non-public" in _refused(_fetcher(dns), f"http://rebind.test:{server.port}/img.png")
    # the real rule: loopback itself, by address or by name
    real = ImageFetcher(ImagesConfig())
    assert "non-public" in _refused(real, f"http://127.0.0.1:{server.port}/img.png")
    assert "non-public" in _refused(real, f"http://localhost:{server.port}/img.png")
    assert "non-public" in _refused(real, f"http://[::ffff:127.0.0.1]:{server.port}/img.png")
    assert "non-public" in _refused(real, f"http://2130706433:{server.port}/img.png")  # 127.0.0.1, decimal
    assert len(server.hits) == before


def test_allow_private_lifts_the_address_rule(server: _Server) -> None:
    loose = ImageFetcher(ImagesConfig(allow_private=True))
    assert _fetch(loose, f"http://127.0.0.1:{server.port}/img.png") == ("image/png", PNG)


def test_redirects_are_followed_and_checked_again(server: _Server) -> None:
    dns = _DNS()
    assert _fetch(_fetcher(dns), f"http://public.test:{server.port}/redirect") == ("image/png", PNG)
    before = len(server.hits)
    assert "non-public" in _refused(_fetcher(dns), f"http://public.test:{server.port}/to-internal")
    assert dns.asked[-1] == "internal.test" and len(server.hits) == before + 1  # only the first hop
    assert "only http and https" in _refused(_fetcher(dns), f"http://public.test:{server.port}/to-file")
    assert "redirects" in _refused(_fetcher(dns, max_redirects=2), f"http://public.test:{server.port}/loop")


def test_bounds_and_types(server: _Server) -> None:
    dns = _DNS()
    base = f"http://public.test:{server.port}"
    assert "larger than 100 bytes" in _refused(_fetcher(dns, max_bytes=100), f"{base}/big.png")
    assert "content type text/html" in _refused(_fetcher(dns), f"{base}/page")
    assert "not image/png" in _refused(_fetcher(dns), f"{base}/fake.png")
    assert "answered 404" in _refused(_fetcher(dns), f"{base}/missing.png")
    assert "accepted image" in _refused(_fetcher(dns, allowed_types=["image/jpeg"]), f"{base}/img.png")
    for url in ("ftp://public.test/x.png", "http:///x.png", f"http://user:pw@public.test:{server.port}/img.png"):
        _refused(_fetcher(dns), url)
    assert "does not resolve" in _refused(_fetcher(dns), f"http://nowhere.test:{server.port}/img.png")


def test_a_hanging_server_is_bounded_by_the_timeout() -> None:
    import socket

    with socket.socket() as listener:  # accepts (the backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        fetcher = ImageFetcher(ImagesConfig(timeout=0.3, allow_private=True))
        assert "did not download within 0.3s" in _refused(fetcher, f"http://127.0.0.1:{port}/img.png")


def test_inline_images_rewrites_only_http_urls(server: _Server) -> None:
    dns = _DNS()
    url = f"http://public.test:{server.port}/img.png"
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    body = json.dumps({"model": "m", "temperature": 0.5, "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
            {"type": "image_url", "image_url": {"url": data_url}},
        ]},
    ]}).encode()
    out = asyncio.run(inline_images(body, _fetcher(dns)))
    assert out is not None
    parts = json.loads(out)["messages"][1]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}}
    assert parts[2]["image_url"]["url"] == data_url and json.loads(out)["temperature"] == 0.5
    plain = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert asyncio.run(inline_images(plain, _fetcher(dns))) is None
    many = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}] * 3}]}).encode()
    with pytest.raises(BadRequest) as info:
        asyncio.run(inline_images(many, _fetcher(dns, max_images=2)))
    assert info.value.code == "too_many_images"
