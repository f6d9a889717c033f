"""The circuit breaker of one deployment, and its cooldown. Sans-IO: every call takes ``now``.

Theory of operation
-------------------
A deployment that keeps failing is taken out of rotation for a while instead of costing every request
a failed attempt. Its breaker is *closed* while it works: every request may go. Failures (transport
errors, timeouts, 5xx, 401/403; ``Outcome.failed``) are counted two ways: in a row, and in a sliding window of
``window`` seconds. ``consecutive_failures`` in a row, or an error ratio of at least ``error_ratio`` over a
window holding at least ``min_requests`` results, *trips* it: the breaker is *open* for ``open_for``
seconds and refuses every request. The first request asked for after that makes it *half-open*: up to
``half_open_probes`` requests go through as probes. When that many have succeeded it *recovers* and is
closed again, with fresh counts; a single failure re-opens it for another ``open_for``. A probe whose
result never comes (its request was abandoned) frees its slot after ``open_for``, so a lost probe cannot
wedge the breaker half-open.

Results that arrive while open come from requests admitted before the trip: they change nothing.

The health checker (``gateway.routing.health``) *ejects* a deployment whose probes fail: open with no
end. Only the checker *restores* it (closed), when its probes pass again; ejection is not subject to
half-open probing, since the checker is already probing.

*Remote* opens and closes come from other workers and nodes through ``BreakerSync``: the newest open or
close wins (last writer wins by the time of the transition), whatever the local state.

The *cooldown* is apart from the state: an upstream's ``Retry-After`` (or ``cooldown_on_429`` after a 429
that gave none) keeps this deployment, and only it, out until the given time, capped at ``max_cooldown``.
A 429 is not a failure: the deployment is up and answers; it is busy.

    state      | event         | when                                            | next
    -----------+---------------+-------------------------------------------------+-----------
    closed     | success       | a result that is not a failure                  | closed
    closed     | failure       | below both thresholds                           | closed
    closed     | trip          | N in a row, or ratio over a full enough window  | open (until now + open_for)
    open       | success       | late result of a request admitted before        | open
    open       | failure       | late result of a request admitted before        | open
    open       | expire        | a request asked for at or after ``until``       | half_open (and probe)
    half_open  | probe         | a request asked for, a probe slot is free       | half_open
    half_open  | success       | fewer than half_open_probes successes so far    | half_open
    half_open  | recover       | the half_open_probes-th success                 | closed (fresh counts)
    half_open  | failure       | any failure                                     | open (until now + open_for)
    any        | eject         | the health checker's probes fail                | open (until restored)
    any        | restore       | the health checker's probes pass again          | closed (fresh counts)
    any        | remote_open   | a newer open from another worker or node        | open (its until)
    any        | remote_close  | a newer close from another worker or node       | closed (fresh counts)

A request asked for while open before ``until``, or half-open with every probe slot taken, is refused;
refusals change nothing. A config reload hands the state to the new breaker (``inherit``); a half-open
one becomes open with its past end, so that the next request is a fresh probe. The table is
``TRANSITIONS``; a pair missing from it is a bug and raises.
"""

from __future__ import annotations

import enum
import math
from typing import NamedTuple

from gateway._core.route import BreakerCore
from gateway.routing.config import BreakerConfig

__all__ = ["TRANSITIONS", "Breaker", "Change", "Event", "State"]

_INF = math.inf
_SLOTS = 10  # buckets of the sliding window


class State(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Event(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    TRIP = "trip"
    EXPIRE = "expire"
    PROBE = "probe"
    RECOVER = "recover"
    EJECT = "eject"
    RESTORE = "restore"
    REMOTE_OPEN = "remote_open"
    REMOTE_CLOSE = "remote_close"


_C, _O, _H = State.CLOSED, State.OPEN, State.HALF_OPEN

#: (state, event) -> next state: the table in the module docstring
TRANSITIONS: dict[tuple[State, Event], State] = {
    (_C, Event.SUCCESS): _C,
    (_C, Event.FAILURE): _C,
    (_C, Event.TRIP): _O,
    (_O, Event.SUCCESS): _O,
    (_O, Event.FAILURE): _O,
    (_O, Event.EXPIRE): _H,
    (_H, Event.PROBE): _H,
    (_H, Event.SUCCESS): _H,
    (_H, Event.RECOVER): _C,
    (_H, Event.FAILURE): _O,
    **{(s, Event.EJECT): _O for s in State},
    **{(s, Event.RESTORE): _C for s in State},
    **{(s, Event.REMOTE_OPEN): _O for s in State},
    **{(s, Event.REMOTE_CLOSE): _C for s in State},
}


# Breaker.on_success relies on this to skip the table lookup on the path every success takes
assert TRANSITIONS[(State.CLOSED, Event.SUCCESS)] is State.CLOSED


class Change(NamedTuple):
    """A transition worth telling other workers about: an open (``until``; ``None`` = until restored), a
    close, or a cooldown (``until``). Times are on the caller's clock, the one ``now`` comes from."""

    state: str  # "open", "closed" or "cooldown"
    until: float | None
    at: float


class _Window:
    """Results of the last ``window`` seconds in ``_SLOTS`` buckets (a bucket's age decides, not its use)."""

    __slots__ = ("bad", "epochs", "hi", "k", "lo", "ok", "width")

    def __init__(self, window: float) -> None:
        self.width = window / _SLOTS
        self.epochs = [-1] * _SLOTS
        self.ok = [0] * _SLOTS
        self.bad = [0] * _SLOTS
        #: the bucket results go to while ``lo <= now < hi`` (# PERF: no division per result)
        self.k = 0
        self.lo = self.hi = 0.0

    def add(self, now: float, failed: bool) -> None:
        if not self.lo <= now < self.hi:
            width = self.width
            epoch = int(now // width)
            k = self.k = epoch % _SLOTS
            self.lo = epoch * width
            self.hi = self.lo + width
            epochs = self.epochs
            if epochs[k] != epoch:
                epochs[k] = epoch
                self.ok[k] = 0
                self.bad[k] = 0
        if failed:
            self.bad[self.k] += 1
        else:
            self.ok[self.k] += 1

    def totals(self, now: float) -> tuple[int, int]:
        """(results, failures) in the window ending at ``now``."""
        oldest = int(now // self.width) - _SLOTS + 1
        total = bad = 0
        for k in range(_SLOTS):
            if self.epochs[k] >= oldest:
                total += self.ok[k] + self.bad[k]
                bad += self.bad[k]
        return total, bad

    def clear(self) -> None:
        self.epochs = [-1] * _SLOTS
        self.lo = self.hi = 0.0


class Breaker(BreakerCore):
    """One deployment's breaker and cooldown. See the module docstring for the state table."""

    # ``state``, ``_consecutive`` and ``_window`` are BreakerCore's: a success while closed is counted
    # there, compiled (``RouterCore.ok``)
    __slots__ = (
        "_config", "_probe_at", "_probe_ok", "_probes", "changed_at", "cooldown_until", "ejected", "until",
    )

    state: State

    def __init__(self, config: BreakerConfig) -> None:
        self._config = config
        self._closed = State.CLOSED
        self._counting = config.enabled
        self.state = State.CLOSED
        #: while open: refuse until then (``inf`` while ejected)
        self.until = 0.0
        self.ejected = False
        #: time of the last open or close (local or remote): remote changes older than it lose
        self.changed_at = -_INF
        self.cooldown_until = -_INF
        self._consecutive = 0
        self._window = _Window(config.window)
        self._probes = 0  # probes admitted in this half-open period
        self._probe_ok = 0
        self._probe_at = -_INF

    @property
    def config(self) -> BreakerConfig:
        return self._config

    def _step(self, event: Event) -> State:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:  # pragma: no cover - every method checks the state before stepping
            raise RuntimeError(f"breaker: no transition for {event.value} when {self.state.name.lower()}")
        self.state = nxt
        return nxt

    def _open(self, now: float, until: float) -> None:
        self.until = until
        self.changed_at = now
        self._consecutive = 0
        self._window.clear()
        self._probes = self._probe_ok = 0
        self._probe_at = -_INF

    def _close(self, now: float) -> None:
        self.until = 0.0
        self.ejected = False
        self.changed_at = now
        self._consecutive = 0
        self._window.clear()
        self._probes = self._probe_ok = 0

    # -- asking for a request

    def blocked_until(self, now: float) -> float:
        """Until when every request is refused without asking (open, or cooling down); ``-inf`` if not."""
        t = self.cooldown_until
        if self.state is State.OPEN and self.until > t:
            t = self.until
        return t if t > now else -_INF

    def admit(self, now: float) -> bool:
        """May a request go to this deployment now? Takes a probe slot when half-open. Ignores cooldown
        (see ``blocked_until``)."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.OPEN:
            if now < self.until:
                return False
            self._step(Event.EXPIRE)
            self._probes = self._probe_ok = 0
        if self._probes < self._config.half_open_probes or now - self._probe_at >= self._config.open_for:
            self._step(Event.PROBE)
            self._probes += 1
            self._probe_at = now
            return True
        return False

    def would_admit(self, now: float) -> bool:
        """What ``admit(now)`` would answer, without taking a probe slot or changing state."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.OPEN:
            return now >= self.until
        return self._probes < self._config.half_open_probes or now - self._probe_at >= self._config.open_for

    # -- results

    def on_success(self, now: float) -> Change | None:
        # PERF: (closed, success) -> closed is asserted below the table, so no lookup: every routed
        # request ends here, counted by the compiled BreakerCore
        if self.success_closed(now):
            return None
        if self.state is State.HALF_OPEN:
            self._probe_ok += 1
            if self._probe_ok >= self._config.half_open_probes:
                self._step(Event.RECOVER)
                self._close(now)
                return Change("closed", None, now)
            self._step(Event.SUCCESS)
        else:
            self._step(Event.SUCCESS)
        return None

    def on_failure(self, now: float) -> Change | None:
        cfg = self._config
        state = self.state
        if state is State.CLOSED:
            self._consecutive += 1
            tripped = False
            if cfg.enabled:
                window = self._window
                window.add(now, True)
                tripped = self._consecutive >= cfg.consecutive_failures
                if not tripped:
                    total, bad = window.totals(now)
                    tripped = total >= cfg.min_requests and bad >= cfg.error_ratio * total
            if not tripped:
                self._step(Event.FAILURE)
                return None
            self._step(Event.TRIP)
        elif state is State.OPEN:
            self._step(Event.FAILURE)
            return None
        else:
            self._step(Event.FAILURE)
        until = now + cfg.open_for
        self._open(now, until)
        return Change("open", until, now)

    def cool(self, now: float, seconds: float | None) -> Change | None:
        """Keep the deployment out for ``seconds`` (its upstream's Retry-After; ``None``: the 429 default),
        capped at ``max_cooldown``. Returns the change when the cooldown was extended."""
        cfg = self._config
        if seconds is None:
            seconds = cfg.cooldown_on_429
        if not seconds > 0.0:
            return None
        until = now + min(seconds, cfg.max_cooldown)
        if until <= self.cooldown_until:
            return None
        self.cooldown_until = until
        return Change("cooldown", until, now)

    # -- the health checker

    def eject(self, now: float) -> Change | None:
        if self.ejected:
            return None
        self._step(Event.EJECT)
        self._open(now, _INF)
        self.ejected = True
        return Change("open", None, now)

    def restore(self, now: float) -> Change | None:
        if not self.ejected:
            return None
        self._step(Event.RESTORE)
        self._close(now)
        return Change("closed", None, now)

    # -- other workers and nodes

    def apply(self, change: Change, now: float) -> bool:
        """Apply another worker's change (times on this clock). Opens and closes: the newer wins;
        cooldowns: the later ``until`` wins. Returns whether anything changed."""
        if change.state == "cooldown":
            until = change.until
            if until is None or until <= self.cooldown_until or until <= now:
                return False
            self.cooldown_until = until
            return True
        if change.at <= self.changed_at:
            return False
        if change.state == "open":
            until = _INF if change.until is None else change.until
            if until <= now:
                return False  # expired on the way: nothing to refuse any more
            self._step(Event.REMOTE_OPEN)
            self._open(change.at, until)
            self.ejected = change.until is None
            return True
        if change.state == "closed":
            self._step(Event.REMOTE_CLOSE)
            self._close(change.at)
            return True
        raise ValueError(f"unknown breaker change {change.state!r}")

    def inherit(self, old: Breaker) -> None:
        """Take over the state of the breaker this one replaces (config reload); the counts start afresh."""
        # half-open becomes open with its (past) end: the next request asked for is a fresh probe
        self.state = State.OPEN if old.state is State.HALF_OPEN else old.state
        self.until = old.until
        self.ejected = old.ejected
        self.changed_at = old.changed_at
        self.cooldown_until = old.cooldown_until

    # -- reading

    def snapshot(self, now: float) -> dict[str, object]:
        """The state for admin pages and tests."""
        total, bad = self._window.totals(now)
        return {
            "state": "ejected" if self.ejected else self.state.name.lower(),
            "until": self.until if self.state is State.OPEN else None,
            "cooldown_until": self.cooldown_until if self.cooldown_until > now else None,
            "consecutive_failures": self._consecutive,
            "window_results": total,
            "window_failures": bad,
            "probes": self._probes,
        }
