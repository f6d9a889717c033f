"""Retry decisions and full-jitter backoff (seeded randomness), upstream retry hints, outcome classification."""

from __future__ import annotations

import random

import pytest

from gateway.providers.base import UpstreamError, UpstreamTimeout
from gateway.routing.config import RetryConfig
from gateway.routing.outcome import (
    Outcome,
    is_context_length_error,
    outcome_of_exception,
    outcome_of_status,
    parse_retry_after,
)
from gateway.routing.retry import RetryDecision, RetryPolicy

POLICY = RetryPolicy(RetryConfig(max_attempts=4, base_backoff=0.5, max_backoff=3.0))
INF = float("inf")


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    assert [POLICY.backoff(n, 0.999999) for n in (1, 2, 3, 4, 10)] == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0], abs=1e-5)
    assert POLICY.backoff(3, 0.0) == 0.0 and POLICY.backoff(100, 0.5) == 1.5
    rnd = random.Random(7)
    waits = [POLICY.backoff(3, rnd.random()) for _ in range(4000)]
    assert all(0.0 <= w < 2.0 for w in waits)
    assert sum(waits) / len(waits) == pytest.approx(1.0, abs=0.05)  # uniform over [0, 2)


def test_seeded_decisions_are_reproducible() -> None:
    def waits(seed: int) -> list[float]:
        rnd = random.Random(seed)
        return [POLICY.decide(Outcome.SERVER_ERROR, n, 0.0, INF, rnd.random()).delay for n in (1, 2, 3)]

    assert waits(42) == waits(42) != waits(43)


@pytest.mark.parametrize("outcome", [Outcome.CONNECT, Outcome.TIMEOUT, Outcome.RATE_LIMITED, Outcome.SERVER_ERROR])
def test_retryable_failures_are_retried(outcome: Outcome) -> None:
    assert POLICY.decide(outcome, 1, 0.0, INF, 0.5) == RetryDecision(True, 0.25, "retry")


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [(Outcome.OK, "succeeded"), (Outcome.CLIENT_ERROR, "4xx is not retried"),
     (Outcome.CONTEXT_LENGTH, "context_length is not retried")],
)
def test_other_outcomes_are_not(outcome: Outcome, reason: str) -> None:
    assert POLICY.decide(outcome, 1, 0.0, INF, 0.5) == RetryDecision(False, 0.0, reason)


def test_retry_on_is_configurable() -> None:
    only_timeouts = RetryPolicy(RetryConfig(retry_on=["timeout"]))
    assert only_timeouts.decide(Outcome.TIMEOUT, 1, 0.0, INF, 0.1).retry
    assert not only_timeouts.decide(Outcome.SERVER_ERROR, 1, 0.0, INF, 0.1).retry


def test_never_after_the_first_byte_reached_the_client() -> None:
    d = POLICY.decide(Outcome.CONNECT, 1, 0.0, INF, 0.1, sent=True)
    assert d == RetryDecision(False, 0.0, "the response had started")


def test_attempts_are_limited() -> None:
    assert POLICY.decide(Outcome.TIMEOUT, 3, 0.0, INF, 0.1).retry
    assert POLICY.decide(Outcome.TIMEOUT, 4, 0.0, INF, 0.1) == RetryDecision(False, 0.0, "max_attempts (4) reached")


def test_retry_after_raises_the_wait_up_to_max_backoff() -> None:
    assert POLICY.decide(Outcome.RATE_LIMITED, 1, 0.0, INF, 0.1, retry_after=2.5).delay == 2.5
    assert POLICY.decide(Outcome.RATE_LIMITED, 1, 0.0, INF, 0.9, retry_after=0.1).delay == pytest.approx(0.45)
    d = POLICY.decide(Outcome.RATE_LIMITED, 1, 0.0, INF, 0.1, retry_after=30.0)
    assert not d.retry and "exceeds max_backoff" in d.reason


def test_no_retry_that_would_end_past_the_deadline() -> None:
    assert POLICY.decide(Outcome.SERVER_ERROR, 1, 10.0, 10.3, 0.5).retry  # waits 0.25
    d = POLICY.decide(Outcome.SERVER_ERROR, 1, 10.0, 10.2, 0.5)
    assert d == RetryDecision(False, 0.0, "the deadline would pass")
    assert not POLICY.decide(Outcome.RATE_LIMITED, 1, 10.0, 12.0, 0.0, retry_after=2.0).retry


def test_parse_retry_after() -> None:
    assert parse_retry_after(b"3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(b"3", b"250") == 0.25  # retry-after-ms wins
    assert parse_retry_after(b"3", b"bogus") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after(b"-1") is None
    assert parse_retry_after(b"nan") is None and parse_retry_after(b"soon") is None
    date = b"Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(date) is None  # a date needs the wall clock
    assert parse_retry_after(date, wall_now=1445412470.0) == 10.0
    assert parse_retry_after(date, wall_now=1445412490.0) == 0.0


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b"", Outcome.OK), (429, b"", Outcome.RATE_LIMITED), (500, b"", Outcome.SERVER_ERROR),
        (503, b"", Outcome.SERVER_ERROR), (408, b"", Outcome.TIMEOUT), (401, b"", Outcome.CREDENTIALS),
        (403, b"", Outcome.CREDENTIALS), (404, b"", Outcome.CLIENT_ERROR),
        (400, b'{"error":{"code":"context_length_exceeded"}}', Outcome.CONTEXT_LENGTH),
        (400, b'{"error":{"message":"prompt is too long: 210000 tokens"}}', Outcome.CONTEXT_LENGTH),
        (400, b'{"error":{"message":"bad temperature"}}', Outcome.CLIENT_ERROR),
    ],
)
def test_outcome_of_status(status: int, body: bytes, outcome: Outcome) -> None:
    assert outcome_of_status(status, body) is outcome


def test_outcome_of_exception_and_conditions() -> None:
    assert outcome_of_exception(UpstreamTimeout("read")) is Outcome.TIMEOUT
    assert outcome_of_exception(UpstreamError("reset")) is Outcome.CONNECT
    assert outcome_of_exception(ConnectionRefusedError()) is Outcome.CONNECT
    with pytest.raises(TypeError):
        outcome_of_exception(ValueError())
    assert Outcome.CONNECT.condition == "5xx" and Outcome.TIMEOUT.condition == "timeout"
    assert Outcome.SERVER_ERROR.failed and not Outcome.RATE_LIMITED.failed and not Outcome.CONTEXT_LENGTH.failed
    assert not is_context_length_error(500, b"maximum context length")
