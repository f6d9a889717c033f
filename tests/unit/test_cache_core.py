"""The response cache's memory tier: the compiled ``_cache`` module and its pure-Python twin ``cache_py``.

Example tests run against both implementations; the property test drives both with the same calls and
demands the same answers, and checks the byte bound after every call.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway._core import cache_py

try:
    from gateway._core import _cache
except ImportError:  # pragma: no cover - only when the extension is not built
    if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
        raise
    _cache = None  # type: ignore[assignment]

needs_compiled = pytest.mark.skipif(_cache is None, reason="gateway._core._cache is not built")
IMPLS = [pytest.param(cache_py, id="twin"), pytest.param(_cache, id="compiled", marks=needs_compiled)]
MODS = [m for m in (cache_py, _cache) if m is not None]
PROPS = settings(
    max_examples=int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
OVERHEAD = cache_py.ENTRY_OVERHEAD


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


def test_get_put_and_expiry(impl: ModuleType) -> None:
    c = impl.LRUCache(10_000)
    assert c.get(b"k", 0.0) is None
    assert c.put(b"k", b"value", 1.0, 10.0, "tag")
    assert c.get(b"k", 5.0) == (b"value", 1.0)
    assert c.size == 1 + 5 + OVERHEAD and len(c) == 1
    assert c.get(b"k", 11.0) is None  # expired at stored + ttl
    assert len(c) == 0 and c.size == 0 and c.expirations == 1


def test_least_recently_used_goes_first(impl: ModuleType) -> None:
    c = impl.LRUCache(3 * (1 + 10 + OVERHEAD))
    for k in (b"a", b"b", b"c"):
        assert c.put(k, b"x" * 10, 0.0, 100.0)
    assert c.get(b"a", 1.0) is not None  # a is now the most recent
    assert c.put(b"d", b"y" * 10, 1.0, 100.0)
    assert c.get(b"b", 2.0) is None and c.get(b"a", 2.0) is not None and c.get(b"d", 2.0) is not None
    assert c.evictions == 1


def test_too_large_and_bad_ttl_are_refused(impl: ModuleType) -> None:
    c = impl.LRUCache(1000, 100)
    assert not c.put(b"k", b"x" * 101, 0.0, 5.0)
    assert not c.put(b"k", b"x" * 10, 0.0, 0.0)
    assert not impl.LRUCache(100).put(b"k", b"x" * 10, 0.0, 5.0)  # over the whole bound with overhead
    assert c.put(b"k", b"x" * 100, 0.0, 5.0)
    assert not c.put(b"k", b"x" * 200, 0.0, 5.0)  # a refused replacement drops the old value too
    assert c.get(b"k", 1.0) is None
    with pytest.raises(ValueError):
        impl.LRUCache(-1)


def test_purge_by_tag_delete_clear_resize(impl: ModuleType) -> None:
    c = impl.LRUCache(100_000)
    for i in range(10):
        c.put(b"k%d" % i, b"v", 0.0, 50.0, ("alpha" if i % 2 else "beta", "m"))
    assert c.purge(lambda tag: tag[0] == "alpha") == 5
    assert len(c) == 5 and all(c.get(b"k%d" % i, 1.0) is None for i in range(1, 10, 2))
    assert c.delete(b"k0") and not c.delete(b"k0")
    c.resize(2 * (2 + 1 + OVERHEAD), 0, 2.0)
    assert len(c) == 2 and c.size <= c.max_bytes
    c.clear()
    assert len(c) == 0 and c.size == 0 and c.get(b"k2", 3.0) is None


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from([b"a", b"b", b"c", b"d", b"e"]),
                  st.integers(0, 400), st.floats(0.0, 5.0), st.floats(0.0, 20.0)),
        st.tuples(st.just("get"), st.sampled_from([b"a", b"b", b"c", b"d", b"e"]), st.floats(0.0, 5.0)),
        st.tuples(st.just("delete"), st.sampled_from([b"a", b"b", b"c"])),
        st.tuples(st.just("purge"), st.integers(0, 3)),
    ),
    max_size=60,
)


@PROPS
@given(ops=_ops, bound=st.integers(0, 1500), entry=st.integers(0, 300))
def test_both_implementations_agree_and_stay_bounded(ops: list[tuple[Any, ...]], bound: int, entry: int) -> None:
    caches = [m.LRUCache(bound, entry) for m in MODS]
    now = 0.0
    for op in ops:
        answers = []
        for c in caches:
            if op[0] == "put":
                _, key, n, dt, ttl = op
                answers.append(c.put(key, b"v" * n, now + dt, ttl, n % 4))
            elif op[0] == "get":
                answers.append(c.get(op[1], now + op[2]))
            elif op[0] == "delete":
                answers.append(c.delete(op[1]))
            else:
                answers.append(c.purge(lambda tag, t=op[1]: tag == t))
            assert c.size <= bound
        if op[0] in ("put", "get"):
            now += op[3] if op[0] == "put" else op[2]
        assert all(a == answers[0] for a in answers), (op, answers)
        assert len({(len(c), c.size, c.evictions, c.expirations) for c in caches}) == 1
