"""The admin API in a real ``gateway serve`` (its own child process and port), driven by the real CLI.

Each test starts a gateway with ``[admin]`` enabled on free loopback ports and a SQLite store in its
tmp_path, then runs ``python -m gateway keys|tenants|subscriptions|audit ...`` as subprocesses, as an
operator would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import keyformat

from .helpers import (
    HOST,
    RawClient,
    ServerProcess,
    chat_request,
    children_of,
    free_port,
    http_status,
    pid_alive,
    wait_for,
)

OPERATOR = "integration-operator-token"
ACME = "integration-acme-admin-token"


@dataclass
class AdminGateway:
    process: ServerProcess
    port: int
    admin_port: int
    config_path: Path

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def cli(self, *args: str, token: str | None = OPERATOR, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GATEWAY_ADMIN_URL": self.admin_url}
        env.pop("GATEWAY_ADMIN_TOKEN", None)
        if token is not None:
            env["GATEWAY_ADMIN_TOKEN"] = token
        result = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                                env=env, timeout=60, stdin=subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, f"gateway {' '.join(args)}: {result.returncode}\n{result.stderr}"
        return result

    def cli_json(self, *args: str, token: str | None = OPERATOR) -> Any:
        return json.loads(self.cli(*args, "--json", token=token).stdout)


def admin_toml(port: int, admin_port: int, store_url: str) -> str:
    return f"""
[server]
port = {port}
drain_timeout = 3.0

[log]
call_records = false

[auth]
required = true

[providers.mock]
type = "mock"

[models.mock-1]
provider = "mock"

[models.premium]
provider = "mock"
approval = "required"

[store]
url = "{store_url}"

[admin]
port = {admin_port}
operator_token = "{keyformat.digest(OPERATOR, b"")}"
tenant_tokens = {{ acme = "{keyformat.digest(ACME, b"")}" }}
"""


StartAdmin = Callable[..., AdminGateway]


@pytest.fixture
def start_admin_gateway(tmp_path: Path) -> Iterator[StartAdmin]:
    started: list[AdminGateway] = []

    def start(store_url: str | None = None, *, wait_store: bool = True) -> AdminGateway:
        port, admin_port = free_port(), free_port()
        config_path = tmp_path / f"admin-{len(started)}.toml"
        config_path.write_text(admin_toml(port, admin_port, store_url or "sqlite://gateway.db"))
        proc = ServerProcess(f"gateway-admin-{len(started)}",
                             ["serve", "--workers", "1", "--config", str(config_path)], tmp_path, port).start()
        gw = AdminGateway(proc, port, admin_port, config_path)
        started.append(gw)
        proc.wait_ready("/readyz")
        expect = 200 if wait_store else 503

        def admin_answers() -> bool:
            try:
                return http_status(admin_port, "/admin/healthz") == expect
            except OSError:
                return False

        wait_for(admin_answers, 30.0, what=f"the admin API on port {admin_port}")
        return gw

    try:
        yield start
    finally:
        for gw in started:
            gw.process.stop()


def test_tenants_and_keys_through_the_cli(start_admin_gateway: StartAdmin, tmp_path: Path) -> None:
    gw = start_admin_gateway()
    assert (tmp_path / "gateway.db").exists()  # relative to the config file's directory
    gw.cli("tenants", "create", "acme", "--name", "Acme Corp", "--reason", "onboarding")
    listed = gw.cli("tenants", "list").stdout.splitlines()
    assert listed[0].split()[:3] == ["ID", "NAME", "SOURCE"]
    assert listed[1].split()[0] == "acme" and "Acme Corp" in listed[1]

    full = gw.cli("keys", "create", "--tenant", "acme", "--name", "ci", "--model", "mock-*", "-q").stdout.strip()
    key_id, _ = keyformat.parse(full)
    out = gw.cli("keys", "list").stdout
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["ID", "NAME", "TENANT", "STATUS", "SOURCE"]
    assert [r.split()[:5] for r in rows] == [[key_id, "ci", "acme", "active", "api"]]
    assert full not in out
    shown = gw.cli_json("keys", "show", key_id)
    assert shown["status"] == "active" and shown["allowed_models"] == ["mock-*"]

    # a tenant admin creates its own keys and sees only its tenant
    own = gw.cli_json("keys", "create", "--name", "own", token=ACME)
    assert own["key"]["tenant"] == "acme" and own["api_key"].startswith(f"gw-{own['key']['id']}-")
    assert {k["id"] for k in gw.cli_json("keys", "list", token=ACME)} == {key_id, own["key"]["id"]}

    updated = gw.cli_json("keys", "update", key_id, "--name", "ci-2", "--expires-in", "1d", "--budget", "b1",
                          "--label", "team=platform")
    assert (updated["name"], updated["budget"], updated["labels"]) == ("ci-2", "b1", {"team": "platform"})
    assert updated["expires_at"] is not None
    cleared = gw.cli_json("keys", "update", key_id, "--no-expiry", "--budget", "")
    assert (cleared["expires_at"], cleared["budget"]) == (None, None)
    rotated = gw.cli("keys", "rotate", key_id, "--grace", "0", "-q").stdout.strip()
    assert keyformat.parse(rotated)[0] == key_id and rotated != full
    assert gw.cli_json("tenants", "update", "acme", "--model", "mock-*")["allowed_models"] == ["mock-*"]
    assert ["allowed_models", "mock-*"] in [ln.split() for ln in gw.cli("tenants", "show", "acme").stdout.splitlines()]

    result = gw.cli("keys", "revoke", key_id, "--reason", "rotated out")
    assert result.stdout.strip() == f"key {key_id} revoked"
    assert gw.cli_json("keys", "list", "--state", "revoked")[0]["id"] == key_id

    gw.cli("keys", "revoke", own["key"]["id"])
    gw.cli("tenants", "create", "short-lived")
    assert gw.cli("tenants", "delete", "short-lived", "--reason", "test").stdout.strip() == "tenant short-lived deleted"

    # failures: one line on stderr, non-zero exit
    missing = gw.cli("keys", "show", "zzzzzzzzzzzz", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "gateway: 404 not_found: no key zzzzzzzzzzzz"
    denied = gw.cli("tenants", "create", "other", token=ACME, check=False)
    assert (denied.returncode, denied.stderr.strip()) == (1, "gateway: 403 operator_only: only the operator may do this")
    bad = gw.cli("keys", "list", token="not-a-token", check=False)
    assert bad.returncode == 1 and "401 invalid_token" in bad.stderr
    no_token = gw.cli("keys", "list", token=None, check=False)
    assert no_token.returncode == 2 and "GATEWAY_ADMIN_TOKEN" in no_token.stderr
    unreachable = gw.cli("keys", "list", "--admin-url", f"http://{HOST}:{free_port()}", check=False)
    assert unreachable.returncode == 1 and "cannot reach the admin API" in unreachable.stderr

    # the key's secret is in no log line of any process
    logs = gw.process.logs(200_000)
    for secret_of in (full, own["api_key"], rotated):
        assert secret_of.split("-")[2] not in logs
    assert f"operator POST /admin/v1/keys/{key_id}/revoke -> 200" in logs


def _chat(gw: AdminGateway, key: str, model: str = "premium") -> tuple[int, str | None]:
    """Status and error code of one chat request with ``key`` on the data plane."""
    with RawClient(gw.port) as c:
        resp = c.request(chat_request("hi", model=model, headers=[("Authorization", f"Bearer {key}")]))
    return resp.status, (resp.json().get("error") or {}).get("code") if resp.status != 200 else None


def test_approval_flow_end_to_end(start_admin_gateway: StartAdmin) -> None:
    gw = start_admin_gateway()
    gw.cli("tenants", "create", "acme")
    key = gw.cli("keys", "create", "--tenant", "acme", "-q").stdout.strip()
    assert _chat(gw, key, "mock-1") == (200, None)  # a key made with the CLI works at once
    assert _chat(gw, key) == (403, "subscription_required")
    out = gw.cli("subscriptions", "request", "premium", "--reason", "launching a product", token=ACME).stdout
    assert out.strip() == "subscription acme/premium: pending"
    pending = gw.cli_json("subscriptions", "list", "--state", "pending")
    assert [(s["tenant"], s["model"], s["state"]) for s in pending] == [("acme", "premium", "pending")]
    table = gw.cli("subscriptions", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["TENANT", "MODEL", "STATE"] and table[1].split()[:3] == ["acme", "premium",
                                                                                            "pending"]

    refused = gw.cli("subscriptions", "approve", "acme", "premium", token=ACME, check=False)
    assert refused.returncode == 1 and "403 operator_only" in refused.stderr
    assert wait_for(lambda: _chat(gw, key) == (403, "subscription_pending"), 5.0, what="pending on the data plane")
    out = gw.cli("subscriptions", "approve", "acme", "premium", "--reason", "contract signed").stdout
    assert out.strip() == "subscription acme/premium: approved"
    wait_for(lambda: _chat(gw, key) == (200, None), 5.0, what="the approval on the data plane")
    assert gw.cli_json("subscriptions", "list", token=ACME)[0]["state"] == "approved"

    # reject and revoke need a reason
    assert gw.cli("subscriptions", "revoke", "acme", "premium", check=False).returncode == 2

    audit = gw.cli_json("audit", "list", "--target", "acme/premium", "--oldest-first")
    assert [(e["action"], e["actor"], e["reason"]) for e in audit] == [
        ("subscription.request", "tenant:acme", "launching a product"),
        ("subscription.approve", "operator", "contract signed"),
    ]
    assert all(isinstance(e["at"], float) for e in audit)
    text = gw.cli("audit", "list").stdout.splitlines()
    assert text[0].split() == ["SEQ", "WHEN", "ACTOR", "ACTION", "TARGET", "REASON"]
    newest = text[1].split()
    assert newest[3:] == ["operator", "subscription.approve", "acme/premium", "contract", "signed"]
    gw.cli("keys", "revoke", keyformat.parse(key)[0], "--reason", "done")
    wait_for(lambda: _chat(gw, key, "mock-1") == (401, "api_key_revoked"), 5.0, what="the revocation")


def test_admin_process_is_respawned_and_reloaded(start_admin_gateway: StartAdmin) -> None:
    gw = start_admin_gateway()
    gw.cli("tenants", "create", "acme")
    admin_pid = wait_for(lambda: _listener_pid(gw.process.pid or 0, gw.admin_port), 10.0, what="admin pid")
    os.kill(admin_pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(admin_pid), 10.0)
    wait_for(lambda: gw.cli("tenants", "show", "acme", check=False).returncode == 0, 30.0,
             interval=0.3, what="the respawned admin API")
    new_pid = _listener_pid(gw.process.pid or 0, gw.admin_port)
    assert new_pid not in (None, admin_pid)

    # SIGHUP: a new tenant admin token works without a restart
    token = "integration-globex-admin-token"
    text = gw.config_path.read_text().replace(
        "tenant_tokens = {", f'tenant_tokens = {{ globex = "{keyformat.digest(token, b"")}", '
    )
    gw.config_path.write_text(text)
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.cli("keys", "list", token=token, check=False).returncode == 0, 15.0, interval=0.3,
             what="the reloaded token")


def test_data_plane_serves_when_the_store_is_unreachable(start_admin_gateway: StartAdmin) -> None:
    gw = start_admin_gateway(f"redis://{HOST}:{free_port()}/0", wait_store=False)
    assert http_status(gw.port, "/readyz") == 200
    result = gw.cli("keys", "list", check=False)
    assert result.returncode == 1 and "503 store_unavailable" in result.stderr
    assert "the store could not be opened" in gw.process.logs()


def _listener_pid(supervisor: int, port: int) -> int | None:
    """The child of ``supervisor`` that holds the socket listening on ``port`` (the admin process)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] == f"{port:04X}" and fields[3] == "0A":
                inodes.add(f"socket:[{fields[9]}]")
    for child in children_of(supervisor):
        try:
            fds = os.listdir(f"/proc/{child}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{child}/fd/{fd}") in inodes:
                    return child
            except OSError:
                continue
    return None
