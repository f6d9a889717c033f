"""What the admin API reads and writes: request bodies and response views, as msgspec Structs.

The same Structs decode the requests, encode the responses and, through ``msgspec.json.schema_components``,
become the schemas of the OpenAPI document (``gateway.admin.openapi``), so the document cannot drift from
what the handlers do.

Views are not the store's records: a key's view never carries its digests, and both keys and tenants say
where they come from (``source``: ``"api"`` for the store, ``"config"`` for the TOML file).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from gateway.store.models import (
    AuditEntry,
    KeySource,
    KeyState,
    KeyStatus,
    KeyUpdate,
    Subscription,
    TenantUpdate,
)

__all__ = [
    "LIMITS",
    "MAX_REASON",
    "ONE_LINE",
    "AuditList",
    "CreatedKey",
    "Deleted",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "KeyCreate",
    "KeyList",
    "KeyPatch",
    "KeyView",
    "ReasonBody",
    "RotateBody",
    "SubscriptionCreate",
    "SubscriptionList",
    "TenantCreate",
    "TenantList",
    "TenantPatch",
    "TenantView",
    "Usage",
    "WhoAmI",
]


def _all() -> list[str]:
    return ["*"]


# -- input bounds ------------------------------------------------------------------------------------------
#
# What a request body may hold: every free-text field is bounded and one line (no control characters: a
# name, label or reason is shown in CLI tables and log lines, where a newline or an escape sequence would
# forge output); identifiers have their character sets. The bounds are ``msgspec.Meta`` on the request
# Structs, so decoding enforces them (400 ``invalid_argument`` naming the field, worded by ``LIMITS``) and
# the OpenAPI document shows them (``maxLength``, ``pattern``, ``maxItems``, ``maxProperties``).


def _whole(body: str) -> str:
    """A pattern the whole value must match. Not ``$``: in Python (msgspec checks with ``re.search``) it
    also matches before a final newline; "no character follows" means the same in Python and ECMA regexes
    (the OpenAPI document's dialect)."""
    return f"^{body}(?![\\s\\S])"


#: one line of text: no C0 control characters and no DEL
ONE_LINE = _whole(r"[^\x00-\x1f\x7f]*")
_TENANT_ID = _whole(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL_KEY = _whole(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,62}")

MAX_NAME = 200
MAX_REASON = 1000
MAX_MODEL = 256
MAX_LABEL_VALUE = 256
MAX_LABELS = 64
MAX_REFERENCE = 128
MAX_MODELS = 256
MAX_RESIDENCY = 32
MAX_RESIDENCY_NAME = 64

TenantId = Annotated[str, msgspec.Meta(pattern=_TENANT_ID, description="1-64 of A-Z a-z 0-9 . _ -")]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME, pattern=ONE_LINE)]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON, pattern=ONE_LINE)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODEL, pattern=ONE_LINE)]
ModelPatterns = Annotated[list[ModelName], msgspec.Meta(max_length=MAX_MODELS)]
Endpoints = Annotated[list[str], msgspec.Meta(max_length=8)]
#: the name of a limit policy or budget of the config file (any non-empty TOML key there)
Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REFERENCE, pattern=ONE_LINE)]
LabelKey = Annotated[str, msgspec.Meta(pattern=_LABEL_KEY)]
LabelValue = Annotated[str, msgspec.Meta(max_length=MAX_LABEL_VALUE, pattern=ONE_LINE)]
Labels = Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=MAX_LABELS)]
ResidencyName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_RESIDENCY_NAME, pattern=ONE_LINE)]
Regions = Annotated[list[ResidencyName], msgspec.Meta(max_length=MAX_RESIDENCY)]
Tags = Annotated[list[ResidencyName], msgspec.Meta(max_length=MAX_RESIDENCY)]

#: field name -> what it takes, for the 400 of a value out of bounds (msgspec's own words name the regex)
LIMITS = {
    "id": "a tenant id is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    "tenant": "a tenant id is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    "name": f"a name is one line of at most {MAX_NAME} characters (no control characters)",
    "reason": f"a reason is one line of at most {MAX_REASON} characters (no control characters)",
    "model": f"a model name is one line of 1 to {MAX_MODEL} characters (no control characters)",
    "allowed_models": (
        f"allowed_models holds at most {MAX_MODELS} model names or patterns, each one line of 1 to "
        f"{MAX_MODEL} characters"
    ),
    "allowed_endpoints": (
        "allowed_endpoints holds at most 8 of *, chat, completions, embeddings, messages, models"
    ),
    "limit_policy": f"a limit policy name is one line of 1 to {MAX_REFERENCE} characters",
    "budget": f"a budget name is one line of 1 to {MAX_REFERENCE} characters",
    "allowed_regions": (
        f"allowed_regions holds at most {MAX_RESIDENCY} region names, each one line of 1 to "
        f"{MAX_RESIDENCY_NAME} characters"
    ),
    "required_tags": (
        f"required_tags holds at most {MAX_RESIDENCY} tags, each one line of 1 to {MAX_RESIDENCY_NAME} "
        "characters"
    ),
    "labels": (
        f"labels are at most {MAX_LABELS} pairs; a label name is 1-63 letters, digits, '_', '.', ':', '/' or "
        f"'-' starting with a letter or '_', a value one line of at most {MAX_LABEL_VALUE} characters"
    ),
}


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request body: unknown fields are refused (a typo is a 400, never silently ignored)."""


class _View(msgspec.Struct, frozen=True, kw_only=True):
    """A response object: every field is always present (null when unset)."""


# -- request bodies ----------------------------------------------------------------------------------------


class ReasonBody(_Body, frozen=True, kw_only=True):
    #: why: recorded in the audit log
    reason: Reason | None = None


class TenantCreate(_Body, frozen=True, kw_only=True):
    id: TenantId
    #: display name (default: the id)
    name: Name | None = None
    #: model names or glob patterns this tenant's keys may use at most
    allowed_models: ModelPatterns = msgspec.field(default_factory=_all)
    limit_policy: Reference | None = None
    budget: Reference | None = None
    labels: Labels = msgspec.field(default_factory=dict)
    #: data residency: deployment regions its keys may be served in (null: any), tags those must carry
    allowed_regions: Regions | None = None
    required_tags: Tags = msgspec.field(default_factory=list)
    reason: Reason | None = None


class TenantPatch(TenantUpdate, frozen=True, kw_only=True):
    """Fields left out are not changed."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    allowed_models: ModelPatterns | msgspec.UnsetType = msgspec.UNSET
    limit_policy: Reference | msgspec.UnsetType | None = msgspec.UNSET
    budget: Reference | msgspec.UnsetType | None = msgspec.UNSET
    labels: Labels | msgspec.UnsetType = msgspec.UNSET
    reason: Reason | None = None

    def update(self) -> TenantUpdate:
        return TenantUpdate(**{f: getattr(self, f) for f in TenantUpdate.__struct_fields__})


class KeyCreate(_Body, frozen=True, kw_only=True):
    #: the owning tenant; a tenant admin may leave it out (its own tenant)
    tenant: TenantId | None = None
    name: Name = ""
    #: model names or glob patterns (``["*"]``: whatever the tenant may use)
    allowed_models: ModelPatterns = msgspec.field(default_factory=_all)
    #: "chat", "completions", "embeddings", "messages", "models", or "*"
    allowed_endpoints: Endpoints = msgspec.field(default_factory=_all)
    #: Unix seconds after which the key stops working; must be in the future
    expires_at: float | None = None
    limit_policy: Reference | None = None
    budget: Reference | None = None
    labels: Labels = msgspec.field(default_factory=dict)
    #: data residency, within the tenant's (narrower only): regions (null: the tenant's), more tags
    allowed_regions: Regions | None = None
    required_tags: Tags = msgspec.field(default_factory=list)
    reason: Reason | None = None


class KeyPatch(KeyUpdate, frozen=True, kw_only=True):
    """Fields left out are not changed; ``expires_at: null`` removes the expiry."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    allowed_models: ModelPatterns | msgspec.UnsetType = msgspec.UNSET
    allowed_endpoints: Endpoints | msgspec.UnsetType = msgspec.UNSET
    limit_policy: Reference | msgspec.UnsetType | None = msgspec.UNSET
    budget: Reference | msgspec.UnsetType | None = msgspec.UNSET
    labels: Labels | msgspec.UnsetType = msgspec.UNSET
    reason: Reason | None = None

    def update(self) -> KeyUpdate:
        return KeyUpdate(**{f: getattr(self, f) for f in KeyUpdate.__struct_fields__})


class RotateBody(_Body, frozen=True, kw_only=True):
    #: how long the replaced secret keeps working (default: ``[auth] rotation_grace``); 0: not at all
    grace_seconds: float | None = None
    reason: Reason | None = None


class SubscriptionCreate(_Body, frozen=True, kw_only=True):
    #: the subscribing tenant; a tenant admin may leave it out (its own tenant)
    tenant: TenantId | None = None
    #: a model of the config marked ``approval = "required"``
    model: ModelName
    reason: Reason | None = None


# -- views -------------------------------------------------------------------------------------------------


class TenantView(_View, frozen=True, kw_only=True):
    id: str
    name: str
    allowed_models: list[str]
    limit_policy: str | None
    budget: str | None
    labels: dict[str, str]
    allowed_regions: list[str] | None
    required_tags: list[str]
    #: "api": made through the admin API (in the store); "config": a [tenants.*] table, read-only here
    source: KeySource
    #: null for tenants of the config file
    created_at: float | None
    updated_at: float | None


class KeyView(_View, frozen=True, kw_only=True):
    """A key as the admin API shows it: never its secret, never its digests."""

    id: str
    name: str
    tenant: str
    allowed_models: list[str]
    allowed_endpoints: list[str]
    expires_at: float | None
    limit_policy: str | None
    budget: str | None
    labels: dict[str, str]
    allowed_regions: list[str] | None
    required_tags: list[str]
    #: the stored state ("active" or "revoked")
    state: KeyState
    #: what the data plane does with it now: "active", "revoked" or "expired"
    status: KeyStatus
    #: "api": made through the admin API; "config": an [auth] keys entry, read-only here
    source: KeySource
    created_at: float | None
    updated_at: float | None
    last_used_at: float | None
    revoked_at: float | None
    #: after a rotation: the replaced secret keeps working until then
    previous_valid_until: float | None


class CreatedKey(_View, frozen=True, kw_only=True):
    """The answer to a key creation or rotation: the only time the full key is ever shown."""

    #: the full key, ``gw-<id>-<secret>``: store it now, it cannot be shown again
    api_key: str
    key: KeyView


class TenantList(_View, frozen=True, kw_only=True):
    data: list[TenantView]
    #: pass as ``cursor`` for the next page; null on the last page
    next_cursor: str | None


class KeyList(_View, frozen=True, kw_only=True):
    data: list[KeyView]
    next_cursor: str | None


class SubscriptionList(_View, frozen=True, kw_only=True):
    data: list[Subscription]
    next_cursor: str | None


class AuditList(_View, frozen=True, kw_only=True):
    data: list[AuditEntry]
    next_cursor: str | None


class Deleted(_View, frozen=True, kw_only=True):
    id: str
    deleted: bool


class Usage(_View, frozen=True, kw_only=True):
    """Spend in US dollars per UTC day, as recorded by the data plane."""

    scope: Literal["key", "tenant"]
    id: str
    first_day: str
    last_day: str
    #: ``YYYY-MM-DD`` -> USD, only the days with any spend
    days: dict[str, float]
    total_usd: float


class WhoAmI(_View, frozen=True, kw_only=True):
    #: the name the audit log records: "operator" or "tenant:<id>"
    actor: str
    role: Literal["operator", "tenant_admin"]
    #: the tenant a tenant admin manages; null for the operator
    tenant: str | None


class Health(_View, frozen=True, kw_only=True):
    #: "ok", or "degraded" while the store cannot be reached
    status: Literal["ok", "degraded"]
    store: Literal["ok", "unavailable"]


class ErrorDetail(_View, frozen=True, kw_only=True):
    message: str
    type: str
    code: str | None
    param: str | None


class ErrorBody(_View, frozen=True, kw_only=True):
    """The one error shape of the admin API (the OpenAI error shape)."""

    error: ErrorDetail
