"""An upstream that refuses the gateway's credentials (401, 403) is the deployment's failure, not the client's.

Real processes on loopback: a ``gateway mock --api-key`` that answers the provider's own 401 to a wrong
key (OpenAI's "Incorrect API key provided" body, and Anthropic's ``authentication_error`` from the
Anthropic dialect), the session's plain mock (a working deployment; ``x-mock: status=403`` for a 403),
and a ``gateway serve`` in front. Checked: a routed model fails over from the refused deployment to the
next one (the client gets the answer, never the 401); the breaker counts the refusals and opens, so
later requests skip the deployment; with nothing else to try the client gets a 502
``upstream_authentication`` / ``upstream_permission`` that says the gateway's credential is at fault and
does not carry the provider's message; the log says it is a credentials problem.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Gateway, _launch, _stop
from .helpers import (
    HOST,
    RawClient,
    ServerProcess,
    assert_openai_error,
    call_records,
    chat_body,
    free_port,
    http_request,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

RIGHT_KEY = "sk-right-0123456789"
WRONG_KEY = "sk-wrong-9876543210"


def _config(keyed_port: int, anth_port: int, mock_port: int, key_file: Path) -> str:
    keyed = f"http://{HOST}:{keyed_port}/v1"
    return f"""
[server]
drain_timeout = 2.0
[log]
level = "info"
call_records = true

[providers.revoked]
type = "openai"
base_url = "{keyed}"
api_key = "file:{key_file}"

[providers.probed]
type = "openai"
base_url = "{keyed}"
api_key = "file:{key_file}"

[providers.forbidden]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
[providers.forbidden.headers]
x-mock = "status=403"

[providers.claude-revoked]
type = "anthropic"
base_url = "http://{HOST}:{anth_port}/v1"
api_key = "file:{key_file}"

[providers.good]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
api_key = "env:MOCK_KEY"

[models.routed]
strategy = "cost"
deployments = [
  {{ provider = "revoked", upstream_model = "mock-1", name = "revoked", cost = 1.0 }},
  {{ provider = "good", upstream_model = "mock-1", name = "good", cost = 2.0 }},
]
breaker = {{ consecutive_failures = 2, open_for = 600.0 }}

[models.probed]
deployments = [{{ provider = "probed", upstream_model = "mock-1", name = "probed" }}]
health = {{ path = "/models", interval = 0.5, timeout = 0.5, unhealthy_threshold = 2 }}

[models.routed-403]
strategy = "cost"
deployments = [
  {{ provider = "forbidden", upstream_model = "mock-1", name = "forbidden", cost = 1.0 }},
  {{ provider = "good", upstream_model = "mock-1", name = "good", cost = 2.0 }},
]

[models.only-revoked]
deployments = [{{ provider = "revoked", upstream_model = "mock-1", name = "revoked" }}]

[models.direct-revoked]
provider = "revoked"
upstream_model = "mock-1"

[models.direct-forbidden]
provider = "forbidden"
upstream_model = "mock-1"

[models.claude-revoked]
provider = "claude-revoked"
upstream_model = "claude-mock"
fallbacks = ["backup"]

[models.claude-revoked-alone]
provider = "claude-revoked"
upstream_model = "claude-mock"

[models.backup]
provider = "good"
upstream_model = "mock-1"
"""


def _mock(name: str, dialect: str, logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    proc = ServerProcess(name, ["mock", "--dialect", dialect, "--api-key", RIGHT_KEY, "--port", str(port),
                                "-q"], logs_dir, port).start()
    failed = request.session.testsfailed
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        _stop(proc, request, failed)


@pytest.fixture(scope="module")
def keyed_mock(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    yield from _mock("mock-keyed", "openai", logs_dir, request)


@pytest.fixture(scope="module")
def keyed_anthropic(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    yield from _mock("mock-keyed-anthropic", "anthropic", logs_dir, request)


@pytest.fixture(scope="module")
def gw(keyed_mock: int, keyed_anthropic: int, mock_port: int, logs_dir: Path,
       request: pytest.FixtureRequest) -> Iterator[Gateway]:
    key_file = logs_dir / "revoked.key"
    key_file.write_text(WRONG_KEY + "\n")
    config = _config(keyed_mock, keyed_anthropic, mock_port, key_file)
    gateway = _launch("gateway-credentials", logs_dir, config_text=config, workers=1, frontend="native")
    failed = request.session.testsfailed
    try:
        yield gateway
    finally:
        _stop(gateway.process, request, failed)


def _chat(gw: Gateway, model: str, request_id: str, stream: bool = False):  # type: ignore[no-untyped-def]
    extra = {"stream": True} if stream else {}
    with RawClient(gw.port) as c:
        return c.request(http_request("POST", "/v1/chat/completions", chat_body(model=model, **extra),
                                      headers=[("X-Request-Id", request_id)]))


def _assert_refusal(resp, code: str) -> None:  # type: ignore[no-untyped-def]
    """A 502 that blames the gateway's credential, without the provider's own words about it."""
    err = assert_openai_error(resp, 502, code)
    assert err["type"] == "upstream_error"
    assert "credentials" in err["message"]
    body = resp.body.decode()
    for leak in ("Incorrect API key", "invalid x-api-key", WRONG_KEY, "sk-wrong", "invalid_api_key"):
        assert leak not in body, body


def test_routed_model_fails_over_from_a_revoked_key(gw: Gateway) -> None:
    resp = _chat(gw, "routed", "cred-1")
    assert resp.status == 200, resp
    assert resp.header("x-gateway-deployment") == "good"
    assert resp.json()["choices"][0]["message"]["content"]
    (rec,) = call_records(gw.process, lambda rs: any(r.get("request_id") == "cred-1" for r in rs))[-1:]
    assert rec["attempts"] == 2 and rec["deployment"] == "good" and rec["status"] == 200
    # a stream fails over the same way (the refusal came before any byte)
    resp = _chat(gw, "routed", "cred-2", stream=True)
    assert resp.status == 200 and resp.header("x-gateway-deployment") == "good"
    assert b"data: [DONE]" in resp.body and b"error" not in resp.body


def test_refusals_open_the_breaker(gw: Gateway) -> None:
    # consecutive_failures = 2 (the first test's two requests may already have opened it): after two
    # refusals in a row the revoked deployment is skipped, so a request needs one attempt only
    for i in range(3):
        assert _chat(gw, "routed", f"cred-open-{i}").status == 200

    probes = iter(range(1000))

    def skipped() -> bool:
        rid = f"cred-open-probe-{next(probes)}"
        resp = _chat(gw, "routed", rid)
        assert resp.status == 200
        return resp.header("x-gateway-deployment") == "good" and "attempts" not in _record(gw, rid)

    wait_for(skipped, 20.0, what="the breaker of the revoked deployment to open")

    def counted() -> list[str] | None:
        with RawClient(gw.port) as c:
            metrics = c.request(http_request("GET", "/metrics")).body.decode()
        lines = [ln for ln in metrics.splitlines() if 'model="routed"' in ln and 'deployment="revoked"' in ln]
        refused = [ln for ln in lines
                   if ln.startswith("gateway_routing_attempts_total") and 'outcome="credentials"' in ln]
        opened = [ln for ln in lines if ln.startswith("gateway_routing_breaker_opens_total")]
        if refused and float(refused[0].rsplit(" ", 1)[1]) >= 2 and opened \
                and float(opened[0].rsplit(" ", 1)[1]) >= 1:
            return lines
        return None

    wait_for(counted, 20.0, what="the refusals and the breaker's opening in /metrics")


def _record(gw: Gateway, request_id: str) -> dict[str, object]:
    recs = call_records(gw.process, lambda rs: any(r.get("request_id") == request_id for r in rs))
    return [r for r in recs if r.get("request_id") == request_id][-1]


def test_a_403_fails_over_too(gw: Gateway) -> None:
    resp = _chat(gw, "routed-403", "cred-403")
    assert resp.status == 200 and resp.header("x-gateway-deployment") == "good"
    assert _record(gw, "cred-403")["attempts"] == 2


def test_nothing_else_to_try_is_a_502_not_the_providers_401(gw: Gateway) -> None:
    _assert_refusal(_chat(gw, "only-revoked", "cred-only"), "upstream_authentication")
    _assert_refusal(_chat(gw, "direct-revoked", "cred-direct"), "upstream_authentication")
    _assert_refusal(_chat(gw, "direct-revoked", "cred-direct-s", stream=True), "upstream_authentication")
    _assert_refusal(_chat(gw, "direct-forbidden", "cred-direct-403"), "upstream_permission")
    assert _record(gw, "cred-direct")["status"] == 502


def test_anthropic_401_falls_back_and_is_a_502_alone(gw: Gateway) -> None:
    resp = _chat(gw, "claude-revoked", "cred-anth")
    assert resp.status == 200, resp
    assert resp.header("x-gateway-model") == "backup"
    _assert_refusal(_chat(gw, "claude-revoked-alone", "cred-anth-alone"), "upstream_authentication")


def test_the_log_names_a_credentials_problem(gw: Gateway) -> None:
    _chat(gw, "direct-revoked", "cred-log")
    logs = wait_for(lambda: (text := gw.process.logs(200000, records=False))
                    and "upstream credentials problem: provider revoked answered 401" in text and text,
                    10.0, what="the credentials warning")
    # the operator sees the provider's own message (the client never does)
    line = next(ln for ln in logs.splitlines() if "provider revoked answered 401" in ln)
    assert "Incorrect API key" in line


def test_a_health_probe_refused_names_the_credentials_problem(gw: Gateway) -> None:
    """A deployment no request reaches: its health probe gets the 401, which is logged as a credentials
    problem, and the probes' failures eject it."""
    wait_for(lambda: "upstream credentials problem: provider probed answered 401"
             in gw.process.logs(200000, records=False), 20.0, what="the probe's credentials warning")
    wait_for(lambda: "deployment probed/probed failed" in gw.process.logs(200000, records=False), 20.0,
             what="the ejection")
