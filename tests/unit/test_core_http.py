"""The HTTP/1.1 core: the compiled ``_http`` module and its pure-Python twin ``http_py``.

Example tests run against both implementations; the property tests drive both with the same bytes, in
the same fragmentation, and demand identical results (and, for well-formed input, the same result
whatever the fragmentation).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway._core
from gateway._core import http_py
from gateway._core.errors import ParseError

try:
    from gateway._core import _http
except ImportError:  # pragma: no cover - only when the extension is not built
    if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
        raise
    _http = None  # type: ignore[assignment]

needs_compiled = pytest.mark.skipif(_http is None, reason="gateway._core._http is not built")

IMPLS = [
    pytest.param(http_py, id="twin"),
    pytest.param(_http, id="compiled", marks=needs_compiled),
]


def props(examples: int) -> settings:
    """Hypothesis settings: ``examples`` per test, or GATEWAY_PROPERTY_EXAMPLES (e.g. 5000) for a deeper run."""
    return settings(
        max_examples=int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", examples)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


PROPS = props(200)
HEAVY = props(150)  # the tests whose generators build whole requests or responses


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


# ---------------------------------------------------------------------------------------------------------
# helpers


def fields(r: Any) -> tuple[Any, ...]:
    """A request as a comparable tuple (and its types checked: the two implementations must agree)."""
    assert type(r.method) is str and type(r.path) is str and type(r.query) is str
    assert type(r.body) is bytes
    assert type(r.headers) is list
    for kv in r.headers:
        assert type(kv) is tuple and len(kv) == 2
        assert type(kv[0]) is bytes and type(kv[1]) is bytes
    return (r.method, r.path, r.query, int(r.version), list(r.headers), r.body, bool(r.keep_alive))


def parse_one(mod: ModuleType, data: bytes, **kw: Any) -> Any:
    p = mod.RequestParser(**kw)
    p.feed(data)
    r = p.next_request()
    assert r is not None
    return r


def parse_all(mod: ModuleType, pieces: list[bytes], **kw: Any) -> list[tuple[Any, ...]]:
    p = mod.RequestParser(**kw)
    out = []
    for piece in pieces:
        p.feed(piece)
        while (r := p.next_request()) is not None:
            out.append(fields(r))
    assert p.state == mod.STATE_IDLE
    assert p.buffered == 0
    return out


def rejection(mod: ModuleType, pieces: list[bytes], **kw: Any) -> int | None:
    """The status of the ParseError raised while feeding ``pieces`` (None if none)."""
    p = mod.RequestParser(**kw)
    try:
        for piece in pieces:
            p.feed(piece)
            while p.next_request() is not None:
                pass
    except ParseError as exc:
        return exc.status
    return None


def run_requests(mod: ModuleType, pieces: list[bytes], **kw: Any) -> tuple[list[Any], tuple[Any, ...]]:
    """Feed ``pieces``; return the full trace (for comparing implementations) and the outcome (requests,
    error status, final state), which must not depend on the fragmentation for well-formed input."""
    p = mod.RequestParser(**kw)
    trace: list[Any] = []
    reqs: list[tuple[Any, ...]] = []
    try:
        for piece in pieces:
            p.feed(piece)
            trace.append(("fed", p.state, p.buffered))
            while (r := p.next_request()) is not None:
                f = fields(r)
                reqs.append(f)
                trace.append(("req", f, p.state, p.buffered))
            trace.append(("wait", p.state, p.buffered, p.expect_continue, p.expect_continue))
    except ParseError as exc:
        assert isinstance(exc.status, int) and isinstance(exc.message, str)
        trace.append(("error", exc.status))
        return trace, (reqs, exc.status, None)
    return trace, (reqs, None, (p.state, p.buffered))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo ``len(data) + 1``; repeated offsets give empty pieces)."""
    cuts = sorted(c % (len(data) + 1) for c in cuts)
    out, prev = [], 0
    for c in cuts:
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return out


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def req(*lines: bytes, line: bytes = b"GET / HTTP/1.1", body: bytes = b"") -> bytes:
    return b"\r\n".join((line, *lines)) + b"\r\n\r\n" + body


HOST = b"Host: example.com"


# ---------------------------------------------------------------------------------------------------------
# RequestParser: examples


def test_both_implementations_share_the_error_class() -> None:
    assert http_py.ParseError is ParseError
    if _http is not None:
        assert _http.ParseError is ParseError
        assert sorted(_http.__all__) == sorted(http_py.__all__)
        assert (_http.STATE_IDLE, _http.STATE_HEAD, _http.STATE_BODY) == (
            http_py.STATE_IDLE, http_py.STATE_HEAD, http_py.STATE_BODY)


def test_simple_get(impl: ModuleType) -> None:
    r = parse_one(impl, req(HOST, b"Accept: */*", line=b"GET /v1/models HTTP/1.1"))
    assert fields(r) == (
        "GET", "/v1/models", "", 11, [(b"host", b"example.com"), (b"accept", b"*/*")], b"", True
    )
    assert r.header(b"host") == b"example.com"
    assert r.header(b"missing") is None
    assert "GET" in repr(r)


@pytest.mark.parametrize(
    "method", ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "M-SEARCH", "X_Y!~1"]
)
def test_methods(impl: ModuleType, method: str) -> None:
    r = parse_one(impl, req(HOST, line=method.encode() + b" /x HTTP/1.1"))
    assert r.method == method
    assert r.path == "/x"


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", "/", ""),
        (b"/v1/chat/completions", "/v1/chat/completions", ""),
        (b"/a/b?x=1&y=2", "/a/b", "x=1&y=2"),
        (b"/?", "/", ""),
        (b"/p?a?b", "/p", "a?b"),
        (b"/p?", "/p", ""),
        (b"/%7Euser/a%20b;p=1?q=%2F#frag", "/%7Euser/a%20b;p=1", "q=%2F#frag"),
        (b"//double", "//double", ""),
    ],
)
def test_targets_and_query(impl: ModuleType, target: bytes, path: str, query: str) -> None:
    r = parse_one(impl, req(HOST, line=b"GET " + target + b" HTTP/1.1"))
    assert (r.path, r.query) == (path, query)


def test_options_star(impl: ModuleType) -> None:
    r = parse_one(impl, req(HOST, line=b"OPTIONS * HTTP/1.1"))
    assert (r.method, r.path, r.query) == ("OPTIONS", "*", "")


def test_headers_lowercased_and_values_stripped(impl: ModuleType) -> None:
    r = parse_one(impl, req(
        HOST,
        b"Content-TYPE:   application/json \t",
        b"X-Empty:",
        b"X-Blank: \t ",
        b"x-inner:  a  b\tc ",
        b"X-Dup: 1",
        b"x-dup: 2",
        b"X-Obs-Text: caf\xc3\xa9 \x80\xff",
        b"X-Tab:\tv",
        b"!#$%&'*+-.^_`|~09aZ: token-chars",
    ))
    assert r.headers == [
        (b"host", b"example.com"),
        (b"content-type", b"application/json"),
        (b"x-empty", b""),
        (b"x-blank", b""),
        (b"x-inner", b"a  b\tc"),
        (b"x-dup", b"1"),
        (b"x-dup", b"2"),
        (b"x-obs-text", b"caf\xc3\xa9 \x80\xff"),
        (b"x-tab", b"v"),
        (b"!#$%&'*+-.^_`|~09az", b"token-chars"),
    ]
    assert r.header(b"x-dup") == b"1"


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [
        (b"HTTP/1.1", None, True),
        (b"HTTP/1.1", b"close", False),
        (b"HTTP/1.1", b"Close", False),
        (b"HTTP/1.1", b"CLOSE", False),
        (b"HTTP/1.1", b"keep-alive", True),
        (b"HTTP/1.1", b"upgrade, close", False),
        (b"HTTP/1.1", b"keep-alive, close", False),
        (b"HTTP/1.1", b"close,keep-alive", False),
        (b"HTTP/1.1", b"foo", True),
        (b"HTTP/1.1", b"closed", True),
        (b"HTTP/1.1", b"", True),
        (b"HTTP/1.0", None, False),
        (b"HTTP/1.0", b"keep-alive", True),
        (b"HTTP/1.0", b"Keep-Alive", True),
        (b"HTTP/1.0", b" foo , keep-alive ", True),
        (b"HTTP/1.0", b"close", False),
        (b"HTTP/1.0", b"close, keep-alive", False),
        (b"HTTP/1.0", b"keep-alives", False),
    ],
)
def test_keep_alive_rules(impl: ModuleType, version: bytes, connection: bytes | None, expected: bool) -> None:
    lines = [HOST] if connection is None else [HOST, b"Connection: " + connection]
    r = parse_one(impl, req(*lines, line=b"GET / " + version))
    assert r.keep_alive is expected
    assert r.version == (11 if version == b"HTTP/1.1" else 10)


def test_http10_needs_no_host(impl: ModuleType) -> None:
    r = parse_one(impl, req(line=b"GET / HTTP/1.0"))
    assert (r.version, r.headers, r.keep_alive) == (10, [], False)


def test_leading_crlfs_are_ignored(impl: ModuleType) -> None:
    data = b"\r\n\r\n\r\n" + req(HOST) + b"\r\n" + req(HOST, line=b"GET /2 HTTP/1.1")
    assert [f[1] for f in parse_all(impl, [data])] == ["/", "/2"]
    assert [f[1] for f in parse_all(impl, bytewise(data))] == ["/", "/2"]
    p = impl.RequestParser()
    p.feed(b"\r\n\r\n")
    assert p.state == impl.STATE_HEAD
    assert p.next_request() is None
    assert p.state == impl.STATE_IDLE


def test_body_by_content_length(impl: ModuleType) -> None:
    data = req(HOST, b"Content-Length: 11", line=b"POST /p HTTP/1.1", body=b"hello world")
    r = parse_one(impl, data)
    assert (r.method, r.body) == ("POST", b"hello world")
    assert parse_one(impl, req(HOST, b"Content-Length: 0", line=b"POST / HTTP/1.1")).body == b""
    assert parse_one(impl, req(HOST, b"Content-Length: 0005", body=b"abcde")).body == b"abcde"
    # a body without framing is not a body: the bytes are the next request
    p = impl.RequestParser()
    p.feed(req(HOST, line=b"POST / HTTP/1.1") + req(HOST))
    assert p.next_request().body == b""
    assert p.next_request().method == "GET"


def test_body_by_content_length_arrives_in_parts(impl: ModuleType) -> None:
    p = impl.RequestParser()
    p.feed(req(HOST, b"Content-Length: 10", line=b"POST / HTTP/1.1") + b"abc")
    assert p.next_request() is None
    assert p.state == impl.STATE_BODY
    assert p.buffered == 3
    p.feed(b"defg")
    assert p.next_request() is None
    p.feed(b"hij" + b"GET")
    r = p.next_request()
    assert r.body == b"abcdefghij"
    assert p.state == impl.STATE_HEAD
    assert p.buffered == 3
    assert p.next_request() is None


CHUNKED = b"Transfer-Encoding: chunked"


@pytest.mark.parametrize(
    ("encoded", "body"),
    [
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
        (b"0\r\n\r\n", b""),
        (b"000\r\n\r\n", b""),
        (b"A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", b"0123456789abcdefghij"),
        (b"0005\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5;name=value\r\nhello\r\n0;last\r\n\r\n", b"hello"),
        (b"5 ; ext=\"quoted value\"\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5\t;a;b=c\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5  \r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nChecksum: abc\r\n\r\n", b"hello"),
        (b"3\r\n\r\n\r\r\n0\r\n\r\n", b"\r\n\r"),
    ],
)
def test_chunked_bodies(impl: ModuleType, encoded: bytes, body: bytes) -> None:
    data = req(HOST, CHUNKED, line=b"POST / HTTP/1.1", body=encoded)
    nxt = req(HOST, line=b"GET /next HTTP/1.1")
    for pieces in ([data + nxt], bytewise(data + nxt), [data, nxt]):
        got = parse_all(impl, pieces)
        assert [(f[0], f[5]) for f in got] == [("POST", body), ("GET", b"")]
        assert got[0][4][1] == (b"transfer-encoding", b"chunked")


def test_transfer_encoding_value_is_case_insensitive(impl: ModuleType) -> None:
    data = req(HOST, b"Transfer-Encoding:  Chunked ", body=b"1\r\nx\r\n0\r\n\r\n")
    assert parse_one(impl, data).body == b"x"


PIPELINE = (
    req(HOST, line=b"GET /a?x=1 HTTP/1.1")
    + req(HOST, b"Content-Length: 5", b"Connection: close", line=b"POST /b HTTP/1.1", body=b"12345")
    + b"\r\n"
    + req(HOST, CHUNKED, line=b"PUT /c HTTP/1.1", body=b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n")
    + req(b"Connection: keep-alive", line=b"DELETE /d HTTP/1.0")
)
PIPELINE_EXPECTED = [
    ("GET", "/a", "x=1", 11, [(b"host", b"example.com")], b"", True),
    ("POST", "/b", "", 11,
     [(b"host", b"example.com"), (b"content-length", b"5"), (b"connection", b"close")], b"12345", False),
    ("PUT", "/c", "", 11, [(b"host", b"example.com"), (b"transfer-encoding", b"chunked")], b"abcde", True),
    ("DELETE", "/d", "", 10, [(b"connection", b"keep-alive")], b"", True),
]


def test_pipelined_requests_in_one_buffer(impl: ModuleType) -> None:
    assert parse_all(impl, [PIPELINE]) == PIPELINE_EXPECTED


def test_pipelined_requests_split_at_every_byte_boundary(impl: ModuleType) -> None:
    for i in range(len(PIPELINE) + 1):
        assert parse_all(impl, [PIPELINE[:i], PIPELINE[i:]]) == PIPELINE_EXPECTED, i
    assert parse_all(impl, bytewise(PIPELINE)) == PIPELINE_EXPECTED
    for i in range(0, len(PIPELINE), 7):
        pieces = [PIPELINE[:i], PIPELINE[i:i + 13], PIPELINE[i + 13:]]
        assert parse_all(impl, pieces) == PIPELINE_EXPECTED, i


def test_state_transitions(impl: ModuleType) -> None:
    p = impl.RequestParser()
    assert (p.state, p.buffered) == (impl.STATE_IDLE, 0)
    assert p.next_request() is None
    assert p.state == impl.STATE_IDLE
    p.feed(b"")
    assert p.state == impl.STATE_IDLE
    p.feed(b"POST / HT")
    assert p.state == impl.STATE_HEAD  # set by feed already
    assert p.next_request() is None
    assert p.state == impl.STATE_HEAD
    p.feed(b"TP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab")
    assert p.next_request() is None
    assert p.state == impl.STATE_BODY
    p.feed(b"")
    assert p.state == impl.STATE_BODY
    p.feed(b"cd")
    assert p.next_request().body == b"abcd"
    assert (p.state, p.buffered) == (impl.STATE_IDLE, 0)
    assert p.next_request() is None
    p.feed(req(HOST) + b"GE")
    assert p.next_request() is not None
    assert (p.state, p.buffered) == (impl.STATE_HEAD, 2)
    assert p.next_request() is None
    assert p.state == impl.STATE_HEAD
    p.feed(b"T / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert p.next_request().method == "GET"
    assert p.state == impl.STATE_IDLE
    # chunked body pending
    p.feed(req(HOST, CHUNKED) + b"5\r\nhel")
    assert p.next_request() is None
    assert p.state == impl.STATE_BODY
    p.feed(b"lo\r\n0\r\n\r")
    assert p.next_request() is None
    assert p.state == impl.STATE_BODY
    p.feed(b"\n")
    assert p.next_request().body == b"hello"
    assert p.state == impl.STATE_IDLE


def test_expect_continue_once(impl: ModuleType) -> None:
    p = impl.RequestParser()
    assert p.expect_continue is False
    p.feed(req(HOST, b"Expect: 100-continue", b"Content-Length: 3", line=b"POST / HTTP/1.1"))
    assert p.next_request() is None
    assert p.expect_continue is True
    assert p.expect_continue is False  # once
    assert p.next_request() is None
    assert p.expect_continue is False
    p.feed(b"abc")
    assert p.next_request().body == b"abc"
    assert p.expect_continue is False
    # case-insensitive, chunked
    p.feed(req(HOST, b"Expect: 100-Continue", CHUNKED, line=b"POST / HTTP/1.1"))
    assert p.next_request() is None
    assert p.expect_continue is True
    p.feed(b"0\r\n\r\n")
    assert p.next_request() is not None
    assert p.expect_continue is False


@pytest.mark.parametrize(
    "data",
    [
        req(HOST, b"Expect: 100-continue", b"Content-Length: 3", line=b"POST / HTTP/1.1", body=b"abc"),
        req(HOST, b"Expect: 100-continue", b"Content-Length: 0", line=b"POST / HTTP/1.1"),
        req(HOST, b"Expect: 100-continue"),
        req(HOST, b"Expect: something-else", b"Content-Length: 3", line=b"POST / HTTP/1.1"),
    ],
    ids=["body-already-here", "cl-zero", "no-body", "other-expectation"],
)
def test_expect_continue_not_when_body_is_not_pending(impl: ModuleType, data: bytes) -> None:
    p = impl.RequestParser()
    p.feed(data)
    p.next_request()
    assert p.expect_continue is False


def test_expect_continue_cleared_when_body_completes_unread(impl: ModuleType) -> None:
    p = impl.RequestParser()
    p.feed(req(HOST, b"Expect: 100-continue", b"Content-Length: 1", line=b"POST / HTTP/1.1"))
    assert p.next_request() is None
    p.feed(b"x")
    assert p.next_request().body == b"x"
    assert p.expect_continue is False


def test_expect_continue_ignored_for_http10(impl: ModuleType) -> None:
    p = impl.RequestParser()
    p.feed(req(b"Expect: 100-continue", b"Content-Length: 3", line=b"POST / HTTP/1.0"))
    assert p.next_request() is None
    assert p.expect_continue is False


# ---------------------------------------------------------------------------------------------------------
# RequestParser: rejections

LONG = b"x" * 40

REJECTIONS: list[tuple[str, bytes, int, dict[str, int]]] = [
    # Content-Length / Transfer-Encoding (request smuggling shapes)
    ("cl-and-te", req(HOST, b"Content-Length: 5", CHUNKED, body=b"0\r\n\r\n"), 400, {}),
    ("te-and-cl", req(HOST, CHUNKED, b"Content-Length: 5", body=b"0\r\n\r\n"), 400, {}),
    ("cl-and-te-gzip", req(HOST, b"Content-Length: 5", b"Transfer-Encoding: gzip"), 501, {}),
    ("dup-cl-different", req(HOST, b"Content-Length: 5", b"Content-Length: 6"), 400, {}),
    ("dup-cl-equal", req(HOST, b"Content-Length: 5", b"Content-Length: 5", body=b"hello"), 400, {}),
    ("dup-cl-case", req(HOST, b"content-length: 5", b"CONTENT-LENGTH: 5", body=b"hello"), 400, {}),
    ("cl-list", req(HOST, b"Content-Length: 5, 5", body=b"hello"), 400, {}),
    ("cl-abc", req(HOST, b"Content-Length: abc"), 400, {}),
    ("cl-negative", req(HOST, b"Content-Length: -1"), 400, {}),
    ("cl-plus", req(HOST, b"Content-Length: +5"), 400, {}),
    ("cl-inner-space", req(HOST, b"Content-Length: 1 2"), 400, {}),
    ("cl-empty", req(HOST, b"Content-Length:"), 400, {}),
    ("cl-empty-ws", req(HOST, b"Content-Length:  \t"), 400, {}),
    ("cl-19-digits", req(HOST, b"Content-Length: 1234567890123456789"), 400, {}),
    ("cl-19-zeros", req(HOST, b"Content-Length: 0000000000000000000"), 400, {}),
    ("cl-hex", req(HOST, b"Content-Length: 0x5"), 400, {}),
    ("cl-decimal", req(HOST, b"Content-Length: 5.0"), 400, {}),
    ("cl-unicode-digit", req(HOST, b"Content-Length: \xd9\xa5"), 400, {}),
    ("dup-te", req(HOST, CHUNKED, CHUNKED, body=b"0\r\n\r\n"), 400, {}),
    ("te-gzip", req(HOST, b"Transfer-Encoding: gzip"), 501, {}),
    ("te-chunked-gzip", req(HOST, b"Transfer-Encoding: chunked, gzip"), 501, {}),
    ("te-gzip-chunked", req(HOST, b"Transfer-Encoding: gzip, chunked"), 501, {}),
    ("te-identity", req(HOST, b"Transfer-Encoding: identity"), 501, {}),
    ("te-empty", req(HOST, b"Transfer-Encoding:"), 501, {}),
    ("te-chunked-comma", req(HOST, b"Transfer-Encoding: chunked,"), 501, {}),
    ("te-http10", req(CHUNKED, line=b"POST / HTTP/1.0", body=b"0\r\n\r\n"), 400, {}),
    # header syntax
    ("obs-fold-space", req(HOST, b"X-A: a", b" folded"), 400, {}),
    ("obs-fold-tab", req(HOST, b"X-A: a", b"\tfolded"), 400, {}),
    ("obs-fold-first-line", req(b" Host: example.com"), 400, {}),
    ("space-before-colon", req(HOST, b"Content-Length : 5", body=b"hello"), 400, {}),
    ("space-before-colon-te", req(HOST, b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400, {}),
    ("tab-before-colon", req(HOST, b"X-A\t: 1"), 400, {}),
    ("no-colon", req(HOST, b"X-A 1"), 400, {}),
    ("empty-name", req(HOST, b": v"), 400, {}),
    ("name-paren", req(HOST, b"X(A): 1"), 400, {}),
    ("name-at", req(HOST, b"X@A: 1"), 400, {}),
    ("name-quote", req(HOST, b'X"A: 1'), 400, {}),
    ("name-slash", req(HOST, b"X/A: 1"), 400, {}),
    ("name-nul", req(HOST, b"X\x00A: 1"), 400, {}),
    ("name-non-ascii", req(HOST, b"X\xc3\xa9: 1"), 400, {}),
    ("name-bare-cr", req(HOST, b"X\rA: 1"), 400, {}),
    ("value-nul", req(HOST, b"X-A: a\x00b"), 400, {}),
    ("value-soh", req(HOST, b"X-A: \x01"), 400, {}),
    ("value-esc", req(HOST, b"X-A: a\x1bb"), 400, {}),
    ("value-del", req(HOST, b"X-A: a\x7fb"), 400, {}),
    ("value-bare-cr", req(HOST, b"X-A: a\rb"), 400, {}),
    ("value-bare-lf", req(HOST, b"X-A: a\nb"), 400, {}),
    ("value-trailing-cr", req(HOST, b"X-A: a\r"), 400, {}),
    ("bare-lf-header-line", req(HOST + b"\nContent-Length: 5", body=b"hello"), 400, {}),
    # Host
    ("missing-host", req(), 400, {}),
    ("missing-host-other-headers", req(b"X-Host: a"), 400, {}),
    ("duplicate-host", req(HOST, HOST), 400, {}),
    ("duplicate-host-case", req(b"host: a", b"HOST: b"), 400, {}),
    ("duplicate-host-http10", req(HOST, HOST, line=b"GET / HTTP/1.0"), 200, {}),  # allowed: not 1.1
    # request line
    ("double-space", req(HOST, line=b"GET  / HTTP/1.1"), 400, {}),
    ("double-space-2", req(HOST, line=b"GET /  HTTP/1.1"), 400, {}),
    ("trailing-space", req(HOST, line=b"GET / HTTP/1.1 "), 400, {}),
    ("leading-space", req(HOST, line=b" GET / HTTP/1.1"), 400, {}),
    ("tab-separator", req(HOST, line=b"GET\t/ HTTP/1.1"), 400, {}),
    ("missing-version", req(HOST, line=b"GET /"), 400, {}),
    ("only-method", req(HOST, line=b"GET"), 400, {}),
    ("empty-target", req(HOST, line=b"GET  HTTP/1.1"), 400, {}),
    ("lowercase-version", req(HOST, line=b"GET / http/1.1"), 400, {}),
    ("version-no-dot", req(HOST, line=b"GET / HTTP/11"), 400, {}),
    ("version-1.10", req(HOST, line=b"GET / HTTP/1.10"), 400, {}),
    ("version-2", req(HOST, line=b"GET / HTTP/2"), 400, {}),
    ("version-garbage", req(HOST, line=b"GET / FOO/1.1"), 400, {}),
    ("version-trailing-cr", req(HOST, line=b"GET / HTTP/1.1\r"), 400, {}),
    ("http-2.0", req(HOST, line=b"GET / HTTP/2.0"), 505, {}),
    ("http-1.2", req(HOST, line=b"GET / HTTP/1.2"), 505, {}),
    ("http-0.9", req(HOST, line=b"GET / HTTP/0.9"), 505, {}),
    ("http-3.0", req(HOST, line=b"GET / HTTP/3.0"), 505, {}),
    ("http-x.y", req(HOST, line=b"GET / HTTP/x.y"), 505, {}),  # the twin's rule: HTTP/ + 3 chars
    ("method-paren", req(HOST, line=b"G(ET / HTTP/1.1"), 400, {}),
    ("method-non-ascii", req(HOST, line=b"G\xc3\x89T / HTTP/1.1"), 400, {}),
    ("method-nul", req(HOST, line=b"G\x00T / HTTP/1.1"), 400, {}),
    ("absolute-form", req(HOST, line=b"GET http://example.com/ HTTP/1.1"), 400, {}),
    ("authority-form", req(HOST, line=b"CONNECT example.com:443 HTTP/1.1"), 400, {}),
    ("star-not-options", req(HOST, line=b"GET * HTTP/1.1"), 400, {}),
    ("star-options-lowercase", req(HOST, line=b"options * HTTP/1.1"), 400, {}),
    ("star-with-path", req(HOST, line=b"OPTIONS *x HTTP/1.1"), 400, {}),
    ("relative-target", req(HOST, line=b"GET a/b HTTP/1.1"), 400, {}),
    ("target-non-ascii", req(HOST, line=b"GET /caf\xc3\xa9 HTTP/1.1"), 400, {}),
    ("target-high-byte", req(HOST, line=b"GET /\x80 HTTP/1.1"), 400, {}),
    ("target-nul", req(HOST, line=b"GET /\x00 HTTP/1.1"), 400, {}),
    ("target-del", req(HOST, line=b"GET /\x7f HTTP/1.1"), 400, {}),
    ("target-tab", req(HOST, line=b"GET /\tx HTTP/1.1"), 400, {}),
    ("target-bare-lf", req(HOST, line=b"GET /\nx HTTP/1.1"), 400, {}),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, {}),
    # sizes
    ("head-too-large", req(HOST, b"X-Big: " + b"a" * 200), 431, {"max_header_bytes": 128}),
    ("head-never-ends", b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 200, 431, {"max_header_bytes": 128}),
    ("head-no-crlf-at-all", b"G" * 300, 431, {"max_header_bytes": 128}),
    ("body-cl-too-large", req(HOST, b"Content-Length: 101", line=b"POST / HTTP/1.1"), 413,
     {"max_body_bytes": 100}),
    ("body-cl-18-digits", req(HOST, b"Content-Length: 999999999999999999"), 413, {}),
    ("body-chunked-too-large", req(HOST, CHUNKED, body=b"40\r\n" + b"a" * 64 + b"\r\n25\r\n" + b"b" * 37
                                    + b"\r\n0\r\n\r\n"), 413, {"max_body_bytes": 100}),
    ("body-chunked-one-huge-chunk", req(HOST, CHUNKED, body=b"fffffffffffffff\r\n" + b"a" * 101), 413,
     {"max_body_bytes": 100}),
    # chunked framing
    ("chunk-size-not-hex", req(HOST, CHUNKED, body=b"zz\r\n"), 400, {}),
    ("chunk-size-0x", req(HOST, CHUNKED, body=b"0x5\r\nhello\r\n0\r\n\r\n"), 400, {}),
    ("chunk-size-negative", req(HOST, CHUNKED, body=b"-1\r\n"), 400, {}),
    ("chunk-size-plus", req(HOST, CHUNKED, body=b"+5\r\nhello\r\n0\r\n\r\n"), 400, {}),
    ("chunk-size-empty", req(HOST, CHUNKED, body=b"\r\nhello\r\n0\r\n\r\n"), 400, {}),
    ("chunk-size-only-ext", req(HOST, CHUNKED, body=b";ext\r\n"), 400, {}),
    ("chunk-size-leading-space", req(HOST, CHUNKED, body=b" 5\r\nhello\r\n0\r\n\r\n"), 400, {}),
    ("chunk-size-inner-space", req(HOST, CHUNKED, body=b"1 0\r\n"), 400, {}),
    ("chunk-size-16-digits", req(HOST, CHUNKED, body=b"0000000000000005\r\nhello\r\n0\r\n\r\n"), 400, {}),
    ("chunk-size-huge", req(HOST, CHUNKED, body=b"10000000000000000\r\n"), 400, {}),
    ("chunk-size-line-never-ends", req(HOST, CHUNKED, body=b"5;" + b"e" * 5000), 400, {}),
    ("chunk-size-bare-lf", req(HOST, CHUNKED, body=b"5\nhello\r\n0\r\n\r\n"), 400, {}),
    ("chunk-data-no-crlf", req(HOST, CHUNKED, body=b"5\r\nhelloXX0\r\n\r\n"), 400, {}),
    ("chunk-data-too-long", req(HOST, CHUNKED, body=b"5\r\nhello!\r\n0\r\n\r\n"), 400, {}),
    ("chunk-data-lf-only", req(HOST, CHUNKED, body=b"5\r\nhello\n0\r\n\r\n"), 400, {}),
    ("chunk-data-cr-only", req(HOST, CHUNKED, body=b"5\r\nhello\r0\r\n\r\n"), 400, {}),
    ("trailer-line-never-ends", req(HOST, CHUNKED, body=b"0\r\nX-T: " + b"t" * 5000), 400, {}),
]


@pytest.mark.parametrize(
    ("data", "status", "kw"), [pytest.param(d, s, k, id=i) for i, d, s, k in REJECTIONS]
)
def test_rejections(impl: ModuleType, data: bytes, status: int, kw: dict[str, int]) -> None:
    expected = None if status == 200 else status
    assert rejection(impl, [data], **kw) == expected
    assert rejection(impl, bytewise(data), **kw) == expected
    mid = len(data) // 2
    assert rejection(impl, [data[:mid], data[mid:]], **kw) == expected


def test_requests_before_a_rejection_are_delivered(impl: ModuleType) -> None:
    p = impl.RequestParser()
    p.feed(req(HOST) + req(HOST, b"Content-Length: 1", CHUNKED))
    assert p.next_request() is not None
    with pytest.raises(ParseError) as ei:
        p.next_request()
    assert ei.value.status == 400


def test_body_too_large_by_content_length_is_refused_at_head_time(impl: ModuleType) -> None:
    p = impl.RequestParser(max_body_bytes=100)
    p.feed(req(HOST, b"Content-Length: 101", line=b"POST / HTTP/1.1"))  # no body bytes yet
    with pytest.raises(ParseError) as ei:
        p.next_request()
    assert ei.value.status == 413


def test_size_limits_are_inclusive(impl: ModuleType) -> None:
    data = req(HOST, b"Content-Length: 100", line=b"POST / HTTP/1.1", body=b"b" * 100)
    head_len = data.index(b"\r\n\r\n") + 4
    got = parse_all(impl, [data], max_header_bytes=head_len, max_body_bytes=100)
    assert got[0][5] == b"b" * 100
    assert rejection(impl, [data], max_header_bytes=head_len - 1) == 431
    assert rejection(impl, [data[:head_len - 1]], max_header_bytes=head_len - 1) is None
    assert rejection(impl, [data[:head_len]], max_header_bytes=head_len - 1) == 431
    # leading CRLFs do not count against the head limit
    assert parse_all(impl, [b"\r\n" * 50 + data], max_header_bytes=head_len)[0][5] == b"b" * 100
    chunked = req(HOST, CHUNKED, body=b"32\r\n" + b"c" * 50 + b"\r\n32\r\n" + b"d" * 50 + b"\r\n0\r\n\r\n")
    assert parse_all(impl, [chunked], max_body_bytes=100)[0][5] == b"c" * 50 + b"d" * 50
    assert rejection(impl, [chunked], max_body_bytes=99) == 413
    assert rejection(impl, bytewise(chunked), max_body_bytes=99) == 413


@pytest.mark.parametrize(
    "framing",
    [
        b"5;" + b"e" * 4200 + b"\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nX-T: " + b"t" * 4200 + b"\r\n\r\n",
    ],
    ids=["chunk-extension", "trailer"],
)
def test_long_chunk_lines_do_not_depend_on_fragmentation(impl: ModuleType, framing: bytes) -> None:
    data = req(HOST, CHUNKED, line=b"POST / HTTP/1.1", body=framing)
    assert rejection(impl, [data]) == 400
    assert rejection(impl, [data[:len(data) - 100], data[len(data) - 100:]]) == 400


def chunk_line_at(length: int, where: str) -> tuple[bytes, int]:
    """A chunked request whose size line (or trailer line) is ``length`` bytes; and the offset of its CR."""
    if where == "size":
        line = b"5;" + b"e" * (length - 2)
        body = line + b"\r\nhello\r\n0\r\n\r\n"
    else:
        line = b"X: " + b"t" * (length - 3)
        body = b"5\r\nhello\r\n0\r\n" + line + b"\r\n\r\n"
    data = req(HOST, CHUNKED, line=b"POST / HTTP/1.1", body=body)
    return data, data.index(line) + len(line)


@pytest.mark.parametrize("where", ["size", "trailer"])
def test_chunk_line_limit(impl: ModuleType, where: str) -> None:
    ok, cr = chunk_line_at(4096, where)  # 4096 bytes before the CRLF: the longest accepted line
    assert parse_all(impl, [ok])[0][5] == b"hello"
    assert parse_all(impl, [ok[:cr], ok[cr:]])[0][5] == b"hello"
    bad, cr = chunk_line_at(4097, where)
    assert rejection(impl, [bad]) == 400
    assert rejection(impl, [bad[:cr], bad[cr:]]) == 400
    assert rejection(impl, [bad[:cr + 1], bad[cr + 1:]]) == 400


@pytest.mark.parametrize("where", ["size", "trailer"])
def test_chunk_line_at_the_limit_split_between_cr_and_lf(impl: ModuleType, where: str) -> None:
    # a held CR may be the start of the line's CRLF: it does not count against the limit
    ok, cr = chunk_line_at(4096, where)
    assert parse_all(impl, [ok[:cr + 1], ok[cr + 1:]])[0][5] == b"hello"


def test_close_in_any_connection_header_wins(impl: ModuleType) -> None:
    r = parse_one(impl, req(HOST, b"Connection: close", b"Connection: keep-alive"))
    assert r.keep_alive is False


def test_chunked_decoder_directly(impl: ModuleType) -> None:
    dec = impl.ChunkedDecoder()
    buf = b"xx3;e\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\nREST"
    pos = dec.feed(buf, 2)
    assert dec.done
    assert dec.size == 5
    assert buf[pos:] == b"REST"
    assert dec.take() == b"abcde"
    assert dec.take() == b""
    dec = impl.ChunkedDecoder()
    assert dec.feed(b"5\r\nab", 0) == 5
    assert (dec.state, dec.remaining, dec.size) == (1, 3, 2)
    with pytest.raises(ParseError) as ei:
        impl.ChunkedDecoder().feed(b"g\r\n", 0)
    assert ei.value.status == 400


# ---------------------------------------------------------------------------------------------------------
# ResponseParser: examples


def run_response(
    mod: ModuleType, pieces: list[bytes], head_only: bool = False, eof: bool = True, **kw: Any
) -> tuple[list[Any], tuple[Any, ...]]:
    """Feed ``pieces`` (then EOF if not done); return the trace and the outcome."""
    p = mod.ResponseParser(head_only, **kw)
    trace: list[Any] = []
    body: list[bytes] = []
    try:
        for piece in pieces:
            p.feed(piece)
            b = p.take_body()
            assert type(b) is bytes
            body.append(b)
            trace.append((p.head_done, p.done, p.status, b, p.keep_alive))
        if eof:
            p.feed_eof()
            b = p.take_body()
            body.append(b)
            trace.append(("eof", p.done, b, p.keep_alive))
    except ParseError as exc:
        trace.append(("error", exc.status))
        return trace, ("error", exc.status)
    headers = list(p.headers)
    for kv in headers:
        assert type(kv) is tuple and type(kv[0]) is bytes and type(kv[1]) is bytes
    return trace, (p.status, p.reason, headers, b"".join(body), p.done, p.keep_alive)


def resp(*lines: bytes, line: bytes = b"HTTP/1.1 200 OK", body: bytes = b"") -> bytes:
    return b"\r\n".join((line, *lines)) + b"\r\n\r\n" + body


def test_response_content_length(impl: ModuleType) -> None:
    data = resp(b"Content-Type: application/json", b"Content-Length: 7", body=b'{"a":1}')
    p = impl.ResponseParser()
    p.feed(data)
    assert (p.head_done, p.done, p.status, p.reason, p.keep_alive) == (True, True, 200, "OK", True)
    assert p.headers == [(b"content-type", b"application/json"), (b"content-length", b"7")]
    assert p.header(b"content-length") == b"7"
    assert p.header(b"nope") is None
    assert p.take_body() == b'{"a":1}'
    assert p.take_body() == b""
    p.feed_eof()  # after done: nothing
    assert p.done


def test_response_incremental_body(impl: ModuleType) -> None:
    p = impl.ResponseParser()
    p.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r")
    assert not p.head_done
    p.feed(b"\nab")
    assert (p.head_done, p.done, p.status, p.reason) == (True, False, 201, "Created")
    assert p.take_body() == b"ab"
    p.feed(b"cd")
    p.feed(b"")
    p.feed(b"ef")
    assert p.done
    assert p.take_body() == b"cdef"


RESP_CHUNKED = resp(
    b"Transfer-Encoding: chunked",
    body=b"4;x=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n",
)
RESP_CHUNKED_BODY = b"Wikipedia in\r\n\r\nchunks."


def test_response_chunked_split_at_every_boundary(impl: ModuleType) -> None:
    expected = (200, "OK", [(b"transfer-encoding", b"chunked")], RESP_CHUNKED_BODY, True, True)
    assert run_response(impl, [RESP_CHUNKED])[1] == expected
    for i in range(len(RESP_CHUNKED) + 1):
        assert run_response(impl, [RESP_CHUNKED[:i], RESP_CHUNKED[i:]])[1] == expected, i
    assert run_response(impl, bytewise(RESP_CHUNKED))[1] == expected


def test_response_content_length_split_at_every_boundary(impl: ModuleType) -> None:
    data = resp(b"Content-Length: 10", line=b"HTTP/1.1 404 Not Found", body=b"0123456789")
    expected = (404, "Not Found", [(b"content-length", b"10")], b"0123456789", True, True)
    for i in range(len(data) + 1):
        assert run_response(impl, [data[:i], data[i:]])[1] == expected, i
    assert run_response(impl, bytewise(data))[1] == expected


def test_response_close_delimited(impl: ModuleType) -> None:
    p = impl.ResponseParser()
    p.feed(resp(b"Content-Type: text/plain", body=b"abc"))
    assert (p.head_done, p.done, p.keep_alive) == (True, False, False)
    assert p.take_body() == b"abc"
    p.feed(b"def")
    assert not p.done
    p.feed_eof()
    assert (p.done, p.keep_alive) == (True, False)
    assert p.take_body() == b"def"
    # split everywhere
    data = resp(b"Connection: keep-alive", line=b"HTTP/1.0 200 OK", body=b"close-delimited")
    expected = (200, "OK", [(b"connection", b"keep-alive")], b"close-delimited", True, False)
    for i in range(len(data) + 1):
        assert run_response(impl, [data[:i], data[i:]])[1] == expected, i


@pytest.mark.parametrize(
    ("data", "head_only"),
    [
        (resp(b"Content-Length: 10", line=b"HTTP/1.1 204 No Content"), False),
        (resp(line=b"HTTP/1.1 204 No Content"), False),
        (resp(b"Content-Length: 10", line=b"HTTP/1.1 304 Not Modified"), False),
        (resp(b"Transfer-Encoding: chunked", line=b"HTTP/1.1 304 Not Modified"), False),
        (resp(b"Content-Length: 10"), True),
        (resp(b"Transfer-Encoding: chunked"), True),
        (resp(), True),
    ],
    ids=["204-cl", "204", "304-cl", "304-chunked", "head-cl", "head-chunked", "head-close"],
)
def test_response_without_body(impl: ModuleType, data: bytes, head_only: bool) -> None:
    p = impl.ResponseParser(head_only)
    p.feed(data)
    assert (p.head_done, p.done, p.keep_alive) == (True, True, True)
    assert p.take_body() == b""
    p.feed_eof()
    assert p.done
    # bytes after a response without a body: never reuse the connection
    p = impl.ResponseParser(head_only)
    p.feed(data + b"junk")
    assert (p.done, p.keep_alive, p.take_body()) == (True, False, b"")


def test_response_interim_responses_are_skipped(impl: ModuleType) -> None:
    final = resp(b"Content-Length: 2", body=b"ok")
    data = (b"HTTP/1.1 100 Continue\r\n\r\n" + b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            + final)
    expected = (200, "OK", [(b"content-length", b"2")], b"ok", True, True)
    assert run_response(impl, [data])[1] == expected
    for i in range(len(data) + 1):
        assert run_response(impl, [data[:i], data[i:]])[1] == expected, i
    assert run_response(impl, bytewise(data))[1] == expected
    p = impl.ResponseParser()
    p.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert (p.head_done, p.status) == (False, 0)
    p.feed(final)
    assert (p.head_done, p.done, p.status) == (True, True, 200)


@pytest.mark.parametrize(
    ("data", "keep_alive"),
    [
        (resp(b"Content-Length: 0"), True),
        (resp(b"Content-Length: 0", line=b"HTTP/1.0 200 OK"), False),
        (resp(b"Content-Length: 0", b"Connection: keep-alive", line=b"HTTP/1.0 200 OK"), True),
        (resp(b"Content-Length: 0", b"Connection: close"), False),
        (resp(b"Content-Length: 0", b"Connection: Keep-Alive, Close"), False),
        (resp(b"Content-Length: 0", b"Connection: upgrade"), True),
        (resp(b"Content-Length: 2", body=b"okEXTRA"), False),
        (resp(b"Transfer-Encoding: chunked", body=b"0\r\n\r\nEXTRA"), False),
        (resp(b"Content-Length: 2", body=b"ok"), True),
    ],
)
def test_response_keep_alive(impl: ModuleType, data: bytes, keep_alive: bool) -> None:
    p = impl.ResponseParser()
    p.feed(data)
    assert p.done
    assert p.keep_alive is keep_alive
    assert p.take_body() in (b"", b"ok")
    if keep_alive:
        p.feed(b"x")  # bytes after the end of the response
        assert p.keep_alive is False


@pytest.mark.parametrize(
    "data",
    [
        resp(b"Content-Length: 2", b"Content-Length: 3", body=b"ok"),
        resp(b"Content-Length: abc"),
        resp(b"Content-Length: -1"),
        resp(b"Content-Length:"),
        resp(b"Transfer-Encoding: gzip"),
        resp(line=b"garbage"),
        resp(line=b""),
        resp(line=b"HTTP/1.1 abc OK"),
        resp(line=b"HTTP/1.1 20 OK"),
        resp(line=b"HTTP/1.1200 OK"),
        resp(line=b"HTTP/2 200 OK"),
        resp(line=b"HTTP/2.0 200 OK"),
        resp(line=b"http/1.1 200 OK"),
        resp(line=b"HTTP/1.1 101 Switching Protocols"),
        b"HTTP/1.1 100 Continue\r\n\r\nnot a response\r\n\r\n",
    ],
    ids=["conflicting-cl", "cl-abc", "cl-negative", "cl-empty", "te-gzip", "garbage", "empty-line",
         "status-abc", "status-2-digits", "no-space", "http2", "http2.0", "lowercase", "101", "after-100"],
)
def test_response_rejections(impl: ModuleType, data: bytes) -> None:
    for pieces in ([data], bytewise(data)):
        p = impl.ResponseParser()
        with pytest.raises(ParseError) as ei:
            for piece in pieces:
                p.feed(piece)
        assert ei.value.status == 502


def test_response_equal_duplicate_content_lengths_are_fine(impl: ModuleType) -> None:
    p = impl.ResponseParser()
    p.feed(resp(b"Content-Length: 2", b"Content-Length: 02", body=b"ok"))
    assert (p.done, p.take_body()) == (True, b"ok")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 502),
        (b"HTTP/1.1 200 OK\r\nContent-Le", 502),
        (b"HTTP/1.1 100 Continue\r\n\r\n", 502),
        (resp(b"Content-Length: 10", body=b"short"), 502),
        (resp(b"Transfer-Encoding: chunked", body=b"5\r\nab"), 502),
        (resp(b"Transfer-Encoding: chunked", body=b"5\r\nabcde\r\n"), 502),
        (resp(b"Transfer-Encoding: chunked", body=b"0\r\n"), 502),
    ],
    ids=["nothing", "mid-head", "only-interim", "mid-cl-body", "mid-chunk", "between-chunks", "in-trailers"],
)
def test_response_eof_too_early(impl: ModuleType, data: bytes, status: int) -> None:
    p = impl.ResponseParser()
    p.feed(data)
    with pytest.raises(ParseError) as ei:
        p.feed_eof()
    assert ei.value.status == status


def test_response_head_too_large(impl: ModuleType) -> None:
    p = impl.ResponseParser(max_header_bytes=100)
    with pytest.raises(ParseError) as ei:
        p.feed(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200)
    assert ei.value.status == 502


def test_response_upstream_framing_errors_are_parse_errors(impl: ModuleType) -> None:
    # Malformed chunking and header syntax from the upstream surface as ParseError; their status is the one
    # the shared helpers use for requests (400), which the pool ignores (it keeps only the message).
    for data in (resp(b"Transfer-Encoding: chunked", body=b"5\r\nabcdeXX"),
                 resp(b"Transfer-Encoding: chunked", body=b"zz\r\n"),
                 resp(b"X-A: a", b" folded"),
                 resp(b"X-A: a\x00")):
        p = impl.ResponseParser()
        with pytest.raises(ParseError) as ei:
            p.feed(data)
        assert ei.value.status in (400, 502)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(b"999999999999999999", True), (b"9223372036854775807", False), (b"99999999999999999999", False)],
)
def test_response_huge_content_length(impl: ModuleType, value: bytes, ok: bool) -> None:
    # 19 digits and more (2**63 overflowed a C ssize_t in the compiled parser) are a ParseError
    outcome = run_response(impl, [resp(b"Content-Length: " + value, body=b"ab")], eof=False)[1]
    assert outcome == ((200, "OK", [(b"content-length", value)], b"ab", False, True) if ok else ("error", 502))


def test_response_head_limit_does_not_depend_on_fragmentation(impl: ModuleType) -> None:
    data = resp(b"X-Big: " + b"a" * 200, b"Content-Length: 0")
    assert run_response(impl, [data], max_header_bytes=100)[1] == ("error", 502)
    assert run_response(impl, [data[:150], data[150:]], max_header_bytes=100)[1] == ("error", 502)
    # the limit is inclusive, whatever the fragmentation; interim heads are measured on their own
    limit = len(data)
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    for stream in (data, interim + data):
        for i in range(0, len(stream) + 1, 7):
            assert run_response(impl, [stream[:i], stream[i:]], max_header_bytes=limit)[1][0] == 200, i
            assert run_response(impl, [stream[:i], stream[i:]], max_header_bytes=limit - 1)[1] == ("error", 502)


def test_response_close_in_any_connection_header_wins(impl: ModuleType) -> None:
    p = impl.ResponseParser()
    p.feed(resp(b"Connection: close", b"Connection: keep-alive", b"Content-Length: 0"))
    assert p.keep_alive is False


# ---------------------------------------------------------------------------------------------------------
# build_response_head / reason_phrase


def test_build_response_head_framing(impl: ModuleType) -> None:
    h = [("content-type", "application/json"), ("x-request-id", "abc")]
    assert impl.build_response_head(200, h, 5, True) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: abc\r\ncontent-length: 5\r\n\r\n"
    )
    assert impl.build_response_head(200, [], 0, True) == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    assert impl.build_response_head(200, [], -1, True) == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    assert impl.build_response_head(200, [], -2, True) == b"HTTP/1.1 200 OK\r\n\r\n"
    assert impl.build_response_head(200, [], -2, False) == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
    assert impl.build_response_head(413, [], 12, False) == (
        b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"
    )
    assert impl.build_response_head(299, [], -1, False) == (
        b"HTTP/1.1 299 Unknown\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    assert impl.build_response_head(200, [("x-latin", "caf\xe9")], 0, True).count(b"caf\xe9") == 1


def test_build_response_head_refuses_text_outside_latin1(impl: ModuleType) -> None:
    with pytest.raises(UnicodeEncodeError):
        impl.build_response_head(200, [("x-euro", "\u20ac")], 0, True)


HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x17F), max_size=40)


@needs_compiled
@PROPS
@given(
    status=st.integers(100, 999),
    headers=st.lists(st.tuples(HEADER_TEXT, HEADER_TEXT), max_size=8),
    length=st.integers(-2, 10**12),
    keep_alive=st.booleans(),
)
def test_build_response_head_twins_agree(
    status: int, headers: list[tuple[str, str]], length: int, keep_alive: bool
) -> None:
    def run(mod: ModuleType) -> bytes | str:
        try:
            out: bytes = mod.build_response_head(status, headers, length, keep_alive)
            return out
        except UnicodeEncodeError:
            return "UnicodeEncodeError"

    assert run(_http) == run(http_py)


def test_build_request(impl: ModuleType) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: up\r\nx-request-id: "
    assert impl.build_request(head, "r-1", b"{}") == head + b"r-1\r\ncontent-length: 2\r\n\r\n{}"
    assert impl.build_request(b"", "caf\xe9", b"") == b"caf\xe9\r\ncontent-length: 0\r\n\r\n"
    with pytest.raises(UnicodeEncodeError):
        impl.build_request(b"", "\u20ac", b"")


@needs_compiled
@PROPS
@given(head=st.binary(max_size=200), rid=HEADER_TEXT, body=st.binary(max_size=5000))
def test_build_request_twins_agree(head: bytes, rid: str, body: bytes) -> None:
    def run(mod: ModuleType) -> bytes | str:
        try:
            out: bytes = mod.build_request(head, rid, body)
            return out
        except UnicodeEncodeError:
            return "UnicodeEncodeError"

    assert run(_http) == run(http_py)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 255, 4096, 70000])
def test_chunk_frame(impl: ModuleType, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert impl.chunk_frame(data) == b"%x\r\n" % size + data + b"\r\n"


def test_select_headers(impl: ModuleType) -> None:
    got = impl.select_headers(
        [(b"content-type", b"application/json"), (b"x-ratelimit-limit-requests", b"10"),
         (b"retry-after", b"1"), (b"x-rate", b"no"), (b"x-ratelimit-", b"\xe9")],
        b"x-ratelimit-", (b"retry-after",), [("x-request-id", "a")],
    )
    assert got == [("x-request-id", "a"), ("x-ratelimit-limit-requests", "10"), ("retry-after", "1"),
                   ("x-ratelimit-", "\xe9")]


@pytest.mark.parametrize("us, text", [
    (-5, "0.0"), (0, "0.0"), (1, "0.001"), (10, "0.01"), (100, "0.1"), (1000, "1.0"), (1234, "1.234"),
    (1230, "1.23"), (120000, "120.0"), (999999, "999.999"),
])
def test_ms_text(impl: ModuleType, us: int, text: str) -> None:
    assert impl.ms_text(us) == text


@needs_compiled
@PROPS
@given(us=st.integers(-(10**6), 10**17))
def test_ms_text_twins_agree(us: int) -> None:
    assert _http.ms_text(us) == http_py.ms_text(us)


@pytest.mark.parametrize("status", [100, 200, 204, 404, 413, 429, 431, 501, 502, 503, 504, 505, 299, 999])
def test_reason_phrase(impl: ModuleType, status: int) -> None:
    assert impl.reason_phrase(status) == http_py._REASONS.get(status, "Unknown")


# ---------------------------------------------------------------------------------------------------------
# facade


def test_facade_picks_the_compiled_module() -> None:
    from gateway._core import http, limit, route, sse

    no_ext = os.environ.get("GATEWAY_NO_EXTENSIONS") == "1"
    built = _http is not None
    assert http.COMPILED is (built and not no_ext)
    if http.COMPILED:
        assert http.RequestParser is _http.RequestParser
        assert http.ResponseParser is _http.ResponseParser
        assert http.build_response_head is _http.build_response_head
    else:
        assert http.RequestParser is http_py.RequestParser
    assert http.ParseError is ParseError
    core = {k: v for k, v in gateway._core.compiled().items() if k in ("http", "limit", "route", "sse")}
    assert core == {
        "http": http.COMPILED, "limit": limit.COMPILED, "route": route.COMPILED, "sse": sse.COMPILED,
    }
    assert sorted(http.__all__) == sorted(http_py.__all__)


def test_facade_without_extensions_uses_the_twins() -> None:
    code = (
        "import gateway._core as c, gateway._core.http as h, gateway._core.sse as s, gateway._core.http_py as p;"
        "assert h.RequestParser is p.RequestParser and s.SSEScanner.__module__ == 'gateway._core.sse_py';"
        "print(c.compiled())"
    )
    env = {**os.environ, "GATEWAY_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    core = ("http", "limit", "route", "sse", "jsoncheck", "cache", "scan", "guardgate", "awsevent", "recline",
            "canon")
    source = tuple(name.rsplit(".", 1)[-1] for name in gateway._core.SOURCE_MODULES)
    assert source[:9] == ("context", "engine", "openai", "listener", "pool", "rows", "genai", "phase",
                          "anthropic")
    assert out.stdout.strip() == repr(dict.fromkeys(core + source, False))


# ---------------------------------------------------------------------------------------------------------
# property tests: both implementations, same bytes, same results

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SPECIAL = {b"content-length", b"transfer-encoding", b"host", b"connection", b"expect"}
TARGET_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if c != 0x3F)


def _table(alphabet: bytes) -> bytes:
    return bytes(alphabet[i % len(alphabet)] for i in range(256))


# one draw of random bytes, translated into an alphabet (much cheaper than a list of sampled bytes)
VALUE_TABLE = _table(bytes([*range(0x21, 0x7F), 0x80, 0xA0, 0xE9, 0xFF, 0x20, 0x20, 0x09]))
REASON_TABLE = _table(bytes([*range(0x20, 0x7F), 0x09, 0xE9, 0xFF]))
CASES = [bytes, bytes.lower, bytes.upper, bytes.title, bytes.swapcase]

tokens = st.text(alphabet=TCHAR, min_size=1, max_size=10)
plain_names = tokens.map(str.encode).filter(lambda n: n.lower() not in SPECIAL)
# a field value: visible bytes and obs-text with inner SP/HTAB (outer whitespace is stripped by the parser)
value_core = st.binary(max_size=12).map(lambda b: b.translate(VALUE_TABLE).strip(b" \t"))
reasons = st.binary(max_size=16).map(lambda b: b.translate(REASON_TABLE))
ows = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t "])
cases = st.sampled_from(CASES)
small = st.integers(0, 2)
pads = st.sampled_from([0, 0, 1, 2, -1])  # -1: pad with zeros up to the longest accepted number
chunk_exts = st.sampled_from([b"", b";a=b", b" ;x", b';n="v w"', b";a;b=1", b"\t;q", b";"])
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]) | tokens
paths = st.text(alphabet=TARGET_CHARS, max_size=16)
queries = st.none() | st.text(alphabet=TARGET_CHARS + "?", max_size=12)
conn_tokens = st.lists(st.sampled_from([b"close", b"keep-alive", b"Keep-Alive", b"CLOSE", b"upgrade", b"foo"]),
                       min_size=1, max_size=3)
bodies = st.binary(max_size=40)
cut_lists = st.lists(st.integers(0, 10_000), max_size=8)


def header_line(draw: st.DrawFn, name: bytes | None = None, value: bytes | None = None) -> tuple[bytes, bytes]:
    """(raw line, expected value) with random name case and optional whitespace around the value."""
    name = draw(plain_names) if name is None else draw(cases)(name)
    value = draw(value_core) if value is None else value
    return name + b":" + draw(ows) + value + draw(ows), value


@dataclass
class ReqSpec:
    raw: bytes
    head_len: int
    fields: tuple[Any, ...]
    body_len: int
    prefix: bytes
    expect: bool


def chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` in random chunks, with random chunk extensions, leading zeros, hex case and trailers."""
    pieces = [p for p in split_at(body, draw(cut_lists)[:4]) if p]
    out = []
    for piece in pieces:
        size = format(len(piece), "x").encode()
        pad = draw(pads)
        size = draw(cases)(size.rjust(15, b"0") if pad < 0 else b"0" * pad + size)
        out.append(size + draw(chunk_exts) + b"\r\n" + piece + b"\r\n")
    out.append(b"0" * (1 + draw(small)) + draw(chunk_exts) + b"\r\n")
    for _ in range(draw(small)):
        out.append(header_line(draw)[0] + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


@st.composite
def valid_request(draw: st.DrawFn) -> ReqSpec:
    method = draw(methods)
    if method == "OPTIONS" and draw(st.booleans()):
        path, query, target = "*", "", b"*"
    else:
        path = "/" + draw(paths)
        q = draw(queries)
        query = q or ""
        target = (path if q is None else path + "?" + q).encode()
    version = 11 if draw(st.booleans()) else 10
    lines: list[tuple[bytes, bytes, bytes]] = []  # (raw line, expected lower-case name, expected value)
    for _ in range(draw(st.integers(0, 4))):
        name = draw(plain_names)
        raw, value = header_line(draw, name=name)
        lines.append((raw, name.lower(), value))
    if version == 11 or draw(st.booleans()):
        raw, value = header_line(draw, name=b"host")
        lines.append((raw, b"host", value))
    keep_alive = version == 11
    seen: list[bytes] = []
    for _ in range(draw(small)):  # Connection headers: "close" in any of them wins (RFC 9112 9.6)
        toks = draw(conn_tokens)
        value = b", ".join(toks)
        seen += [t.lower() for t in toks]
        lines.append((header_line(draw, name=b"connection", value=value)[0], b"connection", value))
    keep_alive = False if b"close" in seen else True if b"keep-alive" in seen else keep_alive
    expect = draw(st.booleans())
    if expect:
        value = draw(cases)(b"100-continue")
        lines.append((header_line(draw, name=b"expect", value=value)[0], b"expect", value))
    body = draw(bodies)
    framings = ["cl", "chunked"] if version == 11 else ["cl"]
    if not body:
        framings.append("none")
    framing = draw(st.sampled_from(framings))
    if framing == "cl":
        value = str(len(body)).encode()
        pad = draw(pads)
        value = value.rjust(18, b"0") if pad < 0 else b"0" * pad + value
        lines.append((header_line(draw, name=b"content-length", value=value)[0], b"content-length", value))
        encoded = body
    elif framing == "chunked":
        value = draw(cases)(b"chunked")
        lines.append((header_line(draw, name=b"transfer-encoding", value=value)[0], b"transfer-encoding", value))
        encoded = chunked_body(draw, body)
    else:
        encoded = b""
    lines = draw(st.permutations(lines))
    request_line = method.encode() + b" " + target + (b" HTTP/1.1" if version == 11 else b" HTTP/1.0")
    head = b"\r\n".join([request_line, *(raw for raw, _, _ in lines)]) + b"\r\n\r\n"
    prefix = b"\r\n" * draw(small)
    f = (method, path, query, version, [(n, v) for _, n, v in lines], body, keep_alive)
    return ReqSpec(prefix + head + encoded, len(head), f, len(body), prefix, expect)


def expected_outcome(specs: list[ReqSpec], max_h: int, max_b: int) -> tuple[Any, ...]:
    reqs = []
    for s in specs:
        if s.head_len > max_h:
            return (reqs, 431, None)
        if s.body_len > max_b:
            return (reqs, 413, None)
        reqs.append(s.fields)
    return (reqs, None, (0, 0))


limits = st.tuples(
    st.sampled_from([16384, 16384, 64, 100, 160, 256]), st.sampled_from([4 * 1024 * 1024, 0, 5, 20, 40])
)


@HEAVY
@given(specs=st.lists(valid_request(), min_size=1, max_size=3), lim=limits, data=st.data())
def test_prop_valid_requests_any_fragmentation(specs: list[ReqSpec], lim: tuple[int, int], data: Any) -> None:
    stream = b"".join(s.raw for s in specs)
    cuts = data.draw(cut_lists, label="cuts")
    pieces = split_at(stream, cuts)
    kw = {"max_header_bytes": lim[0], "max_body_bytes": lim[1]}
    expected = expected_outcome(specs, *lim)
    for mod in (http_py, _http):
        if mod is None:
            continue
        assert run_requests(mod, [stream], **kw)[1] == expected
        assert run_requests(mod, pieces, **kw)[1] == expected
    if _http is not None:
        assert run_requests(_http, pieces, **kw)[0] == run_requests(http_py, pieces, **kw)[0]


@HEAVY
@given(spec=valid_request(), data=st.data())
def test_prop_expect_continue(spec: ReqSpec, data: Any) -> None:
    """A head asking for 100-continue reports it exactly once iff its body is still pending."""
    raw = spec.raw
    cut = len(spec.prefix) + spec.head_len
    rest_cut = cut + data.draw(positions, label="rest") % (len(raw) - cut + 1)
    for mod in (http_py, _http):
        if mod is None:
            continue
        p = mod.RequestParser()
        p.feed(raw[:rest_cut])
        r = p.next_request()
        pending = rest_cut < len(raw)
        assert (r is None) == pending
        assert p.expect_continue is (spec.expect and pending and spec.fields[3] == 11)
        assert p.expect_continue is False
        p.feed(raw[rest_cut:])
        assert fields(r or p.next_request()) == spec.fields
        assert p.expect_continue is False


INTERESTING = [*b"\r\n \t:;,0159aAfFgz/?*\x00\x7f\x80\xff-+"]
positions = st.integers(0, 10_000)
mutation_bytes = st.sampled_from(INTERESTING) | st.integers(0, 255)
mutation_ops = st.sampled_from(["insert", "delete", "replace", "duplicate"])


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with one to four bytes inserted, deleted, replaced, or a short span duplicated."""
    data = bytearray(draw(base))
    for _ in range(1 + draw(st.integers(0, 3))):
        op = draw(mutation_ops)
        pos = draw(positions) % (len(data) + 1)
        b = draw(mutation_bytes)
        if op == "insert":
            data.insert(pos, b)
        elif op == "delete" and pos < len(data):
            del data[pos]
        elif op == "replace" and pos < len(data):
            data[pos] = b
        elif op == "duplicate":
            end = min(len(data), pos + draw(positions) % 30)
            data[pos:pos] = data[pos:end]
    return bytes(data)


request_streams = st.lists(valid_request(), min_size=1, max_size=2).map(lambda ss: b"".join(s.raw for s in ss))
REQUEST_PREFIXES = [
    b"",
    b"GET / HTTP/1.1\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
]


def assert_same_requests(stream: bytes, pieces: list[bytes], kw: dict[str, int]) -> None:
    twin = run_requests(http_py, pieces, **kw)
    if _http is not None:
        assert run_requests(_http, pieces, **kw) == twin
    # one segment, and the fragmentation, agree on everything that was parsed before any error
    whole = run_requests(http_py, [stream], **kw)[1]
    if whole[1] is None and twin[1][1] is None:
        assert whole == twin[1]


@needs_compiled
@PROPS
@given(
    stream=st.builds(bytes.__add__, st.sampled_from(REQUEST_PREFIXES), st.binary(max_size=200)),
    lim=limits,
    data=st.data(),
)
def test_prop_arbitrary_bytes_requests(stream: bytes, lim: tuple[int, int], data: Any) -> None:
    cuts = data.draw(cut_lists, label="cuts")
    assert_same_requests(stream, split_at(stream, cuts), {"max_header_bytes": lim[0], "max_body_bytes": lim[1]})


@needs_compiled
@HEAVY
@given(stream=mutated(request_streams), lim=limits, data=st.data())
def test_prop_mutated_requests(stream: bytes, lim: tuple[int, int], data: Any) -> None:
    cuts = data.draw(cut_lists, label="cuts")
    assert_same_requests(stream, split_at(stream, cuts), {"max_header_bytes": lim[0], "max_body_bytes": lim[1]})


@needs_compiled
@PROPS
@given(buf=st.binary(max_size=120) | mutated(st.sampled_from(
    [b"5\r\nhello\r\n0\r\n\r\n", b"3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\nNEXT"])),
    start=st.integers(0, 5), data=st.data())
def test_prop_chunked_decoder(buf: bytes, start: int, data: Any) -> None:
    start = min(start, len(buf))
    cut = data.draw(st.integers(start, len(buf)), label="cut")

    def run(mod: ModuleType) -> Any:
        dec = mod.ChunkedDecoder()
        out: list[Any] = []
        try:
            pos = dec.feed(buf[:cut], start)
            out.append((pos, dec.state, dec.remaining, dec.size, dec.done, dec.take()))
            rest = buf[pos:]
            pos = dec.feed(rest, 0)
            out.append((pos, dec.state, dec.remaining, dec.size, dec.done, dec.take()))
        except ParseError as exc:
            out.append(("error", exc.status))
        return out

    assert run(_http) == run(http_py)


# --- models: targeted near-valid input, checked against rules written from the RFC 9112 grammar

NO_LF = bytes(c if c != 0x0A else 0x41 for c in range(256))
NO_LF_COLON = bytes(c if c not in (0x0A, 0x3A) else 0x42 for c in range(256))
TCHAR_B = frozenset(TCHAR.encode())


def _is_token(b: bytes) -> bool:
    return bool(b) and all(c in TCHAR_B for c in b)


special_names = st.sampled_from(sorted(SPECIAL)).flatmap(lambda n: cases.map(lambda f: f(n)))
model_names = st.one_of(plain_names, special_names, st.binary(min_size=0, max_size=6).map(
    lambda b: b.translate(NO_LF_COLON)))
digit_strings = st.text(alphabet="0123456789", max_size=21).map(str.encode)
model_values = st.one_of(
    value_core,
    st.binary(max_size=10).map(lambda b: b.translate(NO_LF)),
    st.builds(lambda a, d, b: a + d + b, st.sampled_from([b"", b" ", b"+", b"-", b"\t", b"0x"]), digit_strings,
              st.sampled_from([b"", b" ", b" 1", b",5", b"\x00", b"\x7f", b".0"])),
    st.sampled_from([b"chunked", b"gzip", b"chunked, gzip", b"identity", b"close", b"keep-alive",
                     b"100-continue"]).flatmap(lambda v: cases.map(lambda f: f(v))),
)


def header_model(name: bytes, value: bytes, max_body: int) -> tuple[Any, ...]:
    """Outcome of ``GET / HTTP/1.1`` with ``Host: a`` and one more header line ``name: value``."""
    line = name + b":" + value
    if line[:1] in (b" ", b"\t"):
        return ("error", 400)  # obs-fold
    if not _is_token(name):
        return ("error", 400)
    v = value.strip(b" \t")
    if any((c < 0x20 and c != 0x09) or c == 0x7F for c in v):
        return ("error", 400)
    lname = name.lower()
    keep_alive, body, suffix = True, b"", b""
    if lname == b"content-length":
        if not (1 <= len(v) <= 18 and all(0x30 <= c <= 0x39 for c in v)):
            return ("error", 400)
        if int(v) > max_body:
            return ("error", 413)
        body = suffix = b"x" * int(v)
    elif lname == b"transfer-encoding":
        if v.lower() != b"chunked":
            return ("error", 501)
        body, suffix = b"abc", b"3\r\nabc\r\n0\r\n\r\n"
    elif lname == b"host":
        return ("error", 400)  # a second Host
    elif lname == b"connection":
        toks = [t.strip(b" \t").lower() for t in v.split(b",")]
        keep_alive = False if b"close" in toks else True
    return ("ok", ("GET", "/", "", 11, [(b"host", b"a"), (lname, v)], body, keep_alive), suffix)


@PROPS
@given(name=model_names, value=model_values, data=st.data())
def test_prop_header_line_model(name: bytes, value: bytes, data: Any) -> None:
    max_body = 1000
    expected = header_model(name, value, max_body)
    stream = b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b":" + value + b"\r\n\r\n"
    if expected[0] == "ok":
        stream += expected[2]
        want = ([expected[1]], None, (0, 0))
    else:
        want = ([], expected[1], None)
    pieces = split_at(stream, data.draw(cut_lists, label="cuts"))
    for mod in (http_py, _http):
        if mod is not None:
            assert run_requests(mod, pieces, max_body_bytes=max_body)[1] == want


versions = st.one_of(
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10",
                     b"HTTP/1", b"HTTP/11", b"HTTP/1.1\r", b"HTTPS/1.1", b""]),
    st.binary(max_size=9).map(lambda b: b"HTTP/" + b.translate(NO_LF)[:3]),
)
model_methods = st.one_of(tokens.map(str.encode), st.sampled_from([b"OPTIONS", b"options", b""]),
                          st.binary(max_size=5).map(lambda b: b.translate(NO_LF)))
model_targets = st.one_of(
    queries.map(lambda q: b"/" + (q or "").encode()),
    st.sampled_from([b"*", b"", b"http://h/", b"h:443", b"//x", b"/?", b"/a b"]),
    st.binary(max_size=6).map(lambda b: b"/" + b.translate(NO_LF)),
)
separators = st.sampled_from([b" ", b" ", b" ", b"  ", b"\t"])


def request_line_model(line: bytes) -> tuple[Any, ...]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _is_token(parts[0]):
        return ("error", 400)
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return ("error", 505 if version.startswith(b"HTTP/") and len(version) == 8 else 400)
    if not target or not all(0x21 <= c <= 0x7E for c in target):
        return ("error", 400)
    if target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS"):
        return ("error", 400)
    path, _, query = target.decode().partition("?")
    return ("ok", (method.decode(), path, query, 11 if version == b"HTTP/1.1" else 10,
                   [(b"host", b"a")], b"", version == b"HTTP/1.1"))


@PROPS
@given(method=model_methods, target=model_targets, version=versions, s1=separators, s2=separators,
       data=st.data())
def test_prop_request_line_model(
    method: bytes, target: bytes, version: bytes, s1: bytes, s2: bytes, data: Any
) -> None:
    line = method + s1 + target + s2 + version
    expected = request_line_model(line)
    want = ([expected[1]], None, (0, 0)) if expected[0] == "ok" else ([], expected[1], None)
    stream = line + b"\r\nHost: a\r\n\r\n"
    pieces = split_at(stream, data.draw(cut_lists, label="cuts"))
    for mod in (http_py, _http):
        if mod is not None:
            assert run_requests(mod, pieces)[1] == want


size_lines = st.builds(
    lambda pad, digits, ws, ext: b"0" * pad + digits + ws + ext,
    st.integers(0, 17),
    st.text(alphabet="0123456789abcdefABCDEFgx -", max_size=4).map(str.encode),
    st.sampled_from([b"", b" ", b"\t", b" \t"]),
    st.sampled_from([b"", b";", b";a=b", b";a\x00", b"; x"]),
)


@PROPS
@given(line=size_lines)
def test_prop_chunk_size_line_model(line: bytes) -> None:
    hexpart, _, ext = line.partition(b";")
    hexpart = hexpart.rstrip(b" \t")
    ok = 1 <= len(hexpart) <= 15 and all(c in b"0123456789abcdefABCDEF" for c in hexpart)
    ok = ok and not any((c < 0x20 and c != 0x09) or c == 0x7F for c in ext)  # a header value's bytes
    for mod in (http_py, _http):
        if mod is None:
            continue
        dec = mod.ChunkedDecoder()
        if not ok:
            with pytest.raises(ParseError) as ei:
                dec.feed(line + b"\r\n", 0)
            assert ei.value.status == 400
            continue
        assert dec.feed(line + b"\r\n", 0) == len(line) + 2
        size = int(hexpart, 16)
        assert (dec.remaining, dec.done, dec.state) == (size, False, 1 if size else 3)


# --- responses


@dataclass
class RespSpec:
    raw: bytes
    head_only: bool
    outcome: tuple[Any, ...]
    close_delimited: bool


statuses = st.sampled_from([200, 201, 204, 206, 304, 400, 404, 429, 500, 503]) | st.integers(200, 599)
resp_connection = st.sampled_from([b"close", b"keep-alive", b"Keep-Alive", b"upgrade", b"foo, close"])
resp_te = st.sampled_from([b"chunked", b"Chunked", b"gzip, chunked"])
resp_trailing = st.sampled_from([b"X", b"HTTP/1.1 200 OK\r\n\r\n", b"\r\n"])


@st.composite
def valid_response(draw: st.DrawFn) -> RespSpec:
    interim = b""
    for _ in range(draw(small)):
        code = draw(st.sampled_from([100, 102, 103]))
        lines = [header_line(draw)[0] for _ in range(draw(small))]
        interim += b"\r\n".join([b"HTTP/1.1 %d Interim" % code, *lines]) + b"\r\n\r\n"
    version = b"HTTP/1.1" if draw(st.booleans()) else b"HTTP/1.0"
    status = draw(statuses)
    reason = draw(reasons)
    head_only = draw(st.booleans())
    lines: list[tuple[bytes, bytes, bytes]] = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(plain_names)
        raw, value = header_line(draw, name=name)
        lines.append((raw, name.lower(), value))
    keep_alive = version == b"HTTP/1.1"
    seen: list[bytes] = []
    for _ in range(draw(small)):
        value = draw(resp_connection)
        seen += [t.strip().lower() for t in value.split(b",")]
        lines.append((header_line(draw, name=b"connection", value=value)[0], b"connection", value))
    keep_alive = False if b"close" in seen else True if b"keep-alive" in seen else keep_alive
    body = draw(bodies)
    no_body = head_only or status in (204, 304)
    framing = draw(st.sampled_from(["cl", "chunked", "close"]))
    if framing == "cl":
        value = str(len(body) if not no_body else draw(st.integers(0, 99))).encode()
        for _ in range(1 + draw(st.integers(0, 1))):  # a repeated, equal Content-Length is fine
            lines.append((header_line(draw, name=b"content-length", value=value)[0], b"content-length", value))
        encoded = body
    elif framing == "chunked":
        value = draw(resp_te)
        lines.append((header_line(draw, name=b"transfer-encoding", value=value)[0], b"transfer-encoding", value))
        encoded = chunked_body(draw, body)
    else:
        encoded = body
    if no_body:
        body = encoded = b""
    close_delimited = framing == "close" and not no_body
    lines = draw(st.permutations(lines))
    trailing = b""
    if not close_delimited and draw(st.booleans()):
        trailing = draw(resp_trailing)
    if close_delimited or trailing:
        keep_alive = False
    head = b"\r\n".join([version + b" %d " % status + reason, *(raw for raw, _, _ in lines)]) + b"\r\n\r\n"
    outcome = (status, reason.decode("latin-1"), [(n, v) for _, n, v in lines], body, True, keep_alive)
    return RespSpec(interim + head + encoded + trailing, head_only, outcome, close_delimited)


@HEAVY
@given(spec=valid_response(), data=st.data())
def test_prop_valid_responses_any_fragmentation(spec: RespSpec, data: Any) -> None:
    cuts = data.draw(cut_lists, label="cuts")
    pieces = split_at(spec.raw, cuts)
    for mod in (http_py, _http):
        if mod is None:
            continue
        assert run_response(mod, [spec.raw], spec.head_only)[1] == spec.outcome
        assert run_response(mod, pieces, spec.head_only)[1] == spec.outcome
        # without EOF, only a close-delimited body is unfinished
        assert run_response(mod, pieces, spec.head_only, eof=False)[1][4] is not spec.close_delimited
    if _http is not None:
        assert run_response(_http, pieces, spec.head_only) == run_response(http_py, pieces, spec.head_only)


RESPONSE_PREFIXES = [
    b"",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
]


def assert_same_responses(pieces: list[bytes], head_only: bool, eof: bool) -> None:
    if _http is not None:
        assert run_response(_http, pieces, head_only, eof) == run_response(http_py, pieces, head_only, eof)


@needs_compiled
@PROPS
@given(
    stream=st.builds(bytes.__add__, st.sampled_from(RESPONSE_PREFIXES), st.binary(max_size=200)),
    head_only=st.booleans(),
    eof=st.booleans(),
    data=st.data(),
)
def test_prop_arbitrary_bytes_responses(stream: bytes, head_only: bool, eof: bool, data: Any) -> None:
    cuts = data.draw(cut_lists, label="cuts")
    assert_same_responses(split_at(stream, cuts), head_only, eof)


@needs_compiled
@HEAVY
@given(spec=valid_response(), raw=st.data(), eof=st.booleans(), data=st.data())
def test_prop_mutated_responses(spec: RespSpec, raw: Any, eof: bool, data: Any) -> None:
    stream = raw.draw(mutated(st.just(spec.raw)), label="mutated")
    cuts = data.draw(cut_lists, label="cuts")
    assert_same_responses(split_at(stream, cuts), spec.head_only, eof)


# --- response heads


header_names = st.text(alphabet=TCHAR, min_size=1, max_size=12)
header_values = st.text(alphabet=[chr(c) for c in [*range(0x20, 0x7F), 0xE9]], max_size=20).map(str.strip)


@PROPS
@given(
    status=st.integers(200, 599).filter(lambda s: s not in (204, 304)),
    headers=st.lists(st.tuples(header_names, header_values), max_size=4)
    .filter(lambda hs: all(k.lower() not in ("content-length", "transfer-encoding") for k, _ in hs)),
    content_length=st.sampled_from([-2, -1]) | st.integers(0, 50),
    keep_alive=st.booleans(),
    body=st.binary(max_size=50),
)
def test_prop_build_response_head_round_trip(
    status: int, headers: list[tuple[str, str]], content_length: int, keep_alive: bool, body: bytes
) -> None:
    head = http_py.build_response_head(status, headers, content_length, keep_alive)
    if _http is not None:
        assert _http.build_response_head(status, headers, content_length, keep_alive) == head
        assert _http.reason_phrase(status) == http_py.reason_phrase(status)
    if content_length >= 0:
        body = body[:content_length].ljust(content_length, b".")
        wire = head + body
    elif content_length == -1:
        wire = head + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        wire = head + body
    _, outcome = run_response(http_py, [wire])
    assert outcome[0] == status
    assert outcome[2][:len(headers)] == [(k.lower().encode(), v.encode("latin-1")) for k, v in headers]
    assert outcome[3] == body
    assert outcome[5] is (keep_alive and content_length != -2)
