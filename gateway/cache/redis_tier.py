"""The cache's shared tier: entries in Redis, seen by every worker of every node.

One connection per worker, pipelined: a command is written as soon as it is asked for and its reply is
matched in order (RESP replies come back in the order of the commands), so many requests' lookups share
the connection without waiting for each other. RESP is packed and parsed here (the few reply types the
cache reads), with no client library on the request path.

Failure is never the client's problem. Each call is bounded by ``timeout``; a call that fails or times
out marks the tier down: the connection is dropped, every call waiting on it gets ``TierDown``, and for
the next ``retry_after`` seconds calls fail at once without touching the network (the phase counts them
as bypasses and goes to the provider). The next call after that opens a new connection.

Values: ``b"r" + raw`` or, above ``compress_above`` bytes, ``b"z" + zlib(raw)``. Keys:
``<prefix>:cache:<tenant>:<key id>:<model>:<hex key>`` (the tenant and API key whose request stored it)
with each part percent-encoded (no ``:``, ``*``, ``?`` or ``[`` in them), so that a purge by tenant, key or
model is one ``SCAN MATCH`` pattern.

Supported URLs: ``redis://``, ``rediss://`` (TLS) and ``unix://`` to one server (with its password and
database), and ``redis+sentinel://`` / ``rediss+sentinel://`` (``gateway.redisconn``): each connection
goes to the master the sentinels name when it opens (``redisconn.sentinel_master``). Failover: a
connection to a master that died fails (or its calls time out): the tier is down for ``retry_after``
seconds (lookups bypassed), then the next connection goes to the master the sentinels name then; a master
demoted to a replica answers a write with READONLY, which drops the connection the same way. Cluster
URLs are refused by the configuration check: the tier's one pipelined connection has no slot routing
(use one server or Sentinel for the cache; the rest of the gateway may still use the cluster).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import ssl
import time
import zlib
from collections.abc import Callable
from typing import cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import msgspec

from gateway.redisconn import parse_url, sentinel_master
from gateway.server.listener import BATCH, direct_fd

__all__ = [
    "PURGE_STREAM_LEN", "Announce", "RedisTier", "ServerAddress", "TierDown", "pack_value", "redis_key",
    "redis_key_head", "server_address", "unpack_value",
]


log = logging.getLogger("gateway.cache")

#: a record to append to a stream after a write: (stream, about how many records it keeps, the record)
Announce = tuple[bytes, int, bytes]
#: about how many purge orders the stream keeps (a node reads it every half second: plenty)
PURGE_STREAM_LEN = 10000


class TierDown(Exception):
    """The shared tier cannot answer now."""


def pack_value(raw: bytes, compress_above: int) -> bytes:
    if len(raw) > compress_above:
        return b"z" + zlib.compress(raw, 6)
    return b"r" + raw


def unpack_value(value: bytes) -> bytes:
    if value[:1] == b"z":
        return zlib.decompress(value[1:])
    if value[:1] == b"r":
        return value[1:]
    raise ValueError("not a cache value")


@functools.lru_cache(maxsize=4096)
def _part(text: str) -> str:
    return quote(text, safe="")  # PERF: memoised: the same tenants, keys and models come back


def redis_key_head(prefix: str, tenant: str | None, key_id: str | None, model: str) -> str:
    """An entry's Redis key up to its hash (the phase keeps these per caller and model)."""
    return f"{prefix}:cache:{_part(tenant or '-')}:{_part(key_id or '-')}:{_part(model)}:"


def redis_key(prefix: str, tenant: str | None, key_id: str | None, model: str, key: bytes) -> str:
    """An entry's Redis key: who wrote it (tenant, API key) and for which model, then its hash."""
    return redis_key_head(prefix, tenant, key_id, model) + key.hex()


def _command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _ReplyError(Exception):
    pass


def _entry(value: object) -> bytes | None:
    """A GET reply's entry, unpacked; None for no entry, or a value that is not one."""
    if not isinstance(value, bytes):
        return None
    if value[:1] == b"r":  # PERF: decompressed only when it was compressed
        return value[1:]
    try:
        return unpack_value(value)
    except (ValueError, zlib.error):
        return None


class _Parser:
    """RESP2 replies: simple strings, errors, integers, bulk strings and arrays of them."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data

    def gets(self) -> tuple[bool, object]:
        """(True, reply) for the next complete reply, else (False, None)."""
        done, value, pos = self._parse(0)
        if done:
            self.buf = self.buf[pos:]
        return done, value

    def _parse(self, pos: int) -> tuple[bool, object, int]:
        buf = self.buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return False, None, pos
        kind, line, nxt = buf[pos:pos + 1], buf[pos + 1:end], end + 2
        if kind == b"+":
            return True, line, nxt
        if kind == b"-":
            return True, _ReplyError(line.decode("utf-8", "replace")), nxt
        if kind == b":":
            return True, int(line), nxt
        if kind == b"$":
            n = int(line)
            if n < 0:
                return True, None, nxt
            if len(buf) < nxt + n + 2:
                return False, None, pos
            return True, buf[nxt:nxt + n], nxt + n + 2
        if kind == b"*":
            n = int(line)
            if n < 0:
                return True, None, nxt
            items: list[object] = []
            for _ in range(n):
                done, item, nxt = self._parse(nxt)
                if not done:
                    return False, None, pos
                items.append(item)
            return True, items, nxt
        raise ValueError(f"unexpected RESP reply type {kind!r}")


class _Callback:
    """A command's waiter that is a function, not a future (``_Connection.send_cb``)."""

    __slots__ = ("cb", "fired")

    def __init__(self, cb: Callable[[object, BaseException | None], None]) -> None:
        self.cb = cb
        self.fired = False

    def done(self) -> bool:
        return self.fired

    def set_result(self, value: object) -> None:
        self._fire(value, None)

    def set_exception(self, exc: BaseException) -> None:
        self._fire(None, exc)

    def _fire(self, value: object, exc: BaseException | None) -> None:
        self.fired = True
        try:
            self.cb(value, exc)
        except Exception:  # the connection's other replies must still reach their waiters
            log.exception("a Redis reply's callback failed")


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = _Parser()
        self.waiters: collections.deque[asyncio.Future[object] | _Callback] = collections.deque()
        #: when each waiting command was sent (monotonic), oldest first: the watchdog's clock
        self.sent: collections.deque[float] = collections.deque()
        self.closed = False
        self.loop = asyncio.get_running_loop()
        #: the socket the write batch writes to directly (``direct_fd``), -1: through the transport
        self.fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.fd = direct_fd(transport)

    def data_received(self, data: bytes) -> None:
        if not self.parser.buf and data[:1] == b"$" and len(self.waiters) == 1:
            # PERF: the usual reply of the cache's one GET in flight, whole in one read: a bulk string
            # (or nil) read in place, without the parser's buffer
            end = data.find(b"\r\n")
            if end > 0:
                n = int(data[1:end])
                if (n < 0 and len(data) == end + 2) or len(data) == end + n + 4:
                    fut = self.waiters.popleft()
                    self.sent.popleft()
                    if not fut.done():
                        fut.set_result(data[end + 2:end + 2 + n] if n >= 0 else None)
                    return
        self.parser.feed(data)
        while self.waiters:
            try:
                done, reply = self.parser.gets()
            except ValueError as exc:
                self.fail(exc)
                return
            if not done:
                return
            fut = self.waiters.popleft()
            self.sent.popleft()
            if not fut.done():
                if isinstance(reply, _ReplyError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionResetError("the Redis server closed the connection"))

    def fail(self, exc: BaseException) -> None:
        self.closed = True
        self.sent.clear()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(TierDown(str(exc)))
        if self.transport is not None:
            self.transport.abort()

    def send(self, data: bytes) -> asyncio.Future[object]:
        # PERF: the loop it was opened on, not ``get_running_loop()`` (which asks the kernel for the
        # process id on every call, twice per command)
        fut: asyncio.Future[object] = self.loop.create_future()
        if self.closed or self.transport is None:
            fut.set_exception(TierDown("not connected"))
            return fut
        self.waiters.append(fut)
        self.sent.append(time.monotonic())
        # PERF: written with the loop iteration's other writes (the listener's ``WriteBatch``): every
        # command of an iteration in one system call, as the answers to the clients
        BATCH.write(self.transport, data, self.fd)
        return fut

    def send_cb(self, data: bytes, cb: Callable[[object, BaseException | None], None]) -> None:
        """``send`` with ``cb(reply, None)`` or ``cb(None, error)`` called at the reply (or the failure)
        instead of a future."""
        waiter = _Callback(cb)
        if self.closed or self.transport is None:
            waiter.set_exception(TierDown("not connected"))
            return
        self.waiters.append(waiter)
        self.sent.append(time.monotonic())
        BATCH.write(self.transport, data, self.fd)


class RedisTier:
    """The shared tier of one worker (see the module docstring)."""

    def __init__(self, url: str, prefix: str, timeout: float, compress_above: int,
                 retry_after: float = 1.0, max_pending_writes: int = 1024) -> None:
        target = parse_url(url)
        if target.kind == "cluster":
            raise ValueError("the cache's Redis tier needs one server or Sentinel, not a Redis Cluster")
        #: the sentinels' target (None: one server, at ``address``)
        self.sentinel = target if target.kind == "sentinel" else None
        self.address = server_address(url) if self.sentinel is None else ServerAddress()
        self.prefix = prefix
        self.timeout = timeout
        self.compress_above = compress_above
        self.retry_after = retry_after
        self.max_pending_writes = max_pending_writes
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._down_until = 0.0
        self._writes: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        #: calls that failed (timeouts, connection errors, refused while down), writes dropped
        self.errors = 0
        self.dropped_writes = 0

    # -- connection ------------------------------------------------------------------------------------

    async def _master(self) -> ServerAddress:
        """The master the sentinels name now, with the URL's credentials and database."""
        t = self.sentinel
        assert t is not None
        host, port = await sentinel_master(t)
        return ServerAddress(host=host, port=port, username=t.username, password=t.password, db=t.db,
                             tls=t.tls)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        a = self.address if self.sentinel is None else await self._master()
        conn = _Connection()
        if a.path is not None:
            await loop.create_unix_connection(lambda: conn, a.path)
        else:
            ctx = ssl.create_default_context() if a.tls else None
            await loop.create_connection(lambda: conn, a.host, a.port, ssl=ctx)
        setup: list[bytes] = []
        if a.password is not None:
            user = [a.username.encode()] if a.username else []
            setup.append(_command(b"AUTH", *user, a.password.encode()))
        if a.db:
            setup.append(_command(b"SELECT", str(a.db).encode()))
        for cmd in setup:
            await conn.send(cmd)
        return conn

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if time.monotonic() < self._down_until:
            raise TierDown("the Redis tier is down")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            conn = await asyncio.shield(connecting)
        except Exception as exc:
            self._mark_down()
            raise TierDown(str(exc)) from None
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._conn = conn
        return conn

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + self.retry_after
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(TierDown("marked down"))

    async def _call(self, *args: bytes) -> object:
        """One command. PERF: no timer per call: on an open connection the command is written at once
        and a watchdog (one timer while anything waits) fails the connection when its oldest command has
        waited longer than ``timeout``."""
        conn = self._conn
        if conn is None or conn.closed:
            if time.monotonic() < self._down_until:  # refused at once; the down time is not extended
                self.errors += 1
                raise TierDown("the Redis tier is down")
            try:
                async with asyncio.timeout(self.timeout):
                    conn = await self._connection()
            except (TierDown, TimeoutError, OSError) as exc:
                self.errors += 1
                self._mark_down()
                raise TierDown(str(exc) or exc.__class__.__name__) from None
        fut = conn.send(_command(*args))
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self.timeout / 2, self._watch, conn)
        try:
            return await fut
        except TierDown:
            self.errors += 1
            self._mark_down()
            raise
        except _ReplyError as exc:
            raise self._refused(exc) from None

    def _refused(self, exc: _ReplyError) -> TierDown:
        """An error reply: counted; a master demoted to a replica (READONLY) or still loading drops the
        connection, so that the next one goes to the master the sentinels name then."""
        self.errors += 1
        if str(exc).startswith(("READONLY", "LOADING", "MASTERDOWN")):
            self._mark_down()
        return TierDown(str(exc))

    def _watch(self, conn: _Connection) -> None:
        self._watchdog = None
        if conn.closed or not conn.sent:
            return
        if time.monotonic() - conn.sent[0] > self.timeout:
            self._mark_down()  # fails every waiting command with TierDown
            return
        self._watchdog = asyncio.get_running_loop().call_later(self.timeout / 2, self._watch, conn)

    # -- the cache's calls -----------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The raw entry under ``key`` (unpacked), or None; raises TierDown. (The cache phase's lookup on
        an open connection takes the callback path instead: ``get_cb``.)"""
        return _entry(await self._call(b"GET", key.encode()))

    @property
    def connection(self) -> _Connection | None:
        """The open connection (None: none is open now)."""
        conn = self._conn
        return None if conn is None or conn.closed else conn

    def get_cb(self, key: str, cb: Callable[[object, BaseException | None], None]) -> bool:
        """``get`` without a coroutine or a future: the GET written on the open connection, and
        ``cb(reply, None)`` or ``cb(None, error)`` called from the connection's ``data_received`` (or its
        failure); ``entry_from`` reads what it got. False (nothing sent) when no connection is open.

        # PERF: the cache phase's lookup (``CachePhase._redis_lookup``): no future, and no loop
        iteration between the reply and the lookup's answer."""
        conn = self._conn
        if conn is None or conn.closed:
            return False
        k = key.encode()
        conn.send_cb(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k), cb)
        if self._watchdog is None:
            self._watchdog = conn.loop.call_later(self.timeout / 2, self._watch, conn)
        return True

    def entry_from(self, value: object, exc: BaseException | None) -> bytes | None:
        """The raw entry (unpacked) a ``get_cb`` callback got, or None; raises TierDown (and marks the
        tier down, as any failed call does)."""
        if exc is None:
            return _entry(value)
        if isinstance(exc, _ReplyError):
            raise self._refused(exc) from None
        self.errors += 1
        self._mark_down()
        raise exc if isinstance(exc, TierDown) else TierDown(str(exc))

    def set_soon(self, key: str, raw: bytes, ttl: float, then: Announce | None = None) -> None:
        """Write an entry in the background (after the response is sent); dropped when too many writes
        are pending or the tier is down. ``then``: a record appended to a stream once the entry is written
        (the semantic tier's sync: never announced before its answer can be read)."""
        if len(self._writes) >= self.max_pending_writes or time.monotonic() < self._down_until:
            self.dropped_writes += 1
            return
        task = asyncio.get_running_loop().create_task(self._set(key, raw, ttl, then))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _set(self, key: str, raw: bytes, ttl: float, then: Announce | None = None) -> None:
        ms = max(int(ttl * 1000), 1)
        try:
            value = pack_value(raw, self.compress_above)
            await self._call(b"SET", key.encode(), value, b"PX", str(ms).encode())
            if then is not None:
                stream, maxlen, record = then
                await self._call(b"XADD", stream, b"MAXLEN", b"~", str(maxlen).encode(), b"*", b"e", record)
        except TierDown:
            self.dropped_writes += 1

    async def purge(self, pattern: str) -> int:
        """Delete every entry whose key matches the ``SCAN MATCH`` ``pattern``; the number deleted."""
        cursor = b"0"
        deleted = 0
        while True:
            reply = await self._call(b"SCAN", cursor, b"MATCH", pattern.encode(), b"COUNT", b"500")
            assert isinstance(reply, list)
            cursor, keys = reply[0], reply[1]
            if keys:
                n = await self._call(b"UNLINK", *keys)
                deleted += int(n) if isinstance(n, int) else 0
            if cursor == b"0":
                return deleted

    # -- purge orders, for every node's memory tier (gateway.cache.admin) --------------------------------

    @property
    def purge_stream(self) -> bytes:
        """The Redis stream of purge orders (outside ``<prefix>:cache:*``: a purge never deletes it)."""
        return f"{self.prefix}:cache-purges".encode()

    async def publish_purge(self, order: bytes) -> None:
        """Append a purge order (its JSON) to the stream, which keeps about the last ``PURGE_STREAM_LEN``."""
        await self._call(b"XADD", self.purge_stream, b"MAXLEN", b"~", str(PURGE_STREAM_LEN).encode(), b"*",
                         b"order", order)

    async def purges_after(self, last: bytes) -> tuple[bytes, list[bytes]]:
        """The orders appended after the id ``last``: (the newest id read, their JSON texts)."""
        return await self.stream_after(self.purge_stream, last, b"order")

    async def stream_after(self, stream: bytes, last: bytes, field: bytes,
                           count: int = 1000) -> tuple[bytes, list[bytes]]:
        """The values of ``field`` in the records appended to ``stream`` after the id ``last``, at most
        ``count`` records: (the newest id read, the values)."""
        reply = await self._call(b"XREAD", b"COUNT", str(count).encode(), b"STREAMS", stream, last)
        values: list[bytes] = []
        if not isinstance(reply, list):  # nil: nothing new
            return last, values
        for found in reply:
            for item in found[1] if isinstance(found, list) and len(found) == 2 else ():
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], bytes)):
                    continue
                last = item[0]
                fields = item[1] if isinstance(item[1], list) else []
                for i in range(0, len(fields) - 1, 2):
                    if fields[i] == field and isinstance(fields[i + 1], bytes):
                        values.append(fields[i + 1])
        return last, values

    def purge_pattern(self, tenant: str | None = None, key_id: str | None = None,
                      model: str | None = None) -> str:
        parts = [_part(p) if p is not None else "*" for p in (tenant, key_id, model)]
        return f"{self.prefix}:cache:{':'.join(parts)}:*"

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in list(self._writes):
            task.cancel()
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.closed = True
            conn.transport.close()


class ServerAddress(msgspec.Struct, frozen=True):
    """Where one Redis server is and how to log in, from a ``redis://``, ``rediss://`` or ``unix://`` URL
    (the forms redis-py reads: ``redis://[[user]:password@]host[:port][/db]``,
    ``unix://[[user]:password@]/path/to/socket[?db=N]``)."""

    host: str = "127.0.0.1"
    port: int = 6379
    #: a unix socket's path (then host and port are not used)
    path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False


def server_address(url: str) -> ServerAddress:
    parts = urlsplit(url)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "unix":
        return ServerAddress(path=parts.path, username=username, password=password,
                             db=int(query.get("db") or 0))
    segment = parts.path.strip("/")
    return ServerAddress(
        host=parts.hostname or "127.0.0.1", port=parts.port or 6379, username=username, password=password,
        db=int(segment or query.get("db") or 0), tls=parts.scheme == "rediss",
    )
