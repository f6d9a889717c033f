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

A model is cached when ``[cache] enabled`` is true and its own policy (or the default) is enabled:
``[cache.default] enabled = false`` caches only the models listed with ``enabled = true``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from typing import Literal

import msgspec

__all__ = ["CacheConfig", "CachePolicy", "ModelCacheConfig", "Scope", "When", "cache_problems"]

Scope = Literal["key", "tenant", "global"]
When = Literal["always", "deterministic"]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


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


class ModelCacheConfig(_Base, frozen=True):
    """A model's policy: what it sets replaces the default's field."""

    enabled: bool | None = None
    ttl: float | None = None
    scope: Scope | None = None
    when: When | None = None
    max_entry_bytes: int | None = None

    def over(self, default: CachePolicy) -> CachePolicy:
        return CachePolicy(
            enabled=default.enabled if self.enabled is None else self.enabled,
            ttl=default.ttl if self.ttl is None else self.ttl,
            scope=default.scope if self.scope is None else self.scope,
            when=default.when if self.when is None else self.when,
            max_entry_bytes=default.max_entry_bytes if self.max_entry_bytes is None else self.max_entry_bytes,
        )


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
        return policy if policy.enabled else None


def _policy_problems(path: tuple[str | int, ...], p: CachePolicy | ModelCacheConfig) -> Iterator[
        tuple[tuple[str | int, ...], str]]:
    if p.ttl is not None and not (math.isfinite(p.ttl) and p.ttl > 0):
        yield (*path, "ttl"), f"must be a positive number of seconds, found {p.ttl}"
    if p.max_entry_bytes is not None and p.max_entry_bytes <= 0:
        yield (*path, "max_entry_bytes"), f"must be a positive number of bytes, found {p.max_entry_bytes}"


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
    for name, m in c.models.items():
        if name not in models:
            yield ("cache", "models", name), f"names a model that is not configured: {name!r}"
        yield from _policy_problems(("cache", "models", name), m)
