# cython: language_level=3
"""Compiled LRU + TTL + byte-bound cache, the response cache's in-worker tier (twin and reference:
cache_py.py, which holds the theory of operation).

Why compiled: a lookup runs on every request to a cached model, hit or miss; typed nodes in a circular
doubly linked list make the move-to-end and the eviction a few pointer writes instead of OrderedDict
method calls.
"""

__all__ = ["ENTRY_OVERHEAD", "LRUCache"]

cdef Py_ssize_t _OVERHEAD = 160
ENTRY_OVERHEAD = _OVERHEAD


cdef class _Node:
    pass


cdef class LRUCache:

    def __init__(self, Py_ssize_t max_bytes, Py_ssize_t max_entry_bytes=0):
        if max_bytes < 0 or max_entry_bytes < 0:
            raise ValueError("the byte bounds must not be negative")
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.size = 0
        self.evictions = 0
        self.expirations = 0
        self._map = {}
        root = _Node()
        root.prev = root
        root.next = root
        self._root = root

    def __len__(self):
        return len(self._map)

    cdef inline void _unlink(self, _Node node) noexcept:
        node.prev.next = node.next
        node.next.prev = node.prev

    cdef inline void _append(self, _Node node) noexcept:
        cdef _Node root = self._root
        node.prev = root.prev
        node.next = root
        root.prev.next = node
        root.prev = node

    cdef void _drop(self, _Node node) except *:
        self._unlink(node)
        del self._map[node.key]
        self.size -= node.cost
        node.prev = None
        node.next = None

    cdef void _evict_to(self, Py_ssize_t limit, double now) except *:
        cdef _Node first
        while self.size > limit:
            first = self._root.next
            if first is self._root:
                break
            self._drop(first)
            if now >= first.expires_at:
                self.expirations += 1
            else:
                self.evictions += 1

    cpdef object get(self, bytes key, double now):
        cdef object found = self._map.get(key)
        if found is None:
            return None
        cdef _Node node = <_Node>found
        if now >= node.expires_at:
            self._drop(node)
            self.expirations += 1
            return None
        self._unlink(node)
        self._append(node)
        return (node.value, node.stored_at)

    cpdef bint put(self, bytes key, bytes value, double now, double ttl, object tag=None) except -1:
        cdef object found = self._map.get(key)
        if found is not None:
            self._drop(<_Node>found)
        cdef Py_ssize_t cost = len(key) + len(value) + _OVERHEAD
        if ttl <= 0.0 or cost > self.max_bytes or (
            self.max_entry_bytes and len(value) > self.max_entry_bytes
        ):
            return False
        self._evict_to(self.max_bytes - cost, now)
        cdef _Node node = _Node()
        node.key = key
        node.value = value
        node.stored_at = now
        node.expires_at = now + ttl
        node.tag = tag
        node.cost = cost
        self._map[key] = node
        self._append(node)
        self.size += cost
        return True

    cpdef bint delete(self, bytes key) except -1:
        cdef object found = self._map.get(key)
        if found is None:
            return False
        self._drop(<_Node>found)
        return True

    def purge(self, match):
        cdef list doomed = [n for n in self._map.values() if match((<_Node>n).tag)]
        for n in doomed:
            self._drop(<_Node>n)
        return len(doomed)

    def clear(self):
        cdef _Node node
        for n in self._map.values():
            node = <_Node>n
            node.prev = None
            node.next = None
        self._map.clear()
        self._root.prev = self._root
        self._root.next = self._root
        self.size = 0

    def resize(self, Py_ssize_t max_bytes, Py_ssize_t max_entry_bytes, double now):
        if max_bytes < 0 or max_entry_bytes < 0:
            raise ValueError("the byte bounds must not be negative")
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._evict_to(max_bytes, now)
