"""Pure-Python twin of ``gateway._core._http``: the reference implementation.

Sans-IO HTTP/1.1: a strict request parser (complete requests out, smuggling-shaped input rejected), a
response parser for the upstream side, a chunked decoder and the response-head writer. Same API and
behaviour as the compiled module; the property tests drive both with the same bytes.
"""

from __future__ import annotations

import os

from gateway._core.errors import ParseError

__all__ = [
    "STATE_BODY",
    "STATE_HEAD",
    "STATE_IDLE",
    "ChunkedDecoder",
    "ParseError",
    "Request",
    "RequestParser",
    "ResponseParser",
    "build_request",
    "build_response_head",
    "chunk_frame",
    "find_header",
    "ms_text",
    "reason_phrase",
    "select_headers",
    "send_now",
    "send_pieces_now",
]

STATE_IDLE = 0  # nothing of the next request has arrived
STATE_HEAD = 1  # part of a request head is buffered
STATE_BODY = 2  # the head is parsed, the body is incomplete

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_MAX_CHUNK_LINE = 4096

_REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def _is_token(b: bytes) -> bool:
    return len(b) > 0 and all(c in _TCHAR for c in b)


def _valid_value(b: bytes) -> bool:
    # field-value: VCHAR, obs-text, SP, HTAB; CR, LF and NUL and other controls are refused
    return all(c >= 0x20 or c == 0x09 for c in b) and 0x7F not in b


def _bare_lf(buf: bytes, start: int, end: int) -> bool:
    """True when ``buf[start:end]`` holds an LF that no CR precedes: a line end HTTP/1.1 does not allow
    (RFC 9112 2.2). An incomplete head with one is refused at once, not after the head's timeout."""
    i = buf.find(b"\n", start, end)
    while i >= 0:
        if i == start or buf[i - 1] != 0x0D:
            return True
        i = buf.find(b"\n", i + 1, end)
    return False


def _held_line(buf: bytes, pos: int, n: int, what: str) -> None:
    """An incomplete chunk-size or trailer line ``buf[pos:n]`` (no CRLF yet): refused when it is already
    over the limit or holds a bare LF. A CR at its end may be the start of its CRLF, so it does not count:
    the outcome does not depend on where the segments end."""
    held = n - pos
    if held and buf[n - 1] == 0x0D:
        held -= 1
    if held > _MAX_CHUNK_LINE:
        raise ParseError(400, f"{what} too long")
    if buf.find(b"\n", pos, n) >= 0:
        raise ParseError(400, f"bare LF in a {what}")


class Request:
    """One complete request: head and (de-chunked) body."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "version")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        version: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    def header(self, name: bytes) -> bytes | None:
        """First value of header ``name`` (lower-case bytes), or None."""
        return find_header(self.headers, name)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} body={len(self.body)}B>"


class ChunkedDecoder:
    """Incremental decoder for ``Transfer-Encoding: chunked`` bodies.

    ``feed(buf, pos)`` consumes from ``buf[pos:]``, appends decoded data to ``self.parts`` and returns
    the new position; ``done`` is set after the last chunk and the trailer section.
    """

    __slots__ = ("done", "parts", "remaining", "size", "state")

    # states: 0 size line, 1 data, 2 CRLF after data, 3 trailers
    def __init__(self) -> None:
        self.state = 0
        self.remaining = 0
        self.size = 0  # total decoded bytes so far
        self.parts: list[bytes] = []
        self.done = False

    def feed(self, buf: bytes, pos: int) -> int:
        n = len(buf)
        while pos < n and not self.done:
            if self.state == 0:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    _held_line(buf, pos, n, "chunk size line")
                    return pos
                if end - pos > _MAX_CHUNK_LINE:
                    raise ParseError(400, "chunk size line too long")
                line = buf[pos:end]
                semi = line.find(b";")
                hexpart = (line if semi < 0 else line[:semi]).rstrip(b" \t")
                if not hexpart or len(hexpart) > 15 or not all(c in _HEX for c in hexpart):
                    raise ParseError(400, "invalid chunk size")
                if semi >= 0 and not _valid_value(line[semi + 1:]):
                    # the bytes a header value may not hold (CR, LF, NUL, controls) are no better here
                    raise ParseError(400, "invalid character in chunk extension")
                self.remaining = int(hexpart, 16)
                pos = end + 2
                self.state = 1 if self.remaining else 3
            elif self.state == 1:
                take = min(self.remaining, n - pos)
                self.parts.append(buf[pos:pos + take])
                self.size += take
                self.remaining -= take
                pos += take
                if self.remaining == 0:
                    self.state = 2
            elif self.state == 2:
                if n - pos < 2:
                    return pos
                if buf[pos:pos + 2] != b"\r\n":
                    raise ParseError(400, "missing CRLF after chunk data")
                pos += 2
                self.state = 0
            else:  # trailers: lines until an empty one
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    _held_line(buf, pos, n, "trailer line")
                    return pos
                if end - pos > _MAX_CHUNK_LINE:
                    raise ParseError(400, "trailer line too long")
                if end == pos:
                    self.done = True
                else:
                    _parse_header_lines(buf[pos:end], 0)  # a trailer obeys a header line's rules
                pos = end + 2
        return pos

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def find_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """First value of ``name`` (lower-case bytes) in parsed headers, or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def _parse_header_lines(head: bytes, start: int) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    pos = start
    end = len(head)
    while pos < end:
        eol = head.find(b"\r\n", pos)
        if eol < 0:
            eol = end
        line = head[pos:eol]
        pos = eol + 2
        if not line:
            continue
        if line[0] in (0x20, 0x09):
            raise ParseError(400, "obsolete line folding in headers is not allowed")
        colon = line.find(b":")
        if colon <= 0:
            raise ParseError(400, "malformed header line")
        name = line[:colon]
        if not _is_token(name):
            raise ParseError(400, "invalid header name")
        value = line[colon + 1:].strip(b" \t")
        if not _valid_value(value):
            raise ParseError(400, "invalid character in header value")
        headers.append((name.lower(), value))
    return headers


def _target_of(buf: bytes, pos: int) -> str:
    """The path of the request line at ``pos`` of ``buf`` (its first 8 KiB), "" when there is none."""
    parts = buf[pos:pos + 8192].split(b"\r\n", 1)[0].split(b" ")
    if len(parts) < 2 or not parts[1].startswith(b"/"):
        return ""
    return parts[1].split(b"?", 1)[0].decode("latin-1")


class RequestParser:
    """Strict incremental HTTP/1.1 request parser. Feed bytes, take complete requests.

    Refuses, with a ParseError carrying the status to answer: oversize heads (431), bodies over the
    limit (413), Content-Length together with Transfer-Encoding, duplicate or invalid Content-Length,
    obsolete line folding, bad request lines or header syntax, a missing or repeated Host in HTTP/1.1
    (400), transfer codings other than chunked (501), versions other than 1.0/1.1 (505).
    """

    __slots__ = (
        "_buf", "_chunked", "_expect", "_need", "_pending", "_pos",
        "max_body_bytes", "max_header_bytes", "state",
    )

    def __init__(self, max_header_bytes: int = 16384, max_body_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buf = b""
        self._pos = 0
        self.state = STATE_IDLE
        self._pending: Request | None = None
        self._need = 0
        self._chunked: ChunkedDecoder | None = None
        self._expect = False

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def expect_continue(self) -> bool:
        """True once per request whose head asked for ``100-continue`` and whose body is pending."""
        if self._expect:
            self._expect = False
            return True
        return False

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._buf):
            self._buf = bytes(data)
        else:
            self._buf = self._buf[self._pos:] + data
        self._pos = 0
        if self.state == STATE_IDLE and self._buf:
            self.state = STATE_HEAD

    def failed_target(self) -> str:
        """The path of the request a ``ParseError`` refused, as far as its request line could be read (its
        answer is in that endpoint's dialect); "" when none could be."""
        if self._pending is not None:
            return self._pending.path
        return _target_of(self._buf, self._pos)

    def next_request(self) -> Request | None:
        """The next complete request, or None when more bytes are needed."""
        if self._pending is None:
            if not self._parse_head():
                return None
        req = self._pending
        assert req is not None
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
            if len(self._buf) - self._pos < self._need:
                return None
            req.body = self._buf[self._pos:self._pos + self._need]
            self._pos += self._need
        self._pending = None
        self._expect = False
        self.state = STATE_HEAD if self._pos < len(self._buf) else STATE_IDLE
        return req

    def _parse_head(self) -> bool:
        buf = self._buf
        pos = self._pos
        # RFC 9112 2.2: ignore empty lines before the request line
        while buf.startswith(b"\r\n", pos):
            pos += 2
        self._pos = pos
        if pos >= len(buf):
            self.state = STATE_IDLE
            return False
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(buf) - pos > self.max_header_bytes:
                raise ParseError(431, f"request head exceeds {self.max_header_bytes} bytes")
            if _bare_lf(buf, pos, len(buf)):
                raise ParseError(400, "bare LF in the request head")
            self.state = STATE_HEAD
            return False
        if end + 4 - pos > self.max_header_bytes:
            raise ParseError(431, f"request head exceeds {self.max_header_bytes} bytes")
        line_end = buf.find(b"\r\n", pos)
        line = buf[pos:line_end]
        parts = line.split(b" ")
        if len(parts) != 3:
            raise ParseError(400, "malformed request line")
        method_b, target, version_b = parts
        if not _is_token(method_b):
            raise ParseError(400, "invalid method")
        if version_b == b"HTTP/1.1":
            version = 11
        elif version_b == b"HTTP/1.0":
            version = 10
        elif version_b.startswith(b"HTTP/") and len(version_b) == 8:
            raise ParseError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        else:
            raise ParseError(400, "malformed request line")
        if not target or not all(0x21 <= c < 0x7F for c in target):
            raise ParseError(400, "invalid request target")
        if target[0] != 0x2F and not (target == b"*" and method_b == b"OPTIONS"):
            raise ParseError(400, "request target must be in origin form")
        headers = _parse_header_lines(buf[line_end + 2:end], 0)
        clen = -1
        chunked = False
        has_te = False
        hosts = 0
        keep_alive = version == 11
        close_seen = False
        for name, value in headers:
            if name == b"content-length":
                if clen >= 0:
                    raise ParseError(400, "duplicate Content-Length")
                if not value or not value.isdigit() or len(value) > 18:
                    raise ParseError(400, "invalid Content-Length")
                clen = int(value)
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
                tokens = [t.strip().lower() for t in value.split(b",")]
                if b"close" in tokens:
                    close_seen = True  # "close" in any Connection header wins (RFC 9112 9.6)
                    keep_alive = False
                elif b"keep-alive" in tokens and not close_seen:
                    keep_alive = True
            elif name == b"expect":
                # HTTP/1.0 clients get no 1xx: their expectation is ignored (RFC 9110 10.1.1)
                if value.lower() == b"100-continue" and version == 11:
                    self._expect = True
        if has_te and clen >= 0:
            raise ParseError(400, "both Content-Length and Transfer-Encoding present")
        if has_te and version == 10:
            raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if version == 11 and hosts != 1:
            raise ParseError(400, "exactly one Host header is required")
        if clen > self.max_body_bytes:
            raise ParseError(413, f"request body exceeds {self.max_body_bytes} bytes")
        qmark = target.find(b"?")
        if qmark >= 0:
            path, query = target[:qmark].decode("ascii"), target[qmark + 1:].decode("ascii")
        else:
            path, query = target.decode("ascii"), ""
        self._pending = Request(method_b.decode("ascii"), path, query, version, headers, b"", keep_alive)
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


class ResponseParser:
    """Incremental HTTP/1.1 response parser for the upstream side.

    After ``feed``: ``head_done`` with ``status``/``headers``; ``take_body()`` returns the body bytes
    decoded so far (de-chunked); ``done`` when the message is complete. Close-delimited bodies end at
    ``feed_eof()``. ``keep_alive`` says whether the connection may be reused after ``done``.
    """

    __slots__ = (
        "_buf", "_chunked", "_close_delimited", "_head_only", "_parts", "_remaining",
        "done", "head_done", "headers", "keep_alive", "max_header_bytes", "reason", "status",
    )

    def __init__(self, head_only: bool = False, max_header_bytes: int = 65536) -> None:
        self._head_only = head_only
        self.max_header_bytes = max_header_bytes
        self._buf = b""
        self.head_done = False
        self.done = False
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self._chunked: ChunkedDecoder | None = None
        self._remaining = 0
        self._close_delimited = False
        self._parts: list[bytes] = []

    def header(self, name: bytes) -> bytes | None:
        return find_header(self.headers, name)

    def feed(self, data: bytes) -> None:
        if self.done:
            if data:
                self.keep_alive = False  # bytes after a complete response: never reuse
            return
        if not self.head_done:
            buf = self._buf + data if self._buf else bytes(data)
            rest = self._parse_head(buf)
            if rest is None:
                return
            data = rest
            self._buf = b""
            if self.done:
                if data:
                    self.keep_alive = False
                return
        elif self._buf:
            data = self._buf + data
            self._buf = b""
        self._feed_body(data)

    def _feed_body(self, data: bytes) -> None:
        if not data:
            return
        if self._chunked is not None:
            dec = self._chunked
            pos = dec.feed(data, 0)
            if pos < len(data) and not dec.done:
                # keep an incomplete size line for the next feed
                self._buf = data[pos:]
            if dec.parts:
                self._parts.append(dec.take())
            if dec.done:
                self.done = True
                if pos < len(data):
                    self.keep_alive = False
        elif self._close_delimited:
            self._parts.append(data)
        else:
            if len(data) >= self._remaining:
                if len(data) > self._remaining:
                    self.keep_alive = False
                self._parts.append(data[: self._remaining])
                self._remaining = 0
                self.done = True
            else:
                self._parts.append(data)
                self._remaining -= len(data)

    def take_body(self) -> bytes:
        if not self._parts:
            return b""
        if len(self._parts) == 1:
            data = self._parts[0]
        else:
            data = b"".join(self._parts)
        self._parts.clear()
        return data

    def feed_eof(self) -> None:
        """The upstream closed the connection."""
        if self.done:
            return
        if self.head_done and self._close_delimited:
            self.done = True
            self.keep_alive = False
            return
        if not self.head_done:
            raise ParseError(502, "upstream closed the connection before sending a response")
        raise ParseError(502, "upstream closed the connection mid-body")

    def _parse_head(self, buf: bytes) -> bytes | None:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_header_bytes:
                    raise ParseError(502, "upstream response head too large")
                if _bare_lf(buf, 0, len(buf)):
                    raise ParseError(502, "bare LF in the upstream response head")
                self._buf = buf
                return None
            if end + 4 > self.max_header_bytes:
                raise ParseError(502, "upstream response head too large")
            line_end = buf.find(b"\r\n")
            line = buf[:line_end]
            if (not line.startswith(b"HTTP/1.") or len(line) < 12 or line[8:9] != b" "
                    or not _valid_value(line[12:])):
                raise ParseError(502, "malformed upstream status line")
            code = line[9:12]
            if not code.isdigit():
                raise ParseError(502, "malformed upstream status code")
            status = int(code)
            headers = _parse_header_lines(buf[line_end + 2:end], 0)
            if 100 <= status < 200:
                if status == 101:
                    raise ParseError(502, "upstream switched protocols")
                buf = buf[end + 4:]  # interim response: skip it
                continue
            break
        self.status = status
        self.reason = line[13:].decode("latin-1")
        self.headers = headers
        self.head_done = True
        version11 = line.startswith(b"HTTP/1.1")
        self.keep_alive = version11
        clen = -1
        chunked = False
        close_seen = False
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    raise ParseError(502, "invalid upstream Content-Length")
                n = int(value)
                if clen >= 0 and n != clen:
                    raise ParseError(502, "conflicting upstream Content-Length")
                clen = n
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
        if self._head_only or status in (204, 304):
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
        return buf[end + 4:]


def build_response_head(
    status: int,
    headers: list[tuple[str, str]],
    content_length: int,
    keep_alive: bool,
) -> bytes:
    """Status line and headers.

    ``content_length`` >= 0 frames a body of that length; -1 means a chunked body follows; -2 means the
    body is delimited by closing the connection (streams to HTTP/1.0 clients).
    """
    parts = [f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"]
    for k, v in headers:
        parts.append(f"{k}: {v}\r\n")
    if content_length >= 0:
        parts.append(f"content-length: {content_length}\r\n")
    elif content_length == -1:
        parts.append("transfer-encoding: chunked\r\n")
    if not keep_alive:
        parts.append("connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def select_headers(
    headers: list[tuple[bytes, bytes]], prefix: bytes, names: tuple[bytes, ...], out: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Append to ``out`` the (name, value) pairs of parsed ``headers`` whose name starts with ``prefix``
    or is one of ``names``, decoded as latin-1 str; returns ``out``."""
    for k, v in headers:
        if k.startswith(prefix) or k in names:
            out.append((k.decode("latin-1"), v.decode("latin-1")))
    return out


def build_request(head: bytes, request_id: str, body: bytes) -> bytes:
    """A whole upstream request: ``head`` (request line and fixed headers, ending in ``x-request-id: ``),
    the request id, the content length, the blank line and the body, in one bytes object."""
    return b"%s%s\r\ncontent-length: %d\r\n\r\n%s" % (head, request_id.encode("latin-1"), len(body), body)


def chunk_frame(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk: size in hex, CRLF, the data, CRLF (one bytes object)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def ms_text(us: int) -> str:
    """Microseconds as milliseconds header text, as ``repr(us / 1000.0)`` writes; "0.0" when ``us <= 0``."""
    if us <= 0:
        return "0.0"
    return repr(us / 1000.0)


def send_now(fd: int, data: bytes) -> int:
    """Write ``data`` to the non-blocking socket ``fd`` now, as much as the kernel takes: the number of
    bytes written (0 when it took none or the write failed: the caller hands what is left to its
    transport, which meets the same condition and deals with it)."""
    try:
        return os.write(fd, data)
    except OSError:
        return 0


def send_pieces_now(fd: int, pieces: list[bytes]) -> int:
    """``send_now`` for several bytes objects in one ``writev`` (at most 64 pieces are written; the
    caller hands the rest over with what the kernel did not take)."""
    try:
        return os.writev(fd, pieces[:64])
    except OSError:
        return 0
