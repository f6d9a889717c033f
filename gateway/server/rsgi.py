"""The granian front end: the same Engine behind granian's RSGI interface (HTTP/1.1, HTTP/2, TLS).

Process model (granian's multiprocess server, not ``gateway.server.supervisor``):

    process | what runs there
    --------+----------------------------------------------------------------------------------------
    main    | ``serve_granian``: granian's ``MPServer`` binds, spawns N workers (respawns one that
            | crashes), stops them on SIGTERM/SIGINT. Our startup hook replaces granian's SIGHUP
            | handler (a rolling restart of every worker) with the gateway's config reload below.
    worker  | granian imports ``gateway.server.rsgi:app`` (workers are separate processes, so the app
            | is found by import string, never passed as an object) and calls ``app.__rsgi_init__``
            | with the worker's uvloop loop *before* that loop runs: the Engine is built and started
            | there. Rust (hyper/tokio) threads parse HTTP and call ``app.__rsgi__`` on the loop.

Where a worker's config comes from (environment set by ``serve_granian`` before the workers start):

    ``GATEWAY_CONFIG_SNAPSHOT_FILE``  the snapshot the main process validated last (``gateway.config
                             .snapshot``: the config and the contents of its credential files), rewritten
                             atomically at every valid reload: read at worker start and on every SIGHUP, so
                             every worker, a respawned one too, serves exactly what the main validated and
                             no worker reads the TOML file or a key file itself
    ``GATEWAY_CONFIG_JSON``  the config the main process validated last (msgspec JSON): used at worker start
                             when there is no snapshot file
    ``GATEWAY_CONFIG``       the TOML file: read at worker start and on SIGHUP only when there is neither
                             (e.g. under granian's own CLI)
    none                     the embedded default config

Signals:

    signal            | main process                                   | worker
    ------------------+------------------------------------------------+---------------------------------
    SIGHUP            | read and validate the file once; if valid,     | load the snapshot file into the
                      | rewrite the snapshot file and SIGHUP every     | Engine (unreadable: logged, old
                      | worker; else log the errors, keep everything   | config keeps serving)
    main dies         | (even SIGKILL)                                 | SIGTERM from the kernel
                      |                                                | (``PR_SET_PDEATHSIG``): drains
    SIGTERM / SIGINT  | granian: SIGTERM every worker, wait up to      | granian stops accepting, lets
                      | ``drain_timeout + 5`` s, then SIGKILL          | in-flight requests finish; we set
                      |                                                | ``engine.draining`` and cancel what
                      |                                                | still runs at ``drain_timeout``

What granian cannot do (see docs/frontends.md): ``abort()`` cannot cut a response (granian always ends a
stream body cleanly); ``write`` has no backpressure (granian queues stream chunks without bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import mmap
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
from granian.rsgi import ProtocolClosed  # type: ignore[attr-defined,unused-ignore]  # not re-exported by some releases

from gateway._core.http import Request
from gateway.app import ClientGone, Headers
from gateway.config import Config, ConfigError, default_config, load_config
from gateway.config.loader import check_servable
from gateway.errors import error_body, refusal, refused_id

__all__ = [
    "ENV_CONFIG",
    "ENV_CONFIG_JSON",
    "ENV_CONFIG_SNAPSHOT_FILE",
    "RSGIApp",
    "RSGIResponder",
    "app",
    "config_from_env",
    "granian_options",
    "serve_granian",
]

log = logging.getLogger("gateway.rsgi")

#: path of the TOML config file the workers read (unset: the embedded default)
ENV_CONFIG = "GATEWAY_CONFIG"
#: the config the main process validated last, as msgspec JSON (what a starting worker uses)
ENV_CONFIG_JSON = "GATEWAY_CONFIG_JSON"
#: the file holding the main process's last validated snapshot (``gateway.config.snapshot``)
ENV_CONFIG_SNAPSHOT_FILE = "GATEWAY_CONFIG_SNAPSHOT_FILE"
#: the granian main process's pid, for the workers' parent-death signal
ENV_MAIN_PID = "GATEWAY_GRANIAN_MAIN_PID"

# RSGI's scope.http_version ("1" is HTTP/1.0 as granian reports it) -> Request.version
_VERSIONS = {"1.1": 11, "2": 11, "1": 10, "1.0": 10}
_JSON: Headers = [("content-type", "application/json")]
_SOCKET_BACKLOG = 4096  # as the native front end's listen()

# what a stream transport's send and the body read raise once the client has gone
_ProtocolClosed: type[Exception] = ProtocolClosed


def _error(status: int, message: str, type_: str, code: str) -> tuple[int, Headers, bytes]:
    return status, list(_JSON), error_body(message, type_, code)


def _snapshot_from_file() -> Config | None:
    """The main process's last validated snapshot, installed (its credential files pinned); None when
    there is no snapshot file (granian's own CLI). Raises OSError or msgspec errors for an unreadable one."""
    from gateway.config.snapshot import decode_snapshot, install

    path = os.environ.get(ENV_CONFIG_SNAPSHOT_FILE)
    if not path:
        return None
    with open(path, "rb") as f:
        return install(decode_snapshot(f.read()))


def write_snapshot_file(path: str, data: bytes) -> None:
    """Replace the snapshot file atomically: a worker reads either the old snapshot or the new one. It holds
    the contents of credential files, so only this user may read it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def config_from_env() -> tuple[Config, str | None]:
    """The worker's starting config and the file SIGHUP reloads (see the module docstring)."""
    path = os.environ.get(ENV_CONFIG) or None
    from_file = _snapshot_from_file()
    if from_file is not None:
        return from_file, path
    snapshot = os.environ.get(ENV_CONFIG_JSON)
    if snapshot:
        return msgspec.json.decode(snapshot, type=Config), path
    if path is not None:
        return load_config(path), path
    return default_config(), None


# --------------------------------------------------------------------------------------------------------
# Responder


class RSGIResponder:
    """Responder over one RSGI HTTP protocol object (see gateway.app.Responder).

    ``send`` and ``start_stream`` are synchronous in RSGI too (``response_bytes``/``response_stream`` hand
    the response to granian and return at once). ``write`` awaits ``send_bytes``, which only queues the
    chunk (granian's stream channel is unbounded: no backpressure) and raises ``ProtocolClosed`` once the
    client has gone: that becomes ``ClientGone``.
    """

    __slots__ = ("_gone", "_proto", "_transport", "_watch", "finished", "keep_alive", "started")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._transport: Any = None
        self._gone = False
        self._watch: asyncio.Future[Any] | None = None
        self.started = False
        self.finished = False
        #: set by the engine for errors after which a connection should close; granian (hyper) owns the
        #: connection and its framing, so this is informational here
        self.keep_alive = True

    @property
    def disconnected(self) -> bool:
        """True once the client is known to be gone.

        The first read starts watching ``protocol.client_disconnect()``, so requests that never ask (the
        engine's) pay nothing for it (# PERF); a failed ``write`` also sets it.
        """
        if self._gone:
            return True
        watch = self._watch
        if watch is None:
            try:
                self._watch = watch = asyncio.ensure_future(self._proto.client_disconnect())
            except Exception:  # no loop, or a protocol without client_disconnect: writes still tell
                return False
            watch.add_done_callback(self._on_disconnect)
            return False
        return self._gone

    def _on_disconnect(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._gone = True

    def close_watch(self) -> None:
        """Stop watching for a disconnect (the request is over)."""
        watch = self._watch
        if watch is not None:
            self._watch = None
            if not watch.done():
                watch.cancel()

    def send(self, status: int, headers: Headers, body: bytes) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.finished = True
        self._proto.response_bytes(status, headers, body)

    def start_stream(self, status: int, headers: Headers) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self._transport = self._proto.response_stream(status, headers)

    async def write(self, chunk: bytes) -> None:
        transport = self._transport
        if transport is None:
            if not self.started:
                raise RuntimeError("write before start_stream")
            raise ClientGone()  # ended or aborted
        if not chunk:
            return
        try:
            await transport.send_bytes(chunk)
        except _ProtocolClosed:
            self._gone = True
            self._transport = None
            raise ClientGone() from None

    def end_stream(self) -> None:
        # granian ends the body when the transport is dropped (and the app returns)
        self.finished = True
        self._transport = None

    def abort(self) -> None:
        """End the response now, without writing more.

        granian cannot cut a response: its stream body has no error frame and the connection is not ours,
        so the body ends *cleanly* (HTTP/1.1 terminating chunk, HTTP/2 END_STREAM), exactly like
        ``end_stream``. A client can only tell from the content (no ``data: [DONE]``, truncated JSON).
        """
        self.finished = True
        self.keep_alive = False
        self._transport = None


# --------------------------------------------------------------------------------------------------------
# The RSGI application


class RSGIApp:
    """The gateway as an RSGI application: one Engine per worker process.

    ``config`` fixes the config (tests); without it ``__rsgi_init__`` reads it from the environment
    (``config_from_env``). ``signals`` installs the worker's SIGHUP reload and SIGTERM/SIGINT drain hooks
    (granian workers; tests leave them off).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        config_path: str | None = None,
        signals: bool = True,
        engine_factory: Callable[[Config], Any] | None = None,
    ) -> None:
        self._fixed_config = config
        self.config_path = config_path
        self.signals = signals
        self._engine_factory = engine_factory
        self.engine: Any = None
        self.config: Config | None = None
        self.max_body_bytes = 0
        self.drain_timeout = 30.0
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.inflight: set[asyncio.Task[Any]] = set()
        self._starting: asyncio.Task[None] | None = None
        self._saved_handlers: dict[int, Any] = {}
        #: the signals raised once more for the loop's handlers (see ``_chained``)
        self._reraised: set[int] = set()
        self._initializing = False
        self._hup_installed = False
        #: SIGHUP's disposition before the loop's handler (SIG_IGN under ``nohup``), put back on removal
        self._hup_before: Any = None
        self._drain_timer: asyncio.TimerHandle | None = None

    # -- lifecycle (granian calls these once per worker, with the worker's loop, not running yet) ---------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._initializing = True
        if self.signals:  # first: a SIGTERM from now on must not be lost (see _chained)
            self._install_term()
            if _main_stopping():  # it came before that: the worker stops as soon as it serves
                _stops_pending.add(signal.SIGTERM)
        if self._fixed_config is not None:
            config = self._fixed_config
        else:
            config, self.config_path = config_from_env()
        self._apply(config)
        if self._engine_factory is not None:
            engine = self._engine_factory(config)
        else:
            from gateway.engine import Engine

            engine = Engine(config)
        if loop.is_running():  # not granian's case; another RSGI server might start us on a live loop
            self._starting = loop.create_task(self._startup(engine))
        else:
            # a SIGTERM during this run of the loop is held back: it comes after the run, to our handler
            # alone, which raises it again once granian serves (_chained), so that granian's shutdown
            # starts while its server runs (its signal, set twice, blocked for good: _shutdown_signal_once)
            with _held_signals(self.signals):
                loop.run_until_complete(engine.startup())
            self.engine = engine
        if self.draining and hasattr(engine, "draining"):  # the drain began during the startup
            engine.draining = True
        if self.signals:
            _die_with_main()
            self._install_hup(loop)
            if _take_pending_hup():  # a SIGHUP came between the fork and now: reload once running
                loop.call_soon(self.reload)
            self._initializing = False
            for signum in _take_pending_stops():  # a SIGTERM too: raised again once granian serves
                self._reraised.add(signum)
                loop.call_soon(os.kill, os.getpid(), signum)
        log.info("granian worker %d: engine started", os.getpid())

    async def _startup(self, engine: Any) -> None:
        await engine.startup()
        self.engine = engine

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._restore_signals(loop)
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        engine = self.engine
        if engine is None:
            return
        self.engine = None
        if loop.is_running():
            loop.create_task(engine.shutdown())
        else:
            loop.run_until_complete(engine.shutdown())
        log.info("granian worker %d: engine stopped", os.getpid())

    def _apply(self, config: Config) -> None:
        self.config = config
        self.max_body_bytes = config.server.max_body_bytes
        self.drain_timeout = config.server.drain_timeout

    # -- signals ---------------------------------------------------------------------------------------

    def _install_hup(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            before = signal.getsignal(signal.SIGHUP)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            self._hup_installed = True
            self._hup_before = before
        except (NotImplementedError, RuntimeError, ValueError) as exc:  # not the main thread, or Windows
            log.warning("granian worker: no SIGHUP reload (%s)", exc)

    def _install_term(self) -> None:
        # granian has put its own SIGTERM/SIGINT handlers on the loop (they start its graceful shutdown);
        # the loop cannot tell us what they are, so chain on the Python-level handler instead: uvloop and
        # asyncio both dispatch from the wakeup fd, and we call the previous handler after ours.
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                prev = signal.getsignal(sig)
                signal.signal(sig, self._chained(prev))
            except (ValueError, OSError) as exc:  # not the main thread
                log.warning("granian worker: no drain hook for %s (%s)", signal.Signals(sig).name, exc)
                continue
            self._saved_handlers[sig] = prev

    def _chained(self, prev: Any) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            loop = self.loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self.begin_drain)
                if self._initializing:  # raised again at the end of __rsgi_init__, after the startup's run
                    _stops_pending.add(signum)
                elif signum not in self._reraised:
                    # uvloop hands a signal to its handlers (granian's shutdown) only when it came while
                    # the loop ran; one that came between two runs (the engine's startup, granian's serving)
                    # reaches this Python-level handler alone, perhaps only once the loop runs again, and
                    # the worker would serve on after its main process stopped. Raised once more from the
                    # running loop, it reaches them (granian's shutdown and our drain are idempotent).
                    self._reraised.add(signum)
                    loop.call_soon_threadsafe(os.kill, os.getpid(), signum)
            if callable(prev):
                prev(signum, frame)

        return handler

    def _restore_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._hup_installed:
            self._hup_installed = False
            try:
                loop.remove_signal_handler(signal.SIGHUP)  # (which sets SIG_DFL, whatever was there)
                if self._hup_before is not None:
                    signal.signal(signal.SIGHUP, self._hup_before)
            except (NotImplementedError, RuntimeError, ValueError, OSError):
                pass
        saved, self._saved_handlers = self._saved_handlers, {}
        for sig, prev in saved.items():
            try:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass

    def reload(self) -> None:
        """SIGHUP: reload the config file into the engine; a file that fails validation is logged, ignored."""
        path = self.config_path
        pid = os.getpid()
        if path is None:
            log.info("granian worker %d: no config file to reload (embedded default)", pid)
            return
        engine = self.engine
        if engine is None:
            log.warning("granian worker %d: SIGHUP before the engine started; ignored", pid)
            return
        try:
            # the snapshot the main process validated: every worker applies the same one
            new = _snapshot_from_file()
            if new is None:
                new = load_config(path)
                check_servable(new, path)
            engine.reload(new)
        except ConfigError as exc:
            log.error("granian worker %d: config reload rejected, keeping the running config:\n%s", pid, exc)
        except Exception:
            log.exception("granian worker %d: config reload failed, keeping the running config", pid)
        else:
            self._apply(new)
            log.info("granian worker %d: config reloaded from %s", pid, path)

    def begin_drain(self) -> None:
        """SIGTERM/SIGINT reached this worker: granian stops accepting and waits for in-flight requests;
        /readyz answers 503 meanwhile; what still runs after ``drain_timeout`` is cancelled."""
        if self.draining:
            return
        self.draining = True
        engine = self.engine
        if engine is not None and hasattr(engine, "draining"):
            engine.draining = True
        loop = self.loop
        if loop is not None and self.inflight:
            log.info("granian worker %d: draining %d request(s), up to %.1f s",
                     os.getpid(), len(self.inflight), self.drain_timeout)
        if loop is not None:
            self._drain_timer = loop.call_later(self.drain_timeout, self.cut_inflight)

    def cut_inflight(self) -> None:
        """The drain deadline: cancel every request still running (streams end where they are)."""
        self._drain_timer = None
        if self.inflight:
            log.warning("granian worker %d: drain deadline passed with %d request(s) running; cutting them",
                        os.getpid(), len(self.inflight))
        for task in list(self.inflight):
            task.cancel()

    # -- requests --------------------------------------------------------------------------------------

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":  # websockets are off in serve_granian; refuse if a server sends one
            protocol.close(404)
            return
        engine = self.engine
        if engine is None:
            starting = self._starting
            if starting is None:
                protocol.response_bytes(*_error(503, "the gateway is not started", "server_error",
                                                "overloaded"))
                return
            await starting
            engine = self.engine
        task = asyncio.current_task()
        if task is not None:
            self.inflight.add(task)
        try:
            try:
                request = await self._request(scope, protocol)
            except asyncio.CancelledError:  # the drain deadline, while the body was still arriving
                protocol.response_bytes(*_error(503, "the gateway is shutting down", "server_error",
                                                "overloaded"))
                return
            if request is None:
                return
            await self._run(engine, request, protocol)
        finally:
            if task is not None:
                self.inflight.discard(task)

    async def _request(self, scope: Any, protocol: Any) -> Request | None:
        """The Request, or None when it has been answered here (413) or the client has gone."""
        headers: list[tuple[bytes, bytes]] = []
        length: bytes | None = None
        chunked = False
        for k, v in scope.headers.items():
            kb = k.encode("latin-1")
            try:
                vb = v.encode("latin-1")
            except UnicodeEncodeError:
                vb = v.encode("utf-8")
            if kb == b"content-length":
                length = vb
            elif kb == b"transfer-encoding":
                chunked = True
            headers.append((kb, vb))
        http_version = scope.http_version
        version = _VERSIONS.get(http_version, 11)
        h2 = http_version == "2"
        if h2:
            authority = getattr(scope, "authority", None)
            if authority and not any(k == b"host" for k, _ in headers):
                headers.append((b"host", authority.encode("latin-1")))
        limit = self.max_body_bytes
        body: bytes
        try:
            if length is None and not chunked and not h2:
                body = b""  # HTTP/1.x without Content-Length or Transfer-Encoding has no body
            elif length is not None:
                try:
                    declared = int(length)
                except ValueError:
                    declared = -1
                if declared > limit:
                    self._too_large(protocol, limit, scope.path)
                    return None
                # hyper enforces Content-Length framing: the body cannot be longer than declared
                body = await protocol() if declared != 0 else b""
            else:
                # chunked HTTP/1.1, or HTTP/2 without content-length: read up to the limit, no further
                parts: list[bytes] = []
                size = 0
                async for chunk in protocol:
                    if not chunk:
                        continue
                    size += len(chunk)
                    if size > limit:
                        self._too_large(protocol, limit, scope.path)
                        return None
                    parts.append(chunk)
                body = b"".join(parts) if len(parts) != 1 else parts[0]
        except _ProtocolClosed:
            return None  # the client went away while sending the body
        if len(body) > limit:
            self._too_large(protocol, limit, scope.path)
            return None
        return Request(scope.method, scope.path, scope.query_string, version, headers, body, True)

    @staticmethod
    def _too_large(protocol: Any, limit: int, path: str) -> None:
        rid = refused_id()
        log.info("rejected request %s: 413 request body exceeds %d bytes (%s)", rid, limit, path[:200])
        headers, body = refusal(413, f"request body exceeds {limit} bytes", "invalid_request_error",
                                "payload_too_large", path, rid)
        protocol.response_bytes(413, headers, body)

    async def _run(self, engine: Any, request: Request, protocol: Any) -> None:
        responder = RSGIResponder(protocol)
        try:
            await engine.handle(request, responder)
        except ClientGone:
            pass
        except asyncio.CancelledError:
            # the drain deadline (or granian) cancelled us: end what was started, answer what was not
            if not responder.started:
                status, headers, body = _error(503, "the gateway is shutting down", "server_error",
                                               "overloaded")
                responder.send(status, headers, body)
            else:
                responder.abort()
        except Exception:
            log.exception("unhandled error in request handler")
            if not responder.started:
                status, headers, body = _error(500, "internal error", "server_error", "internal_error")
                responder.send(status, headers, body)
            else:
                responder.abort()
        finally:
            responder.close_watch()
        if not responder.finished:
            # the app returned without finishing: end the stream, or answer so the client is not left hanging
            if responder.started:
                responder.end_stream()
            else:
                status, headers, body = _error(500, "no response", "server_error", "internal_error")
                responder.send(status, headers, body)


#: what granian loads in each worker: ``gateway.server.rsgi:app``
app = RSGIApp()


def _shutdown_signal_once() -> bool:
    """Make granian's worker shutdown signal safe to raise more than once; False when granian's signal
    module is not the one this knows (then nothing is changed).

    granian sets its ``WorkerSignal`` from its SIGTERM/SIGINT handler, and ``WorkerSignal.set`` sends on a
    channel of one place with a blocking send, the GIL held: the second ``set`` before the first was taken
    blocks the worker for good, and its main process SIGKILLs it ``drain_timeout + 5`` seconds later, with
    no engine shutdown (call records, spend and leases of the last moments lost). A worker is signalled
    twice whenever a whole process group is (Ctrl-C in a terminal, ``kill -- -PGID``: the worker's own
    signal, then its main's), and by our own re-raise (``RSGIApp._chained``). So the handlers granian puts
    on each worker's loop are made here, as granian makes them, with a ``set`` called once.

    Called at import: granian imports this module (the target) in each worker before it installs the
    handlers (``granian._signals.set_loop_signals``, looked up at that moment)."""
    try:
        import granian._signals as granian_signals
        from granian._granian import WorkerSignal
    except ImportError:
        return False
    original = getattr(granian_signals, "set_loop_signals", None)
    if original is None or getattr(original, "_gateway_once", False):
        return original is not None
    import inspect

    if list(inspect.signature(original).parameters) != ["loop"]:
        return False

    def set_loop_signals(loop: asyncio.AbstractEventLoop) -> Any:
        event = WorkerSignal()
        fired = False

        def signal_handler(signum: int, frame: FrameType | None) -> None:
            nonlocal fired
            if not fired:
                fired = True
                event.set()

        signals = (signal.SIGINT, signal.SIGTERM)
        try:
            for sig in signals:
                loop.add_signal_handler(sig, signal_handler, sig, None)
        except NotImplementedError:
            for sig in signals:
                signal.signal(sig, signal_handler)
        return event

    set_loop_signals._gateway_once = True  # type: ignore[attr-defined]
    granian_signals.set_loop_signals = set_loop_signals
    return True


_shutdown_signal_once()


@contextlib.contextmanager
def _held_signals(hold: bool) -> Iterator[None]:
    """SIGTERM and SIGINT blocked on this thread (the worker's main thread: the one Python runs signal
    handlers on) for the duration; one that comes meanwhile is delivered when they are unblocked."""
    if not hold:
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, OSError, ValueError):  # no per-thread signal masks here
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _die_with_main() -> None:
    """A worker is SIGTERMed (and drains) when granian's main process dies, even by SIGKILL, so no orphan
    keeps serving on the port; one whose main is gone already stops at once."""
    main = os.environ.get(ENV_MAIN_PID)
    if not main or not main.isdigit():
        return
    from gateway.server.control import set_parent_death_signal

    if not set_parent_death_signal(int(main)):
        log.warning("granian worker %d: the main process is gone; stopping", os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)


# set in a worker by the main process's SIGHUP handler it inherited, before __rsgi_init__ installs its own
_hup_pending = False


def _take_pending_hup() -> bool:
    global _hup_pending
    pending, _hup_pending = _hup_pending, False
    return pending


#: SIGTERM/SIGINT that reached this worker before it had any handler of its own (the main's, inherited
#: across the fork, noted them: ``_MainHooks._on_stop``)
_stops_pending: set[int] = set()


def _take_pending_stops() -> list[int]:
    pending = sorted(_stops_pending)
    _stops_pending.clear()
    return pending


#: one byte shared by granian's main process and the workers it forks: 1 once the main is stopping
_stop_flag: mmap.mmap | None = None


def _stop_flag_create() -> None:
    global _stop_flag
    try:
        _stop_flag = mmap.mmap(-1, 1)  # anonymous and shared: a fork sees the parent's later writes
    except (OSError, ValueError) as exc:
        log.warning("granian main: no stop flag for the workers (%s)", exc)


def _stop_flag_set() -> None:
    if _stop_flag is not None:
        _stop_flag[0] = 1


def _main_stopping() -> bool:
    """(In a worker) whether granian's main process has begun to stop. granian signals each worker
    once; a worker that is still starting can receive it before any handler of its own is in place
    (between granian's loop handlers, which see a signal only while the loop runs, and ours) and would
    start serving after its main stopped. The main sets this flag before it signals; a worker reads it
    after its own handler is in place, so it has either the flag or the signal."""
    return _stop_flag is not None and _stop_flag[0] == 1


# --------------------------------------------------------------------------------------------------------
# Serving


def _log_dictconfig(level: str) -> dict[str, Any]:
    """granian's loggers on stderr in the gateway's format (granian's default is stdout)."""
    fmt = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    return {
        "formatters": {
            "generic": {"()": "logging.Formatter", "fmt": fmt},
            "access": {"()": "logging.Formatter", "fmt": "%(message)s"},
        },
        "handlers": {
            "console": {"formatter": "generic", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "_granian": {"handlers": ["console"], "level": level.upper(), "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def granian_options(config: Config, workers: int, host: str, port: int) -> dict[str, Any]:
    """Keyword arguments for granian's server, mapped from ``[server]`` (see docs/frontends.md)."""
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings, HTTP2Settings
    from granian.log import LogLevels

    srv = config.server
    # hyper has one HTTP/1 timer: from the end of a response (or the accept) to a complete request head.
    # It is both the head timeout and the idle keep-alive timeout; the longer of the two wins so that
    # keep-alive clients and load balancers are not cut early.
    head_ms = math.ceil(max(srv.header_timeout, srv.keepalive_timeout) * 1000)
    opts: dict[str, Any] = {
        "target": "gateway.server.rsgi:app",
        "address": host,
        "port": port,
        "interface": Interfaces.RSGI,
        "workers": workers,
        "loop": Loops.uvloop,
        "http": HTTPModes.auto,
        "websockets": False,
        "backlog": _SOCKET_BACKLOG,
        # concurrent requests per worker handed to Python; the closest to max_connections granian has
        "backpressure": max(1, srv.max_connections),
        "http1_settings": HTTP1Settings(
            header_read_timeout=head_ms,
            keep_alive=True,
            # hyper's read buffer bounds the request head (431 above it); hyper refuses less than 8192
            max_buffer_size=max(8192, srv.max_header_bytes),
        ),
        "http2_settings": HTTP2Settings(max_headers_size=srv.max_header_bytes),
        "log_level": LogLevels(config.log.level),
        "log_dictconfig": _log_dictconfig(config.log.level),
        "log_access": False,
        "respawn_failed_workers": True,
        # granian SIGKILLs a worker that has not stopped by then; ours cut their requests at drain_timeout
        "workers_kill_timeout": math.ceil(srv.drain_timeout) + 5,
    }
    if srv.tls_cert and srv.tls_key:
        opts["ssl_cert"] = Path(srv.tls_cert)
        opts["ssl_key"] = Path(srv.tls_key)
        opts["ssl_protocol_min"] = SSLProtocols.tls12
    return opts


def _worker_pids(server: Any) -> list[int]:
    pids = []
    for wrk in list(getattr(server, "wrks", ())):
        pid = getattr(getattr(wrk, "inner", None), "pid", None)
        if isinstance(pid, int):
            pids.append(pid)
    return pids


class _MainHooks:
    """What the gateway adds to granian's main process: the banner and the SIGHUP config reload."""

    def __init__(self, server: Any, config: Config, config_path: str | None, banner: str,
                 snapshot_file: str) -> None:
        self.server = server
        self.config = config
        self.config_path = config_path
        self.banner = banner
        self.snapshot_file = snapshot_file
        self.pid = os.getpid()

    def on_startup(self) -> None:
        # granian installed its SIGHUP handler (a rolling restart of every worker) just before this hook;
        # the gateway's reload replaces it. Workers forked after this inherit it until __rsgi_init__
        # installs their own; meanwhile it only notes the signal (see on_hup).
        signal.signal(signal.SIGHUP, self.on_hup)
        # the same for SIGTERM/SIGINT: granian's handlers, inherited by a worker forked before it sets its
        # own, would note the signal on the worker's copy of the main's state, and the worker would start
        # and serve on after the main stopped
        _stop_flag_create()  # shared with the workers forked from now on
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop(signal.getsignal(sig)))
        print(self.banner, file=sys.stderr, flush=True)

    def _on_stop(self, granian: Any) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            if os.getpid() != self.pid:  # a worker that has no handler yet: it stops once it serves
                _stops_pending.add(signum)
                return
            _stop_flag_set()  # before granian signals its workers: see _main_stopping
            if callable(granian):
                granian(signum, frame)

        return handler

    def on_hup(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:
            # a worker that has not installed its own handler yet: it reloads when it has
            global _hup_pending
            _hup_pending = True
            return
        path = self.config_path
        if path is None:
            log.info("granian main: SIGHUP ignored, running the embedded default config")
            return
        from gateway.config.snapshot import encode_snapshot, read_snapshot

        try:
            snapshot = read_snapshot(path)  # the one read of the file and its credential files
        except ConfigError as exc:
            log.error("granian main: config reload rejected, keeping the running config:\n%s", exc)
            return
        new = snapshot.config
        from gateway.config.security import weakenings

        for change in weakenings(self.config, new):
            log.warning("granian main: this reload loosens security: %s", change)
        old = self.config.server
        if (new.server.host, new.server.port, new.server.workers, new.server.frontend) != (
            old.host, old.port, old.workers, old.frontend,
        ) or (new.server.tls_cert, new.server.tls_key) != (old.tls_cert, old.tls_key):
            log.warning("granian main: listener settings (host, port, workers, frontend, TLS) change on "
                        "restart only")
        try:
            write_snapshot_file(self.snapshot_file, encode_snapshot(snapshot))  # what every worker applies
        except OSError as exc:
            log.error("granian main: cannot write the config snapshot, keeping the running config: %s", exc)
            return
        self.config = new
        os.environ[ENV_CONFIG_JSON] = msgspec.json.encode(new).decode()
        for pid in _worker_pids(self.server):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass
        log.info("granian main: config reloaded from %s", path)


def serve_granian(config: Config, config_path: str | None, workers: int, host: str, port: int) -> int:
    """Serve the gateway with granian (RSGI, uvloop, HTTP/1.1 + HTTP/2, TLS when configured); block until
    SIGTERM/SIGINT. Returns the exit code: 0 after a clean shutdown."""
    from granian.server.mp import MPServer

    from gateway.server.worker import bind_socket

    # every granian worker binds its own SO_REUSEPORT socket: as the supervisor does, hold a bound (not
    # listening) placeholder that resolves port 0 once and fails fast, with a plain message, on a taken port
    try:
        placeholder = bind_socket(host, port, listen=False)
    except OSError as exc:
        print(f"gateway: cannot bind {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    port = placeholder.getsockname()[1]
    if config_path is not None:
        os.environ[ENV_CONFIG] = os.path.abspath(config_path)
    else:
        os.environ.pop(ENV_CONFIG, None)
    from gateway.config.snapshot import encode_snapshot, read_snapshot, snapshot_of

    try:
        # one read of the file (and its credential files) for every worker, as under the native supervisor
        snapshot = read_snapshot(config_path) if config_path is not None else snapshot_of(config)
    except ConfigError as exc:
        placeholder.close()
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    config = snapshot.config
    os.environ[ENV_CONFIG_JSON] = msgspec.json.encode(config).decode()
    os.environ[ENV_MAIN_PID] = str(os.getpid())
    from gateway.observe.metrics import NodeDir

    try:
        # the workers find it in their environment (GATEWAY_METRICS_DIR), as under the native supervisor
        metrics_dir = NodeDir.open(config.metrics)
        snapshot_file = os.path.join(metrics_dir.path, "config.snapshot")
        write_snapshot_file(snapshot_file, encode_snapshot(snapshot))
    except OSError as exc:
        placeholder.close()
        print(f"gateway: cannot prepare the node directory: {exc}", file=sys.stderr)
        return 1
    os.environ[ENV_CONFIG_SNAPSHOT_FILE] = snapshot_file
    tls = bool(config.server.tls_cert and config.server.tls_key)
    shown = f"[{host}]" if ":" in host else host
    banner = (f"gateway: serving on {'https' if tls else 'http'}://{shown}:{port} with {workers} worker(s) "
              f"(granian)")
    try:
        try:
            server = MPServer(**granian_options(config, workers, host, port))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a bad certificate or key
            print(f"gateway: cannot start granian: {exc}", file=sys.stderr)
            return 2
        hooks = _MainHooks(server, config, config_path, banner, snapshot_file)
        server.on_startup(hooks.on_startup)
        try:
            server.serve()
        except SystemExit as exc:  # granian exits 1 when a worker could not be kept alive
            code = exc.code
            return code if isinstance(code, int) else 1
        return 0
    finally:
        placeholder.close()
        with contextlib.suppress(OSError):
            os.unlink(snapshot_file)
        metrics_dir.close()
        os.environ.pop(ENV_CONFIG_SNAPSHOT_FILE, None)
