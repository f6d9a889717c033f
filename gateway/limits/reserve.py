"""Budget reservations in the shared state: each worker's client of the deployment-wide budget counters.

A budget that refuses (``block``) or switches models (``downgrade``) must hold for the whole deployment,
not per worker: the spend a worker learns of through the store arrives seconds late. So every request a
budget limits **reserves** its estimated maximum cost at admission in a counter that all workers of all
nodes share (the limits' shared state: the node's table, or Redis), and settles it after the response:
the reservation is replaced by the real cost. A request whose reservation does not fit is refused.

Pieces
------
``BudgetCounter``  what one worker knows of one key's or tenant's counter: its hold there, its
                   requests' reservations, the spend settled and not yet sent.
``BudgetClient``   one per worker: reserves from the worker's hold without a shared-state call when it
                   covers the request (the hot path), asks the source otherwise (``BudgetOp``), sends
                   settled spend, returns spare holds, keeps its holds alive, and steps aside when the
                   source is unavailable.

Theory of operation
-------------------
A counter in the shared state holds the spend of the current UTC day and month and one **hold** per
worker: the dollars that worker has set aside. The source grows a hold only if everything fits: the
day's (and the month's) spend, plus every hold, within the budget. A worker's hold ``H`` covers, in its
own memory:

    U   the reservations of its requests in flight (each the estimate of one request)
    P   spend its requests have settled and it has not sent yet
    H - U - P   a spare (a lease), spent locally by the next requests until it expires

1. A request of estimate ``e`` is reserved locally when the spare covers it and the lease is live
   (``try_reserve``; ``U += e``); otherwise the worker asks the source (one operation per counter, in
   one batch): send ``P``, keep ``U``, need ``U + e``, want ``U + e`` plus a spare of about a second of
   this worker's reservations (at least 7 requests' worth, at most 1000), which the source caps at
   ``1 / (8 W)`` of what is left of the budget (``W``: the node's workers). Near the end of a budget
   the spare shrinks to nothing, and every reservation asks: exact.
2. One operation in flight per counter (holds are absolute values: two in flight could undo each
   other). While an ask is in flight, the worker's other requests for that counter wait for its answer
   (an answer computed for ``U`` must not be taken to cover reservations made after it was sent); while
   a settling operation is in flight they still reserve from the spare, which that operation keeps.
3. Settling a request (``settle``): ``U -= e``, ``P += cost``. A cost above its estimate makes the
   spare negative: the next maintenance tick sends ``P`` at once (the counter then counts it, beyond the
   budget if need be: that excess is the estimate's error, the one way a budget can be overspent).
4. Maintenance, every ``tick``: sends ``P`` (every ``settle_every``; at once when ``P`` overruns the
   hold, or leaves a spare above the same ``1 / (8 W)`` of what is left: what reservations did not use
   joins the spare, and near the end of a budget it must not stand in the others' way), returns the
   spare of a lease about to expire (the hold goes back to ``U``), and keeps the holds of requests in
   flight alive (``holder_ttl / 3``). A settling
   operation lowers the hold locally before it is sent, so requests reserving meanwhile never count on
   what it gives back. Holds of a worker that died stop counting ``holder_ttl`` after its last write.

The bound. For one budget limit ``L`` (a key's or tenant's, per day or month), the spend recorded in the
period is at most::

    L + sum over its requests of max(0, cost - reservation)

Holds and spares never let the spend pass ``L``: a hold grows only when all holds and the spend fit. Only
a request that costs more than its reservation can, by the difference. The estimate is an upper bound
unless the prompt has more tokens than its bytes / 4, the request gives no ``max_tokens`` and its
completion is longer than ``default_max_tokens``, or it asks for several choices (``n``). See
``docs/limits-and-budgets.md`` for the conditions under which the bound is suspended (the shared state
unavailable, a worker frozen past ``holder_ttl``).

Costs: ``try_reserve`` covered by the hold is attribute arithmetic per counter, no allocation; a request
that asks waits for one source operation (the node's table, or a Redis round trip), about once per
lease; settling is arithmetic too, the spend going to the source with the next maintenance tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence

from gateway._core.limit import RateEstimator
from gateway.aio import cancel_and_wait
from gateway.limits.budgets import SpendBook, SpendView
from gateway.limits.shared import BudgetGrant, BudgetOp, LeaseSource, SharedStateUnavailable

__all__ = ["ASK", "RESERVED", "UNCHECKED", "BudgetClient", "BudgetCounter", "BudgetStats"]

log = logging.getLogger("gateway.limits")

_INF = math.inf
#: ``try_reserve``/``reserve`` outcomes other than a refusal (a refusal is the refusing counter)
RESERVED = 1
ASK = 0
#: not reserved: the shared state is unavailable (the spend views decide alone)
UNCHECKED = 2
#: rounds of "wait for the operation in flight, or ask" before a request gives up (contention)
_MAX_ROUNDS = 16
#: dollars below which a hold's spare, or what is left to send, is rounding noise
_EPSILON = 1e-12
#: a spare covers an amount it holds to a billionth (sums of reservations round), as the buckets do
_COVER = 1.0 - 1e-9


class BudgetStats:
    """Plain counters for the metrics exporter (nothing here costs on the hot path)."""

    __slots__ = ("asks", "degraded_transitions", "local", "refusals", "source_calls", "source_ops")

    def __init__(self) -> None:
        #: reservations covered by the worker's hold, and asks sent to the source
        self.local = 0
        self.asks = 0
        #: asks the source refused
        self.refusals = 0
        #: round trips to the source and the operations they carried
        self.source_calls = 0
        self.source_ops = 0
        #: times the client went from healthy to degraded
        self.degraded_transitions = 0


class BudgetCounter:
    """What this worker knows of one key's or tenant's budget counter (see the module docstring)."""

    __slots__ = (
        "asking",
        "busy",
        "estimator",
        "expires_at",
        "heal",
        "held",
        "holds",
        "inflight",
        "key",
        "limit_day",
        "limit_month",
        "pending",
        "refused_amount",
        "refused_until",
        "spent_day",
        "spent_month",
        "synced",
        "used",
        "view",
    )

    def __init__(self, key: str, view: SpendView, window: float) -> None:
        #: the counter's key in the shared state, ``<scope>/<id>``
        self.key = key
        #: the spend view of the same key or tenant: its day and the store's spend (the seeds)
        self.view = view
        #: the budget's limits in US dollars (inf: none); set where requests find the counter
        self.limit_day = _INF
        self.limit_month = _INF
        #: this worker's hold in the shared counter (as of its last operation)
        self.held = 0.0
        #: reservations of this worker's requests in flight, and how many requests they are
        self.used = 0.0
        self.inflight = 0
        #: spend settled here and not yet sent to the counter
        self.pending = 0.0
        #: the spare part of the hold admits until then (monotonic clock)
        self.expires_at = -_INF
        self.estimator = RateEstimator(window)
        #: the operation in flight for this counter, and whether it is an ask
        self.busy: asyncio.Future[None] | None = None
        self.asking = False
        #: the last refusal: amounts >= refused_amount are refused until refused_until without asking
        self.refused_until = -_INF
        self.refused_amount = _INF
        #: raise the counter to the store's spend with the next operation (after a start, a reload)
        self.heal = True
        #: when the last operation was sent (monotonic clock)
        self.synced = -_INF
        #: the counter as the last operation left it (for messages)
        self.spent_day = 0.0
        self.spent_month = 0.0
        self.holds = 0.0

    def spare(self) -> float:
        """Dollars of the hold not spoken for: what local reservations can take while the lease lives."""
        return self.held - self.used - self.pending


class BudgetClient:
    """One worker's client of the deployment-wide budget counters (see the module docstring).

    ``workers``: the node's worker processes (the source caps a spare at ``1 / (8 workers)`` of what is
    left). ``tick``: period of the maintenance task. ``settle_every``: seconds settled spend may wait in
    the worker's hold before it is sent. ``probe_interval``: seconds between probes of a lost source.
    ``clock``: the monotonic clock of the ``now`` arguments. A source that keeps no budget counters
    (``LeaseSource.keeps_budgets`` False) leaves every request ``UNCHECKED``.
    """

    def __init__(
        self,
        source: LeaseSource,
        book: SpendBook,
        *,
        workers: int = 1,
        horizon: float = 1.0,
        min_spare: float = 7.0,
        max_spare: float = 1000.0,
        estimator_window: float = 10.0,
        tick: float = 0.25,
        settle_every: float = 1.0,
        probe_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if not (0.0 <= min_spare <= max_spare < _INF and 0.0 < horizon < _INF):
            raise ValueError("need 0 <= min_spare <= max_spare (finite) and a horizon > 0")
        if not (0.0 < tick < _INF and 0.0 < probe_interval < _INF and 0.0 < settle_every < _INF):
            raise ValueError("tick, settle_every and probe_interval must be finite numbers of seconds > 0")
        self.source = source
        self.book = book
        self.stats = BudgetStats()
        self.enabled = source.keeps_budgets
        self._split = 8.0 * workers
        self._horizon = float(horizon)
        self._min_spare = float(min_spare)
        self._max_spare = float(max_spare)
        self._window = float(estimator_window)
        self._tick = float(tick)
        self._settle_every = float(settle_every)
        self._probe_interval = float(probe_interval)
        self._clock = clock
        self.counters: dict[str, BudgetCounter] = {}
        self._degraded = False
        self._degraded_since = 0.0
        self._next_probe = 0.0
        self._periods: tuple[str, int, int] = ("", 0, 0)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- state ------------------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while the source is unavailable (requests are not reserved; the spend views decide)."""
        return self._degraded

    def counter(self, view: SpendView, limit_day: float, limit_month: float) -> BudgetCounter:
        """The counter of ``view``'s key or tenant, under a budget of these limits (made on first use)."""
        key = f"{view.scope}/{view.id}"
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = BudgetCounter(key, view, self._window)
        counter.view = view
        counter.limit_day = limit_day
        counter.limit_month = limit_month
        return counter

    def reseed(self) -> None:
        """Raise every counter to the store's spend with its next operation (a reload may have given a
        budget to a key or tenant whose counter missed spend while it had none)."""
        for counter in self.counters.values():
            counter.heal = True

    # -- the request path -------------------------------------------------------------------------------

    def try_reserve(
        self, counters: Sequence[BudgetCounter], amount: float, now: float
    ) -> BudgetCounter | int:
        """The hot path: reserve ``amount`` dollars in every counter from this worker's holds
        (``RESERVED``), all or nothing; the refusing counter when a recent refusal is known; ``ASK`` when
        the source must be asked (``reserve``); ``UNCHECKED`` while the source is unavailable."""
        if self._degraded or not self.enabled:
            return UNCHECKED
        for c in counters:
            if c.asking or not (now < c.expires_at and c.spare() >= amount * _COVER):
                if now < c.refused_until and amount >= c.refused_amount:
                    return c
                return ASK
        for c in counters:
            c.used += amount
            c.inflight += 1
            c.estimator.observe(now, amount)
        self.stats.local += 1
        return RESERVED

    async def reserve(self, counters: Sequence[BudgetCounter], amount: float) -> BudgetCounter | int:
        """Reserve ``amount`` in every counter (all or nothing), asking the source for the counters whose
        hold does not cover it, in one batch: ``RESERVED``, the refusing counter, or ``UNCHECKED``."""
        if self._task is None and not self._closed:
            self.start()
        fresh: list[BudgetCounter] = []  # reserved already for this request, by an ask
        try:
            return await self._reserve(counters, amount, fresh)
        except BaseException:
            self._unreserve(fresh, amount)
            raise

    async def _reserve(
        self, counters: Sequence[BudgetCounter], amount: float, fresh: list[BudgetCounter]
    ) -> BudgetCounter | int:
        for _ in range(_MAX_ROUNDS):
            now = self._clock()
            if self._degraded or not self.enabled:
                self._unreserve(fresh, amount)
                return UNCHECKED
            missing: list[BudgetCounter] = []
            waits: list[asyncio.Future[None]] = []
            refusal: BudgetCounter | None = None
            for c in counters:
                if c in fresh:
                    continue
                covered = now < c.expires_at and c.spare() >= amount * _COVER
                if c.busy is not None and (c.asking or not covered):
                    waits.append(c.busy)
                elif not covered:
                    if now < c.refused_until and amount >= c.refused_amount:
                        refusal = c
                        break
                    missing.append(c)
            if refusal is not None:
                self._unreserve(fresh, amount)
                return refusal
            if waits:
                for fut in waits:
                    await fut
                continue
            if missing:
                refusal = await self._ask(missing, amount, now, fresh)
                if refusal is not None:
                    self._unreserve(fresh, amount)
                    return refusal
                continue
            for c in counters:  # every other counter is covered by its hold now
                if c not in fresh:
                    c.used += amount
                    c.inflight += 1
                    c.estimator.observe(now, amount)
            return RESERVED
        self._unreserve(fresh, amount)
        return ASK

    def settle(self, counters: Sequence[BudgetCounter], amount: float) -> None:
        """A request reserved ``amount`` in ``counters`` and is over: its reservations end. Its cost goes
        in with ``spend`` at the same moment, so the holds cover the reservation or the cost, always one
        of them."""
        for c in counters:
            c.inflight -= 1
            if c.inflight <= 0:
                c.inflight = 0
                c.used = 0.0
            else:
                c.used = max(0.0, c.used - amount)
            c.refused_until = -_INF  # room was made: ask again rather than trust the old refusal

    @staticmethod
    def spend(counter: BudgetCounter, usd: float) -> None:
        """Real spend of the counter's key or tenant, settled by this worker (sent with its next
        operation)."""
        counter.pending += usd

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the maintenance task on the running loop (idempotent)."""
        if self._task is None and not self._closed and self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._maintain(), name="gateway-budgets")

    async def close(self) -> None:
        """Stop maintenance, send the spend not sent yet and let go of every spare (best effort)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        if self._degraded or not self.enabled:
            if any(c.pending > _EPSILON for c in self.counters.values()):
                log.warning("budgets: spend not sent to the shared counters on shutdown (unavailable)")
            return
        for c in self.counters.values():
            if c.busy is not None:
                with contextlib.suppress(Exception):
                    await c.busy
        chosen = [c for c in self.counters.values() if c.pending > _EPSILON or c.held > c.used + _EPSILON]
        if chosen:
            try:
                await self._send(chosen, [c.used for c in chosen], self._clock())
            except SharedStateUnavailable as exc:
                log.warning("budgets: could not settle the shared counters on shutdown: %s", exc)

    async def flush(self) -> None:
        """Send the spend not sent yet and return every spare, now (after the operations in flight)."""
        for _ in range(3):
            if self._degraded or not self.enabled:
                return
            for c in list(self.counters.values()):
                while c.busy is not None:
                    await c.busy
            await self._maintain_once(self._clock(), force=True)
            if not any(c.pending > _EPSILON or c.held > c.used + _EPSILON for c in self.counters.values()):
                return

    # -- internals --------------------------------------------------------------------------------------

    def _unreserve(self, fresh: list[BudgetCounter], amount: float) -> None:
        """A request refused after some counters reserved for it: those reservations end unspent."""
        self.settle(fresh, amount)
        fresh.clear()

    def _period(self) -> tuple[int, int]:
        """Today's UTC day and month as ``YYYYMMDD`` and ``YYYYMM`` (computed once a day)."""
        day, _month = self.book.today()
        if day is not self._periods[0]:
            number = int(day[0:4] + day[5:7] + day[8:10])
            self._periods = (day, number, number // 100)
        return self._periods[1], self._periods[2]

    def _op(self, c: BudgetCounter, day: int, month: int, floor: float, need: float, want: float) -> BudgetOp:
        view = c.view
        if view.day is not self.book.today()[0]:
            self.book.current(view)
        return BudgetOp(
            c.key, day, month, c.limit_day, c.limit_month, spent=max(0.0, c.pending), floor=floor, need=need,
            want=want, seed_day=max(0.0, view.spent_day), seed_month=max(0.0, view.spent_month),
            heal=c.heal, split=self._split,
        )

    async def _ask(
        self, missing: list[BudgetCounter], amount: float, now: float, fresh: list[BudgetCounter]
    ) -> BudgetCounter | None:
        """Ask the source to grow the holds of ``missing`` by ``amount`` (and a spare); reserve in each that
        grants it. The refusing counter, or None (also when the source is unavailable: see ``reserve``)."""
        loop = asyncio.get_running_loop()
        day, month = self._period()
        ops: list[BudgetOp] = []
        for c in missing:
            c.busy = loop.create_future()
            c.asking = True
            spare = c.estimator.rate(now) * self._horizon
            spare = min(max(spare, self._min_spare * amount), self._max_spare * amount)
            need = c.used + amount
            ops.append(self._op(c, day, month, c.used, need, need + spare))
        self.stats.asks += 1
        try:
            grants = await self._call(ops, missing)
        except SharedStateUnavailable as exc:
            self._degrade(exc)
            return None
        refusal: BudgetCounter | None = None
        for c, op, grant in zip(missing, ops, grants, strict=True):
            self._adopt(c, op, grant, now)
            if grant.ok:
                c.used += amount
                c.inflight += 1
                c.expires_at = now + self.source.lease_ttl
                c.refused_until = -_INF
                c.estimator.observe(now, amount)
                fresh.append(c)
            else:
                self.stats.refusals += 1
                c.refused_until = now + self._tick
                c.refused_amount = amount
                refusal = refusal or c
        return refusal

    async def _call(self, ops: list[BudgetOp], counters: list[BudgetCounter]) -> list[BudgetGrant]:
        """Send ``ops`` (one per counter, whose ``busy`` is set); the counters are free again after."""
        self.stats.source_calls += 1
        self.stats.source_ops += len(ops)
        try:
            return await self.source.budget(ops)
        finally:
            for c in counters:
                fut, c.busy = c.busy, None
                c.asking = False
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def _adopt(self, c: BudgetCounter, op: BudgetOp, grant: BudgetGrant, now: float) -> None:
        """The source's answer to ``op``: the spend it carried is counted, the hold is what it says."""
        c.pending -= op.spent
        if c.pending < _EPSILON:
            c.pending = 0.0
        c.held = grant.held
        if c.held < c.used:  # the source had lost this hold (it expired): restore it at the next tick
            c.synced = -_INF
        c.spent_day = grant.spent_day
        c.spent_month = grant.spent_month
        c.holds = grant.holds
        c.synced = now
        if op.heal and c.view.read:
            c.heal = False

    def _spare_cap(self, c: BudgetCounter) -> float:
        """The most spare a settling operation keeps: ``1 / split`` of what was left of the budget when the
        counter was last seen (the cap the source puts on an ask's spare), so that the leftovers of
        reservations larger than their cost do not stand in others' way near the end of a budget."""
        left = min(c.limit_day - c.spent_day, c.limit_month - c.spent_month) - (c.holds - c.held)
        left -= c.used + c.pending
        return max(0.0, left / self._split)

    async def _send(self, counters: list[BudgetCounter], wants: list[float], now: float) -> None:
        """Settling operations (no ask): send each counter's spend, set its hold to ``want`` (never
        below its reservations in flight). The hold is lowered here at once: the requests reserving
        while the operation is in flight see the spare it leaves, never the one it gives back."""
        loop = asyncio.get_running_loop()
        day, month = self._period()
        ops = []
        for c, want in zip(counters, wants, strict=True):
            c.busy = loop.create_future()
            want = max(want, c.used)
            if want < c.held:
                c.held = want
            ops.append(self._op(c, day, month, c.used, 0.0, want))
        grants = await self._call(ops, counters)
        for c, op, grant in zip(counters, ops, grants, strict=True):
            self._adopt(c, op, grant, now)

    def _degrade(self, exc: BaseException) -> None:
        now = self._clock()
        self._next_probe = now + self._probe_interval
        if self._degraded:
            return
        self._degraded = True
        self._degraded_since = now
        self.stats.degraded_transitions += 1
        log.warning(
            "budgets: shared state unavailable (%s); budgets are checked against each worker's spend views "
            "alone (spend is kept and sent when it is back); re-probing every %.3g s",
            exc,
            self._probe_interval,
        )

    def _recover(self, now: float) -> None:
        self._degraded = False
        for c in self.counters.values():
            c.heal = True  # what the others spent meanwhile reached the store, not the counter
            c.expires_at = -_INF
        log.warning("budgets: shared state available again after %.1f s", now - self._degraded_since)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            now = self._clock()
            try:
                await self._maintain_once(now)
            except SharedStateUnavailable as exc:
                self._degrade(exc)
            except Exception:  # the loop must survive anything: budgets fall back to the views
                log.exception("budgets: maintenance failed")

    async def _maintain_once(self, now: float, force: bool = False) -> None:
        if self._degraded:
            if now >= self._next_probe:
                if await self.source.ping():
                    self._recover(now)
                else:
                    self._next_probe = now + self._probe_interval
            return
        keepalive = self.source.holder_ttl / 3.0
        chosen: list[BudgetCounter] = []
        wants: list[float] = []
        for c in self.counters.values():
            if c.busy is not None:
                continue
            live = now < c.expires_at - 2.0 * self._tick
            cap = self._spare_cap(c)
            if c.pending > _EPSILON and (
                force or not live or now - c.synced >= self._settle_every or not 0.0 <= c.spare() <= cap
            ):  # spend to send: keep what the cap allows of the spare while the lease lives
                want = min(c.held - c.pending, c.used + cap) if live and not force else c.used
            elif not live and c.held > c.used + _EPSILON:  # a spare about to expire goes back
                want = c.used
            elif force and c.held > c.used + _EPSILON:  # shutting down, or told to: no spare kept
                want = c.used
            elif (c.held > _EPSILON or c.used > _EPSILON) and now - c.synced >= keepalive:
                want = c.held if live else c.used  # keep alive (and restore a hold the source lost)
            else:
                continue
            chosen.append(c)
            wants.append(want)
        if chosen:
            await self._send(chosen, wants, now)
