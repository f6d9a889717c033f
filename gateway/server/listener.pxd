# Declarations that compile listener.py (its own pure-Python twin) into typed extension classes.
# PERF: the connection and its responder as cdef classes: typed fields, C-level calls between the
# request cycle's methods. See docs/architecture.md, "What is compiled".

cimport cython

from gateway._core._http cimport RequestParser as CRequestParser


cdef class WriteBatch:
    cdef list _items
    cdef object _loop
    cdef Py_ssize_t _bytes
    cdef public Py_ssize_t flushes
    cdef set _backlog
    cpdef write(self, object transport, object data, int fd=*)
    @cython.locals(n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, fd=int, sent=Py_ssize_t, backlog=set)
    cpdef flush(self)
    @cython.locals(backlog=set)
    cdef _held_back(self, object transport)
    cpdef abort_after(self, object transport)
    cpdef close_after(self, object transport)


cdef WriteBatch _BATCH


cdef class ListenerState:
    cdef public object app
    cdef public object begin
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_body_bytes
    cdef public Py_ssize_t max_connections
    cdef public double header_timeout
    cdef public double body_timeout
    cdef public double keepalive_timeout
    cdef public set connections
    cdef public bint draining
    cdef public object loop
    cdef public object _sweeper
    cdef public bint log_errors


cdef class NativeResponder:
    cdef HttpProtocol _conn
    cdef bint _chunked
    cdef bint _head_only
    cdef bint _http10
    cdef public bint completed
    cdef public bint finished
    cdef public bint keep_alive
    cdef public bint started
    cpdef send(self, int status, list headers, bytes body)
    cpdef end_stream(self)
    cpdef done(self)


cdef class HttpProtocol:
    cdef object _begin
    cdef object _drain_waiter
    cdef bint _held
    cdef bint _inline
    cdef public bint busy
    cdef public double deadline
    cdef public int fd
    cdef public int deadline_kind
    cdef public CRequestParser parser
    cdef public bint peer_eof
    cdef public bint reading_paused
    cdef public ListenerState state
    cdef public object task
    cdef public object transport
    cdef public bint write_paused
    @cython.locals(parser=CRequestParser, responder=NativeResponder, state=ListenerState)
    cpdef _next(self, bint after_response)
    cpdef response_done(self, NativeResponder responder)
    cpdef _unhold(self)
    cpdef _read_more(self)
    cpdef bint _proceed(self, NativeResponder responder) except -1
    @cython.locals(parser=CRequestParser, state=ListenerState, pstate=int)
    cpdef _await_more(self)
