"""The call record: what one request's JSON line holds (docs/observability.md lists the fields)."""

from __future__ import annotations

import msgspec

__all__ = ["CallRecord"]


class CallRecord(msgspec.Struct, omit_defaults=True, gc=False):
    ts: float
    request_id: str
    method: str
    path: str
    status: int
    duration_ms: float
    overhead_ms: float
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    upstream_status: int | None = None
    upstream_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    #: of ``prompt_tokens``: read from the provider's prompt cache, and written to it (when reported)
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    error_code: str | None = None
    error: str | None = None
    worker: int | None = None
    #: the caller's key id and tenant (never the key itself), and the key's labels
    key_id: str | None = None
    tenant: str | None = None
    labels: dict[str, str] | None = None
    #: routed models: the deployment that answered (or failed last), and the number of attempts
    deployment: str | None = None
    attempts: int | None = None
    #: USD, from the pricing table and the usage
    cost_usd: float | None = None
    #: "chat", "completions", "embeddings" (none for answers without an endpoint, e.g. 404)
    endpoint: str | None = None
    #: the client's API shape: "openai", "anthropic", "openai_responses"
    dialect: str | None = None
    #: streams: ms from the request's arrival to the start of the streamed answer
    ttft_ms: float | None = None
    #: of the answer: reasoning tokens (when the provider reports them)
    reasoning_tokens: int | None = None
    #: the response cache: "hit", "miss" or "bypass" (absent: the model is not cached), and on a hit the
    #: USD the original call cost
    cache: str | None = None
    cost_saved_usd: float | None = None
    #: a prompt call (docs/prompts.md): the prompt and the version that served it
    prompt: str | None = None
    prompt_version: str | None = None
    #: ``[records] bodies``: the bodies as text, key material and configured fields redacted, capped
    request_body: str | None = None
    response_body: str | None = None
    #: which bodies were cut at ``max_body_bytes``
    truncated: list[str] | None = None
    #: a semantic cache hit (``cache: "hit"``): the cosine similarity of the neighbour that answered
    cache_similarity: float | None = None
