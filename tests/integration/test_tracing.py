"""Traces through real processes: a ``gateway serve`` with ``[tracing]`` in front of a recording upstream,
exporting to a local OTLP/HTTP receiver on loopback. The client's ``traceparent`` is the parent of the
gateway's request span; each upstream attempt gets a span of its own whose id is the parent the upstream
receives; an unsampled client trace exports nothing."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import StartGateway
from .helpers import HOST, RecordingUpstream, free_port, gateway_toml, wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint in a thread of the test: every span it was sent."""

    def __init__(self) -> None:
        spans: list[dict[str, Any]] = []
        self.spans = spans
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                paths.append(self.path)
                message = json.loads(body)
                for rs in message["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        spans.extend(ss["spans"])
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def of(self, trace_id: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["traceId"] == trace_id]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    try:
        yield r
    finally:
        r.close()


def _chat(port: int, model: str, traceparent: str | None = None) -> httpx.Response:
    headers = {"traceparent": traceparent} if traceparent else {}
    return httpx.post(f"http://{HOST}:{port}/v1/chat/completions", headers=headers, timeout=30.0,
                      json={"model": model, "messages": [{"role": "user", "content": "trace me"}]})


def _tracing(port: int) -> str:
    return f"""
[tracing]
enabled = true
url = "http://{HOST}:{port}/v1/traces"
sample_ratio = 1.0
"""


def test_spans_reach_the_collector_with_parents_intact_and_the_upstream_gets_the_attempt_span(
    start_gateway: StartGateway, receiver: OtlpReceiver
) -> None:
    with RecordingUpstream() as upstream:
        dead = free_port()
        routed = f"""
[providers.dead2]
type = "openai"
base_url = "http://{HOST}:{dead}/v1"
connect_timeout = 1.0

[models.routed]
fallbacks = ["chat-model"]
[[models.routed.deployments]]
provider = "dead2"
upstream_model = "mock-1"
[models.routed.retry]
max_attempts = 1
"""
        gw = start_gateway(gateway_toml(upstream.port, extra_models=routed) + _tracing(receiver.port))

        # 1. a client's sampled trace: the gateway's span is its child, the upstream's parent the attempt
        r = _chat(gw.port, "chat-model", f"00-{TRACE}-{PARENT}-01")
        assert r.status_code == 200, r.text
        sent = upstream.requests[-1].headers["traceparent"]
        version, trace_id, attempt_id, flags = sent.split("-")
        assert (version, trace_id, flags) == ("00", TRACE, "01") and attempt_id != PARENT
        spans = wait_for(lambda: (s := receiver.of(TRACE)) and len(s) >= 3 and s, 30.0, what="the spans")
        by_id = {s["spanId"]: s for s in spans}
        root = next(s for s in spans if s["kind"] == 2)
        assert root["parentSpanId"] == PARENT and root["name"] == "POST /v1/chat/completions"
        attrs = {a["key"]: next(iter(a["value"].values())) for a in root["attributes"]}
        assert attrs["http.response.status_code"] == "200" and attrs["gen_ai.request.model"] == "chat-model"
        assert attrs["gen_ai.operation.name"] == "chat"
        attempt = by_id[attempt_id]
        assert attempt["kind"] == 3 and attempt["parentSpanId"] == root["spanId"]
        phases = next(s for s in spans if s["name"] == "gateway.phases")
        assert phases["parentSpanId"] == root["spanId"]
        assert int(root["startTimeUnixNano"]) <= int(attempt["startTimeUnixNano"])
        assert int(attempt["endTimeUnixNano"]) <= int(root["endTimeUnixNano"])
        assert set(receiver.paths) == {"/v1/traces"}

        # 2. a routed request failing over: one span per attempt, the second's id the upstream's parent
        r = _chat(gw.port, "routed", f"00-{'ab' * 16}-{PARENT}-01")
        assert r.status_code == 200, r.text
        second = upstream.requests[-1].headers["traceparent"].split("-")[2]
        spans = wait_for(lambda: (s := receiver.of("ab" * 16)) and len(s) >= 4 and s, 30.0, what="spans")
        root = next(s for s in spans if s["kind"] == 2)
        attempts = sorted((s for s in spans if s["kind"] == 3), key=lambda s: int(s["startTimeUnixNano"]))
        assert len(attempts) == 2 and all(a["parentSpanId"] == root["spanId"] for a in attempts)
        assert attempts[1]["spanId"] == second and attempts[0]["status"].get("code") == 2
        assert attempts[0]["name"] != attempts[1]["name"]  # the dead deployment, then the fallback's

        # 3. no client trace: a trace of the gateway's own; a client's unsampled trace: nothing exported
        r = _chat(gw.port, "chat-model", f"00-{'cd' * 16}-{PARENT}-00")
        assert r.status_code == 200
        assert "traceparent" not in upstream.requests[-1].headers  # not traced: nothing added
        r = _chat(gw.port, "chat-model")
        own = upstream.requests[-1].headers["traceparent"].split("-")[1]
        spans = wait_for(lambda: (s := receiver.of(own)) and len(s) >= 3 and s, 30.0, what="spans")
        assert "parentSpanId" not in next(s for s in spans if s["kind"] == 2)
        assert receiver.of("cd" * 16) == []  # exported in order: it would have come before
