"""The Prometheus export through real ``gateway serve`` processes: node-wide sums whichever worker answers.

Each gateway runs two workers with a low request limit in front of the standalone mock. Connections are
new for every request and scrape, so SO_REUSEPORT spreads both over the workers; every scrape must
nevertheless add up to what the whole node answered.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import digest

from .conftest import FRONTENDS, Gateway, StartGateway, require_frontend
from .helpers import (
    RawClient,
    Response,
    assert_openai_error,
    chat_request,
    children_of,
    gateway_toml,
    http_request,
    pid_alive,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

TOKEN = "metrics-scrape-token"
INTERVAL = 0.2
LIMIT = 4
SENT = 12


def metrics_toml(mock_port: int, store: Path, *, metrics: str) -> str:
    return gateway_toml(mock_port) + f"""
[store]
url = "sqlite://{store}"

[limits]
default_policy = "low"
[limits.policies.low]
requests_per_minute = {LIMIT}
lease = 1

[metrics]
interval = {INTERVAL}
{metrics}
"""


def scrape(port: int, *, token: str | None = TOKEN, method: str = "GET", path: str = "/metrics") -> Response:
    headers = [("Connection", "close")]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    with RawClient(port) as c:  # a new connection: the kernel picks the worker
        return c.request(http_request(method, path, headers=headers))


def samples(resp: Response) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert resp.status == 200, resp
    assert resp.header("content-type") == "text/plain; version=0.0.4; charset=utf-8", resp
    out = {}
    for fam in text_string_to_metric_families(resp.body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def get(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


def send_chats(port: int, n: int) -> list[int]:
    out = []
    for i in range(n):
        with RawClient(port) as c:
            out.append(c.request(chat_request(f"metrics {i}", headers=[("Connection", "close")])).status)
    return out


def counted(port: int, sent: int, token: str | None = TOKEN) -> bool:
    """Whether a scrape adds up every one of ``sent`` requests (the workers' snapshots, written every
    INTERVAL, have caught up with them)."""
    values = samples(scrape(port, token=token))
    return get(values, "gateway_limits_admitted_total") + get(
        values, "gateway_limits_refused_total", dimension="requests") == sent


def workers_of(gw: Gateway, n: int) -> set[int]:
    def exactly() -> set[int] | None:
        kids = {p for p in children_of(gw.pid) if pid_alive(p)}
        return kids if len(kids) == n else None

    found: set[int] = wait_for(exactly, 15.0, what=f"{n} live workers")
    return found


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_two_workers_add_up_whichever_answers(
    start_gateway: StartGateway, mock_port: int, tmp_path: Path, frontend: str
) -> None:
    require_frontend(frontend)
    snapshots = tmp_path / "metrics"
    token = f'token = "{digest(TOKEN, b"")}"\ndir = "{snapshots}"'
    gw = start_gateway(metrics_toml(mock_port, tmp_path / "gateway.db", metrics=token), workers=2,
                       frontend=frontend, name=f"metrics-{frontend}")
    statuses = send_chats(gw.port, SENT)
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0, statuses
    # every worker has written its snapshot since: waited for, then every scrape must add up
    wait_for(lambda: counted(gw.port, SENT), 30.0, interval=INTERVAL, what="the snapshots to count every request")

    for _ in range(8):  # spread over the workers
        values = samples(scrape(gw.port))
        admitted = get(values, "gateway_limits_admitted_total")
        refused = get(values, "gateway_limits_refused_total", dimension="requests")
        assert admitted == statuses.count(200), values
        assert refused == statuses.count(429), values
        assert admitted + refused == SENT
        assert get(values, "gateway_limits_refused_total", dimension="tokens") == 0
        # both workers counted; "stale" rather than "live" only says a loaded machine held one writer back
        # past five intervals (a scheduling matter, not the sum this test is about)
        workers = {state: get(values, "gateway_metrics_workers", state=state) for state in ("live", "stale")}
        assert workers["live"] + workers["stale"] == 2, values
        assert get(values, "gateway_metrics_workers", state="exited") == 0, values
        assert get(values, "gateway_limits_degraded_workers") == 0
        assert get(values, "gateway_shared_state_calls_total", client="requests") > 0
    assert len(list(snapshots.glob("snapshot-*.json"))) == 2  # one file per worker, in the configured dir

    # the token: 401 in the OpenAI shape without it or with a wrong one
    err = assert_openai_error(scrape(gw.port, token=None), 401, "missing_token")
    assert err["type"] == "authentication_error"
    assert_openai_error(scrape(gw.port, token="wrong"), 401, "invalid_token")
    # GET only
    resp = scrape(gw.port, method="POST")
    assert_openai_error(resp, 405, "method_not_allowed")
    assert resp.header("allow") == "GET"

    # a reload turns it off on every worker: 404, like any unknown path
    assert gw.config_path is not None
    gw.config_path.write_text(metrics_toml(mock_port, tmp_path / "gateway.db", metrics="enabled = false"))
    gw.process.send_signal(signal.SIGHUP)

    def all_off() -> bool:
        return all(scrape(gw.port).status == 404 for _ in range(6))

    wait_for(all_off, 15.0, interval=0.2, what="/metrics to answer 404 on every worker")
    assert_openai_error(scrape(gw.port), 404, "unknown_url")


def test_a_crashed_worker_keeps_its_counts(start_gateway: StartGateway, mock_port: int, tmp_path: Path) -> None:
    gw = start_gateway(metrics_toml(mock_port, tmp_path / "gateway.db", metrics=""), workers=2)
    before = workers_of(gw, 2)
    statuses = send_chats(gw.port, SENT)
    wait_for(lambda: counted(gw.port, SENT, token=None), 30.0, interval=INTERVAL,
             what="the snapshots to count every request")
    first = samples(scrape(gw.port, token=None))
    assert get(first, "gateway_limits_admitted_total") + get(
        first, "gateway_limits_refused_total", dimension="requests") == SENT

    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not pid_alive(victim), 10.0, what=f"worker {victim} to die")
    wait_for(lambda: victim not in workers_of(gw, 2), 15.0, what="a new worker")

    def after() -> dict[Any, float] | None:
        resp = scrape(gw.port, token=None)
        if resp.status != 200:
            return None
        values = samples(resp)
        return values if get(values, "gateway_metrics_workers", state="live") == 2 else None

    for _ in range(6):
        values = wait_for(after, 15.0, interval=0.1, what="two live workers in a scrape")
        # the dead worker's last snapshot is kept: the sums do not go back, the new worker adds its own
        assert get(values, "gateway_limits_admitted_total") == statuses.count(200), values
        assert get(values, "gateway_limits_refused_total", dimension="requests") == statuses.count(429)
        assert get(values, "gateway_metrics_workers", state="exited") == 1


def test_one_worker_on_the_embedded_default(default_gateway: Gateway) -> None:
    values = samples(scrape(default_gateway.port, token=None))
    assert get(values, "gateway_metrics_workers", state="live") == 1
    assert get(values, "gateway_limits_admitted_total") == 0
