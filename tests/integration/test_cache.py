"""The response cache through real processes: a gateway in front of the standalone mock, and a real
redis-server for the shared tier.

Hits, misses, bypasses (Cache-Control), no-store, TTL expiry, tenant isolation, stream replay read by
the openai SDK, the memory tier's byte bound under a flood, a Redis outage, and two nodes sharing the
Redis tier.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redisproc

from gateway.auth import digest, format_key

from .conftest import Gateway, StartGateway
from .helpers import RawClient, Response, call_records, chat_request, gateway_toml, http_request, wait_for

SECRET_A = "A" * 43
SECRET_B = "B" * 43
KEY_A = format_key("cachekeyaaaa", SECRET_A)
KEY_B = format_key("cachekeybbbb", SECRET_B)

TENANTS = f"""
[auth]
required = true
[[auth.keys]]
id = "cachekeyaaaa"
digest = "{digest(SECRET_A, b'')}"
tenant = "alpha"
[[auth.keys]]
id = "cachekeybbbb"
digest = "{digest(SECRET_B, b'')}"
tenant = "beta"
[tenants.alpha]
[tenants.beta]
"""

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}}}}]


def cache_toml(mock_port: int, cache: str = "", extra: str = "") -> str:
    return gateway_toml(mock_port) + "\n[cache]\nenabled = true\n" + cache + extra


def ask(gw: Gateway, content: str, *, key: str | None = None, headers: tuple[tuple[str, str], ...] = (),
        **extra: Any) -> Response:
    hdrs = list(headers)
    if key is not None:
        hdrs.append(("Authorization", f"Bearer {key}"))
    with RawClient(gw.port) as c:
        return c.request(chat_request(content, headers=hdrs, **extra))


def outcome(resp: Response) -> str | None:
    assert resp.status == 200, resp
    return resp.header("x-gateway-cache")


def metric(gw: Gateway, name: str, labels: str = "") -> float:
    with RawClient(gw.port) as c:
        body = c.request(http_request("GET", "/metrics")).body.decode()
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    total = 0.0
    for m in pattern.finditer(body):
        if labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


def test_miss_then_hit_and_the_client_controls(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(cache_toml(mock_port))
    first = ask(gw, "cache me please")
    assert outcome(first) == "miss"
    again = wait_for(lambda: (r := ask(gw, "cache me please")).header("x-gateway-cache") == "hit" and r,
                     10, what="a hit")
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [again.json()["usage"][k] for k in counts] == [first.json()["usage"][k] for k in counts]
    assert again.header("age") is not None and int(again.header("age") or "-1") >= 0
    # the same question written differently (key order, number form, user, metadata) is the same entry
    same = json.dumps({"temperature": 1.0, "user": "someone", "metadata": {"x": "y"},
                       "messages": [{"content": "cache me please", "role": "user"}],
                       "model": "chat-model"}).encode()
    first_t = ask(gw, "cache me please", temperature=1)
    assert outcome(first_t) in ("miss", "hit")
    with RawClient(gw.port) as c:
        resp = c.request(http_request("POST", "/v1/chat/completions", same))
    assert outcome(resp) == "hit"
    # no-cache: no lookup (bypass), and the fresh answer is stored
    assert outcome(ask(gw, "cache me please", headers=(("Cache-Control", "no-cache"),))) == "bypass"
    # no-store: looked up, but a miss is not stored
    assert outcome(ask(gw, "not to be kept", headers=(("Cache-Control", "no-store"),))) == "miss"
    assert outcome(ask(gw, "not to be kept", headers=(("Cache-Control", "no-store"),))) == "miss"
    # a different answer-changing field is another entry
    assert outcome(ask(gw, "cache me please", max_tokens=3)) == "miss"
    records = call_records(gw.process, lambda rs: any(r.get("cache") == "hit" for r in rs))
    hits = [r for r in records if r.get("cache") == "hit"]
    assert hits and all(r.get("provider") is None for r in hits)
    assert metric(gw, "gateway_cache_requests_total", 'outcome="hit"') >= 2


def test_errors_are_never_stored(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(cache_toml(mock_port))
    for _ in range(2):
        resp = ask(gw, "!mock status=500 fail")
        assert resp.status == 500
        assert resp.header("x-gateway-cache") == "miss"


def test_ttl_expiry(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(cache_toml(mock_port, "[cache.default]\nttl = 1.0\n"))
    assert outcome(ask(gw, "short lived")) == "miss"
    wait_for(lambda: ask(gw, "short lived").header("x-gateway-cache") == "hit", 10, what="a hit")
    # past its time to live the entry is gone: a miss again (polled, never slept)
    wait_for(lambda: ask(gw, "short lived").header("x-gateway-cache") == "miss", 20, what="expiry")


def test_deterministic_policy_bypasses_sampled_requests(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(cache_toml(mock_port, '[cache.default]\nwhen = "deterministic"\n'))
    assert outcome(ask(gw, "sampled", temperature=0.7)) == "bypass"
    assert outcome(ask(gw, "pinned", temperature=0)) == "miss"
    wait_for(lambda: ask(gw, "pinned", temperature=0.0).header("x-gateway-cache") == "hit", 10, what="hit")
    assert outcome(ask(gw, "seeded", seed=7, temperature=0.9)) == "miss"


@pytest.mark.parametrize("scope", ["tenant", "global"])
def test_tenant_b_never_gets_tenant_a_answer(start_gateway: StartGateway, mock_port: int, scope: str) -> None:
    gw = start_gateway(cache_toml(mock_port, f'[cache.default]\nscope = "{scope}"\n', TENANTS))
    assert outcome(ask(gw, "a private question", key=KEY_A)) == "miss"
    wait_for(lambda: ask(gw, "a private question", key=KEY_A).header("x-gateway-cache") == "hit", 10,
             what="tenant A's hit")
    b = ask(gw, "a private question", key=KEY_B)
    if scope == "tenant":
        assert outcome(b) == "miss"
        assert outcome(ask(gw, "a private question", key=KEY_B)) == "hit"  # B's own entry
    else:  # shared on purpose: the one scope where B sees A's entry
        assert outcome(b) == "hit"


def test_stream_replay_read_by_the_sdk_equals_the_original(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(cache_toml(mock_port))
    client = gw.client()
    try:
        def run(stream: bool) -> tuple[dict[str, Any], str | None]:
            raw = client.chat.completions.with_raw_response.create(
                model="chat-model", messages=[{"role": "user", "content": "!tool get_weather in Paris"}],
                tools=TOOLS, stream=stream, **({"stream_options": {"include_usage": True}} if stream else {}),
            )
            parsed = raw.parse()
            if not stream:
                m = parsed.choices[0].message
                calls = [(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()]
                usage = _counts(parsed.usage)
                return {"content": m.content or "", "calls": calls, "usage": usage,
                        "finish": parsed.choices[0].finish_reason}, raw.headers.get("x-gateway-cache")
            content = ""
            calls: dict[int, list[str]] = {}
            usage = None
            finish = None
            for chunk in parsed:
                if chunk.usage is not None:
                    usage = _counts(chunk.usage)
                for ch in chunk.choices:
                    content += ch.delta.content or ""
                    for tc in ch.delta.tool_calls or ():
                        slot = calls.setdefault(tc.index, ["", "", ""])
                        slot[0] += tc.id or ""
                        slot[1] += (tc.function.name or "") if tc.function else ""
                        slot[2] += (tc.function.arguments or "") if tc.function else ""
                    finish = ch.finish_reason or finish
            return {"content": content, "calls": [tuple(calls[i]) for i in sorted(calls)], "usage": usage,
                    "finish": finish}, raw.headers.get("x-gateway-cache")

        original, how = run(stream=True)
        assert how == "miss" and original["calls"] and original["usage"], original
        replay, how = wait_for(lambda: (r := run(stream=True))[1] == "hit" and r, 10, what="a stream hit")
        assert replay == original
        whole, how = run(stream=False)
        assert how == "hit"
        assert whole["calls"] == original["calls"] and whole["usage"] == original["usage"]
        assert whole["finish"] == original["finish"] == "tool_calls"
    finally:
        client.close()


def _counts(usage: Any) -> tuple[int, ...] | None:
    """The token counts of an SDK usage object (the zero-valued extras a replay leaves out aside)."""
    if usage is None:
        return None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0
    return (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, cached or 0, reasoning or 0)


def test_a_cut_stream_is_not_stored(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(cache_toml(mock_port))
    body = json.dumps({"model": "chat-model", "stream": True,
                       "messages": [{"role": "user", "content": "!mock cut=3 a cut stream"}]}).encode()
    for _ in range(2):
        with RawClient(gw.port) as c:
            c.sock.sendall(http_request("POST", "/v1/chat/completions", body, headers=[("Connection", "close")]))
            data = b""
            while chunk := c.sock.recv(65536):
                data += chunk
        assert b"x-gateway-cache: miss" in data.lower()
    assert metric(gw, "gateway_cache_stores_total") == 0


def test_memory_tier_stays_within_its_byte_bound(start_gateway: StartGateway, mock_port: int) -> None:
    bound = 16384
    gw = start_gateway(cache_toml(mock_port, f"memory_bytes = {bound}\n"))
    for i in range(300):
        assert outcome(ask(gw, f"distinct question number {i}")) == "miss"
    wait_for(lambda: metric(gw, "gateway_cache_stores_total") >= 300, 15, what="every answer stored")
    wait_for(lambda: metric(gw, "gateway_cache_evictions_total") > 0, 15, what="evictions")
    held = metric(gw, "gateway_cache_memory_bytes")
    assert 0 < held <= bound
    assert metric(gw, "gateway_cache_memory_entries") < 300


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path / "redis") as server:
        yield server


def redis_cache(mock_port: int, url: str, memory: int = 0) -> str:
    return cache_toml(mock_port, f'memory_bytes = {memory}\nredis = true\nredis_url = "{url}"\n')


def test_two_nodes_share_redis_hits(start_gateway: StartGateway, mock_port: int,
                                    redis_server: redisproc.RedisServer) -> None:
    one = start_gateway(redis_cache(mock_port, redis_server.url), name="node-one")
    two = start_gateway(redis_cache(mock_port, redis_server.url), name="node-two")
    first = ask(one, "shared across the cluster")
    assert outcome(first) == "miss"
    hit = wait_for(lambda: (r := ask(two, "shared across the cluster")).header("x-gateway-cache") == "hit"
                   and r, 10, what="node two's hit from Redis")
    assert hit.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert metric(two, "gateway_cache_requests_total", 'tier="redis"') >= 1


def test_redis_outage_changes_nothing_for_clients(start_gateway: StartGateway, mock_port: int,
                                                  redis_server: redisproc.RedisServer) -> None:
    gw = start_gateway(redis_cache(mock_port, redis_server.url, memory=1 << 20))
    assert outcome(ask(gw, "before the outage")) == "miss"
    wait_for(lambda: ask(gw, "before the outage").header("x-gateway-cache") == "hit", 10, what="a hit")
    redis_server.stop()  # the real server is gone
    for i in range(20):  # every request is still answered; a lookup that needs Redis is bypassed
        assert outcome(ask(gw, f"during the outage {i}")) in ("bypass", "miss")
    assert outcome(ask(gw, "before the outage")) == "hit"  # the memory tier still serves
    assert metric(gw, "gateway_cache_bypass_total", 'reason="redis_down"') >= 1
    stream = ask(gw, "a stream in the outage", stream=True)
    assert stream.status == 200 and b"[DONE]" in stream.body


def test_cache_section_is_checked(tmp_path: Path) -> None:
    from gateway.config import ConfigError
    from gateway.config.loader import load_config_text

    with pytest.raises(ConfigError, match=r"cache\.default\.ttl"):
        load_config_text('[cache]\nenabled = true\n[cache.default]\nttl = -1\n')
    with pytest.raises(ConfigError, match=r"cache\.models\.nope"):
        load_config_text('[cache]\nenabled = true\n[cache.models.nope]\nttl = 5\n')
    with pytest.raises(ConfigError, match="redis"):
        load_config_text('[cache]\nenabled = true\nredis = true\n')
    assert load_config_text('[cache]\nenabled = true\n').cache.enabled


def test_the_example_runs_as_it_is(start_gateway: StartGateway) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "cache.toml"
    gw = start_gateway(example.read_text())
    body = json.dumps({"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def post(payload: bytes) -> Response:
        with RawClient(gw.port) as c:
            return c.request(http_request("POST", "/v1/chat/completions", payload))

    assert outcome(post(body)) == "miss"
    hit = wait_for(lambda: (r := post(body)).header("x-gateway-cache") == "hit" and r, 10, what="a hit")
    assert hit.header("age") is not None
    sampled = json.dumps({"model": "gpt-4o-mini", "temperature": 0.5,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert outcome(post(sampled)) == "bypass"


LIMITED = """
[limits]
default_policy = "few"
[limits.policies.few]
requests_per_minute = 4
lease = 1
[pricing."mock-1"]
input = 100.0
output = 100.0
"""


def test_a_hit_counts_against_request_limits_not_spend(start_gateway: StartGateway, mock_port: int,
                                                       tmp_path: Path) -> None:
    store = f'\n[store]\nurl = "sqlite://{tmp_path / "store.db"}"\n'
    gw = start_gateway(cache_toml(mock_port, "", TENANTS + LIMITED + store))
    assert outcome(ask(gw, "limited question", key=KEY_A)) == "miss"
    hits = 0
    for _ in range(3):
        resp = ask(gw, "limited question", key=KEY_A)
        assert resp.status == 200
        hits += resp.header("x-gateway-cache") == "hit"
    assert hits >= 1
    refused = ask(gw, "limited question", key=KEY_A)  # the fifth request in the minute, cached or not
    assert refused.status == 429, refused
    records = call_records(gw.process, lambda rs: sum(r.get("cache") == "hit" for r in rs) >= hits)
    miss = next(r for r in records if r.get("cache") == "miss")
    hit = next(r for r in records if r.get("cache") == "hit")
    assert miss["cost_usd"] > 0
    assert hit.get("cost_usd") is None and hit["cost_saved_usd"] == miss["cost_usd"]
    assert hit.get("total_tokens") is None


OPERATOR = "operator-token-for-the-cache-tests"


def test_admin_purges_by_tenant_and_shows_hit_ratios(start_gateway: StartGateway, mock_port: int,
                                                     redis_server: redisproc.RedisServer,
                                                     tmp_path: Path) -> None:
    from .helpers import free_port

    admin_port = free_port()
    admin = (f'\n[admin]\nport = {admin_port}\noperator_token = "{digest(OPERATOR, b"")}"\n'
             f'\n[store]\nurl = "sqlite://{tmp_path / "store.db"}"\n')
    gw = start_gateway(redis_cache(mock_port, redis_server.url, memory=1 << 20) + TENANTS + admin, workers=2)

    def admin_call(method: str, path: str, body: Any = None) -> Response:
        data = json.dumps(body).encode() if body is not None else None
        with RawClient(admin_port) as c:
            return c.request(http_request(method, path, data,
                                          headers=[("Authorization", f"Bearer {OPERATOR}")]))

    def admin_up() -> bool:
        try:
            return admin_call("GET", "/admin/v1/cache/stats").status == 200
        except OSError:
            return False

    wait_for(admin_up, 30, what="the admin API")
    for key, question in ((KEY_A, "alpha's question"), (KEY_B, "beta's question")):
        assert outcome(ask(gw, question, key=key)) == "miss"
        wait_for(lambda k=key, q=question: ask(gw, q, key=k).header("x-gateway-cache") == "hit", 10, what="hit")
    purged = admin_call("POST", "/admin/v1/cache/purge", {"tenant": "alpha"})
    assert purged.status == 200, purged
    assert purged.json()["redis_deleted"] == 1
    # every worker drops alpha's entries (each answer may come from either worker): misses from now on
    wait_for(lambda: all(ask(gw, "alpha's question", key=KEY_A, headers=(("Cache-Control", "no-store"),))
                         .header("x-gateway-cache") == "miss" for _ in range(4)), 10, what="the purge")
    assert outcome(ask(gw, "beta's question", key=KEY_B)) == "hit"  # beta's entries stay
    bad = admin_call("POST", "/admin/v1/cache/purge", {})
    assert bad.status == 400
    stats = wait_for(lambda: (r := admin_call("GET", "/admin/v1/cache/stats").json())["hits_memory"]
                     + r["hits_redis"] >= 2 and r, 15, what="stats")
    assert 0 < stats["hit_ratio"] < 1 and stats["enabled"]


def test_a_stalled_redis_is_bypassed(start_gateway: StartGateway, mock_port: int,
                                     redis_server: redisproc.RedisServer) -> None:
    import signal

    gw = start_gateway(redis_cache(mock_port, redis_server.url, memory=1 << 20))
    assert outcome(ask(gw, "before the stall")) == "miss"
    redis_server.process.send_signal(signal.SIGSTOP)  # alive, connected, and answering nothing
    try:
        seen = {outcome(ask(gw, f"during the stall {i}")) for i in range(6)}
        assert seen <= {"bypass", "miss"} and "bypass" in seen
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    # once it answers again the tier is used again: a fresh question is stored in Redis and found there
    wait_for(lambda: ask(gw, "after the stall").header("x-gateway-cache") == "hit", 15, what="a hit")
    assert metric(gw, "gateway_cache_errors_total") >= 1
