"""Routing and resilience against real processes: several ``gateway mock`` upstreams behind one gateway.

Deployments differ by provider: each provider points at its own mock process, and a provider's
``headers`` table can send ``x-mock`` failure directives with every request (see docs/mock.md), which
makes one deployment fail while another serves.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import StartGateway
from .helpers import (
    HOST,
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

N_MOCKS = 3


@pytest.fixture(scope="module")
def mocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    logs = tmp_path_factory.mktemp("routing-mocks")
    procs = []
    try:
        for i in range(N_MOCKS):
            port = free_port()
            proc = ServerProcess(f"mock-{i}", ["mock", "--port", str(port), "-q"], logs, port).start()
            proc.wait_ready("/healthz")
            procs.append(proc)
        yield procs
    finally:
        for p in procs:
            p.stop()


def provider(name: str, port: int, mock: str | None = None, **extra: Any) -> str:
    return provider_toml(name, port, mock, read_timeout=3.0, **extra)


config = routing_config


def chat(port: int, model: str = "routed", headers: list[tuple[str, str]] | None = None, **extra: Any) -> Response:
    with RawClient(port) as c:
        return c.request(http_request("POST", "/v1/chat/completions", chat_body("hello", model, **extra),
                                      headers=headers or []))


def served_by(resp: Response) -> str | None:
    return resp.header("x-gateway-deployment")


def test_weights_are_respected(start_gateway: StartGateway, mocks: list[ServerProcess]) -> None:
    gw = start_gateway(config(
        provider("a", mocks[0].port) + provider("b", mocks[1].port) + """
[models.routed]
strategy = "weighted"
[[models.routed.deployments]]
provider = "a"
upstream_model = "mock-1"
weight = 3
[[models.routed.deployments]]
provider = "b"
upstream_model = "mock-1"
weight = 1
"""))
    counts = Counter(served_by(chat(gw.port)) for _ in range(200))
    # one worker: smooth weighted round robin is exact over every cycle of 4
    assert counts == {"a/mock-1": 150, "b/mock-1": 50}, counts


def test_a_failing_deployment_is_drained_without_client_errors_and_restored(
    start_gateway: StartGateway, mocks: list[ServerProcess], tmp_path: Path
) -> None:
    port_b = free_port()
    gw = start_gateway(config(
        provider("a", mocks[0].port) + provider("b", port_b, connect_timeout=1.0) + """
[models.routed]
strategy = "weighted"
[[models.routed.deployments]]
provider = "a"
upstream_model = "mock-1"
[[models.routed.deployments]]
provider = "b"
upstream_model = "mock-1"
[models.routed.breaker]
consecutive_failures = 3
open_for = 1.0
"""))
    # b is down (nothing listens on its port): every request still succeeds, through a
    statuses = Counter(chat(gw.port).status for _ in range(30))
    assert statuses == {200: 30}
    # after the threshold the breaker keeps b out: no more attempts on it
    resp = chat(gw.port)
    assert resp.status == 200 and served_by(resp) == "a/mock-1"
    records = _records(gw, 31)
    retried = [r for r in records if r.get("attempts")]
    assert 1 <= len(retried) <= 3, retried  # b was tried only until its breaker opened
    # b comes back: after open_for, a half-open probe succeeds and b serves again
    b = ServerProcess("mock-b", ["mock", "--port", str(port_b), "-q"], tmp_path, port_b).start()
    try:
        b.wait_ready("/healthz")
        seen: Counter[str | None] = Counter()

        def b_serves_again() -> bool:
            resp = chat(gw.port)
            assert resp.status == 200
            seen[served_by(resp)] += 1
            return seen["b/mock-1"] >= 3

        wait_for(b_serves_again, 30.0, what="b to serve again after open_for (1.0 s)")
    finally:
        b.stop()


def test_all_deployments_down_gives_503_with_reasons(start_gateway: StartGateway) -> None:
    dead1, dead2 = free_port(), free_port()
    gw = start_gateway(config(
        provider("x", dead1, connect_timeout=1.0) + provider("y", dead2, connect_timeout=1.0) + """
[models.routed]
[[models.routed.deployments]]
provider = "x"
upstream_model = "mock-1"
[[models.routed.deployments]]
provider = "y"
upstream_model = "mock-1"
[models.routed.retry]
max_attempts = 2
base_backoff = 0.01
[models.routed.breaker]
consecutive_failures = 2
open_for = 30.0
"""))
    first = chat(gw.port)
    assert first.status == 502  # both attempts failed to connect
    for _ in range(3):
        resp = chat(gw.port)
        if resp.status == 503:
            break
    body = json.loads(resp.body)
    assert resp.status == 503, body
    assert body["error"]["code"] == "no_deployment_available"
    assert "x" in body["error"]["message"] and "y" in body["error"]["message"]
    assert "circuit" in body["error"]["message"] or "open" in body["error"]["message"]
    assert resp.header("retry-after") is not None


def test_stream_failing_before_its_first_event_moves_on(start_gateway: StartGateway,
                                                        mocks: list[ServerProcess]) -> None:
    gw = start_gateway(config(
        provider("bad", mocks[0].port, mock="cut=0") + provider("good", mocks[1].port) + """
[models.routed]
strategy = "weighted"
[[models.routed.deployments]]
provider = "bad"
upstream_model = "mock-1"
weight = 100
[[models.routed.deployments]]
provider = "good"
upstream_model = "mock-1"
[models.routed.breaker]
enabled = false
"""))
    client = openai.OpenAI(base_url=f"http://{HOST}:{gw.port}/v1", api_key="k", max_retries=0)
    for _ in range(3):
        stream = client.chat.completions.create(
            model="routed", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.strip()
    resp = chat(gw.port, stream=True)
    assert resp.status == 200 and served_by(resp) == "good/mock-1"
    assert sse_events(resp.body)[-1] == b"[DONE]"


def test_a_stream_cut_after_its_first_event_is_not_retried(start_gateway: StartGateway,
                                                           mocks: list[ServerProcess]) -> None:
    gw = start_gateway(config(
        provider("bad", mocks[0].port, mock="cut=2") + provider("good", mocks[1].port) + """
[models.routed]
[[models.routed.deployments]]
provider = "bad"
upstream_model = "mock-1"
weight = 100
[[models.routed.deployments]]
provider = "good"
upstream_model = "mock-1"
"""))
    resp = chat(gw.port, stream=True)
    assert resp.status == 200 and served_by(resp) == "bad/mock-1"
    assert b"upstream_stream_error" in resp.body  # the client sees the cut, then a clean end


def test_fallback_chain_and_retry_after_cooldown(start_gateway: StartGateway, mocks: list[ServerProcess]) -> None:
    gw = start_gateway(config(
        provider("limited", mocks[0].port, mock="status=429 retry_after=30")
        + provider("broken", mocks[1].port, mock="status=500")
        + provider("good", mocks[2].port) + """
[models.primary]
fallbacks = ["secondary", "last-resort"]
[[models.primary.deployments]]
provider = "limited"
upstream_model = "mock-1"
[models.primary.retry]
max_attempts = 1

[models.secondary]
[[models.secondary.deployments]]
provider = "broken"
upstream_model = "mock-1"
[models.secondary.retry]
max_attempts = 1

[models.last-resort]
provider = "good"
upstream_model = "mock-1"
"""))
    resp = chat(gw.port, model="primary")
    assert resp.status == 200, resp.body
    assert resp.header("x-gateway-model") == "last-resort"
    assert json.loads(resp.body)["model"] == "mock-1"
    # the 429 put "limited" in a cooldown of its own Retry-After: it is not tried again for now
    resp = chat(gw.port, model="primary")
    assert resp.status == 200 and resp.header("x-gateway-model") == "last-resort"
    records = [r for r in _records(gw, 2) if r.get("model") == "primary"]
    assert records[0]["attempts"] == 3
    assert records[-1]["attempts"] == 2  # "limited" skipped while cooling down


def test_split_and_consistent_hash(start_gateway: StartGateway, mocks: list[ServerProcess]) -> None:
    gw = start_gateway(config(
        provider("a", mocks[0].port) + provider("b", mocks[1].port) + provider("c", mocks[2].port) + """
[models.canary]
strategy = "split"
split = { stable = 90, canary = 10 }
[[models.canary.deployments]]
provider = "a"
upstream_model = "mock-1"
name = "stable"
[[models.canary.deployments]]
provider = "b"
upstream_model = "mock-1"
name = "canary"

[models.sticky]
strategy = "consistent_hash"
hash_on = "header:x-session-id"
[[models.sticky.deployments]]
provider = "a"
upstream_model = "mock-1"
[[models.sticky.deployments]]
provider = "b"
upstream_model = "mock-1"
[[models.sticky.deployments]]
provider = "c"
upstream_model = "mock-1"
"""))
    counts = Counter(served_by(chat(gw.port, model="canary")) for _ in range(300))
    assert 0.03 <= counts["canary"] / 300 <= 0.2, counts
    assert counts["stable"] + counts["canary"] == 300
    for session in ("s-1", "s-2", "s-3", "s-4"):
        seen = {served_by(chat(gw.port, model="sticky", headers=[("x-session-id", session)])) for _ in range(5)}
        assert len(seen) == 1, (session, seen)
    spread = {served_by(chat(gw.port, model="sticky", headers=[("x-session-id", f"u{i}")])) for i in range(40)}
    assert len(spread) == 3


def _records(gw: Any, chats: int) -> list[dict[str, Any]]:
    """The call records of the chat requests sent so far, once all ``chats`` of them are written."""
    def chat_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r.get("path") == "/v1/chat/completions"]

    found = call_records(gw.process, lambda rs: len(chat_records(rs)) >= chats, what=f"{chats} call records")
    return chat_records(found)


def test_health_checks_eject_and_restore_a_deployment(start_gateway: StartGateway, mocks: list[ServerProcess],
                                                      tmp_path: Path) -> None:
    port_b = free_port()
    gw = start_gateway(config(
        provider("a", mocks[0].port) + provider("b", port_b, connect_timeout=0.5) + """
[models.routed]
[[models.routed.deployments]]
provider = "a"
upstream_model = "mock-1"
[[models.routed.deployments]]
provider = "b"
upstream_model = "mock-1"
[models.routed.health]
path = "/models"
interval = 0.3
timeout = 0.3
unhealthy_threshold = 1
healthy_threshold = 1
"""))
    # b (nothing listens) is ejected by its probes before any request reaches it
    ejected = "deployment routed/b/mock-1 failed 1 health probes in a row: ejected"
    wait_for(lambda: ejected in gw.process.logs(10**7, records=False), 30.0, what="the probes to eject b")
    for _ in range(10):
        resp = chat(gw.port)
        assert resp.status == 200 and served_by(resp) == "a/mock-1"
    assert not [r for r in _records(gw, 10) if r.get("attempts")]  # no request paid for a failed attempt
    b = ServerProcess("mock-b-health", ["mock", "--port", str(port_b), "-q"], tmp_path, port_b).start()
    try:
        b.wait_ready("/healthz")
        wait_for(lambda: served_by(chat(gw.port)) == "b/mock-1", 30.0,
                 what="b to be restored after its health probes passed")
    finally:
        b.stop()


def test_stream_failing_before_its_first_event_succeeds_on_the_fallback(
    start_gateway: StartGateway, mocks: list[ServerProcess]
) -> None:
    gw = start_gateway(config(
        provider("bad", mocks[0].port, mock="cut=0") + provider("good", mocks[1].port) + """
[models.routed]
fallbacks = ["backup"]
[[models.routed.deployments]]
provider = "bad"
upstream_model = "mock-1"
[models.routed.retry]
max_attempts = 1

[models.backup]
provider = "good"
upstream_model = "mock-1"
"""))
    resp = chat(gw.port, stream=True)
    assert resp.status == 200 and resp.header("x-gateway-model") == "backup"
    events = sse_events(resp.body)
    assert events[-1] == b"[DONE]" and len(events) > 2


def test_retries_stop_at_the_deadline(start_gateway: StartGateway, mocks: list[ServerProcess]) -> None:
    gw = start_gateway(config(
        provider("flaky", mocks[0].port, mock="status=503") + """
[models.routed]
deadline = 1.0
[[models.routed.deployments]]
provider = "flaky"
upstream_model = "mock-1"
[models.routed.retry]
max_attempts = 50
base_backoff = 0.2
max_backoff = 0.4
[models.routed.breaker]
enabled = false
"""))
    resp = chat(gw.port)
    assert resp.status == 503  # the upstream's own last answer
    # the effect of the deadline: the request gave up after a few of its 50 attempts (no time measured)
    attempts = [r["attempts"] for r in _records(gw, 1) if r.get("model") == "routed"]
    assert attempts and 2 <= attempts[0] < 50, attempts


def test_consistent_hash_keys_stay_put_when_an_unrelated_deployment_is_removed(
    start_gateway: StartGateway, mocks: list[ServerProcess]
) -> None:
    import signal

    def text(names: list[str]) -> str:
        out = "".join(provider(n, mocks[i % len(mocks)].port) for i, n in enumerate(names))
        out += '\n[models.sticky]\nstrategy = "consistent_hash"\nhash_on = "header:x-session-id"\n'
        for n in names:
            out += f'[[models.sticky.deployments]]\nprovider = "{n}"\nupstream_model = "mock-1"\nname = "{n}"\n'
        return config(out)

    names = ["d0", "d1", "d2", "d3", "d4"]
    gw = start_gateway(text(names))
    sessions = [f"session-{i}" for i in range(200)]

    def mapping() -> dict[str, str | None]:
        return {s: served_by(chat(gw.port, model="sticky", headers=[("x-session-id", s)])) for s in sessions}

    before = mapping()
    assert set(before.values()) == set(names)
    assert gw.config_path is not None
    gw.config_path.write_text(text([n for n in names if n != "d2"]))
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "worker 0: config reloaded" in gw.process.logs(10**7, records=False), 30.0,
             what="the worker to reload")
    after = mapping()
    assert "d2" not in after.values()
    moved = [s for s in sessions if before[s] != after[s]]
    assert all(before[s] == "d2" for s in moved)  # only the removed deployment's keys moved
    assert len(moved) / len(sessions) <= 1 / len(names) + 0.05, len(moved)
