"""Records as the admin API shows them, and the static tenants and keys of the config file.

Static records (``[tenants.*]``, ``[auth] keys``) are merged into the answers at read time, marked
``"source": "config"``; they are never copied into the store. ``merge_pages`` interleaves them with a page
of store records so that one cursor walks both in id order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from gateway.admin.wire import KeyView, TenantView
from gateway.config.schema import Config, StaticKeyConfig, TenantConfig
from gateway.store import ApiKey, Page, Tenant
from gateway.store.base import decode_cursor, encode_cursor

__all__ = ["StaticRecords", "key_view", "merge_pages", "static_key_view", "tenant_view"]


def tenant_view(t: Tenant) -> TenantView:
    return TenantView(
        id=t.id,
        name=t.name,
        allowed_models=t.allowed_models,
        limit_policy=t.limit_policy,
        budget=t.budget,
        labels=t.labels,
        allowed_regions=t.allowed_regions,
        required_tags=t.required_tags,
        source="api",
        created_at=t.created_at,
        updated_at=t.updated_at,
    )


def static_tenant_view(tenant_id: str, t: TenantConfig) -> TenantView:
    return TenantView(
        id=tenant_id,
        name=t.name or tenant_id,
        allowed_models=t.models,
        limit_policy=t.limit_policy,
        budget=t.budget,
        labels=t.labels,
        allowed_regions=t.regions,
        required_tags=t.required_tags,
        source="config",
        created_at=None,
        updated_at=None,
    )


def key_view(k: ApiKey, now: float) -> KeyView:
    until = k.previous_valid_until
    grace = until if until is not None and now < until else None
    return KeyView(
        id=k.id,
        name=k.name,
        tenant=k.tenant,
        allowed_models=k.allowed_models,
        allowed_endpoints=k.allowed_endpoints,
        expires_at=k.expires_at,
        limit_policy=k.limit_policy,
        budget=k.budget,
        labels=k.labels,
        allowed_regions=k.allowed_regions,
        required_tags=k.required_tags,
        state=k.state,
        status=k.status(now),
        source=k.source,
        created_at=k.created_at,
        updated_at=k.updated_at,
        last_used_at=k.last_used_at,
        revoked_at=k.revoked_at,
        previous_valid_until=grace,
    )


def static_key_view(k: StaticKeyConfig, now: float) -> KeyView:
    return KeyView(
        id=k.id,
        name=k.name,
        tenant=k.tenant,
        allowed_models=k.models,
        allowed_endpoints=k.endpoints,
        expires_at=k.expires_at,
        limit_policy=k.limit_policy,
        budget=k.budget,
        labels=k.labels,
        allowed_regions=k.regions,
        required_tags=k.required_tags,
        state="active",
        status="expired" if k.expires_at is not None and now >= k.expires_at else "active",
        source="config",
        created_at=None,
        updated_at=None,
        last_used_at=None,
        revoked_at=None,
        previous_valid_until=None,
    )


class StaticRecords:
    """The tenants and keys of one config, by id."""

    def __init__(self, config: Config) -> None:
        self.tenants: dict[str, TenantConfig] = dict(sorted(config.tenants.items()))
        by_id = sorted(config.auth.keys, key=lambda k: k.id)
        self.keys: dict[str, StaticKeyConfig] = {k.id: k for k in by_id}

    def tenant_views(self) -> list[TenantView]:
        return [static_tenant_view(tid, t) for tid, t in self.tenants.items()]

    def key_views(self, now: float, tenant: str | None = None, state: str | None = None) -> list[KeyView]:
        if state == "revoked":  # a static key is never revoked: remove it from the file instead
            return []
        return [static_key_view(k, now) for k in self.keys.values() if tenant is None or k.tenant == tenant]


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


V = TypeVar("V", bound=_HasId)
R = TypeVar("R")


async def merge_pages(
    fetch: Callable[[str | None, int], Awaitable[Page[R]]],
    view: Callable[[R], V],
    static: Sequence[V],
    cursor: str | None,
    limit: int,
) -> tuple[list[V], str | None]:
    """One page of store records (``fetch(store_cursor, limit)``) and static records, in id order.

    The cursor is the last id returned, encoded as the stores encode their own id cursors (both list
    tenants and keys "after id X"), so the same position continues both sequences. A static record
    shadows a store record with the same id.
    """
    after = decode_cursor(cursor) if cursor is not None else ""
    page = await fetch(encode_cursor(after) if after else None, limit)
    shadowed = {s.id for s in static}
    from_store = [view(r) for r in page.items]
    last_store_id = from_store[-1].id if from_store else ""
    combined = sorted(
        [v for v in from_store if v.id not in shadowed] + [s for s in static if s.id > after][: limit + 1],
        key=lambda v: v.id,
    )
    if page.next_cursor is not None:
        # the store has more: what lies past its last id is for the next page (static ids included)
        combined = [v for v in combined if v.id <= last_store_id]
    if len(combined) > limit:
        items = combined[:limit]
        return items, encode_cursor(items[-1].id)
    if page.next_cursor is not None:
        return combined, encode_cursor(last_store_id)
    return combined, None
