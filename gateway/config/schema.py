"""The TOML schema, as msgspec Structs. Unknown keys are errors (``forbid_unknown_fields``).

Durations are seconds (float); sizes are bytes (int). Every default here is documented in
``docs/configuration.md``; keep the two in step.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from gateway.cache.config import CacheConfig
from gateway.guard.config import GuardrailsConfig
from gateway.limits.policy import LimitsConfig
from gateway.limits.pricing import PriceConfig
from gateway.observe.anomaly import AnomalyConfig
from gateway.observe.config import RecordsConfig
from gateway.observe.tracing import TracingConfig
from gateway.observe.usage import UsageConfig
from gateway.prompts.config import PromptConfig
from gateway.routing.config import (
    BreakerConfig,
    DeploymentConfig,
    FallbackCondition,
    HealthCheckConfig,
    RetryConfig,
    RoutingConfig,
    Strategy,
)

__all__ = [
    "AdminConfig",
    "AuthConfig",
    "Config",
    "ImagesConfig",
    "LogConfig",
    "MetricsConfig",
    "MockConfig",
    "ModelConfig",
    "ProviderConfig",
    "ResponsesConfig",
    "ServerConfig",
    "StaticKeyConfig",
    "StoreConfig",
    "TenantConfig",
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
    #: native front end: the first part of drain_timeout during which a draining worker still accepts and
    #: serves new requests while /readyz answers 503, so load balancers that probe it stop sending first
    drain_delay: float = 0.0
    #: header carrying the gateway's own processing time in milliseconds
    overhead_header: str = "x-gateway-overhead-ms"
    #: granian front end only: TLS certificate and key (PEM) to serve HTTPS
    tls_cert: str | None = None
    tls_key: str | None = None
    #: reload when the config file (or a ``file:`` credential) changes, as on SIGHUP (native front end)
    watch_config: bool = False
    #: how often the watch looks; a change is applied once it has held still this long
    watch_interval: float = 1.0
    #: a worker whose event loop has not beaten for this long is replaced (0: never; native front end)
    worker_heartbeat_timeout: float = 5.0


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
    #: the largest non-stream answer body gathered from an upstream (502 beyond it)
    max_answer_bytes: int = 64 * 1024 * 1024
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
    #: "openai": any OpenAI-compatible API; "azure": Azure OpenAI; "anthropic": the Anthropic Messages API
    #: (chat only; docs/providers.md); "gemini": the Gemini API; "vertex": Vertex AI (Gemini and Claude);
    #: "bedrock": Amazon Bedrock (Converse); "cohere": Cohere v2; "mock": the built-in deterministic mock
    type: Literal["openai", "azure", "mock", "anthropic", "gemini", "vertex", "bedrock", "cohere"]
    #: base URL including the version prefix, e.g. "https://api.openai.com/v1"; for "azure" the resource
    #: endpoint, e.g. "https://NAME.openai.azure.com"
    base_url: str | None = None
    #: credential by reference: "env:NAME" or "file:PATH" (never a literal); "azure" sends it as api-key
    api_key: str | None = None
    #: "openai" only: a known OpenAI-compatible provider (docs/providers-openai-compatible.md): its default
    #: base_url and its request-body quirks
    preset: str | None = None
    #: "azure" only: "deployments" (/openai/deployments/{upstream_model}/...) or "v1" (/openai/v1/...)
    azure_path: Literal["deployments", "v1"] = "deployments"
    #: "azure" only: the api-version query parameter (default on the deployments path: 2024-10-21)
    api_version: str | None = None
    #: "azure" only: an Entra ID access token by reference, sent as a bearer token (instead of api_key)
    azure_ad_token: str | None = None
    #: extra headers sent upstream with every request
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    connect_timeout: float | None = None
    read_timeout: float | None = None
    pool_size: int | None = None
    max_answer_bytes: int | None = None
    verify_tls: bool | None = None
    ca_file: str | None = None
    mock: MockConfig = msgspec.field(default_factory=MockConfig)
    #: anthropic: the ``anthropic-version`` header sent upstream
    anthropic_version: str = "2023-06-01"
    #: anthropic: beta features, sent as ``anthropic-beta`` (comma-joined)
    beta: list[str] = msgspec.field(default_factory=list)
    #: client headers passed upstream; default by type (docs/providers.md), [] for none
    forward_headers: list[str] | None = None
    #: fetch the http(s) image URLs of chat requests for this provider's models and send them inline
    #: (base64), for upstreams that cannot fetch them; bounded and checked by ``[images]``
    fetch_images: bool = False
    #: anthropic: the client's temperature/top_p/top_k sent upstream: "all", "single" (temperature or
    #: top_p, not both) or "none"; a model's own ``sampling`` overrides it
    sampling: Literal["all", "single", "none"] | None = None
    #: vertex: the Google Cloud project (default: the credentials' own project)
    project: str | None = None
    #: vertex: the region ("us-central1", "europe-west4", ...) or "global" (default "us-central1")
    location: str | None = None
    #: vertex: a Google credentials JSON file (service-account key, workload identity federation);
    #: default: Application Default Credentials (GKE workload identity, GOOGLE_APPLICATION_CREDENTIALS)
    credentials_file: str | None = None
    #: bedrock: the AWS region (default: AWS_REGION / AWS_DEFAULT_REGION); credentials come from
    #: botocore's chain (docs/providers.md), a shared-file ``aws_profile``, or the static keys below
    region: str | None = None
    aws_profile: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None


class ModelConfig(_Base, frozen=True):
    #: name of a [providers.*] table: the model's one deployment (or list several in ``deployments``)
    provider: str | None = None
    #: the model id sent upstream (default: the model's own name)
    upstream_model: str | None = None
    #: endpoints this model serves
    endpoints: list[Literal["chat", "completions", "embeddings"]] = msgspec.field(
        default_factory=lambda: ["chat", "completions"]
    )
    #: shown on /v1/models
    owned_by: str = "llm-gateway"
    #: "required": a tenant must subscribe and an operator approve before its keys may call this model
    approval: Literal["none", "required"] = "none"
    # -- routing (docs/routing.md); a model with one ``provider`` and none of these is proxied directly
    #: the model's deployments (instead of ``provider``/``upstream_model``)
    deployments: list[DeploymentConfig] = msgspec.field(default_factory=list)
    strategy: Strategy = "weighted"
    #: consistent_hash: "user", "key_id" or "header:<name>"
    hash_on: str = "user"
    #: split: deployment name -> percent (sums to 100)
    split: dict[str, float] = msgspec.field(default_factory=dict)
    #: other models to try, in order, when this one fails under ``fallback_on``
    fallbacks: list[str] = msgspec.field(default_factory=list)
    fallback_on: list[FallbackCondition] = msgspec.field(
        default_factory=lambda: ["429", "5xx", "timeout", "context_length"]
    )
    #: seconds for the whole request, every attempt and fallback included
    deadline: float | None = None
    #: default: 3 attempts for a model with ``deployments``, 1 for a single ``provider``
    retry: RetryConfig | None = None
    #: default: on for a model with ``deployments``, off for a single ``provider``
    breaker: BreakerConfig | None = None
    health: HealthCheckConfig | None = None
    #: its Anthropic deployments' sampling parameters (as the provider's ``sampling``; default: theirs)
    sampling: Literal["all", "single", "none"] | None = None

    def routing(self) -> RoutingConfig:
        """The routing of this model: its deployments (or its one provider) and the policies, defaults
        filled in."""
        single = not self.deployments
        deployments = self.deployments or (
            [DeploymentConfig(provider=self.provider, upstream_model=self.upstream_model)]
            if self.provider is not None else []
        )
        return RoutingConfig(
            deployments=deployments, strategy=self.strategy, hash_on=self.hash_on, split=self.split,
            fallbacks=self.fallbacks, fallback_on=self.fallback_on, deadline=self.deadline,
            retry=self.retry or (RetryConfig(max_attempts=1) if single else RetryConfig()),
            breaker=self.breaker or (BreakerConfig(enabled=False) if single else BreakerConfig()),
            health=self.health,
        )

    def direct(self) -> bool:
        """True when the model needs no router: one provider, one attempt, no breaker, health check,
        fallback or deadline (# PERF: such a model is proxied with no routing work per request)."""
        return (
            not self.deployments and self.provider is not None and not self.fallbacks
            and self.deadline is None and self.health is None
            and (self.retry is None or self.retry.max_attempts == 1)
            and (self.breaker is None or not self.breaker.enabled)
        )


class LogConfig(_Base, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: write one JSON call record per request to stderr (batched, off the request path)
    call_records: bool = True


def _all() -> list[str]:
    return ["*"]


class StaticKeyConfig(_Base, frozen=True):
    """An API key declared in the TOML file (GitOps). Only its digest is written down; the admin API
    shows such keys but refuses to change them."""

    #: the key id: the ``<id>`` in ``gw-<id>-<secret>``
    id: str
    #: digest of the secret, ``sha256:<hex>`` or ``hmac-sha256:<hex>`` (``gateway keys digest`` makes one)
    digest: str
    #: the tenant the key belongs to (a [tenants.*] table or a tenant in the store)
    tenant: str
    name: str = ""
    #: model names or glob patterns this key may call
    models: list[str] = msgspec.field(default_factory=_all)
    #: endpoints this key may call: "chat", "completions", "embeddings", "messages", "models", "responses",
    #: or "*"
    endpoints: list[str] = msgspec.field(default_factory=_all)
    #: Unix seconds after which the key stops working
    expires_at: float | None = None
    #: names of a limit policy and a budget (see the limits documentation)
    limit_policy: str | None = None
    budget: str | None = None
    #: free-form labels copied into every call record of this key
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    #: data residency (docs/routing.md): served only by deployments in one of these regions (default:
    #: any region), carrying every one of these tags; within the tenant's, never wider
    regions: list[str] | None = None
    required_tags: list[str] = msgspec.field(default_factory=list)


class TenantConfig(_Base, frozen=True):
    """A tenant declared in the TOML file; tenants may also be created through the admin API."""

    name: str = ""
    #: model names or glob patterns the tenant's keys may call at most
    models: list[str] = msgspec.field(default_factory=_all)
    limit_policy: str | None = None
    budget: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    #: data residency of every key of the tenant (docs/routing.md): deployment regions, required tags
    regions: list[str] | None = None
    required_tags: list[str] = msgspec.field(default_factory=list)


class AuthConfig(_Base, frozen=True):
    #: refuse data-plane requests without a valid API key (false: an open gateway, the embedded default)
    required: bool = False
    #: secret mixed into key digests (HMAC-SHA256), by reference ("env:NAME" or "file:PATH");
    #: without one, digests are plain SHA-256
    pepper: str | None = None
    #: static keys (digest form only)
    keys: list[StaticKeyConfig] = msgspec.field(default_factory=list)
    #: each worker re-reads the whole key table this often, besides acting on change notifications
    resync_interval: float = 30.0
    #: default grace period (seconds) during which a rotated key's old secret keeps working
    rotation_grace: float = 86400.0


class StoreConfig(_Base, frozen=True):
    """The durable store of keys, tenants, subscriptions, audit log and spend."""

    #: "sqlite://FILE" (relative paths are relative to ``data_dir``),
    #: "sqlite:///ABSOLUTE/FILE", or "redis://host:port/db" for a cluster
    #: ("redis+sentinel://host:26379,.../MASTER/db" behind Sentinel, "redis+cluster://host:port,..."
    #: for Redis Cluster; gateway/redisconn.py)
    url: str = "sqlite://gateway.db"
    #: Redis key prefix, so several deployments can share one server
    prefix: str = "gw"
    #: how soon (seconds) a change made elsewhere is noticed at the latest
    poll_interval: float | None = None
    #: SQLite: how long a write waits for another process's lock
    busy_timeout: float = 5.0
    #: the directory of the node's state files (the SQLite store, the limits table, the breaker file);
    #: relative to the config file's directory. Default: that directory when writable, else the user's
    #: state directory ($XDG_STATE_HOME or ~/.local/state, then llm-gateway)
    data_dir: str | None = None
    #: Redis: replicas that must confirm each key/tenant/subscription write (WAIT) before it is answered;
    #: none: 1 behind Sentinel, 0 on one server
    min_replicas_acked: int | None = None
    #: Redis: seconds a write waits for those confirmations before it is answered 503
    replica_ack_timeout: float = 1.0


class AdminConfig(_Base, frozen=True):
    """The admin API: its own listener, its own credentials."""

    #: serve the admin API (it needs operator_token or tenant_tokens to be of use)
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8081
    #: digest of the operator bearer token (manages every tenant): ``sha256:<hex>``
    operator_token: str | None = None
    #: tenant id -> digest of that tenant's admin bearer token (manages only that tenant)
    tenant_tokens: dict[str, str] = msgspec.field(default_factory=dict)
    #: how long a write waits for every worker of the node to apply it before answering (seconds)
    apply_timeout: float = 5.0


class MetricsConfig(_Base, frozen=True):
    """The Prometheus endpoint on the data-plane port, node-wide across workers (docs/metrics.md)."""

    #: answer scrapes at ``path`` (false: 404 there, and the workers write no snapshots)
    enabled: bool = True
    path: str = "/metrics"
    #: digest (``sha256:<hex>``) of the bearer token a scrape must present; none: no token needed
    token: str | None = None
    #: seconds between two writes of a worker's snapshot: other workers' figures are at most this old
    interval: float = 1.0
    #: the node's snapshot directory (default: a fresh one under the system temp directory)
    dir: str | None = None
    #: opt-in labels of the request metrics: "tenant", "key" (one series per key: mind the cardinality)
    labels: list[str] = msgspec.field(default_factory=list)


def _image_types() -> list[str]:
    return ["image/png", "image/jpeg", "image/gif", "image/webp"]


class ImagesConfig(_Base, frozen=True):
    """How the gateway fetches image URLs for providers with ``fetch_images`` (docs/providers.md)."""

    #: the largest image fetched, in bytes
    max_bytes: int = 5 * 1024 * 1024
    #: seconds for one image: resolving, connecting, redirects and the body
    timeout: float = 10.0
    #: the most images fetched for one request
    max_images: int = 20
    max_redirects: int = 3
    #: content types accepted (the answer's content-type, checked against the bytes)
    allowed_types: list[str] = msgspec.field(default_factory=_image_types)
    #: fetch from private, loopback, link-local and other non-public addresses too: for tests only
    allow_private: bool = False


class ResponsesConfig(_Base, frozen=True):
    """The Responses API's stored responses (docs/dialects.md#openai-responses)."""

    #: seconds a stored response (``store``, the default) stays readable and continuable (default 30 days)
    retention: float = 2_592_000.0


class Config(_Base, frozen=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    upstream: UpstreamConfig = msgspec.field(default_factory=UpstreamConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    providers: dict[str, ProviderConfig] = msgspec.field(default_factory=dict)
    models: dict[str, ModelConfig] = msgspec.field(default_factory=dict)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    tenants: dict[str, TenantConfig] = msgspec.field(default_factory=dict)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    #: rate limits, token limits and budgets (docs/limits-and-budgets.md)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    #: model prices in USD per 1M tokens, over the shipped table
    pricing: dict[str, PriceConfig] = msgspec.field(default_factory=dict)
    #: the Prometheus metrics export (docs/metrics.md)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    #: image URLs fetched for providers with ``fetch_images``
    images: ImagesConfig = msgspec.field(default_factory=ImagesConfig)
    #: the Responses API's stored responses
    responses: ResponsesConfig = msgspec.field(default_factory=ResponsesConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    #: call records: sinks, bodies (docs/observability.md)
    records: RecordsConfig = msgspec.field(default_factory=RecordsConfig)
    #: usage roll-ups in the store (docs/observability.md#usage-analytics)
    usage: UsageConfig = msgspec.field(default_factory=UsageConfig)
    #: the per-key anomaly signal (docs/observability.md#per-key-anomalies)
    anomaly: AnomalyConfig = msgspec.field(default_factory=AnomalyConfig)
    #: OpenTelemetry spans per request (docs/observability.md#traces)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    #: guardrails on prompts and answers (docs/guardrails.md)
    guardrails: GuardrailsConfig = msgspec.field(default_factory=GuardrailsConfig)
    #: prompt templates published as APIs (docs/prompts.md)
    prompts: dict[str, PromptConfig] = msgspec.field(default_factory=dict)
