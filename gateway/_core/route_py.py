"""Pure-Python twin of ``gateway._core._route``: per-request deployment selection, the reference.

Sans-IO: nothing here reads the clock, draws random numbers or waits. The routing shell passes in what a
decision needs (a key, a random float in [0, 1), a rotating integer, observed latencies) and gets back a
deployment index.

Deployments are the small integers ``0 .. n-1`` of one route; the shell keeps the table that maps them to
real deployments.

Eligibility is a Python int bitmask: bit ``i`` set means deployment ``i`` may be picked. The shell clears
the bits of deployments it must keep out (open circuit, cooling down, rate limited). ``ALL`` (``-1``, every
bit set) admits every deployment, and ``ALL & ~(1 << i)`` all but ``i``; bits at ``n`` and above are
ignored. Every picker returns ``-1`` when no deployment is eligible.

Ring hashes are a fixed function of the bytes (FNV-1a 64 over UTF-8, then the splitmix64 finaliser), so
every worker, node and release maps a key to the same deployment; Python's ``hash()`` is salted per
process and would not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "ALL",
    "STRATEGIES",
    "BreakerCore",
    "HashRing",
    "LeastBusy",
    "LeastLatency",
    "RequestInfo",
    "RouterCore",
    "SmoothWeighted",
    "Split",
    "cheapest",
    "hash64",
]

ALL = -1  # the eligibility mask that admits every deployment

_M64 = 0xFFFFFFFFFFFFFFFF
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment: 2**64 / golden ratio
_MAX_WEIGHT = (1 << 31) - 1
_MAX_POINTS = 1 << 20  # a ring past a million points is a configuration mistake (weights are relative)


def _mix64(z: int) -> int:
    """splitmix64's finaliser: every input bit flips about half of the output bits."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _M64
    return h


def _as_bytes(key: bytes | str) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    raise TypeError(f"a routing key must be bytes or str, not {type(key).__name__}")


def hash64(key: bytes | str) -> int:
    """The stable 64-bit hash of ``key`` (str as UTF-8) that places keys on the ring."""
    return _mix64(_fnv1a64(_as_bytes(key)))


def _full(n: int) -> int:
    return (1 << n) - 1


def _check_index(i: int, n: int) -> None:
    if not 0 <= i < n:
        raise IndexError(f"deployment index {i} out of range for {n} deployments")


def _check_r(r: float) -> None:
    if not 0.0 <= r < 1.0:
        raise ValueError(f"r must be a float in [0, 1), got {r!r}")


def _check_weights(weights: list[int], what: str) -> None:
    for w in weights:
        if not isinstance(w, int):
            raise TypeError(f"{what} weights must be integers, not {type(w).__name__}")
        if not 1 <= w <= _MAX_WEIGHT:
            raise ValueError(f"{what} weights must be integers from 1 to {_MAX_WEIGHT}, got {w!r}")


class HashRing:
    """Consistent hashing with virtual nodes: the same key goes to the same deployment.

    Deployment ``i`` owns ``vnodes * weights[i]`` points on a 64-bit ring; point ``j`` of a deployment
    named ``name`` sits at ``mix64(hash64(name) + (j + 1) * GAMMA)``, so points depend on the name only.
    Adding or removing one of N equal deployments therefore moves about 1/N of the keys, and only to or
    from that deployment; leaving a deployment out of ``eligible`` moves exactly the keys a ring built
    without it would move. Weights are relative (1, 2, 3 rather than 100, 200, 300): each unit of weight
    costs ``vnodes`` points.
    """

    __slots__ = ("_full", "_hashes", "_n", "_names", "_owners")

    def __init__(self, names: list[str], weights: list[int] | None = None, vnodes: int = 160) -> None:
        n = len(names)
        if weights is None:
            weights = [1] * n
        if len(weights) != n:
            raise ValueError(f"{n} names but {len(weights)} weights")
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes!r}")
        _check_weights(weights, "ring")
        if len(set(names)) != n:
            raise ValueError("deployment names on a ring must be unique")
        total = vnodes * sum(weights)
        if total > _MAX_POINTS:
            raise ValueError(
                f"the ring would hold {total} points (more than {_MAX_POINTS}); "
                "use smaller relative weights or fewer vnodes"
            )
        points: list[tuple[int, str, int]] = []
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise TypeError(f"deployment names must be str, not {type(name).__name__}")
            base = hash64(name)
            for j in range(vnodes * weights[i]):
                points.append((_mix64((base + (j + 1) * _GAMMA) & _M64), name, i))
        points.sort()
        self._hashes = [p[0] for p in points]
        self._owners = [p[2] for p in points]
        self._names = tuple(names)
        self._n = n
        self._full = _full(n)

    @property
    def n(self) -> int:
        """Number of deployments."""
        return self._n

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def points(self) -> int:
        """Number of points on the ring."""
        return len(self._hashes)

    def pick(self, key: bytes | str, eligible: int = ALL) -> int:
        """The deployment owning the first eligible point clockwise from ``hash64(key)``."""
        h = hash64(key)
        m = eligible & self._full
        if not m:
            return -1
        hashes = self._hashes
        size = len(hashes)
        lo, hi = 0, size
        while lo < hi:  # first point >= h
            mid = (lo + hi) >> 1
            if hashes[mid] < h:
                lo = mid + 1
            else:
                hi = mid
        owners = self._owners
        for k in range(size):
            i = owners[(lo + k) % size]
            if (m >> i) & 1:
                return i
        return -1  # pragma: no cover - every deployment has points, so some eligible one is reached


class SmoothWeighted:
    """nginx's smooth weighted round robin (``ngx_http_upstream_get_peer``).

    Each pick adds every eligible deployment's weight to its running ``current``, picks the largest
    ``current`` (lowest index on ties) and takes the total eligible weight off the winner. With a fixed
    eligible set, every cycle of ``sum(weights)`` picks gives each deployment exactly its weight, spread
    out rather than in runs (weights 5, 1, 1 give a a b a c a a). Ineligible deployments are skipped and
    keep their ``current`` untouched.
    """

    __slots__ = ("_current", "_full", "_n", "_weights")

    def __init__(self, weights: list[int]) -> None:
        _check_weights(weights, "round-robin")
        self._weights = list(weights)
        self._n = len(weights)
        self._current = [0] * self._n
        self._full = _full(self._n)

    @property
    def n(self) -> int:
        return self._n

    def reset(self) -> None:
        """Start a fresh cycle."""
        self._current = [0] * self._n

    def pick(self, eligible: int = ALL) -> int:
        m = eligible & self._full
        if not m:
            return -1
        current = self._current
        weights = self._weights
        total = 0
        best = -1
        for i in range(self._n):
            if (m >> i) & 1:
                current[i] += weights[i]
                total += weights[i]
                if best < 0 or current[i] > current[best]:
                    best = i
        current[best] -= total
        return best


class LeastLatency:
    """Lowest latency first, from exponentially weighted moving averages.

    ``observe`` folds one response's time to first byte and total time into per-deployment EWMAs (the
    first observation is taken as is). The score is ``ttfb_weight * ttfb + (1 - ttfb_weight) * total``.
    ``pick`` sends to an eligible deployment that has never been observed first (the ``r``-th of them,
    so that concurrent first requests spread), else to the lowest score (lowest index on ties), except
    when ``r < explore``: then to one of the other eligible deployments, chosen by ``r``, so that one that
    was slow and has recovered is measured again.
    """

    __slots__ = ("_alpha", "_explore", "_n", "_score", "_seen", "_total", "_ttfb", "_ttfb_weight")

    def __init__(self, n: int, alpha: float = 0.3, explore: float = 0.05, ttfb_weight: float = 0.5) -> None:
        if n < 0:
            raise ValueError(f"n must be at least 0, got {n!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1], got {explore!r}")
        if not 0.0 <= ttfb_weight <= 1.0:
            raise ValueError(f"ttfb_weight must be in [0, 1], got {ttfb_weight!r}")
        self._n = n
        self._alpha = float(alpha)
        self._explore = float(explore)
        self._ttfb_weight = float(ttfb_weight)
        self._ttfb = [0.0] * n
        self._total = [0.0] * n
        self._score = [0.0] * n
        self._seen = [False] * n

    @property
    def n(self) -> int:
        return self._n

    @property
    def alpha(self) -> float:
        """Weight of the newest observation in the moving averages."""
        return self._alpha

    @property
    def explore(self) -> float:
        """Share of picks sent to a deployment other than the best."""
        return self._explore

    @property
    def ttfb_weight(self) -> float:
        """Weight of time to first byte (against total latency) in the score."""
        return self._ttfb_weight

    def observe(self, i: int, ttfb: float, total: float) -> None:
        """Fold in one response of deployment ``i`` (seconds, or any unit used consistently)."""
        _check_index(i, self._n)
        if not (math.isfinite(ttfb) and math.isfinite(total) and ttfb >= 0.0 and total >= 0.0):
            raise ValueError(f"latencies must be finite and non-negative, got {ttfb!r}, {total!r}")
        if self._seen[i]:
            a = self._alpha
            t = a * ttfb + (1.0 - a) * self._ttfb[i]
            tot = a * total + (1.0 - a) * self._total[i]
        else:
            t = float(ttfb)
            tot = float(total)
            self._seen[i] = True
        self._ttfb[i] = t
        self._total[i] = tot
        w = self._ttfb_weight
        self._score[i] = w * t + (1.0 - w) * tot

    def reset(self, i: int) -> None:
        """Forget deployment ``i``'s history, so that it is tried again first."""
        _check_index(i, self._n)
        self._seen[i] = False
        self._ttfb[i] = self._total[i] = self._score[i] = 0.0

    def observed(self, i: int) -> bool:
        _check_index(i, self._n)
        return self._seen[i]

    def score(self, i: int) -> float:
        """Deployment ``i``'s score; -1.0 while it has not been observed."""
        _check_index(i, self._n)
        return self._score[i] if self._seen[i] else -1.0

    def ttfb(self, i: int) -> float:
        """EWMA of deployment ``i``'s time to first byte; -1.0 while it has not been observed."""
        _check_index(i, self._n)
        return self._ttfb[i] if self._seen[i] else -1.0

    def total(self, i: int) -> float:
        """EWMA of deployment ``i``'s total latency; -1.0 while it has not been observed."""
        _check_index(i, self._n)
        return self._total[i] if self._seen[i] else -1.0

    def pick(self, eligible: int, r: float) -> int:
        """``r``: a uniform random float in [0, 1) from the caller."""
        _check_r(r)
        m = eligible & _full(self._n)
        if not m:
            return -1
        seen = self._seen
        unseen = 0
        count = 0
        best = -1
        score = self._score
        for i in range(self._n):
            if (m >> i) & 1:
                count += 1
                if not seen[i]:
                    unseen += 1
                elif best < 0 or score[i] < score[best]:
                    best = i
        if unseen:  # the k-th eligible unobserved deployment
            k = min(int(r * unseen), unseen - 1)
            for i in range(self._n):
                if (m >> i) & 1 and not seen[i]:
                    if k == 0:
                        return i
                    k -= 1
        if r < self._explore and count > 1:  # the k-th eligible deployment other than the best
            k = min(int(r / self._explore * (count - 1)), count - 2)
            for i in range(self._n):
                if (m >> i) & 1 and i != best:
                    if k == 0:
                        return i
                    k -= 1
        return best


class LeastBusy:
    """Fewest requests in flight first.

    The shell calls ``acquire(i)`` when it sends to deployment ``i`` and ``release(i)`` when the response
    has ended (a release below zero is ignored, so a double release cannot wedge a deployment). ``pick``
    scans from ``tie mod n``, wrapping, and takes the first deployment with the fewest in flight, so that
    a rotating ``tie`` spreads requests among equally busy deployments.
    """

    __slots__ = ("_busy", "_n")

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"n must be at least 0, got {n!r}")
        self._n = n
        self._busy = [0] * n

    @property
    def n(self) -> int:
        return self._n

    def acquire(self, i: int) -> None:
        _check_index(i, self._n)
        self._busy[i] += 1

    def release(self, i: int) -> None:
        _check_index(i, self._n)
        if self._busy[i] > 0:
            self._busy[i] -= 1

    def inflight(self, i: int) -> int:
        _check_index(i, self._n)
        return self._busy[i]

    def pick(self, eligible: int, tie: int = 0) -> int:
        n = self._n
        m = eligible & _full(n)
        if not m:
            return -1
        busy = self._busy
        start = tie % n
        best = -1
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            if (m >> i) & 1 and (best < 0 or busy[i] < busy[best]):
                best = i
        return best


class Split:
    """Canary and A/B splits: a random float maps to a variant by cumulative percentages.

    Variant ``i`` takes ``r`` in ``[c[i-1], c[i]) / total`` where ``c`` are the running sums of
    ``percents`` (which must sum to 100). When the chosen variant is not eligible, the next eligible one
    in order (wrapping) takes the request; variants at 0 % never take traffic, not even as a fallback.
    """

    __slots__ = ("_cum", "_n", "_percents")

    def __init__(self, percents: list[float]) -> None:
        cum: list[float] = []
        acc = 0.0
        for p in percents:
            if not (math.isfinite(p) and p >= 0.0):
                raise ValueError(f"split percentages must be finite and non-negative, got {p!r}")
            acc += p
            cum.append(acc)
        if not abs(acc - 100.0) <= 1e-6:
            raise ValueError(f"split percentages must sum to 100, got {acc!r}")
        self._percents = tuple(float(p) for p in percents)
        self._cum = cum
        self._n = len(percents)

    @property
    def n(self) -> int:
        return self._n

    @property
    def percents(self) -> tuple[float, ...]:
        return self._percents

    def pick(self, r: float, eligible: int = ALL) -> int:
        """``r``: a uniform random float in [0, 1) from the caller."""
        _check_r(r)
        n = self._n
        cum = self._cum
        x = r * cum[n - 1]
        chosen = -1
        for i in range(n):
            if x < cum[i]:
                chosen = i
                break
        if chosen < 0:  # pragma: no cover - only if r * total rounded up to total: the last with a share
            chosen = n - 1
            while self._percents[chosen] <= 0.0:
                chosen -= 1
        m = eligible & _full(n)
        for k in range(n):
            i = chosen + k
            if i >= n:
                i -= n
            if (m >> i) & 1 and self._percents[i] > 0.0:
                return i
        return -1


def cheapest(costs: list[float], context_limits: list[int], need_tokens: int, eligible: int = ALL) -> int:
    """The eligible deployment with the lowest cost whose context limit is at least ``need_tokens``.

    Ties go to the lower index; -1 when no eligible deployment fits.
    """
    n = len(costs)
    if len(context_limits) != n:
        raise ValueError(f"{n} costs but {len(context_limits)} context limits")
    m = eligible & _full(n)
    best = -1
    best_cost = 0.0
    for i in range(n):
        if (m >> i) & 1 and context_limits[i] >= need_tokens:
            c = costs[i]
            if best < 0 or c < best_cost:
                best = i
                best_cost = c
    return best


class BreakerCore:
    """The per-request part of a deployment's circuit breaker: a success while it is closed, which is
    how nearly every routed request ends. ``gateway.routing.breaker.Breaker`` subclasses it and sets
    every field in its ``__init__``: ``state`` (the breaker's state), ``_closed`` (the closed state),
    ``_consecutive`` (failures in a row), ``_counting`` (the error-ratio window is on) and ``_window``
    (the window: ``lo <= now < hi`` is its current bucket ``k``; ``ok`` counts successes per bucket;
    ``add(now, failed)`` moves to another bucket).
    """

    __slots__ = ("_closed", "_consecutive", "_counting", "_window", "state")

    state: Any
    _closed: Any
    _consecutive: int
    _counting: bool
    _window: Any

    def success_closed(self, now: float) -> bool:
        """Count a success if the breaker is closed (it stays closed: no change); False if it is not
        (nothing done: the caller runs the full ``on_success``)."""
        if self.state is not self._closed:
            return False
        self._consecutive = 0
        if self._counting:
            w = self._window
            if w.lo <= now < w.hi:
                w.ok[w.k] += 1
            else:
                w.add(now, False)
        return True


#: strategy codes of ``RouterCore._strategy``
WEIGHTED, CONSISTENT_HASH, LEAST_LATENCY, LEAST_BUSY, SPLIT, COST = range(6)
#: the code of each strategy by its config name
STRATEGIES = {
    "weighted": WEIGHTED, "consistent_hash": CONSISTENT_HASH, "least_latency": LEAST_LATENCY,
    "least_busy": LEAST_BUSY, "split": SPLIT, "cost": COST,
}


class RequestInfo:
    """What routing needs to know of a request. ``tokens``: the estimate of prompt + completion tokens
    (context-window fit, tpm); ``header``: looks up a request header by lower-case name (``hash_on =
    "header:..."``); ``residency``: the caller's data-residency constraint
    (``gateway.routing.residency.Residency``, interned), which restricts every attempt to the deployments
    it matches, or None."""

    __slots__ = ("header", "key_id", "residency", "tokens", "user")

    def __init__(
        self,
        user: str | None = None,
        key_id: str | None = None,
        header: Callable[[bytes], bytes | None] | None = None,
        tokens: int = 0,
        residency: Any = None,
    ) -> None:
        self.user = user
        self.key_id = key_id
        self.header = header
        self.tokens = tokens
        self.residency = residency


#: the request facts of a model whose routing reads none (``RouterCore.info``)
_NO_INFO = RequestInfo()


class RouterCore:
    """The per-request part of a model's router: the strategy's pick, the first attempt's pick, its
    in-flight count and the record of its success. ``gateway.routing.router.Router`` subclasses it and
    sets every field in its ``__init__``; everything else (plans, retries, fallbacks, failures, breaker
    changes) stays there.

    Fields (the subclass's):

    - ``_strategy``: one of the codes above, with its picker: ``_rr`` (``SmoothWeighted``, every
      strategy has one: the weighted spread), ``_ring`` (``HashRing``) with ``_hash_kind`` (0 the
      request's ``user``, 1 its key id, 2 the header ``_hash_header``), ``_ll`` (``LeastLatency``),
      ``_lb`` (``LeastBusy``) with the rotating ``_tie``, ``_split`` (``Split``), ``_costs`` (USD per
      million tokens) with ``_windows`` (context windows); the pickers a strategy does not use are None.
    - ``_recheck`` (no breaker or limit block may lift before then), ``_blocked`` and ``_gated`` (masks:
      kept out outright; asked one by one), ``_min_window`` (the smallest context window), ``_needs``
      (what ``info`` reads: 0 nothing, 1 the token estimate, 2 that and the hash keys), ``_breakers``
      (one per deployment: ``BreakerCore`` with ``on_success(now) -> change | None``), ``_rpm`` and ``_tpm``
      (per deployment, its upstream limit's ``Bucket`` or None), ``_allowed`` (the memo of ``allowed``:
      residency -> mask of the deployments it matches).

    Methods it calls on its subclass: ``_choose``, ``_eligible``, ``_changed``, ``allowed``.
    """

    __slots__ = (
        "_allowed", "_blocked", "_breakers", "_costs", "_gated", "_hash_header", "_hash_kind", "_lb", "_ll",
        "_min_window", "_needs", "_recheck", "_ring", "_rpm", "_rr", "_split", "_strategy", "_tie", "_tpm",
        "_windows",
    )

    _strategy: int
    _rr: SmoothWeighted
    _ring: HashRing | None
    _hash_kind: int
    _hash_header: bytes
    _ll: LeastLatency | None
    _lb: LeastBusy | None
    _tie: int
    _split: Split | None
    _costs: list[float]
    _windows: list[int]
    _recheck: float
    _blocked: int
    _gated: int
    _min_window: int
    _needs: int
    _breakers: list[Any]
    _rpm: list[Any]
    _tpm: list[Any]
    _allowed: dict[Any, int]

    def info(self, fields: Any, key: Any, header: Any, length: int) -> RequestInfo:
        """What ``pick`` needs of a request: its decoded ``fields`` (``user``, ``max_tokens``), its API
        ``key`` (``id``, ``residency``) or None, its header lookup and its body's ``length``. Only what
        this model's routing reads, and the key's residency: one shared, empty ``RequestInfo`` when that
        is nothing."""
        needs = self._needs
        residency = getattr(key, "residency", None)
        if not needs:
            return _NO_INFO if residency is None else RequestInfo(None, None, None, 0, residency)
        max_tokens = getattr(fields, "max_tokens", None)
        tokens = length // 4 + (max_tokens if isinstance(max_tokens, int) else 0)
        if needs == 1:
            return RequestInfo(None, None, None, tokens, residency)
        return RequestInfo(getattr(fields, "user", None), getattr(key, "id", None), header, tokens, residency)

    def pick_one(self, mask: int, info: RequestInfo, rnd: Callable[[], float]) -> int:
        """The strategy's pick among ``mask`` (-1: none), nothing else considered."""
        strategy = self._strategy
        if strategy == WEIGHTED:
            return self._rr.pick(mask)
        if strategy == CONSISTENT_HASH:
            kind = self._hash_kind
            key: str | bytes | None
            if kind == 0:
                key = info.user
            elif kind == 1:
                key = info.key_id
            else:
                header = info.header
                key = header(self._hash_header) if header is not None else None
            if not key:  # no key: no affinity to keep, spread by weight
                return self._rr.pick(mask)
            assert self._ring is not None
            return self._ring.pick(key, mask)
        if strategy == LEAST_LATENCY:
            assert self._ll is not None
            return self._ll.pick(mask, rnd())
        if strategy == LEAST_BUSY:
            assert self._lb is not None
            self._tie += 1
            return self._lb.pick(mask, self._tie)
        if strategy == SPLIT:
            assert self._split is not None
            return self._split.pick(rnd(), mask)
        return cheapest(self._costs, self._windows, info.tokens, mask)

    def pick(self, info: RequestInfo, now: float, rnd: Callable[[], float]) -> int:
        """The deployment a request's first attempt goes to, or -1 when none is eligible now: the choice
        the router's plan would make, without building it. A deployment behind a gate (a half-open probe,
        an upstream rpm/tpm) is admitted here, so the caller must then send to it."""
        tokens = info.tokens
        residency = info.residency
        if now < self._recheck and tokens <= self._min_window:
            # the usual case: no block may have lifted, every window fits
            mask = ~self._blocked
            if residency is not None:  # only the deployments the caller's residency allows
                allowed = self._allowed.get(residency)
                mask &= allowed if allowed is not None else self.allowed(residency)  # type: ignore[attr-defined]
            gated = self._gated
            if not gated:  # nobody to ask one by one
                return self.pick_one(mask, info, rnd)
            while True:  # ``Router._choose``: ask the gated ones one by one
                i = self.pick_one(mask, info, rnd)
                if i < 0 or not (gated >> i) & 1 or self.admit(i, now, tokens):
                    return i
                mask &= ~(1 << i)
        eligible = self._eligible(now, tokens)  # type: ignore[attr-defined]
        if residency is not None:
            eligible &= self.allowed(residency)  # type: ignore[attr-defined]
        return self._choose(eligible, info, rnd, now)  # type: ignore[attr-defined,no-any-return]

    def admit(self, i: int, now: float, tokens: int) -> bool:
        """May deployment ``i`` take a request of ``tokens`` now? Its upstream rpm and tpm buckets must
        have room (a request larger than the per-worker tpm burst still goes when the bucket has room:
        it is charged in full, into debt, so large requests are not starved), and its breaker must admit
        it (a half-open one takes a probe slot). If so, the buckets are charged."""
        rpm = self._rpm[i]
        if rpm is not None and rpm.retry_after(now, 1.0) > 0.0:
            return False
        tpm = self._tpm[i]
        if tpm is not None and tpm.retry_after(now, min(float(tokens), tpm.burst)) > 0.0:
            return False
        b = self._breakers[i]
        if b.state is not b._closed and not b.admit(now):
            return False
        if rpm is not None:
            rpm.take(now, 1.0)
        if tpm is not None and tokens > 0:
            tpm.force(now, float(tokens))
        return True

    def acquire(self, i: int) -> None:
        """Count a request in flight on deployment ``i`` (``least_busy``); ``ok`` or ``record``
        releases it."""
        lb = self._lb
        if lb is not None:
            lb.acquire(i)

    def release(self, i: int) -> None:
        """Undo ``acquire`` for a request that was not sent after all."""
        lb = self._lb
        if lb is not None:
            lb.release(i)

    def ok(self, deployment: Any, elapsed: float, now: float) -> None:
        """A whole, successful answer from ``deployment`` (``index``, ``stats``) in ``elapsed`` seconds:
        the in-flight count released, the breaker's success, the latency observed."""
        i = deployment.index
        deployment.stats.ok += 1
        lb = self._lb
        if lb is not None:
            lb.release(i)
        b = self._breakers[i]
        if not b.success_closed(now):
            change = b.on_success(now)
            if change is not None:
                self._changed(deployment, change)  # type: ignore[attr-defined]
        ll = self._ll
        if ll is not None:
            ll.observe(i, elapsed, elapsed)
