"""The store, one suite for both implementations; and the key format.

Every store test runs twice: on SQLite (a file in the test's tmp_path) and on Redis (a real server started
once per session by ``redisproc``, flushed before each test). Tests that need "another worker process or
node" open a second store instance on the same file or server; the SQLite tests that need another *OS
process* run a child Python.

No pytest-asyncio: ``run`` drives each test's coroutine with ``asyncio.run`` under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import redisproc  # tests/ is on sys.path: the suite's conftest.py lives there, outside any package

from gateway.auth import keyformat
from gateway.store import (
    AUDIT_ACTIONS,
    SUBSCRIPTION_TRANSITIONS,
    ApiKey,
    Conflict,
    InvalidArgument,
    KeyUpdate,
    NotFound,
    Store,
    StoreError,
    StoreOptions,
    StoreUnavailable,
    TenantUpdate,
    open_store,
)
from gateway.store.base import subscription_step
from gateway.store.redis import RedisStore
from gateway.store.sqlite import MIGRATIONS, SqliteStore

PEPPER = b"test-pepper"
TEST_DEADLINE = 60.0


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, TEST_DEADLINE)

    return asyncio.run(bounded())


class Clock:
    """A settable clock for the stores: timestamps in assertions are exact."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Backend:
    """How a test opens store instances of one implementation, all on the same data."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url

    async def open(self, clock: Callable[[], float] | None = None, **options: Any) -> Store:
        if self.name == "sqlite":
            return await SqliteStore.open(self.url.removeprefix("sqlite://"), clock=clock or Clock(), **options)
        return await RedisStore.open(self.url, clock=clock or Clock(), **options)

    @contextlib.asynccontextmanager
    async def store(self, clock: Callable[[], float] | None = None, **options: Any) -> AsyncIterator[Store]:
        store = await self.open(clock, **options)
        try:
            yield store
        finally:
            await store.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite://{tmp_path / 'store.db'}")
    server: redisproc.RedisServer = request.getfixturevalue("redis_server")
    server.flushall()
    return Backend("redis", server.url)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def new_digest() -> tuple[str, str, str]:
    """(key id, secret, digest) of a fresh key."""
    _, key_id, secret = keyformat.generate()
    return key_id, secret, keyformat.digest(secret, PEPPER)


async def make_key(store: Store, tenant: str, **fields: Any) -> ApiKey:
    key_id, _, digest = new_digest()
    return await store.create_key(key_id=key_id, tenant=tenant, name=fields.pop("name", "k"), digest=digest, **fields)


async def collect(fetch: Callable[[str | None], Awaitable[Any]]) -> list[list[Any]]:
    """Walk a paginated listing; the items of each page."""
    pages: list[list[Any]] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        pages.append(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not end"


# == key format ============================================================================================


def test_key_round_trip() -> None:
    seen = set()
    for _ in range(200):
        full, key_id, secret = keyformat.generate()
        assert full == f"gw-{key_id}-{secret}"
        assert len(key_id) == keyformat.KEY_ID_LENGTH and set(key_id) <= set(keyformat.KEY_ID_ALPHABET)
        assert len(secret) == keyformat.SECRET_LENGTH and set(secret) <= set(keyformat.SECRET_ALPHABET)
        assert "-" not in key_id and "-" not in secret
        assert keyformat.parse(full) == (key_id, secret)
        assert keyformat.is_key_id(key_id)
        assert keyformat.format_key(key_id, secret) == full
        seen.add(full)
    assert len(seen) == 200


def test_generate_uses_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def choice(seq: str) -> str:
        calls.append(seq)
        return seq[0]

    monkeypatch.setattr(keyformat.secrets, "choice", choice)
    _, key_id, secret = keyformat.generate()
    assert len(calls) == keyformat.KEY_ID_LENGTH + keyformat.SECRET_LENGTH
    assert key_id == "a" * keyformat.KEY_ID_LENGTH and secret == "A" * keyformat.SECRET_LENGTH


SECRET = "S3cretS3cretS3cretS3cretS3cretS3cretS3cret"  # 42 base62 characters


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty"),
        (f"sk-abcdefghijkl-{SECRET}", "start"),
        (f"GW-abcdefghijkl-{SECRET}", "start"),
        ("gw-", "form"),
        (f"gw-abcdefghijkl-{SECRET}-x", "form"),
        (f"gw-abcdefghijkl{SECRET}", "form"),
        (f"gw-abcdefghijk-{SECRET}", "base32"),  # 11 characters
        (f"gw-abcdefghijklm-{SECRET}", "base32"),  # 13
        (f"gw-ABCDEFGHIJKL-{SECRET}", "base32"),
        (f"gw-abcdefghijk1-{SECRET}", "base32"),  # 1 is not base32
        (f"gw-abcdefghijkl-{SECRET[:-1]}_", "letters and digits"),
        (f"gw-abcdefghijkl-{SECRET[:-1]}é", "letters and digits"),
        ("gw-abcdefghijkl-short", "long"),
        (f"gw-abcdefghijkl-{'a' * 129}", "long"),
        (f" gw-abcdefghijkl-{SECRET}", "start"),
        (f"gw-abcdefghijkl-{SECRET} ", "letters and digits"),
    ],
)
def test_parse_rejects_malformed_keys(raw: str, why: str) -> None:
    with pytest.raises(keyformat.MalformedKey) as info:
        keyformat.parse(raw)
    message = str(info.value)
    assert why in message
    assert SECRET not in message and "short" not in message  # the input is never echoed


def test_parse_accepts_secret_length_bounds() -> None:
    for length in (keyformat.SECRET_MIN_LENGTH, keyformat.SECRET_MAX_LENGTH):
        assert keyformat.parse(f"gw-abcdefghijkl-{'a' * length}") == ("abcdefghijkl", "a" * length)
    with pytest.raises(keyformat.MalformedKey):
        keyformat.parse(f"gw-abcdefghijkl-{'a' * (keyformat.SECRET_MIN_LENGTH - 1)}")


def test_digest_formats() -> None:
    secret = keyformat.generate_secret()
    peppered = keyformat.digest(secret, PEPPER)
    assert peppered == "hmac-sha256:" + hmac.new(PEPPER, secret.encode(), hashlib.sha256).hexdigest()
    plain = keyformat.digest(secret, b"")
    assert plain == "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
    assert keyformat.digest_scheme(peppered) == "hmac-sha256"
    assert keyformat.digest_scheme(plain) == "sha256"
    # peppers longer than the SHA-256 block are hashed first (RFC 2104), like the stdlib does
    long_pepper = bytes(range(100))
    assert keyformat.digest(secret, long_pepper) == (
        "hmac-sha256:" + hmac.new(long_pepper, secret.encode(), hashlib.sha256).hexdigest()
    )
    assert keyformat.Digester(PEPPER).digest(secret) == peppered


@pytest.mark.parametrize(
    "stored",
    ["", "sha256", "sha256:", "md5:" + "0" * 32, "sha256:" + "0" * 63, "sha256:" + "A" * 64, "hmac-sha256:xyz"],
)
def test_malformed_digests(stored: str) -> None:
    with pytest.raises(keyformat.MalformedDigest):
        keyformat.digest_scheme(stored)
    assert not keyformat.verify("anything", stored, PEPPER)


def test_verify() -> None:
    secret = keyformat.generate_secret()
    other = keyformat.generate_secret()
    peppered = keyformat.digest(secret, PEPPER)
    plain = keyformat.digest(secret, b"")
    assert keyformat.verify(secret, peppered, PEPPER)
    assert not keyformat.verify(other, peppered, PEPPER)
    assert not keyformat.verify(secret, peppered, b"another pepper")
    # a peppered digest cannot verify without the pepper; a plain one verifies with or without
    assert not keyformat.verify(secret, peppered, b"")
    assert keyformat.verify(secret, plain, b"")
    assert keyformat.verify(secret, plain, PEPPER)
    assert not keyformat.verify(other, plain, PEPPER)
    # a stored digest with non-ASCII characters is malformed, not an exception
    assert not keyformat.verify(secret, "sha256:" + "é" * 64, PEPPER)


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keyformat.hmac, "compare_digest", spy)
    secret = keyformat.generate_secret()
    for stored, pepper in ((keyformat.digest(secret, PEPPER), PEPPER), (keyformat.digest(secret, b""), b"")):
        assert keyformat.verify(secret, stored, pepper)
        wrong = ("y" if secret[0] == "x" else "x") + secret[1:]  # differs from the secret in one character
        assert not keyformat.verify(wrong, stored, pepper)
    assert len(calls) == 4
    assert all(b.startswith(a.partition(":")[0]) for a, b in calls)


# == subscription table (pure) ===============================================================================


@pytest.mark.parametrize("action", ["request", "approve", "reject", "revoke"])
@pytest.mark.parametrize("state", [None, "pending", "approved", "rejected", "revoked"])
def test_subscription_table(action: str, state: Any) -> None:
    current = None
    if state is not None:
        current = subscription_step(None, "t", "m", "request", "alice", None, 1.0)
        current = msgspec.structs.replace(current, state=state)
    expected = SUBSCRIPTION_TRANSITIONS.get((action, state))
    if expected is None:
        with pytest.raises(NotFound if state is None else Conflict):
            subscription_step(current, "t", "m", action, "bob", "why", 2.0)
        return
    new = subscription_step(current, "t", "m", action, "bob", "why", 2.0)
    assert new.state == expected and new.reason == "why" and new.updated_at == 2.0
    if action == "request":
        assert new.requested_by == "bob" and new.decided_by is None and new.decided_at is None
    else:
        assert new.decided_by == "bob" and new.decided_at == 2.0


# == store: tenants ==========================================================================================


def test_tenant_crud(backend: Backend) -> None:
    async def body() -> None:
        clock = Clock()
        async with backend.store(clock) as store:
            tenant = await store.create_tenant("acme")
            assert (tenant.id, tenant.name, tenant.allowed_models, tenant.labels) == ("acme", "acme", ["*"], {})
            assert tenant.created_at == tenant.updated_at == clock.now
            full = await store.create_tenant(
                "beta.team_2", name="Beta", allowed_models=["gpt-*"], limit_policy="std", budget="b1",
                labels={"cost-center": "42"},
            )
            assert await store.get_tenant("beta.team_2") == full
            assert await store.get_tenant("acme") == tenant
            with pytest.raises(Conflict):
                await store.create_tenant("acme")
            for bad in ("", "-x", "a/b", "a b", "x" * 65, "{acme}"):
                with pytest.raises(InvalidArgument):
                    await store.create_tenant(bad)
            with pytest.raises(NotFound):
                await store.get_tenant("nope")

            clock.now += 10
            updated = await store.update_tenant("acme", TenantUpdate(name="ACME", labels={"a": "b"}, budget=None))
            assert (updated.name, updated.labels, updated.budget) == ("ACME", {"a": "b"}, None)
            assert updated.allowed_models == ["*"] and updated.created_at == tenant.created_at
            assert updated.updated_at == clock.now
            assert await store.get_tenant("acme") == updated
            with pytest.raises(NotFound):
                await store.update_tenant("nope", TenantUpdate(name="x"))

            await store.delete_tenant("acme")
            with pytest.raises(NotFound):
                await store.get_tenant("acme")
            with pytest.raises(NotFound):
                await store.delete_tenant("acme")
            assert [t.id for t in (await store.list_tenants()).items] == ["beta.team_2"]

    run(body())


def test_tenant_pagination(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as store:
            ids = ["t5", "t1", "t3", "t0", "t2", "t4"]
            for tenant_id in ids:
                await store.create_tenant(tenant_id)
            pages = await collect(lambda c: store.list_tenants(cursor=c, limit=4))
            assert [[t.id for t in p] for p in pages] == [["t0", "t1", "t2", "t3"], ["t4", "t5"]]
            # an exact multiple of the page size: the last full page says there is no more
            pages = await collect(lambda c: store.list_tenants(cursor=c, limit=3))
            assert [[t.id for t in p] for p in pages] == [["t0", "t1", "t2"], ["t3", "t4", "t5"]]
            # a cursor stays valid when the record it points at is deleted
            first = await store.list_tenants(limit=2)
            await store.delete_tenant("t1")
            rest = await store.list_tenants(cursor=first.next_cursor, limit=10)
            assert [t.id for t in rest.items] == ["t2", "t3", "t4", "t5"] and rest.next_cursor is None
            assert (await store.list_tenants(limit=1000)).next_cursor is None
            for limit in (0, -1, 1001):
                with pytest.raises(InvalidArgument):
                    await store.list_tenants(limit=limit)
            with pytest.raises(InvalidArgument):
                await store.list_tenants(cursor="%%%")

    run(body())


def test_delete_tenant_needs_revoked_keys_and_removes_its_records(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as store:
            await store.create_tenant("acme")
            await store.create_tenant("other")
            key = await make_key(store, "acme")
            kept = await make_key(store, "other")
            await store.request_subscription("acme", "m1", actor="alice")
            await store.request_subscription("other", "m1", actor="bob")
            with pytest.raises(Conflict):
                await store.delete_tenant("acme")
            await store.revoke_key(key.id)
            before = await store.change_version()
            await store.delete_tenant("acme", actor="op", reason="offboarded")
            with pytest.raises(NotFound):
                await store.get_key(key.id)
            with pytest.raises(NotFound):
                await store.get_subscription("acme", "m1")
            assert [k.id for k in (await store.list_keys()).items] == [kept.id]
            assert (await store.list_keys(tenant="acme")).items == []
            assert [(s.tenant, s.model) for s in (await store.list_subscriptions()).items] == [("other", "m1")]
            changes = await store.changes_since(before)
            assert changes is not None
            assert {(c.kind, c.tenant, c.id) for c in changes} == {
                ("tenant", "acme", "acme"), ("key", "acme", key.id), ("subscription", "acme", "m1"),
            }
            entries = (await store.list_audit(action="tenant.delete")).items
            assert [(e.actor, e.target, e.reason) for e in entries] == [("op", "acme", "offboarded")]
            # the id can be used again
            await store.create_tenant("acme")
            assert (await store.list_keys(tenant="acme")).items == []

    run(body())


# == store: keys =============================================================================================


def test_key_create_and_get(backend: Backend) -> None:
    async def body() -> None:
        clock = Clock()
        async with backend.store(clock) as store:
            await store.create_tenant("acme")
            key_id, secret, digest = new_digest()
            key = await store.create_key(
                key_id=key_id, tenant="acme", name="ci", digest=digest, allowed_models=["gpt-4o", "mock-*"],
                allowed_endpoints=["chat"], expires_at=clock.now + 100, limit_policy="std", budget="b1",
                labels={"team": "ml"}, source="config",
            )
            assert key == ApiKey(
                id=key_id, name="ci", tenant="acme", digest=digest, allowed_models=["gpt-4o", "mock-*"],
                allowed_endpoints=["chat"], expires_at=clock.now + 100, limit_policy="std", budget="b1",
                labels={"team": "ml"}, created_at=clock.now, updated_at=clock.now, source="config",
            )
            assert await store.get_key(key_id) == key
            assert keyformat.verify(secret, (await store.get_key(key_id)).digest, PEPPER)
            assert key.status(clock.now) == "active" and key.status(clock.now + 100) == "expired"
            assert key.digests_at(clock.now) == (digest,)

            defaults = await make_key(store, "acme")
            assert (defaults.allowed_models, defaults.allowed_endpoints, defaults.expires_at) == (["*"], ["*"], None)
            assert (defaults.state, defaults.source, defaults.last_used_at, defaults.labels) == (
                "active", "api", None, {}
            )

            with pytest.raises(Conflict):
                await store.create_key(key_id=key_id, tenant="acme", name="again", digest=digest)
            with pytest.raises(NotFound):
                await make_key(store, "nope")
            with pytest.raises(InvalidArgument):
                await store.create_key(key_id="NOT-AN-ID", tenant="acme", name="x", digest=digest)
            with pytest.raises(InvalidArgument):
                await store.create_key(key_id=new_digest()[0], tenant="acme", name="x", digest="plain-secret")
            with pytest.raises(NotFound):
                await store.get_key("aaaaaaaaaaaa")

    run(body())


def test_list_keys_filters_and_pages(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as store:
            await store.create_tenant("a")
            await store.create_tenant("b")
            keys = {t: [await make_key(store, t) for _ in range(5)] for t in ("a", "b")}
            revoked = {keys["a"][1].id, keys["a"][3].id, keys["b"][0].id}
            for key_id in revoked:
                await store.revoke_key(key_id)
            every = sorted(k.id for ks in keys.values() for k in ks)

            async def ids(**filters: Any) -> list[str]:
                pages = await collect(lambda c: store.list_keys(cursor=c, limit=2, **filters))
                assert all(len(p) == 2 for p in pages[:-1])
                return [k.id for p in pages for k in p]

            assert await ids() == every
            assert await ids(tenant="a") == sorted(k.id for k in keys["a"])
            assert await ids(state="revoked") == sorted(revoked)
            assert await ids(state="active") == sorted(set(every) - revoked)
            assert await ids(tenant="a", state="active") == sorted({k.id for k in keys["a"]} - revoked)
            assert await ids(tenant="nobody") == []
            page = await store.list_keys(tenant="b", state="revoked", limit=1)
            assert [k.id for k in page.items] == [keys["b"][0].id] and page.next_cursor is None

    run(body())


def test_update_key(backend: Backend) -> None:
    async def body() -> None:
        clock = Clock()
        async with backend.store(clock) as store:
            await store.create_tenant("acme")
            key = await make_key(store, "acme", expires_at=clock.now + 5, labels={"x": "1"})
            clock.now += 1
            update = msgspec.json.decode(
                b'{"name": "renamed", "allowed_models": ["m-*"], "expires_at": null, "budget": "b2"}',
                type=KeyUpdate,
            )
            assert update.changed_fields() == ["name", "allowed_models", "expires_at", "budget"]
            updated = await store.update_key(key.id, update, actor="op")
            assert (updated.name, updated.allowed_models, updated.expires_at, updated.budget) == (
                "renamed", ["m-*"], None, "b2"
            )
            assert updated.labels == {"x": "1"} and updated.allowed_endpoints == ["*"]
            assert (updated.digest, updated.tenant, updated.created_at) == (key.digest, "acme", key.created_at)
            assert updated.updated_at == clock.now
            assert await store.get_key(key.id) == updated
            with pytest.raises(msgspec.ValidationError):
                msgspec.json.decode(b'{"tenant": "other"}', type=KeyUpdate)
            with pytest.raises(NotFound):
                await store.update_key("aaaaaaaaaaaa", KeyUpdate(name="x"))
            await store.revoke_key(key.id)
            with pytest.raises(Conflict):
                await store.update_key(key.id, KeyUpdate(name="x"))

    run(body())


def test_revoke_key(backend: Backend) -> None:
    async def body() -> None:
        clock = Clock()
        async with backend.store(clock) as store:
            await store.create_tenant("acme")
            key = await make_key(store, "acme")
            await store.rotate_key(key.id, new_digest()[2], grace_seconds=60)
            clock.now += 2
            revoked = await store.revoke_key(key.id, actor="op", reason="leaked")
            assert (revoked.state, revoked.revoked_at, revoked.updated_at) == ("revoked", clock.now, clock.now)
            # a revoked key keeps no grace for its previous secret, but knows its digest (the data plane
            # answers that secret api_key_revoked too)
            assert revoked.previous_digest is not None and revoked.previous_valid_until == clock.now
            assert revoked.digests_at(clock.now) == (revoked.digest,)
            assert revoked.status(clock.now) == "revoked"
            assert await store.get_key(key.id) == revoked
            version = await store.change_version()
            clock.now += 2
            assert await store.revoke_key(key.id, actor="op") == revoked  # idempotent: no write
            assert await store.change_version() == version
            assert len((await store.list_audit(action="key.revoke")).items) == 1
            with pytest.raises(NotFound):
                await store.revoke_key("aaaaaaaaaaaa")

    run(body())


def test_rotate_key_grace(backend: Backend) -> None:
    async def body() -> None:
        clock = Clock()
        async with backend.store(clock) as store:
            await store.create_tenant("acme")
            key_id, old_secret, old_digest = new_digest()
            await store.create_key(key_id=key_id, tenant="acme", name="k", digest=old_digest)
            new_secret = keyformat.generate_secret()
            new = keyformat.digest(new_secret, PEPPER)
            clock.now += 1
            rotated = await store.rotate_key(key_id, new, grace_seconds=60, actor="op")
            assert (rotated.digest, rotated.previous_digest) == (new, old_digest)
            assert rotated.previous_valid_until == clock.now + 60
            assert await store.get_key(key_id) == rotated
            assert rotated.digests_at(clock.now + 59.9) == (new, old_digest)
            assert rotated.digests_at(clock.now + 60) == (new,)
            # both secrets verify during the grace period, only the new one after
            stored = await store.get_key(key_id)
            assert any(keyformat.verify(old_secret, d, PEPPER) for d in stored.digests_at(clock.now + 30))
            assert not any(keyformat.verify(old_secret, d, PEPPER) for d in stored.digests_at(clock.now + 61))
            assert any(keyformat.verify(new_secret, d, PEPPER) for d in stored.digests_at(clock.now + 61))

            # rotating again replaces the previous digest with the one just replaced
            clock.now += 10
            newer = new_digest()[2]
            again = await store.rotate_key(key_id, newer, grace_seconds=5)
            assert (again.digest, again.previous_digest, again.previous_valid_until) == (newer, new, clock.now + 5)
            # no grace: the old secret stops at once
            latest = new_digest()[2]
            none = await store.rotate_key(key_id, latest, grace_seconds=0)
            assert (none.digest, none.previous_digest, none.previous_valid_until) == (latest, None, None)

            entries = (await store.list_audit(target=key_id, action="key.rotate")).items
            assert [(e.actor, e.details) for e in entries] == [("op", {"grace_seconds": "60.0"})]
            with pytest.raises(InvalidArgument):
                await store.rotate_key(key_id, new_digest()[2], grace_seconds=-1)
            with pytest.raises(InvalidArgument):
                await store.rotate_key(key_id, "sha256:nothex", grace_seconds=1)
            with pytest.raises(NotFound):
                await store.rotate_key("aaaaaaaaaaaa", new_digest()[2], grace_seconds=1)
            await store.revoke_key(key_id)
            with pytest.raises(Conflict):
                await store.rotate_key(key_id, new_digest()[2], grace_seconds=1)

    run(body())


def test_touch_last_used(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as store:
            await store.create_tenant("acme")
            a = await make_key(store, "acme")
            b = await make_key(store, "acme")
            version = await store.change_version()
            await store.touch_last_used({a.id: 100.5, b.id: 200.0, "aaaaaaaaaaaa": 1.0})
            await store.touch_last_used({a.id: 50.0})  # older: ignored
            await store.touch_last_used({})
            assert (await store.get_key(a.id)).last_used_at == 100.5
            assert {k.id: k.last_used_at for k in (await store.list_keys()).items} == {a.id: 100.5, b.id: 200.0}
            assert await store.change_version() == version  # not a change
            with pytest.raises(NotFound):
                await store.get_key("aaaaaaaaaaaa")
            # a change to the record keeps the time
            updated = await store.update_key(a.id, KeyUpdate(name="x"))
            assert updated.last_used_at == 100.5
            assert (await store.revoke_key(b.id)).last_used_at == 200.0
            snapshot = await store.snapshot()
            assert {k.id: k.last_used_at for k in snapshot.keys} == {a.id: 100.5, b.id: 200.0}

    run(body())


# == store: subscriptions ====================================================================================


def test_subscription_approval_flow(backend: Backend) -> None:
    async def body() -> None:
        clock = Clock()
        async with backend.store(clock) as store:
            await store.create_tenant("acme")
            model = "org/model-x"
            pending = await store.request_subscription("acme", model, actor="alice", reason="need it")
            assert (pending.state, pending.requested_by, pending.requested_at) == ("pending", "alice", clock.now)
            assert (pending.decided_by, pending.reason) == (None, "need it")
            assert await store.get_subscription("acme", model) == pending
            with pytest.raises(Conflict):
                await store.request_subscription("acme", model, actor="alice")
            clock.now += 1
            approved = await store.decide_subscription("acme", model, "approve", actor="op", reason="ok")
            assert (approved.state, approved.decided_by, approved.decided_at) == ("approved", "op", clock.now)
            assert approved.requested_by == "alice"
            with pytest.raises(Conflict):
                await store.decide_subscription("acme", model, "reject", actor="op")
            revoked = await store.decide_subscription("acme", model, "revoke", actor="op", reason="abuse")
            assert revoked.state == "revoked"
            assert (await store.request_subscription("acme", model, actor="alice")).state == "pending"
            rejected = await store.decide_subscription("acme", model, "reject", actor="op", reason="no")
            assert (rejected.state, rejected.reason) == ("rejected", "no")
            assert (await store.decide_subscription("acme", model, "approve", actor="op2")).state == "approved"
            assert await store.get_subscription("acme", model) == (await store.list_subscriptions()).items[0]

            # an operator may grant without a request
            granted = await store.decide_subscription("acme", "other", "approve", actor="op")
            assert (granted.state, granted.requested_by, granted.decided_by) == ("approved", "op", "op")
            with pytest.raises(NotFound):
                await store.decide_subscription("acme", "never", "reject", actor="op")
            with pytest.raises(NotFound):
                await store.request_subscription("nope", model, actor="alice")
            with pytest.raises(NotFound):
                await store.decide_subscription("nope", model, "approve", actor="op")
            with pytest.raises(NotFound):
                await store.get_subscription("acme", "never")
            with pytest.raises(InvalidArgument):
                await store.decide_subscription("acme", model, "maybe", actor="op")  # type: ignore[arg-type]

            entries = (await store.list_audit(target=f"acme/{model}")).items
            assert [(e.action, e.actor, e.reason, e.details["to"]) for e in entries] == [
                ("subscription.request", "alice", "need it", "pending"),
                ("subscription.approve", "op", "ok", "approved"),
                ("subscription.revoke", "op", "abuse", "revoked"),
                ("subscription.request", "alice", None, "pending"),
                ("subscription.reject", "op", "no", "rejected"),
                ("subscription.approve", "op2", None, "approved"),
            ]

    run(body())


def test_list_subscriptions_filters_and_pages(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as store:
            for tenant in ("a", "a.b", "b"):
                await store.create_tenant(tenant)
            models = ["m1", "org/m2", "z"]
            for tenant in ("b", "a.b", "a"):
                for model in models:
                    await store.request_subscription(tenant, model, actor="t")
            await store.decide_subscription("a", "org/m2", "approve", actor="op")
            await store.decide_subscription("b", "org/m2", "reject", actor="op")

            async def pairs(**filters: Any) -> list[tuple[str, str]]:
                pages = await collect(lambda c: store.list_subscriptions(cursor=c, limit=2, **filters))
                return [(s.tenant, s.model) for p in pages for s in p]

            everything = [(t, m) for t in ("a", "a.b", "b") for m in models]
            assert await pairs() == everything
            assert await pairs(tenant="a.b") == [("a.b", m) for m in models]
            assert await pairs(model="org/m2") == [("a", "org/m2"), ("a.b", "org/m2"), ("b", "org/m2")]
            assert await pairs(state="pending") == [p for p in everything if p not in {("a", "org/m2"), ("b", "org/m2")}]
            assert await pairs(state="approved") == [("a", "org/m2")]
            assert await pairs(tenant="b", model="org/m2", state="rejected") == [("b", "org/m2")]
            assert await pairs(tenant="b", state="approved") == []

    run(body())


# == store: audit ============================================================================================


def test_audit_log(backend: Backend) -> None:
    async def body() -> None:
        clock = Clock()
        async with backend.store(clock) as store:
            # without an actor, writes are not audited
            await store.create_tenant("quiet")
            await make_key(store, "quiet")
            assert (await store.list_audit()).items == []

            await store.create_tenant("acme", actor="op", reason="onboarding")
            clock.now += 1
            key = await make_key(store, "acme", name="ci", actor="op")
            await store.update_key(key.id, KeyUpdate(labels={"a": "b"}), actor="op")
            await store.update_tenant("acme", TenantUpdate(name="ACME"), actor="op")
            await store.rotate_key(key.id, new_digest()[2], grace_seconds=1, actor="op")
            await store.revoke_key(key.id, actor="op", reason="leaked")
            await store.request_subscription("acme", "m", actor="alice")
            await store.decide_subscription("acme", "m", "reject", actor="op")
            await store.decide_subscription("acme", "m", "approve", actor="op")
            await store.decide_subscription("acme", "m", "revoke", actor="op")
            custom = await store.append_audit(
                actor="cli", action="login.failed", target="op", reason="bad token", details={"ip": "127.0.0.1"}
            )
            assert (custom.actor, custom.action, custom.target, custom.tenant, custom.at) == (
                "cli", "login.failed", "op", None, clock.now
            )
            await store.delete_tenant("acme", actor="op")

            entries = [e for p in await collect(lambda c: store.list_audit(cursor=c, limit=3)) for e in p]
            assert [e.action for e in entries] == [
                "tenant.create", "key.create", "key.update", "tenant.update", "key.rotate", "key.revoke",
                "subscription.request", "subscription.reject", "subscription.approve", "subscription.revoke",
                "login.failed", "tenant.delete",
            ]
            assert {e.action for e in entries} - {"login.failed"} == set(AUDIT_ACTIONS)
            seqs = [e.seq for e in entries]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert entries[0].reason == "onboarding" and entries[0].at == clock.now - 1
            assert entries[1].details == {"name": "ci", "source": "api"}
            assert entries[2].details == {"fields": "labels"}
            assert entries[10] == custom
            assert all(e.tenant == "acme" for e in entries if e.action != "login.failed")

            newest = [e for p in await collect(lambda c: store.list_audit(cursor=c, limit=4, newest_first=True)) for e in p]
            assert newest == entries[::-1]
            assert [e.action for e in (await store.list_audit(target=key.id)).items] == [
                "key.create", "key.update", "key.rotate", "key.revoke"
            ]
            assert len((await store.list_audit(tenant="acme")).items) == 11
            assert (await store.list_audit(tenant="quiet")).items == []
            by_action = await collect(lambda c: store.list_audit(action="subscription.approve", cursor=c, limit=1))
            assert [[e.target for e in p] for p in by_action] == [["acme/m"]]
            last_two = await store.list_audit(tenant="acme", newest_first=True, limit=2)
            assert [e.action for e in last_two.items] == ["tenant.delete", "subscription.revoke"]
            assert last_two.next_cursor is not None
            with pytest.raises(InvalidArgument):
                await store.list_audit(cursor="bm90LWEtbnVtYmVy")  # "not-a-number"

            # append-only: the interface has no way to change or remove an entry
            assert not [name for name in dir(store) if "audit" in name and not name.startswith("_")
                        and name not in ("append_audit", "list_audit")]

    run(body())


def test_sqlite_audit_table_refuses_update_and_delete(sqlite_path: Path) -> None:
    async def body() -> None:
        async with _sqlite(sqlite_path) as store:
            await store.append_audit(actor="op", action="x", target="y")
        with contextlib.closing(sqlite3.connect(sqlite_path)) as conn:
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute("UPDATE audit SET actor = 'mallory'")
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute("DELETE FROM audit")

    run(body())


# == store: spend ============================================================================================


def test_spend_accumulates_per_day(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as store:
            version = await store.change_version()
            assert await store.add_spend("key", "k1", "2024-05-01", 0.25) == pytest.approx(0.25)
            assert await store.add_spend("key", "k1", "2024-05-01", 0.5) == pytest.approx(0.75)
            await store.add_spend("key", "k1", "2024-05-02", 1.0)
            await store.add_spend("key", "k2", "2024-05-01", 2.0)
            await store.add_spend("tenant", "k1", "2024-05-01", 4.0)  # another scope, same id
            await store.add_spend_many([
                ("key", "k1", "2024-05-01", 0.25), ("key", "k1", "2024-05-03", 0.125), ("tenant", "acme", "2024-05-03", 3.0),
            ])
            await store.add_spend_many([])
            assert await store.get_spend("key", "k1", "2024-05-01") == pytest.approx(1.0)
            assert await store.get_spend("key", "k1", "2024-05-02") == pytest.approx(1.0)
            assert await store.get_spend("key", "k2", "2024-05-01") == pytest.approx(2.0)
            assert await store.get_spend("tenant", "k1", "2024-05-01") == pytest.approx(4.0)
            assert await store.get_spend("tenant", "acme", "2024-05-03") == pytest.approx(3.0)
            assert await store.get_spend("key", "k1", "2024-04-30") == 0.0
            assert await store.get_spend("key", "nobody", "2024-05-01") == 0.0
            by_day = await store.spend_by_day("key", "k1", "2024-05-02", "2024-05-31")
            assert list(by_day) == ["2024-05-02", "2024-05-03"]
            assert by_day == pytest.approx({"2024-05-02": 1.0, "2024-05-03": 0.125})
            assert await store.spend_by_day("key", "k1", "2024-06-01", "2024-06-30") == {}
            # many small additions, as batched flushes from several workers make them
            await asyncio.gather(*(store.add_spend("key", "k3", "2024-05-01", 0.01) for _ in range(50)))
            assert await store.get_spend("key", "k3", "2024-05-01") == pytest.approx(0.5)
            assert await store.change_version() == version  # spend is not a change
            for args in (("key", "k", "2024-5-1", 1.0), ("key", "", "2024-05-01", 1.0), ("budget", "k", "2024-05-01", 1.0),
                         ("key", "k", "2024-05-01", float("nan"))):
                with pytest.raises(InvalidArgument):
                    await store.add_spend(*args)
            with pytest.raises(InvalidArgument):
                await store.get_spend("key", "k1", "yesterday")

    run(body())


# == store: changes ==========================================================================================


def test_change_version_bumps_on_every_write(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as store:
            seen = [await store.change_version()]

            async def bumped(write: Awaitable[Any]) -> None:
                await write
                version = await store.change_version()
                assert version > seen[-1], "a write did not bump change_version"
                seen.append(version)

            async def unchanged(call: Awaitable[Any]) -> None:
                with contextlib.suppress(StoreError):
                    await call
                assert await store.change_version() == seen[-1]

            await bumped(store.create_tenant("acme"))
            await bumped(store.update_tenant("acme", TenantUpdate(name="x")))
            key_id, _, digest = new_digest()
            await bumped(store.create_key(key_id=key_id, tenant="acme", name="k", digest=digest))
            await bumped(store.update_key(key_id, KeyUpdate(name="y")))
            await bumped(store.rotate_key(key_id, new_digest()[2], grace_seconds=5))
            await bumped(store.request_subscription("acme", "m", actor="a"))
            await bumped(store.decide_subscription("acme", "m", "approve", actor="op"))
            await bumped(store.decide_subscription("acme", "m", "revoke", actor="op"))
            await bumped(store.revoke_key(key_id))
            await bumped(store.delete_tenant("acme"))
            # reads, refused writes and the non-change writes leave it alone
            await unchanged(store.create_tenant("bad id"))
            await unchanged(store.update_key(key_id, KeyUpdate(name="z")))
            await unchanged(store.get_tenant("acme"))
            await unchanged(store.list_keys())
            await unchanged(store.append_audit(actor="a", action="b", target="c"))
            await unchanged(store.add_spend("key", key_id, "2024-01-01", 1.0))
            await unchanged(store.touch_last_used({key_id: 1.0}))

            changes = await store.changes_since(seen[0])
            assert changes is not None
            assert [c.version for c in changes] == list(range(seen[0] + 1, seen[-1] + 1))
            assert [(c.kind, c.id) for c in changes[:9]] == [
                ("tenant", "acme"), ("tenant", "acme"), ("key", key_id), ("key", key_id), ("key", key_id),
                ("subscription", "m"), ("subscription", "m"), ("subscription", "m"), ("key", key_id),
            ]
            assert all(c.tenant == "acme" for c in changes)
            assert await store.changes_since(seen[-1]) == []
            tail = await store.changes_since(seen[-2])
            assert tail is not None and [(c.kind, c.id) for c in tail] == [
                ("tenant", "acme"), ("key", key_id), ("subscription", "m"),
            ]
            assert tail[-1].version == seen[-1]
            # a watcher ahead of the store (a store that was reset) must reload everything
            assert await store.changes_since(seen[-1] + 5) is None

    run(body())


def test_changes_since_gives_up_beyond_the_retained_log(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.store.redis as redis_module
    import gateway.store.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "CHANGE_LOG_RETENTION", 3)
    monkeypatch.setattr(redis_module, "CHANGE_LOG_RETENTION", 3)

    async def body() -> None:
        async with backend.store() as store:
            for i in range(6):
                await store.create_tenant(f"t{i}")
            assert await store.change_version() == 6
            assert await store.changes_since(0) is None
            assert await store.changes_since(2) is None
            kept = await store.changes_since(3)
            assert kept is not None and [c.id for c in kept] == ["t3", "t4", "t5"]

    run(body())


async def _next_within(iterator: AsyncIterator[int], seconds: float) -> int:
    return await asyncio.wait_for(anext(iterator), seconds)


#: how long a watcher is given to wake on a change: generous (it wakes within one poll of 0.05 s, or at
#: once by pub/sub), and shorter than the Redis watcher's 30 s fallback poll, so that only pub/sub passes
WAKE = 20.0


async def _subscribed(backend: Backend, store: Store) -> None:
    """For a Redis store: wait until a watcher has subscribed to its change channel (from then on no
    change can be missed). Nothing to wait for with SQLite (its watcher polls)."""
    if not isinstance(store, RedisStore):
        return
    client = redis.Redis.from_url(backend.url)  # a quick question on the side (blocking is fine here)
    try:
        deadline = time.monotonic() + WAKE
        while not client.pubsub_numsub(store.channel)[0][1]:
            assert time.monotonic() < deadline, "the watcher never subscribed"
            await asyncio.sleep(0.01)
    finally:
        client.close()


def test_watch_wakes_on_a_write_through_another_instance(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as watcher_store, backend.store() as writer:
            # the Redis watcher's fallback poll is long: waking within the deadline proves pub/sub works
            interval = 0.05 if backend.name == "sqlite" else 30.0
            # the watcher starts from the version before the write (whenever it gets to read it)
            since = await watcher_store.change_version()
            async with contextlib.aclosing(watcher_store.watch(since=since, interval=interval)) as watcher:
                pending = asyncio.ensure_future(_next_within(watcher, WAKE))
                await _subscribed(backend, watcher_store)
                assert not pending.done()
                await writer.create_tenant("acme")
                version = await pending
                assert version == await writer.change_version() == await watcher_store.change_version()
                assert (await watcher_store.get_tenant("acme")).id == "acme"

                key = await make_key(writer, "acme")
                await writer.revoke_key(key.id)
                later = await _next_within(watcher, WAKE)
                while later < await writer.change_version():  # consecutive writes may coalesce
                    later = await _next_within(watcher, WAKE)
                assert (await watcher_store.get_key(key.id)).state == "revoked"
                changes = await watcher_store.changes_since(version)
                assert changes is not None and [c.kind for c in changes] == ["key", "key"]

                # a write through the watcher's own instance wakes it too
                await watcher_store.update_tenant("acme", TenantUpdate(name="x"))
                assert await _next_within(watcher, WAKE) == await watcher_store.change_version()

    run(body())


def test_watch_since_and_non_changes(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as store:
            await store.create_tenant("acme")
            # a version the caller already knows is behind: the watcher yields at once
            async with contextlib.aclosing(store.watch(since=0, interval=0.05)) as watcher:
                assert await _next_within(watcher, WAKE) == 1
            # from version 1 on (whenever the watcher reads it): writes that are not changes must not
            # wake it; a second of 20 polls without a yield (a wrong yield would come within one poll)
            async with contextlib.aclosing(store.watch(since=1, interval=0.05)) as watcher:
                pending = asyncio.ensure_future(_next_within(watcher, 1.0))
                await store.add_spend("key", "k", "2024-01-01", 1.0)
                await store.append_audit(actor="a", action="b", target="c")
                with pytest.raises(TimeoutError):
                    await pending

    run(body())


def test_watch_keeps_a_cancel_that_meets_a_read(
    redis_server: redisproc.RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher cancelled in the very loop iteration in which its subscription read returns stops (on
    Python 3.11 ``asyncio.wait_for`` returned the read's result and lost the cancel: the watcher then
    polled on for ever, and whoever awaited its cancellation hung)."""
    import gateway.store.redis as redis_store

    redis_server.flushall()
    backend = Backend("redis", redis_server.url)  # the SQLite watcher polls; it has no subscription read

    async def body() -> None:
        async with backend.store() as store:
            since = await store.change_version()
            reads = 0
            real_open = redis_store.open_pubsub

            def open_pubsub(client: Any) -> Any:
                pubsub = real_open(client)
                get_message = pubsub.get_message

                async def racing_get_message(*args: Any, **kwargs: Any) -> Any:
                    nonlocal reads
                    message = await get_message(*args, **kwargs)
                    reads += 1
                    if reads == 3:  # the cancel is queued before the read's result is delivered
                        asyncio.get_running_loop().call_soon(task.cancel)
                    return message

                pubsub.get_message = racing_get_message
                return pubsub

            monkeypatch.setattr(redis_store, "open_pubsub", open_pubsub)
            watcher = store.watch(since=since, interval=0.01)
            task = asyncio.ensure_future(anext(watcher))
            done, _ = await asyncio.wait([task], timeout=WAKE)
            assert done, "the cancelled watcher went on polling"
            assert task.cancelled()
            # the cancel lands in the version read after the third subscription read, where redis-py's own
            # wait_for (around the command's write) can drop it too: the watch then ends on its next turn
            assert reads in (3, 4)

    run(body())


def test_watch_ends_when_the_store_closes(backend: Backend) -> None:
    async def body() -> None:
        store = await backend.open()
        since = await store.change_version()
        # the store is closed while the watcher waits for a change, not while it reads: the watcher's
        # read is noted, and from there it goes on to its wait before the test runs again (the Redis
        # watcher reads the version, then waits on pub/sub; the SQLite one polls in a thread, then sleeps)
        read = asyncio.Event()
        if isinstance(store, RedisStore):
            change_version = store.change_version

            async def noted_version() -> int:
                version = await change_version()
                read.set()
                return version

            store.change_version = noted_version  # type: ignore[method-assign]
        else:
            assert isinstance(store, SqliteStore)
            run_in_thread = store._run

            async def noted_run(*args: Any) -> Any:
                out = await run_in_thread(*args)
                read.set()
                return out

            store._run = noted_run  # type: ignore[method-assign]
        watcher = store.watch(since=since, interval=0.05)  # nothing new: nothing to yield
        pending = asyncio.ensure_future(_next_within(watcher, WAKE))
        await asyncio.wait_for(read.wait(), WAKE)
        await store.close()
        with pytest.raises(StopAsyncIteration):
            await pending
        await store.close()  # closing twice is harmless
        with pytest.raises(StoreUnavailable):
            await store.get_tenant("x")

    run(body())


def test_concurrent_writers_on_two_instances(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as one, backend.store() as two:
            await one.create_tenant("acme")
            key = await make_key(one, "acme")
            start = await one.change_version()
            updates = [
                (one if i % 2 else two).update_key(key.id, KeyUpdate(labels={"n": str(i)})) for i in range(16)
            ]
            tenants = [(two if i % 2 else one).create_tenant(f"t{i}") for i in range(8)]
            await asyncio.gather(*updates, *tenants)
            assert await two.change_version() == start + 24
            changes = await one.changes_since(start)
            assert changes is not None and len(changes) == 24
            assert len((await two.list_tenants()).items) == 9
            duplicates = await asyncio.gather(
                one.create_tenant("dup"), two.create_tenant("dup"), return_exceptions=True
            )
            assert sorted(type(r).__name__ for r in duplicates) == ["Conflict", "Tenant"]

    run(body())


def test_snapshot(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as store:
            for i in range(3):
                await store.create_tenant(f"t{i}")
                await make_key(store, f"t{i}")
                await store.request_subscription(f"t{i}", "m", actor="a")
            snap = await store.snapshot()
            assert snap.version == await store.change_version() == 9
            assert [t.id for t in snap.tenants] == ["t0", "t1", "t2"]
            assert sorted(k.tenant for k in snap.keys) == ["t0", "t1", "t2"]
            assert [(s.tenant, s.model) for s in snap.subscriptions] == [("t0", "m"), ("t1", "m"), ("t2", "m")]

    run(body())


def test_data_survives_close_and_reopen(backend: Backend) -> None:
    async def body() -> None:
        async with backend.store() as store:
            await store.create_tenant("acme", actor="op")
            key = await make_key(store, "acme")
            await store.touch_last_used({key.id: 5.0})
            await store.decide_subscription("acme", "m", "approve", actor="op")
            await store.add_spend("tenant", "acme", "2024-01-01", 1.5)
            before = await store.snapshot()
        async with backend.store() as reopened:
            assert await reopened.snapshot() == before
            assert await reopened.get_spend("tenant", "acme", "2024-01-01") == pytest.approx(1.5)
            assert [e.action for e in (await reopened.list_audit()).items] == ["tenant.create", "subscription.approve"]
            await reopened.create_tenant("next")
            assert await reopened.change_version() == before.version + 1

    run(body())


# == factory =================================================================================================


def test_open_store_by_url(tmp_path: Path, redis_server: redisproc.RedisServer) -> None:
    async def body() -> None:
        async with await open_store(f"sqlite://{tmp_path / 'a.db'}") as store:
            assert isinstance(store, SqliteStore) and store.path == str(tmp_path / "a.db")
        async with await open_store(StoreOptions(url=f"sqlite://{tmp_path / 'b.db'}", poll_interval=0.5)) as store:
            assert isinstance(store, SqliteStore)
        redis_server.flushall()
        async with await open_store(redis_server.url + "?prefix=blue") as blue, \
                await open_store(StoreOptions(url=redis_server.url, prefix="green")) as green:
            assert isinstance(blue, RedisStore) and blue.prefix == "blue" and blue.channel == "blue:changes"
            assert isinstance(green, RedisStore) and green.prefix == "green"
            await blue.create_tenant("acme")
            # prefixes keep deployments that share a server apart
            assert (await green.list_tenants()).items == []
            assert await green.change_version() == 0
        for bad in ("postgres://x/y", "nothing", "sqlite://", "redis://localhost/0?prefix={x}"):
            with pytest.raises(InvalidArgument):
                await open_store(bad)
        # nothing listens on a port just freed
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(StoreUnavailable):
            await open_store(f"redis://127.0.0.1:{port}/0")

    run(body())


# == SQLite: processes, migrations ===========================================================================


@contextlib.asynccontextmanager
async def _sqlite(path: Path, **options: Any) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(str(path), **options)
    try:
        yield store
    finally:
        await store.close()


# a child process: another worker of the same node
_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from gateway.store.sqlite import SqliteStore

    async def main(path, prefix, count):
        store = await SqliteStore.open(path)
        try:
            seen = [t.id for t in (await store.list_tenants(limit=1000)).items]
            for i in range(count):
                await store.create_tenant(f"{prefix}{i}")
            print(json.dumps({"seen": seen, "applied": list(store.applied_migrations)}))
        finally:
            await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def _child(path: Path, prefix: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), prefix, str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _result(child: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_sqlite_processes_see_each_others_writes(sqlite_path: Path) -> None:
    async def body() -> None:
        async with _sqlite(sqlite_path, poll_interval=0.05) as store:
            await store.create_tenant("parent")
            async with contextlib.aclosing(store.watch()) as watcher:
                pending = asyncio.ensure_future(_next_within(watcher, 30.0))
                result = await asyncio.to_thread(lambda: _result(_child(sqlite_path, "child", 1)))
                assert result["seen"] == ["parent"]  # the child read the parent's write
                assert result["applied"] == []  # the parent migrated the file already
                assert await pending == 2  # the parent's watcher saw the child's write
            assert (await store.get_tenant("child0")).id == "child0"

    run(body())


def test_sqlite_concurrent_processes(sqlite_path: Path) -> None:
    # several workers start at once on a new file: one migrates, all write, nothing is lost
    children = [_child(sqlite_path, f"w{n}-", 15) for n in range(3)]
    results = [_result(child) for child in children]
    assert sorted(len(r["applied"]) for r in results) == [0, 0, len(MIGRATIONS)]

    async def body() -> None:
        async with _sqlite(sqlite_path) as store:
            assert store.applied_migrations == ()
            assert len((await store.list_tenants(limit=1000)).items) == 45
            assert await store.change_version() == 45
            changes = await store.changes_since(0)
            assert changes is not None and [c.version for c in changes] == list(range(1, 46))

    run(body())


def test_sqlite_migrations_apply_once(sqlite_path: Path) -> None:
    async def body() -> None:
        async with _sqlite(sqlite_path) as store:
            assert store.applied_migrations == tuple(m.version for m in MIGRATIONS)
            await store.create_tenant("acme")
        for _ in range(2):
            async with _sqlite(sqlite_path) as store:
                assert store.applied_migrations == ()
                assert (await store.get_tenant("acme")).id == "acme"
        with contextlib.closing(sqlite3.connect(sqlite_path)) as conn:
            rows = conn.execute("SELECT version, description FROM schema_version ORDER BY version").fetchall()
            assert rows == [(m.version, m.description) for m in MIGRATIONS]
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            # a file from a newer gateway is refused, not damaged
            conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
            conn.commit()
        with pytest.raises(StoreError, match="schema version 999"):
            await SqliteStore.open(str(sqlite_path))

    run(body())


def test_migrations_are_ordered() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
