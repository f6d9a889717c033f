"""What the gateway puts on the wire to the upstream, recorded by an upstream in the test process."""

from __future__ import annotations

import json

import pytest

from .conftest import FRONTENDS, MOCK_KEY, StartGateway, require_frontend
from .helpers import HOST, RawClient, RecordingUpstream, http_request, sse_events

pytestmark = pytest.mark.timeout(60)


def _config(port: int) -> str:
    return f"""
[server]
drain_timeout = 2.0

[providers.rec]
type = "openai"
base_url = "http://{HOST}:{port}/v1"
api_key = "env:MOCK_KEY"
headers = {{ "X-Extra" = "yes" }}

[models.rec-model]
provider = "rec"
upstream_model = "up-model"

[models.same-model]
provider = "rec"
"""


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_what_the_upstream_receives(start_gateway: StartGateway, frontend: str) -> None:
    require_frontend(frontend)
    with RecordingUpstream() as up:
        gw = start_gateway(_config(up.port), name="wire", frontend=frontend)
        try:
            # 1. no rewrite needed: the client's bytes go upstream untouched (odd spacing, unicode, extras)
            raw = (b'{ "model" : "same-model",\n  "messages": [{"role": "user", "content": "h\\u00e9llo \xc3\xa9"}],'
                   b' "temperature": 0.25, "seed": 7, "x_vendor_field": {"a": [1, 2]} }')
            headers = [("Authorization", "Bearer sk-client-secret"), ("X-Request-Id", "wire-1")]
            with RawClient(gw.port) as c:
                resp = c.request(http_request("POST", "/v1/chat/completions", raw, headers=headers))
            assert resp.status == 200, resp
            assert resp.json()["choices"][0]["message"]["content"] == "recorded"
            first = up.requests[-1]
            assert first.path == "/v1/chat/completions"
            assert first.body == raw
            assert first.headers["authorization"] == f"Bearer {MOCK_KEY}"  # the upstream key, not the client's
            assert "sk-client-secret" not in json.dumps(first.headers)
            assert first.headers["x-extra"] == "yes"
            assert first.headers["x-request-id"] == "wire-1"
            assert first.headers["content-type"].startswith("application/json")

            # 2. an alias: only the model id changes, every other field is kept
            body = json.dumps({"model": "rec-model", "messages": [{"role": "user", "content": "x"}],
                               "temperature": 0.5, "tools": [{"type": "function",
                                                              "function": {"name": "f", "parameters": {}}}]})
            with RawClient(gw.port) as c:
                assert c.request(http_request("POST", "/v1/chat/completions", body.encode())).status == 200
            sent = up.requests[-1].json()
            expected = json.loads(body)
            expected["model"] = "up-model"
            assert sent == expected

            # 3. a stream without include_usage: the gateway asks upstream for usage and strips the usage chunk
            body = json.dumps({"model": "rec-model", "stream": True, "messages": [{"role": "user", "content": "s"}]})
            with RawClient(gw.port) as c:
                resp = c.request(http_request("POST", "/v1/chat/completions", body.encode()))
            sent = up.requests[-1].json()
            assert sent["stream_options"] == {"include_usage": True}
            assert sent["model"] == "up-model"
            events = sse_events(resp.body)
            assert events[-1] == b"[DONE]"
            assert all(json.loads(e)["choices"] for e in events[:-1]), events  # no usage-only chunk
        finally:
            gw.process.stop()  # before the recorder goes: its threads hold the pool's connections
