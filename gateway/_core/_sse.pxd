cdef class SSEScanner:
    cdef bytes _tail
    cdef bint _after_event
    cdef public Py_ssize_t max_event_bytes
    cpdef bytes feed(self, bytes chunk)
