# Declarations of the compiled deployment-selection core (see _route.pyx; twin: route_py.py).

from libc.stdint cimport uint64_t


cdef uint64_t mix64(uint64_t z) noexcept nogil
cdef uint64_t fnv1a64(const unsigned char* s, Py_ssize_t n) noexcept nogil


cdef class HashRing:
    cdef Py_ssize_t _n
    cdef Py_ssize_t _size
    cdef uint64_t* _hashes
    cdef Py_ssize_t* _owners
    cdef object _full
    cdef tuple _names
    cpdef Py_ssize_t pick(self, object key, object eligible=*) except -2


cdef class SmoothWeighted:
    cdef Py_ssize_t _n
    cdef long long* _weights
    cdef long long* _current
    cdef object _full
    cpdef void reset(self) noexcept
    cpdef Py_ssize_t pick(self, object eligible=*) except -2


cdef class LeastLatency:
    cdef Py_ssize_t _n
    cdef double _alpha
    cdef double _explore
    cdef double _ttfb_weight
    cdef double* _ttfb
    cdef double* _total
    cdef double* _score
    cdef unsigned char* _seen
    cdef object _full
    cpdef void observe(self, Py_ssize_t i, double ttfb, double total) except *
    cpdef Py_ssize_t pick(self, object eligible, double r) except -2


cdef class LeastBusy:
    cdef Py_ssize_t _n
    cdef long long* _busy
    cdef object _full
    cpdef void acquire(self, Py_ssize_t i) except *
    cpdef void release(self, Py_ssize_t i) except *
    cpdef Py_ssize_t pick(self, object eligible, long long tie=*) except -2


cdef class Split:
    cdef Py_ssize_t _n
    cdef double* _cum
    cdef double* _percents
    cdef object _full
    cpdef Py_ssize_t pick(self, double r, object eligible=*) except -2


cdef class BreakerCore:
    cdef public object state
    cdef public object _closed
    cdef public long long _consecutive
    cdef public bint _counting
    cdef public object _window
    cdef bint _success_closed(self, double now) except -1


cdef class RequestInfo:
    cdef public object user
    cdef public object key_id
    cdef public object header
    cdef public object tokens
    cdef public object residency


cdef class RouterCore:
    cdef public int _strategy
    cdef public SmoothWeighted _rr
    cdef public HashRing _ring
    cdef public int _hash_kind
    cdef public bytes _hash_header
    cdef public LeastLatency _ll
    cdef public LeastBusy _lb
    cdef public long long _tie
    cdef public Split _split
    cdef public list _costs
    cdef public list _windows
    cdef public double _recheck
    cdef public object _blocked
    cdef public object _gated
    cdef public object _min_window
    cdef public int _needs
    cdef public list _breakers
    cdef public list _rpm
    cdef public list _tpm
    cdef public dict _allowed
    cdef bint _admit(self, Py_ssize_t i, double now, object tokens) except -1
    cpdef RequestInfo info(self, object fields, object key, object header, Py_ssize_t length)
    cdef Py_ssize_t _pick_one(self, object mask, RequestInfo info, object rnd) except -2
    cpdef Py_ssize_t pick(self, RequestInfo info, double now, object rnd) except -2
    cpdef void acquire(self, Py_ssize_t i) except *
    cpdef void release(self, Py_ssize_t i) except *
    cpdef void ok(self, object deployment, double elapsed, double now) except *
