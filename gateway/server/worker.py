"""One worker process: a uvloop loop that owns its SO_REUSEPORT listener, its app and its pools.

What links it to the supervisor (``gateway.server.control.ChildLink``), all on the worker's loop:
  config pipe      each config the supervisor validated arrives as an encoded snapshot and is swapped in;
                   the worker never reads the config file itself. End of file: the supervisor is gone,
                   the worker drains and exits (beside the parent-death signal the supervisor set)
  heartbeat        a loop timer writes the time into the worker's slot; a loop that stops running (a
                   stopped process, a busy loop) is noticed by the supervisor, which replaces the worker

Signals (sent by the supervisor, or by an operator to a single worker):
  SIGTERM, SIGINT  drain: /readyz answers 503; after ``server.drain_delay`` (0: at once) stop accepting,
                   let in-flight requests and streams finish up to ``server.drain_timeout`` from the
                   signal; then the app ends what still runs (the engine: an error event and ``[DONE]``
                   for a stream, a 503 otherwise, each recorded), and exit 0.
  SIGHUP           logged and ignored: reloads go through the supervisor, so that every worker serves the
                   same config.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import cast

from gateway.app import App
from gateway.config import Config, ConfigError
from gateway.config.snapshot import ConfigSnapshot, install
from gateway.server.control import ChildLink
from gateway.server.listener import HttpProtocol, ListenerState

__all__ = ["bind_socket", "run_worker", "serve_app"]

log = logging.getLogger("gateway.worker")


def bind_socket(host: str, port: int, *, listen: bool = True, backlog: int = 4096) -> socket.socket:
    """A TCP socket with SO_REUSEPORT, so that every worker owns one and the kernel balances them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency; this is for odd platforms
        return asyncio.new_event_loop()


async def serve_app(
    app: App,
    config: Config,
    *,
    sock: socket.socket,
    on_reload: Callable[[], None] | None = None,
    ready: Callable[[], None] | None = None,
    link: ChildLink | None = None,
    on_config: Callable[[Config], bool] | None = None,
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT, then drain.

    ``link``: the supervisor's; each config it hands over is installed and passed to ``on_config``.
    ``on_reload``: a SIGHUP handler (the mock server's, which has no supervisor).
    """
    loop = asyncio.get_running_loop()
    srv = config.server
    stop = asyncio.Event()
    if link is not None:
        link.beat_from(loop)
    await app.startup()
    freeze_heap()
    if link is not None:
        link.listen(loop, lambda snapshot: _apply(snapshot, on_config, link), lambda: _orphaned(stop))
    state = ListenerState(
        app,
        max_header_bytes=srv.max_header_bytes,
        max_body_bytes=srv.max_body_bytes,
        max_connections=srv.max_connections,
        header_timeout=srv.header_timeout,
        body_timeout=srv.body_timeout,
        keepalive_timeout=srv.keepalive_timeout,
    )
    state.start()
    # the protocol class has no asyncio.Protocol base (it compiles to an extension type)
    factory = cast("Callable[[], asyncio.Protocol]", lambda: HttpProtocol(state))
    server = await loop.create_server(factory, sock=sock, backlog=4096)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if on_reload is not None:
        loop.add_signal_handler(signal.SIGHUP, on_reload)
    elif link is not None:
        loop.add_signal_handler(signal.SIGHUP, _hup_ignored)
    if ready is not None:
        ready()
    if link is not None:
        link.ready()
    await stop.wait()
    if hasattr(app, "draining"):
        app.draining = True  # /readyz answers 503 from now on
    if srv.drain_delay > 0:
        # still accepting and serving, so that load balancers probing /readyz see the 503 and stop sending
        # before new connections are refused; part of drain_timeout (the supervisor's deadline)
        log.info("draining: /readyz answers 503; accepting for %.1f s more", srv.drain_delay)
        await asyncio.sleep(srv.drain_delay)
    # drain: stop accepting, close idle connections, let in-flight requests finish
    server.close()
    state.begin_drain()
    drained = await state.wait_drained(srv.drain_timeout - srv.drain_delay)
    if not drained:
        log.warning("drain deadline passed with %d connections open; closing them", len(state.connections))
        cut = getattr(app, "cut_unfinished", None)
        if cut is not None:  # the app ends what still runs while its clients are connected (the engine)
            await cut()
    state.stop()
    await app.shutdown()
    if link is not None:
        link.stop()


def freeze_heap() -> None:
    """Move everything the worker holds once started (modules, the config, the runtime tables, the key
    table) out of the cycle collector's generations.

    # PERF: requests allocate container objects, which trigger young-generation collections; each later
    collection of the older generations walked this long-lived heap too (measured: about 3% of a
    20-chunk stream's instructions went to the collector walking it). Frozen objects are still freed by
    reference counting; only cycles among them wait for ``refreeze_heap``.
    """
    gc.collect()
    gc.freeze()
    # PERF: the young generation is collected every 10,000 net container allocations, not 700. A
    # request allocates dozens (coroutines, futures, loop handles, lists, tuples), so at the default a
    # young collection ran every few requests, each walking what the requests in flight held; the
    # objects that die first are freed by reference counting whatever the threshold, so the walks are
    # as long but far rarer, and the cycles waiting for one are a few thousand small objects at most.
    # Measured in process (bench.inproc, alternating): chat 8.4-9.6 -> 7.8-8.4 us, a 20-chunk stream
    # 33-34 -> 27-29 us per request.
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, gen1, gen2)


#: the young generation's collection threshold in a worker (``freeze_heap``)
YOUNG_THRESHOLD = 10_000


def refreeze_heap() -> None:
    """After a reload: the old runtime's cycles collected (a full collection, once per reload, off the
    request path's hot loop iterations), the new long-lived objects frozen."""
    gc.unfreeze()
    freeze_heap()


def _apply(snapshot: ConfigSnapshot, on_config: Callable[[Config], bool] | None, link: ChildLink) -> None:
    """A config handed over by the supervisor: its credential files pinned, then the app's turn; when the
    app applied it, the supervisor is told (the heartbeat slot's config)."""
    if on_config is None or on_config(install(snapshot)):
        link.running(snapshot)


def _orphaned(stop: asyncio.Event) -> None:
    log.warning("pid %d: the supervisor is gone (its config pipe closed); draining and exiting", os.getpid())
    stop.set()


def _hup_ignored() -> None:
    log.warning("pid %d: SIGHUP ignored: send it to the supervisor (pid %d), which reloads every worker",
                os.getpid(), os.getppid())


def run_worker(config: Config, index: int, host: str, port: int, link: ChildLink | None = None) -> int:
    """Entry point of a forked worker. Returns the process exit code."""
    from gateway.engine import Engine

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    engine = Engine(config, worker=index)

    def apply(new: Config) -> bool:
        try:
            engine.reload(new)
        except ConfigError as exc:
            log.error("worker %d: config reload rejected, keeping the running config:\n%s", index, exc)
        except Exception:
            log.exception("worker %d: config reload failed, keeping the running config", index)
        else:
            refreeze_heap()
            log.info("worker %d: config reloaded", index)
            return True
        return False

    sock = bind_socket(host, port)
    try:
        loop.run_until_complete(serve_app(engine, config, sock=sock, link=link, on_config=apply))
    finally:
        loop.close()
    log.info("worker %d (pid %d) exited cleanly", index, os.getpid())
    return 0
