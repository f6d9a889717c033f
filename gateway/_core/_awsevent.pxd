# Declarations of the compiled AWS event-stream framing (see _awsevent.pyx; twin: awsevent_py.py).


cdef class Message:
    cdef public dict headers
    cdef public bytes payload


cdef class EventStreamDecoder:
    cdef bytearray _buf
    cdef Py_ssize_t _start
    cdef Py_ssize_t _total
    cdef object _error
    cdef list _strings
    cdef public Py_ssize_t max_headers_length
    cdef public Py_ssize_t max_payload_length
    cpdef feed(self, bytes data)
    cdef Message _next(self)
    cdef Message _parse(self)
    cdef Py_ssize_t _prelude(self, const unsigned char* p) except -1
