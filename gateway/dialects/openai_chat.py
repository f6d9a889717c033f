# cython: boundscheck=True, wraparound=True, cdivision=False
"""The OpenAI Chat Completions dialect: request JSON → IR, IR → ``chat.completion`` and chunk SSE bytes.

Used when the client speaks OpenAI chat and the upstream does not (same dialect in and out stays
pass-through and never comes here). Pure: no I/O, no clock (``created`` is passed in).

Reasoning travels in two extension fields on the assistant message (the convention of LiteLLM and
OpenRouter, which OpenAI SDK models accept as extra fields): ``reasoning_content`` (the thinking text)
and ``thinking_blocks`` (``{"type": "thinking", "thinking", "signature"}`` and
``{"type": "redacted_thinking", "data"}``). A client that sends ``thinking_blocks`` back on its
assistant messages gets the provider's signed reasoning returned unchanged on the next turn.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from gateway import ir
from gateway.dialects.base import ClientDialect
from gateway.dialects.ids import CHAT_PREFIX, answer_id
from gateway.errors import BadRequest, GatewayError, error_body

__all__ = [
    "FINISH_REASONS",
    "OPENAI_CHAT",
    "ChunkEncoder",
    "OpenAIChat",
    "decode_request",
    "encode_error",
    "encode_response",
    "finish_reason",
]

#: IR stop reason → OpenAI ``finish_reason``. ``pause_turn`` (the provider paused a long turn that a
#: resend continues) has no OpenAI word: ``length``, the one that says "incomplete", is the nearest.
FINISH_REASONS: Final[dict[ir.StopReason, str]] = {
    ir.StopReason.END_TURN: "stop",
    ir.StopReason.STOP_SEQUENCE: "stop",
    ir.StopReason.MAX_TOKENS: "length",
    ir.StopReason.TOOL_USE: "tool_calls",
    ir.StopReason.PAUSE_TURN: "length",
    ir.StopReason.REFUSAL: "content_filter",
    ir.StopReason.CONTEXT_WINDOW: "length",
}


def finish_reason(reason: ir.StopReason | None) -> str:
    return FINISH_REASONS[reason] if reason is not None else "stop"


# ---- request wire types --------------------------------------------------------------------------


class _ImageURL(msgspec.Struct, frozen=True):
    url: str
    detail: str | None = None


class _TextContent(msgspec.Struct, frozen=True, tag="text"):
    text: str
    #: Anthropic's prompt-caching mark, as LiteLLM and OpenRouter accept it on OpenAI content parts
    cache_control: dict[str, Any] | None = None


class _ImageContent(msgspec.Struct, frozen=True, tag="image_url"):
    image_url: _ImageURL


class _File(msgspec.Struct, frozen=True):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class _FileContent(msgspec.Struct, frozen=True, tag="file"):
    file: _File


class _RefusalContent(msgspec.Struct, frozen=True, tag="refusal"):
    refusal: str


class _AudioContent(msgspec.Struct, frozen=True, tag="input_audio"):
    input_audio: dict[str, Any]


_ContentPart = _TextContent | _ImageContent | _FileContent | _RefusalContent | _AudioContent


class _Function(msgspec.Struct, frozen=True):
    name: str
    arguments: str = ""


class _ToolCall(msgspec.Struct, frozen=True):
    id: str
    function: _Function
    type: str = "function"


class _Message(msgspec.Struct, frozen=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_ContentPart] | None = None
    name: str | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    #: extensions: the provider's reasoning sent back (see the module docstring)
    thinking_blocks: list[dict[str, Any]] | None = None


class _FunctionDef(msgspec.Struct, frozen=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _Tool(msgspec.Struct, frozen=True):
    function: _FunctionDef
    type: Literal["function"] = "function"


class _NamedFunction(msgspec.Struct, frozen=True):
    name: str


class _NamedToolChoice(msgspec.Struct, frozen=True):
    function: _NamedFunction
    type: Literal["function"] = "function"


class _JSONSchema(msgspec.Struct, frozen=True):
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class _ResponseFormat(msgspec.Struct, frozen=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JSONSchema | None = None


class _StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool | None = None


class _Thinking(msgspec.Struct, frozen=True):
    type: str
    budget_tokens: int | None = None


class _Request(msgspec.Struct, frozen=True):
    model: str
    messages: list[_Message]
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    #: extension (vLLM, LiteLLM): top-k sampling
    top_k: int | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    tools: list[_Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | _NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: _ResponseFormat | None = None
    reasoning_effort: str | None = None
    #: extension (LiteLLM): an explicit thinking budget
    thinking: _Thinking | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None


# PERF: built once
_request_decoder: Final = msgspec.json.Decoder(_Request)
_encode: Final = msgspec.json.Encoder().encode


# ---- request → IR --------------------------------------------------------------------------------


def _image(url: _ImageURL) -> ir.ImagePart:
    """An image URL: ``data:`` URLs become base64 parts; only http(s) URLs are passed on (never fetched)."""
    u = url.url
    if u.startswith("data:"):
        head, sep, data = u[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise BadRequest("an image data URL must be data:<media type>;base64,<data>", param="messages")
        return ir.ImagePart(data=data, media_type=media_type, detail=url.detail)
    if not u.startswith(("https://", "http://")):
        raise BadRequest("an image URL must be http(s) or a base64 data URL", param="messages")
    return ir.ImagePart(url=u, detail=url.detail)


def _file(f: _File) -> ir.DocumentPart:
    if f.file_data is not None:
        data = f.file_data
        media_type = None
        if data.startswith("data:"):
            head, _, data = data[5:].partition(",")
            media_type = head.partition(";")[0] or None
        return ir.DocumentPart(data=data, media_type=media_type or "application/pdf", filename=f.filename)
    if f.file_id is not None:
        return ir.DocumentPart(file_id=f.file_id, filename=f.filename)
    raise BadRequest("a file content part needs file_data or file_id", param="messages")


def _parts(content: str | list[_ContentPart] | None) -> list[ir.Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [ir.TextPart(content)] if content else []
    parts: list[ir.Part] = []
    for c in content:
        if isinstance(c, _TextContent):
            parts.append(ir.TextPart(c.text, cache_control=c.cache_control))
        elif isinstance(c, _ImageContent):
            parts.append(_image(c.image_url))
        elif isinstance(c, _FileContent):
            parts.append(_file(c.file))
        elif isinstance(c, _RefusalContent):
            parts.append(ir.TextPart(c.refusal))
        else:
            raise BadRequest("audio input is not supported by this model", param="messages")
    return parts


def _thinking_parts(blocks: list[dict[str, Any]] | None) -> list[ir.Part]:
    parts: list[ir.Part] = []
    for b in blocks or ():
        kind = b.get("type")
        if kind == "thinking" and isinstance(b.get("signature"), str):
            parts.append(ir.ThinkingPart(str(b.get("thinking") or ""), b["signature"]))
        elif kind == "redacted_thinking" and isinstance(b.get("data"), str):
            parts.append(ir.RedactedThinkingPart(b["data"]))
        else:
            raise BadRequest("thinking_blocks holds an unknown or unsigned block", param="messages")
    return parts


def _message(m: _Message) -> ir.Message:
    content = m.content
    if type(content) is str and not m.tool_calls and m.role != "tool" and not m.thinking_blocks:
        # PERF: the common message, plain text content and nothing else: what the general path
        # below builds, without its walk
        return ir.Message(m.role, [ir.TextPart(content)] if content else [], m.name)
    return _any_message(m)


def _any_message(m: _Message) -> ir.Message:
    """``_message`` of any shape (the general path)."""
    if m.role == "tool":
        if not m.tool_call_id:
            raise BadRequest("a tool message needs tool_call_id", param="messages")
        result = [p for p in _parts(m.content) if isinstance(p, ir.TextPart | ir.ImagePart | ir.DocumentPart)]
        return ir.Message("tool", [ir.ToolResultPart(m.tool_call_id, result)])
    parts = _thinking_parts(m.thinking_blocks) if m.role == "assistant" else []
    parts += _parts(m.content)
    for tc in m.tool_calls or ():
        parts.append(ir.ToolCallPart(tc.id, tc.function.name, tc.function.arguments or "{}"))
    return ir.Message(m.role, parts, m.name)


def _tool_choice(tc: str | _NamedToolChoice | None) -> ir.ToolChoice | None:
    if tc is None:
        return None
    if isinstance(tc, _NamedToolChoice):
        return ir.ToolChoice("named", tc.function.name)
    return ir.ToolChoice(tc)  # type: ignore[arg-type]


def _response_format(rf: _ResponseFormat | None) -> ir.ResponseFormat | None:
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return ir.ResponseFormat("json_object")
    js = rf.json_schema
    if js is None or js.schema is None:
        raise BadRequest("response_format json_schema needs json_schema.schema", param="response_format")
    return ir.ResponseFormat("json_schema", js.name, js.schema, js.strict, js.description)


def _reasoning(r: _Request) -> ir.Reasoning | None:
    if r.thinking is not None and r.thinking.type == "enabled":
        return ir.Reasoning(effort=r.reasoning_effort, budget_tokens=r.thinking.budget_tokens)
    if r.reasoning_effort is not None:
        return ir.Reasoning(effort=r.reasoning_effort)
    return None


def decode_request(body: bytes) -> ir.Request:
    """An OpenAI chat completions request body → IR. Raises BadRequest with the offending path."""
    try:
        r = _request_decoder.decode(body)
    except msgspec.ValidationError as e:
        raise BadRequest(f"invalid request: {e}", param="body") from None
    except msgspec.DecodeError:
        raise BadRequest("the request body is not valid JSON", param="body") from None
    if not r.messages:
        raise BadRequest("messages must not be empty", param="messages")
    stop = [r.stop] if isinstance(r.stop, str) else list(r.stop or ())
    tools = r.tools
    return ir.Request(
        model=r.model,
        messages=[_message(m) for m in r.messages],
        stream=bool(r.stream),
        include_usage=bool(r.stream and r.stream_options and r.stream_options.include_usage),
        max_tokens=r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        seed=r.seed,
        frequency_penalty=r.frequency_penalty,
        presence_penalty=r.presence_penalty,
        n=r.n,
        stop=stop,
        tools=[
            ir.Tool(t.function.name, t.function.description, t.function.parameters, t.function.strict)
            for t in tools
        ] if tools else [],
        tool_choice=None if r.tool_choice is None else _tool_choice(r.tool_choice),
        parallel_tool_calls=r.parallel_tool_calls,
        response_format=None if r.response_format is None else _response_format(r.response_format),
        reasoning=_reasoning(r),
        user=r.user,
        metadata=r.metadata,
        service_tier=r.service_tier,
    )


# ---- IR → response -------------------------------------------------------------------------------


class _PromptDetails(msgspec.Struct, frozen=True):
    cached_tokens: int


class _CompletionDetails(msgspec.Struct, frozen=True):
    reasoning_tokens: int


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: _PromptDetails
    completion_tokens_details: _CompletionDetails


def _usage(u: ir.Usage) -> _Usage:
    """IR → OpenAI usage: ``prompt_tokens`` INCLUDES cache reads and writes; ``cached_tokens`` = reads."""
    # PERF: positional, the prompt summed once (``u.prompt_tokens`` and ``u.total_tokens`` both sum it)
    prompt = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens
    return _Usage(prompt, u.output_tokens, prompt + u.output_tokens, _PromptDetails(u.cache_read_tokens),
                  _CompletionDetails(u.reasoning_tokens))


class _FunctionOut(msgspec.Struct, frozen=True):
    name: str
    arguments: str


class _ToolCallOut(msgspec.Struct, frozen=True):
    id: str
    function: _FunctionOut
    type: str = "function"


class _MessageOut(msgspec.Struct, frozen=True):
    content: str | None
    refusal: None = None
    role: str = "assistant"
    tool_calls: list[_ToolCallOut] | msgspec.UnsetType = msgspec.UNSET
    reasoning_content: str | msgspec.UnsetType = msgspec.UNSET
    thinking_blocks: list[dict[str, str]] | msgspec.UnsetType = msgspec.UNSET


class _Choice(msgspec.Struct, frozen=True):
    message: _MessageOut
    finish_reason: str
    index: int = 0
    logprobs: None = None


class _Completion(msgspec.Struct, frozen=True):
    id: str
    created: int
    model: str
    choices: list[_Choice]
    usage: _Usage
    object: str = "chat.completion"


def _thinking_block(p: ir.ThinkingPart | ir.RedactedThinkingPart) -> dict[str, str]:
    if isinstance(p, ir.RedactedThinkingPart):
        return {"type": "redacted_thinking", "data": p.data}
    return {"type": "thinking", "thinking": p.text, "signature": p.signature or ""}


def encode_response(resp: ir.Response, created: int) -> bytes:
    """An IR answer as the OpenAI ``chat.completion`` JSON body.

    An answer stopped by the context window before producing anything is an error in OpenAI's
    vocabulary (400 ``context_length_exceeded``), not an empty completion: raises BadRequest.
    """
    content = resp.content
    if len(content) == 1 and type(content[0]) is ir.TextPart:
        # PERF: the common answer, one text part: what the general path below writes, without its walks
        # (a text part is an answer, even when stopped by the context window)
        message = _MessageOut(content=content[0].text)
        choice = _Choice(message, finish_reason(resp.stop_reason))
        answer = answer_id(resp.id, CHAT_PREFIX)
        return _encode(_Completion(answer, created, resp.model, [choice], _usage(resp.usage)))
    return _encode_any_response(resp, created)


def _encode_any_response(resp: ir.Response, created: int) -> bytes:
    """``encode_response`` of an answer of any shape (the general path)."""
    texts = [p.text for p in resp.content if isinstance(p, ir.TextPart)]
    calls = [
        _ToolCallOut(p.id, _FunctionOut(p.name, p.arguments))
        for p in resp.content
        if isinstance(p, ir.ToolCallPart)
    ]
    thinking = [p for p in resp.content if isinstance(p, ir.ThinkingPart | ir.RedactedThinkingPart)]
    if resp.stop_reason is ir.StopReason.CONTEXT_WINDOW and not texts and not calls:
        raise BadRequest(
            "the conversation does not fit the model's context window", code="context_length_exceeded"
        )
    message = _MessageOut(
        content="".join(texts) if texts or not calls else None,
        tool_calls=calls or msgspec.UNSET,
        reasoning_content="".join(p.text for p in thinking if isinstance(p, ir.ThinkingPart))
        if thinking
        else msgspec.UNSET,
        thinking_blocks=[_thinking_block(p) for p in thinking] or msgspec.UNSET,
    )
    choice = _Choice(message, finish_reason(resp.stop_reason))
    answer = answer_id(resp.id, CHAT_PREFIX)
    completion = _Completion(answer, created, resp.model, [choice], _usage(resp.usage))
    return _encode(completion)


def encode_error(err: ir.ProviderError) -> bytes:
    """An IR error as the OpenAI error body ``{"error": {...}}``."""
    return error_body(err.message, err.type, err.code)


# ---- IR stream events → chunks -------------------------------------------------------------------
#
# Theory of operation. OpenAI streams one ``chat.completion.chunk`` per SSE ``data:`` line:
#
#   role chunk  {"role": "assistant", "content": ""}           (first, once)
#   content     {"content": "..."}  /  {"reasoning_content": "..."}
#   tool calls  {"tool_calls": [{"index": k, "id", "type", "function": {"name", "arguments": ""}}]}
#               then {"tool_calls": [{"index": k, "function": {"arguments": "..."}}]} per fragment
#   finish      {"delta": {}, "finish_reason": "..."}            (last choice chunk)
#   usage       {"choices": [], "usage": {...}}                   (only with stream_options.include_usage)
#   data: [DONE]
#
# The IR numbers blocks by their place in the whole content (text, thinking and tool blocks share one
# sequence); OpenAI numbers tool calls among themselves. The encoder gives each tool block the next
# tool index when it opens and keeps the pair, so parallel calls keep their own index whichever order
# their fragments arrive in. A StreamError becomes an ``{"error": ...}`` data line (what OpenAI sends
# and its SDK raises on) followed by ``data: [DONE]``: the engine's rule for every mid-stream error (its
# ``_stream_failed``), so a client sees the error and a well-formed end whichever path ended the stream.
#
#   event          emits                                    state
#   MessageStart   role chunk                               id, model remembered
#   BlockStart     tool_call: tool header; redacted: block  tool index assigned
#   BlockDelta     content / reasoning / arguments / sig    -
#   BlockStop      -                                        -
#   UsageUpdate    -                                        latest usage kept
#   MessageStop    finish chunk [, usage chunk], [DONE]     done
#   StreamError    error line, [DONE]                       done


class _FunctionDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct, frozen=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[dict[str, str]] | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _ChunkChoice(msgspec.Struct, frozen=True):
    delta: _Delta
    finish_reason: str | None = None
    index: int = 0
    logprobs: None = None


class _Chunk(msgspec.Struct, frozen=True):
    id: str
    created: int
    model: str
    choices: list[_ChunkChoice]
    object: str = "chat.completion.chunk"
    usage: _Usage | msgspec.UnsetType | None = msgspec.UNSET


_DONE: Final = b"data: [DONE]\n\n"
#: the content of the chunk a text delta's template is cut from (ChunkEncoder._text_template)
_MARK: Final = "\x00gateway-text\x00"
_MARK_JSON: Final = msgspec.json.encode(_MARK)


class ChunkEncoder:
    """IR stream events → OpenAI chunk SSE bytes; ``encode(event)`` returns b"" when nothing is due."""

    __slots__ = ("_created", "_done", "_id", "_include_usage", "_model", "_text", "_tool_index", "_usage")

    def __init__(self, created: int, include_usage: bool) -> None:
        self._created = created
        self._include_usage = include_usage
        self._id = ""
        self._model = ""
        #: IR block index → OpenAI tool-call index
        self._tool_index: dict[int, int] = {}
        self._usage = ir.Usage()
        self._done = False
        #: a text delta's chunk around its JSON string (``_text_template``), once the id is known
        self._text: tuple[bytes, bytes] | None = None

    @property
    def done(self) -> bool:
        return self._done

    def encode(self, event: ir.StreamEvent) -> bytes:
        if self._done:
            return b""
        if type(event) is ir.BlockDelta:
            if event.kind == "text":  # PERF: the most common event (see _delta), without a call
                head, tail = self._text or self._text_template()
                return head + _encode(event.value) + tail
            return self._delta(event)
        if isinstance(event, ir.MessageStart):
            self._id, self._model = answer_id(event.id, CHAT_PREFIX), event.model
            self._usage = event.usage
            self._text = None
            return self._chunk(_Delta(role="assistant", content=""))
        if isinstance(event, ir.BlockStart):
            return self._block_start(event)
        if isinstance(event, ir.UsageUpdate):
            self._usage = event.usage
            return b""
        if isinstance(event, ir.MessageStop):
            return self._finish(event)
        if isinstance(event, ir.StreamError):
            self._done = True
            return b"data: " + encode_error(event.error) + b"\n\n" + _DONE
        return b""  # BlockStop

    def encode_all(self, events: list[ir.StreamEvent]) -> bytes:
        return b"".join(self.encode(e) for e in events)

    def _chunk(self, delta: _Delta, finish: str | None = None) -> bytes:
        chunk = _Chunk(
            self._id,
            self._created,
            self._model,
            [_ChunkChoice(delta, finish)],
            usage=None if self._include_usage else msgspec.UNSET,
        )
        return b"data: " + _encode(chunk) + b"\n\n"

    def _block_start(self, ev: ir.BlockStart) -> bytes:
        if ev.kind == "tool_call":
            k = self._tool_index[ev.index] = len(self._tool_index)
            call = _ToolCallDelta(k, ev.id, "function", _FunctionDelta(ev.name, ""))
            return self._chunk(_Delta(tool_calls=[call]))
        if ev.kind == "redacted_thinking" and ev.data is not None:
            return self._chunk(_Delta(thinking_blocks=[{"type": "redacted_thinking", "data": ev.data}]))
        return b""

    def _text_template(self) -> tuple[bytes, bytes]:
        """The bytes of a text delta's chunk before and after its content's JSON string: the chunk
        ``_chunk`` writes, encoded once with a marker for the content and cut there."""
        whole = self._chunk(_Delta(content=_MARK))
        head, _, tail = whole.partition(_MARK_JSON)
        self._text = (head, tail)
        return self._text

    def _delta(self, ev: ir.BlockDelta) -> bytes:
        if ev.kind == "text":
            # PERF: the most common event: its chunk is the stream's template around the text's JSON
            # string (byte for byte what _chunk writes), not four Structs encoded per delta
            head, tail = self._text or self._text_template()
            return head + _encode(ev.value) + tail
        if ev.kind == "arguments":
            k = self._tool_index.get(ev.index)
            if k is None:
                return b""
            call = _ToolCallDelta(k, function=_FunctionDelta(arguments=ev.value))
            return self._chunk(_Delta(tool_calls=[call]))
        if ev.kind == "thinking":
            return self._chunk(_Delta(reasoning_content=ev.value))
        block = {"type": "thinking", "thinking": "", "signature": ev.value}
        return self._chunk(_Delta(thinking_blocks=[block]))

    def _finish(self, ev: ir.MessageStop) -> bytes:
        self._done = True
        out = self._chunk(_Delta(), finish_reason(ev.stop_reason))
        if self._include_usage:
            chunk = _Chunk(self._id, self._created, self._model, [], usage=_usage(self._usage))
            out += b"data: " + _encode(chunk) + b"\n\n"
        return out + _DONE


# ---- the dialect object (gateway.dialects.base) --------------------------------------------------


class OpenAIChat(ClientDialect):
    """OpenAI Chat Completions as a ``ClientDialect``. The engine's default: a request in this dialect
    has ``ctx.dialect is None`` (it costs the pass-through path nothing); translators that bridge to
    another wire use this object for it (``gateway.providers.bridge.client_dialect``)."""

    name = "openai_chat"
    endpoint = "chat"
    serves = "chat"

    def decode_request(self, body: bytes) -> ir.Request:
        return decode_request(body)

    def encode_response(self, resp: ir.Response, created: int) -> bytes:
        return encode_response(resp, created)

    def stream_encoder(self, ctx: Any, created: int) -> ChunkEncoder:
        return ChunkEncoder(created, bool(ctx.include_usage))

    def error_body(self, err: GatewayError, request_id: str) -> bytes:
        return err.body

    def stream_error(self, err: GatewayError, request_id: str) -> bytes:
        return b"data: " + err.body + b"\n\n" + _DONE

    def provider_error_body(self, err: ir.ProviderError, request_id: str) -> bytes:
        return encode_error(err)


OPENAI_CHAT: Final = OpenAIChat()
