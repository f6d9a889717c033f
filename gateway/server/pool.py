"""Keep-alive HTTP/1.1 client pool to one upstream origin, on the worker's own loop.

httpx costs 0.5-2 ms of bookkeeping per request; this pool costs a few microseconds: one Protocol per
connection feeding the compiled ``ResponseParser``, an idle stack, a FIFO of waiters.

Theory of operation, per connection:

    state    | event                              | action
    ---------+------------------------------------+------------------------------------------------
    idle     | acquired                           | busy: request written, waiting for the head
    idle     | upstream closes                    | dropped from the idle stack
    idle     | idle_timeout passes                | closed by the sweep
    busy     | head complete                      | the request's waiter gets the response
    busy     | body complete, reusable            | back to the idle stack (or straight to a waiter)
    busy     | body complete, not reusable        | closed
    busy     | closed/reset before any byte, and  | the request is sent once more on a new
             | the connection was a reused one    | connection (a stale keep-alive connection)
    busy     | closed/reset otherwise             | UpstreamError to the reader
    busy     | no byte for read_timeout           | UpstreamTimeout to the reader, connection closed
    busy     | stream reader lags: more than      | reading paused until the reader takes the body
             | _HIGH_WATER bytes not taken        | (``next_chunk``); the read deadline keeps running
    busy     | paused, nothing taken for          | UpstreamTimeout to the reader, connection closed
             | read_timeout                       |
    busy     | whole-body reader (``read``)       | never paused: the body is gathered up to
             |                                    | ``max_answer_bytes``; one byte more ends it with
             |                                    | UpstreamError (the client gets a 502), connection
             |                                    | closed
    busy     | reader closes before body complete | connection closed (never reused half-read)

Deadlines are checked by one sweep per pool every 100 ms (# PERF: no timer handle per request); a
connection that received bytes since the previous sweep gets its read deadline moved on by the sweep, so
the relay of a body piece costs no clock read.

Two readers, two bounds. A stream reader (``next_chunk``) takes the body piece by piece; while it lags,
the connection stops reading at ``_HIGH_WATER``, so memory stays bounded whatever the answer's size, and
``read_timeout`` bounds how long the paused connection waits for the reader. A whole-body reader
(``read``, ``complete_body``) needs all of it: pausing would wait for a taker that never comes, so its
connection is never paused (a pause from before ``read`` is lifted) and ``max_answer_bytes`` bounds the
memory instead.

A request may bring its own connect timeout (``send_within``: a routed deployment's ``connect_timeout``)
instead of the pool's. It applies to every connection opened for that request: at once, after waiting for
a free slot, and for the one resend of a stale keep-alive connection. The override is kept beside the
request's future in ``_connect_timeouts`` only while a new connection may still be opened for it, and only
when it differs from the pool's; requests without one pay nothing for it.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import urlsplit

from gateway._core.http import ParseError, ResponseParser, find_header
from gateway.providers.base import UpstreamError, UpstreamTimeout
from gateway.server.listener import BATCH, direct_fd

_BATCH = BATCH  # typed for C-level calls in the compiled module (pool.pxd)

__all__ = ["HeadCallback", "OriginPool", "PooledResponse", "parse_origin"]

_INF = float("inf")
# stop reading from the upstream while this much body is buffered and unread (the client is slow)
_HIGH_WATER = 512 * 1024


def parse_origin(url: str) -> tuple[str, str, int, str]:
    """``https://host:port/prefix`` -> (scheme, host, port, path prefix without trailing slash)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


#: what ``OriginPool.send_cb`` calls: (response, None) once the head is in, or (None, the error)
HeadCallback = Callable[["PooledResponse | None", "Exception | None"], None]


def _deliver(
    waiter: asyncio.Future[PooledResponse] | None, cb: HeadCallback | None, resp: PooledResponse
) -> None:
    if cb is not None:
        cb(resp, None)
    elif waiter is not None and not waiter.done():
        waiter.set_result(resp)


class _CallbackFromFuture:
    """Adapts a head callback to a future (the rare transparent retry runs as a task)."""

    __slots__ = ("cb",)

    def __init__(self, cb: HeadCallback | None) -> None:
        self.cb = cb

    def __call__(self, fut: asyncio.Future[PooledResponse]) -> None:
        cb = self.cb
        if cb is None:
            return
        if fut.cancelled():
            cb(None, UpstreamError("cancelled"))
        elif (exc := fut.exception()) is not None:
            cb(None, exc if isinstance(exc, Exception) else UpstreamError(str(exc)))
        else:
            cb(fut.result(), None)


class _StaleConnection(Exception):
    """A reused connection closed before answering: safe to send once more on a new one."""


class PooledResponse:
    """One response from the pool (see gateway.providers.base.UpstreamResponse)."""

    __slots__ = (
        "_conn", "_error", "_limit", "_parts", "_size", "_total", "_waiter", "_whole", "done", "headers",
        "status",
    )

    def __init__(
        self, conn: _Connection | None, status: int, headers: list[tuple[bytes, bytes]],
        whole: bytes | None, limit: int,
    ) -> None:
        """``whole``: the complete body, when it came with the head (then ``conn`` is None); ``limit``:
        the most body bytes ``read`` gathers (the pool's ``max_answer_bytes``)."""
        self._conn = conn
        self.status = status
        self.headers = headers
        self._parts: list[bytes] = [whole] if whole else []
        self._size = len(whole) if whole else 0
        #: body bytes received in all (``_size``: those not taken yet)
        self._total = self._size
        self._limit = limit
        #: a reader wants the whole body (``read``): the connection is never paused for it
        self._whole = False
        self.done = whole is not None
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def header(self, name: bytes) -> bytes | None:
        return find_header(self.headers, name)

    # called by the connection
    def _feed(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        self._total += len(data)
        self._wake()

    def _too_large(self) -> UpstreamError:
        return UpstreamError(f"the upstream answer exceeds max_answer_bytes ({self._limit} bytes)")

    def _finish(self, error: Exception | None = None) -> None:
        if self.done:
            return
        self.done = True
        self._error = error
        self._conn = None
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _take(self) -> bytes:
        parts = self._parts
        if len(parts) == 1:
            data = parts[0]
        else:
            data = b"".join(parts)
        parts.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.reading_paused:
            conn.resume()
        return data

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def complete_body(self) -> bytes | None:
        if self.done and self._error is None and self._total <= self._limit:
            parts = self._parts
            if len(parts) == 1:  # PERF: the whole body came with the head
                self._parts = []
                self._size = 0
                return parts[0]
            return self._take() if parts else b""
        return None

    async def read(self) -> bytes:
        """The whole body; UpstreamError when it is over ``max_answer_bytes``."""
        self._whole = True
        conn = self._conn
        if conn is not None and conn.reading_paused:
            conn.resume()  # paused before this reader came: nobody else would ever lift it
        while not self.done:
            await self._wait()
        if self._error is not None:
            raise self._error
        if self._total > self._limit:  # came whole with the head, or ended in the read that crossed it
            raise self._too_large()
        return self._take() if self._parts else b""

    async def next_chunk(self) -> bytes:
        while True:
            if self._parts:
                return self._take()
            if self.done:
                if self._error is not None:
                    raise self._error
                return b""
            await self._wait()

    def close(self) -> None:
        conn = self._conn
        if conn is not None and not self.done:
            self._conn = None
            self.done = True
            conn.drop()


class _Connection:
    """One upstream connection: an asyncio protocol (no ``asyncio.Protocol`` base, so that it compiles
    to an extension type, see ``pool.pxd``)."""

    __slots__ = (
        "_head_cb", "_head_waiter", "active", "deadline", "fd", "got_bytes", "head_only", "idle_since",
        "parser", "pool", "reading_paused", "request_data", "response", "reused", "transport",
    )

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        #: the socket the write batch writes to directly (``direct_fd``), -1: through the transport
        self.fd = -1
        self.parser: ResponseParser | None = None
        self.response: PooledResponse | None = None
        self._head_waiter: asyncio.Future[PooledResponse] | None = None
        #: instead of the waiter: called with (response, None) or (None, error) once the head is in
        self._head_cb: HeadCallback | None = None
        self.deadline = _INF
        #: bytes arrived since the last sweep: the sweep then moves the read deadline on
        self.active = False
        self.idle_since = 0.0
        self.reused = False
        self.got_bytes = False
        self.reading_paused = False
        self.request_data: bytes | None = None
        self.head_only = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.fd = direct_fd(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def start(self, data: bytes, head_only: bool) -> asyncio.Future[PooledResponse]:
        waiter: asyncio.Future[PooledResponse] = self.pool.loop.create_future()
        self._head_waiter = waiter
        self._write_request(data, head_only)
        return waiter

    def start_cb(self, data: bytes, cb: HeadCallback) -> None:
        self._head_cb = cb
        self._write_request(data, False)

    def _write_request(self, data: bytes, head_only: bool) -> None:
        assert self.transport is not None
        self.parser = ResponseParser(head_only)
        self.got_bytes = False
        # kept for the one transparent retry of a reused connection (see _fail)
        self.request_data = data if self.reused else None
        self.head_only = head_only
        self.deadline = self.pool.loop.time() + self.pool.read_timeout
        _BATCH.write(self.transport, data, self.fd)  # PERF: with the iteration's other writes (WriteBatch)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes on an idle connection: the upstream is confused, drop it
            self.drop()
            return
        self.got_bytes = True
        try:
            parser.feed(data)
        except ParseError as exc:
            self._fail(UpstreamError(exc.message))
            return
        self._progress(parser)

    def _progress(self, parser: ResponseParser) -> None:
        pool = self.pool
        resp = self.response
        if resp is None:
            if not parser.head_done:
                self.deadline = pool.loop.time() + pool.read_timeout
                return
            self.request_data = None
            waiter = self._head_waiter
            cb = self._head_cb
            self._head_waiter = self._head_cb = None
            if parser.done:
                # PERF: the whole response in one read (the common case): no body feeding, no wakeups
                self.parser = None
                self.deadline = _INF
                resp = PooledResponse(None, parser.status, parser.headers, parser.take_body(),
                                      pool.max_answer_bytes)
                # back to the pool before the reader runs: a callback reader may send again at once
                if parser.keep_alive:
                    pool.release(self)
                else:
                    self.drop()
                _deliver(waiter, cb, resp)
                return
            resp = self.response = PooledResponse(self, parser.status, parser.headers, None,
                                                  pool.max_answer_bytes)
            body = parser.take_body()
            if body:
                resp._feed(body)
            self.active = True
            _deliver(waiter, cb, resp)
            return
        body = parser.take_body()
        if body:
            resp._feed(body)
        if parser.done:
            self.response = None
            self.parser = None
            self.deadline = _INF
            resp._finish()
            if parser.keep_alive:
                pool.release(self)
            else:
                self.drop()
            return
        self.active = True  # PERF: the sweep moves the read deadline on, not every read
        if resp._whole:
            if resp._total > resp._limit:
                self._fail(resp._too_large())
        elif resp._size > _HIGH_WATER and self.transport is not None and not self.reading_paused:
            # the stream reader lags: wait for it (``resume``), within read_timeout (the sweep's deadline)
            self.reading_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.deadline = self.pool.loop.time() + self.pool.read_timeout
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        """The upstream's socket buffer is full. Nothing waits on it: the request's bytes are all in
        memory already, and the transport sends them as the upstream reads."""

    def resume_writing(self) -> None:
        """The upstream's socket buffer has room again (see ``pause_writing``)."""

    def eof_received(self) -> bool | None:
        parser = self.parser
        if parser is not None:
            try:
                parser.feed_eof()
            except ParseError as exc:
                self._fail(self._lost_error(exc.message))
                return None
            self._progress(parser)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        if self.parser is not None:
            parser = self.parser
            if parser.head_done and not parser.done:
                try:
                    parser.feed_eof()
                    self._progress(parser)
                    return
                except ParseError:
                    pass
            self._fail(self._lost_error("upstream closed the connection"))

    def _lost_error(self, message: str) -> Exception:
        if self.reused and not self.got_bytes:
            return _StaleConnection(message)
        return UpstreamError(message)

    def _fail(self, error: Exception) -> None:
        self.parser = None
        self.deadline = _INF
        waiter = self._head_waiter
        cb = self._head_cb
        self._head_waiter = self._head_cb = None
        resp = self.response
        self.response = None
        self.drop()
        if resp is not None:
            resp._finish(error if not isinstance(error, _StaleConnection) else UpstreamError(str(error)))
        if cb is None and (waiter is None or waiter.done()):
            return  # nobody waits for this response's head (any more)
        if isinstance(error, _StaleConnection) and self.request_data is not None:
            # a reused keep-alive connection was closed by the upstream: send once more, fresh
            if waiter is None:
                waiter = self.pool.loop.create_future()
                waiter.add_done_callback(_CallbackFromFuture(cb))
            self.pool.start_retry(waiter, self.request_data, self.head_only)
        elif cb is not None:
            cb(None, error)
        elif waiter is not None:
            waiter.set_exception(error)

    def on_deadline(self) -> None:
        if self.reading_paused:
            self._fail(UpstreamTimeout(f"the reader took no data for {self.pool.read_timeout:g}s"))
        else:
            self._fail(UpstreamTimeout(f"no data from the upstream for {self.pool.read_timeout:g}s"))

    def drop(self) -> None:
        self.pool.forget(self)
        transport = self.transport
        if transport is not None:
            self.transport = None
            transport.abort()


class OriginPool:
    """Bounded keep-alive pool for one upstream origin (scheme, host, port), one per worker."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 512,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        pool_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        verify_tls: bool = True,
        ca_file: str | None = None,
        max_answer_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.scheme, self.host, self.port, self.prefix = parse_origin(url)
        default_port = 443 if self.scheme == "https" else 80
        self.host_header = self.host if self.port == default_port else f"{self.host}:{self.port}"
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.idle_timeout = idle_timeout
        #: the largest body a whole-body reader gathers (streams are relayed piece by piece, unbounded)
        self.max_answer_bytes = max_answer_bytes
        self.ssl: ssl.SSLContext | None = None
        if self.scheme == "https":
            ctx = ssl.create_default_context(cafile=ca_file)
            if not verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.ssl = ctx
        self.loop = asyncio.get_running_loop()
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[_Connection]] = collections.deque()
        #: connect timeouts of requests that brought their own (``send_within``), by the future that
        #: stands for the request: its head's (a resend of a stale connection) or its pool-slot wait's
        self._connect_timeouts: dict[asyncio.Future[Any], float] = {}
        #: resends of a stale connection's request in flight (``_retry``): cancelled by ``close``
        self._retries: set[asyncio.Task[None]] = set()
        self._closed = False
        self._sweeper = self.loop.create_task(self._sweep())

    @property
    def size(self) -> int:
        return len(self._idle) + len(self._busy) + self._connecting

    def stats(self) -> dict[str, int]:
        return {
            "idle": len(self._idle), "busy": len(self._busy), "connecting": self._connecting,
            "waiting": len(self._waiters),
        }

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = self.loop.time()
            read_deadline = now + self.read_timeout
            for conn in list(self._busy):
                if conn.active:
                    conn.active = False
                    if conn.deadline != _INF:
                        conn.deadline = read_deadline
                elif conn.deadline < now:
                    conn.on_deadline()
            if self._idle and now - self._idle[0].idle_since > self.idle_timeout:
                for conn in [c for c in self._idle if now - c.idle_since > self.idle_timeout]:
                    conn.drop()

    async def _connect(self, timeout: float | None = None) -> _Connection:
        """A new connection, within ``timeout`` seconds (None: the pool's ``connect_timeout``)."""
        if timeout is None:
            timeout = self.connect_timeout
        self._connecting += 1
        try:
            # _Connection has no asyncio.Protocol base (it compiles to an extension type)
            _, proto = await asyncio.wait_for(
                self.loop.create_connection(
                    cast("Callable[[], asyncio.Protocol]", lambda: _Connection(self)), self.host, self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                ),
                timeout,
            )
        except TimeoutError:
            raise UpstreamTimeout(
                f"connecting to {self.host}:{self.port} timed out after {timeout:g}s"
            ) from None
        except ssl.SSLError as exc:
            raise UpstreamError(f"TLS error connecting to {self.host}:{self.port}: {exc}") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        finally:
            self._connecting -= 1
        return cast(_Connection, proto)

    async def _acquire(self, fresh: bool = False, connect_timeout: float | None = None) -> _Connection:
        idle = self._idle
        while idle and not fresh:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                self._busy.add(conn)
                return conn
        if self.size < self.pool_size:
            conn = await self._connect(connect_timeout)
            conn.reused = False
            self._busy.add(conn)
            return conn
        waiter: asyncio.Future[_Connection] = self.loop.create_future()
        self._waiters.append(waiter)
        if connect_timeout is not None:  # for the connection ``forget`` may open for this waiter
            self._connect_timeouts[waiter] = connect_timeout
        try:
            conn = await asyncio.wait_for(waiter, self.pool_timeout)
        except TimeoutError:
            raise UpstreamTimeout(
                f"no free connection to {self.host}:{self.port} within {self.pool_timeout:g}s"
            ) from None
        finally:
            if not waiter.done():
                waiter.cancel()
            if connect_timeout is not None:
                self._connect_timeouts.pop(waiter, None)
        return conn

    def release(self, conn: _Connection) -> None:
        """A connection finished its response and may be reused."""
        self._busy.discard(conn)
        if self._closed or conn.transport is None:
            conn.drop()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                conn.reused = True
                self._busy.add(conn)
                waiter.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        if self._waiters and not self._closed and self.size < self.pool_size:
            # capacity freed: let the oldest waiter open a new connection
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.loop.create_task(self._connect_for(waiter))

    async def _connect_for(self, waiter: asyncio.Future[_Connection]) -> None:
        try:
            conn = await self._connect(self._connect_timeouts.get(waiter))
        except Exception as exc:
            if not waiter.done():
                waiter.set_exception(exc)
            return
        conn.reused = False
        if waiter.done():
            self.release(conn)
        else:
            self._busy.add(conn)
            waiter.set_result(conn)

    def send(self, head: bytes, body: bytes, head_only: bool = False) -> Awaitable[PooledResponse]:
        """Send a request whose head bytes are already built; the awaitable gives the response head.

        # PERF: with an idle connection at hand this returns the connection's future directly,
        no coroutine frame per request.
        """
        return self.send_data(head + body if len(body) < 65536 else b"".join((head, body)), head_only)

    def send_data(self, data: bytes, head_only: bool = False) -> Awaitable[PooledResponse]:
        """``send`` for a request whose bytes (head and body) are already in one piece."""
        conn = self._take_idle()
        if conn is not None:
            return conn.start(data, head_only)
        return self._send_new(data, head_only)

    def send_cb(self, data: bytes, cb: HeadCallback) -> bool:
        """Send on an idle connection and call ``cb(response, None)`` once the head is in, or
        ``cb(None, error)``; False (nothing sent) when no idle connection is at hand.

        # PERF: the callback runs in the upstream connection's ``data_received``: no future, no task.
        """
        conn = self._take_idle()
        if conn is None:
            return False
        conn.start_cb(data, cb)
        return True

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                self._busy.add(conn)
                return conn
        return None

    def send_within(
        self, data: bytes, connect_timeout: float, head_only: bool = False
    ) -> Awaitable[PooledResponse]:
        """``send_data`` with this request's own connect timeout: any connection opened for it must be up
        within ``connect_timeout`` seconds instead of the pool's ``connect_timeout``.

        A timeout equal to the pool's is ``send_data`` itself.
        """
        if connect_timeout == self.connect_timeout:
            return self.send_data(data, head_only)
        conn = self._take_idle()
        if conn is None:
            return self._send_new(data, head_only, connect_timeout)
        waiter = conn.start(data, head_only)
        # a stale connection is resent on a new one (``_retry``): that one gets this timeout too
        self._connect_timeouts[waiter] = connect_timeout
        waiter.add_done_callback(self._settled)
        return waiter

    def _settled(self, waiter: asyncio.Future[Any]) -> None:
        self._connect_timeouts.pop(waiter, None)

    async def _send_new(
        self, data: bytes, head_only: bool, connect_timeout: float | None = None
    ) -> PooledResponse:
        conn = await self._acquire(connect_timeout=connect_timeout)
        return await conn.start(data, head_only)

    def start_retry(self, waiter: asyncio.Future[PooledResponse], data: bytes, head_only: bool) -> None:
        """Resend a stale connection's request on a new connection, as a task the pool keeps (a task
        left pending when the worker's loop closes would be destroyed with a traceback)."""
        task = self.loop.create_task(self._retry(waiter, data, head_only))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, waiter: asyncio.Future[PooledResponse], data: bytes, head_only: bool) -> None:
        try:
            conn = await self._acquire(fresh=True, connect_timeout=self._connect_timeouts.get(waiter))
            conn.reused = False
            resp = await conn.start(data, head_only)
        except GeneratorExit:  # destroyed with its loop: nothing may be scheduled any more
            raise
        except BaseException as exc:
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_exception(exc if isinstance(exc, Exception) else UpstreamError("cancelled"))
            return
        if not waiter.done():
            waiter.set_result(resp)

    def build_head(self, method: str, path: str, headers: list[tuple[str, str]], body_len: int) -> bytes:
        """Request line and headers; ``body_len`` < 0 leaves the head open (no length, no blank line)."""
        lines = [f"{method} {path} HTTP/1.1\r\nhost: {self.host_header}\r\n"]
        for k, v in headers:
            lines.append(f"{k}: {v}\r\n")
        if body_len >= 0:
            lines.append(f"content-length: {body_len}\r\n\r\n")
        return "".join(lines).encode("latin-1")

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> PooledResponse:
        return await self.send(self.build_head(method, path, headers, len(body)), body, method == "HEAD")

    async def close(self) -> None:
        self._closed = True
        self._sweeper.cancel()
        for task in list(self._retries):
            task.cancel()
        for conn in list(self._idle) + list(self._busy):
            conn.drop()
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_exception(UpstreamError("pool closed"))
