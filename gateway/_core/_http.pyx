# cython: language_level=3
"""Compiled HTTP/1.1 framing (twin and reference: http_py.py; same API, same behaviour).

Why compiled: request-head parsing and response-head writing run for every request; the twin costs
about 9 us per typical request head, this module about 1 us (docs/architecture.md, "The core").
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint64_t
from libc.errno cimport EINTR, errno
from libc.string cimport memchr, memcmp, memcpy
from posix.uio cimport iovec, writev
from posix.unistd cimport write

from gateway._core.errors import ParseError

__all__ = [
    "STATE_BODY", "STATE_HEAD", "STATE_IDLE", "ChunkedDecoder", "ParseError", "Request",
    "RequestParser", "ResponseParser", "build_request", "build_response_head", "chunk_frame", "find_header",
    "ms_text", "reason_phrase", "select_headers", "send_now", "send_pieces_now",
]

STATE_IDLE = 0
STATE_HEAD = 1
STATE_BODY = 2

DEF MAX_CHUNK_LINE = 4096

cdef dict _REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

# PERF: status lines are built once, not per response
cdef dict _STATUS_LINES = {}  # status -> bytes


def reason_phrase(int status):
    return _REASONS.get(status, "Unknown")


# token characters (RFC 9110 5.6.2)
cdef unsigned char _TCHAR[256]
cdef unsigned char _LOWER[256]
cdef unsigned char _HEXVAL[256]


cdef void _init_tables():
    cdef int i
    cdef bytes tchars = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for i in range(256):
        _TCHAR[i] = 0
        _LOWER[i] = i + 32 if 65 <= i <= 90 else i
        _HEXVAL[i] = 255
    for i in range(len(tchars)):
        _TCHAR[<unsigned char>tchars[i]] = 1
    for i in range(10):
        _HEXVAL[48 + i] = i
    for i in range(6):
        _HEXVAL[97 + i] = 10 + i
        _HEXVAL[65 + i] = 10 + i


_init_tables()

# PERF: the header names seen on nearly every request and answer, lower case, kept as one bytes object
# each: a parsed name equal to one of them is that object (no allocation, and the lookups by name compare
# it by identity first). ``_NAMES_BY_LEN[n]``: those of length n.
_COMMON_NAMES = (
    b"host", b"accept", b"connection", b"keep-alive", b"content-type", b"content-length", b"authorization",
    b"user-agent", b"x-request-id", b"transfer-encoding", b"expect", b"accept-encoding", b"date", b"server",
    b"cache-control", b"x-api-key", b"openai-processing-ms", b"openai-version", b"retry-after",
    b"x-stainless-lang", b"x-stainless-package-version", b"x-stainless-os", b"x-stainless-arch",
    b"x-stainless-runtime", b"x-stainless-runtime-version", b"x-stainless-retry-count",
    b"anthropic-version", b"request-id", b"vary", b"set-cookie",
)
cdef Py_ssize_t _MAX_COMMON = 32
cdef tuple _NAMES_BY_LEN = tuple(tuple(n for n in _COMMON_NAMES if len(n) == i) for i in range(_MAX_COMMON))


cdef bytes _header_name(const char* s, Py_ssize_t n):
    """The lower-case name ``s[:n]`` as bytes: one of ``_COMMON_NAMES`` when it is one."""
    cdef char buf[32]
    cdef bytes name
    cdef tuple candidates
    cdef Py_ssize_t i
    if n < _MAX_COMMON:
        _lower_into(buf, s, n)
        candidates = <tuple>_NAMES_BY_LEN[n]
        for i in range(len(candidates)):
            name = <bytes>candidates[i]
            if memcmp(PyBytes_AS_STRING(name), buf, n) == 0:
                return name
        return PyBytes_FromStringAndSize(buf, n)
    name = PyBytes_FromStringAndSize(NULL, n)
    _lower_into(PyBytes_AS_STRING(name), s, n)
    return name


cdef inline Py_ssize_t _find_crlf(const char* s, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef const char* p
    cdef Py_ssize_t i = start
    while i < end - 1:
        p = <const char*>memchr(s + i, 13, end - 1 - i)
        if p == NULL:
            return -1
        i = p - s
        if s[i + 1] == 10:
            return i
        i += 1
    return -1


cdef inline Py_ssize_t _find_head_end(const char* s, Py_ssize_t start, Py_ssize_t end) noexcept:
    """Index of the CRLFCRLF that ends a head, or -1."""
    cdef const char* p
    cdef Py_ssize_t i = start
    while i < end - 3:
        p = <const char*>memchr(s + i, 13, end - 3 - i)
        if p == NULL:
            return -1
        i = p - s
        if s[i + 1] == 10 and s[i + 2] == 13 and s[i + 3] == 10:
            return i
        i += 1
    return -1


cdef inline bint _bare_lf(const char* s, Py_ssize_t start, Py_ssize_t end) noexcept:
    """True when s[start:end] holds an LF that no CR precedes (see the twin)."""
    cdef const char* p
    cdef Py_ssize_t i = start
    while i < end:
        p = <const char*>memchr(s + i, 10, end - i)
        if p == NULL:
            return False
        i = p - s
        if i == start or s[i - 1] != 13:
            return True
        i += 1
    return False


cdef inline bint _valid_text(const char* s, Py_ssize_t start, Py_ssize_t end) noexcept:
    """A field value's bytes: VCHAR, obs-text, SP, HTAB (no CR, LF, NUL, other controls or DEL)."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(start, end):
        c = <unsigned char>s[i]
        if (c < 32 and c != 9) or c == 127:
            return False
    return True


cdef int _held_line(const char* s, Py_ssize_t pos, Py_ssize_t n, str what) except -1:
    """An incomplete chunk-size or trailer line (see the twin): refused when over the limit (a final
    CR, which may start its CRLF, not counted) or when it holds a bare LF."""
    cdef Py_ssize_t held = n - pos
    if held and s[n - 1] == 13:
        held -= 1
    if held > MAX_CHUNK_LINE:
        raise ParseError(400, f"{what} too long")
    if memchr(s + pos, 10, n - pos) != NULL:
        raise ParseError(400, f"bare LF in a {what}")
    return 0


cdef inline bint _eq_lower(const char* s, Py_ssize_t n, const char* lit, Py_ssize_t litn) noexcept:
    cdef Py_ssize_t i
    if n != litn:
        return False
    for i in range(n):
        if _LOWER[<unsigned char>s[i]] != <unsigned char>lit[i]:
            return False
    return True


cdef inline Py_ssize_t _decimal(bytes b) noexcept:
    """The value of a string of at most 18 digits (checked by ``_is_digits`` and its length first).
    # PERF: int(bytes) goes through PyNumber_Long and PyLong_FromString (~100 instructions per digit)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b), i, v = 0
    cdef const char* s = PyBytes_AS_STRING(b)
    for i in range(n):
        v = v * 10 + (s[i] - 48)
    return v


cpdef find_header(list headers, bytes name):
    """First value of ``name`` (lower-case bytes) in parsed headers, or None."""
    cdef tuple kv
    for kv in headers:
        if <bytes>kv[0] == name:
            return kv[1]
    return None


cdef list _parse_header_lines(const char* s, Py_ssize_t pos, Py_ssize_t end):
    """Header lines in s[pos:end] (no final CRLF) -> [(lower name, value)]. Raises ParseError."""
    cdef list headers = []
    cdef Py_ssize_t eol, colon, i, vstart, vend
    cdef unsigned char c
    cdef bytes name
    while pos < end:
        eol = _find_crlf(s, pos, end)
        if eol < 0:
            eol = end
        if eol == pos:
            pos = eol + 2
            continue
        c = <unsigned char>s[pos]
        if c == 32 or c == 9:
            raise ParseError(400, "obsolete line folding in headers is not allowed")
        colon = -1
        i = pos
        # PERF: one table read per byte of the name; ':' is no token character, so it ends the loop
        while i < eol and _TCHAR[<unsigned char>s[i]]:
            i += 1
        if i < eol and s[i] == 58:  # ':'
            colon = i
        if colon < 0:
            if i < eol and i > pos:
                raise ParseError(400, "invalid header name")
            raise ParseError(400, "malformed header line")
        if colon == pos:
            raise ParseError(400, "malformed header line")
        vstart = colon + 1
        vend = eol
        while vstart < vend and (s[vstart] == 32 or s[vstart] == 9):
            vstart += 1
        while vend > vstart and (s[vend - 1] == 32 or s[vend - 1] == 9):
            vend -= 1
        if not _value_ok(s, vstart, vend):
            raise ParseError(400, "invalid character in header value")
        name = _header_name(s + pos, colon - pos)
        headers.append((name, PyBytes_FromStringAndSize(s + vstart, vend - vstart)))
        pos = eol + 2
    return headers


cdef inline bint _value_ok(const char* s, Py_ssize_t i, Py_ssize_t end) noexcept:
    """No control character but HT in s[i:end] (a header value).

    # PERF: eight bytes at a time: a word is passed when none of its bytes is below 0x20 and none is
    0x7f (the usual header: an Authorization value is 60 bytes or more); a word with such a byte (a tab,
    or the refusal) is looked at byte by byte. (x - 0x20 in each byte) & ~x & 0x80 in each byte marks
    the bytes below 0x20 exactly, for any byte value; x ^ 0x7f turns 0x7f into the zero byte it marks."""
    cdef uint64_t w, d
    cdef unsigned char c
    cdef Py_ssize_t j
    while i + 8 <= end:
        memcpy(&w, s + i, 8)
        d = w ^ 0x7f7f7f7f7f7f7f7fULL
        if ((w - 0x2020202020202020ULL) & ~w & 0x8080808080808080ULL) or \
                ((d - 0x0101010101010101ULL) & ~d & 0x8080808080808080ULL):
            for j in range(i, i + 8):
                c = <unsigned char>s[j]
                if (c < 32 and c != 9) or c == 127:
                    return False
        i += 8
    while i < end:
        c = <unsigned char>s[i]
        if (c < 32 and c != 9) or c == 127:
            return False
        i += 1
    return True


cdef inline void _lower_into(char* dst, const char* src, Py_ssize_t n) noexcept:
    """``src[:n]`` in lower case into ``dst`` (ASCII letters only; the bytes of a header name).

    # PERF: eight bytes at a time: in each byte b of the word (its low seven bits h), h + (0x80 - 'A')
    has its high bit set when b >= 'A', h + (0x7f - 'Z') when b > 'Z'; neither sum carries into the
    next byte. A letter A-Z (high bit of b clear) gets 0x20 added: its high marker bit shifted right by
    2. The rest byte by byte, through the table."""
    cdef uint64_t w, h, upper
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        h = w & 0x7f7f7f7f7f7f7f7fULL
        upper = (h + 0x3f3f3f3f3f3f3f3fULL) & ~(h + 0x2525252525252525ULL) & ~w & 0x8080808080808080ULL
        w |= upper >> 2
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = <char>_LOWER[<unsigned char>src[i]]
        i += 1


cdef inline bint _is_digits(bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b), i
    cdef const char* s = PyBytes_AS_STRING(b)
    if n == 0:
        return False
    for i in range(n):
        if s[i] < 48 or s[i] > 57:
            return False
    return True


cdef class Request:
    """One complete request: head and (de-chunked) body."""

    def __init__(self, str method, str path, str query, int version, list headers, bytes body,
                 bint keep_alive):
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    cpdef object header(self, bytes name):
        """First value of header ``name`` (lower-case bytes), or None."""
        return find_header(self.headers, name)

    def __repr__(self):
        return f"<Request {self.method} {self.path} body={len(self.body)}B>"


cdef class ChunkedDecoder:
    """Incremental decoder for ``Transfer-Encoding: chunked`` bodies (see the twin)."""

    def __init__(self):
        self.state = 0
        self.remaining = 0
        self.size = 0
        self.parts = []
        self.done = False

    cpdef Py_ssize_t feed(self, bytes buf, Py_ssize_t pos) except -1:
        cdef const char* s = PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t end, i, hend, take
        cdef unsigned long long value
        cdef unsigned char h
        while pos < n and not self.done:
            if self.state == 0:
                end = _find_crlf(s, pos, n)
                if end < 0:
                    _held_line(s, pos, n, "chunk size line")
                    return pos
                if end - pos > MAX_CHUNK_LINE:
                    raise ParseError(400, "chunk size line too long")
                hend = pos
                while hend < end and s[hend] != 59:  # ';'
                    hend += 1
                if hend < end and not _valid_text(s, hend + 1, end):
                    raise ParseError(400, "invalid character in chunk extension")
                while hend > pos and (s[hend - 1] == 32 or s[hend - 1] == 9):
                    hend -= 1
                if hend == pos or hend - pos > 15:
                    raise ParseError(400, "invalid chunk size")
                value = 0
                for i in range(pos, hend):
                    h = _HEXVAL[<unsigned char>s[i]]
                    if h == 255:
                        raise ParseError(400, "invalid chunk size")
                    value = value * 16 + h
                self.remaining = <Py_ssize_t>value
                pos = end + 2
                self.state = 1 if value else 3
            elif self.state == 1:
                take = self.remaining if self.remaining < n - pos else n - pos
                if pos == 0 and take == n:
                    self.parts.append(buf)
                else:
                    self.parts.append(PyBytes_FromStringAndSize(s + pos, take))
                self.size += take
                self.remaining -= take
                pos += take
                if self.remaining == 0:
                    self.state = 2
            elif self.state == 2:
                if n - pos < 2:
                    return pos
                if s[pos] != 13 or s[pos + 1] != 10:
                    raise ParseError(400, "missing CRLF after chunk data")
                pos += 2
                self.state = 0
            else:
                end = _find_crlf(s, pos, n)
                if end < 0:
                    _held_line(s, pos, n, "trailer line")
                    return pos
                if end - pos > MAX_CHUNK_LINE:
                    raise ParseError(400, "trailer line too long")
                if end == pos:
                    self.done = True
                else:
                    _parse_header_lines(s, pos, end)  # a trailer obeys a header line's rules
                pos = end + 2
        return pos

    cpdef bytes take(self):
        cdef bytes data
        if not self.parts:
            return b""
        if len(self.parts) == 1:
            data = self.parts[0]
        else:
            data = b"".join(self.parts)
        self.parts = []
        return data


def _target_of(bytes buf, Py_ssize_t pos):
    """The path of the request line at ``pos`` of ``buf`` (its first 8 KiB), "" when there is none."""
    parts = buf[pos:pos + 8192].split(b"\r\n", 1)[0].split(b" ")
    if len(parts) < 2 or not parts[1].startswith(b"/"):
        return ""
    return parts[1].split(b"?", 1)[0].decode("latin-1")


cdef class RequestParser:
    """Strict incremental HTTP/1.1 request parser (see the twin for the rules)."""

    def __init__(self, Py_ssize_t max_header_bytes=16384, Py_ssize_t max_body_bytes=4 * 1024 * 1024):
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buf = b""
        self._pos = 0
        self.state = STATE_IDLE
        self._pending = None
        self._need = 0
        self._chunked = None
        self._expect = False

    @property
    def buffered(self):
        return PyBytes_GET_SIZE(self._buf) - self._pos

    @property
    def expect_continue(self):
        if self._expect:
            self._expect = False
            return True
        return False

    cpdef feed(self, bytes data):
        if self._pos >= PyBytes_GET_SIZE(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos:] + data
        self._pos = 0
        if self.state == STATE_IDLE and PyBytes_GET_SIZE(self._buf):
            self.state = STATE_HEAD

    def failed_target(self):
        """The path of the request a ``ParseError`` refused, as far as its request line could be read (its
        answer is in that endpoint's dialect); "" when none could be."""
        if self._pending is not None:
            return self._pending.path
        return _target_of(self._buf, self._pos)

    cpdef Request next_request(self):
        cdef Request req
        cdef ChunkedDecoder dec
        cdef Py_ssize_t n
        if self._pending is None:
            if not self._parse_head():
                return None
        req = self._pending
        if self._chunked is not None:
            dec = self._chunked
            self._pos = dec.feed(self._buf, self._pos)
            if dec.size > self.max_body_bytes:
                raise ParseError(413, f"request body exceeds {self.max_body_bytes} bytes")
            if not dec.done:
                return None
            req.body = dec.take()
            self._chunked = None
        else:
            n = PyBytes_GET_SIZE(self._buf)
            if n - self._pos < self._need:
                return None
            if self._need:
                if self._pos == 0 and self._need == n:
                    req.body = self._buf
                else:
                    req.body = self._buf[self._pos:self._pos + self._need]
                self._pos += self._need
        self._pending = None
        self._expect = False
        self.state = STATE_HEAD if self._pos < PyBytes_GET_SIZE(self._buf) else STATE_IDLE
        return req

    cdef bint _parse_head(self) except -1:
        cdef bytes buf = self._buf
        cdef const char* s = PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t pos = self._pos, end, line_end, sp1, sp2, i, qmark
        cdef Py_ssize_t clen = -1
        cdef bint chunked = False, has_te = False, keep_alive, close_seen = False
        cdef int hosts = 0, version
        cdef unsigned char c
        cdef list headers
        cdef bytes name, value, lv
        cdef tuple kv
        while n - pos >= 2 and s[pos] == 13 and s[pos + 1] == 10:
            pos += 2
        self._pos = pos
        if pos >= n:
            self.state = STATE_IDLE
            return False
        end = _find_head_end(s, pos, n)
        if end < 0:
            if n - pos > self.max_header_bytes:
                raise ParseError(431, f"request head exceeds {self.max_header_bytes} bytes")
            if _bare_lf(s, pos, n):
                raise ParseError(400, "bare LF in the request head")
            self.state = STATE_HEAD
            return False
        if end + 4 - pos > self.max_header_bytes:
            raise ParseError(431, f"request head exceeds {self.max_header_bytes} bytes")
        line_end = _find_crlf(s, pos, end + 2)
        # method SP target SP version
        sp1 = pos
        while sp1 < line_end and s[sp1] != 32:
            sp1 += 1
        sp2 = sp1 + 1
        while sp2 < line_end and s[sp2] != 32:
            sp2 += 1
        if sp1 >= line_end or sp2 >= line_end or sp1 == pos:
            raise ParseError(400, "malformed request line")
        for i in range(sp2 + 1, line_end):
            if s[i] == 32:
                raise ParseError(400, "malformed request line")
        for i in range(pos, sp1):
            if not _TCHAR[<unsigned char>s[i]]:
                raise ParseError(400, "invalid method")
        if line_end - sp2 - 1 == 8 and memcmp(s + sp2 + 1, b"HTTP/1.1", 8) == 0:
            version = 11
        elif line_end - sp2 - 1 == 8 and memcmp(s + sp2 + 1, b"HTTP/1.0", 8) == 0:
            version = 10
        elif line_end - sp2 - 1 == 8 and memcmp(s + sp2 + 1, b"HTTP/", 5) == 0:
            raise ParseError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        else:
            raise ParseError(400, "malformed request line")
        if sp2 == sp1 + 1:
            raise ParseError(400, "malformed request line")
        qmark = -1
        for i in range(sp1 + 1, sp2):
            c = <unsigned char>s[i]
            if c < 0x21 or c >= 0x7F:
                raise ParseError(400, "invalid request target")
            if c == 63 and qmark < 0:
                qmark = i
        if s[sp1 + 1] != 47:  # '/'
            if not (sp2 - sp1 - 1 == 1 and s[sp1 + 1] == 42 and sp1 - pos == 7
                    and memcmp(s + pos, b"OPTIONS", 7) == 0):
                raise ParseError(400, "request target must be in origin form")
        headers = _parse_header_lines(s, line_end + 2, end)
        keep_alive = version == 11
        for kv in headers:
            name = <bytes>kv[0]
            value = <bytes>kv[1]
            if name == b"content-length":
                if clen >= 0:
                    raise ParseError(400, "duplicate Content-Length")
                if not _is_digits(value) or PyBytes_GET_SIZE(value) > 18:
                    raise ParseError(400, "invalid Content-Length")
                clen = _decimal(value)
            elif name == b"transfer-encoding":
                if has_te:
                    raise ParseError(400, "duplicate Transfer-Encoding")
                has_te = True
                if value.lower() != b"chunked":
                    raise ParseError(501, "only the chunked transfer coding is supported")
                chunked = True
            elif name == b"host":
                hosts += 1
            elif name == b"connection":
                lv = value.lower()
                if lv == b"close":
                    close_seen = True  # "close" in any Connection header wins (RFC 9112 9.6)
                    keep_alive = False
                elif lv == b"keep-alive":
                    if not close_seen:
                        keep_alive = True
                else:
                    tokens = [t.strip() for t in lv.split(b",")]
                    if b"close" in tokens:
                        close_seen = True
                        keep_alive = False
                    elif b"keep-alive" in tokens and not close_seen:
                        keep_alive = True
            elif name == b"expect":
                # HTTP/1.0 clients get no 1xx: their expectation is ignored (RFC 9110 10.1.1)
                if version == 11 and value.lower() == b"100-continue":
                    self._expect = True
        if has_te and clen >= 0:
            raise ParseError(400, "both Content-Length and Transfer-Encoding present")
        if has_te and version == 10:
            raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if version == 11 and hosts != 1:
            raise ParseError(400, "exactly one Host header is required")
        if clen > self.max_body_bytes:
            raise ParseError(413, f"request body exceeds {self.max_body_bytes} bytes")
        if qmark >= 0:
            path = PyBytes_FromStringAndSize(s + sp1 + 1, qmark - sp1 - 1).decode("ascii")
            query = PyBytes_FromStringAndSize(s + qmark + 1, sp2 - qmark - 1).decode("ascii")
        else:
            path = PyBytes_FromStringAndSize(s + sp1 + 1, sp2 - sp1 - 1).decode("ascii")
            query = ""
        self._pending = Request.__new__(Request)
        self._pending.method = PyBytes_FromStringAndSize(s + pos, sp1 - pos).decode("ascii")
        self._pending.path = path
        self._pending.query = query
        self._pending.version = version
        self._pending.headers = headers
        self._pending.body = b""
        self._pending.keep_alive = keep_alive
        self._pos = end + 4
        if chunked:
            self._chunked = ChunkedDecoder()
            self._need = 0
        else:
            self._chunked = None
            self._need = clen if clen > 0 else 0
        if not self._expect or (self._need == 0 and not chunked):
            self._expect = False
        self.state = STATE_BODY
        return True


cdef class ResponseParser:
    """Incremental HTTP/1.1 response parser for the upstream side (see the twin)."""

    def __init__(self, bint head_only=False, Py_ssize_t max_header_bytes=65536):
        self._head_only = head_only
        self.max_header_bytes = max_header_bytes
        self._buf = b""
        self.head_done = False
        self.done = False
        self.status = 0
        self.reason = ""
        self.headers = []
        self.keep_alive = True
        self._chunked = None
        self._remaining = 0
        self._close_delimited = False
        self._parts = []

    def header(self, bytes name):
        return find_header(self.headers, name)

    cpdef feed(self, bytes data):
        cdef bytes buf
        cdef object rest
        if self.done:
            if PyBytes_GET_SIZE(data):
                self.keep_alive = False
            return
        if not self.head_done:
            buf = self._buf + data if PyBytes_GET_SIZE(self._buf) else data
            rest = self._parse_head(buf)
            if rest is None:
                return
            data = <bytes>rest
            if self.done:
                if PyBytes_GET_SIZE(data):
                    self.keep_alive = False
                return
        elif PyBytes_GET_SIZE(self._buf):
            data = self._buf + data
            self._buf = b""
        self._feed_body(data)

    cdef _feed_body(self, bytes data):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), pos
        cdef ChunkedDecoder dec
        if n == 0:
            return
        if self._chunked is not None:
            dec = self._chunked
            pos = dec.feed(data, 0)
            if pos < n and not dec.done:
                self._buf = data[pos:]
            if dec.parts:
                self._parts.append(dec.take())
            if dec.done:
                self.done = True
                if pos < n:
                    self.keep_alive = False
        elif self._close_delimited:
            self._parts.append(data)
        else:
            if n >= self._remaining:
                if n > self._remaining:
                    self.keep_alive = False
                    self._parts.append(data[:self._remaining])
                else:
                    self._parts.append(data)
                self._remaining = 0
                self.done = True
            else:
                self._parts.append(data)
                self._remaining -= n

    cpdef bytes take_body(self):
        cdef bytes data
        if not self._parts:
            return b""
        if len(self._parts) == 1:
            data = self._parts[0]
        else:
            data = b"".join(self._parts)
        self._parts = []
        return data

    def feed_eof(self):
        if self.done:
            return
        if self.head_done and self._close_delimited:
            self.done = True
            self.keep_alive = False
            return
        if not self.head_done:
            raise ParseError(502, "upstream closed the connection before sending a response")
        raise ParseError(502, "upstream closed the connection mid-body")

    cdef object _parse_head(self, bytes buf):
        cdef const char* s
        cdef Py_ssize_t n, end, line_end, clen = -1, cl
        cdef int status
        cdef bint chunked = False, close_seen = False
        cdef list headers
        cdef bytes name, value, line
        cdef tuple kv
        while True:
            s = PyBytes_AS_STRING(buf)
            n = PyBytes_GET_SIZE(buf)
            end = _find_head_end(s, 0, n)
            if end < 0:
                if n > self.max_header_bytes:
                    raise ParseError(502, "upstream response head too large")
                if _bare_lf(s, 0, n):
                    raise ParseError(502, "bare LF in the upstream response head")
                self._buf = buf
                return None
            if end + 4 > self.max_header_bytes:
                raise ParseError(502, "upstream response head too large")
            line_end = _find_crlf(s, 0, end + 2)
            if (line_end < 12 or memcmp(s, b"HTTP/1.", 7) != 0 or s[8] != 32
                    or not (48 <= s[9] <= 57 and 48 <= s[10] <= 57 and 48 <= s[11] <= 57)
                    or not _valid_text(s, 12, line_end)):
                raise ParseError(502, "malformed upstream status line")
            status = (s[9] - 48) * 100 + (s[10] - 48) * 10 + (s[11] - 48)
            headers = _parse_header_lines(s, line_end + 2, end)
            if 100 <= status < 200:
                if status == 101:
                    raise ParseError(502, "upstream switched protocols")
                buf = buf[end + 4:]
                continue
            break
        line = PyBytes_FromStringAndSize(s, line_end)
        self.status = status
        self.reason = line[13:].decode("latin-1")
        self.headers = headers
        self.head_done = True
        self.keep_alive = s[7] == 49  # HTTP/1.1
        for kv in headers:
            name = <bytes>kv[0]
            value = <bytes>kv[1]
            if name == b"content-length":
                if not _is_digits(value) or PyBytes_GET_SIZE(value) > 18:
                    raise ParseError(502, "invalid upstream Content-Length")
                cl = _decimal(value)
                if clen >= 0 and cl != clen:
                    raise ParseError(502, "conflicting upstream Content-Length")
                clen = cl
            elif name == b"transfer-encoding":
                if value.lower().rstrip().endswith(b"chunked"):
                    chunked = True
                else:
                    raise ParseError(502, "unsupported upstream transfer coding")
            elif name == b"connection":
                tokens = [t.strip().lower() for t in value.split(b",")]
                if b"close" in tokens:
                    close_seen = True
                    self.keep_alive = False
                elif b"keep-alive" in tokens and not close_seen:
                    self.keep_alive = True
        if self._head_only or status == 204 or status == 304:
            self.done = True
        elif chunked:
            self._chunked = ChunkedDecoder()
        elif clen >= 0:
            self._remaining = clen
            if clen == 0:
                self.done = True
        else:
            self._close_delimited = True
            self.keep_alive = False
        self._buf = b""
        return buf[end + 4:]


cdef extern from "Python.h":
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    int PyUnicode_1BYTE_KIND


cdef int _digits(char* buf, Py_ssize_t n, int base) noexcept:
    """``n`` >= 0 written in ``base`` (10 or 16, lower-case) into ``buf`` (room for 20 digits); returns
    how many characters. # PERF: glibc's snprintf costs ~700 instructions per number here, this ~60."""
    cdef char tmp[24]
    cdef int i = 0
    cdef int j
    cdef Py_ssize_t d
    if n == 0:
        buf[0] = 48  # "0"
        return 1
    while n > 0:
        d = n % base
        tmp[i] = <char>(48 + d if d < 10 else 87 + d)  # "0".. "9", "a".. "f"
        n //= base
        i += 1
    for j in range(i):
        buf[j] = tmp[i - 1 - j]
    return i


cdef inline char* _put(char* out, const char* src, Py_ssize_t n) noexcept:
    memcpy(out, src, n)
    return out + n


def build_response_head(int status, list headers, Py_ssize_t content_length, bint keep_alive):
    """Status line and headers.

    ``content_length`` >= 0 frames a body of that length; -1 means a chunked body follows; -2 means the
    body is delimited by closing the connection (streams to HTTP/1.0 clients).
    """
    # PERF: one exact-size bytes object filled with memcpy (the str join + encode it replaces cost
    # ~0.8 us for a typical head, this ~0.2 us). Names and values are str; latin-1 text is copied as is.
    cdef bytes line = _STATUS_LINES.get(status)
    cdef tuple kv
    cdef object k, v
    cdef Py_ssize_t total, n
    cdef char num[32]
    cdef int numlen = 0
    cdef bytes out
    cdef char* p
    if line is None:
        line = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode("latin-1")
        _STATUS_LINES[status] = line
    total = PyBytes_GET_SIZE(line) + 2
    for kv in headers:
        k = kv[0]
        v = kv[1]
        if (type(k) is not str or type(v) is not str or PyUnicode_KIND(k) != PyUnicode_1BYTE_KIND
                or PyUnicode_KIND(v) != PyUnicode_1BYTE_KIND):
            return _build_response_head_slow(line, headers, content_length, keep_alive)
        total += PyUnicode_GET_LENGTH(k) + PyUnicode_GET_LENGTH(v) + 4
    if content_length >= 0:
        numlen = _digits(num, content_length, 10)
        total += 18 + numlen  # "content-length: " + digits + CRLF
    elif content_length == -1:
        total += 28  # "transfer-encoding: chunked\r\n"
    if not keep_alive:
        total += 19  # "connection: close\r\n"
    out = PyBytes_FromStringAndSize(NULL, total)
    p = PyBytes_AS_STRING(out)
    p = _put(p, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line))
    for kv in headers:
        k = kv[0]
        v = kv[1]
        p = _put(p, <const char*>PyUnicode_DATA(k), PyUnicode_GET_LENGTH(k))
        p = _put(p, ": ", 2)
        p = _put(p, <const char*>PyUnicode_DATA(v), PyUnicode_GET_LENGTH(v))
        p = _put(p, "\r\n", 2)
    if content_length >= 0:
        p = _put(p, "content-length: ", 16)
        p = _put(p, num, numlen)
        p = _put(p, "\r\n", 2)
    elif content_length == -1:
        p = _put(p, "transfer-encoding: chunked\r\n", 28)
    if not keep_alive:
        p = _put(p, "connection: close\r\n", 19)
    _put(p, "\r\n", 2)
    return out


cdef bytes _build_response_head_slow(bytes line, list headers, Py_ssize_t content_length, bint keep_alive):
    """Headers that are not all latin-1 str: the general path (raises UnicodeEncodeError like the twin)."""
    cdef list parts = [line.decode("latin-1")]
    for kv in headers:
        parts.append(f"{kv[0]}: {kv[1]}\r\n")
    if content_length >= 0:
        parts.append(f"content-length: {content_length}\r\n")
    elif content_length == -1:
        parts.append("transfer-encoding: chunked\r\n")
    if not keep_alive:
        parts.append("connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


cpdef list select_headers(list headers, bytes prefix, tuple names, list out):
    """Append to ``out`` the (name, value) pairs of parsed ``headers`` whose name starts with ``prefix``
    or is one of ``names``, decoded as latin-1 str; returns ``out``."""
    cdef tuple kv
    cdef bytes k
    cdef Py_ssize_t plen = PyBytes_GET_SIZE(prefix)
    for kv in headers:
        k = <bytes>kv[0]
        if ((PyBytes_GET_SIZE(k) >= plen and memcmp(PyBytes_AS_STRING(k), PyBytes_AS_STRING(prefix), plen) == 0)
                or _one_of(k, names)):
            out.append((k.decode("latin-1"), (<bytes>kv[1]).decode("latin-1")))
    return out


cdef inline bint _one_of(bytes k, tuple names) noexcept:
    """``k in names`` for a tuple of bytes. # PERF: length and memcmp, not a rich compare per name."""
    cdef object name
    cdef Py_ssize_t n = PyBytes_GET_SIZE(k)
    for name in names:
        if (type(name) is bytes and PyBytes_GET_SIZE(<bytes>name) == n
                and memcmp(PyBytes_AS_STRING(<bytes>name), PyBytes_AS_STRING(k), n) == 0):
            return True
    return False


def ms_text(long long us):
    """Microseconds as milliseconds header text, as ``repr(us / 1000.0)`` writes it; "0.0" when ``us <= 0``."""
    # PERF: digits written by hand; repr of a float costs ~0.5 us here
    cdef char buf[32]
    cdef int i = 31
    cdef long long whole, frac
    cdef int fdigits = 3
    if us <= 0:
        return "0.0"
    if us >= 1000000000000000:
        return repr(us / 1000.0)
    whole = us // 1000
    frac = us % 1000
    if frac == 0:
        buf[i] = 48
        i -= 1
    else:
        while frac % 10 == 0:
            frac //= 10
            fdigits -= 1
        while fdigits > 0:
            buf[i] = <char>(48 + frac % 10)
            frac //= 10
            fdigits -= 1
            i -= 1
    buf[i] = 46  # "."
    i -= 1
    if whole == 0:
        buf[i] = 48
        i -= 1
    while whole > 0:
        buf[i] = <char>(48 + whole % 10)
        whole //= 10
        i -= 1
    return PyUnicode_DecodeASCII(buf + i + 1, 31 - i, NULL)


def build_request(bytes head, str request_id, bytes body):
    """A whole upstream request: ``head`` (request line and fixed headers, ending in ``x-request-id: ``),
    the request id, the content length, the blank line and the body, in one bytes object."""
    # PERF: one allocation and memcpy; bytes %-formatting plus concatenation cost ~0.8 us here
    cdef bytes rid
    cdef char num[32]
    cdef Py_ssize_t numlen, total, hlen, rlen, blen
    cdef bytes out
    cdef char* p
    if PyUnicode_KIND(request_id) == PyUnicode_1BYTE_KIND:
        rid = None
        rlen = PyUnicode_GET_LENGTH(request_id)
    else:
        rid = request_id.encode("latin-1")
        rlen = PyBytes_GET_SIZE(rid)
    hlen = PyBytes_GET_SIZE(head)
    blen = PyBytes_GET_SIZE(body)
    numlen = _digits(num, blen, 10)
    total = hlen + rlen + 18 + numlen + 4 + blen  # "\r\ncontent-length: " digits "\r\n\r\n"
    out = PyBytes_FromStringAndSize(NULL, total)
    p = PyBytes_AS_STRING(out)
    p = _put(p, PyBytes_AS_STRING(head), hlen)
    if rid is None:
        p = _put(p, <const char*>PyUnicode_DATA(request_id), rlen)
    else:
        p = _put(p, PyBytes_AS_STRING(rid), rlen)
    p = _put(p, "\r\ncontent-length: ", 18)
    p = _put(p, num, numlen)
    p = _put(p, "\r\n\r\n", 4)
    _put(p, PyBytes_AS_STRING(body), blen)
    return out


def chunk_frame(bytes data):
    """``data`` framed as one HTTP/1.1 chunk: size in hex, CRLF, the data, CRLF (one bytes object)."""
    # PERF: one allocation; b"%x\r\n" % n plus writelines of three pieces cost ~0.7 us here
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef char num[24]
    cdef int numlen = _digits(num, n, 16)
    num[numlen] = 13  # CR
    num[numlen + 1] = 10  # LF
    numlen += 2
    cdef bytes out = PyBytes_FromStringAndSize(NULL, numlen + n + 2)
    cdef char* p = PyBytes_AS_STRING(out)
    p = _put(p, num, numlen)
    p = _put(p, PyBytes_AS_STRING(data), n)
    _put(p, "\r\n", 2)
    return out


DEF MAX_IOV = 64


def send_now(int fd, bytes data):
    """Write ``data`` to the non-blocking socket ``fd`` now, as much as the kernel takes: the number of
    bytes written (0 when it took none or the write failed: the caller hands what is left to its
    transport, which meets the same condition and deals with it)."""
    # PERF: no GIL release: the socket does not block, and the write is one system call
    cdef Py_ssize_t n
    while True:
        n = write(fd, PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data))
        if n >= 0:
            return n
        if errno != EINTR:
            return 0


def send_pieces_now(int fd, list pieces):
    """``send_now`` for several bytes objects in one ``writev`` (at most 64 pieces are written; the
    caller hands the rest over with what the kernel did not take)."""
    cdef iovec iov[MAX_IOV]
    cdef Py_ssize_t count = len(pieces), k, n
    cdef bytes piece
    if count > MAX_IOV:
        count = MAX_IOV
    for k in range(count):
        piece = <bytes?>pieces[k]
        iov[k].iov_base = <void*>PyBytes_AS_STRING(piece)
        iov[k].iov_len = <size_t>PyBytes_GET_SIZE(piece)
    while True:
        n = writev(fd, iov, <int>count)
        if n >= 0:
            return n
        if errno != EINTR:
            return 0
