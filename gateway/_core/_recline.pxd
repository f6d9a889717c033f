# The compiled JSON line writer, cimported by gateway/observe/rows.pxd (C-level calls per member).

cdef class LineWriter:
    cdef char* buf
    cdef Py_ssize_t cap
    cdef Py_ssize_t n
    cdef int _room(self, Py_ssize_t more) except -1
    cdef inline int _put(self, const char* s, Py_ssize_t k) except -1
    cdef int _bytes(self, bytes b) except -1
    cdef int _digits(self, unsigned long long v) except -1
    cdef int _decimals(self, unsigned long long whole, unsigned long long frac, int places) except -1
    cpdef raw(self, bytes data)
    cpdef string(self, bytes key, object value)
    cpdef integer(self, bytes key, object value)
    cpdef millis(self, bytes key, double value)
    cpdef micros(self, bytes key, double value)
    cdef int _fixed(self, bytes key, double k, unsigned long long scale, int places) except -1
    cpdef number(self, bytes key, object value)
    cpdef Py_ssize_t mark(self)
    cpdef cut(self, Py_ssize_t at)
    cpdef bytes take(self)
