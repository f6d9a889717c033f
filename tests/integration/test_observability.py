"""Call records and their sinks, and the request metrics, through real gateway processes on loopback.

Every sink receives every record: a rotated JSONL file per worker and stderr at once, an HTTP sink that is
down and comes back (nothing lost up to its queue's bound, the rest counted as dropped), OTLP logs; a
failing sink changes no client's answer and shows in ``/metrics``; ``/metrics`` carries the GenAI names.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import StartGateway
from .helpers import HOST, free_port, gateway_toml, wait_for

pytestmark = pytest.mark.timeout(180)

CHAT_PATH = "/v1/chat/completions"
CHAT = json.dumps({"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM = json.dumps({"model": "chat-model", "stream": True, "stream_options": {"include_usage": True},
                     "messages": [{"role": "user", "content": "hi"}]}).encode()


def _config(mock_port: int, records: str, *, drain: float = 3.0, extra: str = "") -> str:
    return gateway_toml(mock_port, server={"drain_timeout": drain}) + extra + records


class _Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def _request(port: int, method: str, path: str, body: bytes | None = None) -> _Answer:
    conn = http.client.HTTPConnection(HOST, port, timeout=15)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"} if body else {})
        resp = conn.getresponse()
        return _Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def _chat(port: int, body: bytes = CHAT) -> str:
    resp = _request(port, "POST", "/v1/chat/completions", body)
    assert resp.status == 200, resp.body[:500]
    assert json.loads(resp.body)["object"] == "chat.completion"
    rid = resp.headers.get("x-request-id")
    assert rid
    return rid


def _stop_cleanly(gw: Any) -> None:
    gw.process.send_signal(signal.SIGTERM)
    assert gw.process.wait(30) == 0, gw.process.logs(records=False)


def _stderr_records(gw: Any, path: str | None = None) -> list[dict[str, Any]]:
    lines = gw.process.log_path.read_text(errors="replace").splitlines()
    records = [json.loads(ln) for ln in lines if ln.startswith('{"ts":')]
    return [r for r in records if path is None or r["path"] == path]


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        got = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
            found = True
    assert found, f"no sample of {name} with {labels}"
    return total


def _scrape(port: int) -> str:
    resp = _request(port, "GET", "/metrics")
    assert resp.status == 200
    return resp.body.decode()


# -- a tiny receiver of batches ------------------------------------------------------------------------


class Receiver:
    """An HTTP server in a thread of the test process that keeps every POSTed body (on ``port``)."""

    def __init__(self, port: int, status: int = 200) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self.status = status
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if owner.status == 200:
                    owner.bodies.append((self.headers.get("content-type") or "", body))
                self.send_response(owner.status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer((HOST, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def ndjson_ids(self) -> list[str]:
        """The request ids of the chat completions received (readiness probes left out)."""
        records = [json.loads(ln) for _, b in self.bodies for ln in b.splitlines() if ln]
        return [r["request_id"] for r in records if r["path"] == "/v1/chat/completions"]

    def all_ids(self) -> list[str]:
        return [json.loads(ln)["request_id"] for _, b in self.bodies for ln in b.splitlines() if ln]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


# -- file and stderr -----------------------------------------------------------------------------------


def test_a_rotated_file_per_worker_and_stderr_each_get_every_record_once(
        start_gateway: StartGateway, mock_port: int, tmp_path: Path) -> None:
    out = tmp_path / "records" / "calls.jsonl"
    gw = start_gateway(_config(mock_port, f"""
[[records.sinks]]
type = "stderr"

[[records.sinks]]
type = "file"
path = "{out}"
max_bytes = 3000
keep = 1000
"""), workers=2)
    sent = [_chat(gw.port) for _ in range(120)]
    _stop_cleanly(gw)
    files = sorted((tmp_path / "records").iterdir())
    names = {f.name for f in files}
    # each worker its own file, rotated: calls-<worker>.jsonl and calls-<worker>.jsonl.1, .2, ...
    assert names <= {f"calls-{w}.jsonl" for w in (0, 1)} | {
        f"calls-{w}.jsonl.{i}" for w in (0, 1) for i in range(1, 1000)}, names
    assert any(n.endswith(".jsonl.1") for n in names), names
    in_files: list[str] = []
    for f in files:
        data = f.read_bytes()
        assert len(data) <= 3000, (f.name, len(data))
        assert data.endswith(b"\n")
        in_files += [json.loads(ln)["request_id"] for ln in data.splitlines()]
    on_stderr = [r["request_id"] for r in _stderr_records(gw)]
    # the same records in both sinks, each once: the chats and the readiness probes
    assert sorted(in_files) == sorted(on_stderr)
    assert set(sent) <= set(in_files) and len(set(in_files)) == len(in_files)
    assert {r["path"] for r in _stderr_records(gw) if r["request_id"] not in sent} <= {"/readyz"}


def test_a_file_sink_that_cannot_write_changes_no_answer_and_shows_in_the_metrics(
        start_gateway: StartGateway, mock_port: int, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the sink wants a directory\n")
    gw = start_gateway(_config(mock_port, f"""
[[records.sinks]]
type = "file"
name = "broken"
path = "{blocker}/calls.jsonl"

[[records.sinks]]
type = "stderr"
"""))
    sent = [_chat(gw.port) for _ in range(20)]
    wait_for(lambda: _metric(_scrape(gw.port), "gateway_record_sink_failures_total", sink="broken") > 0,
             30, what="the failing sink's failures in /metrics")
    text = _scrape(gw.port)
    assert _metric(text, "gateway_record_sink_records_total", sink="broken") == 0
    wait_for(lambda: len(_stderr_records(gw, CHAT_PATH)) == len(sent), 30, what="stderr records")
    assert sorted(r["request_id"] for r in _stderr_records(gw, CHAT_PATH)) == sorted(sent)


# -- http ----------------------------------------------------------------------------------------------


def test_an_http_sink_down_then_back_loses_nothing_within_its_queue(
        start_gateway: StartGateway, mock_port: int, receivers: list[Receiver]) -> None:
    port = free_port()  # nothing listens yet: the sink is down
    gw = start_gateway(_config(mock_port, f"""
[[records.sinks]]
type = "http"
url = "http://{HOST}:{port}/ingest"
batch = 7
backoff = 0.05
max_backoff = 0.2
queue = 1000
"""))
    sent = [_chat(gw.port) for _ in range(40)]
    wait_for(lambda: _metric(_scrape(gw.port), "gateway_record_sink_failures_total", sink="http") > 0,
             30, what="failed deliveries")
    assert _metric(_scrape(gw.port), "gateway_record_sink_queued", sink="http") > 0
    receivers.append(Receiver(port))
    wait_for(lambda: len(receivers[0].ndjson_ids()) >= len(sent), 30, what="the records after the outage")
    ids = receivers[0].ndjson_ids()
    assert sorted(ids) == sorted(sent)  # each exactly once
    assert all(ct == "application/x-ndjson" for ct, _ in receivers[0].bodies)
    assert max(len(b.splitlines()) for _, b in receivers[0].bodies) <= 7
    text = _scrape(gw.port)
    # (the readiness probe and the scrapes have records too)
    assert _metric(text, "gateway_record_sink_records_total", sink="http") == len(receivers[0].all_ids())
    assert _metric(text, "gateway_record_sink_dropped_total", sink="http") == 0


def test_an_http_sink_down_past_its_queue_drops_and_counts_the_rest(
        start_gateway: StartGateway, mock_port: int, receivers: list[Receiver]) -> None:
    port = free_port()
    receivers.append(Receiver(port, status=503))  # up, but failing every batch
    gw = start_gateway(_config(mock_port, f"""
[[records.sinks]]
type = "http"
url = "http://{HOST}:{port}/ingest"
backoff = 0.05
max_backoff = 0.1
queue = 10

[[records.sinks]]
type = "stderr"
"""))
    sent = [_chat(gw.port) for _ in range(60)]
    # every answer was a 200 (checked in _chat); stderr got them all
    wait_for(lambda: len(_stderr_records(gw, CHAT_PATH)) == len(sent), 30, what="stderr records")
    wait_for(lambda: _metric(_scrape(gw.port), "gateway_record_sink_dropped_total", sink="http",
                             reason="queue_full") > 0, 30, what="drops")
    receivers[0].status = 200
    text = ""

    def settled() -> bool:
        nonlocal text
        text = _scrape(gw.port)
        got = len(receivers[0].all_ids())
        dropped = _metric(text, "gateway_record_sink_dropped_total", sink="http")
        return got + dropped == _metric(text, "gateway_requests_total") and _metric(text, "gateway_record_sink_queued", sink="http") == 0

    wait_for(settled, 30, what="delivered + dropped == sent")
    got = receivers[0].ndjson_ids()
    assert len(set(got)) == len(got) and set(got) <= set(sent)
    assert 0 < len(receivers[0].all_ids()) <= 10  # what the queue held
    assert _metric(text, "gateway_record_sink_records_total", sink="http") == len(receivers[0].all_ids())


def _otlp_message(content_type: str, body: bytes) -> dict[str, Any]:
    if content_type == "application/json":
        message: dict[str, Any] = json.loads(body)
        return message
    assert content_type == "application/x-protobuf"
    from google.protobuf import json_format  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # type: ignore[import-untyped]
        ExportLogsServiceRequest,
    )

    decoded: dict[str, Any] = json_format.MessageToDict(ExportLogsServiceRequest.FromString(body))
    return decoded


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_otlp_logs_reach_a_collector_as_log_records(
        start_gateway: StartGateway, mock_port: int, receivers: list[Receiver], encoding: str) -> None:
    if encoding == "protobuf":
        pytest.importorskip("opentelemetry.proto", reason="the otlp extra is not installed")
    port = free_port()
    receivers.append(Receiver(port))
    gw = start_gateway(_config(mock_port, f"""
[[records.sinks]]
type = "otlp"
url = "http://{HOST}:{port}/v1/logs"
service_name = "gw-test"
encoding = "{encoding}"
"""))
    sent = [_chat(gw.port) for _ in range(15)]
    _stop_cleanly(gw)
    logs: list[dict[str, Any]] = []
    for ct, body in receivers[0].bodies:
        assert ct == ("application/json" if encoding == "json" else "application/x-protobuf")
        msg = _otlp_message(ct, body)
        for rl in msg["resourceLogs"]:
            attrs = {a["key"]: a["value"] for a in rl["resource"]["attributes"]}
            assert attrs["service.name"] == {"stringValue": "gw-test"}
            for sl in rl["scopeLogs"]:
                logs += sl["logRecords"]
    logs = [x for x in logs if {"key": "url.path", "value": {"stringValue": CHAT_PATH}} in x["attributes"]]
    assert len(logs) == len(sent)
    ids = []
    for log in logs:
        attrs = {a["key"]: a["value"] for a in log["attributes"]}
        ids.append(attrs["gateway.request_id"]["stringValue"])
        assert attrs["gen_ai.request.model"] == {"stringValue": "chat-model"}
        assert attrs["gen_ai.operation.name"] == {"stringValue": "chat"}
        assert attrs["http.response.status_code"] == {"intValue": "200"}
        assert json.loads(log["body"]["stringValue"])["request_id"] == ids[-1]
        assert int(log["timeUnixNano"]) > 0
    assert sorted(ids) == sorted(sent)


# -- what records carry --------------------------------------------------------------------------------


def test_bodies_are_kept_capped_with_key_material_redacted(
        start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(_config(mock_port, """
[records]
bodies = "both"
max_body_bytes = 1500
redact_fields = ["user"]
"""))
    secret = "sk-" + "A1b2C3d4" * 4
    body = json.dumps({"model": "chat-model", "user": "alice@example.com", "api_key": "plain-value",
                       "messages": [{"role": "user", "content": f"my key is {secret}, keep it"}]}).encode()
    rid = _chat(gw.port, body)
    long_body = json.dumps({"model": "chat-model",
                            "messages": [{"role": "user", "content": "x" * 2000}]}).encode()
    rid_long = _chat(gw.port, long_body)
    _stop_cleanly(gw)
    by_id = {r["request_id"]: r for r in _stderr_records(gw)}
    rec = by_id[rid]
    kept = json.loads(rec["request_body"])
    assert kept["user"] == "[redacted]" and kept["api_key"] == "[redacted]"
    assert secret not in rec["request_body"] and "[redacted]" in kept["messages"][0]["content"]
    assert json.loads(rec["response_body"])["object"] == "chat.completion"
    assert "truncated" not in rec
    long = by_id[rid_long]
    assert len(long["request_body"].encode()) == 1500 and long["truncated"] == ["request"]


def test_cost_is_recorded_without_limits(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(_config(mock_port, "", extra="""
[pricing."mock-1"]
input = 1.0
output = 2.0
"""))
    rid = _chat(gw.port)
    _stop_cleanly(gw)
    rec = {r["request_id"]: r for r in _stderr_records(gw)}[rid]
    expect = (rec["prompt_tokens"] * 1.0 + rec["completion_tokens"] * 2.0) / 1e6
    assert rec["cost_usd"] == pytest.approx(expect)


# -- metrics -------------------------------------------------------------------------------------------


def test_metrics_carry_the_genai_names_summed_over_workers(
        start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(_config(mock_port, "", extra="""
[pricing."mock-1"]
input = 1.0
output = 2.0
"""), workers=2)
    n = 30
    for _ in range(n):
        _chat(gw.port)
    for _ in range(4):
        resp = _request(gw.port, "POST", "/v1/chat/completions", STREAM)
        assert resp.status == 200 and resp.body.endswith(b"data: [DONE]\n\n")
    labels = {"endpoint": "chat", "dialect": "openai", "model": "chat-model", "provider": "upstream",
              "status": "200"}

    def complete() -> str | None:
        text = _scrape(gw.port)
        done = _metric(text, "gateway_requests_total", **labels) == n + 4
        return text if done else None

    text = wait_for(complete, 30, what="every request in /metrics (both workers' snapshots)")
    assert _metric(text, "gen_ai_client_operation_duration_seconds_count", **labels) == n + 4
    assert _metric(text, "gen_ai_client_operation_duration_seconds_bucket", le="+Inf", **labels) == n + 4
    assert _metric(text, "gen_ai_server_request_duration_seconds_count", **labels) == n + 4
    assert _metric(text, "gateway_overhead_seconds_count", **labels) == n + 4
    assert _metric(text, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **labels) == n + 4
    assert _metric(text, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **labels) > 0
    assert _metric(text, "gen_ai_server_time_to_first_token_seconds_count", **labels) == 4
    assert _metric(text, "gen_ai_server_time_per_output_token_seconds_count", **labels) == 4
    assert _metric(text, "gateway_cost_usd_total", **labels) > 0
    assert "# TYPE gen_ai_client_operation_duration_seconds histogram" in text
    assert _metric(text, "gateway_records_dropped_total") == 0


def test_a_stop_with_a_dead_http_sink_is_bounded_and_says_what_it_dropped(
        start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(_config(mock_port, f"""
[[records.sinks]]
type = "http"
url = "http://{HOST}:{free_port()}/ingest"
backoff = 0.05
max_backoff = 0.2
"""))
    for _ in range(5):
        _chat(gw.port)
    _stop_cleanly(gw)  # the sink's retries end at their deadline: the worker exits by itself, cleanly
    logs = gw.process.logs(records=False)
    dropped = re.findall(r"sink http still failing at shutdown; (\d+) record\(s\) dropped", logs)
    assert sum(int(n) for n in dropped) >= 5, logs
    assert "exited cleanly" in logs
