"""Request phases before the upstream call: access, guard_in, admit, cache.

A phase is a small object with ``on_request(ctx)`` (return ``None`` to continue, a ``Reply`` to answer
locally, or raise a ``GatewayError``; or return one: the engine answers with it as if it had been raised
and changes nothing in it, so a phase may hand the same instance to many requests: # PERF: a refusal
that repeats costs no exception) and ``on_settle(ctx)`` (after the response is sent; must not
fail).

The way out (Envoy's encoder filters, Kong's ``body_filter``): phases see the answer in reverse chain
order, a successful one only (errors are the gateway's or the upstream's, never a phase's to change):

    hook                          | called                                     | returns
    ------------------------------+--------------------------------------------+----------------------------
    on_response(ctx, body)        | a complete answer, before it is sent       | the body to send
    on_stream(ctx)                | a stream begins, before its first byte     | a StreamObserver, or None
    StreamObserver.feed(data)     | each piece of the client-bound stream      | the bytes to send
    StreamObserver.end()          | the stream ended (complete or not)         | bytes to send last
    on_settle(ctx)                | after the response is sent                 | -

``on_settle`` is the "after it is sent" hook: what ``on_response`` or the observer kept on ``ctx`` is
there. A phase overrides only the hooks it needs; the engine calls only phases that override each one
(# PERF: with no phase on the way out, a body or a stream chunk passes through no call and no copy).

The engine composes the configured phases once, at startup and on reload (# PERF: a phase that
has nothing to do is not in the chain at all, so seams cost nothing per request).

Phases that later capabilities fill in (keys, limits, budgets, the response cache, guardrails) plug
in here; the chain's order is fixed: parse -> access -> guard_in -> admit -> cache -> prepare -> route
-> upstream -> respond -> settle.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, ClassVar

from gateway.app import Headers
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.context import Context

__all__ = ["PHASE_ORDER", "Phase", "Reply", "StreamObserver"]

#: names of the phases that run before routing, in order ("prepare": rewrites the upstream needs, such as
#: image URLs fetched inline, after the limits and the cache have seen the client's request)
PHASE_ORDER: tuple[str, ...] = ("access", "guard_in", "admit", "cache", "prepare")


class Reply:
    """A complete local answer that short-circuits the chain (a cache hit, a 429, ...)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Headers | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or [("content-type", "application/json")]


class Phase:
    """Base class. Subclasses set ``name`` to one of PHASE_ORDER and override what they need."""

    name: ClassVar[str] = ""
    #: True when ``on_request`` returns an awaitable (it is then awaited)
    is_async: ClassVar[bool] = False

    def on_request(self, ctx: Context) -> Reply | GatewayError | Awaitable[Reply | None] | None:
        return None

    def on_response(self, ctx: Context, body: bytes) -> bytes:
        return body

    def on_stream(self, ctx: Context) -> StreamObserver | None:
        return None

    def on_settle(self, ctx: Context) -> None:
        return None


class StreamObserver:
    """Sees one client-bound stream (``Phase.on_stream``); may change what is sent."""

    __slots__ = ()

    def feed(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""
