# Declarations of the compiled canonical form of a request body and its key hash (see _canon.pyx;
# twin: canon_py.py).

from libc.stdint cimport uint8_t, uint64_t


cdef struct Blake:
    uint64_t h[8]
    uint64_t t
    uint8_t buf[128]
    Py_ssize_t buflen


cdef class Canonicaliser:
    cdef readonly tuple ignored
    cdef tuple _names
    cpdef object canonical(self, bytes body)


cdef class KeyHash:
    cdef readonly bytes head
    cdef readonly Canonicaliser form
    cdef Blake _state
    cpdef bytes digest(self, bytes extra, bytes canon)
    cpdef object key(self, bytes extra, bytes body)
