"""Per-request CPU cost of the gateway's own request path, in process, with no sockets.

The real listener (``HttpProtocol``), engine and upstream pool run on a uvloop loop; only the two
transports are fakes: the client side hands the next request to the protocol as soon as a response has
been written, and the upstream side answers every request with a canned OpenAI chat completion on the
next loop iteration. What is left is exactly the Python and compiled-core work of the gateway per
request, without the kernel's share, so changes to the hot path can be compared in seconds and with far
less noise than a load test (which still decides: see ``proxy_vs_nginx.py``).

    python -m bench.inproc                    # 200,000 requests over 64 connections, best of 5 runs
    python -m bench.inproc --profile          # the same under cProfile, top functions by own time
    python -m bench.inproc --config FILE      # a config of your own (its providers must be openai-type)
    python -m bench.inproc --auth             # with API keys required (a static key; SQLite store)
    python -m bench.inproc --stream 20        # streamed completions of 20 content events
    python -m bench.inproc --row chat-anthropic  # another dialect path (ROWS): chat-anthropic (OpenAI
                                              # chat to an Anthropic upstream), messages (Messages
                                              # pass-through), messages-openai (Messages to OpenAI),
                                              # responses (stored, to an OpenAI upstream)
    python -m bench.inproc --limits           # shared-state calls per request at 10,000 requests/min
    python -m bench.inproc --answer notfound  # an answer without an upstream: notfound (404), badkey
                                              # (401) or ratelimited (429), with the config of the
                                              # suite's scenario 4 (keys, and a [limits] policy)

Prints microseconds of CPU per request; with ``--limits``, the shared-state calls per admitted request.

``--limits`` is a different measurement: the same in-process gateway with API keys and a policy of
``--rpm`` requests per minute on the key's tenant, its leases taken from the embedded shared state (the
node's table file beside the SQLite store), driven open loop at that rate in real time, because the
lease sizing adapts to the rate it observes (an average over about ten seconds) and the leases expire on
the clock. Every call the limits code makes into its ``LeaseSource`` is counted at that boundary
(``CountingSource``). ``--workers W`` measures one worker of a deployment of W: the config says W workers
(the lease sizing's fair share is 1/W of the limit) and the worker gets 1/W of the load. The first
``--warmup`` seconds are not counted (the rate estimate starts at 0, so the first leases are small).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import translate
from bench.configs import GATEWAY_KEY, MODEL, gateway_key_digest, gateway_toml, limited_key_digest
from gateway.config import Config, load_config, load_config_text
from gateway.engine import Engine
from gateway.limits.shared import Grant, LeaseSource, Op
from gateway.server.listener import HttpProtocol, ListenerState
from gateway.server.pool import OriginPool, _Connection
from gateway.server.worker import freeze_heap

BODY = b'{"model":"mock-1","messages":[{"role":"user","content":"hello there"}]}'
#: the client's key: a well-formed gateway key, which the --auth config declares as a static key
KEY = "gw-benchbenchbe-" + "b" * 43
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(BODY), BODY)
)
_ANSWER = (
    b'{"id":"chatcmpl-dcc173066a961","object":"chat.completion","created":1795368548,"model":"mock-1",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"commodo minim enim nostrud consequat'
    b' laboris officia cillum veniam esse qui sed","refusal":null,"annotations":[]},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":6,"completion_tokens":12,"total_tokens":18,'
    b'"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":'
    b'{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},'
    b'"service_tier":"default","system_fingerprint":"fp_mock"}'
)
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_ANSWER), _ANSWER,
)

STREAM_BODY = (
    b'{"model":"mock-1","messages":[{"role":"user","content":"hello there"}],"stream":true,'
    b'"stream_options":{"include_usage":true}}'
)
STREAM_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
    % (KEY.encode(), len(STREAM_BODY), STREAM_BODY)
)


def _stream_response(chunks: int) -> list[bytes]:
    """A chunked SSE response as an upstream sends it: one TCP read per event."""
    events = [
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1795368548,"model":"mock-1",'
        b'"choices":[{"index":0,"delta":{"content":"word%d "},"finish_reason":null}]}\n\n' % i
        for i in range(chunks)
    ]
    events.append(
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1795368548,"model":"mock-1",'
        b'"choices":[],"usage":{"prompt_tokens":6,"completion_tokens":%d,"total_tokens":%d}}\n\n'
        % (chunks, chunks + 6)
    )
    events.append(b"data: [DONE]\n\n")
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    pieces = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    pieces[-1] += b"0\r\n\r\n"
    return [head + pieces[0], *pieces[1:]]


CONFIG = """
[server]
workers = 1
[log]
call_records = false
level = "warning"
[providers.up]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "env:PATH"
[models.mock-1]
provider = "up"
"""

AUTH = """
[auth]
required = true
[[auth.keys]]
id = "benchbenchbe"
digest = "{digest}"
tenant = "bench"
[store]
url = "sqlite://{db}"
"""


def auth_config(db: str | None = None) -> str:
    import tempfile

    from gateway.auth import digest

    if db is None:
        db = tempfile.mkdtemp(prefix="gateway-inproc-") + "/keys.db"
    return CONFIG + AUTH.format(digest=digest(KEY.split("-")[2], b""), db=db)


LIMITS = """
[limits]
default_policy = "bench"
[limits.policies.bench]
requests_per_minute = {rpm}
"""


def limits_config(rpm: int, workers: int, db: str) -> str:
    """Keys required, and a policy of ``rpm`` requests per minute on the key's tenant (every key and
    tenant that names no policy gets ``default_policy``), in a deployment of ``workers`` workers; the
    store at ``db``, the limits' shared table beside it."""
    text = auth_config(db)
    assert "workers = 1\n" in text
    return text.replace("workers = 1\n", f"workers = {workers}\n", 1) + LIMITS.format(rpm=rpm)


RESPONSES_BODY = b'{"model":"mock-1","input":"hello there"}'
#: --row: (client path, client body, provider type, upstream answer) of each dialect path, the rows of
#: ``bench.dialects`` without sockets
ROWS: dict[str, tuple[bytes, bytes, str, bytes]] = {
    "chat": (b"/v1/chat/completions", BODY, "openai", _ANSWER),
    "chat-anthropic": (b"/v1/chat/completions", BODY, "anthropic", translate.MESSAGE),
    "messages": (b"/v1/messages", translate.MESSAGES_BODY, "anthropic", translate.MESSAGE),
    "messages-openai": (b"/v1/messages", translate.MESSAGES_BODY, "openai", translate.COMPLETION),
    "responses": (b"/v1/responses", RESPONSES_BODY, "openai", translate.COMPLETION),
}


def row_setup(row: str) -> tuple[str, bytes, list[bytes]]:
    """The config, the client's request and the upstream's answer of a ``ROWS`` path."""
    path, body, provider, answer = ROWS[row]
    config = CONFIG.replace('type = "openai"', f'type = "{provider}"', 1)
    if row == "responses":  # its conversation store: SQLite on a node
        import tempfile

        config += f'[store]\nurl = "sqlite://{tempfile.mkdtemp(prefix="gateway-inproc-")}/store.db"\n'

    request = (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (path, KEY.encode(), len(body), body)
    )
    response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(answer), answer,
    )
    return config, request, [response]


class _Transport:
    """The parts of an asyncio transport the listener and the pool use."""

    def __init__(self) -> None:
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class ClientTransport(_Transport):
    """One client connection: after each complete response, the next request (closed loop)."""

    def __init__(self, driver: Driver) -> None:
        super().__init__()
        self.driver = driver
        self.protocol: HttpProtocol | None = None
        self.in_stream = False

    def write(self, data: bytes) -> None:
        driver = self.driver
        if driver.stream:
            if not self.in_stream:
                self.in_stream = True
                if not data.startswith(b"HTTP/1.1 200"):
                    driver.errors += 1
                    self.in_stream = False
                elif not data.endswith(b"0\r\n\r\n"):
                    return
            elif not data.endswith(b"0\r\n\r\n"):
                return
            self.in_stream = False
        elif not data.startswith(driver.expect):
            driver.errors += 1
        driver.responses += 1
        if driver.sent < driver.total:
            driver.sent += 1
            assert self.protocol is not None
            driver.loop.call_soon(self.protocol.data_received, driver.request)
        elif driver.responses >= driver.total:
            driver.done.set_result(None) if not driver.done.done() else None

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))


class UpstreamTransport(_Transport):
    """One upstream connection: answers every request on the next loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pieces: list[bytes]) -> None:
        super().__init__()
        self.loop = loop
        self.conn: _Connection | None = None
        self.pieces = pieces

    def write(self, data: bytes) -> None:
        assert self.conn is not None
        for piece in self.pieces:
            self.loop.call_soon(self.conn.data_received, piece)


class Driver:
    def __init__(self, loop: asyncio.AbstractEventLoop, total: int, stream_chunks: int,
                 request: bytes | None = None, expect: int = 200, pieces: list[bytes] | None = None) -> None:
        self.loop = loop
        self.stream = stream_chunks > 0
        self.request = request or (STREAM_REQUEST if self.stream else REQUEST)
        self.expect = b"HTTP/1.1 %d " % expect
        self.pieces = pieces or (_stream_response(stream_chunks) if self.stream else [RESPONSE])
        self.total = total
        self.sent = 0
        self.responses = 0
        self.errors = 0
        self.done: asyncio.Future[None] = loop.create_future()


def _fake_upstreams(engine: Engine, pieces: list[bytes], connections: int) -> None:
    """Give every upstream pool ``connections`` idle connections that answer with ``pieces``."""
    loop = asyncio.get_running_loop()
    assert engine.runtime is not None
    for t in engine.runtime.translators.values():
        pool = t.transport
        if isinstance(pool, OriginPool):
            for _ in range(connections):
                up = UpstreamTransport(loop, pieces)
                conn = _Connection(pool)
                conn.connection_made(up)
                up.conn = conn
                pool.release(conn)


def _listener_state(engine: Engine, config: Config) -> ListenerState:
    srv = config.server
    return ListenerState(
        engine, max_header_bytes=srv.max_header_bytes, max_body_bytes=srv.max_body_bytes,
        max_connections=srv.max_connections, header_timeout=srv.header_timeout,
        body_timeout=srv.body_timeout, keepalive_timeout=srv.keepalive_timeout,
    )


async def _use_up(state: ListenerState, request: bytes, times: int) -> None:
    """Send ``request`` ``times`` times on one connection (a key's allowance: answered 200, or already
    refused when an earlier run in this process used it up)."""
    loop = asyncio.get_running_loop()
    driver = Driver(loop, times, 0, request)
    tr = ClientTransport(driver)
    proto = HttpProtocol(state)
    tr.protocol = proto
    proto.connection_made(tr)
    driver.sent = 1
    proto.data_received(request)
    await driver.done
    proto.connection_lost(None)


async def _run(
    config_text: str | None, config_path: str | None, total: int, connections: int, stream_chunks: int,
    answer: str | None = None, row: str | None = None,
) -> float:
    loop = asyncio.get_running_loop()
    config = load_config(config_path) if config_path else load_config_text(config_text or CONFIG)
    engine = Engine(config, worker=0)
    await engine.startup()
    freeze_heap()  # as a worker does once started (gateway.server.worker.serve_app)
    from bench.suite import CASES

    case = CASES[answer] if answer else None
    request = _case_request(case) if case else None
    pieces = None
    if row is not None and row != "chat":
        _, request, pieces = row_setup(row)
    driver = Driver(loop, total, stream_chunks, request, case.expect_status if case else 200, pieces)
    _fake_upstreams(engine, driver.pieces, connections)
    state = _listener_state(engine, config)
    if case is not None and case.use_up:
        await _use_up(state, _case_request(case, MODEL), case.use_up)
    clients = []
    for _ in range(connections):
        tr = ClientTransport(driver)
        proto = HttpProtocol(state)
        tr.protocol = proto
        proto.connection_made(tr)
        clients.append((proto, tr))
    t0 = time.process_time()
    for proto, _ in clients:
        driver.sent += 1
        proto.data_received(driver.request)
    await driver.done
    elapsed = time.process_time() - t0
    for proto, _ in clients:
        proto.connection_lost(None)  # ends each connection's task
    await asyncio.sleep(0)
    await engine.shutdown()
    if driver.errors:
        raise SystemExit(f"{driver.errors} responses were not {driver.expect[9:12].decode()}")
    return elapsed * 1e6 / total


#: --answer: the suite's no-upstream cases (scenario 4)
ANSWERS = ("notfound", "badkey", "ratelimited")


def _case_request(case: Any, model: str | None = None) -> bytes:
    """The HTTP request of a suite case, with the case's key (or the gateway's); ``model``: with the
    case's body asking for that model instead (to use up a key's allowance with answered requests)."""
    body = case.body
    if model is not None:
        body = json.dumps({**json.loads(body), "model": model}, separators=(",", ":")).encode()
    key = case.key or GATEWAY_KEY
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
        % (case.path.encode(), key.encode(), len(body), body)
    )


def answer_config(db: str | None = None) -> str:
    """The config of the suite's scenario 4: keys required, the limited key and its [limits] policy."""
    import tempfile

    if db is None:
        db = tempfile.mkdtemp(prefix="gateway-inproc-") + "/keys.db"
    text = gateway_toml(8080, 9, auth_digest=gateway_key_digest(), store_path=Path(db),
                        limited_digest=limited_key_digest(), generator="bench/inproc.py")
    return text.replace('"env:BENCH_KEY"', '"env:PATH"')  # any value: no upstream is asked


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def measure(
    total: int, connections: int, config_path: str | None = None, config_text: str | None = None,
    stream_chunks: int = 0, answer: str | None = None, row: str | None = None,
) -> float:
    loop = _loop()
    try:
        return loop.run_until_complete(
            _run(config_text, config_path, total, connections, stream_chunks, answer, row)
        )
    finally:
        loop.close()


# --- --limits: shared-state calls per admitted request ----------------------------------------------------


class CountingSource(LeaseSource):
    """The shared-state boundary, counted: wraps the ``LeaseSource`` the limits code uses and counts every
    call into it by method; for ``batch`` also the operations it carries (by kind) and the sizes of the
    leases granted. Installed in place of the source after the engine has started.

    ``keepalive`` is counted only once a concurrency slot has been entered through this source: both
    sources return at once, without touching the shared state, while their holder has nothing in flight.
    ``budget`` (budget counters kept in the shared state, where the source has them) is passed on and
    counted like the others.
    """

    METHODS = ("batch", "budget", "enter", "leave", "keepalive", "inflight", "ping")

    def __init__(self, inner: LeaseSource) -> None:
        self.inner = inner
        self.lease_ttl = inner.lease_ttl
        self.holder_ttl = inner.holder_ttl
        self.keeps_budgets = bool(getattr(inner, "keeps_budgets", False))
        self.calls: dict[str, int] = dict.fromkeys(self.METHODS, 0)
        self.ops: dict[str, int] = {}
        self.granted: list[float] = []
        self._entered = False

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def healthy(self) -> bool:
        return self.inner.healthy

    async def batch(self, ops: Sequence[Op], now: float) -> list[Grant]:
        self.calls["batch"] += 1
        for op in ops:
            self.ops[op.kind] = self.ops.get(op.kind, 0) + 1
        grants = await self.inner.batch(ops, now)
        self.granted.extend(g.granted for op, g in zip(ops, grants, strict=False)
                            if op.kind == "acquire" and g.ok)
        return grants

    async def budget(self, ops: Sequence[Any]) -> list[Any]:
        self.calls["budget"] += 1
        result: list[Any] = await getattr(self.inner, "budget")(ops)  # noqa: B009  (not on every source)
        return result

    async def enter(self, limit_key: str, limit: int) -> bool:
        self.calls["enter"] += 1
        self._entered = True
        return await self.inner.enter(limit_key, limit)

    async def leave(self, limit_key: str) -> None:
        self.calls["leave"] += 1
        await self.inner.leave(limit_key)

    async def keepalive(self) -> None:
        if self._entered:
            self.calls["keepalive"] += 1
        await self.inner.keepalive()

    async def inflight(self, limit_key: str) -> int:
        self.calls["inflight"] += 1
        return await self.inner.inflight(limit_key)

    async def ping(self) -> bool:
        self.calls["ping"] += 1
        return await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class PacedClient(_Transport):
    """One client connection of the open-loop driver: a non-stream answer arrives in one write; its
    status is counted and the connection is free again."""

    def __init__(self, pacer: Pacer, state: ListenerState) -> None:
        super().__init__()
        self.pacer = pacer
        self.protocol = HttpProtocol(state)
        self.protocol.connection_made(self)

    def write(self, data: bytes) -> None:
        pacer = self.pacer
        status = data[9:12].decode("latin-1")
        pacer.statuses[status] = pacer.statuses.get(status, 0) + 1
        pacer.answered += 1
        pacer.free.append(self)

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))


class Pacer:
    """Sends requests on free connections (a new one when none is free) and counts the answers."""

    def __init__(self, state: ListenerState, request: bytes) -> None:
        self.state = state
        self.request = request
        self.free: list[PacedClient] = []
        self.clients: list[PacedClient] = []
        self.statuses: dict[str, int] = {}
        self.sent = 0
        self.answered = 0

    def send(self) -> None:
        if self.free:
            client = self.free.pop()
        else:
            client = PacedClient(self, self.state)
            self.clients.append(client)
        self.sent += 1
        client.protocol.data_received(self.request)

    def close(self) -> None:
        for client in self.clients:
            client.protocol.connection_lost(None)


def _limits_result(rpm: int, workers: int, rate: float, warmup: float, seconds: float,
                   counting: CountingSource, a: dict[str, Any], b: dict[str, Any], grants_from: int,
                   samples: list[dict[str, Any]], source: str) -> dict[str, Any]:
    admitted = b["admitted"] - a["admitted"]
    calls = b["calls"] - a["calls"]
    own = b["gateway_shared_calls"] - a["gateway_shared_calls"]
    statuses = {k: v - a["statuses"].get(k, 0) for k, v in b["statuses"].items()}
    granted = counting.granted[grants_from:]
    return {
        "rpm": rpm, "workers": workers, "rate_rps": rate, "warmup_s": warmup, "measured_s": seconds,
        "wall_s": b["t"] - a["t"], "source": source,
        "requests": b["sent"] - a["sent"], "admitted": admitted,
        "admitted_slow": b["admitted_slow"] - a["admitted_slow"],
        "statuses": {k: v for k, v in statuses.items() if v},
        "errors": sum(v for k, v in statuses.items() if k != "200"),
        "calls": calls,
        "calls_per_request": calls / admitted if admitted else None,
        "calls_by_method": {k: v - a["by_method"][k] for k, v in b["by_method"].items()},
        "ops_by_kind": {k: v - a["ops"].get(k, 0) for k, v in b["ops"].items() if v - a["ops"].get(k, 0)},
        "gateway_shared_calls": own,
        "gateway_calls_per_request": own / admitted if admitted else None,
        "leases": {
            "granted": len(granted),
            "median": statistics.median(granted) if granted else None,
            "min": min(granted, default=None), "max": max(granted, default=None),
            # the lease sizing's cap: this worker's share of one second of the limit
            "fair_share": rpm / 60.0 / workers,
        },
        "samples": samples,
    }


async def _run_limits(rpm: int, workers: int, warmup: float, seconds: float, db: str,
                      progress: bool = False) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    config = load_config_text(limits_config(rpm, workers, db))
    engine = Engine(config, worker=0)
    await engine.startup()
    pacer: Pacer | None = None
    try:
        svc = engine.limits
        if svc is None:
            raise AssertionError("the limits config did not turn the admit phase on")
        source = type(svc.source).__name__
        # from here on every call of the limits code into the shared state goes through the counter
        counting = CountingSource(svc.source)
        svc.source = svc.client.source = svc.tokens.source = counting
        _fake_upstreams(engine, [RESPONSE], 8)
        pacer = Pacer(_listener_state(engine, config), REQUEST)

        def snapshot() -> dict[str, Any]:
            return {"t": loop.time(), "sent": pacer.sent if pacer else 0,
                    "admitted": svc.stats.admitted, "admitted_slow": svc.stats.admitted_slow,
                    "calls": counting.total, "by_method": dict(counting.calls), "ops": dict(counting.ops),
                    "gateway_shared_calls": svc.shared_calls,
                    "statuses": dict(pacer.statuses) if pacer else {}}

        rate = rpm / 60.0 / workers
        warm_n = round(warmup * rate)
        total = warm_n + max(1, round(seconds * rate))
        samples: list[dict[str, Any]] = []
        start = loop.time() + 0.01
        next_sample = start
        first: dict[str, Any] | None = None
        grants_from = 0
        for i in range(total):
            if i == warm_n:
                settle = loop.time() + 1.0  # the warm-up's answers first: its admissions are not counted
                while pacer.answered < pacer.sent and loop.time() < settle:
                    await asyncio.sleep(0.0005)
                first = snapshot()
                grants_from = len(counting.granted)
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pacer.send()
            now = loop.time()
            if now >= next_sample:
                next_sample += 1.0
                samples.append({"t": round(now - start, 3), "admitted": svc.stats.admitted,
                                "calls": counting.total,
                                "lease": counting.granted[-1] if counting.granted else None})
                if progress:
                    print(f"\r{now - start:5.0f} s  {svc.stats.admitted:,} admitted  {counting.total:,} "
                          "shared-state calls", end="", file=sys.stderr, flush=True)
        deadline = loop.time() + 5.0
        while pacer.answered < pacer.sent and loop.time() < deadline:
            await asyncio.sleep(0.001)
        last = snapshot()
        if progress:
            print(file=sys.stderr)
        assert first is not None
        return _limits_result(rpm, workers, rate, warmup, seconds, counting, first, last, grants_from,
                              samples, source)
    finally:
        if pacer is not None:
            pacer.close()
        await asyncio.sleep(0)
        await engine.shutdown()


def measure_limits(rpm: int = 10_000, workers: int = 1, warmup: float = 30.0, seconds: float = 30.0,
                   progress: bool = False) -> dict[str, Any]:
    """Shared-state calls per admitted request, one worker of ``workers`` at its share of ``rpm``."""
    import tempfile

    loop = _loop()
    try:
        with tempfile.TemporaryDirectory(prefix="gateway-inproc-limits-") as tmp:
            return loop.run_until_complete(_run_limits(rpm, workers, warmup, seconds, tmp + "/keys.db",
                                                       progress))
    finally:
        loop.close()


def limits_summary(r: dict[str, Any]) -> str:
    cpr = r["calls_per_request"]
    leases = r["leases"]
    lines = [
        f"{'-' if cpr is None else f'{cpr:.4f}'} shared-state calls per admitted request "
        f"({r['calls']:,} calls for {r['admitted']:,} admitted requests in {r['wall_s']:.1f} s at "
        f"{r['rate_rps']:.1f} req/s: {r['rpm']:,} requests/min, one worker of {r['workers']}; "
        f"after {r['warmup_s']:g} s of warm-up)",
        "  calls by method: " + ", ".join(f"{k} {v:,}" for k, v in r["calls_by_method"].items() if v)
        + "; operations: " + (", ".join(f"{k} {v:,}" for k, v in r["ops_by_kind"].items()) or "none"),
        f"  leases granted: {leases['granted']:,}, median {leases['median'] or 0:g} units "
        f"(fair share {leases['fair_share']:.1f}); admitted after waiting for the shared state: "
        f"{r['admitted_slow']:,}; the gateway's own count (LimitService.shared_calls): "
        f"{r['gateway_shared_calls']:,}",
    ]
    if r["errors"]:
        lines.append(f"  ANSWERS OTHER THAN 200: {r['statuses']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", "-n", type=int, default=200_000)
    ap.add_argument("--connections", "-c", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--config")
    ap.add_argument("--auth", action="store_true", help="require API keys (a static key in the config)")
    ap.add_argument("--stream", type=int, default=0, metavar="CHUNKS",
                    help="streamed completions of CHUNKS content events each (0: non-stream)")
    ap.add_argument("--answer", choices=sorted(ANSWERS),
                    help="an answer without an upstream, with the config of the suite's scenario 4")
    ap.add_argument("--row", choices=sorted(ROWS), default="chat",
                    help="the dialect path: the client's dialect and the upstream's (default chat)")
    ap.add_argument("--profile", action="store_true")
    g = ap.add_argument_group("--limits: shared-state calls per admitted request")
    g.add_argument("--limits", action="store_true",
                   help="measure the shared-state calls per admitted request under a request limit")
    g.add_argument("--rpm", type=int, default=10_000, help="the policy's requests per minute (10,000)")
    g.add_argument("--workers", type=int, default=1,
                   help="as one worker of a deployment of this many, at its share of the load (1)")
    g.add_argument("--warmup", type=float, default=30.0, help="seconds not counted (30)")
    g.add_argument("--seconds", type=float, default=30.0, help="seconds measured (30)")
    g.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    args = ap.parse_args(argv)
    if args.limits:
        if args.rpm < 1 or args.workers < 1 or args.warmup < 0 or args.seconds <= 0:
            ap.error("--rpm and --workers must be at least 1, --warmup >= 0, --seconds > 0")
        result = measure_limits(args.rpm, args.workers, args.warmup, args.seconds,
                                progress=sys.stderr.isatty())
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(limits_summary(result))
        return 1 if result["errors"] else 0
    if args.answer and (args.config or args.auth or args.stream):
        ap.error("--answer brings its own config: no --config, --auth or --stream with it")
    if args.row != "chat" and (args.answer or args.config or args.auth or args.stream):
        ap.error("--row brings its own config: no --answer, --config, --auth or --stream with it")
    text = answer_config() if args.answer else auth_config() if args.auth else None
    if args.row != "chat":
        text = row_setup(args.row)[0]

    def run(total: int) -> float:
        return measure(total, args.connections, args.config, text, args.stream, args.answer, args.row)

    run(min(args.requests, 20_000))  # warm-up
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.requests)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(30)
        return 0
    results = [run(args.requests) for _ in range(args.runs)]
    print(f"{min(results):.2f} us CPU per request (best of {args.runs}; all: "
          + ", ".join(f"{r:.2f}" for r in results) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
