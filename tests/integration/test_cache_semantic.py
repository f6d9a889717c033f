"""The semantic tier of the response cache through real processes: a gateway in front of the standalone
mock (whose embeddings are a bag of words: similarity is word overlap), and a real redis-server for the
cluster.

A paraphrase hits and an unrelated prompt misses; the threshold is respected; tenant B never gets tenant
A's neighbour; requests with tools or sampling, and ``no-cache``, are not looked up; an embeddings model
that is down or hangs leaves every request answered; two nodes sharing Redis find each other's entries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redisproc

from gateway.providers.mock import _embedding

from .conftest import Gateway, StartGateway
from .helpers import call_records, free_port, provider_toml, wait_for
from .test_cache import KEY_A, KEY_B, TENANTS, TOOLS, ask, cache_toml, metric, outcome

QUESTION = "What is the capital city of France and what is it famous for?"
#: the same words, another case and punctuation: the mock's vector is the same (similarity 1)
PARAPHRASE = "what is the capital city of france, and what is it famous for"
#: two words of thirteen changed
NEIGHBOUR = "What is the capital city of Spain and what is it known for?"
UNRELATED = "Write a haiku about autumn leaves falling on a quiet pond"
DIMS = 256


def similarity(a: str, b: str) -> float:
    """The cosine the gateway computes for two one-message prompts (``role: text``) with the mock."""
    va, _ = _embedding(f"user: {a}", DIMS)
    vb, _ = _embedding(f"user: {b}", DIMS)
    return math.fsum(x * y for x, y in zip(va, vb, strict=True))


def semantic_toml(mock_port: int, *, threshold: float = 0.9, embeddings: str = "embed-model",
                  timeout: float = 5.0, cache: str = "", extra: str = "", models: str = "") -> str:
    table = (f'\n[cache.models.chat-model.semantic]\nembeddings_model = "{embeddings}"\ndimensions = {DIMS}\n'
             f"threshold = {threshold}\ntimeout = {timeout}\n")
    return cache_toml(mock_port, cache + table, extra + models)


def sem(gw: Gateway, content: str, **kw: Any) -> Any:
    """A deterministic question (temperature 0: what the tier looks up by default)."""
    kw.setdefault("temperature", 0)
    return ask(gw, content, **kw)


def answer_of(resp: Any) -> str:
    text: str = resp.json()["choices"][0]["message"]["content"]
    return text


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[redisproc.RedisServer]:
    with redisproc.start(tmp_path / "redis") as server:
        yield server


def test_a_paraphrase_hits_and_an_unrelated_prompt_misses(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(semantic_toml(mock_port))
    first = sem(gw, QUESTION)
    assert outcome(first) == "miss" and first.header("x-gateway-cache-similarity") is None
    hit = sem(gw, PARAPHRASE)
    assert outcome(hit) == "hit"
    assert float(hit.header("x-gateway-cache-similarity") or 0) == pytest.approx(1.0, abs=1e-3)
    # the stored answer, not the one the mock gives this wording (it hashes the message)
    assert hit.json()["id"] == first.json()["id"] and answer_of(hit) == answer_of(first)
    assert answer_of(sem(gw, PARAPHRASE, headers=(("Cache-Control", "no-cache"),))) != answer_of(first)
    streamed = sem(gw, NEIGHBOUR.replace("known", "famous"), stream=True)  # replayed as a stream
    assert outcome(streamed) == "hit" and first.json()["id"].encode() in streamed.body
    assert b"data: [DONE]" in streamed.body
    other = sem(gw, UNRELATED)
    assert outcome(other) == "miss" and answer_of(other) != answer_of(first)
    assert metric(gw, "gateway_cache_semantic_lookups_total", 'outcome="hit"') == 2
    assert metric(gw, "gateway_cache_requests_total", 'tier="semantic"') == 2
    records = call_records(gw.process, lambda rs: sum(r.get("cache") == "hit" for r in rs) >= 2
                           and sum(r.get("endpoint") == "embeddings" for r in rs) >= 4)
    hits = [r for r in records if r.get("cache") == "hit"]
    assert all(r["cache_similarity"] >= 0.9 and "provider" not in r for r in hits)
    # each lookup's embeddings call has its own record, named after the chat request
    embeds = [r for r in records if r.get("endpoint") == "embeddings"]
    chats = {r["request_id"] for r in records if r.get("endpoint") == "chat" and r.get("cache") != "bypass"}
    assert {r["request_id"].removesuffix("-semantic") for r in embeds} == chats
    assert all(r["model"] == "embed-model" and r["prompt_tokens"] > 0 for r in embeds)


def test_the_threshold_is_respected(start_gateway: StartGateway, mock_port: int) -> None:
    near = similarity(QUESTION, NEIGHBOUR)
    assert 0.5 < near < 0.99  # the neighbour is close, not the same
    strict = start_gateway(semantic_toml(mock_port, threshold=round(near + 0.01, 4)), name="strict")
    loose = start_gateway(semantic_toml(mock_port, threshold=round(near - 0.01, 4)), name="loose")
    for gw in (strict, loose):
        assert outcome(sem(gw, QUESTION)) == "miss"
    assert outcome(sem(strict, NEIGHBOUR)) == "miss"
    hit = sem(loose, NEIGHBOUR)
    assert outcome(hit) == "hit"
    assert float(hit.header("x-gateway-cache-similarity") or 0) == pytest.approx(near, abs=1e-3)


def test_tenant_b_never_gets_tenant_as_neighbour(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(semantic_toml(mock_port, extra=TENANTS))
    mine = sem(gw, QUESTION, key=KEY_A)
    assert outcome(mine) == "miss"
    assert outcome(sem(gw, PARAPHRASE, key=KEY_A)) == "hit"
    theirs = sem(gw, PARAPHRASE, key=KEY_B)
    assert outcome(theirs) == "miss" and theirs.json()["id"] != mine.json()["id"]
    # nor alpha's exact entry: beta's own neighbour (its paraphrase's answer) answers beta now
    again = sem(gw, QUESTION, key=KEY_B)
    assert outcome(again) == "hit" and again.json()["id"] == theirs.json()["id"] != mine.json()["id"]


def test_tools_sampling_and_no_cache_are_not_looked_up(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(semantic_toml(mock_port))
    assert outcome(sem(gw, QUESTION)) == "miss"
    assert outcome(sem(gw, PARAPHRASE, tools=TOOLS)) == "miss"
    assert outcome(ask(gw, PARAPHRASE)) == "miss"  # no temperature: OpenAI's default, 1
    assert outcome(sem(gw, PARAPHRASE, temperature=0.7)) == "miss"
    assert outcome(sem(gw, PARAPHRASE, headers=(("Cache-Control", "no-cache"),))) == "bypass"
    assert metric(gw, "gateway_cache_semantic_bypass_total", 'reason="tools"') == 1
    assert metric(gw, "gateway_cache_semantic_bypass_total", 'reason="temperature"') == 2
    assert metric(gw, "gateway_cache_semantic_lookups_total", 'outcome="hit"') == 0
    assert outcome(sem(gw, PARAPHRASE)) == "hit"  # the neighbour was there all along


def test_max_temperature_lets_sampled_requests_in(start_gateway: StartGateway, mock_port: int) -> None:
    config = semantic_toml(mock_port).replace("threshold = 0.9\n", "threshold = 0.9\nmax_temperature = 1.0\n")
    gw = start_gateway(config)
    assert outcome(ask(gw, QUESTION, temperature=0.8)) == "miss"
    assert outcome(ask(gw, PARAPHRASE, temperature=0.8)) == "hit"
    # every field but the messages must match: another temperature is another partition
    assert outcome(ask(gw, PARAPHRASE + "?", temperature=0.9)) == "miss"


@pytest.mark.parametrize("failure", ["down", "hangs"])
def test_an_embeddings_model_down_or_hanging_never_fails_a_request(
        start_gateway: StartGateway, mock_port: int, failure: str) -> None:
    if failure == "down":  # nothing listens there
        provider = provider_toml("broken", free_port(), connect_timeout=1.0)
    else:  # the mock never answers: the tier's timeout ends the call
        provider = provider_toml("broken", mock_port, mock="hang=1")
    models = (provider + '\n[models.broken-embed]\nprovider = "broken"\nupstream_model = "mock-embed-1"\n'
              'endpoints = ["embeddings"]\n')
    gw = start_gateway(semantic_toml(mock_port, embeddings="broken-embed", timeout=0.5, models=models))
    first = sem(gw, QUESTION)
    assert outcome(first) == "miss" and first.json()["choices"]
    assert outcome(sem(gw, PARAPHRASE)) == "miss"
    assert outcome(sem(gw, QUESTION)) == "hit"  # the exact tier serves as ever
    assert metric(gw, "gateway_cache_semantic_lookups_total", 'outcome="error"') == 2
    records = call_records(gw.process, lambda rs: sum(r.get("endpoint") == "embeddings" for r in rs) >= 2)
    assert all(r["status"] >= 500 for r in records if r.get("endpoint") == "embeddings")


def test_two_nodes_sharing_redis_find_each_others_entries(
        start_gateway: StartGateway, mock_port: int, redis_server: redisproc.RedisServer) -> None:
    shared = f'memory_bytes = 1048576\nredis = true\nredis_url = "{redis_server.url}"\n'
    one = start_gateway(semantic_toml(mock_port, cache=shared), name="node-one")
    two = start_gateway(semantic_toml(mock_port, cache=shared), name="node-two", workers=2)
    first = sem(one, QUESTION)
    assert outcome(first) == "miss"
    # node two's workers read the vector from the sync stream and the answer from the Redis tier (they ask
    # with no-store until then: a miss stores nothing that could answer instead)
    probe = (("Cache-Control", "no-store"),)
    for _ in range(4):  # each answer may come from either worker of node two
        hit = wait_for(lambda: (r := sem(two, PARAPHRASE, headers=probe)).header("x-gateway-cache") == "hit"
                       and r, 10, what="node two's semantic hit")
        assert hit.json()["id"] == first.json()["id"]
        assert float(hit.header("x-gateway-cache-similarity") or 0) >= 0.9
    # and the other way round: a vector node two stored is found on node one
    theirs = sem(two, UNRELATED)
    assert outcome(theirs) == "miss"
    back = wait_for(lambda: (r := sem(one, UNRELATED.lower() + ".", headers=probe)).header("x-gateway-cache")
                    == "hit" and r, 10, what="node one's semantic hit")
    assert back.json()["id"] == theirs.json()["id"]
    assert metric(two, "gateway_cache_semantic_synced_total") >= 1


def test_the_example_runs_as_it_is(tmp_path: Path) -> None:
    """examples/cache_semantic.toml, served as it is (on another port): the walk-through of docs/cache.md."""
    from .conftest import _launch

    text = (Path(__file__).resolve().parents[2] / "examples" / "cache_semantic.toml").read_text()
    gw = _launch("gateway-semantic-example", tmp_path, config_text=text, workers=1, frontend="native")
    try:
        def walk(content: str) -> Any:
            return sem(gw, content, model="mock-1")

        first = walk(QUESTION)
        assert outcome(first) == "miss"
        same = walk(PARAPHRASE)
        assert outcome(same) == "hit" and same.header("x-gateway-cache-similarity") == "1.0000"
        spain = walk("What is the capital city of Spain and what is it famous for?")
        assert outcome(spain) == "hit" and 0.9 <= float(spain.header("x-gateway-cache-similarity") or 0) < 1
        assert answer_of(spain) == answer_of(first)  # word overlap, not meaning: the mock's embeddings
        assert outcome(walk("Write a haiku about autumn leaves")) == "miss"
    finally:
        gw.process.stop()


def test_a_semantic_hit_streamed_to_the_openai_sdk_is_the_stored_answer(start_gateway: StartGateway,
                                                                          mock_port: int) -> None:
    import openai

    gw = start_gateway(semantic_toml(mock_port))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="unused", max_retries=0)
    first = client.chat.completions.create(model="chat-model", temperature=0,
                                           messages=[{"role": "user", "content": QUESTION}])
    stream = client.chat.completions.create(model="chat-model", temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": PARAPHRASE}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert {c.id for c in chunks} == {first.id}
    usage, stored = chunks[-1].usage, first.usage
    assert usage is not None and stored is not None and usage.total_tokens == stored.total_tokens
