cdef class SSEScanner:
    cdef bytes _tail
    cdef public Py_ssize_t max_event_bytes
    cpdef bytes feed(self, bytes chunk)
