# Declarations of the compiled HTTP/1.1 core (see _http.pyx; twin: http_py.py).

cdef class Request:
    cdef public str method
    cdef public str path
    cdef public str query
    cdef public int version
    cdef public list headers
    cdef public bytes body
    cdef public bint keep_alive
    cpdef object header(self, bytes name)


cdef class ChunkedDecoder:
    cdef public int state
    cdef public Py_ssize_t remaining
    cdef public Py_ssize_t size
    cdef public list parts
    cdef public bint done
    cpdef Py_ssize_t feed(self, bytes buf, Py_ssize_t pos) except -1
    cpdef bytes take(self)


cdef class RequestParser:
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_body_bytes
    cdef public int state
    cdef bytes _buf
    cdef Py_ssize_t _pos
    cdef Request _pending
    cdef Py_ssize_t _need
    cdef ChunkedDecoder _chunked
    cdef bint _expect
    cpdef feed(self, bytes data)
    cpdef Request next_request(self)
    cdef bint _parse_head(self) except -1


cdef class ResponseParser:
    cdef bint _head_only
    cdef public Py_ssize_t max_header_bytes
    cdef bytes _buf
    cdef public bint head_done
    cdef public bint done
    cdef public int status
    cdef public str reason
    cdef public list headers
    cdef public bint keep_alive
    cdef ChunkedDecoder _chunked
    cdef Py_ssize_t _remaining
    cdef bint _close_delimited
    cdef list _parts
    cpdef feed(self, bytes data)
    cpdef bytes take_body(self)
    cdef _feed_body(self, bytes data)
    cdef object _parse_head(self, bytes buf)
