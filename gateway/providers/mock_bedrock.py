"""The mock LLM in Amazon Bedrock Runtime's wire format: ``gateway mock --dialect bedrock``.

Serves ``POST /model/{modelId}/converse`` (a Converse answer), ``POST /model/{modelId}/converse-stream``
(``application/vnd.amazon.eventstream``, AWS's binary event-stream framing: prelude, typed headers,
payload, CRC32s), ``POST /model/{modelId}/invoke`` for the Titan and Cohere embedding models, and
``GET /healthz``, with the shapes of botocore's ``bedrock-runtime`` service model (the tests validate
every request with botocore's ``ParamValidator`` and every event against ``ConverseStreamOutput``).
What it says (text, schema-valid JSON, tool calls, replies to tool results) is ``mock_content``'s, as in
every dialect; the failure directives are the same, with errors in Bedrock's shape (``{"message"}`` and
an ``x-amzn-ErrorType`` header).

Theory of operation
-------------------
``BedrockMock.plan`` checks the credential first, as AWS does: every request needs an ``Authorization``
header, either a Bedrock API key (``Bearer KEY``) or a SigV4 signature of the right shape
(``AWS4-HMAC-SHA256 Credential=KEY_ID/YYYYMMDD/REGION/bedrock/aws4_request, SignedHeaders=...,
Signature=<64 hex>``, an ``x-amz-date`` of the same day, ``host`` and ``x-amz-date`` among the signed
headers). With ``--api-key`` the key id (or the bearer token) must be that key; when the mock's own
environment has ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` for the request's key id, the signature
itself is recomputed with botocore and must match. Then the body is decoded (the fields the mock acts on),
checked as Bedrock checks it (400 ``ValidationException``), the directives applied, and a ``_Plan`` built.

The stream is ``messageStart``; per block ``contentBlockStart`` (tool use only: Bedrock sends none for
text and reasoning), ``contentBlockDelta``... and ``contentBlockStop``; ``messageStop`` (the stop reason);
``metadata`` (usage and metrics): each one event-stream message with ``:event-type``,
``:content-type: application/json`` and ``:message-type: event`` headers.

Cues in the last user message (besides ``!tool``): ``!guardrail`` answers Bedrock's blocked-input
message with ``stopReason: guardrail_intervened``; ``!exception NAME`` (``throttlingException``,
``serviceUnavailableException``, ``modelStreamErrorException``, ...) answers that error: as the HTTP error
of a Converse request, and in a stream as an exception message right after ``messageStart``; ``!cache
read`` reports the cached prefix as read instead of written. The cached prefix is every token up to the
last ``cachePoint`` block (tools, system, messages).
"""

from __future__ import annotations

import binascii
import hmac
import itertools
import os
import re
import struct
import uuid
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import msgspec

from gateway.providers import mock_content
from gateway.providers.mock import MAX_WORDS as _MAX_WORDS
from gateway.providers.mock import (
    MockApp,
    MockDirectiveError,
    MockDirectives,
    MockLLM,
    _Plan,
    parse_directives,
)
from gateway.providers.mock import _embedding as embedding_for
from gateway.providers.mock import _split_words as split_words
from gateway.providers.mock import _words_for as words_for
from gateway.providers.mock_anthropic import signature_for, signature_valid

if TYPE_CHECKING:
    from gateway.app import Request

__all__ = ["BedrockMock", "BedrockMockApp", "event_message"]

_JSON: Final = "application/json"
_EVENT_STREAM: Final = "application/vnd.amazon.eventstream"
_PATH: Final = re.compile(r"^/model/([^/]+)/(converse|converse-stream|invoke)$")
_AUTH: Final = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([A-Za-z0-9]+)/(\d{8})/([a-z0-9-]+)/bedrock/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$"
)
_TOOL_ID: Final = re.compile(r"^[a-zA-Z0-9_-]+$")
_GUARDRAIL_TEXT: Final = "Sorry, the model cannot answer this question."
_THINKING_WORDS: Final = 16
_NAMESPACE: Final = "http://internal.amazon.com/coral/com.amazon.bedrock/"

#: HTTP status of each error type, and the type a directive's status stands for
_ERROR_STATUS: Final[dict[str, int]] = {
    "ValidationException": 400, "AccessDeniedException": 403, "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403, "IncompleteSignatureException": 403,
    "MissingAuthenticationTokenException": 403, "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408, "ModelErrorException": 424, "ThrottlingException": 429,
    "ModelNotReadyException": 429, "InternalServerException": 500, "ServiceUnavailableException": 503,
    "ModelStreamErrorException": 424, "ServiceQuotaExceededException": 400,
}
_TYPE_OF_STATUS: Final[dict[int, str]] = {
    400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
    408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
    500: "InternalServerException", 503: "ServiceUnavailableException",
}
_MESSAGES: Final[dict[str, str]] = {
    "ThrottlingException": "Too many requests, please wait before trying again.",
    "ServiceUnavailableException": "Bedrock is unable to process your request.",
    "ModelNotReadyException": "Model is not ready for inference. Wait and try your request again.",
    "ModelStreamErrorException": "The model stream failed.",
    "InternalServerException": "The server encountered an internal error.",
}


# --- event-stream framing (what botocore.eventstream parses) ---------------------------------------------


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (struct.pack("!B", len(raw_name)) + raw_name + b"\x07"
            + struct.pack("!H", len(raw_value)) + raw_value)


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total length, headers length, CRC32 of both), the headers (all
    strings, type 7), the payload, and the CRC32 of everything before it."""
    head = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack("!II", total, len(head))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + head + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def _event(event_type: str, payload: dict[str, Any]) -> bytes:
    return event_message({":event-type": event_type, ":content-type": _JSON, ":message-type": "event"},
                         _encode(payload))


def _exception(error_type: str, message: str) -> bytes:
    name = error_type[:1].lower() + error_type[1:]
    return event_message({":exception-type": name, ":content-type": _JSON, ":message-type": "exception"},
                         _encode({"message": message}))


# --- request wire types: the fields the mock acts on ----------------------------------------------------


class _Reasoning(msgspec.Struct):
    reasoningText: dict[str, Any] | None = None
    redactedContent: str | None = None


class _Block(msgspec.Struct):
    text: str | None = None
    image: dict[str, Any] | None = None
    document: dict[str, Any] | None = None
    toolUse: dict[str, Any] | None = None
    toolResult: dict[str, Any] | None = None
    reasoningContent: _Reasoning | None = None
    cachePoint: dict[str, Any] | None = None


class _Message(msgspec.Struct):
    role: str
    content: list[_Block]


class _ToolSpec(msgspec.Struct):
    name: str
    inputSchema: dict[str, Any]
    description: str | None = None


class _Tool(msgspec.Struct):
    toolSpec: _ToolSpec | None = None
    cachePoint: dict[str, Any] | None = None


class _ToolConfig(msgspec.Struct):
    tools: list[_Tool]
    toolChoice: dict[str, Any] | None = None


class _Inference(msgspec.Struct):
    maxTokens: int | None = None
    temperature: float | None = None
    topP: float | None = None
    stopSequences: list[str] | None = None


class _Request(msgspec.Struct):
    messages: list[_Message]
    system: list[_Block] | None = None
    inferenceConfig: _Inference | None = None
    toolConfig: _ToolConfig | None = None
    outputConfig: dict[str, Any] | None = None
    additionalModelRequestFields: dict[str, Any] | None = None


_decode_request = msgspec.json.Decoder(_Request).decode
_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class _Invalid(Exception):
    """A request Bedrock would refuse: 400 ``ValidationException`` with this message."""


def _text(blocks: list[_Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.text is not None:
            out.append(b.text)
        elif b.toolResult is not None:
            contents = [c for c in b.toolResult.get("content", []) if isinstance(c, dict)]
            out += [str(c.get("text") or _encode(c.get("json")).decode()) for c in contents]
    return "\n".join(out)


def _check(req: _Request) -> None:
    if not req.messages:
        raise _Invalid("A conversation must start with a user message. Try again with a conversation that "
                       "starts with a user message.")
    if req.messages[0].role != "user":
        raise _Invalid("A conversation must start with a user message. Try again with a conversation that "
                       "starts with a user message.")
    tools = {t.toolSpec.name for t in (req.toolConfig.tools if req.toolConfig else []) if t.toolSpec}
    asked: set[str] = set()
    for a, b in itertools.pairwise(req.messages):
        if a.role == b.role:
            raise _Invalid("A conversation must alternate between user and assistant roles. Make sure the "
                           "conversation alternates between user and assistant roles and try again.")
    for i, m in enumerate(req.messages):
        if m.role not in ("user", "assistant"):
            raise _Invalid(f"1 validation error detected: Value '{m.role}' at "
                           f"'messages.{i + 1}.member.role' failed to satisfy constraint: Member must "
                           "satisfy enum value set: [user, assistant]")
        if not m.content:
            raise _Invalid(f"The content field in the Message object at messages.{i} is empty. Add a "
                           "ContentBlock object to the content field and try again.")
        _check_blocks(m, i, tools, asked, req.toolConfig is not None)
    inference = req.inferenceConfig
    if inference is not None and inference.maxTokens is not None and inference.maxTokens < 1:
        raise _Invalid("1 validation error detected: Value '0' at 'inferenceConfig.maxTokens' failed to "
                       "satisfy constraint: Member must have value greater than or equal to 1")
    choice = req.toolConfig.toolChoice if req.toolConfig else None
    if choice is not None and "tool" in choice and choice["tool"].get("name") not in tools:
        raise _Invalid("The tool specified in toolChoice is not defined in the tool configuration.")


def _check_blocks(m: _Message, i: int, tools: set[str], asked: set[str], has_config: bool) -> None:
    for block in m.content:
        if block.toolUse is not None or block.toolResult is not None:
            if not has_config:
                raise _Invalid("The toolConfig field must be defined when using toolUse and toolResult "
                               "content blocks.")
        if block.toolUse is not None:
            if not _TOOL_ID.match(str(block.toolUse.get("toolUseId", ""))):
                raise _Invalid(f"messages.{i}: toolUseId must match [a-zA-Z0-9_-]+")
            asked.add(block.toolUse["toolUseId"])
        if block.toolResult is not None and block.toolResult.get("toolUseId") not in asked:
            raise _Invalid(f"messages.{i}: the toolResult's toolUseId does not answer a toolUse of the "
                           "conversation.")
        r = block.reasoningContent
        if r is not None and r.reasoningText is not None:
            text = str(r.reasoningText.get("text", ""))
            if not signature_valid(text, str(r.reasoningText.get("signature") or "")):
                raise _Invalid(f"messages.{i}: Invalid signature in reasoningContent block")
        if block.text is not None and not block.text.strip():
            raise _Invalid(f"The text field in the ContentBlock object at messages.{i} is blank. Add text to "
                           "the text field, and try again.")


def _prompt_usage(req: _Request) -> tuple[int, int]:
    """(prompt tokens, tokens of the cached prefix: up to the last cachePoint)."""
    total = cached = 0
    for tool in req.toolConfig.tools if req.toolConfig else []:
        if tool.toolSpec is not None:
            total += len(tool.toolSpec.name) + len(_encode(tool.toolSpec.inputSchema))
        if tool.cachePoint is not None:
            cached = total
    for block in req.system or []:
        total += len(block.text or "")
        if block.cachePoint is not None:
            cached = total
    for m in req.messages:
        total += 16
        for block in m.content:
            total += len(_text([block]))
            if block.cachePoint is not None:
                cached = total
    return max(1, total // 4), cached // 4


def _tool_result(req: _Request) -> tuple[str | None, str] | None:
    last = req.messages[-1]
    results = [b.toolResult for b in last.content if b.toolResult is not None]
    if last.role != "user" or not results:
        return None
    wanted = results[-1].get("toolUseId")
    name = None
    for m in req.messages[:-1]:
        for b in m.content:
            if b.toolUse is not None and b.toolUse.get("toolUseId") == wanted:
                name = b.toolUse.get("name")
    return name, _text([_Block(toolResult=results[-1])])


def _choice(req: _Request) -> str:
    tc = req.toolConfig.toolChoice if req.toolConfig else None
    if tc is None or "auto" in tc:
        return "auto"
    if "any" in tc:
        return "required"
    return str(tc.get("tool", {}).get("name", ""))


def _schema(req: _Request) -> dict[str, Any] | None:
    fmt = (req.outputConfig or {}).get("textFormat")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    raw = fmt.get("structure", {}).get("jsonSchema", {}).get("schema")
    if not isinstance(raw, str):
        raise _Invalid("outputConfig.textFormat.structure.jsonSchema.schema must be a JSON schema document")
    try:
        schema = _decode_any(raw)
    except msgspec.DecodeError:
        raise _Invalid("The JSON schema in outputConfig is not valid JSON.") from None
    return schema if isinstance(schema, dict) else {"type": "object"}


class _Answer(msgspec.Struct):
    blocks: list[dict[str, Any]]
    stop_reason: str
    output_tokens: int


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    best = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text, False) if best < 0 else (text[:best], True)


def _answer(req: _Request, words_default: int) -> _Answer:
    last = req.messages[-1]
    last_user = _text(last.content) if last.role == "user" else None
    if last_user is not None and "!guardrail" in last_user.split():
        return _Answer([{"text": _GUARDRAIL_TEXT}], "guardrail_intervened", 0)
    seed = "\n".join(_text(m.content) for m in req.messages)
    blocks: list[dict[str, Any]] = []
    out_tokens = 0
    thinking = (req.additionalModelRequestFields or {}).get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        text = "Considering the request: " + " ".join(words_for("thinking:" + seed, _THINKING_WORDS))
        signed = {"text": text, "signature": signature_for(text)}
        blocks.append({"reasoningContent": {"reasoningText": signed}})
        out_tokens += _THINKING_WORDS + 3
    tools = [mock_content.ToolSpec(t.toolSpec.name, t.toolSpec.inputSchema.get("json"))
             for t in (req.toolConfig.tools if req.toolConfig else []) if t.toolSpec is not None]
    result = _tool_result(req)
    turn = mock_content.decide(seed=seed, last_user=None if result is not None else last_user, tools=tools,
                               choice=_choice(req), parallel=True, tool_result=result, schema=_schema(req),
                               json_mode=False, id_prefix="tooluse_")
    if turn is not None and turn.kind == "tools":
        for call in turn.calls:
            blocks.append({"toolUse": {"toolUseId": call.id, "name": call.name,
                                       "input": msgspec.json.decode(call.arguments)}})
            out_tokens += max(1, len(call.arguments) // 4)
        return _Answer(blocks, "tool_use", out_tokens)
    if turn is not None:
        blocks.append({"text": turn.text})
        return _Answer(blocks, "end_turn", out_tokens + max(1, len(turn.text) // 4))
    inference = req.inferenceConfig or _Inference()
    n, stop = min(words_default, _MAX_WORDS), "end_turn"
    if inference.maxTokens is not None and n > inference.maxTokens - out_tokens:
        n, stop = max(0, inference.maxTokens - out_tokens), "max_tokens"
    user = next((_text(m.content) for m in reversed(req.messages) if m.role == "user"), "")
    text, cut = _cut_at_stop(" ".join(words_for(user, n)), inference.stopSequences or [])
    if cut:
        stop = "stop_sequence"
    blocks.append({"text": text})
    return _Answer(blocks, stop, out_tokens + len(text.split()))


# --- the mock ------------------------------------------------------------------------------------------


class BedrockMock:
    """Plans answers to Bedrock Runtime requests (see the module docstring)."""

    def __init__(self, llm: MockLLM, api_key: str | None = None) -> None:
        self.llm = llm
        self.api_key = api_key
        #: the secret of the key id in the mock's environment, to verify whole signatures with
        self._secrets: dict[str, str] = {}
        key_id, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key_id and secret:
            self._secrets[key_id] = secret

    def error(self, error_type: str, message: str, extra: list[tuple[str, str]] | None = None) -> _Plan:
        """An error in Bedrock's shape."""
        status = _ERROR_STATUS.get(error_type, 500)
        headers = [("content-type", _JSON), ("x-amzn-requestid", str(uuid.uuid4())),
                   ("x-amzn-errortype", f"{error_type}:{_NAMESPACE}"), *(extra or [])]
        return _Plan(status, headers, (_encode({"message": message}),), (False,))

    def _headers(self, content_type: str = _JSON) -> list[tuple[str, str]]:
        return [("content-type", content_type), ("x-amzn-requestid", str(uuid.uuid4()))]

    def plan(self, request: Request) -> _Plan:
        """The plan for one HTTP request."""
        if request.path == "/healthz":
            return _Plan(200, [("content-type", _JSON)], (b'{"status":"ok"}',), (False,))
        denied = self._auth(request)
        if denied is not None:
            return denied
        m = _PATH.match(request.path)
        if m is None:
            return self.error("UnknownOperationException", "Unknown operation")
        if request.method != "POST":
            return self.error("ValidationException", f"Method {request.method} not allowed")
        model, operation = unquote(m.group(1)), m.group(2)
        x_mock = request.header(b"x-mock")
        header = None if x_mock is None else x_mock.decode("latin-1")
        if operation == "invoke":
            return self._invoke(model, request.body, header)
        return self._converse(model, request.body, header, stream=operation == "converse-stream")

    # -- credentials -----------------------------------------------------------------------------------

    def _auth(self, request: Request) -> _Plan | None:
        raw = request.header(b"authorization")
        if raw is None:
            return self.error("MissingAuthenticationTokenException", "Missing Authentication Token")
        auth = raw.decode("latin-1")
        if auth.startswith("Bearer "):
            if self.api_key is not None and auth[7:] != self.api_key:
                return self.error("UnrecognizedClientException", "Invalid API Key format: Must start with "
                                  "pre-defined prefix")
            return None
        m = _AUTH.match(auth)
        if m is None:
            return self.error("IncompleteSignatureException", f"Authorization header requires 'Credential', "
                              f"'Signature' and 'SignedHeaders' parameters. Authorization={auth[:40]}")
        key_id, day, _region, signed, signature = m.groups()
        amz_date = (request.header(b"x-amz-date") or b"").decode("latin-1")
        names = signed.split(";")
        if not amz_date.startswith(day) or "host" not in names or "x-amz-date" not in names:
            return self.error("IncompleteSignatureException", "The request signature is incomplete: "
                              "the credential scope's date must be the x-amz-date's, and host and x-amz-date "
                              "signed")
        if self.api_key is not None and key_id != self.api_key:
            return self.error("UnrecognizedClientException", "The security token included in the request is "
                              "invalid.")
        secret = self._secrets.get(key_id)
        if secret is not None and not _signature_matches(request, key_id, secret, _region, names, amz_date,
                                                          signature):
            return self.error("InvalidSignatureException", "The request signature we calculated does "
                              "not match the signature you provided. Check your AWS Secret Access Key and "
                              "signing method. Consult the service documentation for details.")
        return None

    # -- converse -----------------------------------------------------------------------------------

    def _directives(self, header: str | None, text: str) -> MockDirectives:
        d = parse_directives(header, require_prefix=False) if header else MockDirectives()
        return d.merged(parse_directives(text))

    def _injected(self, d: MockDirectives) -> _Plan | None:
        if d.status is None or d.status < 400:
            return None
        kind = _TYPE_OF_STATUS.get(d.status, "InternalServerException")
        extra = [("retry-after", str(int(d.retry_after or 1)))] if d.status == 429 else []
        plan = self.error(kind, _MESSAGES.get(kind, f"mock: injected HTTP {d.status}"), extra)
        plan.status = d.status
        return plan

    def _converse(self, model: str, body: bytes, header: str | None, *, stream: bool) -> _Plan:
        try:
            req = _decode_request(body)
            _check(req)
        except msgspec.ValidationError as exc:
            return self.error("ValidationException", f"Malformed input request: {exc}, please reformat your "
                              "input and try again.")
        except msgspec.DecodeError:
            return self.error("ValidationException", "Malformed input request, please reformat your input "
                              "and try again.")
        except _Invalid as exc:
            return self.error("ValidationException", str(exc))
        last = _text(req.messages[-1].content)
        try:
            d = self._directives(header, last)
        except MockDirectiveError as exc:
            return self.error("ValidationException", str(exc))
        injected = self._injected(d)
        if injected is not None:
            return self.llm.timed(injected, d)
        words = last.split()
        exception = words[words.index("!exception") + 1] if "!exception" in words[:-1] else None
        if exception is not None and not stream:
            name = exception[:1].upper() + exception[1:]
            return self.llm.timed(self.error(name, _MESSAGES.get(name, f"mock: {name}")), d)
        prompt, cached = _prompt_usage(req)
        cached = min(cached, prompt - 1) if cached else 0
        read = "!cache" in words and "read" in words
        answer = _answer(req, self.llm.config.completion_words)
        usage = {"inputTokens": prompt - cached, "outputTokens": answer.output_tokens,
                 "totalTokens": prompt + answer.output_tokens,
                 "cacheReadInputTokens": cached if read else 0,
                 "cacheWriteInputTokens": 0 if read else cached}
        metrics = {"latencyMs": 1 + len(answer.blocks)}
        if not stream:
            if d.garbage:
                garbage = _Plan(200, self._headers(), (b'{"output": <<mock garbage>>',), (False,))
                return self.llm.timed(garbage, d)
            out = {"output": {"message": {"role": "assistant", "content": answer.blocks}},
                   "stopReason": answer.stop_reason, "usage": usage, "metrics": metrics}
            return self.llm.timed(_Plan(200, self._headers(), (_encode(out),), (False,)), d)
        events = [_event("messageStart", {"role": "assistant"})]
        if exception is not None:  # in the same write as messageStart, as a failure right after the head
            name = exception[:1].upper() + exception[1:]
            events[0] += _exception(name, _MESSAGES.get(name, f"mock: {name}"))
        else:
            for i, block in enumerate(answer.blocks):
                events += _block_events(i, block, d.chunks or self.llm.config.stream_chunks)
            events.append(_event("messageStop", {"stopReason": answer.stop_reason}))
            events.append(_event("metadata", {"usage": usage, "metrics": metrics}))
        if d.garbage:
            events.insert(1, b"\x00\x00\x00\x20<<mock garbage: not an event-stream message>>")
        headers = self._headers(_EVENT_STREAM)
        return self.llm.timed(_Plan(200, headers, tuple(events), (False,) * len(events), stream=True), d)

    # -- embeddings ----------------------------------------------------------------------------------

    def _invoke(self, model: str, body: bytes, header: str | None) -> _Plan:
        try:
            req = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return self.error("ValidationException", "Malformed input request, please reformat your "
                              "input and try again.")
        if not isinstance(req, dict):
            return self.error("ValidationException", "Malformed input request: expected a JSON object")
        dims = self.llm.config.embedding_dimensions
        if "titan-embed" in model:
            text = req.get("inputText")
            if not isinstance(text, str) or not text:
                return self.error("ValidationException", "Malformed input request: #: required key "
                                  "[inputText] not found, please reformat your input and try again.")
            size = req.get("dimensions", dims)
            vector, _ = embedding_for(text, int(size))
            out: dict[str, Any] = {"embedding": vector, "inputTextTokenCount": max(1, len(text) // 4)}
        elif "cohere.embed" in model:
            texts = req.get("texts")
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                return self.error("ValidationException", "Malformed input request: #: required key [texts] "
                                  "not found, please reformat your input and try again.")
            if not isinstance(req.get("input_type"), str):
                return self.error("ValidationException", "Malformed input request: #: required key "
                                  "[input_type] not found, please reformat your input and try again.")
            size = int(req.get("output_dimension", dims))
            vectors = [embedding_for(t, size)[0] for t in texts]
            out = {"id": str(uuid.uuid4()), "texts": texts, "response_type": "embeddings_by_type",
                   "embeddings": {"float": vectors}}
        else:
            return self.error("ValidationException", f"The provided model identifier is invalid: {model}")
        try:
            d = parse_directives(header, require_prefix=False) if header else MockDirectives()
        except MockDirectiveError as exc:
            return self.error("ValidationException", str(exc))
        injected = self._injected(d)
        return self.llm.timed(injected or _Plan(200, self._headers(), (_encode(out),), (False,)), d)


def _signature_matches(request: Request, key_id: str, secret: str, region: str, names: list[str],
                       amz_date: str, signature: str) -> bool:
    """Recompute the SigV4 signature of ``request`` with botocore, over the headers it says it signed."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers = {}
    for name in names:
        value = request.header(name.encode())
        headers[name] = "" if value is None else value.decode("latin-1")
    token = headers.get("x-amz-security-token")
    auth = SigV4Auth(Credentials(key_id, secret, token), "bedrock", region)
    url = f"http://{headers.get('host', 'localhost')}{request.path}"
    if request.query:
        url += "?" + request.query
    aws: Any = AWSRequest("POST", url, data=request.body, headers=headers)
    aws.context["timestamp"] = amz_date
    string_to_sign = auth.string_to_sign(aws, auth.canonical_request(aws))
    return hmac.compare_digest(auth.signature(string_to_sign, aws), signature)


def _block_events(index: int, block: dict[str, Any], chunks: int) -> list[bytes]:
    """contentBlockStart (tool use only), the deltas, contentBlockStop for one complete block."""
    out: list[bytes] = []
    deltas: list[dict[str, Any]] = []
    if "toolUse" in block:
        use = block["toolUse"]
        start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
        out.append(_event("contentBlockStart", {"start": start, "contentBlockIndex": index}))
        arguments = _encode(use["input"]).decode()
        deltas = [{"toolUse": {"input": p}} for p in mock_content.json_fragments(arguments, chunks)]
    elif "reasoningContent" in block:
        r = block["reasoningContent"]["reasoningText"]
        deltas = [{"reasoningContent": {"text": p}} for p in split_words(r["text"].split(" "), chunks) if p]
        deltas.append({"reasoningContent": {"signature": r["signature"]}})
    else:
        text = block["text"]
        pieces = mock_content.json_fragments(text, chunks) if text.startswith(("{", "[")) \
            else split_words(text.split(" "), chunks)
        deltas = [{"text": p} for p in pieces if p] or [{"text": ""}]
    out += [_event("contentBlockDelta", {"delta": d, "contentBlockIndex": index}) for d in deltas]
    out.append(_event("contentBlockStop", {"contentBlockIndex": index}))
    return out


class BedrockMockApp(MockApp):
    """``MockApp`` answering in Bedrock Runtime's wire format."""

    def __init__(self, config: Any = None, *, api_key: str | None = None) -> None:
        super().__init__(config)
        self.bedrock = BedrockMock(self.llm, api_key)

    def _plan_for(self, request: Request) -> _Plan:
        return self.bedrock.plan(request)

