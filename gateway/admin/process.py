"""The admin API's process: one child of the supervisor, beside the data-plane workers.

The supervisor binds the admin socket once (``open_admin_socket``) and hands it to every incarnation of
the admin process (``run_admin``), so a respawn never races another process for the port. The process
opens the store from ``[store]``; when that fails it logs the reason, keeps serving (503 on the API,
``degraded`` on ``/admin/healthz``) and retries, and the data plane is not affected either way.

Signals and links, as for a worker: SIGTERM/SIGINT drain and exit; reloads arrive from the supervisor
through the config pipe (tokens, static keys and tenants, models, pepper; ``[admin] host/port`` and
``[store]`` change on restart only); a heartbeat tells the supervisor its loop runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

from gateway.config import Config, ConfigError

if TYPE_CHECKING:
    from gateway.server.control import ChildLink

__all__ = ["admin_wanted", "open_admin_socket", "run_admin"]

log = logging.getLogger("gateway.admin")


def admin_wanted(config: Config) -> bool:
    """``[admin] enabled`` and at least one admin token configured (without one, nobody could use it)."""
    ad = config.admin
    return ad.enabled and (ad.operator_token is not None or bool(ad.tenant_tokens))


def open_admin_socket(config: Config) -> socket.socket | None:
    """The admin listener, bound and listening, or None (not wanted, or the bind failed: logged).

    No SO_REUSEPORT: one process serves the admin API, and a second gateway must not silently share
    the port.
    """
    if not admin_wanted(config):
        return None
    host, port = config.admin.host, config.admin.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        print(
            f"gateway: cannot bind the admin API to {host}:{port}: {exc.strerror or exc}; "
            "serving the data plane without it",
            file=sys.stderr, flush=True,
        )
        return None
    sock.setblocking(False)
    return sock


def run_admin(config: Config, sock: socket.socket, link: ChildLink | None = None) -> int:
    """Entry point of the forked admin process. Returns the process exit code."""
    from gateway.admin.app import AdminApp
    from gateway.auth.applied import node_directory
    from gateway.server.worker import _new_loop, serve_app
    from gateway.store import StoreOptions, open_store

    st = config.store
    options = StoreOptions(
        url=st.url,
        prefix=st.prefix,
        poll_interval=st.poll_interval,
        busy_timeout=st.busy_timeout,
        min_replicas_acked=st.min_replicas_acked,
        replica_ack_timeout=st.replica_ack_timeout,
    )
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    app = AdminApp(config, open_store=lambda: open_store(options), node_dir=node_directory())

    def apply(new: Config) -> bool:
        try:
            app.reload(new)
        except ConfigError as exc:
            log.error("admin API: config reload rejected, keeping the running config:\n%s", exc)
            return False
        except Exception:
            log.exception("admin API: config reload failed, keeping the running config")
            return False
        else:
            restart_only = (config.admin.host, config.admin.port, config.store)
            if (new.admin.host, new.admin.port, new.store) != restart_only:
                log.warning("admin API: [admin] host/port and [store] change on restart only")
            log.info("admin API: config reloaded")
            return True

    try:
        loop.run_until_complete(serve_app(app, config, sock=sock, link=link, on_config=apply))
    finally:
        loop.close()
    log.info("admin API (pid %d) exited cleanly", os.getpid())
    return 0
