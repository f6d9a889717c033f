"""What the store, the limits and the breaker sync share about talking to Redis through redis-py: the one
place that turns a configured URL into clients and connection pools.

URL forms (``parse_url``):

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
  ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``: one server, as redis-py reads the URL;
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/MASTER[/db]`` (``rediss+sentinel``:
  TLS to every node): the master that these sentinels (port 26379 by default) name;
- ``redis+cluster://[[user]:password@]host[:port][,host[:port]...]`` (``rediss+cluster``: TLS): a Redis
  Cluster, from these seed nodes (port 6379 by default).

The Sentinel form is the one the ``redis-sentinel-url`` package defined: the hosts are the sentinels,
the first path segment the name of the monitored master, the second the database. The password in the
URL is the master's (and its replicas'); sentinels that require their own take ``?sentinel_password=...``
(and ``sentinel_username=``). Both Sentinel and Cluster forms take ``socket_timeout`` and
``socket_connect_timeout`` (seconds) in the query; the store's ``prefix=`` is accepted everywhere and
ignored here (the store factory reads it).

Failover. A Sentinel client resolves the master by asking the sentinels each time it opens a connection
(redis-py's ``SentinelConnectionPool``); a connection to a master that died fails, is dropped, and the
next one goes to whatever master the sentinels then name. A master demoted to a replica answers writes
with READONLY, which redis-py's Sentinel connection turns into a connection error, with the same
effect. Nothing here keeps a master address of its own.

Typing. redis-py's type hints change between the releases we support (``redis>=5.0.1``): a call that
one release leaves untyped, the next one types, and some type a command's reply as ``Awaitable[T] | T``.
What the store and the breaker sync use of a client is the ``Client`` protocol below, and the calls that
differ go through here, typed once by us, so that strict mypy reads the same on every supported release
and no ``type: ignore`` turns stale on an upgrade.
"""

from __future__ import annotations

import bisect
import urllib.parse
import weakref
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import msgspec

if TYPE_CHECKING:  # redis is imported when a client is made: a node on SQLite never loads it
    import redis.asyncio
    from redis.asyncio.client import PubSub

__all__ = [
    "CLUSTER_SCHEMES",
    "SCHEMES",
    "SENTINEL_SCHEMES",
    "SINGLE_SCHEMES",
    "Client",
    "Pipeline",
    "RedisTarget",
    "Script",
    "SlotMap",
    "close_client",
    "close_node_clients",
    "close_pool",
    "close_pubsub",
    "connection_pool",
    "forget_node",
    "is_cluster",
    "key_pipeline",
    "make_connection",
    "moved_to",
    "no_retries",
    "node_connection",
    "open_client",
    "open_cluster",
    "open_pubsub",
    "parse_url",
    "redact",
    "redirected",
    "run_script",
    "sentinel_master",
    "unavailable_errors",
]

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: every scheme that names a Redis
SCHEMES = SINGLE_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES

_SENTINEL_PORT = 26379
_REDIS_PORT = 6379
#: query parameters the Sentinel and Cluster forms take (``prefix`` belongs to the store factory)
_OPTIONS = ("prefix", "sentinel_username", "sentinel_password", "socket_timeout", "socket_connect_timeout")
#: seconds a sentinel may take to answer "who is the master?" when the URL does not say
_SENTINEL_TIMEOUT = 1.0
#: seconds a Sentinel-managed or cluster node may take to answer a call, or to connect, when neither the
#: URL nor the caller says (above the longest replica_ack_timeout: a write's WAIT must fit)
_SOCKET_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 5.0


class RedisTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed Redis URL: what to connect to and with which credentials."""

    kind: Literal["single", "sentinel", "cluster"]
    #: the URL as configured, without ``prefix=`` (``single``: what redis-py reads)
    url: str
    #: the sentinels (``sentinel``) or the seed nodes (``cluster``)
    hosts: tuple[tuple[str, int], ...] = ()
    #: the master's name as the sentinels know it (``sentinel``)
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    socket_timeout: float | None = None
    socket_connect_timeout: float | None = None


def parse_url(url: str) -> RedisTarget:
    """The target ``url`` names; ValueError (its message fit for a config error) when it is malformed."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"unknown Redis URL scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"malformed Redis URL: {exc}") from None
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    base, _, _ = url.partition("?")
    kept = urllib.parse.urlencode([(k, v) for k, v in query if k != "prefix"])
    bare = f"{base}?{kept}" if kept else base
    if scheme in SINGLE_SCHEMES:
        return RedisTarget(kind="single", url=bare)
    options = _options(scheme, query)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    sentinel = scheme in SENTINEL_SCHEMES
    service, db = _master(parts.path) if sentinel else _cluster_path(parts.path)
    return RedisTarget(
        kind="sentinel" if sentinel else "cluster",
        url=bare,
        hosts=_hosts(hostlist, _SENTINEL_PORT if sentinel else _REDIS_PORT),
        service=service,
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        tls=scheme.startswith("rediss"),
        socket_timeout=_seconds(options, "socket_timeout"),
        socket_connect_timeout=_seconds(options, "socket_connect_timeout"),
    )


def _options(scheme: str, query: list[tuple[str, str]]) -> dict[str, str]:
    for name, _ in query:
        if name not in _OPTIONS:
            known = ", ".join(_OPTIONS)
            raise ValueError(f"unknown parameter {name!r} in a {scheme}:// URL: it takes {known}")
    return dict(query)


def _segments(path: str) -> list[str]:
    return [urllib.parse.unquote(s) for s in path.split("/")[1:] if s]


def _master(path: str) -> tuple[str, int]:
    """The master's name and the database of a Sentinel URL's path ``/MASTER[/DB]``."""
    segments = _segments(path)
    if not segments or len(segments) > 2:
        raise ValueError("a Sentinel URL names the master: redis+sentinel://host:26379,.../MASTER[/DB]")
    return segments[0], _int(segments[1], "the database") if len(segments) == 2 else 0


def _cluster_path(path: str) -> tuple[str, int]:
    if _segments(path) not in ([], ["0"]):
        raise ValueError("a Redis Cluster has one database: redis+cluster://host:port,... (no path)")
    return "", 0


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    username = urllib.parse.unquote(user) or None
    return username, (urllib.parse.unquote(password) or None) if colon else None


def _hosts(hostlist: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in hostlist.split(","):
        if not item:
            raise ValueError("a host list looks like host1:port,host2:port (an empty entry was found)")
        if item.startswith("["):  # [IPv6]:port
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"malformed host {item!r}")
            port = rest[1:]
        else:
            host, _, port = item.partition(":")
        if not host:
            raise ValueError(f"malformed host {item!r}")
        number = _int(port, f"the port of {item!r}") if port else default_port
        if not 0 < number < 65536:
            raise ValueError(f"the port of {item!r} must be between 1 and 65535")
        hosts.append((host, number))
    return tuple(hosts)


def _int(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{what} must be a whole number, found {text!r}")
    return int(text)


def _seconds(options: dict[str, str], name: str) -> float | None:
    if name not in options:
        return None
    try:
        value = float(options[name])
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, found {options[name]!r}") from None
    if not 0.0 < value < float("inf"):
        raise ValueError(f"{name} must be a number of seconds above 0, found {options[name]!r}")
    return value


def redact(url: str) -> str:
    """The URL without its passwords, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    netloc = f"{userinfo}@{hosts}" if at else hosts
    query = urllib.parse.urlencode(
        [(k, "***" if k.endswith("password") else v) for k, v in urllib.parse.parse_qsl(parts.query, True)]
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


# -- clients and pools ------------------------------------------------------------------------------------


def _node_options(target: RedisTarget, options: dict[str, Any]) -> dict[str, Any]:
    """Connection arguments of the data nodes (master, replicas, cluster nodes)."""
    out = dict(options)
    if target.username is not None:
        out["username"] = target.username
    if target.password is not None:
        out["password"] = target.password
    if target.socket_timeout is not None:
        out["socket_timeout"] = target.socket_timeout
    if target.socket_connect_timeout is not None:
        out["socket_connect_timeout"] = target.socket_connect_timeout
    # a master whose host vanished answers nothing, not even a refusal: without a timeout a call would
    # wait for it forever instead of failing over (a caller's own choice, even None, stands)
    out.setdefault("socket_timeout", _SOCKET_TIMEOUT)
    out.setdefault("socket_connect_timeout", _CONNECT_TIMEOUT)
    return out


def _sentinel(target: RedisTarget, options: dict[str, Any]) -> Any:
    """A ``redis.asyncio.sentinel.Sentinel`` for the target's sentinels (short timeouts of their own: a
    sentinel that does not answer must not hold up asking the next one)."""
    from redis.asyncio.sentinel import Sentinel

    timeout = target.socket_timeout or options.get("socket_connect_timeout") or _SENTINEL_TIMEOUT
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if target.sentinel_username is not None:
        sentinel_kwargs["username"] = target.sentinel_username
    if target.sentinel_password is not None:
        sentinel_kwargs["password"] = target.sentinel_password
    if target.tls:
        sentinel_kwargs["ssl"] = True
    make: Any = Sentinel
    return make(list(target.hosts), sentinel_kwargs=sentinel_kwargs)


async def sentinel_master(target: RedisTarget) -> tuple[str, int]:
    """The (host, port) the target's sentinels name as its master now, for a client of our own that
    connects there itself (the cache's Redis tier); a redis-py error when none does."""
    sentinel = _sentinel(target, {})
    try:
        found: tuple[str, int] = await sentinel.discover_master(target.service)
        return found
    finally:
        for client in sentinel.sentinels:
            await close_client(client)


def connection_pool(target: RedisTarget, **options: Any) -> redis.asyncio.ConnectionPool:
    """A pool of connections to the one server (``single``) or to the master the sentinels name at each
    connect (``sentinel``). ``options`` are connection arguments (timeouts, retry, ...); the URL's own
    win. A cluster has no single pool: ValueError."""
    import redis.asyncio

    if target.kind == "single":
        return redis.asyncio.ConnectionPool.from_url(target.url, **options)
    if target.kind == "sentinel":
        from redis.asyncio.sentinel import SentinelConnectionPool

        sentinel = _sentinel(target, options)
        kwargs = _node_options(target, options)
        kwargs["db"] = target.db
        if target.tls:
            from redis.asyncio.sentinel import SentinelManagedSSLConnection

            kwargs["connection_class"] = SentinelManagedSSLConnection
        make: Any = SentinelConnectionPool
        pool: redis.asyncio.ConnectionPool = make(target.service, sentinel, **kwargs)
        return pool
    raise ValueError("a Redis Cluster has a pool per node: open a cluster client instead")


class Script(Protocol):
    """A script of ``Client.register_script``: EVALSHA, loading the script when the server lacks it."""

    def __call__(
        self, keys: Sequence[str] = ..., args: Sequence[Any] = ..., client: Any = ...
    ) -> Awaitable[Any]: ...


class Pipeline(Protocol):
    """The commands the store queues on a pipeline (each returns the pipeline); ``execute`` sends them."""

    def get(self, name: str) -> Any: ...
    def hget(self, name: str, key: str) -> Any: ...
    def hexists(self, name: str, key: str) -> Any: ...
    def hmget(self, name: str, keys: Sequence[str]) -> Any: ...
    def hincrbyfloat(self, name: str, key: str, amount: float) -> Any: ...
    def hincrby(self, name: str, key: str, amount: int) -> Any: ...
    def hgetall(self, name: str) -> Any: ...
    def expire(self, name: str, time: int) -> Any: ...
    def multi(self) -> None: ...
    def zrange(self, name: str, start: int, end: int) -> Any: ...
    def wait(self, num_replicas: int, timeout: int) -> Any: ...
    async def execute(self) -> list[Any]: ...
    async def __aenter__(self) -> Pipeline: ...
    async def __aexit__(self, *exc: object) -> None: ...


class Client(Protocol):
    """What the store and the breaker sync use of a redis-py asyncio client, typed once here (redis-py's
    own hints for these commands change between releases: ``Awaitable[T] | T`` in some). Replies are
    ``Any``: text with ``decode_responses``, else bytes. A ``Redis`` (one server, Sentinel) and a
    ``RedisCluster`` both answer these; pub/sub goes through ``open_pubsub``, a write followed by
    ``WAIT`` through ``key_pipeline``, closing through ``close_client``."""

    async def ping(self) -> Any: ...
    async def get(self, name: str) -> Any: ...
    async def hget(self, name: str, key: str) -> Any: ...
    async def hgetall(self, name: str) -> Any: ...
    async def hmget(self, name: str, keys: Sequence[str]) -> Any: ...
    async def hincrbyfloat(self, name: str, key: str, amount: float) -> Any: ...
    async def zrangebylex(self, name: str, min: str, max: str, start: int, num: int) -> Any: ...
    async def zrangebyscore(self, name: str, min: str, max: str, start: int, num: int) -> Any: ...
    async def zrevrangebyscore(self, name: str, max: str, min: str, start: int, num: int) -> Any: ...
    def register_script(self, script: str) -> Script: ...
    def pipeline(self, transaction: bool = ...) -> Pipeline: ...


def open_client(target: RedisTarget, **options: Any) -> Client:
    """A client of the one server, of the Sentinel-managed master, or of the cluster (a
    ``redis.asyncio.cluster.RedisCluster``: it routes each command by its key, runs scripts whose keys
    share one slot, and pipelines per node). ``options``: client arguments such as ``decode_responses``."""
    import redis.asyncio

    client: Any
    if target.kind == "single":
        client = redis.asyncio.Redis.from_url(target.url, **options)
    elif target.kind == "cluster":
        client = open_cluster(target, **options)
    else:
        client = redis.asyncio.Redis(connection_pool=connection_pool(target, **options))
    return cast(Client, client)


def no_retries() -> Any:
    """A redis-py ``Retry`` that tries once (``NoBackoff`` is untyped in some releases)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    backoff: Any = NoBackoff
    return Retry(backoff(), 0)


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


#: pub/sub objects with a pool of their own (on one node of a cluster), disconnected when they close
_OWN_POOLS: weakref.WeakSet[Any] = weakref.WeakSet()


def open_pubsub(client: Client) -> PubSub:
    """A pub/sub object of ``client``. On a cluster, where a publication reaches every node, it is on a
    connection of its own to one node (another one picked at random each time, so that a dead node is
    left behind on the next try)."""
    if not is_cluster(client):
        plain: Any = client
        pubsub: PubSub = plain.pubsub()
        return pubsub
    import redis.asyncio
    from redis.asyncio.client import PubSub

    cluster: Any = client
    node = cluster.get_random_node()
    pool = redis.asyncio.ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
    own = PubSub(connection_pool=pool)
    _OWN_POOLS.add(own)
    return own


def key_pipeline(client: Client, key: str, nodes: dict[str, Any]) -> Pipeline:
    """A pipeline that sends all its commands on one connection to the master of ``key``: the client's
    own (one server, Sentinel), or on a cluster one of a plain client of that master, kept in ``nodes``
    (a cluster pipeline spreads commands by key, and some releases refuse scripts in it). ``WAIT`` counts
    the replicas that have that connection's writes: it must follow them on the same connection."""
    if not is_cluster(client):
        return client.pipeline(transaction=False)
    import redis.asyncio

    cluster: Any = client
    node = cluster.get_node_from_key(key)
    plain = nodes.get(node.name)
    if plain is None:
        pool = redis.asyncio.ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
        plain = nodes[node.name] = redis.asyncio.Redis(connection_pool=pool)
    return cast(Pipeline, plain.pipeline(transaction=False))


async def forget_node(nodes: dict[str, Any], key: str, client: Client) -> None:
    """Close and forget the plain client of ``key``'s master (it failed: the next one is made anew)."""
    if not is_cluster(client):
        return
    cluster: Any = client
    plain = nodes.pop(cluster.get_node_from_key(key).name, None)
    if plain is not None:
        await close_client(plain)


def unavailable_errors() -> tuple[type[Exception], ...]:
    """What a redis-py call raises when Redis, or the part of a cluster the call needs, cannot answer
    now: connection failures and timeouts, and on a cluster a slot without a master, a cluster that is
    down or cannot be reached (a failover under way)."""
    import redis.exceptions

    return (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.ClusterError,
        redis.exceptions.TryAgainError,
        redis.exceptions.RedisClusterException,
        OSError,
    )


#: the error replies of a cluster node that mean "the slot is elsewhere now": the call ran nothing
_REDIRECTS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")


def redirected(reply: object) -> bool:
    """Whether ``reply`` is a cluster's redirection (MOVED, ASK, TRYAGAIN, CLUSTERDOWN). redis-py gives
    these their own exception classes on a cluster client's connections, and in recent releases on every
    connection; elsewhere they are a plain ResponseError whose message starts with the word."""
    import redis.exceptions

    classes = (
        redis.exceptions.MovedError,
        redis.exceptions.AskError,
        redis.exceptions.TryAgainError,
        redis.exceptions.ClusterDownError,
    )
    return isinstance(reply, classes) or (
        isinstance(reply, redis.exceptions.ResponseError) and str(reply).startswith(_REDIRECTS)
    )


async def close_node_clients(nodes: dict[str, Any]) -> None:
    while nodes:
        await close_client(nodes.popitem()[1])


def open_cluster(target: RedisTarget, **options: Any) -> Any:
    """A ``redis.asyncio.cluster.RedisCluster`` on the target's seed nodes (not connected yet: await its
    ``initialize()``)."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    make: Any = RedisCluster
    nodes = [ClusterNode(host, port) for host, port in target.hosts]
    kwargs = _node_options(target, options)
    if target.tls:
        kwargs["ssl"] = True
    return make(startup_nodes=nodes, **kwargs)


def node_connection(target: RedisTarget, node: tuple[str, int], **options: Any) -> Any:
    """A connection to one node of the target's cluster (``options``: connection arguments)."""
    import redis.asyncio

    make: Any = redis.asyncio.SSLConnection if target.tls else redis.asyncio.Connection
    return make(host=node[0], port=node[1], **_node_options(target, options))


class SlotMap:
    """Which master serves each hash slot of a Redis Cluster, from a ``CLUSTER SLOTS`` reply, and the
    slots MOVED since elsewhere. Empty (and false) until read."""

    __slots__ = ("_key_slot", "_moved", "_ranges", "_starts")

    def __init__(self, ranges: Sequence[tuple[int, int, tuple[str, int]]] = ()) -> None:
        from redis.crc import key_slot

        self._key_slot = key_slot
        self._ranges = sorted(ranges)
        self._starts = [start for start, _, _ in self._ranges]
        #: slot -> the master a MOVED reply named (at most one entry a slot: bounded by 16384)
        self._moved: dict[int, tuple[str, int]] = {}

    @classmethod
    def from_reply(cls, reply: Any, asked: tuple[str, int]) -> SlotMap:
        """The map in ``reply``; a master without an address (``""`` or ``"?"``) is the node ``asked``."""
        ranges = []
        for entry in reply:
            master = entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            node = (host if host not in ("", "?") else asked[0], int(master[1]))
            ranges.append((int(entry[0]), int(entry[1]), node))
        return cls(ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def masters(self) -> list[tuple[str, int]]:
        return list(dict.fromkeys([*(node for _, _, node in self._ranges), *self._moved.values()]))

    def move(self, slot: int, node: tuple[str, int]) -> None:
        """``slot`` is served by ``node`` now (a MOVED reply said so: the slot's new master knows before
        the rest of the cluster does, so a map read again could still be the old one)."""
        self._moved[slot] = node

    def node_of(self, key: bytes | None) -> tuple[str, int]:
        """The master of ``key``'s slot (None: any master); ConnectionError when no master serves it."""
        if key is None:
            return self._ranges[0][2]
        slot = self._key_slot(key)
        moved = self._moved.get(slot)
        if moved is not None:
            return moved
        at = bisect.bisect_right(self._starts, slot) - 1
        if at >= 0 and self._ranges[at][1] >= slot:
            return self._ranges[at][2]
        import redis.exceptions

        raise redis.exceptions.ConnectionError(f"no cluster master serves slot {slot}")


def moved_to(reply: object, asked: tuple[str, int]) -> tuple[int, tuple[str, int]] | None:
    """The slot and its new master of a MOVED reply (``MOVED <slot> <host>:<port>``; an empty host is the
    node ``asked``), None for any other reply."""
    import redis.exceptions

    if isinstance(reply, redis.exceptions.MovedError):
        words = str(reply).split()
    elif isinstance(reply, redis.exceptions.ResponseError) and str(reply).startswith("MOVED "):
        words = str(reply).split()[1:]
    else:
        return None
    if len(words) != 2 or not words[0].isdigit():
        return None
    host, _, port = words[1].rpartition(":")
    if not port.isdigit():
        return None
    return int(words[0]), (host or asked[0], int(port))


async def close_pool(pool: redis.asyncio.ConnectionPool) -> None:
    """Disconnect a pool, and the sentinel clients of a Sentinel pool."""
    await pool.disconnect()
    manager: Any = getattr(pool, "sentinel_manager", None)
    if manager is not None:
        for sentinel in manager.sentinels:
            await sentinel.aclose()


async def close_client(client: Client) -> None:
    """Close a client of ``open_client`` and its pool (which it may not own)."""
    plain: Any = client
    await plain.aclose()
    if not is_cluster(client):
        await close_pool(plain.connection_pool)


async def close_pubsub(pubsub: PubSub) -> None:
    """Close a pub/sub object and its connection (``aclose`` is untyped before redis 8.2)."""
    close: Any = pubsub.aclose
    await close()
    if pubsub in _OWN_POOLS:
        await pubsub.connection_pool.disconnect()


async def run_script(script: Any, keys: list[str], args: list[Any], pipe: Any) -> None:
    """Queue a registered script's call on ``pipe`` (the pipeline loads the script if the server lacks
    it; the call's client argument is typed differently across releases)."""
    call: Any = script
    await call(keys=keys, args=args, client=pipe)


def make_connection(pool: redis.asyncio.ConnectionPool) -> Any:
    """A connection of ``pool``'s class and arguments, outside the pool's own bookkeeping (untyped before
    redis 8.2). From a Sentinel pool, the connection asks the sentinels for the master each time it
    connects."""
    make: Any = pool.make_connection
    return make()
