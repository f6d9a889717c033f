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

The hashed form is the namespace, dialect, endpoint and model, each length-prefixed, then the canonical
JSON, through BLAKE2b (256 bits): the namespace (``t:<tenant>``, ``k:<key id>`` or ``g``, by the model's
``scope``) keeps one tenant's entries out of another's reach, and there is no way for a client to name
a key (no cache-key header): a client can only ask its own question again.
"""

from __future__ import annotations

import hashlib
import math
from decimal import Decimal
from typing import Any, Final

import msgspec

from gateway.errors import BadRequest

__all__ = [
    "IGNORED_FIELDS", "KeyParts", "cache_key", "canonical", "is_deterministic", "key_head", "namespace",
    "request_form",
]

#: request fields that never change the answer
IGNORED_FIELDS: Final = ("user", "stream", "stream_options", "metadata")


def _number(text: str) -> Any:
    """A JSON number that is not a plain integer (``1.5``, ``1e3``, ``-0.0``) in its one canonical form."""
    f = float(text)
    if math.isfinite(f):
        if f.is_integer():
            return int(f)
        return f
    # beyond a double's range: the exact decimal value, written one way, tagged so it is never a string
    return "\x00num:" + format(Decimal(text).normalize(), "E")


# PERF: built once; the hook runs only for numbers written with a fraction or an exponent
_decode: Final = msgspec.json.Decoder(float_hook=_number).decode
_encode: Final = msgspec.json.Encoder(order="sorted").encode


def request_form(body: bytes) -> dict[str, Any]:
    """The request body decoded in canonical form (numbers in one form), without the fields that do
    not change the answer. Raises BadRequest when it is not a JSON object."""
    try:
        obj = _decode(body)
    except msgspec.DecodeError:
        raise BadRequest("We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    for name in IGNORED_FIELDS:
        obj.pop(name, None)
    return obj


def canonical(body: bytes) -> bytes:
    """The request body in canonical form: ``request_form`` written with its object keys sorted."""
    return _encode(request_form(body))


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


def cache_key(parts: KeyParts | bytes, form: dict[str, Any]) -> bytes:
    """The entry's key: 32 bytes of BLAKE2b over ``key_head`` (given as ``parts`` or already built) and
    the canonical body (``request_form`` written with sorted keys)."""
    head = parts if isinstance(parts, bytes) else key_head(parts)
    return hashlib.blake2b(head + _encode(form), digest_size=32).digest()
