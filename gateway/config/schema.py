"""The TOML schema, as msgspec Structs. Unknown keys are errors (``forbid_unknown_fields``).

Durations are seconds (float); sizes are bytes (int). Every default here is documented in
``docs/configuration.md``; keep the two in step.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "Config",
    "LogConfig",
    "MockConfig",
    "ModelConfig",
    "ProviderConfig",
    "ServerConfig",
    "UpstreamConfig",
]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class ServerConfig(_Base, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    #: worker processes; 0 = one per CPU core
    workers: int = 0
    #: front end: "native" (uvloop Protocol + Cython parser) or "granian" (RSGI; HTTP/2, TLS)
    frontend: Literal["native", "granian"] = "native"
    max_header_bytes: int = 16384
    max_body_bytes: int = 4 * 1024 * 1024
    #: open client connections per worker; further connections are closed at accept
    max_connections: int = 10000
    #: a client must send a complete request head within this time (slow clients are cut)
    header_timeout: float = 10.0
    #: and a complete body within this time after the head
    body_timeout: float = 30.0
    #: idle keep-alive connections are closed after this time
    keepalive_timeout: float = 75.0
    #: on SIGTERM, in-flight requests and streams get this long to finish
    drain_timeout: float = 30.0
    #: header carrying the gateway's own processing time in milliseconds
    overhead_header: str = "x-gateway-overhead-ms"
    #: granian front end only: TLS certificate and key (PEM) to serve HTTPS
    tls_cert: str | None = None
    tls_key: str | None = None


class UpstreamConfig(_Base, frozen=True):
    """Defaults for every provider's connection pool; a provider may override each."""

    connect_timeout: float = 10.0
    #: longest silence between two reads from the upstream (time to first byte included)
    read_timeout: float = 120.0
    #: connections per upstream origin per worker
    pool_size: int = 512
    #: how long a request may wait for a free pooled connection
    pool_timeout: float = 10.0
    #: idle pooled connections are closed after this time
    idle_timeout: float = 60.0
    verify_tls: bool = True
    #: a CA bundle (PEM) to verify upstream certificates with, instead of the system store
    ca_file: str | None = None


class MockConfig(_Base, frozen=True):
    """Behaviour of the built-in deterministic mock provider."""

    #: delay before the response (or the first chunk) in milliseconds
    latency_ms: float = 0.0
    #: number of content chunks in a streamed response
    stream_chunks: int = 8
    #: delay between streamed chunks in milliseconds
    chunk_delay_ms: float = 0.0
    #: words in a completion when the request gives no max_tokens
    completion_words: int = 12
    #: embedding dimensions when the request does not ask for some
    embedding_dimensions: int = 16
    #: model ids the mock lists on /v1/models
    models: list[str] = msgspec.field(default_factory=lambda: ["mock-1", "mock-embed-1"])


class ProviderConfig(_Base, frozen=True):
    #: "openai": any OpenAI-compatible API; "mock": the built-in deterministic mock, in process
    type: Literal["openai", "mock"]
    #: base URL including the version prefix, e.g. "https://api.openai.com/v1"
    base_url: str | None = None
    #: credential by reference: "env:NAME" or "file:PATH" (never a literal)
    api_key: str | None = None
    #: extra headers sent upstream with every request
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    connect_timeout: float | None = None
    read_timeout: float | None = None
    pool_size: int | None = None
    verify_tls: bool | None = None
    ca_file: str | None = None
    mock: MockConfig = msgspec.field(default_factory=MockConfig)


class ModelConfig(_Base, frozen=True):
    #: name of a [providers.*] table
    provider: str
    #: the model id sent upstream (default: the model's own name)
    upstream_model: str | None = None
    #: endpoints this model serves
    endpoints: list[Literal["chat", "completions", "embeddings"]] = msgspec.field(
        default_factory=lambda: ["chat", "completions"]
    )
    #: shown on /v1/models
    owned_by: str = "llm-gateway"


class LogConfig(_Base, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: write one JSON call record per request to stderr (batched, off the request path)
    call_records: bool = True


class Config(_Base, frozen=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    upstream: UpstreamConfig = msgspec.field(default_factory=UpstreamConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    providers: dict[str, ProviderConfig] = msgspec.field(default_factory=dict)
    models: dict[str, ModelConfig] = msgspec.field(default_factory=dict)
