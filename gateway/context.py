"""The request's context: everything one request carries through the phase chain.

Its own module (compiled from this source, typed by ``context.pxd``) so that the phases, the access and
limits phases and the translators can name the type without importing the engine. The runtime tables
(``gateway.engine.Runtime``, ``ModelEntry``, ``Target``) it points to stay in the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.app import Headers, Request, Responder
    from gateway.engine import ModelEntry, Runtime, Target

__all__ = ["Context", "LiveRequests"]

_perf = time.perf_counter


class Context:
    """Everything one request carries through the chain."""

    __slots__ = (
        "_live_next", "_live_prev", "answer", "attempts", "body", "cache", "cost", "dialect", "endpoint",
        "error", "fields", "guard", "include_usage", "key", "limits", "model", "overhead", "prompt",
        "request", "request_id", "responder", "response_headers", "route_model", "runtime", "settled",
        "status", "stream", "t0", "t_first", "t_up", "target", "task", "trace", "up_ms", "upstream_status",
        "usage",
    )

    def __init__(self, request: Request, request_id: str, runtime: Runtime, responder: Responder) -> None:
        self.request = request
        self.request_id = request_id
        self.runtime = runtime
        #: where the answer goes (the engine answers a request itself when the worker cuts it)
        self.responder = responder
        #: the task running the request, when it runs as coroutines (None on the callback path)
        self.task: asyncio.Task[Any] | None = None
        #: the request has its call record: nothing more is sent or recorded for it
        self.settled = False
        self.t0 = _perf()
        self.t_up = 0.0
        self.up_ms = 0.0
        #: when a streamed answer started (0.0: not a stream, or not started): the time to first token
        self.t_first = 0.0
        #: the non-streamed answer's body as sent (for call records that keep bodies)
        self.answer: bytes | None = None
        self.endpoint = ""
        #: the client's dialect (``gateway.dialects.base.ClientDialect``); None: OpenAI chat
        self.dialect: Any = None
        self.fields: Any = None
        self.body = request.body
        self.model: ModelEntry | None = None
        #: the deployment that served (or last failed) the request, and how many attempts were made
        self.target: Target | None = None
        self.attempts = 0
        #: set by a phase to serve another model than the one asked for (a budget's downgrade)
        self.route_model: str | None = None
        #: what the admit phase reserved for this request (settled after the response)
        self.limits: Any = None
        #: USD, when the model's price and the usage are known
        self.cost: float | None = None
        self.stream = False
        self.include_usage = False
        self.usage: Any = None
        self.status = 0
        self.upstream_status: int | None = None
        self.error: GatewayError | None = None
        self.response_headers: Headers = []
        self.overhead = ""
        #: the caller's key (gateway.auth.table.KeyEntry) once the access phase has run
        self.key: Any = None
        #: the response cache's state for this request (gateway.cache.phase.CacheState), when it has one
        self.cache: Any = None
        #: the guardrails' state for this request's way out (gateway.guard.phase), when it has one
        self.guard: Any = None
        #: "NAME@VERSION" of a prompt call (gateway.prompts), for its call record; else None
        self.prompt: str | None = None
        #: the request's OpenTelemetry ids and times when it is traced ([tracing]: gateway.observe.tracing)
        self.trace: Any = None
        #: its neighbours among the worker's live requests (``LiveRequests``)
        self._live_prev: Context | None = None
        self._live_next: Context | None = None


class LiveRequests:
    """The worker's requests begun and not yet recorded, as a list threaded through their contexts:
    whatever ends a request, the engine takes it out when it records it (``Engine._settle``), and what
    is left when the worker stops is cut or recorded as unfinished (``Engine.cut_unfinished``).

    # PERF: every request is added and removed once, on the hot path: linking a context costs a few
    field writes, where a set paid a hash, a table probe and now and then a resize on each side (about
    300 instructions a request). Iterating (only at shutdown) takes a snapshot, so the requests may be
    settled while it runs.
    """

    __slots__ = ("_head", "count")

    def __init__(self) -> None:
        self._head: Context | None = None
        #: how many are live
        self.count = 0

    def add(self, ctx: Context) -> None:
        head = self._head
        ctx._live_next = head
        if head is not None:
            head._live_prev = ctx
        self._head = ctx
        self.count += 1

    def discard(self, ctx: Context) -> None:
        """Take ``ctx`` out; nothing when it is not in."""
        prev = ctx._live_prev
        after = ctx._live_next
        if prev is None:
            if self._head is not ctx:
                return
            self._head = after
        else:
            prev._live_next = after
        if after is not None:
            after._live_prev = prev
        ctx._live_prev = None
        ctx._live_next = None
        self.count -= 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Context]:
        out = []
        ctx = self._head
        while ctx is not None:
            out.append(ctx)
            ctx = ctx._live_next
        return iter(out)
