"""Per-attempt time bounds of routed models, in process: a deployment's connect, first-byte and total
timeouts, against loopback upstreams scripted to be slow in one precise way.

No assertion here is about how fast something happened: each test asserts the answer (status, code,
which deployment served) and, through a generous outer bound, that it came at all. The bounds under test
are far shorter than the provider-level timeouts that would otherwise end the wait, so an answer within
the outer bound shows which timeout applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import netblock  # tests/ is on sys.path: the suite's conftest.py lives there, outside any package
import pytest
import recorder  # tests/ is on sys.path (see tests/recorder.py)

from gateway._core.http import Request
from gateway.config import load_config_text
from gateway.engine import Engine
from gateway.observe.records import RecordSink
from gateway.providers.base import UpstreamError, UpstreamTimeout
from gateway.routing.config import RoutingConfig, single_deployment
from gateway.routing.router import RequestInfo, Router
from gateway.server.pool import OriginPool

HOST = "127.0.0.1"
#: the outer bound of every test: far above the bounds under test, far below the provider timeouts
OUTER = 30.0
#: provider-level timeouts that must not be the ones that end a wait
PROVIDER_TIMEOUTS = "connect_timeout = 120.0\nread_timeout = 120.0\n"

CHAT = {"model": "routed", "messages": [{"role": "user", "content": "hi"}]}
_COMPLETION = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "scripted"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}).encode()


# -- an upstream that accepts no connection ------------------------------------------------------------




# -- an upstream scripted per path ---------------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> str | None:
    """One request's path (its body read and dropped); None when the connection ended."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return lines[0].split(" ")[1]


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Wait for the gateway to drop the connection (it never gets more from us)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass


async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(_head(200, {"content-type": "application/json", "content-length": str(len(_COMPLETION))})
                 + _COMPLETION)


async def stalled_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The head and half the body at once, the rest never."""
    writer.write(_head(200, {"content-type": "application/json", "content-length": str(len(_COMPLETION))})
                 + _COMPLETION[: len(_COMPLETION) // 2])
    await _until_closed(reader)


async def late_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The head at once, the body after a while (longer than the first-byte bound, shorter than total)."""
    writer.write(_head(200, {"content-type": "application/json", "content-length": str(len(_COMPLETION))}))
    await writer.drain()
    await asyncio.sleep(1.0)
    writer.write(_COMPLETION)


async def silent_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An event-stream head at once, no event ever."""
    writer.write(_head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked"}))
    await _until_closed(reader)


async def plain_400(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A client error whose body is not an OpenAI error."""
    body = b"no such thing"
    writer.write(_head(400, {"content-type": "text/plain", "content-length": str(len(body))}) + body)


SCRIPTS: dict[str, Script] = {
    "ok": ok, "stalled-body": stalled_body, "late-body": late_body, "silent-stream": silent_stream,
    "plain-400": plain_400,
}


@contextlib.asynccontextmanager
async def scripted_upstream() -> AsyncIterator[int]:
    """An HTTP/1.1 upstream on loopback; ``/<script>/v1/...`` answers as ``SCRIPTS[script]`` does."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (path := await _read_request(reader)) is not None:
                await SCRIPTS[path.split("/")[1]](reader, writer)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


# -- the engine ------------------------------------------------------------------------------------------


class Recorder(recorder.Recorder):
    def events(self) -> list[bytes]:
        """A stream's events without their ``data: `` prefix."""
        return [e.removeprefix(b"data: ") for e in super().events()]


def scripted(name: str, port: int, script: str) -> str:
    return (f'[providers.{name}]\ntype = "openai"\nbase_url = "http://{HOST}:{port}/{script}/v1"\n'
            + PROVIDER_TIMEOUTS)


def config(tmp_path: Path, body: str) -> str:
    return (f'[log]\ncall_records = true\n[store]\nurl = "sqlite://{tmp_path}/gateway.db"\n'
            '[providers.good]\ntype = "mock"\n[providers.good.mock]\nstream_chunks = 3\n' + body)


async def ask(engine: Engine, body: dict[str, Any]) -> Recorder:
    req = Request("POST", "/v1/chat/completions", "", 11,
                  [(b"host", b"t"), (b"content-type", b"application/json")], json.dumps(body).encode(), True)
    rec = Recorder()
    await asyncio.wait_for(engine.handle(req, rec), OUTER)
    return rec


def all_records(engine: Engine) -> list[dict[str, Any]]:
    """Every record the engine emitted so far: those its sink has written and those still queued (the
    background flush may or may not have run, depending on how long the request took)."""
    out = engine.records._out
    assert isinstance(out, io.BytesIO)
    return [json.loads(line) for line in out.getvalue().splitlines()] + engine.records.snapshot()


@contextlib.asynccontextmanager
async def running(text: str) -> AsyncIterator[Engine]:
    engine = Engine(load_config_text(text), records=RecordSink(io.BytesIO(), enabled=True))
    await engine.startup()
    try:
        yield engine
    finally:
        await engine.shutdown()


def two_deployments(first: str, timeouts: str, *, breaker: bool = False) -> str:
    """Model ``routed``: ``first`` picked first (its weight), then the in-process mock ``good``."""
    return (
        f'[models.routed]\n[[models.routed.deployments]]\nprovider = "{first}"\nupstream_model = "m"\n'
        f'name = "{first}"\nweight = 10\n{timeouts}\n'
        '[[models.routed.deployments]]\nprovider = "good"\nupstream_model = "mock-1"\nname = "good"\n'
        f"[models.routed.breaker]\nenabled = {'true' if breaker else 'false'}\n"
    )


def one_deployment(provider: str, timeouts: str, model_keys: str = "") -> str:
    return (
        f'[models.routed]\n{model_keys}\n[[models.routed.deployments]]\nprovider = "{provider}"\n'
        'upstream_model = "m"\n'
        f'name = "{provider}"\n{timeouts}\n[models.routed.retry]\nmax_attempts = 1\n'
        "[models.routed.breaker]\nenabled = false\n"
    )


# -- connect timeout ------------------------------------------------------------------------------------


def test_the_pool_connects_within_the_requests_own_timeout() -> None:
    with netblock.unaccepting_port() as port:

        async def go() -> None:
            pool = OriginPool(f"http://{HOST}:{port}/v1", connect_timeout=120.0)
            try:
                with pytest.raises(UpstreamTimeout, match=r"timed out after 0\.2s"):
                    await asyncio.wait_for(pool.send_within(b"GET / HTTP/1.1\r\n\r\n", 0.2), OUTER)
                assert pool.stats()["connecting"] == 0 and not pool._connect_timeouts
            finally:
                await pool.close()

        asyncio.run(go())


def test_the_pool_forgets_connect_timeouts_once_requests_are_answered() -> None:
    async def go() -> None:
        async with scripted_upstream() as port:
            pool = OriginPool(f"http://{HOST}:{port}", connect_timeout=120.0, pool_size=1)
            try:
                request = pool.build_head("POST", "/ok/v1/chat/completions", [], 0)
                # new connection, reused connection, and two at once on a pool of one (one waits for a slot)
                for batch in (1, 1, 2):
                    resps = await asyncio.wait_for(
                        asyncio.gather(*(pool.send_within(request, 5.0) for _ in range(batch))), OUTER
                    )
                    for resp in resps:
                        assert resp.status == 200 and await resp.read() == _COMPLETION
                        resp.close()
                assert not pool._connect_timeouts
                # the pool's own timeout is plain send_data
                resp = await pool.send_within(request, 120.0)
                assert resp.status == 200
                resp.close()
            finally:
                await pool.close()

    asyncio.run(go())


class OneConnection:
    """A loopback listener for exactly one connection: accepted by the test, which then fills the accept
    queue so that any further connection attempt gets no answer (see ``unaccepting_port``)."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            pytest.skip("a full accept queue drops new connections only on Linux")
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind((HOST, 0))
        self.srv.listen(0)
        self.srv.setblocking(False)
        self.port = self.srv.getsockname()[1]
        self.conn: socket.socket | None = None
        self.fillers: list[socket.socket] = []

    async def accept(self) -> None:
        self.conn, _ = await asyncio.get_running_loop().sock_accept(self.srv)

    async def read_request(self) -> None:
        assert self.conn is not None
        data = b""
        while b"\r\n\r\n" not in data:
            piece = await asyncio.get_running_loop().sock_recv(self.conn, 4096)
            assert piece, "the client closed the connection"
            data += piece

    async def answer(self) -> None:
        assert self.conn is not None
        await asyncio.get_running_loop().sock_sendall(
            self.conn, _head(200, {"content-type": "application/json", "content-length": "2"}) + b"{}"
        )

    def close_connection(self) -> None:
        assert self.conn is not None
        self.conn.close()

    def refuse_more(self) -> None:
        """Fill the accept queue: from now on a new connection attempt hangs."""
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex((HOST, self.port))
        self.fillers.append(c)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect((HOST, self.port))
        except TimeoutError:
            return
        finally:
            probe.close()
        pytest.skip("this system completes connections past a full accept queue")

    def close(self) -> None:
        for c in [*self.fillers, *([self.conn] if self.conn is not None else [])]:
            c.close()
        self.srv.close()


def test_a_stale_connections_resend_connects_within_the_requests_timeout() -> None:
    async def go() -> None:
        up = OneConnection()
        pool = OriginPool(f"http://{HOST}:{up.port}", connect_timeout=120.0)
        try:
            request = pool.build_head("POST", "/v1/chat/completions", [], 0)
            first = asyncio.ensure_future(pool.send_within(request, 0.2))
            await up.accept()
            await up.read_request()
            await up.answer()
            resp = await asyncio.wait_for(first, OUTER)
            assert await resp.read() == b"{}"
            resp.close()  # the connection is idle in the pool now
            up.refuse_more()
            second = asyncio.ensure_future(pool.send_within(request, 0.2))
            await up.read_request()
            up.close_connection()  # closed before answering: the pool resends on a new connection
            with pytest.raises(UpstreamTimeout, match=r"timed out after 0\.2s"):
                await asyncio.wait_for(second, OUTER)
            assert not pool._connect_timeouts
        finally:
            await pool.close()
            up.close()

    asyncio.run(go())


def test_a_request_that_waited_for_a_pool_slot_connects_within_its_timeout() -> None:
    async def go() -> None:
        up = OneConnection()
        pool = OriginPool(f"http://{HOST}:{up.port}", connect_timeout=120.0, pool_size=1)
        try:
            request = pool.build_head("POST", "/v1/chat/completions", [], 0)
            first = asyncio.ensure_future(pool.send_within(request, 0.2))
            await up.accept()
            await up.read_request()
            up.refuse_more()
            second = asyncio.ensure_future(pool.send_within(request, 0.2))
            for _ in range(1000):  # until it waits for the pool's one slot
                if pool.stats()["waiting"]:
                    break
                await asyncio.sleep(0.005)
            assert pool.stats()["waiting"] == 1
            up.close_connection()  # the slot frees: a new connection is opened for the waiting request
            with pytest.raises(UpstreamError):
                await asyncio.wait_for(first, OUTER)
            with pytest.raises(UpstreamTimeout, match=r"timed out after 0\.2s"):
                await asyncio.wait_for(second, OUTER)
            assert not pool._connect_timeouts
        finally:
            await pool.close()
            up.close()

    asyncio.run(go())


def test_a_deployments_connect_timeout_moves_the_request_on(tmp_path: Path) -> None:
    with netblock.unaccepting_port() as port:

        async def go() -> None:
            text = config(tmp_path, scripted("dead", port, "ok")
                          + two_deployments("dead", "connect_timeout = 0.3"))
            async with running(text) as engine:
                rec = await ask(engine, CHAT)
                records = all_records(engine)
            assert rec.status == 200 and rec.header("x-gateway-deployment") == "good"
            assert records[-1]["attempts"] == 2

        asyncio.run(go())


def test_a_connect_timeout_with_nothing_else_is_a_504(tmp_path: Path) -> None:
    with netblock.unaccepting_port() as port:

        async def go() -> None:
            text = config(tmp_path, scripted("dead", port, "ok") + one_deployment("dead", "connect_timeout = 0.3"))
            async with running(text) as engine:
                rec = await ask(engine, CHAT)
            assert rec.status == 504
            err = rec.error()
            assert err["code"] == "upstream_timeout" and "timed out after 0.3s" in err["message"], err

        asyncio.run(go())


# -- total timeout: the whole attempt -------------------------------------------------------------------


def test_a_body_that_does_not_finish_within_total_timeout_moves_on(tmp_path: Path) -> None:
    async def go() -> None:
        async with scripted_upstream() as port:
            text = config(tmp_path, scripted("stalls", port, "stalled-body")
                          + two_deployments("stalls", "total_timeout = 0.5"))
            async with running(text) as engine:
                rec = await ask(engine, CHAT)
                records = all_records(engine)
        assert rec.status == 200 and rec.header("x-gateway-deployment") == "good"
        assert records[-1]["attempts"] == 2

    asyncio.run(go())


def test_a_body_that_does_not_finish_with_nothing_else_is_a_504(tmp_path: Path) -> None:
    async def go() -> None:
        async with scripted_upstream() as port:
            text = config(tmp_path, scripted("stalls", port, "stalled-body")
                          + one_deployment("stalls", "total_timeout = 0.5"))
            async with running(text) as engine:
                rec = await ask(engine, CHAT)
        assert rec.status == 504
        err = rec.error()
        assert err["code"] == "upstream_timeout", err
        assert "did not finish within 0.5s" in err["message"] and "total_timeout" in err["message"], err

    asyncio.run(go())


@pytest.mark.parametrize(("fallback_on", "status"), [('["timeout"]', 200), ('["5xx"]', 504)])
def test_a_total_timeout_falls_back_under_fallback_on_timeout(tmp_path: Path, fallback_on: str,
                                                              status: int) -> None:
    async def go() -> None:
        async with scripted_upstream() as port:
            text = config(tmp_path, scripted("stalls", port, "stalled-body") + f"""
[models.routed]
fallbacks = ["backup"]
fallback_on = {fallback_on}
[[models.routed.deployments]]
provider = "stalls"
upstream_model = "m"
total_timeout = 0.5
[models.routed.retry]
max_attempts = 1
[models.routed.breaker]
enabled = false

[models.backup]
provider = "good"
upstream_model = "mock-1"
""")
            async with running(text) as engine:
                rec = await ask(engine, CHAT)
        assert rec.status == status, rec.body
        if status == 200:
            assert rec.header("x-gateway-model") == "backup"
        else:
            assert rec.error()["code"] == "upstream_timeout"

    asyncio.run(go())


def test_the_request_deadline_bounds_the_body_too(tmp_path: Path) -> None:
    async def go() -> None:
        async with scripted_upstream() as port:
            text = config(tmp_path, scripted("stalls", port, "stalled-body")
                          + one_deployment("stalls", "", "deadline = 0.5"))
            async with running(text) as engine:
                rec = await ask(engine, CHAT)
        assert rec.status == 504
        assert "the request's deadline" in rec.error()["message"]

    asyncio.run(go())


def test_first_byte_timeout_ends_with_the_head_of_a_plain_answer(tmp_path: Path) -> None:
    """The body may take longer than first_byte_timeout: from the head on, the total bound applies."""
    async def go() -> None:
        async with scripted_upstream() as port:
            text = config(tmp_path, scripted("late", port, "late-body")
                          + one_deployment("late", "first_byte_timeout = 0.3\ntotal_timeout = 20.0"))
            async with running(text) as engine:
                rec = await ask(engine, CHAT)
        assert rec.status == 200, rec.body
        assert json.loads(rec.body)["choices"][0]["message"]["content"] == "scripted"

    asyncio.run(go())


# -- streams ----------------------------------------------------------------------------------------------


def test_first_byte_timeout_covers_a_streams_first_event(tmp_path: Path) -> None:
    async def go() -> None:
        async with scripted_upstream() as port:
            text = config(tmp_path, scripted("silent", port, "silent-stream")
                          + two_deployments("silent", "first_byte_timeout = 0.3"))
            async with running(text) as engine:
                rec = await ask(engine, {**CHAT, "stream": True})
                records = all_records(engine)
        assert rec.status == 200 and rec.header("x-gateway-deployment") == "good"
        assert rec.events()[-1] == b"[DONE]"
        assert records[-1]["attempts"] == 2

    asyncio.run(go())


def test_total_timeout_ends_a_stream_that_has_started(tmp_path: Path) -> None:
    async def go() -> None:
        text = config(tmp_path, """
[providers.slow]
type = "mock"
[providers.slow.mock]
stream_chunks = 50
chunk_delay_ms = 200
""" + two_deployments("slow", "total_timeout = 1.0"))
        async with running(text) as engine:
            rec = await ask(engine, {**CHAT, "stream": True})
            records = all_records(engine)
        assert rec.status == 200 and rec.header("x-gateway-deployment") == "slow"
        events = rec.events()
        # the error event, then the stream's regular end
        assert len(events) >= 3 and events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
        last = json.loads(events[-2])["error"]
        assert last["code"] == "upstream_timeout" and "total_timeout" in last["message"], last
        assert rec.finished
        assert records[-1].get("attempts") is None  # bytes had been sent: no other attempt
        assert records[-1]["error_code"] == "upstream_timeout"

    asyncio.run(go())


# -- answers that are not the deployment's fault ------------------------------------------------------


def test_a_client_error_that_is_not_an_openai_error_is_a_502(tmp_path: Path) -> None:
    async def go() -> None:
        async with scripted_upstream() as port:
            text = config(tmp_path, scripted("strict", port, "plain-400") + two_deployments("strict", ""))
            async with running(text) as engine:
                rec = await ask(engine, CHAT)
        assert rec.status == 502 and rec.error()["code"] == "upstream_error"
        assert rec.header("x-gateway-deployment") == "strict"

    asyncio.run(go())


def test_an_abandoned_attempt_releases_its_in_flight_count() -> None:
    cfg = single_deployment("p")
    routing = RoutingConfig(deployments=cfg.deployments, strategy="least_busy")
    router = Router("m", routing)
    attempts = router.plan(RequestInfo(), 0.0, lambda: 0.5)
    attempt = next(attempts)
    assert router.inflight(attempt.deployment) == 1
    attempts.abandon()
    assert router.inflight(attempt.deployment) == 0
    assert attempts.stop_reason == "abandoned" and list(attempts) == []
    attempts.abandon()  # nothing pending: no-op
