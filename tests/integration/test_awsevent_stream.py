"""Broken AWS event-stream framing from a Bedrock upstream, through a real ``gateway serve``.

The upstream is a scripted ConverseStream server in a thread of the test process (the Bedrock mock only
writes valid framing): each model's answer is a fixed event-stream body, written in small pieces so the
gateway's decoder sees messages cut at arbitrary points. The client, an OpenAI SDK-shaped stream over raw
HTTP, must get the content that came before the break and then the gateway's error event (a 502-typed
``bad_gateway``): never a traceback in the gateway's log, never a stream that ends as if it were whole.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, sse_events

pytestmark = pytest.mark.timeout(120)


def _string_header(name: str, value: str) -> bytes:
    raw, data = name.encode(), value.encode()
    return struct.pack("!B", len(raw)) + raw + b"\x07" + struct.pack("!H", len(data)) + data


def _message(head: bytes, payload: bytes) -> bytes:
    prelude = struct.pack("!II", 16 + len(head) + len(payload), len(head))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack("!I", zlib.crc32(body))


def _event(kind: str, payload: dict[str, Any], extra: bytes = b"") -> bytes:
    head = (_string_header(":event-type", kind) + _string_header(":content-type", "application/json")
            + _string_header(":message-type", "event") + extra)
    return _message(head, json.dumps(payload).encode())


START = _event("messageStart", {"role": "assistant"})
DELTAS = b"".join(_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}})
                  for w in ("Hello", " from", " Bedrock"))
STOP = _event("contentBlockStop", {"contentBlockIndex": 0}) + _event("messageStop", {"stopReason": "end_turn"})
METADATA = _event("metadata", {"usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10},
                               "metrics": {"latencyMs": 5}})

#: model → the ConverseStream body the upstream answers
BODIES = {
    "whole": START + DELTAS + STOP + METADATA,
    # a header of type 12 (the specification stops at 9)
    "unknown-header-type": START + DELTAS + _event("contentBlockDelta", {"contentBlockIndex": 0,
                                                   "delta": {"text": "!"}}, extra=b"\x01x\x0c"),
    # a header name that is not UTF-8
    "bad-header-name": START + DELTAS + _event("contentBlockDelta", {"contentBlockIndex": 0,
                                               "delta": {"text": "!"}}, extra=b"\x02\xc3\x28\x00"),
    # a total length too small for the headers it announces (prelude checksum right)
    "short-total": START + DELTAS + (lambda p: p + struct.pack("!I", zlib.crc32(p)))(struct.pack("!II", 8, 0))
    + bytes(8),
    # the body ends inside the metadata message, after messageStop: the usage is lost
    "cut-metadata": START + DELTAS + STOP + METADATA[:len(METADATA) // 2],
}


class ScriptedBedrock:
    """Answers ``POST /model/{model}/converse-stream`` with ``BODIES[model]``, 7 bytes a write."""

    def __init__(self) -> None:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                model = self.path.split("/")[2]
                body = BODIES[model]
                self.send_response(200)
                self.send_header("content-type", "application/vnd.amazon.eventstream")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                for i in range(0, len(body), 7):
                    self.wfile.write(body[i:i + 7])
                    self.wfile.flush()

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> ScriptedBedrock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _config(port: int) -> str:
    models = "".join(f'[models.{m}]\nprovider = "aws"\nupstream_model = "{m}"\n\n' for m in BODIES)
    return f"""
[server]
drain_timeout = 2.0
[log]
level = "info"

[providers.aws]
type = "bedrock"
base_url = "http://{HOST}:{port}"
region = "us-east-1"
api_key = "env:MOCK_KEY"
read_timeout = 10.0

{models}"""


@pytest.fixture(scope="module")
def gw(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    with ScriptedBedrock() as upstream:
        gateway = _launch("gateway-awsevent", logs_dir, config_text=_config(upstream.port), workers=1,
                          frontend="native")
        failed = request.session.testsfailed
        try:
            yield gateway
        finally:
            _stop(gateway.process, request, failed)


def _stream(gw: Gateway, model: str) -> list[dict[str, Any]]:
    body = json.dumps({"model": model, "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    resp = httpx.post(f"{gw.base_url}/chat/completions", content=body, timeout=15.0,
                      headers={"content-type": "application/json", "authorization": "Bearer k"})
    assert resp.status_code == 200, resp.content
    events = sse_events(resp.content)
    assert events[-1] == b"[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def test_a_whole_stream_arrives_whole(gw: Gateway) -> None:
    chunks = _stream(gw, "whole")
    assert _text(chunks) == "Hello from Bedrock"
    assert not any("error" in c for c in chunks)
    assert chunks[-1]["usage"]["total_tokens"] == 10


@pytest.mark.parametrize("model", ["unknown-header-type", "bad-header-name", "short-total", "cut-metadata"])
def test_broken_framing_ends_the_stream_with_a_bad_gateway_error(gw: Gateway, model: str) -> None:
    chunks = _stream(gw, model)
    assert _text(chunks) == "Hello from Bedrock"  # what came before the break reached the client
    error = chunks[-1].get("error")
    assert error is not None and error["code"] == "bad_gateway", chunks[-1]
    assert "event-stream" in error["message"]
    logs = gw.process.logs(records=False)
    assert "Traceback" not in logs, logs
