"""The prompt catalogue and its OpenAPI 3.1 documents (one per prompt, one for all a caller may use).

Each prompt is described by its live version's input and output schemas (the schemas of a split's
other versions are listed under ``x-gateway-versions``): OpenAPI 3.1 takes JSON Schema 2020-12 as is, so
the schemas are placed in the document unchanged, and generated clients validate what the gateway does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway import __version__

if TYPE_CHECKING:
    from gateway.prompts.render import CompiledVersion
    from gateway.prompts.table import Prompt

__all__ = ["catalogue", "describe", "document"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_USAGE = {"type": ["object", "null"], "additionalProperties": True,
          "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                         "total_tokens": {"type": "integer"}}}


def _version(v: CompiledVersion) -> dict[str, Any]:
    return {"name": v.name, "model": v.model, "description": v.description,
            "input_schema": v.input_schema, "output_schema": v.output_schema}


def describe(p: Prompt) -> dict[str, Any]:
    """One prompt as the catalogue lists it."""
    return {
        "object": "prompt",
        "name": p.name,
        "description": p.description,
        "path": f"/v1/prompts/{p.name}",
        "custom_path": p.path,
        "model": f"prompt:{p.name}",
        "approval": "required" if p.approval else "none",
        "live": p.live.name,
        "split": {v.name: share for v, share in _shares(p)},
        "input_schema": p.live.input_schema,
        "output_schema": p.live.output_schema,
        "versions": [_version(v) for v in p.versions.values()],
    }


def _shares(p: Prompt) -> list[tuple[CompiledVersion, float]]:
    out, low = [], 0.0
    for edge, v in p.split:
        out.append((v, round(edge - low, 6)))
        low = edge
    return out


def catalogue(prompts: list[Prompt]) -> dict[str, Any]:
    return {"object": "list", "data": [describe(p) for p in prompts]}


def _operation(p: Prompt) -> dict[str, Any]:
    v = p.live
    output = v.output_schema if v.output_schema is not None else {"type": "string"}
    ident = "".join(c if c.isalnum() else "_" for c in p.name)
    envelope = {
        "type": "object",
        "required": ["variables"],
        "additionalProperties": False,
        "properties": {"variables": v.input_schema, "stream": {"type": "boolean", "default": False}},
    }
    answer = {
        "type": "object",
        "required": ["output", "prompt", "version", "usage"],
        "properties": {
            "output": output,
            "prompt": {"const": p.name},
            "version": {"enum": list(p.versions)},
            "usage": _USAGE,
        },
    }
    error = {"content": {"application/json": {"schema": _ERROR}}}
    return {
        "operationId": f"prompt_{ident}",
        "summary": p.description or f"prompt {p.name}",
        "x-gateway-live-version": v.name,
        "x-gateway-versions": {n: _version(x) for n, x in p.versions.items()},
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"oneOf": [envelope, v.input_schema]}}},
        },
        "responses": {
            "200": {
                "description": "The answer (with stream: true, a text/event-stream of {\"text\"} events, "
                               "then {\"prompt\", \"version\", \"usage\"} and [DONE])",
                "content": {"application/json": {"schema": answer},
                            "text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": {"description": "The variables fail the input schema (param names the field)", **error},
            "401": {"description": "No valid API key", **error},
            "403": {"description": "The key may not use this prompt, or its subscription is not approved",
                    **error},
            "429": {"description": "A rate limit or budget", **error},
            "502": {"description": "The answer failed the output schema twice, or the upstream failed",
                    **error},
        },
    }


def document(prompts: list[Prompt]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these prompts' endpoints."""
    paths: dict[str, Any] = {}
    for p in prompts:
        op = _operation(p)
        paths[f"/v1/prompts/{p.name}"] = {"post": op}
        if p.path is not None:
            paths[p.path] = {"post": {**op, "operationId": op["operationId"] + "_custom"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-gateway prompt APIs", "version": __version__},
        "components": {"securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
        "security": [{"apiKey": []}],
        "paths": paths,
    }
