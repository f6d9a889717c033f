"""The admin API, in process: ``AdminApp.handle`` driven with parsed requests, on a real store.

Every test that touches the store runs twice: on SQLite (a file in tmp_path) and on Redis (a real server
started once per session by ``redisproc``, flushed before each test). No pytest-asyncio: ``run`` drives
each scenario with ``asyncio.run`` under a deadline.

What is covered: every endpoint; authentication (operator, tenant admins, pepper-made digests); the
tenant isolation rule (another tenant's object: 404 exactly as a missing one; a parameter naming another
tenant: 403) through every endpoint; static config records merged into reads and refused on writes;
pagination across store and config records; the audit log; the created key's secret in no log line and
no audit entry; and every real response validated against the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redisproc  # tests/ is on sys.path (see test_store.py)

from gateway._core.http import Request
from gateway.admin.app import AdminApp
from gateway.admin.openapi import document
from gateway.admin.routes import ROUTES, Operation
from gateway.auth import keyformat
from gateway.config import Config, load_config_text
from gateway.store import Store, StoreUnavailable, open_store

PEPPER_ENV = "ADMIN_TEST_PEPPER"
PEPPER = "admin-test-pepper"
OPERATOR = "operator-token-0123456789"
ACME = "acme-admin-token-0123456789"
GLOBEX = "globex-admin-token-0123456789"
STATIC_ACME_KEY = "cfgkeyaaaaaa"
STATIC_GLOBEX_KEY = "cfgkeybbbbbb"
TEST_DEADLINE = 90.0


def config_text() -> str:
    static_digest = keyformat.digest("S" * 43, b"")
    return f"""
[providers.mock]
type = "mock"

[models.mock-1]
provider = "mock"

[models.premium]
provider = "mock"
approval = "required"

[models."org/model-x"]
provider = "mock"
approval = "required"

[auth]
required = true
pepper = "env:{PEPPER_ENV}"
rotation_grace = 3600

[[auth.keys]]
id = "{STATIC_ACME_KEY}"
digest = "{static_digest}"
tenant = "acme"
name = "gitops"
models = ["mock-*"]

[[auth.keys]]
id = "{STATIC_GLOBEX_KEY}"
digest = "{static_digest}"
tenant = "globex"

[tenants.static-co]
name = "Static Co"

[admin]
operator_token = "{keyformat.digest(OPERATOR, PEPPER.encode())}"
tenant_tokens = {{ acme = "{keyformat.digest(ACME, b"")}", globex = "{keyformat.digest(GLOBEX, b"")}" }}
"""


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, TEST_DEADLINE)

    return asyncio.run(bounded())


# -- an in-process client ------------------------------------------------------------------------------------


class Recorder:
    """A Responder that keeps the one response."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    @property
    def disconnected(self) -> bool:
        return False

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        raise AssertionError("the admin API never streams")

    async def write(self, chunk: bytes) -> None:
        raise AssertionError("the admin API never streams")

    def end_stream(self) -> None:
        raise AssertionError("the admin API never streams")


@dataclass
class Resp:
    status: int
    data: Any
    headers: dict[str, str]
    raw: bytes

    @property
    def code(self) -> str | None:
        err = self.data.get("error") if isinstance(self.data, dict) else None
        return err.get("code") if isinstance(err, dict) else None


def match_route(method: str, path: str) -> Operation | None:
    segments = [urllib.parse.unquote(s) for s in path.strip("/").split("/")]
    for op in ROUTES:
        if op.method == method and len(op.segments) == len(segments) and all(
            t.startswith("{") or t == s for t, s in zip(op.segments, segments, strict=True)
        ):
            return op
    return None


@dataclass
class Api:
    app: AdminApp
    #: (operation, status, body) of every answer of a routed request, for the OpenAPI check
    seen: list[tuple[Operation, int, Any]] = field(default_factory=list)

    async def __call__(self, method: str, path: str, body: Any = None, *, token: str | None = OPERATOR,
                       query: dict[str, Any] | None = None, raw: bytes | None = None) -> Resp:
        headers = [(b"host", b"admin")]
        if token is not None:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        qs = urllib.parse.urlencode({k: v for k, v in (query or {}).items() if v is not None})
        rec = Recorder()
        await self.app.handle(Request(method, path, qs, 11, headers, payload, True), rec)
        data = json.loads(rec.body)
        op = match_route(method, path)
        if op is not None:
            self.seen.append((op, rec.status, data))
        return Resp(rec.status, data, dict(rec.headers), rec.body)


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'admin.db'}"
    server: redisproc.RedisServer = request.getfixturevalue("redis_server")
    server.flushall()
    return server.url


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv(PEPPER_ENV, PEPPER)
    return load_config_text(config_text(), "admin-test.toml")


@asynccontextmanager
async def admin(config: Config, store_url: str) -> AsyncIterator[tuple[Api, Store]]:
    store = await open_store(store_url)
    app = AdminApp(config, store=store)
    await app.startup()
    try:
        yield Api(app), store
    finally:
        await app.shutdown()
        await store.close()


Scenario = Callable[[Api, Store], Awaitable[None]]


def scenario(config: Config, store_url: str, fn: Scenario) -> None:
    async def go() -> None:
        async with admin(config, store_url) as (api, store):
            await fn(api, store)

    run(go())


async def seed(api: Api) -> dict[str, str]:
    """Tenants acme and globex, one key each; returns the key ids and full keys."""
    for tenant in ("acme", "globex"):
        r = await api("POST", "/admin/v1/tenants", {"id": tenant, "name": tenant.title(), "reason": "onboarding"})
        assert r.status == 201, r
    a = await api("POST", "/admin/v1/keys", {"tenant": "acme", "name": "acme-ci"})
    g = await api("POST", "/admin/v1/keys", {"tenant": "globex", "name": "globex-ci"})
    assert a.status == g.status == 201
    return {"acme": a.data["key"]["id"], "globex": g.data["key"]["id"],
            "acme_full": a.data["api_key"], "globex_full": g.data["api_key"]}


# -- meta and authentication ---------------------------------------------------------------------------------


def test_healthz_and_openapi_need_no_token(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        r = await api("GET", "/admin/healthz", token=None)
        assert (r.status, r.data) == (200, {"status": "ok", "store": "ok"})
        r = await api("GET", "/admin/openapi.json", token=None)
        assert r.status == 200 and r.data["openapi"].startswith("3.1")
        assert r.headers["cache-control"] == "no-store"

    scenario(config, store_url, go)


def test_tokens_name_the_operator_and_tenant_admins(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        r = await api("GET", "/admin/v1/whoami")  # its digest is an HMAC under the pepper
        assert r.data == {"actor": "operator", "role": "operator", "tenant": None}
        r = await api("GET", "/admin/v1/whoami", token=ACME)
        assert r.data == {"actor": "tenant:acme", "role": "tenant_admin", "tenant": "acme"}
        r = await api("GET", "/admin/v1/whoami", token=None)
        assert (r.status, r.code) == (401, "missing_token")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.data["error"]["type"] == "authentication_error"
        r = await api("GET", "/admin/v1/whoami", token="wrong-token")
        assert (r.status, r.code) == (401, "invalid_token")
        assert "wrong-token" not in r.raw.decode()
        rec = Recorder()
        req = Request("GET", "/admin/v1/whoami", "", 11, [(b"authorization", b"Basic " + OPERATOR.encode())],
                      b"", True)
        await api.app.handle(req, rec)
        assert rec.status == 401
        # every authenticated endpoint refuses a request without a token, before anything else
        for op in ROUTES:
            if op.auth:
                path = op.path.replace("{tenant}", "acme").replace("{key_id}", "abc").replace("{model}", "m")
                r = await api(op.method, path, token=None)
                assert (r.status, r.code) == (401, "missing_token"), op.path

    scenario(config, store_url, go)


def test_reload_swaps_the_tokens(config: Config, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go(api: Api, store: Store) -> None:
        new_token = "rotated-operator-token"
        text = config_text().replace(keyformat.digest(OPERATOR, PEPPER.encode()), keyformat.digest(new_token, b""))
        api.app.reload(load_config_text(text, "reloaded.toml"))
        assert (await api("GET", "/admin/v1/whoami")).status == 401
        assert (await api("GET", "/admin/v1/whoami", token=new_token)).status == 200

    scenario(config, store_url, go)


def test_routing_and_input_errors(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        r = await api("GET", "/admin/v1/nothing")
        assert (r.status, r.code) == (404, "route_not_found")
        r = await api("DELETE", "/admin/v1/keys")
        assert (r.status, r.code) == (405, "method_not_allowed")
        assert set(r.headers["allow"].split(", ")) == {"GET", "POST"}
        r = await api("GET", "/admin/v1/keys", query={"tenat": "acme"})
        assert (r.status, r.code, r.data["error"]["param"]) == (400, "invalid_argument", "tenat")
        r = await api("GET", "/admin/v1/keys", query={"limit": "0"})
        assert (r.status, r.data["error"]["param"]) == (400, "limit")
        r = await api("GET", "/admin/v1/keys", query={"cursor": "%%%"})
        assert r.status == 400
        r = await api("POST", "/admin/v1/tenants", raw=b"{not json")
        assert (r.status, r.code) == (400, "invalid_json")
        r = await api("POST", "/admin/v1/tenants", {"id": "x", "colour": "red"})
        assert (r.status, r.code) == (400, "invalid_argument")
        r = await api("POST", "/admin/v1/tenants", {"id": 5})
        assert (r.status, r.data["error"]["param"]) == (400, "id")
        r = await api("POST", "/admin/v1/tenants", {"id": "bad id!"})
        assert (r.status, r.code) == (400, "invalid_argument")
        r = await api("POST", "/admin/v1/keys", {"tenant": "acme", "allowed_endpoints": ["chat", "images"]})
        assert (r.status, r.data["error"]["param"]) == (400, "allowed_endpoints")
        r = await api("POST", "/admin/v1/keys", {"name": "no tenant"})
        assert (r.status, r.data["error"]["param"]) == (400, "tenant")
        for body in (r.data,):
            assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}

    scenario(config, store_url, go)


# -- tenants -------------------------------------------------------------------------------------------------


def test_tenant_lifecycle(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        r = await api("POST", "/admin/v1/tenants",
                      {"id": "acme", "name": "Acme", "allowed_models": ["mock-*"], "labels": {"team": "a"}})
        assert r.status == 201
        assert r.data["source"] == "api" and r.data["allowed_models"] == ["mock-*"]
        assert (await api("POST", "/admin/v1/tenants", {"id": "acme"})).code == "conflict"
        r = await api("GET", "/admin/v1/tenants/acme")
        assert (r.status, r.data["name"]) == (200, "Acme")
        r = await api("PATCH", "/admin/v1/tenants/acme", {"name": "Acme Corp", "budget": "b1", "reason": "rename"})
        assert (r.status, r.data["name"], r.data["budget"]) == (200, "Acme Corp", "b1")
        r = await api("PATCH", "/admin/v1/tenants/acme", {"reason": "nothing"})
        assert (r.status, r.code) == (400, "empty_update")
        r = await api("PATCH", "/admin/v1/tenants/nope", {"name": "x"})
        assert (r.status, r.code) == (404, "not_found")
        r = await api("GET", "/admin/v1/tenants")
        assert [(t["id"], t["source"]) for t in r.data["data"]] == [("acme", "api"), ("static-co", "config")]
        assert r.data["next_cursor"] is None
        r = await api("GET", "/admin/v1/tenants/acme/usage", query={"from": "2026-01-01", "to": "2026-01-03"})
        assert r.data == {"scope": "tenant", "id": "acme", "first_day": "2026-01-01", "last_day": "2026-01-03",
                          "days": {}, "total_usd": 0.0}
        await store.add_spend("tenant", "acme", "2026-01-02", 1.25)
        r = await api("GET", "/admin/v1/tenants/acme/usage", query={"from": "2026-01-01", "to": "2026-01-03"})
        assert (r.data["days"], r.data["total_usd"]) == ({"2026-01-02": 1.25}, 1.25)
        r = await api("GET", "/admin/v1/tenants/acme/usage", query={"from": "2026-01-03", "to": "2026-01-01"})
        assert r.status == 400
        r = await api("GET", "/admin/v1/tenants/acme/usage", query={"from": "2020-01-01", "to": "2026-01-01"})
        assert r.status == 400
        # a tenant with a live key cannot be deleted; revoke first
        key = await api("POST", "/admin/v1/keys", {"tenant": "acme"})
        r = await api("DELETE", "/admin/v1/tenants/acme", query={"reason": "offboarding"})
        assert (r.status, r.code) == (409, "conflict")
        await api("POST", f"/admin/v1/keys/{key.data['key']['id']}/revoke", {"reason": "offboarding"})
        r = await api("DELETE", "/admin/v1/tenants/acme", query={"reason": "offboarding"})
        assert (r.status, r.data) == (200, {"id": "acme", "deleted": True})
        assert (await api("GET", "/admin/v1/tenants/acme")).status == 404
        entries = (await api("GET", "/admin/v1/audit", query={"target": "acme", "order": "asc"})).data["data"]
        assert [(e["action"], e["actor"], e["reason"]) for e in entries] == [
            ("tenant.create", "operator", None), ("tenant.update", "operator", "rename"),
            ("tenant.delete", "operator", "offboarding"),
        ]

    scenario(config, store_url, go)


def test_config_tenants_are_read_only(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        r = await api("GET", "/admin/v1/tenants/static-co")
        assert r.data["source"] == "config" and r.data["name"] == "Static Co" and r.data["created_at"] is None
        for method, path, body in (
            ("POST", "/admin/v1/tenants", {"id": "static-co"}),
            ("PATCH", "/admin/v1/tenants/static-co", {"name": "x"}),
            ("DELETE", "/admin/v1/tenants/static-co", None),
        ):
            r = await api(method, path, body)
            assert (r.status, r.code) == (409, "static_tenant"), (method, path, r)
        assert (await api("GET", "/admin/v1/tenants/static-co/usage")).status == 200
        assert (await store.list_tenants()).items == []  # not copied into the store by reads

        # keys and subscriptions of a config tenant live in the store: its first one mirrors the tenant
        r = await api("POST", "/admin/v1/keys", {"tenant": "static-co", "name": "made by the API"})
        assert r.status == 201, r
        assert [t.id for t in (await store.list_tenants()).items] == ["static-co"]
        r = await api("POST", "/admin/v1/subscriptions", {"tenant": "static-co", "model": "premium"})
        assert r.status == 201, r
        r = await api("POST", "/admin/v1/subscriptions/static-co/premium/approve", {})
        assert r.status == 200 and r.data["state"] == "approved", r
        # still one tenant, shown as the config file has it, and still read-only
        r = await api("GET", "/admin/v1/tenants")
        assert [(t["id"], t["source"]) for t in r.data["data"] if t["id"] == "static-co"] == [("static-co", "config")]
        r = await api("PATCH", "/admin/v1/tenants/static-co", {"name": "x"})
        assert (r.status, r.code) == (409, "static_tenant")

    scenario(config, store_url, go)


# -- keys ----------------------------------------------------------------------------------------------------


def test_key_lifecycle(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        await api("POST", "/admin/v1/tenants", {"id": "acme"})
        r = await api("POST", "/admin/v1/keys", {
            "tenant": "acme", "name": "ci", "allowed_models": ["mock-*"], "allowed_endpoints": ["chat"],
            "expires_at": 4_000_000_000.0, "labels": {"env": "ci"}, "reason": "pipeline",
        })
        assert r.status == 201
        full, view = r.data["api_key"], r.data["key"]
        key_id, secret = keyformat.parse(full)
        assert view["id"] == key_id and view["status"] == "active" and view["source"] == "api"
        assert "digest" not in view and "previous_digest" not in view
        # stored as an HMAC under the configured pepper, never as the secret
        record = await store.get_key(key_id)
        assert record.digest == keyformat.digest(secret, PEPPER.encode())
        assert record.digest.startswith("hmac-sha256:")
        r = await api("GET", f"/admin/v1/keys/{key_id}")
        assert r.data == view and secret not in r.raw.decode()
        r = await api("PATCH", f"/admin/v1/keys/{key_id}", {"name": "ci-2", "expires_at": None, "reason": "rename"})
        assert (r.status, r.data["name"], r.data["expires_at"]) == (200, "ci-2", None)
        r = await api("PATCH", f"/admin/v1/keys/{key_id}", {"allowed_endpoints": ["videos"]})
        assert r.status == 400
        r = await api("PATCH", f"/admin/v1/keys/{key_id}", {"tenant": "globex"})
        assert r.status == 400  # a key's tenant never changes
        # rotation: a new secret, the old one valid for the grace period
        r = await api("POST", f"/admin/v1/keys/{key_id}/rotate", {"grace_seconds": 60, "reason": "leak drill"})
        assert r.status == 200
        new_full = r.data["api_key"]
        new_id, new_secret = keyformat.parse(new_full)
        assert new_id == key_id and new_secret != secret
        assert r.data["key"]["previous_valid_until"] is not None
        record = await store.get_key(key_id)
        assert record.digest == keyformat.digest(new_secret, PEPPER.encode())
        assert record.previous_digest == keyformat.digest(secret, PEPPER.encode())
        # without grace_seconds: [auth] rotation_grace (3600 s here)
        r = await api("POST", f"/admin/v1/keys/{key_id}/rotate", {})
        until = r.data["key"]["previous_valid_until"]
        assert until is not None and 3500 < until - (await store.get_key(key_id)).updated_at <= 3600
        r = await api("POST", f"/admin/v1/keys/{key_id}/rotate", {"grace_seconds": -1})
        assert (r.status, r.data["error"]["param"]) == (400, "grace_seconds")
        r = await api("POST", f"/admin/v1/keys/{key_id}/rotate", {"grace_seconds": 0})
        assert r.data["key"]["previous_valid_until"] is None
        # usage
        await store.add_spend("key", key_id, "2026-03-01", 0.5)
        r = await api("GET", f"/admin/v1/keys/{key_id}/usage", query={"from": "2026-03-01", "to": "2026-03-01"})
        assert r.data["days"] == {"2026-03-01": 0.5}
        # revoke: for good; again is a no-op; changes refused after
        r = await api("POST", f"/admin/v1/keys/{key_id}/revoke", {"reason": "done"})
        assert (r.status, r.data["state"], r.data["status"]) == (200, "revoked", "revoked")
        assert r.data["revoked_at"] is not None
        assert (await api("POST", f"/admin/v1/keys/{key_id}/revoke", {})).status == 200
        r = await api("PATCH", f"/admin/v1/keys/{key_id}", {"name": "again"})
        assert (r.status, r.code) == (409, "conflict")
        assert (await api("POST", f"/admin/v1/keys/{key_id}/rotate", {})).code == "conflict"
        assert (await api("GET", "/admin/v1/keys/zzzzzzzzzzzz")).status == 404
        r = await api("POST", "/admin/v1/keys", {"tenant": "nobody"})
        assert (r.status, r.code) == (404, "not_found")
        actions = [e["action"] for e in
                   (await api("GET", "/admin/v1/audit", query={"target": key_id, "order": "asc"})).data["data"]]
        assert actions == ["key.create", "key.update", "key.rotate", "key.rotate", "key.rotate", "key.revoke"]

    scenario(config, store_url, go)


def test_static_keys_are_listed_and_refused(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        ids = await seed(api)
        r = await api("GET", "/admin/v1/keys", query={"tenant": "acme"})
        listed = {k["id"]: k["source"] for k in r.data["data"]}
        assert listed == {ids["acme"]: "api", STATIC_ACME_KEY: "config"}
        r = await api("GET", f"/admin/v1/keys/{STATIC_ACME_KEY}")
        assert (r.data["name"], r.data["allowed_models"], r.data["tenant"]) == ("gitops", ["mock-*"], "acme")
        for method, suffix, body in (("PATCH", "", {"name": "x"}), ("POST", "/revoke", {}),
                                     ("POST", "/rotate", {})):
            r = await api(method, f"/admin/v1/keys/{STATIC_ACME_KEY}{suffix}", body)
            assert (r.status, r.code) == (409, "static_key"), (method, suffix)
        r = await api("GET", "/admin/v1/keys", query={"state": "revoked"})
        assert r.data["data"] == []
        assert (await api("GET", f"/admin/v1/keys/{STATIC_ACME_KEY}/usage")).status == 200
        with pytest.raises(Exception, match="no key"):
            await store.get_key(STATIC_ACME_KEY)  # never copied into the store

    scenario(config, store_url, go)


def test_lists_page_through_store_and_config_records(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        await api("POST", "/admin/v1/tenants", {"id": "acme"})
        for i in range(7):
            await api("POST", "/admin/v1/keys", {"tenant": "acme", "name": f"k{i}"})
        for i in range(5):
            await api("POST", "/admin/v1/tenants", {"id": f"t{i}"})
        expected = sorted([k.id for k in (await store.list_keys()).items] + [STATIC_ACME_KEY, STATIC_GLOBEX_KEY])
        for limit in (1, 2, 3, 4, 100):
            seen: list[str] = []
            cursor = None
            while True:
                r = await api("GET", "/admin/v1/keys", query={"limit": limit, "cursor": cursor})
                assert r.status == 200 and len(r.data["data"]) <= limit
                seen += [k["id"] for k in r.data["data"]]
                cursor = r.data["next_cursor"]
                if cursor is None:
                    break
            assert seen == expected, limit
        tenants: list[str] = []
        cursor = None
        while True:
            r = await api("GET", "/admin/v1/tenants", query={"limit": 2, "cursor": cursor})
            tenants += [t["id"] for t in r.data["data"]]
            if (cursor := r.data["next_cursor"]) is None:
                break
        assert tenants == ["acme", "static-co", "t0", "t1", "t2", "t3", "t4"]
        # the state filter: store keys in that state only (static keys are never revoked)
        victim = next(k for k in expected if k not in (STATIC_ACME_KEY, STATIC_GLOBEX_KEY))
        await api("POST", f"/admin/v1/keys/{victim}/revoke", {})
        r = await api("GET", "/admin/v1/keys", query={"state": "revoked"})
        assert [k["id"] for k in r.data["data"]] == [victim]
        r = await api("GET", "/admin/v1/keys", query={"state": "active", "limit": 3})
        assert victim not in [k["id"] for k in r.data["data"]] and len(r.data["data"]) == 3

    scenario(config, store_url, go)


# -- tenant isolation ----------------------------------------------------------------------------------------


def test_tenant_admin_cannot_reach_another_tenant_through_any_endpoint(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        ids = await seed(api)
        g = ids["globex"]
        await api("POST", "/admin/v1/subscriptions", {"model": "premium", "reason": "want"}, token=GLOBEX)
        await store.add_spend("key", g, "2026-01-01", 3.0)
        await store.add_spend("tenant", "globex", "2026-01-01", 3.0)
        missing = "zzzzzzzzzzzz"

        async def as_acme(method: str, path: str, body: Any = None, **kw: Any) -> Resp:
            return await api(method, path, body, token=ACME, **kw)

        # an object of another tenant answers exactly as a missing one
        for key_id in (g, STATIC_GLOBEX_KEY):
            for method, suffix, body in (("GET", "", None), ("PATCH", "", {"name": "pwned"}),
                                         ("POST", "/revoke", {}), ("POST", "/rotate", {}),
                                         ("GET", "/usage", None)):
                theirs = await as_acme(method, f"/admin/v1/keys/{key_id}{suffix}", body)
                absent = await as_acme(method, f"/admin/v1/keys/{missing}{suffix}", body)
                assert theirs.status == absent.status == 404, (key_id, method, suffix)
                assert theirs.raw.replace(key_id.encode(), b"X") == absent.raw.replace(missing.encode(), b"X")
        for path in ("/admin/v1/tenants/globex", "/admin/v1/tenants/globex/usage"):
            theirs, absent = await as_acme("GET", path), await as_acme("GET", path.replace("globex", "nobody"))
            assert theirs.status == absent.status == 404
            assert theirs.raw.replace(b"globex", b"X") == absent.raw.replace(b"nobody", b"X")
        theirs = await as_acme("GET", "/admin/v1/subscriptions/globex/premium")
        absent = await as_acme("GET", "/admin/v1/subscriptions/nobody/premium")
        assert theirs.status == absent.status == 404
        assert theirs.raw.replace(b"globex", b"X") == absent.raw.replace(b"nobody", b"X")

        # a parameter naming another tenant: 403, whether or not it exists
        for tenant in ("globex", "nobody"):
            for method, path, body, query in (
                ("GET", "/admin/v1/keys", None, {"tenant": tenant}),
                ("GET", "/admin/v1/subscriptions", None, {"tenant": tenant}),
                ("GET", "/admin/v1/audit", None, {"tenant": tenant}),
                ("POST", "/admin/v1/keys", {"tenant": tenant}, None),
                ("POST", "/admin/v1/subscriptions", {"tenant": tenant, "model": "premium"}, None),
                ("POST", "/admin/v1/cache/purge", {"tenant": tenant}, None),
                ("GET", "/admin/v1/usage", None, {"tenant": tenant}),
            ):
                r = await as_acme(method, path, body, query=query)
                assert (r.status, r.code) == (403, "tenant_forbidden"), (method, path, tenant)

        # operator-only operations
        for method, path, body in (
            ("POST", "/admin/v1/tenants", {"id": "mine"}),
            ("PATCH", "/admin/v1/tenants/acme", {"allowed_models": ["*"]}),
            ("DELETE", "/admin/v1/tenants/globex", None),
            ("PATCH", "/admin/v1/tenants/globex", {"name": "x"}),
            ("POST", "/admin/v1/subscriptions/globex/premium/approve", {}),
            ("POST", "/admin/v1/subscriptions/globex/premium/reject", {"reason": "x"}),
            ("POST", "/admin/v1/subscriptions/acme/premium/revoke", {"reason": "x"}),
            ("GET", "/admin/v1/cache/stats", None),
            ("PUT", "/admin/v1/prompts/mine", {"spec": {"live": "v1", "versions": {}}}),
            ("POST", "/admin/v1/prompts/mine/live", {"version": "v1"}),
            ("DELETE", "/admin/v1/prompts/mine", None),
        ):
            r = await as_acme(method, path, body)
            assert (r.status, r.code) == (403, "operator_only"), (method, path)
        # prompts are the node's catalogue, not a tenant's: a tenant admin reads them
        assert (await as_acme("GET", "/admin/v1/prompts")).status == 200
        assert (await as_acme("GET", "/admin/v1/prompts/none-such")).status == 404

        # lists are narrowed to the caller's tenant; nothing of globex shows anywhere
        for path in ("/admin/v1/keys", "/admin/v1/tenants", "/admin/v1/subscriptions", "/admin/v1/audit"):
            r = await as_acme("GET", path)
            assert r.status == 200
            text = r.raw.decode()
            assert "globex" not in text and g not in text and STATIC_GLOBEX_KEY not in text, path
        assert [t["id"] for t in (await as_acme("GET", "/admin/v1/tenants")).data["data"]] == ["acme"]

        # globex's key is untouched
        record = await store.get_key(g)
        assert record.state == "active" and record.name == "globex-ci" and record.previous_digest is None
        # and its own admin sees it
        r = await api("GET", f"/admin/v1/keys/{g}", token=GLOBEX)
        assert r.status == 200

        # every operation with a tenant-scoped object or parameter was tried above
        tried = {(op.method, op.path) for op, _, _ in api.seen if op.auth}
        untried = {(op.method, op.path) for op in ROUTES if op.auth} - tried
        assert untried == {("GET", "/admin/v1/whoami")}, untried

    scenario(config, store_url, go)


def test_tenant_admin_manages_its_own_keys(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        await seed(api)
        r = await api("POST", "/admin/v1/keys", {"name": "own"}, token=ACME)
        assert r.status == 201 and r.data["key"]["tenant"] == "acme"
        key_id = r.data["key"]["id"]
        assert (await api("PATCH", f"/admin/v1/keys/{key_id}", {"name": "own-2"}, token=ACME)).status == 200
        assert (await api("POST", f"/admin/v1/keys/{key_id}/rotate", {}, token=ACME)).status == 200
        assert (await api("POST", f"/admin/v1/keys/{key_id}/revoke", {}, token=ACME)).status == 200
        entries = (await api("GET", "/admin/v1/audit", token=ACME, query={"target": key_id})).data["data"]
        assert {e["actor"] for e in entries} == {"tenant:acme"}
        assert [e["action"] for e in entries] == ["key.revoke", "key.rotate", "key.update", "key.create"]

    scenario(config, store_url, go)


# -- subscriptions and audit ---------------------------------------------------------------------------------


def test_subscription_approval_flow(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        await seed(api)
        r = await api("POST", "/admin/v1/subscriptions", {"model": "premium", "reason": "new product"}, token=ACME)
        assert (r.status, r.data["state"], r.data["requested_by"]) == (201, "pending", "tenant:acme")
        r = await api("POST", "/admin/v1/subscriptions", {"model": "premium"}, token=ACME)
        assert (r.status, r.code) == (409, "conflict")  # already pending
        r = await api("GET", "/admin/v1/subscriptions", query={"state": "pending"})
        assert [(s["tenant"], s["model"]) for s in r.data["data"]] == [("acme", "premium")]
        r = await api("POST", "/admin/v1/subscriptions/acme/premium/approve", {"reason": "contract signed"})
        assert (r.status, r.data["state"], r.data["decided_by"], r.data["reason"]) == (
            200, "approved", "operator", "contract signed")
        r = await api("GET", "/admin/v1/subscriptions/acme/premium", token=ACME)
        assert r.data["state"] == "approved"
        r = await api("POST", "/admin/v1/subscriptions/acme/premium/revoke", {})
        assert (r.status, r.data["error"]["param"]) == (400, "reason")
        r = await api("POST", "/admin/v1/subscriptions/acme/premium/revoke", {"reason": "contract ended"})
        assert r.data["state"] == "revoked"
        r = await api("POST", "/admin/v1/subscriptions/acme/premium/revoke", {"reason": "again"})
        assert (r.status, r.code) == (409, "conflict")
        await api("POST", "/admin/v1/subscriptions", {"model": "premium", "reason": "renewed"}, token=ACME)
        r = await api("POST", "/admin/v1/subscriptions/acme/premium/reject", {"reason": "not this year"})
        assert r.data["state"] == "rejected"
        r = await api("POST", "/admin/v1/subscriptions/globex/premium/reject", {"reason": "x"})
        assert (r.status, r.code) == (404, "not_found")  # nothing to reject
        # a model whose name holds '/' travels percent-encoded
        r = await api("POST", "/admin/v1/subscriptions", {"tenant": "globex", "model": "org/model-x"})
        assert r.status == 201
        r = await api("POST", "/admin/v1/subscriptions/globex/org%2Fmodel-x/approve", {"reason": "ok"})
        assert (r.status, r.data["model"]) == (200, "org/model-x")
        r = await api("GET", "/admin/v1/subscriptions/globex/org%2Fmodel-x", token=GLOBEX)
        assert r.data["state"] == "approved"
        # only models of the config marked approval = "required"
        r = await api("POST", "/admin/v1/subscriptions", {"model": "nope"}, token=ACME)
        assert (r.status, r.code, r.data["error"]["param"]) == (400, "unknown_model", "model")
        r = await api("POST", "/admin/v1/subscriptions", {"model": "mock-1"}, token=ACME)
        assert (r.status, r.code) == (409, "approval_not_required")
        r = await api("POST", "/admin/v1/subscriptions", {"model": "premium"})
        assert (r.status, r.data["error"]["param"]) == (400, "tenant")
        # the audit log: who, when, why
        entries = (await api("GET", "/admin/v1/audit", query={"target": "acme/premium", "order": "asc"})).data["data"]
        assert [(e["action"], e["actor"], e["reason"]) for e in entries] == [
            ("subscription.request", "tenant:acme", "new product"),
            ("subscription.approve", "operator", "contract signed"),
            ("subscription.revoke", "operator", "contract ended"),
            ("subscription.request", "tenant:acme", "renewed"),
            ("subscription.reject", "operator", "not this year"),
        ]
        assert all(isinstance(e["at"], float) for e in entries)

    scenario(config, store_url, go)


def test_audit_log_filters_and_pages(config: Config, store_url: str) -> None:
    async def go(api: Api, store: Store) -> None:
        ids = await seed(api)
        await api("POST", f"/admin/v1/keys/{ids['acme']}/revoke", {"reason": "r1"})
        r = await api("GET", "/admin/v1/audit", query={"order": "asc"})
        actions = [e["action"] for e in r.data["data"]]
        assert actions == ["tenant.create", "tenant.create", "key.create", "key.create", "key.revoke"]
        r = await api("GET", "/admin/v1/audit", query={"action": "key.create"})
        assert {e["target"] for e in r.data["data"]} == {ids["acme"], ids["globex"]}
        r = await api("GET", "/admin/v1/audit", query={"tenant": "acme"})
        assert {e["tenant"] for e in r.data["data"]} == {"acme"}
        seqs: list[int] = []
        cursor = None
        while True:
            r = await api("GET", "/admin/v1/audit", query={"limit": 2, "cursor": cursor})
            seqs += [e["seq"] for e in r.data["data"]]
            if (cursor := r.data["next_cursor"]) is None:
                break
        assert seqs == sorted(seqs, reverse=True) and len(seqs) == 5
        r = await api("GET", "/admin/v1/audit", query={"order": "sideways"})
        assert (r.status, r.data["error"]["param"]) == (400, "order")

    scenario(config, store_url, go)


def test_secrets_never_reach_logs_or_audit(config: Config, store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def go(api: Api, store: Store) -> None:
        ids = await seed(api)
        rotated = await api("POST", f"/admin/v1/keys/{ids['acme']}/rotate", {"reason": "drill"})
        secrets = [keyformat.parse(full)[1] for full in (ids["acme_full"], ids["globex_full"],
                                                          rotated.data["api_key"])]
        later = [await api("GET", "/admin/v1/keys"), await api("GET", f"/admin/v1/keys/{ids['acme']}"),
                 await api("GET", "/admin/v1/audit")]
        audit = json.dumps([e for e in (await api("GET", "/admin/v1/audit", query={"limit": 1000})).data["data"]])
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "admin API: operator POST /admin/v1/keys -> 201" in logged
        for secret in secrets:
            assert secret not in logged
            assert secret not in audit
            assert all(secret not in r.raw.decode() for r in later)
        for token in (OPERATOR, ACME, GLOBEX):
            assert token not in logged

    scenario(config, store_url, go)


def test_store_unavailable_answers_503(config: Config) -> None:
    async def go() -> None:
        async def refuse() -> Store:
            raise StoreUnavailable("Redis store at redis://127.0.0.1:1/0: connection refused")

        app = AdminApp(config, open_store=refuse)
        await app.startup()
        try:
            api = Api(app)
            r = await api("GET", "/admin/healthz", token=None)
            assert (r.status, r.data) == (503, {"status": "degraded", "store": "unavailable"})
            r = await api("GET", "/admin/v1/keys")
            assert (r.status, r.code) == (503, "store_unavailable")
            assert "connection refused" in r.data["error"]["message"]
            assert (await api("GET", "/admin/v1/whoami")).status == 200  # needs no store
        finally:
            await app.shutdown()

    run(go())


# -- the OpenAPI document ------------------------------------------------------------------------------------


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "components": doc["components"], **schema}
    return jsonschema.Draft202012Validator(root)


def test_openapi_document_is_well_formed() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == {(op.method, op.path) for op in ROUTES}
    ids = [o["operationId"] for ops in doc["paths"].values() for o in ops.values()]
    assert len(ids) == len(set(ids))


def test_every_response_matches_the_openapi_document(config: Config, store_url: str) -> None:
    """Drive every operation (successes and errors) and validate each real answer against the document."""

    async def go(api: Api, store: Store) -> None:
        ids = await seed(api)
        a = ids["acme"]
        await api("GET", "/admin/healthz", token=None)
        await api("GET", "/admin/openapi.json", token=None)
        await api("GET", "/admin/v1/whoami")
        await api("GET", "/admin/v1/whoami", token="nope")
        await api("GET", "/admin/v1/tenants")
        await api("GET", "/admin/v1/tenants", token=ACME)
        await api("GET", "/admin/v1/tenants/acme")
        await api("GET", "/admin/v1/tenants/static-co")
        await api("PATCH", "/admin/v1/tenants/acme", {"labels": {"x": "y"}})
        await api("PATCH", "/admin/v1/tenants/static-co", {"name": "x"})
        await api("GET", "/admin/v1/tenants/acme/usage")
        await api("POST", "/admin/v1/tenants", {"id": "gone"})
        await api("DELETE", "/admin/v1/tenants/gone", query={"reason": "test"})
        await api("DELETE", "/admin/v1/tenants/gone")
        await api("POST", "/admin/v1/tenants", {"id": "x"}, token=ACME)
        await api("POST", "/admin/v1/keys", {"tenant": "acme", "expires_at": 1.0})
        await api("GET", "/admin/v1/keys", query={"limit": 2})
        await api("GET", "/admin/v1/keys", query={"tenant": "globex"}, token=ACME)
        await api("GET", f"/admin/v1/keys/{a}")
        await api("GET", f"/admin/v1/keys/{STATIC_ACME_KEY}")
        await api("PATCH", f"/admin/v1/keys/{a}", {"labels": {"a": "b"}})
        await api("GET", f"/admin/v1/keys/{a}/usage")
        await api("POST", f"/admin/v1/keys/{a}/rotate", {"grace_seconds": 5})
        await api("POST", f"/admin/v1/keys/{a}/revoke", {"reason": "t"})
        await api("POST", f"/admin/v1/keys/{a}/rotate", {})
        await api("POST", f"/admin/v1/keys/{STATIC_ACME_KEY}/revoke", {})
        await api("POST", "/admin/v1/subscriptions", {"model": "premium", "reason": "r"}, token=ACME)
        await api("POST", "/admin/v1/subscriptions", {"model": "premium", "reason": "r"}, token=ACME)
        await api("GET", "/admin/v1/subscriptions")
        await api("GET", "/admin/v1/subscriptions/acme/premium")
        await api("GET", "/admin/v1/subscriptions/acme/mock-1")
        await api("POST", "/admin/v1/subscriptions/acme/premium/approve", {"reason": "ok"})
        await api("POST", "/admin/v1/subscriptions/acme/premium/revoke", {"reason": "over"})
        await api("POST", "/admin/v1/subscriptions/acme/premium/reject", {"reason": "no"})
        await api("POST", "/admin/v1/subscriptions", {"model": "premium"}, token=GLOBEX)
        await api("POST", "/admin/v1/subscriptions/globex/premium/reject", {"reason": "no"})
        await api("POST", "/admin/v1/subscriptions/globex/premium/approve", {}, token=GLOBEX)
        await api("GET", "/admin/v1/audit", query={"limit": 3})
        await api("GET", "/admin/v1/usage", query={"group_by": "tenant", "total": "true"})
        await api("GET", "/admin/v1/usage", query={"tenant": "globex"}, token=ACME)
        await api("GET", "/admin/v1/usage", query={"granularity": "week"})
        await api("GET", "/admin/v1/audit", query={"bogus": "1"})
        await api("POST", "/admin/v1/cache/purge", {"model": "mock-1"})
        await api("POST", "/admin/v1/cache/purge", {})
        await api("GET", "/admin/v1/cache/stats")
        spec = {"live": "v1", "versions": {
            "v1": {"model": "mock-1", "messages": [{"role": "user", "content": "Say {{ word }}"}]},
            "v2": {"model": "mock-1", "messages": [{"role": "user", "content": "Shout {{ word }}"}]},
        }, "split": {"v1": 50, "v2": 50}}
        await api("PUT", "/admin/v1/prompts/say", {"spec": spec, "reason": "new"})
        await api("PUT", "/admin/v1/prompts/say", {"spec": spec})
        await api("PUT", "/admin/v1/prompts/bad", {"spec": {**spec, "live": "v9"}})
        await api("GET", "/admin/v1/prompts")
        await api("GET", "/admin/v1/prompts/say")
        await api("GET", "/admin/v1/prompts/none-such")
        await api("POST", "/admin/v1/prompts/say/live", {"version": "v1"})
        await api("POST", "/admin/v1/prompts/say/live", {"version": "v7"})
        await api("DELETE", "/admin/v1/prompts/say", query={"reason": "done"})
        await api("DELETE", "/admin/v1/prompts/say")
        await api("PUT", "/admin/v1/prompts/say", {"spec": spec}, token=ACME)

        doc = document()
        for op, status, body in api.seen:
            responses = doc["paths"][op.path][op.method.lower()]["responses"]
            assert str(status) in responses, (op.method, op.path, status, body)
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            _validator(doc, schema).validate(body)
        succeeded = {(op.method, op.path) for op, status, _ in api.seen if status == op.status}
        assert succeeded == {(op.method, op.path) for op in ROUTES}

    scenario(config, store_url, go)


def test_example_keys_toml_serves_its_demo_tokens(tmp_path: Path) -> None:
    """``examples/keys.toml`` loads as it is, and its demo tokens are what docs/keys-and-tenants.md says."""
    from gateway.admin.process import admin_wanted
    from gateway.config import load_config

    example = load_config(Path(__file__).resolve().parents[2] / "examples" / "keys.toml")
    assert admin_wanted(example) and example.auth.required

    async def go() -> None:
        store = await open_store(f"sqlite://{tmp_path / 'example.db'}")
        api = Api(AdminApp(example, store=store))
        try:
            r = await api("GET", "/admin/v1/whoami", token="change-me-operator-token")
            assert r.data["role"] == "operator"
            r = await api("GET", "/admin/v1/whoami", token="change-me-acme-admin-token")
            assert r.data["tenant"] == "acme"
            r = await api("GET", "/admin/v1/tenants", token="change-me-operator-token")
            assert [(t["id"], t["source"]) for t in r.data["data"]] == [("platform", "config")]
        finally:
            await store.close()

    run(go())
