"""The supervisor: forks N workers, keeps them alive, relays reload and shutdown.

Theory of operation:

    event                   | action
    ------------------------+--------------------------------------------------------------------
    start                   | bind (not listen) a placeholder SO_REUSEPORT socket: resolves port 0
                            | and fails fast on a taken port; empty (or make) the node's metrics
                            | directory; fork N workers, each binds its own
    a worker exits, running | respawn it (backoff grows when workers die within a second of start)
    SIGHUP                  | validate the config file; if valid, SIGHUP every worker (each swaps its
                            | snapshot); if not, log the errors and keep everything as it is
    SIGTERM / SIGINT        | SIGTERM every worker (they drain), wait up to drain_timeout + 5 s,
                            | SIGKILL what is left, remove a metrics directory made at start, exit 0

The admin API (``gateway.admin.process``), when ``[admin]`` wants it, is one more child with the index
``ADMIN``: respawned, reloaded and stopped like a worker. Its socket is bound here once and inherited.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time

from gateway.config import Config, ConfigError, load_config
from gateway.server.worker import bind_socket

__all__ = ["ADMIN", "Supervisor"]

log = logging.getLogger("gateway.supervisor")

#: the child index of the admin API's process (workers are 0 .. N-1)
ADMIN = -1


def _child_name(index: int) -> str:
    return "admin API" if index == ADMIN else f"worker {index}"


class Supervisor:
    def __init__(self, config: Config, config_path: str | None, workers: int, host: str, port: int) -> None:
        self.config = config
        self.config_path = config_path
        self.n = workers
        self.host = host
        self.port = port
        self.children: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}
        self.stopping = False
        self.reload_requested = False
        self.frontend_main = None
        self.admin_sock: socket.socket | None = None

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                if index == ADMIN and self.admin_sock is not None:
                    from gateway.admin.process import run_admin

                    code = run_admin(self.config_path, self.config, self.admin_sock)
                else:
                    if self.admin_sock is not None:
                        self.admin_sock.close()
                    from gateway.server.worker import run_worker

                    code = run_worker(self.config_path, self.config, index, self.host, self.port)
            except BaseException:
                log.exception("%s crashed", _child_name(index))
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = index
        self.started[pid] = time.monotonic()

    def run(self) -> int:
        try:
            placeholder = self._reserve_port()
        except OSError as exc:
            print(f"gateway: cannot bind {self.host}:{self.port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        self.port = placeholder.getsockname()[1]
        from gateway.observe.metrics import NodeDir

        try:
            # before the first fork: the workers find it in their environment (GATEWAY_METRICS_DIR)
            metrics_dir = NodeDir.open(self.config.metrics)
        except OSError as exc:
            placeholder.close()
            print(f"gateway: cannot prepare the metrics directory: {exc}", file=sys.stderr)
            return 1
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        for i in range(self.n):
            self._spawn(i)
        print(
            f"gateway: serving on http://{self.host}:{self.port} with {self.n} worker(s) "
            f"(pid {os.getpid()})",
            file=sys.stderr, flush=True,
        )
        self._start_admin()
        backoff = 0.0
        try:
            while self.children:
                if self.reload_requested:
                    self.reload_requested = False
                    self._reload()
                try:
                    pid, status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
                index = self.children.pop(pid, None)
                if index is None:
                    continue
                lived = time.monotonic() - self.started.pop(pid, 0.0)
                if self.stopping:
                    continue
                code = os.waitstatus_to_exitcode(status)
                log.error("%s (pid %d) exited with %s; respawning", _child_name(index), pid, code)
                backoff = min(backoff * 2 or 0.1, 5.0) if lived < 1.0 else 0.0
                if backoff:
                    time.sleep(backoff)
                if not self.stopping:
                    self._spawn(index)
        finally:
            placeholder.close()
            if self.admin_sock is not None:
                self.admin_sock.close()
            metrics_dir.close()
        return 0

    def _start_admin(self) -> None:
        from gateway.admin.process import open_admin_socket

        self.admin_sock = open_admin_socket(self.config)
        if self.admin_sock is not None:
            self._spawn(ADMIN)
            host, port = self.admin_sock.getsockname()[:2]
            print(f"gateway: admin API on http://{host}:{port}", file=sys.stderr, flush=True)

    def _reserve_port(self) -> socket.socket:
        """Fail fast when the port is taken, even by another gateway's SO_REUSEPORT sockets.

        A socket without SO_REUSEPORT cannot bind a port that anyone holds, so it is the probe; then the
        placeholder (SO_REUSEPORT, never listening) keeps the port for the workers.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: TIME_WAIT leftovers of a previous run do not block a restart; live
            # listeners (another gateway's workers) still do
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((self.host, self.port))
            port = probe.getsockname()[1]
        return bind_socket(self.host, port, listen=False)

    def _on_stop(self, signum: int, frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("supervisor: %s, draining %d worker(s)", signal.Signals(signum).name, len(self.children))
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = self.config.server.drain_timeout + 5.0
        signal.signal(signal.SIGALRM, self._on_deadline)
        signal.alarm(max(int(deadline), 1))

    def _on_deadline(self, signum: int, frame: object) -> None:
        for pid in list(self.children):
            log.error("supervisor: worker pid %d did not drain in time; killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _on_hup(self, signum: int, frame: object) -> None:
        # do the work outside the signal handler: waitpid returns EINTR and the loop reloads
        self.reload_requested = True
        self._reload()
        self.reload_requested = False

    def _reload(self) -> None:
        if self.config_path is None:
            log.info("supervisor: SIGHUP ignored, running the embedded default config")
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("supervisor: config reload rejected, keeping the running config:\n%s", exc)
            return
        if (new.server.host, new.server.port, new.server.workers, new.server.frontend) != (
            self.config.server.host, self.config.server.port, self.config.server.workers,
            self.config.server.frontend,
        ):
            log.warning(
                "supervisor: listener settings (host, port, workers, frontend) change on restart only"
            )
        self.config = new
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass
        log.info("supervisor: config reloaded from %s", self.config_path)
