"""Usage roll-ups (and the per-key anomaly signal) through real processes: two nodes of two workers each on one Redis store (and one node on
SQLite), traffic from several keys and tenants, then the admin API's roll-ups must sum exactly to what was
sent; the CSV export parses with Python's ``csv`` with the documented columns; a tenant admin sees its own
tenant only; ``gateway usage`` prints the table."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redisproc

from gateway.observe.usage import CSV_COLUMNS

from .helpers import HOST, RecordingUpstream, ServerProcess, free_port, http_status, wait_for
from .test_admin_cli import ACME, OPERATOR, admin_toml

USAGE = """
[usage]
enabled = true
flush_interval = 0.2
"""
DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


class Node:
    def __init__(self, proc: ServerProcess, port: int, admin_port: int) -> None:
        self.process, self.port, self.admin_port = proc, port, admin_port
        self.http = httpx.Client(timeout=30.0)

    def admin(self, path: str, params: dict[str, Any] | None = None, token: str = OPERATOR,
              method: str = "GET", body: Any = None) -> httpx.Response:
        return self.http.request(method, f"http://{HOST}:{self.admin_port}{path}", params=params, json=body,
                                 headers={"authorization": f"Bearer {token}"})


StartNode = Callable[..., Node]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    started: list[Node] = []

    def start(store_url: str, *, workers: int = 2, extra: str = USAGE) -> Node:
        port, admin_port = free_port(), free_port()
        config = tmp_path / f"usage-{len(started)}.toml"
        config.write_text(admin_toml(port, admin_port, store_url) + extra)
        proc = ServerProcess(f"usage-{len(started)}", ["serve", "--workers", str(workers), "--config",
                                                        str(config)], tmp_path, port).start()
        node = Node(proc, port, admin_port)
        started.append(node)
        proc.wait_ready("/readyz")
        wait_for(lambda: http_status(admin_port, "/admin/healthz") == 200, 30.0, what="the admin API")
        return node

    try:
        yield start
    finally:
        for node in started:
            node.http.close()
            node.process.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis-usage")) as server:
        yield server


def _chat(port: int, key: str, model: str) -> int:
    # a new connection each time: the kernel spreads them over the node's workers
    with httpx.Client(timeout=30.0) as http:
        r = http.post(f"http://{HOST}:{port}/v1/chat/completions",
                      headers={"authorization": f"Bearer {key}", "connection": "close"},
                      json={"model": model, "messages": [{"role": "user", "content": "count me"}]})
        return r.status_code


def _traffic(nodes: list[Node]) -> tuple[dict[str, str], Counter[tuple[str, int]], Counter[str]]:
    """Two tenants' keys send over every node: (key id -> tenant, (key id, status) -> count, tenant ->
    requests). Some ask for a model that needs an approval they lack: errors (403)."""
    first = nodes[0]
    owners: dict[str, str] = {}
    keys: dict[str, str] = {}
    for tenant in ("acme", "globex"):
        assert first.admin("/admin/v1/tenants", method="POST", body={"id": tenant}).status_code == 201
        for _ in range(2):
            created = first.admin("/admin/v1/keys", method="POST", body={"tenant": tenant}).json()
            owners[created["key"]["id"]] = tenant
            keys[created["key"]["id"]] = created["api_key"]
    plan = [(kid, "premium" if i % 7 == 0 else "mock-1", nodes[i % len(nodes)].port)
            for i in range(160) for kid in [list(keys)[i % len(keys)]]]
    # every worker of every node knows the keys before the traffic (a key is in force at once anyway)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda p: (p[0], _chat(p[2], keys[p[0]], p[1])), plan))
    sent = Counter(statuses)
    assert {s for _, s in sent} == {200, 403}, sent
    per_tenant: Counter[str] = Counter()
    for (kid, _), n in sent.items():
        per_tenant[owners[kid]] += n
    return owners, sent, per_tenant


def _rows(node: Node, **params: Any) -> list[dict[str, Any]]:
    r = node.admin("/admin/v1/usage", params={"granularity": "minute", "total": "true", **params})
    assert r.status_code == 200, r.text
    return list(r.json()["rows"])


@pytest.mark.parametrize("layout", ["two-nodes-on-redis", "one-node-on-sqlite"])
def test_roll_ups_sum_exactly_to_the_requests_sent(
    start_node: StartNode, redis_server: redisproc.RedisServer, tmp_path: Path, layout: str
) -> None:
    if layout == "two-nodes-on-redis":
        redis_server.flushall()
        nodes = [start_node(redis_server.url) for _ in range(2)]
    else:
        nodes = [start_node(f"sqlite://{tmp_path / 'usage.db'}")]
    owners, sent, per_tenant = _traffic(nodes)
    total = sum(sent.values())
    errors = sum(n for (_, s), n in sent.items() if s >= 400)
    by_key = Counter[str]()
    for (kid, _), n in sent.items():
        by_key[kid] += n

    def settled() -> list[dict[str, Any]] | None:
        rows = _rows(nodes[-1], group_by="key")
        return rows if {r["key"]: r["requests"] for r in rows} == dict(by_key) else None

    # exact: an over-count never settles, an under-count times out
    rows = wait_for(settled, 30.0, what="the roll-ups of every worker in the store")
    assert sum(r["requests"] for r in rows) == total
    assert sum(r["errors"] for r in rows) == errors
    for r in rows:
        assert r["errors"] == sent[(r["key"], 403)]
        assert r["input_tokens"] > 0 and r["output_tokens"] > 0
        assert r["latency_p50_ms"] is not None and r["latency_p50_ms"] <= r["latency_p99_ms"]
    # the same figures at every granularity, and grouped by tenant, model and provider
    for gran in ("hour", "day"):
        again = _rows(nodes[0], granularity=gran, group_by="tenant")
        assert {r["tenant"]: r["requests"] for r in again} == dict(per_tenant)
    by_model = {r["model"]: r["requests"] for r in _rows(nodes[0], group_by="model,provider")}
    assert by_model == {"mock-1": total - errors, "premium": errors}

    # CSV: the documented columns, the same numbers
    r = nodes[0].admin("/admin/v1/usage", params={"granularity": "minute", "total": "true",
                                                   "group_by": "key", "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(r.text))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    parsed = list(reader)
    assert {row["key"]: int(row["requests"]) for row in parsed} == dict(by_key)
    assert all(float(row["cost_usd"]) >= 0 and row["granularity"] == "minute" for row in parsed)
    documented = DOCS.read_text()
    assert all(f"`{c}`" in documented for c in CSV_COLUMNS)

    # a tenant admin sees its own tenant only
    acme = nodes[0].admin("/admin/v1/usage", params={"total": "true", "group_by": "tenant"}, token=ACME)
    assert acme.status_code == 200
    assert {row["tenant"]: row["requests"] for row in acme.json()["rows"]} == {"acme": per_tenant["acme"]}
    other = nodes[0].admin("/admin/v1/usage", params={"tenant": "globex"}, token=ACME)
    assert other.status_code == 403 and other.json()["error"]["code"] == "tenant_forbidden"
    bad = nodes[0].admin("/admin/v1/usage", params={"group_by": "colour"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"

    # gateway usage prints the table
    env = {**os.environ, "GATEWAY_ADMIN_URL": f"http://{HOST}:{nodes[0].admin_port}",
           "GATEWAY_ADMIN_TOKEN": OPERATOR}
    out = subprocess.run([sys.executable, "-m", "gateway", "usage", "--granularity", "day", "--total",
                          "--group-by", "tenant"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["START", "TENANT", "REQUESTS"]
    shown = {line.split()[1]: int(line.split()[2]) for line in lines[1:]}
    assert shown == dict(per_tenant)
    assert set(owners.values()) == set(per_tenant)


def test_a_key_whose_error_rate_jumps_is_flagged(start_node: StartNode, tmp_path: Path) -> None:
    """A key serves successfully for a few windows (its baseline), then fails nearly every call: the
    worker flags it in its log, in /metrics and on the webhook; a steady key sending alongside is not."""
    with RecordingUpstream() as hook:
        node = start_node(f"sqlite://{tmp_path / 'a.db'}", workers=1, extra=f"""
[anomaly]
enabled = true
window = 0.5
warmup = 3
min_requests = 3
webhook = "http://{HOST}:{hook.port}/anomaly"
""")
        assert node.admin("/admin/v1/tenants", method="POST", body={"id": "acme"}).status_code == 201
        keys = [node.admin("/admin/v1/keys", method="POST", body={"tenant": "acme"}).json() for _ in range(2)]
        jumpy, steady = (k["api_key"] for k in keys)
        jumpy_id, steady_id = (k["key"]["id"] for k in keys)
        with httpx.Client(timeout=30.0) as http:
            def chat(key: str, model: str) -> int:
                return http.post(f"http://{HOST}:{node.port}/v1/chat/completions",
                                 headers={"authorization": f"Bearer {key}"},
                                 json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
                                 ).status_code

            # the baseline: successes over more than warmup windows (traffic paced by the clock, not a wait)
            until = time.monotonic() + 5 * 0.5
            while time.monotonic() < until:
                assert chat(jumpy, "mock-1") == 200 and chat(steady, "mock-1") == 200

            def flagged() -> bool:
                for _ in range(10):
                    assert chat(jumpy, "premium") == 403 and chat(steady, "mock-1") == 200
                return any(r.json().get("key") == jumpy_id for r in hook.requests)

            wait_for(flagged, 30.0, what="the anomaly webhook")
        flag = next(r.json() for r in hook.requests if r.json().get("key") == jumpy_id)
        assert flag["event"] == "key_anomaly" and flag["kind"] == "error_rate" and flag["tenant"] == "acme"
        assert flag["value"] > 0.5 and flag["baseline"] < 0.1
        assert all(r.json()["key"] != steady_id for r in hook.requests)

        def counted() -> str | None:
            text = node.http.get(f"http://{HOST}:{node.port}/metrics").text
            wanted = f'gateway_key_anomalies_total{{key="{jumpy_id}",kind="error_rate"}}'
            return text if wanted in text else None

        text = wait_for(counted, 10.0, what="the anomaly counter in /metrics")
        assert f'key="{steady_id}"' not in text
        assert f"anomaly: key {jumpy_id} (tenant acme) error rate" in node.process.logs(records=False)
