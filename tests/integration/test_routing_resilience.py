"""Routing's time bounds and shared breakers against real processes: ``gateway serve`` in front of
``gateway mock`` upstreams, and an upstream port that accepts no connection.

No assertion is about how fast something happened. A timeout test asserts the answer and, through the
client's own generous timeout, that it came at all: the bounds under test are far shorter than the
provider-level timeouts that would otherwise end the wait.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netblock  # tests/ is on sys.path: the suite's conftest.py lives there, outside any package
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import StartGateway
from .helpers import (
    RawClient,
    Response,
    ServerProcess,
    call_records,
    chat_body,
    free_port,
    http_request,
    provider_toml,
    routing_config,
    sse_events,
    wait_for,
)

provider = provider_toml
config = routing_config


def chat_on(client: RawClient, request_id: str | None = None, **extra: Any) -> Response:
    headers = [("x-request-id", request_id)] if request_id else []
    return client.request(http_request("POST", "/v1/chat/completions", chat_body("hello", "routed", **extra),
                                       headers=headers))


def chat(port: int, **extra: Any) -> Response:
    with RawClient(port, timeout=30.0) as c:
        return chat_on(c, **extra)


def records(gw: Any, *request_ids: str) -> dict[str, dict[str, Any]]:
    """The gateway's call records by request id, once those of ``request_ids`` are written."""
    found = call_records(gw.process, lambda rs: set(request_ids) <= {r["request_id"] for r in rs},
                         what=f"the call records of {', '.join(request_ids)}")
    return {r["request_id"]: r for r in found}


def breaker_open_on(port: int) -> float:
    """How many of the node's workers have ``routed/b``'s breaker open, by ``/metrics`` (on a new
    connection: no request of a routed model is sent)."""
    with RawClient(port) as c:
        resp = c.request(http_request("GET", "/metrics", headers=[("Connection", "close")]))
    assert resp.status == 200, resp
    for fam in text_string_to_metric_families(resp.body.decode()):
        for s in fam.samples:
            if s.name == "gateway_routing_breaker_state" and s.labels == {
                "model": "routed", "deployment": "b", "state": "open"
            }:
                return float(s.value)
    return 0.0


@pytest.fixture
def mock_pair(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two ``gateway mock`` upstreams of this test's own (a test may stop one)."""
    procs: list[ServerProcess] = []
    try:
        for name in ("mock-a", "mock-b"):
            port = free_port()
            proc = ServerProcess(name, ["mock", "--port", str(port), "-q"], tmp_path, port).start()
            proc.wait_ready("/healthz")
            procs.append(proc)
        yield procs
    finally:
        for p in procs:
            p.stop()




# -- per-deployment timeouts ------------------------------------------------------------------------------


def test_a_deployments_connect_timeout_applies(start_gateway: StartGateway, mock_port: int) -> None:
    with netblock.unaccepting_port() as dead:
        gw = start_gateway(config(
            provider("dead", dead, connect_timeout=120.0) + provider("good", mock_port) + """
[models.routed]
[[models.routed.deployments]]
provider = "dead"
upstream_model = "mock-1"
name = "dead"
weight = 10
connect_timeout = 0.5
[[models.routed.deployments]]
provider = "good"
upstream_model = "mock-1"
name = "good"
[models.routed.breaker]
enabled = false

[models.alone]
[[models.alone.deployments]]
provider = "dead"
upstream_model = "mock-1"
connect_timeout = 0.5
[models.alone.retry]
max_attempts = 1
"""))
        resp = chat(gw.port)
        assert resp.status == 200 and resp.header("x-gateway-deployment") == "good"
        with RawClient(gw.port, timeout=30.0) as c:
            alone = c.request(http_request("POST", "/v1/chat/completions", chat_body("hello", "alone")))
        assert alone.status == 504, alone
        err = alone.json()["error"]
        assert err["code"] == "upstream_timeout" and "timed out after 0.5s" in err["message"], err


def test_total_timeout_ends_a_stream_of_the_mock(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(config(
        provider("slow", mock_port, mock="chunks=60 chunk_delay_ms=200", read_timeout=120.0)
        + provider("good", mock_port) + """
[models.routed]
[[models.routed.deployments]]
provider = "slow"
upstream_model = "mock-1"
name = "slow"
weight = 10
total_timeout = 1.0
[[models.routed.deployments]]
provider = "good"
upstream_model = "mock-1"
name = "good"
[models.routed.breaker]
enabled = false
"""))
    rid = f"stream-{uuid.uuid4().hex[:8]}"
    resp = chat(gw.port, request_id=rid, stream=True)
    assert resp.status == 200 and resp.header("x-gateway-deployment") == "slow"
    events = sse_events(resp.body)
    # the error event, then the stream's regular end
    assert len(events) >= 3 and events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
    err = json.loads(events[-2])["error"]
    assert err["code"] == "upstream_timeout" and "total_timeout" in err["message"], err
    rec = records(gw, rid)[rid]
    assert rec["error_code"] == "upstream_timeout" and rec.get("attempts") is None  # no other attempt


def test_total_timeout_before_any_byte_moves_to_the_next_deployment(start_gateway: StartGateway,
                                                                     mock_port: int) -> None:
    gw = start_gateway(config(
        provider("slow", mock_port, mock="latency_ms=5000", read_timeout=120.0) + provider("good", mock_port)
        + """
[models.routed]
[[models.routed.deployments]]
provider = "slow"
upstream_model = "mock-1"
name = "slow"
weight = 10
total_timeout = 0.5
[[models.routed.deployments]]
provider = "good"
upstream_model = "mock-1"
name = "good"
[models.routed.breaker]
enabled = false
"""))
    rid = f"late-{uuid.uuid4().hex[:8]}"
    resp = chat(gw.port, request_id=rid)
    assert resp.status == 200 and resp.header("x-gateway-deployment") == "good"
    assert records(gw, rid)[rid]["attempts"] == 2


# -- breaker state shared by the workers of a node ------------------------------------------------------


def _connection_per_worker(gw: Any, tries: int = 24) -> dict[int, RawClient]:
    """One keep-alive connection pinned to each of the gateway's two workers (a connection stays with the
    worker that accepted it), each found by the worker pid in the call record of a request sent on it."""
    found: dict[int, RawClient] = {}
    spare: list[RawClient] = []
    try:
        for _ in range(tries):
            c = RawClient(gw.port, timeout=30.0)
            rid = f"probe-{uuid.uuid4().hex[:8]}"
            assert chat_on(c, rid).status == 200
            worker = records(gw, rid)[rid]["worker"]
            if worker in found:
                spare.append(c)
            else:
                found[worker] = c
            if len(found) == 2:
                return found
        raise AssertionError(f"{tries} connections all reached one worker")
    finally:
        for c in spare:
            c.close()
        if len(found) < 2:
            for c in found.values():
                c.close()


def test_an_open_breaker_is_shared_by_both_workers(start_gateway: StartGateway,
                                                   mock_pair: list[ServerProcess]) -> None:
    a, b = mock_pair
    gw = start_gateway(config(provider("a", a.port) + provider("b", b.port) + """
[models.routed]
strategy = "weighted"
[[models.routed.deployments]]
provider = "a"
upstream_model = "mock-1"
name = "a"
[[models.routed.deployments]]
provider = "b"
upstream_model = "mock-1"
name = "b"
[models.routed.breaker]
consecutive_failures = 3
open_for = 300.0
"""), workers=2)
    conns = _connection_per_worker(gw)
    try:
        (first, c1), (second, c2) = conns.items()
        # both deployments serve, on both workers
        for c in (c1, c2):
            assert {chat_on(c).header("x-gateway-deployment") for _ in range(4)} == {"a", "b"}
        b.stop()

        # the first worker pays for b's failures until its breaker opens: every answer still comes from a
        sent = [f"w1-{i}-{uuid.uuid4().hex[:6]}" for i in range(12)]
        for rid in sent:
            resp = chat_on(c1, rid)
            assert resp.status == 200 and resp.header("x-gateway-deployment") == "a"
        seen = records(gw, *sent)
        assert {seen[rid]["worker"] for rid in sent} == {first}
        retried = [rid for rid in sent if seen[rid].get("attempts")]
        assert len(retried) == 3, [seen[rid] for rid in sent]  # consecutive_failures, then b is out
        assert all(seen[rid]["attempts"] == 2 for rid in retried)
        assert not [rid for rid in sent[sent.index(retried[-1]) + 1:] if seen[rid].get("attempts")]

        # the second worker has not sent b a single failed request, yet it no longer tries b: the open
        # reaches it through the node's shared breaker state (waited for: both workers report it open)
        wait_for(lambda: breaker_open_on(gw.port) == 2.0, 30.0, interval=0.2,
                 what="both workers to have b's breaker open")
        sent = [f"w2-{i}-{uuid.uuid4().hex[:6]}" for i in range(12)]
        for rid in sent:
            resp = chat_on(c2, rid)
            assert resp.status == 200 and resp.header("x-gateway-deployment") == "a"
        seen = records(gw, *sent)
        assert {seen[rid]["worker"] for rid in sent} == {second}
        assert not [seen[rid] for rid in sent if seen[rid].get("attempts")]  # one attempt each, on a
    finally:
        for c in conns.values():
            c.close()
