"""What the store holds, as msgspec Structs, and the pure rules that change it.

Records are frozen: a change makes a new record (``msgspec.structs.replace``), so a worker's in-memory key
table can hand the same object to many requests without copying or locking. Both store implementations
keep each record as its msgspec JSON encoding and apply the same rules below (sans-I/O: records and the
current time in, a new record or an error out), so they cannot drift apart.

Times are Unix seconds (float, UTC): what the hot path compares against ``time.time()`` without
converting. Spend days are ``YYYY-MM-DD`` strings (UTC).
"""

from __future__ import annotations

import re
from typing import Any, Generic, Literal, TypeVar

import msgspec

__all__ = [
    "AUDIT_ACTIONS",
    "SUBSCRIPTION_TRANSITIONS",
    "ApiKey",
    "AuditEntry",
    "Change",
    "ChangeKind",
    "Decision",
    "KeySource",
    "KeyState",
    "KeyStatus",
    "KeyUpdate",
    "Page",
    "Snapshot",
    "SpendScope",
    "StoredPrompt",
    "Subscription",
    "SubscriptionState",
    "Tenant",
    "TenantUpdate",
    "check_day",
    "check_tenant_id",
    "next_subscription_state",
]

T = TypeVar("T")

KeyState = Literal["active", "revoked"]
#: what the hot path acts on: the stored state, or "expired" once ``expires_at`` has passed
KeyStatus = Literal["active", "revoked", "expired"]
#: "config": a static key from the TOML file (digest only); the admin API refuses to change those
KeySource = Literal["api", "config"]
SubscriptionState = Literal["pending", "approved", "rejected", "revoked"]
Decision = Literal["approve", "reject", "revoke"]
ChangeKind = Literal["tenant", "key", "subscription", "prompt"]
#: the limits capability may add scopes (e.g. a named budget); each is a separate counter space
SpendScope = Literal["key", "tenant"]

#: the ``action`` of the audit entries the store appends itself, in the same transaction as the change
AUDIT_ACTIONS = (
    "tenant.create",
    "tenant.update",
    "tenant.delete",
    "key.create",
    "key.update",
    "key.revoke",
    "key.rotate",
    "subscription.request",
    "subscription.approve",
    "subscription.reject",
    "subscription.revoke",
)

_TENANT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DAY_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def check_tenant_id(tenant_id: str) -> bool:
    """Tenant ids are 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit.

    Why restricted: they appear in URLs of the admin API, in Redis key names and in subscription ids
    (``<tenant>/<model>``, where model names may themselves contain ``/``).
    """
    return _TENANT_ID_RE.fullmatch(tenant_id) is not None


def check_day(day: str) -> bool:
    """A spend day is ``YYYY-MM-DD`` (UTC), so that days sort as strings."""
    return _DAY_RE.fullmatch(day) is not None


class _Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Unknown fields are ignored on decode: a record written by a newer gateway stays readable by an
    older one during a rolling upgrade."""


class Tenant(_Record, frozen=True, kw_only=True):
    """An organisation or team: owns keys, model access rules, policies and usage."""

    id: str
    #: display name
    name: str
    #: model names or glob patterns (``fnmatch``) this tenant's keys may use at most
    allowed_models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    #: name of a limit policy in the config (applied by the limits capability)
    limit_policy: str | None = None
    #: name of a budget in the config
    budget: str | None = None
    #: free-form labels, copied into call records
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    #: data residency: its keys are served only by deployments in one of these regions (None: any),
    #: carrying every one of these tags (docs/routing.md)
    allowed_regions: list[str] | None = None
    required_tags: list[str] = msgspec.field(default_factory=list)
    created_at: float
    updated_at: float


class ApiKey(_Record, frozen=True, kw_only=True):
    """A client key. Only the digest of its secret is kept (``gateway.auth.keyformat``)."""

    #: the public key id (the ``<keyid>`` part of ``gw-<keyid>-<secret>``)
    id: str
    name: str
    tenant: str
    #: self-describing digest of the current secret: ``hmac-sha256:<hex>`` or ``sha256:<hex>``
    digest: str
    #: after a rotation, the digest of the replaced secret, accepted until ``previous_valid_until``
    previous_digest: str | None = None
    previous_valid_until: float | None = None
    #: model names or glob patterns (``fnmatch``); ``["*"]`` = whatever the tenant may use; ``[]`` = none
    allowed_models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    #: endpoint names ("chat", "completions", "embeddings", "models", ...) or ``["*"]``
    allowed_endpoints: list[str] = msgspec.field(default_factory=lambda: ["*"])
    #: the key stops working at this time (None: never)
    expires_at: float | None = None
    limit_policy: str | None = None
    budget: str | None = None
    #: free-form labels, copied into call records
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    #: data residency, within its tenant's (narrower only): regions (None: the tenant's) and more tags
    allowed_regions: list[str] | None = None
    required_tags: list[str] = msgspec.field(default_factory=list)
    created_at: float
    updated_at: float
    #: kept apart from the record by the stores (batched writes from every worker), merged on read
    last_used_at: float | None = None
    state: KeyState = "active"
    revoked_at: float | None = None
    source: KeySource = "api"

    def status(self, now: float) -> KeyStatus:
        """``revoked`` and ``expired`` are distinct refusals (distinct error codes on the data plane)."""
        if self.state == "revoked":
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def digests_at(self, now: float) -> tuple[str, ...]:
        """The digests a presented secret may match at ``now``: the current one, and during a rotation's
        grace period the previous one."""
        if (
            self.previous_digest is not None
            and self.previous_valid_until is not None
            and now < self.previous_valid_until
        ):
            return (self.digest, self.previous_digest)
        return (self.digest,)


class Subscription(_Record, frozen=True, kw_only=True):
    """A tenant's access to a model marked ``approval = "required"`` (one per tenant and model)."""

    tenant: str
    model: str
    state: SubscriptionState
    requested_by: str
    requested_at: float
    decided_by: str | None = None
    decided_at: float | None = None
    #: why it was requested, approved, rejected or revoked (the latest word)
    reason: str | None = None
    updated_at: float


class AuditEntry(_Record, frozen=True, kw_only=True):
    """One line of the append-only audit log; ``seq`` is assigned by the store, strictly increasing."""

    seq: int
    at: float
    #: who: an operator or tenant-admin credential name, "config", "cli", ...
    actor: str
    #: what: one of ``AUDIT_ACTIONS`` for the store's own entries; callers may append others
    action: str
    #: the object acted on: a tenant id, a key id, or ``<tenant>/<model>`` for a subscription
    target: str
    tenant: str | None = None
    #: why, as given by the actor
    reason: str | None = None
    details: dict[str, str] = msgspec.field(default_factory=dict)


class Change(_Record, frozen=True, kw_only=True):
    """A write to a tenant, key or subscription, as listed by ``Store.changes_since``.

    ``id`` is the tenant id, the key id or the subscription's model; ``tenant`` is always the owning
    tenant, so a worker can refresh exactly the record that changed.
    """

    version: int
    kind: ChangeKind
    tenant: str
    id: str


class StoredPrompt(_Record, frozen=True, kw_only=True):
    """A prompt published through the admin API (docs/prompts.md): ``spec`` is its ``[prompts.NAME]``
    table as JSON, checked by the admin API before it is written and compiled by every worker."""

    name: str
    spec: dict[str, Any]
    revision: int
    updated_at: float
    updated_by: str


class Page(msgspec.Struct, Generic[T], frozen=True):
    """One page of a listing; pass ``next_cursor`` back for the next page (None: this was the last)."""

    items: list[T]
    next_cursor: str | None = None


class Snapshot(msgspec.Struct, frozen=True):
    """Everything the hot path caches, as of at least ``version``: load it, then ``watch(since=version)``.

    The version is read before the records, so a write that lands during the load is seen again by the
    watcher rather than lost.
    """

    version: int
    tenants: list[Tenant]
    keys: list[ApiKey]
    subscriptions: list[Subscription]
    #: prompts published through the admin API
    prompts: list[StoredPrompt] = msgspec.field(default_factory=list)


class _Update(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A partial update: fields left UNSET are not touched. Decodes straight from an admin PATCH body."""

    def changed_fields(self) -> list[str]:
        return [f for f in self.__struct_fields__ if getattr(self, f) is not msgspec.UNSET]


class TenantUpdate(_Update, frozen=True):
    name: str | msgspec.UnsetType = msgspec.UNSET
    allowed_models: list[str] | msgspec.UnsetType = msgspec.UNSET
    limit_policy: str | msgspec.UnsetType | None = msgspec.UNSET
    budget: str | msgspec.UnsetType | None = msgspec.UNSET
    labels: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    allowed_regions: list[str] | msgspec.UnsetType | None = msgspec.UNSET
    required_tags: list[str] | msgspec.UnsetType = msgspec.UNSET


class KeyUpdate(_Update, frozen=True):
    """What may change on a key. Its tenant, id and digests may not: rotation changes the secret."""

    name: str | msgspec.UnsetType = msgspec.UNSET
    allowed_models: list[str] | msgspec.UnsetType = msgspec.UNSET
    allowed_endpoints: list[str] | msgspec.UnsetType = msgspec.UNSET
    expires_at: float | msgspec.UnsetType | None = msgspec.UNSET
    limit_policy: str | msgspec.UnsetType | None = msgspec.UNSET
    budget: str | msgspec.UnsetType | None = msgspec.UNSET
    labels: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    allowed_regions: list[str] | msgspec.UnsetType | None = msgspec.UNSET
    required_tags: list[str] | msgspec.UnsetType = msgspec.UNSET


# -- subscription approval -------------------------------------------------------------------------------
#
# Theory of operation. A model marked ``approval = "required"`` serves a tenant only while the tenant's
# subscription to it is ``approved``. A tenant (admin) *requests*; an operator *approves* or *rejects*;
# an operator may *revoke* an approved subscription, and may approve without a request (a grant). A
# rejected or revoked subscription may be requested again, which makes it pending once more; an
# operator may also change their mind and approve a rejected or revoked one directly. Every step is a
# row below; any (action, state) pair not in the table is refused with Conflict and changes nothing.
# ``None`` is "no subscription yet". Each step is written together with its audit entry (who, when, why).
#
#   action      from        to
SUBSCRIPTION_TRANSITIONS: dict[tuple[str, SubscriptionState | None], SubscriptionState] = {
    ("request", None): "pending",
    ("request", "rejected"): "pending",
    ("request", "revoked"): "pending",
    ("approve", None): "approved",
    ("approve", "pending"): "approved",
    ("approve", "rejected"): "approved",
    ("approve", "revoked"): "approved",
    ("reject", "pending"): "rejected",
    ("revoke", "approved"): "revoked",
}


def next_subscription_state(action: str, state: SubscriptionState | None) -> SubscriptionState | None:
    """The state after ``action`` from ``state``, or None when the table has no such step."""
    return SUBSCRIPTION_TRANSITIONS.get((action, state))
