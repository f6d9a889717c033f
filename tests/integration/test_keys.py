"""API keys on the data plane: real gateway processes with ``[auth] required = true``, keys made in the store.

Keys are written straight into the store (the SQLite file the gateway uses, or the shared Redis server),
as the admin API does; the gateway must pick each change up by itself: a new key works at once, a revoked
key is refused by every worker (and, with Redis, by every node) within a second, which comes from the
store's change notifications: the revocation tests push the full re-read of the key table out of reach,
so that only the notifications can bring the change within their (generous) deadline.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redisproc

from gateway.auth import digest, format_key, generate, generate_secret
from gateway.store import open_store
from gateway.store.base import Store

from .conftest import MOCK_KEY, Gateway, StartGateway
from .helpers import RawClient, Response, call_records, chat_body, gateway_toml, http_request, wait_for

STATIC_ID = "statickeyaaa"
STATIC_SECRET = "S" * 43
STATIC_KEY = format_key(STATIC_ID, STATIC_SECRET)
#: a rotated secret's grace period in the tests (seconds)
GRACE = 5.0
#: a full re-read of the key table that never comes within a test: only change notifications act
NO_RESYNC = 3600.0


def auth_toml(mock_port: int, store_url: str, *, extra: str = "", resync: float = 30.0) -> str:
    """``resync``: seconds between full re-reads of the key table (the fallback to change notifications)."""
    return gateway_toml(mock_port) + f"""
[models.premium]
provider = "upstream"
upstream_model = "mock-1"
approval = "required"

[auth]
required = true
resync_interval = {resync}

[[auth.keys]]
id = "{STATIC_ID}"
digest = "{digest(STATIC_SECRET, b'')}"
tenant = "static-tenant"
name = "from the config file"
labels = {{ team = "ops" }}

[tenants.static-tenant]
name = "declared in TOML"

[store]
url = "{store_url}"
poll_interval = 0.1
{extra}"""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_store(url: str, fn: Any) -> Any:
    store = await open_store(url)
    try:
        return await fn(store)
    finally:
        await store.close()


def make_key(url: str, tenant: str = "acme", **fields: Any) -> tuple[str, str]:
    """A new key in the store at ``url``: (full key, key id)."""
    full, key_id, secret = generate()

    async def body(store: Store) -> None:
        try:
            await store.create_tenant(tenant)
        except Exception:
            pass  # already there
        await store.create_key(key_id=key_id, tenant=tenant, name="test", digest=digest(secret, b""),
                               **fields)

    run(_with_store(url, body))
    return full, key_id


def call(port: int, data: bytes) -> Response:
    with RawClient(port) as c:
        return c.request(data)


def keyed_chat(key: str | None, *, model: str = "chat-model", header: str = "authorization",
               endpoint: str = "/v1/chat/completions") -> bytes:
    headers = []
    if key is not None:
        headers.append((header, f"Bearer {key}" if header == "authorization" else key))
    return http_request("POST", endpoint, chat_body("hi", model), headers=headers)


def post_chat(port: int, key: str | None, **kw: Any) -> tuple[int, dict[str, Any]]:
    resp = call(port, keyed_chat(key, **kw))
    return resp.status, json.loads(resp.body)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'keys.db'}"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis-keys")) as server:
        yield server


def test_keys_work_and_each_refusal_has_its_code(start_gateway: StartGateway, mock_port: int,
                                                  sqlite_url: str) -> None:
    gw = start_gateway(auth_toml(mock_port, sqlite_url), workers=2)
    key, key_id = make_key(sqlite_url)
    narrow, _ = make_key(sqlite_url, allowed_models=["mock-*"], allowed_endpoints=["chat", "models"])

    assert post_chat(gw.port, key)[0] == 200
    assert post_chat(gw.port, key, header="x-api-key")[0] == 200
    assert post_chat(gw.port, STATIC_KEY)[0] == 200

    cases = [
        (None, {}, 401, "missing_api_key"),
        ("sk-not-a-gateway-key", {}, 401, "malformed_api_key"),
        (format_key("unknownkeyid", generate_secret()), {}, 401, "invalid_api_key"),
        (format_key(key_id, generate_secret()), {}, 401, "invalid_api_key"),
        (narrow, {"model": "chat-model"}, 403, "model_not_allowed"),
        (narrow, {"model": "mock-1", "endpoint": "/v1/completions"}, 403, "endpoint_not_allowed"),
        (key, {"model": "premium"}, 403, "subscription_required"),
    ]
    for presented, kw, status, code in cases:
        got_status, body = post_chat(gw.port, presented, **kw)
        assert (got_status, body["error"]["code"]) == (status, code), (presented, kw, body)
        assert body["error"]["type"] in ("authentication_error", "permission_error")
    assert post_chat(gw.port, narrow, model="mock-1")[0] == 200

    # a Basic credential is not a key
    resp = call(gw.port, http_request("POST", "/v1/chat/completions", chat_body(),
                                      headers=[("authorization", "Basic dXNlcjpwYXNz")]))
    assert resp.status == 401 and json.loads(resp.body)["error"]["code"] == "malformed_api_key"

    # the SDK maps 401 and 403 to its own exceptions
    sdk = openai.OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "x"}])
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=narrow, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "x"}])
    # /v1/models needs a key too, and lists what the key may use
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=narrow, max_retries=0)
    assert sorted(m.id for m in sdk.models.list()) == ["mock-1"]
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("chat-model")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0).models.list()


def test_expiry_rotation_grace_and_subscriptions(start_gateway: StartGateway, mock_port: int,
                                                 sqlite_url: str) -> None:
    gw = start_gateway(auth_toml(mock_port, sqlite_url))
    expired, _ = make_key(sqlite_url, expires_at=time.time() - 1)
    assert post_chat(gw.port, expired)[1]["error"]["code"] == "api_key_expired"

    old, key_id = make_key(sqlite_url)
    new_secret = generate_secret()
    new = format_key(key_id, new_secret)

    async def rotate(store: Store) -> None:
        await store.rotate_key(key_id, digest(new_secret, b""), grace_seconds=GRACE, actor="test")

    rotated_at = time.time()  # the grace cannot end before this plus GRACE
    run(_with_store(sqlite_url, rotate))
    status = post_chat(gw.port, old)[0]
    if time.time() < rotated_at + GRACE:  # answered within the grace period (nearly always: it is 5 s)
        assert status == 200
    wait_for(lambda: post_chat(gw.port, new)[0] == 200, 30.0, what="the rotated secret to work")
    wait_for(lambda: post_chat(gw.port, old)[0] == 401, 30.0, what="the old secret to stop working")
    assert post_chat(gw.port, old)[1]["error"]["code"] == "api_key_expired"
    assert post_chat(gw.port, new)[0] == 200

    # the approval flow as the data plane sees it
    def decide(state: str | None) -> None:
        async def body(store: Store) -> None:
            if state == "pending":
                await store.request_subscription("acme", "premium", actor="tenant:acme")
            elif state is not None:
                await store.decide_subscription("acme", "premium", state, actor="operator",  # type: ignore[arg-type]
                                                reason="test")

        run(_with_store(sqlite_url, body))

    decide("pending")
    wait_for(lambda: post_chat(gw.port, new, model="premium")[1].get("error", {}).get("code")
             == "subscription_pending", 30.0, what="subscription_pending")
    decide("approve")
    wait_for(lambda: post_chat(gw.port, new, model="premium")[0] == 200, 30.0, what="approved")
    decide("revoke")
    wait_for(lambda: post_chat(gw.port, new, model="premium")[1].get("error", {}).get("code")
             == "subscription_rejected", 30.0, what="revoked subscription")


def _workers_seen(gw: Gateway, key_id: str, status: int) -> set[int]:
    """Worker indexes whose call records show ``key_id`` answered with ``status``."""
    seen = set()
    for line in gw.process.log_path.read_bytes().splitlines():
        if line.startswith(b'{"ts":'):
            rec = json.loads(line)
            if rec.get("key_id") == key_id and rec.get("status") == status:
                seen.add(rec["worker"])
    return seen


def _refused_by_every_worker(gw: Gateway, key: str, key_id: str, workers: int) -> None:
    """Wait until each of the ``workers`` workers of ``gw`` has refused ``key`` (call records), then check
    that none serves it any more."""
    wait_for(lambda: _spread(gw.port, key) and len(_workers_seen(gw, key_id, 401)) == workers, 30.0,
             interval=0.2, what=f"all {workers} workers to refuse the key")
    statuses = {call(gw.port, keyed_chat(key)).status for _ in range(4 * workers)}
    assert statuses == {401}, statuses


def test_revoked_key_is_refused_by_every_worker_within_a_second(start_gateway: StartGateway, mock_port: int,
                                                                  sqlite_url: str) -> None:
    # the workers' full re-read of the key table is an hour away: only the store's change notification
    # (polled every 0.1 s here) can bring the revocation within the test's generous deadline, so a slow
    # machine cannot fail this and a missing notification cannot pass it (no time is measured)
    gw = start_gateway(auth_toml(mock_port, sqlite_url, resync=NO_RESYNC), workers=4)
    key, key_id = make_key(sqlite_url)
    # every worker serves the key first (checked through the call records' worker field)
    wait_for(lambda: _spread(gw.port, key) and len(_workers_seen(gw, key_id, 200)) == 4, 30.0,
             interval=0.2, what="all four workers to serve the key")

    async def revoke(store: Store) -> None:
        await store.revoke_key(key_id, actor="test", reason="leaked")

    run(_with_store(sqlite_url, revoke))
    _refused_by_every_worker(gw, key, key_id, 4)
    body = post_chat(gw.port, key)[1]
    assert body["error"]["code"] == "api_key_revoked"


def _spread(port: int, key: str, n: int = 24) -> bool:
    """Calls over fresh connections, which the kernel spreads over the workers (their call records are
    written within 200 ms: the caller looks again until they show what it waits for)."""
    for _ in range(n):
        call(port, keyed_chat(key))
    return True


def test_two_nodes_sharing_redis_see_a_revocation_within_a_second(
    start_gateway: StartGateway, mock_port: int, redis_server: redisproc.RedisServer
) -> None:
    # as above: with the full re-read an hour away, only Redis pub/sub can bring the revocation to
    # every worker of both nodes within the deadline
    redis_server.flushall()
    url = redis_server.url
    node_a = start_gateway(auth_toml(mock_port, url, resync=NO_RESYNC), workers=2, name="node-a")
    node_b = start_gateway(auth_toml(mock_port, url, resync=NO_RESYNC), workers=2, name="node-b")
    key, key_id = make_key(url)
    for node in (node_a, node_b):
        wait_for(lambda node=node: post_chat(node.port, key)[0] == 200, 30.0, what="the new key on each node")

    async def revoke(store: Store) -> None:
        await store.revoke_key(key_id, actor="test", reason="leaked")

    run(_with_store(url, revoke))
    for node in (node_a, node_b):
        _refused_by_every_worker(node, key, key_id, 2)


def test_a_key_is_not_called_invalid_while_the_store_is_down(
    start_gateway: StartGateway, mock_port: int, tmp_path: Path
) -> None:
    """Redis gone: a key this node has not seen may exist, so it gets a 503 the SDKs retry (in the client's
    dialect), not a 401 that calls it wrong; keys the node holds keep working."""
    unseen, unseen_id, _ = generate()  # a key id this node has not seen: only the store could say
    server = redisproc.start(tmp_path / "redis")
    try:
        gw = start_gateway(auth_toml(mock_port, server.url), name="store-down")
        known, _ = make_key(server.url)
        wait_for(lambda: post_chat(gw.port, known)[0] == 200, 30.0, what="the key made before the outage")
    finally:
        server.stop()
    status, body = post_chat(gw.port, unseen)
    assert (status, body["error"]["code"]) == (503, "key_store_unavailable"), body
    assert unseen_id in body["error"]["message"]
    resp = call(gw.port, http_request(
        "POST", "/v1/messages", json.dumps({"model": "chat-model", "max_tokens": 8,
                                            "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers=[("x-api-key", unseen), ("anthropic-version", "2023-06-01")]))
    answer = json.loads(resp.body)
    assert resp.status == 503 and answer["type"] == "error", answer
    assert status == 503 and answer["error"]["type"] != "authentication_error"
    assert post_chat(gw.port, known)[0] == 200
    assert post_chat(gw.port, STATIC_KEY)[0] == 200


def test_config_reload_adds_a_static_key(start_gateway: StartGateway, mock_port: int, sqlite_url: str) -> None:
    gw = start_gateway(auth_toml(mock_port, sqlite_url))
    key_id, secret = "reloadkeyaaa", generate_secret()
    key = format_key(key_id, secret)
    assert post_chat(gw.port, key)[1]["error"]["code"] == "invalid_api_key"
    assert gw.config_path is not None
    gw.config_path.write_text(auth_toml(mock_port, sqlite_url, extra=f"""
[[auth.keys]]
id = "{key_id}"
digest = "{digest(secret, b'')}"
tenant = "static-tenant"
"""))
    import signal

    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: post_chat(gw.port, key)[0] == 200, 30.0, what="the reloaded static key")


def test_no_secret_in_logs_records_or_error_bodies(start_gateway: StartGateway, mock_port: int,
                                                   sqlite_url: str) -> None:
    """Every secret that reached the gateway, valid or not, appears nowhere it writes."""
    gw = start_gateway(auth_toml(mock_port, sqlite_url).replace('level = "info"', 'level = "debug"'))
    key, key_id = make_key(sqlite_url)
    secret = key.split("-")[2]
    wrong = format_key(key_id, generate_secret())
    near_miss = key + "x"
    bodies = []
    for presented in (key, wrong, near_miss, STATIC_KEY, "gw-" + secret):
        for header in ("authorization", "x-api-key"):
            bodies.append(json.dumps(post_chat(gw.port, presented, header=header)[1]))
            bodies.append(json.dumps(post_chat(gw.port, presented, header=header, model="premium")[1]))

    async def revoke(store: Store) -> None:
        await store.revoke_key(key_id, actor="test", reason="scan")

    run(_with_store(sqlite_url, revoke))
    wait_for(lambda: post_chat(gw.port, key)[0] == 401, 30.0, what="the key to be refused")
    bodies.append(json.dumps(post_chat(gw.port, key)[1]))
    # every request's call record is written (the last one, of the revoked key, comes last)
    call_records(gw.process, lambda rs: any(r.get("key_id") == key_id and r["status"] == 401 for r in rs),
                 what="the call record of the revoked key")
    written = gw.process.logs(10_000_000) + "\n".join(bodies)
    assert key_id in written  # the id is what records and messages name
    for s in (secret, wrong.split("-")[2], STATIC_SECRET, MOCK_KEY):
        assert s not in written
    assert not re.search(r"gw-[a-z2-7]{12}-[A-Za-z0-9]{32,}", written)
    records = [json.loads(ln) for ln in gw.process.log_path.read_text().splitlines() if ln.startswith('{"ts":')]
    ok = [r for r in records if r.get("key_id") == key_id and r["status"] == 200]
    assert ok and ok[0]["tenant"] == "acme"
    static = [r for r in records if r.get("key_id") == STATIC_ID and r["status"] == 200]
    assert static and static[0]["labels"] == {"team": "ops"} and static[0]["tenant"] == "static-tenant"
