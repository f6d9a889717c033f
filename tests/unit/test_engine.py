"""The engine's phase chain, driven in process with the mock transport and a recording responder."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from recorder import Recorder  # tests/ is on sys.path (see tests/recorder.py)

from gateway import errors
from gateway._core.http import Request
from gateway.config import load_config_text
from gateway.context import Context
from gateway.engine import Engine
from gateway.observe.records import RecordSink
from gateway.phases import Phase, Reply

CONFIG = """
[log]
call_records = false
[providers.mock]
type = "mock"
[providers.mock.mock]
stream_chunks = 3
[models.chat]
provider = "mock"
upstream_model = "mock-1"
[models.mock-1]
provider = "mock"
[models.embed]
provider = "mock"
upstream_model = "mock-embed-1"
endpoints = ["embeddings"]
"""


def run(
    engine: Engine, method: str, path: str, body: Any = None, headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> Recorder:
    raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    hdrs = [(b"host", b"t"), (b"content-type", content_type), *(headers or [])]
    req = Request(method, path, "", 11, hdrs, raw, True)
    rec = Recorder()

    async def go() -> None:
        await engine.startup()
        await engine.handle(req, rec)
        await engine.shutdown()

    asyncio.run(go())
    return rec


def make(phases: list[Phase] | None = None) -> Engine:
    sink = RecordSink(io.BytesIO(), enabled=True)
    return Engine(load_config_text(CONFIG), phases=phases or [], records=sink)


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def test_chat_rewrites_model_and_reports_usage() -> None:
    rec = run(make(), "POST", "/v1/chat/completions", CHAT)
    assert rec.status == 200
    body = rec.json()
    assert body["model"] == "mock-1"  # the upstream saw (and answered for) the upstream model id
    assert body["usage"]["total_tokens"] > 0
    assert rec.header("x-request-id")
    assert float(rec.header("x-gateway-overhead-ms") or "nan") >= 0


def test_request_id_is_echoed() -> None:
    rec = run(make(), "POST", "/v1/chat/completions", CHAT, [(b"x-request-id", b"abc-123")])
    assert rec.header("x-request-id") == "abc-123"


def test_stream_without_include_usage_strips_the_usage_chunk() -> None:
    rec = run(make(), "POST", "/v1/chat/completions", {**CHAT, "stream": True})
    assert rec.status == 200 and rec.finished
    events = rec.events()
    assert events[-1] == b"data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert all(p["choices"] for p in payloads)  # no usage-only chunk reached the client
    assert all(p.get("usage") is None for p in payloads)


def test_stream_with_include_usage_keeps_it() -> None:
    rec = run(
        make(),
        "POST",
        "/v1/chat/completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    )
    payloads = [json.loads(e[6:]) for e in rec.events()[:-1]]
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_json", None),
        (b"", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_json", None),
        ({"messages": []}, 400, "missing_required_parameter", "model"),
        ({"model": "chat"}, 400, "missing_required_parameter", "messages"),
        ({"model": 5, "messages": []}, 400, "invalid_type", "model"),
        ({"model": "chat", "messages": [], "stream": "yes"}, 400, "invalid_type", "stream"),
        ({"model": "nope", "messages": []}, 404, "model_not_found", "model"),
        ({"model": "embed", "messages": []}, 400, "unsupported_endpoint", "model"),
    ],
)
def test_bad_requests(body: Any, status: int, code: str, param: str | None) -> None:
    rec = run(make(), "POST", "/v1/chat/completions", body)
    assert rec.status == status
    err = rec.json()["error"]
    assert err["code"] == code and err["param"] == param and err["message"]
    assert set(err) == {"message", "type", "param", "code"}


def test_unsupported_media_type() -> None:
    req_headers = [(b"host", b"t"), (b"content-type", b"text/plain")]
    engine = make()
    rec = Recorder()

    async def go() -> None:
        await engine.startup()
        await engine.handle(Request("POST", "/v1/chat/completions", "", 11, req_headers, b"{}", True), rec)

    asyncio.run(go())
    assert rec.status == 415


def test_unknown_path_and_method() -> None:
    assert run(make(), "GET", "/v2/nothing").status == 404
    rec = run(make(), "GET", "/v1/chat/completions")
    assert rec.status == 405 and rec.header("allow") == "POST"
    assert run(make(), "POST", "/v1/models").status == 405


def test_models() -> None:
    rec = run(make(), "GET", "/v1/models")
    assert {m["id"] for m in rec.json()["data"]} == {"chat", "mock-1", "embed"}
    assert run(make(), "GET", "/v1/models/embed").json()["id"] == "embed"
    assert run(make(), "GET", "/v1/models/missing").status == 404


def test_embeddings() -> None:
    rec = run(
        make(), "POST", "/v1/embeddings", {"model": "embed", "input": ["a", "b"], "encoding_format": "float"}
    )
    assert rec.status == 200 and len(rec.json()["data"]) == 2


class Teapot(Phase):
    """A cache-like phase that answers locally."""

    name = "cache"

    def __init__(self) -> None:
        self.settled: list[int] = []

    def on_request(self, ctx: Context) -> Reply | None:
        if ctx.fields.model == "chat":
            return Reply(200, b'{"cached": true}', [("content-type", "application/json"), ("x-cache", "hit")])
        return None

    def on_settle(self, ctx: Context) -> None:
        self.settled.append(ctx.status)


class DenyAll(Phase):
    name = "access"

    def on_request(self, ctx: Context) -> Reply | None:
        raise errors.Unauthorized("no key", code="missing_api_key")


class AsyncAdmit(Phase):
    name = "admit"
    is_async = True

    async def on_request(self, ctx: Context) -> Reply | None:  # type: ignore[override]
        await asyncio.sleep(0)
        raise errors.RateLimited("slow down", headers=[("retry-after", "1")])


def test_a_phase_can_short_circuit_with_a_reply() -> None:
    phase = Teapot()
    engine = make([phase])
    rec = run(engine, "POST", "/v1/chat/completions", CHAT)
    assert rec.status == 200 and rec.json() == {"cached": True} and rec.header("x-cache") == "hit"
    assert phase.settled == [200]
    # a request the phase does not answer goes on to the upstream
    rec = run(engine, "POST", "/v1/chat/completions", {**CHAT, "model": "mock-1"})
    assert rec.json()["object"] == "chat.completion"


def test_a_phase_can_short_circuit_with_an_error() -> None:
    rec = run(make([DenyAll()]), "POST", "/v1/chat/completions", CHAT)
    assert rec.status == 401 and rec.json()["error"]["code"] == "missing_api_key"


class SharedRefusal(Phase):
    """Returns one error instance to every request (as the limits phase does with a repeated 429)."""

    name = "admit"
    is_async = True  # returned errors are answered even from a phase that may return awaitables

    def __init__(self) -> None:
        self.error = errors.RateLimited("slow down", headers=[("retry-after", "7")])

    def on_request(self, ctx: Context) -> errors.GatewayError:
        return self.error


def test_a_phase_can_return_an_error_to_answer_with() -> None:
    phase = SharedRefusal()
    engine = make([phase])
    for _ in range(3):
        rec = run(engine, "POST", "/v1/chat/completions", CHAT)
        assert rec.status == 429 and rec.header("retry-after") == "7"
        assert rec.json()["error"]["code"] == "rate_limit_exceeded"
    # nothing was raised, and the shared instance was not changed by answering with it
    assert phase.error.__traceback__ is None and phase.error.headers == [("retry-after", "7")]


def test_an_unknown_model_is_answered_with_its_404_built_once() -> None:
    engine = make()
    first = run(engine, "POST", "/v1/chat/completions", {**CHAT, "model": "nope"})
    again = run(engine, "POST", "/v1/chat/completions", {**CHAT, "model": "nope"})
    assert first.status == again.status == 404 and first.body == again.body
    assert first.json()["error"]["code"] == "model_not_found" and "`nope`" in first.json()["error"]["message"]
    assert engine.runtime is not None and list(engine.runtime.unknown_models) == ["nope"]


def test_the_example_of_a_returned_refusal_runs() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "phase_refusal.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1] and lines[0].startswith("429 60 ")
    assert json.loads(lines[0].split(" ", 2)[2])["error"]["code"] == "rate_limit_exceeded"


def test_an_async_phase_is_awaited() -> None:
    rec = run(make([AsyncAdmit()]), "POST", "/v1/chat/completions", CHAT)
    assert rec.status == 429 and rec.header("retry-after") == "1"


def test_phase_order_is_fixed() -> None:
    engine = make([Teapot(), DenyAll()])  # given cache first, access still runs first
    rec = run(engine, "POST", "/v1/chat/completions", CHAT)
    assert rec.status == 401


def test_call_record() -> None:
    engine = make()
    rec = Recorder()
    req = Request(
        "POST",
        "/v1/chat/completions",
        "",
        11,
        [(b"host", b"t"), (b"authorization", b"Bearer sk-secret")],
        json.dumps(CHAT).encode(),
        True,
    )

    async def go() -> list[dict[str, Any]]:
        await engine.startup()
        await engine.handle(req, rec)
        # written by the background flush already, or still queued: whichever, depending on timing
        out = engine.records._out
        assert isinstance(out, io.BytesIO)
        return [json.loads(line) for line in out.getvalue().splitlines()] + engine.records.snapshot()

    records = asyncio.run(go())
    assert len(records) == 1
    r = records[0]
    assert r["status"] == 200 and r["model"] == "chat" and r["upstream_model"] == "mock-1"
    assert r["total_tokens"] > 0 and r["provider"] == "mock"
    assert "sk-secret" not in json.dumps(records)


class _Bug(Phase):
    """A phase with a bug: what an unexpected exception on the request path is answered with."""

    name = "prepare"

    def __init__(self, is_async: bool) -> None:
        self.is_async = is_async

    def on_request(self, ctx: Any) -> Any:
        if self.is_async:
            return self._later()
        raise RuntimeError("a bug in a phase")

    async def _later(self) -> None:
        raise RuntimeError("a bug in a phase, awaited")


@pytest.mark.parametrize("is_async", [False, True], ids=["callback path", "coroutine path"])
def test_an_unexpected_exception_is_a_500_in_the_clients_dialect(is_async: bool,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Logged with its traceback and answered in the client's dialect with the request id (the front
    end's bare 500 was OpenAI's shape on every path), on a connection that is not reused."""
    rec = run(make([_Bug(is_async)]), "POST", "/v1/chat/completions", CHAT)
    assert rec.status == 500 and rec.error()["code"] == "internal_error"
    assert rec.error()["message"] == "internal error" and rec.header("x-request-id")
    assert not rec.keep_alive
    rid = rec.header("x-request-id")
    assert f"unhandled error in request {rid}" in caplog.text and "a bug in a phase" in caplog.text
    rec = run(make([_Bug(is_async)]), "POST", "/v1/messages",
              {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
    assert rec.status == 500 and rec.json()["type"] == "error"
    assert rec.json()["error"]["type"] == "api_error" and rec.header("request-id")


def test_relayed_retry_hints_are_whole_seconds_or_left_out() -> None:
    """An upstream's retry-after reaches the client as whole seconds (the SDKs' retry logic reads them):
    an HTTP date converted, a fraction rounded up, an absurd figure cut to a day, garbage left out."""
    import email.utils
    import time as _time

    from gateway.engine import _sane_retry_hints

    soon = email.utils.formatdate(_time.time() + 30, usegmt=True)
    cases = {
        "7": "7", "1.2": "2", "Wed, 21 Oct 2015 07:28:00 GMT": "0", "99999999999999999999": "86400",
        "-5": None, "soon": None, "nan": None, "inf": None,
    }
    for given, want in cases.items():
        headers = [("x-request-id", "r"), ("retry-after", given), ("retry-after-ms", given)]
        _sane_retry_hints(headers)
        got = dict(headers)
        assert got.get("retry-after") == want, (given, headers)
        assert headers[0] == ("x-request-id", "r")
    headers = [("retry-after", soon), ("retry-after-ms", "1500.5")]
    _sane_retry_hints(headers)
    assert 29 <= int(dict(headers)["retry-after"]) <= 31 and dict(headers)["retry-after-ms"] == "1501"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_a_body_that_says_it_is_not_json_is_415_on_every_dialect(path: str) -> None:
    body = {"model": "chat", "max_tokens": 8, "input": "hi", "messages": [{"role": "user", "content": "hi"}]}
    rec = run(make(), "POST", path, body, content_type=b"text/plain")
    assert rec.status == 415, rec.body
