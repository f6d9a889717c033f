"""The supervisor: forks N workers, keeps them alive and beating, hands them the config, relays shutdown.

Theory of operation (one thread; signal handlers only set flags and wake the loop through a pipe):

    event                    | action
    -------------------------+--------------------------------------------------------------------------
    start                    | bind (not listen) a placeholder SO_REUSEPORT socket: resolves port 0 and
                             | fails fast on a taken port; empty (or make) the node's metrics directory;
                             | fork N workers, each binds its own. Each child closes what it inherited and
                             | is not its own (the placeholder, other children's pipes), sets its parent-
                             | death signal and installs the supervisor's config snapshot
    a child exits            | respawn it. One that exits before it ever served is a failed start: the
                             | respawn waits (0.5 s, doubling up to 8 s); after ``_START_FAILURES`` failed
                             | starts in a row the supervisor stops every child and exits 1
    a child misses its beat  | (no beat for ``worker_heartbeat_timeout``; before its loop first runs,
                             | ``_START_GRACE``) SIGKILL it, log it, count it; respawned when reaped
    SIGHUP, or a watched     | read and validate the file once (``read_snapshot``); refuse a file with no
    change (watch_config)    | models; warn about each loosening of security; send the encoded snapshot
                             | down every child's config pipe (children never read the file themselves);
                             | if the file fails, log why and keep everything as it is
    SIGTERM / SIGINT         | SIGTERM every child (they drain), SIGKILL what is left after
                             | drain_timeout + 5 s, remove a metrics directory made at start, exit 0

The admin API (``gateway.admin.process``), when ``[admin]`` wants it, is one more child with the index
``ADMIN``: respawned, beating, reloaded and stopped like a worker. Its socket is bound here once and
inherited.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import sys
import time
from types import FrameType

from gateway.config import Config, ConfigError
from gateway.config.snapshot import ConfigSnapshot, encode_snapshot, install, read_snapshot
from gateway.server.control import (
    ChildLink,
    ConfigReceiver,
    ConfigSender,
    HeartbeatTable,
    config_code,
    frame,
    set_parent_death_signal,
)
from gateway.server.watch import ConfigWatch
from gateway.server.worker import bind_socket

__all__ = ["ADMIN", "Supervisor"]

log = logging.getLogger("gateway.supervisor")

#: the child index of the admin API's process (workers are 0 .. N-1)
ADMIN = -1
#: failed starts in a row (a child that exits before it served) after which the supervisor gives up
_START_FAILURES = 5
_START_BACKOFF = 0.5
_MAX_BACKOFF = 8.0
#: how long a child may take to run its event loop for the first time (imports, building the engine)
_START_GRACE = 60.0
#: the signals the supervisor handles (a flag and a wake-up); a child starts with their defaults
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def _child_name(index: int) -> str:
    return "admin API" if index == ADMIN else f"worker {index}"


class _Child:
    __slots__ = ("index", "killed", "pid", "sender", "snapshot", "started")

    def __init__(self, pid: int, index: int, sender: ConfigSender, snapshot: ConfigSnapshot) -> None:
        self.pid = pid
        self.index = index
        self.sender = sender
        #: the config it started with
        self.snapshot = snapshot
        self.started = time.monotonic()
        #: why the supervisor killed it ("heartbeat"), or ""
        self.killed = ""


class Supervisor:
    def __init__(self, snapshot: ConfigSnapshot, config_path: str | None, workers: int, host: str,
                 port: int) -> None:
        self.snapshot = snapshot
        self.config_path = config_path
        self.n = workers
        self.host = host
        self.port = port
        self.children: dict[int, _Child] = {}  # pid -> child
        self.stopping = False
        self.exit_code = 0
        self.admin_sock: socket.socket | None = None
        self.placeholder: socket.socket | None = None
        self.table = HeartbeatTable(workers + 1)
        self._respawn_at: dict[int, float] = {}  # index -> when
        self._failures: dict[int, int] = {}  # index -> failed starts in a row
        self._signals: list[int] = []
        self._stop_deadline: float | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._watch: ConfigWatch | None = None
        if config_path is not None and snapshot.config.server.watch_config:
            self._watch = ConfigWatch(_watched(config_path, snapshot), snapshot.config.server.watch_interval)
        self._restarts: dict[str, int] = {}
        #: fixed at start: every child, a respawned one too, beats at the pace the supervisor checks
        self._beat_timeout = snapshot.config.server.worker_heartbeat_timeout
        #: the config the node started with: what a reload's restart-only settings are compared with
        self._started = snapshot.config
        #: the last config a child applied before the latest reload (``_undo_reload``: a reload no child
        #: can apply or start with is undone, not crash-looped into a stop)
        self._before_reload: ConfigSnapshot | None = None

    @property
    def config(self) -> Config:
        return self.snapshot.config

    # -- children

    def _slot(self, index: int) -> int:
        return self.n if index == ADMIN else index

    def _spawn(self, index: int) -> None:
        self.table.reset(self._slot(index))
        supervisor = os.getpid()
        # blocked across the fork: the child must not run the supervisor's handlers before its own
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            r, w = os.pipe()
            try:
                pid = os.fork()
            except OSError:
                os.close(r)
                os.close(w)
                raise
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            log.error("supervisor: cannot start %s (%s); trying again in %g s", _child_name(index), exc,
                      _MAX_BACKOFF)
            self._respawn_at[index] = time.monotonic() + _MAX_BACKOFF
            return
        if pid == 0:  # child
            os.close(w)
            os._exit(self._child_main(index, r, supervisor, mask))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(r)
        self.children[pid] = _Child(pid, index, ConfigSender(w), self.snapshot)

    def _child_main(self, index: int, config_fd: int, supervisor: int,
                    mask: set[int | signal.Signals]) -> int:
        code = 1
        try:
            for sig in _HANDLED:
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if not set_parent_death_signal(supervisor):
                return 1  # the supervisor died before the call: an orphan must not serve
            self._close_inherited(index)
            config = install(self.snapshot)
            link = ChildLink(ConfigReceiver(config_fd), self.table, self._slot(index), self._beat_timeout,
                             config_code(self.snapshot.digest))
            if index == ADMIN and self.admin_sock is not None:
                from gateway.admin.process import run_admin

                code = run_admin(config, self.admin_sock, link)
            else:
                from gateway.server.worker import run_worker

                code = run_worker(config, index, self.host, self.port, link)
        except BaseException:
            log.exception("%s crashed", _child_name(index))
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return code

    def _close_inherited(self, index: int) -> None:
        """What a child must not hold: the placeholder (the port would stay bound after the supervisor
        died), other children's pipes (their end of file would never come), the wake-up pipe."""
        for child in self.children.values():
            with contextlib.suppress(OSError):
                os.close(child.sender.fd)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.placeholder is not None:
            self.placeholder.close()
        if index != ADMIN and self.admin_sock is not None:
            self.admin_sock.close()

    # -- the loop

    def run(self) -> int:
        try:
            self.placeholder = self._reserve_port()
        except OSError as exc:
            print(f"gateway: cannot bind {self.host}:{self.port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        self.port = self.placeholder.getsockname()[1]
        from gateway.observe.metrics import NodeDir

        try:
            # before the first fork: the workers find it in their environment (GATEWAY_METRICS_DIR)
            metrics_dir = NodeDir.open(self.config.metrics)
        except OSError as exc:
            self.placeholder.close()
            print(f"gateway: cannot prepare the metrics directory: {exc}", file=sys.stderr)
            return 1
        self._install_signals()
        for i in range(self.n):
            self._spawn(i)
        print(
            f"gateway: serving on http://{self.host}:{self.port} with {self.n} worker(s) "
            f"(pid {os.getpid()})",
            file=sys.stderr, flush=True,
        )
        self._start_admin()
        try:
            self._loop()
        finally:
            self.placeholder.close()
            if self.admin_sock is not None:
                self.admin_sock.close()
            metrics_dir.close()
        return self.exit_code

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in _HANDLED:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)  # acted on by the loop; the wake-up fd ends its select

    def _loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ)
            while self.children or (not self.stopping and self._respawn_at):
                self._wait(sel)
                self._handle_signals()
                self._reap()
                now = time.monotonic()
                if not self.stopping:
                    self._check_heartbeats(now)
                    self._respawn_due(now)
                    if self._watch is not None and self._watch.poll(now):
                        self._reload("a change of the watched files")
                elif self._stop_deadline is not None and now >= self._stop_deadline:
                    self._kill_stragglers()

    def _wait(self, sel: selectors.BaseSelector) -> None:
        # registered anew each time: a pipe closed since may have left its number to a new one
        for key in list(sel.get_map().values()):
            if key.fd != self._wake_r:
                sel.unregister(key.fd)
        for child in self.children.values():
            if child.sender.pending:
                sel.register(child.sender.fd, selectors.EVENT_WRITE)
        for key, _ in sel.select(self._timeout()):
            if key.fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
        for child in self.children.values():
            if child.sender.pending:
                child.sender.flush()

    def _timeout(self) -> float:
        now = time.monotonic()
        waits = [1.0]
        beat = self._beat_timeout
        if beat > 0:
            waits.append(beat / 4.0)
        if self._watch is not None:
            waits.append(self._watch.interval / 2.0)
        waits.extend(t - now for t in self._respawn_at.values())
        if self._stop_deadline is not None:
            waits.append(self._stop_deadline - now)
        return max(0.0, min(waits))

    def _handle_signals(self) -> None:
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop(signal.Signals(signum).name)
            elif signum == signal.SIGHUP and not self.stopping:
                self._reload("SIGHUP")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            child.sender.close()
            if not self.stopping:
                self._exited(child, os.waitstatus_to_exitcode(status))

    def _exited(self, child: _Child, code: int) -> None:
        name, index = _child_name(child.index), child.index
        served = self.table.read(self._slot(index)).ready > 0
        if not served and self._undo_reload(child):
            self._spawn(index)
            return
        if child.killed or served:
            self._failures.pop(index, None)
            if not child.killed:
                log.error("%s (pid %d) exited with %s; respawning", name, child.pid, code)
                self._count("exited")
            self._spawn(index)
            return
        failures = self._failures.get(index, 0) + 1
        self._failures[index] = failures
        if failures >= _START_FAILURES:
            log.critical(
                "%s (pid %d) exited with %s before it served, %d times in a row; giving up: stopping the "
                "gateway (its errors are above)", name, child.pid, code, failures,
            )
            self.exit_code = 1
            self._stop("giving up")
            return
        delay = min(_START_BACKOFF * 2 ** (failures - 1), _MAX_BACKOFF)
        log.error("%s (pid %d) exited with %s before it served (%d of %d failed starts); respawning in "
                  "%.1f s", name, child.pid, code, failures, _START_FAILURES, delay)
        self._count("start_failed")
        self._respawn_at[index] = time.monotonic() + delay

    def _undo_reload(self, child: _Child) -> bool:
        """A child that failed to start with the reloaded config, which no running child serves with
        either (each one's heartbeat slot says which config it applied): the workers could not build it
        (they logged why and kept the config before), so the node goes back to that config, sent to every
        child, instead of failing each start until it stops."""
        before = self._before_reload
        if before is None or child.snapshot is not self.snapshot:
            return False
        if config_code(self.snapshot.digest) in self._running():
            self._before_reload = None  # it serves somewhere: this start failed for another reason
            return False
        log.error(
            "supervisor: %s failed to start with the config reloaded from %s, which no worker could apply "
            "(their errors are above); going back to the config before that reload on every worker: fix "
            "the file and reload again", _child_name(child.index), self.config_path,
        )
        self._count("reload_undone")
        self.snapshot, self._before_reload = before, None
        data = frame(encode_snapshot(before))
        for other in self.children.values():
            other.sender.send(data)
        return True

    def _running(self) -> set[int]:
        """The configs (``config_code``) the running children serve with."""
        return {self.table.read(self._slot(c.index)).config for c in self.children.values()}

    def _respawn_due(self, now: float) -> None:
        for index, due in list(self._respawn_at.items()):
            if due <= now:
                del self._respawn_at[index]
                self._spawn(index)

    def _check_heartbeats(self, now: float) -> None:
        timeout = self._beat_timeout
        if timeout <= 0:
            return
        for child in self.children.values():
            if child.killed:
                continue
            state = self.table.read(self._slot(child.index))
            beating = state.pid == child.pid and state.beat > 0
            last, limit = (state.beat, timeout) if beating else (child.started, max(_START_GRACE, timeout))
            if now - last <= limit:
                continue
            log.error(
                "%s (pid %d) missed its heartbeat: its event loop has not run for %.1f s (timeout %g s; "
                "stopped, or stuck in a busy loop?); killing and replacing it",
                _child_name(child.index), child.pid, now - last, limit,
            )
            child.killed = "heartbeat"
            self._count("heartbeat")
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)

    def _count(self, reason: str) -> None:
        self._restarts[reason] = self._restarts.get(reason, 0) + 1
        from gateway.observe.metrics import write_supervisor_snapshot

        write_supervisor_snapshot(self._restarts)

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

    # -- stop

    def _stop(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._respawn_at.clear()
        log.info("supervisor: %s, draining %d child(ren)", why, len(self.children))
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self._stop_deadline = time.monotonic() + self.config.server.drain_timeout + 5.0

    def _kill_stragglers(self) -> None:
        self._stop_deadline = None
        for pid in list(self.children):
            log.error("supervisor: child pid %d did not drain in time; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- reload

    def _reload(self, why: str) -> None:
        if self.config_path is None:
            log.info("supervisor: SIGHUP ignored, running the embedded default config")
            return
        try:
            new = read_snapshot(self.config_path)
            _check_state_dir(new.config)
        except ConfigError as exc:
            log.error("supervisor: config reload rejected (%s), keeping the running config:\n%s", why, exc)
            return
        except Exception:  # a bug must not end the supervisor (and with it every worker)
            log.exception("supervisor: config reload failed (%s), keeping the running config", why)
            return
        if self._watch is not None:
            self._watch.watch(_watched(self.config_path, new))
        if new.digest == self.snapshot.digest:
            log.info("supervisor: %s: the config is unchanged; nothing to reload", why)
            return
        self._warn_changes(new.config)
        if self._before_reload is None or config_code(self.snapshot.digest) in self._running():
            self._before_reload = self.snapshot  # (else the last one a child applied is kept)
        self.snapshot = new
        # logged first: the children log their own reload as soon as the snapshot reaches them
        log.info("supervisor: config reloaded from %s (%s); sending it to %d child(ren)", self.config_path,
                 why, len(self.children))
        data = frame(encode_snapshot(new))
        for child in self.children.values():
            child.sender.send(data)

    def _warn_changes(self, new: Config) -> None:
        from gateway.config.security import weakenings

        for change in weakenings(self.config, new):
            log.warning("supervisor: this reload loosens security: %s", change)
        for what in restart_only_changes(self._started, new):
            log.warning("supervisor: %s: takes a restart; the running workers keep what they started with",
                        what)


def restart_only_changes(started: Config, new: Config) -> list[str]:
    """The settings ``new`` changes, from the config the node started with, that a reload does not apply
    (docs/configuration.md): each as a phrase for the log."""
    out = []
    s, n = started.server, new.server
    if (n.host, n.port, n.workers, n.frontend) != (s.host, s.port, s.workers, s.frontend):
        out.append("the listener settings changed (host, port, workers, frontend)")
    changed = [k for k in ("watch_config", "watch_interval", "worker_heartbeat_timeout")
               if getattr(n, k) != getattr(s, k)]
    if changed:
        out.append(f"[server] {', '.join(changed)} changed")
    if new.store.url != started.store.url or new.store.data_dir != started.store.data_dir:
        out.append("[store] changed")
    for table, before, after in (
        ("[limits] (policies or budgets)", bool(started.limits.policies or started.limits.budgets),
         bool(new.limits.policies or new.limits.budgets)),
        ("[cache]", started.cache.enabled, new.cache.enabled),
        ("call records ([log] call_records)", started.log.call_records, new.log.call_records),
    ):
        if before != after:
            out.append(f"{table} turned {'on' if after else 'off'}")
    return out


def _check_state_dir(new: Config) -> None:
    """A reload must not need state files the node cannot write (``ConfigError``)."""
    from gateway.store.datadir import StateDirError, prepare_state_dir

    try:
        prepare_state_dir(new)
    except StateDirError as exc:
        raise ConfigError([str(exc)]) from None


def _watched(config_path: str, snapshot: ConfigSnapshot) -> list[str]:
    return [config_path, *sorted(snapshot.files)]

