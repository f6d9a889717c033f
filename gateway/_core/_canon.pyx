# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled canonical form of a JSON request body, the response cache's key (twin and reference:
canon_py.py; the contract: gateway.cache.keys).

Why compiled: every request to a cached model, a miss included, needs its canonical form. The twin
decodes the whole body into Python objects (a dict per object, a str per string), sorts and encodes them
again; this writes the canonical bytes in one pass over the body, without a Python object per value.

Theory of operation. One recursive pass writes into a growable buffer (kept between calls, shrunk when
a large body grew it past ``_KEEP``):

    token            | written
    -----------------+----------------------------------------------------------------------------------
    whitespace       | nothing
    object           | its members, each ``"key":value`` where it lands; at the end, when they are not in
                     | key order, the object's bytes are copied aside and written back sorted (keys
                     | compared as UTF-8 bytes: the order of their code points, Python's str order)
    top-level key    | left out (its value still read) when it is one of ``ignored``
    string           | as is when it has no escape; else decoded and escaped again as msgspec writes it
                     | (``\\" \\\\ \\b \\f \\n \\r \\t``, other control characters ``\\u00xx``, the rest
                     | as UTF-8); raw non-ASCII bytes are checked to be UTF-8 (strictly, as Python does)
    integer          | as written (``-0``: ``0``)
    other number     | at most 15 significant digits and within 2**53 (what a double holds exactly and
                     | reads back the same): an integral value as an integer, any other in msgspec's
                     | layout of its digits (``0.7``, ``0.00001``, ``1e-7``, ``1.5e-300``)
    true false null  | as written

Anything else (a key written with escapes, a repeated key, a number with more digits or beyond 2**53,
nesting past ``_MAX_DEPTH``, a lone surrogate, bytes that are not JSON) is handed whole to the twin,
which decides: the bytes are then the reference's by construction, and so is a refusal (None).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

from gateway._core.canon_py import canonical_json as _reference

__all__ = ["Canonicaliser", "KeyHash", "canonical_json"]


DEF _MAX_DEPTH = 200
#: a buffer grown past this many bytes is freed after the call (a large body's is not kept)
DEF _KEEP = 1 << 20

# the walk's answers
DEF OK = 0
DEF FALLBACK = -1
DEF NOMEM = -2

# string bytes: 0 plain, 1 quote, 2 backslash, 3 control, 4 non-ASCII
cdef unsigned char _CLASS[256]
cdef int _i
for _i in range(256):
    _CLASS[_i] = 3 if _i < 32 else (4 if _i >= 128 else 0)
_CLASS[34] = 1
_CLASS[92] = 2

cdef const char* _HEX = b"0123456789abcdef"


cdef struct Member:
    Py_ssize_t start      # the member's first byte in the buffer (its key's opening quote)
    Py_ssize_t end        # past its last byte
    Py_ssize_t klen       # the key's length (bytes between its quotes)
    const char* key       # the key's first byte (set just before sorting)


cdef struct Writer:
    char* buf
    Py_ssize_t len
    Py_ssize_t cap
    Member* members
    Py_ssize_t nmem
    Py_ssize_t capmem
    char* tmp
    Py_ssize_t captmp


cdef Writer _w   # one per process: a call never runs Python code while it writes (the GIL is held)


cdef int _reserve(Writer* w, Py_ssize_t extra) noexcept:
    cdef Py_ssize_t need = w.len + extra, cap
    cdef char* grown
    if need <= w.cap:
        return OK
    cap = w.cap * 2 if w.cap else 4096
    while cap < need:
        cap *= 2
    grown = <char*>realloc(w.buf, cap)
    if grown == NULL:
        return NOMEM
    w.buf = grown
    w.cap = cap
    return OK


cdef int _member(Writer* w) noexcept:
    """Room for one more member record."""
    cdef Py_ssize_t cap
    cdef Member* grown
    if w.nmem < w.capmem:
        return OK
    cap = w.capmem * 2 if w.capmem else 64
    grown = <Member*>realloc(w.members, cap * sizeof(Member))
    if grown == NULL:
        return NOMEM
    w.members = grown
    w.capmem = cap
    return OK


cdef inline Py_ssize_t _ws(const unsigned char* s, Py_ssize_t n, Py_ssize_t pos) noexcept:
    while pos < n and (s[pos] == 32 or s[pos] == 10 or s[pos] == 13 or s[pos] == 9):
        pos += 1
    return pos


cdef Py_ssize_t _utf8(const unsigned char* s, Py_ssize_t n, Py_ssize_t pos) noexcept:
    """The end of the UTF-8 sequence starting at ``pos`` (a byte >= 0x80), or -1 when it is not strictly
    valid (overlong forms, surrogates and code points past U+10FFFF refused, as Python's decoder does)."""
    cdef unsigned char c = s[pos], c1
    cdef Py_ssize_t k, i
    if 0xC2 <= c <= 0xDF:
        k = 1
    elif 0xE0 <= c <= 0xEF:
        k = 2
    elif 0xF0 <= c <= 0xF4:
        k = 3
    else:
        return -1
    if pos + k >= n:
        return -1
    c1 = s[pos + 1]
    if c == 0xE0 and c1 < 0xA0:
        return -1
    if c == 0xED and c1 >= 0xA0:
        return -1
    if c == 0xF0 and c1 < 0x90:
        return -1
    if c == 0xF4 and c1 >= 0x90:
        return -1
    for i in range(1, k + 1):
        if (s[pos + i] & 0xC0) != 0x80:
            return -1
    return pos + k + 1


cdef inline int _hex4(const unsigned char* s, Py_ssize_t pos) noexcept:
    """The value of four hex digits at ``pos``, or -1."""
    cdef int v = 0, d, i
    cdef unsigned char c
    for i in range(4):
        c = s[pos + i]
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            return -1
        v = v * 16 + d
    return v


cdef inline void _put_char(Writer* w, unsigned int cp) noexcept:
    """One decoded character, escaped as msgspec escapes it (room reserved by the caller: at most 6)."""
    cdef char* o = w.buf + w.len
    if cp == 34 or cp == 92:
        o[0] = 92
        o[1] = <char>cp
        w.len += 2
    elif cp < 32:
        o[0] = 92
        if cp == 8:
            o[1] = 98
            w.len += 2
        elif cp == 12:
            o[1] = 102
            w.len += 2
        elif cp == 10:
            o[1] = 110
            w.len += 2
        elif cp == 13:
            o[1] = 114
            w.len += 2
        elif cp == 9:
            o[1] = 116
            w.len += 2
        else:
            o[1] = 117
            o[2] = 48
            o[3] = 48
            o[4] = _HEX[cp >> 4]
            o[5] = _HEX[cp & 15]
            w.len += 6
    elif cp < 0x80:
        o[0] = <char>cp
        w.len += 1
    elif cp < 0x800:
        o[0] = <char>(0xC0 | (cp >> 6))
        o[1] = <char>(0x80 | (cp & 0x3F))
        w.len += 2
    elif cp < 0x10000:
        o[0] = <char>(0xE0 | (cp >> 12))
        o[1] = <char>(0x80 | ((cp >> 6) & 0x3F))
        o[2] = <char>(0x80 | (cp & 0x3F))
        w.len += 3
    else:
        o[0] = <char>(0xF0 | (cp >> 18))
        o[1] = <char>(0x80 | ((cp >> 12) & 0x3F))
        o[2] = <char>(0x80 | ((cp >> 6) & 0x3F))
        o[3] = <char>(0x80 | (cp & 0x3F))
        w.len += 4


cdef Py_ssize_t _string(Writer* w, const unsigned char* s, Py_ssize_t n, Py_ssize_t pos, bint key) noexcept:
    """Write the string opened at ``pos``; the position past its closing quote, or FALLBACK / NOMEM.
    A key (``key``) must have no escape."""
    cdef Py_ssize_t i = pos + 1, run, nxt
    cdef unsigned char k
    cdef int hi, lo
    cdef unsigned int cp
    # the plain run: bytes copied as they are
    while True:
        while i < n and _CLASS[s[i]] == 0:
            i += 1
        if i >= n:
            return FALLBACK
        k = _CLASS[s[i]]
        if k == 4:
            i = _utf8(s, n, i)
            if i < 0:
                return FALLBACK
            continue
        break
    if k == 1:  # no escape: the string as written
        run = i + 1 - pos
        if _reserve(w, run) != OK:
            return NOMEM
        memcpy(w.buf + w.len, s + pos, run)
        w.len += run
        return i + 1
    if k == 3 or key:
        return FALLBACK
    # escapes: what precedes the first one as written, then decoded and escaped again
    run = i - pos
    if _reserve(w, n - pos + 1) != OK:  # escaped again, a string never grows
        return NOMEM
    memcpy(w.buf + w.len, s + pos, run)
    w.len += run
    while i < n:
        k = _CLASS[s[i]]
        if k == 0:
            w.buf[w.len] = <char>s[i]
            w.len += 1
            i += 1
        elif k == 1:
            w.buf[w.len] = 34
            w.len += 1
            return i + 1
        elif k == 4:
            nxt = _utf8(s, n, i)
            if nxt < 0:
                return FALLBACK
            memcpy(w.buf + w.len, s + i, nxt - i)
            w.len += nxt - i
            i = nxt
        elif k == 3:
            return FALLBACK
        else:
            if i + 1 >= n:
                return FALLBACK
            k = s[i + 1]
            if k == 117:  # \uXXXX
                if i + 6 > n:
                    return FALLBACK
                hi = _hex4(s, i + 2)
                if hi < 0:
                    return FALLBACK
                i += 6
                if 0xD800 <= hi <= 0xDBFF:
                    if i + 6 > n or s[i] != 92 or s[i + 1] != 117:
                        return FALLBACK
                    lo = _hex4(s, i + 2)
                    if not 0xDC00 <= lo <= 0xDFFF:
                        return FALLBACK
                    i += 6
                    cp = 0x10000 + ((<unsigned int>(hi - 0xD800)) << 10) + <unsigned int>(lo - 0xDC00)
                elif 0xDC00 <= hi <= 0xDFFF:
                    return FALLBACK
                else:
                    cp = <unsigned int>hi
                _put_char(w, cp)
            else:
                if k == 34 or k == 92 or k == 47:
                    cp = k
                elif k == 98:
                    cp = 8
                elif k == 102:
                    cp = 12
                elif k == 110:
                    cp = 10
                elif k == 114:
                    cp = 13
                elif k == 116:
                    cp = 9
                else:
                    return FALLBACK
                _put_char(w, cp)
                i += 2
    return FALLBACK


cdef Py_ssize_t _number(Writer* w, const unsigned char* s, Py_ssize_t n, Py_ssize_t pos) noexcept:
    """Write the number at ``pos`` in canonical form; the position past it, or FALLBACK / NOMEM."""
    cdef Py_ssize_t start = pos, int_start, int_end, frac_start = 0, frac_end = 0, i
    cdef Py_ssize_t first = -1, last = -1, digits = 0, e = 0, k, kk, L, j
    cdef bint neg = False, esign = False, has_frac = False, has_exp = False
    cdef char buf[48]
    cdef char* o
    cdef unsigned char c
    if s[pos] == 45:  # '-'
        neg = True
        pos += 1
    if pos >= n:
        return FALLBACK
    int_start = pos
    if s[pos] == 48:
        pos += 1
    elif 49 <= s[pos] <= 57:
        while pos < n and 48 <= s[pos] <= 57:
            pos += 1
    else:
        return FALLBACK
    int_end = pos
    if pos < n and s[pos] == 46:  # '.'
        has_frac = True
        pos += 1
        frac_start = pos
        while pos < n and 48 <= s[pos] <= 57:
            pos += 1
        frac_end = pos
        if frac_end == frac_start:
            return FALLBACK
    if pos < n and (s[pos] == 101 or s[pos] == 69):  # 'e' 'E'
        has_exp = True
        pos += 1
        if pos < n and (s[pos] == 43 or s[pos] == 45):
            esign = s[pos] == 45
            pos += 1
        i = pos
        while pos < n and 48 <= s[pos] <= 57:
            if pos - i >= 6:
                return FALLBACK  # an exponent of a million or more: the twin's
            e = e * 10 + (s[pos] - 48)
            pos += 1
        if pos == i:
            return FALLBACK
        if esign:
            e = -e
    if _reserve(w, 48 + (pos - start)) != OK:
        return NOMEM
    o = w.buf + w.len
    if not has_frac and not has_exp:  # an integer: as written
        if neg and int_end - int_start == 1 and s[int_start] == 48:
            o[0] = 48
            w.len += 1
        else:
            memcpy(o, s + start, pos - start)
            w.len += pos - start
        return pos
    # the significant digits: the first and last non-zero digit over the integer and fraction parts
    for i in range(int_start, int_end):
        if s[i] != 48:
            if first < 0:
                first = i
            last = i
    for i in range(frac_start, frac_end):
        if s[i] != 48:
            if first < 0:
                first = i
            last = i
    if first < 0:  # zero, whatever its sign: the integer 0
        o[0] = 48
        w.len += 1
        return pos
    # L digits D, value D * 10**k
    L = 0
    j = 0
    for i in range(first, last + 1):
        c = s[i]
        if c == 46:
            continue
        if L >= 15:
            return FALLBACK  # more than 15 significant digits: the twin's
        buf[L] = <char>c
        L += 1
    # the exponent of D's last digit: e, minus the fraction digits after it
    if has_frac and last >= frac_start:
        k = e - (last - frac_start + 1)
    else:
        k = e + (int_end - 1 - last)
    kk = L + k  # the decimal point's place counted from D's first digit
    i = 0
    if neg:
        o[0] = 45
        i = 1
    if k >= 0:  # integral
        if kk > 15:
            return FALLBACK  # beyond 2**53 a double may not hold it exactly: the twin's
        memcpy(o + i, buf, L)
        i += L
        for j in range(k):
            o[i] = 48
            i += 1
        w.len += i
        return pos
    if kk < -300:
        return FALLBACK  # near the subnormal range: the twin's
    if kk > 0:  # XY.Z
        memcpy(o + i, buf, kk)
        i += kk
        o[i] = 46
        i += 1
        memcpy(o + i, buf + kk, L - kk)
        i += L - kk
    elif kk > -5:  # 0.0XYZ
        o[i] = 48
        o[i + 1] = 46
        i += 2
        for j in range(-kk):
            o[i] = 48
            i += 1
        memcpy(o + i, buf, L)
        i += L
    else:  # X.YZe-N
        o[i] = buf[0]
        i += 1
        if L > 1:
            o[i] = 46
            i += 1
            memcpy(o + i, buf + 1, L - 1)
            i += L - 1
        o[i] = 101
        o[i + 1] = 45
        i += 2
        e = 1 - kk  # the exponent's magnitude (kk - 1 is negative)
        if e >= 100:
            o[i] = <char>(48 + e // 100)
            i += 1
        if e >= 10:
            o[i] = <char>(48 + (e // 10) % 10)
            i += 1
        o[i] = <char>(48 + e % 10)
        i += 1
    w.len += i
    return pos


cdef int _cmp(Member* a, Member* b) noexcept:
    cdef Py_ssize_t m = a.klen if a.klen < b.klen else b.klen
    cdef int r = memcmp(a.key, b.key, m)
    if r:
        return r
    return (a.klen > b.klen) - (a.klen < b.klen)


cdef int _sort(Writer* w, Py_ssize_t base) noexcept:
    """Put the members ``base:`` of the object just written in key order (FALLBACK: a repeated key)."""
    cdef Py_ssize_t count = w.nmem - base, i, j, region, start, end, size
    cdef Member* m = w.members + base
    cdef Member t
    cdef bint ordered = True
    cdef char* grown
    cdef char* o
    for i in range(count):
        m[i].key = w.buf + m[i].start + 1
    for i in range(1, count):
        if _cmp(&m[i - 1], &m[i]) >= 0:
            ordered = False
            break
    if ordered:
        return OK
    for i in range(1, count):  # insertion sort: objects have few keys
        t = m[i]
        j = i - 1
        while j >= 0 and _cmp(&m[j], &t) > 0:
            m[j + 1] = m[j]
            j -= 1
        m[j + 1] = t
    for i in range(1, count):
        if _cmp(&m[i - 1], &m[i]) == 0:
            return FALLBACK  # a repeated key (the last one wins): the twin's
    start = m[0].start
    for i in range(count):
        if m[i].start < start:
            start = m[i].start
    region = w.len - start
    if region > w.captmp:
        grown = <char*>realloc(w.tmp, region)
        if grown == NULL:
            return NOMEM
        w.tmp = grown
        w.captmp = region
    memcpy(w.tmp, w.buf + start, region)
    o = w.buf + start
    for i in range(count):
        if i:
            o[0] = 44
            o += 1
        size = m[i].end - m[i].start
        memcpy(o, w.tmp + (m[i].start - start), size)
        o += size
    return OK


cdef Py_ssize_t _value(Writer* w, const unsigned char* s, Py_ssize_t n, Py_ssize_t pos, int depth,
                       tuple ignored) noexcept:
    """Write the value at ``pos`` (no whitespace before it); the position past it, or FALLBACK / NOMEM."""
    cdef unsigned char c
    if pos >= n:
        return FALLBACK
    c = s[pos]
    if c == 34:
        return _string(w, s, n, pos, False)
    if c == 123:
        return _object(w, s, n, pos, depth + 1, ignored)
    if c == 91:
        return _array(w, s, n, pos, depth + 1)
    if c == 45 or 48 <= c <= 57:
        return _number(w, s, n, pos)
    if c == 116 and pos + 4 <= n and memcmp(s + pos, b"true", 4) == 0:
        return _literal(w, b"true", 4, pos)
    if c == 102 and pos + 5 <= n and memcmp(s + pos, b"false", 5) == 0:
        return _literal(w, b"false", 5, pos)
    if c == 110 and pos + 4 <= n and memcmp(s + pos, b"null", 4) == 0:
        return _literal(w, b"null", 4, pos)
    return FALLBACK


cdef Py_ssize_t _literal(Writer* w, const char* text, Py_ssize_t size, Py_ssize_t pos) noexcept:
    if _reserve(w, size) != OK:
        return NOMEM
    memcpy(w.buf + w.len, text, size)
    w.len += size
    return pos + size


cdef Py_ssize_t _array(Writer* w, const unsigned char* s, Py_ssize_t n, Py_ssize_t pos, int depth) noexcept:
    if depth > _MAX_DEPTH:
        return FALLBACK
    if _reserve(w, 2) != OK:
        return NOMEM
    w.buf[w.len] = 91
    w.len += 1
    pos = _ws(s, n, pos + 1)
    if pos < n and s[pos] == 93:
        w.buf[w.len] = 93
        w.len += 1
        return pos + 1
    while True:
        pos = _value(w, s, n, pos, depth, None)
        if pos < 0:
            return pos
        pos = _ws(s, n, pos)
        if pos >= n or _reserve(w, 1) != OK:
            return FALLBACK if pos >= n else NOMEM
        if s[pos] == 44:
            w.buf[w.len] = 44
            w.len += 1
            pos = _ws(s, n, pos + 1)
        elif s[pos] == 93:
            w.buf[w.len] = 93
            w.len += 1
            return pos + 1
        else:
            return FALLBACK


cdef bint _ignored(const unsigned char* key, Py_ssize_t size, tuple ignored) noexcept:
    cdef bytes name
    for item in ignored:
        name = <bytes>item
        if PyBytes_GET_SIZE(name) == size and memcmp(PyBytes_AS_STRING(name), key, size) == 0:
            return True
    return False


cdef Py_ssize_t _object(Writer* w, const unsigned char* s, Py_ssize_t n, Py_ssize_t pos, int depth,
                        tuple ignored) noexcept:
    """An object; ``ignored`` (the top level's only, else None): keys left out."""
    cdef Py_ssize_t base = w.nmem, start, mark, key_end, klen
    cdef int r
    if depth > _MAX_DEPTH:
        return FALLBACK
    if _reserve(w, 2) != OK:
        return NOMEM
    w.buf[w.len] = 123
    w.len += 1
    pos = _ws(s, n, pos + 1)
    if pos < n and s[pos] == 125:
        w.buf[w.len] = 125
        w.len += 1
        return pos + 1
    while True:
        if pos >= n or s[pos] != 34:
            return FALLBACK
        mark = w.len
        if w.nmem > base:  # a comma before every member but the first kept
            if _reserve(w, 1) != OK:
                return NOMEM
            w.buf[w.len] = 44
            w.len += 1
        start = w.len
        key_end = _string(w, s, n, pos, True)
        if key_end < 0:
            return key_end
        klen = w.len - start - 2
        pos = _ws(s, n, key_end)
        if pos >= n or s[pos] != 58:
            return FALLBACK
        if _reserve(w, 1) != OK:
            return NOMEM
        w.buf[w.len] = 58
        w.len += 1
        pos = _value(w, s, n, _ws(s, n, pos + 1), depth, None)
        if pos < 0:
            return pos
        if ignored is not None and _ignored(<const unsigned char*>w.buf + start + 1, klen, ignored):
            w.len = mark
        else:
            if _member(w) != OK:
                return NOMEM
            w.members[w.nmem].start = start
            w.members[w.nmem].end = w.len
            w.members[w.nmem].klen = klen
            w.nmem += 1
        pos = _ws(s, n, pos)
        if pos >= n:
            return FALLBACK
        if s[pos] == 44:
            pos = _ws(s, n, pos + 1)
        elif s[pos] == 125:
            break
        else:
            return FALLBACK
    r = _close(w, base)
    if r != OK:
        return r
    return pos + 1


cdef int _close(Writer* w, Py_ssize_t base) noexcept:
    cdef int r = OK
    if w.nmem - base > 1:
        r = _sort(w, base)
    w.nmem = base
    if r != OK:
        return r
    if _reserve(w, 1) != OK:
        return NOMEM
    w.buf[w.len] = 125
    w.len += 1
    return OK


cdef object _walk(bytes body, tuple ignored):
    """The canonical form of ``body`` written by the walk: bytes, or None (the twin decides)."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body), pos
    cdef Writer* w = &_w
    cdef object out = None
    w.len = 0
    w.nmem = 0
    if _reserve(w, n + 64) != OK:
        raise MemoryError()
    pos = _ws(s, n, 0)
    if pos < n and s[pos] == 123:
        pos = _object(w, s, n, pos, 1, ignored)
        if pos == NOMEM:
            _release(w)
            raise MemoryError()
        if pos >= 0 and _ws(s, n, pos) == n:
            out = PyBytes_FromStringAndSize(w.buf, w.len)
    _release(w)
    return out


cdef void _release(Writer* w) noexcept:
    """Free what a large body grew (the usual buffers are kept for the next call)."""
    if w.cap > _KEEP:
        free(w.buf)
        w.buf = NULL
        w.cap = 0
    if w.captmp > _KEEP:
        free(w.tmp)
        w.tmp = NULL
        w.captmp = 0
    if w.capmem > 4096:
        free(w.members)
        w.members = NULL
        w.capmem = 0


def canonical_json(bytes body, ignored=()):
    return Canonicaliser(ignored).canonical(body)


cdef class Canonicaliser:

    def __init__(self, ignored=()):
        self.ignored = tuple(ignored)
        self._names = tuple(name.encode("utf-8") for name in self.ignored)

    cpdef object canonical(self, bytes body):
        """``body`` in canonical form without the ignored fields; None when it is not a JSON object."""
        out = _walk(body, self._names)
        if out is None:
            return _reference(body, self.ignored)
        return out


# -- the key's hash: BLAKE2b (RFC 7693), 32 bytes, unkeyed ------------------------------------------
#
# PERF: a cache key is a BLAKE2b over the key's head, the dialect's header part and the canonical body.
# Through hashlib that is a copy of a prepared object, two updates and a digest: four Python calls and a
# bytes object for the canonical body. Here the prepared state is a struct copied on the stack and the
# canonical body is hashed where the walk wrote it. Same function, same bytes: the tests compare it with
# hashlib on every length around the block size.

from libc.stdint cimport uint8_t, uint64_t

cdef extern from *:
    """
    /* BLAKE2b's compression function (RFC 7693, section 3.2), its rounds unrolled over sixteen locals */
    static const uint64_t gw_blake2b_iv[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
        0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};
    static const uint8_t gw_blake2b_sigma[12][16] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
        {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
        {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
        {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
        {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
        {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
        {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
        {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
        {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};
    #define GW_ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
    #define GW_G(r, i, a, b, c, d) do { \
        a = a + b + m[gw_blake2b_sigma[r][2 * i]]; d = GW_ROTR64(d ^ a, 32); \
        c = c + d; b = GW_ROTR64(b ^ c, 24); \
        a = a + b + m[gw_blake2b_sigma[r][2 * i + 1]]; d = GW_ROTR64(d ^ a, 16); \
        c = c + d; b = GW_ROTR64(b ^ c, 63); } while (0)
    #define GW_ROUND(r) do { \
        GW_G(r, 0, v0, v4, v8, v12); GW_G(r, 1, v1, v5, v9, v13); \
        GW_G(r, 2, v2, v6, v10, v14); GW_G(r, 3, v3, v7, v11, v15); \
        GW_G(r, 4, v0, v5, v10, v15); GW_G(r, 5, v1, v6, v11, v12); \
        GW_G(r, 6, v2, v7, v8, v13); GW_G(r, 7, v3, v4, v9, v14); } while (0)
    static void gw_blake2b_compress(uint64_t *h, const uint8_t *block, uint64_t t, int last) {
        uint64_t m[16];
        int i;
        for (i = 0; i < 16; i++) {
            const uint8_t *p = block + 8 * i;
            m[i] = (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) | ((uint64_t)p[3] << 24)
                 | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) | ((uint64_t)p[6] << 48)
                 | ((uint64_t)p[7] << 56);
        }
        uint64_t v0 = h[0], v1 = h[1], v2 = h[2], v3 = h[3], v4 = h[4], v5 = h[5], v6 = h[6], v7 = h[7];
        uint64_t v8 = gw_blake2b_iv[0], v9 = gw_blake2b_iv[1], v10 = gw_blake2b_iv[2];
        uint64_t v11 = gw_blake2b_iv[3], v12 = gw_blake2b_iv[4] ^ t, v13 = gw_blake2b_iv[5];
        uint64_t v14 = last ? ~gw_blake2b_iv[6] : gw_blake2b_iv[6], v15 = gw_blake2b_iv[7];
        GW_ROUND(0); GW_ROUND(1); GW_ROUND(2); GW_ROUND(3); GW_ROUND(4); GW_ROUND(5);
        GW_ROUND(6); GW_ROUND(7); GW_ROUND(8); GW_ROUND(9); GW_ROUND(10); GW_ROUND(11);
        h[0] ^= v0 ^ v8; h[1] ^= v1 ^ v9; h[2] ^= v2 ^ v10; h[3] ^= v3 ^ v11;
        h[4] ^= v4 ^ v12; h[5] ^= v5 ^ v13; h[6] ^= v6 ^ v14; h[7] ^= v7 ^ v15;
    }
    """
    const uint64_t* gw_blake2b_iv
    void gw_blake2b_compress(uint64_t* h, const uint8_t* block, uint64_t t, int last) noexcept


cdef inline void _compress(Blake* b, const uint8_t* block, bint last) noexcept:
    gw_blake2b_compress(b.h, block, b.t, last)


cdef void _blake_init(Blake* b) noexcept:
    cdef int i
    for i in range(8):
        b.h[i] = gw_blake2b_iv[i]
    b.h[0] ^= 0x01010000ULL ^ 32  # digest length 32, no key, fanout 1, depth 1
    b.t = 0
    b.buflen = 0


cdef void _blake_update(Blake* b, const uint8_t* data, Py_ssize_t n) noexcept:
    """Absorb ``n`` bytes; a full buffer is compressed only once more input comes (the last block is
    compressed by ``_blake_final``, flagged)."""
    cdef Py_ssize_t fill
    if n <= 0:
        return
    fill = 128 - b.buflen
    if n > fill:
        memcpy(b.buf + b.buflen, data, fill)
        b.t += 128
        _compress(b, b.buf, False)
        b.buflen = 0
        data += fill
        n -= fill
        while n > 128:
            b.t += 128
            _compress(b, data, False)
            data += 128
            n -= 128
    memcpy(b.buf + b.buflen, data, n)
    b.buflen += n


cdef bytes _blake_final(Blake* b):
    cdef uint8_t out[32]
    cdef int i, j
    b.t += b.buflen
    for i in range(b.buflen, 128):
        b.buf[i] = 0
    _compress(b, b.buf, True)
    for i in range(4):
        for j in range(8):
            out[8 * i + j] = <uint8_t>(b.h[i] >> (8 * j))
    return PyBytes_FromStringAndSize(<char*>out, 32)


cdef class KeyHash:

    def __init__(self, bytes head, Canonicaliser form):
        self.head = head
        self.form = form
        _blake_init(&self._state)
        _blake_update(&self._state, <const uint8_t*>PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))

    cpdef bytes digest(self, bytes extra, bytes canon):
        cdef Blake b = self._state
        _blake_update(&b, <const uint8_t*>PyBytes_AS_STRING(extra), PyBytes_GET_SIZE(extra))
        _blake_update(&b, <const uint8_t*>PyBytes_AS_STRING(canon), PyBytes_GET_SIZE(canon))
        return _blake_final(&b)

    cpdef object key(self, bytes extra, bytes body):
        cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(body)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(body), pos
        cdef Writer* w = &_w
        cdef Blake b
        w.len = 0
        w.nmem = 0
        if _reserve(w, n + 64) != OK:
            raise MemoryError()
        pos = _ws(s, n, 0)
        if pos < n and s[pos] == 123:
            pos = _object(w, s, n, pos, 1, self.form._names)
            if pos == NOMEM:
                _release(w)
                raise MemoryError()
            if pos >= 0 and _ws(s, n, pos) == n:
                b = self._state
                _blake_update(&b, <const uint8_t*>PyBytes_AS_STRING(extra), PyBytes_GET_SIZE(extra))
                _blake_update(&b, <const uint8_t*>w.buf, w.len)
                _release(w)
                return _blake_final(&b)
        _release(w)
        canon = _reference(body, self.form.ignored)
        if canon is None:
            return None
        return self.digest(extra, canon)
