# Declarations of the compiled canonical form of a request body (see _canon.pyx; twin: canon_py.py).


cdef class Canonicaliser:
    cdef readonly tuple ignored
    cdef tuple _names
    cpdef object canonical(self, bytes body)
