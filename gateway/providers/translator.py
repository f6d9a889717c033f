"""The engine's view of a provider: the translator interface.

One translator per configured provider, built once with its transport (a keep-alive pool per worker, or
the in-process mock). The engine never looks at a provider's wire format; per request it asks the
target's translator to

    build the upstream request   request_body(ctx, upstream_model, rewrite) -> bytes
    send it                      send / send_cb / send_within (the transport plumbing)
    map the response head        pass_headers(resp, ratelimit, out) -> headers for the client
    translate a 2xx body         take_body(ctx, body) -> body for the client (usage -> ctx.usage)
      ... of a stream request    body_as_stream(ctx, resp, body) -> event stream for the client
    translate a stream           stream_relay(ctx) -> StreamRelay: feed(chunk) / end() per event
    map an error answer          error_answer(status, body) -> (status, client body) | None

``ctx`` is the request's context: the translators read ``endpoint``, ``body``, ``fields``, ``stream``
and ``include_usage`` and write ``usage`` (an object with ``prompt_tokens``, ``completion_tokens`` and
``total_tokens``; ``prompt_tokens_details.cached_tokens`` when the provider reports cache reads).

Implementations: ``OpenAITranslator`` (``gateway.providers.openai``: pass-through, the client's bytes go
up unchanged unless the model id must change) and ``AnthropicTranslator``
(``gateway.providers.anthropic``: OpenAI chat ⇄ the Messages API through the IR). Adding a provider
means writing one translator (subclass ``OpenAITranslator`` for its transport plumbing and override the
methods above) and giving it a ``type`` in the config (``gateway.engine.build_translator``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from gateway.errors import GatewayError
from gateway.providers.base import UpstreamResponse

__all__ = ["StreamRelay", "Translator"]


class StreamRelay(Protocol):
    """One request's upstream event stream in, the client's event stream out, event by event."""

    #: set once the stream cannot go on; the engine ends the client's stream with it
    error: GatewayError | None

    def feed(self, chunk: bytes) -> bytes:
        """The client's bytes for the upstream's next body piece (b"" while no event is complete)."""
        ...

    def end(self) -> bytes:
        """The upstream body ended: the client's last bytes (an unfinished stream sets ``error``)."""
        ...


class Translator(Protocol):
    name: str

    def send(self, endpoint: str, body: bytes, request_id: str) -> Awaitable[UpstreamResponse]: ...

    def request_body(self, ctx: Any, upstream_model: str, rewrite: bool) -> bytes: ...

    def pass_headers(
        self, resp: UpstreamResponse, ratelimit: bool, out: list[tuple[str, str]]
    ) -> list[tuple[str, str]]: ...

    def take_body(self, ctx: Any, body: bytes) -> bytes: ...

    def body_as_stream(self, ctx: Any, resp: UpstreamResponse, body: bytes) -> bytes: ...

    def stream_relay(self, ctx: Any) -> StreamRelay: ...

    def error_answer(self, status: int, body: bytes) -> tuple[int, bytes] | None: ...

    async def close(self) -> None: ...
