"""Rate limiting: the compiled ``_limit`` module and its pure-Python twin ``limit_py``.

Example tests run against both implementations. The property tests drive both with the same calls and
demand the same floats bit for bit; they check the bucket against exact rational arithmetic and the
"burst + rate x interval" bound over every interval, and a simulation of workers sharing a limit through
leases against the over-admission bound documented in ``next_lease_size``.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway._core import limit_py

try:
    from gateway._core import _limit
except ImportError:  # pragma: no cover - only when the extension is not built
    if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
        raise
    _limit = None  # type: ignore[assignment]

needs_compiled = pytest.mark.skipif(_limit is None, reason="gateway._core._limit is not built")

IMPLS = [
    pytest.param(limit_py, id="twin"),
    pytest.param(_limit, id="compiled", marks=needs_compiled),
]
MODS = [m for m in (limit_py, _limit) if m is not None]

# GATEWAY_PROPERTY_EXAMPLES=5000 for a deeper run
PROPS = settings(
    max_examples=int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CEILING = 1.000000001  # admission tolerance: the level may reach burst * CEILING (see limit_py)
INF = math.inf


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


# ---------------------------------------------------------------------------------------------------------
# Bucket


def test_bucket_starts_full_then_refills(impl: ModuleType) -> None:
    b = impl.Bucket(rate=2.0, burst=5)
    assert (b.rate, b.burst) == (2.0, 5.0)
    assert b.remaining(10.0) == 5.0
    assert b.reset_after(10.0) == 0.0
    assert [b.take(10.0) for _ in range(5)] == [0.0] * 5
    assert b.take(10.0) == 0.5
    assert b.retry_after(10.0, 3) == 1.5
    assert math.floor(b.remaining(10.0)) == 0
    assert b.reset_after(10.0) == 2.5
    assert math.floor(b.remaining(11.0)) == 2
    assert b.reset_after(11.0) == 1.5
    assert b.take(11.0, 2) == 0.0
    assert b.take(11.0) == 0.5
    assert b.remaining(100.0) == 5.0  # never above burst, however long idle
    assert b.take(100.0, 5) == 0.0


def test_bucket_refusal_changes_nothing(impl: ModuleType) -> None:
    b = impl.Bucket(1.0, 3)
    assert b.take(0.0, 2) == 0.0
    before = (b.remaining(0.5), b.reset_after(0.5), b.retry_after(0.5, 3))
    for _ in range(3):
        assert b.take(0.5, 3) == before[2] == 1.5
    assert (b.remaining(0.5), b.reset_after(0.5), b.retry_after(0.5, 3)) == before
    assert b.take(2.0, 3) == 0.0  # exactly at the returned wait


def test_bucket_amount_above_burst_never_fits(impl: ModuleType) -> None:
    b = impl.Bucket(10.0, 100)
    assert b.take(0.0, 101) == INF
    assert b.retry_after(0.0, 1e9) == INF
    assert b.take(0.0, INF) == INF
    assert b.take(0.0, 100) == 0.0  # the whole burst at once fits
    assert b.take(0.0, 101) == INF  # still inf, not a finite wait, whatever the level
    assert b.take(0.0, 0) == 0.0  # zero fits whenever the bucket is not in debt
    b.force(0.0, 50)
    assert b.take(0.0, 0) == 5.0  # in debt even a zero amount waits until the level is back to burst


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 10, 13, 30, 60, 100, 120, 1000, 3600, 10_000])
@pytest.mark.parametrize("period", [1.0, 60.0, 3600.0, 86400.0])
@pytest.mark.parametrize("t0", [0.0, 98765.4321])
def test_bucket_n_per_period_is_exact(impl: ModuleType, n: int, period: float, t0: float) -> None:
    """N at once, then exactly one per period / N: never N - 1, never N + 1, over many periods."""
    interval = period / n
    b = impl.Bucket(n / period, n)
    assert all(b.take(t0) == 0.0 for _ in range(n))
    wait = b.take(t0)
    assert wait == pytest.approx(interval, rel=1e-9)
    steps = min(3 * n, 400)
    for k in range(1, steps + 1):  # times computed from the start: no accumulated clock error
        t = t0 + k * period / n
        assert b.retry_after(t - interval * 1e-3) > 0.0, k
        assert b.take(t) == 0.0, k
        assert b.take(t) > 0.0, k
    assert b.remaining(t0 + steps * interval + period) == n
    # driven by the returned waits instead
    b = impl.Bucket(n / period, n)
    now = t0
    assert all(b.take(now) == 0.0 for _ in range(n))
    for k in range(steps):
        wait = b.take(now)
        assert wait > 0.0 and wait == pytest.approx(interval, rel=1e-6), k
        now += wait
        assert b.take(now) == 0.0, k


@pytest.mark.parametrize("n", [1, 10, 1000, 1_000_000])
def test_bucket_tokens_per_minute_in_chunks(impl: ModuleType, n: int) -> None:
    b = impl.Bucket(n / 60, n)
    chunk = max(1, n // 8)
    taken = 0
    while b.take(5.0, chunk) == 0.0:
        taken += chunk
    assert taken == (n // chunk) * chunk
    assert b.retry_after(5.0, n - taken) == 0.0


def test_bucket_force_and_refund_settle_real_usage(impl: ModuleType) -> None:
    b = impl.Bucket(100.0, 1000)  # 1000 tokens, 100 per second
    assert b.take(0.0, 400) == 0.0  # reserve an estimate
    b.force(0.0, 1100)  # the response used 1500: charge the difference, into debt
    assert b.remaining(0.0) == 0.0
    assert b.reset_after(0.0) == 15.0
    assert b.retry_after(0.0, 1) == pytest.approx(5.01)
    assert b.take(5.0, 1) > 0.0
    b.refund(5.0, 300)  # another request reserved 300 too many
    assert b.remaining(5.0) == pytest.approx(300.0)
    b.refund(5.0, 10_000)
    assert b.remaining(5.0) == 1000.0  # never above burst
    assert b.reset_after(5.0) == 0.0
    b.refund(5.0, 0)
    b.force(5.0, 0)
    assert b.remaining(5.0) == 1000.0


def test_bucket_reconfigure_keeps_consumed_fraction(impl: ModuleType) -> None:
    b = impl.Bucket(1.0, 100)
    assert b.take(0.0, 60) == 0.0
    b.reconfigure(2.0, 200, 10.0)  # 50 used of 100 at t=10 -> 100 used of 200
    assert (b.rate, b.burst) == (2.0, 200.0)
    assert b.remaining(10.0) == pytest.approx(100.0)
    assert b.reset_after(10.0) == pytest.approx(50.0)
    b.reconfigure(2.0, 20, 10.0)  # half used stays half used
    assert b.remaining(10.0) == pytest.approx(10.0)
    b.force(10.0, 30)  # 40 used of 20: in debt
    b.reconfigure(1.0, 10, 10.0)
    assert b.remaining(10.0) == 0.0
    assert b.reset_after(10.0) == pytest.approx(20.0)
    same = impl.Bucket(3.0, 7)
    same.take(1.0, 5)
    before = (same.remaining(1.5), same.reset_after(1.5))
    same.reconfigure(3.0, 7, 1.0)  # an unchanged policy changes nothing, to the bit
    assert (same.remaining(1.5), same.reset_after(1.5)) == before


def test_bucket_clock_going_backwards_is_no_refill(impl: ModuleType) -> None:
    b = impl.Bucket(1.0, 2)
    assert b.take(10.0, 2) == 0.0
    assert b.retry_after(5.0) == 6.0  # waits until 11, measured from the earlier now
    assert b.take(5.0) == 6.0
    b.force(5.0, 1)
    b.refund(5.0, 1)
    assert b.take(11.0) == 0.0
    assert b.take(11.0) == 1.0


def test_bucket_rejects_bad_input(impl: ModuleType) -> None:
    for rate, burst in [(0, 1), (-1, 1), (1, 0), (1, -1), (INF, 1), (1, INF), (math.nan, 1), (1, math.nan)]:
        with pytest.raises(ValueError):
            impl.Bucket(rate, burst)
        with pytest.raises(ValueError):
            impl.Bucket(1, 1).reconfigure(rate, burst, 0.0)
    b = impl.Bucket(1.0, 10)
    for now in [math.nan, INF, -INF]:
        for call in (b.take, b.retry_after, b.remaining, b.reset_after):
            with pytest.raises(ValueError):
                call(now)
        for call in (b.force, b.refund):
            with pytest.raises(ValueError):
                call(now, 1.0)
    for amount in [-1.0, math.nan]:
        for call in (b.take, b.retry_after, b.force, b.refund):
            with pytest.raises(ValueError):
                call(0.0, amount)
    for call in (b.force, b.refund):
        with pytest.raises(ValueError):
            call(0.0, INF)
    with pytest.raises((AttributeError, TypeError)):
        b.rate = 2.0
    assert b.remaining(0.0) == 10.0  # nothing above changed it


# ---------------------------------------------------------------------------------------------------------
# Lease


def test_lease_spends_until_empty(impl: ModuleType) -> None:
    lease = impl.Lease(10, 100.0)
    assert (lease.granted, lease.expires_at, lease.left) == (10.0, 100.0, 10.0)
    assert lease.take(1.0)
    assert lease.take(1.0, 4)
    assert lease.left == 5.0
    assert not lease.take(1.0, 6)  # does not fit: nothing spent
    assert lease.left == 5.0
    assert lease.take(2.0, 5)
    assert not lease.take(2.0)
    assert lease.take(2.0, 0)
    assert lease.return_unused(2.0) == 0.0


def test_lease_expiry_and_return(impl: ModuleType) -> None:
    lease = impl.Lease(10, 100.0)
    assert not lease.expired(99.9)
    assert lease.take(50.0, 3)
    assert lease.expired(100.0)
    assert not lease.take(100.0)
    assert lease.return_unused(100.0) == 0.0  # an expired lease's remainder is forfeited
    assert lease.left == 0.0
    lease = impl.Lease(10, 100.0)
    assert lease.take(50.0, 3)
    assert lease.return_unused(50.0) == 7.0
    assert lease.left == 0.0
    assert lease.return_unused(50.0) == 0.0  # returned once only
    assert not lease.take(50.0)
    forever = impl.Lease(1, INF)
    assert not forever.expired(1e300)
    assert forever.take(1e300)


def test_lease_rejects_bad_input(impl: ModuleType) -> None:
    for granted, expires_at in [(-1, 1.0), (INF, 1.0), (math.nan, 1.0), (1, math.nan)]:
        with pytest.raises(ValueError):
            impl.Lease(granted, expires_at)
    lease = impl.Lease(5, 10.0)
    for amount in [-1.0, math.nan]:
        with pytest.raises(ValueError):
            lease.take(0.0, amount)
    assert not lease.take(math.nan)  # an unknown time is treated as expired
    assert lease.expired(math.nan)
    assert lease.left == 5.0


# ---------------------------------------------------------------------------------------------------------
# next_lease_size


@pytest.mark.parametrize(
    ("args", "size"),
    [
        # observed_rate, limit_rate, workers, min_size, max_size, horizon
        ((50.0, 1000.0, 4, 1, 100, 1.0), 50.0),  # horizon x observed rate
        ((50.0, 1000.0, 4, 1, 100, 2.0), 100.0),
        ((50.0, 1000.0, 4, 1, 80, 2.0), 80.0),  # max_size
        ((500.0, 100.0, 4, 1, 1000, 2.0), 50.0),  # the worker's share of the limit: 100 * 2 / 4
        ((0.0, 1000.0, 4, 10, 100, 1.0), 10.0),  # min_size for a worker that saw nothing yet
        ((math.nan, 1000.0, 4, 10, 100, 1.0), 10.0),
        ((-3.0, 1000.0, 4, 10, 100, 1.0), 10.0),
        ((12.7, 1000.0, 1, 1, 100, 1.0), 12.0),  # whole units
        ((1000.0, 100 / 60, 8, 1, 100, 1.0), 1.0),  # a low limit: exact, one at a time
        ((1000.0, 1000 / 86400, 2, 1, 100, 10.0), 1.0),
        ((1000.0, 40.0, 8, 10, 100, 1.0), 1.0),  # share 5 < min_size 10
        ((1000.0, 80.0, 8, 10, 100, 1.0), 10.0),  # share exactly min_size
        ((1000.0, 0.0, 1, 1, 100, 1.0), 1.0),
        ((1000.0, math.nan, 1, 1, 100, 1.0), 1.0),
        ((1000.0, INF, 1, 1, 100, 1.0), 100.0),
    ],
)
def test_next_lease_size(impl: ModuleType, args: tuple[Any, ...], size: float) -> None:
    got = impl.next_lease_size(*args)
    assert type(got) is float
    assert got == size


def test_next_lease_size_rejects_bad_input(impl: ModuleType) -> None:
    for args in [
        (1.0, 10.0, 0, 1, 10, 1.0),
        (1.0, 10.0, 1, 0.5, 10, 1.0),
        (1.0, 10.0, 1, 5, 4, 1.0),
        (1.0, 10.0, 1, 1, INF, 1.0),
        (1.0, 10.0, 1, math.nan, 10, 1.0),
        (1.0, 10.0, 1, 1, 10, 0.0),
        (1.0, 10.0, 1, 1, 10, INF),
    ]:
        with pytest.raises(ValueError):
            impl.next_lease_size(*args)
    with pytest.raises(TypeError):
        impl.next_lease_size(1.0, 10.0, 1.5, 1, 10, 1.0)


# ---------------------------------------------------------------------------------------------------------
# Gate


def test_gate_caps_requests_in_flight(impl: ModuleType) -> None:
    g = impl.Gate(2)
    assert (g.limit, g.inflight) == (2, 0)
    assert g.enter() and g.enter()
    assert not g.enter()
    assert g.inflight == 2
    g.leave()
    assert g.enter()
    g.limit = 1  # lowered on reload: refuses until enough have left
    assert not g.enter()
    g.leave()
    assert not g.enter()
    g.leave()
    assert g.inflight == 0
    assert g.enter()
    g.leave()
    with pytest.raises(RuntimeError):
        g.leave()
    assert g.inflight == 0
    closed = impl.Gate(0)
    assert not closed.enter()
    with pytest.raises(TypeError):
        impl.Gate(1.5)


# ---------------------------------------------------------------------------------------------------------
# RateEstimator


def test_rate_estimator_tracks_a_steady_rate(impl: ModuleType) -> None:
    e = impl.RateEstimator(window=5.0)
    assert e.window == 5.0
    assert e.rate(0.0) == 0.0
    for k in range(1000):  # 20 units per second for 50 s (10 windows)
        e.observe(k * 0.05)
    assert e.rate(49.95) == pytest.approx(20.0, rel=0.03)
    assert e.rate(54.95) == pytest.approx(e.rate(49.95) / math.e)  # decays by e per window
    last = e.rate(49.95)
    assert e.rate(49.0) == last  # an earlier time is no decay
    e.observe(60.0, 0)
    assert e.rate(60.0) == pytest.approx(last * math.exp(-10.05 / 5))
    burst = impl.RateEstimator(window=10.0)
    burst.observe(0.0, 100)
    assert burst.rate(0.0) == 10.0  # a burst counts as its amount spread over the window


def test_rate_estimator_rejects_bad_input(impl: ModuleType) -> None:
    for window in [0.0, -1.0, INF, math.nan]:
        with pytest.raises(ValueError):
            impl.RateEstimator(window)
    e = impl.RateEstimator()
    for now, amount in [(math.nan, 1.0), (INF, 1.0), (0.0, -1.0), (0.0, INF), (0.0, math.nan)]:
        with pytest.raises(ValueError):
            e.observe(now, amount)
    assert e.rate(0.0) == 0.0


# ---------------------------------------------------------------------------------------------------------
# facade


def test_facade_picks_the_compiled_module() -> None:
    from gateway._core import limit

    no_ext = os.environ.get("GATEWAY_NO_EXTENSIONS") == "1"
    assert limit.COMPILED is (_limit is not None and not no_ext)
    expected = _limit if limit.COMPILED else limit_py
    for name in limit_py.__all__:
        assert getattr(limit, name) is getattr(expected, name)
    assert sorted(limit.__all__) == sorted(limit_py.__all__)
    if _limit is not None:
        assert sorted(_limit.__all__) == sorted(limit_py.__all__)


# ---------------------------------------------------------------------------------------------------------
# property tests

POLICY_COUNTS = [1, 2, 3, 7, 10, 60, 100, 1000, 10_000]
POLICY_PERIODS = [1.0, 60.0, 3600.0, 86400.0]
policies = st.one_of(
    st.builds(lambda n, p: (n / p, float(n)), st.sampled_from(POLICY_COUNTS), st.sampled_from(POLICY_PERIODS)),
    st.tuples(st.floats(1e-3, 1e4), st.floats(0.5, 1e4)),
)
starts = st.sampled_from([0.0, 0.25, 86400.0, 1e6, 3e7])
# time steps in units of the refill interval 1 / rate: exact multiples hit the boundaries
steps = st.one_of(st.sampled_from([0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 10.0]), st.floats(0.0, 3.0))
# amounts as fractions of the burst, or whole units
amounts = st.one_of(
    st.sampled_from([("unit", 1.0), ("unit", 1.0), ("unit", 2.0), ("unit", 0.0)]),
    st.tuples(st.just("burst"), st.one_of(st.sampled_from([1.0, 0.5]), st.floats(0.0, 1.3))),
)


def _amount(kind_value: tuple[str, float], burst: float) -> float:
    kind, value = kind_value
    return value if kind == "unit" else value * burst


@st.composite
def bucket_programs(draw: st.DrawFn, kinds: tuple[str, ...]) -> tuple[float, float, float, list[Any]]:
    """(rate, burst, t0, [(kind, now, amount)]) with non-decreasing ``now``."""
    rate, burst = draw(policies)
    now = draw(starts)
    t0 = now
    ops = []
    for _ in range(draw(st.integers(1, 50))):
        now += draw(steps) / rate
        ops.append((draw(st.sampled_from(kinds)), now, _amount(draw(amounts), burst)))
    return rate, burst, t0, ops


@PROPS
@given(prog=bucket_programs(("take", "take", "take", "force")))
def test_prop_bucket_interval_bound_and_waits(prog: tuple[float, float, float, list[Any]]) -> None:
    """Over any interval ending in an admitted take, takes and forces add up to at most burst + rate x
    interval; a refusal changes nothing and its wait is enough."""
    rate, burst, _t0, ops = prog
    traces = []
    for mod in MODS:
        b = mod.Bucket(rate, burst)
        charged: list[tuple[float, float, bool]] = []  # (now, amount, ends an interval)
        trace = []
        for kind, now, amount in ops:
            if kind == "force":
                b.force(now, amount)
                charged.append((now, amount, False))
                continue
            wait = b.take(now, amount)
            trace.append(wait.hex())
            if wait == 0.0:
                charged.append((now, amount, True))
                continue
            assert wait > 0.0
            assert b.retry_after(now, amount) == wait
            if wait == INF:
                assert amount > burst
                continue
            assert amount <= burst * CEILING
            assert b.retry_after(now + wait, amount) == 0.0
            assert b.retry_after(now + wait * 1.5 + 1.0, amount) == 0.0
        for j, (t1, _, ends) in enumerate(charged):
            if not ends:
                continue
            total = 0.0
            for i in range(j, -1, -1):
                total += charged[i][1]
                allowed = burst * CEILING + rate * (t1 - charged[i][0])
                assert total <= allowed + 1e-9 * (allowed + total), (i, j)
        traces.append(trace)
    assert all(t == traces[0] for t in traces)


@PROPS
@given(prog=bucket_programs(("take", "take", "take", "force", "refund", "retry")))
def test_prop_bucket_matches_exact_arithmetic(prog: tuple[float, float, float, list[Any]]) -> None:
    """The float bucket decides as exact rational arithmetic would, up to its tolerance: no drift."""
    rate, burst, _t0, ops = prog
    r, cap = Fraction(rate), Fraction(burst)
    for mod in MODS:
        b = mod.Bucket(rate, burst)
        level, stamp = Fraction(0), None
        for kind, now, amount in ops:
            t, a = Fraction(now), Fraction(amount)
            if stamp is not None and t > stamp:
                level = max(Fraction(0), level - (t - stamp) * r)
            stamp = t
            scale = float(cap + level + a)  # the magnitudes whose rounding the tolerance must cover
            remaining = float(min(cap, max(Fraction(0), cap * Fraction(CEILING) - level)))
            assert b.remaining(now) == pytest.approx(remaining, rel=1e-9, abs=1e-9 * scale)
            assert b.reset_after(now) == pytest.approx(float(level / r), rel=1e-9, abs=1e-9 * scale / rate)
            if kind == "force":
                b.force(now, amount)
                level += a
            elif kind == "refund":
                b.refund(now, amount)
                level = max(Fraction(0), level - a)
            else:
                wait = b.take(now, amount) if kind == "take" else b.retry_after(now, amount)
                if wait == 0.0:
                    assert float(level + a - cap * Fraction(CEILING)) <= 1e-9 * scale
                    if kind == "take":
                        level += a
                elif wait == INF:
                    assert a > cap
                else:
                    assert float(level + a - cap * Fraction(CEILING)) >= -1e-9 * scale
                    exact = float((level + a - cap) / r)
                    assert wait == pytest.approx(exact, rel=1e-7, abs=1e-9 * (scale / rate + now))


def _run(obj: Any, calls: list[tuple[str, tuple[Any, ...]]]) -> list[str]:
    """Results of ``calls`` on ``obj``, floats as hex (bit-exact, -0.0 apart), errors by type."""
    out = []
    for name, args in calls:
        try:
            got = getattr(obj, name)(*args) if callable(getattr(obj, name)) else getattr(obj, name)
        except (ValueError, RuntimeError) as exc:
            out.append(type(exc).__name__)
            continue
        out.append(got.hex() if isinstance(got, float) else repr(got))
    return out


odd_times = st.sampled_from([math.nan, INF, -INF])
signed_steps = st.one_of(steps, steps.map(lambda s: -s))  # a clock may step back: no refill, no harm
any_amounts = st.one_of(st.floats(0.0, 2e4), st.sampled_from([0.0, 1.0, 2.0, -1.0, math.nan, INF]))


@st.composite
def programs(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], list[tuple[str, tuple[Any, ...]]]]:
    """(class, constructor args, [(method or attribute, args)]) over any class of the module."""
    rate, burst = draw(policies)
    now = draw(starts)
    which = draw(st.sampled_from(["Bucket", "Bucket", "Lease", "RateEstimator", "Gate"]))
    init: tuple[Any, ...] = {
        "Bucket": (rate, burst),
        "Lease": (burst, now + draw(st.floats(0.0, 100.0))),
        "RateEstimator": (draw(st.floats(0.1, 100.0)),),
        "Gate": (draw(st.integers(0, 3)),),
    }[which]
    methods = {
        "Bucket": ["take", "take", "retry_after", "force", "refund", "remaining", "reset_after",
                   "reconfigure", "rate", "burst"],
        "Lease": ["take", "take", "expired", "return_unused", "left"],
        "RateEstimator": ["observe", "observe", "rate"],
        "Gate": ["enter", "enter", "leave", "inflight"],
    }[which]
    calls: list[tuple[str, tuple[Any, ...]]] = []
    for _ in range(draw(st.integers(1, 40))):
        name = draw(st.sampled_from(methods))
        now += draw(signed_steps) / rate
        t = draw(odd_times) if draw(st.integers(0, 30)) == 0 else now
        amount = _amount(draw(amounts), burst) if draw(st.booleans()) else draw(any_amounts)
        if name in ("burst", "left", "inflight", "enter", "leave") or (name == "rate" and which == "Bucket"):
            args: tuple[Any, ...] = ()
        elif name in ("remaining", "reset_after", "expired", "return_unused", "rate"):
            args = (t,)
        elif name == "reconfigure":
            new_rate, new_burst = draw(policies)
            args = (new_rate, new_burst, t)
        else:
            args = (t, amount)
        calls.append((name, args))
    return which, init, calls


@PROPS
@given(prog=programs())
def test_prop_implementations_agree(prog: tuple[str, tuple[Any, ...], list[tuple[str, tuple[Any, ...]]]]) -> None:
    which, init, calls = prog
    results = [_run(getattr(mod, which)(*init), calls) for mod in MODS]
    assert all(r == results[0] for r in results)


@PROPS
@given(
    observed=st.one_of(st.floats(0.0, 1e6), st.sampled_from([math.nan, -1.0, INF])),
    limit_rate=st.one_of(st.floats(0.0, 1e6), st.sampled_from([math.nan, INF, 1 / 60, 1000 / 86400])),
    workers=st.integers(1, 64),
    sizes=st.tuples(st.floats(1.0, 1e3), st.floats(0.0, 1e4)).map(lambda p: (p[0], p[0] + p[1])),
    horizon=st.floats(1e-3, 1e3),
)
def test_prop_next_lease_size(
    observed: float, limit_rate: float, workers: int, sizes: tuple[float, float], horizon: float
) -> None:
    min_size, max_size = sizes
    got = {mod.next_lease_size(observed, limit_rate, workers, min_size, max_size, horizon).hex() for mod in MODS}
    assert len(got) == 1
    size = float.fromhex(got.pop())
    assert size == math.floor(size) and 1.0 <= size <= max_size
    share = limit_rate * horizon / workers
    if size > 1.0:
        assert min_size <= share and size <= share and size >= math.floor(min_size)


@st.composite
def cluster_programs(draw: st.DrawFn) -> tuple[float, float, float, float, bool, list[tuple[float, int, float]]]:
    """(rate, burst, lease size, ttl, return unused, [(now, worker, amount)])."""
    rate, burst = draw(st.sampled_from([(10.0, 10.0), (100 / 60, 100.0), (1.0, 5.0), (50.0, 20.0)]))
    size = float(draw(st.integers(1, int(burst))))
    ttl = draw(st.sampled_from([0.5, 2.0, 30.0]))
    now = draw(starts)
    requests = []
    for _ in range(draw(st.integers(1, 80))):
        now += draw(st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.1, 1.0])) * draw(st.sampled_from([1.0, 1 / rate]))
        requests.append((now, draw(st.integers(0, 3)), float(draw(st.sampled_from([1, 1, 1, 2, 3])))))
    return rate, burst, size, ttl, draw(st.booleans()), requests


@PROPS
@given(prog=cluster_programs())
def test_prop_leases_over_admission_bound(
    prog: tuple[float, float, float, float, bool, list[tuple[float, int, float]]],
) -> None:
    """Workers sharing a bucket through leases admit at most burst + rate x interval + W x (S - a)."""
    rate, burst, size, ttl, give_back, requests = prog
    workers = 1 + max(w for _, w, _ in requests)
    smallest = min(a for _, _, a in requests)
    traces = []
    for mod in MODS:
        shared = mod.Bucket(rate, burst)
        leases: list[Any] = [None] * workers
        admitted: list[tuple[float, float]] = []
        trace = []
        for now, w, amount in requests:
            lease = leases[w]
            ok = lease is not None and lease.take(now, amount)
            if not ok:
                if lease is not None and give_back:
                    unused = lease.return_unused(now)
                    if unused:
                        shared.refund(now, unused)
                leases[w] = None
                grant = max(size, amount)
                if shared.take(now, grant) == 0.0:
                    leases[w] = mod.Lease(grant, now + ttl)
                    ok = leases[w].take(now, amount)
                    assert ok
                elif shared.take(now, amount) == 0.0:
                    ok = True  # exact fallback: a lease of just this request, fully spent
            trace.append(ok)
            if ok:
                admitted.append((now, amount))
        traces.append(trace)
        excess = workers * max(0.0, size - smallest)
        for j in range(len(admitted)):
            total = 0.0
            for i in range(j, -1, -1):
                total += admitted[i][1]
                allowed = burst * CEILING + rate * (admitted[j][0] - admitted[i][0]) + excess
                assert total <= allowed + 1e-9 * allowed, (i, j)
        if size == 1.0 and smallest == 1.0:
            assert excess == 0.0  # leases of one: exactly the bucket's own bound
    assert all(t == traces[0] for t in traces)


def test_lease_bound_is_reached(impl: ModuleType) -> None:
    """The W x (S - a) term is no slack: two workers with leases of 10 admit 10 + 2 x 9 in one instant."""
    shared = impl.Bucket(1.0, 10)
    leases = {}
    for t, worker in [(0.0, "a"), (10.0, "b")]:  # each takes a lease and uses 1 of it
        assert shared.take(t, 10) == 0.0
        leases[worker] = impl.Lease(10, 1000.0)
        assert leases[worker].take(t)
    now = 20.0  # the bucket is full again, and each worker still holds 9
    used = sum(lease.take(now) for lease in leases.values() for _ in range(10))
    assert used == 18
    assert shared.take(now, 10) == 0.0  # worker a's lease ran out: a new one
    fresh = impl.Lease(10, 1000.0)
    used += sum(fresh.take(now) for _ in range(11))
    assert used == 28 == 10 + 2 * (10 - 1)
    assert shared.take(now, 10) > 0.0  # worker b's next lease is refused
