"""Whether to try a failed request again, and after how long. Sans-IO: time and randomness come in.

The rules, in the order they are checked:

1. Never once the client has received a byte of the response (a stream that has started cannot be
   replayed without the client seeing the seam). Before that, a failed stream is retried like any other.
2. Only failures listed in ``retry_on``: transport errors before the response head ("connect"), timeouts,
   429 and 5xx by default. A 400 stays a 400; a context-length error is for the fallbacks. Refused
   credentials (401/403) go with "5xx", to another deployment only (the router never waits to send the
   same credential to the same provider again).
3. At most ``max_attempts`` attempts, the first included.
4. The wait before retry ``n`` (1-based) is *full jitter*: a uniform random time in
   ``[0, min(max_backoff, base_backoff * 2^(n-1))]`` (AWS Architecture Blog, "Exponential Backoff And
   Jitter"): retries of many clients spread out instead of arriving in waves. An upstream's
   ``Retry-After`` raises the wait to at least what it asked; one longer than ``max_backoff`` is not waited
   for (the request moves on to other deployments or fallbacks instead).
5. Not when the wait would end at or after the overall request deadline.

The router applies the wait only when the retry goes to a deployment already tried in this request; a
retry that moves to another deployment goes at once (it does not hammer the one that failed).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from gateway.routing.config import RetryConfig
from gateway.routing.outcome import Outcome

__all__ = ["RetryDecision", "RetryPolicy"]

_INF = math.inf


class RetryDecision(NamedTuple):
    retry: bool
    #: seconds to wait before the retry (0.0 when ``retry`` is false)
    delay: float
    #: why: "retry", or what stopped it
    reason: str


class RetryPolicy:
    """One model's retry rules, resolved from its ``RetryConfig`` once."""

    __slots__ = ("base_backoff", "max_attempts", "max_backoff", "retry_on")

    def __init__(self, config: RetryConfig) -> None:
        self.max_attempts = config.max_attempts
        self.base_backoff = config.base_backoff
        self.max_backoff = config.max_backoff
        # PERF: the outcomes themselves, so that a check is one set lookup
        retry_on = {Outcome(c) for c in config.retry_on}
        if Outcome.SERVER_ERROR in retry_on:  # refused credentials: another deployment (never the same)
            retry_on.add(Outcome.CREDENTIALS)
        self.retry_on = frozenset(retry_on)

    def stop_reason(self, outcome: Outcome, attempts: int, sent: bool) -> str | None:
        """Why no retry may follow attempt number ``attempts`` that ended in ``outcome``; None if one may."""
        if sent:
            return "the response had started"
        if outcome is Outcome.OK:
            return "succeeded"
        if outcome not in self.retry_on:
            return f"{outcome.value} is not retried"
        if attempts >= self.max_attempts:
            return f"max_attempts ({self.max_attempts}) reached"
        return None

    def backoff(self, retry: int, r: float) -> float:
        """The full-jitter wait before retry number ``retry`` (1-based); ``r`` uniform in [0, 1)."""
        cap = self.base_backoff * 2.0 ** (retry - 1) if retry < 64 else _INF
        if cap > self.max_backoff:
            cap = self.max_backoff
        return r * cap

    def delay(
        self, retry: int, r: float, now: float, deadline: float, retry_after: float | None = None
    ) -> tuple[float | None, str]:
        """(the wait before retry number ``retry``, "retry"), or (None, why there is none)."""
        wait = self.backoff(retry, r)
        if retry_after is not None and retry_after > wait:
            if retry_after > self.max_backoff:
                return None, f"Retry-After {retry_after:g} s exceeds max_backoff {self.max_backoff:g} s"
            wait = retry_after
        if now + wait >= deadline:
            return None, "the deadline would pass"
        return wait, "retry"

    def decide(
        self,
        outcome: Outcome,
        attempts: int,
        now: float,
        deadline: float,
        r: float,
        retry_after: float | None = None,
        sent: bool = False,
    ) -> RetryDecision:
        """May attempt ``attempts + 1`` follow, and after how long? (All the rules in one call.)"""
        why = self.stop_reason(outcome, attempts, sent)
        if why is None:
            wait, why = self.delay(attempts, r, now, deadline, retry_after)
            if wait is not None:
                return RetryDecision(True, wait, why)
        return RetryDecision(False, 0.0, why)
