# cython: boundscheck=True, wraparound=True, cdivision=False
"""IR ⇄ Gemini API (AI Studio and Vertex AI): request building, answer and stream decoding, usage, errors,
embeddings.

Pure functions and one sans-I/O state machine (``GeminiStream``): bytes and IR values in, bytes and IR
values out; no sockets, no clock, no engine. ``docs/translation.md`` has the tables in prose; the tables
here are the source of truth.

Request rules (IR → Gemini ``generateContent``):

- System: the *leading* ``system``/``developer`` messages become ``systemInstruction``. A system message
  after the conversation started is not hoisted: it becomes ``<system>…</system>`` text in a ``user``
  turn at its place (as for Anthropic).
- Roles: ``assistant`` → ``model``; ``tool`` messages become ``functionResponse`` parts in a ``user``
  turn (Gemini names the function, not the call: the name is looked up from the call's id in the
  earlier assistant turns); consecutive turns of one role are merged (all results of parallel calls in
  one turn, as Gemini wants). A result that is a JSON object is the ``response`` as it is; any other
  text is ``{"result": text}`` (``{"error": text}`` for a failed call).
- Images: base64 → ``inlineData``; an http(s) URL → ``fileData`` (``fileUri``, the media type guessed
  from the name, else ``image/jpeg``): the gateway never fetches it. Documents likewise (a file id is a
  Files API URI: ``fileData``).
- Tools: a tool's JSON schema goes as ``parameters`` when it fits Gemini's OpenAPI ``Schema`` subset
  (``openapi_compatible``), else whole as ``parametersJsonSchema`` (``$ref``/``$defs``,
  ``additionalProperties``, ``const``, ``oneOf``, numeric exclusive bounds, type lists, formats other
  than ``enum``/``date-time``/the numeric ones): no keyword is dropped. ``strict`` has no Gemini form.
- ``tool_choice``: auto→AUTO, none→NONE (kept), required→ANY, named→ANY with
  ``allowedFunctionNames: [name]``. ``parallel_tool_calls: false`` has no Gemini form (not sent).
- Structured output: ``json_schema`` → ``responseMimeType: application/json`` + ``responseJsonSchema``
  (full JSON Schema, enforced); ``json_object`` → the MIME type alone.
- Thinking: ``reasoning.budget_tokens`` → ``thinkingConfig.thinkingBudget``; an effort word →
  ``thinkingLevel`` for Gemini 3 models, else a budget (``REASONING_BUDGETS``); ``none`` →
  ``thinkingBudget: 0``. ``includeThoughts`` is asked for with either, so thought summaries come back
  as reasoning text.
- Thought signatures: Gemini signs its reasoning on the *part* that follows it (a ``functionCall``, a
  text part, a thought part) and wants each signature back on the same part of the same turn (Gemini 3
  refuses a function call of the current turn without it). In the IR a signature is a signature-only
  ``ThinkingPart`` (OpenAI clients carry it in ``thinking_blocks``); which part it belongs to rides in
  the signature string after the base64 (``#fc:<call id>`` for a function call, ``#th`` for a thought
  part, ``#tx`` for text), since the OpenAI dialect cannot keep the order of parts. A signature without
  one of these marks is another provider's (Anthropic's) and is not sent: Gemini would refuse it.
  ``signature_target`` / ``_with_target`` are the only places that know this form. Gemini 3 refuses an
  unsigned call of the current turn: calls another provider made get ``SKIP_SIGNATURE``.
- Sampling passes (``temperature``, ``topP``, ``topK``, ``seed``, the penalties, ``stopSequences``);
  ``max_tokens`` → ``maxOutputTokens``; ``n > 1`` is refused (400): one candidate is translated.
"""

from __future__ import annotations

import hashlib
import mimetypes
from typing import Any, Final

import msgspec

from gateway import ir
from gateway._core.sse import SSEScanner, event_data, split_events
from gateway.errors import BadRequest
from gateway.providers.schemas import gemini as wire

__all__ = [
    "BLOCK_REASONS",
    "ERROR_STATUSES",
    "FINISH_REASONS",
    "OPENAPI_SCHEMA_KEYS",
    "REASONING_BUDGETS",
    "SKIP_SIGNATURE",
    "GeminiStream",
    "build_request",
    "embed_request",
    "encode_request",
    "error_from_response",
    "openapi_compatible",
    "predict_request",
    "provider_error",
    "response_from_body",
    "response_from_wire",
    "signature_target",
    "usage_from_wire",
    "vectors_from_embed",
    "vectors_from_predict",
]

#: OpenAI ``reasoning_effort`` → Gemini 2.5 ``thinkingBudget`` (Google's own OpenAI-compatible mapping)
REASONING_BUDGETS: Final[dict[str, int]] = {
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
}
#: effort words Gemini 3's ``thinkingLevel`` takes as they are (``xhigh`` is its ``high``)
_LEVELS: Final = {"minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}

#: Gemini ``finishReason`` → IR stop reason; None: an error (``_FINISH_ERRORS``), not an answer
FINISH_REASONS: Final[dict[str, ir.StopReason | None]] = {
    "STOP": ir.StopReason.END_TURN,
    "FINISH_REASON_UNSPECIFIED": ir.StopReason.END_TURN,
    "OTHER": ir.StopReason.END_TURN,
    "MAX_TOKENS": ir.StopReason.MAX_TOKENS,
    "SAFETY": ir.StopReason.REFUSAL,
    "RECITATION": ir.StopReason.REFUSAL,
    "LANGUAGE": ir.StopReason.REFUSAL,
    "BLOCKLIST": ir.StopReason.REFUSAL,
    "PROHIBITED_CONTENT": ir.StopReason.REFUSAL,
    "SPII": ir.StopReason.REFUSAL,
    "IMAGE_SAFETY": ir.StopReason.REFUSAL,
    "IMAGE_PROHIBITED_CONTENT": ir.StopReason.REFUSAL,
    "IMAGE_RECITATION": ir.StopReason.REFUSAL,
    "MALFORMED_FUNCTION_CALL": None,
    "UNEXPECTED_TOOL_CALL": None,
    "TOO_MANY_TOOL_CALLS": None,
}
#: the finish reasons that are a failed answer: the model produced a function call that does not parse
#: (or one it was not offered). Sampling differs per attempt, so these are retryable (routing may retry
#: or fail over).
_FINISH_ERRORS: Final[dict[str, str]] = {
    "MALFORMED_FUNCTION_CALL": "the model produced a malformed function call",
    "UNEXPECTED_TOOL_CALL": "the model called a tool it was not offered",
    "TOO_MANY_TOOL_CALLS": "the model made too many tool calls in a row",
}
#: ``promptFeedback.blockReason`` (the prompt was blocked: no candidates): an OpenAI content-filter error
BLOCK_REASONS: Final = frozenset(
    {"SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY", "BLOCK_REASON_UNSPECIFIED"}
)

#: google.rpc ``status`` → (status for the client, OpenAI error type, code, retryable). The gateway's own
#: upstream credentials, quota project or setup (401/403/404, FAILED_PRECONDITION) are the operator's
#: problem, not the client's: they surface as 502.
ERROR_STATUSES: Final[dict[str, tuple[int, str, str, bool]]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error", "invalid_request", False),
    "OUT_OF_RANGE": (400, "invalid_request_error", "invalid_request", False),
    "FAILED_PRECONDITION": (502, "upstream_error", "upstream_precondition", False),
    "UNAUTHENTICATED": (502, "upstream_error", "upstream_authentication", False),
    "PERMISSION_DENIED": (502, "upstream_error", "upstream_permission", False),
    "NOT_FOUND": (502, "upstream_error", "upstream_not_found", False),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error", "rate_limit_exceeded", True),
    "ABORTED": (502, "upstream_error", "upstream_error", True),
    "CANCELLED": (502, "upstream_error", "upstream_error", True),
    "INTERNAL": (502, "upstream_error", "upstream_error", True),
    "UNKNOWN": (502, "upstream_error", "upstream_error", True),
    "UNAVAILABLE": (503, "server_error", "upstream_overloaded", True),
    "DEADLINE_EXCEEDED": (504, "upstream_error", "upstream_timeout", True),
}
_BY_HTTP: Final[dict[int, str]] = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_JSON_MIME: Final = "application/json"
_CALL_MARK: Final = "#fc:"
_THOUGHT_MARK: Final = "#th"
_TEXT_MARK: Final = "#tx"
#: prefix of the tool-call ids the gateway makes up for calls Gemini gave no id (never sent back as ids)
_GEN_ID: Final = "call_g"
#: the signature Google documents for a function call that never had one (a conversation begun on another
#: provider or model): Gemini 3 skips its check for it instead of refusing the turn
SKIP_SIGNATURE: Final = "skip_thought_signature_validator"
_encode_json: Final = msgspec.json.Encoder().encode
_decode_obj: Final = msgspec.json.Decoder(dict[str, Any])
_decode_any: Final = msgspec.json.Decoder()


# ---- thought signatures --------------------------------------------------------------------------


def signature_target(signature: str) -> tuple[str, str, str | None]:
    """(raw signature, target kind ``text``/``call``/``thought``, call id) of an IR signature; kind
    ``foreign`` for a signature with no mark: another provider's (Anthropic's), never sent to Gemini."""
    raw, sep, call_id = signature.partition(_CALL_MARK)
    if sep:
        return raw, "call", call_id
    for mark, kind in ((_THOUGHT_MARK, "thought"), (_TEXT_MARK, "text")):
        if signature.endswith(mark):
            return signature[: -len(mark)], kind, None
    return signature, "foreign", None


def _with_target(signature: str, kind: str, call_id: str | None = None) -> str:
    if kind == "call":
        return f"{signature}{_CALL_MARK}{call_id}"
    return signature + (_THOUGHT_MARK if kind == "thought" else _TEXT_MARK)


def _call_id(seed: str, n: int) -> str:
    digest = hashlib.blake2b(f"{seed}:{n}".encode(), digest_size=12).hexdigest()
    return f"{_GEN_ID}{digest}"


# ---- tool schemas --------------------------------------------------------------------------------
#
# ``functionDeclarations[].parameters`` takes Gemini's ``Schema`` (an OpenAPI 3.0 subset) and answers 400
# "Invalid JSON payload received. Unknown name ..." for any other keyword; ``parametersJsonSchema`` takes
# JSON Schema as clients write it. A schema that uses only what ``Schema`` knows goes as ``parameters``
# (every model and both APIs take it); any other goes whole as ``parametersJsonSchema``: nothing dropped.

OPENAPI_SCHEMA_KEYS: Final = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example",
    "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
})
_TYPES: Final = frozenset({"string", "number", "integer", "boolean", "array", "object"})
_FORMATS: Final = {
    "string": frozenset({"enum", "date-time"}),
    "integer": frozenset({"int32", "int64"}),
    "number": frozenset({"float", "double"}),
}


def openapi_compatible(schema: Any, depth: int = 0) -> bool:
    """Whether ``schema`` uses only what Gemini's ``Schema`` (``parameters``) accepts."""
    if not isinstance(schema, dict) or depth > 64:
        return False
    if not schema.keys() <= OPENAPI_SCHEMA_KEYS:
        return False
    kind = schema.get("type")
    if kind is not None and not (isinstance(kind, str) and kind in _TYPES):
        return False  # a list of types is JSON Schema's, not the Schema's (it has ``nullable``)
    fmt = schema.get("format")
    if fmt is not None and not (isinstance(fmt, str) and fmt in _FORMATS.get(kind or "", ())):
        return False
    enum = schema.get("enum")
    if enum is not None and not (isinstance(enum, list) and all(isinstance(v, str) for v in enum)):
        return False
    props = schema.get("properties")
    if props is not None and not (
        isinstance(props, dict) and all(openapi_compatible(v, depth + 1) for v in props.values())
    ):
        return False
    if "items" in schema and not openapi_compatible(schema["items"], depth + 1):
        return False
    any_of = schema.get("anyOf")
    if any_of is None:
        return True
    return isinstance(any_of, list) and all(openapi_compatible(v, depth + 1) for v in any_of)


def _declaration(tool: ir.Tool) -> wire.FunctionDeclaration:
    schema = tool.parameters
    if not schema or schema == {"type": "object", "properties": {}}:
        return wire.FunctionDeclaration(tool.name, tool.description)  # Gemini refuses empty properties
    if openapi_compatible(schema):
        return wire.FunctionDeclaration(tool.name, tool.description, parameters=schema)
    return wire.FunctionDeclaration(tool.name, tool.description, parameters_json_schema=schema)


# ---- request -------------------------------------------------------------------------------------


def _mime_of(url: str, default: str) -> str:
    guessed = mimetypes.guess_type(url.split("?", 1)[0])[0]
    return guessed or default


def _media_part(part: ir.ImagePart | ir.DocumentPart) -> wire.Part:
    if isinstance(part, ir.DocumentPart):
        if part.text is not None:
            return wire.Part(text=part.text)
        if part.file_id is not None:
            return wire.Part(file_data=wire.FileData(part.file_id, part.media_type))
    if part.data is not None:
        if not part.media_type:
            raise BadRequest("base64 data needs its media type", param="messages")
        return wire.Part(inline_data=wire.Blob(part.media_type, part.data))
    if part.url is None:
        raise BadRequest("an image or document needs a url or base64 data", param="messages")
    default = "image/jpeg" if isinstance(part, ir.ImagePart) else "application/pdf"
    return wire.Part(file_data=wire.FileData(part.url, part.media_type or _mime_of(part.url, default)))


def _args(part: ir.ToolCallPart) -> dict[str, Any]:
    try:
        return _decode_obj.decode(part.arguments) if part.arguments.strip() else {}
    except msgspec.MsgspecError:
        raise BadRequest(
            f"the arguments of tool call {part.id!r} are not a JSON object", param="messages"
        ) from None


def _model_parts(parts: list[ir.Part]) -> list[wire.Part]:
    """An assistant turn's parts, each signature back on the part it came with."""
    text_sigs: list[str] = []
    call_sigs: dict[str, str] = {}
    out: list[wire.Part] = []
    for p in parts:
        if isinstance(p, ir.ThinkingPart) and p.signature:
            raw, kind, call_id = signature_target(p.signature)
            if kind == "call" and call_id is not None:
                call_sigs[call_id] = raw
            elif kind == "thought":
                out.append(wire.Part(text=p.text, thought=True, thought_signature=raw))
            elif kind == "text":
                text_sigs.append(raw)
            # a foreign signature (another provider's reasoning) would be a corrupted one to Gemini
    texts: list[int] = []
    for p in parts:
        if isinstance(p, ir.TextPart):
            if p.text:
                texts.append(len(out))
                out.append(wire.Part(text=p.text))
        elif isinstance(p, ir.ToolCallPart):
            call = wire.FunctionCall(p.name, _args(p), None if p.id.startswith(_GEN_ID) else p.id)
            out.append(wire.Part(function_call=call, thought_signature=call_sigs.get(p.id)))
        elif isinstance(p, ir.ImagePart | ir.DocumentPart):
            out.append(_media_part(p))
        elif isinstance(p, ir.OpaquePart) and p.provider == "gemini":
            out.append(msgspec.convert(p.raw, wire.Part))
    # unsigned thinking (summaries, another provider's reasoning) and redacted thinking: not sent
    for sig in text_sigs:
        if texts:
            i = texts[-1]
            out[i] = msgspec.structs.replace(out[i], thought_signature=sig)
        else:
            out.append(wire.Part(text="", thought_signature=sig))
    return out


def _result_part(part: ir.ToolResultPart, names: dict[str, str]) -> list[wire.Part]:
    name = names.get(part.tool_call_id)
    if name is None:
        raise BadRequest(
            f"the tool result for {part.tool_call_id!r} answers no tool call of the conversation",
            param="messages",
        )
    text = "".join(p.text for p in part.content if isinstance(p, ir.TextPart))
    response: dict[str, Any]
    if part.is_error:
        response = {"error": text}
    else:
        try:
            response = _decode_obj.decode(text) if text.lstrip().startswith("{") else {"result": text}
        except msgspec.MsgspecError:
            response = {"result": text}
    call_id = None if part.tool_call_id.startswith(_GEN_ID) else part.tool_call_id
    out = [wire.Part(function_response=wire.FunctionResponse(name, response, call_id))]
    out += [_media_part(p) for p in part.content if isinstance(p, ir.ImagePart | ir.DocumentPart)]
    return out


def _user_parts(msg: ir.Message, names: dict[str, str]) -> list[wire.Part]:
    out: list[wire.Part] = []
    for p in msg.content:
        if isinstance(p, ir.TextPart):
            if p.text:
                out.append(wire.Part(text=p.text))
        elif isinstance(p, ir.ImagePart | ir.DocumentPart):
            out.append(_media_part(p))
        elif isinstance(p, ir.ToolResultPart):
            out += _result_part(p, names)
    return out


def _contents(messages: list[ir.Message]) -> tuple[wire.Content | None, list[wire.Content]]:
    system: list[wire.Part] = []
    i = 0
    while i < len(messages) and messages[i].role in ("system", "developer"):
        system += [wire.Part(text=p.text) for p in messages[i].content
                   if isinstance(p, ir.TextPart) and p.text]
        i += 1
    names: dict[str, str] = {}
    turns: list[tuple[str, list[wire.Part]]] = []
    for msg in messages[i:]:
        if msg.role in ("system", "developer"):
            text = "\n".join(p.text for p in msg.content if isinstance(p, ir.TextPart))
            role, parts = "user", [wire.Part(text=f"<system>\n{text}\n</system>")]
        elif msg.role == "assistant":
            for p in msg.content:
                if isinstance(p, ir.ToolCallPart):
                    names[p.id] = p.name
            role, parts = "model", _model_parts(msg.content)
        else:
            role, parts = "user", _user_parts(msg, names)
        if not parts:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(parts)
        else:
            turns.append((role, parts))
    if not turns:
        raise BadRequest("the conversation has no user or assistant content", param="messages")
    instruction = wire.Content(system) if system else None
    return instruction, [wire.Content(parts, role) for role, parts in turns]


def _tool_config(req: ir.Request) -> wire.ToolConfig | None:
    tc = req.tool_choice
    if not req.tools or tc is None or tc.mode == "auto":
        return None
    if tc.mode == "none":
        return wire.ToolConfig(wire.FunctionCallingConfig("NONE"))
    if tc.mode == "named":
        if tc.name not in {t.name for t in req.tools}:
            raise BadRequest(f"tool_choice names {tc.name!r}, which is not in tools", param="tool_choice")
        return wire.ToolConfig(wire.FunctionCallingConfig("ANY", [tc.name]))
    return wire.ToolConfig(wire.FunctionCallingConfig("ANY"))


def _thinking(req: ir.Request, model: str) -> wire.ThinkingConfig | None:
    r = req.reasoning
    if r is None:
        return None
    if r.budget_tokens is not None:
        return wire.ThinkingConfig(True, thinking_budget=r.budget_tokens)
    if r.effort is None:
        return None
    if r.effort == "none":
        return wire.ThinkingConfig(thinking_budget=0)
    if r.effort not in REASONING_BUDGETS:
        raise BadRequest(f"unknown reasoning_effort {r.effort!r}", param="reasoning_effort")
    if model.rpartition("/")[2].startswith("gemini-3"):
        return wire.ThinkingConfig(True, thinking_level=_LEVELS[r.effort])
    return wire.ThinkingConfig(True, thinking_budget=REASONING_BUDGETS[r.effort])


def _foreign_calls_signed(contents: list[wire.Content]) -> None:
    """Gemini 3 refuses a function call of the current turn (since the last user text) without a thought
    signature. A call another provider made never had one: its first call per model step gets the
    documented ``SKIP_SIGNATURE``. A call Gemini made (an id of ours) keeps what the client sent back: a
    signature the client dropped is refused by Gemini, not papered over."""
    start = 0
    for i, c in enumerate(contents):
        if c.role == "user" and any(p.text is not None or p.inline_data or p.file_data for p in c.parts):
            start = i
    for c in contents[start:]:
        if c.role != "model":
            continue
        for j, p in enumerate(c.parts):
            if p.function_call is not None:
                if p.thought_signature is None and not any(q.thought_signature for q in c.parts) \
                        and p.function_call.id is not None:  # our own ids are never sent (call_g...)
                    c.parts[j] = msgspec.structs.replace(p, thought_signature=SKIP_SIGNATURE)
                break


def build_request(req: ir.Request, model: str) -> wire.Request:
    """The ``generateContent`` request for ``req`` (the model is in the URL). Raises BadRequest."""
    if req.n is not None and req.n > 1:
        raise BadRequest("this model answers one choice at a time (n must be 1)", param="n")
    instruction, contents = _contents(req.messages)
    if model.rpartition("/")[2].startswith("gemini-3"):
        _foreign_calls_signed(contents)
    fmt = req.response_format
    mime = schema = None
    if fmt is not None and fmt.type != "text":
        mime = _JSON_MIME
        if fmt.type == "json_schema":
            if fmt.schema is None:
                raise BadRequest("response_format json_schema needs a schema", param="response_format")
            schema = fmt.schema
    config = wire.GenerationConfig(
        stop_sequences=req.stop or None,
        response_mime_type=mime,
        response_json_schema=schema,
        max_output_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        thinking_config=_thinking(req, model),
    )
    tools = [wire.Tool([_declaration(t) for t in req.tools])] if req.tools else None
    return wire.Request(
        contents=contents,
        system_instruction=instruction,
        tools=tools,
        tool_config=_tool_config(req),
        generation_config=config if config != _NO_CONFIG else None,
    )


_NO_CONFIG: Final = wire.GenerationConfig()


def encode_request(req: ir.Request, model: str) -> bytes:
    """``build_request`` as the JSON body."""
    return wire.encode(build_request(req, model))


# ---- answer --------------------------------------------------------------------------------------


def usage_from_wire(u: wire.UsageMetadata | None) -> ir.Usage:
    """Gemini usage → IR: the prompt count includes the cached tokens (split out, priced as cached
    input); thoughts are output tokens beside ``candidatesTokenCount`` (and its reasoning part)."""
    if u is None:
        return ir.Usage()
    cached = min(u.cached_content_token_count, u.prompt_token_count)
    return ir.Usage(
        input_tokens=u.prompt_token_count - cached + u.tool_use_prompt_token_count,
        output_tokens=u.candidates_token_count + u.thoughts_token_count,
        cache_read_tokens=cached,
        reasoning_tokens=u.thoughts_token_count,
    )


def provider_error(status_name: str | None, message: str, http_status: int) -> ir.ProviderError:
    """A Gemini error (by its google.rpc ``status``, else by the HTTP status) as the client sees it."""
    name = status_name or _BY_HTTP.get(http_status) or ""
    found = ERROR_STATUSES.get(name)
    if found is None:
        found = (502, "upstream_error", "upstream_error", http_status >= 500 or http_status == 408)
    status, type_, code, retryable = found
    low = message.lower()
    if code == "invalid_request" and ("exceeds the maximum number of tokens" in low
                                      or ("input token count" in low and "exceeds" in low)):
        code = "context_length_exceeded"
    return ir.ProviderError(status, type_, code, message, retryable, name or None)


def error_from_response(status: int, body: bytes) -> ir.ProviderError:
    """A non-2xx Gemini answer → IR error (429 RESOURCE_EXHAUSTED and 503 UNAVAILABLE retryable).

    An invalid API key is 400 INVALID_ARGUMENT with reason ``API_KEY_INVALID``: the operator's, so 502."""
    env = wire.decode_error(body)
    if env is None:
        text = body[:200].decode("utf-8", "replace")
        return provider_error(None, f"upstream answered {status}: {text}", status)
    err = env.error
    if any(isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in err.details or ()):
        return provider_error("UNAUTHENTICATED", err.message, status)
    return provider_error(err.status, err.message, status)


def _blocked(feedback: wire.PromptFeedback) -> ir.ProviderError:
    reason = feedback.block_reason or "BLOCK_REASON_UNSPECIFIED"
    detail = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
    return ir.ProviderError(
        400, "invalid_request_error", "content_filter",
        f"the prompt was blocked by the provider's safety system ({reason}){detail}",
        provider_type=reason,
    )


def _finish_error(reason: str, message: str | None) -> ir.ProviderError:
    text = _FINISH_ERRORS[reason] + (f": {message}" if message else "")
    return ir.ProviderError(502, "upstream_error", "upstream_" + reason.lower(), text, True, reason)


def _part(p: wire.Part, seed: str, n: int) -> tuple[list[ir.Part], int]:
    """The IR parts of one Gemini part (a signature becomes a signature-only thinking part next to its
    part) and the count of tool calls so far."""
    sig = p.thought_signature
    if p.function_call is not None:
        fc = p.function_call
        call_id = fc.id or _call_id(seed, n)
        call = ir.ToolCallPart(call_id, fc.name, _encode_json(fc.args or {}).decode())
        if sig:
            return [ir.ThinkingPart("", _with_target(sig, "call", call_id)), call], n + 1
        return [call], n + 1
    if p.text is not None and p.thought:
        return [ir.ThinkingPart(p.text, _with_target(sig, "thought") if sig else None)], n
    if p.text is not None:
        out: list[ir.Part] = [ir.TextPart(p.text)] if p.text else []
        if sig:
            out.append(ir.ThinkingPart("", _with_target(sig, "text")))
        return out, n
    if sig and p == wire.Part(thought_signature=sig):
        return [ir.ThinkingPart("", _with_target(sig, "text"))], n
    return [ir.OpaquePart("gemini", msgspec.to_builtins(p))], n


def _stop(reason: str | None, calls: bool) -> ir.StopReason:
    stop = FINISH_REASONS.get(reason or "STOP", ir.StopReason.END_TURN) or ir.StopReason.END_TURN
    return ir.StopReason.TOOL_USE if calls and stop is ir.StopReason.END_TURN else stop


def response_from_wire(resp: wire.GenerateContentResponse) -> ir.Response | ir.ProviderError:
    """A whole Gemini answer → IR answer, or the error it stands for (a blocked prompt, a malformed call)."""
    seed = resp.response_id or ""
    if not resp.candidates:
        if resp.prompt_feedback is not None and resp.prompt_feedback.block_reason:
            return _blocked(resp.prompt_feedback)
        return ir.ProviderError(502, "upstream_error", "upstream_invalid_response",
                                "the upstream answered with no candidate", True)
    cand = resp.candidates[0]
    if cand.finish_reason in _FINISH_ERRORS:
        return _finish_error(cand.finish_reason, cand.finish_message)
    parts: list[ir.Part] = []
    n = 0
    for p in cand.content.parts if cand.content is not None else ():
        more, n = _part(p, seed, n)
        parts += more
    return ir.Response(
        id=resp.response_id or "",
        model=resp.model_version or "",
        content=parts,
        stop_reason=_stop(cand.finish_reason, n > 0),
        usage=usage_from_wire(resp.usage_metadata),
        stop_details={"finish_reason": cand.finish_reason, "finish_message": cand.finish_message}
        if cand.finish_message else None,
    )


def response_from_body(body: bytes) -> ir.Response | ir.ProviderError:
    """``response_from_wire`` of a body. Raises msgspec.DecodeError/ValidationError."""
    return response_from_wire(wire.decode_response(body))


# ---- embeddings ----------------------------------------------------------------------------------


def embed_request(texts: list[str], model: str, dimensions: int | None) -> bytes:
    """The ``batchEmbedContents`` body (one request per input, in order)."""
    name = model if model.startswith("models/") else f"models/{model}"
    return wire.encode(wire.BatchEmbedRequest([
        wire.EmbedRequest(wire.Content([wire.Part(text=t)]), name, output_dimensionality=dimensions)
        for t in texts
    ]))


def predict_request(texts: list[str], dimensions: int | None) -> bytes:
    """The Vertex AI text-embeddings ``predict`` body."""
    params = wire.PredictParameters(dimensions) if dimensions is not None else None
    return wire.encode(wire.PredictRequest([wire.PredictInstance(t) for t in texts], params))


def vectors_from_embed(body: bytes) -> list[list[float]]:
    """The vectors of an ``embedContent`` / ``batchEmbedContents`` answer, in input order."""
    r = wire.decode_embed(body)
    if r.embeddings is not None:
        return [e.values for e in r.embeddings]
    if r.embedding is not None:
        return [r.embedding.values]
    raise msgspec.ValidationError("no embedding in the answer")


def vectors_from_predict(body: bytes) -> tuple[list[list[float]], int]:
    """The vectors of a Vertex ``predict`` answer and the tokens it counted."""
    r = wire.decode_predict(body)
    return [p.embeddings.values for p in r.predictions], sum(
        p.embeddings.statistics.token_count for p in r.predictions)


# ---- the stream state machine --------------------------------------------------------------------
#
# Theory of operation. ``streamGenerateContent?alt=sse`` sends ``data: <GenerateContentResponse>`` events
# (CRLF-terminated), each a whole answer *so far in pieces*: the candidate's new parts, and usually the
# usage so far (absolute, not a delta). Text and thought text arrive piecewise; a ``functionCall`` part
# arrives whole (its arguments complete); parallel calls are separate parts, in one chunk or several. The
# last chunk has ``finishReason`` (and the final usage); there is no end marker: the body ends. An error
# after the head is an ``{"error": {...}}`` event.
#
#   state     chunk                                  → emits                                    next
#   IDLE      first chunk                              MessageStart, then as MESSAGE              MESSAGE
#   MESSAGE   text part                                BlockStart(text) if none open, BlockDelta  MESSAGE
#   MESSAGE   thought part                             BlockStart(thinking) if none open, delta   MESSAGE
#   MESSAGE   functionCall part                        BlockStart(tool_call), arguments, Stop     MESSAGE
#   MESSAGE   a part's thoughtSignature                a signature-only thinking block            MESSAGE
#   MESSAGE   usageMetadata                            UsageUpdate (latest wins)                  MESSAGE
#   MESSAGE   finishReason                             (kept; blocks close at the end)            FINISHED
#   FINISHED  more usage / empty parts                 UsageUpdate                                FINISHED
#   any       {"error"}, blocked prompt, MALFORMED_*   StreamError                                FAILED
#   end of body in FINISHED                            BlockStop of the open block, MessageStop   DONE
#   end of body before                                 StreamError (the answer was cut)           FAILED
#
# Blocks are numbered by their place in the final content (one counter): a text block stays open across
# chunks until a part of another kind comes; each tool call is its own block, so the OpenAI encoder gives
# parallel calls their own ``index``. The stop waits for the end of the body because Gemini may report
# the final usage after the chunk with ``finishReason``.

IDLE: Final = "IDLE"
MESSAGE: Final = "MESSAGE"
FINISHED: Final = "FINISHED"
DONE: Final = "DONE"
FAILED: Final = "FAILED"


class GeminiStream:
    """Gemini SSE bytes in, IR stream events out: ``feed(chunk)`` per body chunk, then ``close()``."""

    __slots__ = (
        "_calls", "_finish", "_next", "_open", "_open_kind", "_scanner", "_seed", "_usage", "_wire_usage",
        "state",
    )

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._scanner = SSEScanner(max_event_bytes)
        self.state = IDLE
        self._usage = ir.Usage()
        #: the last ``usageMetadata`` seen (the figures repeat in every chunk: converted when they move)
        self._wire_usage: wire.UsageMetadata | None = None
        #: the open text or thinking block: its index and kind (-1: none)
        self._open = -1
        self._open_kind = ""
        self._next = 0
        self._calls = 0
        self._seed = ""
        self._finish: str | None = None

    @property
    def usage(self) -> ir.Usage:
        return self._usage

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]:
        out: list[ir.StreamEvent] = []
        try:
            data = self._scanner.feed(chunk)
        except ValueError as e:
            return self._fail(out, str(e))
        if data:
            for event in split_events(data):
                self._event(event, out)
        return out

    def close(self) -> list[ir.StreamEvent]:
        out: list[ir.StreamEvent] = []
        tail = self._scanner.pending
        if tail.strip():
            self._scanner = SSEScanner(self._scanner.max_event_bytes)
            self._event(tail, out)
        if self.state == FINISHED:
            self._close_open(out)
            out.append(ir.MessageStop(_stop(self._finish, self._calls > 0)))
            self.state = DONE
        elif self.state in (IDLE, MESSAGE):
            self._fail(out, "the upstream stream ended before the answer was complete")
        return out

    def _fail(self, out: list[ir.StreamEvent], message: str) -> list[ir.StreamEvent]:
        if self.state not in (FAILED, DONE):
            err = ir.ProviderError(502, "upstream_error", "bad_gateway", message, retryable=True)
            self._error(out, err)
        return out

    def _error(self, out: list[ir.StreamEvent], err: ir.ProviderError) -> None:
        self.state = FAILED
        out.append(ir.StreamError(err))

    def _event(self, event: bytes, out: list[ir.StreamEvent]) -> None:
        if self.state in (FAILED, DONE):
            return
        data = event_data(event)
        if not data or (data[0] != 123 and not data.strip()):  # PERF: data is usually a JSON object
            return
        if data.find(b'"error"') >= 0:  # PERF: an error event is decoded as one only when it can be one
            env = wire.decode_error(data)
            if env is not None:
                self._error(out, provider_error(env.error.status, env.error.message, env.error.code))
                return
        try:
            chunk = wire.decode_response(data)
        except msgspec.ValidationError:
            self._fail(out, "the upstream sent a malformed stream event")
            return
        except (msgspec.DecodeError, RecursionError):
            self._fail(out, "the upstream sent a stream event that is not JSON")
            return
        self._chunk(chunk, out)

    def _chunk(self, chunk: wire.GenerateContentResponse, out: list[ir.StreamEvent]) -> None:
        # PERF: the common chunk mid-answer, one plain text part on the open text block, is a delta
        # without the general walk below (it emits what ``_part`` would: the one BlockDelta)
        cands = chunk.candidates
        if cands and self.state is MESSAGE and self._open_kind == "text" and self._open >= 0:
            first = cands[0]
            content = first.content
            if first.finish_reason is None and content is not None and len(content.parts) == 1:
                p = content.parts[0]
                if p.text and p.function_call is None and not p.thought and not p.thought_signature:
                    out.append(ir.BlockDelta(self._open, "text", p.text))
                    if chunk.usage_metadata is not None:
                        self._usage_update(chunk.usage_metadata, out)
                    return
        self._any_chunk(chunk, out)

    def _any_chunk(self, chunk: wire.GenerateContentResponse, out: list[ir.StreamEvent]) -> None:
        """``_chunk`` of any shape (the general path)."""
        # a failed answer fails before anything of it is emitted (a stream refused at its first event
        # is one routing may still send elsewhere)
        if not chunk.candidates and chunk.prompt_feedback is not None and chunk.prompt_feedback.block_reason:
            self._error(out, _blocked(chunk.prompt_feedback))
            return
        cand = chunk.candidates[0] if chunk.candidates else None
        if cand is not None and cand.finish_reason in _FINISH_ERRORS:
            self._error(out, _finish_error(cand.finish_reason, cand.finish_message))
            return
        if self.state == IDLE:
            self._seed = chunk.response_id or ""
            self._usage = usage_from_wire(chunk.usage_metadata)
            self._wire_usage = chunk.usage_metadata
            out.append(ir.MessageStart(chunk.response_id or "", chunk.model_version or "", self._usage))
            self.state = MESSAGE
        if cand is not None:
            if self.state == MESSAGE:
                for p in cand.content.parts if cand.content is not None else ():
                    self._part(p, out)
            if cand.finish_reason is not None:
                self._finish = cand.finish_reason
                self.state = FINISHED
        if chunk.usage_metadata is not None:
            self._usage_update(chunk.usage_metadata, out)

    def _usage_update(self, u: wire.UsageMetadata, out: list[ir.StreamEvent]) -> None:
        # PERF: Gemini repeats the figures in every chunk: converted only when the wire figures move, and
        # an update only when the IR figures do
        if u == self._wire_usage:
            return
        self._wire_usage = u
        usage = usage_from_wire(u)
        if usage != self._usage:
            self._usage = usage
            out.append(ir.UsageUpdate(usage))

    def _close_open(self, out: list[ir.StreamEvent]) -> None:
        if self._open >= 0:
            out.append(ir.BlockStop(self._open))
            self._open = -1

    def _block(self, kind: str, out: list[ir.StreamEvent], **fields: Any) -> int:
        self._close_open(out)
        i = self._next
        self._next += 1
        out.append(ir.BlockStart(i, kind, **fields))  # type: ignore[arg-type]
        return i

    def _signature(self, signature: str, out: list[ir.StreamEvent]) -> None:
        i = self._block("thinking", out)
        out += [ir.BlockDelta(i, "signature", signature), ir.BlockStop(i)]

    def _text(self, kind: str, text: str, out: list[ir.StreamEvent]) -> None:
        if self._open < 0 or self._open_kind != kind:
            self._open = self._block(kind, out)
            self._open_kind = kind
        if text:
            out.append(ir.BlockDelta(self._open, "text" if kind == "text" else "thinking", text))

    def _part(self, p: wire.Part, out: list[ir.StreamEvent]) -> None:
        sig = p.thought_signature
        if p.function_call is not None:
            fc = p.function_call
            call_id = fc.id or _call_id(self._seed, self._calls)
            self._calls += 1
            if sig:
                self._signature(_with_target(sig, "call", call_id), out)
            i = self._block("tool_call", out, id=call_id, name=fc.name)
            out += [ir.BlockDelta(i, "arguments", _encode_json(fc.args or {}).decode()), ir.BlockStop(i)]
        elif p.text is not None and p.thought:
            self._text("thinking", p.text, out)
            if sig:
                out.append(ir.BlockDelta(self._open, "signature", _with_target(sig, "thought")))
                self._close_open(out)
        elif p.text is not None:
            if p.text:
                self._text("text", p.text, out)
            if sig:
                self._signature(_with_target(sig, "text"), out)
        elif sig:
            self._signature(_with_target(sig, "text"), out)
        # other parts (executableCode, inline images...) have no OpenAI stream form: skipped
