"""The OpenAPI 3.1 document of the admin API, generated from ``routes.ROUTES`` and the ``wire`` Structs.

Schemas come from ``msgspec.json.schema_components`` over the very types the handlers encode and decode,
so the document describes what the implementation does; a test validates real responses of every
operation against it.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from gateway.admin import wire
from gateway.admin.routes import ROUTES, Operation

__all__ = ["document", "document_bytes"]

_REF = "#/components/schemas/{name}"
_VERSION = "1.0.0"


def _types() -> list[Any]:
    seen: list[Any] = [wire.ErrorBody]
    for op in ROUTES:
        for tp in (op.response, op.body):
            if tp is not None and tp not in seen:
                seen.append(tp)
    return seen


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    400: (
        "invalid input: malformed JSON, an unknown field or parameter, a value out of range or too long, "
        "characters a field does not take (see each field's maxLength and pattern), a key that would be "
        "expired at creation"
    ),
    401: "no admin token, or not a valid one",
    403: "a tenant admin reaching outside its tenant (tenant_forbidden) or an operator-only action",
    404: "no such object, or one of another tenant (the two answers are the same)",
    409: "the write contradicts the stored state, or targets a record of the config file",
    503: "the store is not available",
}


#: the headers of a write's answer (``AdminApp._in_force``)
_WRITE_HEADERS = {
    "x-gateway-change-version": {
        "description": "the store's change version that holds this write",
        "schema": {"type": "integer"},
    },
    "x-gateway-applied": {
        "description": (
            "'node': every worker of this gateway node applies the write now (the answer waited for them, "
            "up to [admin] apply_timeout; a new key is in force at once); 'pending; late=N': N "
            "workers had not applied it in time and will with their next notice from the store; "
            "'unknown': the admin API could not tell"
        ),
        "schema": {"type": "string", "pattern": "^(node|unknown|pending; late=[0-9]+)$"},
    },
}


def _operation(op: Operation, refs: dict[type, dict[str, Any]]) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    for seg in op.segments:
        if seg.startswith("{"):
            name = seg[1:-1]
            params.append({
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": "percent-encoded ('/' as %2F)" if name == "model" else name.replace("_", " "),
            })
    for q in op.query:
        params.append({"name": q.name, "in": "query", "required": False, "schema": q.schema,
                       "description": q.description})
    success = refs[op.response] if op.response is not None else {"type": "object"}
    responses: dict[str, Any] = {str(op.status): _json(success, op.summary)}
    if op.writes:
        responses[str(op.status)]["headers"] = _WRITE_HEADERS
    if op.handler == "usage_query":
        responses[str(op.status)]["content"]["text/csv"] = {"schema": {"type": "string"}}
    statuses = set(op.errors)
    if op.auth:
        statuses |= {400, 401, 503}
    for status in sorted(statuses):
        schema = refs[wire.Health] if op.handler == "health" else refs[wire.ErrorBody]
        responses[str(status)] = _json(schema, _ERRORS[status])
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": params,
        "responses": responses,
    }
    if op.description or op.operator_only:
        out["description"] = " ".join(
            part for part in (op.description, "Operator only." if op.operator_only else "") if part
        )
    if op.body is not None:
        out["requestBody"] = {"required": False, "content": {"application/json": {"schema": refs[op.body]}}}
    if not op.auth:
        out["security"] = []
    return out


@functools.cache
def document() -> dict[str, Any]:
    types = _types()
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in ROUTES:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm-gateway admin API",
            "version": _VERSION,
            "description": (
                "Tenants, API keys, subscriptions and the audit log. Authenticate with "
                "'Authorization: Bearer <token>': the operator token manages every tenant, a tenant admin "
                "token only its own. Objects of other tenants answer 404, exactly as missing ones; a "
                "parameter naming another tenant answers 403 tenant_forbidden."
            ),
        },
        "servers": [{"url": "http://127.0.0.1:8081"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@functools.cache
def document_bytes() -> bytes:
    return msgspec.json.encode(document())
