"""The engine and the relay against hostile bodies and odd upstreams, through real processes.

A dedicated gateway per test (``start_gateway``) in front of the standalone mock and of a scripted
upstream in this process (``ScriptedUpstream``), whose answer is chosen by the last user message: plain
JSON for a stream request, an event larger than the scanner's limit, usage on a content chunk, a stream
whose last blank line comes in its own segment. Call records are read from the gateway's stderr.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from .conftest import StartGateway, require_frontend
from .helpers import (
    HOST,
    RawClient,
    assert_openai_error,
    chat_body,
    gateway_toml,
    http_request,
    sse_events,
    wait_for,
)

#: the scanner's limit on one server-sent event (SSEScanner's default)
MAX_EVENT = 1 << 20

COMPLETION = {
    "id": "chatcmpl-json1", "object": "chat.completion", "created": 1700000000, "model": "scripted-1",
    "system_fingerprint": "fp_1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from a plain JSON answer",
                                         "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17},
}
TOOL_COMPLETION = {
    **COMPLETION,
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
}
TEXT_COMPLETION = {
    "id": "cmpl-json1", "object": "text_completion", "created": 1700000000, "model": "scripted-1",
    "choices": [{"index": 0, "text": "plain text answer", "logprobs": None, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "scripted-1",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class ScriptedUpstream:
    """An OpenAI-shaped upstream whose answer is named by the last user message (``behaviours``)."""

    def __init__(self) -> None:
        outer = self
        self.requests: list[dict[str, Any]] = []
        #: set when the upstream stops: ``hang`` answers then
        self.release = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                outer.requests.append(body)
                if "messages" in body:
                    what = body["messages"][-1]["content"]
                else:
                    what = body.get("prompt")
                getattr(outer, "_" + what.replace("-", "_"))(self)

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # -- answers -----------------------------------------------------------------------------------------

    @staticmethod
    def _send(h: http.server.BaseHTTPRequestHandler, ctype: str, body: bytes, status: int = 200) -> None:
        h.send_response(status)
        h.send_header("content-type", ctype)
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    @staticmethod
    def _stream(h: http.server.BaseHTTPRequestHandler, pieces: list[bytes], pause: float = 0.0) -> None:
        """A chunked event stream written piece by piece (``pause``: between pieces, so that each arrives
        at the gateway in its own segment)."""
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        for piece in pieces:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            h.wfile.flush()
            if pause:
                time.sleep(pause)
        h.wfile.write(b"0\r\n\r\n")

    def asked(self, what: str) -> bool:
        """True once a request whose last user message is ``what`` has arrived."""
        return any(r.get("messages", [{}])[-1].get("content") == what for r in list(self.requests))

    def _hang(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self.release.wait(30)
        self._json(h)

    def _json(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self._send(h, "application/json", json.dumps(COMPLETION).encode())

    def _json_tools(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self._send(h, "application/json", json.dumps(TOOL_COMPLETION).encode())

    def _json_text(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self._send(h, "application/json", json.dumps(TEXT_COMPLETION).encode())

    def _json_error(self, h: http.server.BaseHTTPRequestHandler) -> None:
        error = {"error": {"message": "the model is overloaded, try later", "type": "server_error",
                           "param": None, "code": "overloaded"}}
        self._send(h, "application/json", json.dumps(error).encode())

    def _not_json(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self._send(h, "text/plain", b"this is not a completion")

    def _big_event(self, h: http.server.BaseHTTPRequestHandler) -> None:
        # held back until complete, the event grows past the limit on its way in (reads are far smaller)
        big = _chunk({"content": "x" * (3 * MAX_EVENT)})
        self._stream(h, [_chunk({"role": "assistant", "content": "first"}), big[:len(big) // 2],
                         big[len(big) // 2:], b"data: [DONE]\n\n"])

    def _usage_on_content(self, h: http.server.BaseHTTPRequestHandler) -> None:
        # some providers put usage on the last content chunk and send no usage-only chunk
        usage = {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25}
        self._stream(h, [_chunk({"role": "assistant", "content": "one "}),
                         _chunk({"content": "two"}, "stop", usage), b"data: [DONE]\n\n"])

    def _trailing_blank(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self._stream(h, [_chunk({"role": "assistant", "content": "blank"}), _chunk({}, "stop"),
                         b"data: [DONE]\n\n", b"\n"], pause=0.2)


@pytest.fixture
def scripted() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as up:
        yield up


def config(mock_port: int, scripted_port: int, **server: Any) -> str:
    """A gateway in front of the mock (``chat-model``, ``mock-1``, ``embed-model``) and of the scripted
    upstream (``scripted``)."""
    extra = (
        "\n[providers.scripted]\ntype = \"openai\"\n"
        f"base_url = \"http://{HOST}:{scripted_port}/v1\"\nread_timeout = 10.0\n"
        "\n[models.scripted]\nprovider = \"scripted\"\nendpoints = [\"chat\", \"completions\"]\n"
    )
    return gateway_toml(mock_port, server=server, extra_models=extra)


def records(gw: Any) -> list[dict[str, Any]]:
    lines = gw.process.log_path.read_bytes().splitlines()
    return [json.loads(ln) for ln in lines if ln.startswith(b'{"ts":')]


def records_of(gw: Any, *rids: str, timeout: float = 10.0) -> dict[str, list[dict[str, Any]]]:
    """The call records of the requests ``rids`` once each has one (they are flushed in the background)."""
    def found() -> dict[str, list[dict[str, Any]]] | None:
        out: dict[str, list[dict[str, Any]]] = {rid: [] for rid in rids}
        for rec in records(gw):
            if rec["request_id"] in out:
                out[rec["request_id"]].append(rec)
        return out if all(out.values()) else None

    return wait_for(found, timeout, what=f"call records of {rids}")  # type: ignore[no-any-return]


def rid() -> str:
    return f"hard-{uuid.uuid4().hex[:10]}"


def post(port: int, path: str, body: bytes, request_id: str | None = None) -> Any:
    headers = [("x-request-id", request_id)] if request_id else []
    with RawClient(port) as c:
        return c.request(http_request("POST", path, body, headers=headers))


def stream_of(gw: Any, what: str, **extra: Any) -> tuple[str, Any]:
    """A stream request to the scripted upstream (``what``: its answer), on its own connection: its request
    id and the response read to its end."""
    request_id = rid()
    resp = post(gw.port, "/v1/chat/completions", chat_body(what, model="scripted", stream=True, **extra),
                request_id)
    assert resp.status == 200, resp
    return request_id, resp


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def traceback_free(gw: Any) -> None:
    logs = gw.process.logs(10**7, records=False)
    assert "Traceback" not in logs and "RecursionError" not in logs, logs[-3000:]


# -- 3: deep nesting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", '{"model": "chat-model", "messages": [{"role": "user", "content": %s}]}'),
    ("/v1/chat/completions", '{"model": "chat-model", "messages": [], "metadata": {"a": %s}}'),
    ("/v1/completions", '{"model": "chat-model", "prompt": %s}'),
    ("/v1/embeddings", '{"model": "embed-model", "input": %s}'),
    ("/v1/chat/completions", "%s"),
])
def test_deeply_nested_body_is_400_invalid_json(start_gateway: StartGateway, mock_port: int,
                                                scripted: ScriptedUpstream, path: str, body: str) -> None:
    gw = start_gateway(config(mock_port, scripted.port, max_body_bytes=1 << 20))
    for depth in (1000, 5000, 129):
        resp = post(gw.port, path, (body % nested(depth)).encode())
        err = assert_openai_error(resp, 400, "invalid_json")
        assert "128" in err["message"], err
    # 128 levels are fine: the body gets as far as the decoder (and the upstream, for a free-form field)
    resp = post(gw.port, "/v1/chat/completions",
                b'{"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "metadata": %s}'
                % nested(127).encode())
    assert resp.status == 200, resp
    traceback_free(gw)


def test_deeply_nested_body_to_the_standalone_mock_is_400(mock_port: int) -> None:
    body = b'{"model": "mock-1", "messages": [{"role": "user", "content": %s}]}' % nested(3000).encode()
    resp = post(mock_port, "/v1/chat/completions", body)
    err = assert_openai_error(resp, 400)
    assert "128" in err["message"], err


# -- 7: repeated keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    (b'{"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "model": "mock-1"}', "model"),
    (b'{"model": "chat-model", "mod\\u0065l": "dead-model", "messages": []}', "model"),
    (b'{"model": "chat-model", "messages": [], "stream": false, "stream": true}', "stream"),
    (b'{"model": "chat-model", "messages": [], "max_tokens": 1, "max_tokens": 9000}', "max_tokens"),
    (b'{"model": "chat-model", "messages": [], "user": "a", "user": "b"}', "user"),
    (b'{"model": "chat-model", "messages": [], "messages": []}', "messages"),
    (b'{"model": "chat-model", "messages": [], "stream": true, '
     b'"stream_options": {"include_usage": false, "include_usage": true}}', "stream_options.include_usage"),
])
def test_repeated_keys_the_gateway_reads_are_refused(start_gateway: StartGateway, mock_port: int,
                                                     scripted: ScriptedUpstream, body: bytes, param: str) -> None:
    gw = start_gateway(config(mock_port, scripted.port))
    request_id = rid()
    resp = post(gw.port, "/v1/chat/completions", body, request_id)
    err = assert_openai_error(resp, 400, "duplicate_key")
    assert err["param"] == param and param in err["message"], err
    assert records_of(gw, request_id)[request_id][0]["error_code"] == "duplicate_key"


def test_repeated_model_is_refused_on_every_endpoint_and_not_forwarded(
    start_gateway: StartGateway, mock_port: int, scripted: ScriptedUpstream
) -> None:
    gw = start_gateway(config(mock_port, scripted.port))
    for path, body in [
        ("/v1/chat/completions", b'{"model": "scripted", "messages": [{"role": "user", "content": "json"}], '
                                 b'"model": "scripted"}'),
        ("/v1/completions", b'{"model": "scripted", "prompt": "json-text", "model": "scripted"}'),
        ("/v1/embeddings", b'{"model": "embed-model", "input": "x", "model": "embed-model"}'),
    ]:
        assert_openai_error(post(gw.port, path, body), 400, "duplicate_key")
    assert scripted.requests == []  # nothing went upstream
    # the same names deeper down (a message's own keys, a tool schema's properties) are not the gateway's
    body = (b'{"model": "scripted", "messages": [{"role": "user", "content": "x", "name": "model"}, '
            b'{"role": "user", "content": "json"}], "tools": [{"type": "function", "function": {"name": "f", '
            b'"parameters": {"properties": {"model": {}, "stream": {}}, "model": 1, "model": 2}}}]}')
    resp = post(gw.port, "/v1/chat/completions", body)
    assert resp.status == 200, resp
    assert len(scripted.requests) == 1


# -- 4: an event over the scanner's limit -------------------------------------------------------------------


def test_event_over_the_limit_ends_with_an_error_event_and_done(
    start_gateway: StartGateway, mock_port: int, scripted: ScriptedUpstream
) -> None:
    gw = start_gateway(config(mock_port, scripted.port))
    request_id, resp = stream_of(gw, "big-event")
    events = sse_events(resp.body)  # the chunked body ended cleanly (the client read it to its end)
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "first"
    assert events[-1] == b"[DONE]" and len(events) == 3, events
    err = json.loads(events[-2])["error"]
    assert err["code"] == "upstream_event_too_large" and str(MAX_EVENT) in err["message"], err
    rec = records_of(gw, request_id)[request_id]
    assert len(rec) == 1 and rec[0]["error_code"] == "upstream_event_too_large", rec
    assert str(MAX_EVENT) in rec[0]["error"]
    traceback_free(gw)


def test_event_over_the_limit_through_the_sdk(start_gateway: StartGateway, mock_port: int,
                                              scripted: ScriptedUpstream) -> None:
    gw = start_gateway(config(mock_port, scripted.port))
    with gw.client() as client:
        stream = client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "big-event"}], stream=True)
        got = []
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                got.append(chunk.choices[0].delta.content)
    assert got == ["first"]
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "upstream_event_too_large"


# -- the scanner's trailing blank line ----------------------------------------------------------------------


def test_trailing_blank_line_in_its_own_segment_is_a_clean_end(
    start_gateway: StartGateway, mock_port: int, scripted: ScriptedUpstream
) -> None:
    gw = start_gateway(config(mock_port, scripted.port))
    request_id, resp = stream_of(gw, "trailing-blank")
    assert b"error" not in resp.body, resp.body
    assert sse_events(resp.body)[-1] == b"[DONE]"
    rec = records_of(gw, request_id)[request_id][0]
    assert rec.get("error_code") is None, rec


# -- usage on a content chunk -------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_on_a_content_chunk_is_learned_and_the_chunk_kept(
    start_gateway: StartGateway, mock_port: int, scripted: ScriptedUpstream, include_usage: bool
) -> None:
    gw = start_gateway(config(mock_port, scripted.port))
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    request_id, resp = stream_of(gw, "usage-on-content", **extra)
    events = sse_events(resp.body)
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents == ["one ", "two"] and events[-1] == b"[DONE]"
    rec = records_of(gw, request_id)[request_id][0]
    assert (rec.get("prompt_tokens"), rec.get("completion_tokens"), rec.get("total_tokens")) == (21, 4, 25), rec


# -- 6: a stream request answered with plain JSON -----------------------------------------------------------


def test_plain_json_answer_to_a_stream_becomes_a_stream_for_the_sdk(
    start_gateway: StartGateway, mock_port: int, scripted: ScriptedUpstream
) -> None:
    gw = start_gateway(config(mock_port, scripted.port))
    with gw.client() as client:
        stream = client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "json"}], stream=True,
            stream_options={"include_usage": True}, extra_headers={"x-request-id": "json-usage"})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == COMPLETION["choices"][0]["message"]["content"]  # type: ignore[index]
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert all(c.object == "chat.completion.chunk" and c.id == "chatcmpl-json1" for c in chunks)
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == 17

        # without include_usage: no usage chunk for the client, the usage still in the record
        plain = list(client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "json"}], stream=True,
            extra_headers={"x-request-id": "json-plain"}))
        assert plain and all(c.choices for c in plain)

        # tool calls arrive as streamed tool calls (numbered)
        tools = list(client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "json-tools"}], stream=True))
        calls = [tc for c in tools if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert len(calls) == 1 and calls[0].index == 0 and calls[0].function is not None
        assert calls[0].function.name == "get_weather" and calls[0].function.arguments == '{"city":"Oslo"}'

        # the legacy completions endpoint too
        text_chunks = list(client.completions.create(model="scripted", prompt="json-text", stream=True))
        assert "".join(c.choices[0].text for c in text_chunks if c.choices) == "plain text answer"

        # a JSON error object in a 2xx answer is a clean error, not an empty stream
        with pytest.raises(openai.APIStatusError) as info:
            list(client.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": "json-error"}], stream=True))
        assert info.value.status_code == 502 and "overloaded" in info.value.message
        with pytest.raises(openai.APIStatusError) as info:
            list(client.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": "not-json"}], stream=True))
        assert info.value.status_code == 502
    recs = records_of(gw, "json-usage", "json-plain")
    for rec in (recs["json-usage"][0], recs["json-plain"][0]):
        assert rec["stream"] is True and rec["status"] == 200 and rec["total_tokens"] == 17, rec
    traceback_free(gw)


# -- 5: one call record per request, whatever ended it ------------------------------------------------------


def _stream_then_leave(port: int, body: bytes, request_id: str) -> None:
    """Read a stream's head and first event, then close the connection."""
    c = RawClient(port)
    c.send(http_request("POST", "/v1/chat/completions", body, headers=[("x-request-id", request_id)]))
    assert c.read_head().status == 200
    next(c.iter_chunks())
    c.close()


def test_every_request_gets_exactly_one_call_record(start_gateway: StartGateway, mock_port: int,
                                                    scripted: ScriptedUpstream) -> None:
    gw = start_gateway(config(mock_port, scripted.port, drain_timeout=1.0))
    port = gw.port
    sent: dict[str, str | None] = {}  # request id -> the error code its record must carry

    def ask(body: bytes, code: str | None, path: str = "/v1/chat/completions") -> Any:
        request_id = rid()
        sent[request_id] = code
        return post(port, path, body, request_id)

    assert ask(chat_body("hi"), None).status == 200
    assert ask(chat_body("hi", stream=True), None).status == 200
    assert ask(chat_body("hi", model="nope"), "model_not_found").status == 404
    assert ask(b"{not json", "invalid_json").status == 400
    assert ask(b"[" * 2000, "invalid_json").status == 400
    assert ask(chat_body("!mock status=500"), "upstream_error").status == 500
    assert ask(chat_body("!mock garbage=1"), "upstream_invalid_response").status == 502
    assert ask(chat_body("!mock cut=2", stream=True), "upstream_stream_error").status == 200
    assert ask(chat_body("big-event", model="scripted", stream=True), "upstream_event_too_large").status == 200
    assert ask(chat_body("json-error", model="scripted", stream=True), "upstream_error").status == 502

    # the client leaves in the middle of a stream
    gone = rid()
    sent[gone] = "client_closed"
    _stream_then_leave(port, chat_body("!mock chunks=30 chunk_delay_ms=100", stream=True), gone)
    records_of(gw, *sent)  # every request so far has its record, while the worker still runs

    # still running when the worker stops: a stream, and a request waiting for its upstream's head
    cut_stream, cut_wait = rid(), rid()
    sent[cut_stream] = sent[cut_wait] = "worker_shutdown"
    stream_client = RawClient(port, timeout=20.0)
    stream_client.send(http_request("POST", "/v1/chat/completions",
                                    chat_body("!mock chunks=100 chunk_delay_ms=200", stream=True),
                                    headers=[("x-request-id", cut_stream)]))
    assert stream_client.read_head().status == 200
    wait_client = RawClient(port, timeout=20.0)
    wait_client.send(http_request("POST", "/v1/chat/completions", chat_body("hang", model="scripted"),
                                  headers=[("x-request-id", cut_wait)]))
    wait_for(lambda: scripted.asked("hang"), 10.0, what="the request waiting upstream")
    gw.process.send_signal(signal.SIGTERM)
    # the clients are told, while they are connected: an error event and [DONE]; a 503
    events = sse_events(b"".join(stream_client.iter_chunks()))
    assert events[-1] == b"[DONE]" and json.loads(events[-2])["error"]["code"] == "worker_shutdown", events[-3:]
    assert_openai_error(wait_client.read_response(), 503, "worker_shutdown")
    stream_client.close()
    wait_client.close()
    assert gw.process.wait(30) == 0

    by_id: dict[str, list[dict[str, Any]]] = {}
    for rec in records(gw):
        by_id.setdefault(rec["request_id"], []).append(rec)
    for request_id, code in sent.items():
        recs = by_id.get(request_id, [])
        assert len(recs) == 1, (request_id, code, recs)
        assert recs[0].get("error_code") == code, (request_id, recs[0])
    traceback_free(gw)


def test_request_cut_before_its_stream_started_is_recorded_once(
    start_gateway: StartGateway, mock_port: int, scripted: ScriptedUpstream
) -> None:
    """A stream request still waiting for its upstream's head at the drain deadline gets a 503."""
    gw = start_gateway(config(mock_port, scripted.port, drain_timeout=1.0))
    request_id = rid()
    c = RawClient(gw.port, timeout=20.0)
    c.send(http_request("POST", "/v1/chat/completions", chat_body("hang", model="scripted", stream=True),
                        headers=[("x-request-id", request_id)]))
    wait_for(lambda: scripted.asked("hang"), 10.0, what="the request waiting upstream")
    gw.process.send_signal(signal.SIGTERM)
    assert_openai_error(c.read_response(), 503, "worker_shutdown")
    c.close()
    assert gw.process.wait(30) == 0
    recs = [r for r in records(gw) if r["request_id"] == request_id]
    assert len(recs) == 1 and recs[0]["error_code"] == "worker_shutdown" and recs[0]["status"] == 503, recs


def test_granian_drain_deadline_records_what_it_cuts(start_gateway: StartGateway, mock_port: int,
                                                     scripted: ScriptedUpstream) -> None:
    """The granian front end cuts what still runs at its drain deadline itself: each cut request is
    recorded once, as worker_shutdown."""
    require_frontend("granian")
    gw = start_gateway(config(mock_port, scripted.port, drain_timeout=1.0), frontend="granian")
    cut_stream, cut_wait = rid(), rid()
    stream_client = RawClient(gw.port, timeout=20.0)
    stream_client.send(http_request("POST", "/v1/chat/completions",
                                    chat_body("!mock chunks=100 chunk_delay_ms=200", stream=True),
                                    headers=[("x-request-id", cut_stream)]))
    assert stream_client.read_head().status == 200
    wait_client = RawClient(gw.port, timeout=20.0)
    wait_client.send(http_request("POST", "/v1/chat/completions", chat_body("hang", model="scripted"),
                                  headers=[("x-request-id", cut_wait)]))
    wait_for(lambda: scripted.asked("hang"), 10.0, what="the request waiting upstream")
    gw.process.send_signal(signal.SIGTERM)
    assert_openai_error(wait_client.read_response(), 503)
    with contextlib.suppress(ConnectionError):  # granian ends a cut stream where it is
        for _ in stream_client.iter_chunks():
            pass
    stream_client.close()
    wait_client.close()
    assert gw.process.wait(30) == 0
    recs = records(gw)
    for request_id, status in ((cut_stream, 200), (cut_wait, 503)):
        mine = [r for r in recs if r["request_id"] == request_id]
        assert len(mine) == 1, (request_id, mine)
        assert mine[0]["error_code"] == "worker_shutdown" and mine[0]["status"] == status, mine
