# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled JSON line writer (twin and reference: recline_py.py, which has the theory of operation).

Why compiled: it writes every call record, some 20 members each, at the request rate. A member is a
``memcpy`` of its key and of its value's characters (a plain ASCII string as it is, an integer's digits
written by hand, a time cut to its decimals written as an integer's digits): no Python object is made
per member, and one ``bytes`` per iteration's records.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.math cimport floor, isfinite
from libc.string cimport memcpy

import msgspec

__all__ = ["LineWriter"]

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

cdef object _encode = msgspec.json.encode

#: beyond this many thousandths or millionths a value is written by msgspec: below it, the nearest float
#: to a number of 3 (6) decimals is less than a thousandth (millionth) from its neighbours, so the
#: shortest text that reads back as that float, which msgspec writes, is those decimals (less than 2**52
#: ms and 2**32 s: 140 years, the year 2106)
DEF BIG = 4000000000000000


cdef bint _is_decimal(const unsigned char* p, Py_ssize_t k) noexcept:
    """``p[:k]`` is a JSON number of digits and at most one dot (``12``, ``0.06``; not ``01``, ``1.``)."""
    cdef Py_ssize_t i
    cdef int dots = 0
    cdef unsigned char c
    if not (0 < k < 32 and 48 <= p[0] <= 57 and 48 <= p[k - 1] <= 57):
        return False
    if p[0] == 48 and k > 1 and p[1] != 46:
        return False
    for i in range(k):
        c = p[i]
        if c == 46:
            dots += 1
        elif not 48 <= c <= 57:
            return False
    return dots <= 1


cdef class LineWriter:
    """An output buffer of JSON lines, written member by member (see ``recline_py.LineWriter``)."""

    def __cinit__(self):
        self.buf = NULL
        self.cap = 0
        self.n = 0

    def __dealloc__(self):
        if self.buf != NULL:
            PyMem_Free(self.buf)

    cdef int _room(self, Py_ssize_t more) except -1:
        cdef Py_ssize_t cap
        cdef char* grown
        if self.n + more <= self.cap:
            return 0
        cap = self.cap * 2 if self.cap else 16384
        while cap < self.n + more:
            cap *= 2
        grown = <char*>PyMem_Realloc(self.buf, cap)
        if grown == NULL:
            raise MemoryError()
        self.buf = grown
        self.cap = cap
        return 0

    cdef inline int _put(self, const char* s, Py_ssize_t k) except -1:
        self._room(k)
        memcpy(self.buf + self.n, s, k)
        self.n += k
        return 0

    cdef int _bytes(self, bytes b) except -1:
        return self._put(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    cdef int _digits(self, unsigned long long v) except -1:
        cdef char tmp[24]
        cdef int i = 24
        if v == 0:
            i -= 1
            tmp[i] = 48
        while v:
            i -= 1
            tmp[i] = 48 + <int>(v % 10)
            v //= 10
        return self._put(tmp + i, 24 - i)

    cdef int _decimals(self, unsigned long long whole, unsigned long long frac, int places) except -1:
        """``whole.frac`` with ``places`` decimals, trailing zeros cut (one kept): as ``repr`` writes
        ``(whole * 10**places + frac) / 10**places``."""
        cdef char tmp[8]
        cdef int k = places
        cdef int i
        self._digits(whole)
        while k > 1 and frac % 10 == 0:
            frac //= 10
            k -= 1
        tmp[0] = 46
        for i in range(k, 0, -1):
            tmp[i] = 48 + <int>(frac % 10)
            frac //= 10
        return self._put(tmp, k + 1)

    cpdef raw(self, bytes data):
        """``data`` as it is (a key, ``}\\n``, an encoded value)."""
        self._bytes(data)

    cpdef string(self, bytes key, object value):
        """``key`` then ``value`` (a ``str``) as a JSON string; anything else as msgspec encodes it."""
        cdef const unsigned char* p
        cdef Py_ssize_t k, i
        cdef unsigned char c
        self._bytes(key)
        if type(value) is str and PyUnicode_IS_COMPACT_ASCII(value):
            p = <const unsigned char*>PyUnicode_DATA(value)
            k = PyUnicode_GET_LENGTH(value)
            for i in range(k):
                c = p[i]
                if c < 32 or c == 34 or c == 92 or c == 127:
                    break
            else:
                self._room(k + 2)
                self.buf[self.n] = 34
                memcpy(self.buf + self.n + 1, p, k)
                self.buf[self.n + 1 + k] = 34
                self.n += k + 2
                return
        self._bytes(_encode(value))

    cpdef integer(self, bytes key, object value):
        """``key`` then ``value``: an ``int``'s digits; anything else as msgspec encodes it."""
        cdef int overflow = 0
        cdef long long v
        self._bytes(key)
        if PyLong_CheckExact(value):
            v = PyLong_AsLongLongAndOverflow(value, &overflow)
            if not overflow:
                if v < 0:
                    self._put("-", 1)
                    self._digits(<unsigned long long>(-(v + 1)) + 1)
                else:
                    self._digits(<unsigned long long>v)
                return
        self._bytes(_encode(value))

    cpdef millis(self, bytes key, double value):
        """``key`` then ``value`` cut (not rounded) to three decimals, as ``x * 1000 // 1 / 1000``."""
        self._fixed(key, floor(value * 1000.0), 1000, 3)

    cpdef micros(self, bytes key, double value):
        """``key`` then ``value`` rounded to six decimals (a time of day in seconds)."""
        self._fixed(key, floor(value * 1000000.0 + 0.5), 1000000, 6)

    cdef int _fixed(self, bytes key, double k, unsigned long long scale, int places) except -1:
        """``key`` then ``k / scale`` (``k`` a whole number) with ``places`` decimals; what is out of range
        (negative, huge, not finite) as msgspec writes the quotient."""
        cdef unsigned long long v
        self._bytes(key)
        if not (isfinite(k) and 0.0 <= k < BIG):
            return self._bytes(_encode(k / <double>scale))
        v = <unsigned long long>k
        return self._decimals(v // scale, v % scale, places)

    cpdef number(self, bytes key, object value):
        """``key`` then ``value``: a ``float`` (as msgspec writes it: the shortest form that reads back;
        null when not finite), or a ``str`` that is already a number's text."""
        cdef const unsigned char* p
        cdef Py_ssize_t k, i
        cdef unsigned char c
        self._bytes(key)
        if type(value) is str and PyUnicode_IS_COMPACT_ASCII(value):
            p = <const unsigned char*>PyUnicode_DATA(value)
            k = PyUnicode_GET_LENGTH(value)
            if _is_decimal(p, k):
                self._put(<const char*>p, k)
                return
            value = float(value)
        self._bytes(_encode(value))

    cpdef Py_ssize_t mark(self):
        """Where the next byte goes: ``cut(mark)`` takes back what was written after."""
        return self.n

    cpdef cut(self, Py_ssize_t at):
        if 0 <= at < self.n:
            self.n = at

    cpdef bytes take(self):
        """What was written, as one ``bytes``; the writer is empty again."""
        out = PyBytes_FromStringAndSize(self.buf, self.n)
        self.n = 0
        if self.cap > (1 << 23):  # a large burst: give the memory back (a flush interval's lines stay)
            PyMem_Free(self.buf)
            self.buf = NULL
            self.cap = 0
        return out

    @property
    def size(self):
        return self.n
