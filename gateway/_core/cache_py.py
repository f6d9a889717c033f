"""The response cache's in-worker tier: an LRU with a time to live per entry and a byte bound.

The compiled module ``_cache`` (``_cache.pyx``) implements the same API; this twin is its reference and
the tests drive both with the same calls. Sans-IO: keys and values are bytes, the caller passes the
current time (``now``, seconds on any monotonic clock) to every call, nothing here reads a clock.

Theory of operation. Entries sit in one recency order (most recently used last). A lookup that finds a
live entry moves it to the end; one that finds an expired entry drops it. A store that would take the
total past ``max_bytes`` evicts from the front (least recently used) until it fits; expired entries are
dropped as they are met, never searched for (an expired entry costs its bytes until it is met or
evicted, and it is counted in ``size``, so the bound holds whatever the clock does).

    call                      | live entry found           | expired or missing
    --------------------------+----------------------------+------------------------------------------
    get(key, now)             | moved to the end; returned | dropped (if expired); None
    put(key, value, now, ttl) | replaced                   | stored at the end; LRU evicted to fit
    delete(key)               | dropped; True              | False
    purge(match)              | every entry whose tag matches dropped; their count returned

An entry's cost is ``len(key) + len(value) + ENTRY_OVERHEAD`` (the bookkeeping objects' size, so that a
flood of tiny entries is bounded too). A value larger than ``max_entry_bytes`` (or the whole bound) is
refused, not stored. ``tag`` is any object the caller attaches (the cache stores who and what an entry
is for: tenant, key, model), read back only by ``purge``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["ENTRY_OVERHEAD", "LRUCache"]

#: the bytes each entry is charged beyond its key and value (its node, tuple and dict slot, roughly)
ENTRY_OVERHEAD = 160


class LRUCache:
    """Least recently used eviction, a time to live per entry, and a bound on the bytes held."""

    __slots__ = ("_entries", "evictions", "expirations", "max_bytes", "max_entry_bytes", "size")

    def __init__(self, max_bytes: int, max_entry_bytes: int = 0) -> None:
        if max_bytes < 0 or max_entry_bytes < 0:
            raise ValueError("the byte bounds must not be negative")
        self.max_bytes = max_bytes
        #: the largest value stored (0: only the whole bound applies)
        self.max_entry_bytes = max_entry_bytes
        self.size = 0
        self.evictions = 0
        self.expirations = 0
        # key -> (value, stored_at, expires_at, tag, cost)
        self._entries: OrderedDict[bytes, tuple[bytes, float, float, Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> tuple[bytes, float] | None:
        """The live value stored under ``key`` and when it was stored, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[2]:
            self._drop(key, entry[4])
            self.expirations += 1
            return None
        self._entries.move_to_end(key)
        return entry[0], entry[1]

    def put(self, key: bytes, value: bytes, now: float, ttl: float, tag: Any = None) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds; False (nothing stored) when it is too large
        or ``ttl`` is not positive. A previous value under ``key`` is replaced either way."""
        old = self._entries.get(key)
        if old is not None:
            self._drop(key, old[4])
        cost = len(key) + len(value) + ENTRY_OVERHEAD
        if ttl <= 0.0 or cost > self.max_bytes or (
            self.max_entry_bytes and len(value) > self.max_entry_bytes
        ):
            return False
        limit = self.max_bytes - cost
        entries = self._entries
        while self.size > limit:
            _, first = entries.popitem(last=False)
            self.size -= first[4]
            if now >= first[2]:
                self.expirations += 1
            else:
                self.evictions += 1
        entries[key] = (value, now, now + ttl, tag, cost)
        self.size += cost
        return True

    def delete(self, key: bytes) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._drop(key, entry[4])
        return True

    def purge(self, match: Callable[[Any], bool]) -> int:
        """Drop every entry whose tag ``match`` accepts; returns how many were dropped."""
        doomed = [(k, e[4]) for k, e in self._entries.items() if match(e[3])]
        for key, cost in doomed:
            self._drop(key, cost)
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0

    def resize(self, max_bytes: int, max_entry_bytes: int, now: float) -> None:
        """New bounds (a reload): least recently used entries are evicted until the total fits."""
        if max_bytes < 0 or max_entry_bytes < 0:
            raise ValueError("the byte bounds must not be negative")
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        entries = self._entries
        while self.size > max_bytes:
            _, first = entries.popitem(last=False)
            self.size -= first[4]
            if now >= first[2]:
                self.expirations += 1
            else:
                self.evictions += 1

    def _drop(self, key: bytes, cost: int) -> None:
        del self._entries[key]
        self.size -= cost
