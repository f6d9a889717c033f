# Declarations of the compiled response-cache tier (see _cache.pyx; twin and reference: cache_py.py).

cdef class _Node:
    cdef _Node prev
    cdef _Node next
    cdef bytes key
    cdef bytes value
    cdef double stored_at
    cdef double expires_at
    cdef object tag
    cdef Py_ssize_t cost

cdef class LRUCache:
    cdef public Py_ssize_t max_bytes
    cdef public Py_ssize_t max_entry_bytes
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t evictions
    cdef readonly Py_ssize_t expirations
    cdef dict _map
    cdef _Node _root
    cdef void _unlink(self, _Node node) noexcept
    cdef void _append(self, _Node node) noexcept
    cdef void _drop(self, _Node node) except *
    cdef void _evict_to(self, Py_ssize_t limit, double now) except *
    cpdef object get(self, bytes key, double now)
    cpdef bint put(self, bytes key, bytes value, double now, double ttl, object tag=*) except -1
    cpdef bint delete(self, bytes key) except -1
