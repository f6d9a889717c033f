"""The native front end: an asyncio Protocol on uvloop with the compiled HTTP/1.1 parser.

Theory of operation, per connection:

    state        | event                         | action
    -------------+-------------------------------+--------------------------------------------------
    idle         | bytes arrive                  | parse; a complete request -> busy (``begin`` it)
    idle         | keep-alive deadline passes    | close quietly
    reading head | head deadline passes          | 408, close           (slow clients are cut)
    reading body | body deadline passes          | 408, close
    any          | ParseError                    | answer its status (400/413/431/501/505), close
    busy         | more bytes (pipelining)       | buffer; parsed only after the response is sent,
                 |                               | so pipelined requests are answered in order
    any          | client reads none of our      | (``pause_writing``) stop reading from it; take no
                 | answers: write buffer full    | further buffered request (nginx does the same)
    busy         | response done                 | keep-alive: next buffered request or idle; else close
    busy         | response done, write paused   | held: the buffered requests wait
    held         | client reads (resume_writing) | read again; the buffered requests are answered
    busy         | client closes                 | the app's next write raises ClientGone; a response
                 |                               | sent to a gone client is dropped
    draining     | response done                 | close (no new request is read)

Deadlines are plain numbers checked by one sweep per worker every half second (# PERF: no timer
handle per request).

Memory per connection is bounded both ways. Unparsed requests: at most ``_MAX_PIPELINE_BUFFER`` and one
read (reading pauses beyond it while a request is answered, and resumes only once the parser needs more
bytes or is back under it). Unread answers: the transport's buffer grows past its high-water mark by one
answer at most, since once the transport says ``pause_writing`` the connection reads nothing more and
answers nothing more until ``resume_writing``. A client that pipelines thousands of requests without
reading its answers costs a few answers' worth; the rest waits in the kernel's socket buffers.

A request is handed to the app with ``begin`` (see ``gateway.app.App``). An app that answers from
callbacks (the engine's non-stream proxy path: the upstream connection's callback writes the response)
returns None and calls ``responder.done()`` when the response is complete; an app that needs to wait
returns an awaitable, which runs as a task. # PERF: the callback path makes no task, no future and no
coroutine per request; the connection moves on to its next request from ``done()``. Requests answered
at once (``done()`` before ``begin`` returns) are taken in a loop, not by recursion, so a deep pipeline
of local answers keeps the stack flat.

Writes are batched per loop iteration (``WriteBatch``, shared with the upstream pool): a response, a
stream chunk or an upstream request is queued, and all that one iteration queued is written when its
I/O callbacks are done, each connection's pieces in one call. # PERF: the peers (clients, upstreams) are
woken once per batch instead of once per write; on loopback and in VMs the wake-up (an IPI) is the
largest single cost of a write, so at saturation this is worth about a quarter of a worker's
throughput, and it adds no latency worth the name (the batch is written before the loop next waits;
idle, a batch is one write). Order per connection is kept: every write of the listener and the pool
goes through the batch, and a connection is closed only after the batch is written (``close_after``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway._core.http import (
    STATE_BODY,
    STATE_HEAD,
    STATE_IDLE,
    ParseError,
    Request,
    RequestParser,
    build_response_head,
    chunk_frame,
    send_now,
    send_pieces_now,
)
from gateway.app import App, ClientGone, Headers
from gateway.errors import error_body, refusal, refused_id

try:
    from uvloop.loop import TCPTransport as _UV_TCP  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - uvloop is a dependency; without it, writes go through transports
    _UV_TCP = None

__all__ = ["BATCH", "HttpProtocol", "ListenerState", "NativeResponder", "WriteBatch", "direct_fd"]

log = logging.getLogger("gateway.server")

_INF = float("inf")
# what a connection's deadline is for
_NONE, _HEAD, _BODY, _KEEPALIVE = 0, 1, 2, 3
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CODES = {
    400: ("invalid_request_error", "bad_request"),
    408: ("invalid_request_error", "request_timeout"),
    413: ("invalid_request_error", "payload_too_large"),
    431: ("invalid_request_error", "headers_too_large"),
    500: ("server_error", "internal_error"),
    501: ("invalid_request_error", "not_implemented"),
    503: ("server_error", "overloaded"),
    505: ("invalid_request_error", "http_version_not_supported"),
}
# while busy, stop reading from a client that has this much unparsed data buffered
_MAX_PIPELINE_BUFFER = 256 * 1024
# a write batch past this many bytes is written at once (WriteBatch.write)
_BATCH_BYTES = 256 * 1024


_JSON = [("content-type", "application/json")]
_INTERNAL = error_body("internal error", "server_error", "internal_error")


def _error_response(status: int, message: str, keep_alive: bool = False, path: str = "",
                    request_id: str | None = None) -> bytes:
    """A refusal before the engine (the request could not be read), in its endpoint's dialect."""
    type_, code = _CODES.get(status, ("server_error", "error"))
    headers, body = refusal(status, message, type_, code, path, request_id)
    return build_response_head(status, headers, len(body), keep_alive) + body




class WriteBatch:
    """The writes of one loop iteration, written together when its callbacks are done (see the module's
    docstring). One per process (``BATCH``); a worker runs one loop."""

    def __init__(self) -> None:
        #: transport, fd, data, transport, fd, data, ... in the order written
        self._items: list[Any] = []
        self._loop: Any = None
        #: bytes queued (a batch is written at once past ``_BATCH_BYTES``)
        self._bytes = 0
        #: transports that were handed what their socket did not take (``_held_back``)
        self._backlog: set[Any] = set()
        self.flushes = 0

    def write(self, transport: Any, data: bytes, fd: int = -1) -> None:
        """Queue ``data`` for ``transport``; written before the loop next waits for I/O. ``fd``: the
        transport's socket when the batch may write to it directly (``direct_fd``), else -1."""
        items = self._items
        if not items:
            loop = asyncio.get_running_loop()
            self._loop = loop
            loop.call_soon(self.flush)
        elif not self._loop.is_running():  # left by a loop that stopped (tests, tools)
            # PERF: not ``get_running_loop()``, which asks the kernel for the process id on every call
            self.flush()
            self.write(transport, data, fd)
            return
        items.append(transport)
        items.append(fd)
        items.append(data)
        self._bytes += len(data)
        if self._bytes > _BATCH_BYTES:
            # bounded: a writer that queues much in one iteration (a stream's chunks in a loop) has it
            # written now, and the transports' own backpressure (pause_writing) tells it to wait
            self.flush()

    def flush(self) -> None:
        """Write what is queued: each run of one transport's pieces in one call (one ``write`` or
        ``writev``, no copy). A transport closed meanwhile gets nothing (its peer is gone).

        Where the connection gave its socket (``fd``) and the transport holds nothing unwritten, the
        pieces go to the socket here (``send_now``): # PERF: uvloop's ``write`` costs a method call, its
        buffer's bookkeeping and a buffer export per piece, twice per proxied request. What the kernel
        does not take (a full socket buffer: EAGAIN; an error) is handed to the transport, which queues
        it, waits for the socket, applies its flow control (``pause_writing``) and reports errors as it
        always does; while it holds bytes, later writes go through it too (``_held_back``), so the order
        on the wire is kept."""
        items = self._items
        if not items:
            return
        self._items = []
        self._loop = None
        self._bytes = 0
        self.flushes += 1
        backlog = self._backlog
        n = len(items)
        i = 0
        while i < n:
            transport = items[i]
            j = i + 3
            while j < n and items[j] is transport:
                j += 3
            try:
                if not transport.is_closing():
                    fd = items[i + 1]
                    if fd >= 0 and backlog and transport in backlog:
                        if transport.get_write_buffer_size():
                            fd = -1  # bytes wait in the transport: these go behind them
                        else:
                            backlog.discard(transport)
                    if j == i + 3:
                        data = items[i + 2]
                        if fd < 0:
                            transport.write(data)
                        else:
                            sent = send_now(fd, data)
                            if sent < len(data):
                                transport.write(data[sent:] if sent else data)
                                self._held_back(transport)
                    else:
                        pieces = items[i + 2:j:3]
                        if fd < 0:
                            transport.writelines(pieces)
                        else:
                            rest = _unsent(pieces, send_pieces_now(fd, pieces))
                            if rest:
                                transport.writelines(rest)
                                self._held_back(transport)
            except Exception:  # one broken transport must not cost the others their writes
                log.exception("a batched write failed")
            i = j

    def _held_back(self, transport: Any) -> None:
        """``transport`` holds bytes the socket did not take: its next writes go through it until it has
        written them (# PERF: a set lookup per write only while some transport is in it, not a method
        call per write). Closed transports leave the set when it grows."""
        backlog = self._backlog
        if len(backlog) >= 256:  # (in place: a flush in progress holds the set)
            for gone in [t for t in backlog if t.is_closing()]:
                backlog.discard(gone)
        backlog.add(transport)

    def abort_after(self, transport: Any) -> None:
        """Cut ``transport`` once what is queued for it is written: the peer gets what was sent before
        the cut (a stream cut mid-way shows its first events), as with unbatched writes."""
        if self._items:
            self.flush()
        transport.abort()

    def close_after(self, transport: Any) -> None:
        """Close ``transport`` once what is queued for it is written (now: closing writes out the
        transport's own buffer first)."""
        if self._items:
            self.flush()
        transport.close()


#: the process's batch; ``_BATCH`` is the same object, typed for C-level calls in the compiled module
BATCH = _BATCH = WriteBatch()


def _unsent(pieces: list[bytes], sent: int) -> list[bytes]:
    """What of ``pieces`` is left once their first ``sent`` bytes are written."""
    for k, piece in enumerate(pieces):
        if sent < len(piece):
            return [piece[sent:], *pieces[k + 1:]] if sent else pieces[k:]
        sent -= len(piece)
    return []


def direct_fd(transport: Any) -> int:
    """The socket a ``WriteBatch`` may write to itself for ``transport``, or -1 (everything goes through
    the transport): uvloop's plain TCP transport only, never TLS (its bytes must be encrypted by the
    transport) nor another event loop's transport."""
    if _UV_TCP is None or type(transport) is not _UV_TCP:
        return -1
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    try:
        fd: int = sock.fileno()
    except (OSError, ValueError):
        return -1
    return fd


class ListenerState:
    """What all connections of one worker share: the app, the limits, the open connections."""

    def __init__(
        self,
        app: App,
        *,
        max_header_bytes: int,
        max_body_bytes: int,
        max_connections: int,
        header_timeout: float,
        body_timeout: float,
        keepalive_timeout: float,
    ) -> None:
        self.app = app
        #: how a request is handed to the app: its ``begin`` (callback path), else ``handle`` (a task)
        self.begin: Callable[[Request, NativeResponder], Awaitable[None] | None] = getattr(
            app, "begin", app.handle
        )
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self.loop = asyncio.get_running_loop()
        self._sweeper: asyncio.Task[None] | None = None
        self.log_errors = True

    def start(self) -> None:
        self._sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = self.loop.time()
            for conn in list(self.connections):
                if conn.deadline < now:
                    conn.on_deadline()

    def begin_drain(self) -> None:
        """Stop reading new requests; idle connections close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()

    async def wait_drained(self, timeout: float) -> bool:
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self.connections

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.abort()


class NativeResponder:
    """Responder over one HTTP/1.1 connection (see gateway.app.Responder)."""

    __slots__ = (
        "_chunked", "_conn", "_head_only", "_http10", "completed", "finished", "keep_alive", "started",
    )

    def __init__(self, conn: HttpProtocol, keep_alive: bool, version: int, head_only: bool = False) -> None:
        self._conn = conn
        self.keep_alive = keep_alive and not conn.state.draining
        self._chunked = version == 11
        self._http10 = version == 10
        self._head_only = head_only  # a response to HEAD has headers only (RFC 9110 9.3.2)
        self.started = False
        self.finished = False
        #: the app said the response is complete (``done``), on the callback path
        self.completed = False

    @property
    def disconnected(self) -> bool:
        return self._conn.transport is None

    @property
    def peer_closed(self) -> bool:
        """The client closed its side (EOF) or the connection is gone: it will send nothing more. A client
        may still read an answer after a half-close, so this is not ``disconnected``; it is for a server
        that would otherwise wait without end for such a client (the mock's ``hang``)."""
        conn = self._conn
        return conn.transport is None or conn.peer_eof

    def send(self, status: int, headers: Headers, body: bytes) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.finished = True
        conn = self._conn
        transport = conn.transport
        if transport is None:
            return
        if self._http10 and self.keep_alive:
            headers = [*headers, ("connection", "keep-alive")]  # HTTP/1.0 keep-alive must be acknowledged
        head = build_response_head(status, headers, len(body), self.keep_alive)
        if self._head_only:
            _BATCH.write(transport, head, conn.fd)
        elif len(body) < 16384:
            _BATCH.write(transport, head + body, conn.fd)
        else:  # PERF: not copied: one writev with what else is queued for this connection
            _BATCH.write(transport, head, conn.fd)
            _BATCH.write(transport, body, conn.fd)

    def start_stream(self, status: int, headers: Headers) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        if not self._chunked:
            self.keep_alive = False
        conn = self._conn
        transport = conn.transport
        if transport is None:
            return
        head = build_response_head(status, headers, -1 if self._chunked else -2, self.keep_alive)
        _BATCH.write(transport, head, conn.fd)

    async def write(self, chunk: bytes) -> None:
        conn = self._conn
        transport = conn.transport
        if transport is None:
            raise ClientGone()
        if not chunk:
            return
        if self._chunked:
            _BATCH.write(transport, chunk_frame(chunk), conn.fd)
        else:
            _BATCH.write(transport, chunk, conn.fd)
        if conn.write_paused:
            await conn.wait_writable()

    def end_stream(self) -> None:
        self.finished = True
        conn = self._conn
        transport = conn.transport
        if transport is not None and self._chunked:
            _BATCH.write(transport, b"0\r\n\r\n", conn.fd)

    def abort(self) -> None:
        """Drop the connection without finishing the response (the client sees a cut stream)."""
        self.finished = True
        self.keep_alive = False
        self._conn.abort()

    def done(self) -> None:
        """The app's callback path: the response is complete; the connection moves on."""
        if self.completed:
            return
        self.completed = True
        self._conn.response_done(self)


class HttpProtocol:
    """One client connection: an asyncio protocol (uvloop calls its methods; the class has no
    ``asyncio.Protocol`` base so that it compiles to an extension type, see ``listener.pxd``)."""

    __slots__ = (
        "_begin",
        "_drain_waiter",
        "_held",
        "_inline",
        "busy",
        "deadline",
        "deadline_kind",
        "fd",
        "parser",
        "peer_eof",
        "reading_paused",
        "state",
        "task",
        "transport",
        "write_paused",
    )

    def __init__(self, state: ListenerState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        #: the socket the write batch writes to directly (``direct_fd``), -1: through the transport
        self.fd = -1
        self.parser = RequestParser(state.max_header_bytes, state.max_body_bytes)
        self.busy = False
        self.deadline = _INF
        self.deadline_kind = _NONE
        #: the task running the current request, when the app needed one
        self.task: asyncio.Task[None] | None = None
        self.write_paused = False
        self.reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._begin = state.begin
        #: inside ``begin``: a ``done()`` now only marks the response, the loop in ``_next`` moves on
        self._inline = False
        self.peer_eof = False
        #: requests wait, unread or unparsed, until the client reads its answers (``resume_writing``)
        self._held = False

    # -- asyncio callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        state = self.state
        if len(state.connections) >= state.max_connections or state.draining:
            transport.write(_error_response(503, "too many connections"))  # its first write: nothing queued
            transport.close()
            return
        self.transport = transport
        self.fd = direct_fd(transport)
        state.connections.add(self)
        self.deadline = state.loop.time() + state.header_timeout
        self.deadline_kind = _HEAD

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        if self.busy or self._held:
            if self.parser.buffered > _MAX_PIPELINE_BUFFER and self.transport is not None:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        self._next(False)

    def eof_received(self) -> bool | None:
        self.peer_eof = True
        if not self.busy and not self._held:
            self.close()
        return True  # keep the transport half-open while a response is being written

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.state.connections.discard(self)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        """The client does not read its answers as fast as they come: read none of its requests until it
        does (their answers would pile up in the transport's buffer, without bound)."""
        self.write_paused = True
        transport = self.transport
        if transport is not None and not self.reading_paused:
            self.reading_paused = True
            transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._held:
            self._unhold()
        elif not self.busy and self.parser.buffered <= _MAX_PIPELINE_BUFFER:
            # the pause came after the connection went idle (its answer was written with the batch, after
            # ``_next`` found no request to hold): nothing is held, but reading must go on
            self._read_more()

    def _unhold(self) -> None:
        """The client read its answers: read again and answer the requests held meanwhile."""
        self._held = False
        transport = self.transport
        if transport is None:
            return
        if self.peer_eof and not self.parser.buffered:
            _BATCH.close_after(transport)
            return
        if self.parser.buffered <= _MAX_PIPELINE_BUFFER:
            self._read_more()
        self._next(True)

    def _read_more(self) -> None:
        """Lift a pause of reading: the parser has room, or needs more bytes to go on. Never while the
        client reads no answers (``pause_writing``)."""
        if self.reading_paused and not self.write_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    # -- request cycle -------------------------------------------------------------------------------

    async def wait_writable(self) -> None:
        if self.transport is None:
            raise ClientGone()
        if self._drain_waiter is None:
            self._drain_waiter = self.state.loop.create_future()
        await self._drain_waiter
        if self.transport is None:
            raise ClientGone()

    def _next(self, after_response: bool) -> None:
        """Take the buffered requests one by one while they are answered at once; stop at one that the
        app answers later (a callback or a task), or when no complete request is buffered."""
        parser = self.parser
        while True:
            if self.write_paused:  # the client reads no answers: hold its requests (see resume_writing)
                self._held = True
                self.deadline = _INF
                self.deadline_kind = _NONE
                return
            try:
                req = parser.next_request()
            except ParseError as exc:
                self._fail(exc.status, exc.message, parser.failed_target())
                return
            if req is None:
                self._read_more()  # a request is incomplete: its bytes must come in, whatever is buffered
                if after_response and parser.state == STATE_IDLE:
                    state = self.state
                    self.deadline = state.loop.time() + state.keepalive_timeout
                    self.deadline_kind = _KEEPALIVE
                else:
                    self._await_more()
                return
            self.busy = True
            self.deadline = _INF
            self.deadline_kind = _NONE
            responder = NativeResponder(self, req.keep_alive, req.version, req.method == "HEAD")
            self._inline = True
            try:
                pending = self._begin(req, responder)
            except Exception:
                log.exception("unhandled error in request handler")
                _answer_failure(responder)
                pending = None
                responder.completed = True
            finally:
                self._inline = False
            if pending is not None:
                self.task = self.state.loop.create_task(self._run(pending, responder))
                return
            if not responder.completed or not self._proceed(responder):
                return  # answered later, through responder.done(); or the connection is closing
            after_response = True

    def response_done(self, responder: NativeResponder) -> None:
        """``responder.done()``: the app's callback path finished the response."""
        if self._inline:
            return  # answered inside ``begin``: the loop in ``_next`` goes on
        if self._proceed(responder):
            self._next(True)

    async def _run(self, pending: Awaitable[None], responder: NativeResponder) -> None:
        """A request the app answers in a coroutine."""
        try:
            await pending
        except ClientGone:
            responder.keep_alive = False
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error in request handler")
            _answer_failure(responder)
        self.task = None
        if self._proceed(responder):
            self._next(True)

    def _proceed(self, responder: NativeResponder) -> bool:
        """After a response: True when the connection should read its next request."""
        if not responder.finished:
            # the app returned without finishing: end the stream, or answer, never hang the client
            if responder.started:
                responder.end_stream()
            else:
                responder.keep_alive = False
                responder.send(500, _JSON, _INTERNAL)
        self.busy = False
        transport = self.transport
        if transport is None:
            return False
        if not responder.keep_alive or self.state.draining or (self.peer_eof and not self.parser.buffered):
            _BATCH.close_after(transport)  # the answer is queued: written first
            return False
        # else read on only once they are taken; PERF: the buffer's size (a Python int) is asked only
        # when reading is paused, which is all ``_read_more`` acts on
        if self.reading_paused and self.parser.buffered <= _MAX_PIPELINE_BUFFER:
            self._read_more()
        return True

    def _await_more(self) -> None:
        """No complete request yet: arm the right deadline, answer Expect: 100-continue."""
        parser = self.parser
        state = self.state
        pstate = parser.state
        if pstate == STATE_BODY:
            if parser.expect_continue and self.transport is not None:
                _BATCH.write(self.transport, _CONTINUE, self.fd)
            if self.deadline_kind != _BODY:
                self.deadline = state.loop.time() + state.body_timeout
                self.deadline_kind = _BODY
        elif pstate == STATE_HEAD and self.deadline_kind != _HEAD:
            self.deadline = state.loop.time() + state.header_timeout
            self.deadline_kind = _HEAD

    def _fail(self, status: int, message: str, path: str = "") -> None:
        rid = refused_id()
        if self.state.log_errors:
            log.info("rejected request %s: %d %s%s", rid, status, message, f" ({path[:200]})" if path else "")
        transport = self.transport
        if transport is not None:
            _BATCH.write(transport, _error_response(status, message, False, path, rid), self.fd)
            _BATCH.close_after(transport)
        self.deadline = _INF
        self.deadline_kind = _NONE

    def on_deadline(self) -> None:
        """Called by the sweep when this connection's deadline has passed."""
        kind = self.deadline_kind
        self.deadline = _INF
        self.deadline_kind = _NONE
        if self.busy:
            return
        if kind == _BODY:
            self._fail(408, "timed out reading the request body", self.parser.failed_target())
        elif kind == _HEAD and self.parser.state != STATE_IDLE:
            self._fail(408, "timed out reading the request head", self.parser.failed_target())
        else:
            self.close()  # idle: a keep-alive timeout, or a connection that never sent a byte

    def close(self) -> None:
        if self.transport is not None:
            _BATCH.close_after(self.transport)

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            _BATCH.abort_after(transport)
            self.transport = None
            self.state.connections.discard(self)


def _answer_failure(responder: NativeResponder) -> None:
    """An app failed unexpectedly: a 500 if nothing was sent yet, else a cut connection."""
    if not responder.started:
        responder.keep_alive = False
        responder.send(500, _JSON, _INTERNAL)
    else:
        responder.abort()
