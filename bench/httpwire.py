"""The HTTP/1.1 client side the benchmark clients need: a request built once, responses framed incrementally.

Sans-I/O: ``ResponseParser.feed`` takes the bytes a connection received and returns the statuses of the
responses they completed; sockets and clocks are the caller's. It frames by ``content-length`` or
``transfer-encoding: chunked`` (the two framings the gateway, nginx and the mock use) and keeps no body:
a load generator needs to know where a response ends, not what it says.
"""

from __future__ import annotations

__all__ = ["ResponseParser", "build_request"]

_MAX_HEAD = 64 * 1024


def build_request(method: str, path: str, host: str, body: bytes = b"", *, key: str | None = None,
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _header_value(head_lower: bytes, name: bytes) -> bytes | None:
    i = head_lower.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    start = i + len(name) + 3
    end = head_lower.find(b"\r\n", start)
    return head_lower[start:end if end >= 0 else len(head_lower)].strip()


class ResponseParser:
    """Frames a stream of HTTP/1.1 responses.

    ``status`` is the status of the response in progress (None between responses), ``body_bytes`` how
    many body bytes of it have arrived (chunk framing excluded), ``events`` how many SSE ``data:`` lines
    (counted in the bytes as they arrive; an event split across two reads may be missed, which only
    matters to a caller that wants "some events arrived").
    """

    __slots__ = ("_buf", "_chunked", "_no_body", "_remaining", "_trailer", "body_bytes", "events", "status")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.status: int | None = None
        self._chunked = False
        self._remaining = 0  # content-length left, or of the current chunk (+2 for its CRLF)
        self._trailer = False  # after the last chunk: waiting for the final CRLF (or trailers)
        self._no_body = False
        self.body_bytes = 0
        self.events = 0

    def expect_no_body(self) -> None:
        """The next response answers a HEAD request: it has no body whatever its headers say."""
        self._no_body = True

    def feed(self, data: bytes) -> list[int]:
        """Statuses of the responses completed by ``data``; ValueError on a malformed response."""
        buf = self._buf
        if self.status is None and not buf and not self._no_body:
            # PERF: the common case of a load generator, one whole content-length response in one read
            end = data.find(b"\r\n\r\n")
            if end > 0 and data.startswith(b"HTTP/1.1 ") and data[9:10] != b"1":
                lower = data[:end].lower()
                cl = _header_value(lower, b"content-length")
                if cl is not None and _header_value(lower, b"transfer-encoding") is None \
                        and len(data) == end + 4 + int(cl):
                    return [int(data[9:12])]
        buf += data
        done: list[int] = []
        while True:
            if self.status is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise ValueError("response head too long")
                    break
                head = bytes(buf[:end])
                del buf[:end + 4]
                if not head.startswith(b"HTTP/1.") or len(head) < 12:
                    raise ValueError(f"not an HTTP/1.x response: {head[:40]!r}")
                status = int(head[9:12])
                lower = head.lower()
                self.status = status
                self.body_bytes = 0
                self.events = 0
                te = _header_value(lower, b"transfer-encoding")
                if self._no_body or status in (204, 304) or 100 <= status < 200:
                    self._chunked, self._remaining = False, 0
                elif te is not None and te.endswith(b"chunked"):
                    self._chunked, self._remaining, self._trailer = True, -1, False
                else:
                    cl = _header_value(lower, b"content-length")
                    self._chunked = False
                    self._remaining = int(cl) if cl is not None else 0
                self._no_body = False
                if 100 <= status < 200:  # an interim response: the real one follows
                    self.status = None
                    continue
            if not self._chunked:
                n = min(self._remaining, len(buf))
                if n:
                    self.events += buf.count(b"data: ", 0, n)
                    del buf[:n]
                    self._remaining -= n
                    self.body_bytes += n
                if self._remaining:
                    break
                done.append(self.status)
                self.status = None
                continue
            if not self._step_chunked(buf):
                break
            done.append(self.status)
            self.status = None
        return done

    def _step_chunked(self, buf: bytearray) -> bool:
        """Consume chunked body bytes; True when the response is complete."""
        while True:
            if self._trailer:
                # no trailers: CRLF right away; else trailer lines up to an empty line
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    return True
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return False
                del buf[:end + 4]
                return True
            if self._remaining < 0:  # at a chunk-size line
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > 1024:
                        raise ValueError("chunk size line too long")
                    return False
                size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                del buf[:eol + 2]
                if size == 0:
                    self._trailer = True
                    continue
                self._remaining = size + 2  # data and its CRLF
            n = min(self._remaining, len(buf))
            if n == 0:
                return False
            self.events += buf.count(b"data: ", 0, n)
            del buf[:n]
            self.body_bytes += n
            self._remaining -= n
            if self._remaining:
                return False
            self.body_bytes -= 2  # the chunk's CRLF is framing
            self._remaining = -1
