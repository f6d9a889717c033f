# Declarations that compile rows.py (its own pure-Python twin).
# PERF: converting the engine's tuple is most of a call record's cost: typed locals, C-level calls.

cimport cython

from gateway._core._recline cimport LineWriter as CLineWriter

cdef dict _DIALECTS

cpdef str dialect_of(str path)

cdef double _ms(double x)

cdef double _us(double x)

cdef int _MEMO_LIMIT


cdef object _UNSET


cdef class Prices:
    cdef public object table
    cdef public dict memo
    cdef public object last_upstream
    cdef public object last_model
    cdef public object last
    @cython.locals(key=tuple, memo=dict)
    cpdef object price(self, object upstream_model, object model)
    @cython.locals(memo=dict)
    cpdef object _lookup(self, object upstream_model, object model)


cdef class RowBatch:
    cdef public list rows
    cdef public long long count
    cdef public object wake
    @cython.locals(rows=list)
    cpdef emit(self, tuple row)
    @cython.locals(rows=list)
    cpdef list take(self)


@cython.locals(n=Py_ssize_t, row=tuple)
cpdef Py_ssize_t to_records(list rows, Prices prices, list out, Py_ssize_t room)


@cython.locals(duration_ms=double)
cpdef object to_record(tuple row, Prices prices=*)


@cython.locals(n=Py_ssize_t, row=tuple, at=Py_ssize_t)
cpdef Py_ssize_t encode_rows(list rows, Prices prices, CLineWriter out, Py_ssize_t room) except -1


cdef object _encode
cdef object log


@cython.locals(duration_ms=double)
cdef int _encode_row(tuple row, Prices prices, CLineWriter w) except -1
