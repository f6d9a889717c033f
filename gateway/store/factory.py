"""Open the store a URL names: ``sqlite:///path/to/file.db`` or ``redis://host:port/db``.

URL forms:

- ``sqlite://`` followed by a file path: ``sqlite:///var/lib/gateway/gateway.db`` (absolute),
  ``sqlite://gateway.db`` (relative to the working directory). The file and its tables are created on
  first open.
- ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path/to/redis.sock?db=0``,
  as redis-py reads them; ``redis+sentinel://[:password@]host:26379,host2:26379/MASTER[/db]``: the
  master a group of sentinels names, followed through failovers; ``redis+cluster://host:port,...``: a
  Redis Cluster (see ``gateway.redisconn``). An extra
  ``prefix=NAME`` query parameter sets the key prefix (default ``gw``), so that several deployments may
  share one server.
"""

from __future__ import annotations

import urllib.parse

import msgspec

from gateway.redisconn import SCHEMES, parse_url
from gateway.store.base import InvalidArgument, Store

__all__ = ["REDIS_SCHEMES", "SQLITE_SCHEME", "StoreOptions", "open_store"]

SQLITE_SCHEME = "sqlite"
#: the Redis URL schemes (one server, Sentinel, Cluster: see gateway.redisconn)
REDIS_SCHEMES = SCHEMES


class StoreOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the store is and how to use it; meant to be embedded in the config schema as ``[store]``."""

    #: ``sqlite:///path/to/file.db`` or ``redis://host:port/db`` (see the module docstring)
    url: str
    #: Redis key prefix (also the hash tag of the records); a ``prefix=`` in the URL wins
    prefix: str = "gw"
    #: how late a change may be noticed by ``watch``: the SQLite poll period, the Redis fallback re-read
    #: (Redis normally wakes watchers at once by pub/sub). None: 0.2 s for SQLite, 1 s for Redis
    poll_interval: float | None = None
    #: SQLite: how long a write waits for another process's write lock before giving up
    busy_timeout: float = 5.0
    #: Redis: replicas that must confirm each record write (WAIT) before it is reported done; None: 1
    #: behind Sentinel, 0 on one server
    min_replicas_acked: int | None = None
    #: Redis: how long (seconds) a write waits for those confirmations before it is reported failed
    replica_ack_timeout: float = 1.0


async def open_store(target: str | StoreOptions) -> Store:
    """Open (and for SQLite create and migrate) the store ``target`` names.

    InvalidArgument for a URL this gateway does not know; StoreUnavailable when Redis does not answer.
    """
    options = StoreOptions(url=target) if isinstance(target, str) else target
    scheme, sep, rest = options.url.partition("://")
    if not sep:
        raise InvalidArgument("a store URL looks like sqlite:///path/to/file.db or redis://host:port/db")
    if scheme == SQLITE_SCHEME:
        if not rest:
            raise InvalidArgument("a sqlite store URL needs a file path: sqlite:///path/to/file.db")
        from gateway.store.sqlite import SqliteStore

        return await SqliteStore.open(
            rest,
            busy_timeout=options.busy_timeout,
            poll_interval=options.poll_interval if options.poll_interval is not None else 0.2,
        )
    if scheme in REDIS_SCHEMES:
        url, prefix = _split_prefix(options.url, options.prefix)
        # imported here: a node on SQLite never loads the Redis client
        from gateway.store.redis import RedisStore

        try:
            parse_url(url)
        except ValueError as exc:
            raise InvalidArgument(f"store URL: {exc}") from None
        return await RedisStore.open(
            url,
            prefix=prefix,
            poll_interval=options.poll_interval if options.poll_interval is not None else 1.0,
            min_replicas_acked=options.min_replicas_acked,
            replica_ack_timeout=options.replica_ack_timeout,
        )
    raise InvalidArgument(f"unknown store URL scheme {scheme!r}: use sqlite://, redis:// or redis+sentinel://")


def _split_prefix(url: str, default: str) -> tuple[str, str]:
    """The URL without a ``prefix`` query parameter (redis-py would refuse it), and the prefix."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefix = default
    kept = []
    for name, value in query:
        if name == "prefix":
            prefix = value
        else:
            kept.append((name, value))
    if not prefix or any(c in prefix for c in "{}"):
        raise InvalidArgument("a Redis store prefix must be non-empty and hold no '{' or '}'")
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept))), prefix
