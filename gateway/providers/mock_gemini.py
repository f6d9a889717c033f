"""The mock LLM in the Gemini API's wire format, on AI Studio's and Vertex AI's paths:
``gateway mock --dialect gemini``.

Serves, with the shapes of the official ``google-genai`` SDK's types (the tests validate every body and
stream chunk against them, and the SDK's models forbid fields they do not declare):

    POST /v1beta/models/{model}:generateContent | :streamGenerateContent (?alt=sse: SSE, else a JSON array)
    POST /v1beta/models/{model}:embedContent | :batchEmbedContents | :countTokens
    GET  /v1beta/models, /v1beta/models/{model}                  (and the same below /v1 and /v1alpha)
    POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent |
         :streamGenerateContent | :predict (Vertex AI text embeddings)
    POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{model}:rawPredict | :streamRawPredict
         (Claude on Vertex: the Anthropic mock's answer; the body must carry
         ``anthropic_version: "vertex-2023-10-16"`` and no ``model``)
    GET  /healthz

Theory of operation
-------------------
``GeminiMock.plan`` checks the credential (Gemini API: ``x-goog-api-key`` or ``?key=``; Vertex AI: always
``Authorization: Bearer``, Vertex answers 401 UNAUTHENTICATED without one; with ``--api-key`` the key or
token must be that value), decodes the request strictly (an unknown field is Gemini's 400 "Invalid JSON
payload received. Unknown name ..."; a function's ``parameters`` may hold only the OpenAPI ``Schema``
keywords, as Gemini checks), applies the failure directives, asks ``mock_content`` what to say and
renders it. What it checks in the turns sent back, as Gemini 3 does: a ``thoughtSignature`` must be one
the mock gave; with thinking on (a ``thinkingConfig`` with a budget other than 0, or any ``gemini-3``
model), the first ``functionCall`` of each model turn since the last user text must carry its signature.

The answer: thought summary parts first (``includeThoughts``), then text or JSON or function calls (all
in one chunk when streamed: Gemini sends calls whole), the thought signature on the first function call
(else on the last text part). Cues in the last user text: ``!refuse`` (``finishReason: SAFETY``, no
content), ``!finish REASON`` (that finish reason after a few words: ``RECITATION``, ``MAX_TOKENS``,
``MALFORMED_FUNCTION_CALL`` with no content...), ``!block`` (``promptFeedback.blockReason: SAFETY``, no
candidates), ``!cache`` (three quarters of the prompt reported as ``cachedContentTokenCount``; a request
with ``cachedContent`` too). Usage: ``promptTokenCount`` includes the cached tokens,
``candidatesTokenCount`` excludes the ``thoughtsTokenCount``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import os
import re
from typing import TYPE_CHECKING, Any, Final

import msgspec

from gateway._core.jsoncheck import TOO_DEEP, check_json
from gateway.providers import mock_content
from gateway.providers.mock import MAX_WORDS as _MAX_WORDS
from gateway.providers.mock import (
    MockApp,
    MockDirectiveError,
    MockDirectives,
    MockLLM,
    _embedding,
    _Plan,
    parse_directives,
)
from gateway.providers.mock import _split_words as split_words
from gateway.providers.mock import _words_for as words_for
from gateway.providers.mock_anthropic import AnthropicMock
from gateway.wire import MAX_JSON_DEPTH

if TYPE_CHECKING:
    from gateway.app import Request

__all__ = ["GeminiMock", "GeminiMockApp", "signature_for", "signature_valid"]

_JSON: Final = "application/json; charset=UTF-8"
_SSE: Final = "text/event-stream"
_SIGNATURE_MARK: Final = b"\x8egemini-mock-sig\x02"
_THOUGHT_WORDS: Final = 12
_GARBAGE_BODY: Final = b'{"candidates": [<<mock garbage: this is not JSON>>'
_GARBAGE_EVENT: Final = b"data: {<<mock garbage: this is not JSON>>\r\n\r\n"
_VERTEX_ANTHROPIC: Final = "vertex-2023-10-16"
_SKIP_SIGNATURE: Final = "skip_thought_signature_validator"

_GEMINI_PATH: Final = re.compile(r"^/v1(?:beta|alpha)?/(models/[^/:]+|tunedModels/[^/:]+):([A-Za-z]+)$")
_MODELS_PATH: Final = re.compile(r"^/v1(?:beta|alpha)?/models(?:/([^/:]+))?$")
_VERTEX_PATH: Final = re.compile(
    r"^/v1(?:beta1)?/projects/([^/]+)/locations/([^/]+)/publishers/(google|anthropic)/models/([^/:]+):([A-Za-z]+)$"
)

#: HTTP status → google.rpc status name and Gemini's message for it
_STATUSES: Final[dict[int, tuple[str, str]]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in "
                      "https://developers.generativeai.google/guide/troubleshooting"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}

#: the keywords of Gemini's OpenAPI ``Schema`` (``functionDeclarations[].parameters``, ``responseSchema``)
_SCHEMA_KEYS: Final = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example",
    "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
})


# --- request wire types (strict: Gemini refuses unknown fields) ----------------------------------------


class _Strict(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    pass


class _Blob(_Strict):
    mime_type: str
    data: str


class _FileData(_Strict):
    file_uri: str
    mime_type: str | None = None


class _FunctionCall(_Strict):
    name: str
    args: dict[str, Any] | None = None
    id: str | None = None


class _FunctionResponse(_Strict):
    name: str
    response: dict[str, Any]
    id: str | None = None


class _Part(_Strict):
    text: str | None = None
    inline_data: _Blob | None = None
    file_data: _FileData | None = None
    function_call: _FunctionCall | None = None
    function_response: _FunctionResponse | None = None
    thought: bool | None = None
    thought_signature: str | None = None


class _Content(_Strict):
    parts: list[_Part]
    role: str | None = None


class _Declaration(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    parameters_json_schema: dict[str, Any] | None = None
    #: the schema of the function's result
    response: dict[str, Any] | None = None
    response_json_schema: dict[str, Any] | None = None
    behavior: str | None = None


class _Tool(_Strict):
    function_declarations: list[_Declaration] | None = None


class _CallingConfig(_Strict):
    mode: str
    allowed_function_names: list[str] | None = None


class _ToolConfig(_Strict):
    function_calling_config: _CallingConfig


class _ThinkingConfig(_Strict):
    include_thoughts: bool | None = None
    thinking_budget: int | None = None
    thinking_level: str | None = None


class _GenerationConfig(_Strict):
    stop_sequences: list[str] | None = None
    response_mime_type: str | None = None
    response_json_schema: dict[str, Any] | None = None
    response_schema: dict[str, Any] | None = None
    candidate_count: int | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    thinking_config: _ThinkingConfig | None = None


class _Request(_Strict):
    contents: list[_Content]
    system_instruction: _Content | None = None
    tools: list[_Tool] | None = None
    tool_config: _ToolConfig | None = None
    generation_config: _GenerationConfig | None = None
    safety_settings: list[dict[str, Any]] | None = None
    cached_content: str | None = None


class _EmbedRequest(_Strict):
    content: _Content
    model: str | None = None
    task_type: str | None = None
    title: str | None = None
    output_dimensionality: int | None = None


class _BatchEmbed(_Strict):
    requests: list[_EmbedRequest]


class _Instance(msgspec.Struct, forbid_unknown_fields=True):
    content: str
    task_type: str | None = None
    title: str | None = None


class _PredictParams(_Strict):
    output_dimensionality: int | None = None
    auto_truncate: bool | None = None


class _Predict(msgspec.Struct, forbid_unknown_fields=True):
    instances: list[_Instance]
    parameters: _PredictParams | None = None


_encode = msgspec.json.Encoder().encode


class _Invalid(Exception):
    """A request Gemini would refuse: 400 INVALID_ARGUMENT with this message."""


#: fields whose values are the client's own JSON (schemas, arguments, results): their keys stay as sent
_FREE: Final = frozenset({"args", "response", "parameters", "parametersJsonSchema", "responseJsonSchema",
                          "responseSchema", "safetySettings"})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _camel_keys(value: Any) -> Any:
    """Proto3 JSON takes a field by its lowerCamel name or its proto (snake_case) name: the SDK sends
    some of each. Message keys are made lowerCamel; the client's own JSON below ``_FREE`` is not touched."""
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        key = _camel(k) if isinstance(k, str) else k
        out[key] = v if key in _FREE else _camel_keys(v)
    return out


def _decode(body: bytes, kind: type[Any]) -> Any:
    if check_json(body, MAX_JSON_DEPTH) == TOO_DEEP:  # the decoders recurse
        raise _Invalid(f"Invalid JSON payload received. Nested more than {MAX_JSON_DEPTH} levels deep.")
    try:
        return msgspec.convert(_camel_keys(msgspec.json.decode(body)), type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = re.search(r"Object contains unknown field `([^`]+)`(?: - at `\$(.*)`)?", text)
        if m:
            raise _Invalid(f'Invalid JSON payload received. Unknown name "{m.group(1)}" at '
                           f"'{(m.group(2) or '').lstrip('.')}': Cannot find field.") from None
        raise _Invalid(f"Invalid JSON payload received. {text}") from None
    except msgspec.DecodeError:
        raise _Invalid("Invalid JSON payload received. Unexpected token.") from None


# --- signatures ------------------------------------------------------------------------------------------


def signature_for(seed: str) -> str:
    """A deterministic thought signature (opaque base64, like Gemini's) for a turn: a mark and a digest."""
    digest = hashlib.blake2b(b"gemini-mock:" + seed.encode("utf-8", "surrogatepass"), digest_size=24)
    return base64.b64encode(_SIGNATURE_MARK + digest.digest()).decode()


def signature_valid(signature: str) -> bool:
    """Whether ``signature`` is one the mock gives (its mark; the digest is not re-derived). Proto JSON
    bytes come in either base64 alphabet (the SDK re-encodes them URL-safe)."""
    if signature == _SKIP_SIGNATURE:  # Google's documented stand-in for a call that never had one
        return True
    try:
        raw = base64.b64decode(signature.replace("-", "+").replace("_", "/"), validate=True)
        return raw.startswith(_SIGNATURE_MARK)
    except ValueError:
        return False


# --- checks ----------------------------------------------------------------------------------------------


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise _Invalid(f"Invalid JSON payload received. Expected an object at '{where}'.")
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS:
            raise _Invalid(f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': '
                           "Cannot find field.")
        if key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                _check_schema(sub, f"{where}.properties[{name}].value")
        elif key == "items":
            _check_schema(value, f"{where}.items")
        elif key == "anyOf" and isinstance(value, list):
            for i, sub in enumerate(value):
                _check_schema(sub, f"{where}.any_of[{i}]")
    kind = schema.get("type")
    if isinstance(kind, list):
        raise _Invalid(f"Invalid JSON payload received. Proto field is not repeating, cannot start list. "
                       f"at '{where}.type'")


def _thinking_on(req: _Request, model: str) -> bool:
    cfg = req.generation_config.thinking_config if req.generation_config is not None else None
    if model.rpartition("/")[2].startswith("gemini-3"):
        return True
    return cfg is not None and cfg.thinking_budget != 0


def _check(req: _Request, model: str) -> None:
    if not req.contents:
        raise _Invalid("* GenerateContentRequest.contents: contents is not specified")
    for ti, tool in enumerate(req.tools or ()):
        for di, decl in enumerate(tool.function_declarations or ()):
            where = f"tools[{ti}].function_declarations[{di}]"
            if decl.parameters is not None and decl.parameters_json_schema is not None:
                raise _Invalid(f"{where}: parameters and parameters_json_schema are mutually exclusive")
            if decl.parameters is not None:
                _check_schema(decl.parameters, f"{where}.parameters")
    gc = req.generation_config
    if gc is not None:
        if gc.candidate_count is not None and gc.candidate_count > 1:
            raise _Invalid("Multiple candidates is not enabled for this model.")
        if gc.max_output_tokens is not None and gc.max_output_tokens < 1:
            raise _Invalid("max_output_tokens must be positive.")
        if gc.response_json_schema is not None and gc.response_mime_type != "application/json":
            raise _Invalid("response_mime_type must be application/json with a response schema.")
        if len(gc.stop_sequences or ()) > 5:
            raise _Invalid("stop_sequences: at most 5 stop sequences are allowed.")
    tc = req.tool_config
    if tc is not None and tc.function_calling_config.allowed_function_names and \
            tc.function_calling_config.mode != "ANY":
        raise _Invalid("allowed_function_names can only be set with mode ANY.")
    for ci, content in enumerate(req.contents):
        if content.role not in ("user", "model", None):
            raise _Invalid(f"Please use a valid role: user, model. (contents[{ci}].role: {content.role})")
        for pi, part in enumerate(content.parts):
            if part.thought_signature is not None and not signature_valid(part.thought_signature):
                raise _Invalid(f"Corrupted thought signature. (contents[{ci}].parts[{pi}])")
    if _thinking_on(req, model):
        _check_turn_signatures(req)


def _user_text(content: _Content) -> bool:
    return content.role != "model" and any(p.text for p in content.parts)


def _check_turn_signatures(req: _Request) -> None:
    """The current turn (since the last user text): each model step's first call carries its signature."""
    start = max((i for i, c in enumerate(req.contents) if _user_text(c)), default=0)
    for ci in range(start, len(req.contents)):
        content = req.contents[ci]
        if content.role != "model":
            continue
        calls = [p for p in content.parts if p.function_call is not None]
        if calls and calls[0].thought_signature is None:
            assert calls[0].function_call is not None
            raise _Invalid(f"Unable to submit request because function call `{calls[0].function_call.name}` "
                           f"in the {ci + 1}. content block is missing a `thought_signature`. Learn more: "
                           "https://ai.google.dev/gemini-api/docs/thought-signatures")


# --- helpers ---------------------------------------------------------------------------------------------


def _part_text(part: _Part) -> str:
    if part.text is not None:
        return part.text
    if part.function_response is not None:
        return _encode(part.function_response.response).decode()
    return ""


def _content_text(content: _Content) -> str:
    return "\n".join(_part_text(p) for p in content.parts if not p.thought)


def _cue(text: str, word: str) -> bool:
    return word in text.split()


def _finish_cue(text: str) -> str | None:
    tokens = text.split()
    if "!finish" in tokens:
        i = tokens.index("!finish")
        if i + 1 < len(tokens):
            return tokens[i + 1].upper()
    return None


def _lower_types(schema: Any) -> Any:
    """An OpenAPI ``Schema`` (``type: "OBJECT"``, as the SDK writes it) in JSON Schema's lower case."""
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: (v.lower() if k == "type" and isinstance(v, str) else
                v if k in ("enum", "example", "default") else _lower_types(v)) for k, v in schema.items()}


def _tool_result(req: _Request) -> tuple[str | None, str] | None:
    last = req.contents[-1]
    results = [p.function_response for p in last.parts if p.function_response is not None]
    if last.role == "model" or not results:
        return None
    r = results[-1]
    response = r.response
    text = response["result"] if set(response) == {"result"} and isinstance(response["result"], str) \
        else _encode(response).decode()
    return r.name, text


def _choice(req: _Request) -> str:
    tc = req.tool_config
    if tc is None:
        return "auto"
    cfg = tc.function_calling_config
    if cfg.mode == "NONE":
        return "none"
    if cfg.mode == "ANY":
        names = cfg.allowed_function_names or []
        return names[0] if len(names) == 1 else "required"
    return "auto"


def _usage(prompt: int, cached: int, output: int, thoughts: int) -> dict[str, Any]:
    u: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if cached:
        u["cachedContentTokenCount"] = cached
        u["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts:
        u["thoughtsTokenCount"] = thoughts
    return u


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    best = -1
    for s in stops:
        i = text.find(s) if s else -1
        if i >= 0 and (best < 0 or i < best):
            best = i
    return (text, False) if best < 0 else (text[:best], True)


class _Answer(msgspec.Struct):
    #: complete parts (wire dicts), in order
    parts: list[dict[str, Any]]
    finish: str
    output_tokens: int
    thought_tokens: int
    finish_message: str | None = None


# --- the mock --------------------------------------------------------------------------------------------


class GeminiMock:
    """Plans answers to Gemini API and Vertex AI requests (see the module docstring)."""

    def __init__(self, llm: MockLLM, api_key: str | None = None) -> None:
        self.llm = llm
        self.api_key = api_key
        self.anthropic = AnthropicMock(llm)
        self._token = os.urandom(4).hex()
        self._ids = itertools.count(1)
        self._models = [
            {"name": f"models/{m}", "version": "001", "displayName": m.replace("-", " ").title(),
             "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
             "supportedGenerationMethods": ["generateContent", "countTokens", "embedContent"]}
            for m in llm.config.models
        ]

    def _id(self) -> str:
        return f"mock{self._token}{next(self._ids):010x}"

    def error(self, status: int, message: str | None = None, extra: list[tuple[str, str]] | None = None,
              details: list[dict[str, Any]] | None = None) -> _Plan:
        """An error in Google's shape (google.rpc.Status in the JSON envelope)."""
        name, default = _STATUSES.get(status, ("UNKNOWN" if status >= 500 else "INVALID_ARGUMENT", "Error"))
        err: dict[str, Any] = {"code": status, "message": message or default, "status": name}
        if details:
            err["details"] = details
        return _Plan(status, [("content-type", _JSON), *(extra or [])], (_encode({"error": err}),), (False,))

    def _injected(self, d: MockDirectives) -> _Plan | None:
        if d.status is None or d.status < 400:
            return None
        details: list[dict[str, Any]] = []
        extra: list[tuple[str, str]] = []
        if d.status == 429:
            retry = d.retry_after if d.retry_after is not None else 1.0
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{math.ceil(retry)}s"})
            extra.append(("retry-after", str(math.ceil(retry))))
        return self.error(d.status, None, extra, details)

    # -- entry point -----------------------------------------------------------------------------------

    def plan(self, request: Request) -> _Plan:
        path, method = request.path, request.method
        if path == "/healthz":
            return _Plan(200, [("content-type", _JSON)], (b'{"status":"ok"}',), (False,))
        query = request.query or ""
        vertex = _VERTEX_PATH.match(path)
        auth = self._auth(request, query, vertex is not None)
        if auth is not None:
            return auth
        x_mock = request.header(b"x-mock")
        header = None if x_mock is None else x_mock.decode("latin-1")
        if vertex is not None:
            _, _, publisher, model, method_name = vertex.groups()
            if method != "POST":
                return self.error(405, f"Method {method} not allowed")
            if publisher == "anthropic":
                return self._claude(request.body, model, method_name, header)
            return self._method(f"publishers/google/models/{model}", method_name, request.body, query,
                                header, vertex=True)
        m = _GEMINI_PATH.match(path)
        if m is not None:
            if method != "POST":
                return self.error(405, f"Method {method} not allowed")
            return self._method(m.group(1), m.group(2), request.body, query, header, vertex=False)
        listing = _MODELS_PATH.match(path)
        if listing is not None and method == "GET":
            if listing.group(1) is None:
                return _Plan(200, [("content-type", _JSON)], (_encode({"models": self._models}),), (False,))
            for entry in self._models:
                if entry["name"] == f"models/{listing.group(1)}":
                    return _Plan(200, [("content-type", _JSON)], (_encode(entry),), (False,))
            return self.error(404, f"models/{listing.group(1)} is not found for API version v1beta")
        return self.error(404, f"The requested URL {path} was not found on this server.")

    def _auth(self, request: Request, query: str, vertex: bool) -> _Plan | None:
        if vertex:
            bearer = request.header(b"authorization")
            if bearer is None or not bearer.startswith(b"Bearer "):
                return self.error(401, "Request is missing required authentication credential. Expected "
                                  "OAuth 2 access token, login cookie or other valid authentication "
                                  "credential.")
            if self.api_key is not None and bearer.decode("latin-1") != f"Bearer {self.api_key}":
                return self.error(401, "Request had invalid authentication credentials.")
            return None
        if self.api_key is None:
            return None
        key = request.header(b"x-goog-api-key")
        value = key.decode("latin-1") if key is not None else None
        if value is None:
            m = re.search(r"(?:^|&)key=([^&]*)", query)
            value = m.group(1) if m else None
        if value is None:
            return self.error(403, "Method doesn't allow unregistered callers (callers without established "
                              "identity). Please use API Key or other form of API consumer identity to call "
                              "this API.")
        if value != self.api_key:
            return self.error(400, "API key not valid. Please pass a valid API key.", details=[
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com"}])
        return None

    def _method(self, model: str, name: str, body: bytes, query: str, header: str | None,
                *, vertex: bool) -> _Plan:
        try:
            d = parse_directives(header, require_prefix=False) if header else MockDirectives()
        except MockDirectiveError as exc:
            return self.error(400, str(exc))
        try:
            if name in ("generateContent", "streamGenerateContent", "countTokens"):
                return self._generate(model, name, body, query, d)
            if name == "embedContent" and not vertex:
                return self._embed(model, body, d, batch=False)
            if name == "batchEmbedContents" and not vertex:
                return self._embed(model, body, d, batch=True)
            if name == "predict" and vertex:
                return self._predict(body, d)
        except _Invalid as exc:
            return self.error(400, str(exc))
        return self.error(404, f"Method {name} is not found for {model}.")

    # -- generateContent -------------------------------------------------------------------------------

    def _generate(self, model: str, name: str, body: bytes, query: str, header: MockDirectives) -> _Plan:
        req: _Request = _decode(body, _Request)
        if not req.contents:
            raise _Invalid("* GenerateContentRequest.contents: contents is not specified")
        texts = [_content_text(c) for c in req.contents]
        last_user = texts[-1] if req.contents[-1].role != "model" else ""
        try:
            d = header.merged(parse_directives(last_user))
        except MockDirectiveError as exc:
            return self.error(400, str(exc))
        injected = self._injected(d)
        if injected is not None:
            return self.llm.timed(injected, d)
        _check(req, model)
        system = _content_text(req.system_instruction) if req.system_instruction is not None else ""
        decls = [decl for t in req.tools or () for decl in t.function_declarations or ()]
        tool_chars = len(_encode([msgspec.to_builtins(x) for x in decls])) if decls else 0
        prompt = max(1, (len(system) + sum(map(len, texts)) + tool_chars) // 4 + 4 * len(texts))
        if name == "countTokens":
            return _Plan(200, [("content-type", _JSON)], (_encode({"totalTokens": prompt}),), (False,))
        cached = prompt * 3 // 4 if _cue(last_user, "!cache") or req.cached_content else 0
        response_id = self._id()
        version = model.rpartition("/")[2]
        stream = name == "streamGenerateContent"
        sse = stream and "alt=sse" in query
        if _cue(last_user, "!block"):
            out = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]},
                "usageMetadata": _usage(prompt, cached, 0, 0), "modelVersion": version,
                "responseId": response_id}
            return self._deliver([out], stream, sse, d)
        answer = self._answer(req, model, texts, last_user)
        if not stream:
            if d.garbage:
                return self.llm.timed(_Plan(200, [("content-type", _JSON)], (_GARBAGE_BODY,), (False,)), d)
            out = self._response(answer, answer.parts, prompt, cached, version, response_id, True)
            return self._deliver([out], False, False, d)
        n = d.chunks or self.llm.config.stream_chunks
        chunks = self._chunks(answer, prompt, cached, version, response_id, n)
        return self._deliver(chunks, True, sse, d)

    def _answer(self, req: _Request, model: str, texts: list[str], last_user: str) -> _Answer:
        gc = req.generation_config or _GenerationConfig()
        thinking = _thinking_on(req, model)
        seed = "\n".join(texts)
        parts: list[dict[str, Any]] = []
        thought_tokens = 0
        if thinking:
            thought = "Weighing the question: " + " ".join(words_for("thought:" + seed, _THOUGHT_WORDS))
            thought_tokens = len(thought.split())
            if gc.thinking_config is not None and gc.thinking_config.include_thoughts:
                parts.append({"text": thought, "thought": True})
        signature = signature_for(seed) if thinking else None
        if _cue(last_user, "!refuse"):
            return _Answer([], "SAFETY", 0, thought_tokens)
        finish = _finish_cue(last_user)
        if finish in ("MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"):
            return _Answer([], finish, 0, thought_tokens,
                           "Malformed function call: print(default_api.get_weather(city=))")
        tools = [mock_content.ToolSpec(decl.name, decl.parameters_json_schema or decl.parameters)
                 for t in req.tools or () for decl in t.function_declarations or ()]
        json_mime = gc.response_mime_type == "application/json"
        schema = gc.response_json_schema or _lower_types(gc.response_schema)
        turn = mock_content.decide(
            seed=seed, last_user=last_user or None, tools=tools, choice=_choice(req), parallel=True,
            tool_result=_tool_result(req), schema=schema if json_mime and schema else None,
            json_mode=json_mime and schema is None, id_prefix="call_",
        )
        if turn is not None and turn.kind == "tools":
            out_tokens = 0
            for i, call in enumerate(turn.calls):
                part: dict[str, Any] = {"functionCall": {"name": call.name,
                                                         "args": msgspec.json.decode(call.arguments)}}
                if i == 0 and signature is not None:
                    part["thoughtSignature"] = signature
                parts.append(part)
                out_tokens += max(1, len(call.arguments) // 4)
            return _Answer(parts, "STOP", out_tokens, thought_tokens)
        if turn is not None:
            parts.append({"text": turn.text})
            if signature is not None:
                parts[-1]["thoughtSignature"] = signature
            return _Answer(parts, "STOP", max(1, len(turn.text) // 4), thought_tokens)
        n = min(self.llm.config.completion_words, _MAX_WORDS)
        reason = "STOP"
        if finish is not None:
            n, reason = min(n, 4), finish
        if gc.max_output_tokens is not None and n > gc.max_output_tokens:
            n, reason = gc.max_output_tokens, "MAX_TOKENS"
        text = " ".join(words_for(last_user or seed, n))
        text, _ = _cut_at_stop(text, gc.stop_sequences or [])
        parts.append({"text": text})
        if signature is not None:
            parts[-1]["thoughtSignature"] = signature
        return _Answer(parts, reason, len(text.split()), thought_tokens)

    def _response(self, answer: _Answer, parts: list[dict[str, Any]], prompt: int, cached: int, version: str,
                  response_id: str, final: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if not parts:
            candidate["content"] = {"role": "model"} if final else {"parts": [], "role": "model"}
        if final:
            candidate["finishReason"] = answer.finish
            if answer.finish_message:
                candidate["finishMessage"] = answer.finish_message
            if answer.finish in ("SAFETY", "PROHIBITED_CONTENT"):
                candidate["safetyRatings"] = [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH",
                                               "blocked": True}]
        usage = _usage(prompt, cached, answer.output_tokens if final else 0,
                       answer.thought_tokens if final else 0)
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": version,
                "responseId": response_id}

    def _chunks(self, answer: _Answer, prompt: int, cached: int, version: str, response_id: str,
                chunks: int) -> list[dict[str, Any]]:
        """The stream: thoughts, text in word pieces (JSON in fragments), calls whole, then the finish."""
        pieces: list[list[dict[str, Any]]] = []
        for part in answer.parts:
            if "text" in part and not part.get("thought"):
                text: str = part["text"]
                frags = mock_content.json_fragments(text, chunks) if text.startswith(("{", "[")) \
                    else split_words(text.split(" "), chunks)
                frags = [f for f in frags if f] or [""]
                for j, frag in enumerate(frags):
                    p: dict[str, Any] = {"text": frag}
                    if j == len(frags) - 1 and "thoughtSignature" in part:
                        p["thoughtSignature"] = part["thoughtSignature"]
                    pieces.append([p])
            elif "functionCall" in part and pieces and "functionCall" in pieces[-1][-1]:
                pieces[-1].append(part)  # parallel calls arrive together
            else:
                pieces.append([part])
        if not pieces:
            pieces.append([])
        out = [self._response(answer, p, prompt, cached, version, response_id, False) for p in pieces[:-1]]
        out.append(self._response(answer, pieces[-1], prompt, cached, version, response_id, True))
        return out

    def _deliver(self, answers: list[dict[str, Any]], stream: bool, sse: bool, d: MockDirectives) -> _Plan:
        if not stream:
            return self.llm.timed(_Plan(200, [("content-type", _JSON)], (_encode(answers[0]),), (False,)), d)
        if not sse:  # without alt=sse Gemini streams one JSON array
            body = b"[" + b",\r\n".join(_encode(a) for a in answers) + b"]"
            return self.llm.timed(_Plan(200, [("content-type", _JSON)], (body,), (False,)), d)
        events = [b"data: " + _encode(a) + b"\r\n\r\n" for a in answers]
        if d.garbage:
            events.insert(1, _GARBAGE_EVENT)
        headers = [("content-type", _SSE), ("cache-control", "no-cache")]
        return self.llm.timed(_Plan(200, headers, tuple(events), (False,) * len(events), stream=True), d)

    # -- embeddings ------------------------------------------------------------------------------------

    def _dims(self, asked: int | None) -> int:
        if asked is not None and asked < 1:
            raise _Invalid("output_dimensionality must be positive.")
        return asked or self.llm.config.embedding_dimensions

    def _embed(self, model: str, body: bytes, d: MockDirectives, *, batch: bool) -> _Plan:
        requests = _decode(body, _BatchEmbed).requests if batch else [_decode(body, _EmbedRequest)]
        vectors = []
        for i, r in enumerate(requests):
            if batch and r.model != model:
                raise _Invalid(f"requests[{i}].model: {r.model} does not match the URL's model ({model})")
            text = "\n".join(p.text or "" for p in r.content.parts)
            vectors.append({"values": _embedding(text, self._dims(r.output_dimensionality))[0]})
        out = {"embeddings": vectors} if batch else {"embedding": vectors[0]}
        return self.llm.timed(_Plan(200, [("content-type", _JSON)], (_encode(out),), (False,)), d)

    def _predict(self, body: bytes, d: MockDirectives) -> _Plan:
        req: _Predict = _decode(body, _Predict)
        dims = self._dims(req.parameters.output_dimensionality if req.parameters is not None else None)
        predictions = [{"embeddings": {"values": _embedding(i.content, dims)[0],
                                       "statistics": {"token_count": max(1, len(i.content) // 4),
                                                      "truncated": False}}} for i in req.instances]
        out = {"predictions": predictions,
               "metadata": {"billableCharacterCount": sum(len(i.content) for i in req.instances)}}
        return self.llm.timed(_Plan(200, [("content-type", _JSON)], (_encode(out),), (False,)), d)

    # -- Claude on Vertex ------------------------------------------------------------------------------

    def _claude(self, body: bytes, model: str, method: str, header: str | None) -> _Plan:
        if method not in ("rawPredict", "streamRawPredict"):
            return self.error(404, f"Method {method} is not found for {model}.")
        try:
            top = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return self.anthropic.error(400, "There was an error parsing the body of your request as JSON.")
        if not isinstance(top, dict):
            return self.anthropic.error(400, "the body must be a JSON object")
        if top.pop("anthropic_version", None) != _VERTEX_ANTHROPIC:
            return self.anthropic.error(400, f"anthropic_version: must be {_VERTEX_ANTHROPIC!r} on Vertex AI")
        if "model" in top:
            return self.anthropic.error(400, "model: Extra inputs are not permitted")
        top["model"] = model
        if method == "streamRawPredict" and not top.get("stream"):
            return self.anthropic.error(400, "stream: streamRawPredict needs stream: true")
        return self.anthropic._messages(_encode(top), header, count_only=False)


class GeminiMockApp(MockApp):
    """``MockApp`` answering in the Gemini API's wire format (and Vertex AI's)."""

    def __init__(self, config: Any = None, *, api_key: str | None = None) -> None:
        super().__init__(config)
        self.gemini = GeminiMock(self.llm, api_key)

    def _plan_for(self, request: Request) -> _Plan:
        return self.gemini.plan(request)
