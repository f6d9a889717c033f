"""Errors raised by the sans-IO core. Shared by the compiled modules and their twins."""

from __future__ import annotations

__all__ = ["EventStreamError", "ParseError"]


class ParseError(Exception):
    """Malformed or unacceptable HTTP framing.

    ``status`` is the HTTP status to answer with (400, 413, 431, 501, 505). After a ParseError the
    connection's framing can no longer be trusted: answer once and close.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class EventStreamError(ValueError):
    """A broken AWS event-stream message (``application/vnd.amazon.eventstream``): a checksum that does
    not match, a length out of bounds, a header that overruns its section or has an unknown type, a
    repeated header, or a message cut at the end of the stream. The stream cannot be trusted past it."""
