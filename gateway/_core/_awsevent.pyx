# cython: language_level=3
"""Compiled AWS event-stream framing for the Bedrock ConverseStream relay (twin, reference and theory of
operation: awsevent_py.py).

Why compiled: it runs once per streamed Bedrock event; botocore's pure-Python ``EventStreamBuffer`` cost
about 10 µs of CPU per event (prelude, typed headers, two CRCs), five times the rest of the relay.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint32_t
from libc.string cimport memcmp

from gateway._core.errors import EventStreamError

__all__ = [
    "MAX_HEADERS_LENGTH", "MAX_PAYLOAD_LENGTH", "PRELUDE_LENGTH", "EventStreamDecoder", "EventStreamError",
    "Message",
]

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    const void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)


# ---- CRC-32 (ISO-HDLC, zlib's): slicing by 8 bytes over tables built at import. Our own rather than
# zlib's C function so that the build needs no zlib headers (the twin and the tests use zlib's).

cdef uint32_t _T[8][256]


cdef void _crc_tables() noexcept:
    cdef uint32_t c
    cdef int i, k
    for i in range(256):
        c = i
        for k in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        _T[0][i] = c
    for i in range(256):
        c = _T[0][i]
        for k in range(1, 8):
            c = _T[0][c & 0xFF] ^ (c >> 8)
            _T[k][i] = c


_crc_tables()


cdef uint32_t crc32(uint32_t crc, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """``zlib.crc32(bytes, crc)``: chained from ``crc`` (0 to start)."""
    cdef uint32_t c = ~crc, one, two
    while n >= 8:
        one = c ^ (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24))
        two = <uint32_t>p[4] | (<uint32_t>p[5] << 8) | (<uint32_t>p[6] << 16) | (<uint32_t>p[7] << 24)
        c = (_T[7][one & 0xFF] ^ _T[6][(one >> 8) & 0xFF] ^ _T[5][(one >> 16) & 0xFF] ^ _T[4][one >> 24]
             ^ _T[3][two & 0xFF] ^ _T[2][(two >> 8) & 0xFF] ^ _T[1][(two >> 16) & 0xFF] ^ _T[0][two >> 24])
        p += 8
        n -= 8
    while n > 0:
        c = _T[0][(c ^ p[0]) & 0xFF] ^ (c >> 8)
        p += 1
        n -= 1
    return ~c

PRELUDE_LENGTH = 12
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024


cdef inline uint32_t _u32(const unsigned char* p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline uint32_t _u16(const unsigned char* p) noexcept:
    return (<uint32_t>p[0] << 8) | <uint32_t>p[1]


cdef inline int64_t _i64(const unsigned char* p) noexcept:
    cdef unsigned long long v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return <int64_t>v


cdef class Message:

    def __init__(self, dict headers, bytes payload):
        self.headers = headers
        self.payload = payload

    def __repr__(self):
        return f"Message(headers={self.headers!r}, payload={self.payload!r})"


cdef str _text(const unsigned char* p, Py_ssize_t n, str name):
    # name: the header whose value this is (None: the text is a header's name)
    try:
        return PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
    except UnicodeDecodeError:
        what = "a header name" if name is None else f"header {name!r}"
        raise EventStreamError(f"{what} is not valid UTF-8") from None


#: strings a decoder remembers (header names and string values: a stream repeats the same few), and the
#: longest it remembers
cdef enum:
    _CACHED = 16
    _CACHED_LENGTH = 64


cdef inline str _cached(list cache, const unsigned char* p, Py_ssize_t n, str name):
    # PERF: a string seen before in this stream is the same str object again: no decoding, no
    # allocation, and its hash is already computed for the headers dict. Only ASCII strings are kept,
    # so their characters are their UTF-8 bytes.
    cdef str s
    if n > _CACHED_LENGTH:
        return _text(p, n, name)
    for s in cache:
        if PyUnicode_GET_LENGTH(s) == n and memcmp(PyUnicode_DATA(s), p, n) == 0:
            return s
    s = _text(p, n, name)
    if len(cache) < _CACHED and PyUnicode_IS_ASCII(s):
        cache.append(s)
    return s


cdef dict _headers(list cache, const unsigned char* p, Py_ssize_t end):
    cdef dict headers = {}
    cdef Py_ssize_t pos = 0, size, width
    cdef unsigned char kind
    cdef str name
    cdef object value
    while pos < end:
        size = p[pos]
        pos += 1
        if pos + size + 1 > end:
            raise EventStreamError("a header name overruns the headers section")
        name = _cached(cache, p + pos, size, None)
        kind = p[pos + size]
        pos += size + 1
        if kind == 7 or kind == 6:
            if pos + 2 > end or pos + 2 + <Py_ssize_t>_u16(p + pos) > end:
                raise EventStreamError(f"header {name!r} overruns the headers section")
            width = _u16(p + pos)
            if kind == 7:
                value = _cached(cache, p + pos + 2, width, name)
            else:
                value = PyBytes_FromStringAndSize(<const char*>p + pos + 2, width)
            pos += 2 + width
        elif kind <= 1:
            value = kind == 0
        elif kind <= 5 or kind == 8 or kind == 9:
            width = 1 if kind == 2 else 2 if kind == 3 else 4 if kind == 4 else 16 if kind == 9 else 8
            if pos + width > end:
                raise EventStreamError(f"header {name!r} overruns the headers section")
            if kind == 2:
                value = <int8_t>p[pos]
            elif kind == 3:
                value = <int16_t>_u16(p + pos)
            elif kind == 4:
                value = <int32_t>_u32(p + pos)
            elif kind == 9:
                value = PyBytes_FromStringAndSize(<const char*>p + pos, 16)
            else:
                value = _i64(p + pos)
            pos += width
        else:
            raise EventStreamError(f"header {name!r} has an unknown type {kind}")
        if name in headers:
            raise EventStreamError(f"header {name!r} appears twice")
        headers[name] = value
    return headers


cdef class EventStreamDecoder:

    def __init__(self, Py_ssize_t max_headers_length=MAX_HEADERS_LENGTH,
                 Py_ssize_t max_payload_length=MAX_PAYLOAD_LENGTH):
        self._buf = bytearray()
        self._start = 0
        self._total = 0
        self._error = None
        self._strings = []
        self.max_headers_length = max_headers_length
        self.max_payload_length = max_payload_length

    @property
    def pending(self):
        return PyByteArray_GET_SIZE(self._buf) - self._start

    cpdef feed(self, bytes data):
        if self._error is not None:
            raise self._error
        if self._start:
            # PERF: consumed messages leave the buffer once per feed, not once per message (CPython
            # moves a bytearray's start on a deletion from the front)
            del self._buf[:self._start]
            self._start = 0
        self._buf += data

    def __iter__(self):
        return self

    def __next__(self):
        if self._error is not None:
            raise self._error
        message = self._next()
        if message is None:
            raise StopIteration
        return message

    def close(self):
        if self._error is not None:
            raise self._error
        cdef Py_ssize_t left = PyByteArray_GET_SIZE(self._buf) - self._start
        if left:
            self._error = EventStreamError(f"the stream ended inside a message ({left} bytes of it arrived)")
            raise self._error

    cdef Message _next(self):
        try:
            return self._parse()
        except EventStreamError as e:
            self._error = e
            raise

    cdef Message _parse(self):
        cdef Py_ssize_t have = PyByteArray_GET_SIZE(self._buf) - self._start
        cdef const unsigned char* p = <const unsigned char*>PyByteArray_AS_STRING(self._buf) + self._start
        cdef Py_ssize_t total, head
        cdef uint32_t expected
        cdef Message message
        if not self._total:
            if have < 12:
                return None
            self._total = self._prelude(p)
        total = self._total
        if have < total:
            return None
        expected = _u32(p + total - 4)
        if crc32(_u32(p + 8), p + 8, total - 12) != expected:
            self._start += total
            self._total = 0
            raise EventStreamError("the message checksum does not match")
        head = _u32(p + 4)
        message = Message.__new__(Message)
        message.headers = _headers(self._strings, p + 12, head)
        message.payload = PyBytes_FromStringAndSize(<const char*>p + 12 + head, total - head - 16)
        self._start += total
        self._total = 0
        return message

    cdef Py_ssize_t _prelude(self, const unsigned char* p) except -1:
        cdef Py_ssize_t total = _u32(p), head = _u32(p + 4), payload
        if crc32(0, p, 8) != _u32(p + 8):
            raise EventStreamError("the prelude checksum does not match")
        if head > self.max_headers_length:
            raise EventStreamError(f"headers of {head} bytes exceed the limit of {self.max_headers_length}")
        payload = total - head - 16
        if payload < 0:
            raise EventStreamError(f"a total length of {total} cannot hold {head} bytes of headers")
        if payload > self.max_payload_length:
            raise EventStreamError(f"a payload of {payload} bytes exceeds the limit of {self.max_payload_length}")
        return total
