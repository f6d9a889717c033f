"""The embedded store: one SQLite file, shared by every worker process of a node, surviving restarts.

How it stays safe and current across processes:

- WAL journal: readers never block the writer nor each other. Every write is one ``BEGIN IMMEDIATE``
  transaction (the write lock is taken up front, so two writers queue on ``busy_timeout`` instead of
  failing on a lock upgrade). ``synchronous=FULL``: a committed revocation survives a power cut.
- Each write to a tenant, key or subscription also bumps the ``change_version`` row of ``meta`` and adds
  a row to ``changes`` in the same transaction. Other processes notice with ``PRAGMA data_version``
  (which changes when another connection commits; a cheap poll that does not read the database) and
  then read the counter.
- Schema changes are the numbered steps in ``MIGRATIONS``, applied in order at open, inside one
  ``BEGIN IMMEDIATE`` transaction, so that when all workers start at once exactly one applies them and
  the others find them done. ``schema_version`` records each step applied.
- sqlite3 blocks, so every call runs in one worker thread per store (which owns the connection); the
  event loop only awaits. One thread also serialises this process's use of the connection.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, ParamSpec, TypeVar

import msgspec

from gateway.store.base import (
    CHANGE_LOG_RETENTION,
    DEFAULT_PAGE_SIZE,
    SEP,
    AuditDraft,
    Conflict,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
    audit_details_for_update,
    audit_draft,
    check_limit,
    check_spend_args,
    decode_cursor,
    decode_seq_cursor,
    fetch_size,
    new_key,
    new_tenant,
    page_of,
    revoked_key,
    rotated_key,
    subscription_action,
    subscription_step,
    subscription_target,
    updated_key,
    updated_tenant,
)
from gateway.store.models import (
    ApiKey,
    AuditEntry,
    Change,
    ChangeKind,
    Decision,
    KeySource,
    KeyState,
    KeyUpdate,
    Page,
    SpendScope,
    StoredPrompt,
    Subscription,
    SubscriptionState,
    Tenant,
    TenantUpdate,
)

__all__ = ["MIGRATIONS", "Migration", "SqliteStore"]

P = ParamSpec("P")
R = TypeVar("R")


class Migration(NamedTuple):
    version: int
    description: str
    #: run in order in the migration transaction (not a script: a script would commit on its own)
    statements: tuple[str, ...]


#: Append new steps; never edit a released one (databases in the field have applied it).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "tenants, keys, subscriptions, audit log, spend, change log",
        (
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
            "INSERT INTO meta (name, value) VALUES ('change_version', 0)",
            "CREATE TABLE tenants (id TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID",
            # last_used_at lives beside the record: every worker flushes it in batches, without
            # rewriting the record or counting as a change
            """CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                state TEXT NOT NULL,
                data BLOB NOT NULL,
                last_used_at REAL
            ) WITHOUT ROWID""",
            "CREATE INDEX api_keys_by_tenant ON api_keys (tenant, id)",
            """CREATE TABLE subscriptions (
                tenant TEXT NOT NULL,
                model TEXT NOT NULL,
                state TEXT NOT NULL,
                data BLOB NOT NULL,
                PRIMARY KEY (tenant, model)
            ) WITHOUT ROWID""",
            # AUTOINCREMENT: a seq is never reused
            """CREATE TABLE audit (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                at REAL NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                tenant TEXT,
                reason TEXT,
                details BLOB NOT NULL
            )""",
            "CREATE INDEX audit_by_tenant ON audit (tenant, seq)",
            "CREATE INDEX audit_by_target ON audit (target, seq)",
            """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
               BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
            """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
               BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
            """CREATE TABLE spend (
                scope TEXT NOT NULL,
                id TEXT NOT NULL,
                day TEXT NOT NULL,
                usd REAL NOT NULL,
                PRIMARY KEY (scope, id, day)
            ) WITHOUT ROWID""",
            """CREATE TABLE changes (
                version INTEGER PRIMARY KEY,
                kind TEXT NOT NULL,
                tenant TEXT NOT NULL,
                id TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "prompts published through the admin API",
        ("CREATE TABLE prompts (name TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID",),
    ),
    Migration(
        3,
        "usage roll-ups",
        (
            """CREATE TABLE usage (
                granularity TEXT NOT NULL,
                bucket INTEGER NOT NULL,
                dims TEXT NOT NULL,
                field TEXT NOT NULL,
                n INTEGER NOT NULL,
                PRIMARY KEY (granularity, bucket, dims, field)
            ) WITHOUT ROWID""",
        ),
    ),
)

_encode = msgspec.json.Encoder().encode
_tenant = msgspec.json.Decoder(Tenant).decode
_key = msgspec.json.Decoder(ApiKey).decode
_subscription = msgspec.json.Decoder(Subscription).decode
_prompt = msgspec.json.Decoder(StoredPrompt).decode
_details = msgspec.json.Decoder(dict[str, str]).decode

_Changes = list[tuple[ChangeKind, str, str]]


def _with_used(key: ApiKey, last_used_at: float | None) -> ApiKey:
    if last_used_at is None:
        return key
    return msgspec.structs.replace(key, last_used_at=last_used_at)


class SqliteStore(Store):
    """The store on one SQLite file. Make it with ``await SqliteStore.open(path)``."""

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._poll_interval = poll_interval
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-store-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        #: bumped after each commit made through this instance: ``data_version`` does not see those
        self._local_writes = 0
        #: the migration steps this open applied (empty when the file was already current)
        self.applied_migrations: tuple[int, ...] = ()

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> SqliteStore:
        """Open (creating if needed) and migrate the database file."""
        store = cls(path, busy_timeout=busy_timeout, poll_interval=poll_interval, clock=clock)
        try:
            await store._run(store._connect)
        except BaseException:
            store._closed = True
            store._executor.shutdown(wait=False)
            raise
        return store

    # -- plumbing (everything named _sync_* or passed to _write runs in the store's thread)

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StoreUnavailable(f"SQLite store {self.path}: {text}") from exc
            raise

    def _connect(self) -> None:
        # Several worker processes open a new file at the same moment: switching it to WAL needs a lock
        # that SQLite does not wait for (no busy handler there), so that step is retried until
        # busy_timeout has passed.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                self.applied_migrations = self._migrate(conn)
            except sqlite3.OperationalError as exc:
                conn.close()
                if ("locked" in str(exc) or "busy" in str(exc)) and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> tuple[int, ...]:
        applied: list[int] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            known = MIGRATIONS[-1].version
            if current > known:
                raise StoreError(
                    f"the database has schema version {current}; this gateway knows up to {known}"
                    " (upgrade the gateway)"
                )
            for step in MIGRATIONS:
                if step.version <= current:
                    continue
                for statement in step.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                    (step.version, step.description, time.time()),
                )
                applied.append(step.version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return tuple(applied)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            # closed (or never opened): a watcher's poll already queued when close() ran ends here
            raise StoreUnavailable("the store is closed" if self._closed else "the store is not open")
        return self._conn

    def _sync_tx(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._local_writes += 1
        return result

    async def _write(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        return await self._run(self._sync_tx, fn)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._run(self._sync_read, sql, params)

    def _sync_read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _record(conn: sqlite3.Connection, changes: _Changes, draft: AuditDraft | None) -> None:
        """The change records and audit entry of a write, inside its transaction."""
        version = 0
        for kind, tenant, id_ in changes:
            conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'change_version'")
            (version,) = conn.execute("SELECT value FROM meta WHERE name = 'change_version'").fetchone()
            conn.execute(
                "INSERT INTO changes (version, kind, tenant, id) VALUES (?, ?, ?, ?)",
                (version, kind, tenant, id_),
            )
        if changes:
            conn.execute("DELETE FROM changes WHERE version <= ?", (version - CHANGE_LOG_RETENTION,))
        if draft is not None:
            SqliteStore._append_audit(conn, draft)

    @staticmethod
    def _append_audit(conn: sqlite3.Connection, draft: AuditDraft) -> int:
        cur = conn.execute(
            "INSERT INTO audit (at, actor, action, target, tenant, reason, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                draft.at,
                draft.actor,
                draft.action,
                draft.target,
                draft.tenant,
                draft.reason,
                _encode(draft.details),
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    @staticmethod
    def _tenant_exists(conn: sqlite3.Connection, tenant_id: str) -> bool:
        return conn.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)).fetchone() is not None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)

    # -- tenants

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
        now = self._clock()
        tenant = new_tenant(
            tenant_id, name, allowed_models, limit_policy, budget, labels, now, allowed_regions, required_tags
        )
        draft = audit_draft(actor, "tenant.create", tenant_id, tenant_id, reason, now)

        def tx(conn: sqlite3.Connection) -> Tenant:
            try:
                conn.execute("INSERT INTO tenants (id, data) VALUES (?, ?)", (tenant_id, _encode(tenant)))
            except sqlite3.IntegrityError:
                raise Conflict(f"tenant {tenant_id} exists") from None
            self._record(conn, [("tenant", tenant_id, tenant_id)], draft)
            return tenant

        return await self._write(tx)

    async def get_tenant(self, tenant_id: str) -> Tenant:
        rows = await self._read("SELECT data FROM tenants WHERE id = ?", (tenant_id,))
        if not rows:
            raise NotFound(f"no tenant {tenant_id}")
        return _tenant(rows[0][0])

    async def list_tenants(
        self, *, cursor: str | None = None, limit: int = DEFAULT_PAGE_SIZE
    ) -> Page[Tenant]:
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else ""
        rows = await self._read(
            "SELECT id, data FROM tenants WHERE id > ? ORDER BY id LIMIT ?", (after, fetch_size(limit))
        )
        return page_of([(id_, _tenant(data)) for id_, data in rows], limit)

    async def update_tenant(
        self, tenant_id: str, update: TenantUpdate, *, actor: str | None = None, reason: str | None = None
    ) -> Tenant:
        now = self._clock()
        draft = audit_draft(
            actor, "tenant.update", tenant_id, tenant_id, reason, now, audit_details_for_update(update)
        )

        def tx(conn: sqlite3.Connection) -> Tenant:
            row = conn.execute("SELECT data FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
            if row is None:
                raise NotFound(f"no tenant {tenant_id}")
            tenant = updated_tenant(_tenant(row[0]), update, now)
            conn.execute("UPDATE tenants SET data = ? WHERE id = ?", (_encode(tenant), tenant_id))
            self._record(conn, [("tenant", tenant_id, tenant_id)], draft)
            return tenant

        return await self._write(tx)

    async def delete_tenant(
        self, tenant_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> None:
        now = self._clock()
        draft = audit_draft(actor, "tenant.delete", tenant_id, tenant_id, reason, now)

        def tx(conn: sqlite3.Connection) -> None:
            if not self._tenant_exists(conn, tenant_id):
                raise NotFound(f"no tenant {tenant_id}")
            (active,) = conn.execute(
                "SELECT count(*) FROM api_keys WHERE tenant = ? AND state != 'revoked'", (tenant_id,)
            ).fetchone()
            if active:
                raise Conflict(f"tenant {tenant_id} has {active} key(s) not revoked; revoke them first")
            changes: _Changes = [("tenant", tenant_id, tenant_id)]
            for (key_id,) in conn.execute(
                "SELECT id FROM api_keys WHERE tenant = ? ORDER BY id", (tenant_id,)
            ):
                changes.append(("key", tenant_id, key_id))
            for (model,) in conn.execute(
                "SELECT model FROM subscriptions WHERE tenant = ? ORDER BY model", (tenant_id,)
            ):
                changes.append(("subscription", tenant_id, model))
            conn.execute("DELETE FROM api_keys WHERE tenant = ?", (tenant_id,))
            conn.execute("DELETE FROM subscriptions WHERE tenant = ?", (tenant_id,))
            conn.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))
            self._record(conn, changes, draft)

        await self._write(tx)

    # -- keys

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
        now = self._clock()
        key = new_key(
            key_id=key_id,
            tenant=tenant,
            name=name,
            digest=digest,
            allowed_models=allowed_models,
            allowed_endpoints=allowed_endpoints,
            expires_at=expires_at,
            limit_policy=limit_policy,
            budget=budget,
            labels=labels,
            allowed_regions=allowed_regions,
            required_tags=required_tags,
            source=source,
            now=now,
        )
        draft = audit_draft(
            actor, "key.create", key_id, tenant, reason, now, {"name": name, "source": source}
        )

        def tx(conn: sqlite3.Connection) -> ApiKey:
            if not self._tenant_exists(conn, tenant):
                raise NotFound(f"no tenant {tenant}")
            try:
                conn.execute(
                    "INSERT INTO api_keys (id, tenant, state, data) VALUES (?, ?, ?, ?)",
                    (key_id, tenant, key.state, _encode(key)),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"key {key_id} exists") from None
            self._record(conn, [("key", tenant, key_id)], draft)
            return key

        return await self._write(tx)

    async def get_key(self, key_id: str) -> ApiKey:
        rows = await self._read("SELECT data, last_used_at FROM api_keys WHERE id = ?", (key_id,))
        if not rows:
            raise NotFound(f"no key {key_id}")
        return _with_used(_key(rows[0][0]), rows[0][1])

    async def list_keys(
        self,
        *,
        tenant: str | None = None,
        state: KeyState | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[ApiKey]:
        check_limit(limit)
        where = ["id > ?"]
        params: list[Any] = [decode_cursor(cursor) if cursor is not None else ""]
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        params.append(fetch_size(limit))
        rows = await self._read(
            f"SELECT id, data, last_used_at FROM api_keys WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            params,
        )
        return page_of([(id_, _with_used(_key(data), used)) for id_, data, used in rows], limit)

    async def _change_key(
        self,
        key_id: str,
        change: Callable[[ApiKey], ApiKey | None],
        draft: Callable[[ApiKey], AuditDraft | None],
    ) -> ApiKey:
        def tx(conn: sqlite3.Connection) -> ApiKey:
            row = conn.execute("SELECT data, last_used_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                raise NotFound(f"no key {key_id}")
            key = _key(row[0])
            new = change(key)
            if new is None:
                return _with_used(key, row[1])
            conn.execute(
                "UPDATE api_keys SET state = ?, data = ? WHERE id = ?", (new.state, _encode(new), key_id)
            )
            self._record(conn, [("key", key.tenant, key_id)], draft(key))
            return _with_used(new, row[1])

        return await self._write(tx)

    async def update_key(
        self, key_id: str, update: KeyUpdate, *, actor: str | None = None, reason: str | None = None
    ) -> ApiKey:
        now = self._clock()
        details = audit_details_for_update(update)
        return await self._change_key(
            key_id,
            lambda key: updated_key(key, update, now),
            lambda key: audit_draft(actor, "key.update", key_id, key.tenant, reason, now, details),
        )

    async def revoke_key(self, key_id: str, *, actor: str | None = None, reason: str | None = None) -> ApiKey:
        now = self._clock()
        return await self._change_key(
            key_id,
            lambda key: revoked_key(key, now),
            lambda key: audit_draft(actor, "key.revoke", key_id, key.tenant, reason, now),
        )

    async def rotate_key(
        self,
        key_id: str,
        new_digest: str,
        *,
        grace_seconds: float,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ApiKey:
        now = self._clock()
        details = {"grace_seconds": repr(float(grace_seconds))}
        return await self._change_key(
            key_id,
            lambda key: rotated_key(key, new_digest, grace_seconds, now),
            lambda key: audit_draft(actor, "key.rotate", key_id, key.tenant, reason, now, details),
        )

    async def touch_last_used(self, used: Mapping[str, float]) -> None:
        if not used:
            return
        rows = [(float(at), key_id) for key_id, at in used.items()]

        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?", rows
            )

        await self._write(tx)

    # -- subscriptions

    async def _step_subscription(
        self, tenant: str, model: str, action: str, actor: str, reason: str | None
    ) -> Subscription:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> Subscription:
            if not self._tenant_exists(conn, tenant):
                raise NotFound(f"no tenant {tenant}")
            row = conn.execute(
                "SELECT data FROM subscriptions WHERE tenant = ? AND model = ?", (tenant, model)
            ).fetchone()
            current = None if row is None else _subscription(row[0])
            new = subscription_step(current, tenant, model, action, actor, reason, now)
            conn.execute(
                "INSERT OR REPLACE INTO subscriptions (tenant, model, state, data) VALUES (?, ?, ?, ?)",
                (tenant, model, new.state, _encode(new)),
            )
            details = {"from": current.state if current is not None else "none", "to": new.state}
            draft = audit_draft(
                actor,
                f"subscription.{action}",
                subscription_target(tenant, model),
                tenant,
                reason,
                now,
                details,
            )
            self._record(conn, [("subscription", tenant, model)], draft)
            return new

        return await self._write(tx)

    async def request_subscription(
        self, tenant: str, model: str, *, actor: str, reason: str | None = None
    ) -> Subscription:
        return await self._step_subscription(tenant, model, "request", actor, reason)

    async def decide_subscription(
        self, tenant: str, model: str, decision: Decision, *, actor: str, reason: str | None = None
    ) -> Subscription:
        return await self._step_subscription(tenant, model, subscription_action(decision), actor, reason)

    async def get_subscription(self, tenant: str, model: str) -> Subscription:
        rows = await self._read(
            "SELECT data FROM subscriptions WHERE tenant = ? AND model = ?", (tenant, model)
        )
        if not rows:
            raise NotFound(f"no subscription {subscription_target(tenant, model)}")
        return _subscription(rows[0][0])

    async def list_subscriptions(
        self,
        *,
        tenant: str | None = None,
        model: str | None = None,
        state: SubscriptionState | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[Subscription]:
        check_limit(limit)
        after_tenant, _, after_model = (
            decode_cursor(cursor).partition(SEP) if cursor is not None else ("", "", "")
        )
        where = ["(tenant, model) > (?, ?)"]
        params: list[Any] = [after_tenant, after_model]
        for column, value in (("tenant", tenant), ("model", model), ("state", state)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        params.append(fetch_size(limit))
        rows = await self._read(
            f"SELECT tenant, model, data FROM subscriptions WHERE {' AND '.join(where)} "
            "ORDER BY tenant, model LIMIT ?",
            params,
        )
        return page_of([(t + SEP + m, _subscription(data)) for t, m, data in rows], limit)

    # -- prompts

    async def put_prompt(
        self, name: str, spec: Mapping[str, Any], *, actor: str | None = None, reason: str | None = None
    ) -> StoredPrompt:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> StoredPrompt:
            row = conn.execute("SELECT data FROM prompts WHERE name = ?", (name,)).fetchone()
            revision = 1 if row is None else _prompt(row[0]).revision + 1
            new = StoredPrompt(name=name, spec=dict(spec), revision=revision, updated_at=now,
                               updated_by=actor or "")
            conn.execute("INSERT OR REPLACE INTO prompts (name, data) VALUES (?, ?)", (name, _encode(new)))
            draft = audit_draft(actor, "prompt.publish", f"prompt:{name}", None, reason, now,
                                {"revision": str(revision)})
            self._record(conn, [("prompt", "", name)], draft)
            return new

        return await self._write(tx)

    async def delete_prompt(self, name: str, *, actor: str | None = None, reason: str | None = None) -> None:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM prompts WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no prompt {name}")
            draft = audit_draft(actor, "prompt.delete", f"prompt:{name}", None, reason, now)
            self._record(conn, [("prompt", "", name)], draft)

        await self._write(tx)

    async def list_prompts(self) -> list[StoredPrompt]:
        return [_prompt(data) for (data,) in await self._read("SELECT data FROM prompts ORDER BY name")]

    # -- audit

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
        draft = AuditDraft(
            at=self._clock(),
            actor=actor,
            action=action,
            target=target,
            tenant=tenant,
            reason=reason,
            details=dict(details or {}),
        )
        seq = await self._write(lambda conn: self._append_audit(conn, draft))
        return draft.numbered(seq)

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
        check_limit(limit)
        if cursor is not None:
            after = decode_seq_cursor(cursor)
        else:
            after = 2**63 - 1 if newest_first else 0
        where = ["seq < ?" if newest_first else "seq > ?"]
        params: list[Any] = [after]
        for column, value in (("tenant", tenant), ("target", target), ("action", action)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        params.append(fetch_size(limit))
        rows = await self._read(
            "SELECT seq, at, actor, action, target, tenant, reason, details FROM audit "
            f"WHERE {' AND '.join(where)} ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?",
            params,
        )
        entries = [
            (
                str(seq),
                AuditEntry(
                    seq=seq,
                    at=at,
                    actor=actor_,
                    action=action_,
                    target=target_,
                    tenant=tenant_,
                    reason=reason_,
                    details=_details(details),
                ),
            )
            for seq, at, actor_, action_, target_, tenant_, reason_, details in rows
        ]
        return page_of(entries, limit)

    # -- spend

    _UPSERT_SPEND = (
        "INSERT INTO spend (scope, id, day, usd) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (scope, id, day) DO UPDATE SET usd = usd + excluded.usd"
    )

    async def add_spend(self, scope: SpendScope, id: str, day: str, usd: float) -> float:
        check_spend_args(scope, id, day, usd)

        def tx(conn: sqlite3.Connection) -> float:
            conn.execute(self._UPSERT_SPEND, (scope, id, day, float(usd)))
            (total,) = conn.execute(
                "SELECT usd FROM spend WHERE scope = ? AND id = ? AND day = ?", (scope, id, day)
            ).fetchone()
            return float(total)

        return await self._write(tx)

    async def add_spend_many(self, entries: Iterable[tuple[SpendScope, str, str, float]]) -> None:
        rows = []
        for scope, id_, day, usd in entries:
            check_spend_args(scope, id_, day, usd)
            rows.append((scope, id_, day, float(usd)))
        if rows:
            await self._write(lambda conn: conn.executemany(self._UPSERT_SPEND, rows))

    async def get_spend(self, scope: SpendScope, id: str, day: str) -> float:
        check_spend_args(scope, id, day)
        rows = await self._read(
            "SELECT usd FROM spend WHERE scope = ? AND id = ? AND day = ?", (scope, id, day)
        )
        return float(rows[0][0]) if rows else 0.0

    async def spend_by_day(
        self, scope: SpendScope, id: str, first_day: str, last_day: str
    ) -> dict[str, float]:
        check_spend_args(scope, id, first_day)
        check_spend_args(scope, id, last_day)
        rows = await self._read(
            "SELECT day, usd FROM spend WHERE scope = ? AND id = ? AND day BETWEEN ? AND ? ORDER BY day",
            (scope, id, first_day, last_day),
        )
        return {day: float(usd) for day, usd in rows}

    # -- usage roll-ups

    _UPSERT_USAGE = (
        "INSERT INTO usage (granularity, bucket, dims, field, n) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (granularity, bucket, dims, field) DO UPDATE SET n = n + excluded.n"
    )

    async def add_usage(self, cells: Iterable[tuple[str, int, str, str, int]],
                        ttl: Mapping[str, int] | None = None) -> None:
        rows = list(cells)
        if rows:
            await self._write(lambda conn: conn.executemany(self._UPSERT_USAGE, rows))

    async def usage_cells(self, granularity: str, first: int, last: int
                          ) -> list[tuple[int, str, str, int]]:
        rows = await self._read(
            "SELECT bucket, dims, field, n FROM usage WHERE granularity = ? AND bucket BETWEEN ? AND ?",
            (granularity, first, last),
        )
        return [(int(b), str(d), str(f), int(n)) for b, d, f, n in rows]

    async def prune_usage(self, granularity: str, before: int) -> None:
        await self._write(lambda conn: conn.execute(
            "DELETE FROM usage WHERE granularity = ? AND bucket < ?", (granularity, before)))

    # -- changes

    @staticmethod
    def _sync_version(conn: sqlite3.Connection) -> int:
        (version,) = conn.execute("SELECT value FROM meta WHERE name = 'change_version'").fetchone()
        return int(version)

    async def change_version(self) -> int:
        return await self._run(lambda: self._sync_version(self._db))

    def _sync_changes_since(self, version: int) -> list[Change] | None:
        conn = self._db
        conn.execute("BEGIN")  # one snapshot for the counter and the log
        try:
            current = self._sync_version(conn)
            if version >= current:
                return [] if version == current else None
            rows = conn.execute(
                "SELECT version, kind, tenant, id FROM changes WHERE version > ? ORDER BY version", (version,)
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        if not rows or rows[0][0] != version + 1:
            return None
        return [Change(version=v, kind=kind, tenant=tenant, id=id_) for v, kind, tenant, id_ in rows]

    async def changes_since(self, version: int) -> list[Change] | None:
        return await self._run(self._sync_changes_since, version)

    def _sync_poll(self, seen_data_version: int, seen_local: int) -> tuple[int, int, int | None]:
        """``(data_version, local writes, change_version or None if neither moved)``."""
        conn = self._db
        (data_version,) = conn.execute("PRAGMA data_version").fetchone()
        local = self._local_writes
        if data_version == seen_data_version and local == seen_local:
            return data_version, local, None
        return data_version, local, self._sync_version(conn)

    async def watch(self, *, since: int | None = None, interval: float | None = None) -> AsyncIterator[int]:
        pause = self._poll_interval if interval is None else interval
        last = since if since is not None else await self.change_version()
        data_version, local = -1, -1
        while not self._closed:
            try:
                data_version, local, version = await self._run(self._sync_poll, data_version, local)
            except StoreUnavailable:
                if self._closed:
                    return
                version = None  # locked for longer than busy_timeout: try again at the next tick
            if version is not None and version != last:
                last = version
                yield version
                continue
            await asyncio.sleep(pause)
