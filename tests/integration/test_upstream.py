"""The upstream side, end to end: failures of the upstream, clients that go away, load, and call records."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import MOCK_KEY, Gateway, StartGateway
from .helpers import (
    RawClient,
    ServerProcess,
    assert_openai_error,
    assert_serves,
    call_records,
    chat_request,
    free_port,
    gateway_toml,
    sse_events,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

USER = [{"role": "user", "content": "hello upstream"}]


def _mock(directives: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"!mock {directives}"}]


# -- upstream failures ----------------------------------------------------------------------------------


def test_upstream_refusing_connections_is_502(client: openai.OpenAI) -> None:
    # a 502 and not the client's own timeout (15 s, no retries): the refusal is answered, not waited out
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="dead-model", messages=USER)
    assert info.value.status_code == 502
    assert client.chat.completions.create(model="chat-model", messages=USER).choices


def test_upstream_cut_mid_body_is_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="chat-model", messages=_mock("cut=1"))
    assert info.value.status_code == 502
    assert client.chat.completions.create(model="chat-model", messages=USER).choices


def test_upstream_silent_mid_stream_ends_with_error_event(client: openai.OpenAI, gateway: Gateway) -> None:
    # read_timeout = 2.0: the first event comes at once, the second after 3 s of silence; the effect of
    # the timeout is the error event in place of the second one (the client's own timeout is 15 s)
    t0 = time.monotonic()  # before the request: the gateway's read deadline cannot start earlier
    stream = client.chat.completions.create(
        model="chat-model", messages=_mock("chunks=3 chunk_delay_ms=3000"), stream=True, timeout=15.0,
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    stream.close()
    assert len(received) == 1
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "upstream_stream_error"
    assert time.monotonic() - t0 >= 1.5  # it waited for the silence to last (a lower bound only)
    assert_serves(gateway.port)


def test_upstream_503_retry_after_passed_through(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="chat-model", messages=_mock("status=503 retry_after=2.5"))
    assert info.value.status_code == 503
    assert info.value.response.headers.get("retry-after") == "3"
    assert info.value.response.headers.get("retry-after-ms") == "2500"


def test_upstream_errors_keep_openai_shape(gateway: Gateway) -> None:
    with RawClient(gateway.port) as c:
        for status in (400, 404, 409, 422, 500, 503):
            resp = c.request(chat_request(f"!mock status={status}"))
            assert_openai_error(resp, status)
            assert resp.header("x-request-id")
        # a 401/403 refused the gateway's credential, not the client's: the gateway's 502
        for status, code in ((401, "upstream_authentication"), (403, "upstream_permission")):
            resp = c.request(chat_request(f"!mock status={status}"))
            assert_openai_error(resp, 502, code)
            assert resp.header("x-request-id")
        resp = c.request(chat_request("!mock bogus=1"))  # the upstream's own 400
        assert_openai_error(resp, 400, "invalid_mock_directive")


def test_upstream_restart_is_survived(start_gateway: StartGateway, tmp_path: Path) -> None:
    """Pooled keep-alive connections to an upstream that restarts are stale: they must not leak as errors."""
    port = free_port()
    mock = ServerProcess("mock-restart", ["mock", "--port", str(port), "-q"], tmp_path, port)
    try:
        mock.start().wait_ready("/healthz")
        gw = start_gateway(gateway_toml(port), name="restart")
        for _ in range(3):
            assert_serves(gw.port)  # the pool now holds an idle connection to this mock
        mock.stop()
        with RawClient(gw.port) as c:
            resp = c.request(chat_request("while the upstream is down"))
        assert_openai_error(resp, 502)
        mock = ServerProcess("mock-restart-2", ["mock", "--port", str(port), "-q"], tmp_path, port)
        mock.start().wait_ready("/healthz")
        for _ in range(5):
            assert_serves(gw.port)
    finally:
        mock.stop()


def test_upstream_killed_with_idle_pool_connections(start_gateway: StartGateway, tmp_path: Path) -> None:
    port = free_port()
    mock = ServerProcess("mock-kill", ["mock", "--port", str(port), "-q"], tmp_path, port)
    try:
        mock.start().wait_ready("/healthz")
        gw = start_gateway(gateway_toml(port), name="kill")
        assert_serves(gw.port)
        mock.send_signal(signal.SIGKILL)
        mock.wait(10.0)
        mock.stop()
        mock = ServerProcess("mock-kill-2", ["mock", "--port", str(port), "-q"], tmp_path, port)
        mock.start().wait_ready("/healthz")
        # the first request after the restart must not fail because of the dead pooled connection
        for _ in range(3):
            assert_serves(gw.port)
    finally:
        mock.stop()


# -- clients that go away -----------------------------------------------------------------------------


def test_client_gone_mid_stream(gateway: Gateway) -> None:
    rid = f"gone-stream-{uuid.uuid4().hex[:8]}"
    with RawClient(gateway.port) as c:
        c.send(chat_request("!mock chunks=30 chunk_delay_ms=50", stream=True, headers=[("x-request-id", rid)]))
        head = c.read_head()
        assert head.status == 200
        next(c.iter_chunks())
    # the client closed after the first event; the gateway drops the upstream stream (the request's call
    # record is written when it has done with it) and goes on
    _record_of(gateway, rid)
    for _ in range(3):
        assert_serves(gateway.port)
    with RawClient(gateway.port) as c:
        resp = c.request(chat_request("!mock chunks=5", stream=True))
    assert sse_events(resp.body)[-1] == b"[DONE]"


def test_client_gone_while_waiting_for_upstream(gateway: Gateway) -> None:
    rid = f"gone-waiting-{uuid.uuid4().hex[:8]}"
    with RawClient(gateway.port) as c:
        c.send(chat_request("!mock latency_ms=500", headers=[("x-request-id", rid)]))
    # the upstream answers after the client left: nothing to write to; the request's call record says
    # the gateway has done with it
    _record_of(gateway, rid)
    assert_serves(gateway.port)


def _record_of(gateway: Gateway, rid: str) -> dict[str, Any]:
    found = call_records(gateway.process, lambda rs: any(r["request_id"] == rid for r in rs),
                         what=f"the call record of {rid}")
    return next(r for r in found if r["request_id"] == rid)


# -- size and load --------------------------------------------------------------------------------------


def test_long_stream_reassembles(client: openai.OpenAI) -> None:
    messages = _mock("chunks=400")
    full = client.chat.completions.create(model="chat-model", messages=messages, max_tokens=4000)
    chunks = list(client.chat.completions.create(
        model="chat-model", messages=messages, max_tokens=4000, stream=True,
        stream_options={"include_usage": True},
    ))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 400
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert len(text.split()) == 4000
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4000


def test_body_near_the_limit(client: openai.OpenAI) -> None:
    # max_body_bytes = 65536: a 60 KB prompt goes through untouched
    big = "word " * 12000
    resp = client.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": big}])
    assert resp.usage is not None and resp.usage.prompt_tokens >= 15000
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": big * 2}])
    assert info.value.status_code == 413


def test_concurrent_clients(gateway: Gateway) -> None:
    errors: list[BaseException] = []
    results: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        c = gateway.client()
        try:
            for i in range(4):
                content = f"client {n} request {i}"
                if i % 2:
                    stream = c.chat.completions.create(
                        model="chat-model", messages=[{"role": "user", "content": content}], stream=True,
                    )
                    text = "".join(ch.choices[0].delta.content or "" for ch in stream)
                else:
                    text = c.chat.completions.create(
                        model="chat-model", messages=[{"role": "user", "content": content}],
                    ).choices[0].message.content or ""
                with lock:
                    results.append(text)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 48 and all(results)


def test_many_connections_at_once_with_max_connections(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(gateway_toml(mock_port, server={"max_connections": 4, "header_timeout": 5.0}),
                       name="maxconn")
    held = [RawClient(gw.port) for _ in range(4)]
    try:
        for c in held:  # make sure all four are accepted and counted
            assert c.request(chat_request("held")).status == 200
        with RawClient(gw.port) as extra:
            resp = extra.read_response()
            assert_openai_error(resp, 503)
            assert extra.closed_by_peer()
    finally:
        for c in held:
            c.close()
    wait_for(lambda: _serves(gw.port), 5.0, what="a connection slot to free up")


def _serves(port: int) -> bool:
    try:
        assert_serves(port)
    except (OSError, AssertionError):
        return False
    return True


# -- call records ----------------------------------------------------------------------------------------


def _record(gw: Gateway, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for line in gw.process.log_path.read_text(errors="replace").splitlines():
            if request_id in line and line.startswith("{"):
                rec: dict[str, Any] = json.loads(line)
                if rec.get("request_id") == request_id:
                    return rec
        return None

    found: dict[str, Any] = wait_for(find, timeout, what=f"the call record of {request_id}")
    return found


def test_call_records(client: openai.OpenAI, gateway: Gateway) -> None:
    rid = f"rec-{uuid.uuid4().hex}"
    secret = f"sk-client-{uuid.uuid4().hex}"
    keyed = gateway.client(api_key=secret)
    try:
        keyed.chat.completions.create(model="chat-model", messages=USER, extra_headers={"x-request-id": rid})
    finally:
        keyed.close()
    rec = _record(gateway, rid)
    assert rec["method"] == "POST" and rec["path"] == "/v1/chat/completions"
    assert rec["status"] == 200
    assert rec["model"] == "chat-model"
    assert rec["provider"] == "upstream"
    assert rec["upstream_model"] == "mock-1"
    assert rec["upstream_status"] == 200
    assert rec["total_tokens"] == rec["prompt_tokens"] + rec["completion_tokens"] > 0
    assert rec["duration_ms"] >= rec["overhead_ms"] >= 0

    srid = f"rec-{uuid.uuid4().hex}"
    list(client.chat.completions.create(model="chat-model", messages=USER, stream=True,
                                        extra_headers={"x-request-id": srid}))
    srec = _record(gateway, srid)
    assert srec["stream"] is True
    assert srec["completion_tokens"] == rec["completion_tokens"]  # usage learned although stripped

    crid = f"rec-{uuid.uuid4().hex}"
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="chat-model", messages=_mock("cut=2"), stream=True,
                                                extra_headers={"x-request-id": crid}):
            pass
    crec = _record(gateway, crid)
    assert crec["error_code"] == "upstream_stream_error"

    logs = gateway.process.log_path.read_text(errors="replace")
    assert secret not in logs  # client keys are never logged
    assert MOCK_KEY not in logs  # nor the upstream credential
