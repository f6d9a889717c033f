"""``gateway mock``: the deterministic mock LLM served on the native front end.

Tests and benchmarks use it as a real upstream over TCP. ``--workers N`` forks N processes sharing the
port through SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from gateway.config.schema import Config, MockConfig, ServerConfig

__all__ = ["run_mock_server"]


def _serve_one(host: str, port: int, mock: MockConfig) -> int:
    from gateway.providers.mock import MockApp
    from gateway.server.worker import _new_loop, bind_socket, serve_app

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    # generous limits: the mock must never be what a test or benchmark measures
    config = Config(server=ServerConfig(
        host=host, port=port, max_body_bytes=64 * 1024 * 1024, max_connections=100000,
        keepalive_timeout=300.0, drain_timeout=5.0,
    ))
    sock = bind_socket(host, port)
    try:
        loop.run_until_complete(serve_app(MockApp(mock), config, sock=sock))
    finally:
        loop.close()
    return 0


def run_mock_server(
    *,
    host: str = "127.0.0.1",
    port: int = 9000,
    workers: int = 1,
    latency_ms: float = 0.0,
    stream_chunks: int = 8,
    chunk_delay_ms: float = 0.0,
) -> int:
    mock = MockConfig(latency_ms=latency_ms, stream_chunks=stream_chunks, chunk_delay_ms=chunk_delay_ms)
    print(f"gateway mock: serving on http://{host}:{port} with {workers} worker(s)", file=sys.stderr,
          flush=True)
    if workers <= 1:
        return _serve_one(host, port, mock)
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _serve_one(host, port, mock)
            finally:
                os._exit(code)
        pids.append(pid)

    def forward(signum: int, frame: object) -> None:
        for p in pids:
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in pids:
        while True:
            try:
                os.waitpid(p, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    return 0
