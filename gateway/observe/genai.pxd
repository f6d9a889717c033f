# Declarations that compile genai.py (its own pure-Python twin) into typed extension classes.
# PERF: counting a record into a dozen histograms is most of the request metrics' cost: typed fields,
# C doubles in the bucket scan, C-level calls between the classes.

cimport cython

cdef dict _DIALECTS

cdef double _ms(double x)

cpdef object usage_cached(object usage)

cpdef object usage_reasoning(object usage)


cdef class _Hist:
    cdef public tuple bounds
    cdef double[:] _bounds
    cdef long long[:] _counts
    cdef public double sum
    @cython.locals(n=Py_ssize_t, i=Py_ssize_t, bounds="double[:]")
    cpdef observe(self, double v)
    cpdef list samples(self, str name, tuple labels)


cdef class _Series:
    cdef public tuple labels
    cdef public long long requests
    cdef public double cost
    cdef public _Hist duration
    cdef public _Hist upstream
    cdef public _Hist overhead
    cdef public _Hist ttft
    cdef public _Hist tpot
    cdef public _Hist tok_input
    cdef public _Hist tok_output
    cdef public _Hist tok_cached
    cdef public _Hist tok_reasoning


cdef class GenAIMetrics:
    cdef dict _series
    cdef tuple _last_key
    cdef _Series _last
    cdef public bint tenant
    cdef public bint key
    @cython.locals(s=_Series, key=tuple)
    cpdef _Series _series_of(self, object r)
    cpdef _Series _new_series(self, tuple key, object r)
    cpdef _Series _other(self)
    cpdef observe(self, object records)
    cpdef observe_one(self, object r)
    @cython.locals(row=tuple)
    cpdef observe_rows(self, list rows, object prices=*)
    @cython.locals(s=_Series, skey=tuple)
    cpdef observe_row(self, tuple row, object prices=*)
    cpdef _Series _new_row_series(self, tuple key, tuple row, object tenant, object key_id)
    @cython.locals(ttft=double)
    cdef void _count(self, _Series s, long status, double duration, double overhead, object up, object cost,
                     object prompt, object out, object cached, object reasoning, object ttft_ms)
