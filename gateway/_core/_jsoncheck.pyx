# cython: language_level=3
"""Compiled checks of a JSON body before it is decoded (twin and reference: jsoncheck_py.py, which has
the theory of operation).

Why compiled: it runs once per proxied request over the whole body. Strings (most of a chat body) are
skipped with memchr; only the bytes between them are looked at one by one.
"""

import json

from gateway._core.jsoncheck_py import watch_tables

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp

__all__ = ["TOO_DEEP", "KeyWatch", "check_json"]

TOO_DEEP = -1


cdef class KeyWatch:

    def __init__(self, keys=(), nested=None):
        # built once per endpoint, by the twin's code (one place for the tables' layout)
        self.paths, self._top, self._nested, self._inner = watch_tables(keys, nested)

    cpdef Py_ssize_t check(self, bytes data, Py_ssize_t max_depth) except? -2:
        """``check_json(data, max_depth, self)``, called at C level by the compiled engine."""
        return _check(data, max_depth, self)


cdef Py_ssize_t _string_end(const char* s, Py_ssize_t n, Py_ssize_t start) noexcept:
    """Index of the quote that ends the string opened at ``start`` (-1: it never ends)."""
    cdef Py_ssize_t pos = start + 1, q, k
    cdef const char* p
    while pos < n:
        p = <const char*>memchr(s + pos, 34, n - pos)
        if p == NULL:
            return -1
        q = p - s
        k = q - 1
        while k > start and s[k] == 92:
            k -= 1
        if (q - 1 - k) % 2 == 0:
            return q
        pos = q + 1
    return -1


cdef Py_ssize_t _key_index(const char* s, Py_ssize_t start, Py_ssize_t end, tuple names) except -2:
    """Index of the key in ``s[start:end]`` (without its quotes) among ``names``, or -1."""
    cdef Py_ssize_t n = end - start, i
    cdef bytes name, raw
    for i in range(len(names)):  # names have no backslash: a key equal to one is not escaped
        name = <bytes>names[i]
        if PyBytes_GET_SIZE(name) == n and memcmp(PyBytes_AS_STRING(name), s + start, n) == 0:
            return i
    if memchr(s + start, 92, n) == NULL:
        return -1
    # escaped: decode it as the decoder would
    raw = PyBytes_FromStringAndSize(s + start - 1, n + 2)
    try:
        decoded = json.loads(raw).encode("utf-8", "surrogatepass")
    except ValueError:
        return -1
    try:
        return names.index(decoded)
    except ValueError:
        return -1


def check_json(bytes data, Py_ssize_t max_depth, KeyWatch watch=None):
    return _check(data, max_depth, watch)


cdef Py_ssize_t _check(bytes data, Py_ssize_t max_depth, KeyWatch watch) except? -2:
    cdef const char* s = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, end, depth = 0, current = -1, k, inner_start = 0
    cdef tuple top = watch._top if watch is not None else ()
    cdef tuple nested = watch._nested if watch is not None else ()
    cdef bint watch_inner = watch is not None and watch._inner
    cdef bint has_top = len(top) > 0
    cdef bint top_object = False, key_next = False, in_inner = False, inner_next = False
    cdef unsigned long long seen = 0, inner_seen = 0
    cdef tuple inner_names = ()
    cdef char c
    while pos < n:
        c = s[pos]
        if c == 34:  # '"'
            end = _string_end(s, n, pos)
            if end < 0:
                return 0
            if depth == 1 and key_next:
                key_next = False
                current = _key_index(s, pos + 1, end, top) if has_top else -1
                if current >= 0:
                    if (seen >> current) & 1:
                        return current + 1
                    seen |= 1ULL << current
            elif depth == 2 and inner_next and in_inner:
                inner_next = False
                k = _key_index(s, pos + 1, end, inner_names)
                if k >= 0:
                    if (inner_seen >> k) & 1:
                        return inner_start + k + 1
                    inner_seen |= 1ULL << k
            pos = end + 1
            continue
        if c == 123 or c == 91:  # '{' '['
            depth += 1
            if depth > max_depth:
                return TOO_DEEP
            if depth == 1:
                top_object = c == 123
                key_next = top_object
                seen = 0
                current = -1
            elif depth == 2:
                in_inner = False
                if c == 123 and top_object and watch_inner and current >= 0:
                    spec = nested[current]
                    if spec is not None:
                        in_inner = True
                        inner_start = spec[0]
                        inner_names = spec[1]
                        inner_next = True
                        inner_seen = 0
        elif c == 44:  # ','
            if depth == 1:
                key_next = top_object
            elif depth == 2 and in_inner:
                inner_next = True
        elif c == 125 or c == 93:  # '}' ']'
            if depth > 0:
                depth -= 1
        pos += 1
    return 0
