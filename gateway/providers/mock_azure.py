"""The mock LLM in Azure OpenAI's wire format: ``gateway mock --dialect azure``.

Azure OpenAI is the OpenAI API behind other paths, other credentials and a few extra fields, and those
differences are what break clients written against OpenAI alone. The mock serves:

* ``POST /openai/deployments/{deployment}/chat/completions``, ``.../completions`` and ``.../embeddings``
  with the ``api-version`` query parameter: without it Azure answers 404 ``Resource not found``; a value
  that is not an API version (``YYYY-MM-DD`` or ``YYYY-MM-DD-preview``) gets 400 ``API version not
  supported``. The deployment name is the model echoed back.
* the v1 API, ``POST /openai/v1/chat/completions`` (``/completions``, ``/embeddings``, ``GET /models``),
  where the body's ``model`` names the deployment and ``api-version`` is optional.
* ``GET /healthz``.

Credentials (only when the mock was started with ``--api-key``): the ``api-key`` header, or
``Authorization: Bearer <key>`` as an Entra ID token would come; anything else is Azure's 401.

Answers are the OpenAI dialect's (``MockLLM``: same content, tools, structured output, directives) with
Azure's additions: ``prompt_filter_results`` on the completion and ``content_filter_results`` on each
choice; in a stream, a first chunk with empty ``choices``, empty ``id``/``model``/``object`` and
``prompt_filter_results``, then ``content_filter_results`` on every choice. Headers add
``apim-request-id``, ``x-ms-region`` and ``x-ms-deployment-name``.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import msgspec

from gateway.providers.mock import MockApp, _Plan

if TYPE_CHECKING:
    from gateway.app import Request

__all__ = ["AzureMockApp", "azure_body", "azure_chunk"]

_JSON: Final = "application/json"
_API_VERSION: Final = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_V1_VERSIONS: Final = frozenset({"preview", "latest", "v1"})
_DEPLOYMENT: Final = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)$")
_V1: Final = re.compile(r"^/openai/v1/(chat/completions|completions|embeddings|models)$")
_ENDPOINTS: Final = {"chat/completions": "chat", "completions": "completions", "embeddings": "embeddings",
                     "models": "models"}
_REGION: Final = "Sweden Central"
_DENIED: Final = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)

_SAFE: Final = {"filtered": False, "severity": "safe"}
_PROMPT_FILTER: Final = [{"prompt_index": 0, "content_filter_results": {
    "hate": _SAFE, "jailbreak": {"filtered": False, "detected": False}, "self_harm": _SAFE, "sexual": _SAFE,
    "violence": _SAFE,
}}]
_CHOICE_FILTER: Final = {
    "hate": _SAFE, "protected_material_code": {"filtered": False, "detected": False},
    "protected_material_text": {"filtered": False, "detected": False}, "self_harm": _SAFE, "sexual": _SAFE,
    "violence": _SAFE,
}

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


def _azure_error(status: int, code: str, message: str) -> _Plan:
    body = _encode({"error": {"code": code, "message": message}})
    return _Plan(status, [("content-type", _JSON), ("apim-request-id", str(uuid.uuid4()))], (body,), (False,))


def azure_body(body: bytes) -> bytes:
    """A completion body with Azure's content-filter fields (other bodies unchanged)."""
    try:
        obj = _decode(body)
    except msgspec.DecodeError:
        return body  # garbage stays garbage
    if obj.get("object") not in ("chat.completion", "text_completion") or "choices" not in obj:
        return body
    for choice in obj["choices"]:
        choice["content_filter_results"] = _CHOICE_FILTER
    obj["prompt_filter_results"] = _PROMPT_FILTER
    return _encode(obj)


def azure_chunk(event: bytes) -> bytes:
    """One SSE event with ``content_filter_results`` on its choices (``{}`` on the role and finish
    chunks, the full results on content chunks, as Azure sends)."""
    if not event.startswith(b"data: {"):
        return event
    try:
        obj = _decode(event[6:].strip())
    except msgspec.DecodeError:
        return event
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") or {}
        has_content = bool(delta.get("content") or delta.get("tool_calls") or choice.get("text"))
        choice["content_filter_results"] = _CHOICE_FILTER if has_content else {}
    return b"data: " + _encode(obj) + b"\n\n"


_FIRST_CHUNK: Final = b"data: " + _encode(
    {"choices": [], "created": 0, "id": "", "model": "", "object": "",
     "prompt_filter_results": _PROMPT_FILTER}
) + b"\n\n"


class AzureMockApp(MockApp):
    """``MockApp`` answering as an Azure OpenAI resource (see the module docstring)."""

    def __init__(self, config: Any = None, *, api_key: str | None = None) -> None:
        super().__init__(config)
        self.api_key = api_key

    def _auth(self, request: Request) -> _Plan | None:
        if self.api_key is None:
            return None
        key = request.header(b"api-key")
        bearer = request.header(b"authorization")
        if key is not None and key.decode("latin-1") == self.api_key:
            return None
        if bearer is not None and bearer.decode("latin-1") == f"Bearer {self.api_key}":
            return None
        return _azure_error(401, "401", _DENIED)

    def _plan_for(self, request: Request) -> _Plan:
        path = request.path
        if path == "/healthz":
            return _Plan(200, [("content-type", _JSON)], (b'{"status":"ok"}',), (False,))
        denied = self._auth(request)
        if denied is not None:
            return denied
        version = parse_qs(request.query).get("api-version", [None])[-1]
        deployment: str | None = None
        m = _DEPLOYMENT.match(path)
        if m is not None:
            if version is None:
                return _azure_error(404, "404", "Resource not found")
            deployment, op = m.group(1), m.group(2)
        else:
            v1 = _V1.match(path)
            if v1 is None:
                return _azure_error(404, "404", "Resource not found")
            op = v1.group(1)
        if version is not None and not _API_VERSION.match(version) and not (
                deployment is None and version in _V1_VERSIONS):
            return _azure_error(400, "BadRequest", "API version not supported")
        want = "GET" if op == "models" else "POST"
        if request.method != want:
            return _azure_error(405, "405", f"Method {request.method} not allowed")
        body = request.body
        if deployment is not None:
            body = _with_model(body, deployment)
        x_mock = request.header(b"x-mock")
        plan = self.llm.plan(_ENDPOINTS[op], body, None if x_mock is None else x_mock.decode("latin-1"))
        return self._azure(plan, deployment)

    def _azure(self, plan: _Plan, deployment: str | None) -> _Plan:
        """The OpenAI plan rendered with a fresh id and rewritten with Azure's fields and headers."""
        reply = self.llm.render(plan)
        headers = [*reply.headers, ("apim-request-id", str(uuid.uuid4())), ("x-ms-region", _REGION)]
        if deployment is not None:
            headers.append(("x-ms-deployment-name", deployment))
        ok = plan.status < 400
        if reply.chunks is None:
            parts: tuple[bytes, ...] = (azure_body(reply.body) if ok else reply.body,)
        else:
            chunks = [azure_chunk(c) for c in reply.chunks] if ok else list(reply.chunks)
            parts = (_FIRST_CHUNK, *chunks) if ok else tuple(chunks)
        cut = plan.cut
        if cut is not None and plan.stream and ok:
            cut += 1  # the first chunk is Azure's, not one of the N the directive counts
        return _Plan(plan.status, headers, parts, (False,) * len(parts), stream=plan.stream,
                     latency=plan.latency, chunk_delay=plan.chunk_delay, cut=cut, hang=plan.hang)


def _with_model(body: bytes, deployment: str) -> bytes:
    """The request body with ``model`` set to the deployment (a body that is not a JSON object as is)."""
    try:
        obj = _decode(body)
    except msgspec.DecodeError:
        return body
    obj["model"] = deployment
    return _encode(obj)
