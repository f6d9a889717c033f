"""The circuit breaker: every transition of its state table, with exact times (sans-IO: ``now`` is passed)."""

from __future__ import annotations

import math

import msgspec
import pytest

from gateway.routing import breaker as breaker_module
from gateway.routing.breaker import TRANSITIONS, Breaker, Change, Event, State
from gateway.routing.config import BreakerConfig

CFG = BreakerConfig(
    consecutive_failures=3, error_ratio=0.5, window=10.0, min_requests=4, open_for=5.0, half_open_probes=2,
    cooldown_on_429=1.5, max_cooldown=60.0,
)


def tripped(at: float = 100.0) -> Breaker:
    b = Breaker(CFG)
    for _ in range(3):
        b.on_failure(at)
    assert b.state is State.OPEN
    return b


def test_docstring_table_is_the_code_table() -> None:
    rows: set[tuple[State, Event, State]] = set()
    for line in (breaker_module.__doc__ or "").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) != 4 or cells[0] in ("state", "") or cells[0].startswith("-"):
            continue
        states = list(State) if cells[0] == "any" else [State[cells[0].upper()]]
        nxt = State[cells[3].split()[0].upper()]
        rows.update((s, Event(cells[1]), nxt) for s in states)
    assert rows == {(s, e, n) for (s, e), n in TRANSITIONS.items()}


def test_closed_counts_and_stays_closed_below_thresholds() -> None:
    b = Breaker(msgspec.structs.replace(CFG, min_requests=100))  # consecutive failures only
    assert b.on_failure(1.0) is None and b.on_failure(2.0) is None
    assert b.on_success(3.0) is None  # resets the run of failures
    assert b.on_failure(4.0) is None
    assert b.state is State.CLOSED and b.admit(4.0)
    assert b.snapshot(4.0)["consecutive_failures"] == 1


def test_trip_on_consecutive_failures() -> None:
    b = Breaker(CFG)
    b.on_failure(10.0)
    b.on_failure(11.0)
    assert b.on_failure(12.0) == Change("open", 17.0, 12.0)
    assert b.state is State.OPEN and b.until == 17.0 and b.changed_at == 12.0
    assert b.blocked_until(12.0) == 17.0


def test_trip_on_error_ratio_over_window() -> None:
    b = Breaker(CFG)
    b.on_success(1.0)
    b.on_failure(2.0)
    b.on_success(3.0)
    assert b.state is State.CLOSED  # 1 of 3: below min_requests anyway
    assert b.on_failure(4.0) == Change("open", 9.0, 4.0)  # 2 of 4 = 0.5


def test_error_ratio_forgets_results_older_than_the_window() -> None:
    b = Breaker(CFG)
    b.on_failure(0.0)
    b.on_success(0.5)
    b.on_failure(1.0)
    b.on_success(1.5)  # 2 of 4 failed, but the 4th result was a success: no trip on success
    for t in (20.0, 20.5, 21.0):
        b.on_success(t)
    assert b.on_failure(21.5) is None  # the old failures left the window: 1 of 4
    assert b.state is State.CLOSED


def test_open_refuses_until_then_half_open_admits_limited_probes() -> None:
    b = tripped(100.0)  # until 105
    assert not b.admit(104.9) and b.state is State.OPEN
    assert b.admit(105.0) and b.state is State.HALF_OPEN  # expire, and the first probe
    assert b.admit(105.1)  # the second probe (half_open_probes = 2)
    assert not b.admit(105.2) and not b.would_admit(105.2)


def test_half_open_recovers_after_enough_probe_successes() -> None:
    b = tripped(100.0)
    b.admit(105.0)
    b.admit(105.0)
    assert b.on_success(106.0) is None and b.state is State.HALF_OPEN
    assert b.on_success(107.0) == Change("closed", None, 107.0)
    assert b.state is State.CLOSED and b.snapshot(107.0)["window_results"] == 0  # fresh counts


def test_half_open_failure_reopens() -> None:
    b = tripped(100.0)
    b.admit(105.0)
    assert b.on_failure(106.0) == Change("open", 111.0, 106.0)
    assert b.state is State.OPEN and not b.admit(110.9) and b.admit(111.0)


def test_late_results_while_open_change_nothing() -> None:
    b = tripped(100.0)
    assert b.on_success(101.0) is None and b.on_failure(102.0) is None
    assert b.state is State.OPEN and b.until == 105.0


def test_a_lost_probe_frees_its_slot_after_open_for() -> None:
    b = tripped(100.0)
    assert b.admit(105.0) and b.admit(105.0) and not b.admit(109.0)
    assert b.admit(110.0)  # no result for open_for seconds


def test_eject_and_restore() -> None:
    b = Breaker(CFG)
    assert b.eject(5.0) == Change("open", None, 5.0)
    assert b.ejected and b.until == math.inf and not b.admit(1e9)
    assert b.eject(6.0) is None  # already out
    assert b.restore(7.0) == Change("closed", None, 7.0)
    assert b.state is State.CLOSED and not b.ejected and b.admit(7.0)
    assert b.restore(8.0) is None


def test_restore_does_not_close_a_passively_opened_breaker() -> None:
    b = tripped(100.0)
    assert b.restore(101.0) is None and b.state is State.OPEN


def test_disabled_breaker_never_trips_but_still_cools_down() -> None:
    b = Breaker(BreakerConfig(enabled=False, consecutive_failures=1))
    for t in range(10):
        b.on_failure(float(t))
    assert b.state is State.CLOSED
    assert b.cool(10.0, 2.0) == Change("cooldown", 12.0, 10.0)


def test_cooldown_honours_retry_after_capped_and_defaulted() -> None:
    b = Breaker(CFG)
    assert b.cool(10.0, 3.0) == Change("cooldown", 13.0, 10.0)
    assert b.blocked_until(12.9) == 13.0 and b.blocked_until(13.0) == -math.inf
    assert b.cool(11.0, 1.0) is None  # ends earlier than the current cooldown
    assert b.cool(20.0, None) == Change("cooldown", 21.5, 20.0)  # cooldown_on_429
    assert b.cool(30.0, 3600.0) == Change("cooldown", 90.0, 30.0)  # max_cooldown
    assert b.cool(40.0, 0.0) is None
    assert b.state is State.CLOSED and b.admit(31.0)  # a cooldown is no breaker state


def test_remote_changes_newest_wins() -> None:
    b = Breaker(CFG)
    assert b.apply(Change("open", 50.0, 10.0), now=11.0)
    assert b.state is State.OPEN and b.until == 50.0 and b.changed_at == 10.0
    assert not b.apply(Change("closed", None, 9.0), now=12.0)  # older than the open
    assert b.apply(Change("closed", None, 13.0), now=13.0)
    assert b.state is State.CLOSED
    assert not b.apply(Change("open", 20.0, 14.0), now=21.0)  # already over when it arrives
    assert b.apply(Change("open", None, 22.0), now=22.0) and b.ejected  # an ejection elsewhere


def test_remote_open_applies_from_half_open_and_a_local_trip_beats_an_older_remote() -> None:
    b = tripped(100.0)
    b.admit(105.0)
    assert b.apply(Change("open", 130.0, 106.0), now=106.0)
    assert b.state is State.OPEN and b.until == 130.0
    c = tripped(200.0)
    assert not c.apply(Change("closed", None, 199.0), now=201.0)


def test_remote_cooldown_takes_the_later_end() -> None:
    b = Breaker(CFG)
    b.cool(10.0, 5.0)
    assert not b.apply(Change("cooldown", 12.0, 9.0), now=10.0)
    assert b.apply(Change("cooldown", 20.0, 9.0), now=10.0) and b.cooldown_until == 20.0
    assert not b.apply(Change("cooldown", 21.0, 9.0), now=22.0)


def test_unknown_remote_state_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown breaker change"):
        Breaker(CFG).apply(Change("sideways", None, 1.0), now=1.0)


def test_inherit_takes_over_state_not_counts() -> None:
    old = tripped(100.0)
    old.cool(100.0, 9.0)
    new = Breaker(CFG)
    new.inherit(old)
    assert (new.state, new.until, new.cooldown_until, new.changed_at) == (State.OPEN, 105.0, 109.0, 100.0)
    old.admit(105.0)  # half-open, one probe out
    fresh = Breaker(CFG)
    fresh.inherit(old)
    assert fresh.state is State.OPEN and fresh.admit(105.0) and fresh.state is State.HALF_OPEN
