"""Cache keys: a cryptographic hash of a canonical form of the request.

Two requests get the same key exactly when they ask the same thing of the same model in the same
namespace, however their JSON is written:

- the body is decoded and encoded again with object keys sorted (at every depth) and numbers in one
  form: an integral number is an integer (``1``, ``1.0``, ``1e0`` and ``1.00`` are one number, so are
  ``-0.0`` and ``0``), any other the shortest form that reads back as the same double (``0.70`` is
  ``0.7``); strings are compared decoded (``"\\u0041"`` is ``"A"``);
- the fields that do not change the answer are left out: ``user``, ``stream``, ``stream_options`` and
  ``metadata`` (a streamed and a whole request share one entry: the entry is the assembled answer, and
  a hit is replayed in the form asked for);
- everything else is in, unknown fields included: a field the gateway does not know may still change
  the answer, so it must change the key.

Each client dialect has its own form (the dialect is in the hashed head, so two dialects never share an
entry even when their bodies read alike):

    dialect              left out                                  added
    openai_chat          user, stream, stream_options, metadata    -
    anthropic_messages   stream, metadata (its user_id), the       the anthropic-beta (its values sorted)
                         cache_control marks of system, message    and anthropic-version headers: an
                         and tool_result blocks and of tools       Anthropic upstream gets them, and a beta
                         (they say where Anthropic may cache a     may change the answer
                         prefix, not what the answer is)
    openai_responses     user, safety_identifier, stream,          previous_response_id becomes the
                         metadata, store, prompt_cache_key, the    conversation it names, as stored: two
                         ids of input items                        requests continuing the same
                                                                   conversation are one question

The hashed form is the namespace, dialect, endpoint and model, each length-prefixed, then the canonical
JSON, through BLAKE2b (256 bits): the namespace (``t:<tenant>``, ``k:<key id>`` or ``g``, by the model's
``scope``) keeps one tenant's entries out of another's reach, and there is no way for a client to name
a key (no cache-key header): a client can only ask its own question again.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec

from gateway._core.canon import Canonicaliser
from gateway._core.canon_py import decode_canonical, encode_canonical
from gateway.errors import BadRequest

__all__ = [
    "CHAT_FORM", "IGNORED_FIELDS", "MESSAGES_FORM", "MESSAGES_IGNORED", "RESPONSES_IGNORED", "KeyParts",
    "cache_key", "canonical", "header_part", "is_deterministic", "key_head", "messages_canonical",
    "messages_form", "namespace", "request_form", "responses_form",
]

#: request fields that never change the answer (OpenAI chat)
IGNORED_FIELDS: Final = ("user", "stream", "stream_options", "metadata")
#: the same for Anthropic Messages (``metadata.user_id`` is its ``user``); ``cache_control`` marks are
#: left out where they mark a block (``messages_form``)
MESSAGES_IGNORED: Final = ("stream", "metadata")
#: the same for OpenAI Responses (``previous_response_id`` is replaced, see ``responses_form``)
RESPONSES_IGNORED: Final = (
    "user", "safety_identifier", "stream", "stream_options", "metadata", "store", "prompt_cache_key",
)


# PERF: built once (gateway._core.canon_py: the reference of the canonical form)
_decode: Final = decode_canonical
_encode: Final = encode_canonical
#: the canonical form of an OpenAI chat body, without the fields that do not change its answer (# PERF:
#: compiled, one pass over the bytes: gateway._core.canon)
CHAT_FORM: Final = Canonicaliser(IGNORED_FIELDS)
#: the same for an Anthropic Messages body (its ``cache_control`` marks are left out by ``messages_form``)
MESSAGES_FORM: Final = Canonicaliser(MESSAGES_IGNORED)


def request_form(body: bytes, ignored: tuple[str, ...] = IGNORED_FIELDS) -> dict[str, Any]:
    """The request body decoded in canonical form (numbers in one form), without the fields that do
    not change the answer (``ignored``). Raises BadRequest when it is not a JSON object."""
    try:
        obj = _decode(body)
    except msgspec.DecodeError:
        raise BadRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    for name in ignored:
        obj.pop(name, None)
    return obj


def _unmark(blocks: Any) -> None:
    """``cache_control`` out of each block of a list (a tool_result's inner blocks too)."""
    if not isinstance(blocks, list):
        return
    for b in blocks:
        if isinstance(b, dict):
            b.pop("cache_control", None)
            if b.get("type") == "tool_result":
                _unmark(b.get("content"))


def messages_form(body: bytes) -> dict[str, Any]:
    """An Anthropic Messages body in canonical form: ``request_form`` without ``MESSAGES_IGNORED`` and
    without the ``cache_control`` marks of its blocks and tools (only there: a tool's input schema or a
    tool call's input may have a property of that name, and it stays)."""
    form = request_form(body, MESSAGES_IGNORED)
    _unmark(form.get("system"))
    _unmark(form.get("tools"))
    messages = form.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                _unmark(m.get("content"))
    return form


def messages_canonical(body: bytes) -> bytes:
    """``messages_form`` written with its object keys sorted. # PERF: in one compiled pass when the body
    has no ``cache_control`` key anywhere: there is no mark to leave out, and the two forms are the same
    (the canonical bytes hold a key named so exactly when they hold ``"cache_control"``: nothing in the
    name is escaped; a string of that text only sends the body the long way)."""
    out = MESSAGES_FORM.canonical(body)
    if out is not None and b'"cache_control"' not in out:
        return out
    return _encode(messages_form(body))


def responses_form(body: bytes, previous: list[Any] | None) -> dict[str, Any]:
    """An OpenAI Responses body in canonical form: ``request_form`` without ``RESPONSES_IGNORED`` and
    the ids of its input items; ``previous_response_id`` is replaced by ``previous``, the conversation it
    resolved to (IR messages, as builtins): the answer depends on that conversation, not on its id."""
    form = request_form(body, RESPONSES_IGNORED)
    items = form.get("input")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                item.pop("id", None)
    if form.pop("previous_response_id", None) is not None:
        form["previous_response_id"] = msgspec.to_builtins(previous or [])  # a list: no client's string
    return form


def header_part(*values: bytes | None) -> bytes:
    """Request headers that change the answer, as a part of the hashed form (after the head, before the
    body): each length-prefixed (absent: ``-``), so that no value can run into the next or the body."""
    return b"".join(b"-" if v is None else b"%d:%s" % (len(v), v) for v in values)


def canonical(body: bytes, form: Canonicaliser = CHAT_FORM) -> bytes:
    """The request body in canonical form: ``request_form`` written with its object keys sorted, in one
    compiled pass (``form``: the dialect's, by the fields it leaves out). Raises BadRequest when it is not
    a JSON object."""
    out = form.canonical(body)
    if out is None:
        request_form(body, form.ignored)  # raises the BadRequest that says why
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return out


def is_deterministic(form: dict[str, Any]) -> bool:
    """The request pins its answer down: temperature 0, or a seed (``when = "deterministic"``)."""
    return form.get("temperature") == 0 or isinstance(form.get("seed"), int)


def namespace(scope: str, tenant: str | None, key_id: str | None) -> str:
    """Whose entries a request may see: its key's, its tenant's, or everyone's (``global``). Without keys
    (``[auth] required = false``) every caller is the one anonymous tenant."""
    if scope == "global":
        return "g"
    if scope == "key":
        return "k:" + (key_id or "")
    return "t:" + (tenant or "")


class KeyParts(msgspec.Struct, frozen=True):
    namespace: str
    dialect: str
    endpoint: str
    model: str


def key_head(parts: KeyParts) -> bytes:
    """What precedes the canonical body in the hashed form: a version tag, then the namespace, dialect,
    endpoint and model, each length-prefixed (so that no part can run into the next). The phase keeps
    these per namespace and model (# PERF: built once, not per request)."""
    fields = (parts.namespace, parts.dialect, parts.endpoint, parts.model)
    return b"gw-cache-v1\0" + "".join(f"{len(p)}:{p}" for p in fields).encode()


def cache_key(parts: KeyParts | bytes, form: dict[str, Any], headers: bytes = b"") -> bytes:
    """The entry's key: 32 bytes of BLAKE2b over ``key_head`` (given as ``parts`` or already built), the
    dialect's ``header_part`` (none for OpenAI chat) and the canonical body (the dialect's form written
    with sorted keys)."""
    head = parts if isinstance(parts, bytes) else key_head(parts)
    return hashlib.blake2b(head + headers + _encode(form), digest_size=32).digest()
