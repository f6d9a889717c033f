"""Pure-Python twin of ``gateway._core._sse``: server-sent-event framing for stream relay.

The relay forwards upstream bytes unchanged but only at event boundaries, so that an event the gateway
must look at (the usage chunk) is always seen whole. ``SSEScanner.feed`` returns the complete events
buffered so far as one bytes object and keeps the incomplete tail.
"""

from __future__ import annotations

__all__ = ["SSEScanner", "event_data", "split_events"]


def _boundary(buf: bytes, after_event: bool) -> int:
    """End index of the last complete event in ``buf`` (0 if none). ``after_event``: the byte before
    ``buf`` is the line feed that ended an event, so a blank line at the very start of ``buf`` is one too
    (the same bytes in one piece would have been a boundary: see ``SSEScanner``)."""
    a = buf.rfind(b"\n\n")
    b = buf.rfind(b"\n\r\n")
    end = max(a + 2 if a >= 0 else 0, b + 3 if b >= 0 else 0)
    if end == 0 and after_event:
        if buf.startswith(b"\n"):
            return 1
        if buf.startswith(b"\r\n"):
            return 2
    return end


class SSEScanner:
    """Holds back an incomplete event; releases complete ones.

    What is released does not depend on how the stream was cut into pieces: a boundary (a line feed
    ending a blank line) is found across the cut between pieces too. The only such boundary the bytes of
    the current buffer cannot show is a blank line at its start right after a released event (the
    released bytes end with that event's line feed, and the held-back tail starts right after them);
    ``_after_event`` remembers that something was released.
    """

    __slots__ = ("_after_event", "_tail", "max_event_bytes")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._tail = b""
        self._after_event = False
        self.max_event_bytes = max_event_bytes

    @property
    def pending(self) -> bytes:
        """Bytes of an incomplete event still held back."""
        return self._tail

    def feed(self, chunk: bytes) -> bytes:
        """Complete events available after ``chunk`` (b"" if none). Raises ValueError past max_event_bytes."""
        buf = self._tail + chunk if self._tail else chunk
        end = _boundary(buf, self._after_event)
        if end:
            self._after_event = True
        if end == len(buf):
            self._tail = b""
            return buf
        self._tail = buf[end:]
        if len(self._tail) > self.max_event_bytes:
            raise ValueError("server-sent event exceeds the size limit")
        return buf[:end]


def split_events(data: bytes) -> list[bytes]:
    """Split complete events (each keeps its terminating blank line)."""
    events: list[bytes] = []
    start = 0
    pos = 0
    n = len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line_is_empty = nl == pos or (nl == pos + 1 and data[pos] == 0x0D)
        pos = nl + 1
        if line_is_empty:
            if pos - start > (2 if data[start:start + 1] in (b"\n", b"\r") else 0):
                events.append(data[start:pos])
            start = pos
    if start < n:
        events.append(data[start:])
    return events


def event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` payload of one event, or None if it has no data field."""
    out: list[bytes] = []
    for line in event.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.startswith(b"data:"):
            v = line[5:]
            if v.startswith(b" "):
                v = v[1:]
            out.append(v)
    if not out:
        return None
    return b"\n".join(out)
