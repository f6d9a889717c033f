"""Cached prompt tokens reported by an OpenAI-compatible upstream are priced at ``cached_input``.

A ``gateway serve`` with a price table in front of an upstream in this process that answers the OpenAI
fixture ``responses/cached_usage.json`` (1920 of 2006 prompt tokens read from the cache); the call record
carries the cached tokens and a cost that prices them at the cached rate, once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, RawClient, call_records, http_request
from .tiny_upstream import TinyUpstream

pytestmark = pytest.mark.timeout(60)

ANSWER = (Path(__file__).resolve().parents[1] / "fixtures" / "providers" / "openai" / "responses"
          / "cached_usage.json").read_bytes()


@pytest.fixture(scope="module")
def gw(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    up = TinyUpstream(lambda path, headers, body: (200, "application/json", ANSWER))
    config = f"""
[server]
drain_timeout = 2.0
[log]
level = "info"
call_records = true

[providers.openai]
type = "openai"
base_url = "http://{HOST}:{up.port}/v1"
api_key = "env:MOCK_KEY"

[models.gpt-4o]
provider = "openai"
upstream_model = "gpt-4o-2024-08-06"

[limits.budgets.b]
usd_per_day = 100.0

[pricing."gpt-4o-2024-08-06"]
input = 2.5
cached_input = 1.25
output = 10.0
"""
    gateway = _launch("gateway-cached-pricing", logs_dir, config_text=config, workers=1, frontend="native")
    failed = request.session.testsfailed
    try:
        yield gateway
    finally:
        _stop(gateway.process, request, failed)
        up.close()


def test_cached_tokens_are_priced_at_the_cached_rate(gw: Gateway) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "describe"}]}).encode()
    with RawClient(gw.port) as c:
        resp = c.request(http_request("POST", "/v1/chat/completions", body, headers=[("X-Request-Id", "cached-1")]))
    assert resp.status == 200 and resp.body == ANSWER  # passed through byte for byte
    recs = call_records(gw.process, lambda rs: any(r.get("request_id") == "cached-1" for r in rs))
    (rec,) = [r for r in recs if r.get("request_id") == "cached-1"]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cached_tokens"]) == (2006, 300, 1920)
    # 86 uncached prompt tokens at 2.5, 1920 cached at 1.25, 300 output at 10 (USD per 1M)
    assert rec["cost_usd"] == pytest.approx((86 * 2.5 + 1920 * 1.25 + 300 * 10.0) / 1e6)
