"""The ``[cache]`` TOML schema and its semantic checks.

Configuration shape (embedded in the main configuration as ``[cache]``)::

    [cache]
    enabled = true
    memory_bytes = 67108864          # the worker's in-memory tier: its byte bound (0: no memory tier)
    redis = false                    # the shared tier; its server is redis_url, else the [store]'s
    redis_url = "redis://127.0.0.1:6379/0"  # or redis+sentinel://...: not a Redis Cluster
    redis_timeout = 0.25             # seconds a Redis call may take before the tier is bypassed
    compress_above = 1024            # values larger than this are stored zlib-compressed in Redis
    hits_count_tokens = false        # a hit charges tokens and spend like the call it replays

    [cache.default]                  # the policy of every model that names none
    ttl = 300.0
    scope = "tenant"                 # "key", "tenant" or "global"
    when = "always"                  # or "deterministic": only temperature 0 or a seed
    max_entry_bytes = 1048576

    [cache.models."gpt-4o-mini"]     # per model: any field of the default, the rest inherited
    ttl = 3600.0

    [cache.models."gpt-4o"]
    enabled = false

    [cache.models."mock-1".semantic]  # the semantic tier (off unless a policy has this table)
    embeddings_model = "mock-embed-1"   # a model the gateway serves with the embeddings endpoint
    dimensions = 256                    # asked of the embeddings model (absent: its own size)
    threshold = 0.95                    # the cosine similarity a neighbour needs to answer
    max_temperature = 0.0               # requests sampling hotter are not looked up (absent: 1.0)
    timeout = 1.0                       # seconds the embeddings call may take (past it: bypassed)
    max_entries = 10000                 # this model's vectors kept per worker (oldest dropped first)
    max_chars = 8192                    # longer prompts are not embedded

A policy's ``semantic`` table is taken whole: a model's own replaces the default's, and
``semantic = { enabled = false }`` turns it off for one model.

A model is cached when ``[cache] enabled`` is true and its own policy (or the default) is enabled:
``[cache.default] enabled = false`` caches only the models listed with ``enabled = true``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping
from typing import Literal

import msgspec

__all__ = [
    "CacheConfig", "CachePolicy", "ModelCacheConfig", "Scope", "SemanticPolicy", "When", "cache_problems",
]

Scope = Literal["key", "tenant", "global"]
When = Literal["always", "deterministic"]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class SemanticPolicy(_Base, frozen=True):
    """The semantic tier of one policy (``semantic = {...}``): answers by embedding similarity
    (gateway.cache.semantic)."""

    enabled: bool = True
    #: the model that embeds prompts: any model the gateway serves with the ``embeddings`` endpoint
    embeddings_model: str = ""
    #: the vectors' dimensions asked of it (None: the model's own; OpenAI's text-embedding-3 models and
    #: the mock take ``dimensions``)
    dimensions: int | None = None
    #: the cosine similarity (of normalised vectors) a stored neighbour needs to answer, in (0, 1]
    threshold: float = 0.95
    #: requests whose temperature is above this are not looked up (no temperature: 1.0, OpenAI's default)
    max_temperature: float = 0.0
    #: seconds the embeddings call may take; past it the tier is bypassed for the request
    timeout: float = 1.0
    #: the vectors of this model kept by each worker: the oldest go first past it
    max_entries: int = 10000
    #: prompts longer than this many characters are not embedded (bypassed)
    max_chars: int = 8192


class CachePolicy(_Base, frozen=True):
    """The default policy (``[cache.default]``)."""

    enabled: bool = True
    #: seconds an entry lives
    ttl: float = 300.0
    #: who shares entries: callers with the same key, the same tenant, or everyone
    scope: Scope = "tenant"
    #: "deterministic": only requests with temperature 0 or a seed are cached
    when: When = "always"
    #: the largest answer stored (bytes of its stored form)
    max_entry_bytes: int = 1024 * 1024
    #: the semantic tier (None: exact matches only)
    semantic: SemanticPolicy | None = None


class ModelCacheConfig(_Base, frozen=True):
    """A model's policy: what it sets replaces the default's field."""

    enabled: bool | None = None
    ttl: float | None = None
    scope: Scope | None = None
    when: When | None = None
    max_entry_bytes: int | None = None
    semantic: SemanticPolicy | None = None

    def over(self, default: CachePolicy) -> CachePolicy:
        return CachePolicy(
            enabled=default.enabled if self.enabled is None else self.enabled,
            ttl=default.ttl if self.ttl is None else self.ttl,
            scope=default.scope if self.scope is None else self.scope,
            when=default.when if self.when is None else self.when,
            max_entry_bytes=default.max_entry_bytes if self.max_entry_bytes is None else self.max_entry_bytes,
            semantic=self._semantic(default.semantic),
        )

    def _semantic(self, default: SemanticPolicy | None) -> SemanticPolicy | None:
        own = default if self.semantic is None else self.semantic
        return own if own is not None and own.enabled else None


class CacheConfig(_Base, frozen=True):
    enabled: bool = False
    #: the byte bound of each worker's memory tier (0: no memory tier)
    memory_bytes: int = 64 * 1024 * 1024
    #: the shared Redis tier
    redis: bool = False
    #: its server (None: the [store] url, which must then be a Redis URL)
    redis_url: str | None = None
    #: seconds a Redis call may take; past it the call is abandoned and the tier bypassed for this request
    redis_timeout: float = 0.25
    #: values larger than this many bytes are stored compressed in Redis
    compress_above: int = 1024
    #: key prefix in Redis (None: the [store] prefix)
    prefix: str | None = None
    #: a hit charges tokens and spend like the call it replays (request limits count it either way)
    hits_count_tokens: bool = False
    default: CachePolicy = msgspec.field(default_factory=CachePolicy)
    models: dict[str, ModelCacheConfig] = msgspec.field(default_factory=dict)

    def policy(self, model: str) -> CachePolicy | None:
        """The model's effective policy, or None when it is not cached."""
        if not self.enabled:
            return None
        own = self.models.get(model)
        policy = own.over(self.default) if own is not None else self.default
        if policy.semantic is not None and not policy.semantic.enabled:
            policy = msgspec.structs.replace(policy, semantic=None)
        return policy if policy.enabled else None

    def semantic_policies(self) -> list[SemanticPolicy]:
        """Every semantic table that is on (the default's and the models')."""
        found = [self.default.semantic, *(m.semantic for m in self.models.values())]
        return [s for s in found if s is not None and s.enabled]


def _policy_problems(path: tuple[str | int, ...], p: CachePolicy | ModelCacheConfig) -> Iterator[
        tuple[tuple[str | int, ...], str]]:
    if p.ttl is not None and not (math.isfinite(p.ttl) and p.ttl > 0):
        yield (*path, "ttl"), f"must be a positive number of seconds, found {p.ttl}"
    if p.max_entry_bytes is not None and p.max_entry_bytes <= 0:
        yield (*path, "max_entry_bytes"), f"must be a positive number of bytes, found {p.max_entry_bytes}"
    if p.semantic is not None:
        yield from _semantic_problems((*path, "semantic"), p.semantic)


def _semantic_problems(path: tuple[str | int, ...], s: SemanticPolicy) -> Iterator[
        tuple[tuple[str | int, ...], str]]:
    if not s.enabled:
        return
    if not s.embeddings_model:
        yield (*path, "embeddings_model"), "is required: the model that embeds prompts (embeddings endpoint)"
    if not (math.isfinite(s.threshold) and 0 < s.threshold <= 1):
        yield (*path, "threshold"), f"must be a cosine similarity above 0 and at most 1, found {s.threshold}"
    if not (math.isfinite(s.max_temperature) and s.max_temperature >= 0):
        yield (*path, "max_temperature"), f"must be 0 or more, found {s.max_temperature}"
    if not (math.isfinite(s.timeout) and s.timeout > 0):
        yield (*path, "timeout"), f"must be a positive number of seconds, found {s.timeout}"
    if s.dimensions is not None and not 1 <= s.dimensions <= 8192:
        yield (*path, "dimensions"), f"must be between 1 and 8192, found {s.dimensions}"
    if s.max_entries <= 0:
        yield (*path, "max_entries"), f"must be a positive number of entries, found {s.max_entries}"
    if s.max_chars <= 0:
        yield (*path, "max_chars"), f"must be a positive number of characters, found {s.max_chars}"


def _embeddings_problems(path: tuple[str | int, ...], s: SemanticPolicy | None,
                         models: Collection[str]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """The embeddings model must be configured and, when the models' endpoints are known, serve them."""
    if s is None or not s.enabled or not s.embeddings_model:
        return
    name = s.embeddings_model
    if name not in models:
        yield (*path, "semantic", "embeddings_model"), f"names a model that is not configured: {name!r}"
        return
    found = models[name] if isinstance(models, Mapping) else None
    endpoints = getattr(found, "endpoints", None)
    if endpoints is not None and "embeddings" not in endpoints:
        yield (*path, "semantic", "embeddings_model"), (
            f"model {name!r} does not serve the embeddings endpoint (its endpoints: {', '.join(endpoints)})")


def cache_problems(
    c: CacheConfig, models: Collection[str], store_url: str
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Problems the types cannot express, as (key path, message)."""
    if c.memory_bytes < 0:
        yield ("cache", "memory_bytes"), f"must be 0 (no memory tier) or more bytes, found {c.memory_bytes}"
    if not (math.isfinite(c.redis_timeout) and c.redis_timeout > 0):
        yield ("cache", "redis_timeout"), f"must be a positive number of seconds, found {c.redis_timeout}"
    if c.compress_above < 0:
        yield ("cache", "compress_above"), f"must be 0 or more bytes, found {c.compress_above}"
    if c.redis:
        url = c.redis_url or store_url
        if not url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")):
            where = "redis_url" if c.redis_url else "redis"
            yield ("cache", where), (
                f"the shared tier needs one Redis server or Sentinel: set redis_url (redis://, rediss://, "
                f"unix://, redis+sentinel:// or rediss+sentinel://), found {url.split('://', 1)[0]}://"
            )
    elif c.redis_url is not None:
        yield ("cache", "redis_url"), "is set but redis = false: set redis = true to use the shared tier"
    if c.enabled and not c.redis and c.memory_bytes == 0:
        yield ("cache", "memory_bytes"), "is 0 and redis = false: the cache has no tier to store in"
    yield from _policy_problems(("cache", "default"), c.default)
    yield from _embeddings_problems(("cache", "default"), c.default.semantic, models)
    for name, m in c.models.items():
        if name not in models:
            yield ("cache", "models", name), f"names a model that is not configured: {name!r}"
        yield from _policy_problems(("cache", "models", name), m)
        yield from _embeddings_problems(("cache", "models", name), m.semantic, models)
