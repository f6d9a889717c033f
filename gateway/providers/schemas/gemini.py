"""Gemini API wire schemas (Google AI Studio ``v1beta`` and Vertex AI ``v1``): requests, answers, errors.

Shapes follow the REST reference of ``models.generateContent`` / ``streamGenerateContent`` /
``embedContent`` / ``batchEmbedContents`` (camelCase JSON; the official ``google-genai`` SDK's pydantic
types ``google.genai.types.GenerateContentResponse`` & co. read the same JSON, and the unit tests
validate what we encode and decode against them, so the two cannot drift). Vertex AI speaks the same
shapes on its own paths; its text-embedding ``predict`` method has its own (``Predict*`` below).

Forward compatibility: Gemini adds part kinds over time (``executableCode``, ``codeExecutionResult``,
``inlineData`` answers of image models, ``videoMetadata``...). A response ``Part`` declares the fields the
gateway acts on and ignores the others (msgspec skips unknown fields), so a new kind never fails an
answer; a part with none of the known fields is kept raw by the translator (``OpaquePart``).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

__all__ = [
    "BatchEmbedRequest",
    "Blob",
    "Candidate",
    "Content",
    "EmbedRequest",
    "EmbedResponse",
    "Embedding",
    "ErrorBody",
    "ErrorResponse",
    "FileData",
    "FunctionCall",
    "FunctionCallingConfig",
    "FunctionDeclaration",
    "FunctionResponse",
    "GenerateContentResponse",
    "GenerationConfig",
    "Part",
    "PredictRequest",
    "PredictResponse",
    "PromptFeedback",
    "Request",
    "ThinkingConfig",
    "Tool",
    "ToolConfig",
    "UsageMetadata",
    "decode_embed",
    "decode_error",
    "decode_predict",
    "decode_response",
    "encode",
]


# ---- content -------------------------------------------------------------------------------------


class Blob(msgspec.Struct, frozen=True, rename="camel"):
    """Inline bytes (``inlineData``): base64 ``data`` of ``mime_type``."""

    mime_type: str
    data: str


class FileData(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """A file by URI (``fileData``): a Files API URI, ``gs://`` on Vertex, or an https URL."""

    file_uri: str
    mime_type: str | None = None


class FunctionCall(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    args: dict[str, Any] | None = None
    #: set by some models (and Vertex); echoed back on the matching ``functionResponse``
    id: str | None = None


class FunctionResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    response: dict[str, Any]
    id: str | None = None


class Part(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """One part: exactly one of the data fields, plus ``thought`` / ``thought_signature`` metadata."""

    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    #: the part is a thought summary (with ``thinkingConfig.includeThoughts``)
    thought: bool | None = None
    #: opaque signature of the model's reasoning up to this part: must be sent back on the next turn
    thought_signature: str | None = None
    executable_code: dict[str, Any] | None = None
    code_execution_result: dict[str, Any] | None = None


class Content(msgspec.Struct, frozen=True, omit_defaults=True):
    parts: list[Part] = []
    #: ``user`` or ``model`` (absent on ``systemInstruction``, and on a candidate cut before any part)
    role: str | None = None


# ---- request -------------------------------------------------------------------------------------


class FunctionDeclaration(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """A tool. ``parameters`` takes Gemini's OpenAPI ``Schema`` subset; ``parameters_json_schema`` full
    JSON Schema (``$ref``, ``additionalProperties``, ``const``...). At most one of the two."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    parameters_json_schema: dict[str, Any] | None = None


class Tool(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    function_declarations: list[FunctionDeclaration] | None = None


class FunctionCallingConfig(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """``mode``: AUTO, ANY (some call; ``allowed_function_names`` narrows it), NONE, VALIDATED."""

    mode: str
    allowed_function_names: list[str] | None = None


class ToolConfig(msgspec.Struct, frozen=True, rename="camel"):
    function_calling_config: FunctionCallingConfig


class ThinkingConfig(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    include_thoughts: bool | None = None
    #: Gemini 2.5: tokens (0 off, -1 dynamic)
    thinking_budget: int | None = None
    #: Gemini 3: ``minimal``, ``low``, ``medium``, ``high``
    thinking_level: str | None = None


class GenerationConfig(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    stop_sequences: list[str] | None = None
    response_mime_type: str | None = None
    #: full JSON Schema of the answer (with ``response_mime_type`` application/json)
    response_json_schema: dict[str, Any] | None = None
    candidate_count: int | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    thinking_config: ThinkingConfig | None = None


class Request(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """``POST .../models/{model}:generateContent`` (and ``:streamGenerateContent?alt=sse``)."""

    contents: list[Content]
    system_instruction: Content | None = None
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None
    safety_settings: list[dict[str, Any]] | None = None
    cached_content: str | None = None


# ---- answer --------------------------------------------------------------------------------------


class Candidate(msgspec.Struct, frozen=True, rename="camel"):
    content: Content | None = None
    #: STOP, MAX_TOKENS, SAFETY, RECITATION, MALFORMED_FUNCTION_CALL, ... (absent until the last chunk)
    finish_reason: str | None = None
    finish_message: str | None = None
    index: int = 0
    safety_ratings: list[dict[str, Any]] | None = None
    citation_metadata: dict[str, Any] | None = None


class PromptFeedback(msgspec.Struct, frozen=True, rename="camel"):
    #: set when the prompt itself was blocked (then there are no candidates)
    block_reason: str | None = None
    block_reason_message: str | None = None
    safety_ratings: list[dict[str, Any]] | None = None


class UsageMetadata(msgspec.Struct, frozen=True, rename="camel"):
    """``prompt_token_count`` INCLUDES ``cached_content_token_count``; ``candidates_token_count``
    EXCLUDES ``thoughts_token_count`` (both are billed as output)."""

    prompt_token_count: int = 0
    candidates_token_count: int = 0
    total_token_count: int = 0
    cached_content_token_count: int = 0
    thoughts_token_count: int = 0
    #: tokens of tool results fed back by the server (code execution, search): billed as input
    tool_use_prompt_token_count: int = 0


class GenerateContentResponse(msgspec.Struct, frozen=True, rename="camel"):
    """One answer, or one chunk of a stream (each SSE event is a whole ``GenerateContentResponse``)."""

    candidates: list[Candidate] = []
    prompt_feedback: PromptFeedback | None = None
    usage_metadata: UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None


# ---- errors (google.rpc.Status in the JSON error envelope) ---------------------------------------


class ErrorBody(msgspec.Struct, frozen=True):
    code: int = 0
    message: str = ""
    #: the canonical code name: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, ...
    status: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorBody


# ---- embeddings ----------------------------------------------------------------------------------


class EmbedRequest(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """``:embedContent``; in ``batchEmbedContents`` each request names its ``model`` (``models/ID``)."""

    content: Content
    model: str | None = None
    task_type: str | None = None
    output_dimensionality: int | None = None


class BatchEmbedRequest(msgspec.Struct, frozen=True):
    requests: list[EmbedRequest]


class Embedding(msgspec.Struct, frozen=True):
    values: list[float]


class EmbedResponse(msgspec.Struct, frozen=True):
    """The answer of ``embedContent`` (``embedding``) or of ``batchEmbedContents`` (``embeddings``)."""

    embedding: Embedding | None = None
    embeddings: list[Embedding] | None = None


class PredictInstance(msgspec.Struct, frozen=True, omit_defaults=True):
    content: str
    task_type: str | None = None


class PredictParameters(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    output_dimensionality: int | None = None
    auto_truncate: bool | None = None


class PredictRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """Vertex AI text embeddings: ``POST .../publishers/google/models/{model}:predict``."""

    instances: list[PredictInstance]
    parameters: PredictParameters | None = None


class PredictStatistics(msgspec.Struct, frozen=True):
    token_count: int = 0
    truncated: bool = False


class PredictEmbeddings(msgspec.Struct, frozen=True):
    values: list[float]
    statistics: PredictStatistics = PredictStatistics()


class Prediction(msgspec.Struct, frozen=True):
    embeddings: PredictEmbeddings


class PredictResponse(msgspec.Struct, frozen=True):
    predictions: list[Prediction]


# ---- codecs (built once) -------------------------------------------------------------------------

encode: Final = msgspec.json.Encoder().encode
_response: Final = msgspec.json.Decoder(GenerateContentResponse)
_error: Final = msgspec.json.Decoder(ErrorResponse)
_embed: Final = msgspec.json.Decoder(EmbedResponse)
_predict: Final = msgspec.json.Decoder(PredictResponse)


#: an answer or a stream chunk; raises msgspec.DecodeError / ValidationError (PERF: the decoder's own
#: method, no Python call around it: it runs once per stream chunk)
decode_response: Final = _response.decode


def decode_error(body: bytes) -> ErrorResponse | None:
    """The ``{"error": {...}}`` envelope, or None when the body is not one."""
    try:
        return _error.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def decode_embed(body: bytes) -> EmbedResponse:
    return _embed.decode(body)


def decode_predict(body: bytes) -> PredictResponse:
    return _predict.decode(body)
