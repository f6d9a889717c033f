# Declarations that compile rows.py (its own pure-Python twin).
# PERF: converting the engine's tuple is most of a call record's cost: typed locals, C-level calls.

cimport cython

cdef dict _DIALECTS

cpdef str dialect_of(str path)

cdef double _ms(double x)

cpdef object _reasoning(object usage)

@cython.locals(duration_ms=double)
cpdef object to_record(tuple row, object prices=*)
