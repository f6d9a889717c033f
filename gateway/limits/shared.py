"""Deployment-wide limits: the shared state workers take capacity leases from, and each worker's client.

A limit holds for the whole deployment (every worker of every node), yet the request path almost never
waits on shared state: a worker takes a **lease** (a block of units) from the shared bucket and spends it
in its own memory, going back to the shared state about once per lease.

Pieces
------
``LeaseSource``      the shared state: a GCRA bucket per limit key and concurrency counters per key. Two
                     implementations: ``LocalLeaseSource`` (``gateway.limits.shared_local``, one node, a
                     shared-memory table all worker processes map) and ``RedisLeaseSource``
                     (``gateway.limits.shared_redis``, a cluster, one atomic Lua script per operation).
``LeaseClient``      one per worker: holds at most one live lease per limit key, admits from it with a
                     synchronous ``try_take`` (the hot path), refills it through the source, returns what
                     it does not use, and falls back to local limits when the source is unavailable.
``BudgetOp``         the sources also keep budget counters (spend and reservations in US dollars per key or
                     tenant); ``gateway.limits.reserve`` is their worker-side client.

Theory of operation
-------------------
The protocol is the one ``gateway._core.limit.next_lease_size`` assumes, so that its bound holds:

1. A worker holds at most one live lease per limit key. Concurrent requests of one worker that find the
   lease short wait for the one acquisition in flight for that key instead of starting another.
2. When a request of ``amount`` does not fit the lease, the worker closes it (``Lease.return_unused``,
   which gives nothing once the lease has expired) and, in the same atomic source operation, gives the
   unused units back and asks for ``max(size, amount)`` (``Op.returning``): the return always precedes
   the ask. ``size`` comes from ``next_lease_size`` with a ``RateEstimator`` of this worker's use of the
   key, or is the limit's fixed ``lease`` (1 = exact).
3. The source grants the asked size, or less when the bucket holds less (whole units, never below
   ``amount``), or refuses with the wait until ``amount`` fits. The worker spends ``amount`` from a new
   lease at once.
4. A lease expires ``lease_ttl`` seconds after it was asked for (the expiry is anchored at the moment of
   asking, before the round trip, so it never outlives the source's view). Shortly before that, the
   worker's maintenance task returns what is left, so an idle worker holds nothing for long; whatever was
   not returned in time is forfeited (the bucket refills it at its rate), never returned late.

Over-admission bound (what ``tests/integration/test_limits_cluster.py`` checks). With ``W`` workers in the
deployment, a bucket of rate ``r`` and burst ``B``, ``S`` the largest lease size asked for (at most
``min(max_size, r * horizon / W)``, 1 for exact limits) and ``a`` the smallest amount a request takes
(1 for request limits), the units admitted over any interval of length ``D`` are at most::

    B + r * D + W * max(0, S - a)

With leases of 1 and unit requests the admission is exact: never more than the bucket allows. Settling
real usage (``charge``) only lowers what is admitted later; ``refund`` gives back units that were
reserved and not used, so it never lets a unit be spent twice.

A changed policy (reload). Operations carry their limit's rate and burst, and the source adopts a change
on the next operation: the units used so far stay used, up to the new burst (a limit raised from 5 to
100 a minute admits the difference at once; one lowered below what was used is full until it refills); a
bucket in debt beyond a full burst keeps its debt in proportion when the burst shrinks. The client adopts
the change at once (``LeaseClient.adopt``): it closes each changed limit's lease (returning what is left
while the lease is live) and forgets the refusal it had cached, so neither outlives the old policy.

Shared state unavailable. Each limit has a ``fail_mode``: ``fail_open`` admits with a local bucket of
``rate / W`` and ``max(1, burst / W)`` per worker (each worker at its share), ``fail_closed`` refuses with
503. Leases already held stay valid until they expire. The client logs the transition once, reports
``degraded``, re-probes the source every ``probe_interval`` seconds, and returns to the shared state by
itself when a probe succeeds (the fallback buckets are dropped; what they admitted is not charged to the
shared state).

Concurrency counters (``enter``/``leave``) are per-holder entries with an expiry: each source instance
is one holder, keeps its own in-flight count per key and pushes it again every ``holder_ttl / 3``
seconds (``keepalive``), so the entry of a worker that died stops counting ``holder_ttl`` seconds after
its last refresh, while a live holder's count heals itself after a lost reply.

Costs (measured on the two-core reference machine with the compiled core; the sources' own costs are in
their modules): ``try_take`` that the lease covers, about 0.23 us (a dict lookup and ``Lease.take``; the
rate estimator learns a lease's use when the lease closes, not per request); ``try_take_all`` about 1.0 us
for one limit and 0.35 us more per further limit. A request refused moments ago (within the refusal's
``retry_after``) is refused again from the client's cache, without a source call, so a flood of refused
requests does not become a flood of shared-state calls.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import msgspec

from gateway._core.limit import Bucket, Gate, Lease, RateEstimator, next_lease_size
from gateway.aio import cancel_and_wait
from gateway.errors import ServiceUnavailable

__all__ = [
    "ADMITTED",
    "ASK",
    "BudgetGrant",
    "BudgetOp",
    "Decision",
    "FailMode",
    "Grant",
    "LeaseClient",
    "LeaseSource",
    "LeaseStats",
    "Limit",
    "Op",
    "OpKind",
    "SharedStateUnavailable",
    "check_budget_op",
    "check_op",
]

log = logging.getLogger("gateway.limits")

OpKind = Literal["acquire", "give_back", "charge", "refund", "peek"]
FailMode = Literal["fail_open", "fail_closed"]

_INF = math.inf
#: seconds a refused concurrency entry suggests waiting (nothing tells when a request in flight ends)
CONCURRENCY_RETRY_AFTER = 1.0
#: rounds of "wait for the acquisition in flight, or start one" before a request gives up (contention)
_MAX_ROUNDS = 16
#: charges waiting for the source to come back, at most (the oldest are dropped beyond)
_MAX_QUEUED = 10_000


class SharedStateUnavailable(ServiceUnavailable):
    """The shared state cannot be reached or answered with an error (connection refused, timeout, a
    closed source, a full table). Answered as 503 if it reaches the client."""

    code = "limits_unavailable"


# --------------------------------------------------------------------------------------------------------
# The source's side


class Op(msgspec.Struct, frozen=True, gc=False):
    """One operation on the shared bucket of ``key`` (rate ``rate`` units/s, burst ``burst``).

    ``acquire``: first give back ``returning`` (the unused units of the previous lease), then take
    ``amount`` or more, up to ``size`` (a ``size`` below ``amount`` counts as ``amount``).
    ``give_back``: return a lease's unused units. ``charge``: take ``amount`` unconditionally, into debt
    if need be (settling real usage). ``refund``: give back units reserved and not used. ``peek``: change
    nothing. Rates and bursts travel with every operation: the source adopts a changed policy as
    ``Bucket.reconfigure`` does.
    """

    kind: OpKind
    key: str
    rate: float
    burst: float
    amount: float = 0.0
    size: float = 0.0
    returning: float = 0.0


class Grant(msgspec.Struct, frozen=True, gc=False):
    """The answer to an ``Op``, with the shared bucket as the operation left it.

    ``granted``: units granted (acquire only; 0.0 otherwise and when refused). ``retry_after``: 0.0 when
    the operation succeeded, else seconds until ``amount`` fits (``inf`` when it never can: more than the
    burst). ``remaining``/``reset_after``: units available and seconds until full again, for the
    ``x-ratelimit-*`` headers. ``expires_at``: when the lease stops admitting, on the asking worker's
    clock (``now`` of the call plus the source's ``lease_ttl``).
    """

    granted: float
    retry_after: float
    remaining: float
    reset_after: float
    expires_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.retry_after == 0.0


def check_op(op: Op) -> None:
    """ValueError unless ``op`` is well formed (finite positive rate and burst, finite amounts >= 0)."""
    if not (0.0 < op.rate < _INF and 0.0 < op.burst < _INF):
        raise ValueError(f"limit {op.key!r}: rate and burst must be finite numbers > 0")
    if not (0.0 <= op.amount < _INF and 0.0 <= op.size < _INF and 0.0 <= op.returning < _INF):
        raise ValueError(f"limit {op.key!r}: amounts must be finite numbers >= 0")


class BudgetOp(msgspec.Struct, frozen=True, gc=False):
    """One atomic operation on the budget counter ``key`` (a key's or a tenant's spend, in US dollars).

    A counter holds the spend of the current UTC day and month and one **hold** per holder (a worker's
    source instance): dollars reserved for its requests in flight, their spend not yet sent, and a spare
    lease. Every operation first adds ``spent`` (real spend settled by this holder since its last
    operation) to the day and the month, then sets this holder's hold:

    - an ask (``need > 0``): the hold becomes ``need`` plus a spare of at most ``want - need`` and at most
      ``1 / split`` of what would be left, if ``need`` fits: the day's and the month's spend plus every
      other holder's hold plus ``need`` within ``limit_day`` and ``limit_month``; otherwise the ask is
      refused and the hold becomes ``floor``;
    - otherwise (settling, returning a spare, keeping alive): the hold becomes ``want`` when that is less
      than it was, never less than ``floor``.

    ``floor`` (the reservations of requests in flight) is kept unconditionally: they were admitted. Holds
    expire ``holder_ttl`` seconds after their holder's last operation. ``day`` (``YYYYMMDD``) and
    ``month`` (``YYYYMM``) are the holder's current UTC period: a later one than the counter's starts it
    anew. ``seed_day``/``seed_month``: the spend the store knows of (a lower bound of the truth); they
    raise the counter when it is created and when ``heal`` is set (after a start or a reload), so that a
    counter that was lost, or missed spend while no budget applied, never counts less than the store.
    A limit of ``inf`` is no limit.
    """

    key: str
    day: int
    month: int
    limit_day: float
    limit_month: float
    spent: float = 0.0
    floor: float = 0.0
    need: float = 0.0
    want: float = 0.0
    seed_day: float = 0.0
    seed_month: float = 0.0
    heal: bool = False
    split: float = 1.0


class BudgetGrant(msgspec.Struct, frozen=True, gc=False):
    """The answer to a ``BudgetOp``: ``ok`` (False only for a refused ask), this holder's ``held`` dollars
    after it, and the counter as it left it: ``spent_day``, ``spent_month`` and ``holds`` (every live
    holder's hold, this one's included)."""

    ok: bool
    held: float
    spent_day: float
    spent_month: float
    holds: float


def check_budget_op(op: BudgetOp) -> None:
    """ValueError unless ``op`` is well formed (limits >= 0 or inf, finite amounts >= 0, split >= 1)."""
    if not (op.limit_day >= 0.0 and op.limit_month >= 0.0):
        raise ValueError(f"budget {op.key!r}: limits must be numbers >= 0 (inf for none)")
    amounts = (op.spent, op.floor, op.need, op.want, op.seed_day, op.seed_month)
    if not all(0.0 <= a < _INF for a in amounts) or not 1.0 <= op.split < _INF:
        raise ValueError(f"budget {op.key!r}: amounts must be finite numbers >= 0, split >= 1")
    if not (10000101 <= op.day <= 99991231 and op.month == op.day // 100):
        raise ValueError(f"budget {op.key!r}: day must be YYYYMMDD and month its YYYYMM")


class LeaseSource(abc.ABC):
    """The deployment-wide shared state: a GCRA bucket per limit key, concurrency counters per key.

    Every method may raise ``SharedStateUnavailable``; ``healthy`` says whether the last call got
    through. All bucket methods are built on ``batch``, which runs several operations in one go (one
    lock, or one pipelined round trip): use it when several limits apply to one request.
    """

    #: seconds a lease granted by this source admits, from the moment it was asked for
    lease_ttl: float
    #: seconds a concurrency holder entry counts after its last refresh
    holder_ttl: float
    #: whether ``budget`` is implemented (a source without it leaves budgets to the spend views)
    keeps_budgets: bool = False

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """False after a call failed to reach the shared state, True again after one succeeds."""

    @abc.abstractmethod
    async def batch(self, ops: Sequence[Op], now: float) -> list[Grant]:
        """Run ``ops`` in order, each atomically; one ``Grant`` each. ``now``: the caller's monotonic
        clock at the call, the anchor of the leases' ``expires_at``."""

    async def acquire(
        self,
        limit_key: str,
        rate: float,
        burst: float,
        amount: float,
        now: float,
        *,
        size: float = 0.0,
        returning: float = 0.0,
    ) -> Grant:
        """Take ``amount`` or more, up to ``size``, after giving back ``returning``; or a refusal."""
        amount = float(amount)
        op = Op(
            "acquire",
            limit_key,
            float(rate),
            float(burst),
            amount,
            max(float(size), amount),
            float(returning),
        )
        return (await self.batch((op,), now))[0]

    async def give_back(self, limit_key: str, rate: float, burst: float, amount: float) -> None:
        """Return a lease's unused units (only while the lease is live)."""
        await self.batch((Op("give_back", limit_key, float(rate), float(burst), float(amount)),), 0.0)

    async def charge(self, limit_key: str, rate: float, burst: float, amount: float) -> None:
        """Take ``amount`` unconditionally (usage beyond the reservation); the bucket may go into debt."""
        await self.batch((Op("charge", limit_key, float(rate), float(burst), float(amount)),), 0.0)

    async def refund(self, limit_key: str, rate: float, burst: float, amount: float) -> None:
        """Give back ``amount`` reserved and not used; never above a full bucket."""
        await self.batch((Op("refund", limit_key, float(rate), float(burst), float(amount)),), 0.0)

    async def peek(self, limit_key: str, rate: float, burst: float) -> tuple[float, float]:
        """``(remaining, reset_after)`` of the bucket, for rate-limit headers; changes nothing."""
        grant = (await self.batch((Op("peek", limit_key, float(rate), float(burst)),), 0.0))[0]
        return grant.remaining, grant.reset_after

    async def budget(self, ops: Sequence[BudgetOp]) -> list[BudgetGrant]:
        """Run budget ``ops`` in order, each atomically (this holder's holds); one ``BudgetGrant`` each.
        Sources that keep budget counters set ``keeps_budgets`` and override this."""
        raise SharedStateUnavailable(f"{type(self).__name__} keeps no budget counters")

    @abc.abstractmethod
    async def enter(self, limit_key: str, limit: int) -> bool:
        """Count one more request in flight under ``limit_key`` if fewer than ``limit`` are: True when
        entered (``leave`` later). Counts live in this holder's entry (see ``keepalive``)."""

    @abc.abstractmethod
    async def leave(self, limit_key: str) -> None:
        """One request of this holder under ``limit_key`` is no longer in flight."""

    @abc.abstractmethod
    async def keepalive(self) -> None:
        """Push this holder's in-flight counts again and extend their expiry by ``holder_ttl``. Call it
        every ``holder_ttl / 3`` seconds while requests are in flight (``LeaseClient`` does)."""

    @abc.abstractmethod
    async def inflight(self, limit_key: str) -> int:
        """Requests in flight under ``limit_key`` across all live holders (expired entries dropped)."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the shared state answers now (never raises); updates ``healthy``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections, mappings and threads; later calls raise ``SharedStateUnavailable``."""


# --------------------------------------------------------------------------------------------------------
# The worker's side


class Limit(msgspec.Struct, frozen=True, gc=False):
    """A deployment-wide limit as the client needs it: its counter ``key`` and its bucket.

    ``lease``: a fixed lease size (1 = exact: every admission asks the shared state), or None to size
    leases from the observed rate. ``fail_mode``: what happens while the shared state is unavailable.
    """

    key: str
    rate: float
    burst: float
    lease: float | None = None
    fail_mode: FailMode = "fail_open"


class Decision(msgspec.Struct, frozen=True, gc=False):
    """The client's verdict on a request.

    ``status``: 200 admitted; 429 refused by ``limit_key`` (wait ``retry_after`` seconds; ``inf`` when the
    amount can never fit); 503 the shared state is unavailable and the limit fails closed; 0 not decided
    locally (``ASK``: await ``LeaseClient.take``). ``remaining``/``reset_after`` describe the refusing
    limit, for the rate-limit headers.
    """

    status: int
    retry_after: float = 0.0
    limit_key: str | None = None
    remaining: float = 0.0
    reset_after: float = 0.0

    @property
    def admitted(self) -> bool:
        return self.status == 200


#: admitted (one shared instance: the hot path allocates nothing)
ADMITTED = Decision(200)
#: not decided locally: the caller must await ``LeaseClient.take``
ASK = Decision(0)


class LeaseStats:
    """Plain counters for the metrics exporter to read on scrape (nothing here costs on the hot path)."""

    __slots__ = ("degraded_transitions", "grants", "refusals", "source_calls", "source_ops")

    def __init__(self) -> None:
        #: round trips (batches) to the source, and the operations they carried
        self.source_calls = 0
        self.source_ops = 0
        #: acquisitions granted and refused by the source
        self.grants = 0
        self.refusals = 0
        #: times the client went from healthy to degraded
        self.degraded_transitions = 0


class _Entry:
    """What a worker knows about one limit key."""

    __slots__ = (
        "estimator",
        "fallback",
        "lease",
        "limit",
        "pending",
        "pinned",
        "refused_amount",
        "refused_until",
        "remaining",
        "reset_at",
        "seen",
    )

    def __init__(self, limit: Limit, window: float) -> None:
        self.limit = limit
        self.lease: Lease | None = None
        self.estimator = RateEstimator(window)
        #: the acquisition in flight for this key (one at a time: one live lease per worker)
        self.pending: asyncio.Future[None] | None = None
        #: the last refusal: amounts >= refused_amount are refused until refused_until without asking
        self.refused_until = -_INF
        self.refused_amount = _INF
        #: the shared bucket as last seen (for header estimates), and when
        self.remaining = limit.burst
        self.reset_at = -_INF
        self.seen = -_INF
        #: the local bucket used while the shared state is unavailable (fail_open)
        self.fallback: Bucket | None = None
        #: ``limit`` is the current configuration's (set by ``adopt``): a different one passed in by a
        #: request that started before the reload is stale, not a change
        self.pinned = False


def _worse(current: Decision | None, new: Decision) -> Decision:
    """The more restrictive of two refusals: a 429 over a 503, then the longer wait."""
    if current is None:
        return new
    if (new.status == 429) != (current.status == 429):
        return new if new.status == 429 else current
    return new if new.retry_after > current.retry_after else current


class LeaseClient:
    """One worker's view of the deployment-wide limits (see the module docstring for the protocol).

    ``workers``: worker processes in the whole deployment (all nodes): the fair share for lease sizing and
    the fail-open share. ``horizon``, ``min_size``, ``max_size``: lease sizing (``next_lease_size``).
    ``estimator_window``: seconds of use the lease sizing looks at. ``tick``: period of the maintenance
    task (returns leases about to expire, flushes queued charges, keeps concurrency entries alive, probes
    a lost source every ``probe_interval``). ``clock``: the monotonic clock the ``now`` arguments use.

    Call ``start()`` (or ``take`` starts it) on the worker's loop, and ``close()`` on shutdown, which
    returns every live lease. Limit keys in one request must be distinct.
    """

    def __init__(
        self,
        source: LeaseSource,
        *,
        workers: int = 1,
        horizon: float = 1.0,
        min_size: float = 8.0,
        max_size: float = 1000.0,
        estimator_window: float = 10.0,
        tick: float = 0.25,
        probe_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        next_lease_size(0.0, 1.0, workers, min_size, max_size, horizon)  # validates the sizing settings
        if not (0.0 < tick < _INF and 0.0 < probe_interval < _INF):
            raise ValueError("tick and probe_interval must be finite numbers of seconds > 0")
        self.source = source
        self.stats = LeaseStats()
        self._workers = workers
        self._horizon = float(horizon)
        self._min_size = float(min_size)
        self._max_size = float(max_size)
        self._window = float(estimator_window)
        self._tick = float(tick)
        self._probe_interval = float(probe_interval)
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        #: the same entries by limit key, for the request path's read-only checks (``AdmitPhase``'s
        #: repeated refusal); only this class changes them
        self.entries: Mapping[str, _Entry] = self._entries
        self._degraded = False
        self._degraded_since = 0.0
        self._next_probe = 0.0
        self._queue: list[Op] = []
        self._gates: dict[str, Gate] = {}
        self._shared_inflight: dict[str, int] = {}
        self._next_keepalive = -_INF
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- state ------------------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while the shared state is unavailable (limits run on their fail_mode)."""
        return self._degraded

    def lease_left(self, limit_key: str, now: float) -> float:
        """Units left in this worker's live lease for ``limit_key`` (0.0 without one)."""
        entry = self._entries.get(limit_key)
        if entry is None or entry.lease is None or entry.lease.expired(now):
            return 0.0
        return entry.lease.left

    def estimate(self, limit_key: str, now: float) -> tuple[float, float]:
        """``(remaining, reset_after)`` for the ``x-ratelimit-*`` headers, without asking the source.

        An estimate: the shared bucket as last seen, refilled since at its rate (other workers' use since
        then is not known), plus this worker's live lease.
        """
        entry = self._entries.get(limit_key)
        if entry is None:
            return 0.0, 0.0
        limit = entry.limit
        remaining = entry.remaining
        if now > entry.seen:
            remaining = min(limit.burst, remaining + (now - entry.seen) * limit.rate)
        lease = entry.lease
        if lease is not None and not lease.expired(now):
            remaining += lease.left
        return min(remaining, limit.burst), max(0.0, entry.reset_at - now)

    # -- admission --------------------------------------------------------------------------------------

    def try_take(self, limit_key: str, amount: float, now: float) -> Decision:
        """The hot path: admit ``amount`` from this worker's lease if it covers it (``ADMITTED``), answer a
        refusal known locally (429 from a recent refusal; the fallback while degraded), or ``ASK``."""
        entry = self._entries.get(limit_key)
        if entry is not None:
            lease = entry.lease
            # PERF: the common case is a dict lookup and one compiled Lease.take; the rate estimator
            # learns a lease's use when the lease closes, not per request
            if lease is not None and lease.take(now, amount):
                return ADMITTED
            return self._local_verdict(entry, amount, now)
        return ASK

    def try_take_all(self, items: Sequence[tuple[str, float]], now: float) -> Decision:
        """``try_take`` for several limits of one request: all admitted, or none taken."""
        found: list[_Entry] = []
        covered = True
        for key, amount in items:
            entry = self._entries.get(key)
            if entry is None:
                return ASK
            found.append(entry)
            lease = entry.lease
            if lease is None or lease.expired(now) or lease.left < amount:
                covered = False
        if not covered:
            return self._plan(found, [amount for _, amount in items], now, set())[0] or ASK
        for i, (_, amount) in enumerate(items):  # PERF: enumerate, not zip(strict=True): 1 us less
            found[i].lease.take(now, amount)  # type: ignore[union-attr]  # checked above, at the same now
        return ADMITTED

    async def take(self, items: Sequence[tuple[Limit, float]], now: float | None = None) -> Decision:
        """Admit ``amount`` under every ``Limit`` of ``items`` (all or nothing), asking the source for the
        leases that do not cover their amount, in one batch. Never raises for an unavailable source: the
        decision says what the limits' fail modes make of it."""
        if self._task is None and not self._closed:
            self.start()
        if now is None:
            now = self._clock()
        entries = [self._entry(limit) for limit, _ in items]
        amounts = [float(amount) for _, amount in items]
        fresh: set[int] = set()  # items already spent from a lease granted for this request
        for _ in range(_MAX_ROUNDS):
            decision, missing = self._plan(entries, amounts, now, fresh)
            if decision is not None:
                if not decision.admitted and fresh:
                    self._undo(entries, amounts, fresh)
                return decision
            waits = [entries[i].pending for i in missing if entries[i].pending is not None]
            if waits:
                for fut in waits:
                    await fut  # type: ignore[misc]  # filtered above
            else:
                await self._acquire(entries, amounts, missing, now, fresh)
            now = self._clock()
        if fresh:
            self._undo(entries, amounts, fresh)
        return Decision(429, self._tick, entries[0].limit.key if entries else None)

    def charge(self, limit: Limit, amount: float, now: float) -> None:
        """Settle usage beyond what was reserved: from this worker's lease when it covers it, otherwise
        queued for the source (sent by the maintenance task or ``flush``; kept while the source is away)."""
        if amount <= 0.0:
            return
        entry = self._entries.get(limit.key)
        if entry is not None and entry.lease is not None and entry.lease.take(now, amount):
            return
        self._enqueue(Op("charge", limit.key, limit.rate, limit.burst, amount))

    def refund(self, limit: Limit, amount: float) -> None:
        """Give back units reserved and not used (queued for the source, like ``charge``)."""
        if amount > 0.0:
            self._enqueue(Op("refund", limit.key, limit.rate, limit.burst, amount))

    async def flush(self) -> None:
        """Send the queued charges and refunds now."""
        if self._queue and not self._degraded:
            await self._send_queue(self._clock())

    def adopt(self, limits: Callable[[str], Limit | None]) -> bool:
        """Adopt a reloaded configuration. ``limits(key)``: the limit that key has now, or None when no
        policy uses it any more. A changed limit's lease is closed and its cached refusal forgotten (so a
        limit raised from 5 to 100 a minute admits at once, and a lowered one is not served from a lease
        sized for the old one); a key no longer used is forgotten. Unused units of closed leases are
        queued to go back: True when there are some (``flush`` sends them now)."""
        now = self._clock()
        for key, entry in list(self._entries.items()):
            limit = limits(key)
            if limit is None:
                if entry.pending is None:  # an acquisition in flight settles first; then it idles out
                    self._let_go(entry, entry.limit, now)
                    del self._entries[key]
            else:
                if limit != entry.limit:
                    self._change(entry, limit, now)
                entry.pinned = True
        # settlements waiting for the source go under the new limits (an old rate and burst would make
        # the source adopt the old policy again)
        queue = []
        for op in self._queue:
            limit = limits(op.key)
            if limit is not None and (limit.rate != op.rate or limit.burst != op.burst):
                op = Op(op.kind, op.key, limit.rate, limit.burst, op.amount, op.size, op.returning)
            queue.append(op)
        self._queue = queue
        return bool(self._queue)

    # -- concurrency ------------------------------------------------------------------------------------

    async def enter(self, limit_key: str, limit: int, fail_mode: FailMode = "fail_open") -> Decision:
        """Count one request in flight under ``limit_key`` (at most ``limit`` across the deployment).

        While the shared state is unavailable, ``fail_open`` counts locally against ``limit / workers``
        (at least 1) and ``fail_closed`` answers 503. Every admitted ``enter`` needs one ``leave``.
        """
        if not self._degraded:
            try:
                entered = await self.source.enter(limit_key, limit)
            except SharedStateUnavailable as exc:
                self._degrade(exc)
            else:
                if not entered:
                    return Decision(429, CONCURRENCY_RETRY_AFTER, limit_key)
                self._shared_inflight[limit_key] = self._shared_inflight.get(limit_key, 0) + 1
                return ADMITTED
        if fail_mode == "fail_closed":
            return Decision(503, self._probe_interval, limit_key)
        share = max(1, limit // self._workers)
        gate = self._gates.get(limit_key)
        if gate is None:
            gate = self._gates[limit_key] = Gate(share)
        else:
            gate.limit = share
        if gate.enter():
            return ADMITTED
        return Decision(429, CONCURRENCY_RETRY_AFTER, limit_key)

    async def leave(self, limit_key: str) -> None:
        """The request is no longer in flight (after an admitted ``enter``)."""
        gate = self._gates.get(limit_key)
        if gate is not None and gate.inflight > 0:
            gate.leave()
            if gate.inflight == 0:
                del self._gates[limit_key]
            return
        count = self._shared_inflight.get(limit_key, 0)
        if count <= 0:
            raise RuntimeError(f"leave({limit_key!r}) without a matching enter()")
        if count == 1:
            del self._shared_inflight[limit_key]
        else:
            self._shared_inflight[limit_key] = count - 1
        try:
            await self.source.leave(limit_key)
        except SharedStateUnavailable as exc:
            self._degrade(exc)  # the holder's count is pushed again by keepalive once the source is back

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the maintenance task on the running loop (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._maintain(), name="gateway-limits")

    async def close(self) -> None:
        """Stop maintenance, return every live lease and send queued charges (best effort: an unavailable
        source forfeits them). The source itself stays open: its owner closes it."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        now = self._clock()
        ops = self._returns(now, _INF)
        ops.extend(self._queue)
        self._queue = []
        if ops and not self._degraded:
            try:
                await self._call(ops, now)
            except SharedStateUnavailable as exc:
                log.warning("limits: could not return leases on shutdown: %s", exc)

    # -- internals --------------------------------------------------------------------------------------

    def _entry(self, limit: Limit) -> _Entry:
        entry = self._entries.get(limit.key)
        if entry is None:
            entry = self._entries[limit.key] = _Entry(limit, self._window)
        elif entry.limit != limit and not entry.pinned:  # the policy changed (a reload ``adopt`` missed)
            self._change(entry, limit, self._clock())
        return entry

    def _change(self, entry: _Entry, limit: Limit, now: float) -> None:
        """Put ``entry`` under ``limit``: its lease closes (the rest given back, see ``_let_go``), its
        cached refusal is forgotten, its fallback bucket keeps the units it has used (up to the new
        burst). The source adopts the new rate and burst on the next operation that carries them."""
        self._let_go(entry, limit, now)
        entry.limit = limit
        entry.refused_until = -_INF
        entry.refused_amount = _INF
        if entry.remaining > limit.burst:
            entry.remaining = limit.burst
        old = entry.fallback
        if old is not None:
            fallback = entry.fallback = Bucket(limit.rate / self._workers, self._fallback_burst(limit))
            used = old.burst - old.remaining(now)
            if used > 0.0:
                fallback.force(now, min(used, fallback.burst))

    def _let_go(self, entry: _Entry, limit: Limit, now: float) -> None:
        """Close ``entry``'s lease; its unused units are queued to go back (under ``limit``) only while
        the lease has a couple of ticks to live, so that the return reaches the source in time; what is
        left of a lease about to expire is forfeited (the bucket refills it)."""
        lease = entry.lease
        if lease is None:
            return
        live = lease.expires_at - now > 2.0 * self._tick
        unused = self._close_lease(entry, now)
        if live and unused > 0.0:
            self._enqueue(Op("give_back", limit.key, limit.rate, limit.burst, unused))

    def _fallback_burst(self, limit: Limit) -> float:
        return max(1.0, limit.burst / self._workers)

    def _local_verdict(self, entry: _Entry, amount: float, now: float) -> Decision:
        """A decision that needs no source: a cached refusal, or the fallback while degraded; else ASK."""
        if now < entry.refused_until and amount >= entry.refused_amount:
            return Decision(
                429, entry.refused_until - now, entry.limit.key, 0.0, max(0.0, entry.reset_at - now)
            )
        if not self._degraded:
            return ASK
        limit = entry.limit
        if limit.fail_mode == "fail_closed":
            return Decision(503, self._probe_interval, limit.key)
        fallback = entry.fallback
        if fallback is None:
            fallback = entry.fallback = Bucket(limit.rate / self._workers, self._fallback_burst(limit))
        wait = fallback.take(now, amount)
        if wait == 0.0:
            return ADMITTED
        return Decision(429, wait, limit.key, fallback.remaining(now), fallback.reset_after(now))

    def _plan(
        self, entries: list[_Entry], amounts: list[float], now: float, fresh: set[int]
    ) -> tuple[Decision | None, list[int]]:
        """Decide what can be decided without the source. Either a decision (a refusal, or ADMITTED after
        taking every amount, all or nothing), or the indices of the items that need a new lease."""
        refusal: Decision | None = None
        missing: list[int] = []
        for i, entry in enumerate(entries):
            if i in fresh:
                continue
            amount = amounts[i]
            lease = entry.lease
            if lease is not None and not lease.expired(now) and lease.left >= amount:
                continue
            limit = entry.limit
            if now < entry.refused_until and amount >= entry.refused_amount:
                wait = entry.refused_until - now
                refusal = _worse(refusal, Decision(429, wait, limit.key, 0.0, max(0.0, entry.reset_at - now)))
            elif self._degraded:
                if limit.fail_mode == "fail_closed":
                    refusal = _worse(refusal, Decision(503, self._probe_interval, limit.key))
                    continue
                fallback = entry.fallback
                if fallback is None:
                    fallback = entry.fallback = Bucket(
                        limit.rate / self._workers, self._fallback_burst(limit)
                    )
                wait = fallback.retry_after(now, amount)
                if wait > 0.0:
                    decision = Decision(
                        429, wait, limit.key, fallback.remaining(now), fallback.reset_after(now)
                    )
                    refusal = _worse(refusal, decision)
            else:
                missing.append(i)
        if refusal is not None:
            return refusal, []
        if missing:
            return None, missing
        for i, entry in enumerate(entries):
            if i in fresh:
                continue
            lease = entry.lease
            if lease is None or not lease.take(now, amounts[i]):  # degraded, fail_open: checked above
                entry.fallback.take(now, amounts[i])  # type: ignore[union-attr]
        return ADMITTED, []

    def _size(self, entry: _Entry, now: float) -> float:
        limit = entry.limit
        if limit.lease is not None:
            return max(1.0, float(limit.lease))
        return next_lease_size(
            entry.estimator.rate(now),
            limit.rate,
            self._workers,
            self._min_size,
            self._max_size,
            self._horizon,
        )

    async def _acquire(
        self, entries: list[_Entry], amounts: list[float], missing: list[int], now: float, fresh: set[int]
    ) -> None:
        """Exchange the leases of ``missing`` for new ones in one batch; spend each amount at once."""
        loop = asyncio.get_running_loop()
        ops: list[Op] = []
        for i in missing:
            entry = entries[i]
            limit = entry.limit
            returning = self._close_lease(entry, now)
            entry.pending = loop.create_future()
            size = max(self._size(entry, now), amounts[i])
            ops.append(Op("acquire", limit.key, limit.rate, limit.burst, amounts[i], size, returning))
        try:
            grants = await self._call(ops, now)
        except SharedStateUnavailable as exc:
            self._degrade(exc)  # what was given back or granted in the lost call is forfeited
            return
        finally:
            for i in missing:
                pending = entries[i].pending
                entries[i].pending = None
                if pending is not None and not pending.done():
                    pending.set_result(None)
        after = self._clock()
        for i, op, grant in zip(missing, ops, grants, strict=True):
            entry = entries[i]
            entry.remaining = grant.remaining
            entry.reset_at = now + grant.reset_after
            entry.seen = now
            # a reload changed the limit meanwhile: what the old one answered is not kept beyond this
            changed = entry.limit.rate != op.rate or entry.limit.burst != op.burst
            if not grant.ok:
                self.stats.refusals += 1
                if not changed:
                    entry.refused_until = now + grant.retry_after
                    entry.refused_amount = amounts[i]
                continue
            self.stats.grants += 1
            entry.refused_until = -_INF
            lease = entry.lease = Lease(grant.granted, grant.expires_at)
            if lease.take(after, amounts[i]):  # spent at once (the protocol of the bound)
                fresh.add(i)
            if changed:
                self._let_go(entry, entry.limit, after)

    @staticmethod
    def _close_lease(entry: _Entry, now: float) -> float:
        """Close the entry's lease: the units to give back (none once expired). What it admitted feeds
        the rate estimator that sizes the next lease."""
        lease = entry.lease
        if lease is None:
            return 0.0
        entry.lease = None
        used = lease.granted - lease.left
        if used > 0.0:
            entry.estimator.observe(now, used)
        return lease.return_unused(now)

    def _undo(self, entries: list[_Entry], amounts: list[float], fresh: set[int]) -> None:
        """A request refused after some amounts were spent from new leases: refund them to the source."""
        for i in fresh:
            limit = entries[i].limit
            self._enqueue(Op("refund", limit.key, limit.rate, limit.burst, amounts[i]))
        fresh.clear()

    async def _call(self, ops: list[Op], now: float) -> list[Grant]:
        self.stats.source_calls += 1
        self.stats.source_ops += len(ops)
        return await self.source.batch(ops, now)

    def _enqueue(self, op: Op) -> None:
        self._queue.append(op)
        if len(self._queue) > _MAX_QUEUED:
            del self._queue[: len(self._queue) - _MAX_QUEUED]

    async def _send_queue(self, now: float) -> None:
        ops, self._queue = self._queue, []
        try:
            await self._call(ops, now)
        except SharedStateUnavailable:
            # charges are real usage: keep them for later; refunds are forfeited (the safe direction)
            self._queue = [op for op in ops if op.kind == "charge"] + self._queue
            raise
        # a refund may make room: a refusal cached before it must not outlive it (ask the source again)
        for op in ops:
            if op.kind == "refund":
                entry = self._entries.get(op.key)
                if entry is not None:
                    entry.refused_until = -_INF

    def _returns(self, now: float, within: float) -> list[Op]:
        """Close the live leases that expire within ``within`` seconds: their give-back operations."""
        ops: list[Op] = []
        for entry in self._entries.values():
            lease = entry.lease
            if lease is None or entry.pending is not None:
                continue
            if lease.expires_at - now <= within:
                unused = self._close_lease(entry, now)
                if unused > 0.0:
                    limit = entry.limit
                    ops.append(Op("give_back", limit.key, limit.rate, limit.burst, unused))
        return ops

    def _degrade(self, exc: BaseException) -> None:
        now = self._clock()
        self._next_probe = now + self._probe_interval
        if self._degraded:
            return
        self._degraded = True
        self._degraded_since = now
        self.stats.degraded_transitions += 1
        log.warning(
            "limits: shared state unavailable (%s); fail_open limits now admit locally at 1/%d of each "
            "limit, fail_closed limits answer 503; re-probing every %.3g s",
            exc,
            self._workers,
            self._probe_interval,
        )

    def _recover(self, now: float) -> None:
        self._degraded = False
        for entry in self._entries.values():
            entry.fallback = None
        log.warning("limits: shared state available again after %.1f s", now - self._degraded_since)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            now = self._clock()
            try:
                await self._maintain_once(now)
            except SharedStateUnavailable as exc:
                self._degrade(exc)
            except Exception:  # the loop must survive anything: limits keep working without it
                log.exception("limits: maintenance failed")

    async def _maintain_once(self, now: float) -> None:
        if self._degraded:
            if now >= self._next_probe:
                if await self.source.ping():
                    self._recover(now)
                else:
                    self._next_probe = now + self._probe_interval
            return
        ops = self._returns(now, 2.0 * self._tick)
        if ops:
            await self._call(ops, now)
        if self._queue:
            await self._send_queue(now)
        if now >= self._next_keepalive:  # cheap when this holder has nothing in flight
            self._next_keepalive = now + self.source.holder_ttl / 3.0
            await self.source.keepalive()
        self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget keys idle for a long while (no lease, nothing pending), so memory follows traffic."""
        idle = max(60.0, 6.0 * self._window)
        stale = [
            key
            for key, e in self._entries.items()
            if e.lease is None and e.pending is None and now - e.seen > idle
        ]
        for key in stale:
            del self._entries[key]
