"""The HTTP/1.1 core against hostile framing: the compiled ``_http`` module and its twin ``http_py`` alike.

Each case runs on both implementations, whole, byte by byte and split in two, and demands one outcome:
bare LF line ends (refused at once, not after a timeout), control bytes in chunk extensions and trailers
(refused like the same bytes in a header), Content-Length beside Transfer-Encoding whatever its value,
and the chunk-line limit (the same answer wherever the segments end).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

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

HOST = b"Host: example.com"
CHUNKED = b"Transfer-Encoding: chunked"
LIMIT = 4096  # the longest chunk-size or trailer line accepted, CRLF not counted


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


def req(*lines: bytes, line: bytes = b"POST / HTTP/1.1", body: bytes = b"") -> bytes:
    return b"\r\n".join((line, *lines)) + b"\r\n\r\n" + body


def fragmentations(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and cut in two at a few places."""
    cuts = sorted({1, len(data) // 3, len(data) // 2, len(data) - 1})
    return [[data], [data[i:i + 1] for i in range(len(data))]] + [[data[:c], data[c:]] for c in cuts]


def outcome(mod: ModuleType, pieces: list[bytes], **kw: Any) -> tuple[Any, ...]:
    """("error", status, message) for a refusal, else ("ok", [bodies], bytes still buffered)."""
    p = mod.RequestParser(**kw)
    bodies: list[bytes] = []
    try:
        for piece in pieces:
            p.feed(piece)
            while (r := p.next_request()) is not None:
                bodies.append(r.body)
    except ParseError as exc:
        return ("error", exc.status, exc.message)
    return ("ok", bodies, p.buffered)


def refused(mod: ModuleType, data: bytes, **kw: Any) -> int | None:
    """The status every fragmentation of ``data`` is refused with (the same for all, or the test fails)."""
    results = {outcome(mod, pieces, **kw)[:2] for pieces in fragmentations(data)}
    assert len(results) == 1, results
    (result,) = results
    return int(result[1]) if result[0] == "error" else None


# ---------------------------------------------------------------------------------------------------------
# Content-Length beside Transfer-Encoding: refused whatever the length, zero included


@pytest.mark.parametrize("headers", [
    (b"Content-Length: 0", CHUNKED),
    (CHUNKED, b"Content-Length: 0"),
    (b"Content-Length: 00", CHUNKED),
    (b"Content-Length: 3", CHUNKED),
], ids=["cl0-te", "te-cl0", "cl00-te", "cl3-te"])
def test_content_length_beside_chunked_is_refused(impl: ModuleType, headers: tuple[bytes, ...]) -> None:
    data = req(HOST, *headers, body=b"3\r\nabc\r\n0\r\n\r\n")
    assert refused(impl, data) == 400


def test_both_implementations_refuse_zero_length_beside_chunked_alike() -> None:
    data = req(HOST, b"Content-Length: 0", CHUNKED, body=b"0\r\n\r\n")
    results = {outcome(mod, [data]) for mod in (http_py, _http) if mod is not None}
    assert results == {("error", 400, "both Content-Length and Transfer-Encoding present")}


# ---------------------------------------------------------------------------------------------------------
# bare LF: a line end HTTP/1.1 does not allow, refused as soon as it is seen


BARE_LF_HEADS = {
    "request-all-lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "request-headers-lf": b"GET / HTTP/1.1\r\nHost: a\n\n",
    "request-last-lf": b"GET / HTTP/1.1\r\nHost: a\r\n\n",
    "request-leading-lf": b"\nGET / HTTP/1.1\r\n",
    "response-all-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
    "response-headers-lf": b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\nhi",
    "response-last-lf": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\nhi",
    "response-status-line-only": b"HTTP/1.1 200 OK\n",
}


@pytest.mark.parametrize("data", list(BARE_LF_HEADS.values()), ids=list(BARE_LF_HEADS))
def test_head_with_bare_lf_is_refused_before_it_ends(impl: ModuleType, data: bytes) -> None:
    # no CRLFCRLF ever comes: without the check a request waits for the head timeout (a 408, much later)
    # and a response for the read timeout; fed without an EOF, the refusal comes from the bytes alone
    if data.startswith(b"HTTP/"):
        assert response_refused(impl, data) == 502
    else:
        assert refused(impl, data) == 400


def test_crlf_split_between_cr_and_lf_is_not_a_bare_lf(impl: ModuleType) -> None:
    data = req(HOST, line=b"GET / HTTP/1.1")
    for i in range(len(data)):
        if data[i:i + 1] == b"\n":
            assert outcome(impl, [data[:i], data[i:]]) == ("ok", [b""], 0)


# ---------------------------------------------------------------------------------------------------------
# chunk extensions: the bytes a header value may not hold are refused here too

BAD_EXTENSIONS = {
    "lf": b"5;a\nb", "nul": b"5;a\x00b", "cr": b"5;a\rb", "del": b"5;a\x7fb", "esc": b"5;a\x1bb",
    "lf-first": b"5;\nb", "lf-value": b"5;a=\"x\ny\"",
}


@pytest.mark.parametrize("line", list(BAD_EXTENSIONS.values()), ids=list(BAD_EXTENSIONS))
def test_chunk_extension_with_control_bytes_is_refused(impl: ModuleType, line: bytes) -> None:
    data = req(HOST, CHUNKED, body=line + b"\r\nhello\r\n0\r\n\r\n")
    assert refused(impl, data) == 400


def test_chunk_extension_lf_line_end_is_refused_at_once(impl: ModuleType) -> None:
    # "5;ext\n": the size line never ends in CRLF; refused when the LF is seen, not at the line limit
    data = req(HOST, CHUNKED, body=b"5;ext\nhello\n")
    assert refused(impl, data) == 400


@pytest.mark.parametrize("line", [b"5;a", b"5;a=b", b'5;a="x y"', b"5 ;a\t=\tb", b"5;a=\xc3\xa9", b"5;"])
def test_chunk_extensions_of_printable_bytes_are_ignored(impl: ModuleType, line: bytes) -> None:
    data = req(HOST, CHUNKED, body=line + b"\r\nhello\r\n0\r\n\r\n")
    for pieces in fragmentations(data):
        assert outcome(impl, pieces) == ("ok", [b"hello"], 0)


# ---------------------------------------------------------------------------------------------------------
# trailers: a trailer line obeys a header line's rules

BAD_TRAILERS = {
    "value-lf": b"X-T: a\nb", "value-nul": b"X-T: a\x00b", "value-cr": b"X-T: a\rb", "value-del": b"X-T: \x7f",
    "name-nul": b"X\x00T: 1", "name-space": b"X T: 1", "no-colon": b"X-T 1", "empty-name": b": v",
    "obs-fold": b" folded", "space-before-colon": b"X-T : 1",
}


@pytest.mark.parametrize("line", list(BAD_TRAILERS.values()), ids=list(BAD_TRAILERS))
def test_trailer_line_refused_like_a_header_line(impl: ModuleType, line: bytes) -> None:
    data = req(HOST, CHUNKED, body=b"5\r\nhello\r\n0\r\n" + line + b"\r\n\r\n")
    assert refused(impl, data) == 400
    # the same bytes as a header line of the head: refused too
    assert refused(impl, req(HOST, line, b"Content-Length: 0")) == 400


def test_trailer_ending_in_bare_lf_is_refused_at_once(impl: ModuleType) -> None:
    data = req(HOST, CHUNKED, body=b"5\r\nhello\r\n0\r\nX-T: 1\n\n")
    assert refused(impl, data) == 400


def test_valid_trailers_are_accepted(impl: ModuleType) -> None:
    data = req(HOST, CHUNKED, body=b"5\r\nhello\r\n0\r\nX-T: 1\r\nX-U:\tv w\t\r\n\r\n")
    for pieces in fragmentations(data):
        assert outcome(impl, pieces) == ("ok", [b"hello"], 0)


# ---------------------------------------------------------------------------------------------------------
# the chunk-line limit does not depend on where the segments end


def chunk_line_at(length: int, where: str) -> tuple[bytes, int]:
    """A chunked request whose size line (or trailer line) is ``length`` bytes; and the offset of its CR."""
    if where == "size":
        line = b"5;" + b"e" * (length - 2)
        body = line + b"\r\nhello\r\n0\r\n\r\n"
    else:
        line = b"X: " + b"t" * (length - 3)
        body = b"5\r\nhello\r\n0\r\n" + line + b"\r\n\r\n"
    data = req(HOST, CHUNKED, body=body)
    return data, data.index(line) + len(line)


@pytest.mark.parametrize("where", ["size", "trailer"])
@pytest.mark.parametrize("length", [LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 2])
def test_chunk_line_limit_whatever_the_cut(impl: ModuleType, where: str, length: int) -> None:
    data, cr = chunk_line_at(length, where)
    expected: tuple[Any, ...] = ("ok", [b"hello"], 0) if length <= LIMIT else ("error", 400)
    for cut in range(cr - 3, cr + 4):  # before, at and after the CR and the LF
        got = outcome(impl, [data[:cut], data[cut:]])
        assert got[:len(expected)] == expected, (cut - cr, got)
    got = outcome(impl, [data])
    assert got[:len(expected)] == expected


@pytest.mark.parametrize("where", ["size", "trailer"])
def test_chunk_line_over_the_limit_is_refused_before_its_end(impl: ModuleType, where: str) -> None:
    data, cr = chunk_line_at(LIMIT + 1, where)
    # the line so far (no CR yet) is already one byte over: refused without waiting for more
    assert outcome(impl, [data[:cr]])[:2] == ("error", 400)
    # a CR at the end may start the CRLF: a line of exactly the limit waits for its LF
    ok, ok_cr = chunk_line_at(LIMIT, where)
    p = impl.RequestParser()
    p.feed(ok[:ok_cr + 1])
    assert p.next_request() is None
    p.feed(ok[ok_cr + 1:])
    assert p.next_request().body == b"hello"


def test_chunked_decoder_held_line_directly(impl: ModuleType) -> None:
    dec = impl.ChunkedDecoder()
    line = b"5;" + b"e" * (LIMIT - 2)
    assert dec.feed(line + b"\r", 0) == 0  # held, CR not counted
    dec = impl.ChunkedDecoder()
    with pytest.raises(ParseError) as ei:
        dec.feed(line + b"e\r", 0)
    assert ei.value.status == 400
    with pytest.raises(ParseError) as ei:
        impl.ChunkedDecoder().feed(b"5;a\n", 0)
    assert (ei.value.status, ei.value.message) == (400, "bare LF in a chunk size line")


# ---------------------------------------------------------------------------------------------------------
# the response parser the upstream pool uses


def response_outcome(mod: ModuleType, pieces: list[bytes]) -> tuple[Any, ...]:
    p = mod.ResponseParser()
    body = []
    try:
        for piece in pieces:
            p.feed(piece)
            body.append(p.take_body())
    except ParseError as exc:
        return ("error", exc.status)
    return ("ok", p.head_done, p.done, b"".join(body))


def response_refused(mod: ModuleType, data: bytes) -> int | None:
    results = {response_outcome(mod, pieces) for pieces in fragmentations(data)}
    assert len(results) == 1, results
    (result,) = results
    return int(result[1]) if result[0] == "error" else None


@pytest.mark.parametrize("line", [b"HTTP/1.1 200 O\nK", b"HTTP/1.1 200 O\x00K", b"HTTP/1.1 200 \x7f"])
def test_response_status_line_with_control_bytes_is_refused(impl: ModuleType, line: bytes) -> None:
    assert response_refused(impl, line + b"\r\nContent-Length: 0\r\n\r\n") == 502


def test_response_reason_phrase_of_printable_bytes_is_kept(impl: ModuleType) -> None:
    p = impl.ResponseParser()
    p.feed(b"HTTP/1.1 200 All\tfine \xe9\r\nContent-Length: 0\r\n\r\n")
    assert (p.done, p.reason) == (True, "All\tfine \xe9")


@pytest.mark.parametrize("body", [
    b"5;a\x00\r\nhello\r\n0\r\n\r\n",
    b"5;a\nb\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: 1\n\n",
    b"5\r\nhello\r\n0\r\n folded\r\n\r\n",
], ids=["ext-nul", "ext-lf", "trailer-nul", "trailer-lf", "trailer-obs-fold"])
def test_response_chunk_framing_refused_like_a_request(impl: ModuleType, body: bytes) -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    assert response_refused(impl, data) == 400  # the pool turns any ParseError into a 502


def test_response_chunk_line_at_the_limit_split_between_cr_and_lf(impl: ModuleType) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    line = b"5;" + b"e" * (LIMIT - 2)
    data = head + line + b"\r\nhello\r\n0\r\n\r\n"
    cr = len(head) + len(line)
    for cut in range(cr - 1, cr + 3):
        assert response_outcome(impl, [data[:cut], data[cut:]]) == ("ok", True, True, b"hello")
    too_long = head + line + b"e\r\nhello\r\n0\r\n\r\n"
    for cut in range(cr - 1, cr + 3):
        assert response_outcome(impl, [too_long[:cut], too_long[cut:]]) == ("error", 400)


# ---------------------------------------------------------------------------------------------------------
# property: any bytes in an extension or a trailer value, any cut; the rule is a header value's


def _text_ok(b: bytes) -> bool:
    return not any((c < 0x20 and c != 0x09) or c == 0x7F for c in b)


@settings(max_examples=int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", 300)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ext=st.binary(max_size=10), value=st.binary(max_size=10), cut=st.integers(0, 400))
def test_prop_extension_and_trailer_bytes(ext: bytes, value: bytes, cut: int) -> None:
    assume(b"\r\n" not in ext and b"\r\n" not in value)  # a CRLF would end the line: other framing
    data = req(HOST, CHUNKED, body=b"5;" + ext + b"\r\nhello\r\n0\r\nX-T: " + value + b"\r\n\r\n")
    ok = _text_ok(ext) and _text_ok(value.strip(b" \t"))
    cut %= len(data) + 1
    for mod in (http_py, _http):
        if mod is None:
            continue
        for pieces in ([data], [data[:cut], data[cut:]]):
            got = outcome(mod, pieces)
            assert got[:2] == (("ok", [b"hello"]) if ok else ("error", 400)), (mod.__name__, pieces, got)
