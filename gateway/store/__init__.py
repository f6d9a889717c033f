"""Durable state behind one interface: tenants, API keys, subscriptions, the audit log, spend.

Two implementations, chosen by URL (``open_store``): SQLite, the embedded default (one file shared by all
worker processes of a node), and Redis, for a cluster (every node sees the same state). Both pass the same
test suite. The request path never awaits a store: workers keep in-memory tables current with
``Store.snapshot``, ``Store.watch`` and ``Store.changes_since``.
"""

from gateway.store.base import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Conflict,
    InvalidArgument,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
)
from gateway.store.factory import StoreOptions, open_store
from gateway.store.models import (
    AUDIT_ACTIONS,
    SUBSCRIPTION_TRANSITIONS,
    ApiKey,
    AuditEntry,
    Change,
    ChangeKind,
    Decision,
    KeySource,
    KeyState,
    KeyStatus,
    KeyUpdate,
    Page,
    Snapshot,
    SpendScope,
    Subscription,
    SubscriptionState,
    Tenant,
    TenantUpdate,
)

__all__ = [
    "AUDIT_ACTIONS",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "SUBSCRIPTION_TRANSITIONS",
    "ApiKey",
    "AuditEntry",
    "Change",
    "ChangeKind",
    "Conflict",
    "Decision",
    "InvalidArgument",
    "KeySource",
    "KeyState",
    "KeyStatus",
    "KeyUpdate",
    "NotFound",
    "Page",
    "Snapshot",
    "SpendScope",
    "Store",
    "StoreError",
    "StoreOptions",
    "StoreUnavailable",
    "Subscription",
    "SubscriptionState",
    "Tenant",
    "TenantUpdate",
    "open_store",
]
