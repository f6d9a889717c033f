"""Request phases before the upstream call: access, guard_in, admit, cache.

A phase is a small object with ``on_request(ctx)`` (return ``None`` to continue, a ``Reply`` to answer
locally, or raise a ``GatewayError``; or return one: the engine answers with it as if it had been raised
and changes nothing in it, so a phase may hand the same instance to many requests: # PERF: a refusal
that repeats costs no exception) and ``on_settle(ctx)`` (after the response is sent; must not
fail). The engine composes the configured phases once, at startup and on reload (# PERF: a phase that
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

__all__ = ["PHASE_ORDER", "Phase", "Reply"]

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

    def on_settle(self, ctx: Context) -> None:
        return None
