# Declarations of the compiled guardrails prefilter (see _scan.pyx; twin: scan_py.py).

cimport cython
from libc.stdint cimport uint16_t, uint64_t


@cython.final
cdef class Prefilter:
    cdef readonly tuple needles
    cdef bytes _blob
    cdef Py_ssize_t _count
    cdef Py_ssize_t* _off
    cdef Py_ssize_t* _len
    cdef uint64_t* _bit
    cdef unsigned char* _fold
    cdef Py_ssize_t* _order
    cdef unsigned char* _after
    cdef Py_ssize_t* _anchor
    cdef Py_ssize_t _start[257]
    cdef unsigned char _bloom[2048]
    cdef unsigned char _hot[256]
    cdef uint16_t _table[256]
    cdef unsigned char _pa[8192]
    cdef unsigned char _pb[8192]
    cdef unsigned char _pairs[65536]
    cdef unsigned char _short[256]
    cdef unsigned char _class[128]
    cdef unsigned char _high_needle[128]
    cdef unsigned char _escapes[128]
    cdef unsigned char _nib[128]
    cdef int _sets
    cdef bint _vector
    cdef uint64_t _folded_bits
    cdef int _numeric
    cdef int _phone_min
    cdef bint _upper
    cdef bint _ipv6
    cdef bint _non_ascii
    cpdef uint64_t scan(self, bytes data)
    cdef bint _buckets(self, list items, bint upper) except -1
    cdef Py_ssize_t _at(self, const unsigned char* s, Py_ssize_t i, Py_ssize_t n, uint64_t* out) noexcept
    cdef uint64_t _needles_at(self, const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                              uint64_t mask) noexcept
    cdef bint _escape_at(self, const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept
    cdef bint _number_at(self, const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept
    cdef bint _number_from(self, const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                           unsigned char prev) noexcept
