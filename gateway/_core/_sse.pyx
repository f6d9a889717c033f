# cython: language_level=3
"""Compiled SSE framing for stream relay (twin and reference: sse_py.py).

Why compiled: it runs once per relayed upstream chunk; a stream of 200 chunks calls it 200 times.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize

__all__ = ["SSEScanner", "event_data", "split_events"]


cdef Py_ssize_t _boundary(const char* s, Py_ssize_t n, bint after_event) noexcept:
    # after_event: the byte before s is the line feed that ended a released event (see sse_py)
    cdef Py_ssize_t i = n - 1
    while i >= 1:
        if s[i] == 10:
            if s[i - 1] == 10:
                return i + 1
            if s[i - 1] == 13 and i >= 2 and s[i - 2] == 10:
                return i + 1
            if s[i - 1] == 13 and i == 1 and after_event:
                return 2
        i -= 1
    if n >= 1 and s[0] == 10 and after_event:
        return 1
    return 0


cdef class SSEScanner:

    def __init__(self, Py_ssize_t max_event_bytes=1 << 20):
        self._tail = b""
        self._after_event = False
        self.max_event_bytes = max_event_bytes

    @property
    def pending(self):
        return self._tail

    cpdef bytes feed(self, bytes chunk):
        cdef bytes buf = self._tail + chunk if PyBytes_GET_SIZE(self._tail) else chunk
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t end = _boundary(PyBytes_AS_STRING(buf), n, self._after_event)
        if end:
            self._after_event = True
        if end == n:
            self._tail = b""
            return buf
        self._tail = buf[end:]
        if PyBytes_GET_SIZE(self._tail) > self.max_event_bytes:
            raise ValueError("server-sent event exceeds the size limit")
        return buf[:end]


def split_events(bytes data):
    cdef list events = []
    cdef const char* s = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), start = 0, pos = 0, nl, lead
    cdef bint empty
    while pos < n:
        nl = pos
        while nl < n and s[nl] != 10:
            nl += 1
        if nl >= n:
            break
        empty = nl == pos or (nl == pos + 1 and s[pos] == 13)
        pos = nl + 1
        if empty:
            lead = 2 if (s[start] == 10 or s[start] == 13) else 0
            if pos - start > lead:
                events.append(PyBytes_FromStringAndSize(s + start, pos - start))
            start = pos
    if start < n:
        events.append(PyBytes_FromStringAndSize(s + start, n - start))
    return events


def event_data(bytes event):
    # PERF: one pass over the bytes with no line objects: an event's usual single ``data:`` line is
    # returned as its one slice (called once per translated stream event)
    cdef const char* s = PyBytes_AS_STRING(event)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(event), pos = 0, end, vstart, vend
    cdef bytes first = None
    cdef list out = None
    while pos <= n:
        end = pos
        while end < n and s[end] != 10:
            end += 1
        vend = end
        if vend > pos and s[vend - 1] == 13:
            vend -= 1
        if (vend - pos >= 5 and s[pos] == 100 and s[pos + 1] == 97 and s[pos + 2] == 116
                and s[pos + 3] == 97 and s[pos + 4] == 58):  # b"data:"
            vstart = pos + 5
            if vstart < vend and s[vstart] == 32:
                vstart += 1
            v = PyBytes_FromStringAndSize(s + vstart, vend - vstart)
            if first is None:
                first = v
            else:
                if out is None:
                    out = [first]
                out.append(v)
        pos = end + 1
    if first is None:
        return None
    if out is None:
        return first
    return b"\n".join(out)
