"""The frame every sans-I/O stream translator shares: SSE bytes in, IR stream events out.

A provider's stream translator (``AnthropicStream``, the OpenAI wire's ``ChunkStream``) subclasses
``SSEMachine`` and writes ``_event`` (one complete SSE event: its IR events into ``out``) and, when its
stream may end without an explicit last event, ``_ended``. The frame splits events with the compiled
scanner of ``gateway._core.sse`` (the one the pass-through relay uses), takes an unterminated last event
at the end, and fails a stream once: after ``FAILED`` (or ``DONE``) nothing more is emitted.

    state     meaning
    IDLE      nothing of the answer yet
    MESSAGE   the answer is arriving
    DONE      the answer ended as the provider's grammar says
    FAILED    a StreamError was emitted (cut, malformed, too large, or the provider's own error)
"""

from __future__ import annotations

from typing import Final

from gateway import ir
from gateway._core.sse import SSEScanner, split_events

__all__ = ["DONE", "FAILED", "IDLE", "MESSAGE", "SSEMachine"]

IDLE: Final = "IDLE"
MESSAGE: Final = "MESSAGE"
DONE: Final = "DONE"
FAILED: Final = "FAILED"


class SSEMachine:
    """``feed(chunk)`` per upstream body piece, then ``close()``; both return IR events."""

    __slots__ = ("_scanner", "_usage", "state")

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._scanner = SSEScanner(max_event_bytes)
        self.state = IDLE
        self._usage = ir.Usage()

    @property
    def usage(self) -> ir.Usage:
        """Usage so far (the settle phase reads it even when the stream failed)."""
        return self._usage

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]:
        """IR events for the complete SSE events now buffered."""
        out: list[ir.StreamEvent] = []
        try:
            data = self._scanner.feed(chunk)
        except ValueError as e:
            return self._fail(out, str(e))
        if data:
            for event in split_events(data):
                self._event(event, out)
        return out

    def close(self) -> list[ir.StreamEvent]:
        """The upstream body ended: the last event (if unterminated), then ``_ended``."""
        out: list[ir.StreamEvent] = []
        tail = self._scanner.pending
        if tail.strip():
            self._scanner = SSEScanner(self._scanner.max_event_bytes)
            self._event(tail, out)
        self._ended(out)
        return out

    def _event(self, event: bytes, out: list[ir.StreamEvent]) -> None:
        raise NotImplementedError

    def _ended(self, out: list[ir.StreamEvent]) -> None:
        """The body ended: an answer still open is a failure (overridden where an end is implicit)."""
        if self.state in (IDLE, MESSAGE):
            self._fail(out, "the upstream stream ended before the message was complete")

    def _fail(self, out: list[ir.StreamEvent], message: str, err: ir.ProviderError | None = None
              ) -> list[ir.StreamEvent]:
        if self.state not in (FAILED, DONE):
            self.state = FAILED
            out.append(ir.StreamError(err or ir.ProviderError(502, "upstream_error", "bad_gateway", message,
                                                              retryable=True)))
        return out
