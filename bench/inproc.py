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
        elif not data.startswith(b"HTTP/1.1 200"):
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
    def __init__(self, loop: asyncio.AbstractEventLoop, total: int, stream_chunks: int) -> None:
        self.loop = loop
        self.stream = stream_chunks > 0
        self.request = STREAM_REQUEST if self.stream else REQUEST
        self.pieces = _stream_response(stream_chunks) if self.stream else [RESPONSE]
        self.total = total
        self.sent = 0
        self.responses = 0
        self.errors = 0
        self.done: asyncio.Future[None] = loop.create_future()


async def _run(
    config_text: str | None, config_path: str | None, total: int, connections: int, stream_chunks: int
) -> float:
    loop = asyncio.get_running_loop()
    config = load_config(config_path) if config_path else load_config_text(config_text or CONFIG)
    engine = Engine(config, worker=0)
    await engine.startup()
    driver = Driver(loop, total, stream_chunks)
    assert engine.runtime is not None
    for t in engine.runtime.translators.values():
        pool = t.transport
        if isinstance(pool, OriginPool):
            for _ in range(connections):
                up = UpstreamTransport(loop, driver.pieces)
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
        raise SystemExit(f"{driver.errors} responses were not 200")
    return elapsed * 1e6 / total


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def measure(
    total: int, connections: int, config_path: str | None = None, config_text: str | None = None,
    stream_chunks: int = 0,
) -> float:
    loop = _loop()
    try:
        return loop.run_until_complete(_run(config_text, config_path, total, connections, stream_chunks))
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", "-n", type=int, default=200_000)
    ap.add_argument("--connections", "-c", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--config")
    ap.add_argument("--auth", action="store_true", help="require API keys (a static key in the config)")
    ap.add_argument("--stream", type=int, default=0, metavar="CHUNKS",
                    help="streamed completions of CHUNKS content events each (0: non-stream)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    text = auth_config() if args.auth else None
    measure(min(args.requests, 20_000), args.connections, args.config, text, args.stream)  # warm-up
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        measure(args.requests, args.connections, args.config, text, args.stream)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(30)
        return 0
    results = [measure(args.requests, args.connections, args.config, text, args.stream)
               for _ in range(args.runs)]
    print(f"{min(results):.2f} us CPU per request (best of {args.runs}; all: "
          + ", ".join(f"{r:.2f}" for r in results) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
