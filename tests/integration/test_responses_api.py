"""The OpenAI Responses API (``/v1/responses``) with the official ``openai`` SDK's ``client.responses``.

Real processes on loopback: ``gateway serve`` with its embedded default (the in-process mock), and two
gateway nodes sharing one real Redis, in front of the standalone OpenAI mock, ``gateway mock --dialect
anthropic`` and ``gateway mock --dialect azure``, with keys of two tenants. A response made on one node is
continued, read, listed and deleted on the other: the record is written before the answer, so there is
nothing to wait for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redisproc

from gateway.auth import digest, generate
from gateway.store import open_store

from .conftest import MOCK_KEY, Gateway, StartGateway, _stop
from .helpers import HOST, ServerProcess, call_records, free_port, gateway_toml

pytestmark = pytest.mark.timeout(120)

ANTH_KEY = "sk-ant-responses-test"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path_factory.mktemp("redis-responses")) as server:
        yield server


@pytest.fixture(scope="module")
def anthropic_mock(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    proc = ServerProcess("mock-anthropic-responses", ["mock", "--dialect", "anthropic", "--api-key", ANTH_KEY,
                                                      "--port", str(port), "-q"], logs_dir, port).start()
    failed = request.session.testsfailed
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        _stop(proc, request, failed)


@pytest.fixture(scope="module")
def azure_mock(logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    proc = ServerProcess("mock-azure-responses", ["mock", "--dialect", "azure", "--api-key", MOCK_KEY,
                                                  "--port", str(port), "-q"], logs_dir, port).start()
    failed = request.session.testsfailed
    try:
        proc.wait_ready("/healthz")
        yield port
    finally:
        _stop(proc, request, failed)


def _config(mock_port: int, anth_port: int, azure_port: int, store_url: str) -> str:
    return gateway_toml(mock_port) + f"""
[providers.azure]
type = "azure"
base_url = "http://{HOST}:{azure_port}"
api_key = "env:MOCK_KEY"

[models.azure]
provider = "azure"
upstream_model = "gpt-4o-deployment"

[providers.claude]
type = "anthropic"
base_url = "http://{HOST}:{anth_port}/v1"
api_key = "env:ANTH_KEY"

[models.claude]
provider = "claude"
upstream_model = "claude-sonnet-4-5"

[auth]
required = true

[store]
url = "{store_url}"
poll_interval = 0.1

[responses]
retention = 3600
"""


def _make_key(url: str, tenant: str, endpoints: tuple[str, ...] = ("*",)) -> str:
    full, key_id, secret = generate()

    async def body() -> None:
        store = await open_store(url)
        try:
            try:
                await store.create_tenant(tenant)
            except Exception:
                pass  # made by an earlier call
            await store.create_key(key_id=key_id, tenant=tenant, name="responses test",
                                   digest=digest(secret, b""), allowed_endpoints=endpoints)
        finally:
            await store.close()

    asyncio.run(body())
    return full


class Clients:
    """SDK clients made during a test, closed after it (an unclosed one leaves its sockets to the GC)."""

    def __init__(self) -> None:
        self.made: list[openai.OpenAI] = []

    def __call__(self, node: Gateway, key: str = "k") -> openai.OpenAI:
        c = openai.OpenAI(base_url=f"http://{HOST}:{node.port}/v1", api_key=key, max_retries=0, timeout=30)
        self.made.append(c)
        return c


@pytest.fixture
def clients() -> Iterator[Clients]:
    made = Clients()
    try:
        yield made
    finally:
        for c in made.made:
            c.close()


class Cluster:
    def __init__(self, a: Gateway, b: Gateway, url: str, clients: Clients) -> None:
        self.a, self.b, self.url = a, b, url
        self.key1 = _make_key(url, "acme")
        self.key2 = _make_key(url, "globex")
        self._clients = clients

    def client(self, node: Gateway, key: str) -> openai.OpenAI:
        return self._clients(node, key)


@pytest.fixture
def cluster(start_gateway: StartGateway, mock_port: int, anthropic_mock: int, azure_mock: int,
            redis_server: redisproc.RedisServer, monkeypatch: pytest.MonkeyPatch, clients: Clients) -> Cluster:
    monkeypatch.setenv("ANTH_KEY", ANTH_KEY)
    text = _config(mock_port, anthropic_mock, azure_mock, redis_server.url)
    a = start_gateway(text, workers=2, name="responses-node-a")
    b = start_gateway(text, workers=2, name="responses-node-b")
    return Cluster(a, b, redis_server.url, clients)


# -- the default gateway (in-process mock, no keys, SQLite) ---------------------------------------------


def test_default_gateway_create_stream_retrieve_delete(default_gateway: Gateway, clients: Clients) -> None:
    client = clients(default_gateway)
    resp = client.responses.create(model="mock-1", input="Tell me about gateways.", instructions="Be brief.",
                                   metadata={"team": "ops"})
    assert resp.object == "response" and resp.status == "completed"
    assert resp.id.startswith("resp_")
    assert resp.output_text and resp.output[0].type == "message"
    assert resp.usage is not None and resp.usage.output_tokens > 0 and resp.usage.input_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.metadata == {"team": "ops"} and resp.instructions == "Be brief."

    got = client.responses.retrieve(resp.id)
    assert got.model_dump() == resp.model_dump()
    items = client.responses.input_items.list(resp.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "Tell me about gateways."  # type: ignore[union-attr]

    events = list(client.responses.create(model="mock-1", input="Stream it.", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert deltas == done.output_text and done.usage is not None and done.usage.output_tokens > 0
    assert client.responses.retrieve(done.id).output_text == deltas  # stored before response.completed

    with client.responses.stream(model="mock-1", input="Helper stream.") as stream:
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text

    client.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(resp.id)
    assert info.value.body["code"] == "response_not_found"  # type: ignore[index]

    unstored = client.responses.create(model="mock-1", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_builtin_tools_and_bad_input_are_400(default_gateway: Gateway, clients: Clients) -> None:
    client = clients(default_gateway)
    for tool in ({"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]},
                 {"type": "code_interpreter", "container": {"type": "auto"}}):
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model="mock-1", input="x", tools=[tool])  # type: ignore[list-item]
        body: Any = info.value.body
        assert body["code"] == "unsupported_tool" and body["param"] == "tools[0].type"
        assert tool["type"] in body["message"]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="mock-1", input=[])
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="mock-1", input="x", previous_response_id="resp_nope")
    assert missing.value.body["code"] == "response_not_found"  # type: ignore[index]


# -- two nodes on one Redis, keys of two tenants, OpenAI and Anthropic upstreams ------------------------


@pytest.mark.parametrize("model", ["chat-model", "claude", "azure"])
def test_tool_round_trip_across_nodes(cluster: Cluster, model: str) -> None:
    on_a = cluster.client(cluster.a, cluster.key1)
    on_b = cluster.client(cluster.b, cluster.key1)
    first = on_a.responses.create(model=model, input="!tool get_weather in Paris", tools=[WEATHER])  # type: ignore[list-item]
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert "city" in json.loads(calls[0].arguments)

    # the next turn on the other node: only the tool's output is sent; the call comes from the store
    second = on_b.responses.create(
        model=model, previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
    )
    assert second.status == "completed" and second.previous_response_id == first.id
    assert "sunny, 21 C" in second.output_text  # the mock quotes the result of the call it answers
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the stored conversation went up too

    # streamed third turn on node A, continuing the second
    events = list(on_a.responses.create(model=model, previous_response_id=second.id, input="thanks", stream=True))
    assert events[-1].type == "response.completed"
    third = events[-1].response  # type: ignore[union-attr]
    assert on_b.responses.retrieve(third.id).output_text == third.output_text

    items = on_a.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"]
    assert on_b.responses.retrieve(first.id).id == first.id
    on_b.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        on_a.responses.retrieve(first.id)


def test_another_tenants_response_is_not_found(cluster: Cluster) -> None:
    mine = cluster.client(cluster.a, cluster.key1)
    theirs = cluster.client(cluster.b, cluster.key2)
    resp = mine.responses.create(model="chat-model", input="secret plans")
    errors = []
    for call in (lambda i: theirs.responses.retrieve(i), lambda i: theirs.responses.delete(i),
                 lambda i: theirs.responses.input_items.list(i),
                 lambda i: theirs.responses.create(model="chat-model", input="x", previous_response_id=i)):
        for response_id in (resp.id, "resp_" + "0" * 48):
            with pytest.raises(openai.NotFoundError) as info:
                call(response_id)
            body: Any = info.value.body
            errors.append({**body, "message": body["message"].replace(response_id, "ID")})
    assert all(e == errors[0] for e in errors), errors  # another tenant's id answers exactly like a missing one
    assert mine.responses.retrieve(resp.id).output_text == resp.output_text  # and it was not deleted


def test_responses_scope_and_call_records(cluster: Cluster) -> None:
    chat_only = _make_key(cluster.url, "acme", ("chat",))
    with pytest.raises(openai.PermissionDeniedError) as info:
        cluster.client(cluster.a, chat_only).responses.create(model="chat-model", input="x")
    assert info.value.body["code"] == "endpoint_not_allowed"  # type: ignore[index]
    scoped = _make_key(cluster.url, "acme", ("responses",))
    client = cluster.client(cluster.a, scoped)
    resp = client.responses.create(model="chat-model", input="scoped")
    assert client.responses.retrieve(resp.id).id == resp.id
    with pytest.raises(openai.PermissionDeniedError):
        cluster.client(cluster.a, scoped).chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "x"}])
    recs = call_records(cluster.a.process, lambda rs: any(r.get("path") == "/v1/responses" and r.get("status") == 200
                                                          for r in rs))
    rec = next(r for r in recs if r.get("path") == "/v1/responses" and r.get("status") == 200)
    assert rec["provider"] == "upstream" and rec["completion_tokens"] > 0 and rec.get("key_id")


# -- errors in the Responses shape ------------------------------------------------------------------------


def test_upstream_errors_and_mid_stream_failures(default_gateway: Gateway, clients: Clients) -> None:
    client = clients(default_gateway)
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.create(model="mock-1", input="!mock status=503 please")
    assert info.value.status_code == 503
    body: Any = info.value.body
    assert set(body) == {"message", "type", "param", "code"}

    events = list(client.responses.create(model="mock-1", input="!mock cut=3 please", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"], kinds
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(failed.id)  # a failed response is not stored

    with pytest.raises(openai.APIStatusError) as cut:
        client.responses.create(model="mock-1", input="!mock cut=3 please")
    assert cut.value.status_code == 502


def test_gateway_rate_limit_is_a_429_with_retry_headers(start_gateway: StartGateway, mock_port: int,
                                                        clients: Clients) -> None:
    gw = start_gateway(gateway_toml(mock_port) + """
[limits.policies.one]
requests_per_minute = 1

[limits.apply]
gateway = "one"
""")
    client = clients(gw)
    client.responses.create(model="chat-model", input="first")
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model="chat-model", input="second")
    body: Any = info.value.body
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "rate_limit_error"
    assert info.value.response.headers.get("retry-after")


def test_an_answer_that_cannot_be_stored_is_not_given_an_id(start_gateway: StartGateway, mock_port: int,
                                                            clients: Clients) -> None:
    dead = free_port()  # nothing listens there: the response store cannot take the record
    gw = start_gateway(gateway_toml(mock_port) + f'\n[store]\nurl = "redis://{HOST}:{dead}/0"\n')
    client = clients(gw)
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.create(model="chat-model", input="x")
    assert info.value.status_code == 503
    assert info.value.body["code"] == "store_unavailable"  # type: ignore[index]
    events = list(client.responses.create(model="chat-model", input="x", stream=True))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert not any(e.type == "response.completed" for e in events)
    # without store, nothing needs the store
    assert client.responses.create(model="chat-model", input="x", store=False).status == "completed"
