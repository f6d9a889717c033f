"""Pure-Python twin of ``gateway._core._awsevent``: AWS event-stream framing (``application/vnd.amazon.
eventstream``, the body of Bedrock's ConverseStream), decoded sans-I/O.

One message on the wire (all integers big-endian):

    offset          size     field
    0               4        total length (the whole message, both CRCs included)
    4               4        headers length
    8               4        prelude CRC-32 (of bytes 0-7)
    12              h        headers: name length (1 byte), name (UTF-8), type (1 byte), value
    12 + h          p        payload (p = total - h - 16)
    total - 4       4        message CRC-32 (of bytes 0 to total - 4; chained from the prelude CRC)

    header type     value                               Python value
    0 / 1           none: true / false                  bool
    2 / 3 / 4 / 5   int8 / int16 / int32 / int64        int
    6               uint16 length, bytes                bytes
    7               uint16 length, UTF-8                str
    8               int64, milliseconds since the epoch int
    9               16 bytes (a UUID)                   bytes

The values are botocore's (``botocore.eventstream``, the reference the tests compare against), and so are
the bounds: at most 128 KiB of headers and 24 MiB of payload per message. Theory of operation:

    state                    input                              action
    fewer than 12 bytes      feed                               buffer
    a whole prelude          (at once, before the rest comes)   check its CRC and both lengths: refuse
                                                                early, so a bad length never makes the
                                                                decoder wait for (or hold) 24 MiB
    a whole message          next                               check the message CRC, then parse the
                                                                headers (each must fit its section, have
                                                                a known type, valid UTF-8, a new name)
    bytes left at close      close                              a message cut at the end: refuse

``EventStreamError`` (``gateway._core.errors``) says what is wrong; after it the decoder keeps raising
it (the framing cannot be found again).
"""

from __future__ import annotations

import struct
from zlib import crc32

from gateway._core.errors import EventStreamError

__all__ = [
    "MAX_HEADERS_LENGTH", "MAX_PAYLOAD_LENGTH", "PRELUDE_LENGTH", "EventStreamDecoder", "EventStreamError",
    "Message",
]

#: bytes of the prelude: total length, headers length, prelude CRC
PRELUDE_LENGTH = 12
#: botocore's bounds (``_MAX_HEADERS_LENGTH``, ``_MAX_PAYLOAD_LENGTH``)
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024

_PRELUDE = struct.Struct("!III")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
#: fixed-size header types: size, format
_FIXED = {2: (1, struct.Struct("!b")), 3: (2, struct.Struct("!h")), 4: (4, struct.Struct("!i")),
          5: (8, struct.Struct("!q")), 8: (8, struct.Struct("!q"))}


class Message:
    """One decoded message: its headers (name → value) and its payload bytes."""

    __slots__ = ("headers", "payload")

    def __init__(self, headers: dict[str, bool | int | bytes | str], payload: bytes) -> None:
        self.headers = headers
        self.payload = payload

    def __repr__(self) -> str:
        return f"Message(headers={self.headers!r}, payload={self.payload!r})"


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EventStreamError(f"{what} is not valid UTF-8") from None


def parse_headers(data: bytes) -> dict[str, bool | int | bytes | str]:
    """The headers section of a message → name → value. Raises EventStreamError."""
    headers: dict[str, bool | int | bytes | str] = {}
    pos, end = 0, len(data)
    while pos < end:
        size = data[pos]
        pos += 1
        if pos + size + 1 > end:
            raise EventStreamError("a header name overruns the headers section")
        name = _text(data[pos:pos + size], "a header name")
        kind = data[pos + size]
        pos += size + 1
        value: bool | int | bytes | str
        if kind <= 1:
            value = kind == 0
        elif kind in _FIXED:
            width, fmt = _FIXED[kind]
            if pos + width > end:
                raise EventStreamError(f"header {name!r} overruns the headers section")
            value = fmt.unpack_from(data, pos)[0]
            pos += width
        elif kind in (6, 7):
            if pos + 2 > end or pos + 2 + _U16.unpack_from(data, pos)[0] > end:
                raise EventStreamError(f"header {name!r} overruns the headers section")
            width = _U16.unpack_from(data, pos)[0]
            raw = data[pos + 2:pos + 2 + width]
            value = raw if kind == 6 else _text(raw, f"header {name!r}")
            pos += 2 + width
        elif kind == 9:
            if pos + 16 > end:
                raise EventStreamError(f"header {name!r} overruns the headers section")
            value = data[pos:pos + 16]
            pos += 16
        else:
            raise EventStreamError(f"header {name!r} has an unknown type {kind}")
        if name in headers:
            raise EventStreamError(f"header {name!r} appears twice")
        headers[name] = value
    return headers


class EventStreamDecoder:
    """Event-stream bytes in (``feed``), complete messages out (iterate; it stops when the next message
    is not complete yet). ``close()`` at the end of the body refuses a message cut short."""

    __slots__ = ("_buf", "_error", "_total", "max_headers_length", "max_payload_length")

    def __init__(self, max_headers_length: int = MAX_HEADERS_LENGTH,
                 max_payload_length: int = MAX_PAYLOAD_LENGTH) -> None:
        self._buf = bytearray()
        #: the checked total length of the message at the front, 0 until its prelude is read
        self._total = 0
        self._error: EventStreamError | None = None
        self.max_headers_length = max_headers_length
        self.max_payload_length = max_payload_length

    @property
    def pending(self) -> int:
        """Bytes buffered of a message not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._buf += data

    def __iter__(self) -> EventStreamDecoder:
        return self

    def __next__(self) -> Message:
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except EventStreamError as e:
            self._error = e
            raise

    def close(self) -> None:
        """The stream ended: raises EventStreamError when a message was cut short."""
        if self._error is not None:
            raise self._error
        if self._buf:
            self._error = EventStreamError(
                f"the stream ended inside a message ({len(self._buf)} bytes of it arrived)")
            raise self._error

    def _next(self) -> Message:
        buf = self._buf
        if not self._total:
            if len(buf) < PRELUDE_LENGTH:
                raise StopIteration
            self._total = self._prelude(bytes(buf[:PRELUDE_LENGTH]))
        total = self._total
        if len(buf) < total:
            raise StopIteration
        data = bytes(buf[:total])
        del buf[:total]
        self._total = 0
        expected = _U32.unpack_from(data, total - 4)[0]
        prelude_crc = _U32.unpack_from(data, 8)[0]
        if crc32(memoryview(data)[8:total - 4], prelude_crc) != expected:
            raise EventStreamError("the message checksum does not match")
        head = _U32.unpack_from(data, 4)[0]
        headers = parse_headers(data[PRELUDE_LENGTH:PRELUDE_LENGTH + head])
        return Message(headers, data[PRELUDE_LENGTH + head:total - 4])

    def _prelude(self, prelude: bytes) -> int:
        """The total length of the message this prelude starts, checked."""
        total: int
        head: int
        total, head, crc = _PRELUDE.unpack(prelude)
        if crc32(prelude[:8]) != crc:
            raise EventStreamError("the prelude checksum does not match")
        if head > self.max_headers_length:
            raise EventStreamError(f"headers of {head} bytes exceed the limit of {self.max_headers_length}")
        payload = total - head - PRELUDE_LENGTH - 4
        if payload < 0:
            raise EventStreamError(f"a total length of {total} cannot hold {head} bytes of headers")
        if payload > self.max_payload_length:
            raise EventStreamError(
                f"a payload of {payload} bytes exceeds the limit of {self.max_payload_length}")
        return total
