"""The engine's view of a provider: the translator interface.

One translator per configured provider, built once with its transport (a keep-alive pool per worker, or
the in-process mock). The engine never looks at a provider's wire format; per request it asks the
target's translator to

    build the upstream request   request_body(ctx, upstream_model, rewrite) -> bytes
    send it                      send / send_cb / send_within (the transport plumbing; ``stream``:
                                 whether the client streams, for wires that stream on another path)
    map the response head        pass_headers(resp, ratelimit, out) -> headers for the client
    translate a 2xx body         take_body(ctx, body) -> body for the client (usage -> ctx.usage)
      ... of a stream request    body_as_stream(ctx, resp, body) -> event stream for the client
    translate a stream           stream_relay(ctx) -> StreamRelay: feed(chunk) / end() per event
    map an error answer          error_answer(status, body) -> (status, client body) | None
    tell a bad credential        credential_failure(status, body) -> bool: a 401/403 that says the
                                 gateway's credential is wrong, not short of a permission
                                 (``gateway.routing.credentials``)

    map an error answer, in the client's dialect   client_error(ctx, status, body)

``ctx`` is the request's context: the translators read ``endpoint``, ``body``, ``fields``, ``stream``,
``include_usage`` and ``dialect`` and write ``usage`` (an object with ``prompt_tokens``,
``completion_tokens`` and ``total_tokens``; ``prompt_tokens_details.cached_tokens`` when the provider
reports cache reads).

Client dialects (``gateway.dialects.base`` has the theory of operation). ``ctx.dialect`` is the API the
client speaks: None for OpenAI chat, else a ``ClientDialect`` (Anthropic Messages, OpenAI Responses).
Each translator has a wire dialect. When the request's dialect *is* the translator's wire, every method
above is pass-through (the client's bytes up, the upstream's bytes back, usage read on the way): one
pointer comparison decides (``ctx.dialect is not None`` in ``OpenAITranslator``, ``ctx.dialect is
ANTHROPIC_MESSAGES`` in ``AnthropicTranslator``). Otherwise the method hands the request to
``gateway.providers.bridge``, which needs the translator's four IR codecs:

    ir_request(req, upstream_model) -> bytes         an ``ir.Request`` as the wire's request body
    ir_response(body) -> ir.Response                 the wire's answer (raises BadGateway if it is none)
    ir_stream() -> IRStream                          the wire's SSE as IR events: feed(bytes) / close()
    ir_error(status, body) -> ir.ProviderError|None  the wire's error answer (None: not its shape)

and the client's dialect for the other half (``decode_request``, ``encode_response``,
``stream_encoder``, ``provider_error_body``). A new provider therefore serves every dialect once it has
its four codecs; a new dialect is served by every provider once it implements ``ClientDialect`` and
lists its paths in ``gateway.dialects.DIALECT_PATHS``. The engine's own answers (errors, the mid-stream
error event, rate-limit headers) go through ``ctx.dialect`` too. The engine sends a dialect's request
to the translator with ``ctx.endpoint`` set to the dialect's endpoint name (``messages``; a translator
maps it to its upstream path: ``/chat/completions`` for OpenAI, ``/messages`` for Anthropic).

Implementations: ``OpenAITranslator`` (``gateway.providers.openai``: pass-through for OpenAI chat
clients, the client's bytes go up unchanged unless the model id must change; its IR codecs in
``gateway.providers.openai_translate``) and ``AnthropicTranslator`` (``gateway.providers.anthropic``:
pass-through for Messages clients; its IR codecs in ``gateway.providers.anthropic_translate``);
``GeminiTranslator`` and ``VertexAnthropicTranslator`` (``gateway.providers.gemini``), ``BedrockTranslator``
and ``CohereTranslator``: translated for every dialect.
Adding a provider means writing one translator (subclass ``OpenAITranslator`` for its transport
plumbing, override the methods above and the four IR codecs) and giving it a ``type`` in the config
(``gateway.engine.build_translator``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from gateway import ir
from gateway.errors import GatewayError
from gateway.providers.base import UpstreamResponse
from gateway.providers.bridge import IRStream

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

    def send(self, endpoint: str, body: bytes, request_id: str, extra: list[tuple[str, str]] | None = None,
             stream: bool = False) -> Awaitable[UpstreamResponse]: ...

    def request_body(self, ctx: Any, upstream_model: str, rewrite: bool) -> bytes: ...

    def pass_headers(
        self, resp: UpstreamResponse, ratelimit: bool, out: list[tuple[str, str]]
    ) -> list[tuple[str, str]]: ...

    def take_body(self, ctx: Any, body: bytes) -> bytes: ...

    def body_as_stream(self, ctx: Any, resp: UpstreamResponse, body: bytes) -> bytes: ...

    def stream_relay(self, ctx: Any) -> StreamRelay: ...

    def error_answer(self, status: int, body: bytes) -> tuple[int, bytes] | None: ...

    def client_error(self, ctx: Any, status: int, body: bytes) -> tuple[int, bytes] | None: ...

    def ir_request(self, req: ir.Request, upstream_model: str) -> bytes: ...

    def ir_response(self, body: bytes) -> ir.Response: ...

    def ir_stream(self) -> IRStream: ...

    def ir_error(self, status: int, body: bytes) -> ir.ProviderError | None: ...

    def credential_failure(self, status: int, body: bytes) -> bool: ...

    async def close(self) -> None: ...
