"""Translator for Anthropic upstreams (the Messages API), behind an OpenAI-dialect client.

The engine talks to every upstream through the translator interface (``gateway.providers.translator``);
this one translates in both directions through the IR:

    client body ──openai_chat.decode_request──▶ ir.Request ──anthropic_translate.encode_request──▶ /messages
    answer      ◀─openai_chat.encode_response── ir.Response ◀─anthropic_translate.response_from_body── body
    chunks      ◀─openai_chat.ChunkEncoder───── IR events   ◀─anthropic_translate.AnthropicStream──── SSE

Streams are translated event by event as the upstream's chunks arrive (two sans-I/O state machines, see
their theory-of-operation tables), never buffered whole. The transport plumbing (prebuilt request
heads on the keep-alive pool, the callback path) is ``OpenAITranslator``'s: only the credential headers
(``x-api-key``, ``anthropic-version``, ``anthropic-beta``) and the path (``/messages``) differ.

Usage reaches the limits, budgets and call records in OpenAI's terms (``TranslatedUsage``):
``prompt_tokens`` counts every prompt token once (Anthropic's ``input_tokens`` excludes the cache reads
and writes reported beside it), ``prompt_tokens_details.cached_tokens`` the cache reads (priced at
``cached_input``), ``cache_write_tokens`` the writes (priced as input).
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec

from gateway import errors, ir
from gateway.dialects import openai_chat
from gateway.providers import anthropic_translate as xlate
from gateway.providers.base import Transport, UpstreamResponse
from gateway.providers.openai import OpenAITranslator

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_FORWARD_HEADERS",
    "DEFAULT_VERSION",
    "AnthropicStreamRelay",
    "AnthropicTranslator",
    "TranslatedUsage",
    "gateway_error",
    "openai_usage",
    "response_events",
    "with_sampling",
]

DEFAULT_BASE_URL: Final = "https://api.anthropic.com/v1"
DEFAULT_VERSION: Final = "2023-06-01"
#: client headers an Anthropic upstream gets by default (``forward_headers``): the client's
#: ``anthropic-version`` replaces the configured one; its ``anthropic-beta`` values join the configured ones
DEFAULT_FORWARD_HEADERS: Final = ("anthropic-beta", "anthropic-version")

#: upstream headers passed to the client as they are (the rate-limit ones are mapped)
_PASS: Final = (b"retry-after", b"x-should-retry")
_RATELIMIT_PREFIX: Final = b"anthropic-ratelimit-"
_DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


class CachedTokens(msgspec.Struct, frozen=True):
    cached_tokens: int = 0


class TranslatedUsage(msgspec.Struct, frozen=True):
    """A translated answer's usage as the limits, budgets, pricing and call records read it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: cache reads (a part of ``prompt_tokens``)
    prompt_tokens_details: CachedTokens = CachedTokens()
    #: cache writes (a part of ``prompt_tokens``)
    cache_write_tokens: int = 0


def openai_usage(u: ir.Usage) -> TranslatedUsage:
    """IR usage in OpenAI's terms: each prompt token counted once, cache reads apart."""
    return TranslatedUsage(u.prompt_tokens, u.output_tokens, u.total_tokens,
                           CachedTokens(u.cache_read_tokens), u.cache_write_tokens)


def gateway_error(err: ir.ProviderError) -> errors.GatewayError:
    """An IR error as the GatewayError the engine ends a stream with (its body is the OpenAI error)."""
    out = errors.GatewayError(err.message, code=err.code)
    out.status = err.status
    out.type = err.type
    out.body = openai_chat.encode_error(err)
    return out


def response_events(resp: ir.Response) -> list[ir.StreamEvent]:
    """The IR stream events of a whole answer (an upstream that answered a stream request whole)."""
    out: list[ir.StreamEvent] = [ir.MessageStart(resp.id, resp.model, resp.usage)]
    for i, part in enumerate(resp.content):
        if isinstance(part, ir.TextPart):
            out += [ir.BlockStart(i, "text"), ir.BlockDelta(i, "text", part.text)]
        elif isinstance(part, ir.ToolCallPart):
            out += [ir.BlockStart(i, "tool_call", part.id, part.name),
                    ir.BlockDelta(i, "arguments", part.arguments)]
        elif isinstance(part, ir.ThinkingPart):
            out.append(ir.BlockStart(i, "thinking"))
            if part.text:
                out.append(ir.BlockDelta(i, "thinking", part.text))
            if part.signature:
                out.append(ir.BlockDelta(i, "signature", part.signature))
        elif isinstance(part, ir.RedactedThinkingPart):
            out.append(ir.BlockStart(i, "redacted_thinking", data=part.data))
        else:
            continue
        out.append(ir.BlockStop(i))
    out.append(ir.UsageUpdate(resp.usage))
    out.append(ir.MessageStop(resp.stop_reason or ir.StopReason.END_TURN, resp.stop_sequence))
    return out


class AnthropicTranslator(OpenAITranslator):
    """One per ``type = "anthropic"`` provider: OpenAI chat in, the Messages API upstream.

    ``sampling``: which of the client's ``temperature``/``top_p``/``top_k`` go upstream (the provider's
    ``sampling`` key; a model's own ``sampling`` gets a translator of its own, ``with_sampling``)."""

    __slots__ = ("_args", "_beta", "_children", "sampling")

    def __init__(
        self,
        name: str,
        transport: Transport,
        path_prefix: str,
        api_key: str | None,
        extra_headers: dict[str, str],
        version: str = DEFAULT_VERSION,
        beta: list[str] | None = None,
        sampling: xlate.Sampling = "all",
    ) -> None:
        self._args = (name, transport, path_prefix, api_key, extra_headers, version, beta)
        self._children: dict[str, AnthropicTranslator] = {}
        self.sampling: xlate.Sampling = sampling
        self._beta = list(beta or ())
        headers = {"x-api-key": api_key} if api_key else {}
        headers["anthropic-version"] = version
        if beta:
            headers["anthropic-beta"] = ",".join(beta)
        headers.update(extra_headers)
        super().__init__(name, transport, path_prefix, None, headers)
        self.forward_headers(list(DEFAULT_FORWARD_HEADERS))
        # PERF: one endpoint, its head prebuilt like the base's
        self._paths = {"chat": path_prefix + "/messages"}
        pool = self._pool
        self._heads = {} if pool is None else {
            "chat": pool.build_head("POST", self._paths["chat"], self._headers, -1) + b"x-request-id: "
        }

    def with_sampling(self, sampling: xlate.Sampling) -> AnthropicTranslator:
        """This translator, or one that sends ``sampling`` instead (built once per mode, sharing the
        transport, its request heads and forwarded headers the same)."""
        if sampling == self.sampling:
            return self
        child = self._children.get(sampling)
        if child is None:
            child = self._children[sampling] = AnthropicTranslator(*self._args, sampling=sampling)
            child._forward = self._forward
            child.secrets = self.secrets
        return child

    def merge_headers(self, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A client's ``anthropic-beta`` values are added to the configured ones (each once); any other
        forwarded header (``anthropic-version``) replaces the configured one."""
        if self._beta:
            extra = [(k, _join_betas(self._beta, v) if k == "anthropic-beta" else v) for k, v in extra]
        return super().merge_headers(extra)

    def request_body(self, ctx: Any, upstream_model: str, rewrite: bool) -> bytes:
        """The Messages API request for the client's chat request (always rebuilt: the shapes differ)."""
        if ctx.endpoint != "chat":
            raise errors.BadRequest(
                f"The model `{ctx.fields.model}` is served by Anthropic, which has no {ctx.endpoint} "
                "endpoint; only /v1/chat/completions is available for it",
                param="model", code="unsupported_endpoint",
            )
        request = openai_chat.decode_request(ctx.body)
        return xlate.encode_request(request, upstream_model, sampling=self.sampling)

    def pass_headers(
        self, resp: UpstreamResponse, ratelimit: bool, out: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Retry hints as they are; ``anthropic-ratelimit-*`` as OpenAI's ``x-ratelimit-*``."""
        limits: list[tuple[str, str]] = []
        for name, value in resp.headers:
            if name in _PASS:
                out.append((name.decode("latin-1"), value.decode("latin-1")))
            elif ratelimit and name.startswith(_RATELIMIT_PREFIX):
                limits.append((name.decode("latin-1"), value.decode("latin-1")))
        if limits:
            out.extend(xlate.ratelimit_headers(limits, time.time()))
        return out

    def take_body(self, ctx: Any, body: bytes) -> bytes:
        """The ``chat.completion`` for Anthropic's ``message``; its usage goes to ``ctx.usage``."""
        answer = _answer(body)
        ctx.usage = openai_usage(answer.usage)
        return openai_chat.encode_response(answer, int(time.time()))

    def body_as_stream(self, ctx: Any, resp: UpstreamResponse, body: bytes) -> bytes:
        """A stream request answered with one ``message``: the chunks it would have streamed."""
        answer = _answer(body)
        ctx.usage = openai_usage(answer.usage)
        encoder = openai_chat.ChunkEncoder(int(time.time()), ctx.include_usage)
        return encoder.encode_all(response_events(answer))

    def stream_relay(self, ctx: Any) -> AnthropicStreamRelay:  # type: ignore[override]
        return AnthropicStreamRelay(ctx)

    def error_answer(self, status: int, body: bytes) -> tuple[int, bytes] | None:
        """Anthropic's error (or a body of another shape, by its status) as the OpenAI error the client
        gets, with the status of ``anthropic_translate.ERROR_TYPES`` (529 overloaded: 503)."""
        err = xlate.error_from_response(status, body)
        return err.status, openai_chat.encode_error(err)


def with_sampling(translator: OpenAITranslator, sampling: xlate.Sampling | None) -> OpenAITranslator:
    """``translator`` for a model whose config sets ``sampling`` (None: the provider's): an Anthropic
    translator sending that; any other translator as it is (OpenAI-compatible upstreams get the client's
    sampling fields untouched)."""
    if sampling is None or not isinstance(translator, AnthropicTranslator):
        return translator
    return translator.with_sampling(sampling)


def _join_betas(configured: list[str], client: str) -> str:
    names = [*configured, *(b.strip() for b in client.split(","))]
    return ",".join(dict.fromkeys(n for n in names if n))


def _answer(body: bytes) -> ir.Response:
    try:
        return xlate.response_from_body(body)
    except _DECODE_ERRORS:
        raise errors.BadGateway(
            "The upstream provider returned a response body that is not an Anthropic message",
            code="upstream_invalid_response",
        ) from None


class AnthropicStreamRelay:
    """Anthropic SSE bytes in, OpenAI chunk SSE bytes out, as they come; the usage kept on the request.

    An ``error`` event (``overloaded_error`` mid-stream), a grammar violation or a stream cut before
    ``message_stop`` sets ``error``: the engine ends the client's stream with it.
    """

    __slots__ = ("_ctx", "_encoder", "_machine", "error")

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._machine = xlate.AnthropicStream()
        self._encoder = openai_chat.ChunkEncoder(int(time.time()), ctx.include_usage)
        self.error: errors.GatewayError | None = None

    def feed(self, chunk: bytes) -> bytes:
        return self._emit(self._machine.feed(chunk))

    def end(self) -> bytes:
        return self._emit(self._machine.close())

    def _emit(self, events: list[ir.StreamEvent]) -> bytes:
        out: list[bytes] = []
        encode = self._encoder.encode
        for ev in events:
            if isinstance(ev, ir.StreamError):
                self.error = gateway_error(ev.error)
                break
            if isinstance(ev, ir.MessageStart | ir.UsageUpdate):
                self._ctx.usage = openai_usage(ev.usage)
            data = encode(ev)
            if data:
                out.append(data)
        return b"".join(out)
