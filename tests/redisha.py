"""A real replicated Redis for the failover tests: a master, replicas and sentinels, on free loopback
ports, each in a directory of its own.

Usage::

    with redisha.start(tmp_dir) as ha:
        url = ha.url              # redis+sentinel://127.0.0.1:<p1>,...,127.0.0.1:<pN>/gwmaster/0
        old = ha.kill_master()    # SIGKILL; the master's port
        port = ha.wait_promoted(old) # a replica's port, once every sentinel names it the master

The sentinels are told to act fast (``down-after-milliseconds`` ``DOWN_AFTER_MS``, a short
``failover-timeout``) with a quorum of the majority. ``start`` returns only once each sentinel knows the
replicas and the other sentinels, and each replica's link to the master is up: a failover started
earlier would find nobody to promote.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redisproc

__all__ = ["DOWN_AFTER_MS", "MASTER_NAME", "RedisHA", "start"]

MASTER_NAME = "gwmaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000
#: sentinels discover each other over the master's hello channel, every 2 s: a slow machine needs more
READY_TIMEOUT = 30.0


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=redisproc.HOST, port=port, socket_timeout=2.0, socket_connect_timeout=2.0)


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


class Sentinel:
    """One ``redis-server --sentinel`` process."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.process = process
        self.port = port
        self.directory = directory

    def master_address(self) -> tuple[str, int] | None:
        with _client(self.port) as c:
            reply = c.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
        if not reply:
            return None
        host, port = reply
        return (host.decode() if isinstance(host, bytes) else host), int(port)

    def knows(self, replicas: int, sentinels: int) -> bool:
        with _client(self.port) as c:
            known_replicas = c.execute_command("SENTINEL", "replicas", MASTER_NAME)
            known_sentinels = c.execute_command("SENTINEL", "sentinels", MASTER_NAME)
        return len(known_replicas) >= replicas and len(known_sentinels) >= sentinels

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class RedisHA:
    """A master, its replicas and the sentinels watching them; ``stop`` ends them all."""

    def __init__(self, directory: Path, owns_dir: bool) -> None:
        self.directory = directory
        self._owns_dir = owns_dir
        self.master: redisproc.RedisServer | None = None
        self.replicas: list[redisproc.RedisServer] = []
        self.sentinels: list[Sentinel] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"{redisproc.HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def servers(self) -> list[redisproc.RedisServer]:
        return [s for s in (self.master, *self.replicas) if s is not None]

    def server_on(self, port: int) -> redisproc.RedisServer:
        return next(s for s in self.servers() if s.port == port)

    def master_port(self) -> int:
        """The port every live sentinel names as the master's."""
        answers = {s.master_address() for s in self.sentinels if s.process.poll() is None}
        if len(answers) != 1 or None in answers:
            raise RuntimeError(f"the sentinels disagree on the master: {answers}")
        (address,) = answers
        assert address is not None
        return address[1]

    def kill_master(self) -> int:
        """SIGKILL the master (no shutdown, no last save); its port."""
        port = self.master_port()
        server = self.server_on(port)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        return port

    def wait_promoted(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until every sentinel names another master than ``old_port`` and it answers as master."""

        def promoted() -> int | None:
            port = self.master_port()
            if port == old_port:
                return None
            with _client(port) as c:
                role = c.execute_command("ROLE")
            return port if role[0] in (b"master", "master") else None

        port: int = _wait(promoted, timeout, "the sentinels to promote the replica")
        return port

    def pause(self, server: redisproc.RedisServer) -> None:
        """SIGSTOP a server: it takes nothing from its socket until ``resume`` (replication stalls)."""
        os.kill(server.process.pid, signal.SIGSTOP)

    def resume(self, server: redisproc.RedisServer) -> None:
        os.kill(server.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers():
            if server.process.poll() is None:
                self.resume(server)
            server.stop()
        if self._owns_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisHA:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _start_sentinel(directory: Path, master_port: int, quorum: int) -> Sentinel:
    binary = redisproc.find_binary()
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        port = redisproc._free_port()
        config = directory / "sentinel.conf"  # the sentinel rewrites it: a file of its own
        config.write_text(
            "\n".join(
                [
                    f"port {port}",
                    f"bind {redisproc.HOST}",
                    f'dir "{directory}"',
                    'logfile "sentinel.log"',
                    "daemonize no",
                    f"sentinel monitor {MASTER_NAME} {redisproc.HOST} {master_port} {quorum}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )
        process = subprocess.Popen(
            [binary, str(config), "--sentinel"], cwd=directory, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sentinel = Sentinel(process, port, directory)
        try:
            _wait(lambda s=sentinel: s.process.poll() is None and s.master_address(), 10.0, "a sentinel")
        except RuntimeError:
            sentinel.stop()
            continue
        return sentinel
    log = directory / "sentinel.log"
    raise RuntimeError(f"a sentinel did not start: {log.read_text()[-2000:] if log.exists() else ''}")


def start(directory: Path | None = None, *, replicas: int = 1, sentinels: int = 3) -> RedisHA:
    """A master, ``replicas`` replicas of it, and ``sentinels`` sentinels (quorum: their majority), all
    ready."""
    owns_dir = directory is None
    workdir = Path(tempfile.mkdtemp(prefix="redis-ha-")) if directory is None else directory
    ha = RedisHA(workdir, owns_dir)
    try:
        ha.master = redisproc.start(workdir / "master")
        for i in range(replicas):
            replica = redisproc.start(workdir / f"replica-{i}", extra=[f"replicaof {redisproc.HOST} {ha.master.port}"])
            ha.replicas.append(replica)

            def linked(port: int = replica.port) -> bool:
                with _client(port) as c:
                    return bool(c.info("replication").get("master_link_status") == "up")

            _wait(linked, READY_TIMEOUT, "a replica's link to the master")
        quorum = sentinels // 2 + 1
        for i in range(sentinels):
            ha.sentinels.append(_start_sentinel(workdir / f"sentinel-{i}", ha.master.port, quorum))
        for sentinel in ha.sentinels:
            _wait(
                lambda s=sentinel: s.knows(replicas, sentinels - 1),
                READY_TIMEOUT,
                "each sentinel to know the replicas and the other sentinels",
            )
        return ha
    except BaseException:
        ha.stop()
        raise
