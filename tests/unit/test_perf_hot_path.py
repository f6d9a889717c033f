"""The pass-through path's fast paths keep their exact behaviour: the header parser's word-at-a-time value
check and name lower-casing and its shared header names, the forwarded-header pre-scan, the list of live
requests. Each against the plain byte-by-byte rule, in the compiled module and its twin.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest

from gateway._core import http_py
from gateway._core.errors import ParseError
from gateway._core.http import Request
from gateway.context import Context, LiveRequests
from gateway.providers.openai import OpenAITranslator

try:
    from gateway._core import _http
except ImportError:  # pragma: no cover - only when the extension is not built
    if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
        raise
    _http = None  # type: ignore[assignment]

IMPLS = [
    pytest.param(http_py, id="twin"),
    pytest.param(_http, id="compiled", marks=pytest.mark.skipif(_http is None, reason="not built")),
]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


def _parse(mod: ModuleType, *lines: bytes) -> Any:
    p = mod.RequestParser()
    p.feed(b"\r\n".join((b"GET / HTTP/1.1", b"Host: h", *lines)) + b"\r\n\r\n")
    return p.next_request()


def _value_ok(value: bytes) -> bool:
    """RFC 9110's field-value rule as the parser applies it: no control character but HT."""
    return not any((c < 32 and c != 9) or c == 127 for c in value)


def test_every_byte_at_every_position_of_a_value(impl: ModuleType) -> None:
    # 1 to 3 words and a tail: each byte value in every lane of the word and in the tail
    for length in (7, 8, 9, 16, 23):
        for pos in range(length):
            for c in range(256):
                if c in (10, 13):  # line ends: another rule
                    continue
                value = bytearray(b"v" * length)
                value[pos] = c
                value = bytes(value)
                ok = _value_ok(value)
                try:
                    r = _parse(impl, b"X-V: " + value)
                except ParseError as exc:
                    assert not ok, (length, pos, c, exc)
                    assert exc.status == 400
                else:
                    assert ok, (length, pos, c)
                    assert r.header(b"x-v") == value.strip(b" \t")


def test_names_are_lower_cased_at_every_length_and_offset(impl: ModuleType) -> None:
    letters = b"AbCdEfGhIjKlMnOpQrStUvWxYz-Az_09!#$%&'*+.^`|~ZA"
    for length in range(1, 45):
        for start in range(3):
            name = (letters * 2)[start:start + length]
            r = _parse(impl, name + b": 1")
            assert r.headers[-1] == (name.lower(), b"1")


def test_the_usual_names_are_shared_and_others_are_not() -> None:
    if _http is None:
        pytest.skip("not built")
    a = _parse(_http, b"Content-Type: a", b"X-Custom-Thing: b")
    b = _parse(_http, b"CONTENT-TYPE: c", b"x-custom-thing: d")
    assert a.headers[1][0] == b"content-type" and a.headers[1][0] is b.headers[1][0]
    assert a.headers[2][0] == b.headers[2][0] == b"x-custom-thing"
    # a name as long as a shared one but different is its own
    assert _parse(_http, b"Content-Typf: x").headers[1] == (b"content-typf", b"x")


def _request(*headers: tuple[bytes, bytes]) -> Request:
    return Request("POST", "/v1/chat/completions", "", 11, list(headers), b"{}", True)


def test_forwarded_keeps_the_list_order_and_the_first_value() -> None:
    t = OpenAITranslator("o", _NoTransport(), "/v1", None, {})
    assert t.forwarded(_request((b"host", b"h"), (b"content-type", b"j"))) is None
    # a name with a candidate's first byte that is not in the list
    assert t.forwarded(_request((b"origin", b"x"), (b"openai-other", b"y"))) is None
    got = t.forwarded(_request((b"openai-project", b"p"), (b"openai-beta", b"b1"), (b"openai-beta", b"b2")))
    assert got == [("openai-beta", "b1"), ("openai-project", "p")]
    t.forward_headers([])
    assert t.forwarded(_request((b"openai-beta", b"b1"))) is None
    t.forward_headers(["X-Trace"])
    assert t.forwarded(_request((b"x-trace", b"t"))) == [("x-trace", "t")]
    assert t.forwarded(_request((b"x-other", b"t"))) is None


class _NoTransport:
    async def request(self, *args: Any) -> Any:  # pragma: no cover - nothing is sent here
        raise AssertionError("no request expected")

    async def close(self) -> None:  # pragma: no cover
        pass


def _ctx() -> Context:
    return Context(_request(), "r", None, None)  # type: ignore[arg-type]


def test_live_requests() -> None:
    live = LiveRequests()
    assert not live and len(live) == 0 and list(live) == []
    a, b, c = _ctx(), _ctx(), _ctx()
    for ctx in (a, b, c):
        live.add(ctx)
    assert len(live) == 3 and set(map(id, live)) == {id(a), id(b), id(c)}
    live.discard(b)  # the middle one
    assert len(live) == 2 and set(map(id, live)) == {id(a), id(c)}
    live.discard(b)  # not in: nothing
    live.discard(_ctx())
    assert len(live) == 2
    for ctx in live:  # a snapshot: taking them out while iterating is safe
        live.discard(ctx)
    assert not live and list(live) == []
    live.add(b)  # a context taken out may come back
    assert list(live) == [b]
