"""The contract between front ends (native listener, granian RSGI) and applications (the engine, the mock).

A front end parses a request into a ``Request`` (``gateway._core.http.Request``), hands it with a
``Responder`` to ``App.handle``, and writes what the app sends. Apps never see sockets.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from gateway._core.http import Request

__all__ = ["App", "CallbackResponder", "ClientGone", "FastApp", "Headers", "Request", "Responder"]

#: response headers: (name, value) pairs, names in lower case
Headers = list[tuple[str, str]]


class ClientGone(Exception):
    """The client disconnected while a response was being written."""


class Responder(Protocol):
    """Where an app writes its one response.

    Either ``send`` once (a complete response with a known length), or ``start_stream`` then any number
    of ``await write`` and one ``end_stream`` (chunked on HTTP/1.1). ``write`` waits while the client is
    slow (backpressure) and raises ``ClientGone`` once the client has gone.
    """

    @property
    def disconnected(self) -> bool: ...

    def send(self, status: int, headers: Headers, body: bytes) -> None: ...

    def start_stream(self, status: int, headers: Headers) -> None: ...

    async def write(self, chunk: bytes) -> None: ...

    def end_stream(self) -> None: ...


class CallbackResponder(Responder, Protocol):
    """A responder of the native front end, which also takes answers given from callbacks."""

    #: the response has begun (a head was written); nothing else may be sent then
    started: bool
    #: the connection stays open after this response (the app may turn it off)
    keep_alive: bool

    def done(self) -> None:
        """The response is complete (see ``FastApp.begin``)."""
        ...


class App(Protocol):
    """An application served by a front end. One instance per worker process."""

    async def startup(self) -> None: ...

    async def handle(self, request: Request, responder: Responder) -> None: ...

    async def shutdown(self) -> None: ...


class FastApp(App, Protocol):
    """An app that can also answer without a coroutine per request (the native front end uses it).

    ``begin`` either returns None, having taken the request: it then calls ``responder.done()`` exactly
    once, when the response is complete (perhaps before ``begin`` returns, perhaps from a callback
    later); or returns an awaitable that answers the request (as ``handle`` would), and never calls
    ``done()``. Exceptions from ``begin`` get a 500 (the app has not called ``done()`` then).
    """

    def begin(self, request: Request, responder: CallbackResponder) -> Awaitable[None] | None: ...
