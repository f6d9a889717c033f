# Declarations of the compiled fast path of the guardrails phase (see _guardgate.pyx; twin: guardgate_py.py).

from gateway._core._scan cimport Prefilter


cdef class Gate:
    cdef object _guard
    cdef Prefilter _prompt
    cdef Prefilter _answer
    cdef bint _plain
    cdef bint _answer_always
    cdef object _check
    cdef object _respond
