"""Keys, approvals and the admin API, driven at machine speed through a real ``gateway serve``.

Each test starts a gateway with two workers and its admin listener (SQLite store, or a real Redis server)
and changes keys, subscriptions and tenants through the admin API (over HTTP, or with the ``gateway`` CLI),
then uses the data plane at once, with no pause in between, over fresh connections (the kernel spreads them
over the workers). What the admin API answered must be what every worker of the node does. Also: the admin
API's input bounds against its OpenAPI document, and what a budget refusal says holds the budget.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import redisproc

from gateway.auth import keyformat

from .helpers import (
    HOST,
    RawClient,
    ServerProcess,
    chat_request,
    children_of,
    free_port,
    http_status,
    wait_for,
)
from .test_admin_cli import ACME, OPERATOR, admin_toml

#: fresh connections per check: with two workers, each sees some of them
SPREAD = 24


@dataclass
class Node:
    """A running ``gateway serve`` with its admin API."""

    process: ServerProcess
    port: int
    admin_port: int
    http: httpx.Client

    def admin(self, method: str, path: str, body: Any = None, *, token: str = OPERATOR,
              params: dict[str, str] | None = None) -> httpx.Response:
        return self.http.request(method, f"http://{HOST}:{self.admin_port}{path}", json=body, params=params,
                                 headers={"authorization": f"Bearer {token}"})

    def ok(self, method: str, path: str, body: Any = None, *, token: str = OPERATOR) -> Any:
        resp = self.admin(method, path, body, token=token)
        assert resp.status_code < 300, resp.text
        return resp.json()

    def cli(self, *args: str, token: str = OPERATOR) -> str:
        env = {**os.environ, "GATEWAY_ADMIN_URL": f"http://{HOST}:{self.admin_port}",
               "GATEWAY_ADMIN_TOKEN": token}
        result = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                                env=env, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"gateway {' '.join(args)}: {result.returncode}\n{result.stderr}"
        assert "warning" not in result.stderr, result.stderr
        return result.stdout

    def chat(self, key: str, model: str = "mock-1", **extra: Any) -> tuple[int, str | None, str]:
        """Status, error code and error message of one chat request on a fresh connection."""
        auth = [("Authorization", f"Bearer {key}")]
        with RawClient(self.port) as c:
            resp = c.request(chat_request("hi", model=model, headers=auth, **extra))
        if resp.status == 200:
            return 200, None, ""
        error = resp.json()["error"]
        return resp.status, error["code"], error["message"]

    def answers(self, key: str, model: str = "mock-1", n: int = SPREAD) -> set[tuple[int, str | None]]:
        """The distinct (status, code) of ``n`` requests, each on a fresh connection."""
        return {self.chat(key, model)[:2] for _ in range(n)}


StartNode = Callable[..., Node]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    started: list[Node] = []

    def start(store_url: str | None = None, *, workers: int = 2, extra: str = "") -> Node:
        port, admin_port = free_port(), free_port()
        n = len(started)
        config = tmp_path / f"node-{n}.toml"
        # the [admin] table comes last: ``extra`` may add to it, then more tables
        config.write_text(admin_toml(port, admin_port, store_url or "sqlite://gateway.db") + extra)
        proc = ServerProcess(f"hardening-{n}", ["serve", "--workers", str(workers), "--config", str(config)],
                             tmp_path, port).start()
        node = Node(proc, port, admin_port, httpx.Client(timeout=30.0))
        started.append(node)
        proc.wait_ready("/readyz")

        def admin_ready() -> bool:
            try:
                return http_status(admin_port, "/admin/healthz") == 200
            except OSError:
                return False

        wait_for(admin_ready, 30.0, what=f"the admin API on port {admin_port}")
        return node

    try:
        yield start
    finally:
        for node in started:
            node.http.close()
            node.process.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis-hardening")) as server:
        yield server


def _warm(node: Node, key: str) -> None:
    """Use ``key`` on many connections: every worker's table then holds it (with its current secret)."""
    assert node.answers(key) == {(200, None)}


def _rotate_then_revoke(node: Node) -> None:
    applied: list[str | None] = []
    node.ok("POST", "/admin/v1/tenants", {"id": "acme"})
    created = node.ok("POST", "/admin/v1/keys", {"tenant": "acme", "name": "bot"})
    old, key_id = created["api_key"], created["key"]["id"]
    _warm(node, old)
    for _ in range(3):
        resp = node.admin("POST", f"/admin/v1/keys/{key_id}/rotate", {"grace_seconds": 3600})
        assert resp.status_code == 200, resp.text
        new = resp.json()["api_key"]
        # the new secret works at once, on every worker; the old one keeps working for its grace period
        assert node.answers(new) == {(200, None)}
        assert node.answers(old, n=4) == {(200, None)}
        applied.append(resp.headers.get("x-gateway-applied"))
        old = new
    revoked = node.admin("POST", f"/admin/v1/keys/{key_id}/revoke", {"reason": "leaked"})
    assert revoked.status_code == 200
    # both the current and the rotated-out secret are answered as revoked, at once
    assert node.answers(new) == {(401, "api_key_revoked")}
    assert node.answers(old) == {(401, "api_key_revoked")}
    applied.append(revoked.headers.get("x-gateway-applied"))
    # a secret the key never had stays a wrong secret
    wrong = keyformat.format_key(key_id, keyformat.generate_secret())
    assert node.answers(wrong, n=4) == {(401, "invalid_api_key")}
    assert applied == ["node"] * 4  # each answer said so


def test_a_rotated_key_works_at_once_and_a_revoked_one_is_revoked_for_every_secret(
    start_node: StartNode,
) -> None:
    _rotate_then_revoke(start_node())


def test_the_same_with_a_redis_store(start_node: StartNode, redis_server: redisproc.RedisServer) -> None:
    redis_server.flushall()
    _rotate_then_revoke(start_node(redis_server.url))


def test_subscription_steps_are_in_force_when_the_admin_api_answers(start_node: StartNode) -> None:
    node = start_node()
    node.ok("POST", "/admin/v1/tenants", {"id": "acme"})
    key = node.ok("POST", "/admin/v1/keys", {"tenant": "acme"})["api_key"]
    assert node.answers(key, "premium") == {(403, "subscription_required")}
    node.ok("POST", "/admin/v1/subscriptions", {"model": "premium", "reason": "pilot"}, token=ACME)
    assert node.answers(key, "premium") == {(403, "subscription_pending")}
    node.ok("POST", "/admin/v1/subscriptions/acme/premium/approve", {"reason": "signed"})
    assert node.answers(key, "premium") == {(200, None)}
    node.ok("POST", "/admin/v1/subscriptions/acme/premium/revoke", {"reason": "ended"})
    assert node.answers(key, "premium") == {(403, "subscription_rejected")}
    node.ok("POST", "/admin/v1/subscriptions/acme/premium/approve", {"reason": "renewed"})
    assert node.answers(key, "premium") == {(200, None)}
    # a key narrowed by PATCH is narrowed at once
    key_id = keyformat.parse(key)[0]
    node.ok("PATCH", f"/admin/v1/keys/{key_id}", {"allowed_models": ["mock-*"]})
    assert node.answers(key, "premium") == {(403, "model_not_allowed")}
    assert node.answers(key, "mock-1", n=4) == {(200, None)}


def test_the_documented_walk_through_typed_at_machine_speed(start_node: StartNode) -> None:
    """docs/keys-and-tenants.md, "A walk-through", command after command with no pause."""
    node = start_node()
    assert node.cli("tenants", "create", "acme", "--name", "Acme Corp", "--reason", "new customer").strip() == (
        "tenant acme created"
    )
    key = node.cli("keys", "create", "--tenant", "acme", "--name", "support-bot", "-q").strip()
    key_id = keyformat.parse(key)[0]
    assert node.chat(key) == (200, None, "")
    assert node.chat(key, "premium")[1] == "subscription_required"
    node.cli("subscriptions", "request", "premium", "--reason", "pilot for the support bot", token=ACME)
    assert node.answers(key, "premium", n=6) == {(403, "subscription_pending")}
    node.cli("subscriptions", "approve", "acme", "premium", "--reason", "DPA signed")
    assert node.answers(key, "premium", n=6) == {(200, None)}
    new_key = node.cli("keys", "rotate", key_id, "--grace", "1h", "--reason", "quarterly rotation", "-q").strip()
    assert node.answers(new_key, n=6) == {(200, None)}
    assert node.answers(key, n=6) == {(200, None)}
    assert node.cli("keys", "revoke", key_id, "--reason", "laptop lost").strip() == f"key {key_id} revoked"
    status, code, message = node.chat(new_key)
    assert (status, code, message) == (401, "api_key_revoked", f"The API key {key_id} has been revoked.")
    assert node.answers(new_key, n=6) == {(401, "api_key_revoked")}
    assert node.answers(key, n=6) == {(401, "api_key_revoked")}


def test_a_late_worker_is_named_in_the_answer(start_node: StartNode) -> None:
    """A worker that cannot apply a change in time (here: stopped) does not hold the answer beyond
    [admin] apply_timeout, and the answer says that the change is not in force everywhere yet."""
    node = start_node(extra="apply_timeout = 1.0\n")
    node.ok("POST", "/admin/v1/tenants", {"id": "acme"})
    key_id = node.ok("POST", "/admin/v1/keys", {"tenant": "acme"})["key"]["id"]
    workers = _worker_pids(node)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGSTOP)
    try:
        resp = node.admin("PATCH", f"/admin/v1/keys/{key_id}", {"name": "renamed"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-gateway-applied"] == "pending; late=1"
        assert int(resp.headers["x-gateway-change-version"]) > 0
    finally:
        os.kill(workers[0], signal.SIGCONT)
    # once it runs again it catches up with the store: later writes are in force everywhere again
    wait_for(lambda: node.admin("PATCH", f"/admin/v1/keys/{key_id}", {"name": "again"}).headers[
        "x-gateway-applied"] == "node", 30.0, what="the worker to catch up")


def _worker_pids(node: Node) -> list[int]:
    """The supervisor's children that serve the data plane: each holds a listening socket on its port."""
    supervisor = node.process.pid
    assert supervisor is not None
    return [pid for pid in sorted(children_of(supervisor)) if _holds_port(pid, node.port)]


def _holds_port(pid: int, port: int) -> bool:
    """True when ``pid`` has a listening socket on ``port`` (its own SO_REUSEPORT socket)."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                inodes.add(fields[9])
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


# -- input bounds -------------------------------------------------------------------------------------------


def test_admin_input_bounds_answer_400_as_documented(start_node: StartNode) -> None:
    node = start_node(workers=1)
    doc = node.http.get(f"http://{HOST}:{node.admin_port}/admin/openapi.json").json()
    node.ok("POST", "/admin/v1/tenants", {"id": "acme"})
    cases: list[tuple[str, str, Any, str]] = [
        ("POST", "/admin/v1/tenants", {"id": "a" * 65}, "id"),
        ("POST", "/admin/v1/tenants", {"id": "bad id"}, "id"),
        ("POST", "/admin/v1/tenants", {"id": "ok", "name": "x" * 201}, "name"),
        ("POST", "/admin/v1/tenants", {"id": "ok", "name": "two\nlines"}, "name"),
        ("POST", "/admin/v1/tenants", {"id": "ok", "labels": {"bad key": "v"}}, "labels"),
        ("POST", "/admin/v1/tenants", {"id": "ok", "labels": {"k": "v" * 257}}, "labels"),
        ("POST", "/admin/v1/tenants", {"id": "ok", "labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
        ("POST", "/admin/v1/tenants", {"id": "ok", "reason": "r" * 1001}, "reason"),
        ("POST", "/admin/v1/tenants", {"id": "ok", "reason": "escape \x1b[31m"}, "reason"),
        ("PATCH", "/admin/v1/tenants/acme", {"name": "x\ry"}, "name"),
        ("POST", "/admin/v1/keys", {"tenant": "acme", "name": "n" * 201}, "name"),
        ("POST", "/admin/v1/keys", {"tenant": "acme", "name": "tab\there"}, "name"),
        ("POST", "/admin/v1/keys", {"tenant": "acme", "labels": {"team": "a\nb"}}, "labels"),
        ("POST", "/admin/v1/keys", {"tenant": "acme", "allowed_models": ["m" * 257]}, "allowed_models"),
        ("POST", "/admin/v1/keys", {"tenant": "acme", "limit_policy": ""}, "limit_policy"),
        ("POST", "/admin/v1/keys", {"tenant": "acme", "budget": "b" * 129}, "budget"),
        ("POST", "/admin/v1/keys", {"tenant": "acme", "expires_at": time.time() - 60}, "expires_at"),
        ("POST", "/admin/v1/tenants", {"id": "ok", "allowed_regions": [f"r{i}" for i in range(33)]},
         "allowed_regions"),
        ("POST", "/admin/v1/keys", {"tenant": "acme", "allowed_regions": ["e" * 65]}, "allowed_regions"),
        ("POST", "/admin/v1/keys", {"tenant": "acme", "required_tags": ["two\nlines"]}, "required_tags"),
        ("POST", "/admin/v1/subscriptions", {"tenant": "acme", "model": "premium", "reason": "x" * 1001},
         "reason"),
    ]
    for method, path, body, param in cases:
        resp = node.admin(method, path, body)
        assert resp.status_code == 400, (body, resp.text)
        error = resp.json()["error"]
        assert (error["code"], error["type"]) == ("invalid_argument", "invalid_request_error"), error
        assert (error["param"] or "").startswith(param), (body, error)
        assert "regex" not in error["message"], error  # said in words, not as a pattern
        _check_against_document(doc, method, path, resp)
    resp = node.admin("DELETE", "/admin/v1/tenants/acme", params={"reason": "x\ny"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "reason"
    _check_against_document(doc, "DELETE", "/admin/v1/tenants/acme", resp)
    # nothing of the refused writes was stored
    tenants = [t["id"] for t in node.ok("GET", "/admin/v1/tenants")["data"]]
    assert tenants == ["acme"]
    assert node.ok("GET", "/admin/v1/keys")["data"] == []
    # at the bounds: accepted, and shown as given
    created = node.admin("POST", "/admin/v1/keys", {
        "tenant": "acme", "name": "n" * 200, "labels": {"team.name/x": "é" * 256}, "reason": "r" * 1000,
        "expires_at": time.time() + 3600,
    })
    assert created.status_code == 201, created.text
    assert created.json()["key"]["name"] == "n" * 200
    _check_against_document(doc, "POST", "/admin/v1/keys", created)
    # the document states the bounds of the request bodies
    schemas = doc["components"]["schemas"]
    assert schemas["KeyCreate"]["properties"]["name"]["maxLength"] == 200
    assert "pattern" in schemas["KeyCreate"]["properties"]["name"]
    assert schemas["TenantCreate"]["properties"]["labels"]["maxProperties"] == 64


def _check_against_document(doc: dict[str, Any], method: str, path: str, resp: httpx.Response) -> None:
    template = _template(doc, path)
    responses = doc["paths"][template][method.lower()]["responses"]
    documented = responses[str(resp.status_code)]
    schema = documented["content"]["application/json"]["schema"]
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "components": doc["components"],
            **schema}
    jsonschema.Draft202012Validator(root).validate(resp.json())
    for name, header in documented.get("headers", {}).items():
        value = resp.headers.get(name)
        assert value is not None, name
        jsonschema.Draft202012Validator(header["schema"]).validate(
            int(value) if header["schema"]["type"] == "integer" else value
        )


def _template(doc: dict[str, Any], path: str) -> str:
    parts = path.strip("/").split("/")
    for template in doc["paths"]:
        t = template.strip("/").split("/")
        if len(t) == len(parts) and all(a == b or a.startswith("{") for a, b in zip(t, parts, strict=True)):
            return template
    raise AssertionError(f"no documented path for {path}")


# -- budgets ------------------------------------------------------------------------------------------------

BUDGET = """
[tenants.team]
budget = "daily"
[limits.budgets.daily]
usd_per_day = 0.05
action = "block"
[pricing."mock-1"]
input = 100.0
output = 100.0
"""


def test_a_budget_refusal_tells_what_holds_the_budget(start_node: StartNode) -> None:
    """Requests one at a time (nothing in flight) until the budget refuses, then more right away over fresh
    connections (both workers): no refusal may claim requests in flight that do not exist."""
    node = start_node(extra=BUDGET)
    key = node.ok("POST", "/admin/v1/keys", {"tenant": "team"})["api_key"]
    refusals: list[str] = []
    for _ in range(400):
        status, code, message = node.chat(key, max_tokens=50)  # about 0.007 USD at most each
        if status == 429:
            assert code == "insufficient_quota", message
            refusals.append(message)
            if len(refusals) >= 30:
                break
        else:
            assert status == 200, (status, code, message)
    assert len(refusals) >= 30, "the budget never ran out"
    for message in refusals:
        assert "reserved by requests in flight" not in message, message
        assert "in flight on this worker" not in message, message
