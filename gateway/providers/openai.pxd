# Declarations that compile openai.py (its own pure-Python twin) into a typed extension class.
# PERF: the engine's callback path calls send_cb at C level, and send_cb the pool's. See
# docs/architecture.md, "What is compiled".

cimport cython

from gateway._core._http cimport Request as CRequest
from gateway._core._sse cimport SSEScanner as CSSEScanner
from gateway.context cimport Context
from gateway.server.pool cimport OriginPool as COriginPool


cdef class OpenAITranslator:
    cdef public tuple _forward
    cdef public bytes _forward_first
    cdef public list _headers
    cdef public dict _heads
    cdef public dict _models
    cdef public dict _paths
    cdef public COriginPool _pool
    cdef public str _prefix
    cdef public object _template
    cdef public bint model_in_path
    cdef public str name
    cdef public object quirks
    cdef public tuple secrets
    cdef public object transport
    cpdef bint send_cb(self, str endpoint, bytes body, str request_id, object cb, object extra=*,
                       bint stream=*) except -1
    @cython.locals(name=bytes, first=bytes)
    cpdef object forwarded(self, CRequest request)
    cpdef bytes request_body(self, Context ctx, str upstream_model, bint rewrite)
    cpdef list pass_headers(self, object resp, bint ratelimit, list out)
    cpdef bytes take_body(self, Context ctx, bytes body)


cdef class OpenAIStreamRelay:
    cdef object _ctx
    cdef CSSEScanner _scanner
    cdef bint _strip
    cdef public object error
    cpdef bytes feed(self, bytes chunk)
    cpdef bytes end(self)
