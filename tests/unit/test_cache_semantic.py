"""The semantic tier's parts without a server: the index (cosine, partitions, bound, TTL, purge), what is
embedded and what must match, the configuration's checks, and the mock's bag-of-words embeddings."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.cache.config import CacheConfig, ModelCacheConfig, SemanticPolicy
from gateway.cache.keys import request_form
from gateway.cache.semantic import SyncRecord, _unit, partition_of, prompt_text
from gateway.cache.semantic_index import SemanticIndex
from gateway.config.loader import ConfigError, load_config, load_config_text
from gateway.providers.mock import _embedding

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
P1 = b"p" * 32
P2 = b"q" * 32
TAG = ("alpha", "key-a", "m")


def vec(*values: float) -> np.ndarray[Any, Any]:
    v = _unit(list(values))
    assert v is not None
    return v


def key(i: int) -> bytes:
    return i.to_bytes(32, "big")


# -- the index ------------------------------------------------------------------------------------------


def test_search_returns_the_most_similar_row_with_its_cosine() -> None:
    index = SemanticIndex()
    index.add(P1, key(1), vec(1, 0, 0), 100.0, TAG, "m", 10)
    index.add(P1, key(2), vec(1, 1, 0), 100.0, TAG, "m", 10)
    found = index.search(P1, vec(1, 0.1, 0), 0.0)
    assert found is not None and found[0] == key(1) and found[1] == TAG
    assert found[2] == pytest.approx(1 / math.sqrt(1.01), abs=1e-6)
    assert index.search(P1, vec(0, 1, 0), 0.0)[0] == key(2)  # type: ignore[index]


def test_a_partition_never_answers_another() -> None:
    index = SemanticIndex()
    index.add(P1, key(1), vec(1, 0), 100.0, TAG, "m", 10)
    assert index.search(P2, vec(1, 0), 0.0) is None
    index.add(P2, key(2), vec(0, 1), 100.0, ("beta", None, "m"), "m", 10)
    found = index.search(P2, vec(1, 0), 0.0)  # the only row of P2, however far
    assert found is not None and found[0] == key(2) and found[2] == pytest.approx(0.0, abs=1e-6)


def test_expired_rows_never_answer_and_are_removed() -> None:
    index = SemanticIndex()
    index.add(P1, key(1), vec(1, 0), 10.0, TAG, "m", 10)
    index.add(P1, key(2), vec(0.9, 0.1), 20.0, TAG, "m", 10)
    assert index.search(P1, vec(1, 0), 5.0)[0] == key(1)  # type: ignore[index]
    assert index.search(P1, vec(1, 0), 10.0)[0] == key(2)  # type: ignore[index]
    assert len(index) == 1
    assert index.search(P1, vec(1, 0), 20.0) is None and len(index) == 0
    index.add(P1, key(3), vec(1, 0), 10.0, TAG, "m", 10)
    assert index.expire(11.0) == 1 and len(index) == 0 and index.nbytes == 0


def test_the_bound_drops_the_oldest_rows_of_the_group() -> None:
    index = SemanticIndex()
    for i in range(5):
        index.add(P1 if i % 2 else P2, key(i), vec(1, i), 100.0, TAG, "m", 3)
    index.add(P1, key(99), vec(1, 0), 100.0, TAG, "other", 3)  # another group: its own bound
    assert len(index) == 4 and index.evictions == 2
    kept = {index.search(p, vec(1, i), 0.0)[0] for p in (P1, P2) for i in range(5)}  # type: ignore[index]
    assert key(0) not in kept and key(1) not in kept and {key(2), key(3), key(4)} <= kept | {key(99)}
    # the same entry again refreshes it (now the newest) without growing
    index.add(P2, key(2), vec(1, 2), 200.0, TAG, "m", 3)
    index.add(P1, key(5), vec(1, 5), 100.0, TAG, "m", 3)
    assert len(index) == 4
    assert index.search(P2, vec(1, 2), 150.0)[0] == key(2)  # type: ignore[index]


def test_removal_keeps_every_other_row_findable() -> None:
    rng = random.Random(7)
    index = SemanticIndex()
    rows = {key(i): vec(*(rng.uniform(-1, 1) for _ in range(8))) for i in range(200)}
    for k, v in rows.items():
        index.add(P1, k, v, 100.0, TAG, "m", 1000)
    for k in rng.sample(sorted(rows), 120):
        assert index.remove(k)
        del rows[k]
    assert not index.remove(b"x" * 32)
    for k, v in rows.items():
        found = index.search(P1, v, 0.0)
        assert found is not None and found[0] == k and found[2] == pytest.approx(1.0, abs=1e-5)


def test_a_vector_of_another_size_replaces_the_partition() -> None:
    index = SemanticIndex()
    index.add(P1, key(1), vec(1, 0), 100.0, TAG, "m", 10)
    index.add(P1, key(2), vec(1, 0, 0), 100.0, TAG, "m", 10)
    assert len(index) == 1 and index.search(P1, vec(1, 0), 0.0) is None
    assert index.search(P1, vec(1, 0, 0), 0.0)[0] == key(2)  # type: ignore[index]


def test_purge_by_tag() -> None:
    index = SemanticIndex()
    index.add(P1, key(1), vec(1, 0), 100.0, ("alpha", "a", "m"), "m", 10)
    index.add(P1, key(2), vec(0, 1), 100.0, ("beta", "b", "m"), "m", 10)
    assert index.purge(lambda tag: tag[0] == "alpha") == 1
    found = index.search(P1, vec(1, 0), 0.0)
    assert found is not None and found[0] == key(2)


def test_nbytes_grows_with_rows() -> None:
    index = SemanticIndex()
    empty = index.nbytes
    for i in range(100):
        index.add(P1, key(i), vec(*([1.0] * 64)), 100.0, TAG, "m", 1000)
    assert index.nbytes >= 100 * 64 * 4 > empty


# -- what is embedded, and what must match ----------------------------------------------------------------


POLICY = SemanticPolicy(embeddings_model="e")


def form(**fields: Any) -> dict[str, Any]:
    import json

    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "temperature": 0,
            **fields}
    return request_form(json.dumps(body).encode())


def test_the_prompt_text_is_every_message_role_and_text() -> None:
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]
    assert prompt_text(form(messages=messages), POLICY) == ("system: be brief\nuser: one\ntwo", None)


@pytest.mark.parametrize(("fields", "reason"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]}, "tools"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "1"}]}, "tools"),
    ({"temperature": 0.2}, "temperature"),
    ({"temperature": None}, "temperature"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "content"),
    ({"messages": [{"role": "user", "content": "x" * 9000}]}, "too_long"),
])
def test_requests_not_looked_up(fields: dict[str, Any], reason: str) -> None:
    assert prompt_text(form(**fields), POLICY) == (None, reason)


def test_no_temperature_is_openais_default_one() -> None:
    f = form()
    del f["temperature"]
    assert prompt_text(f, POLICY)[1] == "temperature"
    assert prompt_text(f, SemanticPolicy(embeddings_model="e", max_temperature=1.0))[0] == "user: hello there"


def test_the_partition_is_everything_but_the_messages() -> None:
    base = partition_of("t:alpha", "m", POLICY, form())
    assert partition_of("t:alpha", "m", POLICY, form(messages=[{"role": "user", "content": "bye"}])) == base
    assert partition_of("t:alpha", "m", POLICY, form(user="someone", stream=True)) == base  # ignored fields
    assert partition_of("t:beta", "m", POLICY, form()) != base
    assert partition_of("t:alpha", "m2", POLICY, form()) != base
    assert partition_of("t:alpha", "m", SemanticPolicy(embeddings_model="f"), form()) != base
    assert partition_of("t:alpha", "m", POLICY, form(max_tokens=5)) != base
    assert partition_of("t:alpha", "m", POLICY, form(response_format={"type": "json_object"})) != base


def test_a_sync_record_round_trips() -> None:
    import msgspec

    v = vec(1, 2, 3)
    r = SyncRecord(P1, key(1), 12.5, v.astype("<f4").tobytes(), "alpha", None, "m", "w1")
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(r), type=SyncRecord)
    assert back == r and np.array_equal(np.frombuffer(back.vector, dtype="<f4"), v)


# -- configuration ------------------------------------------------------------------------------------------


BASE = """
[providers.mock]
type = "mock"

[models.chat]
provider = "mock"

[models.embed]
provider = "mock"
endpoints = ["embeddings"]

[cache]
enabled = true
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gateway.toml")
    return info.value.errors


def test_the_policy_resolves_per_model() -> None:
    c = load_config_text(BASE + '\n[cache.default.semantic]\nembeddings_model = "embed"\n'
                         '\n[cache.models.chat]\nttl = 5.0\n', "gateway.toml").cache
    policy = c.policy("chat")
    assert policy is not None and policy.semantic is not None and policy.semantic.threshold == 0.95
    off = load_config_text(BASE + '\n[cache.default.semantic]\nembeddings_model = "embed"\n'
                           '\n[cache.models.chat]\nsemantic = { enabled = false }\n', "gateway.toml").cache
    assert off.policy("chat").semantic is None  # type: ignore[union-attr]
    assert CacheConfig(enabled=True).policy("chat").semantic is None  # type: ignore[union-attr]
    own = ModelCacheConfig(semantic=SemanticPolicy(embeddings_model="x", threshold=0.8))
    assert own.over(c.default).semantic == SemanticPolicy(embeddings_model="x", threshold=0.8)


@pytest.mark.parametrize(("table", "expected"), [
    ('threshold = 1.5\nembeddings_model = "embed"',
     "gateway.toml:16: cache.models.chat.semantic.threshold: must be a cosine similarity above 0 and at most 1, "
     "found 1.5"),
    ('embeddings_model = "nope"',
     "gateway.toml:16: cache.models.chat.semantic.embeddings_model: names a model that is not configured: "
     "'nope'"),
    ('embeddings_model = "chat"',
     "gateway.toml:16: cache.models.chat.semantic.embeddings_model: model 'chat' does not serve the "
     "embeddings endpoint (its endpoints: chat, completions)"),
    ("threshold = 0.9", "gateway.toml:15: cache.models.chat.semantic.embeddings_model: is required: the model "
     "that embeds prompts (embeddings endpoint)"),
    ('embeddings_model = "embed"\ntimeout = 0', "gateway.toml:17: cache.models.chat.semantic.timeout: must "
     "be a positive number of seconds, found 0.0"),
    ('embeddings_model = "embed"\nmax_entries = 0', "gateway.toml:17: cache.models.chat.semantic.max_entries: "
     "must be a positive number of entries, found 0"),
    ('embeddings_model = "embed"\nthreshhold = 0.9', "gateway.toml:17: cache.models.chat.semantic.threshhold: "
     'unknown key (did you mean "threshold"?)'),
])
def test_bad_semantic_tables_are_reported_with_their_line(table: str, expected: str) -> None:
    errors = errors_of(BASE + "\n[cache.models.chat.semantic]\n" + table + "\n")
    assert errors == [expected]


def test_the_example_loads() -> None:
    config = load_config(EXAMPLES / "cache_semantic.toml")
    policy = config.cache.policy("mock-1")
    assert policy is not None and policy.semantic is not None
    assert policy.semantic.embeddings_model == "mock-embed-1" and policy.semantic.threshold == 0.9


# -- the mock's embeddings: similarity tracks shared words ----------------------------------------------------


def cosine(a: str, b: str, dims: int = 256) -> float:
    va, _ = _embedding(a, dims)
    vb, _ = _embedding(b, dims)
    return math.fsum(x * y for x, y in zip(va, vb, strict=True))


def test_mock_embeddings_track_word_overlap() -> None:
    base = "the quick brown fox jumps over the lazy dog near the river bank"
    assert cosine(base, base.upper().replace(" ", ", ")) == pytest.approx(1.0, abs=1e-5)
    one = cosine(base, base.replace("river", "lake"))
    three = cosine(base, base.replace("river", "lake").replace("quick", "slow").replace("lazy", "old"))
    unrelated = cosine(base, "please summarise this quarterly report in five bullet points")
    assert 1.0 > one > three > unrelated
    assert one > 0.9 and abs(unrelated) < 0.3
    tokens, _ = _embedding([1, 2, 3], 16)
    assert math.isclose(math.fsum(x * x for x in tokens), 1.0, rel_tol=1e-5)
    assert _embedding("!!!", 16) != _embedding("???", 16)  # no words: the bytes' own direction


# -- the benchmark's harness (never its figures) --------------------------------------------------------------


def test_the_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import cache_semantic

    rows = cache_semantic.recall()
    assert [r["threshold"] for r in rows] == list(cache_semantic.THRESHOLDS)
    assert all(0 <= r["recall"] <= 1 for r in rows)
    assert rows[0]["recall"] >= rows[-1]["recall"]  # a lower threshold never finds fewer
    assert cache_semantic.main(["--sizes", "50", "--dims", "8", "--searches", "20"]) == 0
    out = capsys.readouterr().out
    assert "recall" in out and "lookup latency" in out


def test_the_admin_stats_count_semantic_hits(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cache import admin
    from gateway.observe import metrics

    totals = {("gateway_cache_requests_total", ("hit", "memory")): 3.0,
              ("gateway_cache_requests_total", ("hit", "semantic")): 2.0,
              ("gateway_cache_requests_total", ("miss", "")): 5.0}
    monkeypatch.setattr(metrics, "read_node_totals", lambda directory: totals)
    view = admin.node_stats("/nowhere", True)
    assert view.hits_semantic == 2 and view.hits_memory == 3 and view.hit_ratio == 0.5
