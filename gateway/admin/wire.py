"""What the admin API reads and writes: request bodies and response views, as msgspec Structs.

The same Structs decode the requests, encode the responses and, through ``msgspec.json.schema_components``,
become the schemas of the OpenAPI document (``gateway.admin.openapi``), so the document cannot drift from
what the handlers do.

Views are not the store's records: a key's view never carries its digests, and both keys and tenants say
where they come from (``source``: ``"api"`` for the store, ``"config"`` for the TOML file).
"""

from __future__ import annotations

from typing import Literal

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


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request body: unknown fields are refused (a typo is a 400, never silently ignored)."""


class _View(msgspec.Struct, frozen=True, kw_only=True):
    """A response object: every field is always present (null when unset)."""


# -- request bodies ----------------------------------------------------------------------------------------


class ReasonBody(_Body, frozen=True, kw_only=True):
    #: why: recorded in the audit log
    reason: str | None = None


class TenantCreate(_Body, frozen=True, kw_only=True):
    id: str
    #: display name (default: the id)
    name: str | None = None
    #: model names or glob patterns this tenant's keys may use at most
    allowed_models: list[str] = msgspec.field(default_factory=_all)
    limit_policy: str | None = None
    budget: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    #: data residency: deployment regions its keys may be served in (null: any), tags those must carry
    allowed_regions: list[str] | None = None
    required_tags: list[str] = msgspec.field(default_factory=list)
    reason: str | None = None


class TenantPatch(TenantUpdate, frozen=True, kw_only=True):
    """Fields left out are not changed."""

    reason: str | None = None

    def update(self) -> TenantUpdate:
        return TenantUpdate(**{f: getattr(self, f) for f in TenantUpdate.__struct_fields__})


class KeyCreate(_Body, frozen=True, kw_only=True):
    #: the owning tenant; a tenant admin may leave it out (its own tenant)
    tenant: str | None = None
    name: str = ""
    #: model names or glob patterns (``["*"]``: whatever the tenant may use)
    allowed_models: list[str] = msgspec.field(default_factory=_all)
    #: "chat", "completions", "embeddings", "models", or "*"
    allowed_endpoints: list[str] = msgspec.field(default_factory=_all)
    #: Unix seconds after which the key stops working
    expires_at: float | None = None
    limit_policy: str | None = None
    budget: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    #: data residency, within the tenant's (narrower only): regions (null: the tenant's), more tags
    allowed_regions: list[str] | None = None
    required_tags: list[str] = msgspec.field(default_factory=list)
    reason: str | None = None


class KeyPatch(KeyUpdate, frozen=True, kw_only=True):
    """Fields left out are not changed; ``expires_at: null`` removes the expiry."""

    reason: str | None = None

    def update(self) -> KeyUpdate:
        return KeyUpdate(**{f: getattr(self, f) for f in KeyUpdate.__struct_fields__})


class RotateBody(_Body, frozen=True, kw_only=True):
    #: how long the replaced secret keeps working (default: ``[auth] rotation_grace``); 0: not at all
    grace_seconds: float | None = None
    reason: str | None = None


class SubscriptionCreate(_Body, frozen=True, kw_only=True):
    #: the subscribing tenant; a tenant admin may leave it out (its own tenant)
    tenant: str | None = None
    #: a model of the config marked ``approval = "required"``
    model: str
    reason: str | None = None


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
