# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Compiled rate limiting (twin and reference: limit_py.py; same API, same float results bit for bit).

Why compiled: the admit phase asks one or more buckets, leases or gates for every request, and the settle
phase reconciles them; with typed fields each call is a few C comparisons and one multiplication.

Every float expression is evaluated in the same order as in the twin; see limit_py.py for the theory of
operation, the tolerance and the over-admission bound.
"""

from libc.math cimport INFINITY, exp, floor, nextafter

__all__ = ["Bucket", "Gate", "Lease", "RateEstimator", "next_lease_size"]

cdef extern from *:
    """
    /* A product rounded to a double on its own. A compiler targeting FMA hardware may otherwise fuse
       a*b+c into one instruction with a single rounding, and the result would no longer match the
       twin (CPython rounds every operation) bit for bit. */
    static inline double gateway_limit_rounded(double x) { volatile double v = x; return v; }
    """
    double _rounded "gateway_limit_rounded" (double x) noexcept nogil

# Admission allows the level to reach burst * _CEILING (see the twin).
cdef double _CEILING = 1.000000001

_NOW_ERROR = "now must be a finite number of seconds"
_AMOUNT_ERROR = "amount must be a number >= 0"
_FINITE_AMOUNT_ERROR = "amount must be a finite number >= 0"
_CONFIG_ERROR = "rate and burst must be finite numbers > 0"


cdef inline int _check_now(double now) except -1:
    if not -INFINITY < now < INFINITY:
        raise ValueError(_NOW_ERROR)
    return 0


cdef inline int _check_finite_amount(double amount) except -1:
    if not 0.0 <= amount < INFINITY:
        raise ValueError(_FINITE_AMOUNT_ERROR)
    return 0


cdef inline int _check_config(double rate, double burst) except -1:
    if not (0.0 < rate < INFINITY and 0.0 < burst < INFINITY):
        raise ValueError(_CONFIG_ERROR)
    return 0


cdef class Bucket:
    """A GCRA token bucket: ``burst`` units at most at once, refilled at ``rate`` units per second."""

    def __init__(self, double rate, double burst):
        _check_config(rate, burst)
        self.rate = rate
        self.burst = burst
        self._ceiling = burst * _CEILING
        self._level = 0.0
        self._stamp = -INFINITY

    cdef double _level_at(self, double now) noexcept:
        cdef double level = self._level
        if level > 0.0 and now > self._stamp:
            level = level - _rounded((now - self._stamp) * self.rate)
            if level < 0.0:
                level = 0.0
        return level

    cdef double _wait(self, double now, double level, double amount) noexcept:
        cdef double start, wait, step = 0.0
        if amount > self._ceiling:
            return INFINITY
        start = now if now > self._stamp else self._stamp
        wait = (start - now) + (level + amount - self.burst) / self.rate
        while self._level_at(now + wait) + amount > self._ceiling:
            if step == 0.0:
                step = nextafter(now + wait, INFINITY) - (now + wait)  # one ulp of the sum
            wait = wait + step
            step = step + step
        return wait

    cpdef double take(self, double now, double amount=1.0) except? -1.0:
        """Admit ``amount`` if it fits: 0.0 when admitted; else the seconds to wait (inf if > burst)."""
        cdef double level, need
        _check_now(now)
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

    cpdef double retry_after(self, double now, double amount=1.0) except? -1.0:
        """What ``take(now, amount)`` would return, without taking."""
        cdef double level
        _check_now(now)
        if not amount >= 0.0:
            raise ValueError(_AMOUNT_ERROR)
        level = self._level_at(now)
        if level + amount <= self._ceiling:
            return 0.0
        return self._wait(now, level, amount)

    cpdef void force(self, double now, double amount) except *:
        """Charge ``amount`` unconditionally; the bucket may go into debt."""
        _check_now(now)
        _check_finite_amount(amount)
        self._level = self._level_at(now) + amount
        if now > self._stamp:
            self._stamp = now

    cpdef void refund(self, double now, double amount) except *:
        """Give back ``amount``; never above a full bucket."""
        cdef double level
        _check_now(now)
        _check_finite_amount(amount)
        level = self._level_at(now) - amount
        if level < 0.0:
            level = 0.0
        self._level = level
        if now > self._stamp:
            self._stamp = now

    cpdef double remaining(self, double now) except? -1.0:
        """Units available now, in [0, burst]."""
        cdef double left
        _check_now(now)
        left = self._ceiling - self._level_at(now)
        if left > self.burst:
            left = self.burst
        elif left < 0.0:
            left = 0.0
        return left

    cpdef double reset_after(self, double now) except? -1.0:
        """Seconds until the bucket is full again, if nothing more is taken."""
        _check_now(now)
        return self._level_at(now) / self.rate

    cpdef void reconfigure(self, double rate, double burst, double now) except *:
        """Change the policy (config reload), keeping the consumed fraction of the burst."""
        cdef double level
        _check_now(now)
        _check_config(rate, burst)
        level = self._level_at(now)
        if now > self._stamp:
            self._stamp = now
        self._level = level * (burst / self.burst)
        self.rate = rate
        self.burst = burst
        self._ceiling = burst * _CEILING


cdef class Lease:
    """A block of ``granted`` units from the shared state, usable until ``expires_at``."""

    def __init__(self, double granted, double expires_at):
        if not 0.0 <= granted < INFINITY:
            raise ValueError("granted must be a finite number >= 0")
        if expires_at != expires_at:
            raise ValueError("expires_at must be a number")
        self.granted = granted
        self.expires_at = expires_at
        self.left = granted

    cpdef bint take(self, double now, double amount=1.0) except -1:
        """Spend ``amount`` if the lease is live and holds enough; False otherwise (no change)."""
        if not amount >= 0.0:
            raise ValueError(_AMOUNT_ERROR)
        if now < self.expires_at and amount <= self.left:
            self.left = self.left - amount
            return True
        return False

    cpdef bint expired(self, double now) noexcept:
        """Whether the lease has stopped admitting at ``now``."""
        return not now < self.expires_at

    cpdef double return_unused(self, double now) noexcept:
        """Close the lease: the units to give back to the shared state (0.0 once expired)."""
        cdef double unused = self.left if now < self.expires_at else 0.0
        self.left = 0.0
        return unused


cpdef double next_lease_size(double observed_rate, double limit_rate, Py_ssize_t workers,
                             double min_size, double max_size, double horizon) except? -1.0:
    """Size of the next lease: whole units in [1, max_size]; 1 when the limit is too low for leases."""
    cdef double share, size
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if not 1.0 <= min_size <= max_size < INFINITY:
        raise ValueError("need 1 <= min_size <= max_size < inf")
    if not 0.0 < horizon < INFINITY:
        raise ValueError("horizon must be a finite number of seconds > 0")
    share = limit_rate * horizon / <double>workers
    if not share >= min_size:
        return 1.0
    size = observed_rate * horizon
    if not size >= min_size:
        size = min_size
    if size > share:
        size = share
    if size > max_size:
        size = max_size
    return floor(size)


cdef class Gate:
    """A concurrency cap: at most ``limit`` requests in flight."""

    def __init__(self, Py_ssize_t limit):
        self.limit = limit
        self.inflight = 0

    cpdef bint enter(self) noexcept:
        """Enter if below the limit: True when entered (the caller must ``leave`` later)."""
        if self.inflight < self.limit:
            self.inflight += 1
            return True
        return False

    cpdef void leave(self) except *:
        """Leave after a successful ``enter``; RuntimeError if nothing is in flight."""
        if self.inflight <= 0:
            raise RuntimeError("Gate.leave() without a matching enter()")
        self.inflight -= 1


cdef class RateEstimator:
    """Units per second, an exponentially weighted average over about ``window`` seconds."""

    def __init__(self, double window=10.0):
        if not 0.0 < window < INFINITY:
            raise ValueError("window must be a finite number of seconds > 0")
        self.window = window
        self._rate = 0.0
        self._stamp = -INFINITY

    cdef double _decayed(self, double now) noexcept:
        cdef double rate = self._rate
        if rate > 0.0 and now > self._stamp:
            rate = _rounded(rate * exp(-((now - self._stamp) / self.window)))
        return rate

    cpdef void observe(self, double now, double amount=1.0) except *:
        """Count ``amount`` units used at ``now``."""
        _check_now(now)
        _check_finite_amount(amount)
        self._rate = self._decayed(now) + amount / self.window
        if now > self._stamp:
            self._stamp = now

    cpdef double rate(self, double now) noexcept:
        """The estimated units per second at ``now``."""
        return self._decayed(now)
