"""The ``[guardrails]`` TOML schema and its semantic checks.

Configuration shape (embedded in the main configuration as ``[guardrails]``)::

    [guardrails]
    # which policies apply: to every request, per model, per tenant id, per key id (lists or one name)
    apply = { gateway = ["pii"], models = { "gpt-4o" = "strict" }, tenants = { acme = "strict" } }

    [guardrails.policies.pii]
    input = { email = "mask", phone = "mask", card = "block", api_key = "block" }
    output = { email = "mask", card = "block" }
    phone_regions = ["US", "GB", "DE"]
    deny = { words = ["project phoenix"], patterns = ["(?i)internal[- ]only"], action = "block" }
    allow = { words = ["support@example.com"] }
    injection = { action = "block", threshold = 1.0 }
    max_prompt_tokens = 8000
    max_messages = 64
    allowed_roles = ["system", "user", "assistant", "tool"]
    tool_arguments = "block"         # tool calls in answers: JSON matching the tool's parameters
    json_schema = "block"            # structured answers: valid against the requested schema
    webhook = { url = "http://guard.internal/check", timeout = 0.5, failure = "fail_closed" }

    [[guardrails.policies.pii.custom]]
    name = "employee_id"
    pattern = "EMP-\\d{6}"
    action = "mask"

Several policies may apply to one request; for each detector the strictest action wins (block > mask >
log), limits take their smallest value, allowed roles their intersection.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from typing import Final, Literal

import msgspec

from gateway.guard.detectors import BUILTIN

__all__ = [
    "Action",
    "ApplyGuards",
    "CustomDetector",
    "DenyConfig",
    "GuardPolicy",
    "GuardrailsConfig",
    "InjectionConfig",
    "WebhookConfig",
    "guardrail_problems",
]

Action = Literal["block", "mask", "log", "off"]
CheckAction = Literal["block", "log", "off"]

Path = tuple[str | int, ...]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class CustomDetector(_Base, frozen=True):
    """A named regex: its findings are typed by the upper-cased name (``<EMPLOYEE_ID_1>``)."""

    name: str
    pattern: str
    action: Action = "mask"
    #: where it looks: "input" (prompts), "output" (answers) or "both"
    direction: Literal["input", "output", "both"] = "both"
    #: the longest text it can match (a stream holds back no more than this)
    max_length: int = 64


class DenyConfig(_Base, frozen=True):
    """Words (case-insensitive, whole words) and regexes that a prompt or an answer must not contain."""

    words: list[str] = msgspec.field(default_factory=list)
    patterns: list[str] = msgspec.field(default_factory=list)
    action: Action = "block"
    direction: Literal["input", "output", "both"] = "both"


class AllowConfig(_Base, frozen=True):
    """Values never reported by any detector (exact words, case-insensitive, or full-match regexes)."""

    words: list[str] = msgspec.field(default_factory=list)
    patterns: list[str] = msgspec.field(default_factory=list)


class InjectionConfig(_Base, frozen=True):
    """Prompt-injection heuristics: each known phrasing adds its weight to the score (phrasings inside
    tool results or documents count ``tool_weight`` times); at ``threshold`` the action applies."""

    action: CheckAction = "block"
    threshold: float = 1.0
    tool_weight: float = 1.5
    #: extra phrasings (regexes, case-insensitive), weight 1.0 each
    patterns: list[str] = msgspec.field(default_factory=list)


class WebhookConfig(_Base, frozen=True):
    """An external guard: POSTed ``{"direction", "model", "key_id", "tenant", "body"}`` of each prompt;
    answers ``{"action": "allow"}`` or ``{"action": "block", "reason": "..."}``."""

    url: str
    timeout: float = 0.5
    #: when the guard does not answer in time or answers an error: let the request through, or refuse it
    failure: Literal["fail_open", "fail_closed"] = "fail_closed"
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class GuardPolicy(_Base, frozen=True):
    """``[guardrails.policies.<name>]``."""

    #: built-in detector name -> action, on prompts (the request) and on answers
    input: dict[str, Action] = msgspec.field(default_factory=dict)
    output: dict[str, Action] = msgspec.field(default_factory=dict)
    #: regions whose national numbers are recognised without a "+" country code (ISO 3166 alpha-2)
    phone_regions: list[str] = msgspec.field(default_factory=lambda: ["US", "GB", "DE", "FR"])
    custom: list[CustomDetector] = msgspec.field(default_factory=list)
    deny: DenyConfig | None = None
    allow: AllowConfig | None = None
    injection: InjectionConfig | None = None
    #: the prompt's tokens, counted with the model's tokenizer
    max_prompt_tokens: int | None = None
    max_messages: int | None = None
    allowed_roles: list[str] | None = None
    #: answers' tool calls: arguments must be a JSON object valid against the tool's parameters schema
    tool_arguments: CheckAction = "off"
    #: structured answers (response_format json_schema): the content must be valid against the schema
    json_schema: CheckAction = "off"
    webhook: WebhookConfig | None = None


Names = str | list[str]


class ApplyGuards(_Base, frozen=True):
    gateway: Names = msgspec.field(default_factory=list)
    models: dict[str, Names] = msgspec.field(default_factory=dict)
    tenants: dict[str, Names] = msgspec.field(default_factory=dict)
    keys: dict[str, Names] = msgspec.field(default_factory=dict)


class GuardrailsConfig(_Base, frozen=True):
    enabled: bool = True
    policies: dict[str, GuardPolicy] = msgspec.field(default_factory=dict)
    apply: ApplyGuards = msgspec.field(default_factory=ApplyGuards)


def names(value: Names) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def guardrail_problems(config: GuardrailsConfig, models: Collection[str]) -> Iterator[tuple[Path, str]]:
    """Unknown detector and policy names, regexes that do not compile, bad limits."""
    for name, p in config.policies.items():
        where: Path = ("guardrails", "policies", name)
        for side in ("input", "output"):
            for det in getattr(p, side):
                if det not in BUILTIN:
                    yield (*where, side, det), (f"unknown detector {det!r}; built-in detectors: "
                                                + ", ".join(BUILTIN) + " (custom ones go in custom)")
        for i, c in enumerate(p.custom):
            yield from _regex((*where, "custom", i, "pattern"), c.pattern)
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,39}", c.name):
                yield (*where, "custom", i, "name"), \
                    "a name is a letter then letters, digits or _ (40 at most)"
        if p.deny is not None:
            for i, rx in enumerate(p.deny.patterns):
                yield from _regex((*where, "deny", "patterns", i), rx)
        if p.allow is not None:
            for i, rx in enumerate(p.allow.patterns):
                yield from _regex((*where, "allow", "patterns", i), rx)
        if p.injection is not None:
            for i, rx in enumerate(p.injection.patterns):
                yield from _regex((*where, "injection", "patterns", i), rx)
        for key in ("max_prompt_tokens", "max_messages"):
            v = getattr(p, key)
            if v is not None and v < 1:
                yield (*where, key), "must be at least 1"
        if p.webhook is not None:
            if not p.webhook.url.startswith(("http://", "https://")):
                yield (*where, "webhook", "url"), "must be an http:// or https:// URL"
            if not 0 < p.webhook.timeout <= 60:
                yield (*where, "webhook", "timeout"), "must be above 0 and at most 60 seconds"
    known = set(config.policies)
    apply = config.apply
    refs: list[tuple[Path, Names]] = [(("guardrails", "apply", "gateway"), apply.gateway)]
    for table in ("models", "tenants", "keys"):
        refs.extend((("guardrails", "apply", table, k), v) for k, v in getattr(apply, table).items())
    for path, value in refs:
        for n in names(value):
            if n not in known:
                yield path, f"unknown guardrail policy {n!r}" + (
                    f"; policies: {', '.join(sorted(known))}" if known else "; none is defined")
    for model in apply.models:
        if model not in models:
            yield ("guardrails", "apply", "models", model), f"unknown model {model!r}"


def _regex(path: Path, rx: str) -> Iterator[tuple[Path, str]]:
    try:
        re.compile(rx)
    except re.error as exc:
        yield path, f"the regex does not compile: {exc}"
        return
    try:  # allow and injection patterns are joined into one regex: each must hold as a group
        re.compile(f"(?:{scoped(rx)})|x")
    except re.error as exc:
        yield path, (f"the regex cannot be joined with others ({exc}); flags at its start may be "
                     "a, i, m, s, u and x, as in (?i)...")


_LEADING_FLAGS: Final = re.compile(r"\(\?([aiLmsux]+)\)")


def scoped(rx: str) -> str:
    """``rx`` with its leading inline flags, if any, as a scoped group: ``(?i)foo`` → ``(?i:foo)``, so
    that it can be joined with other patterns (Python refuses global flags past a pattern's start).
    ``u`` is dropped (it is the default for text); ``L`` (bytes patterns only) is left, for the config
    check to refuse."""
    m = _LEADING_FLAGS.match(rx)
    if m is None:
        return rx
    flags = m.group(1).replace("u", "")
    if "L" in flags:
        return rx
    rest = rx[m.end():]
    return f"(?{flags}:{rest})" if flags else rest
