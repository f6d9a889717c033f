"""Translator for OpenAI-compatible upstreams: OpenAI itself, vLLM, Ollama, Groq, Mistral, ... and the mock.

Client shape and upstream shape are the same, so translation is: pick the upstream path, set the
upstream model id and the credential, ask for usage on streams; responses pass through unchanged
(the engine strips the usage chunk when the client did not ask for it), except one: an upstream that
answers a stream request with a whole JSON completion (some OpenAI-compatible servers ignore
``stream: true``, or ignore it for some models) has its answer turned into the stream the client asked
for (``completion_as_stream``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Final
from urllib.parse import quote

import msgspec

from gateway._core.http import build_request
from gateway.providers.base import Transport, UpstreamResponse
from gateway.providers.presets import BodyQuirks
from gateway.server.pool import HeadCallback, OriginPool
from gateway.wire import ChatCompletion, TextCompletion, Usage

__all__ = ["ENDPOINT_PATHS", "OpenAITranslator", "completion_as_stream", "error_text", "has_error"]

ENDPOINT_PATHS: Final = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


class OpenAITranslator:
    """One per configured provider; holds the prebuilt header list and the transport.

    ``paths``: the upstream path of each endpoint (default: ``path_prefix`` + ``ENDPOINT_PATHS``).
    ``model_paths``: a template of paths naming the model (Azure's deployments: ``{model}`` and
    ``{endpoint}`` are filled in): then each model gets its own translator (``for_model``), with its
    request heads prebuilt, sharing this one's transport. ``quirks``: a preset's request-body changes
    (``gateway.providers.presets``), applied by the engine; None: bodies pass through.
    """

    __slots__ = ("_headers", "_heads", "_models", "_paths", "_pool", "_prefix", "_template", "model_in_path",
                 "name", "quirks", "secrets", "transport")

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
            self._models[model] = child
        return child

    def send(self, endpoint: str, body: bytes, request_id: str) -> Awaitable[UpstreamResponse]:
        """Send one request upstream; the awaitable gives the response once its head has arrived."""
        pool = self._pool
        if pool is not None:
            return pool.send_data(build_request(self._heads[endpoint], request_id, body))
        headers = [*self._headers, ("x-request-id", request_id)]
        return self.transport.request("POST", self._paths[endpoint], headers, body)

    def send_cb(self, endpoint: str, body: bytes, request_id: str, cb: HeadCallback) -> bool:
        """``send`` with a callback (see ``OriginPool.send_cb``); False, having sent nothing, when the
        transport has no idle connection at hand or is not the HTTP pool."""
        pool = self._pool
        if pool is None:
            return False
        return pool.send_cb(build_request(self._heads[endpoint], request_id, body), cb)

    def send_within(
        self, endpoint: str, body: bytes, request_id: str, connect_timeout: float
    ) -> Awaitable[UpstreamResponse]:
        """``send`` whose new upstream connection, if it needs one, must be up within ``connect_timeout``
        seconds (a routed deployment's own) instead of the provider's; transports without connections
        (the in-process mock) ignore it."""
        pool = self._pool
        if pool is not None:
            return pool.send_within(build_request(self._heads[endpoint], request_id, body), connect_timeout)
        return self.send(endpoint, body, request_id)

    def probe(self, method: str, path: str, body: bytes) -> Awaitable[UpstreamResponse]:
        """A health-check request: ``path`` below the provider's base URL, with its credential."""
        headers = [h for h in self._headers if h[0] != "content-type" or body]
        return self.transport.request(method, self._prefix + path, headers, body)

    async def close(self) -> None:
        await self.transport.close()


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
