"""Limits and budgets through real ``gateway serve`` processes in front of the standalone mock.

Each gateway is started for its test (``start_gateway``): the limits' shared state lives beside the
test's store (a table file for SQLite, the server for Redis), so nothing carries over between tests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import redisproc

from gateway.auth import digest, format_key
from gateway.limits.budgets import utc_period
from gateway.store import open_store

from .conftest import StartGateway
from .helpers import RawClient, Response, chat_request, gateway_toml

KEY_ID = "budgetkeyaaa"
SECRET = "B" * 43
KEY = format_key(KEY_ID, SECRET)


def limits_toml(mock_port: int, store_url: str, limits: str) -> str:
    return gateway_toml(mock_port) + f'\n[store]\nurl = "{store_url}"\n' + limits


def send(port: int, content: str = "hello there", **extra: object) -> Response:
    with RawClient(port) as c:  # a new connection each time: the kernel spreads them over the workers
        return c.request(chat_request(content, headers=[("Connection", "close")], **extra))


def flood(ports: list[int], total: int) -> list[int]:
    """``total`` requests at once from 8 threads, round-robin over ``ports``: their statuses."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: send(ports[i % len(ports)]).status, range(total)))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'gateway.db'}"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis-limits")) as server:
        yield server


EXACT = """
[limits]
default_policy = "exact"
[limits.policies.exact]
requests_per_minute = {n}
lease = 1
"""


def test_requests_per_minute_is_exact_across_four_workers(
    start_gateway: StartGateway, mock_port: int, sqlite_url: str
) -> None:
    gw = start_gateway(limits_toml(mock_port, sqlite_url, EXACT.format(n=10)), workers=4)
    statuses = flood([gw.port], 40)
    assert statuses.count(200) == 10 and statuses.count(429) == 30


def test_two_nodes_sharing_redis_enforce_one_limit(
    start_gateway: StartGateway, mock_port: int, redis_server: redisproc.RedisServer
) -> None:
    redis_server.flushall()
    text = limits_toml(mock_port, redis_server.url, EXACT.format(n=6))
    node_a = start_gateway(text, workers=2, name="node-a")
    node_b = start_gateway(text, workers=2, name="node-b")
    statuses = flood([node_a.port, node_b.port], 24)
    assert statuses.count(200) == 6 and statuses.count(429) == 18


def test_token_limit_is_reconciled_from_the_real_usage(
    start_gateway: StartGateway, mock_port: int, sqlite_url: str
) -> None:
    # each request reserves its prompt and 500 completion tokens, and uses about 20: without
    # reconciliation two requests would spend the day's 1200 tokens
    gw = start_gateway(limits_toml(mock_port, sqlite_url, """
[limits]
default_policy = "tokens"
default_max_tokens = 500
[limits.policies.tokens]
tokens_per_day = 1200
lease = 1
"""))
    remaining = []
    for _ in range(6):
        deadline = time.monotonic() + 5.0
        while (resp := send(gw.port)).status == 429:  # the refund of the last one may be on its way
            assert time.monotonic() < deadline, resp.body
            time.sleep(0.1)
        assert resp.status == 200
        assert resp.header("x-ratelimit-limit-tokens") == "1200"
        remaining.append(int(resp.header("x-ratelimit-remaining-tokens") or -1))
    usage = json.loads(resp.body)["usage"]["total_tokens"]
    assert 0 < usage < 100
    # after six reservations of over 500, more than two reservations' worth is left: refunds came back
    assert remaining[-1] >= 0 and max(remaining[2:]) > 1200 - 2 * 500, remaining


BUDGET = f"""
[auth]
required = true
[[auth.keys]]
id = "{KEY_ID}"
digest = "{digest(SECRET, b'')}"
tenant = "team"
[tenants.team]
budget = "daily"
[limits.budgets.daily]
usd_per_day = 0.01
action = "block"
[pricing."mock-1"]
input = 1000.0
output = 1000.0
"""


def test_a_budget_blocks_after_spend_and_keeps_it_across_a_restart(
    start_gateway: StartGateway, mock_port: int, sqlite_url: str
) -> None:
    text = limits_toml(mock_port, sqlite_url, BUDGET)
    requests: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [requests.append]})

    def sdk(port: int) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=3,
                             timeout=15.0, http_client=http)

    gw = start_gateway(text)
    messages: list[dict[str, str]] = [{"role": "user", "content": "hello"}]
    sdk(gw.port).chat.completions.create(model="chat-model", messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as info:  # about 0.02 USD spent of 0.01
        sdk(gw.port).chat.completions.create(model="chat-model", messages=messages)  # type: ignore[arg-type]
    assert info.value.code == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(requests) == 2  # the SDK did not retry

    gw.process.stop()  # SIGTERM: the spend still in memory is written
    day = utc_period(time.time())[0]

    async def spent() -> float:
        store = await open_store(sqlite_url)
        try:
            return await store.get_spend("tenant", "team", day)
        finally:
            await store.close()

    assert asyncio.run(spent()) > 0.01
    again = start_gateway(text)
    with pytest.raises(openai.RateLimitError) as info:
        sdk(again.port).chat.completions.create(model="chat-model", messages=messages)  # type: ignore[arg-type]
    assert info.value.code == "insufficient_quota"
    http.close()


def test_the_openai_sdk_raises_with_the_headers_and_honours_retry_after(
    start_gateway: StartGateway, mock_port: int, sqlite_url: str
) -> None:
    gw = start_gateway(limits_toml(mock_port, sqlite_url, """
[limits]
apply = { models = { "chat-model" = "slow", "mock-1" = "paced" } }
[limits.policies.slow]
requests_per_minute = 1
[limits.policies.paced]
requests_per_second = 2
burst = 0.5
"""))
    messages: list[dict[str, str]] = [{"role": "user", "content": "hello"}]
    with gw.client(max_retries=0) as client:
        client.chat.completions.create(model="chat-model", messages=messages)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="chat-model", messages=messages)  # type: ignore[arg-type]
    err = info.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    headers = err.response.headers
    assert headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) > 0
    assert "requests_per_minute of policy slow for model chat-model" in err.message

    # one request per half second on mock-1: the second call is refused once, waits retry-after-ms, passes
    requests: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [requests.append]}) as http:
        with gw.client(max_retries=3, http_client=http) as client:
            for _ in range(2):
                client.chat.completions.create(model="mock-1", messages=messages)  # type: ignore[arg-type]
    assert len(requests) == 3
