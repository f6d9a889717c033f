"""The upstream side's contract: a Transport sends one request and returns an UpstreamResponse.

Two implementations: the keep-alive HTTP pool (``gateway.server.pool``) for real upstreams and the
in-process mock (``gateway.providers.mock``). Provider translators build the request and read the
response through this interface only, so they never touch sockets.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Transport", "UpstreamError", "UpstreamResponse", "UpstreamTimeout"]


class UpstreamError(Exception):
    """The upstream failed at the transport level: refused, reset, closed mid-body, garbage framing."""


class UpstreamTimeout(UpstreamError):
    """Connect, pool-wait or read timeout."""


class UpstreamResponse(Protocol):
    """An upstream response whose head has arrived. Read the body once, whole or chunk by chunk."""

    status: int
    #: (lower-case name, value) pairs
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None: ...

    async def read(self) -> bytes:
        """The whole body. Raises UpstreamError/UpstreamTimeout."""
        ...

    def complete_body(self) -> bytes | None:
        """The whole body if it has already arrived intact (no waiting), else None: then use ``read``."""
        ...

    async def next_chunk(self) -> bytes:
        """The next piece of the body as it arrives; b"" at the end. Raises UpstreamError/UpstreamTimeout."""
        ...

    def close(self) -> None:
        """Stop reading: release the connection (or drop it if the body was not fully read)."""
        ...


class Transport(Protocol):
    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> UpstreamResponse:
        """Send one request (``path`` includes the base URL's path prefix) and wait for the head."""
        ...

    async def close(self) -> None: ...
