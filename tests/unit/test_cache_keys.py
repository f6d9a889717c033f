"""Cache keys: the same request written differently gives the same key; any answer-changing field
changed gives another; the namespace (tenant, key, global) and the dialect, endpoint and model are part
of it."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cache.keys import IGNORED_FIELDS, KeyParts, cache_key, canonical, is_deterministic, namespace
from gateway.cache.keys import request_form as form
from gateway.errors import BadRequest

PROPS = settings(
    max_examples=int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PARTS = KeyParts("t:alpha", "openai_chat", "chat", "gpt")

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=8),
                     st.floats(allow_nan=False, allow_infinity=False, width=64))
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
_requests = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda k: k not in IGNORED_FIELDS), _json, min_size=1, max_size=6
)


def _shuffled(value: Any, draw: Any) -> Any:
    """The same JSON value with its objects' keys in another order."""
    if isinstance(value, dict):
        keys = draw(st.permutations(list(value)))
        return {k: _shuffled(value[k], draw) for k in keys}
    if isinstance(value, list):
        return [_shuffled(v, draw) for v in value]
    return value


def _number_text(v: Any, draw: Any) -> str:
    """A JSON text of a number in another written form (1 -> 1.0 or 1e0; 0.5 -> 5e-1; -0.0 -> -0)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return json.dumps(v)
    if isinstance(v, int):
        return draw(st.sampled_from([str(v), f"{v}.0", f"{v}e0", f"{v}.00"]))
    if v == int(v) and abs(v) < 1e15:
        return draw(st.sampled_from([repr(v), str(int(v)), f"{int(v)}e0"]))
    return repr(v)


def _write(value: Any, draw: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} : {_write(v, draw)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_write(v, draw) for v in value) + "]"
    if isinstance(value, str):
        return draw(st.sampled_from([json.dumps(value), json.dumps(value, ensure_ascii=False)]))
    return _number_text(value, draw)


@PROPS
@given(req=_requests, data=st.data())
def test_the_same_request_written_differently_has_the_same_key(req: dict[str, Any], data: Any) -> None:
    plain = json.dumps(req).encode()
    other = _write(_shuffled(req, data.draw), data.draw)
    extra = data.draw(st.dictionaries(st.sampled_from(IGNORED_FIELDS), _json, max_size=4))
    if extra:  # the fields that never change the answer
        other = other[:-1] + ("," if req else "") + ",".join(
            f"{json.dumps(k)}:{json.dumps(v)}" for k, v in extra.items()) + "}"
    assert cache_key(PARTS, form(plain)) == cache_key(PARTS, form(other.encode()))


@PROPS
@given(req=_requests, data=st.data())
def test_any_relevant_field_changed_gives_another_key(req: dict[str, Any], data: Any) -> None:
    name = data.draw(st.sampled_from(sorted(req)))
    new = data.draw(_json)
    if canonical(json.dumps({"v": new}).encode()) == canonical(json.dumps({"v": req[name]}).encode()):
        return  # the same value in canonical form (1 and 1.0): no change
    changed = {**req, name: new}
    assert cache_key(PARTS, form(json.dumps(req).encode())) != cache_key(
        PARTS, form(json.dumps(changed).encode()))


def test_numbers_in_one_form() -> None:
    assert canonical(b'{"t": 1.0, "u": 1e0, "v": -0.0, "w": 0.70, "x": 1E400}') == canonical(
        b'{"x": 1e+400, "w": 0.7, "v": 0, "u": 1, "t": 1}')
    assert canonical(b'{"a": "\\u0041"}') == canonical(b'{"a": "A"}')
    assert canonical(b'{"a": 1.5}') != canonical(b'{"a": 1.25}')


def test_ignored_fields_and_refusals() -> None:
    base = b'{"model": "m", "messages": []}'
    noisy = b'{"model": "m", "messages": [], "user": "u", "stream": true, "stream_options": {}, "metadata": {}}'
    assert canonical(base) == canonical(noisy)
    with pytest.raises(BadRequest):
        canonical(b"[1, 2]")
    with pytest.raises(BadRequest):
        canonical(b"{not json")


def test_namespace_dialect_endpoint_and_model_change_the_key() -> None:
    f = form(b'{"messages": [{"role": "user", "content": "hi"}]}')
    keys = {
        cache_key(KeyParts(namespace("tenant", "alpha", "k1"), "openai_chat", "chat", "m"), f),
        cache_key(KeyParts(namespace("tenant", "beta", "k1"), "openai_chat", "chat", "m"), f),
        cache_key(KeyParts(namespace("key", "alpha", "k1"), "openai_chat", "chat", "m"), f),
        cache_key(KeyParts(namespace("key", "alpha", "k2"), "openai_chat", "chat", "m"), f),
        cache_key(KeyParts(namespace("global", "alpha", "k1"), "openai_chat", "chat", "m"), f),
        cache_key(KeyParts(namespace("tenant", "alpha", "k1"), "anthropic_messages", "chat", "m"), f),
        cache_key(KeyParts(namespace("tenant", "alpha", "k1"), "openai_chat", "completions", "m"), f),
        cache_key(KeyParts(namespace("tenant", "alpha", "k1"), "openai_chat", "chat", "m2"), f),
    }
    assert len(keys) == 8
    assert namespace("global", "alpha", "k") == namespace("global", "beta", "j")
    # length-prefixed parts: a tenant cannot spell another tenant's namespace plus a dialect
    a = cache_key(KeyParts("t:a", "b\x00c", "chat", "m"), f)
    b = cache_key(KeyParts("t:a\x00b", "c", "chat", "m"), f)
    assert a != b


def test_deterministic() -> None:
    assert is_deterministic(form(b'{"temperature": 0.0}'))
    assert is_deterministic(form(b'{"temperature": 0.8, "seed": 3}'))
    assert not is_deterministic(form(b'{"temperature": 0.2}'))
    assert not is_deterministic(form(b'{}'))
