"""Deployment selection: the compiled ``_route`` module and its pure-Python twin ``route_py``.

Example tests run against both implementations; the property tests drive both with the same call
sequences and demand the same outputs, and check the strategies' promises (ring movement, exact
smooth-weighted-round-robin cycles, split shares).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway._core
from gateway._core import route_py

try:
    from gateway._core import _route
except ImportError:  # pragma: no cover - only when the extension is not built
    if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
        raise
    _route = None  # type: ignore[assignment]

needs_compiled = pytest.mark.skipif(_route is None, reason="gateway._core._route is not built")

IMPLS = [
    pytest.param(route_py, id="twin"),
    pytest.param(_route, id="compiled", marks=needs_compiled),
]
MODS = [m for m in (route_py, _route) if m is not None]

# GATEWAY_PROPERTY_EXAMPLES=5000 for a deeper run
PROPS = settings(
    max_examples=int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ALL = route_py.ALL


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


def bits(*indexes: int) -> int:
    m = 0
    for i in indexes:
        m |= 1 << i
    return m


def on(mask: int, i: int) -> bool:
    return bool((mask >> i) & 1)


def names_of(n: int, prefix: str = "deployment") -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def outcome(fn: Callable[[], Any]) -> Any:
    """What a call returned, or the type of what it raised (to compare implementations)."""
    try:
        return fn()
    except (ValueError, TypeError, IndexError, OverflowError) as exc:
        return type(exc)


# deployment counts: mostly small, sometimes past one 64-bit word of mask
deployment_counts = st.sampled_from([*range(11), 64, 65, 70])


def masks(n: int) -> st.SearchStrategy[int]:
    """Eligibility masks for ``n`` deployments: plain, ``ALL``, complements and stray high bits."""
    plain = st.integers(0, (1 << n) - 1) if n else st.just(0)
    return st.one_of(
        plain,
        st.just(ALL),
        plain.map(lambda m: ~m),
        plain.map(lambda m: m | (1 << (n + 3))),
    )


# ---------------------------------------------------------------------------------------------------------
# hash64

M64 = 0xFFFFFFFFFFFFFFFF


def reference_hash64(data: bytes) -> int:
    """FNV-1a 64 then splitmix64's finaliser, written out from the published constants."""
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) % 2**64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) % 2**64
    return h ^ (h >> 31)


def test_hash64_pinned_values(impl: ModuleType) -> None:
    # pinned: the ring's placement must not change between releases, or every sticky key moves
    assert impl.hash64(b"") == 0xF52A15E9A9B5E89B
    assert impl.hash64(b"a") == 0x02C0BDBF481420F8
    assert impl.hash64("a") == impl.hash64(b"a")
    assert impl.hash64("é") == impl.hash64("é".encode())
    assert impl.hash64("user-42") == reference_hash64(b"user-42")
    assert type(impl.hash64(b"x")) is int


def test_hash64_rejects_other_types(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.hash64(42)
    with pytest.raises(TypeError):
        impl.hash64(bytearray(b"x"))
    with pytest.raises(UnicodeEncodeError):
        impl.hash64("\udcff")


@PROPS
@given(data=st.one_of(st.binary(max_size=64), st.text(max_size=32)))
def test_prop_hash64_matches_reference(data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    expected = reference_hash64(raw)
    for mod in MODS:
        assert mod.hash64(data) == expected
        assert 0 <= mod.hash64(data) <= M64


# ---------------------------------------------------------------------------------------------------------
# HashRing

KEYS = [f"user-{k}".encode() for k in range(10_000)]


def owners(ring: Any, keys: list[bytes], eligible: int = ALL) -> list[str | None]:
    out: list[str | None] = []
    for k in keys:
        i = ring.pick(k, eligible)
        out.append(None if i < 0 else ring.names[i])
    return out


def test_ring_basics(impl: ModuleType) -> None:
    ring = impl.HashRing(["a", "b", "c"])
    assert ring.n == 3
    assert ring.names == ("a", "b", "c")
    assert ring.points == 3 * 160
    assert impl.HashRing(["a", "b"], [1, 3], vnodes=10).points == 40
    got = ring.pick(b"session-1")
    assert 0 <= got < 3
    assert ring.pick(b"session-1") == got == ring.pick("session-1")
    assert impl.HashRing(["a", "b", "c"]).pick(b"session-1") == got  # no state, no salt
    assert ring.pick(b"session-1", ALL & ~bits(got)) not in (got, -1)
    assert ring.pick(b"session-1", bits(got)) == got
    assert ring.pick(b"session-1", 0) == -1
    assert ring.pick(b"session-1", bits(5)) == -1  # bits past n are ignored
    assert impl.HashRing([]).pick(b"k") == -1
    assert impl.HashRing([]).points == 0


def test_ring_spreads_over_all_deployments(impl: ModuleType) -> None:
    ring = impl.HashRing(names_of(8))
    counts = Counter(ring.pick(k) for k in KEYS)
    assert sorted(counts) == list(range(8))
    for i in range(8):
        assert 0.75 < counts[i] / (len(KEYS) / 8) < 1.25, counts


def test_ring_shares_follow_weights(impl: ModuleType) -> None:
    weights = [1, 2, 3, 4]
    ring = impl.HashRing(names_of(4), weights)
    counts = Counter(ring.pick(k) for k in KEYS)
    for i, w in enumerate(weights):
        expected = len(KEYS) * w / sum(weights)
        assert 0.75 < counts[i] / expected < 1.25, counts


@pytest.mark.parametrize("n", [5, 6, 7, 8, 9, 10])
def test_ring_removing_one_moves_about_one_nth(impl: ModuleType, n: int) -> None:
    names = names_of(n)
    before = owners(impl.HashRing(names), KEYS)
    for gone in (0, n // 2, n - 1):
        after = owners(impl.HashRing(names[:gone] + names[gone + 1:]), KEYS)
        moved = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert all(before[i] == names[gone] for i in moved)  # only the removed deployment's keys move
        assert len(moved) == before.count(names[gone])
        assert 0.6 / n < len(moved) / len(KEYS) < 1.4 / n


@pytest.mark.parametrize("n", [5, 6, 7, 8, 9, 10])
def test_ring_adding_one_moves_about_one_nth(impl: ModuleType, n: int) -> None:
    names = names_of(n + 1)
    before = owners(impl.HashRing(names[:n]), KEYS)
    after = owners(impl.HashRing(names), KEYS)
    moved = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert all(after[i] == names[n] for i in moved)  # keys move only to the new deployment
    assert 0.6 / (n + 1) < len(moved) / len(KEYS) < 1.4 / (n + 1)


def test_ring_ineligible_is_the_same_as_removed(impl: ModuleType) -> None:
    names = names_of(7)
    full = impl.HashRing(names)
    for gone in range(7):
        without = impl.HashRing(names[:gone] + names[gone + 1:])
        assert owners(full, KEYS[:2000], ALL & ~bits(gone)) == owners(without, KEYS[:2000])


def test_ring_does_not_depend_on_the_order_of_names(impl: ModuleType) -> None:
    names = names_of(6)
    shuffled = [names[i] for i in (3, 0, 5, 1, 4, 2)]
    assert owners(impl.HashRing(names), KEYS[:2000]) == owners(impl.HashRing(shuffled), KEYS[:2000])


def test_ring_more_than_64_deployments(impl: ModuleType) -> None:
    ring = impl.HashRing(names_of(100), vnodes=8)
    picks = {ring.pick(k) for k in KEYS[:3000]}
    assert len(picks) > 90
    for k in KEYS[:200]:
        assert ring.pick(k, bits(99)) == 99
        assert ring.pick(k, bits(70, 3)) in (70, 3)
        assert ring.pick(k, ALL & ~bits(ring.pick(k))) not in (-1, ring.pick(k))


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((["a", "a"],), ValueError),
        ((["a", "b"], [1]), ValueError),
        ((["a"], [0]), ValueError),
        ((["a"], [-1]), ValueError),
        ((["a"], [1.5]), TypeError),
        ((["a"], None, 0), ValueError),
        ((["a", "b"], [4000, 4000]), ValueError),  # too many points
        (([1, 2],), TypeError),
    ],
)
def test_ring_rejects_bad_configuration(impl: ModuleType, args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        impl.HashRing(*args)


def test_ring_rejects_bad_keys_and_masks(impl: ModuleType) -> None:
    ring = impl.HashRing(["a"])
    with pytest.raises(TypeError):
        ring.pick(1)
    with pytest.raises(TypeError):
        ring.pick(b"k", 1.0)
    with pytest.raises(TypeError):
        ring.pick(b"k", {0})


ring_names = st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=8, unique=True)


@PROPS
@given(names=ring_names, weights_seed=st.lists(st.integers(1, 3), min_size=8, max_size=8),
       gone=st.integers(0, 7), prefix=st.text(max_size=4), mask=masks(8))
def test_prop_ring_moves_only_the_changed_deployment(
    names: list[str], weights_seed: list[int], gone: int, prefix: str, mask: int
) -> None:
    gone %= len(names)
    weights = weights_seed[:len(names)]
    keys = [f"{prefix}{k}".encode() for k in range(300)]
    rest_names = names[:gone] + names[gone + 1:]
    rest_weights = weights[:gone] + weights[gone + 1:]
    results = []
    for mod in MODS:
        full = mod.HashRing(names, weights, vnodes=40)
        rest = mod.HashRing(rest_names, rest_weights, vnodes=40)
        before, after = owners(full, keys), owners(rest, keys)
        for a, b in zip(before, after, strict=True):
            assert a == b or a == names[gone]
            assert b != names[gone]
        assert owners(full, keys, ALL & ~bits(gone)) == after
        masked = owners(full, keys, mask)
        allowed = {names[i] for i in range(len(names)) if on(mask, i)}
        assert all(o in allowed for o in masked) if allowed else all(o is None for o in masked)
        results.append((before, after, masked))
    assert all(r == results[0] for r in results)


# ---------------------------------------------------------------------------------------------------------
# SmoothWeighted


def test_swrr_is_smooth(impl: ModuleType) -> None:
    rr = impl.SmoothWeighted([5, 1, 1])
    assert rr.n == 3
    assert [rr.pick() for _ in range(14)] == [0, 0, 1, 0, 2, 0, 0] * 2  # nginx's example: a a b a c a a


def test_swrr_equal_weights_is_round_robin(impl: ModuleType) -> None:
    rr = impl.SmoothWeighted([2, 2, 2])
    assert [rr.pick(ALL) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_swrr_skips_ineligible(impl: ModuleType) -> None:
    rr = impl.SmoothWeighted([5, 1, 1])
    assert [rr.pick(bits(1, 2)) for _ in range(4)] == [1, 2, 1, 2]
    assert rr.pick(0) == -1
    assert rr.pick(bits(3)) == -1
    rr = impl.SmoothWeighted([3, 1, 2])
    assert Counter(rr.pick(ALL & ~bits(1)) for _ in range(50)) == {0: 30, 2: 20}
    assert impl.SmoothWeighted([]).pick() == -1


def test_swrr_reset(impl: ModuleType) -> None:
    rr = impl.SmoothWeighted([5, 1, 1])
    first = [rr.pick() for _ in range(3)]
    rr.reset()
    assert [rr.pick() for _ in range(3)] == first


@pytest.mark.parametrize(("weights", "error"), [([0], ValueError), ([1, -2], ValueError),
                                                ([1 << 31], ValueError), ([1.0], TypeError)])
def test_swrr_rejects_bad_weights(impl: ModuleType, weights: list[Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        impl.SmoothWeighted(weights)


def test_swrr_more_than_64_deployments(impl: ModuleType) -> None:
    weights = [1 + i % 3 for i in range(80)]
    rr = impl.SmoothWeighted(weights)
    assert Counter(rr.pick() for _ in range(sum(weights))) == dict(enumerate(weights))
    assert {rr.pick(bits(70, 75)) for _ in range(10)} == {70, 75}


swrr_weights = st.lists(st.integers(1, 20), min_size=1, max_size=8)


@PROPS
@given(weights=swrr_weights, data=st.data())
def test_prop_swrr_exact_counts_per_cycle(weights: list[int], data: Any) -> None:
    n = len(weights)
    mask = data.draw(masks(n), label="mask")
    eligible = [i for i in range(n) if on(mask, i)]
    cycle = sum(weights[i] for i in eligible)
    cycles = data.draw(st.integers(1, 3), label="cycles")
    sequences = []
    for mod in MODS:
        rr = mod.SmoothWeighted(weights)
        seq = [rr.pick(mask) for _ in range(max(cycle, 1) * cycles)]
        sequences.append(seq)
    assert all(s == sequences[0] for s in sequences)
    seq = sequences[0]
    if not eligible:
        assert set(seq) == {-1}
        return
    for c in range(cycles):
        part = seq[c * cycle:(c + 1) * cycle]
        assert Counter(part) == {i: weights[i] for i in eligible}
    # smooth: every prefix stays close to its fair share (a plain weighted round robin would not)
    counts: Counter[int] = Counter()
    for t, i in enumerate(seq, 1):
        counts[i] += 1
        for j in eligible:
            assert abs(counts[j] - t * weights[j] / cycle) <= max(1, len(eligible) - 1)


@PROPS
@given(weights=st.lists(st.integers(1, 50), min_size=0, max_size=70), data=st.data())
def test_prop_swrr_same_picks_with_changing_masks(weights: list[int], data: Any) -> None:
    n = len(weights)
    calls = data.draw(st.lists(st.one_of(masks(n), st.just("reset")), max_size=60), label="calls")
    runs = []
    for mod in MODS:
        rr = mod.SmoothWeighted(weights)
        out = []
        for call in calls:
            if call == "reset":
                rr.reset()
                continue
            got = rr.pick(call)
            assert got == -1 if not any(on(call, i) for i in range(n)) else on(call, got)
            out.append(got)
        runs.append(out)
    assert all(r == runs[0] for r in runs)


# ---------------------------------------------------------------------------------------------------------
# LeastLatency


def test_latency_tries_unobserved_first(impl: ModuleType) -> None:
    lat = impl.LeastLatency(3, alpha=0.5, explore=0.0)
    assert (lat.n, lat.alpha, lat.explore, lat.ttfb_weight) == (3, 0.5, 0.0, 0.5)
    assert [lat.pick(ALL, r) for r in (0.0, 0.34, 0.99)] == [0, 1, 2]  # spread by r
    lat.observe(0, 0.1, 0.2)
    assert [lat.pick(ALL, r) for r in (0.0, 0.49, 0.5, 0.99)] == [1, 1, 2, 2]
    lat.observe(1, 5.0, 5.0)
    assert lat.pick(ALL, 0.7) == 2
    assert lat.pick(bits(0, 1), 0.7) == 0
    lat.observe(2, 1.0, 1.0)
    assert lat.pick(ALL, 0.7) == 0
    assert lat.observed(2)
    lat.reset(2)
    assert not lat.observed(2)
    assert lat.score(2) == lat.ttfb(2) == lat.total(2) == -1.0
    assert lat.pick(ALL, 0.7) == 2


def test_latency_ewma(impl: ModuleType) -> None:
    lat = impl.LeastLatency(2, alpha=0.5, explore=0.0, ttfb_weight=0.25)
    assert lat.score(0) == -1.0
    lat.observe(0, 1.0, 3.0)  # the first observation is taken as is
    assert (lat.ttfb(0), lat.total(0), lat.score(0)) == (1.0, 3.0, 0.25 * 1.0 + 0.75 * 3.0)
    lat.observe(0, 3.0, 5.0)
    assert (lat.ttfb(0), lat.total(0)) == (2.0, 4.0)
    assert lat.score(0) == 0.25 * 2.0 + 0.75 * 4.0
    assert type(lat.score(0)) is float


def test_latency_picks_lowest_score_and_explores(impl: ModuleType) -> None:
    lat = impl.LeastLatency(3, alpha=1.0, explore=0.1)
    for i, t in enumerate((2.0, 1.0, 3.0)):
        lat.observe(i, t, t)
    assert lat.pick(ALL, 0.5) == 1
    assert lat.pick(ALL, 0.1) == 1  # r == explore does not explore
    assert lat.pick(ALL, 0.0) == 0  # explore: the others in order, chosen by r / explore
    assert lat.pick(ALL, 0.09) == 2
    assert lat.pick(bits(1, 2), 0.01) == 2
    assert lat.pick(bits(1), 0.01) == 1  # nothing else to explore
    assert lat.pick(0, 0.5) == -1
    # a slow deployment that recovers is measured again through exploration and wins back its traffic
    lat = impl.LeastLatency(2, alpha=0.5, explore=0.1)
    lat.observe(0, 10.0, 10.0)
    lat.observe(1, 1.0, 1.0)
    rs = [k / 1000 for k in range(1000)]
    picks = [lat.pick(ALL, r) for r in rs]
    assert picks.count(0) == 100
    for _ in range(8):
        lat.observe(0, 0.1, 0.1)
    assert lat.pick(ALL, 0.5) == 0


def test_latency_ties_go_to_the_lower_index(impl: ModuleType) -> None:
    lat = impl.LeastLatency(3, explore=0.0)
    for i in (2, 1, 0):
        lat.observe(i, 1.0, 1.0)
    assert lat.pick(ALL, 0.3) == 0
    assert lat.pick(bits(1, 2), 0.3) == 1


def test_latency_more_than_64_deployments(impl: ModuleType) -> None:
    lat = impl.LeastLatency(70, explore=0.0)
    for i in range(70):
        lat.observe(i, 1.0 + i, 1.0 + i)
    assert lat.pick(ALL, 0.5) == 0
    assert lat.pick(bits(68, 69), 0.5) == 68


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"n": -1}, ValueError), ({"n": 2, "alpha": 0.0}, ValueError), ({"n": 2, "alpha": 1.5}, ValueError),
     ({"n": 2, "explore": -0.1}, ValueError), ({"n": 2, "explore": 1.1}, ValueError),
     ({"n": 2, "ttfb_weight": 2.0}, ValueError), ({"n": 2, "alpha": math.nan}, ValueError)],
)
def test_latency_rejects_bad_configuration(impl: ModuleType, kwargs: dict[str, Any],
                                           error: type[Exception]) -> None:
    with pytest.raises(error):
        impl.LeastLatency(**kwargs)


def test_latency_rejects_bad_calls(impl: ModuleType) -> None:
    lat = impl.LeastLatency(2)
    for r in (1.0, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError):
            lat.pick(ALL, r)
    for ttfb, total in ((-1.0, 1.0), (1.0, math.nan), (math.inf, 1.0)):
        with pytest.raises(ValueError):
            lat.observe(0, ttfb, total)
    assert not lat.observed(0)
    for call in (lat.observe, ):
        with pytest.raises(IndexError):
            call(2, 1.0, 1.0)
    for getter in (lat.score, lat.ttfb, lat.total, lat.observed, lat.reset):
        with pytest.raises(IndexError):
            getter(-1)
        with pytest.raises(IndexError):
            getter(2)


finite_latency = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)
unit = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)


@PROPS
@given(n=deployment_counts, alpha=st.floats(0.01, 1.0), explore=st.floats(0.0, 1.0),
       ttfb_weight=st.floats(0.0, 1.0), data=st.data())
def test_prop_latency_same_outputs(n: int, alpha: float, explore: float, ttfb_weight: float, data: Any) -> None:
    index = st.integers(-1, n)
    calls = data.draw(st.lists(st.one_of(
        st.tuples(st.just("observe"), index, finite_latency, finite_latency),
        st.tuples(st.just("pick"), masks(n), unit),
        st.tuples(st.just("reset"), index),
        st.tuples(st.just("score"), index),
    ), max_size=50), label="calls")
    runs = []
    for mod in MODS:
        lat = mod.LeastLatency(n, alpha, explore, ttfb_weight)
        out = []
        for name, *args in calls:
            got = outcome(lambda lat=lat, name=name, args=args: getattr(lat, name)(*args))
            if name == "pick":
                mask, r = args
                eligible = [i for i in range(n) if on(mask, i)]
                if not eligible:
                    assert got == -1
                else:
                    assert got in eligible
                    unseen = [i for i in eligible if not lat.observed(i)]
                    best = min((lat.score(i), i) for i in eligible)[1] if not unseen else None
                    if unseen:
                        assert got in unseen
                    elif r >= explore or len(eligible) == 1:
                        assert got == best
                    else:
                        assert got != best
            out.append(got)
        out.append([(lat.score(i), lat.ttfb(i), lat.total(i)) for i in range(n)])
        runs.append(out)
    assert all(r == runs[0] for r in runs)


# ---------------------------------------------------------------------------------------------------------
# LeastBusy


def test_busy_picks_the_least_loaded(impl: ModuleType) -> None:
    busy = impl.LeastBusy(3)
    assert busy.n == 3
    assert [busy.pick(ALL, t) for t in range(4)] == [0, 1, 2, 0]  # ties rotate with the caller's counter
    busy.acquire(0)
    busy.acquire(0)
    busy.acquire(1)
    assert [busy.inflight(i) for i in range(3)] == [2, 1, 0]
    assert busy.pick(ALL, 0) == 2
    assert busy.pick(bits(0, 1), 0) == 1
    busy.release(0)
    busy.release(0)
    busy.release(0)  # a release below zero is ignored
    assert busy.inflight(0) == 0
    assert busy.pick(ALL, 1) == 2  # 0 and 2 are idle; the scan starts at 1
    assert busy.pick(ALL, -1) == 2
    assert busy.pick(ALL, -3) == 0
    assert busy.pick(ALL) == 0
    assert busy.pick(0, 5) == -1
    assert impl.LeastBusy(0).pick(ALL, 3) == -1


def test_busy_more_than_64_deployments(impl: ModuleType) -> None:
    busy = impl.LeastBusy(100)
    for i in range(99):
        busy.acquire(i)
    assert busy.pick(ALL, 0) == 99
    assert busy.pick(bits(80, 90), 85) == 90


def test_busy_rejects_bad_calls(impl: ModuleType) -> None:
    busy = impl.LeastBusy(2)
    for call in (busy.acquire, busy.release, busy.inflight):
        with pytest.raises(IndexError):
            call(2)
        with pytest.raises(IndexError):
            call(-1)
    with pytest.raises(ValueError):
        impl.LeastBusy(-1)


@PROPS
@given(n=deployment_counts, data=st.data())
def test_prop_busy_same_outputs(n: int, data: Any) -> None:
    index = st.integers(-1, n)
    calls = data.draw(st.lists(st.one_of(
        st.tuples(st.just("acquire"), index),
        st.tuples(st.just("release"), index),
        st.tuples(st.just("pick"), masks(n), st.integers(-1000, 1000)),
    ), max_size=60), label="calls")
    runs = []
    for mod in MODS:
        busy = mod.LeastBusy(n)
        out = []
        for name, *args in calls:
            got = outcome(lambda busy=busy, name=name, args=args: getattr(busy, name)(*args))
            if name == "pick":
                eligible = [i for i in range(n) if on(args[0], i)]
                if eligible:
                    assert busy.inflight(got) == min(busy.inflight(i) for i in eligible)
                else:
                    assert got == -1
            out.append(got)
        out.append([busy.inflight(i) for i in range(n)])
        runs.append(out)
    assert all(r == runs[0] for r in runs)


# ---------------------------------------------------------------------------------------------------------
# Split


def test_split_maps_r_by_cumulative_percent(impl: ModuleType) -> None:
    split = impl.Split([90, 10])
    assert (split.n, split.percents) == (2, (90.0, 10.0))
    assert [split.pick(r) for r in (0.0, 0.5, 0.8999, 0.9, 0.95, 0.999999)] == [0, 0, 0, 1, 1, 1]
    assert split.pick(0.95, bits(0)) == 0  # the canary is out: fall to the next eligible
    assert split.pick(0.5, bits(1)) == 1
    assert split.pick(0.5, 0) == -1
    split = impl.Split([25, 25, 50])
    assert Counter(split.pick(k / 1000) for k in range(1000)) == {0: 250, 1: 250, 2: 500}
    assert split.pick(0.1, ALL & ~bits(0)) == 1
    assert split.pick(0.6, ALL & ~bits(2)) == 0  # wraps round
    assert impl.Split([100]).pick(math.nextafter(1.0, 0.0)) == 0


def test_split_zero_percent_takes_no_traffic(impl: ModuleType) -> None:
    split = impl.Split([0, 100, 0])
    assert {split.pick(k / 100) for k in range(100)} == {1}
    assert split.pick(0.5, bits(0, 2)) == -1
    split = impl.Split([50, 50, 0])
    assert split.pick(math.nextafter(1.0, 0.0)) == 1
    assert split.pick(0.7, bits(0, 2)) == 0


def test_split_accepts_float_percents(impl: ModuleType) -> None:
    split = impl.Split([33.3, 33.3, 33.4])
    assert [split.pick(r) for r in (0.0, 0.332, 0.334, 0.665, 0.667, 0.99)] == [0, 0, 1, 1, 2, 2]
    impl.Split([0.1] * 1000)


@pytest.mark.parametrize("percents", [[], [50, 49], [50, 51], [110, -10], [math.nan, 100], [math.inf]])
def test_split_must_sum_to_100(impl: ModuleType, percents: list[float]) -> None:
    with pytest.raises(ValueError, match="split percentages must"):
        impl.Split(percents)


def test_split_rejects_bad_r(impl: ModuleType) -> None:
    split = impl.Split([100])
    for r in (1.0, -0.5, math.nan):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            split.pick(r)


@st.composite
def percent_lists(draw: st.DrawFn) -> list[float]:
    """Percentages summing to 100: integer cuts of 0..100, or shares of random floats."""
    n = draw(deployment_counts.filter(bool))
    if draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
        return [float(b - a) for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    raw = draw(st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n))
    total = sum(raw)
    if total <= 0.0:
        return [100.0] + [0.0] * (n - 1)
    return [100.0 * x / total for x in raw]


@PROPS
@given(percents=percent_lists(), data=st.data())
def test_prop_split_same_outputs(percents: list[float], data: Any) -> None:
    n = len(percents)
    calls = data.draw(st.lists(st.tuples(unit, masks(n)), max_size=40), label="calls")
    runs = []
    for mod in MODS:
        split = mod.Split(percents)
        out = []
        for r, mask in calls:
            got = split.pick(r, mask)
            usable = [i for i in range(n) if on(mask, i) and percents[i] > 0]
            assert got in usable if usable else got == -1
            if on(mask, split.pick(r)):
                assert got == split.pick(r)
            out.append(got)
        runs.append(out)
    assert all(r == runs[0] for r in runs)
    # with everything eligible, a uniform grid of r gives each variant its percentage
    grid = 2000
    counts = Counter(MODS[-1].Split(percents).pick(k / grid) for k in range(grid))
    for i, p in enumerate(percents):
        assert abs(counts[i] - p / 100 * grid) <= 2, (i, p, counts[i])


# ---------------------------------------------------------------------------------------------------------
# cheapest


def test_cheapest(impl: ModuleType) -> None:
    costs = [3.0, 1.0, 2.0, 1.0]
    limits = [128_000, 8_000, 32_000, 16_000]
    assert impl.cheapest(costs, limits, 1_000) == 1
    assert impl.cheapest(costs, limits, 1_000, ALL) == 1
    assert impl.cheapest(costs, limits, 8_000) == 1  # a limit equal to the need fits
    assert impl.cheapest(costs, limits, 8_001) == 3
    assert impl.cheapest(costs, limits, 20_000) == 2
    assert impl.cheapest(costs, limits, 100_000) == 0
    assert impl.cheapest(costs, limits, 200_000) == -1
    assert impl.cheapest(costs, limits, 1_000, ALL & ~bits(1)) == 3
    assert impl.cheapest(costs, limits, 1_000, bits(0, 2)) == 2
    assert impl.cheapest(costs, limits, 1_000, 0) == -1
    assert impl.cheapest([], [], 1) == -1
    assert impl.cheapest([0, 0], [1, 1], 0) == 0  # ties: lower index
    with pytest.raises(ValueError):
        impl.cheapest([1.0], [1, 2], 1)


@PROPS
@given(n=deployment_counts, data=st.data())
def test_prop_cheapest_same_outputs(n: int, data: Any) -> None:
    costs = data.draw(st.lists(st.one_of(st.floats(0.0, 100.0), st.sampled_from([0.0, 1.0, 2.5])),
                               min_size=n, max_size=n), label="costs")
    limits = data.draw(st.lists(st.integers(0, 200_000), min_size=n, max_size=n), label="limits")
    need = data.draw(st.integers(0, 200_000), label="need")
    mask = data.draw(masks(n), label="mask")
    fits = [(costs[i], i) for i in range(n) if on(mask, i) and limits[i] >= need]
    expected = min(fits)[1] if fits else -1
    for mod in MODS:
        assert mod.cheapest(costs, limits, need, mask) == expected


# ---------------------------------------------------------------------------------------------------------
# facade


def test_facade_picks_the_compiled_module() -> None:
    from gateway._core import route

    no_ext = os.environ.get("GATEWAY_NO_EXTENSIONS") == "1"
    assert route.COMPILED is (_route is not None and not no_ext)
    expected = _route if route.COMPILED else route_py
    for name in route_py.__all__:
        assert getattr(route, name) is getattr(expected, name)
    assert route.ALL == -1
    assert gateway._core.compiled().get("route", route.COMPILED) is route.COMPILED
    assert sorted(route.__all__) == sorted(route_py.__all__)
    if _route is not None:
        assert sorted(_route.__all__) == sorted(route_py.__all__)
