"""Translator for OpenAI-compatible upstreams: OpenAI itself, vLLM, Ollama, Groq, Mistral, ... and the mock.

Client shape and upstream shape are the same, so translation is: pick the upstream path, set the
upstream model id and the credential, ask for usage on streams; responses pass through unchanged
(the usage chunk is dropped when the client did not ask for it), except one: an upstream that
answers a stream request with a whole JSON completion (some OpenAI-compatible servers ignore
``stream: true``, or ignore it for some models) has its answer turned into the stream the client asked
for (``completion_as_stream``).

``OpenAITranslator`` is the engine's translator interface (``gateway.providers.translator``) in its
pass-through form; translators of other wire formats subclass it for its transport plumbing and
override the translating methods.

A client of another dialect (``ctx.dialect`` is not None: Anthropic Messages, OpenAI Responses) is
served through the IR (``gateway.providers.bridge``) with this wire's codecs (``ir_request``,
``ir_response``, ``ir_stream``, ``ir_error``: ``gateway.providers.openai_translate``). On the
pass-through path that costs one pointer comparison per translating method.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Final
from urllib.parse import quote

import msgspec

from gateway import errors
from gateway._core.http import build_request, select_headers
from gateway._core.sse import SSEScanner, event_data, split_events
from gateway.providers import bridge
from gateway.providers import openai_translate as oai
from gateway.providers.base import Transport, UpstreamResponse
from gateway.providers.presets import BodyQuirks
from gateway.server.pool import HeadCallback, OriginPool
from gateway.wire import (
    ChatCompletion,
    TextCompletion,
    Usage,
    completion_decoders,
    encode,
    top_level_decoder,
    usage_decoder,
    usage_event_decoder,
)

__all__ = [
    "DEFAULT_FORWARD_HEADERS",
    "ENDPOINT_PATHS",
    "OpenAIStreamRelay",
    "OpenAITranslator",
    "completion_as_stream",
    "error_text",
    "has_error",
    "take_usage",
]

#: client headers an OpenAI-compatible upstream gets by default (``forward_headers``)
DEFAULT_FORWARD_HEADERS: Final = ("openai-beta", "openai-organization", "openai-project")

ENDPOINT_PATHS: Final = {
    "chat": "/chat/completions",
    #: a Messages client's request, translated to chat (gateway.providers.bridge)
    "messages": "/chat/completions",
    #: a Responses client's request, translated to chat (gateway.providers.bridge)
    "responses": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


class OpenAITranslator:
    """One per configured provider; holds the prebuilt header list and the transport.

    ``paths``: the upstream path of each endpoint (default: ``path_prefix`` + ``ENDPOINT_PATHS``).
    ``model_paths``: a template of paths naming the model (Azure's deployments: ``{model}`` and
    ``{endpoint}`` are filled in): then each model gets its own translator (``for_model``), with its
    request heads prebuilt, sharing this one's transport. ``quirks``: a preset's request-body changes
    (``gateway.providers.presets``), applied in ``request_body``; None: bodies pass through.
    """

    __slots__ = ("_forward", "_forward_first", "_headers", "_heads", "_models", "_paths", "_pool", "_prefix",
                 "_template", "model_in_path", "name", "quirks", "secrets", "transport")

    def __init__(
        self,
        name: str,
        transport: Transport,
        path_prefix: str,
        api_key: str | None,
        extra_headers: dict[str, str],
        *,
        paths: dict[str, str] | None = None,
        model_paths: str | None = None,
        quirks: BodyQuirks | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.name = name
        self.transport = transport
        self.quirks = quirks
        #: the credentials it was built with (``presets.credentials_of``): a reload compares them
        self.secrets: tuple[str, ...] = ()
        # PERF: paths and static headers are built once per provider
        self._prefix = path_prefix
        self._template = model_paths
        self._models: dict[str, OpenAITranslator] = {}
        #: the model id is in the path (Azure's deployments), so the body's ``model`` need not change
        self.model_in_path = False
        if model_paths is not None:
            paths = {}  # this one only answers probes: each model sends through its own (for_model)
        if paths is None:
            paths = {ep: path_prefix + p for ep, p in ENDPOINT_PATHS.items()}
        self._paths = paths
        if headers is None:
            headers = [("content-type", "application/json"), ("user-agent", "llm-gateway")]
            if api_key:
                headers.append(("authorization", f"Bearer {api_key}"))
            headers.extend((k.lower(), v) for k, v in extra_headers.items())
        self._headers = headers
        # PERF: with the HTTP pool, the request head is prebuilt per endpoint; per request only the
        # request id and the length are formatted in
        self._pool = transport if isinstance(transport, OriginPool) else None
        self._heads: dict[str, bytes] = {}
        if self._pool is not None:
            for ep, path in self._paths.items():
                self._heads[ep] = self._pool.build_head("POST", path, headers, -1) + b"x-request-id: "
        #: client headers passed upstream (lower-case names; see ``forward_headers``)
        self._forward: tuple[bytes, ...] = ()
        self._forward_first = _NO_FIRST_BYTES
        self.forward_headers(list(DEFAULT_FORWARD_HEADERS))

    def for_model(self, model: str) -> OpenAITranslator:
        """The translator that sends requests for upstream ``model``: this one, unless paths name the
        model; then one per model, built once (at config load, by the engine's runtime tables)."""
        template = self._template
        if template is None:
            return self
        child = self._models.get(model)
        if child is None:
            segment = quote(model, safe="")
            paths = {ep: template.format(model=segment, endpoint=p) for ep, p in ENDPOINT_PATHS.items()}
            child = OpenAITranslator(self.name, self.transport, self._prefix, None, {}, paths=paths,
                                     quirks=self.quirks, headers=self._headers)
            child.model_in_path = True
            child._forward = self._forward
            child._forward_first = self._forward_first
            child.secrets = self.secrets
            self._models[model] = child
        return child

    def forward_headers(self, names: list[str]) -> None:
        """Pass these client headers upstream (a client's value replaces a configured one)."""
        self._forward = tuple(n.lower().encode("latin-1") for n in names if n)
        first = bytearray(256)
        for name in self._forward:
            first[name[0]] = 1
        self._forward_first = bytes(first)

    def forwarded(self, request: Any) -> list[tuple[str, str]] | None:
        """The client headers of ``request`` to pass upstream, or None (the usual case).

        # PERF: most requests carry none of them, so one pass over the request's headers first looks
        at each name's first byte in a table of the forwarded names' first bytes (``_forward_first``;
        the usual headers, host, content-type, authorization, content-length, start with none of the
        default lists' letters): a request without a candidate costs a byte read per header, not a
        header lookup per forwarded name. A candidate sends it on to the lookups by name, which keep
        the order of the list and the first value of a repeated header."""
        first = self._forward_first
        for name, _ in request.headers:
            if name and first[name[0]]:
                break
        else:
            return None
        found: list[tuple[str, str]] | None = None
        for name in self._forward:
            # PERF: the request's compiled header lookup, called at C level; a list only when one is there
            value = request.header(name)
            if value is not None:
                if found is None:
                    found = []
                found.append((name.decode("latin-1"), value.decode("latin-1")))
        return found

    def merge_headers(self, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The configured headers with the client's ``extra`` ones: a client's value replaces the
        configured header of the same name."""
        names = {k for k, _ in extra}
        return [h for h in self._headers if h[0] not in names] + extra

    def _head(self, endpoint: str, extra: list[tuple[str, str]]) -> bytes:
        """A request head with forwarded client headers (built per request: the prebuilt one has none)."""
        pool = self._pool
        assert pool is not None
        path = self._paths[endpoint]
        return pool.build_head("POST", path, self.merge_headers(extra), -1) + b"x-request-id: "

    def send(
        self, endpoint: str, body: bytes, request_id: str, extra: list[tuple[str, str]] | None = None,
        stream: bool = False,
    ) -> Awaitable[UpstreamResponse]:
        """Send one request upstream; the awaitable gives the response once its head has arrived.
        ``extra``: client headers to pass (``forwarded``). ``stream``: the client asked for a stream
        (``ctx.stream``); an OpenAI-compatible upstream reads that from the body, so it is not used here,
        but a wire that streams on another path picks its path by it (Gemini, Bedrock)."""
        pool = self._pool
        if pool is not None:
            head = self._heads[endpoint] if extra is None else self._head(endpoint, extra)
            return pool.send_data(build_request(head, request_id, body))
        base = self._headers if extra is None else self.merge_headers(extra)
        headers = [*base, ("x-request-id", request_id)]
        return self.transport.request("POST", self._paths[endpoint], headers, body)

    def send_cb(
        self, endpoint: str, body: bytes, request_id: str, cb: HeadCallback,
        extra: list[tuple[str, str]] | None = None, stream: bool = False,
    ) -> bool:
        """``send`` with a callback (see ``OriginPool.send_cb``); False, having sent nothing, when the
        transport has no idle connection at hand or is not the HTTP pool."""
        pool = self._pool
        if pool is None:
            return False
        head = self._heads[endpoint] if extra is None else self._head(endpoint, extra)
        return pool.send_cb(build_request(head, request_id, body), cb)

    def send_within(
        self, endpoint: str, body: bytes, request_id: str, connect_timeout: float,
        extra: list[tuple[str, str]] | None = None, stream: bool = False,
    ) -> Awaitable[UpstreamResponse]:
        """``send`` whose new upstream connection, if it needs one, must be up within ``connect_timeout``
        seconds (a routed deployment's own) instead of the provider's; transports without connections
        (the in-process mock) ignore it."""
        pool = self._pool
        if pool is not None:
            head = self._heads[endpoint] if extra is None else self._head(endpoint, extra)
            return pool.send_within(build_request(head, request_id, body), connect_timeout)
        return self.send(endpoint, body, request_id, extra, stream)

    def probe(self, method: str, path: str, body: bytes) -> Awaitable[UpstreamResponse]:
        """A health-check request: ``path`` below the provider's base URL, with its credential."""
        headers = [h for h in self._headers if h[0] != "content-type" or body]
        return self.transport.request(method, self._prefix + path, headers, body)

    async def close(self) -> None:
        await self.transport.close()

    # -- the translating side (gateway.providers.translator.Translator) --------------------------------

    def request_body(self, ctx: Any, upstream_model: str, rewrite: bool) -> bytes:
        """The original bytes, unless the model id must change, usage must be requested or a preset's
        quirk applies."""
        if ctx.dialect is not None:  # another dialect: through the IR
            return self._quirked(bridge.request_body(self, ctx, upstream_model))
        quirks = self.quirks  # a preset's body changes (gateway.providers.presets), or None
        need_usage = (ctx.stream and not ctx.include_usage and ctx.endpoint != "embeddings"
                      and (quirks is None or quirks.ask_usage))
        if not rewrite and not need_usage:
            if quirks is None:
                return ctx.body  # type: ignore[no-any-return]  # PERF: forward the client's bytes untouched
            return quirks.body(ctx.body)  # PERF: decoded only when a quirk field occurs in it
        top = top_level_decoder.decode(ctx.body)
        if quirks is not None:
            quirks.apply(top)
        if rewrite:
            top["model"] = msgspec.Raw(encode(upstream_model))
        if need_usage:
            top["stream_options"] = msgspec.Raw(b'{"include_usage":true}')
        return encode(top)

    def pass_headers(
        self, resp: UpstreamResponse, ratelimit: bool, out: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """``out`` plus the upstream headers a client may act on: retry hints and (``ratelimit``) the
        upstream's ``x-ratelimit-*``."""
        return select_headers(resp.headers, _PASS_PREFIX if ratelimit else _NO_PREFIX, _PASS_HEADERS, out)

    def take_body(self, ctx: Any, body: bytes) -> bytes:
        """A 2xx body for the client (the same bytes); its usage goes to ``ctx.usage``. Raises BadGateway
        (nothing sent) when it is not JSON."""
        if ctx.dialect is not None:
            return bridge.take_body(self, ctx, body)
        try:
            env = usage_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            raise errors.BadGateway(
                "The upstream provider returned a response body that is not valid JSON",
                code="upstream_invalid_response",
            ) from None
        ctx.usage = env.usage
        return body

    def body_as_stream(self, ctx: Any, resp: UpstreamResponse, body: bytes) -> bytes:
        """A stream request that the upstream answered with a whole JSON completion (not an event
        stream): the stream the completion would have been (``completion_as_stream``); an error object in
        a 2xx answer becomes a 502. Raises (nothing sent) when the body is neither."""
        if ctx.dialect is not None:
            return bridge.body_as_stream(self, ctx, body)
        try:
            completion = completion_decoders[ctx.endpoint].decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            ctype = (resp.header(b"content-type") or b"").decode("latin-1")
            raise errors.BadGateway(
                f"The upstream provider answered a stream request with {ctype or 'no content-type'} that is "
                "neither an event stream nor a JSON completion",
                code="upstream_invalid_response",
            ) from None
        if has_error(completion):
            raise errors.BadGateway(
                "The upstream provider answered the stream request with an error: "
                + error_text(completion.error),
                code="upstream_error",
            )
        events, ctx.usage = completion_as_stream(completion, ctx.include_usage)
        return events

    def stream_relay(self, ctx: Any) -> Any:
        """The per-request relay of the upstream's event stream."""
        if ctx.dialect is not None:
            return bridge.BridgeRelay(ctx, self.ir_stream())
        return OpenAIStreamRelay(ctx)

    def client_error(self, ctx: Any, status: int, body: bytes) -> tuple[int, bytes] | None:
        """An upstream error answer in the client's dialect (``error_answer`` for OpenAI chat)."""
        if ctx.dialect is None:
            return self.error_answer(status, body)
        return bridge.error_answer(self, ctx, status, body)

    # -- this wire's IR codecs (gateway.providers.bridge) ----------------------------------------------

    def _quirked(self, body: bytes) -> bytes:
        quirks = self.quirks
        if quirks is None:
            return body
        top = top_level_decoder.decode(body)
        quirks.apply(top)
        return encode(top)

    def ir_request(self, req: Any, upstream_model: str) -> bytes:
        """An IR request as this wire's chat request."""
        return oai.encode_request(req, upstream_model)

    def ir_response(self, body: bytes) -> Any:
        """A ``chat.completion`` → IR. Raises BadGateway (nothing sent) when it is not one."""
        try:
            return oai.response_from_body(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            raise errors.BadGateway(
                "The upstream provider returned a response body that is not a chat completion",
                code="upstream_invalid_response",
            ) from None

    def ir_stream(self) -> Any:
        """A ``chat.completion.chunk`` stream → IR events."""
        return oai.ChunkStream()

    def ir_error(self, status: int, body: bytes) -> Any:
        """An error answer → IR; None when it is not OpenAI's error shape."""
        return oai.error_from_response(status, body)

    def credential_failure(self, status: int, body: bytes) -> bool:
        """Whether a refusal of the gateway's credential (401, 403: ``routing.credentials``) says the
        credential itself is wrong rather than lacking a permission: a 401. A provider that answers a
        bad key with 403 (AWS) overrides this."""
        return status == 401

    def error_answer(self, status: int, body: bytes) -> tuple[int, bytes] | None:
        """An upstream error answer as the client gets it: (status, OpenAI error body); None when the
        body is not an error of this provider's API (the engine answers 502, or 429 for a 429)."""
        try:
            msgspec.json.decode(body, type=_ErrorCheck)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        return status, body


class _ErrorCheck(msgspec.Struct):
    error: Any


# upstream headers a client may act on: rate limits and retry hints
_PASS_HEADERS = (b"retry-after", b"retry-after-ms", b"x-should-retry", b"openai-processing-ms")
_PASS_PREFIX = b"x-ratelimit-"
_NO_PREFIX = b"\x00"  # matches no header name
#: ``_forward_first`` of an empty list: no header name is a candidate
_NO_FIRST_BYTES: Final = bytes(256)


class OpenAIStreamRelay:
    """An OpenAI event stream, relayed as it comes: complete events pass through; the usage is learned
    from the chunk that carries it (dropped when the client did not ask for it).

    # PERF: compiled with its scanner typed: a chunk costs one call from the engine, the scanner's at C
    level."""

    __slots__ = ("_ctx", "_scanner", "_strip", "error")

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._scanner = SSEScanner()
        self._strip = not ctx.include_usage
        #: set when the stream cannot go on (the engine ends the client's stream with it)
        self.error: errors.GatewayError | None = None

    def feed(self, chunk: bytes) -> bytes:
        """The complete events now in, for the client."""
        scanner = self._scanner
        try:
            data = scanner.feed(chunk)
        except ValueError:  # an event past the scanner's limit: the stream cannot go on
            self.error = errors.BadGateway(
                f"The upstream sent a stream event larger than {scanner.max_event_bytes} bytes",
                code="upstream_event_too_large")
            return b""
        # PERF: find, not ``in``: bytes' ``in`` first tries its operand as an integer and formats the
        # TypeError it then drops (a third of a microsecond per test on CPython 3.11)
        if data and data.find(b'"usage"') >= 0:
            return take_usage(self._ctx, data, self._strip)
        return data

    def end(self) -> bytes:
        """The upstream body ended: what is left for the client (nothing; an event cut short fails)."""
        if self._scanner.pending:
            self.error = errors.BadGateway("The upstream stream ended inside an event",
                                           code="upstream_stream_error")
        return b""


def take_usage(ctx: Any, data: bytes, strip: bool) -> bytes:
    """Learn the usage from the events in ``data``; drop the usage-only chunk when ``strip``."""
    out: list[bytes] = []
    changed = False
    for ev in split_events(data):
        if ev.find(b'"usage"') < 0:  # PERF: only the usage event is decoded (find: see feed)
            out.append(ev)
            continue
        payload = event_data(ev)
        if payload is not None and payload.find(b'"usage"') >= 0:
            try:
                chunk = usage_event_decoder.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                out.append(ev)
                continue
            if chunk.usage is not None:
                ctx.usage = chunk.usage
                if strip and not chunk.choices:
                    changed = True
                    continue  # the client did not ask for the usage chunk
        out.append(ev)
    return b"".join(out) if changed else data


_NULL = msgspec.Raw(b"null")
_EMPTY = msgspec.Raw(b'""')
_CHAT_CHUNK = msgspec.Raw(b'"chat.completion.chunk"')
_TEXT_CHUNK = msgspec.Raw(b'"text_completion"')
_DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.Encoder().encode
_decode_tool_calls = msgspec.json.Decoder(list[dict[str, msgspec.Raw]]).decode
_decode_usage = msgspec.json.Decoder(Usage).decode


def has_error(completion: ChatCompletion | TextCompletion) -> bool:
    """The answer carries an ``error`` object (some servers answer 200 with one)."""
    return bool(completion.error) and bytes(completion.error) != b"null"


def completion_as_stream(
    completion: ChatCompletion | TextCompletion, include_usage: bool
) -> tuple[bytes, Usage | None]:
    """The event stream an upstream would have sent for ``completion``, had it streamed, and its usage.

    Per choice, one chunk with everything the message holds as its delta (tool calls numbered, as
    streamed tool calls are), then one with its ``finish_reason``; the usage chunk (``choices: []``) when
    the client asked for it (``include_usage``); ``data: [DONE]``. Values the gateway does not act on are
    copied as raw bytes, never re-serialised.
    """
    head: dict[str, Any] = {
        "id": completion.id or _EMPTY,
        "object": _TEXT_CHUNK if isinstance(completion, TextCompletion) else _CHAT_CHUNK,
        "created": completion.created or msgspec.Raw(b"0"),
        "model": completion.model or _EMPTY,
    }
    if completion.system_fingerprint:
        head["system_fingerprint"] = completion.system_fingerprint
    events: list[bytes] = []
    if isinstance(completion, TextCompletion):
        for text in completion.choices:
            events.append(_event(head, [{"text": text.text or _EMPTY, "index": text.index,
                                         "logprobs": text.logprobs or _NULL, "finish_reason": None}]))
            events.append(_event(head, [{"text": "", "index": text.index, "logprobs": None,
                                         "finish_reason": text.finish_reason or _NULL}]))
    else:
        if completion.service_tier:
            head["service_tier"] = completion.service_tier
        for choice in completion.choices:
            events.append(_event(head, [{"index": choice.index, "delta": _delta(choice.message),
                                         "logprobs": choice.logprobs or _NULL, "finish_reason": None}]))
            events.append(_event(head, [{"index": choice.index, "delta": {}, "logprobs": None,
                                         "finish_reason": choice.finish_reason or _NULL}]))
    usage = None
    if completion.usage and bytes(completion.usage) != b"null":
        try:
            usage = _decode_usage(completion.usage)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            usage = None
        if include_usage:
            events.append(_event(head, [], completion.usage))
    events.append(_DONE)
    return b"".join(events), usage


def _event(head: dict[str, Any], choices: list[dict[str, Any]], usage: msgspec.Raw | None = None) -> bytes:
    chunk = {**head, "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + _encode(chunk) + b"\n\n"


def _delta(message: dict[str, msgspec.Raw]) -> dict[str, Any]:
    """A chat message as a stream's delta: streamed tool calls carry their ``index``."""
    calls = message.get("tool_calls")
    if calls is None or not bytes(calls).lstrip().startswith(b"["):
        return message
    try:
        numbered: list[dict[str, Any]] = [{"index": msgspec.Raw(b"%d" % i), **call}
                                          for i, call in enumerate(_decode_tool_calls(calls))]
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return message
    return {**message, "tool_calls": numbered}


class _ErrorObject(msgspec.Struct):
    message: str | None = None
    code: str | int | None = None


_decode_error = msgspec.json.Decoder(_ErrorObject | str).decode


def error_text(error: msgspec.Raw | bytes, limit: int = 300) -> str:
    """What an upstream's ``error`` value says, for a message of ours (bounded)."""
    raw = bytes(error)
    try:
        value = _decode_error(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return raw[:limit].decode("utf-8", "replace")
    if isinstance(value, str):
        return value[:limit]
    text = value.message or raw[:limit].decode("utf-8", "replace")
    return text[:limit]
