"""The embedded ``LeaseSource``: one node, all its worker processes, a shared-memory table in one file.

Why a shared-memory table and not SQLite. Both were measured doing the same operation (read a bucket,
the GCRA step, write it back) from Python on the two-core reference machine:

=====================================================  ======================  =========================
                                                       one process             two processes contending
=====================================================  ======================  =========================
mmap'd file + fcntl lock, fixed slots (this module)    6 us CPU per operation  7 us CPU, 11 us wall
SQLite, WAL, ``BEGIN IMMEDIATE`` ... ``COMMIT``          30 us CPU               29-36 us CPU, 66-73 us wall
=====================================================  ======================  =========================

Five times cheaper, and it stays cheap under contention: a waiter on the fcntl lock sleeps in the kernel
and wakes as soon as the holder (a few microseconds of work) releases it, where SQLite's busy handler
polls with sleeps of a millisecond and more. What SQLite would add (durable transactions, any number of
keys) this state does not need: it is a cache of "how much of each limit is used now". A power cut loses
at most the last seconds of it; a full table is a sizing error, reported as unavailable (``slots``).

Layout of the file (little-endian, created by the first process that opens it; later openers adopt the
sizes they find)::

    header    4096 bytes   magic "GWLEASE1", version, bucket slots, counter slots, holders per counter,
                           budget slots
    buckets   64 bytes each: key digest (16), seq (8), level, stamp, rate, burst (4 doubles), padding
    counters  32 + 24 * holders bytes each: key digest (16), seq (8), padding; then per holder:
              holder id (8), in-flight count (8), expiry (8, a double)
    budgets   64 + 24 * holders bytes each: key digest (16), seq (8), day (8, YYYYMMDD), month (8,
              YYYYMM), spend of the day and of the month (2 doubles), padding; then per holder: holder id
              (8), hold in US dollars (8, a double), expiry (8, a double)

The budget region came later than the others: a file made without it (its header says 0 budget slots)
has it appended by the first process that opens it, under the file lock; processes that mapped the file
before keep their shorter mapping, which the appended region does not disturb.

A key lives in one of the ``_WINDOW`` slots after its home slot (its BLAKE2b digest modulo the table):
lookups scan the window (one ``mmap.find`` for the digest), a new key takes the first free slot of its
window. A bucket slot whose bucket has refilled completely holds nothing a fresh bucket would not, so it
is freed when its level reaches 0 and reclaimed by any key when found full; a counter slot whose holders
have all expired likewise; a budget slot whose holders have all expired and that was last written on an
earlier day than the asking operation's (its spend is in the store by then, which re-seeds it).

Concurrency: one fcntl lock over the file serialises every operation of every process of the node (the
critical section is microseconds; a process killed while holding it releases it, the kernel sees to
that). A process's own threads share its fcntl lock, so a ``threading.Lock`` orders them first. The event
loop tries both locks without blocking and runs the operation inline; when another process holds the
file lock (or the executor thread the thread lock), the operation moves to this source's one worker
thread, where it waits on the lock, so the event loop never blocks.

Torn writes: a process killed in the middle of writing a slot (SIGKILL between two stores) leaves the
slot's sequence number odd (it is made odd before the write and even after). A bucket found so is reset
to empty (level = burst, refilling from now): it may under-admit for one refill period, never over-admit.
A counter slot found so keeps the holder entries that are plausible (count >= 0, expiry within one
``holder_ttl``) and drops the others; either way a dead writer's entry stops counting when it expires. A
budget slot found so drops implausible holds likewise and a spend that is not a finite number >= 0 (the
store's seeds raise it again on the next operation, which heals it).

Time is the wall clock (``time.time_ns``, shifted to an epoch of 1.7e9 s so that a double keeps it to
a few nanoseconds), like Redis's ``TIME``: the state survives a restart of the node. A clock stepped backwards
pauses refills (as ``Bucket`` treats an earlier ``now``); one stepped forwards refills early, at most to
a full bucket.

Costs (measured, two-core reference machine, this module as it is): ``batch`` of one operation awaited
from the event loop, about 15 us of CPU (locks, lookup, GCRA, write-back, the coroutine); each further
operation in the same batch, about 6.5 us.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import math
import mmap
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gateway.limits.shared import (
    BudgetGrant,
    BudgetOp,
    Grant,
    LeaseSource,
    Op,
    OpKind,
    SharedStateUnavailable,
    check_budget_op,
    check_op,
)

__all__ = ["CLOCK_EPOCH", "LocalLeaseSource", "budget_step", "gcra", "reconfigure", "wall_clock"]

R = TypeVar("R")

#: seconds since 1970 at which the stored clock reads 0 (keeps stamps small: more precise doubles)
CLOCK_EPOCH = 1_700_000_000
_EPOCH_NS = CLOCK_EPOCH * 1_000_000_000

_MAGIC = b"GWLEASE1"
_VERSION = 1
_HEADER = struct.Struct("<8sIIIII")
#: where the budget slots are in the header (files made before the budget region have 0 there)
_BUDGET_SLOTS_AT = 24
_BUDGET_SLOTS = struct.Struct("<I")
_HEADER_SIZE = 4096
_BUCKET = struct.Struct("<16sQdddd8x")
_BUCKET_SIZE = _BUCKET.size  # 64
_SEQ = struct.Struct("<Q")
_SEQ_AT = 16  # offset of the sequence number in every slot
_COUNTER_HEAD_SIZE = 32
_HOLDER = struct.Struct("<Qqd")
_HOLDER_SIZE = _HOLDER.size  # 24
_BUDGET_HEAD = struct.Struct("<16sQqqdd")
_BUDGET_HEAD_SIZE = 64
_BUDGET_HOLDER = struct.Struct("<Qdd")
#: slots a key may occupy after its home slot
_WINDOW = 16
_EMPTY = bytes(16)
_INF = math.inf
# the admission tolerance of gateway._core.limit (a billionth of the burst)
_CEILING = 1.000000001


def wall_clock() -> float:
    """Seconds since ``CLOCK_EPOCH`` on the wall clock: one time for every process of the node."""
    return (time.time_ns() - _EPOCH_NS) / 1e9


# --------------------------------------------------------------------------------------------------------
# GCRA on a stored (level, stamp): the arithmetic of gateway._core.limit_py.Bucket, operation for operation


def _level_at(level: float, stamp: float, rate: float, now: float) -> float:
    if level > 0.0 and now > stamp:
        level = level - (now - stamp) * rate
        if level < 0.0:
            level = 0.0
    return level


def _wait(
    level: float, stamp: float, rate: float, burst: float, now: float, current: float, amount: float
) -> float:
    ceiling = burst * _CEILING
    if amount > ceiling:
        return _INF
    start = now if now > stamp else stamp
    wait = (start - now) + (current + amount - burst) / rate
    step = 0.0
    while _level_at(level, stamp, rate, now + wait) + amount > ceiling:
        if step == 0.0:
            step = math.nextafter(now + wait, _INF) - (now + wait)
        wait = wait + step
        step = step + step
    return wait


def gcra(
    kind: OpKind,
    level: float,
    stamp: float,
    rate: float,
    burst: float,
    now: float,
    amount: float,
    size: float,
    returning: float,
) -> tuple[float, float, float, float]:
    """One operation on a bucket stored as ``(level, stamp)``: ``(level, stamp, granted, wait)`` after it.

    ``acquire`` with ``size == amount`` is ``Bucket.take``, ``charge`` is ``force``, ``give_back`` and
    ``refund`` are ``refund``, float for float; a larger ``size`` grants as much of it as fits (whole
    units, never below ``amount``). A fresh bucket is ``(0.0, -inf)``.
    """
    if kind == "acquire":
        if returning > 0.0:
            level = _level_at(level, stamp, rate, now) - returning
            if level < 0.0:
                level = 0.0
            if now > stamp:
                stamp = now
        current = _level_at(level, stamp, rate, now)
        ceiling = burst * _CEILING
        if current + amount <= ceiling:
            granted = size if size > amount else amount
            if current + granted > ceiling:
                granted = float(math.floor(ceiling - current))
                if granted < amount:
                    granted = amount
            if now > stamp:
                stamp = now
            return current + granted, stamp, granted, 0.0
        return level, stamp, 0.0, _wait(level, stamp, rate, burst, now, current, amount)
    if kind == "charge":
        level = _level_at(level, stamp, rate, now) + amount
    elif kind == "give_back" or kind == "refund":
        level = _level_at(level, stamp, rate, now) - amount
        if level < 0.0:
            level = 0.0
    else:
        return level, stamp, 0.0, 0.0
    if now > stamp:
        stamp = now
    return level, stamp, 0.0, 0.0


def reconfigure(
    level: float, stamp: float, old_rate: float, old_burst: float, burst: float, now: float
) -> tuple[float, float]:
    """A changed policy (reload): refill at the old rate up to ``now``; the units used stay used, up to
    the new burst; a bucket in debt (above its burst) keeps its debt in proportion when the burst shrinks.

    So a limit raised from 5 to 100 a minute, 5 used, has 95 left at once; lowered from 100 to 5 with 50
    used, it is full and refills at the new rate. (``gateway._core`` ``Bucket.reconfigure`` keeps the used
    fraction instead; the shared state, which every worker sees, follows this rule.)
    """
    level = _level_at(level, stamp, old_rate, now)
    if now > stamp:
        stamp = now
    scaled = level * (burst / old_burst)
    return min(level, max(burst, scaled)), stamp


def budget_step(
    op: BudgetOp,
    fresh: bool,
    day: int,
    month: int,
    spent_day: float,
    spent_month: float,
    mine: float,
    others: float,
) -> tuple[int, int, float, float, float, bool]:
    """One ``BudgetOp`` on a stored counter: ``(day, month, spent_day, spent_month, mine, ok)`` after it.

    ``fresh``: the counter did not exist (its stored values are zeros); ``mine``: this holder's live hold
    before the operation; ``others``: the other holders' live holds. The Lua of
    ``gateway.limits.shared_redis`` is this function, operation for operation.
    """
    if op.month > month:
        month = op.month
        spent_month = 0.0
    if op.day > day:
        day = op.day
        spent_day = 0.0
    spent_day = spent_day + op.spent
    spent_month = spent_month + op.spent
    if fresh or op.heal:
        if op.day == day and op.seed_day > spent_day:
            spent_day = op.seed_day
        if op.month == month and op.seed_month > spent_month:
            spent_month = op.seed_month
    ok = True
    if op.need > 0.0:
        room = min(op.limit_day - spent_day, op.limit_month - spent_month) - others
        if op.need <= room:
            extra = (room - op.need) / op.split
            if extra > op.want - op.need:
                extra = op.want - op.need
            if extra < 0.0:
                extra = 0.0
            mine = op.need + extra
        else:
            ok = False
            mine = op.floor
    else:
        if mine > op.want:
            mine = op.want
        if mine < op.floor:
            mine = op.floor
    return day, month, spent_day, spent_month, mine, ok


# --------------------------------------------------------------------------------------------------------


class LocalLeaseSource(LeaseSource):
    """Leases and concurrency counters for the workers of one node, in a shared-memory file at ``path``.

    Every worker process opens its own instance on the same path (after forking: locks and the holder
    identity are per process). ``slots``: bucket slots (64 bytes each; a key per limit and principal);
    ``counter_slots`` and ``holders`` (holders per key: at least the node's worker count): the concurrency
    table; ``budget_slots``: budget counters (a key or tenant with a budget each; ``64 + 24 * holders``
    bytes each). Sizes apply when the file is created. ``clock``: seconds, one clock for all processes
    (``wall_clock``; tests pass their own).
    """

    keeps_budgets = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        slots: int = 65_536,
        counter_slots: int = 1_024,
        holders: int = 64,
        budget_slots: int = 4_096,
        lease_ttl: float = 2.0,
        holder_ttl: float = 10.0,
        clock: Callable[[], float] = wall_clock,
    ) -> None:
        if slots < _WINDOW or counter_slots < _WINDOW or budget_slots < _WINDOW or holders < 1:
            raise ValueError(
                f"need slots, counter_slots and budget_slots >= {_WINDOW} and holders >= 1"
            )
        if not (0.0 < lease_ttl < _INF and 0.0 < holder_ttl < _INF):
            raise ValueError("lease_ttl and holder_ttl must be finite numbers of seconds > 0")
        self.path = os.fspath(path)
        self.lease_ttl = float(lease_ttl)
        self.holder_ttl = float(holder_ttl)
        self._clock = clock
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            sizes = self._layout(slots, counter_slots, holders, budget_slots)
            self._slots, self._counter_slots, self._holders, self._budget_slots = sizes
            self._counters_at = _HEADER_SIZE + self._slots * _BUCKET_SIZE
            self._counter_size = _COUNTER_HEAD_SIZE + self._holders * _HOLDER_SIZE
            self._budgets_at = self._counters_at + self._counter_slots * self._counter_size
            self._budget_size = _BUDGET_HEAD_SIZE + self._holders * _HOLDER_SIZE
            self._map = mmap.mmap(self._fd, self._budgets_at + self._budget_slots * self._budget_size)
        except BaseException:
            os.close(self._fd)
            raise
        self._holders_struct = struct.Struct("<" + "Qqd" * self._holders)
        self._budget_holders = struct.Struct("<" + "Qdd" * self._holders)
        self._holder = int.from_bytes(secrets.token_bytes(8), "little") | 1  # never 0 (0 marks a free entry)
        self._mine: dict[str, int] = {}
        self._digests: dict[str, bytes] = {}
        self._thread_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-limits-local")
        self._healthy = True
        self._closed = False

    @classmethod
    async def open(cls, path: str | os.PathLike[str], **options: Any) -> LocalLeaseSource:
        """Open (creating if need be) off the event loop: the first open of a node may wait on the lock."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: cls(path, **options))

    def _layout(
        self, slots: int, counter_slots: int, holders: int, budget_slots: int
    ) -> tuple[int, int, int, int]:
        """Create the file's header, or read the sizes of an existing one (under the file lock), appending
        the budget region to a file made without one."""

        def size(slots: int, counter_slots: int, holders: int, budget_slots: int) -> int:
            return (
                _HEADER_SIZE
                + slots * _BUCKET_SIZE
                + counter_slots * (_COUNTER_HEAD_SIZE + holders * _HOLDER_SIZE)
                + budget_slots * (_BUDGET_HEAD_SIZE + holders * _HOLDER_SIZE)
            )

        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, 0)
        try:
            header = os.pread(self._fd, _HEADER.size, 0)
            if len(header) < _HEADER.size or header[:8] == bytes(8):
                os.ftruncate(self._fd, size(slots, counter_slots, holders, budget_slots))
                os.pwrite(
                    self._fd, _HEADER.pack(_MAGIC, _VERSION, slots, counter_slots, holders, budget_slots), 0
                )
                return slots, counter_slots, holders, budget_slots
            magic, version, slots, counter_slots, holders, found = _HEADER.unpack(header)
            if magic != _MAGIC or version != _VERSION:
                raise ValueError(
                    f"{self.path} is not a limits table of this version (remove it to start anew)"
                )
            if found == 0:  # made before budgets: append their region (zeros: every slot free)
                needed = size(slots, counter_slots, holders, budget_slots)
                if os.fstat(self._fd).st_size < needed:
                    os.ftruncate(self._fd, needed)
                os.pwrite(self._fd, _BUDGET_SLOTS.pack(budget_slots), _BUDGET_SLOTS_AT)
                found = budget_slots
            return slots, counter_slots, holders, found
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    # -- locking ----------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn(*args)`` holding both locks: inline when free, else on the worker thread."""
        if self._closed:
            raise SharedStateUnavailable("the limits table is closed")
        if self._thread_lock.acquire(blocking=False):
            try:
                if self._closed:
                    raise SharedStateUnavailable("the limits table is closed")
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN):
                        raise self._unavailable(exc) from exc
                else:
                    try:
                        return self._guarded(fn, args)
                    finally:
                        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)
            finally:
                self._thread_lock.release()
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._blocking, fn, args)

    def _blocking(self, fn: Callable[..., R], args: tuple[Any, ...]) -> R:
        with self._thread_lock:
            if self._closed:
                raise SharedStateUnavailable("the limits table is closed")
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, 0)
            except OSError as exc:
                raise self._unavailable(exc) from exc
            try:
                return self._guarded(fn, args)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)

    def _guarded(self, fn: Callable[..., R], args: tuple[Any, ...]) -> R:
        try:
            result = fn(*args)
        except OSError as exc:
            raise self._unavailable(exc) from exc
        self._healthy = True
        return result

    def _unavailable(self, exc: BaseException) -> SharedStateUnavailable:
        self._healthy = False
        return SharedStateUnavailable(f"limits table {self.path}: {exc}")

    # -- slots ------------------------------------------------------------------------------------------

    def _digest(self, key: str) -> bytes:
        digest = self._digests.get(key)
        if digest is None:
            if len(self._digests) >= 100_000:
                self._digests.clear()
            digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
            if digest == _EMPTY:  # pragma: no cover - one chance in 2**128
                digest = b"\x01" + digest[1:]
            self._digests[key] = digest
        return digest

    def _find(self, digest: bytes, base: int, stride: int, count: int) -> tuple[int, int]:
        """``(offset of the slot holding digest or -1, start of its window)``."""
        home = int.from_bytes(digest[8:], "little") % (count - _WINDOW + 1)
        start = base + home * stride
        end = start + _WINDOW * stride
        m = self._map
        at = m.find(digest, start, end)
        while at != -1 and (at - start) % stride:
            at = m.find(digest, at + 1, end)
        return at, start

    def _write_bucket(
        self, at: int, digest: bytes, seq: int, level: float, stamp: float, rate: float, burst: float
    ) -> None:
        m = self._map
        _SEQ.pack_into(m, at + _SEQ_AT, seq | 1)  # odd while writing: a torn slot is recognisable
        _BUCKET.pack_into(m, at, digest, seq | 1, level, stamp, rate, burst)
        _SEQ.pack_into(m, at + _SEQ_AT, (seq | 1) + 1)

    def _claim_bucket(self, start: int, now: float) -> int:
        """A free slot of the window starting at ``start``: empty, or holding a bucket that is full."""
        m = self._map
        for at in range(start, start + _WINDOW * _BUCKET_SIZE, _BUCKET_SIZE):
            digest, seq, level, stamp, rate, _burst = _BUCKET.unpack_from(m, at)
            if digest == _EMPTY or (not seq & 1 and _level_at(level, stamp, rate, now) == 0.0):
                return at
        raise SharedStateUnavailable(
            f"limits table {self.path} is full around this key: make it larger (slots) or remove it"
        )

    def _bucket_op(self, op: Op, now: float, expires_at: float) -> Grant:
        rate = op.rate
        burst = op.burst
        digest = self._digest(op.key)
        at, start = self._find(digest, _HEADER_SIZE, _BUCKET_SIZE, self._slots)
        seq = 0
        if at == -1:
            level, stamp = 0.0, -_INF
        else:
            _, seq, level, stamp, old_rate, old_burst = _BUCKET.unpack_from(self._map, at)
            if seq & 1:  # torn by a writer that died: assume the worst (empty), refilling from now
                level, stamp = burst, now
            elif old_rate != rate or old_burst != burst:
                level, stamp = reconfigure(level, stamp, old_rate, old_burst, burst, now)
        level, stamp, granted, wait = gcra(
            op.kind, level, stamp, rate, burst, now, op.amount, op.size, op.returning
        )
        current = _level_at(level, stamp, rate, now)
        remaining = burst * _CEILING - current
        if remaining > burst:
            remaining = burst
        elif remaining < 0.0:
            remaining = 0.0
        if op.kind != "peek" or (at != -1 and seq & 1):
            if level > 0.0:
                if at == -1:
                    at = self._claim_bucket(start, now)
                self._write_bucket(at, digest, seq, level, stamp, rate, burst)
            elif at != -1:
                self._write_bucket(at, _EMPTY, seq, 0.0, 0.0, 0.0, 0.0)
        return Grant(granted, wait, remaining, current / rate, expires_at if wait == 0.0 else 0.0)

    def _apply(self, ops: Sequence[Op], now: float) -> list[Grant]:
        clock = self._clock()
        expires_at = now + self.lease_ttl
        return [self._bucket_op(op, clock, expires_at) for op in ops]

    # concurrency counters ----------------------------------------------------------------------------

    def _counter(self, key: str, now: float, claim: bool) -> tuple[int, list[Any]]:
        """``(offset, holder values)`` of ``key``'s counter slot; offset -1 when it has none and
        ``claim`` is false."""
        digest = self._digest(key)
        stride = self._counter_size
        at, start = self._find(digest, self._counters_at, stride, self._counter_slots)
        if at != -1:
            values = list(self._holders_struct.unpack_from(self._map, at + _COUNTER_HEAD_SIZE))
            if _SEQ.unpack_from(self._map, at + _SEQ_AT)[0] & 1:
                self._repair_counter(at, values, now)
            return at, values
        if not claim:
            return -1, []
        for at in range(start, start + _WINDOW * stride, stride):
            values = list(self._holders_struct.unpack_from(self._map, at + _COUNTER_HEAD_SIZE))
            if self._map[at : at + 16] == _EMPTY or not any(
                values[i] and values[i + 2] > now for i in range(0, len(values), 3)
            ):
                seq = _SEQ.unpack_from(self._map, at + _SEQ_AT)[0]
                _SEQ.pack_into(self._map, at + _SEQ_AT, seq | 1)
                self._map[at : at + 16] = digest
                values = [0] * len(values)
                self._holders_struct.pack_into(self._map, at + _COUNTER_HEAD_SIZE, *values)
                _SEQ.pack_into(self._map, at + _SEQ_AT, (seq | 1) + 1)
                return at, values
        raise SharedStateUnavailable(
            f"limits table {self.path} has no free counter slot around this key: make it larger"
        )

    def _repair_counter(self, at: int, values: list[Any], now: float) -> None:
        """A slot torn by a writer that died: drop entries no live holder could have written (a count
        below 0, an expiry beyond one ``holder_ttl`` from now) and make the sequence even again."""
        for i in range(0, len(values), 3):
            if values[i] and (values[i + 1] < 0 or not values[i + 2] <= now + self.holder_ttl):
                values[i : i + 3] = [0, 0, 0.0]
        m = self._map
        self._holders_struct.pack_into(m, at + _COUNTER_HEAD_SIZE, *values)
        seq = _SEQ.unpack_from(m, at + _SEQ_AT)[0]
        _SEQ.pack_into(m, at + _SEQ_AT, seq + 1)

    def _set_count(self, at: int, values: list[Any], count: int, now: float) -> None:
        """Write this holder's count (0 clears its entry) with a fresh expiry."""
        me = self._holder
        index = -1
        for i in range(0, len(values), 3):
            if values[i] == me:
                index = i
                break
        if index == -1:
            if count <= 0:
                return
            for i in range(0, len(values), 3):
                if values[i] == 0 or values[i + 2] <= now:
                    index = i
                    break
            else:
                raise SharedStateUnavailable(
                    f"limits table {self.path}: more concurrency holders than its {self._holders} per key"
                )
        entry = (me, count, now + self.holder_ttl) if count > 0 else (0, 0, 0.0)
        m = self._map
        seq = _SEQ.unpack_from(m, at + _SEQ_AT)[0]
        _SEQ.pack_into(m, at + _SEQ_AT, seq | 1)
        _HOLDER.pack_into(m, at + _COUNTER_HEAD_SIZE + (index // 3) * _HOLDER_SIZE, *entry)
        _SEQ.pack_into(m, at + _SEQ_AT, (seq | 1) + 1)

    @staticmethod
    def _live(values: list[Any], now: float) -> int:
        return sum(values[i + 1] for i in range(0, len(values), 3) if values[i] and values[i + 2] > now)

    def _enter(self, key: str, limit: int) -> bool:
        now = self._clock()
        at, values = self._counter(key, now, claim=True)
        if self._live(values, now) >= limit:
            return False
        count = self._mine.get(key, 0) + 1
        self._set_count(at, values, count, now)
        self._mine[key] = count
        return True

    def _leave(self, key: str) -> None:
        count = self._mine.get(key, 0)
        if count <= 0:
            return
        self._mine[key] = count - 1
        now = self._clock()
        at, values = self._counter(key, now, claim=False)
        if at != -1:
            self._set_count(at, values, count - 1, now)

    def _keepalive(self) -> None:
        now = self._clock()
        for key, count in list(self._mine.items()):
            at, values = self._counter(key, now, claim=count > 0)
            if at != -1:
                self._set_count(at, values, count, now)
            if count <= 0:
                del self._mine[key]

    def _inflight(self, key: str) -> int:
        now = self._clock()
        _, values = self._counter(key, now, claim=False)
        return self._live(values, now)

    # budget counters ---------------------------------------------------------------------------------

    def _budget_op(self, op: BudgetOp, now: float) -> BudgetGrant:
        m = self._map
        digest = self._digest(op.key)
        at, start = self._find(digest, self._budgets_at, self._budget_size, self._budget_slots)
        fresh = at == -1
        if fresh:
            seq, day, month, spent_day, spent_month = 0, 0, 0, 0.0, 0.0
            values: list[Any] = [0, 0.0, 0.0] * self._holders
        else:
            _, seq, day, month, spent_day, spent_month = _BUDGET_HEAD.unpack_from(m, at)
            values = list(self._budget_holders.unpack_from(m, at + _BUDGET_HEAD_SIZE))
            if seq & 1:  # torn by a writer that died: keep what is plausible, let the seeds heal it
                fresh = True
                day, month, spent_day, spent_month = self._repair_budget(
                    day, month, spent_day, spent_month, values, now
                )
        me = self._holder
        mine = 0.0
        others = 0.0
        index = -1
        free = -1
        for i in range(0, len(values), 3):
            if values[i] and values[i + 2] > now:
                if values[i] == me:
                    mine = values[i + 1]
                    index = i
                else:
                    others += values[i + 1]
            elif free == -1:
                free = i
        day, month, spent_day, spent_month, mine, ok = budget_step(
            op, fresh, day, month, spent_day, spent_month, mine, others
        )
        if index == -1 and mine > 0.0:
            if free == -1:
                raise SharedStateUnavailable(
                    f"limits table {self.path}: more budget holders than its {self._holders} per key"
                )
            index = free
        if index != -1:
            values[index : index + 3] = (me, mine, now + self.holder_ttl) if mine > 0.0 else (0, 0.0, 0.0)
        if at == -1:
            at = self._claim_budget(start, op.day, now)
        _SEQ.pack_into(m, at + _SEQ_AT, seq | 1)  # odd while writing: a torn slot is recognisable
        _BUDGET_HEAD.pack_into(m, at, digest, seq | 1, day, month, spent_day, spent_month)
        self._budget_holders.pack_into(m, at + _BUDGET_HEAD_SIZE, *values)
        _SEQ.pack_into(m, at + _SEQ_AT, (seq | 1) + 1)
        return BudgetGrant(ok, mine, spent_day, spent_month, others + mine)

    def _repair_budget(
        self, day: int, month: int, spent_day: float, spent_month: float, values: list[Any], now: float
    ) -> tuple[int, int, float, float]:
        if not 10000101 <= day <= 99991231 or month != day // 100:
            day, month = 0, 0
        if not 0.0 <= spent_day < _INF:
            spent_day = 0.0
        if not 0.0 <= spent_month < _INF:
            spent_month = 0.0
        for i in range(0, len(values), 3):
            if values[i] and not (0.0 <= values[i + 1] < _INF and values[i + 2] <= now + self.holder_ttl):
                values[i : i + 3] = [0, 0.0, 0.0]
        return day, month, spent_day, spent_month

    def _claim_budget(self, start: int, day: int, now: float) -> int:
        """A free budget slot of the window starting at ``start``: empty, or without a live holder and
        last written on a day before ``day``."""
        m = self._map
        stride = self._budget_size
        for at in range(start, start + _WINDOW * stride, stride):
            digest, _seq, stored_day, _month, _sd, _sm = _BUDGET_HEAD.unpack_from(m, at)
            if digest == _EMPTY:
                return at
            if stored_day < day:
                values = self._budget_holders.unpack_from(m, at + _BUDGET_HEAD_SIZE)
                if not any(values[i] and values[i + 2] > now for i in range(0, len(values), 3)):
                    return at
        raise SharedStateUnavailable(
            f"limits table {self.path} has no free budget slot around this key: make it larger"
        )

    def _budget_apply(self, ops: Sequence[BudgetOp]) -> list[BudgetGrant]:
        now = self._clock()
        return [self._budget_op(op, now) for op in ops]

    # -- LeaseSource ------------------------------------------------------------------------------------

    async def batch(self, ops: Sequence[Op], now: float) -> list[Grant]:
        for op in ops:
            check_op(op)
        return await self._run(self._apply, ops, now)

    async def budget(self, ops: Sequence[BudgetOp]) -> list[BudgetGrant]:
        for op in ops:
            check_budget_op(op)
        return await self._run(self._budget_apply, ops)

    async def enter(self, limit_key: str, limit: int) -> bool:
        return await self._run(self._enter, limit_key, limit)

    async def leave(self, limit_key: str) -> None:
        await self._run(self._leave, limit_key)

    async def keepalive(self) -> None:
        if self._mine:
            await self._run(self._keepalive)

    async def inflight(self, limit_key: str) -> int:
        return await self._run(self._inflight, limit_key)

    async def ping(self) -> bool:
        try:
            await self._run(lambda: None)
        except SharedStateUnavailable:
            return False
        return True

    async def close(self) -> None:
        if self._closed:
            return
        await asyncio.get_running_loop().run_in_executor(self._executor, self._release)
        self._executor.shutdown(wait=False)

    def _release(self) -> None:
        with self._thread_lock:
            self._closed = True
            self._map.close()
            os.close(self._fd)
