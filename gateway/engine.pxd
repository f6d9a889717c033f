# Declarations that compile engine.py (its own pure-Python twin) into typed extension classes.
# PERF: the request's context, the runtime tables and the engine as cdef classes: typed fields and
# C-level calls between the request path's methods (begin, _front, _parse, _send_now, _on_head,
# _relay_body, _settle). See docs/architecture.md, "What is compiled".

cimport cython

from gateway._core._http cimport Request as CRequest
from gateway._core._jsoncheck cimport KeyWatch as CKeyWatch
from gateway.context cimport Context, LiveRequests
from gateway.providers.openai cimport OpenAITranslator as COpenAITranslator


cdef class Target:
    cdef public object deployment
    cdef public str name
    cdef public str provider
    cdef public bint rewrite_model
    cdef public COpenAITranslator translator
    cdef public str upstream_model


cdef class ModelEntry:
    cdef public frozenset endpoints
    cdef public str name
    cdef public str owned_by
    cdef public object router
    cdef public Target target
    cdef public dict targets


cdef class Runtime:
    cdef public object config
    cdef public dict translators
    cdef public dict models
    cdef public dict routers
    cdef public tuple chain
    cdef public tuple settle_chain
    cdef public tuple response_chain
    cdef public tuple stream_chain
    cdef public str overhead_header
    cdef public bytes models_body
    cdef public dict model_bodies
    cdef public dict unknown_models
    cdef public object prompts


cpdef str _overhead_ms(Context ctx)


cdef class _RequestIds:
    cdef public long long n
    cdef public str prefix
    cpdef str next(self)


cdef class Engine:
    cdef object _config
    cdef object _phase_factory
    cdef tuple _static_phases
    cdef public object records
    cdef public object tracer
    cdef public object worker
    cdef public Runtime runtime
    cdef public bint draining
    cdef _RequestIds _ids
    cdef set _retiring
    cdef LiveRequests _live
    cdef object _cut_error
    cdef public object keys
    cdef public object _access
    cdef object _health
    cdef object _breakers
    cdef public object limits
    cdef public object cache
    cdef public object metrics
    cdef dict _provider_configs
    cdef object _responses
    cdef object _prompts

    @cython.locals(runtime=Runtime)
    cpdef Context _context(self, CRequest request, object responder)
    @cython.locals(ctx=Context, model=ModelEntry)
    cpdef begin(self, object request, object responder)
    @cython.locals(runtime=Runtime)
    cpdef _reply(self, Context ctx, object responder, object reply)
    cpdef _answer_error(self, Context ctx, object responder, object exc)
    @cython.locals(headers=list, extra=list, status=int, runtime=Runtime)
    cpdef _send_error(self, Context ctx, object responder, object exc)
    @cython.locals(req=CRequest, watch=CKeyWatch)
    cpdef _parse(self, Context ctx)
    @cython.locals(chain=tuple, i=Py_ssize_t, model=ModelEntry, runtime=Runtime)
    cpdef _front(self, Context ctx, object responder, int resume, object result)
    @cython.locals(target=Target, translator=COpenAITranslator)
    cpdef bint _send_now(self, Context ctx, object responder, ModelEntry model) except -1
    cpdef _to_model(self, Context ctx, object responder, ModelEntry model)
    cpdef _on_head(self, Context ctx, object responder, object resp, object exc)
    cpdef bytes _upstream_body(self, Context ctx, Target target, object model_name=*)
    @cython.locals(out=list, target=Target)
    cpdef list _pass_headers(self, Context ctx, object resp)
    @cython.locals(headers=list, target=Target, runtime=Runtime)
    cpdef _relay_body(self, Context ctx, object responder, object resp, object body)
    @cython.locals(target=Target, model=ModelEntry, runtime=Runtime)
    cpdef _settle(self, Context ctx)
