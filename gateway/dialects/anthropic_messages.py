# cython: boundscheck=True, wraparound=True, cdivision=False
"""The Anthropic Messages dialect (``POST /v1/messages``): request JSON → IR, IR → ``message`` and its SSE.

Used when a Messages client (the ``anthropic`` SDK, Claude Code) is served by an upstream of another
wire (the mock, OpenAI-compatible providers). An Anthropic upstream is pass-through and never comes
here, except for errors and headers the gateway itself answers with. Pure: no I/O, no clock.

Request rules (Messages → IR):

- ``system`` (a string or text blocks, ``cache_control`` kept) becomes the leading system message.
- A user turn's ``tool_result`` blocks become ``tool`` messages (in order, before the rest of the turn),
  the IR's convention; ``tool_use`` blocks become tool calls with their ``input`` as JSON text.
- ``thinking`` blocks (text and signature) and ``redacted_thinking`` go to the IR unchanged;
  ``thinking: {"type": "enabled", "budget_tokens": N}`` asks for reasoning with that budget.
- ``tool_choice``: auto→auto, any→required, tool→named, none→none; ``disable_parallel_tool_use`` →
  ``parallel_tool_calls: false``. ``stop_sequences`` → stop, ``metadata.user_id`` → user.
- Server tools (``web_search_…``, ``code_execution_…``, …) run at Anthropic: a request naming one is
  refused (400) unless it goes to an Anthropic upstream, where it passes through untouched.
- Block types the IR does not know are kept opaque (only an Anthropic upstream could use them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Final, cast

import msgspec

from gateway import ir
from gateway.dialects.base import ClientDialect
from gateway.dialects.ids import MESSAGES_PREFIX, answer_id
from gateway.errors import BadRequest, GatewayError

__all__ = [
    "ANTHROPIC_MESSAGES",
    "ERROR_TYPES",
    "STOP_REASONS",
    "AnthropicMessages",
    "EventEncoder",
    "decode_request",
    "encode_response",
    "error_body",
    "error_type",
]

#: IR stop reason → Anthropic ``stop_reason``
STOP_REASONS: Final[dict[ir.StopReason, str]] = {
    ir.StopReason.END_TURN: "end_turn",
    ir.StopReason.MAX_TOKENS: "max_tokens",
    ir.StopReason.STOP_SEQUENCE: "stop_sequence",
    ir.StopReason.TOOL_USE: "tool_use",
    ir.StopReason.PAUSE_TURN: "pause_turn",
    ir.StopReason.REFUSAL: "refusal",
    ir.StopReason.CONTEXT_WINDOW: "model_context_window_exceeded",
}

#: HTTP status of an error the gateway answers → Anthropic error ``type`` (others: by range)
ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_KNOWN_TYPES: Final = frozenset(ERROR_TYPES.values())


def error_type(status: int, provider_type: str | None = None) -> str:
    """The Anthropic error ``type`` of an answer with ``status`` (the upstream's own type when it had one)."""
    if provider_type in _KNOWN_TYPES:
        return provider_type
    found = ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


# ---- request wire types (decoded permissively: one Struct for every block type) -------------------


class _Source(msgspec.Struct, frozen=True):
    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    file_id: str | None = None


class _Block(msgspec.Struct, frozen=True, omit_defaults=True):
    type: str
    text: str | None = None
    cache_control: dict[str, Any] | None = None
    citations: list[dict[str, Any]] | None = None
    source: _Source | None = None
    title: str | None = None
    context: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[_Block] | None = None
    is_error: bool | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None


class _MessageParam(msgspec.Struct, frozen=True):
    role: str
    content: str | list[_Block]


class _Tool(msgspec.Struct, frozen=True):
    name: str
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None
    strict: bool | None = None


class _ToolChoice(msgspec.Struct, frozen=True):
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _Thinking(msgspec.Struct, frozen=True):
    type: str
    budget_tokens: int | None = None


class _Metadata(msgspec.Struct, frozen=True):
    user_id: str | None = None


class _Format(msgspec.Struct, frozen=True):
    type: str
    schema: dict[str, Any] | None = None


class _OutputConfig(msgspec.Struct, frozen=True):
    format: _Format | None = None
    effort: str | None = None


class _Request(msgspec.Struct, frozen=True):
    model: str
    messages: list[_MessageParam]
    max_tokens: int | None = None
    system: str | list[_Block] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: _Metadata | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    thinking: _Thinking | None = None
    output_config: _OutputConfig | None = None
    output_format: _Format | None = None
    service_tier: str | None = None


class _CountRequest(msgspec.Struct, frozen=True):
    """``/v1/messages/count_tokens``: a Messages request without ``max_tokens``."""

    model: str
    messages: list[_MessageParam]
    system: str | list[_Block] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    thinking: _Thinking | None = None


_request_decoder: Final = msgspec.json.Decoder(_Request)
_count_decoder: Final = msgspec.json.Decoder(_CountRequest)
_encode: Final = msgspec.json.Encoder().encode


# ---- request → IR --------------------------------------------------------------------------------


def _image(b: _Block) -> ir.ImagePart:
    s = b.source
    if s is None:
        raise BadRequest("an image block needs a source", param="messages")
    if s.type == "base64" and s.data is not None:
        return ir.ImagePart(data=s.data, media_type=s.media_type, cache_control=b.cache_control)
    if s.type == "url" and s.url is not None:
        if not s.url.startswith(("https://", "http://")):
            raise BadRequest("an image URL must be http(s)", param="messages")
        return ir.ImagePart(url=s.url, cache_control=b.cache_control)
    raise BadRequest(f"an image source of type {s.type!r} needs an Anthropic upstream", param="messages")


def _document(b: _Block) -> ir.DocumentPart:
    s = b.source
    if s is None:
        raise BadRequest("a document block needs a source", param="messages")
    if s.type == "base64":
        return ir.DocumentPart(data=s.data, media_type=s.media_type, title=b.title,
                               cache_control=b.cache_control)
    if s.type == "text":
        return ir.DocumentPart(text=s.data, title=b.title, cache_control=b.cache_control)
    if s.type == "url":
        return ir.DocumentPart(url=s.url, title=b.title, cache_control=b.cache_control)
    if s.type == "file":
        return ir.DocumentPart(file_id=s.file_id, title=b.title, cache_control=b.cache_control)
    raise BadRequest(f"a document source of type {s.type!r} is not supported", param="messages")


def _raw(b: _Block) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.json.decode(_encode(b))
    return out


def _part(b: _Block) -> ir.Part:
    t = b.type
    if t == "text":
        return ir.TextPart(b.text or "", b.citations, b.cache_control)
    if t == "image":
        return _image(b)
    if t == "document":
        return _document(b)
    if t == "tool_use":
        if not b.id or not b.name:
            raise BadRequest("a tool_use block needs its id and name", param="messages")
        return ir.ToolCallPart(b.id, b.name, _encode(b.input if b.input is not None else {}).decode())
    if t == "tool_result":
        return _tool_result(b)
    if t == "thinking":
        return ir.ThinkingPart(b.thinking or "", b.signature)
    if t == "redacted_thinking":
        if b.data is None:
            raise BadRequest("a redacted_thinking block needs its data", param="messages")
        return ir.RedactedThinkingPart(b.data)
    return ir.OpaquePart("anthropic", _raw(b))


def _tool_result(b: _Block) -> ir.ToolResultPart:
    if not b.tool_use_id:
        raise BadRequest("a tool_result block needs tool_use_id", param="messages")
    content: list[ir.TextPart | ir.ImagePart | ir.DocumentPart] = []
    if isinstance(b.content, str):
        if b.content:
            content.append(ir.TextPart(b.content))
    else:
        for inner in b.content or ():
            p = _part(inner)
            if isinstance(p, ir.TextPart | ir.ImagePart | ir.DocumentPart):
                content.append(p)
    return ir.ToolResultPart(b.tool_use_id, content, bool(b.is_error), b.cache_control)


def _system(system: str | list[_Block] | None) -> list[ir.Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [ir.Message("system", [ir.TextPart(system)])] if system else []
    parts: list[ir.Part] = [ir.TextPart(b.text or "", cache_control=b.cache_control) for b in system
                            if b.type == "text"]
    return [ir.Message("system", parts)] if parts else []


def _messages(params: list[_MessageParam]) -> list[ir.Message]:
    out: list[ir.Message] = []
    for m in params:
        if m.role not in ("user", "assistant"):
            raise BadRequest(f"messages: unexpected role {m.role!r}; use user or assistant", param="messages")
        if isinstance(m.content, str):
            out.append(ir.Message(m.role, [ir.TextPart(m.content)]))  # type: ignore[arg-type]
            continue
        parts = [_part(b) for b in m.content]
        if m.role == "user":
            out.extend(ir.Message("tool", [p]) for p in parts if isinstance(p, ir.ToolResultPart))
            parts = [p for p in parts if not isinstance(p, ir.ToolResultPart)]
            if parts:
                out.append(ir.Message("user", parts))
        else:
            out.append(ir.Message("assistant", parts))
    return out


def _tools(tools: list[_Tool] | None) -> list[ir.Tool]:
    out: list[ir.Tool] = []
    for t in tools or ():
        if t.type not in (None, "custom"):
            raise BadRequest(
                f"The server tool {t.type!r} runs at Anthropic: this model's upstream cannot run it",
                param="tools",
            )
        out.append(ir.Tool(t.name, t.description, t.input_schema, t.strict, t.cache_control))
    return out


def _tool_choice(tc: _ToolChoice | None) -> tuple[ir.ToolChoice | None, bool | None]:
    if tc is None:
        return None, None
    parallel = False if tc.disable_parallel_tool_use else None
    modes = {"auto": "auto", "any": "required", "none": "none", "tool": "named"}
    mode = modes.get(tc.type)
    if mode is None:
        raise BadRequest(f"tool_choice: unknown type {tc.type!r}", param="tool_choice")
    if mode == "named" and not tc.name:
        raise BadRequest("tool_choice of type tool needs a name", param="tool_choice")
    return ir.ToolChoice(mode, tc.name if mode == "named" else None), parallel  # type: ignore[arg-type]


def _reasoning(r: _Request) -> ir.Reasoning | None:
    t = r.thinking
    effort = r.output_config.effort if r.output_config is not None else None
    if t is not None and t.type == "enabled":
        return ir.Reasoning(effort=effort, budget_tokens=t.budget_tokens)
    if effort is not None:
        return ir.Reasoning(effort=effort)
    return None


def _format(r: _Request) -> ir.ResponseFormat | None:
    fmt = r.output_format or (r.output_config.format if r.output_config is not None else None)
    if fmt is None:
        return None
    if fmt.type != "json_schema" or fmt.schema is None:
        raise BadRequest("output format: only json_schema with a schema is supported", param="output_config")
    return ir.ResponseFormat("json_schema", schema=fmt.schema)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        raise BadRequest(f"invalid request: {e}", param="body") from None
    except msgspec.DecodeError:
        raise BadRequest("the request body is not valid JSON", param="body") from None


def decode_request(body: bytes) -> ir.Request:
    """A Messages request body → IR. Raises BadRequest with the offending field."""
    r: _Request = _decode(_request_decoder, body)
    if not r.messages:
        raise BadRequest("messages: at least one message is required", param="messages")
    if r.max_tokens is None:
        raise BadRequest("max_tokens: Field required", param="max_tokens")
    choice, parallel = _tool_choice(r.tool_choice)
    messages = _messages(r.messages)
    if r.system is not None:
        messages = _system(r.system) + messages
    return ir.Request(
        model=r.model,
        messages=messages,
        stream=bool(r.stream),
        include_usage=bool(r.stream),
        max_tokens=r.max_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        stop=list(r.stop_sequences or ()),
        tools=_tools(r.tools) if r.tools else [],
        tool_choice=choice,
        parallel_tool_calls=parallel,
        response_format=None if r.output_format is None and r.output_config is None else _format(r),
        reasoning=None if r.thinking is None and r.output_config is None else _reasoning(r),
        user=r.metadata.user_id if r.metadata is not None else None,
        service_tier=r.service_tier,
    )


def decode_count_request(body: bytes) -> ir.Request:
    """A ``count_tokens`` body → IR (what is counted: system, tools and messages)."""
    r: _CountRequest = _decode(_count_decoder, body)
    if not r.messages:  # as Anthropic's own count answers (a pass-through request gets its 400)
        raise BadRequest("messages: at least one message is required", param="messages")
    messages = _system(r.system) + _messages(r.messages)
    return ir.Request(model=r.model, messages=messages, tools=_tools(r.tools))


# ---- IR → answer ---------------------------------------------------------------------------------


def _usage(u: ir.Usage) -> dict[str, Any]:
    """IR → Anthropic usage: ``input_tokens`` EXCLUDES the cache reads and writes beside it."""
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
    }


def _args(arguments: str) -> Any:
    try:
        return msgspec.json.decode(arguments) if arguments.strip() else {}
    except msgspec.DecodeError:
        return {}


def _block(p: ir.Part) -> dict[str, Any] | None:
    if isinstance(p, ir.TextPart):
        out: dict[str, Any] = {"type": "text", "text": p.text}
        if p.citations:
            out["citations"] = p.citations
        return out
    if isinstance(p, ir.ToolCallPart):
        return {"type": "tool_use", "id": p.id, "name": p.name, "input": _args(p.arguments)}
    if isinstance(p, ir.ThinkingPart):
        return {"type": "thinking", "thinking": p.text, "signature": p.signature or ""}
    if isinstance(p, ir.RedactedThinkingPart):
        return {"type": "redacted_thinking", "data": p.data}
    if isinstance(p, ir.OpaquePart) and p.provider == "anthropic":
        return p.raw
    return None


def _stop_reason(reason: ir.StopReason | None) -> str:
    return STOP_REASONS[reason] if reason is not None else "end_turn"


def encode_response(resp: ir.Response) -> bytes:
    """An IR answer as the Messages API ``message`` body (its id re-prefixed ``msg_``: ``dialects.ids``)."""
    return _encode({
        "id": answer_id(resp.id, MESSAGES_PREFIX),
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": [b for b in map(_block, resp.content) if b is not None],
        "stop_reason": _stop_reason(resp.stop_reason),
        "stop_sequence": resp.stop_sequence,
        "usage": _usage(resp.usage),
    })


def error_body(status: int, message: str, request_id: str, provider_type: str | None = None) -> bytes:
    """Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    return _encode({
        "type": "error",
        "error": {"type": error_type(status, provider_type), "message": message},
        "request_id": request_id,
    })


# ---- IR stream events → Messages SSE -------------------------------------------------------------
#
# Theory of operation. A Messages stream (what the ``anthropic`` SDK's accumulator expects):
#
#   message_start  {"message": {id, model, content: [], usage: {input_tokens...}}}
#   ping
#   { content_block_start(index, block) content_block_delta(index, delta)* content_block_stop(index) }*
#   message_delta  {"delta": {stop_reason, stop_sequence}, "usage": CUMULATIVE figures}
#   message_stop
#
# with ``error`` ending the stream at any point. The SDK appends each started block to the message's
# content and finds a delta's block by ``index``, so indexes must count the blocks in the order they
# start (0, 1, 2...): the encoder renumbers the IR's indexes (which count every part of the answer)
# that way. Blocks still open at ``MessageStop`` are stopped first.
#
#   IR event       emits                                         state
#   MessageStart   message_start, ping                           id, model; usage kept
#   BlockStart     content_block_start (text, tool_use with      IR index → next Anthropic index;
#                  empty input, thinking, redacted_thinking)     open
#   BlockDelta     text_delta / input_json_delta /               -
#                  thinking_delta / signature_delta
#   BlockStop      content_block_stop                            closed
#   UsageUpdate    -                                             latest usage kept
#   MessageStop    stops of open blocks, message_delta (stop     done
#                  reason, cumulative usage), message_stop
#   StreamError    error                                         done

_DELTAS: Final = {
    "text": ("text_delta", "text"),
    "arguments": ("input_json_delta", "partial_json"),
    "thinking": ("thinking_delta", "thinking"),
    "signature": ("signature_delta", "signature"),
}


#: the value a delta's template is cut around (EventEncoder._delta_template)
_MARK: Final = "\x00gateway-delta\x00"
_MARK_JSON: Final = msgspec.json.encode(_MARK)


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    payload = {"type": kind, **payload}
    return b"event: " + kind.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


class EventEncoder:
    """IR stream events → Messages SSE bytes; ``encode(event)`` returns b"" when nothing is due."""

    __slots__ = ("_deltas", "_done", "_index", "_open", "_usage", "request_id")

    def __init__(self, request_id: str = "") -> None:
        self.request_id = request_id
        #: (Anthropic index, IR delta kind) → the delta event's bytes around its value's JSON string
        self._deltas: dict[tuple[int, str], tuple[bytes, bytes]] = {}
        #: IR block index → Anthropic index
        self._index: dict[int, int] = {}
        self._open: set[int] = set()
        self._usage = ir.Usage()
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def encode(self, event: ir.StreamEvent) -> bytes:
        if self._done:
            return b""
        if type(event) is ir.BlockDelta:  # PERF: one type check for the most common event
            k = self._index.get(event.index)
            if k is None or k not in self._open:
                return b""
            # PERF: the most common event: the block's template around the value's JSON string (byte
            # for byte what _sse writes), not a dict built and encoded per delta
            template = self._deltas.get((k, event.kind))
            if template is None:
                template = self._delta_template(k, event.kind)
            return template[0] + _encode(event.value) + template[1]
        if isinstance(event, ir.BlockStart):
            return self._start(event)
        if isinstance(event, ir.BlockStop):
            k = self._index.get(event.index)
            if k is None or k not in self._open:
                return b""
            self._open.discard(k)
            return _sse("content_block_stop", {"index": k})
        if isinstance(event, ir.UsageUpdate):
            self._usage = event.usage
            return b""
        if isinstance(event, ir.MessageStart):
            self._usage = event.usage
            message: dict[str, Any] = {
                "id": answer_id(event.id, MESSAGES_PREFIX), "type": "message", "role": "assistant",
                "model": event.model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": _usage(event.usage),
            }
            return _sse("message_start", {"message": message}) + _sse("ping", {})
        if isinstance(event, ir.MessageStop):
            return self._finish(event)
        self._done = True
        err = cast(ir.StreamError, event).error  # the one type left
        return _sse("error", {"error": {"type": error_type(err.status, err.provider_type),
                                        "message": err.message}})

    def _delta_template(self, k: int, ir_kind: str) -> tuple[bytes, bytes]:
        kind, field = _DELTAS[ir_kind]
        whole = _sse("content_block_delta", {"index": k, "delta": {"type": kind, field: _MARK}})
        head, _, tail = whole.partition(_MARK_JSON)
        template = self._deltas[(k, ir_kind)] = (head, tail)
        return template

    def _start(self, ev: ir.BlockStart) -> bytes:
        k = self._index[ev.index] = len(self._index)
        self._open.add(k)
        block: dict[str, Any]
        if ev.kind == "text":
            block = {"type": "text", "text": ""}
        elif ev.kind == "tool_call":
            block = {"type": "tool_use", "id": ev.id or "", "name": ev.name or "", "input": {}}
        elif ev.kind == "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            block = {"type": "redacted_thinking", "data": ev.data or ""}
        return _sse("content_block_start", {"index": k, "content_block": block})

    def _finish(self, ev: ir.MessageStop) -> bytes:
        self._done = True
        out = [_sse("content_block_stop", {"index": k}) for k in sorted(self._open)]
        self._open.clear()
        u = self._usage
        out.append(_sse("message_delta", {
            "delta": {"stop_reason": _stop_reason(ev.stop_reason), "stop_sequence": ev.stop_sequence},
            "usage": _usage(u),
        }))
        out.append(_sse("message_stop", {}))
        return b"".join(out)


# ---- headers -------------------------------------------------------------------------------------

#: the gateway's (OpenAI-named) rate-limit headers → Anthropic's
_RATELIMIT: Final = {
    "x-ratelimit-limit-requests": "anthropic-ratelimit-requests-limit",
    "x-ratelimit-remaining-requests": "anthropic-ratelimit-requests-remaining",
    "x-ratelimit-reset-requests": "anthropic-ratelimit-requests-reset",
    "x-ratelimit-limit-tokens": "anthropic-ratelimit-tokens-limit",
    "x-ratelimit-remaining-tokens": "anthropic-ratelimit-tokens-remaining",
    "x-ratelimit-reset-tokens": "anthropic-ratelimit-tokens-reset",
}
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(duration: str) -> float | None:
    """OpenAI's duration (``20ms``, ``1.5s``, ``1m30s``, ``2h0m5s``) in seconds; None if unreadable."""
    total, number = 0.0, ""
    i = 0
    while i < len(duration):
        c = duration[i]
        if c.isdigit() or c == ".":
            number += c
            i += 1
            continue
        unit = "ms" if duration.startswith("ms", i) else c
        if unit not in _UNITS or not number:
            return None
        try:
            total += float(number) * _UNITS[unit]
        except ValueError:
            return None
        number = ""
        i += len(unit)
    return total if not number else None


def _instant(duration: str, now: float) -> str:
    """A reset duration as Anthropic's RFC 3339 instant (the value as it is when unreadable)."""
    seconds = _seconds(duration)
    if seconds is None:
        return duration
    at = datetime.fromtimestamp(now + seconds, UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- the dialect object --------------------------------------------------------------------------


class AnthropicMessages(ClientDialect):
    """The Anthropic Messages API as a ``ClientDialect``."""

    name: ClassVar[str] = "anthropic_messages"
    endpoint: ClassVar[str] = "messages"
    serves: ClassVar[str] = "chat"
    request_id_header: ClassVar[str] = "request-id"

    def decode_request(self, body: bytes) -> ir.Request:
        return decode_request(body)

    def encode_response(self, resp: ir.Response, created: int) -> bytes:
        return encode_response(resp)

    def stream_encoder(self, ctx: Any, created: int) -> EventEncoder:
        return EventEncoder(ctx.request_id)

    def error_body(self, err: GatewayError, request_id: str) -> bytes:
        return error_body(err.status, err.message, request_id, getattr(err, "provider_type", None))

    def stream_error(self, err: GatewayError, request_id: str) -> bytes:
        kind = error_type(err.status, getattr(err, "provider_type", None))
        return _sse("error", {"error": {"type": kind, "message": err.message}, "request_id": request_id})

    def provider_error_body(self, err: ir.ProviderError, request_id: str) -> bytes:
        return error_body(err.status, err.message, request_id, err.provider_type)

    def response_headers(self, headers: list[tuple[str, str]], now: float) -> list[tuple[str, str]]:
        """``x-request-id`` is repeated as ``request-id``; the rate-limit headers get Anthropic's names
        (resets as RFC 3339 instants)."""
        ids: list[tuple[str, str]] = []
        for i, (name, value) in enumerate(headers):
            if name == "x-request-id":
                ids.append(("request-id", value))
            elif name in _RATELIMIT:
                mapped = _RATELIMIT[name]
                headers[i] = (mapped, _instant(value, now) if mapped.endswith("-reset") else value)
        if ids:
            headers.extend(ids)
        return headers


ANTHROPIC_MESSAGES: Final = AnthropicMessages()
