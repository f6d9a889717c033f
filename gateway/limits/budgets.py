"""Spend per key and per tenant, persisted in the store; budgets read from it; budget alerts.

Theory of operation (one ``SpendBook`` per worker):

    event                                  | action
    ---------------------------------------+-----------------------------------------------------------
    a call's cost is known (settle)        | added to the pending batch and to the spend views of its key
                                           | and tenant (``add``): nothing is awaited
    every ``flush_interval`` (1 s)         | the pending batch is written with ``add_spend_many`` (one
                                           | transaction on SQLite, one pipeline on Redis)
    every ``refresh_interval`` (2 s)       | the views used since the last refresh are read again from the
                                           | store (after a flush), so other workers' and nodes' spend
                                           | shows up
    a budgeted caller's first request, or  | the request waits for one read of its view (``load``): after a
    one after ``stale_after`` (30 s) idle  | restart, spend already in the store counts at once
    the store cannot be reached            | pending spend stays in memory and is written later; views keep
                                           | their last values (a never-read view counts from 0), retried
    stop                                   | the pending batch is written one last time

A view's value is exact with respect to this worker: the store's total as of the last read, plus what
this worker added since the batch that preceded that read (``local - mark``). Other workers' spend arrives
with the next refresh, so a view alone would let a budget be overspent by what the other workers spend in
about ``flush_interval + refresh_interval`` seconds, plus the calls in flight when it runs out. The views
are the cheap first check (a budget they know to be spent refuses without asking anyone), the alerts'
source, the seeds of the shared counters, and the fallback while the shared state is unavailable; the
deployment-wide bound comes from the reservations of ``gateway.limits.reserve``.

Days and months are UTC calendar days (``YYYY-MM-DD``) and months; a month's spend is the sum of its days.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from gateway.aio import cancel_and_wait
from gateway.limits.policy import BudgetConfig
from gateway.limits.stats import LimitStats
from gateway.store.base import Store

__all__ = ["BudgetRule", "SpendBook", "SpendView", "utc_period"]

log = logging.getLogger("gateway.limits")

Scope = Literal["key", "tenant"]

#: waits before opening the store again after a failure
_RETRY = (0.5, 2.0, 5.0)
#: seconds a view that could not be read counts from what it has before asking the store again
_UNREAD_RETRY = 5.0
_INF = float("inf")


def utc_period(now: float) -> tuple[str, str, float]:
    """``(day, month, day_end)`` for the wall-clock time ``now``: ``"2026-11-22"``, ``"2026-11"``, and
    the Unix time at which that UTC day ends."""
    d = datetime.datetime.fromtimestamp(now, datetime.UTC)
    day_start = datetime.datetime(d.year, d.month, d.day, tzinfo=datetime.UTC)
    end = (day_start + datetime.timedelta(days=1)).timestamp()
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}", f"{d.year:04d}-{d.month:02d}", end


class SpendView:
    """The spend of one key or tenant today and this month, as this worker knows it."""

    __slots__ = (
        "alerted_day",
        "alerted_month",
        "base_day",
        "base_month",
        "day",
        "fresh_until",
        "id",
        "loading",
        "local_day",
        "local_month",
        "mark_day",
        "mark_month",
        "month",
        "read",
        "rule",
        "scope",
        "used",
    )

    def __init__(self, scope: Scope, id: str, day: str, month: str) -> None:
        self.scope = scope
        self.id = id
        #: the UTC day and month the values are for
        self.day = day
        self.month = month
        #: the store's totals as of the last read
        self.base_day = 0.0
        self.base_month = 0.0
        #: spend this worker added (cumulative for the day and the month), and what of it the last read
        #: already included
        self.local_day = 0.0
        self.local_month = 0.0
        self.mark_day = 0.0
        self.mark_month = 0.0
        #: monotonic time until which the values may be used without reading the store again
        self.fresh_until = -1.0
        #: whether the store has been read at least once (else the values are this worker's alone)
        self.read = False
        #: used since the last refresh (so the next refresh reads it)
        self.used = False
        self.loading: asyncio.Future[None] | None = None
        #: the budget that applies to this key or tenant (set where requests find it), for alerts
        self.rule: BudgetRule | None = None
        #: the day and the month whose alert has fired ("" for none yet)
        self.alerted_day = ""
        self.alerted_month = ""

    @property
    def spent_day(self) -> float:
        return self.base_day + self.local_day - self.mark_day

    @property
    def spent_month(self) -> float:
        return self.base_month + self.local_month - self.mark_month


class BudgetRule:
    """A budget as it applies to one key or tenant: its name, settings and spend view."""

    __slots__ = ("alert_day", "alert_month", "config", "limit_day", "limit_month", "name", "view", "where")

    def __init__(self, name: str, config: BudgetConfig, view: SpendView) -> None:
        self.name = name
        self.config = config
        self.view = view
        self.where = f"{view.scope} {view.id}"
        #: the limits, and the spend at which the alert fires, per period (inf: that period has no limit)
        self.limit_day = _INF if config.usd_per_day is None else config.usd_per_day
        self.limit_month = _INF if config.usd_per_month is None else config.usd_per_month
        self.alert_day = _INF if config.usd_per_day is None else config.usd_per_day * config.alert_at
        self.alert_month = _INF if config.usd_per_month is None else config.usd_per_month * config.alert_at

    def exhausted(self) -> str | None:
        """``"daily"`` or ``"monthly"`` when that limit is spent (the view must be current), else None."""
        cfg = self.config
        view = self.view
        if cfg.usd_per_day is not None and view.spent_day >= cfg.usd_per_day:
            return "daily"
        if cfg.usd_per_month is not None and view.spent_month >= cfg.usd_per_month:
            return "monthly"
        return None


class SpendBook:
    """Pending spend, per-worker spend views, and the task that writes and reads them (see the module
    docstring). ``open_store``: how to (re)open the store; ``claim``: asks the deployment whether this
    worker is the one to fire an alert (True: fire it); ``post``: sends an alert's webhook."""

    def __init__(
        self,
        open_store: Callable[[], Awaitable[Store]],
        stats: LimitStats,
        *,
        claim: Callable[[str], Awaitable[bool]] | None = None,
        post: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
        flush_interval: float = 1.0,
        refresh_interval: float = 2.0,
        stale_after: float = 30.0,
        load_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._open_store = open_store
        self.stats = stats
        self._claim = claim
        self._post = post
        self.flush_interval = flush_interval
        self.refresh_interval = refresh_interval
        self.stale_after = stale_after
        self.load_timeout = load_timeout
        self._clock = clock
        self._wall = wall
        self.store: Store | None = None
        self._failures = 0
        self._next_open = 0.0
        self._warned = False
        self.views: dict[tuple[str, str], SpendView] = {}
        self._pending: dict[tuple[Scope, str, str], float] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._day, self._month, self._day_end = utc_period(wall())

    # -- time --------------------------------------------------------------------------------------------

    def today(self) -> tuple[str, str]:
        """The current UTC day and month (the same string objects until the day changes)."""
        if self._wall() >= self._day_end:
            self._day, self._month, self._day_end = utc_period(self._wall())
        return self._day, self._month

    def current(self, view: SpendView) -> SpendView:
        """``view`` with its day and month rolled over to today's when they have passed."""
        day, month = self.today()
        if view.day is not day:
            if view.day != day:
                view.base_day = 0.0
                view.mark_day = view.local_day
            if view.month != month:
                view.base_month = 0.0
                view.mark_month = view.local_month
            view.day, view.month = day, month
        return view

    # -- the request path ---------------------------------------------------------------------------------

    def view(self, scope: Scope, id: str) -> SpendView:
        """The view of one key or tenant (made, unread, on first use)."""
        key = (scope, id)
        view = self.views.get(key)
        if view is None:
            day, month = self.today()
            view = self.views[key] = SpendView(scope, id, day, month)
        return view

    def add(
        self, scope: Scope, id: str, usd: float, view: SpendView | None = None, lookup: bool = True
    ) -> None:
        """Record ``usd`` of spend by a key or tenant today (written to the store in the next batch).
        ``view``: its spend view when the caller knows it (else looked up, unless ``lookup`` is False:
        the caller knows it has none)."""
        if self._wall() >= self._day_end:
            self.today()
        day = self._day
        pk = (scope, id, day)
        try:
            self._pending[pk] += usd
        except KeyError:
            self._pending[pk] = usd
        if view is None:
            if not lookup:
                return
            view = self.views.get((scope, id))
            if view is None:
                return
        if view.day is not day:
            self.current(view)
        view.local_day += usd
        view.local_month += usd
        rule = view.rule
        # PERF: two comparisons unless an alert threshold is reached
        if rule is not None and (
            (view.spent_day >= rule.alert_day and view.alerted_day is not day)
            or (view.spent_month >= rule.alert_month and view.alerted_month is not view.month)
        ):
            self.check_alert(rule)

    async def load(self, view: SpendView) -> None:
        """Read ``view`` from the store now (requests of this caller wait for one read at a time)."""
        fut = view.loading
        if fut is None:
            fut = view.loading = asyncio.get_running_loop().create_future()
            try:
                # PERF: not cancelled on timeout: a write under way must finish (or its batch is lost)
                sync = asyncio.ensure_future(self._sync([view]))
                self._tasks.add(sync)
                sync.add_done_callback(self._tasks.discard)
                await asyncio.wait({sync}, timeout=self.load_timeout)
                if view.fresh_until < self._clock():  # not read: count from what we have, ask again later
                    view.fresh_until = self._clock() + _UNREAD_RETRY
            finally:
                view.loading = None
                fut.set_result(None)
        else:
            await fut

    # -- alerts -------------------------------------------------------------------------------------------

    def check_alert(self, rule: BudgetRule) -> None:
        """Fire the alert of ``rule`` for each period whose spend reached ``alert_at`` of its limit (once per
        period and budget across the deployment, when ``claim`` is given)."""
        cfg = rule.config
        view = rule.view
        if cfg.usd_per_day is not None and view.spent_day >= rule.alert_day and view.alerted_day != view.day:
            view.alerted_day = view.day
            self._spawn(self._fire(rule, f"day:{view.day}", view.spent_day, cfg.usd_per_day))
        if (cfg.usd_per_month is not None and view.spent_month >= rule.alert_month
                and view.alerted_month != view.month):
            view.alerted_month = view.month
            self._spawn(self._fire(rule, f"month:{view.month}", view.spent_month, cfg.usd_per_month))

    async def _fire(self, rule: BudgetRule, period: str, spent: float, limit: float) -> None:
        cfg = rule.config
        view = rule.view
        token = f"alert/{rule.name}/{view.scope}/{view.id}/{period}"
        if self._claim is not None:
            try:
                if not await self._claim(token):
                    return  # another worker of the deployment fired it
            except Exception as exc:  # fire rather than miss it
                log.debug("budget alert claim failed (%s); firing locally", exc)
        self.stats.alerts += 1
        kind, _, when = period.partition(":")
        log.warning(
            "budget %s: %s spent %.6f USD of %.6f USD %s (%s; alert at %d%%, action %s)",
            rule.name, rule.where, spent, limit, "today" if kind == "day" else "this month", when,
            round(cfg.alert_at * 100), cfg.action,
        )
        if cfg.alert_webhook is not None and self._post is not None:
            payload = {
                "type": "budget_alert", "budget": rule.name, "scope": view.scope, "id": view.id,
                "period": kind, "period_start": when, "spent_usd": spent, "limit_usd": limit,
                "alert_at": cfg.alert_at, "action": cfg.action, "exhausted": spent >= limit,
            }
            try:
                await self._post(cfg.alert_webhook, payload)
            except Exception as exc:
                self.stats.alerts_failed += 1
                log.warning("budget %s: alert webhook failed: %s", rule.name, exc.__class__.__name__)

    # -- background -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gateway-spend")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        await cancel_and_wait(*self._tasks, grace=5.0)  # reads and alerts under way: a little time to finish
        # the last chance: reopen the store now even if a failure's back-off says later (a failover
        # may just have ended), rather than lose the spend still pending
        self._next_open = 0.0
        with contextlib.suppress(Exception):
            await self._flush_locked()  # waits for a write under way, then writes what is left
        if self._pending:
            log.error("spend of %d keys and tenants could not be written on shutdown", len(self._pending))
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
            self.store = None

    async def _run(self) -> None:
        last_refresh = self._clock()
        while True:
            await asyncio.sleep(self.flush_interval)
            now = self._clock()
            if now - last_refresh >= self.refresh_interval:
                last_refresh = now
                used = [v for v in self.views.values() if v.used]
                for v in used:
                    v.used = False
                work = self._sync(used)
            elif self._pending:
                work = self._flush_locked()
            else:
                continue
            # shielded: stopping the loop must not cut a write in the middle (stop waits for the lock)
            task = asyncio.ensure_future(work)
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("spend: background write failed")

    async def _flush_locked(self) -> None:
        async with self._lock:
            await self._flush()

    async def _store(self) -> Store | None:
        if self.store is None:
            now = self._clock()
            if now < self._next_open:
                return None
            try:
                self.store = await self._open_store()
            except Exception as exc:
                self._failures += 1
                self._next_open = now + _RETRY[min(self._failures, len(_RETRY)) - 1]
                if not self._warned:
                    self._warned = True
                    log.warning("spend: store unavailable (%s); keeping spend in memory, retrying",
                                exc.__class__.__name__ + (f": {exc}" if str(exc) else ""))
                return None
            if self._warned:
                log.warning("spend: store available again")
            self._failures = 0
            self._warned = False
        return self.store

    def _lost_store(self, exc: Exception) -> None:
        store, self.store = self.store, None
        self._failures += 1
        self._next_open = self._clock() + _RETRY[min(self._failures, len(_RETRY)) - 1]
        if not self._warned:
            self._warned = True
            log.warning("spend: store unavailable (%s); keeping spend in memory, retrying",
                        exc.__class__.__name__ + (f": {exc}" if str(exc) else ""))
        if store is not None:
            self._spawn(_close_quietly(store))

    async def _flush(self) -> bool:
        """Write the pending batch (under the lock). False when the store could not take it (kept)."""
        if not self._pending:
            return True
        store = await self._store()
        if store is None:
            return False
        batch, self._pending = self._pending, {}
        try:
            await store.add_spend_many((scope, id_, day, usd) for (scope, id_, day), usd in batch.items())
        except Exception as exc:
            for pk, usd in batch.items():
                self._pending[pk] = self._pending.get(pk, 0.0) + usd
            self.stats.spend_flush_errors += 1
            self._lost_store(exc)
            return False
        self.stats.spend_flushes += 1
        return True

    async def _sync(self, views: Iterable[SpendView]) -> None:
        """Write the pending batch, then read ``views`` again: each read includes everything this worker
        added before the batch, so the view's mark moves to what it had added by then."""
        async with self._lock:
            marks = [(v, v.day, v.local_day, v.local_month) for v in map(self.current, views)]
            if not await self._flush() or not marks:
                return
            store = await self._store()
            if store is None:
                return
            for view, day, local_day, local_month in marks:
                first = view.month + "-01"
                try:
                    by_day = await store.spend_by_day(view.scope, view.id, first, day)
                except Exception as exc:
                    self._lost_store(exc)
                    return
                self.stats.spend_reads += 1
                if view.day != day:  # the day changed during the read: the next refresh sets it
                    continue
                view.base_day = by_day.get(day, 0.0)
                view.base_month = sum(by_day.values())
                view.mark_day = local_day
                view.mark_month = local_month
                view.fresh_until = self._clock() + self.stale_after
                view.read = True
                if view.rule is not None:
                    self.check_alert(view.rule)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _close_quietly(store: Store) -> None:
    with contextlib.suppress(Exception):
        await store.close()
