"""The ``[prompts.NAME]`` tables: prompt templates published as APIs (docs/prompts.md).

A prompt has versions; each version names a model, holds message templates (Jinja2, sandboxed), default
parameters, the JSON Schema of its variables and, optionally, of its answer. One version is live; a
``split`` sends shares of the traffic to several versions (A/B, canary). Only what the types cannot say is
checked here (``prompt_problems``), with the rest of the file's problems, by the config loader.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import msgspec

__all__ = [
    "PromptConfig",
    "PromptMessageConfig",
    "PromptParams",
    "PromptVersionConfig",
    "prompt_problems",
]

#: prompt and version names: what may appear in a URL path segment and a scope entry unquoted
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: paths the gateway answers itself or proxies: a prompt's custom ``path`` may not take them
_RESERVED = ("/v1/chat/", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/messages", "/v1/responses",
             "/healthz", "/readyz", "/metrics")
_PATH = re.compile(r"^/[A-Za-z0-9._~/-]{1,199}$")


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class PromptMessageConfig(_Base, frozen=True):
    """One message: a fixed role and a template of its content (variables go only into the content)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class PromptParams(_Base, frozen=True, omit_defaults=True):
    """Default request parameters of a version (fixed: variables never reach them)."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class PromptVersionConfig(_Base, frozen=True):
    #: the model (a ``[models.NAME]``, routed or direct) the rendered messages are sent to
    model: str
    messages: list[PromptMessageConfig]
    params: PromptParams = msgspec.field(default_factory=PromptParams)
    #: JSON Schema (2020-12) of the variables object
    input_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    #: JSON Schema of the answer: the model is asked for JSON of this schema and its answer is checked
    output_schema: dict[str, Any] | None = None
    description: str = ""


class PromptConfig(_Base, frozen=True):
    versions: dict[str, PromptVersionConfig]
    #: the version every call gets (when ``split`` is empty); rollback = set it back
    live: str
    #: version -> percent (sums to 100): a weighted A/B or canary split instead of ``live`` alone
    split: dict[str, float] = msgspec.field(default_factory=dict)
    #: what keeps a caller on one version of a split: "key" (the API key id; stable per key) or
    #: "request" (the x-request-id header when given, else each request drawn at random)
    split_on: Literal["key", "request"] = "key"
    #: an extra path that serves this prompt besides /v1/prompts/NAME
    path: str | None = None
    #: "required": a tenant must subscribe to ``prompt:NAME`` and an operator approve (as for a model)
    approval: Literal["none", "required"] = "none"
    description: str = ""


def prompt_problems(
    prompts: Mapping[str, PromptConfig], models: Mapping[str, Any]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(key path, message) of each problem the types cannot express: names, versions, the split,
    models, templates that do not compile, schemas that are not JSON Schema, paths."""
    from gateway.prompts.render import TemplateProblem, compile_version

    paths: dict[str, str] = {}
    for name, p in prompts.items():
        base: tuple[str | int, ...] = ("prompts", name)
        if not NAME.match(name):
            yield base, "a prompt name is letters, digits, '.', '_' or '-' (at most 64, not first '.-_')"
        if not p.versions:
            yield (*base, "versions"), "must define at least one version"
        if p.live not in p.versions:
            yield (*base, "live"), f"names no version of this prompt (versions: {sorted(p.versions)})"
        for version, share in p.split.items():
            if version not in p.versions:
                yield (*base, "split", version), "names no version of this prompt"
            if not (math.isfinite(share) and share >= 0):
                yield (*base, "split", version), f"must be a percentage >= 0, found {share}"
        if p.split and abs(sum(p.split.values()) - 100.0) > 1e-6:
            yield (*base, "split"), f"the shares must sum to 100, found {sum(p.split.values()):g}"
        if p.path is not None:
            if not _PATH.match(p.path) or p.path.startswith(_RESERVED) or p.path.startswith("/v1/prompts"):
                yield (*base, "path"), (f"must be a path such as /v1/sentiment, not one the gateway already "
                                        f"serves, found {p.path!r}")
            elif p.path in paths:
                yield (*base, "path"), f"is the path of prompt {paths[p.path]} too"
            else:
                paths[p.path] = name
        for version, v in p.versions.items():
            vpath = (*base, "versions", version)
            if not NAME.match(version):
                yield vpath, "a version name is letters, digits, '.', '_' or '-' (at most 64)"
            if v.model not in models:
                yield (*vpath, "model"), f"names no [models] table ({v.model!r})"
            elif "chat" not in models[v.model].endpoints:
                yield (*vpath, "model"), f"model {v.model!r} does not serve the chat endpoint"
            if not v.messages:
                yield (*vpath, "messages"), "must hold at least one message"
            try:
                compile_version(name, version, v)
            except TemplateProblem as exc:
                yield (*vpath, *exc.path), exc.message
