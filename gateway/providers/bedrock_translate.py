# cython: boundscheck=True, wraparound=True, cdivision=False
"""IR ⇄ Amazon Bedrock Converse: request building, answer and ConverseStream decoding, usage, errors,
and the InvokeModel embeddings of Titan and Cohere.

Pure functions and one sans-I/O state machine (``BedrockStream``): bytes and IR values in, bytes and IR
values out; no sockets, no clock, no credentials (signing is ``gateway.providers.aws``). The mapping tables
are in ``docs/translation.md``; the tables here are the source of truth.

Request rules (IR → Converse):

- System: the *leading* ``system``/``developer`` messages become the top-level ``system`` blocks; a system
  message after the conversation started is not hoisted: it becomes ``<system>…</system>`` text in a
  ``user`` turn at its place (as for Anthropic). ``tool`` messages become ``toolResult`` blocks of a
  ``user`` turn; consecutive turns of one role are merged (Converse wants them alternating).
- Tool-call ids: Bedrock's ``toolUseId`` is ``^[a-zA-Z0-9_-]+$`` too: the Anthropic translator's
  reversible escape (``sanitize_tool_id`` / ``restore_tool_id``) is used, so ids survive a conversation
  that moves between providers.
- ``tool_choice``: auto → ``{"auto": {}}``, required → ``{"any": {}}``, named → ``{"tool": {"name"}}``.
  Converse has no "none": the tools are left out (a model cannot call what it is not given), unless the
  conversation already holds tool blocks (then Converse requires ``toolConfig``): the tools go with no
  choice and a system line asks for no call.
- Structured output: ``json_schema`` → ``outputConfig.textFormat`` (Bedrock's native structured output,
  the schema as a JSON string; not a forced tool, so the client's tools and ``tool_choice`` stay as they
  are). ``json_object`` has no native form: a system line asks for one JSON object.
- Images and documents go as base64 ``bytes`` (Converse takes no URL, and the gateway never fetches one):
  an ``https://`` image is refused (400). ``cache_control`` on a text part, a system block or a tool
  becomes a ``cachePoint`` block right after it (Bedrock's prompt caching).
- Thinking: signed reasoning goes back as ``reasoningContent`` (text and signature byte for byte,
  redacted content unchanged), first in the assistant turn. Asking for reasoning (``reasoning_effort`` or a
  budget) and ``top_k`` reach Claude models only, through ``additionalModelRequestFields`` (``thinking``,
  ``top_k``): other model families name them differently, and Converse has no member for either.
- ``seed``, the penalties and ``n > 1``: no Converse form; ``n > 1`` is refused (400), the others dropped.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from gateway import ir
from gateway._core.awsevent import EventStreamDecoder, EventStreamError, Message
from gateway.errors import BadRequest
from gateway.providers.anthropic_translate import _thinking_budget as thinking_budget
from gateway.providers.anthropic_translate import restore_tool_id, sanitize_tool_id
from gateway.providers.schemas import bedrock as wire

__all__ = [
    "CREDENTIAL_MARKERS",
    "ERROR_TYPES",
    "STOP_REASONS",
    "BedrockStream",
    "EmbeddingAnswer",
    "build_request",
    "credential_failure",
    "embedding_request",
    "embeddings_from_body",
    "encode_request",
    "error_from_response",
    "provider_error",
    "response_from_body",
    "stop_reason",
    "usage_from_wire",
]

#: Bedrock ``stopReason`` → IR. ``malformed_model_output`` and ``malformed_tool_use`` are not in the
#: table: the model's answer is unusable, which is an upstream failure (``MALFORMED``), not a stop.
STOP_REASONS: Final[dict[str, ir.StopReason]] = {
    "end_turn": ir.StopReason.END_TURN,
    "stop_sequence": ir.StopReason.STOP_SEQUENCE,
    "max_tokens": ir.StopReason.MAX_TOKENS,
    "tool_use": ir.StopReason.TOOL_USE,
    "guardrail_intervened": ir.StopReason.REFUSAL,
    "content_filtered": ir.StopReason.REFUSAL,
    "model_context_window_exceeded": ir.StopReason.CONTEXT_WINDOW,
}
MALFORMED: Final = frozenset({"malformed_model_output", "malformed_tool_use"})

#: Bedrock error type (the ``x-amzn-ErrorType`` header, or a stream's ``:exception-type``) → (status for
#: the client, OpenAI error type, code, retryable). Failures of the gateway's own AWS credentials or
#: setup (signature, access, an unknown model id) are the operator's: 502, never the client's 4xx.
ERROR_TYPES: Final[dict[str, tuple[int, str, str, bool]]] = {
    "ValidationException": (400, "invalid_request_error", "invalid_request", False),
    "ThrottlingException": (429, "rate_limit_error", "rate_limit_exceeded", True),
    "ServiceQuotaExceededException": (429, "rate_limit_error", "rate_limit_exceeded", True),
    "ServiceUnavailableException": (503, "server_error", "upstream_overloaded", True),
    "ModelNotReadyException": (503, "server_error", "upstream_model_not_ready", True),
    "InternalServerException": (502, "upstream_error", "upstream_error", True),
    "ModelErrorException": (502, "upstream_error", "upstream_model_error", True),
    "ModelStreamErrorException": (502, "upstream_error", "upstream_model_error", True),
    "ModelTimeoutException": (504, "upstream_error", "upstream_timeout", True),
    "AccessDeniedException": (502, "upstream_error", "upstream_permission", False),
    "UnrecognizedClientException": (502, "upstream_error", "upstream_authentication", False),
    "InvalidSignatureException": (502, "upstream_error", "upstream_authentication", False),
    "ExpiredTokenException": (502, "upstream_error", "upstream_authentication", False),
    "IncompleteSignatureException": (502, "upstream_error", "upstream_authentication", False),
    "ResourceNotFoundException": (502, "upstream_error", "upstream_not_found", False),
}
#: phrases of a ValidationException that say the prompt does not fit the model
_TOO_LONG: Final = ("too many input tokens", "input is too long", "prompt is too long",
                    "exceeds the context window", "context length")
#: a guardrail refused the request (a ValidationException or AccessDenied about the guardrail itself is
#: the operator's setup, answered 502 ``upstream_guardrail``)
_GUARDRAIL: Final = "guardrail"

# ---- request -------------------------------------------------------------------------------------

_IMAGE_FORMATS: Final = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                         "image/webp": "webp"}
_DOCUMENT_FORMATS: Final = {
    "application/pdf": "pdf", "text/csv": "csv", "text/html": "html", "text/plain": "txt",
    "text/markdown": "md", "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
}
_NAME_CHARS: Final = re.compile(r"[^A-Za-z0-9 ()\[\]-]+")
_NO_TOOL_INSTRUCTION: Final = "Do not call any tool in this turn."
_JSON_OBJECT_INSTRUCTION: Final = "Respond with a single JSON object and nothing else."
_EMPTY_SCHEMA: Final[dict[str, Any]] = {"type": "object", "properties": {}}
_decode_args: Final = msgspec.json.Decoder(dict[str, Any])
_decode_any: Final = msgspec.json.Decoder()
_encode_json: Final = msgspec.json.Encoder().encode
_CACHE_POINT: Final = wire.ContentBlock(cachePoint=wire.CachePoint("default"))


def _image(part: ir.ImagePart) -> wire.ImageBlock:
    if part.data is None:
        raise BadRequest("Bedrock takes images as base64 data URLs only (data:image/png;base64,...); "
                         "the gateway does not fetch image URLs", param="messages")
    fmt = _IMAGE_FORMATS.get((part.media_type or "").lower())
    if fmt is None:
        raise BadRequest(f"Bedrock takes png, jpeg, gif and webp images, not {part.media_type!r}",
                         param="messages")
    return wire.ImageBlock(fmt, wire.Source(bytes=part.data))


def _document(part: ir.DocumentPart, n: int) -> wire.DocumentBlock:
    name = _NAME_CHARS.sub(" ", part.title or part.filename or f"document {n}").strip() or f"document {n}"
    if part.text is not None:
        return wire.DocumentBlock("txt", name, wire.Source(text=part.text))
    if part.data is None:
        raise BadRequest("Bedrock takes documents as base64 file_data only", param="messages")
    fmt = _DOCUMENT_FORMATS.get((part.media_type or "application/pdf").lower())
    if fmt is None:
        raise BadRequest(f"Bedrock does not take documents of type {part.media_type!r}", param="messages")
    return wire.DocumentBlock(fmt, name, wire.Source(bytes=part.data))


def _tool_use(part: ir.ToolCallPart) -> wire.ToolUseBlock:
    try:
        args = _decode_args.decode(part.arguments) if part.arguments.strip() else {}
    except msgspec.MsgspecError:
        raise BadRequest(f"the arguments of tool call {part.id!r} are not a JSON object",
                         param="messages") from None
    return wire.ToolUseBlock(sanitize_tool_id(part.id), part.name, args)


def _tool_result(part: ir.ToolResultPart) -> wire.ToolResultBlock:
    content: list[wire.ToolResultContent] = []
    for i, p in enumerate(part.content):
        if isinstance(p, ir.TextPart):
            content.append(wire.ToolResultContent(text=p.text))
        elif isinstance(p, ir.ImagePart):
            content.append(wire.ToolResultContent(image=_image(p)))
        else:
            content.append(wire.ToolResultContent(document=_document(p, i + 1)))
    if not content:
        content.append(wire.ToolResultContent(text=""))
    status = "error" if part.is_error else None
    return wire.ToolResultBlock(sanitize_tool_id(part.tool_call_id), content, status)


def _blocks(part: ir.Part, n: int) -> list[wire.ContentBlock]:
    """One IR part as Converse blocks (none, one, or one and its cache point)."""
    if isinstance(part, ir.TextPart):
        if not part.text:
            return []  # Converse refuses blank text blocks
        block = wire.ContentBlock(text=part.text)
        return [block, _CACHE_POINT] if part.cache_control is not None else [block]
    if isinstance(part, ir.ImagePart):
        return [wire.ContentBlock(image=_image(part))]
    if isinstance(part, ir.DocumentPart):
        return [wire.ContentBlock(document=_document(part, n))]
    if isinstance(part, ir.ToolCallPart):
        return [wire.ContentBlock(toolUse=_tool_use(part))]
    if isinstance(part, ir.ToolResultPart):
        return [wire.ContentBlock(toolResult=_tool_result(part))]
    if isinstance(part, ir.ThinkingPart):
        if part.signature is None:
            return []  # unsigned reasoning (another provider's) cannot be verified
        text = wire.ReasoningText(part.text, part.signature)
        return [wire.ContentBlock(reasoningContent=wire.ReasoningContent(reasoningText=text))]
    if isinstance(part, ir.RedactedThinkingPart):
        return [wire.ContentBlock(reasoningContent=wire.ReasoningContent(redactedContent=part.data))]
    return []


_THINKING: Final = (ir.ThinkingPart, ir.RedactedThinkingPart)


def _messages(messages: list[ir.Message]) -> tuple[list[wire.SystemBlock], list[wire.Message], bool]:
    """(system blocks, turns, whether the turns hold tool blocks)."""
    system: list[wire.SystemBlock] = []
    i = 0
    while i < len(messages) and messages[i].role in ("system", "developer"):
        for p in messages[i].content:
            if isinstance(p, ir.TextPart) and p.text:
                system.append(wire.SystemBlock(text=p.text))
                if p.cache_control is not None:
                    system.append(wire.SystemBlock(cachePoint=wire.CachePoint("default")))
        i += 1
    turns: list[wire.Message] = []
    has_tools = False
    n = 0
    for msg in messages[i:]:
        if msg.role in ("system", "developer"):
            text = "\n".join(p.text for p in msg.content if isinstance(p, ir.TextPart))
            role, blocks = "user", [wire.ContentBlock(text=f"<system>\n{text}\n</system>")]
        else:
            role = "assistant" if msg.role == "assistant" else "user"
            parts = msg.content
            if role == "assistant":  # reasoning opens the assistant turn, in its order
                parts = [p for p in parts if isinstance(p, _THINKING)] + \
                    [p for p in parts if not isinstance(p, _THINKING)]
            blocks = []
            for p in parts:
                n += 1
                has_tools = has_tools or isinstance(p, ir.ToolCallPart | ir.ToolResultPart)
                blocks += _blocks(p, n)
        if not blocks:
            continue
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)
        else:
            turns.append(wire.Message(role, blocks))  # type: ignore[arg-type]
    return system, turns, has_tools


def _tool_config(req: ir.Request, has_tool_blocks: bool) -> tuple[wire.ToolConfig | None, bool]:
    """(tool config, whether the model must be told not to call a tool)."""
    if not req.tools:
        return None, False
    tc = req.tool_choice
    if tc is not None and tc.mode == "none" and not has_tool_blocks:
        return None, False
    tools: list[wire.Tool] = []
    for t in req.tools:
        spec = wire.ToolSpec(t.name, wire.ToolInputSchema(t.parameters or _EMPTY_SCHEMA), t.description,
                             t.strict)
        tools.append(wire.Tool(toolSpec=spec))
        if t.cache_control is not None:
            tools.append(wire.Tool(cachePoint=wire.CachePoint("default")))
    choice: wire.ToolChoice | None = None
    if tc is not None and tc.mode == "required":
        choice = wire.ToolChoice.of("any")
    elif tc is not None and tc.mode == "named":
        choice = wire.ToolChoice.of("tool", tc.name)
    elif tc is not None and tc.mode == "auto":
        choice = wire.ToolChoice.of("auto")
    return wire.ToolConfig(tools, choice), tc is not None and tc.mode == "none"


def _claude_fields(req: ir.Request, model: str) -> tuple[dict[str, Any] | None, bool]:
    """(additionalModelRequestFields for a Claude model, whether thinking is on)."""
    if "anthropic." not in model:
        return None, False
    fields: dict[str, Any] = {}
    budget = thinking_budget(req)
    forced = req.tool_choice is not None and req.tool_choice.mode in ("required", "named")
    if budget is not None and not forced:  # Claude refuses thinking with a forced tool
        fields["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if req.top_k is not None and "thinking" not in fields:
        fields["top_k"] = req.top_k
    return fields or None, "thinking" in fields


def build_request(req: ir.Request, model: str) -> wire.Request:
    """The Converse request for ``req`` to upstream model ``model`` (its id goes in the path)."""
    if req.n is not None and req.n > 1:
        raise BadRequest("this model answers one choice at a time (n must be 1)", param="n")
    system, turns, has_tool_blocks = _messages(req.messages)
    if not turns:
        raise BadRequest("the conversation needs at least one user or assistant message", param="messages")
    tool_config, no_call = _tool_config(req, has_tool_blocks)
    if no_call:
        system.append(wire.SystemBlock(text=_NO_TOOL_INSTRUCTION))
    fmt = req.response_format
    output_config = None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.schema is None:
            raise BadRequest("response_format json_schema needs a schema", param="response_format")
        definition = wire.JsonSchemaDefinition(_encode_json(fmt.schema).decode(), fmt.name, fmt.description)
        structure = wire.OutputFormatStructure(definition)
        output_config = wire.OutputConfig(wire.OutputFormat("json_schema", structure))
    elif fmt is not None and fmt.type == "json_object":
        system.append(wire.SystemBlock(text=_JSON_OBJECT_INSTRUCTION))
    extra, thinking = _claude_fields(req, model)
    max_tokens = req.max_tokens
    if thinking and extra is not None:
        budget = extra["thinking"]["budget_tokens"]
        if max_tokens is None:
            max_tokens = 4096 + budget
        elif budget >= max_tokens:
            if max_tokens // 2 >= 1024:
                extra["thinking"]["budget_tokens"] = max_tokens // 2
            else:
                del extra["thinking"]
                thinking = False
    temperature = req.temperature
    if thinking:
        temperature = None  # Claude refuses a temperature with thinking
    inference = wire.InferenceConfig(max_tokens, temperature, req.top_p, req.stop or None)
    return wire.Request(
        messages=turns,
        system=system or None,
        inferenceConfig=inference if inference != _NO_INFERENCE else None,
        toolConfig=tool_config,
        outputConfig=output_config,
        additionalModelRequestFields=extra or None,
        requestMetadata=req.metadata or None,
    )


_NO_INFERENCE: Final = wire.InferenceConfig()


def encode_request(req: ir.Request, model: str) -> bytes:
    """``build_request`` as the JSON body."""
    return wire.encode(build_request(req, model))


# ---- answer --------------------------------------------------------------------------------------


def usage_from_wire(u: wire.TokenUsage) -> ir.Usage:
    """Bedrock usage → IR: ``inputTokens`` already excludes the cache reads and writes."""
    return ir.Usage(input_tokens=u.inputTokens, output_tokens=u.outputTokens,
                    cache_read_tokens=u.cacheReadInputTokens, cache_write_tokens=u.cacheWriteInputTokens)


def stop_reason(value: str) -> ir.StopReason:
    """Bedrock stop reason → IR (an unknown one reads as the end of the turn)."""
    return STOP_REASONS.get(value, ir.StopReason.END_TURN)


def malformed_error(value: str) -> ir.ProviderError:
    return ir.ProviderError(502, "upstream_error", "upstream_malformed_output",
                            f"the model's answer was unusable ({value})", retryable=True, provider_type=value)


def _part(block: wire.ContentBlock) -> ir.Part | None:
    if block.text is not None:
        return ir.TextPart(block.text)
    if block.toolUse is not None:
        u = block.toolUse
        return ir.ToolCallPart(restore_tool_id(u.toolUseId), u.name, _encode_json(u.input).decode())
    r = block.reasoningContent
    if r is not None:
        if r.reasoningText is not None:
            return ir.ThinkingPart(r.reasoningText.text, r.reasoningText.signature)
        if r.redactedContent is not None:
            return ir.RedactedThinkingPart(r.redactedContent)
    return None  # a block type the IR has no place for (citations, ...)


class MalformedAnswer(Exception):
    """The model's answer was unusable (``malformed_model_output`` / ``malformed_tool_use``)."""

    def __init__(self, error: ir.ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


def response_from_body(body: bytes, response_id: str, model: str) -> ir.Response:
    """A ``Converse`` answer → IR (Converse gives no id or model: the caller's are used). Raises
    msgspec.DecodeError/ValidationError, or MalformedAnswer."""
    resp = wire.decode_response(body)
    if resp.stopReason in MALFORMED:
        raise MalformedAnswer(malformed_error(resp.stopReason))
    message = resp.output.message
    blocks = message.content if message is not None else []
    parts = [p for p in map(_part, blocks) if p is not None]
    return ir.Response(id=response_id, model=model, content=parts, stop_reason=stop_reason(resp.stopReason),
                       usage=usage_from_wire(resp.usage))


# ---- errors --------------------------------------------------------------------------------------


def _fallback(status: int) -> tuple[int, str, str, bool]:
    if status == 429:
        return ERROR_TYPES["ThrottlingException"]
    if status == 503:
        return ERROR_TYPES["ServiceUnavailableException"]
    if status in (400, 422):
        return ERROR_TYPES["ValidationException"]
    if status in (401, 403):
        return ERROR_TYPES["AccessDeniedException"]
    if status == 404:
        return ERROR_TYPES["ResourceNotFoundException"]
    return (502, "upstream_error", "upstream_error", status >= 500 or status == 408)


def error_type_of(header: str | None) -> str | None:
    """``ValidationException:http://internal.amazon.com/coral/...`` → ``ValidationException``; a stream's
    ``throttlingException`` → ``ThrottlingException``."""
    if not header:
        return None
    name = header.split(":", 1)[0].split("#")[-1].strip()
    return name[:1].upper() + name[1:] if name else None


def provider_error(error_type: str | None, message: str, http_status: int) -> ir.ProviderError:
    """A Bedrock error (by its type, else by the HTTP status) as the client should see it."""
    status, type_, code, retryable = ERROR_TYPES.get(error_type or "") or _fallback(http_status)
    low = message.lower()
    if code == "invalid_request" and any(p in low for p in _TOO_LONG):
        code = "context_length_exceeded"
    elif _GUARDRAIL in low and status in (400, 502) and code != "upstream_authentication":
        status, type_, code, retryable = 502, "upstream_error", "upstream_guardrail", False
    return ir.ProviderError(status, type_, code, message, retryable, error_type)


#: the error type of a body without ``__type``, by status (429: ``ModelNotReadyException`` is told
#: apart by its message)
_TYPE_BY_STATUS: Final = {
    400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
    408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
    500: "InternalServerException", 503: "ServiceUnavailableException",
}
_CREDENTIAL_PHRASES: Final = ("security token", "signature", "credential", "expired")


def _guess_type(status: int, message: str) -> str | None:
    low = message.lower()
    if status == 429 and "not ready" in low:
        return "ModelNotReadyException"
    if status == 403 and any(p in low for p in _CREDENTIAL_PHRASES):
        return "UnrecognizedClientException"
    return _TYPE_BY_STATUS.get(status)


#: what a 403 body says when the credential itself is wrong (not a permission it lacks): AWS answers an
#: unknown key, a bad signature or an expired session token with 403, its error type in a header and
#: these messages in the body
CREDENTIAL_MARKERS: Final = (b"InvalidSignatureException", b"UnrecognizedClientException", b"ExpiredToken",
                             b"IncompleteSignature", b"MissingAuthenticationToken",
                             b"signature we calculated does not match",
                             b"security token included in the request is", b"Invalid API Key format")


def credential_failure(status: int, body: bytes) -> bool:
    """Whether a refused credential's answer (401, 403) says the credential itself is wrong (an unknown
    key, a bad signature, an expired token), not that it lacks a permission (AccessDenied)."""
    return status == 401 or (status == 403 and any(marker in body for marker in CREDENTIAL_MARKERS))


def error_from_response(status: int, body: bytes, error_type: str | None = None) -> ir.ProviderError:
    """A non-2xx Bedrock answer → IR error. The type is ``error_type`` (the ``x-amzn-ErrorType`` header,
    when the caller has it), else the body's ``__type``, else told by the status and the message."""
    err = wire.decode_error(body)
    if err is None or not err.text:
        text = body[:200].decode("utf-8", "replace")
        message = f"upstream answered {status}: {text}"
    else:
        message = err.text
    named = error_type or (err.type if err is not None else None)
    kind = error_type_of(named) or _guess_type(status, message)
    return provider_error(kind, message, status)


# ---- the stream state machine --------------------------------------------------------------------
#
# Theory of operation. ConverseStream answers ``application/vnd.amazon.eventstream``: binary messages
# (a prelude with the total and header lengths and its CRC32, typed headers, the payload, a CRC32 of
# the whole), parsed by ``gateway._core.awsevent`` (compiled; checksums verified, lengths bounded as
# botocore bounds them, a message cut at the end refused). Each
# message has ``:message-type`` ``event`` (``:event-type`` names it, the payload is JSON), ``exception``
# (``:exception-type``, payload ``{"message"}``) or ``error`` (``:error-code``, ``:error-message``):
#
#   messageStart  { contentBlockStart? contentBlockDelta* contentBlockStop }*  messageStop  metadata
#
# Unlike Anthropic's, a text or reasoning block has no start event: its first delta opens it; only a
# tool-use block starts with its id and name. The stop reason comes before the usage (``metadata``),
# so the IR's MessageStop is held until ``metadata`` arrives (or the body ends right after messageStop).
#
#   state     event                → handler          next
#   IDLE      messageStart           _on_start          MESSAGE
#   MESSAGE   contentBlockStart      _on_block_start    MESSAGE
#   MESSAGE   contentBlockDelta      _on_block_delta    MESSAGE
#   MESSAGE   contentBlockStop       _on_block_stop     MESSAGE
#   MESSAGE   messageStop            _on_stop           STOPPED
#   MESSAGE   metadata               _on_metadata       MESSAGE   (usage before the stop: kept)
#   STOPPED   metadata               _on_metadata       DONE      (UsageUpdate, then MessageStop)
#   any       exception / error      _on_exception      FAILED
#
# A pair not in the table, broken framing (``EventStreamError``) or a malformed payload fails the stream
# with a 502-typed StreamError; an unknown ``:event-type`` is skipped (forward compatibility). ``close()``
# on STOPPED emits the held MessageStop; on IDLE or MESSAGE, or with part of a message still buffered,
# it is a cut stream (502).
#
# PERF: a text delta on an open text block (nearly every event of an answer) is handled before the
# table, with its payload decoded once, as ``AnthropicStream._event`` does.

IDLE: Final = "IDLE"
MESSAGE: Final = "MESSAGE"
STOPPED: Final = "STOPPED"
DONE: Final = "DONE"
FAILED: Final = "FAILED"

TRANSITIONS: Final[dict[tuple[str, str], tuple[str, str]]] = {
    (IDLE, "messageStart"): ("_on_start", MESSAGE),
    (MESSAGE, "contentBlockStart"): ("_on_block_start", MESSAGE),
    (MESSAGE, "contentBlockDelta"): ("_on_block_delta", MESSAGE),
    (MESSAGE, "contentBlockStop"): ("_on_block_stop", MESSAGE),
    (MESSAGE, "messageStop"): ("_on_stop", STOPPED),
    (MESSAGE, "metadata"): ("_on_metadata", MESSAGE),
    (STOPPED, "metadata"): ("_on_metadata", DONE),
}
_KNOWN_EVENTS: Final = frozenset(event for _, event in TRANSITIONS)
_DELTA: Final = "contentBlockDelta"

# PERF: one decoder per payload type, built once
_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    "contentBlockStart": msgspec.json.Decoder(wire.ContentBlockStartEvent),
    "contentBlockDelta": msgspec.json.Decoder(wire.ContentBlockDeltaEvent),
    "contentBlockStop": msgspec.json.Decoder(wire.ContentBlockStopEvent),
    "messageStop": msgspec.json.Decoder(wire.MessageStopEvent),
    "metadata": msgspec.json.Decoder(wire.MetadataEvent),
}
_delta_decoder: Final = _DECODERS[_DELTA]


class ProtocolViolation(Exception):
    """The upstream stream broke ConverseStream's event grammar."""


def _header(msg: Message, name: str) -> str | None:
    value = msg.headers.get(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


class BedrockStream:
    """ConverseStream bytes in, IR stream events out: ``feed(chunk)`` per body chunk, then ``close()``.

    ``response_id`` and ``model`` name the answer (ConverseStream sends neither)."""

    __slots__ = ("_blocks", "_buffer", "_id", "_model", "_stop", "_usage", "state")

    def __init__(self, response_id: str, model: str) -> None:
        self._buffer = EventStreamDecoder()
        self._id = response_id
        self._model = model
        self.state = IDLE
        #: open blocks: index → kind (text, tool_call, thinking)
        self._blocks: dict[int, str] = {}
        self._usage = ir.Usage()
        self._stop = ir.StopReason.END_TURN

    @property
    def usage(self) -> ir.Usage:
        return self._usage

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]:
        """IR events for the complete messages now buffered."""
        out: list[ir.StreamEvent] = []
        if self.state == FAILED:
            return out
        try:
            self._buffer.feed(chunk)
            for msg in self._buffer:
                self._message(msg, out)
                if self.state == FAILED:
                    break
        except EventStreamError as e:
            self._fail(out, f"the upstream sent a broken event-stream message: {e}")
        return out

    def close(self) -> list[ir.StreamEvent]:
        """The upstream body ended: the held stop, or an error when the message did not end (or the body
        was cut inside an event-stream message: after messageStop that is the usage lost)."""
        out: list[ir.StreamEvent] = []
        if self.state in (FAILED, DONE):
            return out
        try:
            self._buffer.close()
        except EventStreamError as e:
            self._fail(out, f"the upstream stream ended inside an event-stream message: {e}")
        else:
            if self.state == STOPPED:
                self._finish(out)
            else:
                self._fail(out, "the upstream stream ended before the message was complete")
        return out

    def _fail(self, out: list[ir.StreamEvent], message: str) -> None:
        if self.state != FAILED:
            self.state = FAILED
            err = ir.ProviderError(502, "upstream_error", "bad_gateway", message, retryable=True)
            out.append(ir.StreamError(err))

    def _message(self, msg: Message, out: list[ir.StreamEvent]) -> None:
        headers = msg.headers
        if self.state == MESSAGE and headers.get(":event-type") == _DELTA \
                and headers.get(":message-type") == "event":
            # PERF: the most common event, a text delta on an open text block, without the table's
            # lookups (the same outcome as _on_block_delta's, which takes every other delta)
            try:
                ev = _delta_decoder.decode(msg.payload)
            except msgspec.MsgspecError:
                self._fail(out, f"the upstream sent a malformed {_DELTA} event")
                return
            text = ev.delta.text
            if text is not None and self._blocks.get(ev.contentBlockIndex) == "text":
                if text:
                    out.append(ir.BlockDelta(ev.contentBlockIndex, "text", text))
                return
            self._other_delta(ev, out)
            return
        kind = _header(msg, ":message-type")
        if kind == "exception":
            name = error_type_of(_header(msg, ":exception-type"))
            err = wire.decode_error(msg.payload)
            self.state = FAILED
            out.append(ir.StreamError(provider_error(name, err.text if err else "", 200)))
            return
        if kind == "error":
            code = error_type_of(_header(msg, ":error-code"))
            self.state = FAILED
            out.append(ir.StreamError(provider_error(code, _header(msg, ":error-message") or "", 200)))
            return
        event = _header(msg, ":event-type") or ""
        step = TRANSITIONS.get((self.state, event))
        if step is None:
            if event in _KNOWN_EVENTS and self.state != DONE:
                self._fail(out, f"unexpected {event} event in state {self.state}")
            return  # an unknown event type, or anything after the end: skipped
        handler, next_state = step
        try:
            decoder = _DECODERS.get(event)
            payload = decoder.decode(msg.payload) if decoder is not None else None
            getattr(self, handler)(payload, out)
        except msgspec.MsgspecError:
            self._fail(out, f"the upstream sent a malformed {event} event")
            return
        except ProtocolViolation as e:
            self._fail(out, str(e))
            return
        if self.state != FAILED:
            self.state = next_state

    def _other_delta(self, ev: wire.ContentBlockDeltaEvent, out: list[ir.StreamEvent]) -> None:
        try:
            self._on_block_delta(ev, out)
        except ProtocolViolation as e:
            self._fail(out, str(e))

    def _on_start(self, ev: None, out: list[ir.StreamEvent]) -> None:
        out.append(ir.MessageStart(self._id, self._model))

    def _open(self, index: int, kind: str, out: list[ir.StreamEvent], start: ir.BlockStart) -> None:
        self._blocks[index] = kind
        out.append(start)

    def _on_block_start(self, ev: wire.ContentBlockStartEvent, out: list[ir.StreamEvent]) -> None:
        i = ev.contentBlockIndex
        if i in self._blocks:
            raise ProtocolViolation(f"content block {i} started twice")
        tool = ev.start.toolUse
        if tool is None:
            return  # a start of a kind the IR does not stream (toolResult, image): its deltas are skipped
        start = ir.BlockStart(i, "tool_call", restore_tool_id(tool.toolUseId), tool.name)
        self._open(i, "tool_call", out, start)

    def _on_block_delta(self, ev: wire.ContentBlockDeltaEvent, out: list[ir.StreamEvent]) -> None:
        i, d = ev.contentBlockIndex, ev.delta
        kind = self._blocks.get(i)
        if d.text is not None:
            if kind is None:
                kind = "text"
                self._open(i, kind, out, ir.BlockStart(i, "text"))
            if kind != "text":
                raise ProtocolViolation(f"text delta on a {kind} block")
            if d.text:
                out.append(ir.BlockDelta(i, "text", d.text))
        elif d.toolUse is not None:
            if kind != "tool_call":
                raise ProtocolViolation(f"tool input delta on block {i}, which is not a tool use")
            if d.toolUse.input:
                out.append(ir.BlockDelta(i, "arguments", d.toolUse.input))
        elif d.reasoningContent is not None:
            self._reasoning(i, kind, d.reasoningContent, out)

    def _reasoning(self, i: int, kind: str | None, r: Any, out: list[ir.StreamEvent]) -> None:
        if r.redactedContent is not None:
            if kind is not None:
                raise ProtocolViolation(f"redacted reasoning on open block {i}")
            self._open(i, "redacted", out, ir.BlockStart(i, "redacted_thinking", data=r.redactedContent))
            return
        if kind is None:
            kind = "thinking"
            self._open(i, kind, out, ir.BlockStart(i, "thinking"))
        if kind != "thinking":
            raise ProtocolViolation(f"reasoning delta on a {kind} block")
        if r.text:
            out.append(ir.BlockDelta(i, "thinking", r.text))
        if r.signature:
            out.append(ir.BlockDelta(i, "signature", r.signature))

    def _on_block_stop(self, ev: wire.ContentBlockStopEvent, out: list[ir.StreamEvent]) -> None:
        if self._blocks.pop(ev.contentBlockIndex, None) is not None:
            out.append(ir.BlockStop(ev.contentBlockIndex))
        # a stop of a block never opened: an empty text block, or a kind not streamed; nothing to close

    def _on_stop(self, ev: wire.MessageStopEvent, out: list[ir.StreamEvent]) -> None:
        for index in sorted(self._blocks):
            out.append(ir.BlockStop(index))
        self._blocks.clear()
        if ev.stopReason in MALFORMED:
            self.state = FAILED
            out.append(ir.StreamError(malformed_error(ev.stopReason)))
            return
        self._stop = stop_reason(ev.stopReason)

    def _on_metadata(self, ev: wire.MetadataEvent, out: list[ir.StreamEvent]) -> None:
        if ev.usage is not None:
            self._usage = usage_from_wire(ev.usage)
            out.append(ir.UsageUpdate(self._usage))
        if self.state == STOPPED:
            self._finish(out)

    def _finish(self, out: list[ir.StreamEvent]) -> None:
        out.append(ir.MessageStop(self._stop))


# ---- embeddings (InvokeModel) -------------------------------------------------------------------
#
# Titan Text Embeddings (``amazon.titan-embed-text-v2:0``) embeds one text per call:
#   {"inputText": "...", "dimensions": 256|512|1024, "normalize": true} → {"embedding": [...],
#   "inputTextTokenCount": N}
# Cohere Embed on Bedrock (``cohere.embed-*``) embeds a list:
#   {"texts": [...], "input_type": "search_document", "embedding_types": ["float"]} →
#   {"embeddings": {"float": [[...], ...]}, ...}  (older models: {"embeddings": [[...], ...]})


class EmbeddingAnswer(msgspec.Struct, frozen=True):
    vectors: list[list[float]]
    prompt_tokens: int


class _TitanAnswer(msgspec.Struct, frozen=True):
    embedding: list[float]
    inputTextTokenCount: int = 0


class _CohereFloats(msgspec.Struct, frozen=True):
    vectors: list[list[float]] = msgspec.field(name="float")


class _BilledUnits(msgspec.Struct, frozen=True):
    input_tokens: int = 0


class _CohereMeta(msgspec.Struct, frozen=True):
    billed_units: _BilledUnits | None = None


class _CohereAnswer(msgspec.Struct, frozen=True):
    embeddings: _CohereFloats | list[list[float]]
    meta: _CohereMeta | None = None


_titan_decoder: Final = msgspec.json.Decoder(_TitanAnswer)
_cohere_decoder: Final = msgspec.json.Decoder(_CohereAnswer)


def is_titan(model: str) -> bool:
    return "titan-embed" in model


def embedding_request(model: str, texts: list[str], dimensions: int | None) -> bytes:
    """The InvokeModel body embedding ``texts`` with ``model`` (Titan: exactly one text)."""
    if is_titan(model):
        if len(texts) != 1:
            raise BadRequest("Titan embeddings take one input per request; send the inputs one at a time",
                             param="input")
        body: dict[str, Any] = {"inputText": texts[0], "normalize": True}
        if dimensions is not None:
            body["dimensions"] = dimensions
        return _encode_json(body)
    if "cohere.embed" in model:
        if dimensions is not None and "v4" not in model:
            raise BadRequest("this Cohere embedding model has a fixed number of dimensions",
                             param="dimensions")
        body = {"texts": texts, "input_type": "search_document", "embedding_types": ["float"]}
        if dimensions is not None:
            body["output_dimension"] = dimensions
        return _encode_json(body)
    raise BadRequest(f"the Bedrock model {model!r} is not a Titan or Cohere embedding model", param="model")


def embeddings_from_body(model: str, body: bytes, texts: list[str]) -> EmbeddingAnswer:
    """An InvokeModel embeddings answer. Cohere on Bedrock reports no token count in the body (only in a
    header the translator interface does not pass): the prompt is counted at four characters a token
    unless ``meta.billed_units`` is there. Raises msgspec errors."""
    if is_titan(model):
        t = _titan_decoder.decode(body)
        return EmbeddingAnswer([t.embedding], t.inputTextTokenCount)
    c = _cohere_decoder.decode(body)
    vectors = c.embeddings.vectors if isinstance(c.embeddings, _CohereFloats) else c.embeddings
    billed = c.meta.billed_units if c.meta is not None else None
    tokens = billed.input_tokens if billed is not None and billed.input_tokens else \
        sum(max(1, len(t) // 4) for t in texts)
    return EmbeddingAnswer(vectors, tokens)
