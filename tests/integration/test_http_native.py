"""Raw HTTP/1.1 bytes against the native front end: the parser's limits, smuggling-shaped input, timeouts.

Each probe asserts the status line, the OpenAI-shaped JSON error body and whether the connection is
closed; afterwards the gateway must still serve an ordinary chat request (``assert_serves``).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .conftest import Gateway
from .helpers import (
    RawClient,
    assert_openai_error,
    assert_serves,
    chat_body,
    chat_request,
    http_request,
    sse_events,
)

pytestmark = pytest.mark.timeout(30)

CHAT = "/v1/chat/completions"


@pytest.fixture
def gw(native_gateway: Gateway) -> Iterator[Gateway]:
    yield native_gateway
    assert_serves(native_gateway.port)  # whatever a test sent, the gateway still serves


@pytest.fixture
def conn(gw: Gateway) -> Iterator[RawClient]:
    with RawClient(gw.port) as c:
        yield c


def _head(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- errors the engine answers (the connection stays usable) --------------------------------------------


def test_malformed_json_is_400(conn: RawClient) -> None:
    resp = conn.request(http_request("POST", CHAT, b'{"model": "chat-model", "messages": [}'))
    assert_openai_error(resp, 400, "invalid_json")
    assert resp.header("x-request-id")
    assert resp.header("connection") != "close"
    # keep-alive: the same connection serves the next request
    assert conn.request(chat_request()).status == 200


def test_empty_body_is_400(conn: RawClient) -> None:
    resp = conn.request(http_request("POST", CHAT, b""))
    assert_openai_error(resp, 400)


def test_non_object_json_is_400(conn: RawClient) -> None:
    resp = conn.request(http_request("POST", CHAT, b"[1, 2, 3]"))
    assert_openai_error(resp, 400)


def test_wrong_content_type_is_415(conn: RawClient) -> None:
    resp = conn.request(http_request("POST", CHAT, chat_body(), content_type="text/plain"))
    assert_openai_error(resp, 415, "unsupported_media_type")
    assert conn.request(chat_request()).status == 200


def test_content_type_with_charset_is_accepted(conn: RawClient) -> None:
    ctype = "application/json; charset=utf-8"
    resp = conn.request(http_request("POST", CHAT, chat_body(), content_type=ctype))
    assert resp.status == 200, resp


def test_unknown_path_is_404(conn: RawClient) -> None:
    resp = conn.request(http_request("GET", "/v2/nothing-here"))
    assert_openai_error(resp, 404)
    assert resp.header("x-request-id")
    assert conn.request(http_request("GET", "/v1/models")).status == 200


def test_get_on_chat_is_405_with_allow(conn: RawClient) -> None:
    resp = conn.request(http_request("GET", CHAT))
    assert_openai_error(resp, 405, "method_not_allowed")
    assert resp.header("allow") == "POST"


def test_post_on_models_is_405_with_allow(conn: RawClient) -> None:
    resp = conn.request(http_request("POST", "/v1/models", b"{}"))
    assert_openai_error(resp, 405)
    assert resp.header("allow") == "GET"


def test_query_string_is_ignored_for_routing(conn: RawClient) -> None:
    resp = conn.request(http_request("POST", CHAT + "?api-version=2024-01-01", chat_body()))
    assert resp.status == 200, resp


# -- errors of the parser (answered, then the connection is closed) -------------------------------------


def _assert_rejected(conn: RawClient, status: int, code: str | None = None) -> None:
    resp = conn.read_response()
    assert_openai_error(resp, status, code)
    assert (resp.header("x-request-id") or "").startswith("refused-"), resp
    assert resp.header("connection") == "close", resp
    assert conn.closed_by_peer(), "the connection stayed open after a framing error"


MESSAGES = "/v1/messages"


@pytest.mark.parametrize("case", ["over the limit", "chunked over the limit", "bad Content-Length",
                                  "Content-Length and chunked"])
def test_refusals_on_anthropic_endpoints_are_in_anthropics_shape(gw: Gateway, case: str) -> None:
    """A request the front end refuses before the engine is answered in the dialect its path names: the
    ``anthropic`` SDK reads the error of a /v1/messages (or count_tokens) request, with its request id."""
    data = b"x" * 65537
    head = [f"POST {MESSAGES}{'/count_tokens' if 'chunked' in case else ''}?beta=true HTTP/1.1", "Host: x",
            "Content-Type: application/json"]
    status, kind = 400, "invalid_request_error"
    if case == "over the limit":
        raw = _head([*head, "Content-Length: 70000"])
        status, kind = 413, "request_too_large"
    elif case == "chunked over the limit":
        raw = _head([*head, "Transfer-Encoding: chunked"]) + b"%x\r\n" % len(data) + data
        status, kind = 413, "request_too_large"
    elif case == "bad Content-Length":
        raw = _head([*head, "Content-Length: 12x"])
    else:
        raw = _head([*head, "Content-Length: 5", "Transfer-Encoding: chunked"]) + b"0\r\n\r\n"
    with RawClient(gw.port) as c:
        c.send(raw)
        resp = c.read_response()
        body = json.loads(resp.body)
        assert resp.status == status, resp
        assert body["type"] == "error" and body["error"]["type"] == kind, body
        rid = resp.header("request-id")
        assert rid and rid.startswith("refused-") and body["request_id"] == rid == resp.header("x-request-id")
        assert resp.header("connection") == "close" and c.closed_by_peer()


def test_body_over_limit_is_413(conn: RawClient) -> None:
    # max_body_bytes = 65536: refused from the head alone (no need to send the body)
    conn.send(_head([f"POST {CHAT} HTTP/1.1", "Host: x", "Content-Type: application/json",
                     "Content-Length: 70000"]))
    _assert_rejected(conn, 413, "payload_too_large")


def test_chunked_body_over_limit_is_413(conn: RawClient) -> None:
    data = b"x" * 65537
    conn.send(_head([f"POST {CHAT} HTTP/1.1", "Host: x", "Content-Type: application/json",
                     "Transfer-Encoding: chunked"]) + b"%x\r\n" % len(data) + data)
    _assert_rejected(conn, 413)


def test_head_over_limit_is_431(conn: RawClient) -> None:
    # max_header_bytes = 8192; an unterminated head already over the limit
    conn.send(_head(["GET /v1/models HTTP/1.1", "Host: x"])[:-2] + b"X-Big: " + b"a" * 9000)
    _assert_rejected(conn, 431, "headers_too_large")


def test_complete_head_over_limit_is_431(conn: RawClient) -> None:
    conn.send(_head(["GET /v1/models HTTP/1.1", "Host: x"] + [f"X-H{i}: {'b' * 100}" for i in range(90)]))
    _assert_rejected(conn, 431)


def test_content_length_and_transfer_encoding_is_400(conn: RawClient) -> None:
    # CL.TE smuggling shape: the "body" hides a second request; it must never be answered
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    conn.send(_head([f"POST {CHAT} HTTP/1.1", "Host: x", "Content-Type: application/json",
                     f"Content-Length: {len(body)}", "Transfer-Encoding: chunked"]) + body)
    _assert_rejected(conn, 400)


def test_transfer_encoding_then_content_length_is_400(conn: RawClient) -> None:
    conn.send(_head([f"POST {CHAT} HTTP/1.1", "Host: x", "Transfer-Encoding: chunked", "Content-Length: 5"])
              + b"0\r\n\r\n")
    _assert_rejected(conn, 400)


def test_duplicate_content_length_is_400(conn: RawClient) -> None:
    body = chat_body()
    conn.send(_head([f"POST {CHAT} HTTP/1.1", "Host: x", "Content-Type: application/json",
                     f"Content-Length: {len(body)}", f"Content-Length: {len(body)}"]) + body)
    _assert_rejected(conn, 400)


@pytest.mark.parametrize("value", ["abc", "-1", "+5", "1 2", ""])
def test_invalid_content_length_is_400(conn: RawClient, value: str) -> None:
    conn.send(_head([f"POST {CHAT} HTTP/1.1", "Host: x", f"Content-Length: {value}"]))
    _assert_rejected(conn, 400)


def test_obsolete_line_folding_is_400(conn: RawClient) -> None:
    conn.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n")
    _assert_rejected(conn, 400)


def test_http2_request_line_is_505(conn: RawClient) -> None:
    conn.send(b"GET /v1/models HTTP/2.0\r\nHost: x\r\n\r\n")
    _assert_rejected(conn, 505, "http_version_not_supported")


def test_gzip_transfer_coding_is_501(conn: RawClient) -> None:
    conn.send(_head([f"POST {CHAT} HTTP/1.1", "Host: x", "Transfer-Encoding: gzip"]))
    _assert_rejected(conn, 501, "not_implemented")


def test_missing_host_is_400(conn: RawClient) -> None:
    conn.send(b"GET /v1/models HTTP/1.1\r\n\r\n")
    _assert_rejected(conn, 400)


def test_garbage_request_line_is_400(conn: RawClient) -> None:
    conn.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n")  # a TLS ClientHello-ish start
    _assert_rejected(conn, 400)


# -- framing features ------------------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(conn: RawClient) -> None:
    reqs = [
        http_request("GET", "/v1/models", headers=[("X-Request-Id", "p-1")]),
        chat_request("pipelined chat", headers=[("X-Request-Id", "p-2")]),
        http_request("GET", "/v1/models/chat-model", headers=[("X-Request-Id", "p-3")]),
        chat_request("!mock status=429", headers=[("X-Request-Id", "p-4")]),
        http_request("GET", "/v1/models", headers=[("X-Request-Id", "p-5")]),
    ]
    conn.send(b"".join(reqs))
    responses = [conn.read_response() for _ in reqs]
    assert [r.header("x-request-id") for r in responses] == ["p-1", "p-2", "p-3", "p-4", "p-5"]
    assert [r.status for r in responses] == [200, 200, 200, 429, 200]
    assert responses[0].json()["object"] == "list"
    assert responses[1].json()["object"] == "chat.completion"
    assert responses[2].json()["id"] == "chat-model"
    assert responses[4].json()["object"] == "list"
    # the connection is still open and usable
    assert conn.request(http_request("GET", "/healthz")).status == 200


def test_deep_pipeline_of_local_and_proxied_answers(conn: RawClient) -> None:
    # answers given at once are taken in a loop, not by recursion: thousands in one buffer, in order,
    # with proxied requests (answered later, from the upstream's callback) in between
    reqs = []
    for i in range(3000):
        rid = [("X-Request-Id", f"d-{i}")]
        if i % 500 == 250:
            reqs.append(chat_request("deep", headers=rid))
        elif i % 3:
            reqs.append(http_request("GET", "/healthz", headers=rid))
        else:
            reqs.append(http_request("GET", "/nowhere", headers=rid))
    sender = threading.Thread(target=conn.send, args=(b"".join(reqs),))
    sender.start()
    try:
        responses = [conn.read_response() for _ in reqs]
    finally:
        sender.join(20)
    assert [r.header("x-request-id") for r in responses] == [f"d-{i}" for i in range(3000)]
    expected = [200 if i % 500 == 250 or i % 3 else 404 for i in range(3000)]
    assert [r.status for r in responses] == expected
    assert responses[250].json()["object"] == "chat.completion"


def test_pipelined_flood_is_flow_controlled(conn: RawClient) -> None:
    # ~360 KB of pipelined 60 KB requests: more than the server buffers while busy (it pauses reading),
    # every one answered, in order, with the connection intact
    filler = "z" * 60000
    reqs = [chat_request(filler, headers=[("X-Request-Id", f"flood-{i}")]) for i in range(6)]
    sender = threading.Thread(target=conn.send, args=(b"".join(reqs),))
    sender.start()
    try:
        responses = [conn.read_response() for _ in reqs]
    finally:
        sender.join(20)
    assert [r.header("x-request-id") for r in responses] == [f"flood-{i}" for i in range(6)]
    assert all(r.status == 200 for r in responses), responses
    assert conn.request(http_request("GET", "/healthz")).status == 200


def test_pipelined_stream_then_request(conn: RawClient) -> None:
    body = chat_body("stream me", stream=True)
    conn.send(http_request("POST", CHAT, body) + http_request("GET", "/v1/models"))
    first = conn.read_response()
    assert first.status == 200
    assert first.header("transfer-encoding") == "chunked"
    assert sse_events(first.body)[-1] == b"[DONE]"
    assert conn.read_response().json()["object"] == "list"


def test_chunked_request_body_accepted(conn: RawClient) -> None:
    body = chat_body("sent in pieces")
    pieces = [body[:10], body[10:11], body[11:40], body[40:]]
    head = _head([f"POST {CHAT} HTTP/1.1", "Host: x", "Content-Type: application/json",
                  "Transfer-Encoding: chunked"])
    conn.send(head)
    for p in pieces:
        conn.send(b"%x;ext=1\r\n%s\r\n" % (len(p), p))
    conn.send(b"0\r\nX-Trailer: yes\r\n\r\n")
    resp = conn.read_response()
    assert resp.status == 200, resp
    assert resp.json()["choices"][0]["message"]["content"]
    assert conn.request(chat_request()).status == 200  # framing intact afterwards


def test_expect_100_continue(conn: RawClient) -> None:
    body = chat_body("continue please")
    conn.send(_head([f"POST {CHAT} HTTP/1.1", "Host: x", "Content-Type: application/json",
                     f"Content-Length: {len(body)}", "Expect: 100-continue"]))
    interim = conn.read_response()
    assert (interim.version, interim.status) == ("HTTP/1.1", 100), interim
    conn.send(body)
    resp = conn.read_response()
    assert resp.status == 200, resp
    assert resp.json()["object"] == "chat.completion"


def test_expect_100_continue_refused_for_oversize_body(conn: RawClient) -> None:
    conn.send(_head([f"POST {CHAT} HTTP/1.1", "Host: x", "Content-Type: application/json",
                     "Content-Length: 100000", "Expect: 100-continue"]))
    _assert_rejected(conn, 413)  # no 100 Continue first: the final answer straight away


def test_http10_without_keepalive_closes(conn: RawClient) -> None:
    conn.send(http_request("GET", "/v1/models", version="HTTP/1.0"))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.json()["object"] == "list"
    assert resp.header("connection") == "close"
    assert conn.closed_by_peer()


def test_http10_stream_is_close_delimited(conn: RawClient) -> None:
    conn.send(http_request("POST", CHAT, chat_body("old client", stream=True), version="HTTP/1.0"))
    resp = conn.read_response()  # no content-length, no chunked: read to close
    assert resp.status == 200
    assert resp.header("transfer-encoding") is None
    assert sse_events(resp.body)[-1] == b"[DONE]"


def test_http10_keepalive_is_honoured(conn: RawClient) -> None:
    conn.send(http_request("GET", "/v1/models", version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
    assert conn.read_response().status == 200
    conn.send(http_request("GET", "/healthz", version="HTTP/1.0"))
    assert conn.read_response().status == 200
    assert conn.closed_by_peer()


def test_half_closed_client_gets_its_response(conn: RawClient) -> None:
    # granian (hyper without half-close support) drops such a connection unanswered: native only
    conn.send(chat_request("half close"))
    conn.sock.shutdown(socket.SHUT_WR)  # the request is complete; the client sends nothing more
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.json()["choices"][0]["message"]["content"]
    assert conn.closed_by_peer()  # nothing more can come from this client: the server closes too


def test_connection_close_is_honoured(conn: RawClient) -> None:
    resp = conn.request(chat_request(headers=[("Connection", "close")]))
    assert resp.status == 200
    assert resp.header("connection") == "close"
    assert conn.closed_by_peer()


# -- slow and idle clients (header_timeout = body_timeout = keepalive_timeout = 1.0) ---------------------


#: how long a test waits for a timeout of the server (1.0 s configured) to show its effect: generous, so that
#: only a missing mechanism fails, never a slow machine
EFFECT_WAIT = 30.0


def test_slow_head_is_408(gw: Gateway) -> None:
    # the clock starts before the connection: the server's header deadline cannot start earlier, so a
    # correct server cannot answer before header_timeout (1.0 s) has passed on it
    t0 = time.monotonic()
    with RawClient(gw.port, timeout=EFFECT_WAIT) as conn:
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
        resp = conn.read_response()
        assert_openai_error(resp, 408, "request_timeout")
        assert time.monotonic() - t0 >= 0.8  # it waited for the rest of the head (a lower bound only)
        assert conn.closed_by_peer(timeout=EFFECT_WAIT)


@pytest.mark.timeout(EFFECT_WAIT + 30)
def test_head_trickled_past_deadline_is_408(conn: RawClient) -> None:
    # bytes keep coming, every 0.3 s (well inside the 1.0 s header_timeout), for as long as EFFECT_WAIT:
    # a deadline reset per piece never fires, so only a deadline for the head as a whole ends this with
    # a 408 (no time is measured: the 408 arriving at all is the proof)
    pieces = [b"GET /v1/mo", b"dels HTTP/1.1\r\n", b"Host: x\r\n"]
    deadline = time.monotonic() + EFFECT_WAIT
    n = 0
    while True:
        conn.send(pieces[n] if n < len(pieces) else b"X-%d: 1\r\n" % n)  # 100 lines: far below 8 KiB
        n += 1
        # stop writing once the server has answered: bytes sent after its close would make it reset the
        # connection, and a reset can discard the 408 before we read it
        readable, _, _ = select.select([conn.sock], [], [], 0.3)
        if readable:
            break
        assert time.monotonic() < deadline, f"no answer after {n} pieces: the deadline is reset per piece"
    conn.sock.settimeout(EFFECT_WAIT)
    resp = conn.read_response()
    assert_openai_error(resp, 408, "request_timeout")
    assert conn.closed_by_peer(timeout=EFFECT_WAIT)


def test_body_stall_is_408(conn: RawClient) -> None:
    conn.sock.settimeout(EFFECT_WAIT)  # the 408 arriving is the point; when is up to the 1.0 s body_timeout
    conn.send(_head([f"POST {CHAT} HTTP/1.1", "Host: x", "Content-Type: application/json",
                     "Content-Length: 100"]) + b'{"model": "chat-')
    resp = conn.read_response()
    assert_openai_error(resp, 408, "request_timeout")
    assert conn.closed_by_peer(timeout=EFFECT_WAIT)


def test_idle_keepalive_connection_closed(conn: RawClient) -> None:
    # the clock starts before the request: the keep-alive deadline starts after the response, so a
    # correct server cannot close sooner than keepalive_timeout (1.0 s) after this
    t0 = time.monotonic()
    assert conn.request(chat_request()).status == 200
    assert conn.closed_by_peer(timeout=EFFECT_WAIT), "idle connection not closed after keepalive_timeout"
    assert time.monotonic() - t0 >= 0.8  # it was kept open for a while (a lower bound only)


def test_connection_without_bytes_closed(gw: Gateway) -> None:
    # a client that connects and says nothing is dropped after header_timeout, without an answer; the
    # clock starts before the connection, so a correct server cannot drop it sooner
    t0 = time.monotonic()
    with RawClient(gw.port) as conn:
        assert conn.closed_by_peer(timeout=EFFECT_WAIT)
    assert time.monotonic() - t0 >= 0.8  # a lower bound only


def test_active_keepalive_connection_not_cut(conn: RawClient) -> None:
    # requests every 0.2 s for 2.5 s: the keep-alive deadline (1.0 s) restarts after each response. The
    # pauses are the scenario (a client idling a little); a fifth of the deadline leaves room for a slow
    # machine to stretch them
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:
        assert conn.request(http_request("GET", "/healthz")).status == 200
        time.sleep(0.2)


def test_slow_streaming_response_not_cut_by_timeouts(conn: RawClient) -> None:
    # a response that takes longer than every client-side timeout is not cut (the deadlines are for
    # reading requests, not for writing responses)
    resp = conn.request(chat_request("!mock chunks=6 chunk_delay_ms=400", stream=True))
    assert resp.status == 200
    events = sse_events(resp.body)
    assert events[-1] == b"[DONE]"
    assert sum(1 for e in events[:-1] if json.loads(e)["choices"]) == 7  # 6 content + the finish chunk

