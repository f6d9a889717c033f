"""Purging the cache and reading its hit ratios, for the admin API: what crosses from the admin process to
the workers' memory tiers, and back.

Theory of operation. The admin process never touches a worker's memory: it talks to the workers through
the node's directory (the one the supervisor names in ``GATEWAY_METRICS_DIR``, where the workers already
publish their metrics snapshots and key-table marks).

    who        | when                                   | does
    -----------+----------------------------------------+---------------------------------------------
    admin API  | POST /admin/v1/cache/purge             | appends one order (a JSON line: tenant, key
               |                                        | id, model, any of them null = every) to
               |                                        | ``cache-purges.jsonl`` under an exclusive
               |                                        | lock; with a Redis tier, deletes the matching
               |                                        | Redis entries (SCAN MATCH + UNLINK)
    worker     | every ``PURGE_POLL`` seconds           | reads the file past its offset; drops the
               |                                        | memory entries whose tag matches each order
    worker     | starts                                 | takes the file's current end as its offset
               |                                        | (its memory is empty: older orders are moot)
    admin API  | GET /admin/v1/cache/stats              | sums the cache counters of the workers'
               |                                        | metrics snapshots (the node's figures)

    admin API  | the same purge, with a Redis tier      | deletes the Redis entries first, then appends
               |                                        | the order to the Redis stream
               |                                        | ``<prefix>:cache-purges`` (capped, ~10,000)
    worker     | every ``PURGE_POLL`` seconds, with a   | reads the stream past the last id it read
               | Redis tier                             | (XREAD); drops what each order matches
    worker     | starts, with a Redis tier              | reads the orders of the last minute too

A purge is in force at once in Redis, then on every node's memory tiers within ``PURGE_POLL`` seconds:
this node's through the file, every node's (this one again: a purge is idempotent) through the Redis
stream. A node that cannot reach Redis at the time reads the orders it missed when it can again (as long
as the stream still holds them); one that starts applies the orders of the last minute again (its memory
is empty: harmless, and it covers clocks apart and a slow first connection). Only whole
lines are read from the file: a line still being written is read on the next poll.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Any

import msgspec

__all__ = [
    "PURGE_FILE", "PURGE_POLL", "CachePurge", "CachePurged", "CacheStatsView", "PurgeOrder", "PurgeWatch",
    "append_order", "decode_order", "node_stats",
]

PURGE_FILE = "cache-purges.jsonl"
#: seconds between two reads of the purge log by a worker
PURGE_POLL = 0.5


class PurgeOrder(msgspec.Struct, frozen=True, omit_defaults=True):
    """Which entries to drop: those of this tenant, written by this key, for this model (None: any)."""

    tenant: str | None = None
    key_id: str | None = None
    model: str | None = None

    def matches(self, tag: Any) -> bool:
        """``tag``: an entry's (tenant, key id, model)."""
        if not isinstance(tag, tuple) or len(tag) != 3:
            return True
        return ((self.tenant is None or tag[0] == self.tenant)
                and (self.key_id is None or tag[1] == self.key_id)
                and (self.model is None or tag[2] == self.model))


_Id = msgspec.Meta(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]*$")


class CachePurge(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to purge: entries of a tenant, of an API key (written by its requests), of a model, or any
    combination; ``all = true`` (and nothing else) purges every entry. A tenant admin purges within its
    own tenant only."""

    tenant: str | None = None
    key_id: str | None = None
    model: str | None = None
    all: bool = False


class CachePurged(msgspec.Struct, frozen=True, kw_only=True):
    #: the order, as the workers apply it
    tenant: str | None
    key_id: str | None
    model: str | None
    #: this node's workers apply it to their memory tiers within this many seconds
    memory_within_seconds: float
    #: entries deleted from the Redis tier (null: the cache has no Redis tier, or it was unavailable)
    redis_deleted: int | None


class CacheStatsView(msgspec.Struct, frozen=True, kw_only=True):
    """This node's cache counters, summed over its workers since they started."""

    enabled: bool
    hits_memory: int
    hits_redis: int
    #: answered by a neighbour (the semantic tier)
    hits_semantic: int
    misses: int
    bypasses: int
    #: hits / (hits + misses); null before the first lookup
    hit_ratio: float | None
    stores: int
    redis_errors: int
    memory_bytes: int
    memory_entries: int


_encode_order = msgspec.json.Encoder().encode
_decode_order = msgspec.json.Decoder(PurgeOrder).decode


def decode_order(text: bytes) -> PurgeOrder | None:
    """A purge order from its JSON (None: not one)."""
    try:
        return _decode_order(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def append_order(node_dir: str, order: PurgeOrder) -> None:
    """Append ``order`` to the node's purge log (a whole line, under an exclusive lock)."""
    path = os.path.join(node_dir, PURGE_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, _encode_order(order) + b"\n")
    finally:
        os.close(fd)


class PurgeWatch:
    """A worker's reader of the node's purge log (sans-IO apart from reading the file)."""

    __slots__ = ("offset", "path")

    def __init__(self, node_dir: str) -> None:
        self.path = os.path.join(node_dir, PURGE_FILE)
        try:
            self.offset = os.stat(self.path).st_size
        except FileNotFoundError:
            self.offset = 0

    def poll(self) -> list[PurgeOrder]:
        """The orders appended since the last poll."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # the log was replaced: start over from its beginning
            self.offset = 0
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        end = data.rfind(b"\n") + 1
        self.offset += end
        orders = []
        for line in data[:end].splitlines():
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                orders.append(_decode_order(line))
        return orders


def node_stats(node_dir: str | None, enabled: bool) -> CacheStatsView:
    """This node's cache counters, from its workers' metrics snapshots."""
    from gateway.observe.metrics import read_node_totals

    totals = read_node_totals(node_dir) if node_dir else {}

    def total(name: str, *labels: str) -> int:
        return int(sum(v for (n, ls), v in totals.items() if n == name and ls[:len(labels)] == labels))

    hits_memory = total("gateway_cache_requests_total", "hit", "memory")
    hits_redis = total("gateway_cache_requests_total", "hit", "redis")
    hits_semantic = total("gateway_cache_requests_total", "hit", "semantic")
    misses = total("gateway_cache_requests_total", "miss")
    hits = hits_memory + hits_redis + hits_semantic
    looked = hits + misses
    return CacheStatsView(
        enabled=enabled, hits_memory=hits_memory, hits_redis=hits_redis, hits_semantic=hits_semantic,
        misses=misses, bypasses=total("gateway_cache_requests_total", "bypass"),
        hit_ratio=hits / looked if looked else None,
        stores=total("gateway_cache_stores_total"), redis_errors=total("gateway_cache_errors_total"),
        memory_bytes=total("gateway_cache_memory_bytes"),
        memory_entries=total("gateway_cache_memory_entries"),
    )


async def purge(config: Any, node_dir: str | None, principal: Any, body: CachePurge) -> CachePurged:
    """The admin API's purge: the order checked against the caller, sent to this node's workers, and the
    matching Redis entries deleted."""
    from gateway.admin.errors import AdminError

    given = body.tenant is not None or body.key_id is not None or body.model is not None
    if given == body.all:
        raise AdminError(400, "invalid_request",
                         "name a tenant, a key_id or a model to purge, or set all = true (alone)")
    tenant = body.tenant
    if principal.tenant is not None:  # a tenant admin: its own tenant only
        if tenant is not None and tenant != principal.tenant:
            raise AdminError(404, "not_found", f"no tenant {tenant}")
        tenant = principal.tenant
    if body.model is not None and body.model not in config.models:
        raise AdminError(404, "not_found", f"no model {body.model}")
    order = PurgeOrder(tenant, body.key_id, body.model)
    deleted = await _purge_redis(config, order)  # Redis first: a memory tier purged after cannot refill
    if node_dir is not None:
        append_order(node_dir, order)
    return CachePurged(tenant=order.tenant, key_id=order.key_id, model=order.model,
                       memory_within_seconds=PURGE_POLL, redis_deleted=deleted)


async def _purge_redis(config: Any, order: PurgeOrder) -> int | None:
    """Delete the order's Redis entries, then publish it to the other nodes (their workers read the purge
    stream, ``CacheService._apply_purges``)."""
    c = config.cache
    if not (c.enabled and c.redis):
        return None
    from gateway.cache.redis_tier import RedisTier, TierDown

    url, prefix = c.redis_url or config.store.url, c.prefix or config.store.prefix
    tier = RedisTier(url, prefix, max(c.redis_timeout, 2.0), c.compress_above, retry_after=0.0)
    try:
        deleted = await tier.purge(tier.purge_pattern(order.tenant, order.key_id, order.model))
        await tier.publish_purge(_encode_order(order))
        return deleted
    except TierDown:
        return None
    finally:
        await tier.close()
