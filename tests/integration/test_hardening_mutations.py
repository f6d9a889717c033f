"""Guarantees of the limits that earlier tests let slip, through real ``gateway serve`` processes.

- A ``block`` budget that has refused a request as spent keeps refusing when the shared state (Redis)
  goes away: the per-worker spend views decide alone then (``docs/limits-and-budgets.md``, "The bound is
  suspended, and the per-worker spend views below decide alone"), and what they know is enough to refuse.
- A rate limit's 429 tells the same wait in its message and in ``retry-after-ms``, both rounded up to
  whole milliseconds (a ``retry-after-ms`` rounded down would send a client back early).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import redisproc

from .conftest import StartGateway
from .helpers import RawClient, Response, assert_openai_error, chat_request, wait_for
from .test_limits import BUDGET, KEY, MAX_TOKENS, limits_toml
from .test_limits import send as send_as

AUTH = [("Authorization", f"Bearer {KEY}")]


def send(port: int) -> Response:
    """A request of the budgeted key (mock-1 priced so that its budget covers about 17 of them)."""
    return send_as(port, headers=AUTH, max_tokens=MAX_TOKENS)


def test_a_spent_budget_still_blocks_while_the_shared_state_is_down(
    start_gateway: StartGateway, mock_port: int
) -> None:
    with redisproc.start() as redis:
        # one worker: spend and shared state on Redis
        gw = start_gateway(limits_toml(mock_port, redis.url, BUDGET), workers=1, name="budget-redis-down")

        # spend the budget one request at a time, until the budget itself refuses (not to be retried)
        admitted = 0
        while True:
            resp = send(gw.port)
            if resp.status == 200:
                admitted += 1
                assert admitted < 100, "the budget never refused"
                continue
            err = assert_openai_error(resp, 429, "insufficient_quota")
            if resp.header("x-should-retry") == "false":
                break
            # what is left is only reserved by a request just finished: its settle frees it
            assert resp.header("retry-after") is not None, (resp, err)
        assert admitted >= 5, admitted  # most of the budget was served before it refused

        redis.stop()

        # requests keep coming: the first ones are refused from the worker's memory of the refusal, the
        # next ones ask the shared state, meet its loss, and the worker falls back to its spend views
        # (it says so); every one of them, before and after, is refused by the budget
        def refused_until_degraded() -> bool:
            resp = send(gw.port)
            assert_openai_error(resp, 429, "insufficient_quota")
            assert resp.header("x-should-retry") == "false", resp
            return "budgets: shared state unavailable" in gw.process.logs(records=False)

        wait_for(refused_until_degraded, 60.0, interval=0.1,
                 what="the worker to fall back to its spend views")
        for _ in range(5):
            resp = send(gw.port)
            assert_openai_error(resp, 429, "insufficient_quota")
            assert resp.header("x-should-retry") == "false", resp
        assert gw.process.exited() is None


def test_a_rate_limit_429_says_its_wait_rounded_up_in_the_message_and_retry_after_ms(
    start_gateway: StartGateway, mock_port: int, tmp_path: Path
) -> None:
    paced = """
[limits]
default_policy = "paced"
[limits.policies.paced]
requests_per_minute = 2
burst = 0.1
lease = 1
"""
    gw = start_gateway(limits_toml(mock_port, f"sqlite://{tmp_path / 'gateway.db'}", paced), name="paced")
    with RawClient(gw.port) as c:
        first = c.request(chat_request())
        second = c.request(chat_request())  # two a minute, a burst of one: refused for about 30 s
    assert first.status == 200, first
    err = assert_openai_error(second, 429, "rate_limit_exceeded")
    said = re.search(r"Try again in ([0-9.]+)s\.", err["message"])  # "29.532s": to the millisecond
    assert said is not None, err
    said_ms = round(float(said.group(1)) * 1000.0)
    # the same wait, rounded up both times (a wait of whole milliseconds would pass either way)
    assert second.header("retry-after-ms") == str(said_ms), second
    assert second.header("retry-after") == str(max(1, math.ceil(said_ms / 1000.0))), second
