"""Translator for Anthropic upstreams (the Messages API), behind a client of any dialect.

The engine talks to every upstream through the translator interface (``gateway.providers.translator``).
A Messages client (``ctx.dialect is ANTHROPIC_MESSAGES``) is pass-through: its bytes go up unchanged
(the model id aside: prompt caching marks and thinking signatures intact), the answer comes back
unchanged, the usage is read on the way (``PassThroughRelay``). Any other dialect is translated in both
directions through the IR (``gateway.providers.bridge``); for an OpenAI chat client:

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
from typing import Any, Final, Literal

import msgspec

from gateway import errors, ir
from gateway._core.sse import SSEScanner, event_data, split_events
from gateway.dialects.anthropic_messages import ANTHROPIC_MESSAGES
from gateway.dialects.anthropic_messages import error_body as messages_error_body
from gateway.dialects.openai_chat import OPENAI_CHAT
from gateway.providers import anthropic_translate as xlate
from gateway.providers import bridge
from gateway.providers.base import Transport, UpstreamResponse
from gateway.providers.bridge import (
    BridgeRelay,
    CachedTokens,
    TranslatedUsage,
    gateway_error,
    openai_usage,
    response_events,
)
from gateway.providers.openai import OpenAITranslator
from gateway.providers.schemas import anthropic as wire
from gateway.wire import encode, top_level_decoder

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_FORWARD_HEADERS",
    "DEFAULT_VERSION",
    "AnthropicStreamRelay",
    "AnthropicTranslator",
    "CachedTokens",
    "PassThroughRelay",
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
        # PERF: the generation endpoints of every dialect go to /messages, their heads prebuilt
        messages = path_prefix + "/messages"
        self._paths = {"chat": messages, "messages": messages, "responses": messages,
                       "count_tokens": messages + "/count_tokens"}
        pool = self._pool
        self._heads = {} if pool is None else {
            ep: pool.build_head("POST", path, self._headers, -1) + b"x-request-id: "
            for ep, path in self._paths.items()
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

    # -- the translating side: pass-through for Messages clients, through the IR for the others ------

    def request_body(self, ctx: Any, upstream_model: str, rewrite: bool) -> bytes:
        """A Messages client's bytes as they are (the model id aside); any other dialect's request
        rebuilt as a Messages API request."""
        if ctx.dialect is ANTHROPIC_MESSAGES:
            if not rewrite:
                return ctx.body  # type: ignore[no-any-return]  # PERF: the client's bytes untouched
            top = top_level_decoder.decode(ctx.body)
            top["model"] = msgspec.Raw(encode(upstream_model))
            return encode(top)
        if ctx.endpoint != "chat" and ctx.dialect is None:
            raise errors.BadRequest(
                f"The model `{ctx.fields.model}` is served by Anthropic, which has no {ctx.endpoint} "
                "endpoint; only /v1/chat/completions is available for it",
                param="model", code="unsupported_endpoint",
            )
        return bridge.request_body(self, ctx, upstream_model)

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
        """A Messages client gets the ``message`` as it is (its usage read); any other dialect the
        answer translated. The usage goes to ``ctx.usage``."""
        if ctx.dialect is ANTHROPIC_MESSAGES:
            try:
                usage = _usage_decoder.decode(body).usage
            except _DECODE_ERRORS:
                raise errors.BadGateway(
                    "The upstream provider returned a response body that is not an Anthropic message",
                    code="upstream_invalid_response",
                ) from None
            ctx.usage = _usage_of(usage)
            return body
        return bridge.take_body(self, ctx, body)

    def body_as_stream(self, ctx: Any, resp: UpstreamResponse, body: bytes) -> bytes:
        """A stream request answered with one ``message``: the stream it would have been."""
        return bridge.body_as_stream(self, ctx, body)

    def stream_relay(self, ctx: Any) -> Any:
        if ctx.dialect is ANTHROPIC_MESSAGES:
            return PassThroughRelay(ctx)
        return BridgeRelay(ctx, xlate.AnthropicStream())

    def client_error(self, ctx: Any, status: int, body: bytes) -> tuple[int, bytes] | None:
        """A Messages client gets Anthropic's error as it is, except those about the gateway's own
        credentials or setup upstream (401, 402, 403, 404: a 502 ``api_error``); any other dialect the
        error translated (``error_answer``)."""
        if ctx.dialect is not ANTHROPIC_MESSAGES:
            return bridge.error_answer(self, ctx, status, body)
        if status in _OPERATOR_STATUSES:
            err = xlate.error_from_response(status, body)
            return 502, messages_error_body(502, f"upstream answered {status}: {err.message}", ctx.request_id)
        if not _is_anthropic_error(body):
            # not an error of Anthropic's API (a proxy's HTML page, plain text, another API's JSON): the
            # client's SDK could not read it, so it gets Anthropic's shape with what the body said
            text = body[:200].decode("utf-8", "replace")
            return status, messages_error_body(
                status, f"upstream answered {status} with a body that is not an error of its API: {text}",
                ctx.request_id)
        return status, body

    def error_answer(self, status: int, body: bytes) -> tuple[int, bytes] | None:
        """Anthropic's error (or a body of another shape, by its status) as the OpenAI error the client
        gets, with the status of ``anthropic_translate.ERROR_TYPES`` (529 overloaded: 503)."""
        err = xlate.error_from_response(status, body)
        return err.status, OPENAI_CHAT.provider_error_body(err, "")

    # -- this wire's IR codecs (gateway.providers.bridge) ----------------------------------------------

    def ir_request(self, req: ir.Request, upstream_model: str) -> bytes:
        return xlate.encode_request(req, upstream_model, sampling=self.sampling)

    def ir_response(self, body: bytes) -> ir.Response:
        return _answer(body)

    def ir_stream(self) -> xlate.AnthropicStream:
        return xlate.AnthropicStream()

    def ir_error(self, status: int, body: bytes) -> ir.ProviderError:
        return xlate.error_from_response(status, body)


#: upstream statuses about the gateway's own credentials or setup, not the client's request
_OPERATOR_STATUSES: Final = frozenset({401, 402, 403, 404})


class _ErrorShape(msgspec.Struct):
    """Anthropic's error as its SDK reads it: ``{"type": "error", "error": {"type": ..., ...}}``."""

    type: Literal["error"]
    error: wire.ErrorDetail


_error_shape: Final = msgspec.json.Decoder(_ErrorShape)


def _is_anthropic_error(body: bytes) -> bool:
    try:
        _error_shape.decode(body)
    except _DECODE_ERRORS:
        return False
    return True


class _UsageOnly(msgspec.Struct):
    """What a pass-through answer is read for: its usage, and that it is a ``message`` at all (a JSON object
    of another shape is not relayed as one)."""

    type: Literal["message"]
    usage: wire.Usage = wire.Usage()


_usage_decoder: Final = msgspec.json.Decoder(_UsageOnly)


def _usage_of(u: wire.Usage) -> TranslatedUsage:
    """``openai_usage(xlate.usage_from_wire(u))`` without the IR's usage in between (# PERF: every
    pass-through answer): each prompt token counted once, the cache reads apart."""
    read = u.cache_read_input_tokens or 0
    written = u.cache_creation_input_tokens or 0
    prompt = (u.input_tokens or 0) + read + written
    return TranslatedUsage(prompt, u.output_tokens, prompt + u.output_tokens, CachedTokens(read), written)


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


class AnthropicStreamRelay(BridgeRelay):
    """Anthropic SSE bytes in, the client dialect's SSE bytes out, as they come; the usage kept on the
    request.

    An ``error`` event (``overloaded_error`` mid-stream), a grammar violation or a stream cut before
    ``message_stop`` sets ``error``: the engine ends the client's stream with it.
    """

    __slots__ = ()

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx, xlate.AnthropicStream())


class _UsageEvent(msgspec.Struct):
    type: str = ""
    message: _UsageOnly | None = None
    usage: wire.MessageDeltaUsage | None = None
    error: wire.ErrorDetail | None = None


_usage_event_decoder: Final = msgspec.json.Decoder(_UsageEvent)


class PassThroughRelay:
    """A Messages client on an Anthropic upstream: complete events pass through as they are; the usage
    is read from the events that carry it (``message_start``: input and cache tokens; ``message_delta``:
    the cumulative output), the only ones decoded.

    An ``error`` event before anything was sent sets ``error`` and sends nothing (a routed model may go
    on to its next deployment); after that the events before it pass and ``error`` ends the stream (the
    engine writes the error event in Anthropic's shape). A stream that ends without ``message_stop``
    fails the same way.
    """

    __slots__ = ("_ctx", "_scanner", "_sent", "_stopped", "_usage", "error")

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._scanner = SSEScanner()
        self._usage = ir.Usage()
        self._sent = False
        self._stopped = False
        self.error: errors.GatewayError | None = None

    def feed(self, chunk: bytes) -> bytes:
        scanner = self._scanner
        try:
            data = scanner.feed(chunk)
        except ValueError:
            self.error = errors.BadGateway(
                f"The upstream sent a stream event larger than {scanner.max_event_bytes} bytes",
                code="upstream_event_too_large")
            return b""
        if not data:
            return b""
        # PERF: only the events that carry usage or an error are decoded
        # (find, not ``in``: see OpenAIStreamRelay.feed)
        if data.find(b'"usage"') >= 0 or data.find(b"error") >= 0 or data.find(b"message_stop") >= 0:
            data = self._inspect(data)
        if data:
            self._sent = True
        return data

    def end(self) -> bytes:
        if self.error is None and not self._stopped:
            self.error = errors.BadGateway("The upstream stream ended before the message was complete",
                                           code="upstream_stream_error")
        return b""

    def _inspect(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for ev in split_events(data):
            if ev.find(b'"usage"') < 0 and ev.find(b"error") < 0 and ev.find(b"message_stop") < 0:
                out.append(ev)  # PERF: a content event in the same piece as a usage one: not decoded
                continue
            payload = event_data(ev)
            if payload is None:
                out.append(ev)
                continue
            try:
                event = _usage_event_decoder.decode(payload)
            except _DECODE_ERRORS:
                out.append(ev)
                continue
            if event.type == "error":
                detail = event.error or wire.ErrorDetail("api_error", "the upstream stream failed")
                err = xlate.provider_error(detail.type, detail.message, 200)
                self.error = gateway_error(err)
                break
            if event.type == "message_start" and event.message is not None:
                self._usage = xlate.usage_from_wire(event.message.usage)
                self._ctx.usage = openai_usage(self._usage)
            elif event.type == "message_delta" and event.usage is not None:
                self._usage = xlate.cumulative_usage(self._usage, event.usage)
                self._ctx.usage = openai_usage(self._usage)
            elif event.type == "message_stop":
                self._stopped = True
            out.append(ev)
        return b"".join(out)
