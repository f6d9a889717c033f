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

Prints microseconds of CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from typing import Any

from gateway.config import load_config, load_config_text
from gateway.engine import Engine
from gateway.server.listener import HttpProtocol, ListenerState
from gateway.server.pool import OriginPool, _Connection

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


def auth_config() -> str:
    import tempfile

    from gateway.auth import digest

    db = tempfile.mkdtemp(prefix="gateway-inproc-") + "/keys.db"
    return CONFIG + AUTH.format(digest=digest(KEY.split("-")[2], b""), db=db)


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

    def write(self, data: bytes) -> None:
        self.driver.responses += 1
        if not data.startswith(b"HTTP/1.1 200"):
            self.driver.errors += 1
        if self.driver.sent < self.driver.total:
            self.driver.sent += 1
            assert self.protocol is not None
            self.driver.loop.call_soon(self.protocol.data_received, REQUEST)
        elif self.driver.responses >= self.driver.total:
            self.driver.done.set_result(None) if not self.driver.done.done() else None

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))


class UpstreamTransport(_Transport):
    """One upstream connection: answers every request on the next loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.conn: _Connection | None = None

    def write(self, data: bytes) -> None:
        assert self.conn is not None
        self.loop.call_soon(self.conn.data_received, RESPONSE)


class Driver:
    def __init__(self, loop: asyncio.AbstractEventLoop, total: int) -> None:
        self.loop = loop
        self.total = total
        self.sent = 0
        self.responses = 0
        self.errors = 0
        self.done: asyncio.Future[None] = loop.create_future()


async def _run(config_text: str | None, config_path: str | None, total: int, connections: int) -> float:
    loop = asyncio.get_running_loop()
    config = load_config(config_path) if config_path else load_config_text(config_text or CONFIG)
    engine = Engine(config, worker=0)
    await engine.startup()
    assert engine.runtime is not None
    for t in engine.runtime.translators.values():
        pool = t.transport
        if isinstance(pool, OriginPool):
            for _ in range(connections):
                up = UpstreamTransport(loop)
                conn = _Connection(pool)
                conn.connection_made(up)
                up.conn = conn
                pool.release(conn)
    srv = config.server
    state = ListenerState(
        engine, max_header_bytes=srv.max_header_bytes, max_body_bytes=srv.max_body_bytes,
        max_connections=srv.max_connections, header_timeout=srv.header_timeout,
        body_timeout=srv.body_timeout, keepalive_timeout=srv.keepalive_timeout,
    )
    driver = Driver(loop, total)
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
        proto.data_received(REQUEST)
    await driver.done
    elapsed = time.process_time() - t0
    for proto, _ in clients:
        proto.connection_lost(None)  # ends each connection's task
    await asyncio.sleep(0)
    await engine.shutdown()
    if driver.errors:
        raise SystemExit(f"{driver.errors} responses were not 200")
    return elapsed * 1e6 / total


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def measure(
    total: int, connections: int, config_path: str | None = None, config_text: str | None = None
) -> float:
    loop = _loop()
    try:
        return loop.run_until_complete(_run(config_text, config_path, total, connections))
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", "-n", type=int, default=200_000)
    ap.add_argument("--connections", "-c", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--config")
    ap.add_argument("--auth", action="store_true", help="require API keys (a static key in the config)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    text = auth_config() if args.auth else None
    measure(min(args.requests, 20_000), args.connections, args.config, text)  # warm-up
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        measure(args.requests, args.connections, args.config, text)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(30)
        return 0
    results = [measure(args.requests, args.connections, args.config, text) for _ in range(args.runs)]
    print(f"{min(results):.2f} us CPU per request (best of {args.runs}; all: "
          + ", ".join(f"{r:.2f}" for r in results) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
