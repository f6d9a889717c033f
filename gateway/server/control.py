"""The supervisor's links to its children: a config pipe, a heartbeat slot, the parent-death signal.

Theory of operation:

    link            | direction           | what
    ----------------+---------------------+---------------------------------------------------------------
    config pipe     | supervisor -> child | frames: a 4-byte big-endian length, then an encoded
                    |                     | ``ConfigSnapshot``. The child reads them on its event loop and
                    |                     | applies the last complete one. The supervisor never blocks on a
                    |                     | child: it writes what the pipe takes and keeps at most the frame
                    |                     | in progress and the newest one. End of file: the supervisor is
                    |                     | gone, the child drains and exits
    heartbeat slot  | child -> supervisor | one slot per child in a shared anonymous mapping made before the
                    |                     | first fork: the child's pid, its last beat and when it became
                    |                     | ready, on CLOCK_MONOTONIC (one clock for every process of the
                    |                     | machine). A loop timer beats four times per timeout, so a beat
                    |                     | older than the timeout means a loop that has not run: a stopped
                    |                     | process or a busy loop
    parent death    | kernel -> child     | Linux: SIGTERM when the supervisor dies, even by SIGKILL
                    |                     | (``prctl(PR_SET_PDEATHSIG)``); a supervisor that died before the
                    |                     | call is caught by comparing ``getppid()`` with its pid

A slot is written by one child and read by the supervisor; its fields are 8-byte aligned words, so a
reader sees each whole. A respawned child reuses its index's slot, reset by the supervisor before the fork.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import signal
import struct
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import msgspec

from gateway.config.snapshot import ConfigSnapshot, decode_snapshot

__all__ = [
    "ChildLink",
    "ConfigReceiver",
    "ConfigSender",
    "HeartbeatTable",
    "SlotState",
    "frame",
    "set_parent_death_signal",
]

log = logging.getLogger("gateway.control")

_HEADER = struct.Struct(">I")
#: a frame longer than this is not from our supervisor: the link is dropped
_MAX_FRAME = 256 * 1024 * 1024
_SLOT = struct.Struct("<qddq")  # pid, last beat, ready at, the config it runs (``config_code``)
_PR_SET_PDEATHSIG = 1


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


# --------------------------------------------------------------------------------------------------------
# The config pipe


class ConfigSender:
    """The supervisor's end of one child's config pipe (non-blocking)."""

    __slots__ = ("_offset", "_queue", "fd")

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._queue: collections.deque[bytes] = collections.deque()
        self._offset = 0  # bytes of the queue's head already written

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def send(self, data: bytes) -> None:
        """Queue one frame; frames queued and not started are superseded (only the newest config counts)."""
        while len(self._queue) > (1 if self._offset else 0):
            self._queue.pop()
        self._queue.append(data)
        self.flush()

    def flush(self) -> None:
        """Write what the pipe takes now. A child that is gone drops what is queued."""
        while self._queue:
            head = self._queue[0]
            try:
                n = os.write(self.fd, memoryview(head)[self._offset :])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EBADF):
                    log.warning("supervisor: cannot write to a child's config pipe: %s", exc)
                self._queue.clear()
                self._offset = 0
                return
            self._offset += n
            if self._offset == len(head):
                self._queue.popleft()
                self._offset = 0

    def close(self) -> None:
        self._queue.clear()
        try:
            os.close(self.fd)
        except OSError:
            pass


class ConfigReceiver:
    """The child's end of its config pipe: frames read on the event loop, the last complete one applied."""

    __slots__ = ("_buf", "_on_eof", "_on_snapshot", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._on_snapshot: Callable[[ConfigSnapshot], None] | None = None
        self._on_eof: Callable[[], None] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, on_snapshot: Callable[[ConfigSnapshot], None],
               on_eof: Callable[[], None]) -> None:
        os.set_blocking(self.fd, False)
        self._on_snapshot, self._on_eof = on_snapshot, on_eof
        loop.add_reader(self.fd, self._readable, loop)

    def _readable(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError as exc:
            log.error("config pipe: %s", exc)
            data = b""
        if not data:
            loop.remove_reader(self.fd)
            if self._on_eof is not None:
                self._on_eof()
            return
        self._buf += data
        latest = self._take_frames()
        if latest is not None and self._on_snapshot is not None:
            try:
                snapshot = decode_snapshot(latest)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("config pipe: an unreadable config was ignored (%s)", exc)
                return
            self._on_snapshot(snapshot)

    def _take_frames(self) -> bytes | None:
        latest = None
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > _MAX_FRAME:
                log.error("config pipe: a frame of %d bytes; the pipe is not ours, ignoring it", size)
                self._buf.clear()
                return None
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            latest = bytes(self._buf[_HEADER.size : end])
            del self._buf[:end]
        return latest


# --------------------------------------------------------------------------------------------------------
# Heartbeats


class SlotState(NamedTuple):
    pid: int
    #: CLOCK_MONOTONIC of the last beat; 0 before the first
    beat: float
    #: CLOCK_MONOTONIC when the child began serving; 0 before
    ready: float
    #: ``config_code`` of the config it serves with: the one it started with, then each reload it applied
    config: int


def config_code(digest: str) -> int:
    """A config snapshot's digest as the 64-bit number a heartbeat slot holds (0: none known)."""
    return int(digest[:15], 16) if digest else 0


class HeartbeatTable:
    """Shared memory of ``slots`` heartbeat slots; made by the supervisor, inherited at fork."""

    __slots__ = ("_mm", "slots")

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._mm = mmap.mmap(-1, max(1, slots) * _SLOT.size, flags=mmap.MAP_SHARED)

    def reset(self, slot: int) -> None:
        _SLOT.pack_into(self._mm, slot * _SLOT.size, 0, 0.0, 0.0, 0)

    def read(self, slot: int) -> SlotState:
        return SlotState(*_SLOT.unpack_from(self._mm, slot * _SLOT.size))

    def beat(self, slot: int, ready: bool = False) -> None:
        """(In the child) record a beat now; ``ready``: and that the child serves from now on."""
        off = slot * _SLOT.size
        now = time.monotonic()
        _, _, was_ready, config = _SLOT.unpack_from(self._mm, off)
        ready_at = now if ready and not was_ready else was_ready
        _SLOT.pack_into(self._mm, off, os.getpid(), now, ready_at, config)

    def running(self, slot: int, code: int) -> None:
        """(In the child) the config it serves with from now on (``config_code``)."""
        pid, beat, ready, _ = _SLOT.unpack_from(self._mm, slot * _SLOT.size)
        _SLOT.pack_into(self._mm, slot * _SLOT.size, pid, beat, ready, code)

    def close(self) -> None:
        self._mm.close()


class ChildLink:
    """What a child gets from its supervisor: its config pipe and its heartbeat slot."""

    __slots__ = ("_handle", "config", "interval", "receiver", "slot", "table")

    def __init__(self, receiver: ConfigReceiver, table: HeartbeatTable, slot: int, timeout: float,
                 config: int = 0) -> None:
        self.receiver = receiver
        self.table = table
        self.slot = slot
        #: ``config_code`` of the config the child started with (published when it is ready)
        self.config = config
        #: four beats per timeout; 0: no beats (the supervisor does not watch)
        self.interval = timeout / 4.0
        self._handle: asyncio.TimerHandle | None = None

    def beat_from(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start beating on ``loop`` (before the app's startup: a slow startup is not a stuck loop)."""
        self._beat(loop)

    def listen(self, loop: asyncio.AbstractEventLoop, on_snapshot: Callable[[ConfigSnapshot], None],
               on_eof: Callable[[], None]) -> None:
        """Take configs from the pipe (after the app's startup: one sent meanwhile waits in the pipe)."""
        self.receiver.attach(loop, on_snapshot, on_eof)

    def ready(self) -> None:
        self.table.beat(self.slot, ready=True)
        self.table.running(self.slot, self.config)

    def running(self, snapshot: ConfigSnapshot) -> None:
        """A config handed over has been applied: the supervisor sees which config each child serves."""
        self.config = config_code(snapshot.digest)
        self.table.running(self.slot, self.config)

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        self.table.beat(self.slot)
        if self.interval > 0:
            self._handle = loop.call_later(self.interval, self._beat, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


# --------------------------------------------------------------------------------------------------------
# Parent death


def set_parent_death_signal(supervisor_pid: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel for ``sig`` when the supervisor dies (Linux). False when it is gone already (the
    child was orphaned before the call): the caller exits. Elsewhere only that check is made."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    return os.getppid() == supervisor_pid
