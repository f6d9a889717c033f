# Declarations that compile anthropic.py (its own pure-Python twin) into a typed extension class.
# PERF: a Messages client on an Anthropic upstream is pass-through; the engine calls this translator's
# request_body, pass_headers and take_body at C level on every request (a Python subclass of
# OpenAITranslator made each of them a Python call after a method lookup). See docs/architecture.md,
# "What is compiled".

cimport cython

from gateway.context cimport Context
from gateway.providers.openai cimport OpenAITranslator


cdef class AnthropicTranslator(OpenAITranslator):
    cdef public tuple _args
    cdef public list _beta
    cdef public dict _children
    cdef public object sampling
    cpdef bytes request_body(self, Context ctx, str upstream_model, bint rewrite)
    @cython.locals(limits=list, name=bytes, value=bytes)
    cpdef list pass_headers(self, object resp, bint ratelimit, list out)
    cpdef bytes take_body(self, Context ctx, bytes body)


cdef class PassThroughRelay:
    cdef object _ctx
    cdef object _scanner
    cdef bint _sent
    cdef bint _stopped
    cdef object _usage
    cdef public object error
    cpdef bytes feed(self, bytes chunk)
    cpdef bytes end(self)
    @cython.locals(out=list, ev=bytes)
    cpdef bytes _inspect(self, bytes data)


cpdef object _usage_of(object u)
