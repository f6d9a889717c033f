"""The store interface, its errors, and the rules both implementations apply inside their transactions.

Who uses it: the admin API and the CLI (create, list, change), each worker's key table (``snapshot`` once,
then ``watch`` + ``changes_since`` to stay current within a second of any write, on any node), and the
limits capability (``add_spend`` / ``get_spend``, batched off the request path). Nothing on the request
path awaits the store.

Guarantees every implementation gives:

- Every write to a tenant, key or subscription is atomic with its change record (``change_version`` goes
  up; ``changes_since`` lists it; ``watch`` in every process sees it) and, when an ``actor`` is given,
  with its audit entry. Spend, last-used times and audit appends are not changes: they would make every
  worker reload its key table for nothing.
- Listings are ordered (tenants and keys by id, subscriptions by tenant then model, audit by ``seq``) and
  paginated by opaque cursors that stay valid while records are added or removed.
- The audit log has no update or delete.
"""

from __future__ import annotations

import abc
import base64
import binascii
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, get_args

import msgspec

from gateway.auth import keyformat
from gateway.store.models import (
    ApiKey,
    AuditEntry,
    Change,
    Decision,
    KeySource,
    KeyState,
    KeyUpdate,
    Page,
    Snapshot,
    SpendScope,
    StoredPrompt,
    Subscription,
    SubscriptionState,
    Tenant,
    TenantUpdate,
    check_day,
    check_tenant_id,
    next_subscription_state,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "AuditDraft",
    "Conflict",
    "InvalidArgument",
    "NotFound",
    "Store",
    "StoreError",
    "StoreUnavailable",
]

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: how many change records are kept; a watcher further behind than this reloads everything
CHANGE_LOG_RETENTION = 10_000
#: the separator inside subscription ids and cursors: sorts below every character of a tenant id
SEP = "\x1f"
SPEND_SCOPES: tuple[str, ...] = get_args(SpendScope)


# -- errors ----------------------------------------------------------------------------------------------


class StoreError(Exception):
    """Base class. ``status`` and ``code`` are what the admin API answers with."""

    status: int = 500
    code: str = "store_error"


class NotFound(StoreError):
    status = 404
    code = "not_found"


class Conflict(StoreError):
    """The write contradicts the stored state: a duplicate id, a revoked key, a step the subscription
    table does not allow, a tenant that still has active keys."""

    status = 409
    code = "conflict"


class InvalidArgument(StoreError, ValueError):
    status = 400
    code = "invalid_argument"


class StoreUnavailable(StoreError):
    """The backend did not answer in time (Redis unreachable, SQLite locked past its busy timeout)."""

    status = 503
    code = "store_unavailable"


# -- the interface -----------------------------------------------------------------------------------------


class Store(abc.ABC):
    """Durable state: tenants, keys, subscriptions, the audit log, spend. See the module docstring.

    Mutating methods take ``actor`` (who) and ``reason`` (why); with an actor, the store appends the
    audit entry (action from ``models.AUDIT_ACTIONS``) in the same transaction as the change.
    """

    # -- lifecycle

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads; running ``watch`` iterators end."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- tenants

    @abc.abstractmethod
    async def create_tenant(
        self,
        tenant_id: str,
        *,
        name: str | None = None,
        allowed_models: Sequence[str] = ("*",),
        limit_policy: str | None = None,
        budget: str | None = None,
        labels: Mapping[str, str] | None = None,
        allowed_regions: Sequence[str] | None = None,
        required_tags: Sequence[str] = (),
        actor: str | None = None,
        reason: str | None = None,
    ) -> Tenant:
        """A new tenant (``name`` defaults to the id). Conflict if the id exists; InvalidArgument if the id
        is not ``models.check_tenant_id``-shaped."""

    @abc.abstractmethod
    async def get_tenant(self, tenant_id: str) -> Tenant:
        """NotFound if there is no such tenant."""

    @abc.abstractmethod
    async def list_tenants(
        self, *, cursor: str | None = None, limit: int = DEFAULT_PAGE_SIZE
    ) -> Page[Tenant]:
        """Tenants by id."""

    @abc.abstractmethod
    async def update_tenant(
        self, tenant_id: str, update: TenantUpdate, *, actor: str | None = None, reason: str | None = None
    ) -> Tenant:
        """Apply the fields set in ``update``; NotFound if there is no such tenant."""

    @abc.abstractmethod
    async def delete_tenant(
        self, tenant_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> None:
        """Delete a tenant with its (revoked) keys and its subscriptions; the audit log keeps their history.

        Conflict while the tenant has a key that is not revoked: revoke first, so that deleting a tenant
        never silently cuts off callers. NotFound if there is no such tenant.
        """

    # -- keys

    @abc.abstractmethod
    async def create_key(
        self,
        *,
        key_id: str,
        tenant: str,
        name: str,
        digest: str,
        allowed_models: Sequence[str] = ("*",),
        allowed_endpoints: Sequence[str] = ("*",),
        expires_at: float | None = None,
        limit_policy: str | None = None,
        budget: str | None = None,
        labels: Mapping[str, str] | None = None,
        allowed_regions: Sequence[str] | None = None,
        required_tags: Sequence[str] = (),
        source: KeySource = "api",
        actor: str | None = None,
        reason: str | None = None,
    ) -> ApiKey:
        """Store a key made with ``keyformat.generate`` (id and digest only; the secret is never given here).

        NotFound if the tenant does not exist; Conflict if the key id exists; InvalidArgument if the id or
        the digest is malformed.
        """

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKey:
        """NotFound if there is no such key (revoked keys are still found)."""

    @abc.abstractmethod
    async def list_keys(
        self,
        *,
        tenant: str | None = None,
        state: KeyState | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[ApiKey]:
        """Keys by id, optionally of one tenant and/or in one stored state."""

    @abc.abstractmethod
    async def update_key(
        self, key_id: str, update: KeyUpdate, *, actor: str | None = None, reason: str | None = None
    ) -> ApiKey:
        """Apply the fields set in ``update``. NotFound; Conflict if the key is revoked."""

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, *, actor: str | None = None, reason: str | None = None) -> ApiKey:
        """Revoke for good. Revoking a revoked key returns it unchanged (no write, no audit entry)."""

    @abc.abstractmethod
    async def rotate_key(
        self,
        key_id: str,
        new_digest: str,
        *,
        grace_seconds: float,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ApiKey:
        """Replace the secret's digest; the replaced one stays valid for ``grace_seconds`` (0: not at all).

        Only one previous digest is kept: rotating again during a grace period ends the older grace.
        NotFound; Conflict if the key is revoked; InvalidArgument for a malformed digest or negative grace.
        """

    @abc.abstractmethod
    async def touch_last_used(self, used: Mapping[str, float]) -> None:
        """Record last-use times, key id -> Unix time, batched by each worker. A time never moves back;
        unknown ids are ignored. Not a change, not audited."""

    # -- subscriptions

    @abc.abstractmethod
    async def request_subscription(
        self, tenant: str, model: str, *, actor: str, reason: str | None = None
    ) -> Subscription:
        """Ask for access to an approval-gated model. NotFound for an unknown tenant; Conflict when the
        subscription table (``models.SUBSCRIPTION_TRANSITIONS``) does not allow a request now."""

    @abc.abstractmethod
    async def get_subscription(self, tenant: str, model: str) -> Subscription:
        """NotFound if the tenant never subscribed to the model."""

    @abc.abstractmethod
    async def list_subscriptions(
        self,
        *,
        tenant: str | None = None,
        model: str | None = None,
        state: SubscriptionState | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[Subscription]:
        """Subscriptions by tenant then model, optionally filtered."""

    @abc.abstractmethod
    async def decide_subscription(
        self, tenant: str, model: str, decision: Decision, *, actor: str, reason: str | None = None
    ) -> Subscription:
        """Approve, reject or revoke, by the subscription table. NotFound (unknown tenant, or nothing to
        reject or revoke); Conflict when the table has no such step from the current state."""

    # -- audit

    @abc.abstractmethod
    async def append_audit(
        self,
        *,
        actor: str,
        action: str,
        target: str,
        tenant: str | None = None,
        reason: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> AuditEntry:
        """Append an entry of the caller's own (the store appends its own with its writes)."""

    @abc.abstractmethod
    async def list_audit(
        self,
        *,
        tenant: str | None = None,
        target: str | None = None,
        action: str | None = None,
        newest_first: bool = False,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[AuditEntry]:
        """Audit entries in ``seq`` order (or reversed), optionally filtered."""

    # -- spend

    @abc.abstractmethod
    async def add_spend(self, scope: SpendScope, id: str, day: str, usd: float) -> float:
        """Add to the spend of one key or tenant on one UTC day (``YYYY-MM-DD``); returns the new total."""

    @abc.abstractmethod
    async def add_spend_many(self, entries: Iterable[tuple[SpendScope, str, str, float]]) -> None:
        """Several ``(scope, id, day, usd)`` additions in one round trip (one transaction on SQLite)."""

    @abc.abstractmethod
    async def get_spend(self, scope: SpendScope, id: str, day: str) -> float:
        """The spend of one key or tenant on one day (0.0 if none)."""

    @abc.abstractmethod
    async def spend_by_day(
        self, scope: SpendScope, id: str, first_day: str, last_day: str
    ) -> dict[str, float]:
        """Day -> spend for the days from ``first_day`` to ``last_day`` (both included) that have any."""

    # -- usage roll-ups (gateway.observe.usage)

    async def add_usage(self, cells: Iterable[tuple[str, int, str, str, int]],
                        ttl: Mapping[str, int] | None = None) -> None:
        """Add ``(granularity, bucket start, dims, field, n)`` counts, all at once (one transaction): the
        roll-ups of several workers and nodes sum exactly. ``ttl``: seconds each granularity's buckets are
        kept (Redis expires them; SQLite prunes with ``prune_usage``)."""
        raise NotImplementedError

    async def prune_usage(self, granularity: str, before: int) -> None:
        """Drop ``granularity``'s buckets that start before ``before`` (where nothing expires them)."""
        return None

    async def usage_cells(self, granularity: str, first: int, last: int
                          ) -> list[tuple[int, str, str, int]]:
        """``(bucket start, dims, field, n)`` of ``granularity``'s buckets from ``first`` to ``last``."""
        raise NotImplementedError

    # -- prompts published through the admin API (docs/prompts.md)

    @abc.abstractmethod
    async def put_prompt(
        self, name: str, spec: Mapping[str, Any], *, actor: str | None = None, reason: str | None = None
    ) -> StoredPrompt:
        """Publish (or replace) the prompt ``name``: a change every worker applies, and an audit entry."""

    @abc.abstractmethod
    async def delete_prompt(self, name: str, *, actor: str | None = None, reason: str | None = None) -> None:
        """Withdraw a published prompt; NotFound when there is none of that name."""

    @abc.abstractmethod
    async def list_prompts(self) -> list[StoredPrompt]:
        """Every published prompt, by name (a few: read whole)."""

    # -- changes

    @abc.abstractmethod
    async def change_version(self) -> int:
        """A counter that goes up with every write to a tenant, key or subscription, in any process."""

    @abc.abstractmethod
    async def changes_since(self, version: int) -> list[Change] | None:
        """The changes after ``version``, oldest first; None when they are no longer all known (older
        than the retained change log, or the store was reset): then reload everything (``snapshot``)."""

    @abc.abstractmethod
    def watch(self, *, since: int | None = None, interval: float | None = None) -> AsyncIterator[int]:
        """Yield the new ``change_version`` whenever it differs from the last one seen (first: ``since``,
        default the version when the iteration starts), whichever process or node wrote.

        ``interval`` bounds how late a change is noticed (SQLite polls ``PRAGMA data_version`` at this
        pace; Redis is woken by a publication and re-reads the counter at least this often). Consecutive
        changes may be coalesced into one yield. The iterator ends when the store is closed.
        """

    # -- helpers shared by every implementation

    async def snapshot(self) -> Snapshot:
        """Every tenant, key and subscription, as of at least the returned version."""
        version = await self.change_version()
        tenants: list[Tenant] = []
        keys: list[ApiKey] = []
        subscriptions: list[Subscription] = []
        cursor: str | None = None
        while True:
            tpage = await self.list_tenants(cursor=cursor, limit=MAX_PAGE_SIZE)
            tenants.extend(tpage.items)
            if (cursor := tpage.next_cursor) is None:
                break
        while True:
            kpage = await self.list_keys(cursor=cursor, limit=MAX_PAGE_SIZE)
            keys.extend(kpage.items)
            if (cursor := kpage.next_cursor) is None:
                break
        while True:
            spage = await self.list_subscriptions(cursor=cursor, limit=MAX_PAGE_SIZE)
            subscriptions.extend(spage.items)
            if (cursor := spage.next_cursor) is None:
                break
        return Snapshot(version, tenants, keys, subscriptions, await self.list_prompts())


# -- rules applied by both implementations (pure: records and ``now`` in, records or errors out) ----------


class AuditDraft(msgspec.Struct, frozen=True, kw_only=True):
    """An audit entry before the store numbers it. ``at`` comes first: the Redis store splices ``seq`` in
    front of the encoded JSON."""

    at: float
    actor: str
    action: str
    target: str
    tenant: str | None = None
    reason: str | None = None
    details: dict[str, str] = msgspec.field(default_factory=dict)

    def numbered(self, seq: int) -> AuditEntry:
        return AuditEntry(
            seq=seq,
            at=self.at,
            actor=self.actor,
            action=self.action,
            target=self.target,
            tenant=self.tenant,
            reason=self.reason,
            details=self.details,
        )


def audit_draft(
    actor: str | None,
    action: str,
    target: str,
    tenant: str | None,
    reason: str | None,
    now: float,
    details: Mapping[str, str] | None = None,
) -> AuditDraft | None:
    if actor is None:
        return None
    return AuditDraft(
        at=now,
        actor=actor,
        action=action,
        target=target,
        tenant=tenant,
        reason=reason,
        details=dict(details or {}),
    )


def subscription_target(tenant: str, model: str) -> str:
    """How a subscription is named in the audit log and in messages."""
    return f"{tenant}/{model}"


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE_SIZE}")


def encode_cursor(position: str) -> str:
    """Opaque, URL-safe cursor for the last position a page returned."""
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = (cursor + "=" * (-len(cursor) % 4)).encode()
        return base64.b64decode(raw, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument("malformed cursor") from None


def decode_seq_cursor(cursor: str) -> int:
    position = decode_cursor(cursor)
    if not position.isdigit():
        raise InvalidArgument("malformed cursor")
    return int(position)


def check_spend_args(scope: str, id: str, day: str, usd: float | None = None) -> None:
    if scope not in SPEND_SCOPES:
        raise InvalidArgument(f"a spend scope is one of {', '.join(SPEND_SCOPES)}")
    if not id:
        raise InvalidArgument("a spend id must not be empty")
    if not check_day(day):
        raise InvalidArgument("a spend day must be YYYY-MM-DD")
    if usd is not None and usd != usd:  # NaN would poison the total for good
        raise InvalidArgument("spend must be a number")


def _check_digest(digest: str) -> None:
    try:
        keyformat.digest_scheme(digest)
    except keyformat.MalformedDigest as exc:
        raise InvalidArgument(str(exc)) from None


def new_tenant(
    tenant_id: str,
    name: str | None,
    allowed_models: Sequence[str],
    limit_policy: str | None,
    budget: str | None,
    labels: Mapping[str, str] | None,
    now: float,
    allowed_regions: Sequence[str] | None = None,
    required_tags: Sequence[str] = (),
) -> Tenant:
    if not check_tenant_id(tenant_id):
        raise InvalidArgument(
            "a tenant id is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return Tenant(
        id=tenant_id,
        name=name if name is not None else tenant_id,
        allowed_models=list(allowed_models),
        limit_policy=limit_policy,
        budget=budget,
        labels=dict(labels or {}),
        allowed_regions=list(allowed_regions) if allowed_regions is not None else None,
        required_tags=list(required_tags),
        created_at=now,
        updated_at=now,
    )


def updated_tenant(tenant: Tenant, update: TenantUpdate, now: float) -> Tenant:
    fields = {f: getattr(update, f) for f in update.changed_fields()}
    return msgspec.structs.replace(tenant, **fields, updated_at=now)


def new_key(
    *,
    key_id: str,
    tenant: str,
    name: str,
    digest: str,
    allowed_models: Sequence[str],
    allowed_endpoints: Sequence[str],
    expires_at: float | None,
    limit_policy: str | None,
    budget: str | None,
    labels: Mapping[str, str] | None,
    source: KeySource,
    now: float,
    allowed_regions: Sequence[str] | None = None,
    required_tags: Sequence[str] = (),
) -> ApiKey:
    if not keyformat.is_key_id(key_id):
        raise InvalidArgument(
            f"a key id is {keyformat.KEY_ID_LENGTH} characters of lowercase base32 (keyformat.generate)"
        )
    _check_digest(digest)
    return ApiKey(
        id=key_id,
        name=name,
        tenant=tenant,
        digest=digest,
        allowed_models=list(allowed_models),
        allowed_endpoints=list(allowed_endpoints),
        expires_at=expires_at,
        limit_policy=limit_policy,
        budget=budget,
        labels=dict(labels or {}),
        allowed_regions=list(allowed_regions) if allowed_regions is not None else None,
        required_tags=list(required_tags),
        created_at=now,
        updated_at=now,
        source=source,
    )


def updated_key(key: ApiKey, update: KeyUpdate, now: float) -> ApiKey:
    if key.state == "revoked":
        raise Conflict(f"key {key.id} is revoked")
    fields = {f: getattr(update, f) for f in update.changed_fields()}
    return msgspec.structs.replace(key, **fields, updated_at=now)


def revoked_key(key: ApiKey, now: float) -> ApiKey | None:
    """The revoked key, or None when it already is (nothing to write).

    A rotated-out secret's grace ends with the revocation, but its digest is kept: the data plane must
    still know that secret as this key's, to answer it ``api_key_revoked`` like the current one rather than
    ``invalid_api_key`` as if it were a made-up key.
    """
    if key.state == "revoked":
        return None
    until = key.previous_valid_until
    return msgspec.structs.replace(
        key,
        state="revoked",
        revoked_at=now,
        previous_valid_until=None if until is None else min(until, now),
        updated_at=now,
    )


def rotated_key(key: ApiKey, new_digest: str, grace_seconds: float, now: float) -> ApiKey:
    if key.state == "revoked":
        raise Conflict(f"key {key.id} is revoked")
    if not grace_seconds >= 0:
        raise InvalidArgument("grace_seconds must be >= 0")
    _check_digest(new_digest)
    if grace_seconds > 0:
        previous: str | None = key.digest
        until: float | None = now + grace_seconds
    else:
        previous = until = None
    return msgspec.structs.replace(
        key, digest=new_digest, previous_digest=previous, previous_valid_until=until, updated_at=now
    )


def subscription_step(
    current: Subscription | None,
    tenant: str,
    model: str,
    action: str,
    actor: str,
    reason: str | None,
    now: float,
) -> Subscription:
    """The subscription after ``action`` (request, approve, reject, revoke) by the transition table."""
    state = None if current is None else current.state
    to = next_subscription_state(action, state)
    if to is None:
        target = subscription_target(tenant, model)
        if current is None:
            raise NotFound(f"no subscription {target} to {action}")
        raise Conflict(f"cannot {action} subscription {target}: it is {state}")
    if action == "request" or current is None:
        return Subscription(
            tenant=tenant,
            model=model,
            state=to,
            requested_by=actor,
            requested_at=now,
            decided_by=None if action == "request" else actor,
            decided_at=None if action == "request" else now,
            reason=reason,
            updated_at=now,
        )
    return msgspec.structs.replace(
        current, state=to, decided_by=actor, decided_at=now, reason=reason, updated_at=now
    )


def subscription_action(decision: Decision) -> str:
    if decision not in ("approve", "reject", "revoke"):
        raise InvalidArgument("a decision is approve, reject or revoke")
    return decision


def fetch_size(limit: int) -> int:
    """How many rows to ask for: one more than a page, to know whether another page follows."""
    return limit + 1


def page_of(items: list[tuple[str, T]], limit: int) -> Page[T]:
    """A page from up to ``limit + 1`` (position, item) pairs."""
    if len(items) > limit:
        return Page([item for _, item in items[:limit]], encode_cursor(items[limit - 1][0]))
    return Page([item for _, item in items], None)


def audit_details_for_update(update: TenantUpdate | KeyUpdate) -> dict[str, str]:
    return {"fields": ",".join(update.changed_fields())}
