# Declarations that compile context.py (its own pure-Python twin) into a typed extension class.
# PERF: the engine, the phases and the translators read and write the request's fields at C level. The
# runtime tables it points to (model, runtime, target) are the engine's types, held as objects here (a
# cimport back into the engine would be a cycle): the engine reads them through typed locals.

cimport cython


cdef class Context:
    cdef public object answer
    cdef Context _live_prev
    cdef Context _live_next
    cdef public Py_ssize_t attempts
    cdef public object body
    cdef public object cache
    cdef public object cost
    cdef public object dialect
    cdef public str endpoint
    cdef public object error
    cdef public object fields
    cdef public object guard
    cdef public bint include_usage
    cdef public object key
    cdef public object limits
    cdef public object model
    cdef public str overhead
    cdef public object prompt
    cdef public object request
    cdef public str request_id
    cdef public object responder
    cdef public list response_headers
    cdef public object route_model
    cdef public object runtime
    cdef public bint settled
    cdef public int status
    cdef public bint stream
    cdef public double t0
    cdef public double t_first
    cdef public double t_up
    cdef public object target
    cdef public object task
    cdef public object trace
    cdef public double up_ms
    cdef public object upstream_status
    cdef public object usage


cdef class LiveRequests:
    cdef Context _head
    cdef public Py_ssize_t count
    cpdef add(self, Context ctx)
    @cython.locals(prev=Context, after=Context)
    cpdef discard(self, Context ctx)
