"""The semantic tier's index: normalised vectors, searched by cosine similarity (sans-IO).

Theory of operation. Each vector answers only requests that could share its answer: it sits in a
*partition*, a 32-byte digest of the namespace (the exact tier's ``scope``: tenant, key or global), the
model, the embeddings model and every request field other than the messages (``gateway.cache.semantic``).
A lookup searches one partition, so a tenant never sees another's neighbour and a request never gets
the answer of one with other sampling parameters, tools or response format.

A search is brute force: one matrix-vector product over the partition's rows (float32, unit length, so
the dot product is the cosine), expired rows masked out, the best row returned with its similarity. At
the tier's bound (``max_entries`` per model and worker: thousands of rows of a few hundred dimensions)
that is tens of microseconds with numpy (``bench/cache_semantic.py`` measures it), well below the
embeddings call every lookup makes anyway; an approximate index would only pay past ~10^5 rows.

    operation | what happens
    ----------+----------------------------------------------------------------------------------------
    add       | a row appended to its partition (or replaced: the same entry again); its group (the
              | model) past ``max_entries`` drops its oldest rows; a vector of another size than the
              | partition's replaces the partition (the embeddings model changed its dimensions)
    search    | the best live row of the partition: (entry key, its tag, similarity), or None; the
              | expired rows met are removed
    remove    | one row (its entry's answer is gone from the exact tier): the partition's last row
              | takes its place
    purge     | every row whose tag (tenant, key id, model) matches (the admin API's purge)
    expire    | every expired row

Rows are keyed by their entry's exact-cache key (32 bytes): the answer a row points to is the exact tier's
entry (memory or Redis), so a row never outlives its answer for long (a hit whose entry has gone removes
the row) and stores no answer of its own. Times are wall-clock seconds, passed in (rows come from other
nodes through Redis, with the expiry their writer set).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Any

# PERF: one BLAS thread (set before numpy's first import, which the semantic tier alone makes in a
# worker): a worker is one core's event loop, and a matrix-vector product at the tier's bound gains
# nothing from a thread pool that contends with the other workers (bench/cache_semantic.py on a loaded
# two-core machine, 10,000 rows of 256 dimensions: p99 16 ms with OpenBLAS's threads, 5 ms without)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

__all__ = ["ROW_OVERHEAD", "SemanticIndex", "Tag"]

#: (tenant, key id, model) of the request that stored an entry: its Redis key and what purges match
Tag = tuple[str | None, str | None, str]
#: bytes counted per row beside its vector: key, tag, expiry, dictionary slots (an estimate)
ROW_OVERHEAD = 240
_FIRST_ROWS = 16


class _Partition:
    __slots__ = ("dims", "expires", "keys", "n", "slots", "tags", "vectors")

    def __init__(self, dims: int) -> None:
        self.dims = dims
        self.vectors = np.zeros((_FIRST_ROWS, dims), dtype=np.float32)
        self.expires = np.zeros(_FIRST_ROWS, dtype=np.float64)
        self.keys: list[bytes] = []
        self.tags: list[Tag] = []
        self.slots: dict[bytes, int] = {}
        self.n = 0

    def put(self, key: bytes, vector: np.ndarray[Any, Any], expires: float, tag: Tag) -> None:
        i = self.slots.get(key)
        if i is None:
            i = self.n
            if i == len(self.expires):  # PERF: doubling: amortised O(1) appends
                self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
                self.expires = np.concatenate([self.expires, np.zeros_like(self.expires)])
            self.n += 1
            self.keys.append(key)
            self.tags.append(tag)
            self.slots[key] = i
        else:
            self.tags[i] = tag
        self.vectors[i] = vector
        self.expires[i] = expires

    def drop(self, key: bytes) -> None:
        i = self.slots.pop(key)
        last = self.n - 1
        if i != last:  # the last row moves into the hole
            moved = self.keys[last]
            self.vectors[i] = self.vectors[last]
            self.expires[i] = self.expires[last]
            self.keys[i] = moved
            self.tags[i] = self.tags[last]
            self.slots[moved] = i
        self.keys.pop()
        self.tags.pop()
        self.n = last

    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.expires.nbytes) + ROW_OVERHEAD * self.n


class SemanticIndex:
    """One worker's vectors, by partition; bounded per group (the model whose policy stored them)."""

    def __init__(self) -> None:
        self._parts: dict[bytes, _Partition] = {}
        #: group -> its rows' keys, oldest first -> their partition
        self._groups: dict[str, collections.OrderedDict[bytes, bytes]] = {}
        #: key -> its group
        self._group_of: dict[bytes, str] = {}
        #: rows dropped to stay within a group's bound
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._group_of)

    @property
    def nbytes(self) -> int:
        """Bytes held: the partitions' arrays (with their spare rows) and an estimate per row."""
        return sum(p.nbytes() for p in self._parts.values())

    def add(self, partition: bytes, key: bytes, vector: np.ndarray[Any, Any], expires: float, tag: Tag,
            group: str, max_entries: int) -> None:
        """Keep ``vector`` (unit length, float32) for the entry ``key`` until ``expires``."""
        part = self._parts.get(partition)
        if part is not None and part.dims != vector.shape[0]:
            for old in list(part.keys):
                self.remove(old)
            part = None
        if part is None:
            part = self._parts[partition] = _Partition(vector.shape[0])
        owner = self._group_of.get(key)
        if owner is not None and (owner != group or key not in part.slots):
            self.remove(key)  # the same entry under another partition or group: moved
        rows = self._groups.get(group)
        if rows is None:
            rows = self._groups[group] = collections.OrderedDict()
        if key in rows:
            rows.move_to_end(key)
        else:
            while len(rows) >= max_entries:
                self.remove(next(iter(rows)))
                self.evictions += 1
            rows[key] = partition
            self._group_of[key] = group
        part = self._parts.setdefault(partition, part)
        part.put(key, vector, expires, tag)

    def search(self, partition: bytes, vector: np.ndarray[Any, Any],
               now: float) -> tuple[bytes, Tag, float] | None:
        """The partition's live row most similar to ``vector``: (its key, its tag, the cosine), or None."""
        part = self._parts.get(partition)
        if part is None or part.n == 0 or part.dims != vector.shape[0]:
            return None
        n = part.n
        expired = part.expires[:n] <= now
        if expired.any():
            for i in sorted(np.flatnonzero(expired).tolist(), reverse=True):
                self.remove(part.keys[i])  # from the end: a moved row is one already checked
            if partition not in self._parts:
                return None
            n = part.n
            if n == 0:
                return None
        sims = part.vectors[:n] @ vector
        best = int(sims.argmax())
        return part.keys[best], part.tags[best], float(sims[best])

    def remove(self, key: bytes) -> bool:
        group = self._group_of.pop(key, None)
        if group is None:
            return False
        rows = self._groups[group]
        partition = rows.pop(key)
        if not rows:
            del self._groups[group]
        part = self._parts[partition]
        part.drop(key)
        if part.n == 0:
            del self._parts[partition]
        return True

    def purge(self, matches: Callable[[Tag], bool]) -> int:
        """Remove every row whose tag matches; how many."""
        doomed = [k for p in self._parts.values() for k, t in zip(p.keys, p.tags, strict=True) if matches(t)]
        for key in doomed:
            self.remove(key)
        return len(doomed)

    def expire(self, now: float) -> int:
        """Remove every expired row; how many."""
        doomed = [k for p in self._parts.values() for i, k in enumerate(p.keys) if p.expires[i] <= now]
        for key in doomed:
            self.remove(key)
        return len(doomed)

    def clear(self) -> None:
        self._parts.clear()
        self._groups.clear()
        self._group_of.clear()
