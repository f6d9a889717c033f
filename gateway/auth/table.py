"""The per-worker key table: what the hot path consults to know a caller, with no store round trip.

Built from one store ``Snapshot`` plus the static keys and tenants of the TOML file (a static entry wins
over a store entry with the same id), and rebuilt whole when the store reports a change (see
``gateway.auth.service``). A table is immutable once built; the service swaps in a new one in one
assignment, so a request sees one consistent table.

Checking a key costs one dict lookup when the key has been seen since the table was built: presented keys
that verified are remembered (raw bytes -> entry) until the next rebuild. Only the first use of a key per
table pays for the digest (SHA-256 or HMAC-SHA256, a few microseconds here). A wrong secret for a known
key id is remembered too (in a set of refused keys), so a client that keeps sending a wrong key costs one
set lookup per request, not a digest: its answer cannot change before the next rebuild, because a table's
digests never change (``add`` only adds ids the table does not have, and unknown ids are never refused
here). Unknown key ids cost a dict miss and no digest. The remembered keys, right or wrong, live only in
this worker's memory, never in a log or a record.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping

from gateway.auth.keyformat import Digester, MalformedKey, parse
from gateway.config.schema import StaticKeyConfig, TenantConfig
from gateway.routing.residency import Residency, narrow, residency
from gateway.store.models import ApiKey, Snapshot, Tenant

__all__ = ["KeyEntry", "KeyTable", "ModelRule", "TenantEntry"]

_INF = math.inf
#: presented keys remembered per table; past this the memory is cleared (a flood of distinct valid keys)
_MAX_VERIFIED = 100_000
#: wrong secrets remembered per table; past this the set is cleared (a flood of distinct wrong keys then
#: costs a digest each, as without the set)
_MAX_REFUSED = 100_000


class ModelRule:
    """Model names and glob patterns (``gpt-4o*``, ``*``) a key or tenant may call."""

    __slots__ = ("_cache", "_exact", "_patterns", "allows_all", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self.allows_all = "*" in self.patterns
        self._exact = frozenset(p for p in self.patterns if not any(c in p for c in "*?["))
        self._patterns = tuple(
            re.compile(fnmatch.translate(p)) for p in self.patterns if any(c in p for c in "*?[")
        )
        self._cache: dict[str, bool] = {}

    def allows(self, model: str) -> bool:
        if self.allows_all or model in self._exact:
            return True
        hit = self._cache.get(model)
        if hit is None:
            hit = any(p.match(model) for p in self._patterns)
            if len(self._cache) < 4096:
                self._cache[model] = hit
        return hit


_ALL = ModelRule(("*",))


class TenantEntry:
    __slots__ = ("budget", "id", "labels", "limit_policy", "models", "residency", "source")

    def __init__(
        self, tenant_id: str, models: ModelRule, limit_policy: str | None, budget: str | None,
        labels: Mapping[str, str], source: str, residency: Residency | None = None,
    ) -> None:
        self.id = tenant_id
        self.models = models
        self.limit_policy = limit_policy
        self.budget = budget
        self.labels = dict(labels)
        self.source = source
        #: the deployments its keys may be served by (None: any)
        self.residency = residency


class KeyEntry:
    """One key as the hot path needs it."""

    __slots__ = (
        "budget", "digest", "endpoints", "endpoints_all", "expires_at", "id", "labels", "limit_policy",
        "models", "name", "previous_digest", "previous_valid_until", "residency", "revoked", "source",
        "tenant", "unrestricted",
    )

    def __init__(
        self, *, key_id: str, name: str, tenant: TenantEntry, digest: str, previous_digest: str | None,
        previous_valid_until: float | None, models: ModelRule, endpoints: Iterable[str],
        expires_at: float | None, revoked: bool, limit_policy: str | None, budget: str | None,
        labels: Mapping[str, str], source: str, residency: Residency | None = None,
    ) -> None:
        self.id = key_id
        self.name = name
        self.tenant = tenant
        self.digest = digest
        self.previous_digest = previous_digest
        self.previous_valid_until = previous_valid_until
        self.models = models
        self.endpoints = frozenset(endpoints)
        self.endpoints_all = "*" in self.endpoints
        self.expires_at = expires_at if expires_at is not None else _INF
        self.revoked = revoked
        self.limit_policy = limit_policy if limit_policy is not None else tenant.limit_policy
        self.budget = budget if budget is not None else tenant.budget
        self.labels = {**tenant.labels, **labels}
        self.source = source
        #: the deployments it may be served by: its own residency within its tenant's (None: any)
        self.residency = narrow(tenant.residency, residency)
        #: every endpoint, model and deployment allowed by the key and its tenant: the hot path skips
        #: those checks
        self.unrestricted = (
            self.endpoints_all and models.allows_all and tenant.models.allows_all and self.residency is None
        )


class KeyTable:
    """Keys by id, tenants by id, subscription states by (tenant, model); immutable once built."""

    __slots__ = ("_digester", "_refused", "_verified", "keys", "subscriptions", "tenants", "version")

    def __init__(
        self,
        digester: Digester,
        *,
        snapshot: Snapshot | None = None,
        static_keys: Iterable[StaticKeyConfig] = (),
        static_tenants: Mapping[str, TenantConfig] | None = None,
    ) -> None:
        self._digester = digester
        self.version = snapshot.version if snapshot is not None else 0
        self.tenants: dict[str, TenantEntry] = {}
        self.keys: dict[str, KeyEntry] = {}
        self.subscriptions: dict[tuple[str, str], str] = {}
        self._verified: dict[bytes, tuple[KeyEntry, float]] = {}
        self._refused: set[bytes] = set()
        if snapshot is not None:
            for t in snapshot.tenants:
                self.tenants[t.id] = _tenant_from_store(t)
        for tid, tc in (static_tenants or {}).items():
            self.tenants[tid] = TenantEntry(
                tid, ModelRule(tc.models), tc.limit_policy, tc.budget, tc.labels, "config",
                residency(tc.regions, tc.required_tags),
            )
        if snapshot is not None:
            for k in snapshot.keys:
                self.keys[k.id] = self._key_from_store(k)
            for s in snapshot.subscriptions:
                self.subscriptions[(s.tenant, s.model)] = s.state
        for sk in static_keys:
            self.keys[sk.id] = KeyEntry(
                key_id=sk.id, name=sk.name, tenant=self._tenant(sk.tenant), digest=sk.digest,
                previous_digest=None, previous_valid_until=None, models=ModelRule(sk.models),
                endpoints=sk.endpoints, expires_at=sk.expires_at, revoked=False,
                limit_policy=sk.limit_policy, budget=sk.budget, labels=sk.labels, source="config",
                residency=residency(sk.regions, sk.required_tags),
            )

    def _tenant(self, tenant_id: str) -> TenantEntry:
        t = self.tenants.get(tenant_id)
        if t is None:  # a key of a tenant that is not (or no longer) declared: no tenant-level rules
            t = self.tenants[tenant_id] = TenantEntry(tenant_id, _ALL, None, None, {}, "implicit")
        return t

    def _key_from_store(self, k: ApiKey) -> KeyEntry:
        return KeyEntry(
            key_id=k.id, name=k.name, tenant=self._tenant(k.tenant), digest=k.digest,
            previous_digest=k.previous_digest, previous_valid_until=k.previous_valid_until,
            models=ModelRule(k.allowed_models), endpoints=k.allowed_endpoints, expires_at=k.expires_at,
            revoked=k.state == "revoked", limit_policy=k.limit_policy, budget=k.budget, labels=k.labels,
            source=k.source, residency=residency(k.allowed_regions, k.required_tags),
        )

    def lookup(self, raw: bytes) -> tuple[KeyEntry, float] | str | None:
        """The entry a presented key belongs to and until when this secret is valid (a rotated-out
        secret: the end of its grace period; else infinity); the key id (a str) when the table has no
        such id; None for a wrong secret.

        Raises ``MalformedKey`` (its message never repeats the key) for something that is not a key.
        """
        hit = self._verified.get(raw)
        if hit is not None:
            return hit
        if raw in self._refused:
            return None  # PERF: a wrong secret seen before: no parse, no digest
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedKey("the API key may hold only ASCII letters, digits and '-'") from None
        key_id, secret = parse(text)
        entry = self.keys.get(key_id)
        if entry is None:
            return key_id
        if self._digester.verify(secret, entry.digest):
            hit = (entry, _INF)
        elif (entry.previous_digest is not None and entry.previous_valid_until is not None
              and self._digester.verify(secret, entry.previous_digest)):
            hit = (entry, entry.previous_valid_until)
        else:
            self.refuse(raw)
            return None
        if len(self._verified) >= _MAX_VERIFIED:
            self._verified.clear()
        self._verified[raw] = hit
        return hit

    def remember(self, presented: bytes, hit: tuple[KeyEntry, float]) -> None:
        """Remember a verified hit under another form of the presented credential (the whole
        Authorization header value), so that the next request finds it in one lookup."""
        if len(self._verified) >= _MAX_VERIFIED:
            self._verified.clear()
        self._verified[presented] = hit

    def refuse(self, presented: bytes) -> None:
        """Remember a wrong secret for a known key id: as presented to ``lookup``, and under another form
        of the same credential (the whole Authorization header value), so that the next request with it
        is refused in one lookup. Forgotten with the table."""
        if len(self._refused) >= _MAX_REFUSED:
            self._refused.clear()
        self._refused.add(presented)

    def add(self, key: ApiKey, tenant: Tenant | None) -> None:
        """A key (and its tenant) read from the store after this table was built: a key made a moment
        ago works at once, before the change notification arrives."""
        if tenant is not None and tenant.id not in self.tenants:
            self.tenants[tenant.id] = _tenant_from_store(tenant)
        if key.id not in self.keys:
            self.keys[key.id] = self._key_from_store(key)

    def subscription(self, tenant: str, model: str) -> str | None:
        return self.subscriptions.get((tenant, model))


def _tenant_from_store(t: Tenant) -> TenantEntry:
    return TenantEntry(
        t.id, ModelRule(t.allowed_models), t.limit_policy, t.budget, t.labels, "api",
        residency(t.allowed_regions, t.required_tags),
    )
