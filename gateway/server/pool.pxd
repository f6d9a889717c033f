# Declarations that compile pool.py (its own pure-Python twin) into typed extension classes.
# PERF: the pooled connection, its response and the pool as cdef classes: typed fields and C-level
# calls on the path from a request's bytes to its response's callback. See docs/architecture.md.

cimport cython

from gateway._core._http cimport ResponseParser as CResponseParser
from gateway.server.listener cimport WriteBatch


cdef WriteBatch _BATCH


cdef _deliver(object waiter, object cb, PooledResponse resp)


cdef class PooledResponse:
    cdef _Connection _conn
    cdef object _error
    cdef Py_ssize_t _limit
    cdef list _parts
    cdef public Py_ssize_t _size
    cdef public Py_ssize_t _total
    cdef public bint _whole
    cdef object _waiter
    cdef public bint done
    cdef public list headers
    cdef public int status
    cpdef _feed(self, bytes data)
    cpdef _finish(self, object error=*)
    cpdef _wake(self)
    cpdef _too_large(self)
    cpdef bytes _take(self)
    @cython.locals(parts=list)
    cpdef complete_body(self)
    cpdef close(self)


cdef class _Connection:
    cdef object _head_cb
    cdef object _head_waiter
    cdef public bint active
    cdef public double deadline
    cdef public int fd
    cdef public bint got_bytes
    cdef public bint head_only
    cdef public double idle_since
    cdef public CResponseParser parser
    cdef public OriginPool pool
    cdef public bint reading_paused
    cdef public object request_data
    cdef public PooledResponse response
    cdef public bint reused
    cdef public object transport
    cpdef start_cb(self, bytes data, object cb)
    cpdef _write_request(self, bytes data, bint head_only)
    @cython.locals(parser=CResponseParser)
    cpdef data_received(self, bytes data)
    @cython.locals(pool=OriginPool, resp=PooledResponse)
    cpdef _progress(self, CResponseParser parser)
    cpdef drop(self)


cdef class OriginPool:
    cdef public str scheme
    cdef public str host
    cdef public int port
    cdef public str prefix
    cdef public str host_header
    cdef public Py_ssize_t pool_size
    cdef public double connect_timeout
    cdef public double read_timeout
    cdef public double pool_timeout
    cdef public double idle_timeout
    cdef public Py_ssize_t max_answer_bytes
    cdef public object ssl
    cdef public object loop
    cdef public list _idle
    cdef public set _busy
    cdef public Py_ssize_t _connecting
    cdef public object _waiters
    cdef public dict _connect_timeouts
    cdef public set _retries
    cdef public bint _closed
    cdef public object _sweeper
    cpdef release(self, _Connection conn)
    cpdef forget(self, _Connection conn)
    cpdef bint send_cb(self, bytes data, object cb) except -1
    @cython.locals(idle=list, conn=_Connection)
    cpdef _Connection _take_idle(self)
