"""How far each worker of a node has applied the store's changes to its key table: what lets the admin API
answer a write only once it is in force on every worker of its node.

Theory of operation. The node's directory (the one the supervisor makes for the node's metrics and names to
its children in ``GATEWAY_METRICS_DIR``) holds one small file per worker with a key table, its **mark**:

    who        | when                                      | does
    -----------+-------------------------------------------+------------------------------------------------
    worker     | its key service starts, before it reads   | makes ``applied-<pid>-<random>`` (under a
               | its first snapshot                        | temporary name: locked, written -1 = nothing
               |                                           | applied yet, then renamed into place)
    worker     | a key table is swapped in                 | writes the change version of its snapshot
    worker     | stops                                     | removes its mark
    admin API  | after a write, the store at version V     | reads the marks until every live worker's is
               |                                           | >= V, or ``[admin] apply_timeout`` has passed
               |                                           | (then the answer names the workers still late)

Liveness is a lock (``flock``): a worker holds an exclusive lock on its mark for its whole life, and the
kernel drops it when the process dies, however it dies (the descriptor is close-on-exec; workers do not
fork). Unlike a POSIX record lock, an ``flock`` belongs to the open file, so a reader's own descriptor
conflicts with it even in the same process, and closing that descriptor leaves the worker's lock alone. A
mark whose lock a reader can take belongs to a dead worker: it is not waited for, and it is removed (its
name has a random part, so no later process can have made a file of the same name). A mark never appears
unlocked: it is locked under its temporary name before the rename.

Why this is exact. A worker makes its mark before it reads its first snapshot, so a worker that the admin
API does not see yet reads a snapshot taken after the write; a worker it sees is waited for until its table
is built from a snapshot of version >= V, whose records were read after V was committed (``Store.snapshot``
reads the version first). A key table swap and its mark's write happen in the same event-loop step, so a
mark never runs ahead of the table that serves requests.

A mark is 16 bytes: the version and its bitwise complement (signed 64-bit little-endian). A reader that finds
them disagree (it read in the middle of a write) reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import secrets
import struct
import time
from collections.abc import Callable

__all__ = ["AppliedMark", "late_workers", "node_directory", "read_marks", "wait_applied"]

#: the environment variable naming the node's directory (``gateway.observe.metrics.ENV_METRICS_DIR``)
_ENV_NODE_DIR = "GATEWAY_METRICS_DIR"
_PREFIX = "applied-"
_FORMAT = struct.Struct("<qq")
#: the longest pause between two reads of the marks while waiting (seconds)
_MAX_PAUSE = 0.02


def node_directory() -> str | None:
    """The node's directory, when this process is a child of ``gateway serve`` (else None: no marks)."""
    return os.environ.get(_ENV_NODE_DIR) or None


def _pack(version: int) -> bytes:
    return _FORMAT.pack(version, ~version)


class AppliedMark:
    """One worker's mark (see the module docstring). Make it with ``AppliedMark.create``."""

    __slots__ = ("_fd", "path", "version")

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path
        #: the version last written (-1: no key table from the store yet)
        self.version = -1

    @classmethod
    def create(cls, directory: str) -> AppliedMark:
        """Make this process's mark in ``directory``, locked and at -1. Raises OSError."""
        name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        path = os.path.join(directory, name)
        tmp = os.path.join(directory, f".{name}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(fd, _pack(-1), 0)
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return cls(fd, path)

    def publish(self, version: int) -> None:
        """The key table now in use holds every change up to ``version``."""
        if version != self.version:
            os.pwrite(self._fd, _pack(version), 0)
            self.version = version

    def close(self) -> None:
        """Remove the mark (at a clean stop; a killed worker's mark is removed by the next reader)."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1


def _read_one(path: str) -> int | None:
    """The version of a live worker's mark; None for a dead worker's (removed here) or a vanished one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        else:  # nobody holds it: its worker is gone
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        for _ in range(100):
            data = os.pread(fd, _FORMAT.size, 0)
            if len(data) == _FORMAT.size:
                version, check = _FORMAT.unpack(data)
                if check == ~version:
                    return int(version)
        return -1  # never read whole: count it as not applied (it is written only at table swaps)
    finally:
        os.close(fd)


def read_marks(directory: str) -> dict[str, int]:
    """Mark name -> applied version, for every live worker of the node."""
    out: dict[str, int] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.name.startswith(_PREFIX):
            continue
        version = _read_one(entry.path)
        if version is not None:
            out[entry.name] = version
    return out


def late_workers(directory: str, version: int) -> list[int]:
    """The pids of the node's live workers whose key table does not hold ``version`` yet."""
    late = []
    for name, applied in read_marks(directory).items():
        if applied < version:
            pid = name[len(_PREFIX):].split("-", 1)[0]
            late.append(int(pid) if pid.isdigit() else 0)
    return sorted(late)


async def wait_applied(
    directory: str, version: int, timeout: float, *, clock: Callable[[], float] = time.monotonic
) -> list[int]:
    """Wait until every live worker of the node has applied ``version``, at most ``timeout`` seconds.
    Returns the pids of the workers still late (empty: all applied)."""
    deadline = clock() + timeout
    pause = 0.001
    while True:
        late = late_workers(directory, version)
        now = clock()
        if not late or now >= deadline:
            return late
        await asyncio.sleep(min(pause, deadline - now))
        pause = min(pause * 2, _MAX_PAUSE)
