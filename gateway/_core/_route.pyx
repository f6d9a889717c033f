# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled deployment selection (twin and reference: route_py.py; same API, same behaviour).

Why compiled: one pick runs for every routed request, and again for every retry and fallback; the
pickers are loops over small typed arrays, which is where typed cdef fields pay. The eligibility mask
stays a Python int (bit i = deployment i; see the twin's docstring); for up to 64 deployments it is
read as one machine word, beyond that as little-endian bytes.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport isfinite
from libc.stdint cimport uint64_t

from gateway._core._limit cimport Bucket

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

ALL = -1

cdef uint64_t _FNV_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t _FNV_PRIME = 0x100000001B3ULL
cdef uint64_t _GAMMA = 0x9E3779B97F4A7C15ULL
cdef long long _MAX_WEIGHT = 2147483647
cdef long long _MAX_POINTS = 1 << 20


cdef uint64_t mix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef uint64_t fnv1a64(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = _FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ s[i]) * _FNV_PRIME
    return h


cdef inline uint64_t _key_hash(object key) except? 0:
    cdef Py_ssize_t n
    cdef const char* s
    if isinstance(key, str):
        s = PyUnicode_AsUTF8AndSize(key, &n)
    elif isinstance(key, bytes):
        s = PyBytes_AS_STRING(key)
        n = PyBytes_GET_SIZE(key)
    else:
        raise TypeError(f"a routing key must be bytes or str, not {type(key).__name__}")
    return mix64(fnv1a64(<const unsigned char*>s, n))


def hash64(key):
    return _key_hash(key)


cdef inline bytes _bits(object m, Py_ssize_t n, uint64_t* word):
    """Load ``m`` (already masked to ``n`` bits): into ``word`` when n <= 64, else as returned bytes."""
    if n <= 64:
        word[0] = <uint64_t>m
        return None
    return m.to_bytes((n + 7) >> 3, "little")


cdef inline bint _on(uint64_t word, const unsigned char* big, Py_ssize_t i) noexcept nogil:
    if big == NULL:
        return (word >> i) & 1
    return (big[i >> 3] >> (i & 7)) & 1


cdef inline const unsigned char* _ptr(bytes b) noexcept:
    if b is None:
        return NULL
    return <const unsigned char*>PyBytes_AS_STRING(b)


cdef inline void* _alloc(Py_ssize_t count, size_t size) except NULL:
    cdef void* p = PyMem_Malloc((count if count > 0 else 1) * size)
    if p == NULL:
        raise MemoryError()
    return p


cdef inline int _check_index(Py_ssize_t i, Py_ssize_t n) except -1:
    if i < 0 or i >= n:
        raise IndexError(f"deployment index {i} out of range for {n} deployments")
    return 0


cdef inline int _check_r(double r) except -1:
    if not (0.0 <= r < 1.0):
        raise ValueError(f"r must be a float in [0, 1), got {r!r}")
    return 0


cdef int _check_weights(list weights, str what) except -1:
    for w in weights:
        if not isinstance(w, int):
            raise TypeError(f"{what} weights must be integers, not {type(w).__name__}")
        if not 1 <= w <= _MAX_WEIGHT:
            raise ValueError(f"{what} weights must be integers from 1 to {_MAX_WEIGHT}, got {w!r}")
    return 0


cdef class HashRing:
    """Consistent hashing with virtual nodes (see the twin)."""

    def __init__(self, list names, list weights=None, Py_ssize_t vnodes=160):
        cdef Py_ssize_t n = len(names), i, j, k
        cdef uint64_t base
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
        cdef list points = []
        for i in range(n):
            name = names[i]
            if not isinstance(name, str):
                raise TypeError(f"deployment names must be str, not {type(name).__name__}")
            base = _key_hash(name)
            for j in range(vnodes * <Py_ssize_t>weights[i]):
                points.append((mix64(base + <uint64_t>(j + 1) * _GAMMA), name, i))
        points.sort()
        cdef Py_ssize_t size = len(points)
        PyMem_Free(self._hashes)
        PyMem_Free(self._owners)
        self._hashes = NULL
        self._owners = NULL
        self._hashes = <uint64_t*>_alloc(size, sizeof(uint64_t))
        self._owners = <Py_ssize_t*>_alloc(size, sizeof(Py_ssize_t))
        for k in range(size):
            p = points[k]
            self._hashes[k] = p[0]
            self._owners[k] = p[2]
        self._size = size
        self._names = tuple(names)
        self._n = n
        self._full = (<object>1 << n) - 1

    def __dealloc__(self):
        PyMem_Free(self._hashes)
        PyMem_Free(self._owners)

    @property
    def n(self):
        return self._n

    @property
    def names(self):
        return self._names

    @property
    def points(self):
        return self._size

    cpdef Py_ssize_t pick(self, object key, object eligible=-1) except -2:
        cdef uint64_t h = _key_hash(key)
        cdef object m = eligible & self._full
        if not m:
            return -1
        cdef uint64_t word = 0
        cdef bytes bb = _bits(m, self._n, &word)
        cdef const unsigned char* big = _ptr(bb)
        cdef uint64_t* hashes = self._hashes
        cdef Py_ssize_t size = self._size, lo = 0, hi = size, mid, k, i
        while lo < hi:
            mid = (lo + hi) >> 1
            if hashes[mid] < h:
                lo = mid + 1
            else:
                hi = mid
        for k in range(size):
            i = self._owners[(lo + k) % size]
            if _on(word, big, i):
                return i
        return -1


cdef class SmoothWeighted:
    """nginx's smooth weighted round robin (see the twin)."""

    def __init__(self, list weights):
        cdef Py_ssize_t n = len(weights), i
        _check_weights(weights, "round-robin")
        PyMem_Free(self._weights)
        PyMem_Free(self._current)
        self._weights = NULL
        self._current = NULL
        self._weights = <long long*>_alloc(n, sizeof(long long))
        self._current = <long long*>_alloc(n, sizeof(long long))
        for i in range(n):
            self._weights[i] = weights[i]
            self._current[i] = 0
        self._n = n
        self._full = (<object>1 << n) - 1

    def __dealloc__(self):
        PyMem_Free(self._weights)
        PyMem_Free(self._current)

    @property
    def n(self):
        return self._n

    cpdef void reset(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self._n):
            self._current[i] = 0

    cpdef Py_ssize_t pick(self, object eligible=-1) except -2:
        cdef object m = eligible & self._full
        if not m:
            return -1
        cdef uint64_t word = 0
        cdef bytes bb = _bits(m, self._n, &word)
        cdef const unsigned char* big = _ptr(bb)
        cdef long long* current = self._current
        cdef long long* weights = self._weights
        cdef long long total = 0
        cdef Py_ssize_t i, best = -1
        for i in range(self._n):
            if _on(word, big, i):
                current[i] += weights[i]
                total += weights[i]
                if best < 0 or current[i] > current[best]:
                    best = i
        current[best] -= total
        return best


cdef class LeastLatency:
    """Lowest EWMA latency first, with exploration (see the twin)."""

    def __init__(self, Py_ssize_t n, double alpha=0.3, double explore=0.05, double ttfb_weight=0.5):
        cdef Py_ssize_t i
        if n < 0:
            raise ValueError(f"n must be at least 0, got {n!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1], got {explore!r}")
        if not 0.0 <= ttfb_weight <= 1.0:
            raise ValueError(f"ttfb_weight must be in [0, 1], got {ttfb_weight!r}")
        PyMem_Free(self._ttfb)
        PyMem_Free(self._total)
        PyMem_Free(self._score)
        PyMem_Free(self._seen)
        self._ttfb = self._total = self._score = NULL
        self._seen = NULL
        self._ttfb = <double*>_alloc(n, sizeof(double))
        self._total = <double*>_alloc(n, sizeof(double))
        self._score = <double*>_alloc(n, sizeof(double))
        self._seen = <unsigned char*>_alloc(n, sizeof(unsigned char))
        for i in range(n):
            self._ttfb[i] = self._total[i] = self._score[i] = 0.0
            self._seen[i] = 0
        self._n = n
        self._alpha = alpha
        self._explore = explore
        self._ttfb_weight = ttfb_weight
        self._full = (<object>1 << n) - 1

    def __dealloc__(self):
        PyMem_Free(self._ttfb)
        PyMem_Free(self._total)
        PyMem_Free(self._score)
        PyMem_Free(self._seen)

    @property
    def n(self):
        return self._n

    @property
    def alpha(self):
        return self._alpha

    @property
    def explore(self):
        return self._explore

    @property
    def ttfb_weight(self):
        return self._ttfb_weight

    cpdef void observe(self, Py_ssize_t i, double ttfb, double total) except *:
        cdef double a, t, tot, w
        _check_index(i, self._n)
        if not (isfinite(ttfb) and isfinite(total) and ttfb >= 0.0 and total >= 0.0):
            raise ValueError(f"latencies must be finite and non-negative, got {ttfb!r}, {total!r}")
        if self._seen[i]:
            a = self._alpha
            t = a * ttfb + (1.0 - a) * self._ttfb[i]
            tot = a * total + (1.0 - a) * self._total[i]
        else:
            t = ttfb
            tot = total
            self._seen[i] = 1
        self._ttfb[i] = t
        self._total[i] = tot
        w = self._ttfb_weight
        self._score[i] = w * t + (1.0 - w) * tot

    def reset(self, Py_ssize_t i):
        _check_index(i, self._n)
        self._seen[i] = 0
        self._ttfb[i] = self._total[i] = self._score[i] = 0.0

    def observed(self, Py_ssize_t i):
        _check_index(i, self._n)
        return self._seen[i] != 0

    def score(self, Py_ssize_t i):
        _check_index(i, self._n)
        return self._score[i] if self._seen[i] else -1.0

    def ttfb(self, Py_ssize_t i):
        _check_index(i, self._n)
        return self._ttfb[i] if self._seen[i] else -1.0

    def total(self, Py_ssize_t i):
        _check_index(i, self._n)
        return self._total[i] if self._seen[i] else -1.0

    cpdef Py_ssize_t pick(self, object eligible, double r) except -2:
        _check_r(r)
        cdef object m = eligible & self._full
        if not m:
            return -1
        cdef uint64_t word = 0
        cdef bytes bb = _bits(m, self._n, &word)
        cdef const unsigned char* big = _ptr(bb)
        cdef unsigned char* seen = self._seen
        cdef double* score = self._score
        cdef Py_ssize_t i, k, unseen = 0, count = 0, best = -1
        for i in range(self._n):
            if _on(word, big, i):
                count += 1
                if not seen[i]:
                    unseen += 1
                elif best < 0 or score[i] < score[best]:
                    best = i
        if unseen:
            k = <Py_ssize_t>(r * unseen)
            if k > unseen - 1:
                k = unseen - 1
            for i in range(self._n):
                if _on(word, big, i) and not seen[i]:
                    if k == 0:
                        return i
                    k -= 1
        if r < self._explore and count > 1:
            k = <Py_ssize_t>(r / self._explore * (count - 1))
            if k > count - 2:
                k = count - 2
            for i in range(self._n):
                if _on(word, big, i) and i != best:
                    if k == 0:
                        return i
                    k -= 1
        return best


cdef class LeastBusy:
    """Fewest requests in flight first (see the twin)."""

    def __init__(self, Py_ssize_t n):
        cdef Py_ssize_t i
        if n < 0:
            raise ValueError(f"n must be at least 0, got {n!r}")
        PyMem_Free(self._busy)
        self._busy = NULL
        self._busy = <long long*>_alloc(n, sizeof(long long))
        for i in range(n):
            self._busy[i] = 0
        self._n = n
        self._full = (<object>1 << n) - 1

    def __dealloc__(self):
        PyMem_Free(self._busy)

    @property
    def n(self):
        return self._n

    cpdef void acquire(self, Py_ssize_t i) except *:
        _check_index(i, self._n)
        self._busy[i] += 1

    cpdef void release(self, Py_ssize_t i) except *:
        _check_index(i, self._n)
        if self._busy[i] > 0:
            self._busy[i] -= 1

    def inflight(self, Py_ssize_t i):
        _check_index(i, self._n)
        return self._busy[i]

    cpdef Py_ssize_t pick(self, object eligible, long long tie=0) except -2:
        cdef Py_ssize_t n = self._n
        cdef object m = eligible & self._full
        if not m:
            return -1
        cdef uint64_t word = 0
        cdef bytes bb = _bits(m, n, &word)
        cdef const unsigned char* big = _ptr(bb)
        cdef long long* busy = self._busy
        cdef Py_ssize_t start = <Py_ssize_t>(tie % n), k, i, best = -1
        if start < 0:
            start += n
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            if _on(word, big, i) and (best < 0 or busy[i] < busy[best]):
                best = i
        return best


cdef class Split:
    """Canary and A/B splits by cumulative percentages (see the twin)."""

    def __init__(self, list percents):
        cdef Py_ssize_t n = len(percents), i
        cdef double acc = 0.0, p
        for v in percents:
            p = v
            if not (isfinite(p) and p >= 0.0):
                raise ValueError(f"split percentages must be finite and non-negative, got {v!r}")
            acc += p
        if not abs(acc - 100.0) <= 1e-6:
            raise ValueError(f"split percentages must sum to 100, got {acc!r}")
        PyMem_Free(self._cum)
        PyMem_Free(self._percents)
        self._cum = self._percents = NULL
        self._cum = <double*>_alloc(n, sizeof(double))
        self._percents = <double*>_alloc(n, sizeof(double))
        acc = 0.0
        for i in range(n):
            p = percents[i]
            acc += p
            self._cum[i] = acc
            self._percents[i] = p
        self._n = n
        self._full = (<object>1 << n) - 1

    def __dealloc__(self):
        PyMem_Free(self._cum)
        PyMem_Free(self._percents)

    @property
    def n(self):
        return self._n

    @property
    def percents(self):
        return tuple([self._percents[i] for i in range(self._n)])

    cpdef Py_ssize_t pick(self, double r, object eligible=-1) except -2:
        _check_r(r)
        cdef Py_ssize_t n = self._n, i, k, chosen = -1
        cdef double* cum = self._cum
        cdef double x = r * cum[n - 1]
        for i in range(n):
            if x < cum[i]:
                chosen = i
                break
        if chosen < 0:
            chosen = n - 1
            while self._percents[chosen] <= 0.0:
                chosen -= 1
        cdef object m = eligible & self._full
        if not m:
            return -1
        cdef uint64_t word = 0
        cdef bytes bb = _bits(m, n, &word)
        cdef const unsigned char* big = _ptr(bb)
        for k in range(n):
            i = chosen + k
            if i >= n:
                i -= n
            if _on(word, big, i) and self._percents[i] > 0.0:
                return i
        return -1


def cheapest(list costs, list context_limits, long long need_tokens, object eligible=-1):
    cdef Py_ssize_t n = len(costs), i, best = -1
    cdef double c, best_cost = 0.0
    if len(context_limits) != n:
        raise ValueError(f"{n} costs but {len(context_limits)} context limits")
    cdef object m = eligible & ((<object>1 << n) - 1)
    if not m:
        return -1
    cdef uint64_t word = 0
    cdef bytes bb = _bits(m, n, &word)
    cdef const unsigned char* big = _ptr(bb)
    for i in range(n):
        if _on(word, big, i) and <long long>context_limits[i] >= need_tokens:
            c = costs[i]
            if best < 0 or c < best_cost:
                best = i
                best_cost = c
    return best


cdef class BreakerCore:
    """The per-request part of a deployment's circuit breaker (see the twin).

    Why compiled: ``RouterCore.ok`` counts every routed request's success here with C calls instead of
    a Python method's frame."""

    def success_closed(self, double now):
        return self._success_closed(now)

    cdef bint _success_closed(self, double now) except -1:
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


# strategy codes of RouterCore._strategy (the twin's WEIGHTED ... COST)
DEF _WEIGHTED = 0
DEF _CONSISTENT_HASH = 1
DEF _LEAST_LATENCY = 2
DEF _LEAST_BUSY = 3
DEF _SPLIT = 4
DEF _COST = 5

STRATEGIES = {
    "weighted": _WEIGHTED, "consistent_hash": _CONSISTENT_HASH, "least_latency": _LEAST_LATENCY,
    "least_busy": _LEAST_BUSY, "split": _SPLIT, "cost": _COST,
}


cdef class RequestInfo:
    """What routing needs to know of a request (see the twin)."""

    def __init__(self, user=None, key_id=None, header=None, tokens=0, residency=None):
        self.user = user
        self.key_id = key_id
        self.header = header
        self.tokens = tokens
        self.residency = residency


cdef RequestInfo _NO_INFO = RequestInfo()


cdef class RouterCore:
    """The per-request part of a model's router (see the twin for the fields and the contract).

    Why compiled: a routed model's request runs ``info``, ``pick``, ``acquire`` and ``ok`` once each on
    its first attempt, and the strategy's pick again for every retry and fallback; as C methods calling
    the typed pickers directly they cost a fraction of the Python calls they replace
    (``python -m bench.routing``)."""

    cpdef RequestInfo info(self, object fields, object key, object header, Py_ssize_t length):
        cdef int needs = self._needs
        residency = getattr(key, "residency", None)
        if needs == 0:
            return _NO_INFO if residency is None else RequestInfo(None, None, None, 0, residency)
        max_tokens = getattr(fields, "max_tokens", None)
        tokens = length // 4 + (max_tokens if isinstance(max_tokens, int) else 0)
        if needs == 1:
            return RequestInfo(None, None, None, tokens, residency)
        return RequestInfo(getattr(fields, "user", None), getattr(key, "id", None), header, tokens, residency)

    def pick_one(self, object mask, RequestInfo info, object rnd):
        return self._pick_one(mask, info, rnd)

    cdef Py_ssize_t _pick_one(self, object mask, RequestInfo info, object rnd) except -2:
        # cdef, not cpdef: a cpdef called on an instance of a Python subclass looks for an override
        cdef int strategy = self._strategy
        if strategy == _WEIGHTED:
            return self._rr.pick(mask)
        if strategy == _CONSISTENT_HASH:
            if self._hash_kind == 0:
                key = info.user
            elif self._hash_kind == 1:
                key = info.key_id
            else:
                header = info.header
                key = header(self._hash_header) if header is not None else None
            if not key:
                return self._rr.pick(mask)
            return self._ring.pick(key, mask)
        if strategy == _LEAST_LATENCY:
            return self._ll.pick(mask, rnd())
        if strategy == _LEAST_BUSY:
            self._tie += 1
            return self._lb.pick(mask, self._tie)
        if strategy == _SPLIT:
            return self._split.pick(rnd(), mask)
        return cheapest(self._costs, self._windows, info.tokens, mask)

    cpdef Py_ssize_t pick(self, RequestInfo info, double now, object rnd) except -2:
        cdef Py_ssize_t i
        tokens = info.tokens
        residency = info.residency
        if now < self._recheck and tokens <= self._min_window:
            mask = ~self._blocked
            if residency is not None:  # only the deployments the caller's residency allows
                allowed = self._allowed.get(residency)
                mask &= allowed if allowed is not None else self.allowed(residency)
            gated = self._gated
            if not gated:
                return self._pick_one(mask, info, rnd)
            while True:
                i = self._pick_one(mask, info, rnd)
                if i < 0 or not (gated >> i) & 1 or self._admit(i, now, tokens):
                    return i
                mask &= ~(<object>1 << i)
        eligible = self._eligible(now, tokens)
        if residency is not None:
            eligible &= self.allowed(residency)
        return self._choose(eligible, info, rnd, now)

    def admit(self, Py_ssize_t i, double now, object tokens):
        return self._admit(i, now, tokens)

    cdef bint _admit(self, Py_ssize_t i, double now, object tokens) except -1:
        # PERF: typed buckets, C calls; a compiled core always has the compiled buckets (it cimports
        # their module), so any other object here is a TypeError, not a silent slow path
        cdef Bucket rpm = self._rpm[i]
        cdef Bucket tpm = self._tpm[i]
        cdef double need = 0.0
        if rpm is not None and rpm.retry_after(now, 1.0) > 0.0:
            return False
        if tpm is not None:
            need = float(tokens)
            if tpm.retry_after(now, min(need, tpm.burst)) > 0.0:
                return False
        b = self._breakers[i]
        if (<BreakerCore?>b).state is not (<BreakerCore>b)._closed and not b.admit(now):
            return False
        if rpm is not None:
            rpm.take(now, 1.0)
        if tpm is not None and tokens > 0:
            tpm.force(now, need)
        return True

    cpdef void acquire(self, Py_ssize_t i) except *:
        if self._lb is not None:
            self._lb.acquire(i)

    cpdef void release(self, Py_ssize_t i) except *:
        if self._lb is not None:
            self._lb.release(i)

    cpdef void ok(self, object deployment, double elapsed, double now) except *:
        cdef Py_ssize_t i = deployment.index
        deployment.stats.ok += 1
        if self._lb is not None:
            self._lb.release(i)
        b = self._breakers[i]
        if not (<BreakerCore?>b)._success_closed(now):
            change = b.on_success(now)
            if change is not None:
                self._changed(deployment, change)
        if self._ll is not None:
            self._ll.observe(i, elapsed, elapsed)
