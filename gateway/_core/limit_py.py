"""Pure-Python twin of ``gateway._core._limit``: sans-IO rate limiting (the reference semantics).

Nothing here reads a clock, sleeps or does IO: every call that depends on time takes ``now``, float seconds
on a monotonic clock (``time.monotonic()``), and returns a decision. The shell owns the clock, the shared
state and the 429 responses.

Theory of operation
-------------------
``Bucket`` is a GCRA token bucket. Classic GCRA keeps one number, the theoretical arrival time ``tat``:
the bucket is full at ``tat <= now``, and admitting ``amount`` moves ``tat`` to ``max(tat, now) +
amount / rate``. Here the same state is kept as ``(level, stamp)``, with ``tat == stamp + level / rate``:
``level`` is the number of units consumed and not yet refilled as of ``stamp``. The two are equivalent,
but this form keeps the arithmetic exact where it matters: units taken at the same instant add up as
whole numbers (``N`` takes of 1 reach exactly ``N``), and the precision of the level depends on the burst,
not on how large the clock reading is. Admission is ``level(now) + amount <= burst``, compared with a
tolerance of a billionth of the burst (``_CEILING``) so that rounding in ``elapsed * rate`` never turns
the N-th request of a period into a refusal. The tolerance does not accumulate: a take that uses it
leaves the level that much higher, so the next take pays it back.

Every float operation is written in the same order in the compiled module, so both produce the same
results bit for bit (the property tests demand it).

``Lease``, ``next_lease_size`` and ``RateEstimator`` are the worker's side of a limit shared by many
workers; ``Gate`` caps concurrent requests. See ``next_lease_size`` for the protocol and its bound.
"""

from __future__ import annotations

import math
import operator

__all__ = ["Bucket", "Gate", "Lease", "RateEstimator", "next_lease_size"]

_INF = math.inf

# Admission allows the level to reach burst * _CEILING: a billionth of the burst absorbs the rounding of
# refills (a few ulps of the burst, or of rate * ulp(now)), far below one unit for any burst under 1e9.
_CEILING = 1.000000001

_NOW_ERROR = "now must be a finite number of seconds"
_AMOUNT_ERROR = "amount must be a number >= 0"
_FINITE_AMOUNT_ERROR = "amount must be a finite number >= 0"
_CONFIG_ERROR = "rate and burst must be finite numbers > 0"


class Bucket:
    """A GCRA token bucket: ``burst`` units at most at once, refilled at ``rate`` units per second.

    A policy of "N per period" is ``Bucket(rate=N / period, burst=N)``: it admits exactly N at once, then
    one every ``period / N`` seconds. A new bucket is full. ``now`` must be finite (ValueError otherwise);
    a ``now`` earlier than one already seen counts as no time passed, never as a refill.
    """

    __slots__ = ("_burst", "_ceiling", "_level", "_rate", "_stamp")

    def __init__(self, rate: float, burst: float) -> None:
        rate = float(rate)
        burst = float(burst)
        if not (0.0 < rate < _INF and 0.0 < burst < _INF):
            raise ValueError(_CONFIG_ERROR)
        self._rate = rate
        self._burst = burst
        self._ceiling = burst * _CEILING
        self._level = 0.0
        self._stamp = -_INF

    @property
    def rate(self) -> float:
        """Units refilled per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """Capacity: the most units available at once."""
        return self._burst

    def _level_at(self, now: float) -> float:
        """Units consumed and not yet refilled at ``now`` (may exceed burst: debt from ``force``)."""
        level = self._level
        if level > 0.0 and now > self._stamp:
            level = level - (now - self._stamp) * self._rate
            if level < 0.0:
                level = 0.0
        return level

    def _wait(self, now: float, level: float, amount: float) -> float:
        """Seconds from ``now`` until ``amount`` fits, given it does not fit now at ``level``.

        The estimate aims at the level where ``amount`` fits exactly (without the tolerance, which is
        left as margin for the rounding of ``now + wait``); should that still land a hair short, the
        wait grows by ulps, doubling (so this ends fast), until the admission test itself says yes at
        ``now + wait``.
        """
        if amount > self._ceiling:
            return _INF
        start = now if now > self._stamp else self._stamp  # refill runs from the latest time seen
        wait = (start - now) + (level + amount - self._burst) / self._rate
        step = 0.0
        while self._level_at(now + wait) + amount > self._ceiling:
            if step == 0.0:
                step = math.nextafter(now + wait, _INF) - (now + wait)  # one ulp of the sum
            wait = wait + step
            step = step + step
        return wait

    def take(self, now: float, amount: float = 1.0) -> float:
        """Admit ``amount`` if it fits: 0.0 when admitted; else the seconds to wait, and nothing changes.

        After a refusal, ``take(now + wait, amount)`` admits if nothing else happened in between. An
        amount larger than the burst can never fit: the wait is ``math.inf``.
        """
        if not -_INF < now < _INF:
            raise ValueError(_NOW_ERROR)
        if not amount >= 0.0:
            raise ValueError(_AMOUNT_ERROR)
        level = self._level_at(now)
        need = level + amount
        if need <= self._ceiling:
            self._level = need
            if now > self._stamp:
                self._stamp = now
            return 0.0
        return self._wait(now, level, amount)

    def retry_after(self, now: float, amount: float = 1.0) -> float:
        """What ``take(now, amount)`` would return, without taking."""
        if not -_INF < now < _INF:
            raise ValueError(_NOW_ERROR)
        if not amount >= 0.0:
            raise ValueError(_AMOUNT_ERROR)
        level = self._level_at(now)
        if level + amount <= self._ceiling:
            return 0.0
        return self._wait(now, level, amount)

    def force(self, now: float, amount: float) -> None:
        """Charge ``amount`` unconditionally; the bucket may go into debt (settling real usage)."""
        if not -_INF < now < _INF:
            raise ValueError(_NOW_ERROR)
        if not 0.0 <= amount < _INF:
            raise ValueError(_FINITE_AMOUNT_ERROR)
        self._level = self._level_at(now) + amount
        if now > self._stamp:
            self._stamp = now

    def refund(self, now: float, amount: float) -> None:
        """Give back ``amount`` (a reservation larger than the real usage); never above a full bucket."""
        if not -_INF < now < _INF:
            raise ValueError(_NOW_ERROR)
        if not 0.0 <= amount < _INF:
            raise ValueError(_FINITE_AMOUNT_ERROR)
        level = self._level_at(now) - amount
        if level < 0.0:
            level = 0.0
        self._level = level
        if now > self._stamp:
            self._stamp = now

    def remaining(self, now: float) -> float:
        """Units available now, in [0, burst] (for ``x-ratelimit-remaining-*``).

        Counted with the admission tolerance, so that ``floor(remaining(now))`` whole units fit when the
        refill is a rounding error short of a whole unit.
        """
        if not -_INF < now < _INF:
            raise ValueError(_NOW_ERROR)
        left = self._ceiling - self._level_at(now)
        if left > self._burst:
            left = self._burst
        elif left < 0.0:
            left = 0.0
        return left

    def reset_after(self, now: float) -> float:
        """Seconds until the bucket is full again, if nothing more is taken (``x-ratelimit-reset-*``)."""
        if not -_INF < now < _INF:
            raise ValueError(_NOW_ERROR)
        return self._level_at(now) / self._rate

    def reconfigure(self, rate: float, burst: float, now: float) -> None:
        """Change the policy (config reload), keeping the consumed fraction of the burst.

        The refill up to ``now`` is at the old rate. A bucket half used stays half used under the new
        burst; one in debt stays in debt in the same proportion.
        """
        rate = float(rate)
        burst = float(burst)
        if not -_INF < now < _INF:
            raise ValueError(_NOW_ERROR)
        if not (0.0 < rate < _INF and 0.0 < burst < _INF):
            raise ValueError(_CONFIG_ERROR)
        level = self._level_at(now)
        if now > self._stamp:
            self._stamp = now
        self._level = level * (burst / self._burst)
        self._rate = rate
        self._burst = burst
        self._ceiling = burst * _CEILING


class Lease:
    """A block of ``granted`` units a worker got from the shared state, usable until ``expires_at``.

    The worker spends it locally with ``take``; at ``expires_at`` it admits nothing more. Unused units go
    back with ``return_unused`` only while the lease is live (see ``next_lease_size`` for why).
    """

    __slots__ = ("_expires_at", "_granted", "_left")

    def __init__(self, granted: float, expires_at: float) -> None:
        granted = float(granted)
        expires_at = float(expires_at)
        if not 0.0 <= granted < _INF:
            raise ValueError("granted must be a finite number >= 0")
        if expires_at != expires_at:
            raise ValueError("expires_at must be a number")
        self._granted = granted
        self._expires_at = expires_at
        self._left = granted

    @property
    def granted(self) -> float:
        """Units granted."""
        return self._granted

    @property
    def expires_at(self) -> float:
        """Monotonic time at which the lease stops admitting."""
        return self._expires_at

    @property
    def left(self) -> float:
        """Units not yet taken (or returned)."""
        return self._left

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Spend ``amount`` from the lease if it is live and holds enough; False otherwise (no change)."""
        if not amount >= 0.0:
            raise ValueError(_AMOUNT_ERROR)
        if now < self._expires_at and amount <= self._left:
            self._left = self._left - amount
            return True
        return False

    def expired(self, now: float) -> bool:
        """Whether the lease has stopped admitting at ``now``."""
        return not now < self._expires_at

    def return_unused(self, now: float) -> float:
        """Close the lease: the units to give back to the shared state (0.0 once expired)."""
        unused = self._left if now < self._expires_at else 0.0
        self._left = 0.0
        return unused


def next_lease_size(
    observed_rate: float,
    limit_rate: float,
    workers: int,
    min_size: float,
    max_size: float,
    horizon: float,
) -> float:
    """Size of the next lease a worker should ask for: whole units, in [1, max_size].

    About ``horizon`` seconds of this worker's ``observed_rate`` (units per second, a ``RateEstimator``),
    at least ``min_size``, at most ``max_size`` and at most the worker's fair share of the limit over the
    horizon, ``limit_rate * horizon / workers``. When that share is below ``min_size`` the limit is too
    low for leases to pay: the answer is 1, and the worker goes to the shared state for each request.

    Protocol assumed by the bound below: each worker holds at most one live lease per limit; it asks for
    ``max(size, amount)`` when a request of ``amount`` does not fit its lease (returning the old lease
    first), spends ``amount`` from the new lease at once, and returns unused units only with
    ``Lease.return_unused``; the shared state is a ``Bucket`` (rate ``r``, burst ``B``) charged with
    ``take`` at grant time and credited with ``refund`` on return.

    Over-admission bound. Let ``W`` be the number of workers, ``S`` the largest size this function
    returned and ``a`` the smallest request amount (1 for request limits). Over any interval [t0, t1],
    the units admitted across all workers are at most::

        B + r * (t1 - t0) + W * max(0, S - a)      (plus the bucket's tolerance, B * 1e-9)

    Why: what is used in the interval comes from leases granted in it, which the bucket holds to
    ``B + r * (t1 - t0) - L0 + R`` (``L0`` its level at t0, ``R`` the units refunded in the interval),
    and from leases already live at t0, which hold at most ``S - a`` each, one per worker. Refunds in the
    interval come from those two sources and so are never spent twice; that is why a lease returns
    nothing once expired (a late return would add its remainder again). With ``S = 1`` and unit requests
    the bound is exact: no over-admission. And since ``S <= r * horizon / W``, the excess is always below
    ``r * horizon`` units, however many workers. When leases are never returned the excess is also at
    most ``r * ttl`` (what was granted in the ttl before t0 is at most ``L0 + r * ttl``).
    """
    workers = operator.index(workers)
    min_size = float(min_size)
    max_size = float(max_size)
    horizon = float(horizon)
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if not 1.0 <= min_size <= max_size < _INF:
        raise ValueError("need 1 <= min_size <= max_size < inf")
    if not 0.0 < horizon < _INF:
        raise ValueError("horizon must be a finite number of seconds > 0")
    share = limit_rate * horizon / workers
    if not share >= min_size:
        return 1.0
    size = observed_rate * horizon
    if not size >= min_size:
        size = min_size
    if size > share:
        size = share
    if size > max_size:
        size = max_size
    return float(math.floor(size))


class Gate:
    """A concurrency cap: at most ``limit`` requests in flight (``limit`` may change on reload)."""

    __slots__ = ("_inflight", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = operator.index(limit)
        self._inflight = 0

    @property
    def limit(self) -> int:
        """Most requests in flight; lowering it refuses new entries until enough have left."""
        return self._limit

    @limit.setter
    def limit(self, limit: int) -> None:
        self._limit = operator.index(limit)

    @property
    def inflight(self) -> int:
        """Requests entered and not yet left."""
        return self._inflight

    def enter(self) -> bool:
        """Enter if below the limit: True when entered (the caller must ``leave`` later)."""
        if self._inflight < self._limit:
            self._inflight += 1
            return True
        return False

    def leave(self) -> None:
        """Leave after a successful ``enter``; RuntimeError if nothing is in flight."""
        if self._inflight <= 0:
            raise RuntimeError("Gate.leave() without a matching enter()")
        self._inflight -= 1


class RateEstimator:
    """Units per second, an exponentially weighted average over about ``window`` seconds.

    Each observation adds ``amount / window`` to the estimate, which decays by ``exp(-dt / window)``:
    the estimate is the sum of past amounts weighted by ``exp(-age / window) / window``, whose weights
    integrate to 1, so a steady rate is estimated without bias once a few windows have passed (it starts
    from 0 and rises, which keeps a new worker's first leases small).
    """

    __slots__ = ("_rate", "_stamp", "_window")

    def __init__(self, window: float = 10.0) -> None:
        window = float(window)
        if not 0.0 < window < _INF:
            raise ValueError("window must be a finite number of seconds > 0")
        self._window = window
        self._rate = 0.0
        self._stamp = -_INF

    @property
    def window(self) -> float:
        """Time constant of the decay, in seconds."""
        return self._window

    def _decayed(self, now: float) -> float:
        rate = self._rate
        if rate > 0.0 and now > self._stamp:
            rate = rate * math.exp(-((now - self._stamp) / self._window))
        return rate

    def observe(self, now: float, amount: float = 1.0) -> None:
        """Count ``amount`` units used at ``now``."""
        if not -_INF < now < _INF:
            raise ValueError(_NOW_ERROR)
        if not 0.0 <= amount < _INF:
            raise ValueError(_FINITE_AMOUNT_ERROR)
        self._rate = self._decayed(now) + amount / self._window
        if now > self._stamp:
            self._stamp = now

    def rate(self, now: float) -> float:
        """The estimated units per second at ``now``."""
        return self._decayed(now)
