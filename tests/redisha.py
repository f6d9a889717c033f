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

import contextlib
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
import redisproc

__all__ = ["DOWN_AFTER_MS", "MASTER_NAME", "LagProxy", "RedisCluster", "RedisHA", "cluster_cli", "start", "start_cluster"]

MASTER_NAME = "gwmaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000
#: a cluster node's bus listens on its port + 10000
CLUSTER_HIGHEST_PORT = 55535
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


class LagProxy:
    """A TCP relay from a replica to its master that can hold what the master sends: replication lag
    (or a partition) on demand. While held, the master's stream is kept here, not delivered, and the
    replica's acknowledgements still flow (so the master sees the replica connected but behind);
    ``drop`` discards what was held and closes the links. One thread, no sleeping."""

    def __init__(self, master_port: int) -> None:
        self.master_port = master_port
        self._listener = socket.create_server((redisproc.HOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self._held = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._thread = threading.Thread(target=self._run, name="lag-proxy", daemon=True)
        self._thread.start()

    def hold(self) -> None:
        self._held.set()

    def drop(self) -> None:
        """Forget what was held, close every link, and refuse new ones (the master is gone)."""
        self._stopped.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        self._listener.setblocking(False)
        sel.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not self._stopped.is_set():
                for key, _ in sel.select(timeout=0.05):
                    if key.data is None:
                        replica, _ = self._listener.accept()
                        master = socket.create_connection((redisproc.HOST, self.master_port), timeout=5)
                        replica.setblocking(False)
                        master.setblocking(False)
                        sel.register(replica, selectors.EVENT_READ, ("up", replica, master))
                        sel.register(master, selectors.EVENT_READ, ("down", master, replica))
                        self._pairs.append((replica, master))
                        continue
                    direction, own, peer = key.data
                    if direction == "down" and self._held.is_set():
                        sel.unregister(own)  # leave the master's bytes unread: held
                        continue
                    try:
                        data = own.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._stopped.set()
                        break
                    peer.setblocking(True)
                    peer.sendall(data)
                    peer.setblocking(False)
        finally:
            sel.close()
            for replica, master in self._pairs:
                for sock in (replica, master):
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        sock.close()
            self._listener.close()


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
        redisproc.end(self.process)


class _Servers:
    """Processes that ``stop`` ends, usable as a context manager."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisHA(_Servers):
    """A master, its replicas and the sentinels watching them; ``stop`` ends them all."""

    def __init__(self, directory: Path, owns_dir: bool) -> None:
        self.directory = directory
        self._owns_dir = owns_dir
        self.master: redisproc.RedisServer | None = None
        self.replicas: list[redisproc.RedisServer] = []
        self.sentinels: list[Sentinel] = []
        self.proxies: list[LagProxy] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"{redisproc.HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def servers(self) -> list[redisproc.RedisServer]:
        return [s for s in (self.master, *self.replicas) if s is not None]

    def server_on(self, port: int) -> redisproc.RedisServer:
        return next(s for s in self.servers() if s.port == port)

    def agreed_master(self) -> int | None:
        """The port every live sentinel names as the master's; None while they disagree."""
        answers = {s.master_address() for s in self.sentinels if s.process.poll() is None}
        if len(answers) != 1 or None in answers:
            return None
        (address,) = answers
        return address[1] if address is not None else None

    def master_port(self) -> int:
        port = self.agreed_master()
        if port is None:
            raise RuntimeError("the sentinels disagree on the master")
        return port

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
            port = self.agreed_master()
            if port is None or port == old_port:
                return None
            with _client(port) as c:
                role = c.execute_command("ROLE")
            return port if role[0] in (b"master", "master") else None

        port: int = _wait(promoted, timeout, "the sentinels to promote the replica")
        return port

    def wait_replicas_online(self, replicas: int = 1, timeout: float = 30.0) -> None:
        """Wait until the agreed master has ``replicas`` replicas online (after a failover the sentinels
        re-point the survivors at the new master, which then syncs them: writes that need a replica's
        acknowledgement fail until then)."""

        def online() -> bool:
            port = self.agreed_master()
            if port is None:
                return False
            with _client(port) as c:
                info = c.info("replication")
            up = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                  and v.get("state") == "online"]
            return len(up) >= replicas

        _wait(online, timeout, f"{replicas} replica(s) online on the new master")

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.drop()
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers():
            server.stop()
        if self._owns_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


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


def start(
    directory: Path | None = None, *, replicas: int = 1, sentinels: int = 3, lag_proxy: bool = False
) -> RedisHA:
    """A master, ``replicas`` replicas of it, and ``sentinels`` sentinels (quorum: their majority), all
    ready. ``lag_proxy``: the replicas reach the master through one ``LagProxy`` each (``ha.proxies``)."""
    owns_dir = directory is None
    workdir = Path(tempfile.mkdtemp(prefix="redis-ha-")) if directory is None else directory
    ha = RedisHA(workdir, owns_dir)
    try:
        ha.master = redisproc.start(workdir / "master")
        for i in range(replicas):
            upstream = ha.master.port
            if lag_proxy:
                ha.proxies.append(LagProxy(ha.master.port))
                upstream = ha.proxies[-1].port
            replica = redisproc.start(workdir / f"replica-{i}", extra=[f"replicaof {redisproc.HOST} {upstream}"])
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


class RedisCluster(_Servers):
    """The masters (and replicas) of a Redis Cluster; ``stop`` ends them all."""

    def __init__(self, directory: Path, owns_dir: bool) -> None:
        self.directory = directory
        self._owns_dir = owns_dir
        self.nodes: list[redisproc.RedisServer] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{redisproc.HOST}:{n.port}" for n in self.nodes)

    def master_of(self, key: str, asked: redisproc.RedisServer | None = None) -> redisproc.RedisServer:
        """The node that serves ``key``'s slot now, as ``asked`` (default: the first live node) sees it:
        after a failover, the nodes not involved learn of it a moment later (gossip)."""
        if asked is None:
            asked = next(n for n in self.nodes if n.process.poll() is None)
        with _client(asked.port) as c:
            slot = c.execute_command("CLUSTER", "KEYSLOT", key)
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(master[1]))
        raise RuntimeError(f"no master serves {key!r}")

    def replica_of(self, master: redisproc.RedisServer) -> redisproc.RedisServer:
        """A replica of ``master``."""
        for node in self.nodes:
            if node is not master and node.process.poll() is None:
                with _client(node.port) as c:
                    info = c.info("replication")
                if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                    return node
        raise RuntimeError(f"no replica of the master on port {master.port}")

    def planned_failover(self, replica: redisproc.RedisServer, timeout: float = READY_TIMEOUT) -> None:
        """``CLUSTER FAILOVER`` on ``replica``: it takes its master's slots, the master becomes its
        replica (no data lost, no node down). Returns once ``replica`` is a master."""
        with _client(replica.port) as c:
            c.execute_command("CLUSTER", "FAILOVER")

        def promoted() -> bool:
            with _client(replica.port) as c:
                return bool(c.info("replication").get("role") == "master")

        _wait(promoted, timeout, "the planned failover")
        self.wait_ok(timeout)

    def wait_promoted(self, key: str, old: redisproc.RedisServer, timeout: float = READY_TIMEOUT) -> None:
        """Wait until another node serves ``key``'s slot than ``old`` and the cluster is ok again."""
        _wait(lambda: self.master_of(key) is not old, timeout, "a replica to take over the slot")
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until every live node says the cluster is ok."""

        def ok() -> bool:
            for node in self.nodes:
                if node.process.poll() is None:
                    with _client(node.port) as c:
                        if c.execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") < 0:
                            return False
            return True

        _wait(ok, timeout, "the cluster to be ok")

    def restart(self, node: redisproc.RedisServer) -> redisproc.RedisServer:
        """Start a dead node again on its port, from its own config and ``nodes.conf``: a failed master
        comes back as a replica of the one that replaced it."""
        config = node.directory / "redis.conf"
        process = subprocess.Popen(
            [redisproc.find_binary(), str(config)], cwd=node.directory, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        again = redisproc.RedisServer(process, node.port, node.directory, owns_dir=False)
        self.nodes[self.nodes.index(node)] = again
        _wait(again.ping, READY_TIMEOUT, "the restarted node")
        return again

    def wait_replicas_linked(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until every live replica's link to its master is up (its first sync done): a replica
        promoted before that would have none of the data."""

        def linked() -> bool:
            for node in self.nodes:
                if node.process.poll() is None:
                    with _client(node.port) as c:
                        info = c.info("replication")
                    if info.get("role") == "slave" and info.get("master_link_status") != "up":
                        return False
            return True

        _wait(linked, timeout, "the replicas' links to their masters")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._owns_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


def cluster_cli() -> str | None:
    """``redis-cli`` (or ``valkey-cli``) from PATH: it creates the cluster."""
    return shutil.which("redis-cli") or shutil.which("valkey-cli")


def start_cluster(directory: Path | None = None, *, masters: int = 3, replicas: int = 0) -> RedisCluster:
    """A cluster of ``masters`` masters with ``replicas`` replicas each, its slots spread evenly."""
    cli = cluster_cli()
    if cli is None:
        raise RuntimeError("no redis-cli to create a cluster with")
    owns_dir = directory is None
    workdir = Path(tempfile.mkdtemp(prefix="redis-cluster-")) if directory is None else directory
    cluster = RedisCluster(workdir, owns_dir)
    try:
        for i in range(masters * (1 + replicas)):
            cluster.nodes.append(
                redisproc.start(
                    workdir / f"node-{i}",
                    extra=[
                        "cluster-enabled yes",
                        'cluster-config-file "nodes.conf"',
                        "cluster-node-timeout 2000",
                        "cluster-replica-validity-factor 0",
                    ],
                    highest_port=CLUSTER_HIGHEST_PORT,
                )
            )
        addresses = [f"{redisproc.HOST}:{n.port}" for n in cluster.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )
        cluster.wait_ok()
        cluster.wait_replicas_linked()
        return cluster
    except BaseException:
        cluster.stop()
        raise
