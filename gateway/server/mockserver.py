"""``gateway mock``: the deterministic mock LLM served on the native front end.

Tests and benchmarks use it as a real upstream over TCP. ``--workers N`` forks N processes sharing the
port through SO_REUSEPORT. ``--dialect`` picks the wire format: ``openai`` (``MockApp``), ``anthropic``
(``mock_anthropic.AnthropicMockApp``), ``azure`` (``mock_azure.AzureMockApp``) or ``gemini``
(``mock_gemini.GeminiMockApp``, with Vertex AI's paths); ``--api-key`` makes
the mock check the dialect's credential header.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING, Final

from gateway.config.schema import Config, MockConfig, ServerConfig

if TYPE_CHECKING:
    from gateway.providers.mock import MockApp

__all__ = ["DIALECTS", "run_mock_server"]

#: the wire formats ``gateway mock --dialect`` speaks
DIALECTS: Final = ("openai", "anthropic", "azure", "gemini", "bedrock", "cohere")


def _app(mock: MockConfig, dialect: str, api_key: str | None) -> MockApp:
    if dialect == "anthropic":
        from gateway.providers.mock_anthropic import AnthropicMockApp

        return AnthropicMockApp(mock, api_key=api_key)
    if dialect == "gemini":
        from gateway.providers.mock_gemini import GeminiMockApp

        return GeminiMockApp(mock, api_key=api_key)
    if dialect == "azure":
        from gateway.providers.mock_azure import AzureMockApp

        return AzureMockApp(mock, api_key=api_key)
    if dialect == "cohere":
        from gateway.providers.mock_cohere import CohereMockApp

        return CohereMockApp(mock, api_key=api_key)
    if dialect == "bedrock":
        from gateway.providers.mock_bedrock import BedrockMockApp

        return BedrockMockApp(mock, api_key=api_key)
    from gateway.providers.mock import MockApp

    return MockApp(mock, api_key=api_key)


def _serve_one(host: str, port: int, mock: MockConfig, dialect: str, api_key: str | None) -> int:
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
        loop.run_until_complete(serve_app(_app(mock, dialect, api_key), config, sock=sock))
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
    dialect: str = "openai",
    api_key: str | None = None,
) -> int:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown mock dialect {dialect!r}")
    mock = MockConfig(latency_ms=latency_ms, stream_chunks=stream_chunks, chunk_delay_ms=chunk_delay_ms)
    print(f"gateway mock: serving the {dialect} dialect on http://{host}:{port} with {workers} worker(s)",
          file=sys.stderr, flush=True)
    if workers <= 1:
        return _serve_one(host, port, mock, dialect, api_key)
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _serve_one(host, port, mock, dialect, api_key)
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
