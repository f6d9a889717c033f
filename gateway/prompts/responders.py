"""A responder in front of the client's (a prompt's answer captured, or converted to another dialect).

The engine answers a prompt's call to such a responder; whether the client has gone, whether the
response to it has begun and whether its connection stays open are still the client's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.app import Responder

__all__ = ["InFront"]


class InFront:
    """The client-side state of a responder that stands in front of ``client``."""

    def __init__(self, client: Responder) -> None:
        self._client = client

    @property
    def started(self) -> bool:
        return bool(getattr(self._client, "started", False))

    @property
    def disconnected(self) -> bool:
        return self._client.disconnected

    @property
    def keep_alive(self) -> bool:
        return bool(getattr(self._client, "keep_alive", True))

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:  # an answer that closes the connection closes the client's
        if hasattr(self._client, "keep_alive"):
            self._client.keep_alive = value
