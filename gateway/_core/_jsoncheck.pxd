# Declarations of the compiled JSON body checks (see _jsoncheck.pyx; twin: jsoncheck_py.py).


cdef class KeyWatch:
    cdef readonly tuple paths
    cdef tuple _top
    cdef tuple _nested
    cdef bint _inner
    cpdef Py_ssize_t check(self, bytes data, Py_ssize_t max_depth) except? -2
