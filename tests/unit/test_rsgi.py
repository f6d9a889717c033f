"""The granian front end (``gateway.server.rsgi``).

Most tests drive ``RSGIApp`` with a fake RSGI scope and protocol that behave like granian's (checked
against granian 2.x: header names lower case, ``http_version`` "1"/"1.1"/"2", ``send_bytes`` raising
``ProtocolClosed`` once the client is gone, the body iterator ending with an empty chunk). The last tests
start the real thing: ``python -m gateway serve --server granian``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from granian.rsgi import ProtocolClosed  # type: ignore[attr-defined]

from gateway._core.http import Request
from gateway.app import ClientGone, Headers
from gateway.config import DEFAULT_CONFIG_TOML, Config, default_config
from gateway.config.loader import resolve_secret
from gateway.config.snapshot import decode_snapshot, encode_snapshot, install, read_snapshot, snapshot_of
from gateway.server import rsgi
from gateway.server.rsgi import ENV_CONFIG, ENV_CONFIG_JSON, RSGIApp, RSGIResponder

ROOT = Path(__file__).resolve().parents[2]


# -- fakes -----------------------------------------------------------------------------------------------


class FakeHeaders:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    def keys(self) -> list[str]:
        return [k for k, _ in self._pairs]

    def get(self, key: str, default: Any = None) -> Any:
        return next((v for k, v in self._pairs if k == key), default)


def scope(method: str = "GET", path: str = "/healthz", *, query: str = "", version: str = "1.1",
          headers: list[tuple[str, str]] | None = None, authority: str | None = None) -> Any:
    return SimpleNamespace(
        proto="http", rsgi_version="1.5", http_version=version, server="127.0.0.1:8000",
        client="127.0.0.1:50000", scheme="http", method=method, path=path, query_string=query,
        authority=authority, headers=FakeHeaders(headers or []),
    )


class FakeTransport:
    def __init__(self, proto: FakeProtocol) -> None:
        self.proto = proto
        self.chunks: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        # granian's send only queues the chunk; it fails once hyper has dropped the body (client gone)
        if self.proto.gone:
            raise ProtocolClosed("RSGI transport is closed")
        self.chunks.append(bytes(data))
        if self.proto.drop_after is not None and len(self.chunks) >= self.proto.drop_after:
            self.proto.drop()

    async def send_str(self, data: str) -> None:
        await self.send_bytes(data.encode())


class BodyIterator:
    """granian's body iterator: the chunks, then one empty chunk, then the end."""

    def __init__(self, proto: FakeProtocol) -> None:
        self.proto = proto
        self.pending = [*proto.chunks, b""]

    def __aiter__(self) -> BodyIterator:
        return self

    async def __anext__(self) -> bytes:
        if not self.pending:
            raise StopAsyncIteration
        chunk = self.pending.pop(0)
        self.proto.bytes_read += len(chunk)
        return chunk


class FakeProtocol:
    def __init__(self, body: bytes = b"", *, chunks: list[bytes] | None = None,
                 drop_after: int | None = None) -> None:
        self.body = body
        self.chunks = chunks if chunks is not None else ([body] if body else [])
        self.drop_after = drop_after
        self.bytes_read = 0
        self.body_calls = 0
        self.status: int | None = None
        self.headers: Headers = []
        self.response: bytes | None = None
        self.transport: FakeTransport | None = None
        self.gone = False
        self.closed_with: int | None = None
        self._disconnect: asyncio.Event | None = None
        self.disconnect_waits = 0

    # body
    async def __call__(self) -> bytes:
        self.body_calls += 1
        self.bytes_read += len(self.body)
        return self.body

    def __aiter__(self) -> BodyIterator:
        return BodyIterator(self)

    async def client_disconnect(self) -> None:
        self.disconnect_waits += 1
        if self._disconnect is None:
            self._disconnect = asyncio.Event()
        if not self.gone:
            await self._disconnect.wait()

    def drop(self) -> None:
        """The client goes away."""
        self.gone = True
        if self._disconnect is not None:
            self._disconnect.set()

    # responses
    def _start(self, status: int, headers: Headers) -> None:
        assert self.status is None, "a second response on one request"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers)
        self.status = status
        self.headers = list(headers)

    def response_bytes(self, status: int, headers: Headers, body: bytes) -> None:
        self._start(status, headers)
        self.response = bytes(body)

    def response_stream(self, status: int, headers: Headers) -> FakeTransport:
        self._start(status, headers)
        self.transport = FakeTransport(self)
        return self.transport

    def close(self, status: int | None = None) -> None:  # websocket protocol
        self.closed_with = status

    # what the client received
    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        assert self.response is not None
        return json.loads(self.response)

    def stream_bytes(self) -> bytes:
        assert self.transport is not None
        return b"".join(self.transport.chunks)


def chat(content: str = "hello there", **extra: Any) -> bytes:
    messages = [{"role": "user", "content": content}]
    return json.dumps({"model": "mock-1", "messages": messages, **extra}).encode()


def post_headers(body: bytes, *, length: bool = True) -> list[tuple[str, str]]:
    h = [("host", "gw"), ("content-type", "application/json")]
    if length:
        h.append(("content-length", str(len(body))))
    return h


def quiet_config(**server: Any) -> Config:
    c = default_config()
    c = msgspec.structs.replace(c, log=msgspec.structs.replace(c.log, call_records=False))
    if server:
        c = msgspec.structs.replace(c, server=msgspec.structs.replace(c.server, **server))
    return c


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        lp.run_until_complete(lp.shutdown_asyncgens())
        lp.close()


class Harness:
    """An RSGIApp started as granian starts it: ``__rsgi_init__`` on a loop that is not running yet."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app: RSGIApp) -> None:
        self.loop = loop
        self.app = app
        app.__rsgi_init__(loop)

    def call(self, sc: Any, proto: FakeProtocol) -> FakeProtocol:
        self.loop.run_until_complete(asyncio.wait_for(self.app.__rsgi__(sc, proto), 10))
        return proto

    def post(self, path: str, body: bytes, **kw: Any) -> FakeProtocol:
        return self.call(scope("POST", path, headers=post_headers(body)), FakeProtocol(body, **kw))

    def close(self) -> None:
        self.app.__rsgi_del__(self.loop)


@contextlib.contextmanager
def started(loop: asyncio.AbstractEventLoop, config: Config | None = None, **kw: Any) -> Iterator[Harness]:
    h = Harness(loop, RSGIApp(config or quiet_config(), signals=False, **kw))
    try:
        yield h
    finally:
        h.close()


# -- requests through the engine ---------------------------------------------------------------------------


def test_chat_non_stream(loop: asyncio.AbstractEventLoop) -> None:
    with started(loop) as h:
        proto = h.post("/v1/chat/completions", chat())
    assert proto.status == 200, proto.response
    assert proto.header("content-type") == "application/json"
    assert proto.header("x-request-id")
    assert proto.header("x-gateway-overhead-ms") is not None
    obj = proto.json()
    assert obj["object"] == "chat.completion"
    assert obj["choices"][0]["message"]["role"] == "assistant"
    assert obj["usage"]["completion_tokens"] == 12
    assert proto.body_calls == 1  # Content-Length given: read in one call


def test_chat_stream(loop: asyncio.AbstractEventLoop) -> None:
    with started(loop) as h:
        proto = h.post("/v1/chat/completions", chat(stream=True))
    assert proto.status == 200
    assert proto.response is None and proto.transport is not None
    assert proto.header("content-type") == "text/event-stream"
    data = proto.stream_bytes()
    events = [e for e in data.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[len(b"data: "):]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text.split()) == 12
    assert not any(c.get("usage") for c in chunks)  # the client did not ask for the usage chunk


def test_chunked_body_without_content_length(loop: asyncio.AbstractEventLoop) -> None:
    body = chat("split into pieces")
    pieces = [body[i:i + 7] for i in range(0, len(body), 7)]
    headers = [*post_headers(body, length=False), ("transfer-encoding", "chunked")]
    with started(loop) as h:
        proto = h.call(scope("POST", "/v1/chat/completions", headers=headers), FakeProtocol(chunks=pieces))
    assert proto.status == 200, proto.response
    assert proto.body_calls == 0 and proto.bytes_read == len(body)


def test_get_reads_no_body_and_readyz(loop: asyncio.AbstractEventLoop) -> None:
    with started(loop) as h:
        proto = h.call(scope("GET", "/readyz", headers=[("host", "gw")]), FakeProtocol())
        models = h.call(scope("GET", "/v1/models", version="2", authority="gw"), FakeProtocol())
    assert proto.status == 200 and proto.json() == {"status": "ready"}
    assert proto.body_calls == 0 and proto.bytes_read == 0
    assert models.status == 200
    assert {m["id"] for m in models.json()["data"]} >= {"mock-1", "mock-embed-1"}


def test_request_conversion(loop: asyncio.AbstractEventLoop) -> None:
    with started(loop) as h:
        sc = scope("GET", "/v1/models/mock-1", query="a=1&b=%20", version="2", authority="gw.example:443",
                   headers=[("accept", "*/*"), ("x-caf", "café")])
        req = loop.run_until_complete(h.app._request(sc, FakeProtocol()))
        assert isinstance(req, Request)
        assert (req.method, req.path, req.query, req.version, req.keep_alive) == (
            "GET", "/v1/models/mock-1", "a=1&b=%20", 11, True)
        assert req.header(b"host") == b"gw.example:443"  # HTTP/2 has :authority, no Host
        assert req.header(b"x-caf") == "café".encode("latin-1")
        assert all(isinstance(k, bytes) and k == k.lower() for k, _ in req.headers)
        req10 = loop.run_until_complete(h.app._request(scope(version="1"), FakeProtocol()))
        assert req10 is not None and req10.version == 10


def test_oversize_by_content_length_is_413_without_reading(loop: asyncio.AbstractEventLoop) -> None:
    body = chat("x" * 5000)
    with started(loop, quiet_config(max_body_bytes=1000)) as h:
        proto = h.post("/v1/chat/completions", body)
    assert proto.status == 413
    assert proto.header("content-type") == "application/json"
    err = proto.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "payload_too_large"
    assert "1000" in err["message"]
    assert proto.body_calls == 0 and proto.bytes_read == 0
    assert (proto.header("x-request-id") or "").startswith("refused-")
    with started(loop, quiet_config(max_body_bytes=1000)) as h:  # on Anthropic's endpoint, in its shape
        proto = h.post("/v1/messages", body)
    assert proto.status == 413 and proto.json()["type"] == "error"
    assert proto.json()["error"]["type"] == "request_too_large"
    assert proto.json()["request_id"] == proto.header("request-id") == proto.header("x-request-id")


def test_oversize_chunked_is_413_after_reading_just_past_the_limit(loop: asyncio.AbstractEventLoop) -> None:
    pieces = [b"a" * 400] * 20
    headers = [*post_headers(b"", length=False), ("transfer-encoding", "chunked")]
    with started(loop, quiet_config(max_body_bytes=1000)) as h:
        proto = h.call(scope("POST", "/v1/chat/completions", headers=headers), FakeProtocol(chunks=pieces))
        h2 = h.call(scope("POST", "/v1/chat/completions", version="2", headers=[("content-type", "a/json")]),
                    FakeProtocol(chunks=pieces))
    for p in (proto, h2):
        assert p.status == 413 and p.json()["error"]["code"] == "payload_too_large"
        assert p.bytes_read == 1200  # stopped at the first chunk past the limit


def test_body_longer_than_declared_is_413(loop: asyncio.AbstractEventLoop) -> None:
    # granian never does this (hyper enforces Content-Length), but the actual length is checked too
    body = b"x" * 2000
    with started(loop, quiet_config(max_body_bytes=1000)) as h:
        proto = h.call(scope("POST", "/v1/chat/completions", headers=[("content-length", "10")]),
                       FakeProtocol(body))
    assert proto.status == 413


def test_client_disconnect_during_stream(loop: asyncio.AbstractEventLoop) -> None:
    body = chat("!mock chunks=40 chunk_delay_ms=5 a long answer", stream=True)
    with started(loop) as h:
        proto = h.post("/v1/chat/completions", body, drop_after=3)
        assert not h.app.inflight
        # the worker still serves after a dropped stream
        after = h.post("/v1/chat/completions", chat())
    assert proto.status == 200 and proto.gone
    assert proto.transport is not None and len(proto.transport.chunks) == 3
    assert b"[DONE]" not in proto.stream_bytes()
    assert after.status == 200


def test_responder_disconnected_and_write_after_drop() -> None:
    async def run() -> None:
        proto = FakeProtocol()
        r = RSGIResponder(proto)
        assert r.disconnected is False  # starts watching client_disconnect()
        r.start_stream(200, [("content-type", "text/plain")])
        await r.write(b"one")
        await r.write(b"")  # nothing to send
        proto.drop()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert r.disconnected is True
        with pytest.raises(ClientGone):
            await r.write(b"two")
        r.close_watch()
        assert proto.transport is not None and proto.transport.chunks == [b"one"]
        assert proto.disconnect_waits == 1

    asyncio.run(run())


def test_responder_contract() -> None:
    async def run() -> None:
        proto = FakeProtocol()
        r = RSGIResponder(proto)
        r.send(201, [("x-a", "1")], b"done")
        assert (proto.status, proto.response, r.started, r.finished) == (201, b"done", True, True)
        with pytest.raises(RuntimeError):
            r.start_stream(200, [])
        r.close_watch()  # never watched: nothing to cancel

        proto = FakeProtocol()
        r = RSGIResponder(proto)
        with pytest.raises(RuntimeError):
            await r.write(b"early")
        r.start_stream(200, [])
        await r.write(b"a")
        r.abort()  # granian cannot cut: the body just ends here
        assert r.finished and not r.keep_alive
        with pytest.raises(ClientGone):
            await r.write(b"b")
        assert proto.transport is not None and proto.transport.chunks == [b"a"]

        # an unwatched disconnect is seen by the next write
        proto = FakeProtocol()
        r = RSGIResponder(proto)
        r.start_stream(200, [])
        proto.drop()
        with pytest.raises(ClientGone):
            await r.write(b"x")
        assert r.disconnected

    asyncio.run(run())


# -- failures inside the app --------------------------------------------------------------------------------


class ScriptedEngine:
    """A stand-in Engine whose handle does what a test says."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.draining = False
        self.started = self.stopped = False

    async def startup(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.stopped = True

    async def handle(self, request: Request, responder: Any) -> None:
        if self.script == "raise-before":
            raise ValueError("boom")
        if self.script == "nothing":
            return
        responder.start_stream(200, [("content-type", "text/plain")])
        await responder.write(b"partial")
        if self.script == "raise-after":
            raise ValueError("boom")
        if self.script == "hang":
            await asyncio.sleep(30)


@pytest.mark.parametrize("script", ["raise-before", "nothing", "raise-after", "unfinished"])
def test_app_failures_are_answered(loop: asyncio.AbstractEventLoop, script: str,
                                   caplog: pytest.LogCaptureFixture) -> None:
    engines: list[ScriptedEngine] = []

    def factory(config: Config) -> ScriptedEngine:
        engines.append(ScriptedEngine(script))
        return engines[-1]

    with started(loop, engine_factory=factory) as h:
        assert engines[0].started
        proto = h.call(scope(), FakeProtocol())
    assert engines[0].stopped
    if script in ("raise-before", "nothing"):
        assert proto.status == 500
        assert proto.json()["error"]["type"] == "server_error"
    else:
        assert proto.status == 200 and proto.stream_bytes() == b"partial"
    if script.startswith("raise"):
        assert "unhandled error in request handler" in caplog.text


def test_drain_deadline_cuts_running_requests(loop: asyncio.AbstractEventLoop) -> None:
    engines: list[ScriptedEngine] = []

    def factory(config: Config) -> ScriptedEngine:
        engines.append(ScriptedEngine("hang"))
        return engines[-1]

    with started(loop, quiet_config(drain_timeout=0.05), engine_factory=factory) as h:
        proto = FakeProtocol()

        async def run() -> None:
            task = asyncio.ensure_future(h.app.__rsgi__(scope(), proto))
            deadline = time.monotonic() + 30.0
            while len(h.app.inflight) != 1:  # the request is running
                assert time.monotonic() < deadline, "the request never started"
                await asyncio.sleep(0.005)
            h.app.begin_drain()
            h.app.begin_drain()  # a second signal changes nothing
            # the engine hangs for good: only the drain deadline (0.05 s) can end the request, so a
            # generous 30 s bound fails only when that mechanism is missing
            await asyncio.wait_for(task, 30.0)

        loop.run_until_complete(run())
        assert engines[0].draining and h.app.draining
        assert not h.app.inflight
    assert proto.status == 200 and proto.stream_bytes() == b"partial"


def test_draining_engine_reports_not_ready(loop: asyncio.AbstractEventLoop) -> None:
    with started(loop, quiet_config(drain_timeout=5.0)) as h:
        h.app.begin_drain()
        proto = h.call(scope("GET", "/readyz"), FakeProtocol())
        health = h.call(scope("GET", "/healthz"), FakeProtocol())
    assert proto.status == 503 and proto.json() == {"status": "draining"}
    assert health.status == 200


def test_websocket_scope_is_refused(loop: asyncio.AbstractEventLoop) -> None:
    with started(loop) as h:
        sc = scope()
        sc.proto = "ws"
        proto = h.call(sc, FakeProtocol())
    assert proto.closed_with == 404 and proto.status is None


# -- config: environment, reload, granian options ----------------------------------------------------------


def test_config_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    monkeypatch.delenv(ENV_CONFIG_JSON, raising=False)
    config, path = rsgi.config_from_env()
    assert config == default_config() and path is None

    f = tmp_path / "gw.toml"
    f.write_text(DEFAULT_CONFIG_TOML.replace("max_body_bytes = 4194304", "max_body_bytes = 1234"))
    monkeypatch.setenv(ENV_CONFIG, str(f))
    config, path = rsgi.config_from_env()
    assert config.server.max_body_bytes == 1234 and path == str(f)

    # the main process's validated snapshot wins at worker start; the file stays the reload source
    snap = quiet_config(max_body_bytes=777)
    monkeypatch.setenv(ENV_CONFIG_JSON, msgspec.json.encode(snap).decode())
    config, path = rsgi.config_from_env()
    assert config == snap and path == str(f)


def test_reload_swaps_config_and_rejects_a_bad_file(loop: asyncio.AbstractEventLoop, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "gw.toml"
    base = DEFAULT_CONFIG_TOML.replace("call_records = true", "call_records = false")
    f.write_text(base)
    app = RSGIApp(None, signals=False)
    os.environ[ENV_CONFIG] = str(f)
    os.environ.pop(ENV_CONFIG_JSON, None)
    try:
        h = Harness(loop, app)
    finally:
        os.environ.pop(ENV_CONFIG, None)
    try:
        assert app.config_path == str(f)

        def model_ids() -> set[str]:
            return {m["id"] for m in h.call(scope("GET", "/v1/models"), FakeProtocol()).json()["data"]}

        assert "extra-1" not in model_ids()
        f.write_text(base.replace("max_body_bytes = 4194304", "max_body_bytes = 100")
                     + '\n[models.extra-1]\nprovider = "mock"\n')
        loop.run_until_complete(asyncio.sleep(0))
        loop.call_soon(app.reload)  # as the loop's SIGHUP handler runs it
        loop.run_until_complete(asyncio.sleep(0))  # one turn of the loop runs it (reload is synchronous)
        assert "extra-1" in model_ids()
        assert app.max_body_bytes == 100
        f.write_text(base + '\n[models.bad]\nprovider = "nope"\n')
        loop.call_soon(app.reload)
        loop.run_until_complete(asyncio.sleep(0))
        assert "config reload rejected" in caplog.text
        assert "extra-1" in model_ids() and app.max_body_bytes == 100
    finally:
        h.close()


def test_reload_without_a_file_is_a_no_op(loop: asyncio.AbstractEventLoop,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="gateway.rsgi")
    with started(loop) as h:
        h.app.reload()
    assert "embedded default" in caplog.text


def test_signal_hooks_are_installed_and_restored(loop: asyncio.AbstractEventLoop,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="gateway.rsgi")
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    app = RSGIApp(quiet_config(drain_timeout=5.0), signals=True)
    rsgi._hup_pending = True  # a SIGHUP reached this worker before it could handle one
    app.__rsgi_init__(loop)
    try:
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        assert not rsgi._hup_pending
        loop.run_until_complete(asyncio.sleep(0))
        assert "no config file to reload" in caplog.text  # the noted SIGHUP, handled once running
    finally:
        app.__rsgi_del__(loop)
    assert {s: signal.getsignal(s) for s in before} == before


def test_main_process_sighup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "gw.toml"
    f.write_text(DEFAULT_CONFIG_TOML)
    monkeypatch.setenv(ENV_CONFIG_JSON, "old")
    server = SimpleNamespace(wrks=[])  # no workers to signal
    snapshot_file = tmp_path / "config.snapshot"
    hooks = rsgi._MainHooks(server, default_config(), str(f), "banner", str(snapshot_file))

    f.write_text(DEFAULT_CONFIG_TOML + '\n[models.bad]\nprovider = "nope"\n')
    hooks.on_hup(signal.SIGHUP, None)
    assert "config reload rejected" in caplog.text and os.environ[ENV_CONFIG_JSON] == "old"
    assert not snapshot_file.exists()

    f.write_text(DEFAULT_CONFIG_TOML.replace("max_body_bytes = 4194304", "max_body_bytes = 4321"))
    hooks.on_hup(signal.SIGHUP, None)
    new = msgspec.json.decode(os.environ[ENV_CONFIG_JSON], type=Config)
    assert new.server.max_body_bytes == 4321 and hooks.config == new
    # what the workers apply: the snapshot the main validated, readable by this user only
    assert decode_snapshot(snapshot_file.read_bytes()).config == new
    assert snapshot_file.stat().st_mode & 0o777 == 0o600

    hooks.pid = -1  # as in a freshly forked worker: only note the signal
    hooks.on_hup(signal.SIGHUP, None)
    assert rsgi._take_pending_hup() and not rsgi._take_pending_hup()


def test_workers_apply_the_main_snapshot_not_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A granian worker starts from, and reloads, the snapshot the main process validated: a config file or
    a key file rewritten after that validation never reaches one worker and not another."""
    key = tmp_path / "upstream.key"
    key.write_text("sk-validated")
    f = tmp_path / "gw.toml"
    f.write_text(DEFAULT_CONFIG_TOML.replace("max_body_bytes = 4194304", "max_body_bytes = 4321")
                 + f'\n[providers.up]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                 f'api_key = "file:{key}"\n')
    snapshot_file = tmp_path / "config.snapshot"
    rsgi.write_snapshot_file(str(snapshot_file), encode_snapshot(read_snapshot(str(f))))
    # rewritten on disk after the main validated it
    f.write_text(DEFAULT_CONFIG_TOML.replace("max_body_bytes = 4194304", "max_body_bytes = 999"))
    key.write_text("sk-rewritten")
    monkeypatch.setenv(ENV_CONFIG, str(f))
    monkeypatch.setenv(rsgi.ENV_CONFIG_SNAPSHOT_FILE, str(snapshot_file))
    try:
        config, path = rsgi.config_from_env()
        assert config.server.max_body_bytes == 4321 and path == str(f)
        assert resolve_secret(f"file:{key}") == "sk-validated"
    finally:
        install(snapshot_of(default_config()))


def test_granian_options() -> None:
    from granian.constants import HTTPModes, Interfaces, Loops

    config = quiet_config(header_timeout=5.0, keepalive_timeout=60.0, max_header_bytes=4096,
                          drain_timeout=7.5, max_connections=321)
    opts = rsgi.granian_options(config, 3, "0.0.0.0", 9000)
    assert opts["target"] == "gateway.server.rsgi:app"
    assert (opts["interface"], opts["loop"], opts["http"]) == (Interfaces.RSGI, Loops.uvloop, HTTPModes.auto)
    assert (opts["workers"], opts["address"], opts["port"]) == (3, "0.0.0.0", 9000)
    assert opts["http1_settings"].header_read_timeout == 60_000
    assert opts["http1_settings"].max_buffer_size == 8192  # hyper's floor
    assert opts["http2_settings"].max_headers_size == 4096
    assert opts["backpressure"] == 321
    assert opts["workers_kill_timeout"] == 13
    assert "ssl_cert" not in opts

    tls = msgspec.structs.replace(config, server=msgspec.structs.replace(
        config.server, tls_cert="/etc/gw/cert.pem", tls_key="/etc/gw/key.pem"))
    opts = rsgi.granian_options(tls, 1, "127.0.0.1", 8443)
    assert opts["ssl_cert"] == Path("/etc/gw/cert.pem") and opts["ssl_key"] == Path("/etc/gw/key.pem")


# -- the real thing ----------------------------------------------------------------------------------------


class Served:
    """``python -m gateway serve --server granian`` in its own session, stderr in a file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log_path = tmp_path / "granian.stderr"
        env = {k: v for k, v in os.environ.items() if k not in (ENV_CONFIG, ENV_CONFIG_JSON)}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--server", "granian", "--host", "127.0.0.1",
                 "--port", "0", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT,
                start_new_session=True,
            )
        self.port = self._wait_banner()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_banner(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"gateway: serving on http://127\.0\.0\.1:(\d+) with \d+ worker\(s\) \(granian\)",
                          self.logs())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"granian exited with {self.proc.returncode}:\n{self.logs()}")
            time.sleep(0.05)
        raise AssertionError(f"no banner:\n{self.logs()}")

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"content-type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"granian exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/readyz")[0] == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"/readyz never answered 200:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers of a dead main
        self.proc.wait(10)


def test_serve_granian_end_to_end(tmp_path: Path) -> None:
    served = Served(tmp_path, "--workers", "1")
    try:
        served.wait_ready()
        status, headers, body = served.request("POST", "/v1/chat/completions", chat())
        assert status == 200, body
        assert headers["server"] == "granian" and headers["x-request-id"]
        assert json.loads(body)["choices"][0]["message"]["content"]

        status, headers, body = served.request("POST", "/v1/chat/completions", chat(stream=True))
        assert status == 200 and headers["content-type"] == "text/event-stream"
        assert headers.get("transfer-encoding") == "chunked"
        events = [e for e in body.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]" and len(events) > 3

        # oversize: answered from the head, before the client sends the body
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
                         b"content-type: application/json\r\ncontent-length: 5242880\r\n"
                         b"expect: 100-continue\r\n\r\n")
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            assert resp.status == 413
            assert json.loads(resp.read())["error"]["code"] == "payload_too_large"
            resp.close()

        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0, served.logs()
        assert "Granian shutdown completed" in served.logs()
    finally:
        served.stop()


def test_serve_granian_sighup_reloads_every_worker(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    base = DEFAULT_CONFIG_TOML.replace("call_records = true", "call_records = false")
    f.write_text(base)
    served = Served(tmp_path, "--workers", "2", "--config", str(f))
    try:
        served.wait_ready()
        deadline = time.monotonic() + 20
        while served.logs().count("engine started") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)

        def ids() -> set[str]:
            return {m["id"] for m in json.loads(served.request("GET", "/v1/models")[2])["data"]}

        assert "extra-1" not in ids()
        f.write_text(base + '\n[models.bad]\nprovider = "nope"\n')
        served.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reload rejected" not in served.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "config reload rejected" in served.logs()  # by the main process: workers not bothered
        assert "bad" not in ids()
        f.write_text(base + '\n[models.extra-1]\nprovider = "mock"\n')
        served.proc.send_signal(signal.SIGHUP)
        while served.logs().count("config reloaded from") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the main process and both workers
        assert served.logs().count("config reloaded from") == 3, served.logs()
        for _ in range(8):  # whichever worker answers
            assert "extra-1" in ids()
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0, served.logs()
    finally:
        served.stop()


_TWO_SIGNALS = """
import asyncio, os, signal
import uvloop
import gateway.server.rsgi as rsgi
import granian._signals as granian_signals

assert rsgi._shutdown_signal_once(), "granian's set_loop_signals has another shape: recheck the workaround"
loop = uvloop.new_event_loop()
event = granian_signals.set_loop_signals(loop)  # what granian calls in each worker, after the app's import


async def serving():
    for _ in range(3):  # the worker's own signal, its main's, and the gateway's own re-raise
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)


loop.run_until_complete(serving())
print("stopped once", flush=True)
"""


def test_granian_shutdown_signal_is_set_once_however_often_it_comes() -> None:
    """granian's ``WorkerSignal.set`` blocks for good (a full channel of one place, the GIL held) when set
    twice before the first was taken; a worker signalled three times must not call it more than once. Run
    in a process of its own: the old behaviour hangs it with the GIL held, beyond what a timeout in this
    process could interrupt."""
    try:
        done = subprocess.run([sys.executable, "-c", _TWO_SIGNALS], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:  # (killed: subprocess.run sends SIGKILL, which the block cannot stop)
        pytest.fail("a worker signalled three times blocked in granian's WorkerSignal.set")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stopped once\n"
