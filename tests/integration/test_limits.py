"""Limits and budgets through real ``gateway serve`` processes in front of the standalone mock.

Each gateway is started for its test (``start_gateway``): the limits' shared state lives beside the
test's store (a table file for SQLite, the server for Redis), so nothing carries over between tests.

The floods check the documented bounds (``docs/limits-and-budgets.md``) with the workers' leases as the
configuration fixes them: ``L`` requests per minute (rate ``r = L / 60`` per second, burst ``L``),
leases of ``S``, ``W`` workers in the deployment; over a flood of ``D`` seconds (measured from the first
request sent to the last answer) the admitted count is at least ``L`` (demand is far above it) and at
most ``L + r * D + W * (S - 1)``. The budget test checks that the spend stays within the budget plus what
requests cost beyond their reservations, across processes and nodes, and that it survives a restart.
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
from .helpers import RawClient, Response, chat_body, chat_request, gateway_toml

KEY_ID = "budgetkeyaaa"
SECRET = "B" * 43
KEY = format_key(KEY_ID, SECRET)


def limits_toml(mock_port: int, store_url: str, limits: str) -> str:
    return gateway_toml(mock_port) + f'\n[store]\nurl = "{store_url}"\n' + limits


def send(port: int, content: str = "hello there", headers: list[tuple[str, str]] | None = None,
         **extra: object) -> Response:
    with RawClient(port) as c:  # a new connection each time: the kernel spreads them over the workers
        return c.request(chat_request(content, headers=[("Connection", "close"), *(headers or [])], **extra))


def flood(ports: list[int], total: int, **extra: object) -> list[Response]:
    """``total`` requests at once from 8 threads, round-robin over ``ports``: their answers."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: send(ports[i % len(ports)], **extra), range(total)))


def statuses(answers: list[Response]) -> list[int]:
    return [a.status for a in answers]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'gateway.db'}"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis-limits")) as server:
        yield server


FLOOD = """
[limits]
default_policy = "flood"
[limits.policies.flood]
requests_per_minute = {n}
lease = {lease}
"""
#: the limit of the floods (requests per minute); each sends four times as many requests
L = 30


def assert_within_the_bound(answers: list[Response], seconds: float, workers: int, lease: int) -> None:
    """At least ``L`` admitted, at most ``L + r * D + W * (S - 1)``; the rest refused with 429."""
    admitted = statuses(answers).count(200)
    bound = L + L / 60.0 * seconds + workers * (lease - 1)
    assert L <= admitted <= bound, (admitted, bound, seconds)
    assert admitted + statuses(answers).count(429) == len(answers)


@pytest.mark.parametrize("lease", [1, 4], ids=["exact", "leases-of-4"])
def test_a_flood_on_four_workers_stays_within_the_bound(
    start_gateway: StartGateway, mock_port: int, sqlite_url: str, lease: int
) -> None:
    gw = start_gateway(limits_toml(mock_port, sqlite_url, FLOOD.format(n=L, lease=lease)), workers=4)
    start = time.monotonic()
    answers = flood([gw.port], 4 * L)
    assert_within_the_bound(answers, time.monotonic() - start, 4, lease)


@pytest.mark.parametrize("lease", [1, 4], ids=["exact", "leases-of-4"])
def test_a_flood_on_three_nodes_sharing_redis_stays_within_the_bound(
    start_gateway: StartGateway, mock_port: int, redis_server: redisproc.RedisServer, lease: int
) -> None:
    redis_server.flushall()
    text = limits_toml(mock_port, redis_server.url, FLOOD.format(n=L, lease=lease))
    nodes = [start_gateway(text, workers=2, name=f"node-{n}") for n in "abc"]
    assert len({gw.port for gw in nodes}) == 3
    start = time.monotonic()
    answers = flood([gw.port for gw in nodes], 4 * L)
    assert_within_the_bound(answers, time.monotonic() - start, 3 * 2, lease)


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
        deadline = time.monotonic() + 30.0
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
usd_per_day = 0.1
action = "block"
[pricing."mock-1"]
input = 100.0
output = 100.0
"""
#: USD per token of mock-1 (BUDGET), the budget, and the completion each request asks for
PRICE = 100.0 / 1e6
B = 0.1
MAX_TOKENS = 50


def reservation(body: bytes) -> float:
    """What the gateway reserves for a request: ``ceil(bytes / 4) + max_tokens`` at mock-1's prices."""
    return ((len(body) + 3) // 4 + MAX_TOKENS) * PRICE


@pytest.mark.parametrize("layout", ["one-node-4-workers", "two-nodes-on-redis"])
def test_a_budget_is_never_overspent_across_workers_and_keeps_its_spend_across_a_restart(
    start_gateway: StartGateway, mock_port: int, sqlite_url: str, redis_server: redisproc.RedisServer,
    layout: str,
) -> None:
    """Concurrent requests from 8 threads over several worker processes (and nodes) against a budget of
    about 17 requests: the spend recorded stays within the budget plus what requests cost beyond their
    reservations (0 here: each asks max_tokens and the prompt's bytes / 4 are more than its tokens)."""
    if layout == "two-nodes-on-redis":
        redis_server.flushall()
        store_url, nodes, workers = redis_server.url, 2, 2
    else:
        store_url, nodes, workers = sqlite_url, 1, 4
    text = limits_toml(mock_port, store_url, BUDGET)
    gateways = [start_gateway(text, workers=workers, name=f"budget-{n}") for n in range(nodes)]
    ports = [gw.port for gw in gateways]
    auth = [("Authorization", f"Bearer {KEY}")]

    def ask(port: int) -> Response:
        return send(port, headers=auth, max_tokens=MAX_TOKENS)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: ask(ports[i % len(ports)]), range(120)))
    # then one at a time until the budget itself refuses: not to be retried (a refusal while reservations
    # of other requests, or a worker's spare, hold the rest says to retry in a moment)
    while True:
        answers.append(last := ask(ports[len(answers) % len(ports)]))
        if last.status == 429 and last.header("x-should-retry") == "false":
            break
        assert len(answers) < 300, last.body
        if last.status == 429:
            time.sleep(0.05)
    admitted = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert all(a.status == 429 and a.json()["error"]["code"] == "insufficient_quota" for a in refused)
    costs = [sum(json.loads(a.body)["usage"][k] for k in ("prompt_tokens", "completion_tokens")) * PRICE
             for a in admitted]
    request_body = chat_body("hello there", max_tokens=MAX_TOKENS)
    excess = sum(max(0.0, cost - reservation(request_body)) for cost in costs)
    assert excess == 0.0  # the documented bound is the budget itself here

    for gw in gateways:
        gw.process.stop()  # SIGTERM: the spend still in memory is written
    day = utc_period(time.time())[0]

    async def spent() -> float:
        store = await open_store(store_url)
        try:
            return await store.get_spend("tenant", "team", day)
        finally:
            await store.close()

    recorded = asyncio.run(spent())
    assert recorded == pytest.approx(sum(costs))
    # never over the bound; and most of the budget was served (the counters err on the safe side only)
    assert 0.75 * B < recorded <= B + excess + 1e-9, (recorded, len(admitted))

    # a restarted gateway knows the spend: the next request is refused, and the SDK does not retry it
    requests: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [requests.append]}) as http:
        again = start_gateway(text, workers=workers, name="budget-restarted")
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{again.port}/v1", api_key=KEY, max_retries=3,
                            timeout=15.0, http_client=http)
        messages: list[dict[str, str]] = [{"role": "user", "content": "hello there"}]
        with pytest.raises(openai.RateLimitError) as info:
            sdk.chat.completions.create(
                model="chat-model", messages=messages, max_tokens=MAX_TOKENS  # type: ignore[arg-type]
            )
    assert info.value.code == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(requests) == 1  # the SDK did not retry
    again.process.stop()
    assert asyncio.run(spent()) == pytest.approx(recorded)


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
